"""Sizes, rates and durations as written in playbooks, and their short forms in reports."""

from __future__ import annotations

import math

import pytest

from orchestrator.playbook.units import (
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)

KiB, MiB, GiB, TiB, PiB, EiB = (1024**n for n in range(1, 7))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * GiB),
        ("4 GiB", 4 * GiB),
        ("  512MiB  ", 512 * MiB),
        ("4gib", 4 * GiB),
        ("4Gi", 4 * GiB),
        ("4G", 4 * 1000**3),
        ("100GB", 100 * 1000**3),
        ("1.5TiB", 3 * TiB // 2),
        ("0.5KiB", 512),
        ("64k", 64_000),
        ("10b", 10),
        ("123", 123),
        ("0", 0),
        ("1EiB", EiB),
        (4096, 4096),
        (2.0, 2),
        (0, 0),
    ],
)
def test_parse_size_accepts(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("four gigs", "expected a size such as 4GiB, 512MiB or 100GB, got 'four gigs'"),
        ("4 GiBs", "expected a size such as 4GiB"),
        ("", "expected a size such as 4GiB"),
        ("GiB", "expected a size such as 4GiB"),
        ("1,5GiB", "expected a size such as 4GiB"),
        (True, "got a boolean"),
        (None, "got an empty value"),
        ([1], "got a list"),
        (-1, "a size cannot be negative"),
        ("-5GiB", "a size cannot be negative"),
        ("2EiB", "'2EiB' is larger than 1 EiB; check the unit"),
        ("1025PiB", "larger than 1 EiB"),
        (MAX_SIZE + 1, "larger than 1 EiB"),
        (math.inf, "larger than 1 EiB"),
        (math.nan, "got NaN"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200MiB/s", 200 * MiB),
        ("200MiB", 200 * MiB),
        ("200 MiB/s", 200 * MiB),
        ("1Gbit/s", 125_000_000),
        ("1 Gbit", 125_000_000),
        ("100Mbps", 12_500_000),
        ("10Mbits/s", 1_250_000),
        ("1/s", 1),
        (1000, 1000),
    ],
)
def test_parse_rate_accepts(text: object, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0MiB/s", "a bandwidth limit of 0 would never finish; omit the limit for no limit"),
        (0, "would never finish"),
        ("0.5B/s", "would never finish"),  # rounds down to 0 bytes per second
        ("fast", "expected a rate such as 200MiB/s, 1Gbit/s or 100Mbps, got 'fast'"),
        ("/s", "expected a rate such as 200MiB/s"),
        ("5 lightyears/s", "expected a rate such as 200MiB/s"),
        (False, "expected a rate such as 200MiB/s, 1Gbit/s or 100Mbps, got a boolean"),
        ("-5MiB/s", "cannot be negative"),
        ("2EiB/s", "larger than 1 EiB"),
    ],
)
def test_parse_rate_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30),
        ("5m", 300),
        ("5min", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1.5h", 5400),
        ("2d", 172_800),
        ("1w", 604_800),
        ("90", 90),
        ("10sec", 10),
        (45, 45),
        (0.25, 0.25),
        (0, 0),
    ],
)
def test_parse_duration_accepts(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 minutes", "expected a duration such as 30s, 5m, 1h or 1h30m, got '5 minutes'"),
        ("", "expected a duration"),
        ("h", "expected a duration"),
        ("1x", "expected a duration"),
        ("-5s", "expected a duration"),
        (-5, "a duration cannot be negative"),
        (True, "expected a duration"),
        (None, "got an empty value"),
        (math.inf, "infinite or NaN"),
        (math.nan, "infinite or NaN"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (2 * PiB, "2.0 PiB"),
        (3 * EiB, "3072.0 PiB"),
    ],
)
def test_format_size(value: int, expected: str) -> None:
    assert format_size(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12.34, "12.3s"),
        (250, "4m 10s"),
        (3720, "1h 02m"),
        (47 * 3600, "47h 00m"),
        (3 * 86400 + 7200, "3d 02h"),
    ],
)
def test_format_duration(value: float, expected: str) -> None:
    assert format_duration(value) == expected
