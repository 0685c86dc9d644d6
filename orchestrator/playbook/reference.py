"""The playbook field reference (docs/playbook.md), generated from the models so it cannot drift from them.

Run ``python -m orchestrator.playbook.reference > docs/playbook.md`` after changing a model; a unit test
fails while the committed page differs from what this module prints. The introduction and the example
live here too, so the whole page has one source.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .introspect import (
    SCALAR_NAMES,
    discriminator_of,
    field_type,
    is_dict,
    is_list,
    is_model,
    is_union,
    tagged_members,
    union_members,
    unit_kind,
    unwrap,
)
from .models import NAME_RE, Playbook
from .secrets import Secret

GENERATED_MARK = (
    "<!-- Generated from orchestrator/playbook/models.py by "
    "`python -m orchestrator.playbook.reference > docs/playbook.md`; edit the models, not this page. -->"
)

EXAMPLE = """\
apiVersion: hvmigrate/v1
kind: MigrationPlaybook
name: wave-1
defaults:
  mirror: {compression: zstd, verify: true, chunk_size: 4MiB,
           bandwidth: {limit: 200MiB/s, schedule: [{days: mon-fri, hours: "08:00-18:00", limit: 20MiB/s}]}}
  cutover: {mode: manual, shutdown_source: true, pre_script: null, post_script: null}
  limits: {max_parallel_servers: 8, per_source_host: 4, per_target_host: 10}
providers:
  lab-kvm:  {type: kvm, uri: "qemu:///system", storage_pool: default}
  vcenter:  {type: esx, host: vc.corp.test, user: administrator@vsphere.local,
             password: "${env:VC_PASSWORD}", datacenter: DC0, thumbprint: "AB:CD:..."}
  hv01:     {type: hyperv, host: hv01.corp.test, user: 'CORP\\admin', password: "${file:/run/secrets/hv01}"}
  local:    {type: sim, root: ./sim-hypervisor}
dns:
  corp: {type: rfc2136, server: 10.0.0.2, port: 53, zone: corp.test,
         tsig: {name: migkey, algorithm: hmac-sha256, secret: "${env:TSIG_SECRET}"}}
servers:
  - name: db01
    source: {type: ssh, host: 10.0.0.6, user: root, key: ~/.ssh/id_ed25519}   # ssh | winrm | vm | image
    target:
      provider: lab-kvm
      vm_name: db01
      cpus: 2
      memory: 4GiB
      appliance: shared            # shared (one per target host) | dedicated | host (no appliance)
      disks: [{source: /dev/vda, format: qcow2, datastore: default}]          # size: auto (>= source)
      nics:  [{source_mac: "52:54:00:00:00:06", network: prod, ip: 10.1.0.6/24, gateway: 10.1.0.1,
               dns: [10.1.0.2]}]
    dns_records: [{provider: corp, name: db01, type: A, value: nic0, ttl: 60}]
  - name: web01
    depends_on: [db01]             # web01 cuts over after db01 is up
    source: {type: image, path: ./images/web01.raw}
    target: {provider: local, vm_name: web01, disks: [{source: web01.raw, format: raw}]}
"""

INTRO = f"""\
# The playbook

A playbook is one YAML file that describes a migration wave: the hypervisors involved (`providers`), the
DNS servers to update (`dns`), and the servers to move (`servers`), each with its source, its target VM,
its disks and NICs. `migrate validate PLAYBOOK` checks it; every other command reads it the same way.

## A complete example

```yaml
{EXAMPLE}```

`db01` is copied over SSH from a running Linux server to KVM; `web01` is a disk image brought up on the
embedded simulated hypervisor after `db01` has cut over. The two secrets come from the environment and from
a file, and are never printed.

## How a playbook is read

- **Every problem at once, with its place.** Errors read `playbook.yaml:12:7: servers[0].target.cpu:
  unknown field 'cpu'; did you mean 'cpus'?`, one per line, sorted by line: fix them all in one pass.
- **Unknown keys are errors**, in every section: a misspelt option that is silently ignored is how a
  migration goes wrong at night.
- **Duplicate keys are errors** (YAML would keep the last one silently), and so are two servers with the
  same name.
- **Units**: sizes take `512MiB`, `4GiB`, `100GB` (binary and decimal prefixes, bare integers are bytes);
  rates take `200MiB/s`, `1Gbit/s` or `100Mbps`; durations take `90` (seconds), `30s`, `5m`, `1h30m`, `2d`.
  Negative values and sizes above 1 EiB are rejected as the typos they are.
- **Secrets**: any credential field takes `${{env:NAME}}` or `${{file:PATH}}`; a relative `PATH` is read
  from the playbook's folder. A secret is shown as `***` in every output, log, plan and journal. A missing
  variable or file is reported by name, never by value.
- **Paths** (`root`, `path`, `key`, `known_hosts`, `ca_bundle`, ...) may start with `~`; relative paths are
  relative to the folder holding the playbook, not to the directory the command runs in.
- **YAML 1.2 numbers**: unquoted `52:54:00:00:00:06` stays a MAC address and `010` stays `010` (YAML 1.1
  would read them as base-60 and octal numbers). Values such as `no`, `on` or `2026-01-05` are still read
  as booleans and dates: quote them where text is meant (the error says so).
- **Anchors**: top-level keys starting with `x-` are ignored, so they can hold YAML anchors reused with
  `<<: *anchor` merge keys (as in Compose files).
- **Editor support**: `migrate schema > playbook.schema.json` writes the JSON Schema of this format; with the
  YAML language server, a first line `# yaml-language-server: $schema=playbook.schema.json` gives
  completion and checks while typing.

"""

_VALUE_TYPES = [
    ("size", "bytes as an integer, or a number with a unit: `512MiB`, `4GiB`, `1.5TiB`, `100GB`"),
    ("rate", "bytes per second: `200MiB/s` (the `/s` is optional), or bits: `1Gbit/s`, `100Mbps`"),
    ("duration", "seconds as a number, or `30s`, `5m`, `1h`, `1h30m`, `2d`, `1w`"),
    ("secret", "`${env:NAME}` or `${file:PATH}` (or, discouraged, the value itself); shown as `***`"),
    ("path", "a file or folder on the orchestrator's machine; `~` and paths relative to the playbook work"),
    ("name", f"1 to 63 letters, digits, `.`, `_` or `-`, starting with a letter or digit (`{NAME_RE}`)"),
]
UNITS_SECTION = "\n".join(
    ["### Value types", "", "| Type | Written as |", "|---|---|"]
    + [f'| <a id="type-{name}"></a>{name} | {text} |' for name, text in _VALUE_TYPES]
    + ["", ""]
)


def render_document() -> str:
    """The whole of docs/playbook.md."""
    return INTRO + render_reference()


def render_reference() -> str:
    """Markdown describing every model reachable from `Playbook`, field by field."""
    sections = _Sections()
    sections.discover(Playbook, "")
    lines = ["## Field reference", "", GENERATED_MARK, "", UNITS_SECTION]
    for item in sections.order:
        if isinstance(item, _UnionGroup):
            lines.extend(_render_union(item, sections))
        else:
            lines.extend(_render_model(item, sections, heading="###"))
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- discovery


@dataclass
class _UnionGroup:
    """A tagged union (`providers.<name>`, `dns.<name>`, `source`): one heading, then one table per type."""

    title: str
    anchor: str
    discriminator: str
    members: dict[str, type[BaseModel]]
    places: list[str] = field(default_factory=list)


@dataclass
class _Sections:
    order: list[Any] = field(default_factory=list)  # models and union groups, in reading order
    places: dict[type[BaseModel], list[str]] = field(default_factory=dict)
    groups: dict[tuple[type[BaseModel], ...], _UnionGroup] = field(default_factory=dict)
    member_of: dict[type[BaseModel], _UnionGroup] = field(default_factory=dict)

    def discover(self, root: type[BaseModel], place: str) -> None:
        """Breadth first, so the page reads top-down: the playbook, its sections, then their parts."""
        self.places[root] = [place]
        self.order.append(root)  # root's place is words, not a path: it is shown as is
        queue: list[tuple[type[BaseModel], str]] = [(root, "")]
        while queue:
            model, prefix = queue.pop(0)
            for name, info in model.model_fields.items():
                bare, metadata, discriminator = field_type(info)
                for found, found_place in _nested(bare, metadata, discriminator, _join(prefix, name), name):
                    if isinstance(found, _UnionGroup):
                        group = self.groups.get(tuple(found.members.values()))
                        if group is None:
                            group = self.groups[tuple(found.members.values())] = found
                            self.order.append(group)
                            for member in found.members.values():
                                self.member_of[member] = group
                                self.places.setdefault(member, [])
                                queue.append((member, found_place))
                        if found_place not in group.places:
                            group.places.append(found_place)
                        continue
                    if found not in self.places:
                        self.places[found] = []
                        self.order.append(found)
                        queue.append((found, found_place))
        self._collect_places(root, "")

    def _collect_places(self, model: type[BaseModel], prefix: str) -> None:
        """Every path a model can be reached by (``defaults.mirror`` and ``servers[].mirror``)."""
        for name, info in model.model_fields.items():
            bare, metadata, discriminator = field_type(info)
            for found, place in _nested(bare, metadata, discriminator, _join(prefix, name), name):
                if isinstance(found, _UnionGroup):
                    for tag, member in found.members.items():
                        _add(self.places.setdefault(member, []), f"{place} (type: {tag})")
                        self._collect_places(member, place)
                    continue
                _add(self.places.setdefault(found, []), place)
                self._collect_places(found, place)

    def anchor(self, model: type[BaseModel]) -> str:
        return model.__name__.lower()


def _add(places: list[str], place: str) -> None:
    if place not in places:
        places.append(place)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _nested(
    bare: Any, metadata: list[Any], discriminator: str | None, place: str, name: str
) -> Iterator[tuple[Any, str]]:
    """Models and tagged unions inside a field's type, with the place (``servers[].target``) they occupy."""
    discriminator = discriminator or discriminator_of(metadata)
    if is_union(bare):
        if discriminator:
            members = tagged_members(bare, discriminator)
            title = _UNION_TITLES.get(name, name)
            yield _UnionGroup(title, f"{_slug(title)}-types", discriminator, members), place
            return
        for member in union_members(bare):
            member_bare, member_metadata = unwrap(member)
            yield from _nested(member_bare, member_metadata, None, place, name)
        return
    if is_model(bare):
        yield bare, place
    elif is_list(bare):
        args = get_args(bare)
        if args:
            inner, inner_metadata = unwrap(args[0])
            yield from _nested(inner, inner_metadata, None, f"{place}[]", name)
    elif is_dict(bare):
        args = get_args(bare)
        if len(args) == 2:
            inner, inner_metadata = unwrap(args[1])
            yield from _nested(inner, inner_metadata, None, f"{place}.<name>", name)


_UNION_TITLES = {"providers": "Provider", "dns": "DNS", "source": "Source"}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# ---------------------------------------------------------------- rendering


def _render_union(group: _UnionGroup, sections: _Sections) -> list[str]:
    tags = ", ".join(f"[`{tag}`](#{sections.anchor(m)})" for tag, m in group.members.items())
    lines = [
        f'### <a id="{group.anchor}"></a>{group.title} types',
        "",
        f"Used at: {', '.join(f'`{p}`' for p in group.places)}. "
        f"The `{group.discriminator}` field chooses one of: {tags}.",
        "",
    ]
    for member in group.members.values():
        lines.extend(_render_model(member, sections, heading="####"))
    return lines


def _render_model(model: type[BaseModel], sections: _Sections, heading: str) -> list[str]:
    lines = [f'{heading} <a id="{sections.anchor(model)}"></a>{model.__name__}', ""]
    places = sections.places.get(model, [])
    if model is Playbook:
        lines += ["The top level of the file.", ""]
    elif places:
        lines += [f"Used at: {', '.join(f'`{p}`' for p in places)}.", ""]
    if model.__doc__:
        lines += [inspect.cleandoc(model.__doc__), ""]
    lines += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        bare, metadata, discriminator = field_type(info)
        cells = [
            f"`{name}`",
            _type_text(bare, metadata, discriminator, sections),
            _default_text(info, bare, metadata),
            (info.description or "").replace("|", "\\|").replace("\n", " "),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _type_text(bare: Any, metadata: list[Any], discriminator: str | None, sections: _Sections) -> str:
    discriminator = discriminator or discriminator_of(metadata)
    unit = unit_kind(metadata)
    if unit:
        return f"[{unit}](#type-{unit})"
    if bare is Secret:
        return "[secret](#type-secret)"
    if is_union(bare):
        if discriminator:
            members = tagged_members(bare, discriminator)
            group = sections.member_of.get(next(iter(members.values())))
            return f"[{group.title} type](#{group.anchor})" if group else "object"
        members = union_members(bare)
        if len(members) == 1:  # X | None: the field's constraints (ge, pattern) belong to X
            member_bare, member_metadata = unwrap(members[0])
            return _type_text(member_bare, [*metadata, *member_metadata], None, sections)
        parts = [_type_text(*unwrap(member), None, sections) for member in members]
        return " or ".join(dict.fromkeys(parts))
    if get_origin(bare) is Literal:
        return _or_list([f"`{_literal(value)}`" for value in get_args(bare)])
    if is_model(bare):
        return f"[{bare.__name__}](#{sections.anchor(bare)})"
    if is_list(bare):
        args = get_args(bare)
        inner = _type_text(*unwrap(args[0]), None, sections) if args else "value"
        return f"list of {inner}" + _constraints(metadata)
    if is_dict(bare):
        args = get_args(bare)
        inner = _type_text(*unwrap(args[1]), None, sections) if len(args) == 2 else "value"
        return f"map of name to {inner}"
    if any(getattr(item, "pattern", None) == NAME_RE for item in metadata):
        return "[name](#type-name)"
    if bare is Path:
        return "[path](#type-path)"
    return SCALAR_NAMES.get(bare, getattr(bare, "__name__", str(bare))) + _constraints(metadata)


def _constraints(metadata: list[Any]) -> str:
    bounds = []
    for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        for item in metadata:
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    for item in metadata:
        least = getattr(item, "min_length", None)
        if least:
            bounds.append(f"at least {least}")
    return f" ({', '.join(bounds)})" if bounds else ""


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _literal(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _default_text(info: FieldInfo, bare: Any, metadata: list[Any]) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{_value_text(value, bare, unit_kind(metadata))}`"


def _value_text(value: Any, tp: Any, unit: str | None) -> str:
    """A default as one would write it in the playbook: ``4MiB``, ``10m``, ``[prod, test]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and unit == "size":
        return _exact_size(int(value))
    if isinstance(value, int | float) and unit == "rate":
        return _exact_size(int(value)) + "/s"
    if isinstance(value, int | float) and unit == "duration":
        return _exact_duration(float(value))
    if isinstance(value, list):
        inner = _element_type(tp, 0)
        return "[" + ", ".join(_value_text(v, *inner) for v in value) + "]"
    if isinstance(value, dict):
        inner = _element_type(tp, 1)
        return "{" + ", ".join(f"{k}: {_value_text(v, *inner)}" for k, v in value.items()) + "}"
    return str(value)


def _element_type(tp: Any, position: int) -> tuple[Any, str | None]:
    args = get_args(unwrap(tp)[0])
    if len(args) <= position:
        return None, None
    bare, metadata = unwrap(args[position])
    return bare, unit_kind(metadata)


def _exact_size(n: int) -> str:
    for factor, suffix in (
        (1024**5, "PiB"),
        (1024**4, "TiB"),
        (1024**3, "GiB"),
        (1024**2, "MiB"),
        (1024, "KiB"),
        (1000**5, "PB"),
        (1000**4, "TB"),
        (1000**3, "GB"),
        (1000**2, "MB"),
        (1000, "KB"),
    ):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return f"{n}B"


def _exact_duration(seconds: float) -> str:
    for factor, suffix in ((604800, "w"), (86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{suffix}"
    return f"{seconds:g}s"


if __name__ == "__main__":
    sys.stdout.write(render_document())
