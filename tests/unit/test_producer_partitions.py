"""The producer's partition choice: every record of one log on one partition (its order kept), chosen stably."""

from __future__ import annotations

import functools
import os

import pytest

pytestmark = pytest.mark.unit


class _PartitionSink:
    """Records (partition, key) of what the producer sends on a topic of `n` partitions; no broker involved."""

    sent = failed = 0

    def __init__(self, n: int) -> None:
        self.n = n
        self.records: list[tuple[int | None, bytes]] = []

    def partitions(self, topic: str) -> int:
        return self.n

    def send(self, topic, value, key, headers=None, partition=None) -> None:
        self.records.append((partition, key))
        self.sent += 1

    def send_lines(self, topic, lines, src, off, partition) -> int:
        for line in lines:
            self.records.append((partition, b"lp:%s:%d" % (src, off)))
            off += len(line) + 1
        self.sent += len(lines)
        return off

    def flush(self, timeout: float = 120.0) -> None:
        pass

    def close(self) -> None:
        pass


def _produce(monkeypatch, tmp_path, log, sink, speed: str = "max"):
    from logpipe.config import Settings
    from logpipe.producer import run
    from logpipe.producer.source import LogSource

    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    monkeypatch.setattr(run, "LogSource", functools.partial(LogSource, block_bytes=64))  # many blocks per file
    s = Settings(speed=speed, producer_state_dir=str(tmp_path / "pos"))
    return run.produce_file(s, log, progress=False)


def _line(i: int) -> bytes:
    return b'1.2.3.4 - - [2004-05-18 00:00:%02d] "GET / HTTP/1.1" 200 1\n' % (i % 60)


@pytest.mark.parametrize("speed", ["max", "1000"])
def test_every_block_of_a_log_goes_to_one_partition(monkeypatch, tmp_path, speed):
    """On a topic of 4 partitions, a file read in many blocks: every record on one partition, in file order (before:
    block k on partition k % 4, so the stream could read block k+1 before the rest of block k, and count those
    in-order lines late). Also after a rename rotation (the old file's rest, then the new file) and a restart."""
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(40)))  # ~60 bytes a line: ~40 blocks of 64 bytes
    sink = _PartitionSink(4)
    assert _produce(monkeypatch, tmp_path, log, sink, speed).lines == 40
    with log.open("ab") as f:
        f.write(b"".join(_line(i) for i in range(40, 50)))
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"".join(_line(i) for i in range(50, 60)))
    assert _produce(monkeypatch, tmp_path, log, sink, speed).lines == 20
    parts = {p for p, _ in sink.records}
    assert len(parts) == 1 and parts <= set(range(4)), parts
    keys = [k for _, k in sink.records]
    assert len(keys) == len(set(keys)) == 60


def test_the_partition_is_a_stable_hash_of_the_log_and_fits_the_topic():
    """crc32 of the log's path, not Python's hash() (salted per process): the same log maps to the same partition
    in every run, and several logs spread over the partitions."""
    import zlib

    from logpipe.producer.run import partition_of

    path = "/var/log/nginx/access.log"
    assert partition_of(path, 1) == 0 and partition_of(path, 0) == 0
    assert partition_of(path, 8) == zlib.crc32(path.encode()) % 8
    assert {partition_of(f"/logs/{i}.log", 4) for i in range(32)} == set(range(4))
    # a file name that is not UTF-8 (Python holds its bytes as surrogates): hashed by its bytes, no error
    odd = os.fsdecode(b"/var/log/acc\xe9s.log")
    assert partition_of(odd, 8) == zlib.crc32(b"/var/log/acc\xe9s.log") % 8


def test_a_log_read_again_under_another_path_keeps_its_partition(monkeypatch, tmp_path):
    """The same file resumed through a link to it, then after a rename (it is resumed by its identity either way):
    every record stays on the partition of its first lines, which the saved position names. Before, the partition
    was a hash of the path given, so the new lines went to another partition, and a stream catching up read them
    beside the older lines of the first partition and counted those late."""
    from logpipe.producer.run import partition_of

    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(10)))
    sink = _PartitionSink(8)
    first = partition_of(str(log), 8)
    # names that hash to other partitions than the log's
    link, renamed = (next(p for i in range(100) if partition_of(str(p := tmp_path / f"{name}-{i}.log"), 8) != first)
                     for name in ("link", "renamed"))
    assert _produce(monkeypatch, tmp_path, log, sink).lines == 10
    with log.open("ab") as f:
        f.write(b"".join(_line(i) for i in range(10, 20)))
    link.symlink_to(log)
    assert _produce(monkeypatch, tmp_path, link, sink).lines == 10
    with log.open("ab") as f:
        f.write(b"".join(_line(i) for i in range(20, 30)))
    log.rename(renamed)
    assert _produce(monkeypatch, tmp_path, renamed, sink).lines == 10
    assert {p for p, _ in sink.records} == {first}
    assert len({k for _, k in sink.records}) == 30


@pytest.mark.parametrize(("created", "saved_id", "now_id", "dropped"), [
    (True, None, "id-1", True),         # the producer made the topic: nothing of the positions is in it
    (False, "id-1", "id-2", True),      # deleted and made again by someone else since the positions were saved
    (False, "id-1", "id-1", False),     # the same topic: resume
    (False, None, "id-1", False),       # positions of a logpipe that kept no id: resumed, the id recorded now
    (False, "id-1", None, False),       # no id from the broker: nothing to compare, nothing dropped
])
def test_positions_are_dropped_only_for_another_topic_of_the_same_name(monkeypatch, tmp_path, caplog, created,
                                                                      saved_id, now_id, dropped):
    """Saved positions stand for lines of one topic: those of a topic made since (by the producer, or deleted and
    made again by hand: another broker id) are dropped with a warning, so the file is sent again from byte 0
    instead of resuming past lines the topic does not hold. The topic's id is recorded beside them."""
    import logging

    from logpipe.config import Settings
    from logpipe.producer import run
    from logpipe.producer.position import Position, PositionStore

    s = Settings(producer_state_dir=str(tmp_path / "pos"))
    store = PositionStore(s.producer_positions_dir, s.topic)
    store.save(Position("1:2", 0, 100, str(tmp_path / "a.log"), 0, ""))
    if saved_id:
        store.record_topic_id(saved_id)
    monkeypatch.setattr(run, "ensure_topic", lambda *a: created)
    monkeypatch.setattr(run.topics, "topic_id", lambda *a: now_id)
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"):
        run.claim_topic(s, store, tmp_path / "a.log")
    assert (store.all() == []) == dropped
    warned = [r.getMessage() for r in caplog.records if "dropped 1 saved position" in r.getMessage()]
    assert len(warned) == int(dropped)
    if dropped and not created:
        assert "deleted and made again" in warned[0] and "id-2" in warned[0]
    assert store.topic_id() == (now_id or saved_id)


def test_the_confluent_sink_refuses_a_topic_it_cannot_describe():
    """librdkafka describes a deleted or unknown topic with an error and no partitions: the sink raises, as
    kafka-python does, instead of counting 0 partitions (the log would then go to partition 0, not its own)."""
    from types import SimpleNamespace

    from logpipe.producer.clients import ConfluentSink

    def sink_seeing(topics: dict) -> ConfluentSink:
        sink = ConfluentSink.__new__(ConfluentSink)  # no client: only its metadata call is used
        sink._p = SimpleNamespace(list_topics=lambda topic, timeout: SimpleNamespace(topics=topics))
        return sink

    good = SimpleNamespace(error=None, partitions={0: object(), 1: object(), 2: object()})
    assert sink_seeing({"t": good}).partitions("t") == 3
    for meta in (SimpleNamespace(error="UNKNOWN_TOPIC_OR_PART", partitions={}), None,
                 SimpleNamespace(error=None, partitions={})):
        with pytest.raises(RuntimeError, match="Kafka cannot describe topic 't'"):
            sink_seeing({"t": meta} if meta is not None else {}).partitions("t")


def test_without_a_terminal_progress_is_logged(monkeypatch, tmp_path, caplog):
    """No progress bar off a terminal (nohup, CI, a container): a progress line is logged every PROGRESS_LOG_S
    instead, with the lines sent and the share of the file."""
    import logging

    from logpipe.producer import run

    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(40)))
    monkeypatch.setattr(run, "PROGRESS_LOG_S", 0.0)
    monkeypatch.setenv("LOGPIPE_PRODUCER_CHECKPOINT_S", "0")
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 40
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sent ")]
    assert progress and "of what there is to read" in progress[-1], caplog.text
    assert "sent 40 lines" in progress[-1] and "100% of what there is to read" in progress[-1], progress


def test_progress_counts_the_rotated_backlog_read_before_the_log(monkeypatch, tmp_path, caplog):
    """A run that first reads a file rotated away while it was stopped: the progress's share is of that backlog
    and the new log's rest together (it said 100 % "of the file", the new one-line log, from its first line)."""
    import logging

    from logpipe.producer import run

    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(10)))
    monkeypatch.setenv("LOGPIPE_PRODUCER_CHECKPOINT_S", "0")
    assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 10
    with log.open("ab") as f:
        f.write(b"".join(_line(i) for i in range(10, 3_000)))
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(_line(3_000))
    monkeypatch.setattr(run, "PROGRESS_LOG_S", 0.0)
    with caplog.at_level(logging.INFO, logger="logpipe.producer"):
        assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 2_991
    shares = [int(m.split(", ")[-1].split("%")[0]) for r in caplog.records
              if (m := r.getMessage()).startswith("sent ") and "%" in m]
    assert shares and shares[0] < 100 and shares[-1] == 100, shares


def test_a_one_shot_run_that_finds_its_log_truncated_says_the_rest_is_not_sent(monkeypatch, tmp_path):
    """copytruncate while a one-shot run reads: it stops at its last whole line (the next run reads the rest from
    the copy) and its summary says so, so that the command does not exit 0 as if the log were sent."""
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(40)))

    class TruncatingSink(_PartitionSink):
        def send_lines(self, topic, lines, src, off, partition) -> int:
            if not self.records:  # logrotate's copytruncate, after the first block
                (tmp_path / "access.log.1").write_bytes(log.read_bytes())
                log.write_bytes(b"")
            return super().send_lines(topic, lines, src, off, partition)

    summary = _produce(monkeypatch, tmp_path, log, TruncatingSink(1))
    assert 0 < summary.lines < 40 and summary.truncated_while_read and not summary.stopped_early, summary
    other = tmp_path / "other.log"
    other.write_bytes(_line(0))
    whole = _produce(monkeypatch, tmp_path, other, _PartitionSink(1))
    assert whole.lines == 1 and not whole.truncated_while_read


def test_a_second_producer_of_the_same_log_and_topic_is_refused(monkeypatch, tmp_path):
    """Two producers sending one log to one topic would each save positions over the other's: the second is
    refused, naming the first's pid; the lock goes with its holder, and other logs are not held by it."""
    import os

    from logpipe.config import Settings
    from logpipe.producer.position import PositionStore, ProducerBusy

    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(3)))
    store = PositionStore(Settings(producer_state_dir=str(tmp_path / "pos")).producer_positions_dir, "access-logs")
    with store.exclusive(log):
        with pytest.raises(ProducerBusy, match=f"another producer \\(pid {os.getpid()}\\) is sending .*access.log"):
            _produce(monkeypatch, tmp_path, log, _PartitionSink(1))
        other = tmp_path / "other.log"
        other.write_bytes(_line(0))
        assert _produce(monkeypatch, tmp_path, other, _PartitionSink(1)).lines == 1
    assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 3  # released
    # a symlink to the log is the log: a producer of each was let through, and both saved the same positions
    link = tmp_path / "current"
    link.symlink_to(log)
    with store.exclusive(link):
        with pytest.raises(ProducerBusy, match="is sending .*access.log"):
            _produce(monkeypatch, tmp_path, log, _PartitionSink(1))
    with store.exclusive(log):
        with pytest.raises(ProducerBusy):
            _produce(monkeypatch, tmp_path, link, _PartitionSink(1))
    # and one of the symlink, moved to another file since, still holds the symlink
    with store.exclusive(link):
        link.unlink()
        link.symlink_to(other)
        with pytest.raises(ProducerBusy, match="is sending .*current"):
            _produce(monkeypatch, tmp_path, link, _PartitionSink(1))


def test_an_ending_producer_leaves_the_heartbeat_of_another_producer_of_its_topic(monkeypatch, tmp_path):
    """The heartbeat file is the topic's; each producer locks its own log. One that ends removes the file (so
    `health producer` does not count it alive for a minute), unless another producer of the topic holds its lock:
    the file is that one's heartbeat too."""
    from logpipe.config import Settings
    from logpipe.producer.position import PositionStore

    folder = Settings(producer_state_dir=str(tmp_path / "pos")).producer_positions_dir
    following, one_shot = PositionStore(folder, "access-logs"), PositionStore(folder, "access-logs")
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(_line(i) for i in range(3)))
    with following.exclusive(tmp_path / "live.log"):
        following.beat()
        assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 3  # ends beside it
        assert following.heartbeat_file.exists()
        with one_shot.exclusive(log):
            one_shot.end_beat()
        assert following.heartbeat_file.exists()
        following.end_beat()  # the last one
        assert not following.heartbeat_file.exists()
    following.beat()
    assert _produce(monkeypatch, tmp_path, log, _PartitionSink(1)).lines == 0  # alone: its end removes the file
    assert not following.heartbeat_file.exists()
