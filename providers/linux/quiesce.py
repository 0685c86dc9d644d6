"""Consistency hooks for the final pass of a running Linux source: pause its writes, then undo exactly that.

Each action is written into the state *before* it is attempted, so a thaw after a failure halfway undoes
the half-done action too, and every undo tolerates "was never done" (``fsfreeze -u`` of a filesystem that is
not frozen, ``lvremove`` of a snapshot that does not exist, ``thaw_command``, which must be idempotent).
A failed quiesce thaws what it did before it raises, so it either pauses everything or nothing. A thaw
tries every item, keeps the ones that failed for the next try, and reports them all in one message.

The state is JSON (``QuiesceState.to_json``) so the step that quiesced can journal it and a thaw after an
orchestrator restart undoes what was recorded. Without a state, thaw looks at the host instead: it thaws
every filesystem quiesce would have frozen, removes our snapshots (found with ``lvs`` by name), and starts
the listed services that are not running (which cannot tell "we stopped it" from "it was already
stopped": with a record, only what quiesce stopped is started).

fsfreeze leaves live the filesystems that hold /, /etc, /usr, /var, /tmp, /run or the login's home. With
one of those frozen, the next write on the host blocks until someone thaws it: sudo's timestamp, sshd's and
journald's logs, a shell's history; the thaw itself would then hang behind the very freeze it must lift,
and the source would stay frozen with nobody able to log in. Those filesystems are read crash-consistent
(as after a power cut, which their journals recover from); for application consistency on them, stop the
applications (quiesce: services, or quiesce_command) or read an LVM snapshot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.playbook.models import SshSource as SshSourceConfig
from orchestrator.playbook.units import format_size
from providers.base import ProviderError

from .facts import mounted_filesystems
from .lvm import Lvm, LvmSnapshotPlan
from .services import Services
from .shell import RemoteShell

log = logging.getLogger(__name__)

USER_COMMAND_TIMEOUT = 600.0
FREEZE_TIMEOUT = 120.0  # fsfreeze -f writes out every dirty page first
SYSTEM_PATHS = ("/", "/etc", "/usr", "/var", "/var/log", "/var/lib", "/tmp", "/var/tmp", "/run")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9@_.:\\-]+$")
UNSUPPORTED = ("Operation not supported", "Inappropriate ioctl")

# (found, disk names): the agent's discovery with the source disks described under ``paths``
Discover = Callable[[], tuple[Mapping[str, Any], list[str]]]


@dataclass
class QuiesceState:
    """What quiesce did (``actions``, in order) and what it left live on purpose (``live``, why)."""

    actions: list[dict[str, Any]] = field(default_factory=list)
    live: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "actions": [dict(a) for a in self.actions], "live": list(self.live)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuiesceState:
        return cls([dict(a) for a in data.get("actions", ())], list(data.get("live", ())))

    def snapshots(self) -> dict[str, str]:
        """Source disk -> the snapshot device reads go to while it exists."""
        return {a["disk"]: a["path"] for a in self.actions if a["kind"] == "snapshot" and a.get("created")}


class Quiescer:
    """Pauses and resumes writes on one source host as its playbook entry says."""

    def __init__(
        self, shell: RemoteShell, config: SshSourceConfig, *, server: str, discover: Discover
    ) -> None:
        self.shell = shell
        self.config = config
        self.server = server
        self.discover = discover
        self.lvm = Lvm(shell)

    # ------------------------------------------------------------ quiesce

    def quiesce(self, state: QuiesceState) -> None:
        """Pause writes, recording each action in ``state`` as it starts; on any failure thaw what was
        done (``state`` then keeps only what could not be thawed) and raise with both stories."""
        try:
            act = self._prepare(state)  # everything that can be checked is checked before anything changes
            if self.config.quiesce_command or self.config.thaw_command:
                state.actions.append({"kind": "command"})
            if self.config.quiesce_command:
                self.shell.check(
                    ["sh", "-c", self.config.quiesce_command], "quiesce_command", timeout=USER_COMMAND_TIMEOUT
                )
            act()
        except Exception as exc:
            started = bool(state.actions)
            failures = self.undo(state)
            if failures:
                after = f"; thawing what it had paused also failed: {'; '.join(failures)}"
            else:
                after = "; what it had paused was thawed again" if started else "; nothing was paused"
            raise ProviderError(
                f"server {self.server}: quiesce on {self.shell.where} failed: {exc}{after}"
            ) from exc
        for note in state.live:
            log.warning("server %s: %s", self.server, note)

    def _prepare(self, state: QuiesceState) -> Callable[[], None]:
        mode = self.config.quiesce
        if mode == "services":
            return self._prepare_services(state)
        if mode == "fsfreeze":
            return self._prepare_freeze(state)
        if mode == "lvm_snapshot":
            return self._prepare_snapshots(state)
        return lambda: None

    def _prepare_services(self, state: QuiesceState) -> Callable[[], None]:
        bad = [name for name in self.config.services if not SERVICE_NAME_RE.match(name)]
        if bad:
            raise ProviderError(f"{bad[0]!r} is not a service name; fix services")
        services = Services.detect(self.shell)
        states = [services.state(name) for name in self.config.services]
        missing = [s.name for s in states if not s.exists]
        if missing:
            raise ProviderError(
                f"service {', '.join(missing)} does not exist on {self.shell.where} ({services.manager}); "
                "fix services"
            )
        if not states:
            state.live.append("quiesce is services but no services are listed: nothing was stopped")

        def act() -> None:
            for service in states:
                if not service.active:
                    state.live.append(f"service {service.name} was not running: left alone")
                    continue
                state.actions.append({"kind": "service", "name": service.name, "manager": services.manager})
                services.stop(service.name)
            # What they wrote last may still be dirty in the page cache: the final pass reads the disk.
            self.shell.check(["sync"], "sync after stopping the services", timeout=FREEZE_TIMEOUT)

        return act

    def _prepare_freeze(self, state: QuiesceState) -> Callable[[], None]:
        targets = self.freeze_targets(state)

        def act() -> None:
            for device, mountpoint in targets:
                action = {"kind": "freeze", "device": device, "mountpoint": mountpoint}
                state.actions.append(action)
                result = self.shell.run(["fsfreeze", "--freeze", mountpoint], timeout=FREEZE_TIMEOUT)
                if result.ok:
                    continue
                if any(text in result.stderr for text in UNSUPPORTED):
                    state.actions.remove(action)
                    state.live.append(
                        f"{device} on {mountpoint} cannot be frozen (its filesystem does not "
                        "support it): read live"
                    )
                    continue
                raise ProviderError(f"fsfreeze --freeze {mountpoint} failed: {result.reason()}")

        return act

    def freeze_targets(self, state: QuiesceState) -> list[tuple[str, str]]:
        """(device, mountpoint) of every filesystem on the source disks that is safe to freeze."""
        found, names = self.discover()
        mounted = mounted_filesystems(found, names)
        if not mounted:
            state.live.append("no filesystem of the source disks is mounted: nothing to freeze")
            return []
        protected = self._system_devices([m for mount in mounted for m in mount["mountpoints"]])
        targets = []
        for mount in mounted:
            holds = sorted({protected[m] for m in mount["mountpoints"] if m in protected})
            if holds:
                state.live.append(
                    f"{mount['device']} holds {', '.join(holds)}: left live (freezing it could hang the "
                    "SSH session and the thaw itself); read crash-consistent"
                )
                continue
            targets.append((mount["device"], mount["mountpoints"][0]))
        return targets

    def _system_devices(self, mountpoints: list[str]) -> dict[str, str]:
        """Mountpoint -> the system path it shares a filesystem with, for the mountpoints that do."""
        home = self.shell.run(["sh", "-c", 'printf %s "$HOME"'], privileged=False).stdout.strip()
        system = [*SYSTEM_PATHS, *([home] if home.startswith("/") else [])]
        # stat reports what exists and complains about the rest (a missing /var/tmp): its status is ignored
        listing = self.shell.run(["stat", "-L", "-c", "%d %n", "--", *system, *mountpoints]).stdout
        devices: dict[str, str] = {}
        for line in listing.splitlines():
            number, _, name = line.partition(" ")
            devices.setdefault(name, number)
        by_device: dict[str, str] = {}
        for path in system:
            if path in devices:
                by_device.setdefault(devices[path], path)
        return {m: by_device[devices[m]] for m in mountpoints if devices.get(m) in by_device}

    def _prepare_snapshots(self, state: QuiesceState) -> Callable[[], None]:
        _, names = self.discover()
        plans: list[LvmSnapshotPlan] = []
        reasons = []
        for name in names:
            plan, reason = self.lvm.plan(name, self.config.snapshot_size)
            if plan is None:
                reasons.append(f"{name}: {reason}")
            else:
                plans.append(plan)
        if not plans:
            raise ProviderError(
                "quiesce is lvm_snapshot but no source disk is an LVM logical volume ("
                + "; ".join(reasons)
                + "); choose fsfreeze, services or a quiesce_command"
            )
        state.live.extend(f"{reason}: read live" for reason in reasons)
        self.lvm.check_space(plans)

        def act() -> None:
            for plan in plans:
                action = {
                    "kind": "snapshot",
                    "disk": plan.disk,
                    "vg": plan.vg,
                    "lv": plan.lv,
                    "name": plan.snapshot,
                    "path": plan.path,
                }
                state.actions.append(action)
                if self.lvm.remove_ours(plan.vg, plan.lv, plan.snapshot):
                    state.live.append(f"removed {plan.vg}/{plan.snapshot} left by an interrupted run")
                self.lvm.create(plan)
                action["created"] = True
                log.info(
                    "server %s: reading %s from snapshot %s (%s of copy-on-write space)",
                    self.server,
                    plan.disk,
                    plan.path,
                    format_size(plan.size),
                )

        return act

    # ------------------------------------------------------------ thaw

    def assumed_state(self) -> QuiesceState:
        """What quiesce may have done, found by looking at the host: for a thaw without a record."""
        state = QuiesceState()
        if self.config.quiesce_command or self.config.thaw_command:
            state.actions.append({"kind": "command"})
        mode = self.config.quiesce
        if mode == "fsfreeze":
            state.actions += [
                {"kind": "freeze", "device": device, "mountpoint": mountpoint}
                for device, mountpoint in self.freeze_targets(QuiesceState())
            ]
        elif mode == "lvm_snapshot":
            _, names = self.discover()
            for name in names:
                plan, _ = self.lvm.plan(name, self.config.snapshot_size)
                if plan is not None:
                    state.actions.append(
                        {
                            "kind": "snapshot",
                            "disk": name,
                            "vg": plan.vg,
                            "lv": plan.lv,
                            "name": plan.snapshot,
                            "path": plan.path,
                        }
                    )
        elif mode == "services" and self.config.services:
            services = Services.detect(self.shell)
            for name in self.config.services:
                service = services.state(name)
                if service.exists and not service.active:
                    state.actions.append({"kind": "service", "name": name, "manager": services.manager})
        return state

    def undo(self, state: QuiesceState, kinds: Sequence[str] | None = None) -> list[str]:
        """Undo ``state``'s actions (of ``kinds``, default all) newest first; try every one, keep the ones
        that failed in ``state`` and return why each failed."""
        failures: list[str] = []
        kept: list[dict[str, Any]] = []
        for action in reversed(state.actions):
            if kinds is not None and action["kind"] not in kinds:
                kept.append(action)
                continue
            try:
                self._undo_one(action)
            except Exception as exc:
                failures.append(str(exc))
                kept.append(action)
        state.actions = list(reversed(kept))
        return failures

    def _undo_one(self, action: Mapping[str, Any]) -> None:
        kind = action["kind"]
        if kind == "freeze":
            mountpoint = action["mountpoint"]
            result = self.shell.run(["fsfreeze", "--unfreeze", mountpoint], timeout=FREEZE_TIMEOUT)
            if not result.ok and "Invalid argument" not in result.stderr:  # EINVAL: it was not frozen
                raise ProviderError(f"fsfreeze --unfreeze {mountpoint}: {result.reason()}")
        elif kind == "snapshot":
            self.lvm.remove_ours(action["vg"], action["lv"], action["name"])
        elif kind == "service":
            Services(self.shell, action["manager"]).start(action["name"])
        elif kind == "command":
            if self.config.thaw_command:
                self.shell.check(
                    ["sh", "-c", self.config.thaw_command], "thaw_command", timeout=USER_COMMAND_TIMEOUT
                )
        else:
            raise ProviderError(f"unknown quiesce action {kind!r} in the recorded state (a newer version?)")
