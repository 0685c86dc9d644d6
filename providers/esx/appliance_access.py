"""The writer inside an ESX recovery appliance (``disk_writer: appliance``): how the provider reaches it.

The appliance is a Linux VM with VMware Tools, sshd and python3. The provider logs in over SSH at the
address Tools report (``guest.ipAddress``, else the first address in ``guest.net``) with the provider's
``appliance_login``: host-key checking always on (a pinned fingerprint or a known_hosts file), never
learnt on first use. Once in, the shared appliance programs (providers/appliance_guest.py, as on KVM)
find the hot-added VMDK's device by its SCSI ``bus:unit`` (SATA ``sataBUS:UNIT``) in the guest's sysfs,
wait for it, check its size against the VMDK's, flush it before a hot-remove, and keep the mirror's block
map on the appliance's root. The agent's writer then runs there, over the same SSH connection.

A map is named after the VMDK's datastore path; it is swept away just before the disk is hot-added, so a
map outlives neither its attachment nor a write made elsewhere in between (another appliance, a replica
that ran): only a map written by this attachment is trusted.

Test beds: vcsim has no guest. The test sshd plays the appliance at the address vcsim reports as Tools',
and ``guest_devices`` maps each slot to the file standing for the device the guest would see (the VMDK's
``-flat.vmdk`` in vcsim's datastore folder); everything else runs as against a real appliance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from providers.appliance_guest import ApplianceAccess as SharedApplianceAccess
from providers.base import ProviderError

if TYPE_CHECKING:
    from .provider import EsxProvider


class ApplianceAccess(SharedApplianceAccess):
    """The shared SSH access (providers/appliance_guest.py), at the address VMware Tools report."""

    guest_tools = "VMware Tools"
    p: EsxProvider

    def guest_address(self, name: str) -> str | None:
        """What VMware Tools report for the appliance: its primary address, else the first IPv4 (then
        any) address of its NICs."""
        found = self.p.scope.vm(name)
        if found is None:
            raise ProviderError(
                f"appliance {name} does not exist in datacenter {self.p.scope.datacenter_name}; "
                "provision it first"
            )
        vm = found[0]
        guest = self.p.connection.call(lambda: vm.guest, f"reading the guest of appliance {name}")
        if guest is None:
            return None
        if guest.ipAddress:
            return str(guest.ipAddress)
        addresses = [ip for nic in guest.net or () for ip in nic.ipAddress or ()]
        return next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)
