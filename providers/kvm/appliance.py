"""Recovery appliance VMs on KVM (``appliance: shared`` and ``dedicated``): a small Debian VM on the target
host that the replica volumes are hot-plugged into while the mirror writes them.

What one appliance is made of, all removed by ``release``:
- a domain carrying the tool's owner metadata, tagged ``hvmigrate.role=appliance`` (anything else of the
  same name is refused, as for replica VMs);
- ``<name>-root.qcow2``, an overlay on the base volume: the appliance image (appliance_image.py)
  uploaded once per pool, named by its content hash. The base goes with the last overlay on it;
- ``<name>-config.raw``: a 1 MiB read-only disk holding a tar archive with the appliance's SSH host key,
  the client key it lets in, and its host name; uploaded through libvirt's volume upload;
- on this machine, under ``appliance_keys``: the client private key and the host key's public half, so
  the provider logs in with host-key checking on (the fingerprint is pinned, never learnt on first use).
  Keys are never journaled: ApplianceRef, endpoints and messages hold names, never key material.

Replica volumes are hot-plugged live as LUNs of the appliance's virtio-scsi controller (removing a SCSI
LUN needs nothing from the guest), one SCSI target per volume, each with a serial derived from its pool
and name, so the guest path ``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>`` is stable across
re-attachments and appliance restarts. Who holds a volume is recorded beside it as the usual attachment
marker ``<volume>.hvattach`` (so ``power_on``, ``create_vm`` and ``delete_disk`` refuse it as for host
attachments) plus ``<volume>.hvattach-<appliance>.<nonce>``, which says which appliance: a volume is
attached to one place at a time, and an appliance that restarted (losing its live LUNs) gets its own
volumes back. The nonce names the attachment, and with it the block map the mirror keeps for the volume
on the appliance's root: a map from an earlier attachment (the volume may have been written elsewhere
since) is never trusted, only swept away.

The appliance's address comes from the DHCP lease of ``appliance_network``; this machine must reach it,
which holds for local libvirt URIs (the host routes its own libvirt networks). For remote URIs the
appliance would have to be reached through the host's SSH login as a jump, which the SSH transport does
not offer yet: appliances are refused there, with ``appliance: host`` as the way that works.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import struct
import tarfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.transport import HostKeyError, TransportError
from orchestrator.transport.ssh import SshTransport
from providers.appliance_guest import in_appliance as _in_guest
from providers.base import (
    AgentLocation,
    ApplianceRef,
    DiskEndpoint,
    DiskRef,
    NicRequest,
    NotFound,
    ProviderError,
    TransientProviderError,
    VmRequest,
)
from providers.linux.power import answers_ssh

from .appliance_layout import CONFIG_SERIAL, MAPS_DIR, SCSI_BY_ID
from .connection import failure
from .debian_image import fingerprint_of
from .domain_xml import DiskSpec, DomainSpec, device_name, domain_xml, read_domain
from .volumes import ATTACH_SUFFIX, FILE_POOLS, OWNER_SUFFIX, Volume, check_name

if TYPE_CHECKING:
    from .provider import KvmProvider

MiB = 1024**2
ROLE_TAG = "hvmigrate.role"
ROLE = "appliance"
HOST_TAG = "hvmigrate.host"
MAX_DISKS = 60  # LUNs per appliance: one virtio-scsi controller, one SCSI target each (it allows 256)
CONFIG_SIZE = 1 * MiB
BASE_PREFIX = "hvm-appliance-base-"
UPLOAD_SUFFIX = ".hvupload"  # present while the base image is uploading: the volume is not whole yet
HOLDER_INFIX = ATTACH_SUFFIX + "-"  # <volume>.hvattach-<appliance>.<attachment nonce>
DEVICE_TIMEOUT = 60.0  # a hot-plugged LUN shows up in the guest (udev names it) within this
DETACH_TIMEOUT = 30.0
POLL = 1.0
_QCOW2_MAGIC = b"QFI\xfb"


def serial_for(pool: str, volume: str) -> str:
    """The LUN's serial: short (QEMU keeps 36 characters of a SCSI serial), stable for a pool and name."""
    return "hvm" + hashlib.sha256(f"{pool}/{volume}".encode()).hexdigest()[:16]


def device_path(serial: str) -> str:
    return SCSI_BY_ID + serial


def map_path(serial: str, nonce: str) -> str:
    """Where the mirror keeps the volume's block map in the appliance, for this attachment only."""
    return f"{MAPS_DIR}/{serial}-{nonce}.hvmap"


# ---------------------------------------------------------------- keys on this machine


@dataclass(frozen=True)
class ApplianceKeys:
    directory: Path
    client_key: Path  # OpenSSH private key the appliance lets in as root
    host_fingerprint: str  # SHA256:... of the appliance's own host key
    domain_uuid: str  # the domain these keys were made for


@dataclass(frozen=True)
class _Minted:
    keys: ApplianceKeys
    archive: bytes  # the config disk's content: holds the host's private key, never written here


class KeyStore:
    """Per-appliance keys under ``root/<libvirt host>/<appliance>``, folders 0700 and keys 0600."""

    def __init__(self, root: Path, hostname: str) -> None:
        self.root = root.expanduser()
        self.hostname = hostname

    def directory(self, name: str) -> Path:
        return self.root / self.hostname / name

    def load(self, name: str) -> ApplianceKeys | None:
        folder = self.directory(name)
        try:
            host_public = (folder / "host_ed25519.pub").read_text()
            domain = (folder / "domain").read_text().strip()
        except OSError:
            return None
        if not (folder / "client_ed25519").is_file():
            return None
        return ApplianceKeys(folder, folder / "client_ed25519", fingerprint_of(host_public), domain)

    def mint(self, name: str, domain_uuid: str) -> _Minted:
        """New keys for appliance ``name``, replacing older ones; the archive carries them to the guest."""
        client = Ed25519PrivateKey.generate()
        host = Ed25519PrivateKey.generate()
        comment = f" hvmigrate-appliance-{name}".encode()
        client_public = _public_line(client) + comment + b"\n"
        host_public = _public_line(host) + comment + b"\n"
        folder = self.directory(name)
        for level in (self.root, self.root / self.hostname):
            level.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = folder.with_name(f".{name}.{uuid.uuid4().hex[:8]}")
        staging.mkdir(mode=0o700)
        try:
            _write_private(staging / "client_ed25519", _private_pem(client))
            (staging / "client_ed25519.pub").write_bytes(client_public)
            (staging / "host_ed25519.pub").write_bytes(host_public)
            (staging / "domain").write_text(domain_uuid + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        archive = config_archive(
            {
                "authorized_keys": client_public,
                "ssh_host_ed25519_key": _private_pem(host),
                "ssh_host_ed25519_key.pub": host_public,
                "hostname": name.encode() + b"\n",
            }
        )
        loaded = self.load(name)
        assert loaded is not None
        return _Minted(loaded, archive)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.directory(name), ignore_errors=True)
        with contextlib.suppress(OSError):  # the host's folder goes with its last appliance
            (self.root / self.hostname).rmdir()


def _public_line(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def config_archive(files: dict[str, bytes]) -> bytes:
    """A tar archive of ``files``, zero-padded to the config disk's size (appliance_config.py reads it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if len(data) > CONFIG_SIZE:
        raise ProviderError(f"the appliance config archive is {len(data)} bytes, more than {CONFIG_SIZE}")
    return data + bytes(CONFIG_SIZE - len(data))


# ---------------------------------------------------------------- the image file


@dataclass(frozen=True)
class ImageFile:
    path: Path
    digest: str  # sha256 of the file
    size: int  # bytes of the file
    virtual_size: int  # bytes of the disk it holds

    @property
    def volume_name(self) -> str:
        return f"{BASE_PREFIX}{self.digest[:16]}.qcow2"


def read_image_file(path: Path) -> ImageFile:
    """The appliance image's identity and virtual size (from its qcow2 header), refused if it is not one."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(32)
            digest = hashlib.sha256(header)
            while block := handle.read(4 * MiB):
                digest.update(block)
            size = handle.tell()
    except FileNotFoundError:
        raise ProviderError(
            f"appliance_image {path} does not exist; build it (as root): "
            f"python -m providers.kvm.appliance_image build {path}"
        ) from None
    except OSError as exc:
        raise ProviderError(f"cannot read appliance_image {path}: {exc.strerror}") from None
    if len(header) < 32 or header[:4] != _QCOW2_MAGIC:
        raise ProviderError(
            f"appliance_image {path} is not a qcow2 image; build one with: "
            f"python -m providers.kvm.appliance_image build {path}"
        )
    (backing_offset,) = struct.unpack_from(">Q", header, 8)
    if backing_offset:
        raise ProviderError(f"appliance_image {path} has a backing file; give a standalone qcow2 image")
    (virtual_size,) = struct.unpack_from(">Q", header, 24)
    return ImageFile(path, digest.hexdigest(), size, virtual_size)


# ---------------------------------------------------------------- the manager


@dataclass(frozen=True)
class _Lun:
    pool: str
    volume: str
    dev: str
    serial: str | None
    target: int | None
    format: str


class Appliances:
    """The appliance half of the KVM provider: it uses the provider's connection, pools and helpers."""

    def __init__(self, provider: KvmProvider) -> None:
        self.p = provider
        self.config = provider.config
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._base_lock = threading.Lock()
        self._image: ImageFile | None = None
        self._image_stamp: tuple[int, int] | None = None
        self._transports: dict[str, tuple[str, str, SshTransport]] = {}  # name -> (domain uuid, ip, ...)

    # ------------------------------------------------------------ what is possible

    def modes(self) -> tuple[str, ...]:
        """The appliance modes this provider offers: VMs only with an image, and only on a local URI."""
        if self.config.appliance_image is not None and self.p.uri.is_local:
            return ("host", "shared", "dedicated")
        return ("host",)

    def _require_usable(self, name: str) -> None:
        if self.config.appliance_image is None:
            raise ProviderError(
                f"appliance {name}: this kvm provider has no appliance_image; build one (as root) with "
                "`python -m providers.kvm.appliance_image build /var/lib/hvmigrate/appliance.qcow2`, set "
                "appliance_image to it, or use target.appliance: host"
            )
        if not self.p.uri.is_local:
            raise ProviderError(
                f"appliance {name}: appliance VMs are reached on their libvirt network, which only a local "
                f"URI's host routes to this machine, and {self.p.where} is remote; use target.appliance: "
                "host (the writer runs on that host over SSH)"
            )

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())

    # ------------------------------------------------------------ lifecycle

    def find(self, host: str, name: str) -> ApplianceRef | None:
        check_name(name, "appliance")
        domain = self.p._lookup(name)
        if domain is None:
            return None
        facts = read_domain(domain.XMLDesc(0))
        if not facts.owned or facts.owner.get(ROLE_TAG) != ROLE:
            return None
        if facts.owner.get(HOST_TAG) != self.p.host_for(host):
            return None
        return ApplianceRef(self.p.name, domain.UUIDString(), name, facts.owner[HOST_TAG])

    def provision(self, host: str, name: str) -> ApplianceRef:
        """Idempotent: an appliance of that name is started if off, re-keyed if its keys are gone, and
        returned once it lets the provider in over SSH."""
        check_name(name, "appliance")
        self._require_usable(name)
        host = self.p.host_for(host)
        with self._lock(name):
            domain = self._owned(name, creating=True)
            if domain is None:
                domain = self._define(name, host)
            self._converge(domain, name)
            return ApplianceRef(self.p.name, domain.UUIDString(), name, host)

    def release(self, appliance: ApplianceRef) -> None:
        """Powers off and removes the appliance, its volumes and its keys; refuses while replica volumes
        are attached to it (detach them first). NotFound when it is gone already."""
        self.p._own(appliance.provider, f"appliance {appliance.name}")
        name = appliance.name
        check_name(name, "appliance")
        with self._lock(name):
            domain = self._owned(name)
            if domain is None:
                self._remove_own_volumes(name)  # what a release cut short by a crash left
                KeyStore(self.config.appliance_keys, self.p._host_name()).remove(name)
                self._remove_unused_base()
                raise NotFound(f"appliance {name} does not exist on {self.p.where}")
            live = self._luns(domain) if domain.isActive() else []
            if live:
                raise ProviderError(
                    f"appliance {name} still has {len(live)} replica volume(s) attached "
                    f"({', '.join(lun.volume for lun in live)}); detach them first (the detach_disks step)"
                )
            facts = read_domain(domain.XMLDesc(0))
            if domain.isActive():
                try:
                    domain.destroy()
                except libvirt.libvirtError as exc:
                    if domain.isActive():
                        raise failure(exc, f"powering off appliance {name}") from None
            self._forget_transport(name)
            for pool, volume in self._held(name):  # markers of LUNs a stopped appliance no longer has
                self._clear_holder(pool, volume, name)
            self._remove_own_volumes(name)
            KeyStore(self.config.appliance_keys, self.p._host_name()).remove(name)
            try:
                domain.undefineFlags(_undefine_flags())
            except libvirt.libvirtError as exc:
                raise failure(exc, f"removing appliance {name} from {self.p.where}") from None
            if facts.serial_log and self.p.uri.is_local:
                Path(facts.serial_log).unlink(missing_ok=True)
            self._remove_unused_base()

    # ------------------------------------------------------------ disks

    def attach(self, appliance: ApplianceRef, disk: DiskRef) -> DiskEndpoint:
        """Hot-plug the replica volume into the running appliance; idempotent (the same endpoint again)."""
        self.p._own(appliance.provider, f"appliance {appliance.name}")
        pool, volume_name = self.p._volume_of(disk)
        with self._lock(appliance.name):
            volume = self.p.pools.find(pool, volume_name)
            if volume is None:
                raise NotFound(
                    f"disk {disk.name} does not exist in pool {pool} on {self.p.where}; create it first"
                )
            vm = self.p._vm_using(pool, volume_name)
            if vm:
                raise ProviderError(
                    f"disk {disk.name} belongs to VM {vm}; the data plane cannot write a disk a VM uses: "
                    "delete the VM (disks are kept) first"
                )
            with self.p._lock:
                holder = self.holder(pool, volume_name)
                if holder not in (None, appliance.name):
                    raise ProviderError(
                        f"disk {disk.name} is attached to appliance {holder}; detach it there first"
                    )
                if holder is None and self.p.pools.attached(pool, volume_name):
                    raise ProviderError(
                        f"disk {disk.name} is attached to host {self.p._host_name()} for writing "
                        "(appliance: host); detach it there first"
                    )
                self._set_holder(pool, volume_name, appliance.name)  # both idempotent: a crash may have
                self.p.pools.mark_attached(pool, volume_name)  # come between them
            return self._plug(appliance.name, volume)

    def detach(self, appliance: ApplianceRef, disk: DiskRef) -> None:
        """Flush and hot-unplug the LUN, then clear the markers; idempotent, even with the appliance gone."""
        self.p._own(appliance.provider, f"appliance {appliance.name}")
        pool, volume_name = self.p._volume_of(disk)
        name = appliance.name
        with self._lock(name):
            domain = self._owned(name)
            if domain is not None and domain.isActive():
                lun = next((x for x in self._luns(domain) if (x.pool, x.volume) == (pool, volume_name)), None)
                if lun is not None:
                    self._unplug(domain, name, lun)
            with self.p._lock:
                if self.holder(pool, volume_name) == name:
                    self._clear_holder(pool, volume_name, name)

    def writer_location(self, endpoint: DiskEndpoint) -> AgentLocation:
        """The appliance's SSH login and the device path; a LUN the appliance lost (it restarted) comes
        back first, since the volume is still marked as its own."""
        name = endpoint.transport["appliance"]
        pool, volume_name = endpoint.transport["pool"], endpoint.transport["volume"]
        with self._lock(name):
            if self.holder(pool, volume_name) != name:
                raise ProviderError(
                    f"volume {volume_name} is not attached to appliance {name} any more; run the "
                    "attach_disks step again (migrate execute)"
                )
            volume = self.p.pools.find(pool, volume_name)
            if volume is None:
                raise NotFound(f"volume {volume_name} does not exist in pool {pool} on {self.p.where}")
            self._plug(name, volume)
            return AgentLocation(self._transports[name][2], endpoint.path)

    def holder(self, pool: str | None, volume: str) -> str | None:
        """The appliance a volume is attached to, from its ``.hvattach-<appliance>.<nonce>`` marker."""
        found = self._attachment(pool, volume)
        return found[0] if found else None

    def _attachment(self, pool: str | None, volume: str) -> tuple[str, str] | None:
        """(appliance, nonce) of the volume's attachment to an appliance, if it has one."""
        prefix = volume + HOLDER_INFIX
        for name in self.p.pools.pool(pool).listVolumes():
            if name.startswith(prefix):
                appliance, _, nonce = name[len(prefix) :].rpartition(".")
                return appliance, nonce
        return None

    def close(self) -> None:
        for name in list(self._transports):
            self._forget_transport(name)

    # ------------------------------------------------------------ internals: the domain

    def _owned(self, name: str, *, creating: bool = False) -> libvirt.virDomain | None:
        """The tool's appliance domain ``name``; another domain of that name is refused, never used."""
        domain = self.p._lookup(name)
        if domain is None:
            return None
        facts = read_domain(domain.XMLDesc(0))
        if not facts.owned:
            raise ProviderError(
                f"a VM named {name} already exists on {self.p.where} and was not created by hvmigrate; it "
                "is never used or changed: remove it yourself or rename the appliance"
                + (" (it is named after the target host or server)" if creating else "")
            )
        if facts.owner.get(ROLE_TAG) != ROLE:
            raise ProviderError(
                f"a VM named {name} on {self.p.where} is a replica hvmigrate created, not an appliance; "
                "delete it (migrate undo) or rename the server"
            )
        return domain

    def _define(self, name: str, host: str) -> libvirt.virDomain:
        config = self.config
        network = config.appliance_network
        self._check_network(network)
        found = self.p.abilities()
        if found.max_vcpus and config.appliance_cpus > found.max_vcpus:
            raise ProviderError(
                f"appliance_cpus is {config.appliance_cpus}; {self.p.where} allows {found.max_vcpus}"
            )
        request = VmRequest(
            name=name,
            host=None,
            cpus=config.appliance_cpus,
            memory=config.appliance_memory,
            firmware="bios",
            disks=(),
            nics=(NicRequest(network=network, mac=None),),
        )
        pool = self.p.pools.pool(None).name()
        spec = DomainSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            domain_type=found.domain_type,
            cpus=config.appliance_cpus,
            memory=config.appliance_memory,
            firmware="bios",
            disks=(
                DiskSpec(pool=pool, volume=_root_volume(name), format="qcow2", bus="virtio"),
                DiskSpec(
                    pool=pool,
                    volume=_config_volume(name),
                    format="raw",
                    bus="virtio",
                    serial=CONFIG_SERIAL,
                    readonly=True,
                ),
            ),
            nics=self.p._vm_nics(request),
            owner={"provider": self.p.name, ROLE_TAG: ROLE, HOST_TAG: host},
            serial_log=self.p._serial_log(name),
            scsi_controller=True,
        )
        try:
            return self.p._conn().defineXMLFlags(domain_xml(spec), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"defining appliance {name} on {self.p.where}") from None

    def _check_network(self, network: str) -> None:
        conn = self.p._conn()
        try:
            net = conn.networkLookupByName(network)
        except libvirt.libvirtError:
            raise ProviderError(
                f"appliance_network {network} does not exist on {self.p.where}; create a libvirt network "
                "with DHCP (or start the 'default' one: virsh net-start default) and name it there"
            ) from None
        if not net.isActive():
            raise ProviderError(
                f"appliance_network {network} on {self.p.where} is not active; start it: "
                f"virsh net-start {network}"
            )
        if ET.fromstring(net.XMLDesc(0)).find("ip/dhcp") is None:
            raise ProviderError(
                f"appliance_network {network} gives no DHCP leases, and the appliance's address comes from "
                "one; choose a libvirt network with <dhcp> (the 'default' NAT network has one)"
            )

    def _converge(self, domain: libvirt.virDomain, name: str) -> SshTransport:
        """Volumes there, keys matching, running, reachable: whatever part a crash or a reboot undid."""
        store = KeyStore(self.config.appliance_keys, self.p._host_name())
        domain_uuid = domain.UUIDString()
        keys = store.load(name)
        pool = self.p.pools.pool(None).name()
        config_volume = self.p.pools.find(pool, _config_volume(name))
        rekey = keys is None or keys.domain_uuid != domain_uuid or config_volume is None
        if rekey and domain.isActive():
            if self._luns(domain):
                raise ProviderError(
                    f"the SSH keys of appliance {name} are gone from {store.directory(name)} while volumes "
                    "are attached to it; detach them (migrate undo), then release and provision it again"
                )
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
        if self.p.pools.find(pool, _root_volume(name)) is None:
            with self._base_lock:
                base = self._base_volume()
                self._create_volume(pool, _root_volume(name), base.capacity, "qcow2", backing=base)
        if rekey:
            self._forget_transport(name)
            minted = store.mint(name, domain_uuid)
            if config_volume is None:
                self._create_volume(pool, _config_volume(name), CONFIG_SIZE, "raw")
            self._upload(pool, _config_volume(name), io.BytesIO(minted.archive), len(minted.archive))
            keys = minted.keys
        assert keys is not None
        if not domain.isActive():
            self._forget_transport(name)
            try:
                domain.create()
            except libvirt.libvirtError as exc:
                raise failure(exc, f"appliance {name} cannot start on {self.p.where}") from None
        return self._reachable(domain, name, keys)

    def _reachable(self, domain: libvirt.virDomain, name: str, keys: ApplianceKeys) -> SshTransport:
        """The appliance's SSH login, once its lease is known and its pinned host key answers."""
        mac = next(iter(read_domain(domain.XMLDesc(0)).nics), ("", ""))[1]
        cached = self._transports.get(name)
        address = self._lease(domain, mac)
        if cached and cached[:2] == (keys.domain_uuid, address):
            return cached[2]
        timeout = float(self.config.appliance_boot_timeout)
        deadline = time.monotonic() + timeout
        last = "no DHCP lease yet"
        while True:
            if not domain.isActive():
                raise ProviderError(
                    f"appliance {name} stopped while booting; its console:\n{self._console_tail(domain)}"
                )
            address = self._lease(domain, mac)
            if address and answers_ssh(address, 22):
                transport = _login(address, keys)
                try:
                    transport.connect()
                except HostKeyError as exc:
                    transport.close()
                    raise ProviderError(
                        f"appliance {name}: {exc} (another machine may hold its address {address})"
                    ) from None
                except TransportError as exc:
                    transport.close()
                    last = str(exc)
                else:
                    self._forget_transport(name)
                    self._transports[name] = (keys.domain_uuid, address, transport)
                    return transport
            elif address:
                last = f"leased {address}, but nothing answers SSH there yet"
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"appliance {name} did not let the provider in over SSH within {timeout:.0f} s ({last}); "
                    f"check appliance_network {self.config.appliance_network} and the console:\n"
                    f"{self._console_tail(domain)}"
                )
            time.sleep(POLL)

    def _lease(self, domain: libvirt.virDomain, mac: str) -> str | None:
        try:
            interfaces = domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
        except libvirt.libvirtError:
            return None
        for interface in interfaces.values():
            if (interface.get("hwaddr") or "").lower() != mac:
                continue
            for entry in interface.get("addrs") or []:
                if entry.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return str(entry["addr"])
        return None

    def _console_tail(self, domain: libvirt.virDomain, lines: int = 20) -> str:
        log = read_domain(domain.XMLDesc(0)).serial_log
        if not log or not self.p.uri.is_local:
            return "(no console log on this machine)"
        try:
            return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no console log at {log})"

    def _login_now(self, domain: libvirt.virDomain, name: str) -> SshTransport | None:
        """The appliance's login if it can be had at once (no waiting for a boot), else None."""
        cached = self._transports.get(name)
        if cached is not None:
            return cached[2]
        keys = KeyStore(self.config.appliance_keys, self.p._host_name()).load(name)
        if keys is None or keys.domain_uuid != domain.UUIDString():
            return None
        address = self._lease(domain, next(iter(read_domain(domain.XMLDesc(0)).nics), ("", ""))[1])
        if not address or not answers_ssh(address, 22):
            return None
        transport = _login(address, keys)
        try:
            transport.connect()
        except TransportError:
            transport.close()
            return None
        self._transports[name] = (keys.domain_uuid, address, transport)
        return transport

    def _forget_transport(self, name: str) -> None:
        cached = self._transports.pop(name, None)
        if cached is not None:
            cached[2].close()

    # ------------------------------------------------------------ internals: LUNs

    def _luns(self, domain: libvirt.virDomain) -> list[_Lun]:
        """The SCSI disks the running appliance holds (replica volumes; its own disks are virtio)."""
        luns = []
        for disk in ET.fromstring(domain.XMLDesc(0)).findall("devices/disk"):
            target, source = disk.find("target"), disk.find("source")
            if target is None or source is None or target.get("bus") != "scsi":
                continue
            address = disk.find("address")
            driver = disk.find("driver")
            luns.append(
                _Lun(
                    pool=source.get("pool", ""),
                    volume=source.get("volume", ""),
                    dev=target.get("dev", ""),
                    serial=disk.findtext("serial"),
                    target=int(address.get("target", "0")) if address is not None else None,
                    format=driver.get("type", "raw") if driver is not None else "raw",
                )
            )
        return luns

    def _plug(self, name: str, volume: Volume) -> DiskEndpoint:
        """Make sure the running appliance holds ``volume`` as a LUN and the guest sees it; the caller
        holds the appliance's lock and has marked the volume as this appliance's."""
        domain = self._owned(name)
        if domain is None:
            raise NotFound(f"appliance {name} does not exist on {self.p.where}; provision it first")
        transport = self._converge(domain, name)
        serial = serial_for(volume.pool, volume.name)
        attachment = self._attachment(volume.pool, volume.name)
        if attachment is None or attachment[0] != name:
            raise ProviderError(f"volume {volume.name} is not marked as attached to appliance {name}")
        blockmap = map_path(serial, attachment[1])
        luns = self._luns(domain)
        if not any((lun.pool, lun.volume) == (volume.pool, volume.name) for lun in luns):
            if len(luns) >= MAX_DISKS:
                raise ProviderError(
                    f"appliance {name} already has {MAX_DISKS} volumes attached (the limit); use "
                    "appliance: dedicated or wait for a detach"
                )
            used_targets = {lun.target for lun in luns}
            used_devs = {
                t.get("dev") for t in ET.fromstring(domain.XMLDesc(0)).findall("devices/disk/target")
            }
            target = next(i for i in range(256) if i not in used_targets)
            dev = next(d for d in (device_name("sd", i) for i in range(512)) if d not in used_devs)
            xml = lun_xml(volume.pool, volume.name, volume.format, dev, serial, target)
            try:
                domain.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise failure(exc, f"attaching volume {volume.name} to appliance {name}") from None
        path = device_path(serial)
        seen = _in_guest(
            transport,
            {"path": path, "timeout": DEVICE_TIMEOUT, "map": blockmap, "stale_maps": f"{MAPS_DIR}/{serial}-"},
        )
        if seen.get("missing"):
            raise TransientProviderError(
                f"appliance {name} holds volume {volume.name} but no {path} appeared in it within "
                f"{DEVICE_TIMEOUT:.0f} s; run again, or look at its console"
            )
        if seen.get("size") != volume.capacity:
            raise ProviderError(
                f"volume {volume.name} shows {seen.get('size')} bytes in appliance {name}, not its "
                f"{volume.capacity}; detach it and attach it again"
            )
        return DiskEndpoint(
            "block",
            path,
            volume.capacity,
            host=name,
            transport={
                "appliance": name,
                "pool": volume.pool,
                "volume": volume.name,
                "map_path": blockmap,
            },
        )

    def _unplug(self, domain: libvirt.virDomain, name: str, lun: _Lun) -> None:
        """Flush what the guest may still cache for the LUN, then pull it; QEMU flushes its side itself.

        The writer made every pass durable already, so a guest that cannot be reached (it hangs, its
        keys are gone) does not stop the unplug: the flush is a second line, not the first.
        """
        transport = self._login_now(domain, name)
        if transport is not None and lun.serial:
            with contextlib.suppress(ProviderError, TransportError):
                _in_guest(transport, {"path": device_path(lun.serial), "timeout": 0, "flush": True})
        xml = lun_xml(lun.pool, lun.volume, lun.format, lun.dev, lun.serial, lun.target)
        try:
            domain.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"detaching volume {lun.volume} from appliance {name}") from None
        deadline = time.monotonic() + DETACH_TIMEOUT
        while any(x.dev == lun.dev for x in self._luns(domain)):
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"volume {lun.volume} is still in appliance {name} {DETACH_TIMEOUT:.0f} s after the "
                    "unplug; run the detach again"
                )
            time.sleep(0.2)

    # ------------------------------------------------------------ internals: markers and volumes

    def _set_holder(self, pool: str, volume: str, name: str) -> None:
        """Mark the volume as attached to appliance ``name`` under a new nonce, unless it already is."""
        if self._attachment(pool, volume) is None:
            nonce = uuid.uuid4().hex[:12]
            self._marker(self.p.pools.pool(pool), f"{volume}{HOLDER_INFIX}{name}.{nonce}")

    def _marker(self, pool: libvirt.virStoragePool, name: str) -> None:
        """An empty marker volume, created unless it is there."""
        if _lookup_volume(pool, name) is None:
            self._create_in(pool, name, 0, "raw")

    def _remove_lone_markers(self, pool: libvirt.virStoragePool, volume: str) -> None:
        """Markers of ``volume`` left without it (a crash between creating the marker and the volume)."""
        if _lookup_volume(pool, volume) is not None:
            return
        for suffix in (UPLOAD_SUFFIX, OWNER_SUFFIX):  # the ownership marker last, as volumes.py does
            marker = _lookup_volume(pool, volume + suffix)
            if marker is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    marker.delete(0)

    def _clear_holder(self, pool: str, volume: str, name: str) -> None:
        self.p.pools.clear_attached(pool, volume)
        found = self._attachment(pool, volume)
        if found is None or found[0] != name:
            return
        marker = _lookup_volume(self.p.pools.pool(pool), f"{volume}{HOLDER_INFIX}{name}.{found[1]}")
        if marker is not None:
            try:
                marker.delete(0)
            except libvirt.libvirtError as exc:
                raise failure(exc, f"clearing the attachment of {volume} to appliance {name}") from None

    def _held(self, name: str) -> list[tuple[str, str]]:
        """(pool, volume) of every volume marked as attached to appliance ``name``, in any file pool."""
        held = []
        for pool in self.p._conn().listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            if ET.fromstring(pool.XMLDesc(0)).get("type") not in FILE_POOLS:
                continue
            with contextlib.suppress(libvirt.libvirtError):
                for marker in pool.listVolumes():
                    volume, infix, rest = marker.rpartition(HOLDER_INFIX)
                    if infix and rest.rpartition(".")[0] == name:
                        held.append((pool.name(), volume))
        return held

    def _remove_own_volumes(self, name: str) -> None:
        lib_pool = self.p.pools.pool(None)
        for volume in (_root_volume(name), _config_volume(name)):
            if self.p.pools.find(lib_pool.name(), volume) is not None:
                with contextlib.suppress(NotFound):
                    self.p.pools.delete(lib_pool.name(), volume)
            self._remove_lone_markers(lib_pool, volume)

    def _base_volume(self) -> Volume:
        """The appliance image as a volume of the default pool, uploaded when this pool lacks it."""
        image = self._image_file()
        pools = self.p.pools
        lib_pool = pools.pool(None)
        pools.require_files(lib_pool)
        name = image.volume_name
        if _lookup_volume(lib_pool, name + UPLOAD_SUFFIX) is not None:  # an upload a crash cut short
            with contextlib.suppress(NotFound):
                pools.delete(lib_pool.name(), name)
            self._remove_lone_markers(lib_pool, name)
        found = pools.find(lib_pool.name(), name)
        if found is None:
            if pools.foreign(lib_pool.name(), name):
                raise ProviderError(
                    f"a volume named {name} exists in pool {lib_pool.name()} and was not created by "
                    "hvmigrate; remove it so the appliance image can be uploaded under that name"
                )
            self._marker(lib_pool, name + OWNER_SUFFIX)
            self._marker(lib_pool, name + UPLOAD_SUFFIX)
            self._create_in(lib_pool, name, image.size, "raw")
            with open(image.path, "rb") as handle:
                self._upload(lib_pool.name(), name, handle, image.size)
            _refresh(lib_pool)
            marker = _lookup_volume(lib_pool, name + UPLOAD_SUFFIX)
            if marker is not None:
                marker.delete(0)
            found = pools.find(lib_pool.name(), name)
            if found is None:
                raise ProviderError(f"the appliance image volume {name} vanished right after its upload")
        # qcow2 whatever libvirt probed it as; the disk it holds is the header's size, not the file's
        return Volume(found.pool, found.name, found.path, image.virtual_size, found.allocation, "qcow2")

    def _image_file(self) -> ImageFile:
        """The configured image, hashed once per provider (again only when the file changes)."""
        path = Path(self.config.appliance_image or "").expanduser()
        try:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        if self._image is None or self._image.path != path or stamp != self._image_stamp:
            self._image = read_image_file(path)
            self._image_stamp = stamp
        return self._image

    def _remove_unused_base(self) -> None:
        """The base volume goes with the last overlay on it (so a released wave leaves nothing behind)."""
        if self.config.appliance_image is None:
            return
        with self._base_lock:
            lib_pool = self.p.pools.pool(None)
            bases = [v for v in lib_pool.listVolumes() if v.startswith(BASE_PREFIX) and v.endswith(".qcow2")]
            if not bases:
                return
            backing = set()
            for volume in lib_pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    path = ET.fromstring(volume.XMLDesc(0)).findtext("backingStore/path")
                    if path:
                        backing.add(path)
            for base in bases:
                found = self.p.pools.find(lib_pool.name(), base)
                if found is not None and found.path not in backing:
                    with contextlib.suppress(NotFound):
                        self.p.pools.delete(lib_pool.name(), base)
                self._remove_lone_markers(lib_pool, base)

    def _create_volume(
        self, pool: str, name: str, capacity: int, fmt: str, *, backing: Volume | None = None
    ) -> None:
        """A volume with its ownership marker created first (volumes.py's convention)."""
        lib_pool = self.p.pools.pool(pool)
        self._marker(lib_pool, name + OWNER_SUFFIX)
        if _lookup_volume(lib_pool, name) is None:
            self._create_in(lib_pool, name, capacity, fmt, backing=backing)

    def _create_in(
        self,
        pool: libvirt.virStoragePool,
        name: str,
        capacity: int,
        fmt: str,
        *,
        backing: Volume | None = None,
    ) -> libvirt.virStorageVol:
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", type=fmt)
        if fmt == "qcow2":
            ET.SubElement(target, "compat").text = "1.1"
        if backing is not None:
            store = ET.SubElement(root, "backingStore")
            ET.SubElement(store, "path").text = backing.path
            ET.SubElement(store, "format", type=backing.format)
        try:
            return pool.createXML(ET.tostring(root, encoding="unicode"), 0)
        except libvirt.libvirtError as exc:
            raise failure(exc, f"creating volume {name} in pool {pool.name()} on {self.p.where}") from None

    def _upload(self, pool: str, name: str, reader: Any, length: int) -> None:
        """Send ``length`` bytes into the volume through libvirt (works over any URI, not just here)."""
        lib_pool = self.p.pools.pool(pool)
        volume = lib_pool.storageVolLookupByName(name)
        stream = self.p._conn().newStream(0)
        try:
            volume.upload(stream, 0, length, 0)
            stream.sendAll(lambda _stream, count, handle: handle.read(count), reader)
            stream.finish()
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise failure(exc, f"uploading into volume {name} in pool {pool} on {self.p.where}") from None


# ---------------------------------------------------------------- helpers


def lun_xml(pool: str, volume: str, fmt: str, dev: str, serial: str | None, target: int | None) -> str:
    """One replica volume as a LUN of controller 0, target ``target``: what hot-plug and unplug send."""
    disk = ET.Element("disk", type="volume", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt, discard="unmap", detect_zeroes="unmap")
    ET.SubElement(disk, "source", pool=pool, volume=volume)
    ET.SubElement(disk, "target", dev=dev, bus="scsi")
    if serial:
        ET.SubElement(disk, "serial").text = serial
    if target is not None:
        ET.SubElement(disk, "address", type="drive", controller="0", bus="0", target=str(target), unit="0")
    return ET.tostring(disk, encoding="unicode")


def _login(address: str, keys: ApplianceKeys) -> SshTransport:
    """root on the appliance with its minted client key; its host key pinned, so checked, never learnt."""
    return SshTransport(address, user="root", key_file=keys.client_key, host_key=keys.host_fingerprint)


def _lookup_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return None


def _refresh(pool: libvirt.virStoragePool) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)


def _root_volume(name: str) -> str:
    return f"{name}-root.qcow2"


def _config_volume(name: str) -> str:
    return f"{name}-config.raw"


def _undefine_flags() -> int:
    return (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
    )
