"""Throttle arithmetic with a fake clock (nothing sleeps) and weekly schedule selection."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from orchestrator.mirror.throttle import Throttle, limit_at, next_change
from orchestrator.playbook.models import Bandwidth, BandwidthWindow

# 2024-01-01 is a Monday
MON, TUE, FRI, SAT, SUN = 1, 2, 5, 6, 7


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute)


class FakeTime:
    """A monotonic clock that only moves when someone sleeps (or the test says so)."""

    def __init__(self, frozen: bool = False) -> None:
        self.now = 0.0
        self.frozen = frozen
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if not self.frozen:
                self.now += seconds


def test_steady_rate_costs_exactly_bytes_over_limit() -> None:
    fake = FakeTime()
    throttle = Throttle(1024, clock=fake.clock, sleep=fake.sleep, now=lambda: at(MON, 12))
    for _ in range(10):
        throttle.acquire(4096)
    # the first second's worth rides on the full bucket; the rest waits at exactly 1024 B/s
    assert fake.now == pytest.approx((10 * 4096 - 1024) / 1024)
    assert throttle.waited == pytest.approx(fake.now)


def test_idle_time_refills_the_bucket_up_to_the_burst_only() -> None:
    fake = FakeTime()
    throttle = Throttle(1000, clock=fake.clock, sleep=fake.sleep, now=lambda: at(MON, 12), burst=2.0)
    assert throttle.acquire(2000) == 0.0  # a full 2-second bucket
    assert throttle.acquire(500) == pytest.approx(0.5)
    fake.now += 100.0  # idle for long: the bucket refills to 2000, not to 100000
    assert throttle.acquire(2000) == 0.0
    assert throttle.acquire(1000) == pytest.approx(1.0)


def test_chunk_larger_than_the_bucket_goes_at_once_and_the_next_caller_pays() -> None:
    fake = FakeTime()
    throttle = Throttle(1000, clock=fake.clock, sleep=fake.sleep, now=lambda: at(MON, 12))
    assert throttle.acquire(4000) == pytest.approx(3.0)
    assert throttle.acquire(1000) == pytest.approx(1.0)


def test_threads_share_one_budget() -> None:
    fake = FakeTime(frozen=True)  # time stands still: every byte must be paid for by waiting
    throttle = Throttle(1000, clock=fake.clock, sleep=fake.sleep, now=lambda: at(MON, 12))

    def stream() -> None:
        for _ in range(10):
            throttle.acquire(1000)

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 40 kB at 1 kB/s with a 1 kB bucket: whoever went last waited 39 s; every wait is a whole second
    assert max(fake.sleeps) == pytest.approx(39.0)
    assert sorted(round(s) for s in fake.sleeps) == list(range(1, 40))


def test_unlimited_never_waits_and_schedule_switches_the_rate() -> None:
    fake = FakeTime()
    clock_time = [at(MON, 7, 59)]
    schedule = [BandwidthWindow(days="mon-fri", hours="08:00-18:00", limit=100)]
    throttle = Throttle(None, schedule, clock=fake.clock, sleep=fake.sleep, now=lambda: clock_time[0])
    assert throttle.acquire(10**9) == 0.0  # before 08:00: unlimited
    clock_time[0] = at(MON, 8, 0)
    assert throttle.acquire(100) == 0.0  # the window starts with a full (100-byte) bucket
    assert throttle.acquire(300) == pytest.approx(3.0)
    clock_time[0] = at(MON, 18, 0)
    assert throttle.acquire(10**9) == 0.0


def test_from_options_and_runtime_override() -> None:
    fake = FakeTime()
    options = Bandwidth.model_validate({"limit": "1KiB/s"})
    throttle = Throttle.from_options(options, clock=fake.clock, sleep=fake.sleep, now=lambda: at(MON, 1))
    assert throttle.acquire(1024) == 0.0
    assert throttle.acquire(1024) == pytest.approx(1.0)
    throttle.configure(None)
    assert throttle.acquire(10**9) == 0.0
    with pytest.raises(ValueError, match="positive"):
        throttle.configure(0)


SCHEDULE = [
    BandwidthWindow(days="mon-fri", hours="08:00-18:00", limit=100),
    BandwidthWindow(days="fri", hours="22:00-06:00", limit=50),  # overnight, starting Friday
    BandwidthWindow(days="sat,sun", hours="00:00-24:00", limit=None),  # weekends unlimited
    BandwidthWindow(days="mon-sun", hours="12:00-13:00", limit=7),  # shadowed on weekdays by the first
]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(MON, 9), 100),
        (at(MON, 8, 0), 100),  # start inclusive
        (at(MON, 18, 0), 1000),  # end exclusive: back to the base limit
        (at(MON, 7, 59), 1000),
        (at(MON, 12, 30), 100),  # first matching window wins over the 12:00-13:00 one
        (at(FRI, 23), 50),
        (at(SAT, 3), 50),  # Friday's overnight window wraps past midnight into Saturday
        (at(SAT, 6, 0), None),  # then the weekend window (unlimited)
        (at(FRI, 3), 1000),  # Thursday is not in the overnight window's days
        (at(SUN, 12, 30), None),
    ],
)
def test_limit_at_selects_the_first_matching_window(when: datetime, expected: int | None) -> None:
    assert limit_at(when, 1000, SCHEDULE) == expected
    assert Throttle(1000, SCHEDULE).limit_at(when) == expected


def test_overnight_window_on_every_day_covers_the_small_hours() -> None:
    nights = [BandwidthWindow(days="mon-sun", hours="18:00-06:00", limit=5_625_000)]
    assert limit_at(at(MON, 2), 1_250_000, nights) == 5_625_000  # from Sunday's window
    assert limit_at(at(TUE, 19), 1_250_000, nights) == 5_625_000
    assert limit_at(at(TUE, 12), 1_250_000, nights) == 1_250_000


def test_next_change_walks_window_boundaries() -> None:
    assert next_change(at(MON, 9), []) is None
    schedule = [BandwidthWindow(days="fri", hours="22:00-06:00", limit=50)]
    assert next_change(at(MON, 9), schedule) == at(FRI, 22)
    assert next_change(at(FRI, 22), schedule) == at(SAT, 6)
    assert next_change(at(SAT, 6), schedule) == datetime(2024, 1, 12, 22, 0)
