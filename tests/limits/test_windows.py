"""Window arithmetic against explicit instants: rollovers, leap years, DST, odd offsets."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.limits.windows import (
    TTL_MARGIN_S,
    Window,
    describe_reset,
    rolling_bucket_labels,
    ttl_seconds,
    window_bounds,
    window_end,
    window_label,
    window_start,
)

HOUR = 3600.0
DAY = 86400.0


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def labels_over(window: Window, start: float, end: float) -> list[str]:
    """Labels of the consecutive windows that cover [start, end)."""
    out, t = [], window_start(window, start)
    while t < end:
        out.append(window_label(window, t))
        t = window_end(window, t)
    return out


# --- labels and bounds in UTC -------------------------------------------------------------

NOW = at("2026-11-22T14:05:30+00:00")


@pytest.mark.parametrize(
    ("kind", "label", "start", "end"),
    [
        ("minute", "20261122T1405", "2026-11-22T14:05:00+00:00", "2026-11-22T14:06:00+00:00"),
        ("hour", "20261122T14", "2026-11-22T14:00:00+00:00", "2026-11-22T15:00:00+00:00"),
        ("day", "20261122", "2026-11-22T00:00:00+00:00", "2026-11-23T00:00:00+00:00"),
        ("week", "2026W47", "2026-11-16T00:00:00+00:00", "2026-11-23T00:00:00+00:00"),
        ("month", "202611", "2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00"),
    ],
)
def test_utc_windows(kind: str, label: str, start: str, end: str) -> None:
    w = Window(kind)  # type: ignore[arg-type]
    assert window_label(w, NOW) == label
    assert window_bounds(w, NOW) == (at(start), at(end))
    assert window_start(w, NOW) == at(start)
    assert window_end(w, NOW) == at(end)


@pytest.mark.parametrize(
    ("kind", "before", "after", "label_before", "label_after"),
    [
        (
            "minute",
            "2026-11-22T14:05:59.999+00:00",
            "2026-11-22T14:06:00+00:00",
            "20261122T1405",
            "20261122T1406",
        ),
        (
            "hour",
            "2026-11-22T14:59:59.999+00:00",
            "2026-11-22T15:00:00+00:00",
            "20261122T14",
            "20261122T15",
        ),
        (
            "day",
            "2026-11-22T23:59:59.999+00:00",
            "2026-11-23T00:00:00+00:00",
            "20261122",
            "20261123",
        ),
        ("month", "2026-11-30T23:59:59.999+00:00", "2026-12-01T00:00:00+00:00", "202611", "202612"),
        (
            "day",
            "2026-12-31T23:59:59.999+00:00",
            "2027-01-01T00:00:00+00:00",
            "20261231",
            "20270101",
        ),
        ("month", "2026-12-31T23:59:59.999+00:00", "2027-01-01T00:00:00+00:00", "202612", "202701"),
        (
            "hour",
            "2026-12-31T23:59:59.999+00:00",
            "2027-01-01T00:00:00+00:00",
            "20261231T23",
            "20270101T00",
        ),
        (
            "minute",
            "2026-12-31T23:59:59.999+00:00",
            "2027-01-01T00:00:00+00:00",
            "20261231T2359",
            "20270101T0000",
        ),
        # 2026 has 53 ISO weeks; the first days of 2027 still belong to 2026W53.
        (
            "week",
            "2027-01-03T23:59:59.999+00:00",
            "2027-01-04T00:00:00+00:00",
            "2026W53",
            "2027W01",
        ),
    ],
)
def test_rollover(kind: str, before: str, after: str, label_before: str, label_after: str) -> None:
    w = Window(kind)  # type: ignore[arg-type]
    assert window_label(w, at(before)) == label_before
    assert window_label(w, at(after)) == label_after
    assert window_end(w, at(before)) == at(after) == window_start(w, at(after))


def test_week_starts_on_monday() -> None:
    w = Window("week")
    monday = at("2026-11-16T00:00:00+00:00")
    assert window_start(w, at("2026-11-22T23:59:00+00:00")) == monday  # a Sunday
    assert window_start(w, monday) == monday
    assert window_label(w, monday - 1) == "2026W46"


@pytest.mark.parametrize(
    ("year", "leap"), [(2028, True), (2027, False), (2100, False), (2000, True)]
)
def test_february(year: int, leap: bool) -> None:
    w_day, w_month = Window("day"), Window("month")
    feb28 = at(f"{year}-02-28T12:00:00+00:00")
    next_day = window_end(w_day, feb28)
    assert window_label(w_day, next_day) == (f"{year}0229" if leap else f"{year}0301")
    assert window_label(w_month, next_day) == (f"{year}02" if leap else f"{year}03")
    start, end = window_bounds(w_month, feb28)
    assert end - start == (29 if leap else 28) * DAY
    assert window_label(w_month, end) == f"{year}03"


@pytest.mark.parametrize("month", ["01", "03", "05", "07", "08", "10", "12"])
def test_31_day_months(month: str) -> None:
    w = Window("month")
    start, end = window_bounds(w, at(f"2026-{month}-31T23:59:59+00:00"))
    assert start == at(f"2026-{month}-01T00:00:00+00:00")
    assert end - start == 31 * DAY
    assert window_label(w, at(f"2026-{month}-31T23:59:59+00:00")) == f"2026{month}"


def test_month_in_berlin_with_dst() -> None:
    w = Window("month", "Europe/Berlin")
    march = at("2026-03-15T12:00:00+01:00")
    start, end = window_bounds(w, march)
    assert start == at("2026-03-01T00:00:00+01:00")
    assert end == at("2026-04-01T00:00:00+02:00")
    assert end - start == 31 * DAY - HOUR
    # 23:30 UTC on March 31 is already April 1 in Berlin.
    assert window_label(w, at("2026-03-31T23:30:00+00:00")) == "202604"


# --- daylight saving time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "spring", "fall"),
    [
        ("Europe/Berlin", "2026-03-29", "2026-10-25"),
        ("America/New_York", "2026-03-08", "2026-11-01"),
    ],
)
def test_dst_day_lengths(tz: str, spring: str, fall: str) -> None:
    w = Window("day", tz)
    for date_, hours in ((spring, 23), (fall, 25)):
        noon = datetime.fromisoformat(f"{date_}T12:00:00").replace(tzinfo=ZoneInfo(tz)).timestamp()
        start, end = window_bounds(w, noon)
        assert end - start == hours * HOUR
        assert window_label(w, start) == window_label(w, end - 0.001) == date_.replace("-", "")
        assert describe_reset(w, noon) == f"00:00 {tz}"


def test_berlin_fall_back_hours_stay_distinct() -> None:
    w = Window("hour", "Europe/Berlin")
    day = Window("day", "Europe/Berlin")
    first, second = at("2026-10-25T00:30:00+00:00"), at("2026-10-25T01:30:00+00:00")
    # Both are 02:30 on the wall, one in CEST and one in CET.
    assert window_label(w, first) == "20261025T02+0200"
    assert window_label(w, second) == "20261025T02+0100"
    assert window_bounds(w, first) == (
        at("2026-10-25T00:00:00+00:00"),
        at("2026-10-25T01:00:00+00:00"),
    )
    assert window_bounds(w, second) == (
        at("2026-10-25T01:00:00+00:00"),
        at("2026-10-25T02:00:00+00:00"),
    )
    # ... and both belong to the same local day.
    assert window_label(day, first) == window_label(day, second) == "20261025"
    start, end = window_bounds(day, first)
    labels = labels_over(w, start, end)
    assert len(labels) == 25 == len(set(labels))
    assert labels[:4] == ["20261025T00", "20261025T01", "20261025T02+0200", "20261025T02+0100"]
    assert labels[4] == "20261025T03"


def test_berlin_fall_back_minutes_stay_distinct() -> None:
    w = Window("minute", "Europe/Berlin")
    assert window_label(w, at("2026-10-25T00:15:10+00:00")) == "20261025T0215+0200"
    assert window_label(w, at("2026-10-25T01:15:10+00:00")) == "20261025T0215+0100"
    labels = labels_over(w, at("2026-10-24T23:00:00+00:00"), at("2026-10-25T03:00:00+00:00"))
    assert len(labels) == 240 == len(set(labels))


def test_berlin_spring_forward_skips_an_hour() -> None:
    w = Window("hour", "Europe/Berlin")
    start, end = window_bounds(Window("day", "Europe/Berlin"), at("2026-03-29T12:00:00+02:00"))
    labels = labels_over(w, start, end)
    assert len(labels) == 23 == len(set(labels))
    assert "20260329T01" in labels and "20260329T03" in labels
    assert not any(label.startswith("20260329T02") for label in labels)
    assert window_end(w, at("2026-03-29T01:59:59+01:00")) == at("2026-03-29T03:00:00+02:00")


def test_new_york_fall_back() -> None:
    w = Window("hour", "America/New_York")
    first, second = at("2026-11-01T01:30:00-04:00"), at("2026-11-01T01:30:00-05:00")
    assert window_label(w, first) == "20261101T01-0400"
    assert window_label(w, second) == "20261101T01-0500"
    assert window_end(w, first) == window_start(w, second)
    assert window_label(Window("day", "America/New_York"), second) == "20261101"
    assert describe_reset(w, first) == "01:00 America/New_York (UTC-0500)"


def test_new_york_spring_forward() -> None:
    w = Window("hour", "America/New_York")
    before = at("2026-03-08T01:59:00-05:00")
    assert window_label(w, before) == "20260308T01"
    assert window_end(w, before) == at("2026-03-08T03:00:00-04:00")
    assert window_label(w, window_end(w, before)) == "20260308T03"


def test_half_hour_dst_shift_lord_howe() -> None:
    # Lord Howe falls back 30 minutes: 02:00 +11 becomes 01:30 +10:30.
    w = Window("hour", "Australia/Lord_Howe")
    labels = labels_over(w, at("2026-04-04T13:00:00+00:00"), at("2026-04-04T17:00:00+00:00"))
    assert labels == [
        "20260405T00",
        "20260405T01",
        "20260405T01+1030",
        "20260405T02",
        "20260405T03",
    ]


# --- odd offsets --------------------------------------------------------------------------


def test_kolkata_half_hour_offset() -> None:
    now = at("2026-11-22T14:05:00+05:30")
    hour = Window("hour", "Asia/Kolkata")
    assert window_label(hour, now) == "20261122T14"
    assert window_bounds(hour, now) == (
        at("2026-11-22T08:30:00+00:00"),
        at("2026-11-22T09:30:00+00:00"),
    )
    day = Window("day", "Asia/Kolkata")
    assert window_start(day, now) == at("2026-11-21T18:30:00+00:00")
    # 19:00 UTC is already the next day in India.
    assert window_label(day, at("2026-11-22T19:00:00+00:00")) == "20261123"
    assert describe_reset(day, now) == "00:00 Asia/Kolkata"


def test_chatham_quarter_hour_offset() -> None:
    # Chatham is +12:45 in (southern) winter and +13:45 in summer.
    hour = Window("hour", "Pacific/Chatham")
    day = Window("day", "Pacific/Chatham")
    winter = at("2026-06-15T10:20:00+12:45")
    assert window_label(hour, winter) == "20260615T10"
    assert window_bounds(hour, winter) == (
        at("2026-06-14T21:15:00+00:00"),
        at("2026-06-14T22:15:00+00:00"),
    )
    assert window_start(day, winter) == at("2026-06-14T11:15:00+00:00")
    summer = at("2026-12-15T10:20:00+13:45")
    assert window_start(day, summer) == at("2026-12-14T10:15:00+00:00")
    assert window_label(day, at("2026-12-14T10:15:00+00:00")) == "20261215"
    assert window_label(day, at("2026-12-14T10:14:59+00:00")) == "20261214"


def test_clocks_back_across_midnight_keep_the_new_date() -> None:
    # St. John's in 2008 went back from 00:01 to 23:01 the previous day.
    w = Window("day", "America/St_Johns")
    repeated = at("2008-11-02T02:31:00+00:00")  # 23:01 again, wall date Nov 1
    start, end = window_bounds(w, repeated)
    assert start <= repeated < end
    assert window_label(w, repeated) == "20081102"
    assert window_start(w, window_end(w, repeated - DAY)) == start


# --- rolling windows ----------------------------------------------------------------------


def test_rolling_bucket_labels() -> None:
    w = Window("rolling", length_s=60)  # 60 buckets of 1 s
    labels = rolling_bucket_labels(w, 100.5)
    assert labels[0] == window_label(w, 100.5) == "r1s100"
    assert labels[-1] == "r1s40"  # bucket [40, 41) still holds requests from 40.5 s ago
    assert len(labels) == 61 == len(set(labels))
    assert window_bounds(w, 100.5) == (40.0, 101.0)
    hourly = Window("rolling", length_s=3600, buckets=12)  # 5-minute buckets
    assert hourly.bucket_s == 300
    assert len(rolling_bucket_labels(hourly, 1000.0)) == 13
    assert ttl_seconds(hourly, 1000.0) == 1200 + 3600 - 1000 + TTL_MARGIN_S


def test_rolling_uneven_buckets() -> None:
    w = Window("rolling", length_s=100, buckets=30)  # ceil(100 / 30) = 4 s buckets
    assert w.bucket_s == 4
    labels = rolling_bucket_labels(w, 1000.0)
    assert labels[0] == "r4s250" and labels[-1] == "r4s225"


@given(
    length=st.integers(1, 7 * 86400),
    buckets=st.integers(1, 120),
    t=st.floats(0, 4e9, allow_nan=False),
    age=st.floats(0, 1, exclude_max=True),
)
def test_rolling_is_conservative(length: int, buckets: int, t: float, age: float) -> None:
    """A request made ``age * length`` ago is always still in the sum (never under-counted),
    and every summed bucket overlaps the last ``length`` seconds (bounded over-count)."""
    w = Window("rolling", length_s=length, buckets=buckets)
    now = t + age * length
    written = window_label(w, t)
    labels = rolling_bucket_labels(w, now)
    assert written in labels
    assert labels[0] == window_label(w, now)
    oldest = int(labels[-1].split("s")[-1])
    assert (oldest + 1) * w.bucket_s > now - length
    start, end = window_bounds(w, now)
    assert start <= now < end
    assert ttl_seconds(w, t) >= length + TTL_MARGIN_S  # the bucket outlives its counting


# --- messages, TTLs, validation -----------------------------------------------------------


def test_describe_reset() -> None:
    berlin_noon = at("2026-11-22T12:00:00+01:00")
    assert describe_reset(Window("day", "Europe/Berlin"), berlin_noon) == "00:00 Europe/Berlin"
    assert describe_reset(Window("month"), NOW) == "2026-12-01 00:00 UTC"
    assert describe_reset(Window("minute"), NOW) == "14:06 UTC"
    assert describe_reset(Window("hour"), NOW) == "15:00 UTC"
    assert describe_reset(Window("week"), NOW) == "2026-11-23 00:00 UTC"
    assert describe_reset(Window("rolling", length_s=60), 100.5) == "00:01:41 UTC"


@pytest.mark.parametrize("kind", ["minute", "hour", "day", "week", "month"])
def test_ttl_covers_the_window(kind: str) -> None:
    w = Window(kind, "Europe/Berlin")  # type: ignore[arg-type]
    ttl = ttl_seconds(w, NOW)
    remaining = window_end(w, NOW) - NOW
    assert remaining + TTL_MARGIN_S <= ttl <= remaining + TTL_MARGIN_S + 1


def test_request_window_has_no_counter() -> None:
    w = Window("request")
    assert not w.counted
    for fn in (window_start, window_end, window_label, ttl_seconds, rolling_bucket_labels):
        with pytest.raises(ValueError):
            fn(w, NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "fortnight"},
        {"kind": "day", "tz": "Mars/Olympus_Mons"},
        {"kind": "rolling"},
        {"kind": "rolling", "length_s": 0},
        {"kind": "rolling", "length_s": 60, "buckets": 0},
        {"kind": "day", "length_s": 60},
    ],
)
def test_invalid_windows(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Window(**kwargs)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------

CURATED_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "America/Santiago",
    "Pacific/Apia",
    "Asia/Kathmandu",
    "Pacific/Kiritimati",
    "America/Havana",
    "Antarctica/Casey",
]
CALENDAR = st.sampled_from(["minute", "hour", "day", "week", "month"])


def check_window_properties(window: Window, now: float) -> None:
    start, end = window_bounds(window, now)
    assert start <= now < end
    assert window_start(window, end) == end  # consecutive windows touch
    label = window_label(window, now)
    assert window_label(window, start) == label == window_label(window, end - 0.001)
    assert window_label(window, end) != label
    assert ttl_seconds(window, now) >= end - now + TTL_MARGIN_S


@settings(max_examples=400)
@given(kind=CALENDAR, tz=st.sampled_from(CURATED_ZONES), now=st.floats(0, 4.2e9))
def test_window_properties(kind: str, tz: str, now: float) -> None:
    check_window_properties(Window(kind, tz), now)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(kind=CALENDAR, tz=st.sampled_from(sorted(available_timezones())), now=st.floats(0, 4.2e9))
def test_window_properties_every_zone(kind: str, tz: str, now: float) -> None:
    check_window_properties(Window(kind, tz), now)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    kind=CALENDAR,
    tz=st.sampled_from(CURATED_ZONES),
    transition=st.sampled_from(
        [
            "2026-03-29T01:00:00+00:00",
            "2026-10-25T01:00:00+00:00",  # Berlin
            "2026-03-08T07:00:00+00:00",
            "2026-11-01T06:00:00+00:00",  # New York
            "2026-04-04T15:00:00+00:00",
            "2026-10-03T15:30:00+00:00",  # Lord Howe
            "2026-04-04T14:00:00+00:00",
            "2026-09-26T14:00:00+00:00",  # Chatham
            "2008-11-02T02:31:00+00:00",  # St. John's, back across midnight
        ]
    ),
    delta=st.floats(-7200, 7200),
)
def test_window_properties_near_transitions(
    kind: str, tz: str, transition: str, delta: float
) -> None:
    check_window_properties(Window(kind, tz), at(transition) + delta)  # type: ignore[arg-type]
