"""libvirtd with QEMU on this machine, set up as DESIGN.md says: the KVM target (and source) of the tests.

These machines are containers without systemd, nested under another hypervisor. So nothing starts the
daemons for us (``virtlogd -d; libvirtd -d`` here), and QEMU runs as root with no security driver: the
default ``libvirt-qemu`` user cannot open disk images in a root-owned pytest tmp dir, and AppArmor/SELinux
labelling has no policy inside the container. A ``type='kvm'`` domain spins without booting under the
outer hypervisor, so tests ask the provider for ``domain_type: qemu`` (TCG).

``ensure_libvirtd()`` is idempotent: it edits qemu.conf only where it differs, and starts the daemons only
when the socket does not answer. It never stops a daemon it finds running: if that one runs with an old
qemu.conf, it says how to restart it. ``python -m tests.testbed.libvirt`` does the same by hand.

Scratch objects (``scratch_pool``, ``isolated_network``) are transient: destroying one removes it, and a
test killed half-way leaves nothing defined behind (a libvirtd restart clears the rest).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SETTINGS: tuple[tuple[str, str], ...] = (
    ("user", "root"),
    ("group", "root"),
    ("security_driver", "none"),
)
RUN_DIR = Path("/var/run/libvirt")
LOG_DIR = Path("/var/log/libvirt")
LIBVIRTD_SOCKET = RUN_DIR / "libvirt-sock"
VIRTLOGD_SOCKET = RUN_DIR / "virtlogd-sock"
START_TIMEOUT = 30.0

# What scripts/test.sh installs for these tests (apt with --no-install-recommends, then pip in .venv).
DEBIAN_PACKAGES = ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils", "libvirt-dev", "pkg-config")
PIP_PACKAGES = ("libvirt-python",)

_TOOLS = {
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
}


class TestbedError(RuntimeError):
    """The test bed could not be brought up; the message says what to install or run."""


def missing_tools() -> list[str]:
    """What is missing to run libvirtd with QEMU here, as install hints (empty: everything is there)."""
    missing = []
    for tool, package in _TOOLS.items():
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            missing.append(f"{tool} (Debian package {package}) is missing")
    if importlib.util.find_spec("libvirt") is None:
        missing.append(
            "the libvirt Python module is missing: apt-get install libvirt-dev pkg-config, "
            "then pip install libvirt-python in the venv"
        )
    return missing


def configure_qemu(path: Path = QEMU_CONF) -> bool:
    """Set user, group and security_driver in qemu.conf; True when the file changed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TestbedError(f"{path} is missing: apt-get install libvirt-daemon-system") from None
    original = text
    for key, value in QEMU_SETTINGS:
        wanted = f'{key} = "{value}"'
        active = re.compile(rf"^\s*{key}\s*=.*$", re.MULTILINE)
        if active.search(text):
            text = active.sub(wanted, text, count=1)
            continue
        commented = re.compile(rf"^#{key}\s*=.*$", re.MULTILINE)  # the stock "#user = ..." line
        if commented.search(text):
            text = commented.sub(wanted, text, count=1)
        else:
            text = text.rstrip("\n") + f"\n{wanted}\n"
    if text == original:
        return False
    tmp = path.with_name(f".{path.name}.hvmigrate.tmp")
    tmp.write_text(text)
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    return True


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _connects(uri: str) -> str | None:
    """None when the daemon serves ``uri``; else libvirt's reason."""
    import libvirt

    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return str(exc)
    try:
        conn.getLibVersion()
    finally:
        conn.close()
    return None


def _run_daemon(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT)
    if result.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")


def ensure_libvirtd(timeout: float = START_TIMEOUT) -> str:
    """Configure qemu.conf and start virtlogd and libvirtd unless they answer; returns the URI to use."""
    if missing := missing_tools():
        raise TestbedError("cannot start libvirtd: " + "; ".join(missing))
    if os.geteuid() != 0:
        raise TestbedError("libvirtd for the tests runs as root (qemu:///system); run the tests as root")
    changed = configure_qemu()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # libvirt writes a MAC list here for every network with an <ip>, even without dnsmasq installed
    Path("/var/lib/libvirt/dnsmasq").mkdir(parents=True, exist_ok=True)
    if not _answers(VIRTLOGD_SOCKET):  # QEMU's console and logs go through it: no domain starts without
        _run_daemon(["virtlogd", "-d"])
    if _answers(LIBVIRTD_SOCKET):
        if changed:
            raise TestbedError(
                f"libvirtd is running with the qemu.conf from before this edit ({QEMU_CONF}); restart it: "
                "kill $(cat /var/run/libvirtd.pid) && libvirtd -d"
            )
    else:
        _run_daemon(["libvirtd", "-d"])
    deadline = time.monotonic() + timeout
    while True:
        reason = _connects(URI) if _answers(LIBVIRTD_SOCKET) else f"{LIBVIRTD_SOCKET} does not answer"
        if reason is None:
            return URI
        if time.monotonic() > deadline:
            raise TestbedError(
                f"libvirtd did not come up within {timeout:.0f} s ({reason}); see /var/log/libvirt/ "
                "or run libvirtd in the foreground (libvirtd -v) to see why"
            )
        time.sleep(0.2)


def libvirt_uri_or_skip() -> str:
    """For fixtures: the URI of a running libvirtd, or a skip naming what to install.

    A bed that is installed but fails to start is a failure, not a skip: that is a bug to see.
    """
    if missing := missing_tools():
        pytest.skip("libvirt test bed unavailable: " + "; ".join(missing))
    if os.geteuid() != 0:
        pytest.skip("libvirt test bed needs root (it starts libvirtd for qemu:///system)")
    return ensure_libvirtd()


@pytest.fixture(scope="module")
def libvirt_uri() -> str:
    return libvirt_uri_or_skip()


def kvm_provider(uri: str, pool_name: str, name: str = "lab-kvm", **overrides: Any) -> Any:
    """A KvmProvider as the tests configure it: TCG domains (nested hosts), short timeouts."""
    from orchestrator.playbook.models import KvmProviderConfig
    from providers.kvm import KvmProvider

    options: dict[str, Any] = {
        "type": "kvm",
        "uri": uri,
        "storage_pool": pool_name,
        "domain_type": "qemu",
        "shutdown_timeout": 1,
        **overrides,
    }
    return KvmProvider(name, KvmProviderConfig(**options))


@pytest.fixture(scope="module")
def conn(libvirt_uri: str) -> Iterator[Any]:
    """A libvirt connection for one test module (test modules take it as ``conn = testbed.conn``)."""
    import libvirt

    connection = libvirt.open(libvirt_uri)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def pool(conn: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A scratch storage pool for one test module, removed with its volumes afterwards."""
    with scratch_pool(conn, unique_name(), tmp_path_factory.mktemp("pool")) as made:
        yield made


def unique_name(prefix: str = "hvtest") -> str:
    """A name no parallel run shares (another engineer's test run uses the same libvirtd)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def scratch_pool(conn: Any, name: str, directory: Path) -> Iterator[Any]:
    """A transient dir-type storage pool over ``directory``; its volumes and the pool go at the end."""
    import libvirt

    directory.mkdir(parents=True, exist_ok=True)
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{directory}</path></target></pool>", 0
    )
    try:
        yield pool
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    volume.delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()


@contextlib.contextmanager
def isolated_network(conn: Any, name: str) -> Iterator[Any]:
    """A transient network with no forward and no address: a bare bridge, no dnsmasq, no route out.

    The bridge name is derived from ``name`` (15 characters at most, the kernel's limit).
    """
    import libvirt

    bridge = "hvt" + uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:10]
    network = conn.networkCreateXML(
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off' delay='0'/></network>"
    )
    try:
        yield network
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            network.destroy()


@contextlib.contextmanager
def scratch_domain_cleanup(conn: Any, *names: str) -> Iterator[None]:
    """Whatever happens in the test, domains of these names are stopped and undefined afterwards."""
    import libvirt

    try:
        yield
    finally:
        for name in names:
            try:
                domain = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if domain.isActive():
                    domain.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def main() -> int:
    try:
        uri = ensure_libvirtd()
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"libvirtd is up: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
