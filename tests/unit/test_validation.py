"""The validation rule catalog: every rule fires on the playbook it is about, and only there.

One clean three-hypervisor playbook, with the inventories and source facts that match it, gives no finding
at all; each rule's case then breaks exactly one thing and checks that the rule fires at the right field.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.playbook.models import Playbook
from orchestrator.report.findings import catalog_table, findings_summary, findings_table
from orchestrator.report.model import FindingView
from orchestrator.validation import RULES, Finding, Severity, has_critical, validate
from providers.base import (
    DatastoreInfo,
    Inventory,
    Limits,
    SourceDisk,
    SourceFacts,
    SourceNic,
    WindowsFacts,
    WindowsVolume,
)

GiB = 1024**3

Inventories = dict[str, Inventory]
Facts = dict[str, SourceFacts]
Path_ = tuple[str | int, ...]


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VC_PASSWORD", "HV_PASSWORD", "TSIG_SECRET", "APP_PASSWORD"):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")


def clean_playbook() -> dict[str, Any]:
    return {
        "apiVersion": "hvmigrate/v1",
        "kind": "MigrationPlaybook",
        "name": "wave-1",
        "providers": {
            "lab-kvm": {"type": "kvm", "uri": "qemu:///system", "storage_pool": "default"},
            "vcenter": {
                "type": "esx",
                "host": "vc.corp.test",
                "user": "administrator@vsphere.local",
                "password": "${env:VC_PASSWORD}",
                "datastore": "ds1",
                "thumbprint": "AB:CD:EF",
                "appliance_login": {"key": "/root/.ssh/hvm-appliance", "host_key": "SHA256:" + "A" * 43},
            },
            "hv01": {
                "type": "hyperv",
                "host": "hv01.corp.test",
                "user": "CORP\\admin",
                "password": "${env:HV_PASSWORD}",
            },
        },
        "dns": {
            "corp": {
                "type": "rfc2136",
                "server": "10.0.0.2",
                "zone": "corp.test",
                "tsig": {"name": "migkey", "secret": "${env:TSIG_SECRET}"},
            },
        },
        "servers": [
            {
                "name": "db01",
                "source": {
                    "type": "ssh",
                    "host": "10.0.0.6",
                    "user": "root",
                    "key": "/root/.ssh/id_ed25519",
                    "quiesce": "fsfreeze",
                },
                "target": {
                    "provider": "lab-kvm",
                    "disks": [{"source": "/dev/vda", "format": "qcow2"}],
                    "nics": [
                        {
                            "source_mac": "52:54:00:00:00:06",
                            "network": "prod",
                            "ip": "10.1.0.6/24",
                            "gateway": "10.1.0.1",
                        }
                    ],
                },
                "dns_records": [{"provider": "corp", "name": "db01", "value": "nic0", "ttl": 60}],
            },
            {
                "name": "web01",
                "depends_on": ["db01"],
                "source": {"type": "ssh", "host": "10.0.0.7", "quiesce_command": "sync"},
                "target": {
                    "provider": "vcenter",
                    "disks": [{"source": "/dev/sda", "datastore": "ds1"}, {"source": "/dev/sdb"}],
                    "nics": [{"network": "VM Network"}],
                },
                "dns_records": [{"provider": "corp", "name": "web01", "value": "nic0", "ttl": 300}],
            },
            {
                "name": "app01",
                "source": {
                    "type": "winrm",
                    "host": "10.0.0.8",
                    "user": "CORP\\admin",
                    "password": "${env:APP_PASSWORD}",
                },
                "target": {
                    "provider": "hv01",
                    "generation": 2,
                    "disks": [{"source": "PhysicalDrive0", "controller": "scsi"}],
                    "nics": [{"network": "External", "type": "synthetic"}],
                },
            },
        ],
    }


def clean_inventories() -> Inventories:
    return {
        "lab-kvm": Inventory(
            provider="lab-kvm",
            type="kvm",
            hosts=("kvm1",),
            datastores={"default": DatastoreInfo("default", 500 * GiB, 400 * GiB)},
            networks=("prod", "test"),
            vms=("other",),
            limits=Limits(max_nics=16, disk_formats=("raw", "qcow2"), native_format="qcow2"),
            default_datastore="default",
        ),
        "vcenter": Inventory(
            provider="vcenter",
            type="esx",
            hosts=("esx1",),
            datastores={
                "ds1": DatastoreInfo("ds1", 1024 * GiB, 800 * GiB),
                "ds2": DatastoreInfo("ds2", 100 * GiB, 90 * GiB),
            },
            networks=("VM Network", "isolated"),
            vms=("hvm-appliance-esx1-0",),
            limits=Limits(max_nics=10, disk_formats=("vmdk",), native_format="vmdk", max_memory=256 * GiB),
        ),
        "hv01": Inventory(
            provider="hv01",
            type="hyperv",
            hosts=("hv01",),
            datastores={"D:": DatastoreInfo("D:", 1024 * GiB, 500 * GiB)},
            networks=("External", "Internal"),
            vms=(),
            limits=Limits(max_nics=12, disk_formats=("vhdx", "vhd"), native_format="vhdx"),
            default_datastore="D:",
        ),
    }


def clean_facts() -> Facts:
    return {
        "db01": SourceFacts(
            hostname="db01",
            os="linux",
            os_detail="Debian 12",
            firmware="bios",
            disks=(SourceDisk("/dev/vda", 20 * GiB, 6 * GiB, "mbr"),),
            nics=(SourceNic("eth0", "52:54:00:00:00:06", ("10.0.0.6/24",)),),
        ),
        "web01": SourceFacts(
            hostname="web01",
            os="linux",
            os_detail="Debian 12",
            firmware="bios",
            disks=(SourceDisk("/dev/sda", 40 * GiB), SourceDisk("/dev/sdb", 100 * GiB)),
            nics=(SourceNic("eth0", "00:50:56:00:00:07", ("10.0.0.7/24", "fe80::1/64")),),
        ),
        "app01": SourceFacts(
            hostname="APP01",
            os="windows",
            os_detail="Windows Server 2019",
            firmware="uefi",
            disks=(SourceDisk("PhysicalDrive0", 60 * GiB, 30 * GiB, "gpt"),),
            nics=(SourceNic("Ethernet0", "00:15:5d:00:00:08", ("10.0.0.8/24",)),),
        ),
    }


class DocumentLocate:
    """Stands for the loader's ``location``: paths that exist in the document get a line number in
    document order; a missing path resolves to its nearest existing ancestor, as the loader does."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.lines: dict[Path_, int] = {}
        self._number(document, ())
        self.calls: list[Path_] = []

    def _number(self, value: Any, path: Path_) -> None:
        self.lines[path] = len(self.lines) + 1
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, item in items:
            self._number(item, (*path, key))

    def __call__(self, *path: str | int) -> str | None:
        self.calls.append(path)
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return f"playbook.yaml:{self.lines[path[:end]]}:1"
        return None

    def path_of(self, location: str | None) -> Path_ | None:
        if location is None:
            return None
        line = int(location.split(":")[1])
        return next(p for p, n in self.lines.items() if n == line)


def run(
    document: dict[str, Any],
    inventories: Inventories | None = None,
    facts: Facts | None = None,
) -> tuple[list[Finding], DocumentLocate]:
    locate = DocumentLocate(document)
    playbook = Playbook.model_validate(copy.deepcopy(document))
    return validate(playbook, inventories=inventories, facts=facts, locate=locate), locate


def of(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


# ---------------------------------------------------------------- the clean playbook


def test_clean_playbook_with_everything_known_has_no_finding() -> None:
    findings, _ = run(clean_playbook(), clean_inventories(), clean_facts())
    assert findings == []
    assert findings_summary(findings) == "no findings"


def test_clean_playbook_offline_says_only_what_it_did_not_check() -> None:
    findings, _ = run(clean_playbook())
    assert [f.rule_id for f in findings] == ["facts.not_discovered", "inventory.not_inspected"]
    assert not has_critical(findings)
    (providers,) = of(findings, "inventory.not_inspected")
    assert "lab-kvm, vcenter, hv01 were not inspected" in providers.message
    assert "datastore.free_space" in providers.message
    (servers,) = of(findings, "facts.not_discovered")
    assert "db01, web01, app01 were not discovered" in servers.message
    assert "disk.smaller_than_source" in servers.message


def test_partial_inventories_name_only_the_missing_provider() -> None:
    inventories = clean_inventories()
    del inventories["vcenter"]
    findings, _ = run(clean_playbook(), inventories, clean_facts())
    (only,) = findings
    assert only.rule_id == "inventory.not_inspected"
    assert only.severity is Severity.INFO
    assert only.message.startswith("provider vcenter was not inspected")


# ---------------------------------------------------------------- one case per rule

Mutation = Callable[[dict[str, Any], Inventories, Facts], None]
CASES: dict[str, tuple[Mutation, Path_ | None]] = {}


def case(rule_id: str, expected_path: Path_ | None) -> Callable[[Mutation], Mutation]:
    def register(mutate: Mutation) -> Mutation:
        CASES[rule_id] = (mutate, expected_path)
        return mutate

    return register


def server(doc: dict[str, Any], index: int) -> dict[str, Any]:
    return doc["servers"][index]


def limits(inv: Inventories, provider: str, **changes: Any) -> None:
    inv[provider] = dataclasses.replace(
        inv[provider], limits=dataclasses.replace(inv[provider].limits, **changes)
    )


def facts_of(facts: Facts, name: str, **changes: Any) -> None:
    facts[name] = dataclasses.replace(facts[name], **changes)


@case("ref.unknown_provider", ("servers", 0, "target", "provider"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["provider"] = "lab-kvm2"


@case("ref.unknown_source_vm", ("servers", 0, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["source"] = {"type": "vm", "provider": "vcenter", "vm": "ghost"}


@case("ref.unknown_dns_provider", ("servers", 0, "dns_records", 0, "provider"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["dns_records"][0]["provider"] = "corp-ad"


@case("deps.unknown_server", ("servers", 1, "depends_on", 1))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["depends_on"] = ["db01", "db02"]


@case("deps.self", ("servers", 1, "depends_on", 0))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["depends_on"] = ["web01"]


@case("deps.cycle", ("servers", 0, "depends_on", 0))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["depends_on"] = ["app01"]
    server(doc, 2)["depends_on"] = ["web01"]


@case("deps.wave_order", ("servers", 1, "depends_on", 0))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["wave"] = 2
    server(doc, 1)["wave"] = 1


@case("vm.duplicate_name", ("servers", 1, "target", "vm_name"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"].update(provider="lab-kvm", vm_name="db01")


@case("vm.overwrites_source", ("servers", 1, "target"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["source"] = {"type": "vm", "provider": "vcenter", "vm": "web01"}
    inv["vcenter"] = dataclasses.replace(inv["vcenter"], vms=("web01",))


@case("vm.name_exists", ("servers", 0, "target"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    inv["lab-kvm"] = dataclasses.replace(inv["lab-kvm"], vms=("other", "db01"))


@case("disk.unknown_source", ("servers", 0, "target", "disks", 0, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["disks"][0]["source"] = "/dev/vdz"


@case("disk.smaller_than_source", ("servers", 0, "target", "disks", 0, "size"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["disks"][0]["size"] = "10GiB"


@case("disk.unmapped_source", ("servers", 0, "target", "disks"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(facts, "db01", disks=(*facts["db01"].disks, SourceDisk("/dev/vdb", 8 * GiB)))


@case("disk.duplicate_source", ("servers", 1, "target", "disks", 2, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["disks"].append({"source": "/dev/sda"})


@case("disk.boot_conflict", ("servers", 1, "target", "disks", 1, "boot"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    for disk in server(doc, 1)["target"]["disks"]:
        disk["boot"] = True


@case("disk.format_unsupported", ("servers", 0, "target", "disks", 0, "format"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["disks"][0]["format"] = "vhdx"


@case("disk.controller_unsupported", ("servers", 1, "target", "disks", 0, "controller"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["disks"][0]["controller"] = "virtio"


@case("datastore.unknown", ("servers", 1, "target", "disks", 0, "datastore"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["disks"][0]["datastore"] = "ds9"


@case("datastore.inaccessible", ("servers", 1, "target", "disks", 0, "datastore"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    ds1 = inv["vcenter"].datastores["ds1"]
    inv["vcenter"] = dataclasses.replace(
        inv["vcenter"],
        datastores={**inv["vcenter"].datastores, "ds1": dataclasses.replace(ds1, accessible=False)},
    )


@case("datastore.free_space", ("servers", 1, "target", "disks", 0, "datastore"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    inv["vcenter"] = dataclasses.replace(
        inv["vcenter"], datastores={"ds1": DatastoreInfo("ds1", 1024 * GiB, 100 * GiB)}
    )


@case("nic.no_network", ("servers", 0, "target", "nics", 0))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    del server(doc, 0)["target"]["nics"][0]["network"]


@case("nic.unknown_network", ("servers", 0, "target", "nics", 0, "network"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["nics"][0]["network"] = "dmz"


@case("nic.unknown_test_network", ("servers", 0, "target", "nics", 0, "test_network"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["nics"][0]["test_network"] = "lab"


@case("nic.type_unsupported", ("servers", 1, "target", "nics", 0, "type"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["nics"][0]["type"] = "virtio"


@case("nic.too_many", ("servers", 1, "target", "nics", 10))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["nics"] = [{"network": "VM Network"} for _ in range(11)]


@case("nic.unknown_source_mac", ("servers", 0, "target", "nics", 0, "source_mac"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["nics"][0]["source_mac"] = "52:54:00:00:00:99"


@case("nic.unmapped_source", ("servers", 1, "target", "nics"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(
        facts,
        "web01",
        nics=(*facts["web01"].nics, SourceNic("eth1", "00:50:56:00:01:07", ("192.168.5.7/24",))),
    )


@case("dns.ttl_high", ("servers", 0, "dns_records", 0, "ttl"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["dns_records"][0]["ttl"] = 3600


@case("dns.nic_missing", ("servers", 0, "dns_records", 0, "value"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["dns_records"][0]["value"] = "nic1"


@case("dns.address_unknown", ("servers", 1, "dns_records", 0, "value"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(facts, "web01", nics=(SourceNic("eth0", "00:50:56:00:00:07", ()),))


@case("dns.bad_value", ("servers", 0, "dns_records", 0, "value"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["dns_records"][0]["value"] = "db01.corp.test"


@case("firmware.unsupported", ("servers", 0, "target"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    limits(inv, "lab-kvm", firmware=("uefi",))


@case("firmware.mismatch", ("servers", 0, "target", "firmware"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["target"]["firmware"] = "uefi"


@case("hyperv.gen1_uefi", ("servers", 2, "target", "generation"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 2)["target"]["generation"] = 1


@case("hyperv.gen2_bios", ("servers", 2, "target", "generation"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(facts, "app01", firmware="bios")


@case("hyperv.gen1_boot_not_ide", ("servers", 2, "target", "disks", 0, "controller"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(facts, "app01", firmware="bios")
    del server(doc, 2)["target"]["generation"]  # derived from the BIOS source: 1


@case("hyperv.gen2_ide", ("servers", 2, "target", "disks", 0, "controller"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 2)["target"]["disks"][0]["controller"] = "ide"


@case("hyperv.gen1_ide_limit", ("servers", 2, "target", "disks", 4, "controller"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(
        facts,
        "app01",
        firmware="bios",
        disks=tuple(SourceDisk(f"PhysicalDrive{i}", 10 * GiB) for i in range(5)),
    )
    server(doc, 2)["target"].update(
        generation=1, disks=[{"source": f"PhysicalDrive{i}", "controller": "ide"} for i in range(5)]
    )


@case("hyperv.legacy_nic_gen2", ("servers", 2, "target", "nics", 0, "type"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 2)["target"]["nics"][0]["type"] = "legacy"


@case("security.secret_in_clear", ("providers", "vcenter", "password"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    doc["providers"]["vcenter"]["password"] = "hunter2-in-clear"


@case("security.insecure_tls", ("providers", "hv01", "insecure"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    doc["providers"]["hv01"]["insecure"] = True


@case("security.insecure_host_key", ("servers", 0, "source", "insecure"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 0)["source"]["insecure"] = True


def notifications(doc: dict[str, Any], **channels: Any) -> None:
    doc["notifications"] = channels


MAIL = {"server": "smtp.corp.test", "sender": "hvmigrate@corp.test", "to": ["ops@corp.test"]}


@case("notify.webhook_plain_http", ("notifications", "webhook", "url"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    notifications(doc, webhook={"url": "http://chat.corp.test/hooks/T0K3N-value"})


@case("notify.smtp_no_tls", ("notifications", "email", "starttls"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    notifications(doc, email={**MAIL, "starttls": False})


@case("cutover.auto_without_shutdown", ("defaults", "cutover", "shutdown_source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    doc["defaults"] = {"cutover": {"mode": "auto", "shutdown_source": False}}


@case("source.no_quiesce", ("servers", 0, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    del server(doc, 0)["source"]["quiesce"]  # the default, none: reported at the source


@case("appliance.second_appliance", ("servers", 3, "target"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    limits(inv, "lab-kvm", max_disks_per_appliance=1)
    doc["servers"].append(
        {
            "name": "db02",
            "source": {"type": "ssh", "host": "10.0.0.9"},
            "target": {"provider": "lab-kvm", "disks": [{"source": "/dev/vda"}]},
        }
    )
    facts["db02"] = dataclasses.replace(facts["db01"], hostname="db02", nics=())


@case("appliance.mode_unsupported", ("servers", 0, "target"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    limits(inv, "lab-kvm", appliance_modes=("host",))  # server 0 leaves appliance at its default, shared


@case("appliance.server_disk_limit", ("servers", 0, "target", "disks"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    limits(inv, "lab-kvm", max_disks_per_appliance=1)
    facts_of(facts, "db01", disks=(*facts["db01"].disks, SourceDisk("/dev/vdb", 8 * GiB)))
    server(doc, 0)["target"]["disks"].append({"source": "/dev/vdb"})


@case("bandwidth.windows_overlap", ("defaults", "mirror", "bandwidth", "schedule", 1))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    doc["defaults"] = {
        "mirror": {
            "bandwidth": {
                "schedule": [
                    {"days": "mon-fri", "hours": "08:00-18:00", "limit": "20MiB/s"},
                    {"days": "mon-sun", "hours": "17:00-19:00", "limit": "50MiB/s"},
                ]
            }
        }
    }


@case("memory.exceeds_host", ("servers", 1, "target", "memory"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["memory"] = "512GiB"


@case("esx.datastore_space", ("servers", 1, "target", "disks", 0, "datastore"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    # 154 GiB of disks (+10%) fit in 156 GiB; the 4 GiB swap file and the config files do not
    inv["vcenter"] = dataclasses.replace(
        inv["vcenter"], datastores={"ds1": DatastoreInfo("ds1", 1024 * GiB, 156 * GiB)}
    )


@case("esx.host_unavailable", ("servers", 1, "target", "host"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["host"] = "esx1"
    inv["vcenter"] = dataclasses.replace(inv["vcenter"], unavailable_hosts={"esx1": "in maintenance mode"})


@case("esx.appliance_login_missing", ("servers", 1, "target", "appliance"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    del doc["providers"]["vcenter"]["appliance_login"]
    server(doc, 1)["target"]["appliance"] = "shared"


@case("hyperv.appliance_login_missing", ("servers", 2, "target", "appliance"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    doc["providers"]["hv01"]["appliance"] = "hvm-appliance"
    server(doc, 2)["target"]["appliance"] = "dedicated"


@case("appliance.cold_host_live_source", ("servers", 1, "target", "appliance"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    server(doc, 1)["target"]["appliance"] = "host"  # web01's source is a running server (ssh)
    limits(inv, "vcenter", cold_host=True)


def esx_vm_source(doc: dict[str, Any], facts: Facts, **vm: Any) -> None:
    """app01 becomes a VM on vcenter whose discovery reports ``vm`` (ESX source rules)."""
    from providers.base import SourceVm, SourceVmDisk

    server(doc, 2)["source"] = {"type": "vm", "provider": "vcenter", "vm": "app01-vm"}
    disk = SourceVmDisk("PhysicalDrive0", "[ds1] app01/app01.vmdk", "flat", "thin", "persistent", True)
    disk = dataclasses.replace(disk, **vm.pop("disk", {}))
    base = SourceVm("vcenter", "app01-vm", "windows2019srv_64Guest", "poweredOn", "guestToolsRunning", True)
    facts_of(facts, "app01", vm=dataclasses.replace(base, disks=(disk,), **vm))


@case("esx.cbt.disabled", ("servers", 2, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    esx_vm_source(doc, facts, change_tracking=False, disk={"change_tracking": False})


@case("esx.source.snapshot_present", ("servers", 2, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    esx_vm_source(doc, facts, snapshots=("before-patch",))


@case("esx.source.independent_disk", ("servers", 2, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    esx_vm_source(doc, facts, disk={"mode": "independent_persistent"})


@case("esx.source.rdm_disk", ("servers", 2, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    esx_vm_source(doc, facts, disk={"backing": "rdm_virtual", "provisioning": "none"})


@case("esx.guest_id_unsupported", ("servers", 2, "source", "vm"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    pytest.importorskip("pyVmomi")
    esx_vm_source(doc, facts, guest_id="windows2099Guest")


@case("inventory.not_inspected", None)
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    del inv["hv01"]


@case("facts.not_discovered", None)
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    del facts["app01"]


def data_server(doc: dict[str, Any], **data: Any) -> None:
    """A data-only server copying /srv/share on 127.0.0.1 to this machine (the same host)."""
    rules = [{"path": "/srv/share"}]
    doc["servers"].append(
        {"name": "files01", "source": {"type": "ssh", "host": "127.0.0.1"}, "data": {"rules": rules, **data}}
    )


def windows_facts(**changes: Any) -> WindowsFacts:
    volume = WindowsVolume("C", "NTFS", 60 * GiB, 30 * GiB, "PhysicalDrive0")
    return dataclasses.replace(
        WindowsFacts("Windows Server 2019 Standard", "10.0.17763", None, (volume,)), **changes
    )


@case("windows.bitlocker_on", ("servers", 2, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    volume = WindowsVolume("C", "NTFS", 60 * GiB, 30 * GiB, "PhysicalDrive0", bitlocker="on")
    facts_of(facts, "app01", windows=windows_facts(volumes=(volume,)))


@case("windows.bitlocker_changing", ("servers", 2, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    volume = WindowsVolume("C", "NTFS", 60 * GiB, 30 * GiB, "PhysicalDrive0", bitlocker="in_progress")
    facts_of(facts, "app01", windows=windows_facts(volumes=(volume,)))


@case("windows.dynamic_disk", ("servers", 2, "source"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    facts_of(facts, "app01", windows=windows_facts(dynamic_disks=("PhysicalDrive0",)))


def test_a_clean_windows_source_and_a_suspended_bitlocker_volume_give_no_finding() -> None:
    facts = clean_facts()
    suspended = WindowsVolume("C", "NTFS", 60 * GiB, 30 * GiB, "PhysicalDrive0", bitlocker="suspended")
    facts_of(facts, "app01", windows=windows_facts(volumes=(suspended,)))
    findings, _ = run(clean_playbook(), clean_inventories(), facts)
    assert [f.rule_id for f in findings if f.rule_id.startswith("windows.")] == []


@case("files.target_inside_source", ("servers", 3, "data", "mapping"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    data_server(doc, mapping="all_to_one", target_path="/srv/share/copy")


@case("files.orphans_inside_target", ("servers", 3, "data", "orphans_path"))
def _(doc: dict[str, Any], inv: Inventories, facts: Facts) -> None:
    data_server(
        doc,
        mapping="all_to_one",
        target_path="/backup",
        orphans="move",
        orphans_path="/backup/files01/srv/share/old",
    )


def test_a_data_server_elsewhere_is_clean() -> None:
    document = clean_playbook()
    data_server(
        document, mapping="all_to_one", target_path="/backup", orphans="move", orphans_path="/orphans"
    )
    findings, _ = run(document)
    assert [f.rule_id for f in findings if f.rule_id.startswith("files.")] == []


def test_every_rule_has_a_case() -> None:
    assert sorted(CASES) == sorted(RULES)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_at_its_field(rule_id: str) -> None:
    mutate, expected_path = CASES[rule_id]
    document, inventories, facts = clean_playbook(), clean_inventories(), clean_facts()
    mutate(document, inventories, facts)
    findings, locate = run(document, inventories, facts)

    fired = of(findings, rule_id)
    assert fired, f"{rule_id} did not fire; got {[f.rule_id for f in findings]}"
    assert [locate.path_of(f.location) for f in fired].count(expected_path) >= 1, [
        (f.location, locate.path_of(f.location), f.message) for f in fired
    ]
    for finding in fired:
        assert finding.severity is RULES[rule_id].severity
        assert finding.server is None or finding.server in finding.message
        assert not re.search(r"\{[a-z_]+\}", finding.fix), finding.fix  # every template field was filled
        assert finding.message and "\n" not in finding.message
        assert finding.to_json()["rule_id"] == rule_id


# ---------------------------------------------------------------- messages carry the numbers


def test_cycle_names_its_path_and_self_dependency_is_its_own_rule() -> None:
    document = clean_playbook()
    server(document, 0)["depends_on"] = ["app01"]
    server(document, 2)["depends_on"] = ["web01", "app01"]
    findings, _ = run(document)
    (cycle,) = of(findings, "deps.cycle")
    assert "db01 -> app01 -> web01 -> db01" in cycle.message
    assert cycle.fix == "remove one of the dependencies in db01 -> app01 -> web01 -> db01"
    assert len(of(findings, "deps.self")) == 1


def test_two_independent_cycles_are_two_findings() -> None:
    document = clean_playbook()
    server(document, 1)["depends_on"] = []
    server(document, 0)["depends_on"] = ["db01x"]
    document["servers"] += [
        {
            "name": "a",
            "depends_on": ["b"],
            "source": {"type": "ssh", "host": "a"},
            "target": {"provider": "lab-kvm"},
        },
        {
            "name": "b",
            "depends_on": ["a"],
            "source": {"type": "ssh", "host": "b"},
            "target": {"provider": "lab-kvm"},
        },
        {
            "name": "c",
            "depends_on": ["d"],
            "source": {"type": "ssh", "host": "c"},
            "target": {"provider": "lab-kvm"},
        },
        {
            "name": "d",
            "depends_on": ["c"],
            "source": {"type": "ssh", "host": "d"},
            "target": {"provider": "lab-kvm"},
        },
    ]
    findings, _ = run(document)
    assert [f.message.split(": ")[1].split(" (")[0] for f in of(findings, "deps.cycle")] == [
        "a -> b -> a",
        "c -> d -> c",
    ]
    assert len(of(findings, "deps.unknown_server")) == 1


def test_free_space_counts_every_server_on_the_datastore_with_headroom() -> None:
    document, inventories, facts = clean_playbook(), clean_inventories(), clean_facts()
    # db01 moves to vcenter too; ds1 then holds 20 + 40 + 100 = 160 GiB, 176 GiB with 10% headroom.
    server(document, 0)["target"] = {
        "provider": "vcenter",
        "vm_name": "db01",
        "datastore": "ds1",
        "nics": [{"network": "VM Network", "ip": "10.1.0.6/24"}],
    }
    for free, expect in ((176 * GiB, False), (175 * GiB, True)):
        inventories["vcenter"] = dataclasses.replace(
            inventories["vcenter"], datastores={"ds1": DatastoreInfo("ds1", 1024 * GiB, free)}
        )
        findings, _ = run(document, inventories, facts)
        found = of(findings, "datastore.free_space")
        assert bool(found) is expect, free
    (finding,) = found
    assert finding.server is None  # two servers share the shortage
    assert "db01, web01 need 176.0 GiB" in finding.message
    assert "175.0 GiB free" in finding.message
    assert "160.0 GiB for 3 disks + 10% headroom" in finding.message
    assert finding.fix == "free 1.0 GiB on ds1, or move some disks to another datastore"


def test_free_space_without_facts_counts_explicit_sizes_as_a_lower_bound() -> None:
    document, inventories = clean_playbook(), clean_inventories()
    server(document, 1)["target"]["disks"][0]["size"] = "95GiB"
    inventories["vcenter"] = dataclasses.replace(
        inventories["vcenter"], datastores={"ds1": DatastoreInfo("ds1", 1024 * GiB, 90 * GiB)}
    )
    findings, _ = run(document, inventories)
    (finding,) = of(findings, "datastore.free_space")
    assert "needs at least 104.5 GiB" in finding.message
    assert finding.server == "web01"


def test_disk_size_message_names_both_sizes() -> None:
    document = clean_playbook()
    server(document, 0)["target"]["disks"][0]["size"] = "19GiB"
    findings, _ = run(document, clean_inventories(), clean_facts())
    (finding,) = of(findings, "disk.smaller_than_source")
    assert "db01" in finding.message and "19.0 GiB" in finding.message and "20.0 GiB" in finding.message
    assert finding.fix == "set size to at least 20.0 GiB or to auto"


def test_an_explicit_size_at_least_the_source_is_fine() -> None:
    document = clean_playbook()
    server(document, 0)["target"]["disks"][0]["size"] = "20GiB"
    findings, _ = run(document, clean_inventories(), clean_facts())
    assert findings == []


def test_nic_limits_per_hypervisor() -> None:
    def count(target: str, nics: list[dict[str, Any]], **target_fields: Any) -> list[Finding]:
        document = clean_playbook()
        index = {"vcenter": 1, "hv01": 2}[target]
        server(document, index)["target"].update(nics=nics, **target_fields)
        findings, _ = run(document)
        return of(findings, "nic.too_many")

    esx = [{"network": "VM Network"}]
    assert count("vcenter", esx * 10) == []
    (eleven,) = count("vcenter", esx * 11)
    assert "11 NICs" in eleven.message and "ESX allows 10" in eleven.message

    synthetic, legacy = {"network": "External"}, {"network": "External", "type": "legacy"}
    assert count("hv01", [synthetic] * 8) == []
    (nine,) = count("hv01", [synthetic] * 9)
    assert "9 synthetic NICs" in nine.message and "allows 8 synthetic" in nine.message
    assert count("hv01", [synthetic] * 8 + [legacy] * 4, generation=1) == []
    (five,) = count("hv01", [legacy] * 5, generation=1)
    assert "5 legacy NICs" in five.message


def test_nic_limit_of_kvm_needs_its_inventory_and_sim_uses_its_config() -> None:
    document = clean_playbook()
    server(document, 0)["target"]["nics"] = [{"network": "prod"}] * 3
    findings, _ = run(document)
    assert of(findings, "nic.too_many") == []
    inventories = clean_inventories()
    limits(inventories, "lab-kvm", max_nics=2)
    findings, _ = run(document, inventories)
    assert "allows 2" in of(findings, "nic.too_many")[0].message

    document["providers"]["local"] = {"type": "sim", "max_nics": 2}
    server(document, 0)["target"]["provider"] = "local"
    findings, _ = run(document)
    assert "allows 2" in of(findings, "nic.too_many")[0].message


def test_dns_keep_address_needs_a_discovered_source_address() -> None:
    document = clean_playbook()
    server(document, 1)["dns_records"].append({"provider": "corp", "name": "web01-v6", "type": "AAAA"})
    findings, _ = run(document, clean_inventories(), clean_facts())
    assert findings == []  # eth0 has 10.0.0.7/24 and fe80::1/64

    findings, _ = run(document, clean_inventories(), None)
    assert of(findings, "dns.address_unknown") == []  # skipped, and said so:
    assert of(findings, "facts.not_discovered")

    server(document, 1)["target"]["nics"][0]["ip"] = "dhcp"
    facts = clean_facts()
    facts_of(facts, "web01", nics=(SourceNic("eth0", "00:50:56:00:00:07", ("fe80::1/64",)),))
    findings, _ = run(document, clean_inventories(), facts)
    (finding,) = of(findings, "dns.address_unknown")
    assert "nic0 has ip: dhcp" in finding.message and "no IPv4 address" in finding.message


def test_dns_record_type_must_fit_the_nic_address() -> None:
    document = clean_playbook()
    server(document, 0)["dns_records"][0]["type"] = "AAAA"
    findings, _ = run(document)
    (finding,) = of(findings, "dns.bad_value")
    assert "IPv4 address 10.1.0.6" in finding.message
    assert finding.fix == "match the value to the record type: use type A for an IPv4 address"


def test_hyperv_generation_is_derived_from_the_source_boot_mode() -> None:
    document, facts = clean_playbook(), clean_facts()
    del server(document, 2)["target"]["generation"]
    server(document, 2)["target"]["disks"][0]["controller"] = "ide"
    findings, _ = run(document, clean_inventories(), facts)  # UEFI source: generation 2, no IDE
    assert [f.rule_id for f in findings] == ["hyperv.gen2_ide"]
    facts_of(facts, "app01", firmware="bios")  # BIOS source: generation 1, and IDE is right for boot
    findings, _ = run(document, clean_inventories(), facts)
    assert findings == []


def test_bandwidth_windows_that_only_touch_do_not_overlap_but_wrapping_ones_do() -> None:
    def overlaps(schedule: list[dict[str, str]]) -> list[Finding]:
        document = clean_playbook()
        document["defaults"] = {"mirror": {"bandwidth": {"schedule": schedule}}}
        findings, _ = run(document)
        return of(findings, "bandwidth.windows_overlap")

    assert (
        overlaps([{"days": "mon-sun", "hours": "08:00-18:00"}, {"days": "mon-sun", "hours": "18:00-08:00"}])
        == []
    )
    assert (
        overlaps([{"days": "sat", "hours": "00:00-24:00"}, {"days": "mon-fri", "hours": "00:00-24:00"}]) == []
    )
    (wrap,) = overlaps([{"days": "fri", "hours": "22:00-06:00"}, {"days": "sat,sun", "hours": "00:00-24:00"}])
    assert "from sat 00:00" in wrap.message and "schedule[0] wins" in wrap.message


def test_server_mirror_override_schedule_is_checked_with_the_server_named() -> None:
    document = clean_playbook()
    server(document, 1)["mirror"] = {
        "bandwidth": {
            "schedule": [{"days": "mon", "hours": "09:00-10:00"}, {"days": "mon", "hours": "09:30-11:00"}]
        }
    }
    findings, locate = run(document)
    (finding,) = of(findings, "bandwidth.windows_overlap")
    assert finding.server == "web01"
    assert locate.path_of(finding.location) == ("servers", 1, "mirror", "bandwidth", "schedule", 1)


def test_secret_findings_name_the_field_never_the_value() -> None:
    document = clean_playbook()
    server(document, 2)["source"]["password"] = "S3cret-Value!"
    findings, _ = run(document)
    (finding,) = of(findings, "security.secret_in_clear")
    assert finding.message.startswith("app01: servers[2].source.password is written in clear")
    assert finding.server == "app01"
    assert "S3cret-Value!" not in repr(finding.to_json())


def test_server_cutover_override_is_located_on_the_server() -> None:
    document = clean_playbook()
    server(document, 1)["cutover"] = {"mode": "auto", "shutdown_source": False}
    findings, locate = run(document)
    (finding,) = of(findings, "cutover.auto_without_shutdown")
    assert finding.server == "web01"
    assert locate.path_of(finding.location) == ("servers", 1, "cutover", "shutdown_source")


def test_no_quiesce_says_what_cutover_will_do_and_allow_silences_it() -> None:
    document = clean_playbook()
    del server(document, 0)["source"]["quiesce"]
    del server(document, 1)["source"]["quiesce_command"]
    server(document, 1)["source"]["thaw_command"] = "true"  # a thaw alone pauses nothing
    server(document, 1)["cutover"] = {"unquiesced_writes": "refuse"}
    findings, _ = run(document)
    warned, refused = of(findings, "source.no_quiesce")
    assert (warned.server, refused.server) == ("db01", "web01")
    assert warned.severity is Severity.WARNING
    assert "no quiesce is configured for 10.0.0.6" in warned.message and "cutover will warn" in warned.message
    assert "cutover will refuse" in refused.message
    assert "cutover.unquiesced_writes: allow" in warned.fix

    document["defaults"] = {"cutover": {"unquiesced_writes": "allow"}}  # the server's own refuse still counts
    findings, _ = run(document)
    assert [f.server for f in of(findings, "source.no_quiesce")] == ["web01"]
    server(document, 1)["source"]["quiesce"] = "services"
    findings, _ = run(document)
    assert of(findings, "source.no_quiesce") == []


# ---------------------------------------------------------------- order, locations, JSON


def test_findings_are_sorted_by_severity_then_document_position_and_deterministic() -> None:
    document = clean_playbook()
    server(document, 2)["dns_records"] = [{"provider": "corp", "name": "app01", "value": "nic0", "ttl": 900}]
    server(document, 0)["dns_records"][0]["ttl"] = 900
    server(document, 2)["target"]["provider"] = "hv02"
    server(document, 0)["target"]["provider"] = "kvm2"
    findings, _ = run(document)
    again, _ = run(document)
    assert findings == again
    assert [(f.rule_id, f.server) for f in findings] == [
        ("ref.unknown_provider", "db01"),
        ("ref.unknown_provider", "app01"),
        ("dns.ttl_high", "db01"),
        ("dns.ttl_high", "app01"),
        ("facts.not_discovered", None),
        ("inventory.not_inspected", None),
    ]
    lines = [
        int(f.location.split(":")[1]) for f in findings if f.severity is Severity.CRITICAL and f.location
    ]
    assert lines == sorted(lines)


def test_without_locate_findings_still_carry_their_field() -> None:
    document = clean_playbook()
    server(document, 0)["target"]["nics"][0]["network"] = "dmz"
    findings = validate(
        Playbook.model_validate(document), inventories=clean_inventories(), facts=clean_facts()
    )
    (finding,) = findings
    assert finding.location is None
    assert finding.field == "servers[0].target.nics[0].network"
    assert finding.to_json() == {
        "rule_id": "nic.unknown_network",
        "severity": "critical",
        "message": "db01: target.nics[0] network 'dmz' is not on lab-kvm",
        "fix": "use one of lab-kvm's networks: prod, test",
        "server": "db01",
        "location": None,
        "field": "servers[0].target.nics[0].network",
    }


def test_a_locate_that_raises_for_an_unknown_path_falls_back_to_a_parent() -> None:
    def locate(*path: str | int) -> str | None:
        if path != ("servers", 0, "target"):
            raise KeyError(path)
        return "pb.yaml:7:5"

    document = clean_playbook()
    server(document, 0)["target"]["nics"][0]["network"] = "dmz"
    findings = validate(
        Playbook.model_validate(document), inventories=clean_inventories(), facts=clean_facts(), locate=locate
    )
    assert [f.location for f in findings] == ["pb.yaml:7:5"]


LOADED_PLAYBOOK = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: wave-1
providers:
  lab-kvm: {type: kvm, storage_pool: default}
servers:
  - name: db01
    source: {type: ssh, host: 10.0.0.6}
    target:
      provider: lab-kvm
      nics:
        - network: prod
        - network: dmz
    dns_records:
      - {provider: corp, name: db01, value: nic1, ttl: 3600}
"""


def test_locations_from_the_real_loader(tmp_path: Path) -> None:
    loader = pytest.importorskip("orchestrator.playbook.loader")
    loaded = loader.load_playbook_text(LOADED_PLAYBOOK, tmp_path / "wave-1.yaml")
    findings = validate(
        loaded.playbook,
        inventories={"lab-kvm": clean_inventories()["lab-kvm"]},
        facts=clean_facts(),
        locate=loaded.location,
    )
    where = {f.rule_id: f.location for f in findings}
    lines = LOADED_PLAYBOOK.splitlines()

    def at(line: int, token: str) -> str:
        return f"{tmp_path / 'wave-1.yaml'}:{line}:{lines[line - 1].index(token) + 1}"

    assert where["nic.unknown_network"] == at(13, "dmz")
    assert where["ref.unknown_dns_provider"] == at(15, "corp")
    assert where["dns.ttl_high"] == at(15, "3600")
    assert where["dns.address_unknown"] == at(15, "nic1")  # the source has one NIC; nic1 maps none
    assert findings[0].severity is Severity.CRITICAL


# ---------------------------------------------------------------- rendering


def _render(renderable: Any) -> str:
    console = Console(record=True, width=240, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_findings_table_colours_severity_and_prints_values_literally() -> None:
    document = clean_playbook()
    server(document, 0)["target"]["nics"][0]["network"] = "[red]dmz"
    server(document, 0)["dns_records"][0]["ttl"] = 900
    findings, _ = run(document, clean_inventories(), clean_facts())
    table = findings_table(findings)
    assert [c.header for c in table.columns] == ["severity", "rule", "server", "message", "fix", "location"]
    severity_cells = list(table.columns[0].cells)
    assert [(str(c), c.style) for c in severity_cells] == [("critical", "bold red"), ("warning", "yellow")]
    text = _render(table)
    assert "'[red]dmz'" in text
    assert "nic.unknown_network" in text and "playbook.yaml:" in text
    assert findings_summary(findings) == "1 critical, 1 warning, 0 info"


def test_findings_table_renders_a_reports_finding_views() -> None:
    views = [
        FindingView("dns.ttl_high", "warning", "db01: ttl 900", "set ttl", "db01", None),
        FindingView("facts.not_discovered", "info", "not discovered", "", None, None),
    ]
    text = _render(findings_table(views))
    assert "dns.ttl_high" in text and "facts.not_discovered" in text
    assert findings_summary(views) == "0 critical, 1 warning, 1 info"
    assert findings_summary([*views, views[0]]) == "0 critical, 2 warnings, 1 info"


def test_catalog_table_lists_every_rule_once() -> None:
    table = catalog_table()
    assert table.row_count == len(RULES)
    assert [str(c) for c in table.columns[0].cells] == list(RULES)
    text = _render(table)
    assert "${env:NAME}" in text and "${{" not in text
    fixes = {rule: str(cell) for rule, cell in zip(RULES, table.columns[4].cells, strict=True)}
    assert fixes["dns.nic_missing"] == "use <choices>, or write the address itself as the value"
    references = {rule: str(cell) for rule, cell in zip(RULES, table.columns[5].cells, strict=True)}
    assert "Full server to ESX / Hyper-V requirements: Network adapters" in references["nic.too_many"]


def test_catalog_entries_are_well_formed() -> None:
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id
        # family.rule, or family.topic.rule where the issue named it so (esx.cbt.disabled)
        assert re.fullmatch(r"[a-z0-9]+(\.[a-z0-9_]+){1,2}", rule_id), rule_id
        assert rule.title and rule.fix
        assert set(rule.needs) <= {"inventory", "facts"}


# ---------------------------------------------------------------- notification transport


@pytest.mark.parametrize(
    "url",
    ["https://chat.corp.test/hooks/x", "http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x"],
)
def test_webhook_over_https_or_to_this_machine_is_no_finding(url: str) -> None:
    document = clean_playbook()
    notifications(document, webhook={"url": url})
    findings, _ = run(document)
    assert not of(findings, "notify.webhook_plain_http")


def test_plain_http_webhook_finding_names_the_host_never_the_token() -> None:
    document = clean_playbook()
    notifications(
        document, webhook={"url": "http://chat.corp.test/hooks/T0K3N-value", "headers": {"X-K": "v1"}}
    )
    findings, _ = run(document)
    (finding,) = of(findings, "notify.webhook_plain_http")
    assert "chat.corp.test" in finding.message and "1 header value(s)" in finding.message
    assert "T0K3N" not in finding.message + finding.fix


def test_smtp_password_over_unverified_tls_is_found_and_a_local_relay_without_tls_is_not() -> None:
    document = clean_playbook()
    notifications(document, email={**MAIL, "user": "ops", "password": "pw-value-123", "insecure": True})
    findings, locate = run(document)
    (finding,) = of(findings, "notify.smtp_no_tls")
    assert locate.path_of(finding.location) == ("notifications", "email", "insecure")
    assert "pw-value-123" not in finding.message
    local = clean_playbook()
    notifications(local, email={**MAIL, "server": "127.0.0.1", "port": 25, "starttls": False})
    assert not of(run(local)[0], "notify.smtp_no_tls")
    verified = clean_playbook()
    notifications(verified, email={**MAIL, "user": "ops", "password": "pw-value-123"})
    assert not of(run(verified)[0], "notify.smtp_no_tls")
