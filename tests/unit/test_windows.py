"""Window assignment with Spark's semantics: epoch-aligned starts, every event in size/slide windows."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from logpipe.windows import duration_seconds, late_horizon, late_share_is_high, window_starts, window_starts_array

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("ts,expected", [(0, [0, -10]), (9, [0, -10]), (10, [10, 0]), (25, [20, 10]),
                                          (1084859928, [1084859920, 1084859910])])
def test_window_starts_20s_sliding_10s(ts, expected):
    assert window_starts(ts, 20, 10) == expected
    for s in expected:
        assert s <= ts < s + 20 and s % 10 == 0


def test_tumbling_and_non_multiple():
    assert window_starts(37, 10, 10) == [30]
    starts = window_starts(37, 25, 10)  # 25 s windows sliding by 10: 2 or 3 windows hold a point
    assert starts == [30, 20] and all(s <= 37 < s + 25 for s in starts)


def test_vectorised_matches_scalar():
    rng = np.random.default_rng(0)
    ts = rng.integers(0, 10**9, 2000)
    for size, slide in [(20, 10), (60, 10), (25, 10), (10, 10), (1, 1), (3, 2)]:
        cols = window_starts_array(ts, size, slide)
        assert len(cols) == -(-size // slide)
        for i, t in enumerate(ts.tolist()):
            assert sorted(c[i] for c in cols if c[i] != -1) == sorted(window_starts(t, size, slide))
            # the callers (verify) drop exactly -1: a window that does not hold the timestamp is marked so
            assert all(c[i] == -1 or c[i] % slide == 0 for c in cols)


@pytest.mark.parametrize("size,slide", [(0, 0), (0, 10), (10, 0), (-20, 10), (20, -10), (10, 20)])
def test_window_sizes_that_are_no_sliding_window_are_refused(size, slide):
    for starts in (lambda: window_starts(5, size, slide), lambda: window_starts_array(np.array([5]), size, slide)):
        with pytest.raises(ValueError, match=r"need 0 < slide <= size"):
            starts()


def test_durations():
    assert duration_seconds("20 seconds") == 20
    assert duration_seconds("1 minute") == 60
    with pytest.raises(ValueError):
        duration_seconds("20 fortnights")


def test_late_horizon_is_newest_event_time_minus_watermark():
    t = [datetime(2024, 3, 1, 12, 0, 0), datetime(2024, 3, 1, 12, 5, 0), datetime(2024, 3, 1, 12, 1, 0)]
    assert late_horizon([], 30) is None  # nothing seen yet: nothing is late
    assert late_horizon(t, 30) == datetime(2024, 3, 1, 12, 4, 30)
    assert late_horizon(t[:1], 0) == t[0]


def test_late_horizon_never_reopens_flushed_windows():
    t = [datetime(2024, 3, 1, 12, 0, 0)]
    floor = datetime(2024, 3, 1, 12, 0, 20)  # a flush wrote windows ending up to here
    assert late_horizon(t, 30, floor) == floor
    assert late_horizon([], 30, floor) == floor
    assert late_horizon([datetime(2024, 3, 1, 13, 0, 0)], 30, floor) == datetime(2024, 3, 1, 12, 59, 30)


def test_a_late_share_is_high_from_a_tenth_of_the_parsed_lines():
    """Stragglers behind the horizon are normal; a tenth of a batch's parsed lines late is not (the horizon lies
    ahead of the traffic): the job warns then."""
    assert not late_share_is_high(0, 0) and not late_share_is_high(0, 100)
    assert not late_share_is_high(9, 100) and late_share_is_high(10, 100) and late_share_is_high(5, 5)
    assert not late_share_is_high(1, 11) and late_share_is_high(1, 10)
