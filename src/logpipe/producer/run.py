"""The produce loop: file blocks -> Kafka records keyed by source position; positions saved only after delivery."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from logpipe import health, topics
from logpipe.config import Settings
from logpipe.logformat import ParseError, parse_timestamp
from logpipe.producer.clients import RecordSink, make_sink
from logpipe.producer.position import HEAD_BYTES, Position, PositionStore, head_digest
from logpipe.producer.source import IDLE, Block, LogSource, Segment, check_log, wait_for_log
from logpipe.record import (KAFKA_DEFAULT_MAX_MESSAGE_BYTES, RECORD_OVERHEAD_BYTES, TOO_LARGE_HEAD_BYTES,
                            largest_record_bytes, record_key, too_large_value)

log = logging.getLogger("logpipe.producer")
# without a terminal (nohup, CI, a container's log) the progress bar is off: a progress line is logged this often
PROGRESS_LOG_S = 10.0


# lines too large for Kafka named one by one in a warning, before one last warning says that more follow
TOO_LARGE_WARNINGS = 10


@dataclass
class ProduceSummary:
    path: str
    topic: str
    client: str
    lines: int = 0          # lines read from the file this run
    records: int = 0        # records acknowledged on the topic
    quarantined: int = 0    # of them, lines too large for Kafka, sent as too_large records (the job quarantines them)
    bytes: int = 0
    seconds: float = 0.0
    errors: int = 0
    resumed_from: int = 0
    unsent_parts: int = 0   # parts of the log that may be lost (truncated or rotated away before read to their end): see warnings
    stopped_early: bool = False  # a one-shot run stopped (a signal) before the file's end: the rest is not sent yet
    # a one-shot run found the file truncated (copytruncate) while reading it: it stopped at its last whole line,
    # and the next run reads the rest from the copy (the warning above says so)
    truncated_while_read: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class TopicLimitError(RuntimeError):
    """The topic refuses records as large as LOGPIPE_MAX_MESSAGE_BYTES lets the producer send."""


def ensure_topic(s: Settings, topic: str) -> bool:
    """Create the topic if it does not exist (partitions and replication from the settings, and a max.message.bytes
    of its own that takes a line of LOGPIPE_MAX_MESSAGE_BYTES, whatever the broker's message.max.bytes default is);
    True if created. An existing topic whose limit is lower raises TopicLimitError: every line near the setting
    would fail to deliver, and the producer would stop at the first one on every restart."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    needed = largest_record_bytes(s.max_message_bytes)
    # given even at Kafka's default: a topic without it takes the broker's message.max.bytes, which may be lower
    own_limit = max(needed, KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    if topics.create_topic(s, topic, s.topic_partitions, {"max.message.bytes": str(own_limit)}):
        return True
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address, client_id="logpipe-producer-admin")
    try:
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=["max.message.bytes"])],
                                     config_filter="all")
        value = got.get("topic", {}).get(topic, {}).get("max.message.bytes", {}).get("value")
        if value is None:  # not readable (no rights, metadata not spread yet): the broker's answer will tell
            log.warning("could not read the max.message.bytes of topic %s (%s)", topic, got)
            return False
        limit = int(value)
        if limit < needed:
            floor = largest_record_bytes(0)  # the producer's record batches, whatever the longest line
            lower = (f"or lower LOGPIPE_MAX_MESSAGE_BYTES to {limit - RECORD_OVERHEAD_BYTES:,} at most"
                     if limit >= floor else f"a limit under {floor:,} bytes (the size of the producer's record "
                     "batches) takes none of them, whatever LOGPIPE_MAX_MESSAGE_BYTES says")
            raise TopicLimitError(
                f"topic {topic} takes records of up to {limit:,} bytes (its max.message.bytes), but "
                f"LOGPIPE_MAX_MESSAGE_BYTES={s.max_message_bytes:,} lets lines of that size through, in records of "
                f"up to {needed:,} bytes: raise the topic's limit (kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config max.message.bytes={needed}); {lower}")
    finally:
        admin.close()
    return False


class Pacer:
    """Replays at the log's own pace (`realtime`) or a multiple of it; `max` does nothing. A wait ends early when
    `stop` is set (Ctrl-C / SIGTERM), so a paced replay stops at once, not after the log time of a block.

    A jump in log time from one line to the next of more than `max_gap_s`, worth more than that of wall time too (a
    quiet night, or one line dated years ahead or behind), is not slept: the pace starts again from that line. So no
    wait is longer than `max_gap_s` of log time at the chosen pace (one bad date cannot stall the replay for
    decades, nor overflow `Event.wait`); a slow factor (0.01: a second of log in 100 s) still waits its seconds."""

    def __init__(self, speed: str, stop: threading.Event | None = None, max_gap_s: float = 60.0,
                 on_wait: Callable[[], None] | None = None) -> None:
        self.factor = None if speed == "max" else 1.0 if speed == "realtime" else float(speed)
        if self.factor is not None and not 0 < self.factor < math.inf:  # NaN too
            raise ValueError(f"--speed must be max, realtime or a positive factor, not {speed!r}")
        self.max_gap_s = max_gap_s
        self.t_log0: float | None = None  # the anchor: this log time was replayed at wall time t_wall0
        self.t_wall0 = 0.0
        self.t_last = 0.0  # the log time of the last paced line
        self.jumps = 0  # jumps in log time not waited for
        self.stop = stop or threading.Event()
        self.on_wait = on_wait  # called every second of a wait (the producer's heartbeat)

    def wait(self, line: bytes) -> None:
        if self.factor is None or self.stop.is_set():
            return
        a, b = line.find(b"["), line.find(b"]")
        if a < 0 or b < a:
            return
        try:
            t = parse_timestamp(line[a + 1:b].decode("ascii", "replace")).timestamp()
        except ParseError:
            return
        gap = t - self.t_last
        step = gap / self.factor
        self.t_last = t
        # a jump by both measures: by wall time alone, every second of log was one at a factor under 1/60 (a review
        # found 0.01 replaying at full speed)
        if self.t_log0 is None or (abs(step) > self.max_gap_s and abs(gap) > self.max_gap_s):
            if self.t_log0 is not None:
                self.jumps += 1
                log.log(logging.INFO if self.jumps == 1 else logging.DEBUG,
                        "--speed: the log time jumps by %.0fs at [%s]: not waited for (more than %.0fs at this speed); "
                        "the pace goes on from that line (further jumps are logged at debug level)",
                        step * self.factor, line[a + 1:b].decode("ascii", "replace"), self.max_gap_s)
            self.t_log0, self.t_wall0 = t, time.monotonic()
            return
        delay = self.t_wall0 + (t - self.t_log0) / self.factor - time.monotonic()
        remaining = min(delay, self.max_gap_s / min(self.factor, 1.0))
        while remaining > 0:
            step = remaining if self.on_wait is None else min(remaining, 1.0)
            if self.stop.wait(step):
                return
            remaining -= step
            if self.on_wait is not None:
                self.on_wait()


def partition_of(log_path: str, n_partitions: int) -> int:
    """The partition for every record of a new log at `log_path`: a stable hash (not Python's salted hash()), the
    same across runs, rotations and truncations."""
    return zlib.crc32(os.fsencode(log_path)) % max(1, n_partitions)  # a name need not be UTF-8


def log_partition(store: PositionStore, source: LogSource, n_partitions: int) -> int:
    """The partition for every record of `source`'s log: the one its saved positions name (the file being resumed
    first, then the other files of the same path), else partition_of its path. A run that reads the same file
    under another path (a link to it, or after a rename: it is resumed by its identity) keeps sending to the
    partition of its earlier lines; on another one, the stream could read the new lines before the rest of the
    old (maxOffsetsPerTrigger takes from each partition), and count those in-order lines late."""
    current = store.load(source.current.key) if source.current is not None else None
    for p in (current, *(p for p in store.all() if p.path == source.path)):
        if p is not None and p.partition is not None and p.partition < n_partitions:
            return p.partition
    return partition_of(source.path, n_partitions)


def produce_file(s: Settings, path: Path, *, follow: bool = False, reset: bool = False,
                 progress: bool | None = None, stop_event: threading.Event | None = None) -> ProduceSummary:
    """Send every line of `path` (then, with follow, every appended line) to settings.topic.

    Raises InputFileError (missing/unreadable file; with follow, a missing one is waited for), ServiceTimeout
    (broker unreachable), DeliveryError, WaitStopped (stopped while waiting for the file or the broker),
    ProducerBusy (another producer sends this log to this topic), PositionFolderError (the positions' folder
    cannot be made or written).
    """
    store = PositionStore(s.producer_positions_dir, s.topic)
    with store.exclusive(path):  # ProducerBusy if another producer sends this log to this topic
        try:
            return _produce_file(s, path, store, follow=follow, reset=reset, progress=progress,
                                 stop_event=stop_event)
        finally:
            store.end_beat()


def _produce_file(s: Settings, path: Path, store: PositionStore, *, follow: bool, reset: bool,
                  progress: bool | None, stop_event: threading.Event | None) -> ProduceSummary:
    """produce_file, holding the log."""
    from logpipe.stack.services import native_service_down

    if follow and not wait_for_log(path, stop_event or threading.Event(), on_wait=store.beat):
        raise health.WaitStopped(f"stopped while waiting for {path} to appear")
    # a clear error before touching Kafka; the file stays open and is the one read, even if it is renamed away (a
    # rotation) while the producer waits for Kafka: opened again by its path, it was then missing ("log file not
    # found", exit 2, with --follow too) or another file, and the lines of this one were never read
    checked = check_log(path)
    try:
        # the native stack down (no `stack up` on its run folder): said at once, as `stream` and `verify` do
        health.wait_for_kafka(s.kafka_address, s.producer_connect_timeout_s, stop=stop_event,
                              down=lambda: native_service_down(s, "kafka"))
        claim_topic(s, store, path)
    except BaseException:
        os.close(checked.fd)
        raise
    source = LogSource(str(path), store, follow=follow, reset=reset, rotate_grace_s=s.rotate_grace_s)
    if stop_event is not None:
        source.stop = stop_event
    seg = source.open(checked)
    summary = ProduceSummary(str(path), s.topic, s.producer_client, resumed_from=seg.read_pos)
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.monotonic()
    sink = None
    failure: BaseException | None = None
    try:
        sink = make_sink(s)
        LogShipper(s, path, source, store, sink, summary, t0).run(
            total=max(1, os.fstat(seg.fd).st_size - seg.read_pos), show=show)  # the file opened, even if renamed since
    except BaseException as exc:
        failure = exc
        raise
    finally:
        summary.seconds = time.monotonic() - t0
        try:
            if sink is not None:
                summary.records = sink.sent - sink.failed
                summary.errors = sink.failed
                sink.close()
        except Exception as exc:  # noqa: BLE001
            if failure is None:
                raise
            # the client cannot close cleanly after a failure (e.g. a broker away): the failure is the error to
            # report, not this
            log.warning("closing the Kafka client after the failure failed too: %s", exc)
        finally:
            summary.unsent_parts = source.unsent_parts
            summary.stopped_early = not follow and source.stop.is_set() and not source.read_to_end
            summary.truncated_while_read = not follow and not source.stop.is_set() and not source.read_to_end
            source.close()
    if summary.unsent_parts:
        log.warning("%d part(s) of %s may not have been sent (truncated or rotated away before they were read to "
                    "their end; a part may be empty: the producer cannot see what a file got after its last read): "
                    "the warnings above name their bytes", summary.unsent_parts, path)
    log.info("produced %s: %s lines (%s records, %d too large: sent for the job to quarantine, %d errors), %.1f MB "
             "in %.1fs: %s lines/s, %.1f MB/s",
             path, f"{summary.lines:,}", f"{summary.records:,}", summary.quarantined, summary.errors,
             summary.bytes / 1e6, summary.seconds, f"{summary.lines / max(summary.seconds, 1e-9):,.0f}",
             summary.bytes / 1e6 / max(summary.seconds, 1e-9))
    return summary


def claim_topic(s: Settings, store: PositionStore, path: Path) -> None:
    """Make the log topic if it is missing, and drop the saved positions if they stand for lines of another topic
    of that name: one the producer just made (the broker's data wiped, the topic deleted), or one deleted and made
    again by someone else since they were saved (the broker's id of the topic changed). A new topic holds none of
    those lines: resuming at the positions would skip them (of this file, and of any other file later). Records
    the topic's id beside the positions (PositionStore.topic_id_file)."""
    created = ensure_topic(s, s.topic)
    now_id, saved_id = topics.topic_id(s, s.topic), store.topic_id()
    remade = not created and bool(now_id and saved_id and now_id != saved_id)
    if created or remade:
        stale = store.clear()
        if stale:
            why = ("did not exist" if created else
                   f"was deleted and made again since its positions were saved (its id is {now_id}, was {saved_id})")
            log.warning("topic %s %s: dropped %d saved position(s) of it in %s, reading %s from byte 0. Results of "
                        "the old topic cannot be continued with this one: `logpipe stream` refuses their root (give "
                        "it another one)", s.topic, why, stale, store.directory, path)
    elif saved_id is None and not store.all() and (held := _records_held(s)):
        log.warning("topic %s already got %s records, but no position of it is saved in %s: %s is read from byte 0. "
                    "If those records came from another producer's log, that is as it should be. If they came from "
                    "this log with positions saved elsewhere (another LOGPIPE_PRODUCER_STATE_DIR or run folder than "
                    "before), the job drops its lines as repeats only where the file is as it was then (after a "
                    "copytruncate they are counted twice): stop now (Ctrl-C) and point LOGPIPE_PRODUCER_STATE_DIR "
                    "at those positions", s.topic, f"{held:,}", store.directory, path)
    if now_id and now_id != saved_id:
        store.record_topic_id(now_id)


def _records_held(s: Settings, timeout_s: float = 10.0) -> int:
    """How many records the log topic got so far (its partitions' end offsets), 0 if that cannot be read within
    `timeout_s` (read in a thread of its own: a metadata fetch has no time limit of its own, see TopicEnds)."""
    from logpipe.topics import TopicEnds

    got: list[int] = []

    def read() -> None:
        ends = TopicEnds(s, s.topic)
        try:
            got.append(sum(ends.read().values()))
        except Exception as exc:  # noqa: BLE001 (a warning's courtesy: the send itself reports a broker gone)
            log.debug("could not read the end offsets of topic %s: %s", s.topic, exc)
        finally:
            ends.close()

    reader = threading.Thread(target=read, name="topic-ends", daemon=True)
    reader.start()
    reader.join(timeout_s)
    return got[0] if got else 0


class LogShipper:
    """Sends a log source's blocks to Kafka, all to one partition, and saves the position after each delivered
    stretch (every checkpoint interval, at the end of each file, when idle). Counts into `summary`."""

    def __init__(self, s: Settings, path: Path, source: LogSource, store: PositionStore, sink: RecordSink,
                 summary: ProduceSummary, t0: float) -> None:
        self.s, self.path, self.source, self.store, self.sink, self.summary = s, path, source, store, sink, summary
        # every record of this log (all its files: rotated, truncated, current) to one partition, so the stream
        # reads them in the order they were sent. Spread over partitions (blocks in turn, or a partition per file),
        # a micro-batch (maxOffsetsPerTrigger takes from each partition) can hold later lines while earlier ones
        # wait in another partition: behind the late horizon by the next batch, they would count as late. Several
        # logs (or producers) spread over the partitions
        self.partition = log_partition(store, source, sink.partitions(s.topic))
        self.pacer = Pacer(s.speed, source.stop, on_wait=self.beat)
        self.t0 = self.last_save = t0
        self.pending: Block | None = None  # the last block sent: its end is the position once delivery is confirmed
        self.bar: Any = None
        self.last_beat = float("-inf")
        self.claimed: set[tuple[str, int]] = set()  # (file key, generation) whose position this run saved

    def run(self, total: int, show: bool) -> None:
        """Send every block the source gives, until it ends (or is stopped); `total`: the bytes to read."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self.bar = Progress(TextColumn("produce"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                            TextColumn("{task.fields[lines]} lines ({task.fields[rate]}/s)"), TransferSpeedColumn(),
                            TimeRemainingColumn(), disable=not show, transient=True)
        self.task = self.bar.add_task("produce", total=total, lines="0", rate="0")
        self.show_bar, self.total, self.last_log = show, total, time.monotonic()
        self.beat()
        with self.bar:
            for item in self.source.blocks():
                if item is IDLE:
                    self.save_pending()
                    self.claim_unsent(self.source.current)
                    continue
                block: Block = item  # type: ignore[assignment]
                if self.pending is not None and block.segment is not self.pending.segment:
                    self.save_pending()  # the end of a file left behind (rotated or finished): saved before moving on
                if not self.send(block):
                    break
            self.save_pending()
            self.claim_unsent(self.source.current)

    def checkpoint(self, block: Block | None, end: int | None = None) -> None:
        """Flush, then save the position after `block` (or, within it, at `end`: a paced replay's line)."""
        self.sink.flush()
        if block is not None:
            self.save_position(block.segment, block.end if end is None else end, block.final and end is None)
        self.beat()

    def save_position(self, seg: Segment, offset: int, finished: bool = False) -> None:
        """Save that everything of `seg` before `offset` was delivered, with the file's first bytes."""
        head = seg.head[:HEAD_BYTES]
        seen = (datetime.fromtimestamp(seg.path_seen_at, timezone.utc).isoformat() if seg is self.source.current
                else "")
        self.store.save(Position(seg.key, seg.generation, offset, self.source.path, len(head), head_digest(head),
                                 finished=finished, src_base=seg.src_base, partition=self.partition,
                                 path_seen_at=seen))

    def beat(self) -> None:
        """Touch the heartbeat file, at most once a second: called after each flush (every checkpoint interval
        while sending, at every wait for more lines while following) and every second of a paced wait, so a loop
        stuck anywhere else stops it."""
        now = time.monotonic()
        if now - self.last_beat >= 1.0:
            self.store.beat()
            self.last_beat = now

    def claim_generation(self, seg: Segment) -> None:
        """Before the first record of a file, or of a new generation of it (after a truncation), is sent: save
        its position at byte 0 with its first bytes. Killed before the next checkpoint, the producer then resumes
        this generation at byte 0 (what it sends again keeps its keys: the job drops the repeats). Without it,
        the last position saved was the generation before: if the file was truncated and written again before
        the restart, the new content got this generation's number too, and its lines the keys of lines already
        sent, so the job dropped them as repeats. Its first bytes now tell it apart: it gets the next number."""
        self.save_position(seg, 0)
        self.claimed.add((seg.key, seg.generation))

    def claim_unsent(self, seg: Segment | None) -> None:
        """Save a position at byte 0 for the file being read if it has none yet because nothing of it was sent (an
        empty log, or one without a complete line): a restart then finds it by its identity if it is rotated away
        meanwhile (its lines read from the rotated file), and knows it if it is truncated (copytruncate: the copy
        is then named in a warning). Without it, the lines such a file got while the producer was stopped, before
        a rotation, were lost without a word. Not while a copy of the file's older content (copytruncate) is still
        unread: its position, saved under the same file's identity, would be replaced by byte 0 of the new
        generation, and the copy's rest never read (the run after a stop in the copy sent only the new lines)."""
        if seg is None or (seg.key, seg.generation) in self.claimed:
            return
        if any(copy.key == seg.key for copy in self.source.copies):
            return
        saved = self.store.load(seg.key)
        if saved is None or saved.generation != seg.generation:
            self.claim_generation(seg)
        self.claimed.add((seg.key, seg.generation))

    def save_pending(self) -> None:
        """Flush and save the position after the last block sent."""
        self.checkpoint(self.pending)
        self.pending = None

    def send(self, block: Block) -> bool:
        """Send `block`'s lines. False when a paced replay was stopped within it: the lines sent are counted and
        their position saved (the rest is sent next time, under the same keys)."""
        s = self.s
        if block.start == 0:  # the first block of a file, or of a generation of it
            self.claim_generation(block.segment)
        if (self.pacer.factor is None and block.oversize_len is None
                and max(map(len, block.lines), default=0) <= s.max_message_bytes):
            # the fast path: no pacing, no line too large
            self.sink.send_lines(s.topic, block.lines, block.src.encode(), block.start, self.partition)
        else:
            sent, off = self.send_line_by_line(block)
            if sent < len(block.lines):  # stopped within the block: saved after its last line sent
                self.summary.lines += sent
                self.summary.bytes += off - block.start
                self.checkpoint(block, off)
                self.pending = None
                return False
        self.summary.lines += len(block.lines)
        self.summary.bytes += block.end - block.start
        self.pending = block
        now = time.monotonic()
        if now - self.last_save >= s.producer_checkpoint_s:
            self.save_pending()
            self.last_save = now
            self.show(self.summary.bytes, self.summary.lines, now)
        return True

    def send_line_by_line(self, block: Block) -> tuple[int, int]:
        """Send `block` one line at a time: paced (--speed), and lines over the record limit as too_large
        records. Returns how many lines were sent and the byte position after the last."""
        s, src = self.s, block.src.encode()
        sent, off = 0, block.start
        for line in block.lines:
            if self.pacer.factor is not None and self.source.stop.is_set():
                break  # a paced replay stopped mid-block
            sent += 1
            if len(line) > s.max_message_bytes or block.oversize_len is not None:
                length = block.oversize_len if block.oversize_len is not None else len(line)
                self.sink.send(s.topic, too_large_value(line, length), record_key(src, off), partition=self.partition)
                self.summary.quarantined += 1
                if self.summary.quarantined <= TOO_LARGE_WARNINGS:
                    log.warning("line at byte %d of %s is %d bytes (> %d, LOGPIPE_MAX_MESSAGE_BYTES): sent as a "
                                "too_large record holding its length and first %d bytes; the job quarantines it", off,
                                self.path, length, s.max_message_bytes, min(length, TOO_LARGE_HEAD_BYTES))
                elif self.summary.quarantined == TOO_LARGE_WARNINGS + 1:
                    log.warning("more lines of %s over %d bytes: sent as too_large records too, not named one by one "
                                "(the summary counts them: `quarantined`)", self.path, s.max_message_bytes)
            else:
                self.pacer.wait(line)
                self.sink.send(s.topic, line, record_key(src, off), partition=self.partition)
            # the next line's start: a cut-down oversize line, or a last line without its newline, ends at the
            # block's end (a position past it would be taken for another file's)
            off = block.end if block.oversize_len is not None else min(off + len(line) + 1, block.end)
            if self.pacer.factor is not None and time.monotonic() - self.last_save >= s.producer_checkpoint_s:
                # a paced block can span hours of log time: saved every checkpoint interval within it
                self.checkpoint(block, off)
                self.last_save = time.monotonic()
                self.show(self.summary.bytes + off - block.start, self.summary.lines + sent, self.last_save)
        return sent, off

    def show(self, done_bytes: int, lines: int, now: float) -> None:
        """Move the progress bar (shown only on a terminal, or when asked for); without it, log a progress line
        every PROGRESS_LOG_S."""
        rate = lines / max(now - self.t0, 1e-9)
        total = self.total + self.source.backlog_bytes  # with the copies and rotated files found to read first
        self.bar.update(self.task, total=total, completed=done_bytes, lines=f"{lines:,}", rate=f"{rate:,.0f}")
        if not self.show_bar and now - self.last_log >= PROGRESS_LOG_S:
            self.last_log = now
            share = "" if self.source.follow else f", {min(done_bytes / total, 1.0):.0%} of what there is to read"
            log.info("sent %s lines, %.1f MB in %.0fs (%s lines/s%s)", f"{lines:,}", done_bytes / 1e6, now - self.t0,
                     f"{rate:,.0f}", share)
