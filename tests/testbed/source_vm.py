"""The source server of the KVM tests: the guest image booted as a libvirt VM this host reaches by SSH.

The cached image (tests/testbed/guest_image.py) is never written: the VM boots from a qcow2 overlay in a
scratch storage pool, and tearing the VM down deletes the overlay. Its NIC is on a libvirt network of its
own with an address on the host side (``GATEWAY`` in 192.168.213.0/24, no forward, no DHCP, no DNS), so
the host reaches the guest at the static address the image configures, and the guest reaches nothing else.
The domain is ``type='qemu'`` (TCG): these machines are nested and a kvm guest spins. 1 vCPU, 512 MiB.

The VM counts as up when sshd answers with the host key recorded at build time and lets root in with the
test bed's key: paramiko with a pinned key, never trust on first use. Under TCG that takes about half a
minute; the serial console is logged to a file, and a VM that does not come up is reported with the tail
of that log.

Names and the subnet are fixed (the image's address is), so one source VM runs per machine at a time: the
fixture holds a lock for its lifetime, and a second test run waits for it. A VM started by hand
(``python -m tests.testbed.source_vm up``) stays up until ``... down``; the fixture refuses to touch it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import guest_image
from tests.testbed.guest_image import GuestImage, ImageBuildError
from tests.testbed.libvirt import URI, TestbedError, ensure_libvirtd, libvirt_uri_or_skip

DOMAIN = "hvmigrate-src01"
NETWORK = "hvmigrate-src-net"
BRIDGE = "hvmsrc0"
POOL = "hvmigrate-src-pool"
OVERLAY = "src01-overlay.qcow2"
VCPUS = 1
MEMORY_MIB = 512
BOOT_TIMEOUT = 300.0  # TCG on two shared cores: ~30 s when idle, several times that when busy
POLL_INTERVAL = 1.0
STATE_FILE = "source-vm.json"
DNSMASQ_STATE = Path("/var/lib/libvirt/dnsmasq")


@dataclass(frozen=True)
class SourceVm:
    """A running source VM and how to log in to it."""

    domain: str
    host: str
    port: int
    user: str
    key: Path  # private key root accepts
    fingerprint: str  # SHA256:... of the guest's sshd host key
    known_hosts: Path  # a known_hosts file with that key under ``host``
    console_log: Path
    overlay: Path
    network: str
    pool: str
    mac: str
    hostname: str
    boot_seconds: float  # from domain start to the first successful SSH login
    image: Path

    def connect(self, timeout: float = 15.0) -> Any:
        """A paramiko SSHClient logged in as root, the host key checked against the pinned one."""
        return _ssh_client(self.host, self.port, self.user, self.key, self.known_hosts, timeout)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run ``command`` in the guest: (exit status, stdout, stderr)."""
        client = self.connect()
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            status = stdout.channel.recv_exit_status()
            return status, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        finally:
            client.close()

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""


class SourceVmError(TestbedError):
    """The source VM could not be started or reached; the message says what to look at."""


# ---------------------------------------------------------------- libvirt objects


def network_xml() -> str:
    root = ET.Element("network")
    ET.SubElement(root, "name").text = NETWORK
    ET.SubElement(root, "bridge", name=BRIDGE, stp="off", delay="0")
    ET.SubElement(root, "dns", enable="no")  # no dnsmasq: the guest's address is static
    ET.SubElement(root, "ip", address=guest_image.GATEWAY, prefix=str(guest_image.PREFIX))
    return ET.tostring(root, encoding="unicode")


def domain_xml(overlay: Path, console_log: Path) -> str:
    root = ET.Element("domain", type="qemu")
    ET.SubElement(root, "name").text = DOMAIN
    ET.SubElement(root, "memory", unit="MiB").text = str(MEMORY_MIB)
    ET.SubElement(root, "vcpu").text = str(VCPUS)
    os_element = ET.SubElement(root, "os")
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(root, "clock", offset="utc")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=str(overlay))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    nic = ET.SubElement(devices, "interface", type="network")
    ET.SubElement(nic, "source", network=NETWORK)
    ET.SubElement(nic, "mac", address=guest_image.MAC)
    ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(devices, "console", type="pty"), "target", type="serial", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def overlay_xml(image: GuestImage) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = OVERLAY
    ET.SubElement(root, "capacity", unit="bytes").text = str(image.disk.stat().st_size)
    ET.SubElement(ET.SubElement(root, "target"), "format", type="qcow2")
    backing = ET.SubElement(root, "backingStore")
    ET.SubElement(backing, "path").text = str(image.disk)
    ET.SubElement(backing, "format", type="raw")
    return ET.tostring(root, encoding="unicode")


def _lookup(conn: Any, kind: str, name: str) -> Any | None:
    import libvirt

    lookup = {
        "domain": conn.lookupByName,
        "network": conn.networkLookupByName,
        "pool": conn.storagePoolLookupByName,
    }
    try:
        return lookup[kind](name)
    except libvirt.libvirtError:
        return None


# ---------------------------------------------------------------- up and down


def start(
    workdir: Path,
    image: GuestImage | None = None,
    *,
    timeout: float = BOOT_TIMEOUT,
    log: Callable[[str], None] = print,
) -> SourceVm:
    """Boot the source VM with its overlay and console log in ``workdir``; returns once SSH lets root in.

    On any failure, what was created is removed again.
    """
    import libvirt

    image = image or guest_image.ensure_image(log=log)
    uri = ensure_libvirtd()
    workdir.mkdir(parents=True, exist_ok=True)
    libvirt.registerErrorHandler(_quiet, None)  # failures arrive as exceptions; not also on stderr
    conn = libvirt.open(uri)
    try:
        if _lookup(conn, "domain", DOMAIN) is not None:
            raise SourceVmError(
                f"a domain named {DOMAIN} already exists (a source VM started by hand, or left by a killed "
                "run): stop it with `python -m tests.testbed.source_vm down`"
            )
        try:
            return _start(conn, workdir, image, timeout, log)
        except libvirt.libvirtError as exc:
            _stop(conn)
            raise SourceVmError(f"libvirt refused to set up the source VM: {exc}") from None
        except BaseException:
            _stop(conn)
            raise
    finally:
        conn.close()


def _quiet(_context: object, _error: object) -> None:
    """libvirt's default handler prints every error, even a lookup that is expected to miss."""


def _start(
    conn: Any, workdir: Path, image: GuestImage, timeout: float, log: Callable[[str], None]
) -> SourceVm:
    # libvirt writes a MAC list for every network with an address there, dnsmasq installed or not, and
    # only the dnsmasq package creates the directory.
    DNSMASQ_STATE.mkdir(parents=True, exist_ok=True)
    network = _lookup(conn, "network", NETWORK)
    if network is None:
        conn.networkCreateXML(network_xml())
    elif not network.isActive():
        network.create()
    stale_pool = _lookup(conn, "pool", POOL)  # left by a killed run: nothing uses it, the domain is gone
    if stale_pool is not None:
        _remove_pool(stale_pool)
    pool_dir = workdir / "pool"
    pool_dir.mkdir(exist_ok=True)
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{POOL}</name><target><path>{pool_dir}</path></target></pool>", 0
    )
    overlay = Path(pool.createXML(overlay_xml(image), 0).path())
    console_log = workdir / "console.log"
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(image.known_hosts_line() + "\n")
    domain = conn.defineXML(domain_xml(overlay, console_log))  # persistent: a shut-off source stays visible
    log(f"booting {DOMAIN} under TCG (console: {console_log})")
    started = time.monotonic()
    domain.create()
    _wait_for_ssh(domain, image, known_hosts, console_log, started + timeout)
    return SourceVm(
        domain=DOMAIN,
        host=image.address,
        port=22,
        user="root",
        key=image.client_key,
        fingerprint=image.fingerprint,
        known_hosts=known_hosts,
        console_log=console_log,
        overlay=overlay,
        network=NETWORK,
        pool=POOL,
        mac=image.mac,
        hostname=image.hostname,
        boot_seconds=round(time.monotonic() - started, 1),
        image=image.disk,
    )


def _wait_for_ssh(
    domain: Any, image: GuestImage, known_hosts: Path, console_log: Path, deadline: float
) -> None:
    last = "port 22 never answered"
    while True:
        if not domain.isActive():
            raise SourceVmError(
                f"{DOMAIN} stopped while booting; console log {console_log}:\n{_tail(console_log)}"
            )
        if _port_open(image.address, 22):
            try:
                client = _ssh_client(image.address, 22, "root", image.client_key, known_hosts, 10.0)
            except Exception as exc:  # sshd starting up, or refusing: retried, and reported if it lasts
                last = f"{type(exc).__name__}: {exc}"
            else:
                client.close()
                return
        if time.monotonic() > deadline:
            raise SourceVmError(
                f"{DOMAIN} did not answer SSH at {image.address} in time ({last}); console log "
                f"{console_log}:\n{_tail(console_log)}"
            )
        time.sleep(POLL_INTERVAL)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0) as conn:
            conn.settimeout(5.0)
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _ssh_client(host: str, port: int, user: str, key: Path, known_hosts: Path, timeout: float) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host,
        port=port,
        username=user,
        key_filename=str(key),
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def stop() -> list[str]:
    """Destroy and undefine the source VM, delete its overlay and pool, remove its network; says what went."""
    import libvirt

    libvirt.registerErrorHandler(_quiet, None)
    conn = libvirt.open(URI)
    try:
        return _stop(conn)
    finally:
        conn.close()


def _stop(conn: Any) -> list[str]:
    import libvirt

    removed = []
    domain = _lookup(conn, "domain", DOMAIN)
    if domain is not None:
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        domain.undefine()
        removed.append(f"domain {DOMAIN}")
    pool = _lookup(conn, "pool", POOL)
    if pool is not None:
        _remove_pool(pool)
        removed.append(f"pool {POOL} and its overlay")
    network = _lookup(conn, "network", NETWORK)
    if network is not None:
        if network.isActive():
            network.destroy()
        with contextlib.suppress(libvirt.libvirtError):  # transient: destroying it removed it already
            network.undefine()
        removed.append(f"network {NETWORK}")
    return removed


def _remove_pool(pool: Any) -> None:
    import libvirt

    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)
    for volume in pool.listAllVolumes(0):
        volume.delete(0)
    pool.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        pool.undefine()


@contextlib.contextmanager
def machine_lock(timeout: float = 1800.0) -> Iterator[None]:
    """One source VM per machine: a second test run waits here until the first one's VM is gone."""
    path = guest_image.cache_dir() / ".source-vm.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SourceVmError(
                        f"another test run holds the source VM ({path}, waited {timeout:.0f} s); "
                        "let it finish, then try again"
                    ) from None
                time.sleep(2.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def running(workdir: Path, image: GuestImage | None = None) -> Iterator[SourceVm]:
    """The source VM for the duration of the block, under the machine lock; gone afterwards."""
    with machine_lock():
        vm = start(workdir, image)
        try:
            yield vm
        finally:
            stop()


# ---------------------------------------------------------------- pytest


def missing_tools() -> list[str]:
    return guest_image.missing_tools() if guest_image.cached_image() is None else []


@pytest.fixture(scope="module")
def source_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceVm]:
    """The source server, booted for this module and destroyed (overlay and all) after it.

    Skips when libvirt or the image build tools are not installed; a bed that is installed but does not
    come up fails the test.
    """
    libvirt_uri_or_skip()
    if missing := missing_tools():
        pytest.skip("source VM unavailable: " + "; ".join(missing))
    with running(tmp_path_factory.mktemp("source-vm")) as vm:
        yield vm


# ---------------------------------------------------------------- by hand


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.source_vm",
        description="Start or stop the test bed's source server: the Debian guest image as a libvirt VM.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    workdir = guest_image.cache_dir() / "source-vm"
    state = workdir / STATE_FILE
    try:
        if args.command == "up":
            with machine_lock(timeout=0.0):
                vm = start(workdir)
            state.write_text(json.dumps(asdict(vm), indent=2, default=str) + "\n")
            print(f"{vm.domain} is up after {vm.boot_seconds} s: {vm.hostname} at {vm.host}")
            print(f"  ssh -i {vm.key} -o UserKnownHostsFile={vm.known_hosts} root@{vm.host}")
            print(f"  host key {vm.fingerprint}; console log {vm.console_log}; stop: ... source_vm down")
        elif args.command == "down":
            with machine_lock(timeout=0.0):  # a test run's VM is that run's to remove
                removed = stop()
            state.unlink(missing_ok=True)
            print("removed: " + (", ".join(removed) if removed else "nothing (no source VM was running)"))
        else:
            if not state.exists():
                print("no source VM started by hand (python -m tests.testbed.source_vm up)")
                return 1
            print(state.read_text().strip())
    except (TestbedError, ImageBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
