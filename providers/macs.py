"""MAC addresses of target VMs: one way to read, generate and check them for every provider.

A generated MAC must be known before the VM exists (staging pins interface names to it) and the same
again on a re-run, so it comes from the VM name, not from the hypervisor. A MAC already used on the same
network would break both VMs, so it is refused there, never silently shared.
"""

from __future__ import annotations

import hashlib
import re

from providers.base import ProviderError

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
QEMU_PREFIX = "52:54:00"


def normalized_mac(vm: str, mac: str, example: str = "52:54:00:12:34:56") -> str:
    """``mac`` lower case with colons; a ProviderError naming the VM when it is no MAC address."""
    result = mac.lower().replace("-", ":")
    if not MAC_RE.match(result):
        raise ProviderError(f"VM {vm}: {mac!r} is not a MAC address like {example}")
    return result


def assign_mac(
    vm: str, index: int, requested: str | None, network: str, in_use: dict[tuple[str, str], str]
) -> str:
    """The MAC of NIC ``index`` of ``vm`` on ``network``: the one requested, or one generated from the VM
    name (QEMU's prefix); refused when another VM uses it on that network. Records it in ``in_use``."""
    mac = normalized_mac(vm, requested) if requested else _generated(vm, index, in_use, network)
    other = in_use.get((network, mac))
    if other:
        raise ProviderError(
            f"VM {vm}: MAC {mac} is already used by VM {other} on network {network}; "
            "use mac: new or isolate the test network"
        )
    in_use[(network, mac)] = vm
    return mac


def _generated(vm: str, index: int, in_use: dict[tuple[str, str], str], network: str) -> str:
    for attempt in range(256):
        digest = hashlib.sha256(f"{vm}/{index}/{attempt}".encode()).digest()
        mac = f"{QEMU_PREFIX}:" + ":".join(f"{b:02x}" for b in digest[:3])
        if (network, mac) not in in_use:
            return mac
    raise ProviderError(f"VM {vm}: no free generated MAC on network {network}; give one with mac:")
