"""LogSource (the producer's file reader): blocks of whole lines, resuming, rotation; no Kafka involved."""

from __future__ import annotations

import os
import re
import time

import pytest

from logpipe.generator import truth_path
from logpipe.producer.position import HEAD_BYTES, Position, PositionStore, file_key, head_digest
from logpipe.producer.source import TAIL_SETTLE_S, LogSource

pytestmark = pytest.mark.unit


def _save_end(store: PositionStore, path, offset: int) -> None:
    st = os.stat(path)
    head = path.read_bytes()[:min(HEAD_BYTES, offset)]
    store.save(Position(file_key(st), 0, offset, str(path), len(head), head_digest(head)))


def _rotated_while_stopped(tmp_path, sent: bytes, unsent: bytes):
    """live.log: `sent` delivered (its end saved), then `unsent` appended, then rotated to live.log.1 and a new
    live.log holding b"new\\n" created, all while the producer was stopped. Returns (live.log, store)."""
    log = tmp_path / "live.log"
    log.write_bytes(sent)
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, len(sent))
    with log.open("ab") as f:
        f.write(unsent)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"new\n")
    return log, store


def test_a_stop_while_finishing_a_rotated_file_keeps_its_unterminated_tail(tmp_path):
    """Stopped while reading a file rotated away, the source must not send that file's unterminated tail as a
    line (its end was not reached: the line may continue); it ends, and the tail waits for the next run."""
    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"three\nfour\npartial li")
    source = LogSource(str(log), store, follow=True)
    source.open()
    blocks = source.blocks()
    first = next(blocks)
    assert (first.lines, first.start) == ([b"three", b"four"], 8)
    source.stop.set()
    assert list(blocks) == []  # not b"partial li" as a line, and not the new file
    source.close()


def test_a_rotated_file_read_to_its_end_sends_its_unterminated_tail(tmp_path):
    """Without a stop, the rotated file's end is definite: its unterminated tail is its last line."""
    log, store = _rotated_while_stopped(tmp_path, b"one\n", b"two\nlast")
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=0.05)
    source.open()
    assert _lines_until(source.blocks(), b"last") == [b"two", b"new", b"last"]
    assert source.rotated == []  # finished and closed
    source.close()


def _lines_until(blocks, last: bytes, timeout: float = 10.0) -> list[bytes]:
    """The lines of `blocks` (IDLE waits skipped) up to and including the line `last`."""
    import time

    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    for item in blocks:
        lines += getattr(item, "lines", [])
        if last in lines or time.monotonic() > deadline:
            return lines
    return lines


def _followed(tmp_path, content: bytes):
    """live.log holding `content`, a LogSource following it (polls of 10 ms, rotate_grace_s 0.3) and its blocks."""
    log = tmp_path / "live.log"
    log.write_bytes(content)
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, poll_interval=0.01,
                       rotate_grace_s=0.3)
    source.open()
    return log, source, source.blocks()


def test_a_file_rotated_away_is_read_until_its_writer_stops_appending(tmp_path):
    """logrotate's `create`: the log is renamed and a new one created, but the writer appends to the renamed file
    until it reopens its log (here after the new file got a line). The new file is followed at once; the old one is
    still read, so the line the writer was half-way through is not cut in two; once the old file has been quiet for
    rotate_grace_s it is finished and closed."""
    log, source, blocks = _followed(tmp_path, b"one\npart")
    assert next(blocks).lines == [b"one"]
    assert not hasattr(next(blocks), "lines")  # IDLE: "part" waits for its newline
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"new\n")
    assert next(blocks).lines == [b"new"]  # the new file at once
    with (tmp_path / "live.log.1").open("ab") as f:
        f.write(b"ial line\nthree\n")  # the writer has not reopened its log yet
    assert _lines_until(blocks, b"three") == [b"partial line", b"three"]
    with (tmp_path / "live.log.1").open("ab") as f:
        f.write(b"tail without newline")
    assert _lines_until(blocks, b"tail without newline") == [b"tail without newline"]  # after 0.3 s quiet
    assert source.rotated == []
    log.write_bytes(b"new\nnext\n")
    assert _lines_until(blocks, b"next") == [b"next"]
    source.close()


def test_clear_drops_every_position_of_the_topic_only(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    mine, other = PositionStore(tmp_path / "pos", "mine"), PositionStore(tmp_path / "pos", "other")
    _save_end(mine, log, 2)
    _save_end(other, log, 2)
    assert mine.clear() == 1 and mine.all() == [] and len(other.all()) == 1
    assert mine.clear() == 0


def test_a_file_that_took_a_deleted_files_inode_is_not_taken_for_it(tmp_path):
    """A rotated file, finished or not, may be deleted (logrotate's `rotate N`), and a new file in the same
    folder may get its inode number: it is not that file (its first bytes differ), so it is never read as a
    rotated leftover; the stale position is dropped."""
    log = tmp_path / "live.log"
    log.write_bytes(b"current\n")
    other = tmp_path / "live.log.2.gz"
    other.write_bytes(b"\x1f\x8b compressed bytes, longer than the saved offset\n")
    store = PositionStore(tmp_path / "pos", "t")
    st = os.stat(other)  # a position saved for the deleted file whose inode `other` now has
    store.save(Position(file_key(st), 0, 5, str(log), 5, head_digest(b"one\nt")))
    source = LogSource(str(log), store, follow=True)
    assert source.rotated_leftovers() == []
    assert store.load(file_key(st)) is None


def test_positions_of_deleted_rotated_files_are_dropped_and_live_ones_kept(tmp_path):
    log = tmp_path / "live.log"
    log.write_bytes(b"one\ntwo\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 4)  # rotated before its end: a leftover
    log.rename(tmp_path / "live.log.1")
    gone = tmp_path / "gone.log"
    gone.write_bytes(b"old\n")
    st_gone = os.stat(gone)
    store.save(Position(file_key(st_gone), 0, 4, str(log), 4, head_digest(b"old\n")))
    log.write_bytes(b"new\n")  # (before the unlink: the new file must not get the freed inode here)
    gone.unlink()  # rotated away, then deleted
    source = LogSource(str(log), store, follow=True)
    assert source.rotated_leftovers() == [str(tmp_path / "live.log.1")]
    assert store.load(file_key(st_gone)) is None and len(store.all()) == 1


def test_a_rotated_file_written_to_within_the_grace_is_followed_again_after_a_restart(tmp_path):
    """Stopped within the grace after a rotation, with the old file read to its end: at the next start it is read
    again beside the new one (its writer may not have reopened its log yet), unless it has been quiet that long."""
    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"")
    old = tmp_path / "live.log.1"
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=60)
    assert source.rotated_leftovers() == [str(old)]  # read to its end, but written to just now
    source.open()
    blocks = source.blocks()
    assert _lines_until(blocks, b"new") == [b"new"]
    with old.open("ab") as f:
        f.write(b"late line\n")  # the writer has not reopened its log yet
    assert _lines_until(blocks, b"late line") == [b"late line"]
    source.close()
    _save_end(store, old, old.stat().st_size)  # delivered (as the producer saves it after a flush)
    quiet = time.time() - 120
    os.utime(old, (quiet, quiet))
    assert LogSource(str(log), store, follow=True, rotate_grace_s=60).rotated_leftovers() == []


def test_the_message_limit_is_at_most_the_longest_line_the_producer_holds():
    """Longer lines are cut at LINE_CAP_BYTES before any limit is applied: a larger limit could not be honoured
    (and verify's too_large rule would disagree with the producer's)."""
    from pydantic import ValidationError

    from logpipe.config import Settings
    from logpipe.producer.source import LINE_CAP_BYTES

    assert Settings(max_message_bytes=LINE_CAP_BYTES).max_message_bytes == LINE_CAP_BYTES
    with pytest.raises(ValidationError):
        Settings(max_message_bytes=LINE_CAP_BYTES + 1)


def test_a_rotation_the_producer_never_saw_is_named_in_a_warning(tmp_path, caplog):
    """Rotated twice before the producer reached the first rotation (here: while it was stopped, and while it
    read): the file in between was never at the log's path when the producer looked, so it is not read (it could
    as well be a copy); a warning names it and how to send it. Compressed rotations, files the producer read and
    those `logpipe generate` writes beside a log (its ground truth, the log it is writing) are not named."""
    import logging
    import time

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    store = PositionStore(tmp_path / "pos", "t")
    (tmp_path / "live.log.9.gz").write_bytes(b"\x1f\x8b old, compressed")
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=60)
    source.open()
    blocks = source.blocks()
    assert next(blocks).lines == [b"a1"]
    time.sleep(0.05)
    truth_path(log).write_text("{}")            # `logpipe generate --force` wrote the log again: its ground truth
    log.with_name(log.name + ".partial").write_bytes(b"d1\n")  # and the log it writes next
    log.rename(tmp_path / "live.log.1")         # A -> .1
    log.write_bytes(b"b1\n")                    # B, never seen by the producer
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")         # B -> .1
    log.write_bytes(b"c1\n")                    # C
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(blocks, b"c1") == [b"c1"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1"))
    assert f"logpipe produce {tmp_path / 'live.log.1'}" in named[0]
    assert source.unsent_parts == 1  # counted in the run's summary too (before: a warning only)
    source.close()


def test_the_files_generate_writes_beside_a_log_are_the_ones_not_taken_for_rotations(tmp_path):
    from logpipe.generator import generate
    from logpipe.producer.source import SIDE_FILE_SUFFIXES

    out = tmp_path / "gen.log"
    generate(out, lines=50, seed=1, progress=False)
    beside = sorted(f.name[len(out.name):] for f in tmp_path.iterdir() if f.name.startswith(out.name + "."))
    assert beside == [".truth.json"] and all(name.endswith(SIDE_FILE_SUFFIXES) for name in beside)


@pytest.mark.parametrize("a_quiet", [False, True], ids=["A written within the grace", "A quiet past it"])
def test_two_rotations_while_stopped_name_the_file_in_between(tmp_path, caplog, a_quiet):
    """Stopped after sending live.log (A); meanwhile A -> .2, B -> .1, C created. At the next start A is finished
    by its saved position and C followed; B never had a position: the warning names it. A quiet past the grace is
    marked finished at the start (its position saved again): the time the never-read check compares with must
    be the last save before the start, not that one (else B went unnamed and uncounted)."""
    import logging
    import time

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 3)
    time.sleep(0.05)
    log.rename(tmp_path / "live.log.2")
    (tmp_path / "live.log.1").write_bytes(b"b1\n")
    log.write_bytes(b"c1\n")
    if a_quiet:
        quiet = time.time() - 100
        os.utime(tmp_path / "live.log.2", (quiet, quiet))
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=1 if a_quiet else 60)
    source.open()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(source.blocks(), b"c1") == [b"c1"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1"))
    assert source.unsent_parts == 1
    # looked for again (each look at a rotation does): not named again, still one part (a stress run named one
    # file three times in 0.1 s); shifted to another name by the next rotation, it is named under that one
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        source.warn_unread_rotations({file_key(os.stat(log))}, 0)
    assert source.unsent_parts == 1 and len([r for r in caplog.records if "never read it" in r.getMessage()]) == 1
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        (tmp_path / "live.log.1").rename(tmp_path / "live.log.3")
        source.warn_unread_rotations({file_key(os.stat(log))}, 0)
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 2 and named[1].startswith(str(tmp_path / "live.log.3")), named
    assert source.unsent_parts == 1
    source.close()


def _blocks_until_idle(source: LogSource) -> list[tuple[str, int, list[bytes], bool]]:
    """(src, start, lines, final) of each block up to the first wait (follow) or the end."""
    got = []
    for item in source.blocks():
        if not hasattr(item, "lines"):
            break
        got.append((item.src, item.start, item.lines, item.final))
    return got


def _copytruncate(log, new: bytes, copy_name: str = "live.log.1") -> None:
    """logrotate's copytruncate: copy the log beside it, truncate it in place, then the writer writes `new`."""
    import shutil

    shutil.copyfile(log, log.with_name(copy_name))
    with log.open("r+b") as f:
        f.truncate(0)
    with log.open("ab") as f:
        f.write(new)


def _read_after_copytruncate(tmp_path, appended: bytes, copy_name: str = "live.log.1") -> tuple[list, str, LogSource]:
    """a1, a2 delivered (position saved at byte 6); `appended` written while the producer was stopped; then
    copytruncate (the copy named `copy_name`) and b1. The blocks the next run reads, the log's old identity, and
    the source."""
    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 6)
    key = file_key(os.stat(log))
    with log.open("ab") as f:
        f.write(appended)
    _copytruncate(log, b"b1\n", copy_name=copy_name)
    source = LogSource(str(log), store)
    source.open()
    got = _blocks_until_idle(source)
    source.close()
    return got, key, source


def test_copytruncate_while_stopped_reads_the_rest_from_the_copy_first(tmp_path):
    """a1, a2 delivered; a3, a4 appended while the producer was stopped; then copytruncate and b1. The next run
    sends a3, a4 from the copy under the old src and offsets (a repeat would be dropped downstream), then b1 as the
    file's next generation; before, a3 and a4 were lost without a word."""
    got, key, _ = _read_after_copytruncate(tmp_path, b"a3\na4 no newline yet")
    assert got == [(key, 6, [b"a3"], False), (key, 9, [b"a4 no newline yet"], False), (key, 26, [], True),
                   (f"{key}:1", 0, [b"b1"], False)]


def test_the_copy_is_found_beside_older_compressed_and_other_rotations(tmp_path):
    """logrotate with dateext, compress and delaycompress: the copy (live.log-20261201) sorts after an older
    compressed rotation and an older plain one that holds other lines; the rest still comes from the copy."""
    import gzip

    (tmp_path / "live.log-20261129").write_bytes(b"z1\nz2\nz3\nz4\nz5\nz6\nz7\nz8\nz9\n")  # not ours
    (tmp_path / "live.log-20261130.gz").write_bytes(gzip.compress(b"y1\ny2\n"))
    got, key, source = _read_after_copytruncate(tmp_path, b"a3\n", copy_name="live.log-20261201")
    assert [(k, start, lines) for k, start, lines, _ in got if lines] == [(key, 6, [b"a3"]), (f"{key}:1", 0, [b"b1"])]
    assert source.unsent_parts == 0


def test_a_copy_that_ends_where_the_producer_stood_leaves_nothing_unsent(tmp_path, caplog):
    """copytruncate right after the producer's last save: the copy holds exactly the bytes sent. Nothing is left
    to send from it, and nothing is reported as lost."""
    import logging

    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got, _, source = _read_after_copytruncate(tmp_path, b"")
    assert [lines for _, _, lines, _ in got if lines] == [[b"b1"]]
    assert source.unsent_parts == 0 and not [r for r in caplog.records if "not sent" in r.getMessage()], (
        [r.getMessage() for r in caplog.records])


def test_a_truncation_without_a_copy_names_the_bytes_not_sent(tmp_path, caplog):
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 3)
    _copytruncate(log, b"b1\n", copy_name="live.log.1.gz")  # compressed: not read
    source = LogSource(str(log), store)
    source.open()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got = _blocks_until_idle(source)
    source.close()
    assert [lines for _, _, lines, _ in got] == [[b"b1"]]
    assert any("after byte 3, if anything, was not sent" in r.getMessage() and "tail -c +4" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert source.unsent_parts == 1  # counted for the run's summary


def test_truncated_and_refilled_while_read_sends_no_fragment_and_nothing_twice(tmp_path):
    """Follow mode, the producer behind (blocks of 8 bytes): copytruncate, and the writer refills the file past the
    read position before the producer's next read. The new bytes at the old position are not taken for old content
    (before: a line fragment, and new lines sent twice under two srcs); the rest of the old content comes from the
    copy, then the new content from byte 0 as the next generation."""
    log = tmp_path / "live.log"
    old = b"".join(b"old-%02d\n" % i for i in range(6))
    log.write_bytes(old)
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, poll_interval=0.01,
                       block_bytes=8)
    source.open()
    key = file_key(os.stat(log))
    blocks = source.blocks()
    assert next(blocks).lines == [b"old-00"]
    new = b"".join(b"new-line-%02d\n" % i for i in range(8))
    _copytruncate(log, new)
    got = []
    deadline = time.monotonic() + 10  # the follow loop yields at every poll: a missing line fails, never hangs
    for item in blocks:
        got += [(item.src, line) for line in getattr(item, "lines", [])]
        if (f"{key}:1", b"new-line-07") in got or time.monotonic() > deadline:
            break
    source.close()
    assert got == ([(key, b"old-%02d" % i) for i in range(1, 6)]
                   + [(f"{key}:1", b"new-line-%02d" % i) for i in range(8)])


def test_a_rotated_file_gone_before_its_end_is_named_and_a_finished_one_is_not(tmp_path, caplog):
    """Positions of files rotated away: one finished (read to its definite end) and one not; both files then
    compressed by logrotate while the producer was stopped. Only the unfinished one is worth a warning."""
    import logging

    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    for name, finished in (("done.log", True), ("cut.log", False)):
        f = tmp_path / name
        f.write_bytes(b"x1\n")
        st = os.stat(f)
        store.save(Position(file_key(st), 0, 3, str(log), 3, head_digest(b"x1\n"), finished=finished))
    log.write_bytes(b"new\n")
    (tmp_path / "done.log").unlink()
    (tmp_path / "cut.log").unlink()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert LogSource(str(log), store, follow=True).rotated_leftovers() == []
    gone = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1 and "after byte 3" in gone[0], gone
    assert store.all() == []


def test_a_new_file_with_a_finished_files_identity_is_read_without_a_copy_search(tmp_path, caplog):
    """A file read to its definite end (its position saved as finished) is gone, and the new log got its inode
    number: the new file is read from byte 0 under the next generation, and no warning claims lines were lost
    (before: 'whatever it held after byte N was not sent', with advice that would send lines twice)."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"new1\nnew2\n")
    store = PositionStore(tmp_path / "pos", "t")
    st = os.stat(log)
    store.save(Position(file_key(st), 0, 500, str(log), 4, head_digest(b"old!"), finished=True))
    source = LogSource(str(log), store)
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        seg = source.open()
        got = _blocks_until_idle(source)
    source.close()
    assert seg.generation == 1 and [lines for _, _, lines, _ in got] == [[b"new1", b"new2"]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def _rotate_copytruncate(log, new: bytes) -> None:
    """logrotate with copytruncate and `rotate 2`, no compression: live.log.1 -> live.log.2, then the copy."""
    if log.with_name("live.log.1").exists():
        log.with_name("live.log.1").rename(log.with_name("live.log.2"))
    _copytruncate(log, new)


def _one_shot_run(log, store: PositionStore) -> list[bytes]:
    """One `produce FILE` run: every block's position saved as the run loop saves it (finished for a final one)."""
    source = LogSource(str(log), store)
    source.open()
    got = []
    for block in source.blocks():
        got += block.lines
        seg = block.segment
        head = seg.head[:HEAD_BYTES]
        store.save(Position(seg.key, seg.generation, block.end, str(log), len(head), head_digest(head),
                            finished=block.final))
    source.close()
    return got


@pytest.mark.parametrize("first_run_finished", [False, True])
def test_two_copytruncates_while_stopped_name_the_copy_in_between(tmp_path, caplog, first_run_finished):
    """The producer is stopped across two copytruncates: live.log.2 holds the saved generation (read on from the
    saved position), live.log.1 a whole generation the producer never saw. Its lines cannot be placed in order
    without a guess, so it is named in a warning; before, it was skipped without a word (also when the last run
    had read a copy to its end, its position saved as finished)."""
    import logging

    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(b"g0-a\n")
    assert _one_shot_run(log, store) == [b"g0-a"]
    if first_run_finished:  # a run right after a copytruncate, the log still empty: the copy read to its end
        with log.open("ab") as f:
            f.write(b"g0-b\n")
        _rotate_copytruncate(log, b"")
        assert _one_shot_run(log, store) == [b"g0-b"] and store.all()[0].finished
        with log.open("ab") as f:
            f.write(b"g1-a\n")
    else:
        with log.open("ab") as f:
            f.write(b"g0-b\n")
        _rotate_copytruncate(log, b"g1-a\n")
    _rotate_copytruncate(log, b"g2-a\n")  # live.log.2: the saved generation's copy; live.log.1: g1's
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        got = _one_shot_run(log, store)
    assert got == ([] if first_run_finished else [b"g0-b"]) + [b"g2-a"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named


def test_a_one_shot_read_truncated_below_its_position_sends_no_fragment(tmp_path):
    """A one-shot run reading in 16-byte chunks; after the first, copytruncate leaves a file shorter than the read
    position. The run stops at the last whole line (before: the 4 bytes read of the next line were sent as a line,
    and the next run sent the rest of it as another); the next run reads the rest from the copy, whole."""
    log = tmp_path / "live.log"
    log.write_bytes(b"".join(b"old-line-%02d\n" % i for i in range(4)))  # 12 bytes a line
    store = PositionStore(tmp_path / "pos", "t")
    source = LogSource(str(log), store, block_bytes=16)
    source.open()
    got = []
    for block in source.blocks():
        got += block.lines
        if len(got) == 1:
            _copytruncate(log, b"new\n")
        seg = block.segment
        head = seg.head[:HEAD_BYTES]
        store.save(Position(seg.key, seg.generation, block.end, str(log), len(head), head_digest(head)))
    source.close()
    assert got == [b"old-line-00"]
    assert _one_shot_run(log, store) == [b"old-line-01", b"old-line-02", b"old-line-03", b"new"]


def _follow_until(source: LogSource, stop_after: bytes, on_first=None, timeout: float = 10.0):
    """(src, lines, final) of each block in follow mode until a line `stop_after`; `on_first` runs after the
    first block."""
    got = []
    deadline = time.monotonic() + timeout  # the follow loop yields at every poll: a missing line fails, never hangs
    for item in source.blocks():
        if hasattr(item, "lines"):
            got.append((item.src, item.lines, item.final))
            if len(got) == 1 and on_first:
                on_first()
        if any(stop_after in lines for _, lines, _ in got) or time.monotonic() > deadline:
            break
    source.close()
    return got


def test_follow_truncated_without_a_copy_does_not_send_the_cut_line(tmp_path, caplog):
    """Follow mode, 16-byte reads: the log is truncated (its copy compressed at once, so not readable) while a line
    is half read. The half read is not sent as a line (before: b"old-" went out, to be quarantined); a warning
    names its offset."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"".join(b"old-line-%02d\n" % i for i in range(4)))
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, block_bytes=16,
                       poll_interval=0.01)
    source.open()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got = _follow_until(source, b"new-line-00",
                            lambda: _copytruncate(log, b"new-line-00\n", copy_name="live.log.1.gz"))
    assert [line for _, lines, _ in got for line in lines] == [b"old-line-00", b"new-line-00"]
    assert any("line at byte 12 was cut" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    assert source.unsent_parts == 1


def test_follow_truncated_after_a_short_copy_says_nothing_is_lost(tmp_path, caplog):
    """logrotate copies, the writer appends a2 (read by the producer), then logrotate truncates: the copy ends
    before the read position, and holds nothing unsent. No warning that lines were not sent."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, poll_interval=0.01)
    source.open()
    blocks = source.blocks()
    assert next(blocks).lines == [b"a1"]
    import shutil

    shutil.copyfile(log, tmp_path / "live.log.1")
    with log.open("ab") as f:
        f.write(b"a2\n")
    while not getattr(item := next(blocks), "lines", None):
        pass
    assert item.lines == [b"a2"]
    with log.open("r+b") as f:
        f.truncate(0)
    log.write_bytes(b"b1\n")
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        got = _follow_until(source, b"b1")
    assert [line for _, lines, _ in got for line in lines] == [b"b1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    assert any("nothing of its old content is left" in r.getMessage() for r in caplog.records)
    assert source.unsent_parts == 0


def test_follow_finishes_the_old_generation_after_its_copy(tmp_path):
    """Follow mode: truncated with a copy beside it. The old generation is read to the copy's end and then marked
    finished (a last, empty block), so a restart neither looks for a copy again nor warns about one compressed
    meanwhile; then the new generation."""
    log = tmp_path / "live.log"
    log.write_bytes(b"old-line-00\nold-line-01\n")
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, block_bytes=12,
                       poll_interval=0.01)
    source.open()
    key = file_key(os.stat(log))
    got = _follow_until(source, b"new", lambda: _copytruncate(log, b"new\n"))
    assert got == [(key, [b"old-line-00"], False), (key, [b"old-line-01"], False), (key, [], True),
                   (f"{key}:1", [b"new"], False)]


def test_a_one_shot_run_after_a_rename_rotation_finishes_the_old_file_first(tmp_path):
    """A one-shot run (no --follow) after `mv live.log live.log.1` + a new live.log, with lines appended to the old
    file after the last run: those lines are sent (before: only the new file's, the old file's rest never, without a
    word), older file first, its unterminated tail as its last line, and its position saved as finished; the next
    run sends nothing twice."""
    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"three\nfour\nlast")
    _quiet_since(tmp_path / "live.log.1", 3600)  # rotated an hour ago: its writer is done with it
    assert _one_shot_run(log, store) == [b"three", b"four", b"last", b"new"]
    old_key = file_key(os.stat(tmp_path / "live.log.1"))
    assert store.load(old_key).finished and store.load(old_key).offset == (tmp_path / "live.log.1").stat().st_size
    assert _one_shot_run(log, store) == []


def test_a_one_shot_run_stopped_in_a_rotated_file_finishes_it_next_time(tmp_path):
    """Stopped while a one-shot run reads the old file: its unterminated tail is not sent as a line yet (the run
    did not reach its end), and the next run goes on from there."""
    log, store = _rotated_while_stopped(tmp_path, b"one\n", b"two\nthree\ntail")
    source = LogSource(str(log), store, block_bytes=4)
    source.open()
    blocks = source.blocks()
    first = next(blocks)
    assert first.lines == [b"two"]
    seg = first.segment
    store.save(Position(seg.key, seg.generation, first.end, str(log), len(seg.head), head_digest(seg.head)))
    source.stop.set()
    assert list(blocks) == []
    source.close()
    _quiet_since(tmp_path / "live.log.1", 3600)
    assert _one_shot_run(log, store) == [b"three", b"tail", b"new"]


def _quiet_since(path, seconds: float) -> None:
    """Set `path`'s modification time `seconds` back (a file nothing has written to for that long)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_one_shot_run_leaves_the_unfinished_last_line_of_a_fresh_rotation_to_a_later_run(tmp_path):
    """A file rotated away moments ago ends in a line without its newline: its writer may still finish that line
    (it appends to the renamed file until it reopens its log). A one-shot run sends its whole lines and keeps its
    position before that line; the run after the writer finished it sends the line whole (before: b"part" at once,
    then b"ial line" as a line of its own: one line of the log as two records, neither of which parses). Found by a
    review."""
    log, store = _rotated_while_stopped(tmp_path, b"one\n", b"two\npart")
    assert _one_shot_run(log, store) == [b"two", b"new"]
    rotated = tmp_path / "live.log.1"
    old_key = file_key(os.stat(rotated))
    assert store.load(old_key).offset == len(b"one\ntwo\n") and not store.load(old_key).finished
    with rotated.open("ab") as f:
        f.write(b"ial line\n")  # the writer finishes its line, then reopens its log
    assert _one_shot_run(log, store) == [b"partial line"]
    _quiet_since(rotated, 3600)
    assert _one_shot_run(log, store) == []
    assert store.load(old_key).finished  # quiet past the grace and delivered to its end (see the test below)


def test_a_rotated_file_delivered_to_its_end_and_quiet_is_finished_so_its_removal_is_no_loss(tmp_path, caplog):
    """A rotated file whose every byte was sent, stopped within the grace (its position not finished), then left
    quiet: the next start marks it finished, so logrotate removing it days later is not reported as a loss (before:
    "gone ... before the producer read it to its end" and unsent_parts 1, though nothing was lost)."""
    import logging

    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"")
    rotated = tmp_path / "live.log.1"
    _quiet_since(rotated, 3600)
    source = LogSource(str(log), store)
    assert source.rotated_leftovers() == [] and source.unsent_parts == 0
    assert store.load(file_key(os.stat(rotated))).finished
    rotated.unlink()
    later = LogSource(str(log), store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert later.rotated_leftovers() == []
    assert later.unsent_parts == 0 and not caplog.records and store.all() == []


@pytest.mark.parametrize("follow", [True, False])
def test_a_copy_read_after_a_restart_is_not_named_as_never_read(tmp_path, caplog, follow):
    """live.log A was rotated by rename (A finished, live.log B read in part); then, while the producer was
    stopped, B got b2 and was copytruncated to live.log.2. The next run reads b2 from that copy; no warning may
    then say the copy was never read and advise `logpipe produce live.log.2` (before: it did, and following the
    advice sent its lines again under the copy's own src, which the stream cannot drop as repeats)."""
    import logging

    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(b"a1\n")
    st = os.stat(log)
    store.save(Position(file_key(st), 0, 3, str(log), 3, head_digest(b"a1\n"), finished=True))
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    _save_end(store, log, 3)
    time.sleep(0.05)
    with log.open("ab") as f:
        f.write(b"b2\n")
    _copytruncate(log, b"c1\n", copy_name="live.log.2")
    source = LogSource(str(log), store, follow=follow, poll_interval=0.01, rotate_grace_s=0.05)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        source.open()
        got = _lines_until(source.blocks(), b"c1")
    source.close()
    assert got == [b"b2", b"c1"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert named == []


def test_the_newline_that_ends_a_line_sent_without_it_is_not_a_line_on_resume(tmp_path):
    """A run sent the file's last line without its newline (the file ended there) and saved the position at its
    end; the writer then wrote that newline and another line. The next run sends the other line only, at its own
    byte offset: before, it sent the newline as an empty line that is not in the file (quarantined as `empty`, and
    verify found the quarantine different from the file's). A real empty line after a terminated one is kept. CRLF
    alike."""
    def resumed(name: str, sent: bytes, appended: bytes) -> tuple:
        return _resumed(tmp_path, name, sent, appended)

    key, got = resumed("a.log", b"a1\na2 no newline", b"\na3\n")
    assert got == [(key, 17, [b"a3"], False)]
    key, got = resumed("b.log", b"b1\n", b"\nb3\n")  # an empty line, then b3
    assert got == [(key, 3, [b"", b"b3"], False)]
    # the same with CRLF line ends: before, the CR went out as a line of its own
    key, got = resumed("c.log", b"c1\r\nc2 no line end", b"\r\nc3\r\n")
    assert got == [(key, len(b"c1\r\nc2 no line end\r\n"), [b"c3\r"], False)]


def _resumed(tmp_path, name: str, sent: bytes, appended: bytes) -> tuple:
    """The log's identity and the blocks of a run resuming at the end of `sent` (saved by a run before) after
    `appended` came."""
    store = PositionStore(tmp_path / "pos", "t")
    log = tmp_path / name
    log.write_bytes(sent)
    _save_end(store, log, len(sent))
    with log.open("ab") as f:
        f.write(appended)
    source = LogSource(str(log), store)
    source.open()
    got = _blocks_until_idle(source)
    source.close()
    return file_key(os.stat(log)), got


def _resumed_with_warnings(tmp_path, caplog, name: str, sent: bytes, appended: bytes) -> tuple[list, list]:
    """_resumed's lines, and its warnings."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        _, got = _resumed(tmp_path, name, sent, appended)
    return [line for _, _, block, _ in got for line in block], [r.getMessage() for r in caplog.records]


def test_a_line_sent_without_its_end_and_then_continued_is_warned_about(tmp_path, caplog):
    """A one-shot run sent the file's unterminated last line; the writer then went on with that line. Its rest
    goes out as a line of its own (the producer cannot take back what it sent): said in a warning naming the byte,
    where before nothing was said. A newline written after it (the line ended, test above) is no such case."""
    lines, warnings = _resumed_with_warnings(tmp_path, caplog, "d.log", b"d1\nd2 cut", b" here\nd3\n")
    assert lines == [b" here", b"d3"]
    warned = [w for w in warnings if "had no line end yet" in w]
    assert len(warned) == 1 and "byte 9 on" in warned[0], warnings  # after b"d1\nd2 cut"
    lines, warnings = _resumed_with_warnings(tmp_path, caplog, "e.log", b"e1\ne2 cut", b"\ne3\n")
    assert lines == [b"e3"] and not [w for w in warnings if "had no line end yet" in w], warnings


class _LineSink:
    """What the producer sends (the lines), through its real LogShipper; no broker involved."""

    sent = failed = 0

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def partitions(self, topic: str) -> int:
        return 1

    def send(self, topic, value, key, headers=None, partition=None) -> None:
        self.lines.append(value)

    def send_lines(self, topic, lines, src, off, partition) -> int:
        self.lines.extend(lines)
        return off

    def flush(self, timeout: float = 120.0) -> None:
        pass

    def close(self) -> None:
        pass


def _produce_once(monkeypatch, tmp_path, log, summaries: list | None = None) -> list[bytes]:
    """A one-shot `logpipe produce` of `log` (positions under tmp_path/pos); the lines it sent (its summary
    appended to `summaries`)."""
    from logpipe.config import Settings
    from logpipe.producer import run

    sink = _LineSink()
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    summary = run.produce_file(Settings(producer_state_dir=str(tmp_path / "pos")), log, progress=False)
    if summaries is not None:
        summaries.append(summary)
    return sink.lines


def test_a_log_empty_at_the_stop_and_rotated_meanwhile_is_read_from_its_rotation(monkeypatch, tmp_path):
    """The log held nothing when the producer last ran; while it was stopped it got lines and was rotated (renamed,
    a new log made). Before, nothing of it was saved, so the restart did not know the rotated file: its lines were
    lost without a word. Now the run saves a position at byte 0 for it, and the restart reads the rotation first."""
    log = tmp_path / "live.log"
    log.write_bytes(b"")
    assert _produce_once(monkeypatch, tmp_path, log) == []
    assert [p.offset for p in PositionStore(tmp_path / "pos", "access-logs").all()] == [0]
    with log.open("ab") as f:
        f.write(b"a1\na2\n")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    assert _produce_once(monkeypatch, tmp_path, log) == [b"a1", b"a2", b"b1"]


def test_a_log_empty_at_the_stop_and_copytruncated_meanwhile_names_the_copy(monkeypatch, tmp_path, caplog):
    """As above, rotated by copytruncate: the position saved at byte 0 has no first bytes to tell the old content
    from the new, so the copy cannot be known for sure (any rotation could be taken for it); a warning names it
    and how to send it, instead of silence."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"")
    assert _produce_once(monkeypatch, tmp_path, log) == []
    with log.open("ab") as f:
        f.write(b"a1\na2\n")
    _copytruncate(log, b"b1\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _produce_once(monkeypatch, tmp_path, log) == [b"b1"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and f"logpipe produce {tmp_path / 'live.log.1'}" in named[0]


@pytest.mark.parametrize("follow", [False, True])
def test_a_run_stopped_while_reading_a_copy_reads_the_copys_rest_next_time(monkeypatch, tmp_path, follow):
    """a1, a2 delivered; a3, a4 appended while the producer was stopped; copytruncate, then b1. The next run is
    stopped (Ctrl-C, SIGTERM) before it finished the copy. Before, its end saved byte 0 of the new generation over
    the copy's unfinished position, so the run after it sent only b1: a3 and a4 were lost without a word."""
    import threading

    from logpipe.config import Settings
    from logpipe.producer import run

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    assert _produce_once(monkeypatch, tmp_path, log) == [b"a1", b"a2"]
    with log.open("ab") as f:
        f.write(b"a3\na4\n")
    _copytruncate(log, b"b1\n")
    stop = threading.Event()
    blocks = run.LogSource.blocks

    def stopped_at_once(self):
        stop.set()  # the signal handler's event, set before the first block is read
        return blocks(self)

    sink = _LineSink()
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    monkeypatch.setattr(run.LogSource, "blocks", stopped_at_once)
    run.produce_file(Settings(producer_state_dir=str(tmp_path / "pos")), log, follow=follow, progress=False,
                     stop_event=stop)
    assert b"b1" not in sink.lines  # it stopped in the copy
    monkeypatch.setattr(run.LogSource, "blocks", blocks)
    assert sink.lines + _produce_once(monkeypatch, tmp_path, log) == [b"a3", b"a4", b"b1"]


def test_a_rotation_deleted_before_it_is_opened_is_named_and_the_log_read_on(monkeypatch, tmp_path, caplog):
    """A file rotated away while the producer was stopped is deleted (logrotate's `rotate N`) between the scan that
    found it and its open. Before, the run ended with "log file not found" (exit 2); now a warning says its unsent
    lines are lost, and the current log is sent."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    assert _produce_once(monkeypatch, tmp_path, log) == [b"a1"]
    with log.open("ab") as f:
        f.write(b"a2\n")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    scan = LogSource.rotated_leftovers

    def scanned_then_deleted(self):
        found = scan(self)
        for path in found:
            os.unlink(path)
        return found

    monkeypatch.setattr(LogSource, "rotated_leftovers", scanned_then_deleted)
    summaries: list = []
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _produce_once(monkeypatch, tmp_path, log, summaries) == [b"b1"]
    lost = [r.getMessage() for r in caplog.records if "was deleted before the producer could read it" in r.getMessage()]
    assert len(lost) == 1 and str(tmp_path / "live.log.1") in lost[0]
    # counted by the run that saw it (before: by the next one, beside a summary of 0), and once
    monkeypatch.setattr(LogSource, "rotated_leftovers", scan)
    assert _produce_once(monkeypatch, tmp_path, log, summaries) == []
    assert [s.unsent_parts for s in summaries] == [1, 0]


def test_resuming_a_file_rotated_while_stopped_names_that_file(tmp_path, caplog):
    """The message about where a rotated file is resumed names that file and its size, not the log's path (whose
    new file is another size): someone checking a warning looks at the right file."""
    import logging

    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"three\n")
    source = LogSource(str(log), store)
    source.open()
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        assert [line for b in source.blocks() for line in b.lines] == [b"three", b"new"]
    resumed = [r.getMessage() for r in caplog.records if "resuming at byte" in r.getMessage()]
    assert resumed == [f"{tmp_path / 'live.log.1'}: resuming at byte 8 of 14 (src {file_key(os.stat(tmp_path / 'live.log.1'))})"]
    source.close()


def test_a_one_shot_run_reads_the_rest_of_a_line_still_being_written(tmp_path):
    """The log ends mid-line while its writer is at it: the one-shot run waits for the file to be quiet for
    TAIL_SETTLE_S before it sends an unterminated last line, so the line goes out whole (before: b"part" was sent
    as a line, and the next run sent b"ial line" as another: one line, two records that do not parse)."""
    import threading

    log = tmp_path / "live.log"
    log.write_bytes(b"line1\npart")

    def finish_the_line() -> None:
        time.sleep(0.3)
        with log.open("ab") as f:
            f.write(b"ial line\nline3\n")

    writer = threading.Thread(target=finish_the_line)
    writer.start()
    got = _one_shot_run(log, PositionStore(tmp_path / "pos", "t"))
    writer.join()
    assert got == [b"line1", b"partial line", b"line3"]


def test_an_old_log_without_a_final_newline_is_not_waited_for(tmp_path):
    """A file quiet for longer than TAIL_SETTLE_S sends its unterminated last line at once."""
    import os

    log = tmp_path / "old.log"
    log.write_bytes(b"line1\nlast")
    os.utime(log, (time.time() - 3600, time.time() - 3600))
    t0 = time.monotonic()
    assert _one_shot_run(log, PositionStore(tmp_path / "pos", "t")) == [b"line1", b"last"]
    assert time.monotonic() - t0 < TAIL_SETTLE_S


def test_a_rotation_to_a_file_it_cannot_open_is_said_then_an_error(tmp_path, monkeypatch, caplog):
    """logrotate's `create` with an owner or mode the producer cannot read: the new file's lines went unsent
    without a word while the heartbeat stayed fresh. Now a warning at once, the old file read on meanwhile, and
    InputFileError (exit 2) once it lasts rotate_grace_s."""
    from logpipe.producer import source as source_module
    from logpipe.producer.source import InputFileError

    log, source, blocks = _followed(tmp_path, b"one\n")
    assert next(blocks).lines == [b"one"]
    real_open = source_module.open_log

    def refused(path):  # as open_log says it for EACCES (the tests run as root, which chmod cannot stop)
        if os.path.samefile(path, log) and os.stat(path).st_ino != old_ino:
            raise InputFileError(f"log file not readable (permission denied): {path}")
        return real_open(path)

    old_ino = os.stat(log).st_ino
    monkeypatch.setattr(source_module, "open_log", refused)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"new\n")
    with (tmp_path / "live.log.1").open("ab") as f:
        f.write(b"two\n")  # the writer still appends to the old file: read on
    with caplog.at_level("WARNING", logger="logpipe.producer"):
        assert _lines_until(blocks, b"two") == [b"two"]
        for _ in range(5):  # idle polls within the grace: the new file is tried again each time
            next(blocks)
    assert "permission denied" in caplog.text and "rotated" in caplog.text
    assert caplog.text.count("cannot be read yet") == 1  # once, not every poll
    with pytest.raises(InputFileError, match="rotated .* ago and its new file cannot be read"):
        for _ in range(10_000):
            next(blocks)
    source.close()


def _one_shot_run_with_src(log, store: PositionStore) -> list[tuple[str, bytes]]:
    """_one_shot_run, with each line's src (the record key's file part) and the src saved as the run loop saves it."""
    source = LogSource(str(log), store)
    source.open()
    got = []
    for block in source.blocks():
        seg = block.segment
        got += [(seg.src, line) for line in block.lines]
        head = seg.head[:HEAD_BYTES]
        store.save(Position(seg.key, seg.generation, block.end, str(log), len(head), head_digest(head),
                            finished=block.final, src_base=seg.src_base))
    source.close()
    return got


def _moved_to_another_device(store: PositionStore, path) -> str:
    """Save the position of the file at `path` under the identity it had before its file system was mounted again
    (the same inode number on another device number); returns that old identity."""
    st = os.stat(path)
    saved = store.load(file_key(st))
    old = f"{st.st_dev + 1}:{st.st_ino}"
    store.save(Position(old, saved.generation, saved.offset, saved.path, saved.head_len, saved.head_sha256))
    store.delete(saved.key)
    return old


def test_a_file_rotated_away_and_remounted_while_stopped_is_read_on_under_its_old_src(tmp_path, caplog):
    """Rotated away (rename + a new log) while the producer was stopped, and then its file system mounted again (a
    reboot renumbers devices): the rotated file is found by its inode number and first bytes, and its unsent lines
    are sent under its old src, before the new log's. Before, it was taken for gone (a warning, its position
    dropped, `three` never sent)."""
    import logging

    log, store = _rotated_while_stopped(tmp_path, b"one\ntwo\n", b"three\n")
    _quiet_since(tmp_path / "live.log.1", 3600)
    old = _moved_to_another_device(store, tmp_path / "live.log.1")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got = _one_shot_run_with_src(log, store)
    new_log = file_key(os.stat(log))
    assert got == [(old, b"three"), (new_log, b"new")]
    assert "mounted again" in caplog.text and "is gone" not in caplog.text
    rotated = store.load(file_key(os.stat(tmp_path / "live.log.1")))
    assert rotated.finished and rotated.src == old and store.load(old) is None
    assert _one_shot_run_with_src(log, store) == []


def test_a_symlinked_log_finds_its_rotations_beside_the_file_it_names(tmp_path, caplog):
    """A log followed through a symbolic link in another folder (Kubernetes' /var/log/containers/x.log ->
    /var/log/pods/.../0.log), rotated by rename beside the file it names while the producer was stopped: the
    rotated file's unsent lines are sent, then the new file's. Before, only the link's folder was searched, and the
    rotated file was taken for gone."""
    import logging

    pods, links = tmp_path / "pods", tmp_path / "containers"
    pods.mkdir()
    links.mkdir()
    real, link = pods / "0.log", links / "app.log"
    real.write_bytes(b"one\ntwo\n")
    link.symlink_to(real)
    store = PositionStore(tmp_path / "pos", "t")
    assert _one_shot_run(link, store) == [b"one", b"two"]
    with real.open("ab") as f:
        f.write(b"three\n")
    real.rename(pods / "0.log.20261207")
    real.write_bytes(b"new\n")
    _quiet_since(pods / "0.log.20261207", 3600)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _one_shot_run(link, store) == [b"three", b"new"]
    assert "is gone" not in caplog.text


def test_a_rotation_moved_to_another_folder_is_said_to_be_gone_from_the_logs_folder(tmp_path, caplog):
    """logrotate's `olddir` moves a rotation into another folder, where the producer does not look for it: its
    unsent lines are counted as not sent, and the warning names the folder searched and that case."""
    import logging

    log, store = _rotated_while_stopped(tmp_path, b"one\n", b"two\n")
    (tmp_path / "old").mkdir()
    (tmp_path / "live.log.1").rename(tmp_path / "old" / "live.log.1")
    source = LogSource(str(log), store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert source.rotated_leftovers() == []
    assert source.unsent_parts == 1
    (gone,) = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert f"gone from {tmp_path} (" in gone and "olddir" in gone


def test_a_log_in_a_folder_reached_through_a_link_reads_each_rotation_once(tmp_path):
    """The log's folder reached through a linked parent folder (/var/log -> /data/log): the folder is searched
    once, so a rotated file is read once, not once per name of its folder."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "logs").symlink_to(data)
    log = tmp_path / "logs" / "live.log"
    log.write_bytes(b"one\n")
    store = PositionStore(tmp_path / "pos", "t")
    assert _one_shot_run(log, store) == [b"one"]
    with log.open("ab") as f:
        f.write(b"two\n")
    log.rename(tmp_path / "logs" / "live.log.1")
    log.write_bytes(b"new\n")
    _quiet_since(data / "live.log.1", 3600)
    source = LogSource(str(log), store)
    assert len(source.rotated_leftovers()) == 1
    assert _one_shot_run(log, store) == [b"two", b"new"]


def test_a_log_whose_end_was_cut_off_is_read_again_and_the_warning_says_its_lines_count_twice(tmp_path, caplog):
    """The log lost its end while the producer was stopped (truncate -s, or its host crashed before the writer's
    last bytes reached the disk) but kept its first bytes. No mark says which of its bytes are the ones sent, so it
    is read again from byte 0 as a new generation, as a replaced file is; the warning says so plainly (the lines
    sent before are counted twice), where it said 'truncated or replaced'."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"".join(b"line-%03d\n" % i for i in range(1000)))  # beyond the first bytes a position keeps
    store = PositionStore(tmp_path / "pos", "t")
    assert len(_one_shot_run(log, store)) == 1000 and HEAD_BYTES < 900 * 9
    os.truncate(log, 900 * 9)
    with log.open("ab") as f:
        f.write(b"after\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got = _one_shot_run_with_src(log, store)
    key = file_key(os.stat(log))
    assert got == [(f"{key}:1", b"line-%03d" % i) for i in range(900)] + [(f"{key}:1", b"after")]
    (cut,) = [r.getMessage() for r in caplog.records if "cut off" in r.getMessage()]
    assert "8106 bytes, 9000 read and sent" in cut and "counted twice" in cut and "generation 1" in cut


def _truncated_while_stopped_with_b1_unread(tmp_path):
    """a1, a2 delivered; a3 appended and the log copytruncated while the producer was stopped (live.log.1 holds
    a1..a3), then b1 written. Returns (the log, its store, its identity, a function that copytruncates it again:
    the older copy shifted to live.log.2, the new one holding b1, then c1 written)."""
    from logpipe.config import Settings

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    store = PositionStore(tmp_path / "pos", Settings.model_construct().topic)  # the one _produce_once uses
    _save_end(store, log, 6)
    with log.open("ab") as f:
        f.write(b"a3\n")
    _copytruncate(log, b"b1\n")

    def truncated_again() -> None:
        (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
        _copytruncate(log, b"c1\n")

    return log, store, file_key(os.stat(log)), truncated_again


def test_a_log_truncated_again_before_its_new_content_was_read_is_read_from_the_new_copy(tmp_path):
    """The run after a copytruncate reads a3 from the copy first; meanwhile the log, b1 still unread, is
    copytruncated again and c1 written. Before, the new generation had no first bytes yet, so this second
    truncation went unseen: b1, only in the new copy, was never sent, without a word. Now b1 comes from the new
    copy under its generation's src."""
    log, store, key, truncated_again = _truncated_while_stopped_with_b1_unread(tmp_path)
    source = LogSource(str(log), store, follow=True, poll_interval=0.01)
    source.open()
    got = [(src, lines) for src, lines, _ in _follow_until(source, b"c1", truncated_again) if lines]
    assert got == [(key, [b"a3"]), (f"{key}:1", [b"b1"]), (f"{key}:2", [b"c1"])], got
    assert source.unsent_parts == 0


def test_a_one_shot_run_truncated_again_before_the_new_content_leaves_it_to_the_next_run(monkeypatch, tmp_path):
    """The same in a one-shot run: it stops at the second truncation (it does not read the new content past one
    it has not resolved) and the next run sends b1 from the new copy, then c1."""
    log, store, _, truncated_again = _truncated_while_stopped_with_b1_unread(tmp_path)
    blocks = LogSource.blocks

    def truncated_after_the_first_block(self):
        for n, item in enumerate(blocks(self)):
            yield item
            if n == 0:
                truncated_again()

    monkeypatch.setattr(LogSource, "blocks", truncated_after_the_first_block)
    assert _produce_once(monkeypatch, tmp_path, log) == [b"a3"]
    monkeypatch.setattr(LogSource, "blocks", blocks)
    assert _produce_once(monkeypatch, tmp_path, log) == [b"b1", b"c1"]


def test_a_leftover_renamed_on_before_it_is_opened_is_read_by_its_identity(tmp_path):
    """Two files rotated away while the producer was stopped (A at live.log.2, B at live.log.1, each with lines
    unsent). While A is read, the log is rotated on: A to .3, B to .2, a copy of the log (copytruncate) made .1.
    Before, the reader opened ".1" by the name it had found B under: the copy, taken for a new file and sent from
    byte 0 under its own src (the job cannot drop those lines as repeats), and B's lines were never read. Now B
    is found by its identity under its new name."""
    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(b"a1\n")
    _save_end(store, log, 3)
    with log.open("ab") as f:
        f.write(b"a2\na3\n")
    a = file_key(os.stat(log))
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    _save_end(store, log, 3)
    with log.open("ab") as f:
        f.write(b"b2\n")
    b = file_key(os.stat(log))
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"c1\n")

    def rotated_on() -> None:
        (tmp_path / "live.log.2").rename(tmp_path / "live.log.3")
        (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
        _copytruncate(log, b"c2\n")

    source = LogSource(str(log), store, rotate_grace_s=0.0)
    source.open()
    got = []
    for n, block in enumerate(source.blocks()):
        got.append((block.src, block.lines))
        if n == 0:
            rotated_on()
    source.close()
    assert [(src, lines) for src, lines in got if lines] == [(a, [b"a2", b"a3"]), (b, [b"b2"])], got


def test_a_copy_read_while_the_producer_ran_is_not_named_as_never_read_at_the_next_start(tmp_path, caplog):
    """While a follow run went on: the log A was renamed live.log.1 (A's last lines sent early on), the new log B
    written, then A shifted to .2 and B copytruncated to .1, the copy read, and the run stopped later (B's
    position saved then). At the next start, a warning said the copy was never read and advised `logpipe produce
    live.log.1`, which sent its lines twice under the copy's src: the start compared the copy's time with the last
    save of the rotated A only, not with the run's last save."""
    import logging

    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(b"a1\n")
    _save_end(store, log, 3)  # A, sent early on
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\nb2\n")
    time.sleep(0.05)
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    _copytruncate(log, b"c1\n")  # the copy (live.log.1) holds b1, b2: read by the run
    time.sleep(0.05)
    st = os.stat(log)
    store.save(Position(file_key(st), 1, 3, str(log), 3, head_digest(b"c1\n")))  # the run's last save, at its stop
    source = LogSource(str(log), store, rotate_grace_s=300.0)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert source.rotated_leftovers() == [str(tmp_path / "live.log.2")]  # A: written within the grace
    assert [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()] == []
    assert source.unsent_parts == 0


@pytest.mark.parametrize("follow", [True, False], ids=["follow", "one-shot"])
def test_a_log_renamed_away_while_the_producer_starts_is_the_one_read(monkeypatch, tmp_path, follow):
    """The producer checks the log, then waits for Kafka. A log renamed away in between (a rotation) was opened
    again by its path: missing ("log file not found", exit 2, with --follow too), or the new file, and the lines
    of the renamed one were never read. The file checked is the one read; following, the new file after it."""
    import threading

    from logpipe.config import Settings
    from logpipe.producer import run

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    sink = _LineSink()
    stop = threading.Event()

    def renamed_while_waiting_for_kafka(*args, **kwargs) -> None:
        log.rename(tmp_path / "live.log.1")

        def new_file_then_stop() -> None:
            time.sleep(0.3)
            log.write_bytes(b"b1\n")
            deadline = time.monotonic() + 10
            while b"b1" not in sink.lines and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()

        if follow:
            threading.Thread(target=new_file_then_stop, daemon=True).start()

    monkeypatch.setattr(run.health, "wait_for_kafka", renamed_while_waiting_for_kafka)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    run.produce_file(Settings(producer_state_dir=str(tmp_path / "pos")), log, follow=follow, progress=False,
                     stop_event=stop)
    assert sink.lines == ([b"a1", b"b1"] if follow else [b"a1"])


def test_a_folder_given_as_the_log_is_called_a_folder(tmp_path):
    from logpipe.producer.source import InputFileError, open_log

    with pytest.raises(InputFileError, match=f"^{tmp_path} is a folder: give the log file in it$"):
        open_log(tmp_path)


def _read_blocks(source: LogSource, n: int = 40) -> list[tuple[str, bytes]]:
    """(src, line) of the lines of the first `n` items (blocks and waits) of a following source."""
    got = []
    for item in source.blocks():
        got += [(item.src, line) for line in getattr(item, "lines", [])]
        n -= 1
        if not n:
            break
    source.close()
    return got


def _a1_sent_a2_not(tmp_path) -> tuple:
    """live.log: a1 sent (its end saved), then a2 appended while the producer was stopped. (log, store)."""
    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 3)
    with log.open("ab") as f:
        f.write(b"a2\n")
    return log, store


def _checked_then_renamed(log, store: PositionStore) -> LogSource:
    """The log checked as `produce` checks it at the start, then renamed to live.log.1 and a new log (b1) made
    before the first read; a source following it, from the file checked."""
    from logpipe.producer.source import check_log

    checked = check_log(log)
    log.rename(log.with_name("live.log.1"))
    log.write_bytes(b"b1\n")
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=0.2)
    source.open(checked)
    return source


def test_a_log_opened_then_renamed_before_the_first_read_is_not_taken_for_a_rotation(tmp_path, caplog):
    """The producer opens the log, waits for Kafka, then reads. Renamed in between (to .1, a new log made), the
    file it opened was taken at the start's scan for a rotation it never read: named in a warning (whose advice
    sends its lines twice) and counted as not sent."""
    import logging

    log = tmp_path / "live.log"
    old = tmp_path / "live.log.1"
    old.write_bytes(b"z1\n")
    store = PositionStore(tmp_path / "pos", "t")
    store.save(Position(file_key(os.stat(old)), 0, 3, str(log), 3, head_digest(b"z1\n"), finished=True))
    time.sleep(0.05)
    old.rename(tmp_path / "live.log.2")
    log.write_bytes(b"a1\n")
    source = _checked_then_renamed(log, store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        got = [line for _, line in _read_blocks(source)]
    assert got == [b"a1", b"b1"], got
    assert not [r for r in caplog.records if "never read it" in r.getMessage()]
    assert source.unsent_parts == 0


def test_a_resumed_log_opened_then_renamed_before_the_first_read_is_read_once(tmp_path):
    """The same with a log that has a saved position: the scan took the file being read for a leftover and read
    it a second time beside itself."""
    log, store = _a1_sent_a2_not(tmp_path)
    source = _checked_then_renamed(log, store)
    assert [line for _, line in _read_blocks(source)] == [b"a2", b"b1"]


def test_a_rotated_file_truncated_while_stopped_is_said_to_be_truncated_not_gone(tmp_path, caplog):
    """A rotated file with unsent lines, copytruncated while the producer was stopped: it is still there, with
    other content. The warning said it was gone from the folder; it now says it was truncated and where its
    lines are (the copy); counted as not sent, as before."""
    import logging

    log, store = _a1_sent_a2_not(tmp_path)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    _copytruncate(tmp_path / "live.log.2", b"", copy_name="live.log.3")
    source = LogSource(str(log), store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        source.rotated_leftovers()
    said = [r.getMessage() for r in caplog.records if "was truncated (copytruncate) while" in r.getMessage()]
    assert len(said) == 1 and f"now {tmp_path / 'live.log.2'}" in said[0] and "tail -c +4" in said[0], said
    assert f"in the copy made of it, {tmp_path / 'live.log.3'})" in said[0], said
    # one warning and one part: neither the truncated file nor its copy is named again as a rotation never read
    assert not [r for r in caplog.records if "is gone from" in r.getMessage() or "never read it" in r.getMessage()]
    assert source.unsent_parts == 1


def test_leftovers_renamed_on_between_the_scan_and_their_opens_are_each_read_once(monkeypatch, tmp_path):
    """Two rotated files with unsent lines, the newer (B, .1) saved before the older (A, .2), so B is read first;
    between the start's scan and the opens the log rotates on (.2 -> .3, .1 -> .2, a copy made .1). B, looked up
    under its new name .2, must not take the place of A, found there at the scan: A was then never read and B
    read twice."""
    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(b"b1\n")
    _save_end(store, log, 3)  # B's position, saved first
    with log.open("ab") as f:
        f.write(b"b2\n")
    b = file_key(os.stat(log))
    log.rename(tmp_path / "live.log.1")
    (tmp_path / "live.log.2").write_bytes(b"a1\n")
    _save_end(store, tmp_path / "live.log.2", 3)  # A's, saved after
    a_pos = store.load(file_key(os.stat(tmp_path / "live.log.2")))
    store.save(Position(a_pos.key, 0, 3, str(log), 3, head_digest(b"a1\n")))  # A's position under the log's path
    with (tmp_path / "live.log.2").open("ab") as f:
        f.write(b"a2\n")
    log.write_bytes(b"c1\n")
    scan = LogSource.rotated_leftovers

    def scanned_then_rotated_on(self):
        found = scan(self)
        (tmp_path / "live.log.2").rename(tmp_path / "live.log.3")
        (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
        _copytruncate(log, b"c2\n")
        return found

    monkeypatch.setattr(LogSource, "rotated_leftovers", scanned_then_rotated_on)
    source = LogSource(str(log), store, rotate_grace_s=0.0)
    source.open()
    got = [(blk.src, line) for blk in source.blocks() for line in blk.lines]
    source.close()
    assert sorted(line for _, line in got if line in (b"a2", b"b2")) == [b"a2", b"b2"], got
    assert (b, b"b2") in got and (a_pos.key, b"a2") in got


def test_a_rotated_file_truncated_and_written_again_while_stopped_is_named_for_its_new_lines(tmp_path, caplog):
    """The log, a2 unsent, copytruncated (its copy .1 holds a2), written again (a3) and then renamed away, all while
    the producer was stopped. The warning about the truncation names the copy for a2; a3, in the renamed file
    from byte 0, is named too (a rotation never read) and counted: before, nothing said a3 was not sent."""
    import logging
    import shutil

    log, store = _a1_sent_a2_not(tmp_path)
    shutil.copyfile(log, tmp_path / "live.log.1")
    os.truncate(log, 0)
    with log.open("ab") as f:
        f.write(b"a3\n")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")
    source = LogSource(str(log), store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        source.open()
        assert [line for b in source.blocks() for line in b.lines] == [b"b1"]
    source.close()
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "was truncated (copytruncate) while" in m and str(tmp_path / "live.log.2") in m]
    assert [m for m in said if m.startswith(f"{tmp_path / 'live.log.1'} looks like a rotation")], said
    assert source.unsent_parts == 2


def test_a_log_rotated_then_copytruncated_while_the_producer_starts_names_the_copy(tmp_path, caplog):
    """Between the start's check of the log (A, its position saved) and its first read: A renamed away, B written
    and rotated on, B's copy made .1 and B truncated. A is read (the file checked) and the new log followed; the
    copy, made after the check, holds B's lines that nothing reads: named and counted (before: nothing said)."""
    import logging
    import shutil

    from logpipe.producer.source import check_log

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 3)
    checked = check_log(log)
    time.sleep(0.05)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\nb2\n")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    shutil.copyfile(log, tmp_path / "live.log.1")
    os.truncate(log, 0)
    with log.open("ab") as f:
        f.write(b"b3\n")
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=0.2)
    source.open(checked)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(source.blocks(), b"b3") == [b"b3"]
    source.close()
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named
    assert source.unsent_parts == 1


def test_a_new_log_copytruncated_while_the_producer_starts_is_read_from_its_copy(tmp_path):
    """A log with no saved position, checked at the start, then copytruncated (and written again) before its first
    read: its first bytes as checked tell the truncation, and its lines come from the copy (before: lost, without
    a word)."""
    from logpipe.producer.source import check_log

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    checked = check_log(log)
    _copytruncate(log, b"b1\n")
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, poll_interval=0.01)
    source.open(checked)
    assert _lines_until(source.blocks(), b"b1") == [b"a1", b"a2", b"b1"]
    source.close()
    assert source.unsent_parts == 0


def test_two_copytruncates_between_two_looks_name_the_copy_in_between(tmp_path, caplog):
    """Following: a2 written, the log copytruncated (copy .1), x1 written, the copy shifted to .2 and the log
    copytruncated again (the new .1 holds x1), y1 written, all between two looks. a2 is read from the .2 copy (it
    starts as the log did); x1, only in .1, is named and counted (before: not a word, then or at the next start)."""
    import logging

    log, source, blocks = _following_a1(tmp_path)
    with log.open("ab") as f:
        f.write(b"a2\n")
    _copytruncate(log, b"x1\n")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    _copytruncate(log, b"y1\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(blocks, b"y1") == [b"a2", b"y1"]
    source.close()
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named
    assert source.unsent_parts == 1


def test_a_log_copytruncated_after_the_start_s_open_is_read_from_its_copy_and_not_named(tmp_path, caplog):
    """a1 sent, the producer stopped; at the start (a finished rotation's position beside the log's), the log is
    copytruncated after it was opened and before its first read. The start's never-read check named the copy
    (and counted it as not sent) though the same run then reads a2 from it: its advice would send a2 twice."""
    import logging
    import shutil

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    store = PositionStore(tmp_path / "pos", "t")
    old = tmp_path / "live.log.2"
    old.write_bytes(b"z1\n")
    store.save(Position(file_key(os.stat(old)), 0, 3, str(log), 3, head_digest(b"z1\n"), finished=True))
    store.save(Position(file_key(os.stat(log)), 0, 3, str(log), 3, head_digest(b"a1\n")))
    time.sleep(0.05)
    source = LogSource(str(log), store, follow=True, poll_interval=0.01, rotate_grace_s=0.05)
    source.open()
    shutil.copyfile(log, tmp_path / "live.log.1")
    os.truncate(log, 0)
    with log.open("ab") as f:
        f.write(b"b1\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(source.blocks(), b"b1") == [b"a2", b"b1"]
    source.close()
    assert not [r for r in caplog.records if "never read it" in r.getMessage()]
    assert source.unsent_parts == 0


def _following_a1(tmp_path, rotate_grace_s: float = 300.0):
    """live.log (a1) followed, and a1 read. (the log, the source, its blocks)."""
    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    source = LogSource(str(log), PositionStore(tmp_path / "pos", "t"), follow=True, poll_interval=0.01,
                       rotate_grace_s=rotate_grace_s)
    source.open()
    blocks = source.blocks()
    assert next(blocks).lines == [b"a1"]
    return log, source, blocks


def test_a_log_taken_up_empty_and_copytruncated_before_its_first_read_names_the_copy(tmp_path, caplog):
    """The log is renamed away and the new one is still empty when the producer takes it up; then b1 is written,
    the log copytruncated (the copy holds b1) and b2 written, before the producer reads it. With no first bytes
    to compare, the truncation is not seen: b1, only in the copy, is not read, but it is named and counted
    (before: lost without a word, then and at the next start)."""
    import logging

    log, source, blocks = _following_a1(tmp_path, rotate_grace_s=0.05)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"")
    for _ in range(40):  # the new (empty) file taken up, the renamed one finished
        next(blocks)
    assert source.current.key == file_key(os.stat(log)) and source.current.head == b""
    with log.open("ab") as f:
        f.write(b"b1\n")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    _copytruncate(log, b"b2\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(blocks, b"b2") == [b"b2"]
    source.close()
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named
    assert source.unsent_parts == 1


def _line(n: int) -> bytes:
    """A log line; every one begins with the same 44 bytes, as a busy host's lines do."""
    return b'127.0.0.1 - - [07/Dec/2026:10:00:00 +0000] "GET /L%07d HTTP/1.1" 200 10\n' % n


def test_a_rotation_never_read_is_named_though_the_new_log_holds_only_part_of_a_line(tmp_path, caplog):
    """Rotated twice while the producer was stopped; the new log holds the first 20 bytes of a line, which every
    line begins with. The start named no rotation (the file in between was taken for a copy of the log, as it
    begins with those bytes); it now names and counts it."""
    import logging

    log = tmp_path / "live.log"
    store = PositionStore(tmp_path / "pos", "t")
    log.write_bytes(_line(1))
    _save_end(store, log, len(_line(1)))
    time.sleep(0.05)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(_line(2) + _line(3))
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(_line(4)[:20])
    source = LogSource(str(log), store)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        source.open()
        list(source.blocks())
    source.close()
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named
    assert source.unsent_parts == 1


def test_an_empty_rotation_in_between_is_named_as_its_writer_may_still_fill_it(tmp_path, caplog):
    """Between two looks: the log renamed away, a new empty log B made, then rotated on too (B to .1) and a new
    log made. B is empty when the producer sees the rotation, but its writer, not reopened yet, may still write
    to it: it is named and counted (a warning that may turn out empty, as the run's closing warning says), not
    skipped, since nothing looks at it again."""
    import logging

    log, source, blocks = _following_a1(tmp_path, rotate_grace_s=0.2)
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"")
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"c1\n")
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _lines_until(blocks, b"c1") == [b"c1"]
        with (tmp_path / "live.log.1").open("ab") as f:
            f.write(b"b1\n")
    source.close()
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), named
    assert source.unsent_parts == 1


def test_a_log_written_anew_with_the_same_content_and_more_is_read_on_under_its_old_src(tmp_path, caplog):
    """The log replaced, while the producer was stopped, by a new file holding what it held and more (rsync's
    temporary file renamed over it; `cp` and `mv`): the old file is gone, the new one starts with its first bytes
    and holds at least the bytes read. The producer goes on after the lines it sent, under the old src, and does
    not report the old file as unsent. Before, the new file was read from byte 0 under a new src (every line sent
    before counted twice by the stream), and the old one was said to hold lines never sent."""
    import logging

    log = tmp_path / "live.log"
    log.write_bytes(b"one\ntwo\n")
    store = PositionStore(tmp_path / "pos", "t")
    first = _one_shot_run_with_src(log, store)
    assert [line for _, line in first] == [b"one", b"two"]
    src = first[0][0]
    tmp = tmp_path / ".live.log.XyZ12"  # rsync's temporary name (not a rotation name of the log)
    tmp.write_bytes(b"one\ntwo\nthree\n")
    tmp.rename(log)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert _one_shot_run_with_src(log, store) == [(src, b"three")]
    assert "written anew" in caplog.text and "not sent" not in caplog.text, caplog.text
    assert store.load(file_key(os.stat(log))).src == src

    # the same content, but the old file still beside the log (a rotation that copied it): not taken for it
    kept = tmp_path / "other.log"
    kept.write_bytes(b"a\nb\n")
    store2 = PositionStore(tmp_path / "pos2", "t")
    assert [line for _, line in _one_shot_run_with_src(kept, store2)] == [b"a", b"b"]
    os.link(kept, tmp_path / "other.log.1")  # the old file stays, under a rotation's name
    (tmp_path / "other.log.new").write_bytes(b"a\nb\nc\n")
    (tmp_path / "other.log.new").rename(kept)
    got = _one_shot_run_with_src(kept, store2)
    assert [line for _, line in got] == [b"a", b"b", b"c"] and got[0][0] == file_key(os.stat(kept))


def test_two_rotations_while_a_busy_run_never_looked_at_the_path_name_the_file_in_between(tmp_path, caplog):
    """A `--follow` run busy on live.log (A: a backlog, `--speed`) never looked at the path while the log was
    rotated twice (A -> .1 -> .2; B -> .1; C new), then stopped, saving A's position after B was last written. The
    next start names B as never read: the time it compares with is when the run last saw its file at the path, not
    its last save. Before, B went unnamed and its lines unsent, silently (the producer review of 2026-12-07)."""
    import logging
    from datetime import datetime, timezone

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\na2\n")
    store = PositionStore(tmp_path / "pos", "t")
    looked = datetime.fromtimestamp(time.time() - 10, timezone.utc).isoformat()  # the run's last look at the path
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"b1\n")  # B, written after that look
    (tmp_path / "live.log.1").rename(tmp_path / "live.log.2")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"c1\n")
    a = os.stat(tmp_path / "live.log.2")  # the run's save at its stop (after B was written): A read to its end
    store.save(Position(file_key(a), 0, 6, str(log), 6, head_digest(b"a1\na2\n"), path_seen_at=looked))
    source = LogSource(str(log), store, rotate_grace_s=0.0)
    source.open()
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        assert [line for block in source.blocks() for line in block.lines] == [b"c1"]
    named = [r.getMessage() for r in caplog.records if "never read it" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(str(tmp_path / "live.log.1")), caplog.text
    assert source.unsent_parts == 1
    source.close()


def test_a_damaged_position_file_is_a_clear_error_naming_it(tmp_path):
    """A position file edited or damaged by hand (saves are atomic): the producer stops with an error naming the
    file and what to do (`logpipe produce` prints it, exit 2), not a JSON traceback."""
    from logpipe.producer.position import PositionFolderError

    log = tmp_path / "live.log"
    log.write_bytes(b"a1\n")
    store = PositionStore(tmp_path / "pos", "t")
    _save_end(store, log, 3)
    key = file_key(os.stat(log))
    damaged = store.directory / (key.replace(":", "-") + ".json")
    damaged.write_text('{"key": "65')
    for read in (lambda: store.load(key), store.all):
        said = f"the saved position {re.escape(str(damaged))} cannot be read .*remove it"
        with pytest.raises(PositionFolderError, match=said):
            read()
    damaged.write_text('{"key": "x"}')  # valid JSON, not a position
    with pytest.raises(PositionFolderError, match="TypeError"):
        store.load(key)


def test_a_followed_log_cut_to_a_shorter_size_says_its_lines_are_sent_twice(tmp_path, caplog):
    """`truncate -s` to a size that keeps its first bytes, while followed: the producer reads it again from byte 0
    as a new generation (it cannot tell which of its bytes were the ones sent), and now says that the lines it
    still holds are sent again and counted twice, as a start after such a cut says. Before, the warning said only
    that what it held after the cut was not sent (the producer review of 2026-12-07)."""
    import logging

    lines = [b"line %05d" % i for i in range(1000)]  # 11 bytes each: more than the first bytes kept (4 KB)
    log, source, blocks = _followed(tmp_path, b"".join(line + b"\n" for line in lines))
    assert _lines_until(blocks, lines[-1]) == lines
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        os.truncate(log, 11 * 600)  # the first 600 lines kept
        with log.open("ab") as f:
            f.write(b"n1\n")
        assert _lines_until(blocks, b"n1") == lines[:600] + [b"n1"]  # read again: sent twice
    warned = [r.getMessage() for r in caplog.records if "counted twice" in r.getMessage()]
    assert len(warned) == 1 and "its end was cut off (11000 bytes had been read and sent" in warned[0], caplog.text
    source.close()


def test_a_start_that_fails_while_placing_the_cursor_leaves_no_file_open(tmp_path, monkeypatch):
    """The position store may refuse a save while the start places the cursor (a folder that cannot be written):
    the error reaches the user, and the log (opened by the caller's check or by open()) is closed, not leaked."""
    from logpipe.producer.position import PositionFolderError
    from logpipe.producer.source import check_log

    log = tmp_path / "live.log"
    log.write_bytes(b"one\ntwo\n")
    store = PositionStore(tmp_path / "pos", "t")

    def refused(*args, **kwargs):
        raise PositionFolderError("the folder of the saved positions cannot be written")

    for checked in (None, check_log(log)):
        before = set(os.listdir("/proc/self/fd"))
        source = LogSource(str(log), store)
        monkeypatch.setattr(source, "_resume", refused)
        with pytest.raises(PositionFolderError):
            source.open(checked)
        left = set(os.listdir("/proc/self/fd")) - before
        assert not left, left
        if checked is not None:
            with pytest.raises(OSError):
                os.fstat(checked.fd)  # closed (no other file was opened since to take its number)
