"""What every recovery appliance VM does the same way, whichever hypervisor runs it (KVM, ESX).

The provider logs in to the appliance over SSH with host-key checking on, and runs small stdlib programs
in it with the appliance's own python3: find the device of a hot-added disk, wait for it to show, measure
it, flush it, and keep the block maps of the mirror on the appliance's root (``MAPS_DIR``), where a map of
an earlier attachment is swept away rather than trusted. The agent's writer then runs there and writes the
device (orchestrator/mirror/route.py only sees an ``AgentLocation``).

A device is named either by its path (KVM: a stable ``/dev/disk/by-id/...`` serial) or by its place on
the virtual hardware (ESX: SCSI ``bus:unit``, or ``sataBUS:UNIT``), which the program resolves in sysfs:
the guest's SCSI hosts of the controller kind, in PCI order (vSphere puts controller N behind the Nth
PCI bridge), the ``bus``-th of them; then ``/sys/class/scsi_disk/H:0:UNIT:0`` for SCSI, or the
``unit``-th port (one SCSI host each) of the ``bus``-th AHCI controller for SATA.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from orchestrator.transport import TransportError
from providers.base import TransientProviderError

MAPS_DIR = "/var/lib/hvmigrate/maps"  # block maps of the attached replica disks, on the appliance's root
PROBE_TIMEOUT = 3.0

# Run inside the appliance over SSH (its python3). Arguments (JSON): "path" or "slot" ({"kind": "scsi" or
# "sata", "bus", "unit"}), "timeout", optional "flush", "map" (prepare its folder), "stale_maps" (a prefix:
# maps starting with it, other than "map", are removed; with no "map", all of them), "sysfs" and "dev" (the
# guest's /sys and /dev, other roots only in tests).
# Answers length-prefixed JSON: {"size", "device"} or {"missing": true}.
DEVICE_PROGRAM = r"""
import glob, json, os, sys, time
a = json.loads(sys.argv[1])
sysfs, dev = a.get("sysfs") or "/sys", a.get("dev") or "/dev"
DRIVERS = {
    "scsi": {"vmw_pvscsi", "mptsas", "mptspi", "mpt2sas", "mpt3sas", "BusLogic"},
    "sata": {"ahci"},
}

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
            found.setdefault(os.path.dirname(device), []).append(int(os.path.basename(host)[4:]))
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
    blocks = glob.glob("%s/class/scsi_disk/%d:0:%d:0/device/block/*" % (sysfs, host, target))
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


def answers_ssh(address: str, port: int = 22) -> bool:
    """A cheap look before logging in: an SSH banner on the port (the login itself waits much longer)."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT) as conn:
            conn.settimeout(PROBE_TIMEOUT)
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False
