"""The validation rule catalog: every way a playbook can go wrong before a single byte moves.

Each rule has a stable dotted id (users grep for it, as they do with Forklift's), a severity, a one-line
title and a fix hint. A critical finding blocks the run; a warning is something an operator should read
before a cutover window; an info explains what the plan will do that they might not expect.

Rules run in three tiers of knowledge: the playbook alone, plus the target providers' inventories, plus
the facts discovered on each source. Validation never reaches out to a provider or a source itself: the
caller passes what it could gather, and the rules that need what is missing are skipped and say so in one
info finding, so an offline `migrate validate` is fast and still honest about what it did not check.

The checks are small functions in `CHECKS`, one per rule or family, so each can be read and tested alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import networkx as nx
from pydantic import BaseModel

from orchestrator.playbook.models import (
    Bandwidth,
    BandwidthWindow,
    DiskMap,
    EsxProviderConfig,
    HypervProviderConfig,
    KvmProviderConfig,
    NicMap,
    Playbook,
    Server,
    SimProviderConfig,
    SshSource,
    VmSource,
    WindowsDns,
    WinrmSource,
    day_set,
    hour_range,
)
from orchestrator.playbook.secrets import Secret
from orchestrator.playbook.units import format_size
from providers.base import DatastoreInfo, Inventory, SourceFacts, SourceNic

FieldPath = tuple[str | int, ...]
Locate = Callable[..., str | None]

DNS_TTL_MAX = 300  # seconds; the reference product's recommended upper bound for records it updates
DATASTORE_HEADROOM = 0.10  # replica disks can outgrow the source's used size (block-size differences)
APPLIANCE_MAX_DISKS = 60  # vSphere: 4 SCSI controllers of 15 disks, all hot-added to one appliance
ESX_MAX_NICS = 10
HYPERV_MAX_SYNTHETIC_NICS = 8
HYPERV_MAX_LEGACY_NICS = 4
HYPERV_GEN1_MAX_IDE = 4  # two IDE controllers of two devices each
# ESX writes a VM's .vmx, .nvram, logs and the vmx process's own swap (vmx-*.vswp) beside its swap file
ESX_VM_FILES = 256 * 1024**2

# What each target can actually create; a value outside these fails at create time, far into a run.
NIC_MODELS = {
    "esx": ("e1000", "e1000e", "vmxnet3"),
    "hyperv": ("synthetic", "legacy"),
    "kvm": ("virtio", "e1000", "e1000e"),
}
DISK_CONTROLLERS = {
    "esx": ("scsi", "sata", "ide", "nvme"),
    "hyperv": ("ide", "scsi"),
}
TYPE_NAMES = {"esx": "ESX", "hyperv": "Hyper-V", "kvm": "KVM", "sim": "the simulated hypervisor"}

_NIC_VALUE_RE = re.compile(r"^nic(\d+)$")
_CARBONITE = "Carbonite Migrate for Windows User's Guide 8.2.1"


# ---------------------------------------------------------------- catalog


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for critical: sorts the most severe first."""
        return _SEVERITY_ORDER.index(self)


_SEVERITY_ORDER = (Severity.CRITICAL, Severity.WARNING, Severity.INFO)


@dataclass(frozen=True)
class Rule:
    """One entry of the catalog; ``fix`` is a `str.format` template filled by the check that fires."""

    id: str
    severity: Severity
    title: str
    fix: str
    reference: str | None = None
    needs: tuple[str, ...] = ()  # "inventory", "facts": what must be known for the rule to run


RULES: dict[str, Rule] = {}


def _rule(
    id: str,
    severity: Severity,
    title: str,
    fix: str,
    reference: str | None = None,
    needs: tuple[str, ...] = (),
) -> None:
    if id in RULES:
        raise ValueError(f"rule {id} is defined twice")
    RULES[id] = Rule(id, severity, title, fix, reference, needs)


C, W, N = Severity.CRITICAL, Severity.WARNING, Severity.INFO
INV, FACTS = ("inventory",), ("facts",)

_rule(
    "ref.unknown_provider",
    C,
    "a server names a provider the playbook does not define",
    "define {name} under providers:, or use one of: {known}",
)
_rule(
    "ref.unknown_source_vm",
    C,
    "a vm source names a VM its provider does not have",
    "check the VM name; {provider} has: {known}",
    needs=INV,
)
_rule(
    "ref.unknown_dns_provider",
    C,
    "a DNS record names a DNS provider the playbook does not define",
    "define {name} under dns:, or use one of: {known}",
)

_rule(
    "deps.unknown_server",
    C,
    "depends_on names a server that is not in the playbook",
    "remove {name} from depends_on, or use one of: {known}",
)
_rule("deps.self", C, "a server depends on itself", "remove {name} from its own depends_on")
_rule(
    "deps.cycle",
    C,
    "depends_on forms a cycle, so no server of it could ever cut over",
    "remove one of the dependencies in {cycle}",
)
_rule(
    "deps.wave_order",
    C,
    "a server depends on a server of a later wave",
    "put {dependency} in wave {wave} or earlier, or {name} in wave {dependency_wave} or later",
)

_rule(
    "vm.duplicate_name",
    C,
    "two servers would create the same VM on one provider",
    "give {name} another target.vm_name",
)
_rule(
    "vm.overwrites_source",
    C,
    "the replica would be created over its own source VM",
    "give the replica another target.vm_name",
)
_rule(
    "vm.name_exists",
    C,
    "a VM with the replica's name already exists on the target (would overwrite)",
    "rename the replica (target.vm_name) or remove the existing VM {vm} from {provider}",
    "Forklift: vm.name.invalid",
    needs=INV,
)

_rule(
    "disk.unknown_source",
    C,
    "the disk map names a disk the source does not have",
    "use one of the source's disks: {known}",
    "Forklift: disk.capacity.invalid",
    needs=FACTS,
)
_rule(
    "disk.smaller_than_source",
    C,
    "a replica disk is sized smaller than its source disk",
    "set size to at least {source_size} or to auto",
    f"{_CARBONITE}, Replica virtual machine volumes: Replica Disk Size",
    needs=FACTS,
)
_rule(
    "disk.unmapped_source",
    W,
    "source disks left out of target.disks will not be copied",
    "add {disks} to target.disks, or leave target.disks empty to copy every disk",
    needs=FACTS,
)
_rule("disk.duplicate_source", C, "one source disk is mapped twice", "map {disk} once")
_rule("disk.boot_conflict", C, "more than one disk is marked boot: true", "mark only one disk boot: true")
_rule(
    "disk.format_unsupported",
    C,
    "the target cannot create disks in this format",
    "use one of: {known} (or omit format for {native})",
    needs=INV,
)
_rule(
    "disk.controller_unsupported",
    C,
    "the target hypervisor has no such disk controller",
    "use one of: {known}",
)

_rule(
    "datastore.unknown",
    C,
    "a datastore or storage pool is not on the target",
    "use one of {provider}'s datastores: {known}",
    "Forklift: datastore.missing",
    needs=INV,
)
_rule(
    "datastore.inaccessible",
    C,
    "a datastore is not accessible from the target host",
    "reconnect the datastore on {provider}, or place the disks on another datastore",
    needs=INV,
)
_rule(
    "datastore.free_space",
    C,
    "a datastore lacks free space for every disk planned on it (+10%)",
    "free {missing} on {datastore}, or move some disks to another datastore",
    f"{_CARBONITE}, Replica virtual machine location: the datastore must have enough free space",
    needs=INV,
)

_rule("nic.no_network", C, "a NIC has no target network", "set network: to one of the target's networks")
_rule(
    "nic.unknown_network",
    C,
    "a NIC's network is not on the target",
    "use one of {provider}'s networks: {known}",
    "Forklift: nic.unresolved_network",
    needs=INV,
)
_rule(
    "nic.unknown_test_network",
    W,
    "a NIC's test network is not on the target (test cutover fails)",
    "use one of {provider}'s networks: {known}",
    needs=INV,
)
_rule("nic.type_unsupported", C, "the target hypervisor has no such NIC model", "use one of: {known}")
_rule(
    "nic.too_many",
    C,
    "more NICs than the target allows per VM",
    "map at most {limit} NICs; disable or drop the unused source NICs",
    f"{_CARBONITE}, Full server to ESX / Hyper-V requirements: Network adapters",
)
_rule(
    "nic.unknown_source_mac",
    C,
    "a NIC map names a MAC the source does not have",
    "use one of the source's MACs: {known}",
    needs=FACTS,
)
_rule(
    "nic.unmapped_source",
    W,
    "source NICs without a map lose their addresses at cutover",
    "map {nics} in target.nics, or disable what is unused on the source",
    f"{_CARBONITE}, Target compatibility: Network adapters",
    needs=FACTS,
)

_rule(
    "dns.ttl_high",
    W,
    "a DNS TTL above 300 s makes clients wait for caches after cutover",
    "set ttl to {limit} or less a day before the cutover",
    f"{_CARBONITE}, Failover Identity: Update TTL",
)
_rule(
    "dns.nic_missing",
    C,
    "a DNS record points at a NIC the server does not have",
    "use {choices}, or write the address itself as the value",
)
_rule(
    "dns.address_unknown",
    C,
    "a DNS record's NIC has no address known before cutover",
    "give {nic} a static ip: (CIDR), or write the address as the record's value",
    needs=FACTS,
)
_rule(
    "dns.bad_value",
    C,
    "a DNS record's value does not fit its type",
    "match the value to the record type: {hint}",
)

_rule(
    "firmware.unsupported",
    C,
    "the replica's firmware is not offered by the target",
    "choose a target that offers {firmware} (it offers: {known})",
    f"{_CARBONITE}, requirements: boot mode",
    needs=INV,
)
_rule(
    "firmware.mismatch",
    W,
    "target.firmware differs from the source's boot mode",
    "set firmware: auto (or {source}) unless the guest's boot loader is converted first",
    needs=FACTS,
)
_rule("hyperv.gen1_uefi", C, "Hyper-V generation 1 boots BIOS only", "use generation: 2 for a UEFI guest")
_rule(
    "hyperv.gen2_bios",
    C,
    "Hyper-V generation 2 boots UEFI only",
    "use generation: 1 for a BIOS guest",
    f"{_CARBONITE}, Full server to Hyper-V: Replica virtual machine generation",
)
_rule(
    "hyperv.gen1_boot_not_ide",
    C,
    "Hyper-V generation 1 boots only from an IDE disk",
    "set controller: ide on the boot disk (or omit it)",
    f"{_CARBONITE}, Full server to Hyper-V: Storage Controller",
)
_rule(
    "hyperv.gen2_ide",
    C,
    "Hyper-V generation 2 has no IDE controller",
    "set controller: scsi (or omit it)",
    f"{_CARBONITE}, Full server to Hyper-V: Storage Controller",
)
_rule(
    "hyperv.gen1_ide_limit",
    C,
    "Hyper-V generation 1 has room for 4 IDE disks",
    "put the data disks on scsi; keep only the boot disk on ide",
)
_rule(
    "hyperv.legacy_nic_gen2",
    C,
    "Hyper-V generation 2 has no legacy network adapter",
    "use type: synthetic (or omit it)",
    f"{_CARBONITE}, Full server to Hyper-V: Network adapter type",
)

_rule(
    "security.secret_in_clear",
    W,
    "a secret is written in clear in the playbook",
    'replace it with "${{env:NAME}}" or "${{file:PATH}}"',
)
_rule(
    "security.insecure_tls",
    W,
    "certificate checks are turned off",
    "remove insecure: true and pin a thumbprint or ca_bundle",
)
_rule(
    "security.insecure_host_key",
    W,
    "SSH accepts any host key",
    "remove insecure: true and set host_key or known_hosts",
)
_rule(
    "notify.webhook_plain_http",
    W,
    "the notification webhook is posted over plain http:// to another machine: its URL (and the token "
    "chat webhooks carry in it), its headers and every notice can be read and replayed on the way",
    "use an https:// URL (ca_bundle for a private CA); plain http:// only to this machine "
    "(localhost, 127.0.0.1, ::1)",
)
_rule(
    "notify.smtp_no_tls",
    W,
    "mail to the SMTP relay is not protected by verified TLS: with starttls: false notices travel in "
    "clear (and no login is possible: a password without STARTTLS is refused outright); with insecure: "
    "true the AUTH password goes to whoever answers, unverified",
    "set starttls: true (the default) on a relay that offers it, and drop insecure: true (ca_bundle for "
    "a private CA); starttls: false only for a relay on this machine",
)

_rule(
    "cutover.auto_without_shutdown",
    W,
    "automatic cutover leaves the source running",
    "set shutdown_source: true, or mode: manual",
    f"{_CARBONITE}, Failover options: Shutdown source server",
)
_rule(
    "source.no_quiesce",
    W,
    "an SSH source pauses no writes for the final pass: its read-write filesystems are copied live",
    "set source.quiesce (fsfreeze, lvm_snapshot or services) or source.quiesce_command; or, if a "
    "crash-consistent copy is acceptable, set cutover.unquiesced_writes: allow",
)
_rule(
    "appliance.second_appliance",
    N,
    "a shared appliance would pass its disk limit; a second one is used",
    "nothing to do; use appliance: dedicated to choose the split yourself",
)
_rule(
    "appliance.mode_unsupported",
    C,
    "the target provider cannot run this kind of appliance",
    "set target.appliance to one of the modes the message lists",
    needs=INV,
)
_rule(
    "appliance.cold_host_live_source",
    C,
    "appliance: host on this target uploads each disk once, so the source must stand still",
    "use a disk image or a shut-down VM as the source, or target.appliance: shared or dedicated to "
    "mirror a running server",
    needs=INV,
)
_rule(
    "appliance.server_disk_limit",
    C,
    "one server has more disks than an appliance can attach",
    "use appliance: host where the target allows it, or leave disks out of target.disks",
)
_rule(
    "bandwidth.windows_overlap",
    N,
    "bandwidth windows overlap; the first matching window wins",
    "reorder or narrow the windows if the later limit was meant to apply",
)
_rule(
    "memory.exceeds_host",
    W,
    "the replica asks for more memory than the target host can give",
    "set memory to {limit} or less, or choose a larger host",
    needs=INV,
)

_rule(
    "esx.appliance_login_missing",
    C,
    "the writer runs inside the ESX recovery appliance, but the provider has no login to it",
    "set appliance_login on the provider (user, key, host_key or known_hosts), or target.appliance: host "
    "for a source that stands still",
)
_rule(
    "hyperv.appliance_login_missing",
    C,
    "the writer runs inside the Hyper-V recovery appliance, but the provider has no login to it",
    "set appliance_login on the provider (user, key, host_key or known_hosts), or target.appliance: host",
)
_rule(
    "esx.datastore_space",
    C,
    "an ESX datastore fits the replica disks but not the VMs' swap files and config files beside them",
    "free {missing} on {datastore}, set target.datastore to another datastore for the VM's files, "
    "or lower memory",
    "vSphere: a powered-on VM without a memory reservation has a swap file (.vswp) of its memory size",
    needs=INV,
)
_rule(
    "esx.host_unavailable",
    C,
    "the target ESX host is in maintenance mode or not connected, so no VM can be placed on it",
    "bring {host} back (exit maintenance mode, reconnect it) before the run, or choose another host",
    needs=INV,
)

_rule(
    "esx.cbt.disabled",
    W,
    "changed-block tracking is off for a source VM's disk: every incremental pass reads and hashes it whole",
    "enable CBT on VM {vm} (config.changeTrackingEnabled, or ctkEnabled = TRUE in its advanced settings), "
    "then take and delete one snapshot so it takes effect; the migration works without it, only slower",
    "vSphere: QueryChangedDiskAreas needs changeTrackingEnabled on the VM",
    needs=FACTS,
)
_rule(
    "esx.source.snapshot_present",
    W,
    "a source VM has snapshots: reads go through the delta chain and each pass's own snapshot adds to it",
    "delete or consolidate the snapshots of {vm} (Snapshots > Delete All) before the first pass{leftover}",
    needs=FACTS,
)
_rule(
    "esx.source.independent_disk",
    W,
    "a source VM has an independent disk, which no snapshot covers: its final pass is read while written",
    "set {disk} of {vm} to dependent (persistent) mode while the VM is off, or stop what writes to it "
    "before the cutover (cutover.pre_script)",
    "vSphere: independent disks are excluded from snapshots",
    needs=FACTS,
)
_rule(
    "esx.source.rdm_disk",
    C,
    "a source VM has a raw device mapping (RDM): no snapshot or CBT covers a physical-mode RDM, and only "
    "the guest's agent can read one",
    "leave {disk} out of target.disks and move the LUN by storage means, or turn it into a VMDK first "
    "(Storage vMotion converts a virtual-mode RDM); {read}",
    "vSphere: physical compatibility mode RDMs are excluded from snapshots",
    needs=FACTS,
)
_rule(
    "esx.guest_id_unsupported",
    W,
    "the source VM's guest OS id is not one vSphere knows, so the replica gets a generic one",
    "set the source VM's guest OS (Edit Settings > VM Options) to its real OS; known ids look like "
    "debian11_64Guest, windows2019srv_64Guest",
    needs=FACTS,
)

_rule(
    "windows.bitlocker_on",
    C,
    "a volume of the Windows source is BitLocker-protected: its copy is ciphertext whose key stays in the "
    "source's TPM, so the replica stops at the BitLocker recovery screen",
    "suspend protection on the source until the cutover is done (Suspend-BitLocker -MountPoint {volume} "
    "-RebootCount 0; Resume-BitLocker on the replica afterwards), or decrypt it (Disable-BitLocker)",
    "Microsoft: BitLocker asks for the recovery key when the TPM or boot configuration changes",
    needs=FACTS,
)
_rule(
    "windows.bitlocker_changing",
    W,
    "a volume of the Windows source is being encrypted or decrypted: every block rewritten meanwhile is "
    "copied again",
    "let the conversion finish (manage-bde -status {volume}) before the first mirror pass",
    needs=FACTS,
)
_rule(
    "windows.dynamic_disk",
    W,
    "the Windows source has dynamic disks (LDM): a volume spanned or striped across them needs every one",
    "map every dynamic disk ({disks}) in target.disks, or convert them to basic disks before the migration",
    needs=FACTS,
)

_rule(
    "inventory.not_inspected",
    N,
    "some providers were not inspected; rules needing them were skipped",
    "run validation where the providers can be reached to run these checks",
)
_rule(
    "facts.not_discovered",
    N,
    "some sources were not discovered; rules needing facts were skipped",
    "run validation where the sources can be reached to run these checks",
)

_rule(
    "files.target_inside_source",
    C,
    "a data-only server's target folder lies inside its own rule set on the same host",
    "choose a target_path outside {source}, or exclude {target} with a rule",
    "Carbonite Migrate: a recursive or cyclic mapping means mirroring will never finish",
)
_rule(
    "files.orphans_inside_target",
    C,
    "orphans are moved into a folder inside the copied set, where the next orphan pass would delete them",
    "set orphans_path outside {target}",
    "Carbonite Migrate: the move folder must not sit inside the replica",
)

del C, W, N


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    message: str
    fix: str
    server: str | None = None
    location: str | None = None  # file:line:col of the field, when the playbook was loaded from a file
    path: FieldPath = ()  # the field in the playbook: ("servers", 2, "target", "nics", 0)

    @property
    def field(self) -> str:
        return dotted(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
            "server": self.server,
            "location": self.location,
            "field": self.field or None,
        }


def dotted(path: FieldPath) -> str:
    """``servers[2].target.nics[0]``: how a field is named in messages and JSON."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
        text += f".{name}" if text else name
    return text


def has_critical(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.CRITICAL for f in findings)


# ---------------------------------------------------------------- context


@dataclass
class Context:
    """What the checks see: the playbook and whatever the caller could discover about it."""

    playbook: Playbook
    inventories: Mapping[str, Inventory] | None = None
    facts: Mapping[str, SourceFacts] | None = None
    locate: Locate | None = None

    def servers(self) -> Iterator[tuple[FieldPath, Server]]:
        """Servers migrated as VMs (a data-only server has no target VM for these checks to look at)."""
        for index, server in enumerate(self.playbook.servers):
            if server.target is not None:
                yield ("servers", index), server

    def inventory(self, provider: str) -> Inventory | None:
        return (self.inventories or {}).get(provider)

    def source_facts(self, server: Server) -> SourceFacts | None:
        return (self.facts or {}).get(server.name)

    def provider_type(self, provider: str) -> str | None:
        config = self.playbook.providers.get(provider)
        return config.type if config is not None else None

    def where(self, path: FieldPath) -> str | None:
        """The field's file:line:col; a defaulted field is located at its nearest written parent."""
        if self.locate is None:
            return None
        for end in range(len(path), 0, -1):
            try:
                location = self.locate(*path[:end])
            except LookupError:
                location = None
            if location:
                return location
        return None

    def finding(
        self, rule_id: str, message: str, *, path: FieldPath = (), server: str | None = None, **fix: Any
    ) -> Finding:
        rule = RULES[rule_id]
        return Finding(
            rule_id=rule.id,
            severity=rule.severity,
            message=message,
            fix=rule.fix.format(**fix),
            server=server,
            location=self.where(path),
            path=path,
        )


Check = Callable[[Context], Iterable[Finding]]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    CHECKS.append(function)
    return function


def validate(
    playbook: Playbook,
    *,
    inventories: Mapping[str, Inventory] | None = None,
    facts: Mapping[str, SourceFacts] | None = None,
    locate: Locate | None = None,
) -> list[Finding]:
    """Every finding of every rule, most severe first, then in playbook order."""
    context = Context(playbook, inventories, facts, locate)
    findings = [finding for run in CHECKS for finding in run(context)]
    return sorted(findings, key=_sort_key)


def _sort_key(finding: Finding) -> tuple[Any, ...]:
    return (
        finding.severity.rank,
        _location_key(finding.location),
        tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in finding.path),
        finding.rule_id,
        finding.server or "",
        finding.message,
    )


def _location_key(location: str | None) -> tuple[int, str, int, int]:
    if not location:
        return (0, "", 0, 0)
    parts = location.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (1, parts[0], int(parts[1]), int(parts[2]))
    return (1, location, 0, 0)


# ---------------------------------------------------------------- shared derivations


def _names(values: Iterable[str], limit: int = 12) -> str:
    items = list(values)
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def effective_firmware(server: Server, facts: SourceFacts | None) -> str | None:
    """The replica's boot mode: as written, else the source's; None when neither is known."""
    if server.target.firmware != "auto":
        return server.target.firmware
    return facts.firmware if facts else None


def hyperv_generation(server: Server, facts: SourceFacts | None) -> int | None:
    """Hyper-V generation as written, else derived from the boot mode (UEFI: 2, BIOS: 1)."""
    if server.target.generation is not None:
        return server.target.generation
    firmware = effective_firmware(server, facts)
    return None if firmware is None else (2 if firmware == "uefi" else 1)


def boot_disk_index(disks: Sequence[DiskMap]) -> int | None:
    """The disk marked boot, else the first (the model's documented default)."""
    for index, disk in enumerate(disks):
        if disk.boot:
            return index
    return 0 if disks else None


def source_nic_for(index: int, nic: NicMap, facts: SourceFacts) -> SourceNic | None:
    """The source NIC a map refers to: by MAC when given, else by position."""
    if nic.source_mac:
        return next((n for n in facts.nics if n.mac.lower() == nic.source_mac), None)
    return facts.nics[index] if index < len(facts.nics) else None


def disk_datastore(
    playbook: Playbook,
    server_path: FieldPath,
    server: Server,
    disk_path: FieldPath | None,
    disk: DiskMap | None,
    inventory: Inventory | None,
) -> tuple[str | None, FieldPath]:
    """Where a replica disk lands and where the playbook says so (for the finding's location).

    In order: the disk's own datastore, the target's, the provider's default, the inventory's default.
    """
    if disk is not None and disk.datastore and disk_path is not None:
        return disk.datastore, (*disk_path, "datastore")
    if server.target.datastore:
        return server.target.datastore, (*server_path, "target", "datastore")
    config = playbook.providers.get(server.target.provider)
    if isinstance(config, EsxProviderConfig) and config.datastore:
        return config.datastore, ("providers", server.target.provider, "datastore")
    if isinstance(config, KvmProviderConfig):
        return config.storage_pool, ("providers", server.target.provider, "storage_pool")
    if inventory is not None and inventory.default_datastore:
        return inventory.default_datastore, (*server_path, "target")
    return None, (*server_path, "target")


@dataclass(frozen=True)
class PlannedDisk:
    server: str
    source: str
    size: int | None  # None: auto, and the source was not discovered
    datastore: str | None
    datastore_path: FieldPath
    path: FieldPath


def planned_disks(context: Context, server_path: FieldPath, server: Server) -> list[PlannedDisk]:
    """The replica disks a server will get; empty when that cannot be known (no map and no facts)."""
    facts = context.source_facts(server)
    inventory = context.inventory(server.target.provider)
    sizes = {d.name: d.size for d in facts.disks} if facts else {}
    planned: list[PlannedDisk] = []
    if server.target.disks:
        for index, disk in enumerate(server.target.disks):
            path = (*server_path, "target", "disks", index)
            size = disk.size if isinstance(disk.size, int) else sizes.get(disk.source)
            name, ds_path = disk_datastore(context.playbook, server_path, server, path, disk, inventory)
            planned.append(PlannedDisk(server.name, disk.source, size, name, ds_path, path))
    elif facts:
        name, ds_path = disk_datastore(context.playbook, server_path, server, None, None, inventory)
        for source_disk in facts.disks:
            path = (*server_path, "target", "disks")
            planned.append(PlannedDisk(server.name, source_disk.name, source_disk.size, name, ds_path, path))
    return planned


def _disk_count(context: Context, server: Server) -> int:
    facts = context.source_facts(server)
    return len(server.target.disks) or (len(facts.disks) if facts else 0) or 1


# ---------------------------------------------------------------- references


@check
def check_unknown_providers(context: Context) -> Iterator[Finding]:
    known = _names(context.playbook.providers)
    for path, server in context.servers():
        fields: list[tuple[FieldPath, str, str]] = [
            ((*path, "target", "provider"), "target.provider", server.target.provider)
        ]
        if isinstance(server.source, VmSource):
            fields.append(((*path, "source", "provider"), "source.provider", server.source.provider))
        for field_path, field_name, name in fields:
            if name not in context.playbook.providers:
                yield context.finding(
                    "ref.unknown_provider",
                    f"{server.name}: {field_name} {name!r} is not defined under providers",
                    path=field_path,
                    server=server.name,
                    name=name,
                    known=known,
                )


@check
def check_unknown_source_vm(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        source = server.source
        if not isinstance(source, VmSource):
            continue
        inventory = context.inventory(source.provider)
        if inventory is not None and source.vm not in inventory.vms:
            yield context.finding(
                "ref.unknown_source_vm",
                f"{server.name}: source VM {source.vm!r} is not on {source.provider}",
                path=(*path, "source", "vm"),
                server=server.name,
                provider=source.provider,
                known=_names(sorted(inventory.vms)),
            )


@check
def check_unknown_dns_providers(context: Context) -> Iterator[Finding]:
    known = _names(context.playbook.dns)
    for path, server in context.servers():
        for index, record in enumerate(server.dns_records):
            if record.provider not in context.playbook.dns:
                yield context.finding(
                    "ref.unknown_dns_provider",
                    f"{server.name}: DNS record {record.name!r} uses DNS provider {record.provider!r}, "
                    "which is not defined under dns",
                    path=(*path, "dns_records", index, "provider"),
                    server=server.name,
                    name=record.provider,
                    known=known,
                )


# ---------------------------------------------------------------- dependencies


@check
def check_dependency_names(context: Context) -> Iterator[Finding]:
    names = [s.name for s in context.playbook.servers]
    known = set(names)
    for path, server in context.servers():
        for index, dependency in enumerate(server.depends_on):
            where = (*path, "depends_on", index)
            if dependency == server.name:
                yield context.finding(
                    "deps.self",
                    f"{server.name} depends on itself",
                    path=where,
                    server=server.name,
                    name=dependency,
                )
            elif dependency not in known:
                yield context.finding(
                    "deps.unknown_server",
                    f"{server.name} depends on {dependency!r}, which is not a server of this playbook",
                    path=where,
                    server=server.name,
                    name=dependency,
                    known=_names(n for n in names if n != server.name),
                )


@check
def check_dependency_cycles(context: Context) -> Iterator[Finding]:
    servers = context.playbook.servers
    order = {s.name: i for i, s in enumerate(servers)}
    deps_of = {
        s.name: [d for d in dict.fromkeys(s.depends_on) if d in order and d != s.name] for s in servers
    }
    graph = nx.DiGraph((name, dep) for name, deps in deps_of.items() for dep in deps)
    components = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    for component in sorted(components, key=lambda c: min(order[n] for n in c)):
        start = min(component, key=order.__getitem__)
        cycle = _cycle_through(start, deps_of, component)
        text = " -> ".join(cycle)
        first_hop = servers[order[start]].depends_on.index(cycle[1])
        yield context.finding(
            "deps.cycle",
            f"depends_on forms a cycle: {text} (each waits for the next to cut over)",
            path=("servers", order[start], "depends_on", first_hop),
            server=start,
            cycle=text,
        )


def _cycle_through(start: str, deps_of: Mapping[str, list[str]], members: set[str]) -> list[str]:
    """A cycle from ``start`` back to it, following depends_on in written order (deterministic)."""
    path, seen = [start], {start}
    stack = [iter(deps_of[start])]
    while stack:
        for nxt in stack[-1]:
            if nxt == start:
                return [*path, start]
            if nxt in members and nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                stack.append(iter(deps_of[nxt]))
                break
        else:
            stack.pop()
            path.pop()
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


@check
def check_wave_order(context: Context) -> Iterator[Finding]:
    waves = {s.name: s.wave for s in context.playbook.servers}
    for path, server in context.servers():
        for index, dependency in enumerate(server.depends_on):
            dep_wave = waves.get(dependency)
            if server.wave is None or dep_wave is None or dep_wave <= server.wave:
                continue
            yield context.finding(
                "deps.wave_order",
                f"{server.name} (wave {server.wave}) depends on {dependency} (wave {dep_wave}), "
                f"but wave {server.wave} cuts over before wave {dep_wave}",
                path=(*path, "depends_on", index),
                server=server.name,
                dependency=dependency,
                wave=server.wave,
                name=server.name,
                dependency_wave=dep_wave,
            )


# ---------------------------------------------------------------- VM names


@check
def check_vm_names(context: Context) -> Iterator[Finding]:
    first_user: dict[tuple[str, str], str] = {}
    for path, server in context.servers():
        key = (server.target.provider, server.vm_name)
        where = (*path, "target", "vm_name")
        if key in first_user:
            yield context.finding(
                "vm.duplicate_name",
                f"{server.name}: VM name {server.vm_name!r} on {server.target.provider} is also the "
                f"replica of {first_user[key]}",
                path=where,
                server=server.name,
                name=server.name,
            )
        else:
            first_user[key] = server.name
        source = server.source
        if isinstance(source, VmSource) and key == (source.provider, source.vm):
            yield context.finding(
                "vm.overwrites_source",
                f"{server.name}: the replica {server.vm_name!r} would be created on "
                f"{server.target.provider} over its own source VM",
                path=where,
                server=server.name,
            )
            continue
        inventory = context.inventory(server.target.provider)
        if inventory is not None and server.vm_name in inventory.vms:
            yield context.finding(
                "vm.name_exists",
                f"{server.name}: a VM named {server.vm_name!r} already exists on {server.target.provider}; "
                "creating the replica would overwrite it",
                path=where,
                server=server.name,
                vm=server.vm_name,
                provider=server.target.provider,
            )


# ---------------------------------------------------------------- disks


@check
def check_disk_sources(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        facts = context.source_facts(server)
        if facts is None:
            continue
        known = _names(d.name for d in facts.disks)
        sizes = {d.name: d.size for d in facts.disks}
        for index, disk in enumerate(server.target.disks):
            where = (*path, "target", "disks", index)
            if disk.source not in sizes:
                yield context.finding(
                    "disk.unknown_source",
                    f"{server.name}: target.disks[{index}] maps source disk {disk.source!r}, which the "
                    f"source does not have (it has: {known})",
                    path=(*where, "source"),
                    server=server.name,
                    known=known,
                )
                continue
            source_size = sizes[disk.source]
            if isinstance(disk.size, int) and disk.size < source_size:
                yield context.finding(
                    "disk.smaller_than_source",
                    f"{server.name}: replica of {disk.source} is sized {format_size(disk.size)} "
                    f"({disk.size} B) but the source disk is {format_size(source_size)} ({source_size} B)",
                    path=(*where, "size"),
                    server=server.name,
                    source_size=format_size(source_size),
                )
        if server.target.disks:
            mapped = {d.source for d in server.target.disks}
            left_out = [d for d in facts.disks if d.name not in mapped]
            if left_out:
                listed = ", ".join(f"{d.name} ({format_size(d.size)})" for d in left_out)
                yield context.finding(
                    "disk.unmapped_source",
                    f"{server.name}: source disk{'s' if len(left_out) > 1 else ''} {listed} "
                    f"{'are' if len(left_out) > 1 else 'is'} not in target.disks and will not be copied",
                    path=(*path, "target", "disks"),
                    server=server.name,
                    disks=", ".join(d.name for d in left_out),
                )


@check
def check_disk_map(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        seen: set[str] = set()
        boots: list[int] = []
        for index, disk in enumerate(server.target.disks):
            if disk.source in seen:
                yield context.finding(
                    "disk.duplicate_source",
                    f"{server.name}: source disk {disk.source!r} is mapped more than once "
                    f"(again at target.disks[{index}])",
                    path=(*path, "target", "disks", index, "source"),
                    server=server.name,
                    disk=disk.source,
                )
            seen.add(disk.source)
            if disk.boot:
                boots.append(index)
        if len(boots) > 1:
            yield context.finding(
                "disk.boot_conflict",
                f"{server.name}: {' and '.join(f'target.disks[{i}]' for i in boots)} are marked boot: true",
                path=(*path, "target", "disks", boots[1], "boot"),
                server=server.name,
            )


@check
def check_disk_platform(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        kind = context.provider_type(server.target.provider)
        inventory = context.inventory(server.target.provider)
        controllers = DISK_CONTROLLERS.get(kind or "")
        for index, disk in enumerate(server.target.disks):
            where = (*path, "target", "disks", index)
            if controllers and disk.controller and disk.controller not in controllers:
                yield context.finding(
                    "disk.controller_unsupported",
                    f"{server.name}: target.disks[{index}] asks for a {disk.controller} controller, which "
                    f"{TYPE_NAMES[kind or '']} does not have",
                    path=(*where, "controller"),
                    server=server.name,
                    known=", ".join(controllers),
                )
            if inventory is not None and disk.format and disk.format not in inventory.limits.disk_formats:
                yield context.finding(
                    "disk.format_unsupported",
                    f"{server.name}: target.disks[{index}] asks for format {disk.format}, which "
                    f"{server.target.provider} cannot create",
                    path=(*where, "format"),
                    server=server.name,
                    known=", ".join(inventory.limits.disk_formats),
                    native=inventory.limits.native_format,
                )


# ---------------------------------------------------------------- datastores


@check
def check_datastores_exist(context: Context) -> Iterator[Finding]:
    reported: set[tuple[str, str, FieldPath]] = set()
    for path, server in context.servers():
        provider = server.target.provider
        inventory = context.inventory(provider)
        if inventory is None:
            continue
        wanted: list[tuple[str, FieldPath]] = []
        if server.target.datastore:
            wanted.append((server.target.datastore, (*path, "target", "datastore")))
        wanted += [
            (d.datastore, d.datastore_path) for d in planned_disks(context, path, server) if d.datastore
        ]
        for name, where in wanted:
            if (provider, name, where) in reported:
                continue
            reported.add((provider, name, where))
            info = inventory.datastores.get(name)
            if info is None:
                yield context.finding(
                    "datastore.unknown",
                    f"{server.name}: datastore {name!r} ({dotted(where)}) is not on {provider}",
                    path=where,
                    server=server.name,
                    provider=provider,
                    known=_names(sorted(inventory.datastores)),
                )
            elif not info.accessible:
                yield context.finding(
                    "datastore.inaccessible",
                    f"{server.name}: datastore {name!r} on {provider} is not accessible",
                    path=where,
                    server=server.name,
                    provider=provider,
                )


@check
def check_datastore_space(context: Context) -> Iterator[Finding]:
    landing: dict[tuple[str, str], list[PlannedDisk]] = {}
    free_on: dict[tuple[str, str], int] = {}
    for path, server in context.servers():
        inventory = context.inventory(server.target.provider)
        if inventory is None:
            continue
        for disk in planned_disks(context, path, server):
            info = inventory.datastores.get(disk.datastore or "")
            if info is not None and info.accessible:
                key = (server.target.provider, disk.datastore or "")
                landing.setdefault(key, []).append(disk)
                free_on[key] = info.free
    for (provider, name), disks in landing.items():
        free = free_on[(provider, name)]
        known = [d.size for d in disks if d.size is not None]
        planned = sum(known)
        needed = int(planned * (1 + DATASTORE_HEADROOM))
        if needed <= free:
            continue
        servers = list(dict.fromkeys(d.server for d in disks))
        who = f"{_names(servers)} {'needs' if len(servers) == 1 else 'need'}"
        at_least = "at least " if len(known) < len(disks) else ""
        disks_text = f"{len(disks)} disk{'s' if len(disks) > 1 else ''}"
        yield context.finding(
            "datastore.free_space",
            f"datastore {name} on {provider} has {format_size(free)} free; {who} {at_least}"
            f"{format_size(needed)} there ({format_size(planned)} for {disks_text} + "
            f"{DATASTORE_HEADROOM:.0%} headroom)",
            path=disks[0].datastore_path,
            server=servers[0] if len(servers) == 1 else None,
            missing=format_size(needed - free),
            datastore=name,
        )


# ---------------------------------------------------------------- NICs


@check
def check_nic_networks(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        provider = server.target.provider
        inventory = context.inventory(provider)
        for index, nic in enumerate(server.target.nics):
            where = (*path, "target", "nics", index)
            if nic.network is None:
                yield context.finding(
                    "nic.no_network",
                    f"{server.name}: target.nics[{index}] has no network, so the replica NIC would be "
                    "connected nowhere",
                    path=(*where, "network"),
                    server=server.name,
                )
            if inventory is None:
                continue
            known = _names(inventory.networks)
            if nic.network is not None and nic.network not in inventory.networks:
                yield context.finding(
                    "nic.unknown_network",
                    f"{server.name}: target.nics[{index}] network {nic.network!r} is not on {provider}",
                    path=(*where, "network"),
                    server=server.name,
                    provider=provider,
                    known=known,
                )
            if nic.test_network is not None and nic.test_network not in inventory.networks:
                yield context.finding(
                    "nic.unknown_test_network",
                    f"{server.name}: target.nics[{index}] test_network {nic.test_network!r} is not on "
                    f"{provider}",
                    path=(*where, "test_network"),
                    server=server.name,
                    provider=provider,
                    known=known,
                )


@check
def check_nic_types(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        kind = context.provider_type(server.target.provider) or ""
        models = NIC_MODELS.get(kind)
        for index, nic in enumerate(server.target.nics):
            if models and nic.type and nic.type not in models:
                yield context.finding(
                    "nic.type_unsupported",
                    f"{server.name}: target.nics[{index}] type {nic.type} does not exist on "
                    f"{TYPE_NAMES[kind]}",
                    path=(*path, "target", "nics", index, "type"),
                    server=server.name,
                    known=", ".join(models),
                )


@check
def check_nic_count(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        provider = server.target.provider
        kind = context.provider_type(provider)
        inventory = context.inventory(provider)
        nics = server.target.nics
        if kind == "hyperv":
            yield from _hyperv_nic_count(context, path, server, inventory)
            continue
        if kind == "esx":
            limit = min(ESX_MAX_NICS, inventory.limits.max_nics) if inventory else ESX_MAX_NICS
        elif inventory is not None:
            limit = inventory.limits.max_nics
        elif isinstance(config := context.playbook.providers.get(provider), SimProviderConfig):
            limit = config.max_nics
        else:
            continue
        if len(nics) > limit:
            yield context.finding(
                "nic.too_many",
                f"{server.name} maps {len(nics)} NICs; {TYPE_NAMES.get(kind or '', provider)} allows {limit} "
                "per VM",
                path=(*path, "target", "nics", limit),
                server=server.name,
                limit=limit,
            )


def _hyperv_nic_count(
    context: Context, path: FieldPath, server: Server, inventory: Inventory | None
) -> Iterator[Finding]:
    legacy = [i for i, nic in enumerate(server.target.nics) if nic.type == "legacy"]
    synthetic = [i for i, nic in enumerate(server.target.nics) if nic.type != "legacy"]
    total = HYPERV_MAX_LEGACY_NICS + HYPERV_MAX_SYNTHETIC_NICS
    if inventory is not None:
        total = min(total, inventory.limits.max_nics)
    for kind, indexes, limit in (
        ("legacy", legacy, HYPERV_MAX_LEGACY_NICS),
        ("synthetic", synthetic, HYPERV_MAX_SYNTHETIC_NICS),
    ):
        if len(indexes) > limit:
            yield context.finding(
                "nic.too_many",
                f"{server.name} maps {len(indexes)} {kind} NICs; Hyper-V allows {limit} {kind} "
                f"({HYPERV_MAX_SYNTHETIC_NICS} synthetic + {HYPERV_MAX_LEGACY_NICS} legacy) per VM",
                path=(*path, "target", "nics", indexes[limit]),
                server=server.name,
                limit=limit,
            )
            return
    if len(server.target.nics) > total:
        yield context.finding(
            "nic.too_many",
            f"{server.name} maps {len(server.target.nics)} NICs; {server.target.provider} allows {total} "
            "per VM",
            path=(*path, "target", "nics", total),
            server=server.name,
            limit=total,
        )


@check
def check_legacy_nic_generation(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        if context.provider_type(server.target.provider) != "hyperv":
            continue
        if hyperv_generation(server, context.source_facts(server)) != 2:
            continue
        for index, nic in enumerate(server.target.nics):
            if nic.type == "legacy":
                yield context.finding(
                    "hyperv.legacy_nic_gen2",
                    f"{server.name}: target.nics[{index}] is a legacy adapter on a generation 2 VM",
                    path=(*path, "target", "nics", index, "type"),
                    server=server.name,
                )


@check
def check_nic_sources(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        facts = context.source_facts(server)
        if facts is None:
            continue
        macs = {n.mac.lower() for n in facts.nics}
        claimed: set[str] = set()
        for index, nic in enumerate(server.target.nics):
            if nic.source_mac and nic.source_mac not in macs:
                yield context.finding(
                    "nic.unknown_source_mac",
                    f"{server.name}: target.nics[{index}] maps source MAC {nic.source_mac}, which the source "
                    "does not have",
                    path=(*path, "target", "nics", index, "source_mac"),
                    server=server.name,
                    known=_names(f"{n.mac} ({n.name})" for n in facts.nics),
                )
            matched = source_nic_for(index, nic, facts)
            if matched is not None:
                claimed.add(matched.mac.lower())
        left_out = [n for n in facts.nics if n.mac.lower() not in claimed]
        if left_out:
            listed = ", ".join(f"{n.name} ({', '.join(n.addresses) or 'no address'})" for n in left_out)
            yield context.finding(
                "nic.unmapped_source",
                f"{server.name}: source NIC{'s' if len(left_out) > 1 else ''} {listed} "
                f"{'have' if len(left_out) > 1 else 'has'} no target NIC; "
                f"{'their' if len(left_out) > 1 else 'its'} addresses will not be reachable after cutover",
                path=(*path, "target", "nics"),
                server=server.name,
                nics=", ".join(n.name for n in left_out),
            )


# ---------------------------------------------------------------- DNS


@check
def check_dns_ttl(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        for index, record in enumerate(server.dns_records):
            if record.ttl > DNS_TTL_MAX:
                yield context.finding(
                    "dns.ttl_high",
                    f"{server.name}: DNS record {record.name!r} has ttl {record.ttl} s "
                    f"(above {DNS_TTL_MAX} s): clients may keep the old address for up to {record.ttl} s "
                    "after cutover",
                    path=(*path, "dns_records", index, "ttl"),
                    server=server.name,
                    limit=DNS_TTL_MAX,
                )


@check
def check_dns_values(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        facts = context.source_facts(server)
        nics = server.target.nics
        for index, record in enumerate(server.dns_records):
            where = (*path, "dns_records", index, "value")
            label = f"{server.name}: DNS record {record.name!r} ({record.type} {record.value})"
            match = _NIC_VALUE_RE.match(record.value)
            if match is None:
                problem = _literal_problem(record.type, record.value)
                if problem:
                    yield context.finding(
                        "dns.bad_value",
                        f"{label}: {problem}",
                        path=where,
                        server=server.name,
                        hint=_literal_hint(record.type),
                    )
                continue
            if record.type == "CNAME":
                yield context.finding(
                    "dns.bad_value",
                    f"{label}: a CNAME points at a host name, not at a NIC's address",
                    path=where,
                    server=server.name,
                    hint="write the canonical host name as the value",
                )
                continue
            number = int(match.group(1))
            if number >= len(nics):
                have = f"{len(nics)} NIC{'s' if len(nics) != 1 else ''}" if nics else "no NIC in target.nics"
                yield context.finding(
                    "dns.nic_missing",
                    f"{label}: the server has {have}",
                    path=where,
                    server=server.name,
                    choices=_nic_choices(len(nics)),
                )
                continue
            yield from _dns_nic_address(context, label, where, server, number, record.type, facts)


def _dns_nic_address(
    context: Context,
    label: str,
    where: FieldPath,
    server: Server,
    number: int,
    rtype: str,
    facts: SourceFacts | None,
) -> Iterator[Finding]:
    nic = server.target.nics[number]
    version = 4 if rtype == "A" else 6
    if isinstance(nic.ip, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        if nic.ip.version != version:
            yield context.finding(
                "dns.bad_value",
                f"{label}: nic{number} gets IPv{nic.ip.version} address {nic.ip.ip}",
                path=where,
                server=server.name,
                hint="use type AAAA for an IPv6 address"
                if rtype == "A"
                else "use type A for an IPv4 address",
            )
        return
    if facts is None:
        return  # keep / dhcp: the source's address is needed, and facts.not_discovered says it was skipped
    source_nic = source_nic_for(number, nic, facts)
    addresses = [a for a in (source_nic.addresses if source_nic else ()) if _version(a) == version]
    if not addresses:
        found = (
            f"source NIC {source_nic.name} has no IPv{version} address"
            if source_nic
            else ("no source NIC matches it")
        )
        yield context.finding(
            "dns.address_unknown",
            f"{label}: nic{number} has ip: {nic.ip} and {found}",
            path=where,
            server=server.name,
            nic=f"target.nics[{number}]",
        )


def _nic_choices(count: int) -> str:
    if count == 0:
        return "a NIC added to target.nics"
    return "nic0" if count == 1 else f"nic0..nic{count - 1}"


def _version(cidr: str) -> int | None:
    try:
        return ipaddress.ip_interface(cidr).version
    except ValueError:
        return None


def _literal_problem(rtype: str, value: str) -> str | None:
    if rtype == "CNAME":
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is neither nicN nor an IP address"
    wanted = 4 if rtype == "A" else 6
    return None if address.version == wanted else f"{value} is an IPv{address.version} address"


def _literal_hint(rtype: str) -> str:
    return {
        "A": "write nicN or an IPv4 address (IPv6 goes in an AAAA record)",
        "AAAA": "write nicN or an IPv6 address (IPv4 goes in an A record)",
    }.get(rtype, "write nicN")


# ---------------------------------------------------------------- firmware and Hyper-V generation


@check
def check_firmware(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        facts = context.source_facts(server)
        where = (*path, "target", "firmware")
        wanted = server.target.firmware
        if facts is not None and wanted != "auto" and wanted != facts.firmware:
            yield context.finding(
                "firmware.mismatch",
                f"{server.name}: target.firmware is {wanted} but the source boots {facts.firmware}",
                path=where,
                server=server.name,
                source=facts.firmware,
            )
        inventory = context.inventory(server.target.provider)
        firmware = effective_firmware(server, facts)
        if inventory is None or firmware is None or firmware in inventory.limits.firmware:
            continue
        origin = "target.firmware is" if wanted != "auto" else "the source boots"
        yield context.finding(
            "firmware.unsupported",
            f"{server.name}: {origin} {firmware}, which {server.target.provider} does not offer "
            f"(it offers: {', '.join(inventory.limits.firmware)})",
            path=where,
            server=server.name,
            firmware=firmware,
            known=", ".join(inventory.limits.firmware),
        )


@check
def check_hyperv_generation(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        if context.provider_type(server.target.provider) != "hyperv":
            continue
        facts = context.source_facts(server)
        generation = hyperv_generation(server, facts)
        firmware = effective_firmware(server, facts)
        where = (*path, "target", "generation")
        source = "target.firmware" if server.target.firmware != "auto" else "the source"
        if generation == 1 and firmware == "uefi":
            yield context.finding(
                "hyperv.gen1_uefi",
                f"{server.name}: generation 1 cannot boot UEFI, and {source} is uefi",
                path=where,
                server=server.name,
            )
        if generation == 2 and firmware == "bios":
            yield context.finding(
                "hyperv.gen2_bios",
                f"{server.name}: generation 2 cannot boot BIOS, and {source} is bios",
                path=where,
                server=server.name,
            )
        disks = server.target.disks
        if generation == 1:
            yield from _gen1_controllers(context, path, server)
        elif generation == 2:
            for index, disk in enumerate(disks):
                if disk.controller == "ide":
                    yield context.finding(
                        "hyperv.gen2_ide",
                        f"{server.name}: target.disks[{index}] ({disk.source}) is on IDE, which generation 2 "
                        "does not have",
                        path=(*path, "target", "disks", index, "controller"),
                        server=server.name,
                    )


def _gen1_controllers(context: Context, path: FieldPath, server: Server) -> Iterator[Finding]:
    disks = server.target.disks
    boot = boot_disk_index(disks)
    if boot is None:
        return
    boot_disk = disks[boot]
    if boot_disk.controller not in (None, "ide"):
        yield context.finding(
            "hyperv.gen1_boot_not_ide",
            f"{server.name}: boot disk target.disks[{boot}] ({boot_disk.source}) is on "
            f"{boot_disk.controller}; generation 1 boots only from IDE",
            path=(*path, "target", "disks", boot, "controller"),
            server=server.name,
        )
    on_ide = [i for i, d in enumerate(disks) if d.controller == "ide" or (i == boot and d.controller is None)]
    if len(on_ide) > HYPERV_GEN1_MAX_IDE:
        yield context.finding(
            "hyperv.gen1_ide_limit",
            f"{server.name} puts {len(on_ide)} disks on IDE; generation 1 has room for {HYPERV_GEN1_MAX_IDE}",
            path=(*path, "target", "disks", on_ide[HYPERV_GEN1_MAX_IDE], "controller"),
            server=server.name,
        )


# ---------------------------------------------------------------- security


@check
def check_secrets_in_clear(context: Context) -> Iterator[Finding]:
    for where, secret in _secrets(context.playbook, ()):
        if secret.in_clear:
            server = None
            if where[:1] == ("servers",) and isinstance(where[1], int):
                server = context.playbook.servers[where[1]].name
            yield context.finding(
                "security.secret_in_clear",
                f"{server + ': ' if server else ''}{dotted(where)} is written in clear in the playbook "
                "(it is never printed, but the file holds it)",
                path=where,
                server=server,
            )


def _secrets(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, Secret]]:
    if isinstance(value, Secret):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name), (*path, name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secrets(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets(item, (*path, str(key)))


@check
def check_insecure_transport(context: Context) -> Iterator[Finding]:
    playbook = context.playbook
    for name, config in playbook.providers.items():
        if isinstance(config, EsxProviderConfig | HypervProviderConfig) and config.insecure:
            yield context.finding(
                "security.insecure_tls",
                f"provider {name} skips certificate checks: a machine in the middle could take its password",
                path=("providers", name, "insecure"),
            )
    for name, dns in playbook.dns.items():
        if isinstance(dns, WindowsDns) and dns.insecure:
            yield context.finding(
                "security.insecure_tls",
                f"DNS provider {name} skips certificate checks",
                path=("dns", name, "insecure"),
            )
    for path, server in context.servers():
        source = server.source
        if isinstance(source, WinrmSource) and source.insecure:
            yield context.finding(
                "security.insecure_tls",
                f"{server.name}: the WinRM source skips certificate checks",
                path=(*path, "source", "insecure"),
                server=server.name,
            )
        if isinstance(source, SshSource) and source.insecure:
            yield context.finding(
                "security.insecure_host_key",
                f"{server.name}: SSH to {source.host} accepts any host key, so its disks could be read from "
                "an impostor",
                path=(*path, "source", "insecure"),
                server=server.name,
            )


def is_loopback(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if not host:
        return False
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@check
def check_notification_transport(context: Context) -> Iterator[Finding]:
    notifications = context.playbook.notifications
    if notifications is None:
        return
    webhook = notifications.webhook
    if webhook is not None:
        parts = urlsplit(webhook.url.reveal())
        if parts.scheme.lower() == "http" and not is_loopback(parts.hostname):
            headers = f" and {len(webhook.headers)} header value(s)" if webhook.headers else ""
            yield context.finding(
                "notify.webhook_plain_http",
                f"notifications.webhook posts to {parts.hostname} over plain http: the URL{headers} "
                "travel readable",
                path=("notifications", "webhook", "url"),
            )
    email = notifications.email
    if email is None:
        return
    if not email.starttls and not is_loopback(email.server):
        yield context.finding(
            "notify.smtp_no_tls",
            f"notifications.email sends to {email.server}:{email.port} without STARTTLS: every notice "
            "travels in clear",
            path=("notifications", "email", "starttls"),
        )
    elif email.password is not None and email.insecure:
        yield context.finding(
            "notify.smtp_no_tls",
            f"notifications.email logs in to {email.server}:{email.port} as {email.user} without checking "
            "the relay's certificate (insecure: true): the password goes to whoever answers",
            path=("notifications", "email", "insecure"),
        )


# ---------------------------------------------------------------- cutover, appliance, bandwidth, memory


@check
def check_auto_cutover_shutdown(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        options = context.playbook.cutover_for(server)
        if options.mode == "auto" and not options.shutdown_source:
            base = (*path, "cutover") if server.cutover else ("defaults", "cutover")
            yield context.finding(
                "cutover.auto_without_shutdown",
                f"{server.name}: cutover is automatic and shutdown_source is false, so the source and the "
                "replica would both run, with one identity",
                path=(*base, "shutdown_source"),
                server=server.name,
            )


@check
def check_ssh_quiesce(context: Context) -> Iterator[Finding]:
    """Shutting the source down does not stand in for quiesce: the final pass runs before the shutdown."""
    for path, server in context.servers():
        source = server.source
        if not isinstance(source, SshSource) or source.quiesce != "none" or source.quiesce_command:
            continue
        policy = context.playbook.cutover_for(server).unquiesced_writes
        if policy == "allow":
            continue
        then = (
            "cutover will refuse (cutover.unquiesced_writes: refuse) while one is mounted read-write"
            if policy == "refuse"
            else "cutover will warn and copy them crash-consistent, as after a power cut"
        )
        yield context.finding(
            "source.no_quiesce",
            f"{server.name}: no quiesce is configured for {source.host}, so the final pass copies its "
            f"filesystems while they are written; {then}",
            path=(*path, "source", "quiesce"),
            server=server.name,
        )


@check
def check_appliance_mode(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        inventory = context.inventory(server.target.provider)
        if inventory is None or server.target.appliance in inventory.limits.appliance_modes:
            continue
        yield context.finding(
            "appliance.mode_unsupported",
            f"{server.name}: provider {server.target.provider} ({inventory.type}) supports appliance: "
            f"{' or '.join(inventory.limits.appliance_modes)}, not {server.target.appliance}",
            path=(*path, "target", "appliance"),
            server=server.name,
        )


@check
def check_appliance_login(context: Context) -> Iterator[Finding]:
    """A provider whose writer runs inside its recovery appliance over SSH needs the login to it: ESX
    when disk_writer is appliance, Hyper-V when an appliance is named or made from a template."""
    for path, server in context.servers():
        config = context.playbook.providers.get(server.target.provider)
        if isinstance(config, EsxProviderConfig):
            rule, writes_inside = "esx.appliance_login_missing", config.disk_writer == "appliance"
        elif isinstance(config, HypervProviderConfig):
            rule, writes_inside = (
                "hyperv.appliance_login_missing",
                bool(config.appliance or config.appliance_template),
            )
        else:
            continue
        if server.target.appliance == "host" or not writes_inside or config.appliance_login is not None:
            continue
        yield context.finding(
            rule,
            f"{server.name}: provider {server.target.provider} writes replica disks inside the recovery "
            "appliance over SSH, and has no appliance_login",
            path=(*path, "target", "appliance"),
            server=server.name,
        )


@check
def check_cold_host_source(context: Context) -> Iterator[Finding]:
    """A target whose ``appliance: host`` is cold (ESX: disks built here, uploaded when the VM is made)
    copies a source once: one that keeps running would be copied torn and its later writes lost."""
    for path, server in context.servers():
        inventory = context.inventory(server.target.provider)
        if server.target.appliance != "host" or inventory is None or not inventory.limits.cold_host:
            continue
        source = server.source
        if source is None or source.type == "image":
            continue
        facts = context.source_facts(server)
        if source.type == "vm":
            state = facts.vm.power_state if facts is not None and facts.vm is not None else None
            if state in (None, "poweredOff"):
                continue  # stopped (or not discovered yet: checked again once it is)
            what = f"source VM {source.vm} is {state}"
        else:
            what = f"its source is a running server ({source.type})"
        yield context.finding(
            "appliance.cold_host_live_source",
            f"{server.name}: provider {server.target.provider} ({inventory.type}) has no writer on the host, "
            f"so appliance: host builds each disk here and uploads it once at cutover, but {what}",
            path=(*path, "target", "appliance"),
            server=server.name,
        )


@check
def check_appliance_disks(context: Context) -> Iterator[Finding]:
    """Mirror the planner's packing: one shared appliance per target host, a new one past the limit."""
    groups: dict[tuple[str, str], list[tuple[FieldPath, Server]]] = {}
    for path, server in context.servers():
        if server.target.appliance == "host" or server.target.provider not in context.playbook.providers:
            continue
        inventory = context.inventory(server.target.provider)
        limit = inventory.limits.max_disks_per_appliance if inventory else APPLIANCE_MAX_DISKS
        count = _disk_count(context, server)
        if count > limit:
            yield context.finding(
                "appliance.server_disk_limit",
                f"{server.name} has {count} disks; one appliance can attach {limit}",
                path=(*path, "target", "disks"),
                server=server.name,
            )
        if server.target.appliance == "shared":
            groups.setdefault((server.target.provider, server.target.host or "default"), []).append(
                (path, server)
            )
    for (provider, host), members in groups.items():
        inventory = context.inventory(provider)
        limit = inventory.limits.max_disks_per_appliance if inventory else APPLIANCE_MAX_DISKS
        used, appliances, overflow = 0, 1, None
        for path, server in members:
            count = _disk_count(context, server)
            if used and used + count > limit:
                appliances, used = appliances + 1, 0
                overflow = overflow or (path, server)
            used += count
        if overflow is None:
            continue
        total = sum(_disk_count(context, s) for _, s in members)
        yield context.finding(
            "appliance.second_appliance",
            f"the shared appliance on {provider}/{host} would hold {total} disks of {len(members)} servers; "
            f"one holds {limit}, so {appliances} appliances will be used (from {overflow[1].name} on)",
            path=(*overflow[0], "target", "appliance"),
            server=overflow[1].name,
        )


@check
def check_bandwidth_windows(context: Context) -> Iterator[Finding]:
    schedules: list[tuple[FieldPath, Bandwidth, str | None]] = [
        (("defaults", "mirror", "bandwidth"), context.playbook.defaults.mirror.bandwidth, None)
    ]
    for path, server in context.servers():
        if server.mirror is not None:
            schedules.append(((*path, "mirror", "bandwidth"), server.mirror.bandwidth, server.name))
    for base, bandwidth, server in schedules:
        spans = [_window_spans(w) for w in bandwidth.schedule]
        for later in range(1, len(spans)):
            for earlier in range(later):
                start = _first_overlap(spans[earlier], spans[later])
                if start is None:
                    continue
                first, second = bandwidth.schedule[earlier], bandwidth.schedule[later]
                yield context.finding(
                    "bandwidth.windows_overlap",
                    f"{dotted(base)}.schedule[{later}] ({_window_text(second)}) overlaps schedule[{earlier}] "
                    f"({_window_text(first)}) from {_week_time(start)}; schedule[{earlier}] wins there",
                    path=(*base, "schedule", later),
                    server=server,
                )
                break


_WEEK = 7 * 1440
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _window_spans(window: BandwidthWindow) -> list[tuple[int, int]]:
    """Minute-of-week intervals; a window like 22:00-06:00 runs into the next day."""
    start, end = hour_range(window.hours)
    spans: list[tuple[int, int]] = []
    for day in sorted(day_set(window.days)):
        base = day * 1440
        if start < end:
            spans.append((base + start, base + end))
        else:
            spans.append((base + start, base + 1440))
            following = ((day + 1) % 7) * 1440
            if end:
                spans.append((following, following + end))
    return spans


def _first_overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int | None:
    starts = [max(a0, b0) for a0, a1 in a for b0, b1 in b if max(a0, b0) < min(a1, b1)]
    return min(starts) if starts else None


def _week_time(minute: int) -> str:
    minute %= _WEEK
    day, rest = divmod(minute, 1440)
    return f"{_DAY_NAMES[day]} {rest // 60:02d}:{rest % 60:02d}"


def _window_text(window: BandwidthWindow) -> str:
    limit = f"{format_size(window.limit)}/s" if window.limit else "unlimited"
    return f"{window.days} {window.hours}, {limit}"


@check
def check_memory(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        inventory = context.inventory(server.target.provider)
        if inventory is None or inventory.limits.max_memory is None:
            continue
        limit = inventory.limits.max_memory
        if server.target.memory > limit:
            yield context.finding(
                "memory.exceeds_host",
                f"{server.name}: memory {format_size(server.target.memory)} is more than "
                f"{server.target.provider} can give one VM ({format_size(limit)})",
                path=(*path, "target", "memory"),
                server=server.name,
                limit=format_size(limit),
            )


# ---------------------------------------------------------------- ESX


@check
def check_esx_datastore_space(context: Context) -> Iterator[Finding]:
    """Where datastore.free_space finds room for the disks, ESX still needs the VM's swap file (its memory
    size) and config files in its home directory at power-on; a full datastore stops the cutover there.

    Fires only where the disks alone fit, so one shortage is reported once.
    """
    disks_on: dict[tuple[str, str], int] = {}
    homes: dict[tuple[str, str], list[tuple[FieldPath, FieldPath, Server]]] = {}
    infos: dict[tuple[str, str], DatastoreInfo] = {}
    for path, server in context.servers():
        provider = server.target.provider
        inventory = context.inventory(provider)
        if context.provider_type(provider) != "esx" or inventory is None:
            continue
        planned = planned_disks(context, path, server)
        for disk in planned:
            info = inventory.datastores.get(disk.datastore or "")
            if info is not None and info.accessible:
                key = (provider, info.name)
                infos[key] = info
                disks_on[key] = disks_on.get(key, 0) + (disk.size or 0)
        home, home_path = _esx_home(context, path, server, planned, inventory)
        info = inventory.datastores.get(home or "")
        if info is not None and info.accessible:
            infos[(provider, info.name)] = info
            homes.setdefault((provider, info.name), []).append((path, home_path, server))
    for key, vms in homes.items():
        provider, name = key
        free = infos[key].free
        disks = int(disks_on.get(key, 0) * (1 + DATASTORE_HEADROOM))
        if disks > free:
            continue  # datastore.free_space says so
        swap = sum(server.target.memory for _, _, server in vms)
        files = ESX_VM_FILES * len(vms)
        needed = disks + swap + files
        if needed <= free:
            continue
        names = [server.name for _, _, server in vms]
        yield context.finding(
            "esx.datastore_space",
            f"datastore {name} on {provider} has {format_size(free)} free; {_names(names)} "
            f"{'needs' if len(vms) == 1 else 'need'} {format_size(needed)} there "
            f"({format_size(disks)} for disks + {DATASTORE_HEADROOM:.0%}, {format_size(swap)} of swap "
            f"(the memory size), {format_size(files)} for config files)",
            path=vms[0][1],
            server=names[0] if len(vms) == 1 else None,
            missing=format_size(needed - free),
            datastore=name,
        )


def _esx_home(
    context: Context, path: FieldPath, server: Server, planned: Sequence[PlannedDisk], inventory: Inventory
) -> tuple[str | None, FieldPath]:
    """The datastore of the VM's directory (.vmx, .vswp), as the ESX provider picks it: target.datastore,
    else the first disk's datastore, else the provider's default."""
    if server.target.datastore:
        return server.target.datastore, (*path, "target", "datastore")
    if planned and planned[0].datastore:
        return planned[0].datastore, planned[0].datastore_path
    return disk_datastore(context.playbook, path, server, None, None, inventory)


@check
def check_esx_hosts(context: Context) -> Iterator[Finding]:
    for path, server in context.servers():
        provider = server.target.provider
        config = context.playbook.providers.get(provider)
        inventory = context.inventory(provider)
        if not isinstance(config, EsxProviderConfig) or inventory is None or not inventory.unavailable_hosts:
            continue
        if server.target.host:
            host, where = server.target.host, (*path, "target", "host")
        elif config.esx_host:
            host, where = config.esx_host, ("providers", provider, "esx_host")
        else:
            host, where = None, (*path, "target")
        if host is not None:
            reason = inventory.unavailable_hosts.get(host)
            if reason is None:
                continue
            yield context.finding(
                "esx.host_unavailable",
                f"{server.name}: target host {host} on {provider} is {reason}; vSphere places no new VM "
                "there",
                path=where,
                server=server.name,
                host=host,
            )
        elif inventory.hosts and all(h in inventory.unavailable_hosts for h in inventory.hosts):
            states = ", ".join(f"{h} {inventory.unavailable_hosts[h]}" for h in inventory.hosts)
            yield context.finding(
                "esx.host_unavailable",
                f"{server.name}: no host of {provider} can take a new VM ({states})",
                path=where,
                server=server.name,
                host=_names(inventory.hosts),
            )


# ---------------------------------------------------------------- ESX VMs as sources


def _esx_source_disks(server: Server, facts: SourceFacts) -> list[Any]:
    """The source VM's disks the migration copies: the mapped ones, or all when target.disks is empty."""
    assert facts.vm is not None
    mapped = {d.source for d in server.target.disks}
    return [d for d in facts.vm.disks if not mapped or d.disk in mapped]


def _esx_sources(context: Context) -> Iterator[tuple[FieldPath, Server, SourceFacts]]:
    for path, server in context.servers():
        source = server.source
        facts = context.source_facts(server)
        if not isinstance(source, VmSource) or facts is None or facts.vm is None:
            continue
        if context.provider_type(source.provider) == "esx":
            yield path, server, facts


@check
def check_esx_source_vm(context: Context) -> Iterator[Finding]:
    for path, server, facts in _esx_sources(context):
        vm = facts.vm
        assert vm is not None and isinstance(server.source, VmSource)
        where = (*path, "source", "vm")
        sizes = {d.name: d.size for d in facts.disks}
        copied = _esx_source_disks(server, facts)
        for disk in copied:
            size = format_size(sizes.get(disk.disk, 0))
            if disk.backing.startswith("rdm"):
                mode = "physical" if disk.backing == "rdm_physical" else "virtual"
                yield context.finding(
                    "esx.source.rdm_disk",
                    f"{server.name}: disk {disk.disk} ({size}) of source VM {vm.vm} is a {mode}-mode RDM "
                    f"({disk.file or 'no mapping file'}); a snapshot does not freeze it"
                    + (" and CBT does not track it" if mode == "physical" else ""),
                    path=where,
                    server=server.name,
                    disk=disk.disk,
                    read="read: local_datastore cannot read an RDM at all"
                    if server.source.read == "local_datastore"
                    else "read: guest copies it live, as the guest sees the LUN",
                )
            elif disk.mode.startswith("independent"):
                yield context.finding(
                    "esx.source.independent_disk",
                    f"{server.name}: disk {disk.disk} ({size}) of source VM {vm.vm} is {disk.mode}; "
                    "snapshots skip it, so its final pass copies whatever is written meanwhile",
                    path=where,
                    server=server.name,
                    disk=disk.disk,
                    vm=vm.vm,
                )
            if not disk.change_tracking and disk.backing != "rdm_physical":
                reason = "on the VM" if not vm.change_tracking else "for this disk"
                yield context.finding(
                    "esx.cbt.disabled",
                    f"{server.name}: changed-block tracking is off {reason} for disk {disk.disk} of "
                    f"source VM {vm.vm}: every incremental pass reads and hashes all {size} of it",
                    path=where,
                    server=server.name,
                    vm=vm.vm,
                )
        if vm.snapshots:
            own = [s for s in vm.snapshots if s.startswith(f"hvmigrate-{server.name}-")]
            leftover = (
                f"; {_names(own)} {'is' if len(own) == 1 else 'are'} this tool's own, left by an interrupted "
                "pass: `migrate undo` or the next pass removes it"
                if own
                else ""
            )
            yield context.finding(
                "esx.source.snapshot_present",
                f"{server.name}: source VM {vm.vm} has {len(vm.snapshots)} snapshot(s) "
                f"({_names(vm.snapshots)}); its disks are read through the delta chain",
                path=where,
                server=server.name,
                vm=vm.vm,
                leftover=leftover,
            )


@check
def check_esx_guest_id(context: Context) -> Iterator[Finding]:
    sources = list(_esx_sources(context))
    known = _esx_guest_ids() if sources else None  # pyVmomi's type tables take a second to load
    if known is None:
        return
    for path, server, facts in sources:
        vm = facts.vm
        assert vm is not None
        if vm.guest_id and vm.guest_id not in known:
            yield context.finding(
                "esx.guest_id_unsupported",
                f"{server.name}: source VM {vm.vm} says its guest OS is {vm.guest_id!r}, which vSphere "
                "does not know",
                path=(*path, "source", "vm"),
                server=server.name,
            )


@check
def check_windows_source(context: Context) -> Iterator[Finding]:
    """BitLocker and dynamic disks: what a block copy of a Windows server trips over on new hardware."""
    for path, server in context.servers():
        facts = context.source_facts(server)
        if facts is None or facts.windows is None:
            continue
        where = (*path, "source")
        copied = {d.source for d in server.target.disks} if server.target else set()
        for volume in facts.windows.volumes:
            if copied and volume.disk is not None and volume.disk not in copied:
                continue
            name = f"{volume.letter}:" if volume.letter else "a volume without a drive letter"
            if volume.bitlocker == "on":
                yield context.finding(
                    "windows.bitlocker_on",
                    f"{server.name}: BitLocker protects {name} on {volume.disk or 'the source'}: the replica "
                    "cannot unlock it without the source's TPM",
                    path=where,
                    server=server.name,
                    volume=name,
                )
            elif volume.bitlocker == "in_progress":
                yield context.finding(
                    "windows.bitlocker_changing",
                    f"{server.name}: BitLocker is converting {name}",
                    path=where,
                    server=server.name,
                    volume=name,
                )
        if facts.windows.dynamic_disks:
            missing = [d for d in facts.windows.dynamic_disks if copied and d not in copied]
            yield context.finding(
                "windows.dynamic_disk",
                f"{server.name}: {_names(facts.windows.dynamic_disks)} "
                f"{'is a dynamic disk' if len(facts.windows.dynamic_disks) == 1 else 'are dynamic disks'}"
                + (f"; {_names(missing)} not in target.disks" if missing else ""),
                path=where,
                server=server.name,
                disks=_names(facts.windows.dynamic_disks),
            )


def _esx_guest_ids() -> frozenset[str] | None:
    """vSphere's guest OS ids (pyVmomi's enum); None without pyVmomi (the check is then skipped)."""
    try:
        from pyVmomi import vim
    except ImportError:
        return None
    return frozenset(vim.vm.GuestOsDescriptor.GuestOsIdentifier.values)


# ---------------------------------------------------------------- what was not checked


def _referenced_providers(playbook: Playbook) -> list[str]:
    names: list[str] = []
    for server in playbook.servers:
        if server.target is not None:
            names.append(server.target.provider)
        if isinstance(server.source, VmSource):
            names.append(server.source.provider)
    return [n for n in dict.fromkeys(names) if n in playbook.providers]


@check
def check_skipped_rules(context: Context) -> Iterator[Finding]:
    missing = [n for n in _referenced_providers(context.playbook) if context.inventory(n) is None]
    if missing:
        skipped = _names(r for r, rule in RULES.items() if "inventory" in rule.needs)
        yield context.finding(
            "inventory.not_inspected",
            f"provider{'s' if len(missing) > 1 else ''} {_names(missing)} "
            f"{'were' if len(missing) > 1 else 'was'} not inspected; skipped for "
            f"{'them' if len(missing) > 1 else 'it'}: {skipped}",
        )
    undiscovered = [s.name for s in context.playbook.servers if context.source_facts(s) is None]
    if undiscovered:
        skipped = _names(r for r, rule in RULES.items() if "facts" in rule.needs)
        yield context.finding(
            "facts.not_discovered",
            f"source{'s' if len(undiscovered) > 1 else ''} of {_names(undiscovered)} "
            f"{'were' if len(undiscovered) > 1 else 'was'} not discovered; skipped: {skipped}",
        )


# ---------------------------------------------------------------- data-only (files and folders) servers

_LOCAL_NAMES = {"local", "localhost", "127.0.0.1", "::1"}


def _same_host(server: Server) -> bool:
    assert server.data is not None and isinstance(server.source, SshSource)
    target = server.data.target_host
    target_name = "local" if target == "local" else target.host
    source_name = server.source.host
    if target_name in _LOCAL_NAMES and source_name in _LOCAL_NAMES:
        return True
    return target_name == source_name


@check
def check_files_sets(context: Context) -> Iterator[Finding]:
    from orchestrator.files.mirror import pairs_for
    from orchestrator.files.rules import RuleSet

    for index, server in enumerate(context.playbook.servers):
        data = server.data
        if data is None:
            continue
        path: FieldPath = ("servers", index, "data")
        rules = RuleSet.from_config(data.rules)
        try:
            pairs = pairs_for(rules, data.mapping, server.name, data.target_path, data.paths)
        except ValueError:
            continue
        if _same_host(server):
            for pair in pairs:
                if rules.overlaps(pair.target):
                    yield context.finding(
                        "files.target_inside_source",
                        f"{server.name}: {pair.target.decode(errors='replace')} is inside the set it copies "
                        f"({pair.source.decode(errors='replace')}) on the same host",
                        path=(*path, "mapping"),
                        server=server.name,
                        source=pair.source.decode(errors="replace"),
                        target=pair.target.decode(errors="replace"),
                    )
                    break
        if data.orphans == "move" and data.orphans_path:
            for pair in pairs:
                target = pair.target.decode(errors="replace")
                if data.orphans_path == target or data.orphans_path.startswith(target.rstrip("/") + "/"):
                    yield context.finding(
                        "files.orphans_inside_target",
                        f"{server.name}: orphans_path {data.orphans_path} is inside the copy at {target}",
                        path=(*path, "orphans_path"),
                        server=server.name,
                        target=target,
                    )
                    break
