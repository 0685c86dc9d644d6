"""vSphere tasks waited for with a deadline, and their faults turned into one-line errors.

A task that is still running when the deadline passes is *not* cancelled: CreateVM or CopyVirtualDisk may
be half done, and the caller's idempotent find decides on the next run. The error says so.
"""

from __future__ import annotations

import time
from typing import Any

from pyVmomi import vim, vmodl

from providers.base import NotFound, ProviderError, TransientProviderError

POLL_FIRST = 0.05
POLL_MAX = 1.0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fault_text(fault: Any) -> str:
    message = getattr(fault, "msg", None) or ""
    if not message:
        for item in getattr(fault, "faultMessage", None) or ():
            if getattr(item, "message", None):
                message = item.message
                break
    return _one_line(message or type(fault).__name__.rsplit(".", 1)[-1])


def fault_error(fault: Any, what: str) -> ProviderError:
    """The ProviderError for a vSphere fault raised while doing ``what``; names what to do next."""
    detail = _fault_text(fault)
    if isinstance(fault, vim.fault.NotAuthenticated):
        return TransientProviderError(f"{what}: the session is no longer valid ({detail}); run again")
    if isinstance(fault, vim.fault.NoPermission):
        privilege = getattr(fault, "privilegeId", None) or "a privilege"
        return ProviderError(
            f"{what}: permission denied, the user lacks {privilege}; grant it to the provider's user "
            "in vCenter (Administration > Roles) or use another user"
        )
    if isinstance(fault, (vim.fault.InsufficientStorageSpace, vim.fault.NoDiskSpace)) or (
        isinstance(fault, vim.fault.FileFault) and "space" in detail.lower()
    ):
        datastore = getattr(fault, "datastore", None) or ""
        where = f" on datastore {datastore}" if isinstance(datastore, str) and datastore else ""
        return ProviderError(
            f"{what}: not enough free space{where} ({detail}); free space or choose another datastore"
        )
    if isinstance(fault, (vim.fault.DuplicateName, vim.fault.FileAlreadyExists, vim.fault.AlreadyExists)):
        return ProviderError(f"{what}: the name is already in use ({detail}); choose another name")
    if isinstance(fault, vim.fault.TaskInProgress):
        return TransientProviderError(f"{what}: the object is busy with another task ({detail}); run again")
    if isinstance(fault, (vim.fault.InvalidState, vim.fault.InvalidPowerState)):
        return ProviderError(f"{what}: not possible in the object's current state ({detail})")
    if isinstance(fault, (vim.fault.FileNotFound, vmodl.fault.ManagedObjectNotFound)):
        return NotFound(f"{what}: it does not exist (any more) ({detail})")
    if isinstance(fault, (vmodl.fault.NotSupported, vim.fault.NotSupportedHost)):
        return ProviderError(f"{what}: not supported by this vSphere endpoint ({detail})")
    if isinstance(fault, vmodl.fault.NotImplemented):
        return ProviderError(f"{what}: not implemented by this vSphere endpoint ({detail})")
    if isinstance(fault, vmodl.fault.InvalidArgument):
        prop = getattr(fault, "invalidProperty", None)
        return ProviderError(f"{what}: vSphere refused an argument{f' ({prop})' if prop else ''}: {detail}")
    return ProviderError(f"{what}: {detail}")


def wait_for(connection: Any, task: vim.Task, what: str, timeout: float) -> Any:
    """The task's result once it succeeded; a ProviderError naming ``what`` when it failed or overran."""
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST
    while True:
        info = connection.call(lambda: _task_state(connection, task), f"watching the task of {what}")
        state = info.get("info.state")
        if state == vim.TaskInfo.State.success:
            return info.get("info.result")
        if state == vim.TaskInfo.State.error:
            raise fault_error(info.get("info.error"), what)
        if time.monotonic() > deadline:
            raise TransientProviderError(
                f"{what}: the vSphere task {task._moId} did not finish within {timeout:.0f} s (it goes on "
                "in vCenter; a re-run finds what it made); raise task_timeout if it is slow but sound"
            )
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX)


def _task_state(connection: Any, task: vim.Task) -> dict[str, Any]:
    """State, error and result of a task, read property by path: reading ``task.info`` whole fails in
    pyVmomi when the task's entity is no ManagedEntity (vcsim's VirtualDiskManager tasks)."""
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.Task, pathSet=["info.state", "info.error", "info.result"], all=False
            )
        ],
    )
    found = connection.content.propertyCollector.RetrieveContents([spec])
    return {p.name: p.val for item in found or () for p in item.propSet or ()}


def run_task(connection: Any, start: Any, what: str, timeout: float) -> Any:
    """Start a task with ``start()`` and wait for it."""
    task = connection.call(start, what)
    return wait_for(connection, task, what, timeout)
