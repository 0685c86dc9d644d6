"""Reading the playbook models' type annotations, for error messages and the generated reference.

The loader needs to know, for a pydantic error location, which model a key belongs to (to suggest the
field that was meant) and which union member a ``type:`` selects; the reference needs to print every field's
type in words. Both questions are answered from the same annotations, so they are answered here once.
"""

from __future__ import annotations

import ipaddress
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .secrets import Secret
from .units import parse_duration, parse_rate, parse_size

#: Names of the unit types, keyed by the function that parses them.
UNIT_KINDS = {parse_size: "size", parse_rate: "rate", parse_duration: "duration"}


def unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """The bare type under any ``Annotated[...]`` layers, and the metadata those layers carried."""
    metadata: list[Any] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metadata.extend(extra)
    return tp, metadata


def is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def union_members(tp: Any) -> list[Any]:
    """Members of a union other than ``None`` (pydantic treats ``X | None`` as a nullable X, not a union)."""
    return [arg for arg in get_args(tp) if arg is not type(None)]


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def discriminator_of(metadata: list[Any]) -> str | None:
    for item in metadata:
        if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
            return item.discriminator
    return None


def tag_values(model: type[BaseModel], discriminator: str) -> list[str]:
    """The values of ``discriminator`` (``type``) that select ``model`` in a tagged union."""
    field = model.model_fields.get(discriminator)
    if field is None:
        return []
    bare, _ = unwrap(field.annotation)
    return [str(value) for value in get_args(bare)] if get_origin(bare) is Literal else []


def tagged_members(tp: Any, discriminator: str) -> dict[str, type[BaseModel]]:
    """``{"sim": SimProviderConfig, ...}`` for a discriminated union, in declaration order."""
    members: dict[str, type[BaseModel]] = {}
    for member in union_members(unwrap(tp)[0]):
        member, _ = unwrap(member)
        if is_model(member):
            for tag in tag_values(member, discriminator):
                members[tag] = member
    return members


def unit_kind(metadata: list[Any]) -> str | None:
    """``size``, ``rate`` or ``duration`` when the metadata carries one of the unit parsers."""
    for item in metadata:
        func = getattr(item, "func", None)
        if func in UNIT_KINDS:
            return UNIT_KINDS[func]
    return None


def mentions_secret(tp: Any) -> bool:
    """True when a value of this type is (or may be) a credential, so its input must never be echoed."""
    bare, _ = unwrap(tp)
    if bare is Secret:
        return True
    return any(mentions_secret(arg) for arg in get_args(bare) if not isinstance(arg, str | int))


def field_type(field: FieldInfo) -> tuple[Any, list[Any], str | None]:
    """A model field's annotation, its metadata (constraints, validators) and its discriminator."""
    bare, metadata = unwrap(field.annotation)
    metadata = [*field.metadata, *metadata]
    discriminator = field.discriminator if isinstance(field.discriminator, str) else None
    return bare, metadata, discriminator or discriminator_of(metadata)


IP_KINDS: dict[Any, str] = {
    ipaddress.IPv4Interface: "IPv4 address/prefix",
    ipaddress.IPv6Interface: "IPv6 address/prefix",
    ipaddress.IPv4Address: "IPv4 address",
    ipaddress.IPv6Address: "IPv6 address",
}
SCALAR_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    Secret: "secret",
    **IP_KINDS,
}


def is_list(tp: Any) -> bool:
    return get_origin(tp) in (list, tuple, set, frozenset, typing.List)  # noqa: UP006


def is_dict(tp: Any) -> bool:
    return get_origin(tp) in (dict, typing.Dict)  # noqa: UP006
