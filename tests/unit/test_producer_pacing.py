"""--speed: replay at the log's own pace (or a multiple of it); max does not wait; bad values are refused."""

from __future__ import annotations

import time

import pytest

from logpipe.producer.run import Pacer

pytestmark = pytest.mark.unit


def _line(sec: int) -> bytes:
    return f'1.2.3.4 - - [2004-05-18 00:00:{sec:02d}] "GET / HTTP/1.1" 200 1'.encode()


def test_factor_follows_log_time():
    p = Pacer("20")  # 20x: 4 s of log time take 0.2 s
    t = time.monotonic()
    for sec in (0, 1, 2, 3, 4):
        p.wait(_line(sec))
    assert 0.18 <= time.monotonic() - t < 1.0


def test_max_never_waits_and_garbage_is_ignored():
    p = Pacer("max")
    t = time.monotonic()
    for sec in (0, 59):
        p.wait(_line(sec))
    Pacer("10").wait(b"no timestamp here")
    assert time.monotonic() - t < 1.0  # (a wait would be 59 s; slack for a busy machine)


@pytest.mark.parametrize("bad", ["0", "-2", "fast"])
def test_bad_speed_refused(bad):
    with pytest.raises(ValueError):
        Pacer(bad)


def test_a_stop_ends_a_long_wait_at_once():
    """Ctrl-C / SIGTERM set the stop: a paced replay must not sleep out the log time first (here 59 s)."""
    import threading

    stop = threading.Event()
    p = Pacer("realtime", stop)
    p.wait(_line(0))
    threading.Timer(0.2, stop.set).start()
    t = time.monotonic()
    p.wait(_line(59))
    assert stop.is_set() and time.monotonic() - t < 5
    t = time.monotonic()
    p.wait(_line(59))  # once stopped, no more waits
    assert time.monotonic() - t < 1.0  # (a wait would be 59 s; slack for a busy machine)
