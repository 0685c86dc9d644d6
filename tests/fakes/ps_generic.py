"""The Microsoft.PowerShell.Utility cmdlets every stand-in machine needs (test stand-in only).

Every stand-in machine (a Hyper-V host, a DNS server, a source server) gets them from here:
Select-Object takes -Property only and fails on a property the object lacks (as StrictMode does when a
script reads one), ConvertTo-Json prints enums as numbers and cuts objects past -Depth as 5.1 does.
"""

from __future__ import annotations

import json
from typing import Any

from .hyperv_host import json_enums
from .powershell import Cmdlet, Param, PSError, PSObject, to_json


def generic_cmdlets() -> dict[str, Cmdlet]:
    def select_object(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
        out = []
        for item in piped:
            if not isinstance(item, PSObject):
                raise PSError("Select-Object: the stand-in selects properties of objects only.")
            props = {name: item.get_prop(name) for name in bound["Property"]}
            out.append(PSObject("Selected." + item.type_name, props))
        return out

    def convert_to_json(bound: dict[str, Any], piped: list[Any]) -> list[Any]:
        if not piped:
            return []
        value = piped[0] if len(piped) == 1 else piped
        text = json.dumps(to_json(value, bound.get("Depth", 2), enums=json_enums), separators=(",", ":"))
        return [text if bound.get("Compress") else json.dumps(json.loads(text), indent=4)]

    cmdlets = [
        Cmdlet("Select-Object", {"Property": Param("string[]")}, select_object, ("Property",), "any"),
        Cmdlet(
            "ConvertTo-Json",
            {"Depth": Param("int32", minimum=0, maximum=100), "Compress": Param("switch")},
            convert_to_json,
            pipeline="any",
        ),
        Cmdlet("Out-Null", {}, lambda bound, piped: [], pipeline="any"),
    ]
    return {c.name.lower(): c for c in cmdlets}


def common_error_action() -> Param:
    """-ErrorAction, a common parameter every cmdlet takes; registered only where hvmigrate uses it."""
    return Param(
        "enum",
        ("SilentlyContinue", "Stop", "Continue", "Inquire", "Ignore", "Suspend", "Break"),
        "System.Management.Automation.ActionPreference",
    )
