"""Convergence verdicts from pass histories, as a warm migration would produce them."""

from __future__ import annotations

from orchestrator.convergence import MAX_PASSES_KEPT, NOISE_BYTES, assess, record_pass

MiB = 1024**2


def passes(*sizes: int, every: float = 3600.0, duration: float = 60.0) -> list[dict]:
    history = [{"mode": "full", "started_at": 0.0, "bytes_written": 50 * 1024 * MiB, "duration": 1800.0}]
    for i, size in enumerate(sizes, start=1):
        history.append({"mode": "sync", "started_at": i * every, "bytes_written": size, "duration": duration})
    return history


def test_shrinking_passes_are_converging_and_tiny_ones_converged() -> None:
    assert assess(passes(900 * MiB, 400 * MiB, 200 * MiB), interval=3600).state == "converging"
    assert assess(passes(900 * MiB, 400 * MiB, NOISE_BYTES // 2), interval=3600).state == "converged"


def test_passes_that_stop_shrinking_are_not_converging_with_a_warning() -> None:
    verdict = assess(passes(300 * MiB, 300 * MiB, 320 * MiB), interval=3600)
    assert verdict.state == "NOT_CONVERGING"
    assert verdict.warning and "quiet window" in verdict.warning


def test_a_pass_as_long_as_the_interval_is_not_converging() -> None:
    assert assess(passes(900 * MiB, 800 * MiB, duration=4000), interval=3600).state == "NOT_CONVERGING"


def test_lag_counts_from_the_start_of_the_last_pass() -> None:
    history = passes(900 * MiB, 400 * MiB)
    verdict = assess(history, interval=3600, now=2 * 3600 + 100)
    assert verdict.lag == 100
    # 400 MiB written in the hour before; 100 s of that rate copied at 400 MiB / 60 s.
    assert abs(verdict.estimated_final_delta - (400 * MiB / 3600 * 100) / (400 * MiB / 60)) < 1e-6


def test_no_passes_is_unknown_and_history_is_bounded() -> None:
    assert assess([], interval=3600).state == "unknown"
    history: list[dict] = []
    for i in range(MAX_PASSES_KEPT + 10):
        history = record_pass(history, {"mode": "sync", "started_at": i, "bytes_written": 1, "duration": 1})
    assert len(history) == MAX_PASSES_KEPT and history[-1]["started_at"] == MAX_PASSES_KEPT + 9
