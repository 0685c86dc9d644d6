"""Find the plugin for a provider ``type`` and the reader for a server's ``source``.

Providers register through the entry-point group ``hvmigrate.providers``, so a third party ships its own
hypervisor as a package without touching this one. A checkout that was never pip-installed has no entry
points, so the built-in providers are also known by name here. Each hypervisor's client library is an
optional extra; a missing one is reported with the exact pip command rather than an ImportError.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.playbook.models import ImageSource as ImageSourceConfig
from orchestrator.playbook.models import Server
from orchestrator.playbook.models import SshSource as SshSourceConfig
from orchestrator.playbook.models import WinrmSource as WinrmSourceConfig
from providers.base import Provider, ProviderError, Source

ENTRY_POINT_GROUP = "hvmigrate.providers"

BUILTIN_PROVIDERS: dict[str, str] = {
    "sim": "providers.sim:SimProvider",
    "kvm": "providers.kvm:KvmProvider",
    "esx": "providers.esx:EsxProvider",
    "hyperv": "providers.hyperv:HypervProvider",
}


@dataclass(frozen=True)
class Extra:
    module: str  # what the provider imports
    package: str  # what pip installs
    extra: str  # hvmigrate[extra]


EXTRAS: dict[str, tuple[Extra, ...]] = {
    "kvm": (Extra("libvirt", "libvirt-python", "kvm"),),
    "esx": (Extra("pyVmomi", "pyvmomi", "esx"),),
    "hyperv": (Extra("winrm", "pywinrm", "hyperv"),),
}

# Where the sources that are not built yet come from; until then, saying so beats an AttributeError.
SOURCE_ISSUES: dict[str, str] = {}


class ProviderUnavailable(ProviderError):
    """The provider type is unknown or its optional dependency is not installed."""


class SourceUnavailable(ProviderError, NotImplementedError):
    """This kind of source is not part of this build yet; the message names the issue that adds it."""


def provider_factory(type_name: str) -> Callable[[str, Any], Provider]:
    """The class (or callable) that builds a provider of ``type_name``."""
    for extra in EXTRAS.get(type_name, ()):
        if importlib.util.find_spec(extra.module) is None:
            raise ProviderUnavailable(
                f"provider type {type_name} needs {extra.package}: pip install 'hvmigrate[{extra.extra}]'"
            )
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == type_name:
            try:
                return entry_point.load()
            except ImportError as exc:
                raise ProviderUnavailable(
                    f"provider type {type_name} ({entry_point.value}) cannot be "
                    f"loaded: {exc}; reinstall the package that provides it"
                ) from None
    target = BUILTIN_PROVIDERS.get(type_name)
    if target is None:
        known = ", ".join(sorted({*BUILTIN_PROVIDERS, *_entry_point_names()}))
        raise ProviderUnavailable(
            f"unknown provider type {type_name!r}; known types: {known} (a plugin "
            f"registers more in the entry-point group {ENTRY_POINT_GROUP})"
        )
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ProviderUnavailable(
                f"provider type {type_name} is not part of this build yet ({module_name} is missing)"
            ) from None
        raise
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ProviderUnavailable(
            f"provider type {type_name} is not part of this build yet ({module_name} has no {attribute})"
        )
    return factory


def open_provider(name: str, config: Any, *, base_dir: Path | None = None) -> Provider:
    """Build the provider ``name`` of the playbook from its config.

    Relative paths in the config (the sim's ``root``) resolve from ``base_dir``, the playbook's folder,
    so a playbook behaves the same from whatever directory it is run.
    """
    factory = provider_factory(config.type)
    return factory(name, _resolve_paths(config, base_dir, ("root",)))


def open_source(server: Server, providers: Mapping[str, Provider], *, base_dir: Path | None = None) -> Source:
    """The `Source` that reads ``server``'s disks."""
    config = server.source
    if isinstance(config, ImageSourceConfig):
        from providers.sim.image_source import ImageSource

        resolved = _resolve_paths(config, base_dir, ("path",))
        if base_dir is not None:
            extra = [p if Path(p).expanduser().is_absolute() else base_dir / p for p in config.extra_disks]
            resolved = resolved.model_copy(update={"extra_disks": extra})
        return ImageSource(server.name, resolved)
    if isinstance(config, SshSourceConfig):
        from providers.linux import SshSource

        # a key or known_hosts file beside the playbook is found from wherever migrate runs
        resolved = _resolve_paths(config, base_dir, ("key", "known_hosts"))
        disks = [disk.source for disk in server.target.disks] if server.target is not None else []
        return SshSource(server.name, resolved, disks)  # a data-only server has no disks to map
    if isinstance(config, WinrmSourceConfig):
        from providers.windows import WinrmSource

        resolved = _resolve_paths(config, base_dir, ("ca_bundle",))
        return WinrmSource(server.name, resolved, [disk.source for disk in server.target.disks])
    if config.type in SOURCE_ISSUES:
        raise SourceUnavailable(f"server {server.name}: {SOURCE_ISSUES[config.type]}")
    if config.type == "vm":
        provider = providers.get(config.provider)
        if provider is None:
            known = ", ".join(providers) or "none"
            raise ProviderError(
                f"server {server.name}: source provider {config.provider!r} is not in the "
                f"playbook's providers (it has: {known})"
            )
        opener = getattr(provider, "open_vm_source", None)
        if opener is None:
            raise SourceUnavailable(
                f"server {server.name}: reading VM {config.vm} from a {provider.type} "
                f"provider is added by the {provider.type} provider's issue (its "
                "open_vm_source); for now give the server as an image"
            )
        return opener(server.name, config.vm, config)
    raise SourceUnavailable(f"server {server.name}: source type {config.type} is not supported")


def _resolve_paths(config: Any, base_dir: Path | None, fields: tuple[str, ...]) -> Any:
    if base_dir is None:
        return config
    update = {}
    for field in fields:
        value = getattr(config, field, None)
        if value is not None and not Path(value).expanduser().is_absolute():
            update[field] = Path(base_dir) / value
    return config.model_copy(update=update) if update else config


def _entry_point_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
