"""The produce loop with a recording sink: --speed (the log's own pace or a multiple of it; max does not wait; bad
values refused), positions saved within paced blocks, generations kept apart across a kill."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("bad", ["0", "-2", "fast", "nan", "inf"])
def test_bad_speed_refused(bad):
    from logpipe.config import Settings

    with pytest.raises(ValueError):
        Pacer(bad)
    with pytest.raises(ValueError, match="positive, finite factor"):
        Settings(speed=bad)


def test_a_slow_factor_waits_its_seconds_and_only_a_jump_in_log_time_is_skipped():
    """A factor under 1/60 replayed at full speed: each second of log was worth more than max_gap_s of wall time,
    so every step was taken for a jump and skipped (a review's finding). A jump is now a gap of more than
    max_gap_s in log time as well; here at half speed a 1 s step waits 2 s, a 59 s one is a jump."""
    p = Pacer("0.5", max_gap_s=1.5)
    t = time.monotonic()
    for sec in (0, 1):
        p.wait(_line(sec))
    assert 1.8 <= time.monotonic() - t < 5 and p.jumps == 0
    t = time.monotonic()
    p.wait(_line(59))
    assert time.monotonic() - t < 1.0 and p.jumps == 1


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


class _Sink:
    """Records what the producer sends (the broker's part is not under test here)."""

    sent = failed = 0

    def __init__(self, stop_after: int | None = None, stop=None) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.stop_after, self.stop = stop_after, stop

    def partitions(self, topic: str) -> int:
        return 1

    def send(self, topic, value, key, headers=None, partition=None) -> None:
        self.records.append((key, value))
        self.sent += 1
        if self.stop_after is not None and self.sent == self.stop_after:
            self.stop.set()  # Ctrl-C after this record, whatever the machine's speed

    def send_lines(self, topic, lines, src, off, partition) -> int:
        for line in lines:
            self.send(topic, line, b"lp:%s:%d" % (src, off))
            off += len(line) + 1
        return off

    def flush(self, timeout: float = 120.0) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_paced_replay_saves_its_position_within_a_block_and_where_it_stopped(tmp_path, monkeypatch):
    """A paced block (~1 MiB of lines) can span hours of log time: the position is saved every checkpoint
    interval within it, not only at its end (before, a kill lost all of it), and a stop saves the position just
    after the last line sent, so the next run neither skips nor repeats a line."""
    import threading

    from logpipe.config import Settings
    from logpipe.producer import run
    from logpipe.producer.position import PositionStore

    log = tmp_path / "a.log"
    log.write_bytes(b"".join(_line(i) + b"\n" for i in range(12)))  # one second of log time apart
    stop = threading.Event()
    sink = _Sink(stop_after=5, stop=stop)
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    saved: list[int] = []
    real_save = PositionStore.save
    monkeypatch.setattr(PositionStore, "save", lambda self, p: (saved.append(p.offset), real_save(self, p)))
    s = Settings(speed="20", producer_checkpoint_s=0.1, producer_state_dir=str(tmp_path / "pos"))  # 0.05 s a line
    first = run.produce_file(s, log, stop_event=stop, progress=False)
    assert first.lines == 5, first
    ends = [k for k, _ in sink.records]
    line_len = len(_line(0)) + 1
    assert saved[-1] == first.lines * line_len  # just after the last line sent
    # also saved within the block before the stop (the save at byte 0 claims the generation: see run.py)
    assert any(0 < o < saved[-1] for o in saved) and saved == sorted(saved)
    stopped_at = saved[-1]
    second = run.produce_file(s, log, progress=False)
    assert second.resumed_from == stopped_at and first.lines + second.lines == 12
    keys = [k for k, _ in sink.records]
    assert len(keys) == len(set(keys)) == 12 and ends == keys[:first.lines]  # nothing skipped, nothing twice


def test_a_paced_position_never_lies_past_the_line_it_follows(tmp_path, monkeypatch):
    """Saved within a paced block after each line: the last line has no newline, so the position after it is the
    file's end, not one byte past it (that would read as another file's position: the whole file sent again)."""
    from logpipe.config import Settings
    from logpipe.producer import run
    from logpipe.producer.position import PositionStore

    log = tmp_path / "a.log"
    log.write_bytes(_line(0) + b"\n" + _line(1))  # no newline at the end
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: _Sink())
    saved: list[int] = []
    real_save = PositionStore.save
    monkeypatch.setattr(PositionStore, "save", lambda self, p: (saved.append(p.offset), real_save(self, p)))
    s = Settings(speed="1000", producer_checkpoint_s=0, producer_state_dir=str(tmp_path / "pos"))
    assert run.produce_file(s, log, progress=False).lines == 2
    size = log.stat().st_size
    assert saved and max(saved) == size and saved[-1] == size, saved



def _dated(stamp: str) -> bytes:
    return f'1.2.3.4 - - [{stamp}] "GET / HTTP/1.1" 200 1'.encode()


def _paced_seconds(speed: str, stamps: list[str]) -> float:
    """Wall seconds a Pacer takes over lines dated `stamps`; a wait is cut after 10 s (a test fails, never hangs)."""
    import threading

    stop = threading.Event()
    timer = threading.Timer(10, stop.set)
    timer.start()
    try:
        p = Pacer(speed, stop)
        t = time.monotonic()
        for stamp in stamps:
            p.wait(_dated(stamp))
        return time.monotonic() - t
    finally:
        timer.cancel()


@pytest.mark.parametrize("speed", ["realtime", "0.1"])
def test_a_line_dated_far_ahead_neither_stalls_nor_crashes_the_replay(speed):
    """One line dated decades ahead (the parser takes years up to 2099): before, realtime slept until then, and at
    factors below ~0.3 Event.wait raised OverflowError (on every restart, the line being resent). Now neither the
    jump nor the jump back (nor one far behind) is waited for."""
    assert _paced_seconds(speed, ["2004-05-18 00:00:00", "2099-05-18 00:00:00", "2004-05-18 00:00:00",
                                  "1999-01-01 00:00:00", "2004-05-18 00:00:00"]) < 2.0


def test_pacing_stays_exact_around_a_jump():
    """20x: lines 1 s of log time apart take 0.05 s each, before and after a jump of decades (not waited for)."""
    took = _paced_seconds("20", ["2004-05-18 00:00:00", "2004-05-18 00:00:01", "2004-05-18 00:00:02",
                                 "2090-01-01 00:00:00", "2090-01-01 00:00:01", "2090-01-01 00:00:02"])
    assert 0.18 <= took < 1.0  # 4 gaps of 0.05 s; the jump itself not waited for


def test_no_single_wait_is_longer_than_the_bound():
    """Even when the wall clock has not moved on (here: waits that return at once), a wait is never longer than
    max_gap_s, so never beyond threading.TIMEOUT_MAX."""
    import threading

    waits: list[float] = []

    class _Stop(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return False

    p = Pacer("realtime", _Stop(), max_gap_s=5)
    for sec in (0, 4, 8, 12):  # steps of 4 s: each within the bound, so paced; the delays add up to 12 s
        p.wait(_line(sec))
    assert len(waits) == 3 and max(waits) <= 5, waits


def test_a_paced_wait_calls_back_every_second_so_the_heartbeat_stays_fresh():
    """A paced replay may wait up to max_gap_s (60 s) before one line: the producer's heartbeat (on_wait) is
    touched every second of it, so `logpipe health producer` does not take the wait for a stuck loop."""
    calls: list[float] = []
    p = Pacer("2", on_wait=lambda: calls.append(time.monotonic()))
    t = time.monotonic()
    p.wait(_line(0))
    p.wait(_line(5))  # 5 s of log time at 2x: 2.5 s
    took = time.monotonic() - t
    assert 2.4 <= took < 4.0
    assert len(calls) == 3 and calls[0] - t < 1.5, [c - t for c in calls]  # after 1 s, 2 s and 2.5 s


class _Killed(BaseException):
    """Stands for kill -9 in the middle of a send: nothing after it runs, no position is saved."""


class _DyingSink(_Sink):
    def __init__(self, die_after: int) -> None:
        super().__init__()
        self.die_after = die_after

    def send(self, topic, value, key, headers=None, partition=None) -> None:
        super().send(topic, value, key)
        if self.sent == self.die_after:
            raise _Killed()


def _keys_sent(tmp_path, monkeypatch, log, sink) -> list[bytes]:
    from logpipe.config import Settings
    from logpipe.producer import run

    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    s = Settings(producer_checkpoint_s=3600, producer_state_dir=str(tmp_path / "pos"))
    try:
        run.produce_file(s, log, progress=False)
    except _Killed:
        pass
    return [k for k, _ in sink.records]


def _rewrite_in_place(log, tag: str) -> None:
    """Truncated and written again (same inode: a new generation of the file), lines as long as before."""
    with log.open("r+b") as f:
        f.truncate(0)
        f.write(b"".join(f'1.2.3.4 - - [2004-05-18 00:00:{i:02d}] "GET /{tag} HTTP/1.1" 200 1\n'.encode()
                         for i in range(12)))


def test_content_written_after_a_kill_and_a_second_truncation_gets_keys_of_its_own(tmp_path, monkeypatch):
    """The producer is killed while it sends a truncated file's new content (B), before any checkpoint; then the
    file is truncated and written again (C). C must not get B's generation, whose keys the job has already seen:
    it would drop C's lines as repeats of B's. And B itself, still there after a kill, is sent again under the
    same keys (the job drops those repeats), not under new ones (it would count them twice)."""
    log = tmp_path / "a.log"
    log.touch()
    _rewrite_in_place(log, "A")
    a = _keys_sent(tmp_path, monkeypatch, log, _Sink())
    _rewrite_in_place(log, "B")
    b_before_kill = _keys_sent(tmp_path, monkeypatch, log, _DyingSink(die_after=5))
    assert len(b_before_kill) == 5 and not set(b_before_kill) & set(a)
    b_again = _keys_sent(tmp_path, monkeypatch, log, _DyingSink(die_after=7))  # B once more, killed again
    assert b_again[:5] == b_before_kill, "B, still there after the kill, must be sent again under the same keys"
    _rewrite_in_place(log, "C")
    c = _keys_sent(tmp_path, monkeypatch, log, _Sink())
    assert len(c) == 12
    assert not set(c) & set(b_again), "C's lines reuse the keys of B's lines the job has seen"


def _lines(seconds) -> bytes:
    return b"".join(_line(i) + b"\n" for i in seconds)


def _as_if_saved_on_another_device(tmp_path, log) -> str:
    """Move the saved position of `log` to the identity the file had before its file system was mounted again:
    the same inode number on another device number. Returns that old identity."""
    import json

    from logpipe.producer.position import file_key

    st = os.stat(log)
    (saved,) = (tmp_path / "pos").glob("*/*.json")
    data = json.loads(saved.read_text())
    assert data["key"] == file_key(st)
    old = f"{st.st_dev + 1}:{st.st_ino}"
    data["key"] = old
    saved.with_name(old.replace(":", "-") + ".json").write_text(json.dumps(data))
    saved.unlink()
    return old


def test_a_remounted_file_resumes_where_it_stood_under_its_old_keys(tmp_path, monkeypatch, caplog):
    """A file whose device number changed (its file system mounted again) keeps its inode number and content. The
    producer resumes at its saved position and keeps its old src, so the lines after that position are sent once,
    under the keys the job knows; before, the whole file was sent again under new keys and counted twice."""
    log = tmp_path / "a.log"
    log.write_bytes(_lines(range(12)))
    assert len(_keys_sent(tmp_path, monkeypatch, log, _Sink())) == 12
    old = _as_if_saved_on_another_device(tmp_path, log)
    with log.open("ab") as f:
        f.write(_lines(range(12, 15)))
    n = len(_line(0)) + 1
    size_before = 12 * n
    keys = _keys_sent(tmp_path, monkeypatch, log, _DyingSink(die_after=2))  # killed before its next save
    assert keys == [b"lp:%s:%d" % (old.encode(), size_before + i * n) for i in range(2)]
    assert "mounted again" in caplog.text
    again = _keys_sent(tmp_path, monkeypatch, log, _Sink())  # the position saved under the new identity
    assert again == [b"lp:%s:%d" % (old.encode(), size_before + i * n) for i in range(3)]


def test_another_files_position_on_the_same_inode_number_is_not_taken(tmp_path, monkeypatch):
    """A position saved for the path under the same inode number on another device, but for other first bytes,
    is another file's: the file is read from byte 0 under its own identity."""
    from logpipe.producer.position import file_key

    log = tmp_path / "a.log"
    log.write_bytes(_lines(range(12)))
    _keys_sent(tmp_path, monkeypatch, log, _Sink())
    _as_if_saved_on_another_device(tmp_path, log)
    log.write_bytes(_lines(range(20, 24)))  # same inode, other content
    keys = _keys_sent(tmp_path, monkeypatch, log, _Sink())
    assert keys == [b"lp:%s:%d" % (file_key(os.stat(log)).encode(), i * (len(_line(0)) + 1)) for i in range(4)]
