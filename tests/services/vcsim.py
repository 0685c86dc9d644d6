"""vcsim, govmomi's vSphere API simulator, on 127.0.0.1 and a free port with TLS: the ESX tests' endpoint.

It is built from Debian's ``golang-github-vmware-govmomi-dev`` (``golang-go`` compiles it) out of
``vcsim/main.go`` beside this file, with ``GO111MODULE=off GOPATH=/usr/share/gocode``, and cached under
``/var/cache/hvmigrate-testbed/vcsim-<hash of main.go>`` (``$HVMIGRATE_TESTBED_CACHE`` moves it), so the
build (about 20 s) happens once per version of the Go source.

Two models: ``vcenter_sim`` (a vCenter with datacenter DC0, cluster DC0_C0 of two hosts, datastores
LocalDS_0 and LocalDS_1, distributed switch DVS0 with port groups DC0_DVPG0 and DC0_DVPG_VLAN100 (VLAN
100), the standard port group "VM Network", resource pool DC0_C0_RP1, VM folder "migrated" and one VM of
its own, DC0_C0_RP0_VM0) and ``esx_sim`` (a standalone ESXi: datacenter ha-datacenter, one host, LocalDS_0,
"VM Network", one VM). Each fixture starts its own server; ``thumbprint`` is the SHA-256 thumbprint of the
certificate it minted, as ESXi shows it. vcsim's datastores are folders on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

SOURCE = Path(__file__).with_name("vcsim") / "main.go"
GOPATH = "/usr/share/gocode"
GOVMOMI = Path(GOPATH) / "src/github.com/vmware/govmomi/simulator"
START_TIMEOUT = 30.0
USER = "administrator@vsphere.local"


@dataclass(frozen=True)
class Vcsim:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    thumbprint: str  # SHA-256, colon separated, upper case
    cert: Path  # the server's certificate (PEM): a CA bundle that verifies it
    model: str
    directory: Path
    pid: int = 0  # the vcsim process: a test may stop (SIGSTOP) and continue (SIGCONT) it

    def log(self) -> str:
        return (self.directory / "vcsim.log").read_text(errors="replace")

    def config(self, **overrides: Any) -> Any:
        """An EsxProviderConfig for this server (password given as the secret itself)."""
        from orchestrator.playbook.models import EsxProviderConfig

        options: dict[str, Any] = {
            "type": "esx",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "thumbprint": self.thumbprint,
            "api_timeout": 30,
            "task_timeout": 60,
            "shutdown_timeout": 5,
        }
        options.update(overrides)
        return EsxProviderConfig(**options)

    def admin(self) -> Any:
        """A pyVmomi ServiceInstance for the test itself (an administrator's own session), pinned too."""
        from pyVmomi import SoapStubAdapter, vim

        from providers.esx.connection import PinnedContext, normalize_thumbprint

        stub = SoapStubAdapter(
            host=self.host,
            port=self.port,
            version="vim.version.version9",
            sslContext=PinnedContext(normalize_thumbprint(self.thumbprint)),
        )
        instance = vim.ServiceInstance("ServiceInstance", stub)
        instance.RetrieveContent().sessionManager.Login(self.user, self.password, None)
        return instance


def cache_dir() -> Path:
    return Path(os.environ.get("HVMIGRATE_TESTBED_CACHE", "/var/cache/hvmigrate-testbed"))


def missing_tools() -> list[str]:
    missing = []
    if shutil.which("go") is None:
        missing.append("go (Debian package golang-go) is missing")
    if not GOVMOMI.is_dir():
        missing.append(
            f"govmomi sources (Debian package golang-github-vmware-govmomi-dev): {GOVMOMI} is missing"
        )
    return missing


_build_lock = threading.Lock()


def binary() -> Path:
    """The vcsim binary for the current main.go, built once and cached by the source's hash."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = cache_dir() / f"vcsim-{digest}" / "vcsim"
    with _build_lock:
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": GOPATH,
            "GOCACHE": str(cache_dir() / "go-build-cache"),
        }
        partial = target.with_name("vcsim.partial")
        result = subprocess.run(
            ["go", "build", "-o", str(partial), str(SOURCE)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building vcsim failed:\n{result.stderr}")
        partial.replace(target)
    return target


def thumbprint(pem: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


@contextlib.contextmanager
def running_vcsim(model: str, directory: Path, datastores: dict[str, Path] | None = None) -> Iterator[Vcsim]:
    """Start vcsim with ``model`` (vpx or esx) and extra local datastores; stop it when the block ends."""
    exe = binary()
    password = secrets.token_urlsafe(12)
    cert = directory / "vcsim.pem"
    args = [str(exe), "-model", model, "-cert-out", str(cert)]
    for name, path in (datastores or {}).items():
        args += ["-ds", f"{name}={path}"]
    env = {**os.environ, "VCSIM_USER": USER, "VCSIM_PASSWORD": password, "TMPDIR": str(directory)}
    log = open(directory / "vcsim.log", "wb")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
    try:
        line = _first_line(process, START_TIMEOUT)
        if not line:
            process.kill()
            process.wait()
            pytest.fail(
                f"vcsim exited without serving:\n{(directory / 'vcsim.log').read_text(errors='replace')}"
            )
        url = urlsplit(json.loads(line)["url"])
        yield Vcsim(
            host=url.hostname or "127.0.0.1",
            port=url.port or 443,
            user=USER,
            password=password,
            thumbprint=thumbprint(cert.read_text()),
            cert=cert,
            model=model,
            directory=directory,
            pid=process.pid,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a test that stopped it may have failed before continuing
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The JSON line vcsim prints once it serves ("" when it died first)."""
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        found.append(process.stdout.readline().decode().strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else ""


def wait_task(task: Any) -> Any:
    """The result of a task started on the administrator's own session (the tests' side, not the tool's)."""
    import time

    while task.info.state in ("queued", "running"):
        time.sleep(0.05)
    assert task.info.state == "success", task.info.error
    return task.info.result


def deploy_appliance(admin: Any, name: str, *, power_on: bool = True) -> Any:
    """An appliance VM as an administrator deploys one in the vCenter model's cluster: its own disk on
    SCSI 0:0 (pvscsi), files on LocalDS_0. Made through ``admin``, never through the provider."""
    from pyVmomi import vim

    content = admin.content
    dc = content.rootFolder.childEntity[0]
    cluster = next(c for c in dc.hostFolder.childEntity if c.name == "DC0_C0")
    controller = vim.vm.device.ParaVirtualSCSIController(key=-1, busNumber=0, sharedBus="noSharing")
    disk = vim.vm.device.VirtualDisk(
        key=-2,
        controllerKey=-1,
        unitNumber=0,
        capacityInKB=1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", fileName="[LocalDS_0]"),
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        numCPUs=1,
        memoryMB=256,
        guestId="otherLinux64Guest",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=controller),
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk),
        ],
    )
    vm = wait_task(dc.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool))
    if power_on:
        wait_task(vm.PowerOnVM_Task())
    return vm


def report_tools_address(vm: Any, address: str) -> Any:
    """Make vcsim report ``address`` as the VM's VMware Tools would (vcsim runs no guest): where the test
    sshd plays an appliance's guest. Returns ``vm``."""
    from pyVmomi import vim

    option = vim.option.OptionValue(key="SET.guest.ipAddress", value=address)
    wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[option])))
    return vm


def datastore_dir(admin: Any, name: str) -> Path:
    """The folder on this machine that holds vcsim's datastore ``name``, as the administrator sees it."""
    from pyVmomi import vim

    content = admin.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datastore], True)
    try:
        return Path(next(ds for ds in view.view if ds.name == name).info.url)
    finally:
        view.Destroy()


def _skip_without_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip("; ".join(missing))


@pytest.fixture(scope="module")
def vcenter_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    _skip_without_tools()
    with running_vcsim("vpx", tmp_path_factory.mktemp("vcsim-vpx")) as server:
        yield server


@pytest.fixture(scope="module")
def vcenter_admin(vcenter_sim: Vcsim) -> Iterator[Any]:
    """The administrator's own session on ``vcenter_sim``: to set up or look at what vCenter reports,
    never through the provider."""
    instance = vcenter_sim.admin()
    yield instance
    instance.content.sessionManager.Logout()


@pytest.fixture(scope="module")
def esx_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    _skip_without_tools()
    with running_vcsim("esx", tmp_path_factory.mktemp("vcsim-esx")) as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    """Run the vCenter model until Ctrl-C, to try a playbook of your own against the vSphere API.

    ``python -m tests.services.vcsim [DIR]`` prints the provider settings to paste into a playbook. vcsim
    runs no guest: use ``appliance: host`` (the cold path, for image sources) or ``disk_writer:
    datastore_path`` (the mirror writes the VMDK's flat file in the datastore folder) to move data.
    """
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.services.vcsim", description=main.__doc__)
    parser.add_argument("directory", nargs="?", type=Path, help="where vcsim keeps its datastores")
    parser.add_argument("--model", choices=("vpx", "esx"), default="vpx")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print("; ".join(missing), file=sys.stderr)
        return 1
    directory = args.directory or Path(tempfile.mkdtemp(prefix="vcsim-"))
    directory.mkdir(parents=True, exist_ok=True)
    with running_vcsim(args.model, directory) as server:
        print(f"vcsim ({args.model}) on {server.host}:{server.port}, datastores under {directory}")
        print(f"export VC_PASSWORD='{server.password}'")
        print("providers:")
        print(f"  vcenter: {{type: esx, host: {server.host}, port: {server.port}, user: {server.user},")
        print(f'            password: "${{env:VC_PASSWORD}}", thumbprint: "{server.thumbprint}",')
        print(f"            datacenter: {'DC0' if args.model == 'vpx' else 'ha-datacenter'}}}")
        print("Ctrl-C stops it (its inventory lives in memory and goes with it).", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop vcsim on a kill too
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
