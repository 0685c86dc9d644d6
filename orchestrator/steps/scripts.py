"""Pre- and post-cutover scripts: the user's own checks and switches, run on the orchestrator host.

Output is captured into the journal (secrets redacted); a non-zero exit or a timeout fails the step, and a
failed pre-script stops the cutover before the source is touched.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, ClassVar

from orchestrator import audit
from orchestrator.playbook.units import format_duration
from orchestrator.steps.base import Step, StepContext, StepFailed


class _Script(Step):
    which: ClassVar[str]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        cutover = ctx.playbook.cutover_for(ctx.server)
        command = getattr(cutover, self.which)
        env = {
            **os.environ,
            "HVM_SERVER": ctx.server.name,
            "HVM_VM_NAME": ctx.server.vm_name,
            "HVM_PHASE": self.which,
            "HVM_PLAYBOOK": ctx.playbook.name,
        }
        with audit.operation(f"orchestrator host ({self.which}, in {ctx.base_dir})", command) as op:
            try:
                done = subprocess.run(
                    command,
                    shell=True,
                    cwd=ctx.base_dir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=cutover.script_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise StepFailed(
                    f"{self.which} did not finish within {format_duration(cutover.script_timeout)} "
                    "(cutover.script_timeout)"
                ) from None
            output = (done.stdout + done.stderr).strip()
            op.exited(done.returncode, output.splitlines()[-1] if output else None)
        if output:
            ctx.event(f"{self.which} output:\n{output[-4000:]}")
        if done.returncode != 0:
            tail = output.splitlines()[-1] if output else "no output"
            raise StepFailed(f"{self.which} exited with status {done.returncode}: {tail}")
        return {"exit": 0}

    def undo(self, ctx: StepContext) -> None:
        """A script's effects are the user's; nothing to undo here."""


class RunPreScript(_Script):
    kind = "run_pre_script"
    which = "pre_script"
    description = "run cutover.pre_script; a failure stops the cutover with the source untouched"


class RunPostScript(_Script):
    kind = "run_post_script"
    which = "post_script"
    description = "run cutover.post_script once the replica answers and DNS has moved"
