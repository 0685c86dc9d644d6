"""Bandwidth throttle: one token bucket shared by every stream of a source → target pair, with a weekly
schedule of limits (the reference product's "Use scheduled limits": daytime and overnight entries).

``limit_at`` is a pure function of the wall-clock time so the dry-run simulator predicts with the very
rules the mirror obeys. Schedule rules:

* the first window that matches wins; outside every window the base ``limit`` applies (None: unlimited);
* ``days`` names the day a window *starts* on: ``fri 22:00-06:00`` covers Friday 22:00 to Saturday 06:00,
  so Saturday 02:00 matches it and Friday 02:00 does not;
* a window whose start is after its end wraps past midnight; ``00:00-24:00`` is the whole day.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.playbook.models import Bandwidth, BandwidthWindow, day_set, hour_range

DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class Window:
    """A parsed BandwidthWindow: weekdays (Monday 0) and minutes since midnight."""

    days: frozenset[int]
    start: int
    end: int
    limit: int | None

    @classmethod
    def parse(cls, window: BandwidthWindow) -> Window:
        start, end = hour_range(window.hours)
        return cls(frozenset(day_set(window.days)), start, end, window.limit)

    def matches(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Overnight: the evening part belongs to today, the morning part to the window that began yesterday.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def _windows(schedule: Sequence[BandwidthWindow | Window]) -> tuple[Window, ...]:
    return tuple(w if isinstance(w, Window) else Window.parse(w) for w in schedule)


def limit_at(when: datetime, limit: int | None, schedule: Sequence[BandwidthWindow | Window]) -> int | None:
    """Bytes per second allowed at ``when`` (None: unlimited). Pure: same inputs, same answer."""
    for window in _windows(schedule):
        if window.matches(when):
            return window.limit
    return limit


def next_change(when: datetime, schedule: Sequence[BandwidthWindow | Window]) -> datetime | None:
    """The next minute boundary after ``when`` at which some window opens or closes (None: no schedule).

    The simulator steps from one boundary to the next and applies ``limit_at`` in between; the limit may
    be the same on both sides of a boundary, which only costs it a step.
    """
    windows = _windows(schedule)
    if not windows:
        return None
    midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
    best: datetime | None = None
    for window in windows:
        for day_offset in range(-1, 9):
            day = midnight + timedelta(days=day_offset)
            if day.weekday() not in window.days:
                continue
            end_offset = window.end if window.start < window.end else window.end + DAY_MINUTES
            for minute in (window.start, end_offset):
                moment = day + timedelta(minutes=minute)
                if moment > when and (best is None or moment < best):
                    best = moment
    return best


class Throttle:
    """Token bucket shared across threads; ``acquire(n)`` returns once n bytes may be sent.

    The bucket may go into debt: a 4 MiB chunk under a 1 MiB/s limit is sent at once and the *next*
    acquirers wait the 4 s it costs, so chunks larger than the burst work and the long-run rate is exact
    across any number of threads. ``clock``, ``sleep`` and ``now`` are injectable so that tests check the
    arithmetic with a fake clock instead of sleeping.
    """

    def __init__(
        self,
        limit: int | None = None,
        schedule: Sequence[BandwidthWindow | Window] = (),
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        if burst <= 0:
            raise ValueError("burst must be positive (seconds of traffic the bucket may hold)")
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._burst = burst
        self._rate: int | None = None
        self._tokens = 0.0
        self._last = clock()
        self.waited = 0.0  # total seconds callers were held back, for reports
        self.configure(limit, schedule)

    @classmethod
    def from_options(cls, bandwidth: Bandwidth, **kwargs: object) -> Throttle:
        return cls(bandwidth.limit, bandwidth.schedule, **kwargs)  # type: ignore[arg-type]

    def configure(self, limit: int | None, schedule: Sequence[BandwidthWindow | Window] = ()) -> None:
        """Change the limits while streams run (a runtime override, or back to the schedule)."""
        if limit is not None and limit <= 0:
            raise ValueError("a bandwidth limit must be positive; use None for unlimited")
        windows = _windows(schedule)
        with self._lock:
            self.limit = limit
            self.windows = windows

    def limit_at(self, when: datetime) -> int | None:
        return limit_at(when, self.limit, self.windows)

    def acquire(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket, sleeping as long as the current limit needs; returns the wait."""
        with self._lock:
            now = self._clock()
            rate = self.limit_at(self._now())
            elapsed = max(0.0, now - self._last)
            self._last = now
            if rate is None:
                self._rate = None
                return 0.0
            capacity = rate * self._burst
            if self._rate is None:
                self._tokens = capacity  # coming from unlimited (or the first call): a full bucket
            else:
                self._tokens = min(capacity, self._tokens + elapsed * rate)
            self._rate = rate
            self._tokens -= nbytes
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
            self.waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait
