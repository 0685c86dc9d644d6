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

import contextlib
import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any

from orchestrator.transport import HostKeyError, TransportError
from orchestrator.transport.ssh import SshTransport
from providers.appliance_guest import answers_ssh, in_appliance, parse_slot
from providers.base import ProviderError, TransientProviderError

if TYPE_CHECKING:
    from orchestrator.playbook.models import EsxApplianceLogin

    from .provider import EsxProvider

POLL = 1.0


class ApplianceAccess:
    """SSH logins to the provider's appliances (one connection each, kept) and what runs through them."""

    def __init__(self, provider: EsxProvider) -> None:
        self.p = provider
        self._lock = threading.Lock()
        self._transports: dict[str, tuple[str, SshTransport]] = {}  # appliance -> (address, login)

    @property
    def login_config(self) -> EsxApplianceLogin:
        login = self.p.config.appliance_login
        if login is None:
            raise ProviderError(
                f"provider {self.p.name} has no appliance_login: the writer runs inside the recovery "
                "appliance over SSH; set appliance_login (user, key, host_key or known_hosts)"
            )
        return login

    @property
    def configured(self) -> bool:
        return self.p.config.appliance_login is not None

    def map_path(self, vmdk: str) -> str:
        """Where the mirror keeps the block map of the VMDK at datastore path ``vmdk``, in the appliance."""
        digest = hashlib.sha256(vmdk.encode()).hexdigest()[:20]
        return f"{self.login_config.maps_dir.rstrip('/')}/{digest}.hvmap"

    # ------------------------------------------------------------ logging in

    def login(self, name: str) -> SshTransport:
        """The appliance's SSH login, once Tools report its address and its checked host key answers."""
        login = self.login_config
        deadline = time.monotonic() + float(login.boot_timeout)
        last = "VMware Tools report no address yet"
        while True:
            address = self.tools_address(name)
            if address:
                with self._lock:
                    cached = self._transports.get(name)
                if cached and cached[0] == address:
                    return cached[1]
                if answers_ssh(address, login.port):
                    transport = self._transport(address)
                    try:
                        transport.connect()
                    except HostKeyError as exc:
                        transport.close()
                        raise ProviderError(
                            f"appliance {name}: {exc} (another machine may hold its address {address}); "
                            "fix appliance_login.host_key or known_hosts"
                        ) from None
                    except TransportError as exc:
                        transport.close()
                        last = str(exc)
                    else:
                        self._keep(name, address, transport)
                        return transport
                else:
                    last = f"Tools report {address}, but nothing answers SSH on port {login.port} there"
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"appliance {name} did not let the provider in over SSH within "
                    f"{float(login.boot_timeout):.0f} s ({last}); check that it runs, that VMware Tools "
                    "and sshd run in it, and appliance_login"
                )
            time.sleep(POLL)

    def login_now(self, name: str) -> SshTransport | None:
        """The login if it can be had at once (no waiting for a boot), else None."""
        if not self.configured:
            return None
        with self._lock:
            cached = self._transports.get(name)
        if cached is not None:
            return cached[1]
        address = self.tools_address(name)
        if not address or not answers_ssh(address, self.login_config.port):
            return None
        transport = self._transport(address)
        try:
            transport.connect()
        except TransportError:
            transport.close()
            return None
        self._keep(name, address, transport)
        return transport

    def tools_address(self, name: str) -> str | None:
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

    def _transport(self, address: str) -> SshTransport:
        login = self.login_config
        return SshTransport(
            address,
            port=login.port,
            user=login.user,
            key_file=login.key,
            password=login.password,
            known_hosts=login.known_hosts,
            host_key=login.host_key,
            insecure=False,
            sudo=login.sudo,
        )

    def _keep(self, name: str, address: str, transport: SshTransport) -> None:
        with self._lock:
            old = self._transports.pop(name, None)
            self._transports[name] = (address, transport)
        if old is not None and old[1] is not transport:
            old[1].close()

    def forget(self, name: str) -> None:
        with self._lock:
            old = self._transports.pop(name, None)
        if old is not None:
            old[1].close()

    def close(self) -> None:
        for name in list(self._transports):
            self.forget(name)

    # ------------------------------------------------------------ devices and maps

    def sweep_maps(self, transport: SshTransport, vmdk: str) -> None:
        """Remove the block map of earlier attachments of ``vmdk``: called right before the hot-add."""
        in_appliance(transport, {"stale_maps": self.map_path(vmdk)})

    def device(self, transport: SshTransport, name: str, slot: str, size: int, vmdk: str) -> str:
        """The appliance's device for the disk at ``slot``, once it shows and measures ``size`` bytes;
        the folder of its block map is made ready."""
        login = self.login_config
        where = self._where(slot)
        seen = in_appliance(
            transport, {**where, "timeout": float(login.device_timeout), "map": self.map_path(vmdk)}
        )
        what = where.get("path") or f"the disk at {slot}"
        if seen.get("missing"):
            raise TransientProviderError(
                f"appliance {name} holds {vmdk} at {slot}, but {what} did not show in it within "
                f"{float(login.device_timeout):.0f} s; run again, or rescan its SCSI bus (echo '- - -' > "
                "/sys/class/scsi_host/hostN/scan)"
            )
        if seen.get("size") != size:
            raise ProviderError(
                f"{what} in appliance {name} holds {seen.get('size')} bytes, but {vmdk} at {slot} is {size}; "
                "the device found is not that disk: check the appliance's controllers"
                + (" and appliance_login.guest_devices" if "path" in where else "")
            )
        return str(seen.get("path") or seen["device"])

    def flush(self, name: str, slot: str) -> None:
        """Best effort before a hot-remove: every pass was made durable by the writer already."""
        transport = self.login_now(name)
        if transport is None:
            return
        with contextlib.suppress(ProviderError, TransportError):
            in_appliance(transport, {**self._where(slot), "timeout": 0, "flush": True})

    def _where(self, slot: str) -> dict[str, Any]:
        given = self.login_config.guest_devices.get(slot)
        return {"path": given} if given else {"slot": parse_slot(slot)}
