"""The playbook format (``apiVersion: hvmigrate/v1``) as pydantic models.

These models are the contract of DESIGN.md: fields may be added, never renamed. Every model forbids
unknown keys, because a misspelt option that is silently ignored is how a migration goes wrong at 3 a.m.
Descriptions double as the field reference (``migrate schema`` and docs/playbook.md are generated from them).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .secrets import Secret, SecretStr
from .units import Duration, Rate, Size

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


# ---------------------------------------------------------------- defaults


class BandwidthWindow(Model):
    """A weekly window with its own limit (the reference product's scheduled bandwidth)."""

    days: str = Field("mon-sun", description="days the window applies: mon-fri, sat,sun, mon")
    hours: str = Field("00:00-24:00", description="local time range HH:MM-HH:MM; may wrap past midnight")
    limit: Rate | None = Field(None, description="bytes/s inside the window; omit for unlimited")

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        day_set(value)
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        hour_range(value)
        return value


def day_set(text: str) -> set[int]:
    """Weekday numbers (Monday 0) from ``mon-fri`` or ``sat,sun``."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            if first not in _DAYS or last not in _DAYS:
                raise ValueError(f"expected days like mon-fri or sat,sun, got {text!r}")
            a, b = _DAYS.index(first), _DAYS.index(last)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif part in _DAYS:
            days.add(_DAYS.index(part))
        else:
            raise ValueError(f"expected days like mon-fri or sat,sun, got {text!r}")
    return days


def hour_range(text: str) -> tuple[int, int]:
    """Minutes since midnight (start, end) from ``08:00-18:00``."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not match:
        raise ValueError(f"expected hours like 08:00-18:00, got {text!r}")
    h1, m1, h2, m2 = map(int, match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or start > 1440 or end > 1440 or start == end:
        raise ValueError(f"{text!r} is not a valid time range")
    return start, end


class Bandwidth(Model):
    limit: Rate | None = Field(None, description="bytes/s outside any window; omit for unlimited")
    schedule: list[BandwidthWindow] = Field(default_factory=list, description="first matching window wins")


class MirrorOptions(Model):
    compression: Literal["zstd", "zlib", "none"] = Field(
        "zstd", description="on the wire; skipped per chunk when it does not pay"
    )
    compression_level: int = Field(3, ge=1, le=19)
    verify: bool = Field(True, description="compare per-chunk hashes after writing, then a whole-disk digest")
    chunk_size: Size = Field(4 * 1024**2, description="unit of hashing, transfer and resume")
    streams: int = Field(
        2,
        ge=1,
        le=64,
        description="chunks of one disk read, hashed and compressed at once by the source's agent "
        "(disks themselves copy side by side, up to 4 per server)",
    )
    bandwidth: Bandwidth = Field(default_factory=Bandwidth)

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value < 64 * 1024 or value > 256 * 1024**2 or value & (value - 1):
            raise ValueError("chunk_size must be a power of two between 64KiB and 256MiB")
        return value


class CutoverOptions(Model):
    mode: Literal["manual", "auto"] = Field(
        "manual",
        description="auto: cut over as soon as the mirror is in "
        "sync; manual: stop at the cutover gate and wait for `migrate cutover`",
    )
    shutdown_source: bool = Field(True, description="shut the source down after the final sync")
    unquiesced_writes: Literal["warn", "refuse", "allow"] = Field(
        "warn",
        description="an SSH source without quiesce (quiesce: none, no quiesce_command) whose source disks "
        "hold filesystems mounted read-write has them copied by the final pass while they are written "
        "(crash-consistent, as after a power cut). warn: a warning names each disk and mountpoint and the "
        "cutover goes on (the default: journaling filesystems recover such a copy, playbooks that worked "
        "keep working, and `migrate validate` warns beforehand as source.no_quiesce); refuse: "
        "quiesce_source fails before anything stops; allow: accepted without a word, source.no_quiesce "
        "included",
    )
    pre_script: str | None = Field(
        None,
        description="command run on the orchestrator before cutover; "
        "a failure stops the cutover with the source untouched",
    )
    post_script: str | None = Field(None, description="command run after the replica answers and DNS moved")
    script_timeout: Duration = Field(600, description="how long a pre/post script may run")
    boot_timeout: Duration = Field(600, description="how long to wait for the replica to answer")


class SyncOptions(Model):
    interval: Duration = Field(3600, description="time between incremental passes while waiting at the gate")
    max_lag: Duration = Field(
        86400, description="cutover refuses when the last pass is older (unless forced)"
    )
    adaptive: bool = Field(
        False,
        description="next pass after min(max(interval, last pass's duration / 2), max_interval): a slow "
        "pass gets a pause of at least half its length, so passes never take more than two thirds of the "
        "time, and max_interval bounds how stale the replica can get",
    )
    max_interval: Duration = Field(
        43200, description="with adaptive: the longest wait between passes, whatever the last one took"
    )

    @model_validator(mode="after")
    def _bounds(self) -> SyncOptions:
        if self.adaptive and self.max_interval < self.interval:
            raise ValueError("max_interval must be at least interval (the shortest wait)")
        return self


class Limits(Model):
    max_parallel_servers: int = Field(8, ge=1, le=10000)
    per_source_host: int = Field(4, ge=1, le=1000, description="data-moving steps at once per source host")
    per_target_host: int = Field(10, ge=1, le=1000, description="steps at once per target host")
    retries: int = Field(3, ge=0, le=20, description="attempts after the first for retryable steps")
    retry_backoff: Duration = Field(5, description="first retry delay; doubles each attempt")


class SimulationModel(Model):
    """Cost model of the dry run; every figure can be measured once and written here."""

    link_bandwidth: Rate = Field(1250 * 1000**2 // 10, description="source to target link (default 1 Gbit/s)")
    disk_read: Rate = Field(400 * 1024**2, description="source disk read throughput")
    disk_write: Rate = Field(400 * 1024**2, description="target disk write throughput")
    compression_ratio: float = Field(0.6, gt=0, le=1, description="bytes on the wire / bytes read")
    zero_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="share of zero chunks; None: measure from the source where it can be read, else 0.5",
    )
    change_rate: Rate = Field(2 * 1024**2 // 60, description="bytes/s the source changes while running")
    appliance_boot: Duration = 120
    vm_create: Duration = 15
    disk_create: Duration = 5
    disk_attach: Duration = 3
    replica_boot: Duration = 60
    quiesce: Duration = 10
    source_shutdown: Duration = 60
    staging: Duration = 20
    dns_update: Duration = 2
    start_time: str = Field("2026-01-05T20:00", description="wall-clock start for bandwidth schedules")


class Defaults(Model):
    mirror: MirrorOptions = Field(default_factory=MirrorOptions)
    cutover: CutoverOptions = Field(default_factory=CutoverOptions)
    sync: SyncOptions = Field(default_factory=SyncOptions)
    limits: Limits = Field(default_factory=Limits)
    simulation: SimulationModel = Field(default_factory=SimulationModel)


# ---------------------------------------------------------------- providers


class SimProviderConfig(Model):
    """The embedded simulated hypervisor: VMs as JSON, disks as sparse files under ``root``."""

    type: Literal["sim"]
    root: Path = Field(Path("./sim-hypervisor"), description="directory holding the simulated host")
    host: str = Field("sim-host-1", description="name of the simulated host")
    datastores: dict[str, Size] = Field(
        default_factory=lambda: {"default": 64 * 1024**3}, description="datastore name -> capacity"
    )
    networks: list[str] = Field(default_factory=lambda: ["prod", "test", "isolated"])
    firmware: list[Literal["bios", "uefi"]] = Field(default_factory=lambda: ["bios", "uefi"])
    max_nics: int = Field(16, ge=1)


class KvmProviderConfig(Model):
    """A libvirt host with QEMU, reached through any libvirt URI.

    For ``qemu+ssh://`` URIs the SSH settings below serve both libvirt's own connection (``keyfile`` and,
    for libssh transports, ``known_hosts`` are added to the URI unless it names them) and the writer that
    ``appliance: host`` runs on the host over SSH.
    """

    type: Literal["kvm"]
    uri: str = Field(
        "qemu:///system",
        description="any libvirt URI: qemu:///system, qemu+ssh://root@host/system, qemu+tls://host/system",
    )
    storage_pool: str = Field("default", description="storage pool for replica volumes (the datastore)")
    domain_type: Literal["auto", "kvm", "qemu"] = Field(
        "auto",
        description="auto: kvm where the host offers it, else qemu (TCG); force qemu on nested hosts "
        "where a kvm guest spins without booting",
    )
    shutdown_timeout: Duration = Field(
        120, description="how long a clean power-off may take before it fails (force stops at once)"
    )
    ssh_key: Path | None = Field(None, description="qemu+ssh:// only: private key of the SSH login")
    known_hosts: Path | None = Field(
        None, description="qemu+ssh:// only: known_hosts holding the host's key; default ~/.ssh/known_hosts"
    )
    host_key: str | None = Field(
        None, description="qemu+ssh:// only: the host's pinned SSH key fingerprint, SHA256:..."
    )
    insecure: bool = Field(
        False, description="qemu+ssh:// only: accept any SSH host key for the writer (explicit opt-in only)"
    )
    sudo: bool = Field(
        False, description="qemu+ssh:// only: run the writer and qemu-nbd under sudo -n when not root"
    )
    appliance_image: Path | None = Field(
        None,
        description="the recovery appliance image (qcow2, built by `python -m providers.kvm.appliance_image "
        "build PATH`); setting it enables appliance: shared and dedicated (local libvirt URIs). Uploaded "
        "into storage_pool as a base volume that each appliance boots an overlay of; it goes with the last",
    )
    appliance_network: str = Field(
        "default",
        description="libvirt network for the appliances' NIC: it must give DHCP leases (libvirt's dnsmasq) "
        "and this machine must reach its addresses, as it does on the 'default' NAT network",
    )
    appliance_cpus: int = Field(2, ge=1, le=64, description="vCPUs of each appliance VM")
    appliance_memory: Size = Field(1024**3, description="memory of each appliance VM")
    appliance_boot_timeout: Duration = Field(
        600, description="how long an appliance may take from power-on to letting the provider in over SSH"
    )
    appliance_keys: Path = Field(
        Path("~/.local/state/hvmigrate/appliance-keys"),
        description="folder on this machine for the SSH keys minted per appliance (mode 0700; never "
        "journaled); an appliance's keys go when it is released",
    )


class ApplianceLogin(Model):
    """How the provider logs in to its recovery appliance over SSH, at the address the guest tools report
    (ESX: VMware Tools; Hyper-V: the guest's KVP daemon), to run the writer there. Host-key checking stays
    on: pin the appliance image's host key or name a known_hosts file holding it (there is no insecure
    switch)."""

    user: str = Field("root", description="the writer opens block devices: root, or a user with sudo")
    port: int = Field(22, ge=1, le=65535)
    key: Path | None = Field(None, description="private key the appliance lets in")
    password: SecretStr | None = None
    host_key: str | None = Field(None, description="pinned host key fingerprint of the appliance, SHA256:...")
    known_hosts: Path | None = Field(None, description="known_hosts file holding the appliance's host key")
    sudo: bool = Field(False, description="run the writer under `sudo -n` when user is not root")
    boot_timeout: Duration = Field(
        600,
        description="how long an appliance may take from power-on until its guest tools report an "
        "address and SSH lets the provider in",
    )
    device_timeout: Duration = Field(
        60, description="how long a hot-added disk may take to show in the guest"
    )
    maps_dir: str = Field(
        "/var/lib/hvmigrate/maps", description="folder on the appliance's root for the mirror's block maps"
    )
    guest_devices: dict[str, str] = Field(
        default_factory=dict,
        description="test beds only: the appliance's device of each hot-added slot (ESX: bus:unit 0:1, "
        "sata0:0; Hyper-V: SCSI controller:location 0:1) given as a path, instead of finding it by its "
        "address in the guest's sysfs; on vcsim the VMDK's -flat.vmdk, on the WinRM stand-in the VHDX's "
        "raw file stands for that device",
    )

    @model_validator(mode="after")
    def _checked(self) -> ApplianceLogin:
        if not self.host_key and not self.known_hosts:
            raise ValueError(
                "appliance_login needs host_key (SHA256:... of the appliance's host key) or known_hosts; "
                "the appliance's host key is always checked"
            )
        if self.key is None and self.password is None:
            raise ValueError("appliance_login needs key (or password) to log in to the appliance")
        return self


class EsxProviderConfig(Model):
    """A vCenter (datacenter, optionally a cluster) or a standalone ESXi, through the vSphere API.

    The certificate is always verified: against ``ca_bundle`` (default: the system's CAs), or as the one
    certificate whose SHA-256 ``thumbprint`` is pinned; ``insecure: true`` must be said explicitly.
    """

    type: Literal["esx"]
    host: str
    port: int = Field(443, ge=1, le=65535)
    user: str
    password: SecretStr
    datacenter: str | None = None
    cluster: str | None = None
    esx_host: str | None = Field(None, description="a specific ESXi host inside the cluster")
    resource_pool: str | None = None
    folder: str | None = None
    datastore: str | None = Field(None, description="default datastore for config files and disks")
    thumbprint: str | None = Field(None, description="SHA-256 (or SHA-1) certificate thumbprint to pin")
    ca_bundle: Path | None = None
    insecure: bool = Field(False, description="skip certificate checks; shown as a warning in every report")
    appliance: str | None = Field(None, description="name of an existing recovery appliance VM")
    appliance_template: str | None = Field(
        None, description="template VM to clone appliances from (OVA deployment is not built yet)"
    )
    appliance_login: ApplianceLogin | None = Field(
        None, description="SSH login to the appliance, for disk_writer: appliance (the writer runs there)"
    )
    upload_dir: Path = Field(
        Path("~/.local/state/hvmigrate/esx-upload"),
        description="appliance: host (cold path): folder on this machine where each replica disk is built "
        "as a local image before it is uploaded through the datastore's /folder interface",
    )
    disk_writer: Literal["appliance", "datastore_path"] = Field(
        "appliance",
        description="how replica disks hot-added to the appliance are written: appliance (by a writer "
        "inside the recovery appliance); datastore_path (test beds only: the datastore is a folder on this "
        "machine, as vcsim's are, and the VMDK's -flat.vmdk is written in place, standing for the disk the "
        "appliance sees; refused for any other datastore)",
    )
    scsi_controller: Literal["pvscsi", "lsilogic-sas"] = Field(
        "lsilogic-sas",
        description="SCSI controller for disks whose controller is scsi or unset: "
        "lsilogic-sas boots any guest; "
        "pvscsi is faster but needs its driver in the guest (Linux has it, Windows needs VMware Tools)",
    )
    disk_folder: str = Field(
        "hvmigrate",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="datastore folder for replica VMDKs",
    )
    api_timeout: Duration = Field(60, description="how long one vSphere API call may take")
    task_timeout: Duration = Field(
        3600, description="how long one vSphere task (create, copy or delete a disk, create a VM) may take"
    )
    shutdown_timeout: Duration = Field(
        120, description="how long a clean (guest) power-off may take before it fails (force stops at once)"
    )


def _winrm_login_required(config: Any, where: str) -> Any:
    """A WinRM login is needed except where hvmigrate runs on ``where`` itself (transport: local)."""
    if config.transport != "local" and (config.user is None or config.password is None):
        raise ValueError(
            f"user and password are required with transport {config.transport} (WinRM); set them, or use "
            f"transport: local when the orchestrator runs on {where} itself"
        )
    return config


class HypervProviderConfig(Model):
    type: Literal["hyperv"]
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="default 5986 (https) or 5985 (http)")
    user: str | None = Field(None, description="the WinRM login (required unless transport is local)")
    password: SecretStr | None = Field(None, description="required unless transport is local")
    transport: Literal["https", "http", "local"] = Field(
        "https",
        description="how the PowerShell scripts reach the host: WinRM over https (5986, certificate checked) "
        "or http; local: the orchestrator runs on the Hyper-V host itself, the same scripts run by its "
        "powershell.exe and the agent as a local process, with no login (the user running the orchestrator "
        "must manage Hyper-V there); user and password are then not used",
    )
    auth: Literal["ntlm", "kerberos", "credssp", "basic"] = Field(
        "ntlm", description="basic sends the password in the clear unless transport is https"
    )
    ca_bundle: Path | None = Field(
        None, description="CA certificate(s) that issued the host's WinRM certificate"
    )
    insecure: bool = False
    vm_path: str | None = Field(
        None,
        pattern=r"^[A-Za-z]:\\[^\x00-\x1f\"*?<>|]*$",
        description="folder on the host for replica VMs and VHDX files (C:\\Hyper-V); default: "
        "<volume>:\\hvmigrate on the disk's datastore (a volume such as D:)",
    )
    python: str | None = Field(
        None,
        pattern=r"^([A-Za-z]:\\[^\x00-\x1f\"*?<>|]*|[A-Za-z0-9_.-]+)\.exe$",
        description="CPython 3.8+ on the host (C:\\Python311\\python.exe, or a name on the host's PATH "
        "such as python.exe): appliance: host runs the hvmigrate agent with it, over WinRM (or as a local "
        "process with transport: local, where it defaults to the orchestrator's own Python), to write each "
        "mounted VHDX",
    )
    host_device_dir: Path | None = Field(
        None,
        description="test beds only: where this machine sees the disks the host mounts "
        "(\\\\.\\PhysicalDriveN as DIR/PhysicalDriveN): staging edits them from here, and without "
        "python the data plane writes them from here too",
    )
    appliance: str | None = Field(
        None,
        description="appliance: shared|dedicated: name of an existing recovery appliance VM on the host "
        "(a Linux VM with Hyper-V integration services, the KVP daemon, sshd and python3, running, with "
        "free locations on its SCSI controllers: Hyper-V adds no controller to a running VM); used as it "
        "is, never removed",
    )
    appliance_template: str | None = Field(
        None,
        pattern=r"^[A-Za-z]:\\[^\x00-\x1f\"*?<>|]*\.vhdx$",
        description="appliance: shared|dedicated without appliance: the appliance VHDX on the host "
        "(D:\\templates\\appliance.vhdx) that each appliance boots a copy of (Copy-Item beside the "
        "replica disks); the tool makes a generation 2 VM with 4 SCSI controllers, its NIC on "
        "appliance_switch, and removes the VM and the copy when the appliance is released",
    )
    appliance_switch: str | None = Field(
        None, description="virtual switch for the NIC of an appliance made from appliance_template"
    )
    appliance_cpus: int = Field(2, ge=1, le=64, description="processors of an appliance the tool makes")
    appliance_memory: Size = Field(1024**3, description="startup memory of an appliance the tool makes")
    appliance_login: ApplianceLogin | None = Field(
        None,
        description="SSH login to the appliance at the address its KVP daemon reports: the writer runs "
        "there and writes each VHDX hot-added on SCSI (guest_devices keys: controller:location)",
    )
    shutdown_timeout: Duration = Field(
        120, description="how long a clean (guest) power-off may take before it fails (force stops at once)"
    )

    @model_validator(mode="after")
    def _login_unless_local(self) -> HypervProviderConfig:
        return _winrm_login_required(self, "the Hyper-V host")


ProviderConfig = Annotated[
    SimProviderConfig | KvmProviderConfig | EsxProviderConfig | HypervProviderConfig,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------- dns


class Tsig(Model):
    name: str
    algorithm: Literal[
        "hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5"
    ] = "hmac-sha256"
    secret: SecretStr


def _reverse_zone(value: str) -> str:
    """A reverse zone is named under in-addr.arpa or ip6.arpa; anything else is a typo worth stopping at."""
    name = value.strip().rstrip(".").lower()
    if not (name.endswith(".in-addr.arpa") or name.endswith(".ip6.arpa")):
        raise ValueError(
            f"{value!r} is not a reverse zone: expected a name like 1.10.in-addr.arpa or ...ip6.arpa"
        )
    return name


REVERSE_ZONES_HELP = (
    "reverse zones (1.10.in-addr.arpa, 8.b.d.0.1.0.0.2.ip6.arpa) whose PTR records follow the A/AAAA "
    "records this tool moves; the most specific zone holding an address is used"
)


class Rfc2136Dns(Model):
    type: Literal["rfc2136"]
    server: str
    port: int = Field(53, ge=1, le=65535)
    zone: str
    tsig: Tsig | None = None
    timeout: Duration = 10
    reverse_zones: list[str] = Field(default_factory=list, description=REVERSE_ZONES_HELP)
    verify_timeout: Duration = Field(
        30, description="how long update_dns waits for the server to answer with the new records"
    )

    @field_validator("reverse_zones")
    @classmethod
    def _reverse_zones(cls, value: list[str]) -> list[str]:
        return [_reverse_zone(zone) for zone in value]


class ZonefileDns(Model):
    """A zone file on disk, rewritten in place: the embedded default's DNS server."""

    type: Literal["zonefile"]
    path: Path
    zone: str
    reverse_zones: list[str] = Field(
        default_factory=list,
        description=REVERSE_ZONES_HELP + "; each is the file ZONE.zone in the folder of path",
    )

    @field_validator("reverse_zones")
    @classmethod
    def _reverse_zones(cls, value: list[str]) -> list[str]:
        return [_reverse_zone(zone) for zone in value]


class WindowsDns(Model):
    """A Windows DNS server changed through its DnsServer PowerShell cmdlets over WinRM."""

    type: Literal["windows"]
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="default 5986 (https) or 5985 (http)")
    user: str | None = Field(None, description="the WinRM login (required unless transport is local)")
    password: SecretStr | None = Field(None, description="required unless transport is local")
    zone: str
    transport: Literal["https", "http", "local"] = Field(
        "https",
        description="WinRM over https or http; local: the orchestrator runs on the DNS server itself and "
        "its powershell.exe runs the same scripts as the user running the orchestrator (no login)",
    )
    auth: Literal["ntlm", "kerberos", "credssp", "basic"] = Field(
        "ntlm", description="basic sends the password in the clear unless transport is https"
    )
    ca_bundle: Path | None = Field(
        None, description="CA certificate(s) that issued the DNS server's WinRM certificate"
    )
    insecure: bool = False
    reverse_zones: list[str] = Field(default_factory=list, description=REVERSE_ZONES_HELP)

    @field_validator("reverse_zones")
    @classmethod
    def _reverse_zones(cls, value: list[str]) -> list[str]:
        return [_reverse_zone(zone) for zone in value]

    @model_validator(mode="after")
    def _login_unless_local(self) -> WindowsDns:
        return _winrm_login_required(self, "the DNS server")


DnsConfig = Annotated[Rfc2136Dns | ZonefileDns | WindowsDns, Field(discriminator="type")]


# ---------------------------------------------------------------- sources


class ImageSource(Model):
    """A disk image file (raw) standing for a server's disk; read only, never written."""

    type: Literal["image"]
    path: Path
    size: Size | None = Field(None, description="declared size; the image must be at least this large")
    hostname: str | None = None
    firmware: Literal["bios", "uefi"] | None = Field(
        None, description="default: detected from the partition table (GPT with an EFI partition: uefi)"
    )
    extra_disks: list[Path] = Field(default_factory=list, description="more images of the same server")


class LinuxQuiesce(Model):
    """How a Linux system reached over SSH pauses its writes for the final pass: an SSH source, and the
    guest of a vm source read through the guest (the same options, read by the same code)."""

    quiesce: Literal["none", "fsfreeze", "lvm_snapshot", "services"] = Field(
        "none",
        description="how writes pause for the final pass: fsfreeze (every filesystem on the source disks "
        "except those holding /, /etc, /usr, /var, /tmp and the login's home, which stay live so the "
        "session cannot hang), lvm_snapshot (source disks that are LVs are read from a snapshot), services "
        "(stop `services` in order); thawed again afterwards even when quiescing failed halfway",
    )
    services: list[str] = Field(
        default_factory=list, description="stopped at cutover, in order; started again in reverse order"
    )
    snapshot_size: Size | None = Field(
        None,
        description="copy-on-write space of each LVM snapshot (quiesce: lvm_snapshot); default: 10% of the "
        "LV, at least 256MiB; it must hold what the source writes during the final pass",
    )
    quiesce_command: str | None = Field(
        None,
        description="shell command run on the source before `quiesce` (flush a database, say); it must exit "
        "0; runs as `user` (with `sudo -n` when sudo is set)",
    )
    thaw_command: str | None = Field(
        None,
        description="shell command run on the source after the thaw, also after a failed quiesce_command, "
        "so it must be safe to run when nothing is quiesced",
    )


class SshLogin(Model):
    """An SSH login as the transport takes it (orchestrator.transport.ssh.SshTransport.from_source)."""

    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key: Path | None = None
    password: SecretStr | None = None
    known_hosts: Path | None = None
    host_key: str | None = Field(None, description="pinned host key fingerprint, SHA256:...")
    insecure: bool = Field(False, description="accept any host key (explicit opt-in only)")


class SshSource(LinuxQuiesce, SshLogin):
    type: Literal["ssh"]
    host: str
    sudo: bool = Field(
        False,
        description="when user is not root: run the agent and every privileged command (fsfreeze, lvcreate, "
        "systemctl, the quiesce commands, poweroff) under `sudo -n` (NOPASSWD sudo must allow them)",
    )


class WinrmSource(Model):
    type: Literal["winrm"]
    host: str
    port: int | None = Field(None, ge=1, le=65535)
    user: str | None = Field(None, description="the WinRM login (required unless transport is local)")
    password: SecretStr | None = Field(None, description="required unless transport is local")
    transport: Literal["https", "http", "local"] = Field(
        "https",
        description="WinRM over https (5986, certificate checked) or http; local: the orchestrator runs on "
        "the source server itself, the same scripts run by its powershell.exe and the agent as a local "
        "process, with no login (the user running the orchestrator must be an administrator there); user "
        "and password are then not used",
    )
    auth: Literal["ntlm", "kerberos", "credssp"] = "ntlm"
    ca_bundle: Path | None = Field(
        None, description="CA certificate(s) that issued the source's WinRM certificate"
    )
    insecure: bool = False
    vss: bool = Field(
        True,
        description="read each pass from a VSS shadow copy of the source's volumes (removed after it); the "
        "final pass reads shadow copies taken after `services` stopped",
    )
    services: list[str] = Field(
        default_factory=list,
        description="Windows services stopped before the final pass (Stop-Service -Force: their running "
        "dependent services stop too), by service or display name; exactly those that were running are "
        "started again after the pass, on a failure and by undo",
    )
    service_timeout: Duration = Field(
        300, description="how long the services may take to stop before the cutover fails (and restarts them)"
    )
    python: str | None = Field(
        None,
        pattern=r"^([A-Za-z]:\\[^\x00-\x1f\"*?<>|]*|[A-Za-z0-9_.-]+)\.exe$",
        description="CPython 3.8+ on the source (C:\\Python311\\python.exe, or a name on its PATH such as "
        "python.exe): the hvmigrate agent runs with it, over WinRM (or as a local process with transport: "
        "local, where it defaults to the orchestrator's own Python), to read the disks",
    )

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or len(name) > 256 or re.search(r"[\\/\x00-\x1f*?\[\]`]", name):
                raise ValueError(
                    f"{name!r} is not a Windows service name hvmigrate can address exactly (1-256 "
                    "characters, none of / \\ * ? [ ] ` or control characters); use the service's name "
                    "as Get-Service shows it"
                )
        return value

    @model_validator(mode="after")
    def _login_unless_local(self) -> WinrmSource:
        return _winrm_login_required(self, "the source server")


class GuestLogin(LinuxQuiesce, SshLogin):
    """How the agent reaches the guest of a vm source over SSH (read: guest), and how the guest pauses
    its writes for the final pass (as an SSH source does: the quiesce options are the same)."""

    host: str | None = Field(None, description="default: the guest's first address VMware Tools report")
    sudo: bool = False
    devices: dict[str, str] = Field(
        default_factory=dict,
        description="the guest's device of each VM disk slot (scsi0:1: /dev/sdb); default: the guest's "
        "disks in slot order, each checked against the VMDK's size",
    )


class VmSource(Model):
    """A VM on one of the playbook's providers (ESX to KVM, Hyper-V to ESX, ...).

    Its disks are named by their slot on the VM (``scsi0:0``, ``sata0:1``, ``nvme0:0``, ``ide0:0``).
    """

    type: Literal["vm"]
    provider: str
    vm: str
    read: Literal["guest", "local_datastore"] = Field(
        "guest",
        description="guest: the agent reads each disk inside the running guest over SSH (guest:); "
        "local_datastore: the base VMDK's flat file is read on this machine from a datastore mounted here "
        "(vcsim's folders in the test bed, an NFS datastore mounted on the orchestrator), frozen by a "
        "vCenter snapshot for the final pass",
    )
    guest: GuestLogin | None = Field(None, description="SSH login to the guest, for read: guest")
    snapshot_quiesce: bool = Field(
        True, description="quiesce the guest's filesystems through VMware Tools when the snapshot is taken"
    )


SourceConfig = Annotated[ImageSource | SshSource | WinrmSource | VmSource, Field(discriminator="type")]


# ---------------------------------------------------------------- data only (files and folders)

_WILDCARD = re.compile(r"[*?\[]")


class FileRule(Model):
    """One include or exclude rule of a files-and-folders set (the reference product's replication rules).

    For each path the *closest* rule in the tree decides: the rule whose folder is deepest among those that
    apply to it. A plain rule applies to its path and, when ``recursive``, to everything below it; without
    ``recursive`` only to the path and the entries directly in it. A wildcard rule (``*``, ``?``, ``[...]``
    in its last part, e.g. ``/srv/www/*.log``) applies to entries whose *name* matches, directly in its
    folder or (``recursive``) anywhere below it; at the same depth it beats a plain rule, and an exclude
    beats an include. Anything no rule covers is left out. Example: include ``/srv/www`` and exclude
    ``/srv/www/*.log`` leaves ``/srv/www/a.log`` out, but an include of ``/srv/www/app`` is closer to
    ``/srv/www/app/b.log`` than the wildcard is, so that one is copied: repeat the wildcard exclude for each
    included folder (``/srv/www/app/*.log``), as the reference product asks.
    """

    path: str = Field(description="absolute source path, e.g. /srv/www or /srv/www/*.log")
    include: bool = Field(True, description="true: include; false: exclude (or write exclude: true)")
    exclude: bool = Field(False, description="shorthand for include: false")
    recursive: bool = Field(True, description="also applies to subfolders (at any depth)")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a rule path is absolute on the source, like /srv/www; got {value!r}")
        parts = [p for p in value.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"a rule path may not hold . or .. ({value!r})")
        if any(_WILDCARD.search(p) for p in parts[:-1]):
            raise ValueError(
                f"wildcards go in the last part of a rule path only, like /srv/*.log; got {value!r}"
            )
        return "/" + "/".join(parts)

    @model_validator(mode="after")
    def _one_verb(self) -> FileRule:
        if self.exclude:
            self.include = False
        return self

    @property
    def is_include(self) -> bool:
        return self.include and not self.exclude


class PathMap(Model):
    """One source folder and where it lands on the target (path mapping: custom)."""

    source: str = Field(description="absolute source folder, e.g. /srv/www")
    target: str = Field(description="absolute target folder, e.g. /data/www")

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected an absolute path like /srv/www, got {value!r}")
        return "/" + "/".join(p for p in value.split("/") if p)


class DataTarget(SshLogin):
    """The server that receives the data: it already runs its own OS, so nothing is provisioned on it."""

    type: Literal["ssh"]
    host: str
    sudo: bool = Field(False, description="run the files agent under `sudo -n` when user is not root")


class DataMigration(Model):
    """A files-and-folders migration: the server's data (not its system state) copied into a running target.

    Example::

        data:
          target_host: {type: ssh, host: files02.corp.test, key: ~/.ssh/id_ed25519}
          mapping: all_to_one
          target_path: /srv/migrated
          rules:
            - {path: /srv/share}
            - {path: /srv/share/*.tmp, exclude: true}
          orphans: move
          orphans_path: /srv/orphans
          compare: attributes_then_delta

    Cutover stops the source's services through ``source.quiesce`` (or ``quiesce_command``), runs a last
    difference pass and leaves them stopped: the data now lives on the target. ``migrate undo`` starts
    them again and removes, only under the target folders the first pass created (they did not exist
    before it), what the rule set holds; a target folder that existed before is never touched, so undo
    never deletes a file the target had before the migration.
    """

    target_host: Literal["local"] | DataTarget = Field(
        "local", description="local: this machine; or {type: ssh, host, ...} like an SSH source"
    )
    mapping: Literal["one_to_one", "all_to_one", "custom"] = Field(
        "one_to_one",
        description="one_to_one: the same paths on the target; all_to_one: every path under "
        "target_path/<server name>/ (/srv/www -> /srv/migrated/web01/srv/www); custom: as paths lists",
    )
    target_path: str | None = Field(None, description="all_to_one: the folder everything goes under")
    paths: list[PathMap] = Field(
        default_factory=list, description="custom: source folder -> target folder; the longest match wins"
    )
    rules: list[FileRule] = Field(min_length=1, description="include/exclude rules; the closest rule wins")
    orphans: Literal["keep", "delete", "move"] = Field(
        "delete",
        description="target files inside the rules that the source no longer has: keep (only logged), delete "
        "(the reference product's default) or move under orphans_path; never outside the rules, and never "
        "what a wildcard exclude leaves out",
    )
    orphans_path: str | None = Field(None, description="orphans: move: target folder outside the copied set")
    compare: Literal["none", "attributes", "attributes_then_delta", "full_data"] = Field(
        "attributes_then_delta",
        description="none: send every file whole; attributes: size/time differ -> whole file; "
        "attributes_then_delta: size/time differ -> only the differing blocks; full_data: every file's "
        "blocks compared, only differing blocks sent",
    )
    block_size: Size = Field(128 * 1024, description="unit of the delta and full_data comparison")
    xattrs: bool = Field(
        True, description="copy extended attributes, POSIX ACLs (system.posix_acl_*) included"
    )
    owners: bool = Field(True, description="keep owner and group (numeric ids)")
    retries: int = Field(
        3, ge=0, le=20, description="reads of a file that keeps changing before it is reported"
    )
    cutover_queue: Literal["apply", "discard"] = Field(
        "apply",
        description="when `migrate replicate` still runs at cutover, what to do with the changes still "
        "queued once the source's services stopped: apply them (wait until the source is idle, up to "
        "drain_timeout) or discard them and cut over at once; the final difference pass sends whatever "
        "they were either way (the reference product's apply / discard target queue choice)",
    )
    drain_timeout: Duration = Field(
        600,
        description="how long the cutover waits for a running replication's queue to drain before it stops "
        "the source's services, and again for the last changes after; past it, it goes on with a warning",
    )
    target_case: Literal["auto", "sensitive", "insensitive"] = Field(
        "auto",
        description="whether the target's file names ignore case (exFAT, FAT, SMB, ext4 casefold): auto "
        "probes each target folder; insensitive renames a.txt -> A.txt through a temporary name and "
        "reports source names that differ only by case instead of merging them",
    )

    @field_validator("target_path", "orphans_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected an absolute path like /srv/migrated, got {value!r}")
        return None if value is None else "/" + "/".join(p for p in value.split("/") if p)

    @field_validator("block_size")
    @classmethod
    def _block(cls, value: int) -> int:
        if value < 4096 or value > 64 * 1024**2 or value & (value - 1):
            raise ValueError("block_size must be a power of two between 4KiB and 64MiB")
        return value

    @model_validator(mode="after")
    def _mapping_needs(self) -> DataMigration:
        if self.mapping == "all_to_one" and not self.target_path:
            raise ValueError("mapping: all_to_one needs target_path (the folder everything goes under)")
        if self.mapping == "custom" and not self.paths:
            raise ValueError("mapping: custom needs paths: [{source: /srv/www, target: /data/www}]")
        if self.orphans == "move" and not self.orphans_path:
            raise ValueError("orphans: move needs orphans_path (a target folder outside the copied set)")
        return self


# ---------------------------------------------------------------- target


class DiskMap(Model):
    source: str = Field(description="source disk: /dev/vda, PhysicalDrive0, or an image file name")
    format: Literal["raw", "qcow2", "vmdk", "vhdx", "vhd"] | None = Field(
        None, description="default: the target's native format"
    )
    datastore: str | None = Field(
        None, description="datastore / storage pool / volume; default: the target's"
    )
    size: Size | Literal["auto"] = Field("auto", description="auto: the source disk's size")
    provisioning: Literal["thin", "thick", "eager_zeroed"] = "thin"
    controller: Literal["virtio", "scsi", "sata", "ide", "nvme"] | None = None
    boot: bool | None = Field(None, description="default: the first disk boots")


class NicMap(Model):
    source_mac: str | None = Field(None, description="the source NIC this maps; default: by position")
    network: str | None = Field(None, description="target network / port group / virtual switch")
    test_network: str | None = Field(
        None,
        description="isolated network a test cutover connects this NIC to; without it the test copy's "
        "NIC has no link (nothing it says can reach production)",
    )
    test_ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface | Literal["dhcp"] | None = Field(
        None, description="the test copy's address on test_network (CIDR or dhcp); default: the replica's"
    )
    test_gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = Field(
        None, description="the test copy's gateway; default: none when test_ip is given, else the replica's"
    )
    ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface | Literal["dhcp", "keep"] = Field(
        "keep", description="CIDR address, dhcp, or keep the source's"
    )
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(default_factory=list)
    mac: str = Field("keep", description="keep the source MAC, new for a generated one, or a MAC")
    type: Literal["virtio", "e1000", "e1000e", "vmxnet3", "synthetic", "legacy"] | None = None
    vlan: int | None = Field(None, ge=0, le=4094)

    @field_validator("source_mac")
    @classmethod
    def _source_mac(cls, value: str | None) -> str | None:
        if value is not None and not MAC_RE.match(value):
            raise ValueError(f"expected a MAC address like 52:54:00:12:34:56, got {value!r}")
        return value.lower().replace("-", ":") if value else value

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        if value not in ("keep", "new") and not MAC_RE.match(value):
            raise ValueError(f"expected keep, new or a MAC address, got {value!r}")
        return value.lower().replace("-", ":")


class TargetSpec(Model):
    provider: str
    vm_name: str | None = Field(None, pattern=NAME_RE, description="default: the server's name")
    host: str | None = Field(None, description="target host inside the provider; default: the provider's")
    cpus: int = Field(2, ge=1, le=768)
    memory: Size = Field(4 * 1024**3, description="startup memory")
    firmware: Literal["auto", "bios", "uefi"] = Field("auto", description="auto: as the source")
    generation: Literal[1, 2] | None = Field(None, description="Hyper-V generation; default from firmware")
    appliance: Literal["shared", "dedicated", "host"] = Field(
        "shared",
        description="shared: one recovery appliance per target host; dedicated: one per server; "
        "host: write on the hypervisor host itself",
    )
    datastore: str | None = Field(None, description="where the VM's own files go")
    folder: str | None = None
    resource_pool: str | None = None
    disks: list[DiskMap] = Field(default_factory=list, description="default: every source disk, in order")
    nics: list[NicMap] = Field(default_factory=list)
    keep_hostname: bool = True
    hostname: str | None = Field(None, description="new hostname for the replica")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value < 32 * 1024**2:
            raise ValueError("memory below 32MiB cannot boot any supported guest; check the unit (e.g. 4GiB)")
        if value > 24 * 1024**4:
            raise ValueError("memory above 24TiB exceeds every supported hypervisor")
        return value


class DnsRecord(Model):
    provider: str
    name: str
    type: Literal["A", "AAAA", "CNAME"] = "A"
    value: str = Field("nic0", description="nicN: the address given to that NIC; or a literal value")
    ttl: int = Field(300, ge=0, le=604800)
    ptr: bool | None = Field(
        None,
        description="move the address's PTR record too (A/AAAA only); default: yes when the provider's "
        "reverse_zones holds the address. true with no such zone fails check_dns before cutover",
    )

    @model_validator(mode="after")
    def _ptr_needs_an_address(self) -> DnsRecord:
        if self.ptr and self.type == "CNAME":
            raise ValueError("ptr: true needs an A or AAAA record; a CNAME has no address to point back")
        return self


class Estimate(Model):
    """What the dry run assumes about a source it cannot read (an SSH or WinRM host not yet reachable)."""

    disks: list[Size] = Field(default_factory=lambda: [100 * 1024**3], description="disk sizes")
    used_fraction: float = Field(0.5, ge=0, le=1, description="share of each disk holding data")
    change_rate: Rate | None = Field(None, description="bytes/s written while it runs; default: simulation's")
    data_bytes: Size | None = Field(
        None, description="data-only server: bytes of the files its rule set holds (default: disks x used)"
    )
    files: int | None = Field(
        None, ge=0, description="data-only server: how many files and folders its rule set holds"
    )


class Server(Model):
    name: str = Field(pattern=NAME_RE)
    source: SourceConfig
    target: TargetSpec | None = Field(None, description="the replica VM; omitted for a data-only server")
    data: DataMigration | None = Field(
        None, description="files and folders into a running target server instead of a replica VM"
    )
    depends_on: list[str] = Field(default_factory=list, description="servers that must cut over first")
    dns_records: list[DnsRecord] = Field(default_factory=list)
    mirror: MirrorOptions | None = Field(None, description="overrides defaults.mirror for this server")
    cutover: CutoverOptions | None = Field(None, description="overrides defaults.cutover for this server")
    sync: SyncOptions | None = None
    wave: int | None = Field(None, ge=0, description="cutover wave; lower waves cut over first")
    estimate: Estimate | None = Field(None, description="dry-run assumptions when the source cannot be read")

    @model_validator(mode="after")
    def _target_or_data(self) -> Server:
        if (self.target is None) == (self.data is None):
            raise ValueError("a server needs target (a replica VM) or data (files and folders), exactly one")
        if self.data is not None and not isinstance(self.source, SshSource):
            raise ValueError("a data-only server needs source: {type: ssh, ...}")
        return self

    @property
    def vm_name(self) -> str:
        return (self.target.vm_name if self.target else None) or self.name


# ---------------------------------------------------------------- notifications

NotificationEvent = Literal["step_failed", "not_converging", "ready_for_cutover", "cutover_done"]
NOTIFICATION_EVENTS: tuple[str, ...] = ("step_failed", "not_converging", "ready_for_cutover", "cutover_done")
_ADDRESS_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _address(value: str) -> str:
    """A bare address (no display name): anything else could smuggle a header into the mail."""
    if not _ADDRESS_RE.match(value):
        raise ValueError(f"expected a bare e-mail address like ops@corp.test, got {value!r}")
    return value


class EmailNotifications(Model):
    """Mail through an SMTP relay: STARTTLS first, then AUTH, as a submission port (587) expects."""

    server: str = Field(description="SMTP relay host name or address")
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = Field(
        True,
        description="switch to TLS before anything else (a relay that does not offer STARTTLS is refused); "
        "false only for a relay on a trusted network, and then no password is ever sent",
    )
    user: str | None = Field(None, description="AUTH login; omit for a relay that takes mail unauthenticated")
    password: SecretStr | None = Field(None, description="AUTH password; only ever sent over TLS")
    sender: str = Field(description="the From: address, e.g. hvmigrate@corp.test")
    to: list[str] = Field(min_length=1, description="recipients")
    ca_bundle: Path | None = Field(
        None, description="PEM file of the CA that signed the relay's certificate; default: the system's"
    )
    insecure: bool = Field(False, description="skip the relay's certificate check (explicit opt-in only)")
    timeout: Duration = Field(30, description="per connection attempt and per SMTP command")
    events: list[NotificationEvent] | None = Field(
        None, description="events mailed; default: notifications.events"
    )

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return [_address(item) for item in value]

    @model_validator(mode="after")
    def _credentials(self) -> EmailNotifications:
        if (self.user is None) != (self.password is None):
            raise ValueError("give both user and password for SMTP AUTH, or neither")
        if self.password is not None and not self.starttls:
            raise ValueError("a password is only sent over TLS: set starttls: true, or drop user/password")
        return self


class WebhookNotifications(Model):
    """A JSON POST per notice (event, plan, server, severity, step, message, time) to any HTTP endpoint."""

    url: SecretStr = Field(
        description="http(s) URL; a secret because chat webhooks (Slack, Teams, Mattermost) carry their "
        "token in it: write ${env:NAME}. Redirects are not followed, so headers never reach another host"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra request headers (Authorization: ${env:HOOK_TOKEN}); values are secrets",
    )
    timeout: Duration = Field(10, description="for connecting, and for each wait on the answer")
    ca_bundle: Path | None = Field(None, description="PEM CA file for an https URL; default: the system's")
    insecure: bool = Field(False, description="skip the certificate check of an https URL (opt-in only)")
    events: list[NotificationEvent] | None = Field(
        None, description="events posted; default: notifications.events"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: Secret) -> Secret:
        # The URL may hold a token, so the message names what is wrong, never the URL itself.
        text = value.reveal()
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
            raise ValueError("expected an http:// or https:// URL with a host")
        if any(c in text for c in "\r\n\t "):
            raise ValueError("the URL holds whitespace or a line break")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, Secret]) -> dict[str, Secret]:
        for name, secret in value.items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name.lower() in ("content-type", "content-length", "host"):
                raise ValueError(f"header {name} is set by hvmigrate itself")
            if any(c in secret.reveal() for c in "\r\n\0"):
                raise ValueError(f"the value of header {name} holds a line break")
        return value


class Notifications(Model):
    """Who hears about a run while nobody watches it: mail and a webhook, on the events chosen here.

    Sending happens in the background and never fails or holds up a migration; a notice that cannot be
    delivered is reported as a warning.
    """

    email: EmailNotifications | None = Field(None, description="one mail per notice to the recipients")
    webhook: WebhookNotifications | None = Field(None, description="one JSON POST per notice")
    events: list[NotificationEvent] = Field(
        default_factory=lambda: list(NOTIFICATION_EVENTS),
        description="step_failed (critical), not_converging (warning: incremental passes stopped "
        "shrinking), ready_for_cutover (info: remap_nics done, the cutover gate not passed), cutover_done "
        "(info: the server's last cutover step done)",
    )
    flush_timeout: Duration = Field(
        10,
        description="how long a command waits at its end for notices still being sent; what is left is "
        "reported as undelivered, never waited for longer",
    )

    @model_validator(mode="after")
    def _some_channel(self) -> Notifications:
        if self.email is None and self.webhook is None:
            raise ValueError("notifications needs email or webhook (or both)")
        return self


class Playbook(Model):
    apiVersion: Literal["hvmigrate/v1"]
    kind: Literal["MigrationPlaybook"]
    name: str = Field(pattern=NAME_RE)
    defaults: Defaults = Field(default_factory=Defaults)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    dns: dict[str, DnsConfig] = Field(default_factory=dict)
    servers: list[Server] = Field(min_length=1)
    notifications: Notifications | None = Field(
        None, description="mail and a webhook on chosen events (a step failed, ready for cutover, ...)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Playbook:
        seen: set[str] = set()
        for index, server in enumerate(self.servers):
            if server.name in seen:
                # A typed error carrying the index lets the loader point at the second server's line.
                raise PydanticCustomError(
                    "duplicate_server_name",
                    "server name '{name}' appears twice; server names must be unique",
                    {"name": server.name, "index": index},
                )
            seen.add(server.name)
        return self

    def server(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def mirror_for(self, server: Server) -> MirrorOptions:
        return server.mirror or self.defaults.mirror

    def cutover_for(self, server: Server) -> CutoverOptions:
        return server.cutover or self.defaults.cutover

    def sync_for(self, server: Server) -> SyncOptions:
        return server.sync or self.defaults.sync
