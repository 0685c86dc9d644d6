"""Step kinds, one module each; `step_for` maps a plan node's kind to its implementation."""

from __future__ import annotations

from functools import cache

from orchestrator.steps.base import Step


@cache
def registry() -> dict[str, type[Step]]:
    # Imported here, not at module load, so the planner and simulator never import the data plane.
    from orchestrator.steps.appliance import ProvisionAppliance, ReleaseAppliance
    from orchestrator.steps.cutover import Barrier, CutoverGate, QuiesceSource, ShutdownSource
    from orchestrator.steps.discover import DiscoverSource
    from orchestrator.steps.disks import AttachDisks, CreateDisks, DetachDisks
    from orchestrator.steps.dns_check import CheckDns
    from orchestrator.steps.dns_update import UpdateDns
    from orchestrator.steps.files import DrainReplication, FinalFilesPass, MirrorFiles, SyncFiles
    from orchestrator.steps.guest import RemapNics, StageSystemState
    from orchestrator.steps.mirror import FinalSync, Mirror, Sync
    from orchestrator.steps.replica import CreateReplica, PowerOnReplica, VerifyReplica
    from orchestrator.steps.scripts import RunPostScript, RunPreScript
    from orchestrator.steps.test_copy import (
        CloneTestDisks,
        CreateTestCopy,
        PowerOnTestCopy,
        StageTestCopy,
        VerifyTestCopy,
    )
    from orchestrator.steps.validate import ValidateServer

    kinds = [
        ValidateServer,
        DiscoverSource,
        ProvisionAppliance,
        CreateDisks,
        AttachDisks,
        Mirror,
        Sync,
        StageSystemState,
        RemapNics,
        CutoverGate,
        CheckDns,
        RunPreScript,
        QuiesceSource,
        FinalSync,
        ShutdownSource,
        DetachDisks,
        CreateReplica,
        PowerOnReplica,
        VerifyReplica,
        UpdateDns,
        RunPostScript,
        ReleaseAppliance,
        Barrier,
        CloneTestDisks,
        StageTestCopy,
        CreateTestCopy,
        PowerOnTestCopy,
        VerifyTestCopy,
        MirrorFiles,
        SyncFiles,
        DrainReplication,
        FinalFilesPass,
    ]
    return {k.kind: k for k in kinds}


def step_for(kind: str) -> Step:
    try:
        return registry()[kind]()
    except KeyError:
        raise KeyError(f"no step implementation for kind {kind!r}") from None
