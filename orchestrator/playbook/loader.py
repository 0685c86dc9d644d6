"""Reading a playbook file into a validated `Playbook`, with every problem reported as ``file:line:col``.

An operator fixes a playbook by jumping to the line an error names, so the loader keeps the YAML node of
every value and translates each pydantic error back to the node it is about: the key of an unknown field,
the mapping that lacks a required one, the value that did not parse. It reports all problems at once,
because a migration window is not the time to discover them one run at a time, and it never echoes the
value of a secret field.

YAML is read with PyYAML's safe composer, with YAML 1.2 numbers: ``52:54:00:00:00:06`` (a MAC address) and
``010`` stay text instead of becoming base-60 and octal integers as YAML 1.1 would have them.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from . import secrets
from .introspect import (
    discriminator_of,
    field_type,
    is_dict,
    is_list,
    is_model,
    is_union,
    mentions_secret,
    tagged_members,
    union_members,
    unwrap,
)
from .models import NAME_RE, Playbook

Loc = tuple[str | int, ...]

MAX_VALUES = 250_000  # after alias expansion (a wave of 1000 servers is ~50k); a "billion laughs" stops here
EXTENSION_PREFIX = "x-"  # top-level keys ignored by validation: a place for YAML anchors, as in Compose files
_SECRET_REFERENCE = re.compile(r"^\s*\$\{(env|file):[^}]+\}\s*$")  # a reference names a secret, it is none
_SHOWN_MAX = 40  # longer inputs are not echoed: they are more likely pasted credentials than typos


@dataclass(frozen=True)
class PlaybookIssue:
    """One problem in a playbook, at the place an editor can jump to."""

    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file (it cannot be read)
    col: int  # 1-based
    field: str  # dotted path such as servers[0].target.nics[1].ip; empty for YAML syntax problems
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PlaybookError(Exception):
    """Every problem found in a playbook, sorted by position; ``str()`` gives one per line."""

    def __init__(self, errors: list[PlaybookIssue]) -> None:
        self.errors = sorted(errors, key=lambda issue: (issue.line, issue.col))
        super().__init__("\n".join(str(issue) for issue in self.errors))

    def __reduce__(self) -> tuple[type[PlaybookError], tuple[list[PlaybookIssue]]]:
        return PlaybookError, (self.errors,)  # survives pickling (process pools, multiprocessing)


@dataclass
class _Where:
    node: yaml.Node
    key: yaml.Node | None  # the key's node when the value sits in a mapping


@dataclass
class LoadedPlaybook:
    """A validated playbook and where it came from (its digest pins a run's journal to this exact file)."""

    path: Path
    base_dir: Path
    text: str = field(repr=False)  # may hold secrets written in clear: never log it
    sha256: str
    playbook: Playbook
    _where: dict[Loc, _Where] = field(default_factory=dict, repr=False, compare=False)
    _shown: str = field(default="", repr=False, compare=False)

    def location(self, *loc: str | int) -> str | None:
        """``file:line:col`` of the value at ``loc`` (keys and list indexes), or of its nearest ancestor."""
        where = _nearest(self._where, loc)
        if where is None:
            return None
        mark = where.node.start_mark
        return f"{self._shown or self.path}:{mark.line + 1}:{mark.column + 1}"


def load_playbook(path: str | Path) -> LoadedPlaybook:
    """Read, parse and validate a playbook file; raises `PlaybookError` listing every problem."""
    shown = str(path)
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PlaybookError([PlaybookIssue(shown, 0, 0, "", f"cannot be read: {reason}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the playbook as UTF-8"
        raise PlaybookError([PlaybookIssue(shown, line, col, "", message)]) from None
    return _load(text, raw, Path(path), shown)


def load_playbook_text(text: str, path: str | Path) -> LoadedPlaybook:
    """Like `load_playbook` for text already in memory; ``path`` names it and anchors relative paths."""
    return _load(text, text.encode("utf-8"), Path(path), str(path))


def playbook_json_schema() -> dict[str, Any]:
    """JSON Schema of the playbook format, for editors and ``migrate schema``."""
    schema = Playbook.model_json_schema()
    schema.pop("title", None)
    schema.setdefault("patternProperties", {})["^x-"] = {}  # extension keys (YAML anchors) are ignored
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hvmigrate playbook (apiVersion: hvmigrate/v1)",
        "description": "A migration wave: providers (hypervisors), DNS servers and the servers to move. "
        "Sizes accept units (4GiB), rates bytes/s (200MiB/s), durations 30s/5m/1h; secrets are "
        "${env:NAME} or ${file:PATH} references.",
        **schema,
    }


# ---------------------------------------------------------------- loading


def _load(text: str, raw: bytes, path: Path, shown: str) -> LoadedPlaybook:
    absolute = path.expanduser().absolute()
    base_dir = absolute.parent
    builder = _Builder(shown)
    data = builder.parse(text)
    if data is None:  # not even a mapping: nothing further can be checked
        raise PlaybookError(builder.issues)
    for key in [k for k in data if isinstance(k, str) and k.startswith(EXTENSION_PREFIX)]:
        del data[key]
    duplicate_names = builder.check_server_names(data)

    playbook: Playbook | None = None
    secrets.set_base_dir(base_dir)
    try:
        playbook = Playbook.model_validate(data)
    except ValidationError as exc:
        translator = _Translator(builder, data, duplicate_names)
        builder.issues.extend(translator.translate(exc.errors(include_url=False)))
    finally:
        secrets.set_base_dir(None)
    if builder.issues or playbook is None:
        raise PlaybookError(_unique(builder.issues))

    _make_paths_absolute(playbook, base_dir)
    return LoadedPlaybook(
        path=absolute,
        base_dir=base_dir,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        playbook=playbook,
        _where=builder.where,
        _shown=shown,
    )


def _unique(issues: list[PlaybookIssue]) -> list[PlaybookIssue]:
    return list(dict.fromkeys(issues))


def _make_paths_absolute(value: Any, base_dir: Path) -> Any:
    """Relative paths in a playbook mean "beside the playbook", wherever the command is run from."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            current = getattr(value, name)
            updated = _make_paths_absolute(current, base_dir)
            if updated is not current:
                value.__dict__[name] = updated  # bypass __setattr__: the field was not "set" by the user
        return value
    if isinstance(value, Path):
        expanded = value.expanduser()
        return expanded if expanded.is_absolute() else base_dir / expanded
    if isinstance(value, list):
        return [_make_paths_absolute(item, base_dir) for item in value]
    if isinstance(value, dict):
        return {key: _make_paths_absolute(item, base_dir) for key, item in value.items()}
    return value


# ---------------------------------------------------------------- YAML with positions

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader whose integers and floats follow YAML 1.2: no base-60 (MAC addresses), no 0-octal."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0b[01_]+|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)
_YamlLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _TooManyValues(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _Builder:
    """Turns YAML nodes into plain data while recording where each value (and its key) was written."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.where: dict[Loc, _Where] = {}
        self.issues: list[PlaybookIssue] = []
        self._constructor = _YamlLoader("")
        self._active: set[int] = set()  # nodes being built: an alias back into one of them is a cycle
        self._checked: set[int] = set()  # mappings already checked for duplicate keys
        self._count = 0
        self.unreadable: set[Loc] = set()  # values already reported; validation errors there are noise

    def issue(self, mark: yaml.Mark | None, loc: Loc, message: str) -> None:
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.issues.append(PlaybookIssue(self.shown, line, col, dotted(loc), message))

    def parse(self, text: str) -> dict[Any, Any] | None:
        """The top-level mapping, or None (with an issue recorded) when there is none to validate."""
        loader: _YamlLoader | None = None
        try:
            loader = _YamlLoader(text)
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            if exc.context == "while scanning a quoted scalar" and exc.context_mark is not None:
                self.issue(exc.context_mark, (), "this quoted value is never closed; add the closing quote")
            else:
                self.issue(exc.problem_mark or exc.context_mark, (), _yaml_problem(exc))
            return None
        except yaml.reader.ReaderError as exc:
            before = text[: exc.position]
            column = exc.position - (before.rfind("\n") + 1)
            mark = yaml.Mark("", exc.position, before.count("\n"), column, "", 0)
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
            self.issue(mark, (), f"character {char} is not allowed in YAML; remove it")
            return None
        except RecursionError:
            self.issue(None, (), "the YAML is nested too deeply to be a playbook")
            return None
        finally:
            if loader is not None:
                loader.dispose()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
            self.issue(None, (), "the playbook is empty; it needs apiVersion, kind, name and servers")
            return None
        if not isinstance(root, yaml.MappingNode) or root.tag != _MAP_TAG:
            what = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            self.issue(
                root.start_mark,
                (),
                f"a playbook is a mapping of apiVersion, kind, name, servers, ... but this file holds {what}",
            )
            return None
        try:
            data = self.build(root, ())
        except _TooManyValues as exc:
            message = (
                f"aliases expand the YAML to more than {MAX_VALUES:,} values; no playbook needs that many"
            )
            self.issue(exc.node.start_mark, (), message)
            return None
        except RecursionError:
            self.issue(root.start_mark, (), "the YAML is nested too deeply to be a playbook")
            return None
        return data

    def build(self, node: yaml.Node, loc: Loc, key: yaml.Node | None = None) -> Any:
        self.where[loc] = _Where(node, key)
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooManyValues(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if id(node) in self._active:
            self.issue(node.start_mark, loc, "this alias refers to a mapping or list that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.issue(node.start_mark, loc, f"YAML tag {node.tag} is not supported in a playbook")
                return [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
            return self.mapping(node, loc)
        finally:
            self._active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.issue(node.start_mark, loc, exc.problem or "this value cannot be read")
        except ValueError as exc:  # e.g. a timestamp with month 13
            kind = node.tag.rsplit(":", 1)[-1]
            self.issue(node.start_mark, loc, f"this value cannot be read as a {kind}: {exc}")
        self.unreadable.add(loc)
        return None

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        if node.tag != _MAP_TAG:
            self.issue(node.start_mark, loc, f"YAML tag {node.tag} is not supported in a playbook")
        entries: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in self._pairs(node, loc):
            key = self._key(key_node, loc)
            if key is not _BAD_KEY and key not in entries:  # the first pair wins: explicit keys come first
                entries[key] = (key_node, value_node)
        return {key: self.build(value, (*loc, key), key_node) for key, (key_node, value) in entries.items()}

    def _pairs(self, node: yaml.MappingNode, loc: Loc) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value nodes by precedence: the mapping's own keys, then those merged in with ``<<``."""
        self._check_duplicates(node, loc)
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.issue(source.start_mark, loc, "<< merges a mapping or a list of mappings")
                elif id(source) in self._active:
                    self.issue(source.start_mark, loc, "this alias refers to a mapping that contains it")
                else:
                    self._active.add(id(source))
                    merged.extend(self._pairs(source, loc))
                    self._active.discard(id(source))
        return own + merged

    def _check_duplicates(self, node: yaml.MappingNode, loc: Loc) -> None:
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(key_node, loc, report=False)
            if key is _BAD_KEY:
                continue
            if key in first_seen:
                first = first_seen[key].start_mark.line + 1
                here = key_node.start_mark.line + 1
                self.issue(
                    key_node.start_mark,
                    (*loc, key),
                    f"duplicate key '{key}' (lines {first} and {here}); keep only one",
                )
            else:
                first_seen[key] = key_node

    def _key(self, key_node: yaml.Node, loc: Loc, report: bool = True) -> Any:
        if not isinstance(key_node, yaml.ScalarNode):
            if report:
                self.issue(key_node.start_mark, loc, "a key must be a plain name, not a list or a mapping")
            return _BAD_KEY
        key = self.scalar(key_node, loc) if report else self._quiet_scalar(key_node)
        try:
            hash(key)
        except TypeError:
            return _BAD_KEY
        return key

    def _quiet_scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError):
            return _BAD_KEY

    def check_server_names(self, data: dict[Any, Any]) -> set[str]:
        """Report a name used twice, at the second use: the model checks only once all else is valid."""
        servers = data.get("servers")
        duplicates: set[str] = set()
        if not isinstance(servers, list):
            return duplicates
        first: dict[str, int] = {}
        for index, server in enumerate(servers):
            name = server.get("name") if isinstance(server, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                duplicates.add(name)
                earlier = self.where[("servers", first[name], "name")].node.start_mark.line + 1
                self.issue(
                    self.where[("servers", index, "name")].node.start_mark,
                    ("servers", index, "name"),
                    f"server name '{name}' is already used at line {earlier}; server names must be unique",
                )
            else:
                first[name] = index
        return duplicates


_BAD_KEY = object()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's description of a syntax error, with the advice a person needs for the usual ones."""
    problem = exc.problem or "invalid YAML"
    if "'\\t'" in problem:
        return "a tab character cannot indent YAML; indent with spaces"
    if (exc.context or "").startswith("expected a single document"):
        return "the file holds more than one YAML document (a second '---'); a playbook is one document"
    if problem.startswith("expected <block end>") or problem.startswith("expected <block mapping end>"):
        return "this line does not line up with the lines above it; check its indentation"
    if problem == "mapping values are not allowed here":
        return "unexpected ':' here; put a value containing ': ' in quotes, or fix the indentation"
    context_mark = exc.context_mark
    if exc.context and context_mark is not None and exc.problem_mark is not None:
        if context_mark.line != exc.problem_mark.line:
            return f"{problem} ({exc.context} at line {context_mark.line + 1})"
        return f"{problem} ({exc.context})"
    return problem


def dotted(loc: Loc) -> str:
    """``servers[0].target.nics[1].ip``: the path a person reads, and the ``field`` of an issue."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = str(part)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
                text = f'"{text}"'
            out += f".{text}" if out else text
    return out


def _nearest(where: dict[Loc, _Where], loc: Loc) -> _Where | None:
    for length in range(len(loc), -1, -1):
        found = where.get(tuple(loc[:length]))
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- pydantic errors, translated


@dataclass
class _Target:
    """What a pydantic error location refers to in the YAML and in the models."""

    loc: Loc = ()  # path in the YAML (tags and validator names removed)
    owner: type[BaseModel] | None = None  # model owning the last key
    owner_tag: str | None = None  # the `type:` that selected the owner in a tagged union
    siblings: dict[str, type[BaseModel]] = field(default_factory=dict)  # that union's other members
    field_name: str | None = None  # the last model field passed through
    type_: Any = None  # annotation found at the end of the location (None: unknown)
    union_at: int | None = None  # length of loc where an untagged union was entered
    discriminator: str | None = None  # when type_ is a tagged union: the field that selects the member
    secret: bool = False
    key_error: bool = False


_LEAF = object()  # a type with no inner structure: remaining loc items are validator names


def _walk(loc: tuple[Any, ...], data: Any) -> _Target:
    """Follow a pydantic loc through the models and the YAML data at once.

    pydantic inserts the tag of a tagged union (``'esx'``), the label of an untagged union member
    (``"literal['dhcp','keep']"``) and validator names into ``loc``; the models tell which item is which.
    Where the models cannot say (an unknown key), the data decides.
    """
    target = _Target()
    path: list[str | int] = []
    tp: Any = Playbook
    discriminator: str | None = None
    pending_tag: str | None = None
    siblings: dict[str, type[BaseModel]] = {}
    node = data
    index = 0
    while index < len(loc):
        item = loc[index]
        if item == "[key]":
            target.key_error = True
            index += 1
            continue
        if tp is not None and tp is not _LEAF:
            if mentions_secret(tp):
                target.secret = True
            bare, metadata = unwrap(tp)
            discriminator = discriminator or discriminator_of(metadata)
            if is_union(bare):
                members = union_members(bare)
                if discriminator:
                    tagged = tagged_members(bare, discriminator)
                    discriminator = None
                    if isinstance(item, str) and item in tagged:
                        tp, pending_tag, siblings = tagged[item], item, tagged
                        index += 1
                    else:
                        tp = None
                    continue
                if len(members) == 1:
                    tp = members[0]
                    continue
                if target.union_at is None:
                    target.union_at = len(path)
                tp = _union_member(members, item)
                index += 1
                continue
            if is_model(bare) and isinstance(item, str):
                target.owner, target.owner_tag, target.siblings = bare, pending_tag, siblings
                pending_tag, siblings = None, {}
                target.field_name = item
                model_field = bare.model_fields.get(item)
                if model_field is None:
                    tp = None
                else:
                    tp, _, discriminator = field_type(model_field)
                path.append(item)
                node = _child(node, item)
                index += 1
                continue
            if is_list(bare) and isinstance(item, int):
                args = get_args(bare)
                tp, discriminator = (args[0] if args else None), None
                path.append(item)
                node = _child(node, item)
                index += 1
                continue
            if is_dict(bare):
                args = get_args(bare)
                tp, discriminator = (args[1] if len(args) == 2 else None), None
                path.append(item)
                node = _child(node, item)
                index += 1
                continue
            tp = _LEAF
        if tp is _LEAF:
            index += 1  # a validator's name, not a place in the YAML
            continue
        child = _child(node, item)
        if child is not _MISSING:
            path.append(item)
            node = child
        index += 1
    target.loc = tuple(path)
    target.type_ = None if tp is _LEAF else tp
    target.discriminator = discriminator
    if tp is not None and tp is not _LEAF and mentions_secret(tp):
        target.secret = True
    return target


def _union_member(members: list[Any], label: Any) -> Any:
    """The member of an untagged union that pydantic's loc label names, or `_LEAF`."""
    for member in members:
        bare, _ = unwrap(member)
        if isinstance(label, str) and label.startswith("literal[") and get_origin(bare) is Literal:
            return bare
        if is_model(bare) and bare.__name__ == label:
            return bare
    return _LEAF


_MISSING = object()


def _child(node: Any, item: Any) -> Any:
    if isinstance(node, dict) and item in node:
        return node[item]
    if isinstance(node, list) and isinstance(item, int) and -len(node) <= item < len(node):
        return node[item]
    return _MISSING


_TYPE_EXPECTATIONS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "dict_type": "a mapping (key: value lines, or {key: value})",
    "model_type": "a mapping (key: value lines, or {key: value})",
    "model_attributes_type": "a mapping (key: value lines, or {key: value})",
    "list_type": "a list (- item lines, or [a, b])",
    "none_required": "null",
    "ip_v4_interface": "an IPv4 address with a prefix length such as 10.1.0.6/24",
    "ip_v6_interface": "an IPv6 address with a prefix length such as fd00::6/64",
    "ip_v4_address": "an IPv4 address such as 10.1.0.1",
    "ip_v6_address": "an IPv6 address such as fd00::1",
    "ip_any_interface": "an IP address with a prefix length such as 10.1.0.6/24",
    "ip_any_address": "an IP address such as 10.1.0.1",
}
_IP_PAIRS = {
    frozenset(
        {"ip_v4_interface", "ip_v6_interface"}
    ): "an IP address with a prefix length such as 10.1.0.6/24 or fd00::6/64",
    frozenset({"ip_v4_address", "ip_v6_address"}): "an IP address such as 10.1.0.1 or fd00::1",
}
_UNION_NOUNS = {"providers": "provider", "dns": "DNS", "source": "source"}


class _Translator:
    """Turns pydantic's error dicts into `PlaybookIssue`s at the right YAML node, in plain words."""

    def __init__(self, builder: _Builder, data: Any, duplicate_names: set[str]) -> None:
        self.builder = builder
        self.data = data
        self.duplicate_names = duplicate_names

    def translate(self, errors: list[Any]) -> list[PlaybookIssue]:
        issues: list[PlaybookIssue] = []
        unions: dict[Loc, list[tuple[Any, _Target]]] = {}
        for error in errors:
            if error["type"] == "duplicate_server_name":
                if error["ctx"]["name"] in self.duplicate_names:
                    continue  # already reported from the YAML, at the line of the second server
                target = _Target(loc=("servers", error["ctx"]["index"], "name"))
                issues.append(self._issue(target, self._node_of(target), error["msg"]))
                continue
            target = _walk(error["loc"], self.data)
            if any(target.loc[: len(bad)] == bad for bad in self.builder.unreadable):
                continue
            if target.union_at is not None and error["type"] not in ("missing", "extra_forbidden"):
                unions.setdefault(target.loc[: target.union_at], []).append((error, target))
            else:
                issues.append(self._single(error, target))
        for loc, members in unions.items():
            issues.append(self._union(loc, members))
        return issues

    # -- where

    def _node_of(self, target: _Target) -> _Where | None:
        return _nearest(self.builder.where, target.loc)

    def _issue(
        self, target: _Target, where: _Where | None, message: str, use_key: bool = False
    ) -> PlaybookIssue:
        node = (
            where.key
            if (use_key and where is not None and where.key is not None)
            else (where.node if where is not None else None)
        )
        mark = node.start_mark if node is not None else None
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        return PlaybookIssue(self.builder.shown, line, col, dotted(target.loc), secrets.redact(message))

    # -- what

    def _single(self, error: Any, target: _Target) -> PlaybookIssue:
        kind = error["type"]
        ctx = error.get("ctx") or {}
        value = error.get("input")
        where = self._node_of(target)
        got = _got(value, target.secret)

        if kind == "missing":
            parent = _nearest(self.builder.where, target.loc[:-1])
            name = target.loc[-1] if target.loc else "?"
            message = f"missing required field '{name}'"
            if target.owner_tag:
                message += f" (needed when type is {target.owner_tag})"
            return self._issue(target, parent, message, use_key=True)
        if kind == "extra_forbidden" or target.key_error:
            return self._issue(target, where, self._unknown_field(error, target), use_key=True)
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            return self._tag_issue(error, target)

        if kind == "literal_error":
            message = f"expected {ctx.get('expected', 'one of the allowed values')}{got}"
            message += _did_you_mean(value, _literal_values(target.type_))
        elif kind in ("value_error", "assertion_error"):
            message = _strip_prefix(error["msg"])
        elif kind == "greater_than_equal":
            message = f"must be at least {ctx.get('ge')}{got}"
        elif kind == "less_than_equal":
            message = f"must be at most {ctx.get('le')}{got}"
        elif kind == "greater_than":
            message = f"must be greater than {ctx.get('gt')}{got}"
        elif kind == "less_than":
            message = f"must be less than {ctx.get('lt')}{got}"
        elif kind == "too_short":
            least = ctx.get("min_length", 1)
            message = f"needs at least {least} {'entry' if least == 1 else 'entries'}"
        elif kind == "too_long":
            message = f"allows at most {ctx.get('max_length')} entries, got {ctx.get('actual_length')}"
        elif kind == "string_pattern_mismatch":
            if ctx.get("pattern") == NAME_RE:
                message = (
                    "expected a name of up to 63 letters, digits, '.', '_' or '-', starting with a letter "
                    f"or digit{got}"
                )
            else:
                message = f"expected text matching {ctx.get('pattern')}{got}"
        elif kind in _TYPE_EXPECTATIONS:
            message = f"expected {_TYPE_EXPECTATIONS[kind]}{got}"
        else:
            message = _strip_prefix(error["msg"])
        message += self._quote_hint(kind, message, value, where, target)
        return self._issue(target, where, _scrub(message, value, target.secret))

    def _unknown_field(self, error: Any, target: _Target) -> str:
        name = target.loc[-1] if target.loc else error["loc"][-1]
        if target.key_error:
            return _strip_prefix(error["msg"]) if error["type"] != "string_type" else "a key must be text"
        allowed = list(target.owner.model_fields) if target.owner is not None else []
        message = f"unknown field '{name}'"
        for tag, member in target.siblings.items():
            if tag != target.owner_tag and isinstance(name, str) and name in member.model_fields:
                return f"{message}: it belongs to type {tag}, and this one is type {target.owner_tag}"
        suggestion = _did_you_mean(name, allowed)
        if suggestion:
            return message + suggestion
        return f"{message}; allowed here: {', '.join(allowed)}" if allowed else message

    def _tag_issue(self, error: Any, target: _Target) -> PlaybookIssue:
        bare, metadata = unwrap(target.type_)
        discriminator = target.discriminator or discriminator_of(metadata) or "type"
        tags = list(tagged_members(bare, discriminator)) if is_union(bare) else []
        noun = _UNION_NOUNS.get(target.field_name or "", target.field_name or "")
        kind = f"{noun} type" if noun else "type"
        allowed = ", ".join(tags)
        if error["type"] == "union_tag_not_found":
            message = f"missing required field '{discriminator}': the {kind}, one of {allowed}"
            return self._issue(target, self._node_of(target), message, use_key=True)
        tag = (error.get("ctx") or {}).get("tag")
        tag_target = _Target(loc=(*target.loc, discriminator))
        message = f"unknown {kind} '{tag}'; expected one of: {allowed}" + _did_you_mean(tag, tags)
        return self._issue(tag_target, self._node_of(tag_target), message)

    def _union(self, loc: Loc, members: list[tuple[Any, _Target]]) -> PlaybookIssue:
        """One message for all members of an untagged union (``ip: 10.1.0.6/24 | dhcp | keep``)."""
        value = members[0][0].get("input")
        secret = any(target.secret for _, target in members)
        target = _Target(loc=loc, secret=secret)
        where = self._node_of(target)
        for error, _ in members:
            if error["type"] == "value_error":
                text = _strip_prefix(error["msg"])
                if not text.startswith("expected"):  # the member that understood the value says what is wrong
                    return self._issue(target, where, _scrub(text, value, secret))
        kinds = {error["type"] for error, _ in members}
        phrases: list[str] = []
        literals: list[Any] = []
        merged: set[str] = set()  # IPv4 + IPv6 errors read better as one "IP address" phrase
        for pair, phrase in _IP_PAIRS.items():
            if pair <= kinds:
                phrases.append(phrase)
                merged |= pair
        for error, member in members:
            kind = error["type"]
            if kind in merged:
                continue
            if kind == "literal_error":
                literals.extend(_literal_values(member.type_) or [error["ctx"].get("expected")])
                continue
            phrase = _expectation(error)
            if phrase not in phrases:
                phrases.append(phrase)
        if literals:
            shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in literals)
            phrases.append(f"one of {shown}" if len(literals) > 1 else shown)
        separator = ", or " if any(" or " in p or "," in p for p in phrases[:-1]) else " or "
        message = "expected " + separator.join(phrases) + _got(value, secret)
        message += _did_you_mean(value, literals)
        return self._issue(target, where, _scrub(message, value, secret))

    def _quote_hint(self, kind: str, message: str, value: Any, where: _Where | None, target: _Target) -> str:
        """YAML turns ``no``, ``12`` or ``2026-01-05`` into a boolean, number or date where text was meant."""
        wants_text = kind == "string_type" or "expected a string" in message
        node = where.node if where is not None else None
        if not wants_text or value is None or isinstance(value, str | dict | list):
            return ""
        if not isinstance(node, yaml.ScalarNode) or node.style is not None:
            return ""
        if target.secret:
            return "; put the value in quotes"
        if isinstance(value, bool):
            what = "a boolean"
        else:
            what = "a number" if isinstance(value, int | float) else "a date"
        return f"; YAML reads {node.value} as {what}: put it in quotes"


def _expectation(error: Any) -> str:
    kind = error["type"]
    if kind in _TYPE_EXPECTATIONS:
        return _TYPE_EXPECTATIONS[kind]
    text = _strip_prefix(error["msg"])
    match = re.match(r"^expected (.*?)(?:, got .*)?$", text)
    return match.group(1) if match else text


def _literal_values(tp: Any) -> list[Any]:
    bare, _ = unwrap(tp)
    if get_origin(bare) is Literal:
        return list(get_args(bare))
    if is_union(bare):
        return [v for member in union_members(bare) for v in _literal_values(member)]
    return []


def _got(value: Any, secret: bool) -> str:
    """``, got 'x'`` for a short input, nothing for a secret or a long string (likely pasted credentials)."""
    if secret:
        return ""
    if isinstance(value, bool):
        return f", got {'true' if value else 'false'}"
    if value is None:
        return ", got an empty value"
    if isinstance(value, int | float):
        return f", got {value}"
    if isinstance(value, str):
        return f", got {value!r}" if len(value) <= _SHOWN_MAX else ""
    if isinstance(value, dict):
        return ", got a mapping"
    if isinstance(value, list):
        return ", got a list"
    return ""


def _scrub(message: str, value: Any, secret: bool) -> str:
    """Remove an echoed input the rules say must not be shown (a validator may have quoted it)."""
    if isinstance(value, str) and value:
        if secret and not _SECRET_REFERENCE.match(value):
            message = message.replace(value, secrets.MASK)
        elif len(value) > _SHOWN_MAX:
            message = message.replace(repr(value), f"a {len(value)}-character value").replace(value, "…")
    return message


def _strip_prefix(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _did_you_mean(value: Any, choices: list[Any]) -> str:
    if not isinstance(value, str) or len(choices) < 2:  # a single choice is already named by "expected"
        return ""
    names = {str(choice): choice for choice in choices}
    close = difflib.get_close_matches(value, list(names), n=1, cutoff=0.6)
    if not close:
        close = [name for name in names if name.lower() == value.lower()]
    return f"; did you mean '{close[0]}'?" if close else ""
