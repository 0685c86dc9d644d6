"""What every recovery appliance VM does the same way, whichever hypervisor runs it (KVM, ESX, Hyper-V).

The provider logs in to the appliance over SSH with host-key checking on, and runs small stdlib programs
in it with the appliance's own python3: find the device of a hot-added disk, wait for it to show, measure
it, flush it, and keep the block maps of the mirror on the appliance's root (``MAPS_DIR``), where a map of
an earlier attachment is swept away rather than trusted. The agent's writer then runs there and writes the
device (orchestrator/mirror/route.py only sees an ``AgentLocation``).

A device is named either by its path (KVM: a stable ``/dev/disk/by-id/...`` serial) or by its place on
the virtual hardware (ESX: SCSI ``bus:unit``, or ``sataBUS:UNIT``; Hyper-V: SCSI ``controller:location``),
which the program resolves in sysfs: the guest's SCSI hosts of the controller kind, in PCI order
(vSphere puts controller N behind the Nth PCI bridge), the ``bus``-th of them; then
``/sys/class/scsi_disk/H:0:UNIT:0`` for SCSI, or the ``unit``-th port (one SCSI host each) of the
``bus``-th AHCI controller for SATA. On Hyper-V each synthetic SCSI controller is a VMBus device of the
SCSI class driven by storvsc, one SCSI host each; the controllers are offered in order at boot (a running
VM gains none), so controller N is the Nth such host by host number, and a location is that host's LUN
(``/sys/class/scsi_disk/H:0:0:LOCATION``; the IDE class's storvsc hosts of generation 1 are left out).

``ApplianceAccess`` is the SSH side shared by the ESX and Hyper-V providers: the login at the address the
guest tools report, host key always checked, kept per appliance; a subclass says where that address
comes from and how a slot is named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from orchestrator.transport import HostKeyError, TransportError
from orchestrator.transport.ssh import SshTransport
from providers.base import ProviderError, TransientProviderError
from providers.linux.power import answers_ssh

if TYPE_CHECKING:
    from orchestrator.playbook.models import ApplianceLogin

MAPS_DIR = "/var/lib/hvmigrate/maps"  # block maps of the attached replica disks, on the appliance's root

# Run inside the appliance over SSH (its python3). Arguments (JSON): "path" or "slot" ({"kind": "scsi",
# "sata" or "storvsc" (Hyper-V SCSI: bus = controller, unit = location), "bus", "unit"}), "timeout",
# optional "flush", "map" (prepare its folder), "stale_maps" (a prefix: maps starting with it, other than
# "map", are removed; with no "map", all of them), "sysfs" and "dev" (the guest's /sys and /dev, other
# roots only in tests). Answers length-prefixed JSON: {"size", "device"} or {"missing": true}.
DEVICE_PROGRAM = r"""
import glob, json, os, sys, time
a = json.loads(sys.argv[1])
sysfs, dev = a.get("sysfs") or "/sys", a.get("dev") or "/dev"
DRIVERS = {
    "scsi": {"vmw_pvscsi", "mptsas", "mptspi", "mpt2sas", "mpt3sas", "BusLogic"},
    "sata": {"ahci"},
    "storvsc": {"storvsc"},
}
HV_SCSI = "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"  # VMBus class of Hyper-V's synthetic SCSI controller

def pci_key(path):
    out = []
    for part in path.split("/"):
        bits = part.replace(".", ":").split(":")
        if len(bits) == 4 and all(b and all(c in "0123456789abcdef" for c in b) for b in bits):
            out.append(tuple(int(b, 16) for b in bits))
    return out

def hosts_of(kind):
    found = {}
    for host in glob.glob(sysfs + "/class/scsi_host/host*"):
        try:
            with open(host + "/proc_name") as f:
                proc = f.read().strip()
        except OSError:
            continue
        if proc in DRIVERS[kind]:
            device = os.path.realpath(host + "/device")
            number = int(os.path.basename(host)[4:])
            if kind == "storvsc":
                try:
                    with open(os.path.dirname(device) + "/class_id") as f:
                        if f.read().strip().lower() != HV_SCSI:
                            continue
                except OSError:
                    continue
                found[number] = [number]
                continue
            found.setdefault(os.path.dirname(device), []).append(number)
    if kind == "storvsc":
        return [found[n] for n in sorted(found)]
    return [sorted(found[c]) for c in sorted(found, key=pci_key)]

def by_slot(slot, rescan):
    controllers = hosts_of(slot["kind"])
    if slot["bus"] >= len(controllers):
        return None
    numbers = controllers[slot["bus"]]
    if slot["kind"] == "sata":
        if slot["unit"] >= len(numbers):
            return None
        host, target = numbers[slot["unit"]], 0
    else:
        host, target = numbers[0], slot["unit"]
    if rescan:
        try:
            with open("%s/class/scsi_host/host%d/scan" % (sysfs, host), "w") as f:
                f.write("- - -")
        except OSError:
            pass
    if slot["kind"] == "storvsc":
        address = "%d:0:0:%d" % (host, slot["unit"])
    else:
        address = "%d:0:%d:0" % (host, target)
    blocks = glob.glob("%s/class/scsi_disk/%s/device/block/*" % (sysfs, address))
    return os.path.join(dev, os.path.basename(blocks[0])) if blocks else None

def locate(rescan):
    if a.get("path"):
        return a["path"] if os.path.exists(a["path"]) else None
    return by_slot(a["slot"], rescan)

out = {}
if a.get("path") or a.get("slot"):
    deadline, tries = time.monotonic() + a["timeout"], 0
    while True:
        path = locate(tries == 1)
        if path is not None and os.path.exists(path):
            break
        if time.monotonic() >= deadline:
            out = {"missing": True}
            break
        tries += 1
        time.sleep(0.2)
    if not out:
        fd = os.open(path, os.O_RDONLY)
        try:
            if a.get("flush"):
                os.fsync(fd)
            out = {"size": os.lseek(fd, 0, os.SEEK_END), "device": os.path.realpath(path), "path": path}
        finally:
            os.close(fd)
if a.get("map"):
    os.makedirs(os.path.dirname(a["map"]), mode=0o700, exist_ok=True)
if a.get("stale_maps"):
    for old in glob.glob(glob.escape(a["stale_maps"]) + "*"):
        if not (a.get("map") and old.startswith(a["map"])):
            os.unlink(old)
data = json.dumps(out).encode()
sys.stdout.buffer.write(b"%08x" % len(data) + data)
sys.stdout.flush()
"""


def parse_slot(slot: str) -> dict[str, Any]:
    """``"0:1"`` -> SCSI bus 0 unit 1; ``"sata1:3"`` -> SATA bus 1 unit 3 (the form ESX endpoints carry)."""
    kind = "sata" if slot.startswith("sata") else "scsi"
    bus, _, unit = slot.removeprefix("sata").partition(":")
    return {"kind": kind, "bus": int(bus), "unit": int(unit)}


def in_appliance(transport: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Run the device program in the appliance; its answer, or a provider error saying what broke."""
    try:
        process = transport.start_python(["-c", DEVICE_PROGRAM, json.dumps(args)])
    except TransportError as exc:
        raise TransientProviderError(f"cannot run a command in the appliance: {exc}") from None
    try:
        length = int(bytes(process.read_exact(8)), 16)
        return dict(json.loads(bytes(process.read_exact(length))))
    except Exception as exc:  # a broken channel, or a program that failed before answering
        tail = process.stderr_tail().strip()
        raise TransientProviderError(
            f"a command in the appliance failed: {exc}" + (f" ({tail})" if tail else "")
        ) from None
    finally:
        process.close()


POLL = 1.0


class ApplianceAccess:
    """SSH logins to a provider's appliances (one connection each, kept) and what runs through them.

    A subclass names the guest tools whose reported address is logged in to (``guest_address``) and how
    a hot-added disk's slot is found in the guest (``slot_args``); everything else is the same everywhere.
    """

    guest_tools = "the guest tools"

    def __init__(self, provider: Any) -> None:
        self.p = provider
        self._lock = threading.Lock()
        self._transports: dict[str, tuple[str, SshTransport]] = {}  # appliance -> (address, login)

    def guest_address(self, name: str) -> str | None:
        raise NotImplementedError

    def slot_args(self, slot: str) -> dict[str, Any]:
        """The device program's ``slot`` for a slot as the provider's endpoints name it."""
        return parse_slot(slot)

    @property
    def login_config(self) -> ApplianceLogin:
        login = self.p.config.appliance_login
        if login is None:
            raise ProviderError(
                f"provider {self.p.name} has no appliance_login: the writer runs inside the recovery "
                "appliance over SSH; set appliance_login (user, key, host_key or known_hosts)"
            )
        return login

    @property
    def configured(self) -> bool:
        return self.p.config.appliance_login is not None

    def map_path(self, disk: str) -> str:
        """Where the mirror keeps the block map of the disk file ``disk``, in the appliance."""
        digest = hashlib.sha256(disk.encode()).hexdigest()[:20]
        return f"{self.login_config.maps_dir.rstrip('/')}/{digest}.hvmap"

    # ------------------------------------------------------------ logging in

    def login(self, name: str) -> SshTransport:
        """The appliance's SSH login, once its guest tools report an address and its checked host key
        answers there."""
        login = self.login_config
        deadline = time.monotonic() + float(login.boot_timeout)
        last = f"{self.guest_tools} report no address yet"
        while True:
            address = self.guest_address(name)
            if address:
                with self._lock:
                    cached = self._transports.get(name)
                if cached and cached[0] == address:
                    return cached[1]
                if answers_ssh(address, login.port):
                    transport = self._transport(address)
                    try:
                        transport.connect()
                    except HostKeyError as exc:
                        transport.close()
                        raise ProviderError(
                            f"appliance {name}: {exc} (another machine may hold its address {address}); "
                            "fix appliance_login.host_key or known_hosts"
                        ) from None
                    except TransportError as exc:
                        transport.close()
                        last = str(exc)
                    else:
                        self._keep(name, address, transport)
                        return transport
                else:
                    last = (
                        f"{self.guest_tools} report {address}, but nothing answers SSH on port {login.port}"
                    )
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"appliance {name} did not let the provider in over SSH within "
                    f"{float(login.boot_timeout):.0f} s ({last}); check that it runs, that "
                    f"{self.guest_tools} and sshd run in it, and appliance_login"
                )
            time.sleep(POLL)

    def login_now(self, name: str) -> SshTransport | None:
        """The login if it can be had at once (no waiting for a boot), else None."""
        if not self.configured:
            return None
        with self._lock:
            cached = self._transports.get(name)
        if cached is not None:
            return cached[1]
        address = self.guest_address(name)
        if not address or not answers_ssh(address, self.login_config.port):
            return None
        transport = self._transport(address)
        try:
            transport.connect()
        except TransportError:
            transport.close()
            return None
        self._keep(name, address, transport)
        return transport

    def _transport(self, address: str) -> SshTransport:
        login = self.login_config
        return SshTransport(
            address,
            port=login.port,
            user=login.user,
            key_file=login.key,
            password=login.password,
            known_hosts=login.known_hosts,
            host_key=login.host_key,
            insecure=False,
            sudo=login.sudo,
        )

    def _keep(self, name: str, address: str, transport: SshTransport) -> None:
        with self._lock:
            old = self._transports.pop(name, None)
            self._transports[name] = (address, transport)
        if old is not None and old[1] is not transport:
            old[1].close()

    def forget(self, name: str) -> None:
        with self._lock:
            old = self._transports.pop(name, None)
        if old is not None:
            old[1].close()

    def close(self) -> None:
        for name in list(self._transports):
            self.forget(name)

    # ------------------------------------------------------------ devices and maps

    def sweep_maps(self, transport: SshTransport, disk: str) -> None:
        """Remove the block map of earlier attachments of ``disk``: called right before the hot-add."""
        in_appliance(transport, {"stale_maps": self.map_path(disk)})

    def device(self, transport: SshTransport, name: str, slot: str, size: int, disk: str) -> str:
        """The appliance's device for the disk at ``slot``, once it shows and measures ``size`` bytes;
        the folder of its block map is made ready."""
        login = self.login_config
        where = self._where(slot)
        seen = in_appliance(
            transport, {**where, "timeout": float(login.device_timeout), "map": self.map_path(disk)}
        )
        what = where.get("path") or f"the disk at {slot}"
        if seen.get("missing"):
            raise TransientProviderError(
                f"appliance {name} holds {disk} at {slot}, but {what} did not show in it within "
                f"{float(login.device_timeout):.0f} s; run again, or rescan its SCSI bus (echo '- - -' > "
                "/sys/class/scsi_host/hostN/scan)"
            )
        if seen.get("size") != size:
            raise ProviderError(
                f"{what} in appliance {name} holds {seen.get('size')} bytes, but {disk} at {slot} is {size}; "
                "the device found is not that disk: check the appliance's controllers"
                + (" and appliance_login.guest_devices" if "path" in where else "")
            )
        return str(seen.get("path") or seen["device"])

    def flush(self, name: str, slot: str) -> None:
        """Best effort before a hot-remove: every pass was made durable by the writer already."""
        transport = self.login_now(name)
        if transport is None:
            return
        with contextlib.suppress(ProviderError, TransportError):
            in_appliance(transport, {**self._where(slot), "timeout": 0, "flush": True})

    def _where(self, slot: str) -> dict[str, Any]:
        given = self.login_config.guest_devices.get(slot)
        return {"path": given} if given else {"slot": self.slot_args(slot)}
