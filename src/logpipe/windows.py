"""Sliding-window assignment with Spark's semantics (epoch-aligned), in plain Python/numpy for checks."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import numpy as np

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def duration_seconds(text: str) -> int:
    """'20 seconds' / '1 minute' / '2 hours' -> seconds (Spark interval strings, whole seconds)."""
    # a space between number and unit, ASCII digits: what Spark's interval parser takes ("20seconds" it refuses)
    m = re.fullmatch(r"\s*(\d+)\s+(second|minute|hour|day)s?\s*", text.lower(), re.ASCII)
    if not m:
        raise ValueError(f"unsupported duration {text!r} (e.g. '20 seconds', '1 minute')")
    return int(m.group(1)) * _UNITS[m.group(2)]


def interval_seconds(text: str) -> float:
    """A trigger interval as Spark's processingTime takes it: '0 seconds', '500 milliseconds', '1 minute' ->
    seconds (whole milliseconds at least)."""
    m = re.fullmatch(r"\s*(\d+)\s+millisecond(s?)\s*", text.lower(), re.ASCII)
    if m:
        return int(m.group(1)) / 1000
    try:
        return float(duration_seconds(text))
    except ValueError:
        raise ValueError(f"unsupported interval {text!r} (e.g. '0 seconds', '500 milliseconds', '1 minute')") from None


def window_starts(ts: int, size: int, slide: int) -> list[int]:
    """Starts of the windows [s, s + size) holding epoch second ts: s is a multiple of slide (Spark's
    window(ts, size, slide) with startTime 0), newest first."""
    if size <= 0 or slide <= 0 or slide > size:
        raise ValueError("need 0 < slide <= size")
    last = ts - ts % slide
    return [s for s in range(last, ts - size, -slide) if s <= ts < s + size]


def window_starts_array(ts: np.ndarray, size: int, slide: int) -> list[np.ndarray]:
    """Vectorised window_starts: one array of starts per possible window (size/slide rounded up); entries
    whose window does not hold the timestamp are set to -1 (only when size is not a multiple of slide)."""
    if size <= 0 or slide <= 0 or slide > size:
        raise ValueError("need 0 < slide <= size")
    last = ts - ts % slide
    out = []
    for j in range(-(-size // slide)):
        s = last - j * slide
        out.append(np.where(s + size > ts, s, -1))
    return out


def late_horizon(max_times: list[datetime], watermark_s: int, floor: datetime | None = None) -> datetime | None:
    """Rows with an event time before this are late: the newest of `max_times` (the newest event time of each
    batch so far) minus the watermark, but not before `floor` (the end of windows already written by a flush).
    None: nothing is late yet."""
    horizon = max(max_times) - timedelta(seconds=watermark_s) if max_times else None
    if floor is not None and (horizon is None or floor > horizon):
        return floor
    return horizon


LATE_SHARE_WARNED = 0.1


def late_share_is_high(late: int, parsed: int) -> bool:
    """Whether a micro-batch's late rows are a share of its parsed lines (LATE_SHARE_WARNED) that no straggler
    explains: the horizon then lies ahead of the log's traffic (one line dated later than its neighbours set it: a
    wrong date in a replayed log, a server clock running fast), and the lines after it are all late."""
    return late > 0 and late >= LATE_SHARE_WARNED * parsed
