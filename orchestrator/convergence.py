"""Is a warm migration converging? Judged from the recorded passes, the way an operator would.

A replica is only as fresh as the start of its last pass: anything the source wrote after that moment is
not on the target yet, which is the lag. Passes should shrink towards the source's write rate; when the
last few stop shrinking (or a pass takes as long as the interval between passes) the final delta at
cutover will not get any smaller, and waiting longer buys nothing: NOT_CONVERGING.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_PASSES_KEPT = 50
WINDOW = 3  # incremental passes that must stop shrinking before we call it
NOISE_BYTES = 8 * 1024**2  # below this a pass is as small as it gets: converged, whatever the trend


@dataclass(frozen=True)
class Convergence:
    lag: float | None  # seconds of source writes not yet on the target
    state: str  # "converged" | "converging" | "NOT_CONVERGING" | "unknown"
    last_bytes: int | None
    last_duration: float | None
    estimated_final_delta: float | None  # seconds a final pass would take if started now

    @property
    def warning(self) -> str | None:
        if self.state != "NOT_CONVERGING":
            return None
        return (
            "NOT_CONVERGING: incremental passes stopped shrinking; the source writes as fast as passes "
            "copy. Cut over in a quiet window, raise the bandwidth limit, or quiesce the busy service."
        )


def record_pass(
    history: Sequence[Mapping[str, Any]] | None, entry: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The pass history with one more pass, bounded so a months-long warm migration stays small."""
    passes = [dict(p) for p in history or []]
    passes.append(dict(entry))
    return passes[-MAX_PASSES_KEPT:]


def assess(passes: Sequence[Mapping[str, Any]], *, interval: float, now: float | None = None) -> Convergence:
    if not passes:
        return Convergence(None, "unknown", None, None, None)
    now = time.time() if now is None else now
    last = passes[-1]
    lag = max(0.0, now - float(last["started_at"]))
    incremental = [p for p in passes if p.get("mode") != "full"]
    last_bytes = int(last.get("bytes_written", 0))
    duration = float(last.get("duration", 0.0))
    estimate = _final_delta_seconds(passes, lag)
    if len(incremental) < 2:
        state = "unknown" if not incremental else ("converged" if last_bytes <= NOISE_BYTES else "converging")
    elif last_bytes <= NOISE_BYTES:
        state = "converged"
    else:
        recent = [int(p.get("bytes_written", 0)) for p in incremental[-WINDOW:]]
        shrinking = any(b < a for a, b in itertools.pairwise(recent))
        too_slow = duration >= interval > 0
        state = "NOT_CONVERGING" if (len(recent) >= WINDOW and not shrinking) or too_slow else "converging"
    return Convergence(lag, state, last_bytes, duration, estimate)


def _final_delta_seconds(passes: Sequence[Mapping[str, Any]], lag: float) -> float | None:
    """Bytes the source wrote since the last pass began (at its write rate), at the rate passes copy."""
    last = passes[-1]
    duration = float(last.get("duration", 0.0))
    if len(passes) < 2 or duration <= 0:
        return duration or None
    written = int(last.get("bytes_written", 0))
    since_previous = float(last["started_at"]) - float(passes[-2]["started_at"])
    if written == 0 or since_previous <= 0:
        return 0.0
    change_rate, copy_rate = written / since_previous, written / duration
    return change_rate * lag / copy_rate
