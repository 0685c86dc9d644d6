"""A VM on a sim host as the source of a migration (``source: {type: vm, provider: <sim>, vm: NAME}``).

Sim to sim is what lets the tests see the one thing a cutover does to a running source, stopping it, and
the one thing `migrate undo` gives back after a failed cutover, starting it again, as a power state on a
host rather than as a no-op on an image file. The VM's disks are sparse files on the sim host, so they
are read exactly as image sources are: opened read-only, never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.playbook.models import ImageSource as ImageSourceConfig
from providers.base import ProviderError

from .image_source import ImageSource

if TYPE_CHECKING:
    from .provider import SimProvider


class SimVmSource(ImageSource):
    """Reads the VM's disk files (named by file name, ``<disk>.raw``); shutdown and start power it."""

    def __init__(self, name: str, provider: SimProvider, vm: str) -> None:
        self.name = name
        ref = provider.find_vm(vm)
        if ref is None:
            raise ProviderError(
                f"server {name}: source VM {vm} does not exist on sim provider {provider.name}; "
                "check source.vm"
            )
        doc = provider.vm_details(ref)
        paths = [Path(disk["path"]) for disk in doc["disks"]]
        if not paths:
            raise ProviderError(f"server {name}: source VM {vm} has no disks to migrate")
        config = ImageSourceConfig(
            type="image", path=paths[0], extra_disks=paths[1:], firmware=doc["firmware"]
        )
        super().__init__(name, config)
        self.provider = provider
        self.vm = ref
        self.host = f"{provider.name}/{doc['host']}"

    def __repr__(self) -> str:
        vm = getattr(self, "vm", None)
        return f"SimVmSource({self.name!r}, {vm.provider + '/' + vm.name if vm else '?'})"

    def is_running(self) -> bool:
        return self.provider.vm_details(self.vm)["power"] == "on"

    def shutdown(self, timeout: float, force: bool) -> None:
        """The sim has no guest to ask: a clean shutdown and a forced one are the same instant stop."""
        self.provider.power_off(self.vm, force=force)

    def start(self) -> None:
        self.provider.power_on(self.vm)
