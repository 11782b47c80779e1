"""The streaming job: one query, Kafka -> parse once -> events, final sliding-window counts, early alerts, on HDFS.

Every micro-batch (foreachBatch, one MicroBatch object; Spark's checkpoint on HDFS at _checkpoints/ingest) does,
in order:
- parse each record once in the JVM, in the batch's one pass over its records, which writes every row to a
  staging folder (see PASS_DIR): the events as events/ will hold them, and the few other rows, from which their
  own tables are written. A line that does not parse goes to quarantine/ with its reason, and so does one dated
  more than LOGPIPE_FUTURE_TOLERANCE after the batch began (timestamp_in_future: a wrong clock must not move the
  horizon ahead of the traffic; the bound is in the batch's record, `not_after`);
- late: a row whose event time is before the batch's horizon goes to late/ (kept and counted, not in the windows).
  The horizon is the newest event time of the earlier batches minus the watermark (Spark's own watermark rule),
  and never earlier than the end of the windows an `--until-done` flush already wrote;
- duplicates of a source line (same src, off: a restarted producer) are dropped, within the batch and against the
  keys of earlier events still inside the horizon (carried from batch to batch in _state/seen). A copy of an
  older line has that line's event time, so it is late, never counted twice;
- events/ (by date): the parsed, de-duplicated rows (the staged files, moved in at the commit; a batch with
  repeats writes its events again without them);
- windows: counts per (window, host, status) of this batch plus the still-open windows carried from the previous
  batch (_state/open). Windows that end at or before the next batch's horizon can receive no more rows: they are
  final, written once to windows/by_host and windows/by_status. The others are carried on in _state/open;
- alerts: the rules (logpipe.rules, in the driver, on the few rows they need: alerts_of_running_counts) over
  the running counts of those windows, so a threshold fires in the micro-batch that crosses it -> alerts/,
  once per (rule, key, window), and the Kafka alerts topic (at least once, keyed by the alert id: see
  _publish_committed_alerts).
All of a batch's files, its carried state and its accounting commit together (streaming.commit): a batch that
is re-run after a crash never writes twice. There is no Spark state store: the carried state is small (the last
watermark's worth of windows and keys), so the job keeps no per-event state and reads its records only once; the
counts read the few columns they need back from the staged events.
`until_done` drains the topic, then writes the still-open windows (flush).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from logpipe.commit_log import ROLLUP_EVERY
from logpipe.config import Settings
from logpipe.logformat import TIMESTAMP_IN_FUTURE
from logpipe.root_layout import (COMMITS, MARKERS_PER_FOLDER, TABLE_PARTITIONS, batch_tag, file_tag, in_staging,
                                  list_markers, marker_path, marker_tag, partition_day, staging_dir)
from logpipe.root_record import ROOT_SETTINGS, ROOT_SETTINGS_FILE, claim_refusal, parse_root_record
from logpipe.rules import FAILED_STATUS, Alert, AlertRules, HostCount, StatusCount, WindowCount
from logpipe.streaming.commit import (HadoopFs, TableWrite, clean_crashed_attempts, commit_batch,
                                      commit_history_by_folder, committed_meta, fold_in_flat_rollups, roll_up_records,
                                      run_at_once)
from logpipe.streaming.lease import RootBusy, RootLease
from logpipe.streaming.parse import (EVENT_COLUMNS, REQUEST_PARTS, parse_columns, quarantine_in_future,
                                     source_columns)
from logpipe.windows import duration_seconds, late_horizon, late_share_is_high

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

STATE_OPEN, STATE_SEEN = "_state/open", "_state/seen"  # carried from one batch to the next
# every table a batch or flush writes (files named by batch tag)
OUTPUT_TABLES = ("events", "quarantine", "late", "windows/by_host", "windows/by_status", "alerts", STATE_OPEN,
                 STATE_SEEN)
# open windows carried between batches, at three grains: per host, per status, and per (host, status) for failed
# requests only (the hosts behind a failure surge)
OPEN_SCHEMA = ("grain STRING, window_start TIMESTAMP, window_end TIMESTAMP, host STRING, http_response INT, "
               "count BIGINT")
GRAINS = {"host": ["host"], "status": ["http_response"], "failed": ["host", "http_response"]}
WINDOW_COLUMNS = ["window_start", "window_end"]
# the parsed columns the job stores in events/; method, path and protocol (split from request) only with the
# setting events_request_parts
STORED_EVENT_COLUMNS = [c for c in EVENT_COLUMNS if c not in REQUEST_PARTS]
SEEN_SCHEMA = "src_key STRING, key_hash BIGINT, timestamp TIMESTAMP"
HOST_COUNTS_SCHEMA = "window_start TIMESTAMP, window_end TIMESTAMP, host STRING, count BIGINT"
# The per-batch caches (since the one pass, only the small window counts and carried state) are built once and
# read a few times within seconds: uncompressed, the cache of every parsed row built in 17.6-19.1 s instead of
# 23.1-25.4 s for 2.1 M records, scans unchanged; the stream's peak RSS at 2.5 GB stayed at 4.6 GB.
#
# Each micro-batch runs some 20 Spark jobs. Spark compiles their generated code once and keeps it in a cache of 100
# entries by default: too few for one batch's plans, so every batch compiled its code again (~350 classes) and the
# JIT compiled the new classes again (the C2 compiler threads used as much CPU as the tasks). 2,000 entries keep
# them all: on 2.11 M lines in 3 batches, 1,091 -> 510 classes, 157 -> 140 CPU s.
#
# events/ is partitioned by date. Spark sorts every task's rows by the partition column before such a write; a batch
# holds one or two dates, so the sort only buffers the rows, and a 5 M batch spilled ~600 MB per task doing it.
# With concurrent writers (one open file per date, up to 4, then the sort) there is no sort: 1 GB topic, events
# write 11.1 -> 8.4 s (first batch) and 6.4 -> 5.5 s, whole stream 115.8 -> 112.5 s, peak RSS 4.9 -> 4.2 GB.
SPARK_CONF = {"spark.sql.inMemoryColumnarStorage.compressed": "false",
              "spark.sql.codegen.cache.maxEntries": "2000",
              "spark.sql.maxConcurrentOutputFileWriters": "4"}
# events/ is written without Parquet's dictionary encoding: most of its columns are (nearly) unique per row, and
# the encoder hashed every value until its dictionary overflowed. 3 M parsed rows, six alternating rounds: 8.3-11.6 s
# -> 6.4-7.0 s (5 of 6) to write; files 45 -> 57 MB (still compressed with the codec).
EVENTS_PARQUET_OPTIONS = {"parquet.enable.dictionary": "false"}
# Each micro-batch writes every row once, in its one pass over the records (MicroBatch.parse), to a staging folder
# events/_staging/<tag>/pass, partitioned by `date`: the events in their date folders, as events/ holds them (moved
# there at the commit), the late rows in date=_late and the quarantined ones in date=_quarantine, all in the events'
# columns (staged_rows). The few late and quarantined rows are then written to their own tables from there. A batch
# whose events hold repeats writes them again, without, to <tag>/dedup.
PASS_DIR, REWRITE_DIR = "pass", "dedup"
QUARANTINE_DIR, LATE_DIR = "_quarantine", "_late"
ALERTS_SCHEMA = ("rule STRING, key STRING, window_start TIMESTAMP, window_end TIMESTAMP, count BIGINT, share DOUBLE, "
                 "threshold INT, top_hosts ARRAY<STRING>, alert_id STRING, detected_at TIMESTAMP")
ALERT_COLUMNS = tuple(c.split()[0] for c in ALERTS_SCHEMA.split(", "))
# an alert's JSON on Kafka: every column, `share` null (not absent) for rate_limit, times in ISO-8601 UTC with
# milliseconds (pinned: Spark's default format depends on spark.sql.legacy.timeParserPolicy)
ALERT_JSON_OPTIONS = {"ignoreNullFields": "false", "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"}
# the alerts' producer (Spark's Kafka sink): a send waits at most 10 s for the topic's metadata (a topic that does
# not exist: Kafka's default is 60 s) and 30 s for the broker's acknowledgement, then fails; the job goes on and
# tries again ALERTS_RETRY_S later (StreamJob.send_alerts)
ALERTS_PRODUCER = {"acks": "all", "max.block.ms": 10_000, "request.timeout.ms": 15_000,
                   "delivery.timeout.ms": 30_000}
ALERTS_RETRY_S = 60.0
# the longest a send can take before it fails: the metadata wait and the delivery timeout (compose's stop budget)
ALERTS_SEND_MAX_S = (ALERTS_PRODUCER["max.block.ms"] + ALERTS_PRODUCER["delivery.timeout.ms"]) / 1000
CALLBACK_LOCK_WAIT_S = 30.0  # a send outside a callback waits this long for a callback still running
# what to check next when Kafka refuses the alerts, by a telling part of its error (the first that matches)
ALERT_SEND_HINTS = {
    # kafka-clients says so for a topic that does not exist and for a broker that does not answer alike
    "not present in metadata": " -- the topic does not exist (and the broker does not make it), or no broker "
                               "answered: check `logpipe stack status`, and make the topic or set LOGPIPE_ALERTS_TOPIC "
                               "to one that exists",
    "RecordTooLargeException": " -- the topic takes smaller records than these: raise its max.message.bytes "
                               "(kafka-configs.sh --alter --entity-type topics)",
    "TopicAuthorizationException": " -- this job may not write to the topic: grant it, or set LOGPIPE_ALERTS_TOPIC",
    "TimeoutException": " -- the broker did not acknowledge them in time: it is away, hung or overloaded (check "
                        "`logpipe stack status` and its log), or it refuses them and the client tried again until "
                        "then (e.g. records over the topic's max.message.bytes, whose batches it splits and sends "
                        "again)",
    "DATA_SOURCE_NOT_FOUND": " -- Spark has no Kafka connector: start the job with `logpipe stream`, which puts it "
                             "on Spark's classpath",
}


# How Spark tells a micro-batch callback that a stop interrupted from one that failed: a regex over the Python
# traceback py4j hands back (StreamExecution.PROXY_ERROR: "py4j.protocol.Py4JJavaError: An error occurred while
# calling", then anything, then one of these names). Its `(.|\r\n|\r|\n)*` recurses once per character, so over
# a traceback that carries a Java stack (thousands of characters) the stream execution thread died of a
# StackOverflowError, printed to the console as ~1,000 lines (4 of 10 stops of a continuous run in a review).
INTERRUPTIONS = ("java.lang.InterruptedException", "java.io.InterruptedIOException",
                 "java.nio.channels.ClosedByInterruptException")


class BatchInterrupted(RuntimeError):
    """A micro-batch callback interrupted by the query's stop, raised with a message short enough for Spark's
    regex, in the form it takes for an interruption (INTERRUPTIONS): the batch is not committed and is redone at
    the next start, as Spark would do with the long traceback it replaces."""


def interruption_in(exc: BaseException) -> str | None:
    """The name of the interruption (INTERRUPTIONS) a py4j call in a micro-batch callback failed with, or None:
    what Spark's regex would find in the traceback of `exc`."""
    from py4j.protocol import Py4JJavaError

    if not isinstance(exc, Py4JJavaError):
        return None
    try:
        text = str(exc)  # the Java exception with its stack and causes
    except Exception:  # noqa: BLE001 - the gateway is going away: nothing to tell
        return None
    return next((name for name in INTERRUPTIONS if name in text), None)


class AlertsNotSent(RuntimeError):
    """Kafka did not take a batch's alerts (StreamJob._publish_committed_alerts): the message says why."""


# the accounting's counts that add up over batches, so over runs (write_run_metrics' `this_run`)
RUN_COUNTS = ("batches", "lines", "parsed", "quarantined", "late", "duplicates_dropped", "events")


class ResultsRootMismatch(RuntimeError):
    """The results root holds results this run would corrupt (other settings, or its checkpoint is gone)."""


# The job keeps the commit records of the batches in the marker folders (root_layout.marker_folder: 10,000 batches
# each) of its newest batch and the one before: the roll-ups (commit_log) are written from them, and a batch reads
# its predecessor's. Of the batches before, it keeps only what the late horizon needs (EarlierBatches): every record
# kept (0.93 KB each in Python, by tracemalloc) grew the job by ~180 MB a week at the default trigger (~1,180 batches
# an hour); two folders are at most 20,000 records, ~19 MB.
HISTORY_FOLDERS_KEPT = 2


@dataclass
class EarlierBatches:
    """What the job keeps of the committed batches whose records it no longer holds (StreamJob._trim_history)."""

    count: int = 0
    last: int = -1  # the highest batch id among them (-1: none)
    newest_event: datetime | None = None  # the newest event time any of them read (their records' max_ts)

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.last = max(self.last, int(record["batch"]))
        if record.get("max_ts"):
            t = datetime.fromisoformat(record["max_ts"])
            self.newest_event = t if self.newest_event is None or t > self.newest_event else self.newest_event


@dataclass
class RunStats:
    """What the listener saw, per query."""

    rows: dict[str, int] = field(default_factory=dict)  # input rows, per query name


class StreamJob:
    """The job on one results root: its micro-batch callback (_batch), the flush of the open windows, recovery
    after a crash, the alerts' delivery to Kafka, and the committed history they read (see the module's text)."""

    alerts_unsent: str | None = None  # why the last send of alerts to Kafka failed; None: every one went
    _alerts_retry_at = 0.0  # (time.monotonic) when a batch tries that send again

    def __init__(self, spark: "SparkSession", s: Settings) -> None:
        self.spark, self.s = spark, s
        self.root = s.hdfs_uri()
        self.fs = HadoopFs(spark, self.root)
        self.rules = AlertRules.from_settings(s)
        self.stats = RunStats()
        self._metas: dict[int, dict[str, Any]] | None = None  # committed batches (those HISTORY_FOLDERS_KEPT holds)
        self._earlier = EarlierBatches()  # the committed batches before those (_trim_history)
        self._kept_from = 0  # the first batch id _metas may hold (_history_floor when last trimmed)
        self._rollups: list[int] = []  # the batch ids of the ingest roll-ups on the root (read with _metas)
        self._flushes: dict[int, dict[str, Any]] | None = None  # committed flushes, by the batch they follow
        # (the committed records it was read from, batches before this id, their newest event time): _newest_before
        self._newest_seen: tuple[dict[int, dict[str, Any]], int, datetime | None] | None = None
        self._emitted_alerts: dict[str, datetime] | None = None  # see _emitted
        self.event_columns = EVENT_COLUMNS if s.events_request_parts else STORED_EVENT_COLUMNS
        self.lease: RootLease | None = None  # checked before each batch and flush writes (run_stream sets it)
        # held while a micro-batch's callback runs: a query stopped after its grace time interrupts the JVM's wait
        # for the callback, not the Python callback itself, whose HDFS renames and marker go on; recover() waits
        # for it, so it never removes the files of a batch that then commits
        self._in_batch = threading.Lock()
        # raised by recover(): a callback of a query stopped before it (one py4j delivers late) does not run
        self._generation = 0
        self.batch_error: Exception | None = None  # what the last micro-batch callback that failed raised

    # ------------------------------------------------------------------ committed history
    def _committed(self) -> dict[int, dict[str, Any]]:
        """The records of the committed batches of the newest HISTORY_FOLDERS_KEPT marker folders, by batch id (read
        from the root once, then kept up to date by this run's commits); the batches before are in _earlier."""
        if self._metas is None:
            folders, rollups = commit_history_by_folder(self.spark, self.root, "ingest")
            self._earlier, self._kept_from, self._rollups = EarlierBatches(), 0, rollups
            metas: dict[int, dict[str, Any]] = {}
            for records in folders:  # a folder at a time, trimmed as read: a long history is never held at once
                metas.update((m["batch"], m) for m in records)
                self._trim_history(metas)
            flushes = {m["batch"]: m for m in committed_meta(self.spark, self.root, "flush")}
            # set once all is read: a read that fails half-way leaves the history unread, not taken as complete
            self._metas, self._flushes = metas, flushes
        return self._metas

    @staticmethod
    def _history_floor(committed: dict[int, dict[str, Any]]) -> int:
        """The first batch id whose record the job keeps: the first of the marker folder HISTORY_FOLDERS_KEPT - 1
        before the newest `committed` batch's."""
        newest = max(committed, default=0)
        return max(0, (newest // MARKERS_PER_FOLDER - (HISTORY_FOLDERS_KEPT - 1)) * MARKERS_PER_FOLDER)

    def _trim_history(self, committed: dict[int, dict[str, Any]]) -> None:
        """Keep the records of the `committed` batches (the job's, or those being read) from _history_floor on; the
        earlier ones go into _earlier."""
        if not committed:
            return
        floor = self._history_floor(committed)
        if floor <= self._kept_from:  # trimmed there already (known without a scan of the records)
            return
        for b in sorted(b for b in committed if b < floor):
            self._earlier.add(committed.pop(b))
        self._kept_from = floor
        self._rollups = [r for r in self._rollups if r >= floor]

    def _is_committed(self, batch_id: int) -> bool:
        """Whether batch `batch_id` is committed on the root (a batch before the records kept: by its marker)."""
        if batch_id in self._committed():
            return True
        return batch_id < self._kept_from and self.fs.marker(self.root, "ingest", batch_tag(batch_id)) is not None

    def wait_for_batch(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a micro-batch callback still running to end; False if it has not."""
        if not self._in_batch.acquire(timeout=timeout):
            return False
        self._in_batch.release()
        return True

    def has_history(self) -> bool:
        """Whether batches were committed on this root before (by this run or earlier ones)."""
        return bool(self._committed())

    def _flush_floor(self) -> datetime | None:
        self._committed()
        ends = [datetime.fromisoformat(m["flushed_until"]) for m in (self._flushes or {}).values()]
        return max(ends, default=None)

    def _newest_before(self, before: int) -> datetime | None:
        """The newest event time of the committed batches before batch `before` (None: none read one). Batches
        commit in id order, so it is carried on from the call before, reading only the records since: taken from
        every record, twice a batch, it cost 0.05 s a call after 200,000 batches (a week of a live tail)."""
        committed = self._committed()
        seen = self._newest_seen
        if seen is not None and seen[0] is committed and seen[1] <= before and before - seen[1] <= len(committed):
            _, start, newest = seen
            ids: Iterable[int] = range(start, before)
        elif before > self._earlier.last:  # the first call, an earlier batch's, or the history read again
            newest, ids = self._earlier.newest_event, [b for b in committed if b < before]
        else:  # a batch before the records kept (never run: it is committed, see _is_committed): every record
            times = [datetime.fromisoformat(m["max_ts"]) for m in committed_meta(self.spark, self.root, "ingest")
                     if m["batch"] < before and m.get("max_ts")]
            return max(times, default=None)
        for b in ids:
            if (m := committed.get(b)) is not None and m.get("max_ts"):
                t = datetime.fromisoformat(m["max_ts"])
                newest = t if newest is None or t > newest else newest
        self._newest_seen = (committed, before, newest)
        return newest

    def _horizon(self, before: int, extra: datetime | None = None) -> datetime | None:
        """The late horizon for batch `before` (from the committed batches before it, plus `extra`)."""
        times = [t for t in (self._newest_before(before), extra) if t]
        return late_horizon(times, duration_seconds(self.s.watermark), self._flush_floor())

    def _state(self, table: str, batch: int | None, schema: str) -> "DataFrame":
        """The state `table` (_state/open or _state/seen) carried out of committed batch `batch`. Its files gone
        while the batch's record says it held rows (deleted by hand) is an error: carried on as empty, the next
        windows would be short of those rows, or repeats let through, silently."""
        if batch is None or (table == STATE_OPEN and batch in (self._flushes or {})):  # none yet, or flushed: empty
            return self.spark.createDataFrame([], schema)
        tag = batch_tag(batch)
        files = [f for f in self.fs.files(f"{self.root}/{table}") if file_tag(f) == tag]
        if files:
            return self.spark.read.schema(schema).parquet(*files)
        held = int(self._committed().get(batch, {}).get("open_window_rows" if table == STATE_OPEN else "seen_keys", 0))
        if held:
            raise RuntimeError(
                f"the {table} state of committed batch {batch} ({held:,} rows, files {tag}-* under {self.root}/{table})"
                f" is gone: it was deleted outside the job. The results under {self.root} cannot be continued "
                "exactly: remove that root and its checkpoint, and stream again")
        return self.spark.createDataFrame([], schema)

    def _prune_state(self, keep: int) -> None:
        """Remove the carried state of batches before `keep` (a re-run batch is skipped, so it is not needed)."""
        tag = batch_tag(keep)
        for table in (STATE_OPEN, STATE_SEEN):
            for f in self.fs.files(f"{self.root}/{table}"):
                if f.endswith(".parquet") and not in_staging(f) and file_tag(f) < tag:
                    self.fs.delete(f)

    def claim_root(self, topic_id: str | None = None) -> None:
        """Before the first batch: refuse a results root made with other ROOT_SETTINGS (recorded in
        ROOT_SETTINGS_FILE by the first run), or whose committed batches lost their Spark checkpoint (the batch ids
        would start again at 0, and the new batches, which read other records, be skipped as committed), or whose
        checkpoint holds offsets of another topic of the same name (`topic_id`, the broker's id of the topic now:
        it was deleted and made again). Records the settings and the topic's id on a new root."""
        path = f"{self.root}/{ROOT_SETTINGS_FILE}"
        mine = {k: getattr(self.s, k) for k in ROOT_SETTINGS}
        try:
            theirs = parse_root_record(path, self.fs.read_text(path)) if self.fs.exists(path) else {}
        except ValueError as exc:
            raise ResultsRootMismatch(str(exc)) from exc
        committed = self._committed()
        offsets = f"{self.s.hdfs_uri('_checkpoints', 'ingest')}/offsets"
        why = claim_refusal(self.root, theirs, mine, committed=len(committed) + self._earlier.count, offsets=offsets,
                            has_offsets=self.fs.exists(offsets), topic=self.s.topic, topic_id=topic_id)
        if why:
            raise ResultsRootMismatch(why)
        record = dict(theirs)
        missing = [k for k in ROOT_SETTINGS if k not in theirs]
        if missing and (not theirs or not committed):  # a new root, or an empty one recorded with fewer settings
            record = {**mine, **theirs}
        elif missing:  # its results were made with values nobody recorded: this run's are not written as theirs
            log.warning("%s was made by an earlier logpipe, which did not record %s: readers (verify, the notebook) "
                        "take their own values for those; a new LOGPIPE_HDFS_ROOT records them all", path,
                        ", ".join(missing))
        if topic_id:  # a new root's, or one recorded by an earlier version, which kept no id
            record["topic_id"] = topic_id
        if record != theirs:
            self.fs.write_text(path, json.dumps(record))

    # ------------------------------------------------------------------ the micro-batch
    def _kafka_stream(self) -> "DataFrame":
        s = self.s
        return (self.spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", s.kafka_address)
                .option("subscribe", s.topic)
                .option("startingOffsets", "earliest")
                .option("maxOffsetsPerTrigger", str(s.max_offsets_per_trigger))
                .option("minPartitions", str(s.kafka_read_tasks))
                .option("kafka.max.poll.records", "20000")  # default 500: measured 90k -> 138k records/s read
                # default 1 MB per partition and fetch: fewer, larger fetches read 2.1 M records ~10 % faster
                .option("kafka.max.partition.fetch.bytes", str(16 << 20))
                .option("kafka.fetch.max.bytes", str(64 << 20))
                .load())

    def _batch(self, batch: "DataFrame", batch_id: int, generation: int | None = None) -> None:
        with self._in_batch:
            if generation is not None and generation != self._generation:
                raise RuntimeError(f"micro-batch {batch_id} of a query stopped before recover(): not run (the "
                                   "query that replaced it runs that batch)")
            try:
                self._run_batch(batch, batch_id)
            except Exception as exc:
                # Spark hands the query's failure on as the Python proxy's traceback, whose first line says only
                # that: the run reports this exception instead (streaming.run._raise_if_failed)
                self.batch_error = exc
                if (name := interruption_in(exc)) is not None:  # see INTERRUPTIONS: the traceback kept short
                    raise BatchInterrupted(f"py4j.protocol.Py4JJavaError: An error occurred while calling the JVM "
                                           f"in micro-batch {batch_id}: {name} (the batch is redone at the next "
                                           "start)") from None
                raise

    def _run_batch(self, batch: "DataFrame", batch_id: int) -> None:
        if self.lease is not None:
            self.lease.check()
        committed = self._committed()
        if self._is_committed(batch_id):  # Spark re-runs a batch we committed when it died before its own commit log
            log.info("batch %d was already committed: nothing is written again", batch_id)
            self._roll_up_if_due()  # its roll-up too, if the crash came before it
            return
        if batch_id < self._kept_from:
            raise RuntimeError(f"batch {batch_id} has no commit marker, but batches after it are committed on "
                               f"{self.root}: markers were removed outside the job, so its results cannot be "
                               "continued exactly (remove that root and its checkpoint, and stream again)")
        t0 = time.monotonic()
        mb = MicroBatch(self, batch, batch_id, prev=max((b for b in committed if b < batch_id), default=None))
        failure: BaseException | None = None
        try:
            horizon = self._horizon(batch_id)
            mb.parse(horizon)
            t_parse = time.monotonic()
            mb.drop_repeats()
            next_horizon = self._horizon(batch_id, extra=mb.max_ts)
            t1 = time.monotonic()
            mb.count_windows(next_horizon)
            t2 = time.monotonic()

            def batch_meta() -> dict[str, Any]:
                """Called just before the commit marker: a run that lost its lease meanwhile stops there."""
                if self.lease is not None:
                    self.lease.check()
                return mb.meta()

            # the tables are written three at a time: 1 GB topic, write+commit 30.7/18.9 s -> 28.3/16.9 s per
            # batch; whole stream, alternating: 112.7, 116.9 s against 117.8, 119.1 s one at a time
            if not commit_batch(self.spark, self.root, "ingest", batch_id, mb.writes(), batch_meta, concurrent=3,
                                fence=self._fence()):
                log.warning("batch %d was committed meanwhile by another run on %s: nothing written", batch_id,
                            self.root)
                self._metas = self._emitted_alerts = None  # read the committed history and its alerts again
                return
            # known as committed at once: a clean-up that fails below must not leave this run taking the batch for
            # one still to do (a re-run would raise its alerts again, as new)
            meta = mb.meta()
            committed[batch_id] = meta
            self._trim_history(committed)
            self._emitted().update({r["alert_id"]: r["window_end"] for r in mb.new_alerts})
        except BaseException as exc:
            failure = exc
            raise
        finally:
            mb.release()
            try:
                if self._still_ours():  # a run that lost the root leaves the staging folder to the run that took it
                    self.fs.delete(mb.stage)
            except Exception as exc:
                if failure is None:
                    raise
                # the batch failed already (HDFS gone, in safe mode): its own error is the one to report, not the
                # clean-up's that the same cause failed (the start after it removes what is left)
                from logpipe.streaming.run import failure_summary

                # a stop that cut the batch short interrupts its clean-up too: nothing to warn about then
                stopped = (isinstance(failure, (BatchInterrupted, KeyboardInterrupt)) or interruption_in(failure)
                           or interruption_in(exc))
                try:
                    text = failure_summary(str(exc))  # a Java error's text comes from the JVM, which may be going
                except Exception:  # noqa: BLE001
                    text = type(exc).__name__
                log.log(logging.INFO if stopped else logging.WARNING, "batch %d: its staging folder %s was not "
                        "removed after the batch %s: %s (the next start removes it)", batch_id, mb.stage,
                        "was stopped" if stopped else "failed", text)
        self._prune_state(batch_id)
        self._roll_up_if_due()
        self._forget_final_alerts(next_horizon)
        if self.alerts_unsent is not None:  # an earlier send failed: every unsent batch's, once the wait is over
            if time.monotonic() >= self._alerts_retry_at:
                self.send_alerts()
        elif mb.new_alerts:
            self.send_alerts([batch_tag(batch_id)])
        if mb.new_alerts:
            for r in mb.new_alerts:
                log.warning("ALERT %s %s window %s count %s%s", r["rule"], r["key"], r["window_start"], r["count"],
                            f" share {r['share']:.0%} top hosts {list(r['top_hosts'] or [])}" if r["share"] else "")
        if future := meta["quarantined_by_reason"].get(TIMESTAMP_IN_FUTURE):
            log.warning("batch %d: %s lines dated after %s UTC, more than %s after the job read them, were quarantined "
                        "as %s (they would have moved the late horizon ahead of the real traffic): check the clock "
                        "and the time zone of the server that wrote them", batch_id, f"{future:,}",
                        mb.not_after.strftime("%Y-%m-%d %H:%M:%S"), self.s.future_tolerance, TIMESTAMP_IN_FUTURE)
        self._warn_if_late_share_is_high(batch_id, horizon, meta["late"], meta["lines"] - meta["quarantined"])
        failed_open = mb.sizes["failed"].get(False, 0) if mb.sizes else 0
        log.info("batch %d: %s lines (%s late, %s duplicates), %s final window rows, %s open (and %s failed-request "
                 "counts per host the surge rule keeps), %s keys carried; parse+stage %.1fs, repeats check %.1fs, open "
                 "windows %.1fs, write+commit (with the final host windows, alerts) %.1fs",
                 batch_id, f"{meta['lines']:,}", f"{meta['late']:,}", f"{meta['duplicates']:,}",
                 f"{meta['final_window_rows']:,}", f"{meta['open_window_rows'] - failed_open:,}", f"{failed_open:,}",
                 f"{meta['seen_keys']:,}", t_parse - t0, t1 - t_parse, t2 - t1, time.monotonic() - t2)

    def _warn_if_late_share_is_high(self, batch_id: int, horizon: datetime | None, late: int, parsed: int) -> None:
        """A warning when a batch's late rows are more than stragglers (windows.late_share_is_high), naming what set
        its horizon: the newest event time before it (a line dated ahead of the traffic moves it there) or the end
        of the windows an `--until-done` run wrote."""
        if horizon is None or not late_share_is_high(late, parsed):
            return
        newest = self._newest_before(batch_id)
        if newest is not None and horizon == newest - timedelta(seconds=duration_seconds(self.s.watermark)):
            why = (f"the newest event time of the batches before, {newest:%Y-%m-%d %H:%M:%S}, minus the watermark "
                   f"{self.s.watermark}. A line dated later than the log's traffic (a wrong date in a replayed log, "
                   "a server clock running fast) moves the horizon there and makes every line after it late: look "
                   "for it among the newest events/ of the batches before. Lines sent again long after their first "
                   "sending (`produce --reset`, positions lost) are late too: their first copies are counted")
        else:
            why = ("the end of the windows an earlier `--until-done` run wrote as final: lines for them came after "
                   "it (see docs/reliability.md, Known limits)")
        log.warning("batch %d: %s of its %s parsed lines were behind the late horizon %s UTC, so they are in late/, "
                    "not in the windows nor the alerts. The horizon is %s", batch_id, f"{late:,}", f"{parsed:,}",
                    f"{horizon:%Y-%m-%d %H:%M:%S}", why)

    def _fence(self) -> "Callable[[], None] | None":
        """commit_batch's fence: the lease's check (RootBusy once another run took the root over), if any."""
        return self.lease.check if self.lease is not None else None

    def _still_ours(self) -> bool:
        """Whether this run may still remove its own files from the root (no lease: a run of the tests' own)."""
        if self.lease is None:
            return True
        try:
            self.lease.check()
        except RootBusy:
            return False
        return True

    def _roll_up_if_due(self) -> None:
        """Roll up the commit records of the newest batch's marker folder once ROLLUP_EVERY batches were committed
        after the newest roll-up (batch 99, 199, ... of a run from batch 0; one a crash or a failed write missed is
        written after the next batch). With it, the folder before, if batches of it were committed after its
        newest roll-up (the one at its end missed, or a root an earlier logpipe rolled up in one file)."""
        committed = self._committed()
        if not committed or max(committed) - max(self._rollups, default=-1) < ROLLUP_EVERY:
            return
        newest = max(committed)
        start = newest - newest % MARKERS_PER_FOLDER  # the first batch of its folder
        before = [b for b in committed if start - MARKERS_PER_FOLDER <= b < start]
        if before and max(before) > max((r for r in self._rollups if r < start), default=-1):
            self._roll_up_records(before)
        self._roll_up_records([b for b in committed if b >= start])

    def _roll_up_records(self, batches: list[int]) -> None:
        """Write the roll-up of the records of committed `batches` (one marker folder's: commit_log), so that a
        restart, `verify` and the notebook open one file instead of every marker. The batch is committed whatever
        happens here: a roll-up that cannot be written only leaves them to read the markers, so it is a warning,
        not a failed batch."""
        from py4j.protocol import Py4JError

        committed = self._committed()
        try:
            path = roll_up_records(self.spark, self.root, "ingest", {batch_tag(b): committed[b] for b in batches})
        except (Py4JError, OSError) as exc:
            log.warning("the roll-up of the commit records could not be written (readers open every marker "
                        "instead): %s", str(exc).splitlines()[0] if str(exc) else exc)
            return
        self._rollups = sorted({*self._rollups, max(batches)})
        log.info("commit records of %s batches rolled up in %s", f"{len(batches):,}", path)

    def _new_alerts(self, alerts: "Iterable[Alert]") -> list[dict[str, Any]]:
        """Of `alerts`, those not emitted before (by alert_id), as rows of the alerts table."""
        # the time they were found, here rather than in a Spark plan: Spark compiles current_timestamp() into the
        # generated code as a literal, so every batch would compile that code anew
        detected_at = datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as Spark hands timestamps back
        emitted = self._emitted()
        return [{"rule": a.rule, "key": a.key, "window_start": a.window_start, "window_end": a.window_end,
                 "count": a.count, "share": a.share, "threshold": a.threshold, "top_hosts": list(a.top_hosts),
                 "alert_id": a.alert_id, "detected_at": detected_at} for a in alerts if a.alert_id not in emitted]

    def recover(self) -> None:
        """Before the first batch: remove what a crashed attempt left half-written (commit.clean_crashed_attempts),
        roll up per marker folder the commit records an earlier logpipe rolled up in one file
        (commit.fold_in_flat_rollups), then send the committed alerts a crash kept from Kafka (a committed batch is
        not run again, so nothing else would send them). Waits for a micro-batch callback still running (see
        _in_batch); raises RootBusy, removing nothing, if this run no longer holds its lease."""
        with self._in_batch:
            # a run that lost its lease (paused past STALE_S, e.g. idle in --until-idle, and taken over) would take
            # the new holder's batch in progress for a crashed one and delete its files: it stops here instead
            if self.lease is not None:
                self.lease.check()
            self._generation += 1
            cleaned = clean_crashed_attempts(self.spark, self.root, list(OUTPUT_TABLES))
            self.fs.delete(staging_dir(self.root, "events"))  # what batches that died staged (see PASS_DIR)
            folded = fold_in_flat_rollups(self.spark, self.root, "ingest")
            if folded:
                self._metas = None  # read again, a marker folder at a time
        if folded:
            log.info("the commit records an earlier logpipe rolled up in %s are now rolled up per marker folder: a "
                     "start reads them a folder at a time", ", ".join(p.rsplit("/", 1)[-1] for p in folded))
        if cleaned:
            log.warning("removed the files of %d attempt(s) that died before their commit: %s", len(cleaned),
                        ", ".join(cleaned))
        self._warn_of_tables_without_day_folders()
        self.send_alerts()

    def _warn_of_tables_without_day_folders(self) -> list[str]:
        """Warn of the tables with files outside their day folders (TABLE_PARTITIONS): an earlier logpipe wrote
        them so. logpipe's readers take both, but Spark's own reader of such a table (`spark.read.parquet` of its
        folder) counted only the rows in day folders (measured: 1,136 of 2,032). Returns those tables."""
        flat = [t for t in TABLE_PARTITIONS
                if any(f.endswith(".parquet") for f in self.fs.ls(f"{self.root}/{t}"))]
        if flat:
            log.warning("%s hold(s) files an earlier logpipe wrote outside the tables' day folders: this run writes "
                        "into day folders beside them; verify, the notebook and the job read both, but "
                        "`spark.read.parquet` of such a table reads only part of it (read the committed files, or "
                        "start a new LOGPIPE_HDFS_ROOT for a plain layout)", ", ".join(flat))
        return flat

    def ingest_query(self, available_now: bool) -> "StreamingQuery":
        self.batch_error = None  # a new query: an earlier one's failure (a cancelled follow query) is not its cause
        w = (self._kafka_stream().writeStream.queryName("ingest")
             .foreachBatch(lambda batch, batch_id, gen=self._generation: self._batch(batch, batch_id, gen))
             .option("checkpointLocation", self.s.hdfs_uri("_checkpoints", "ingest")))
        return self._trigger(w, available_now).start()

    # ------------------------------------------------------------------ flush (--until-done)
    def flush_open_windows(self) -> int:
        """Write the windows still open after the last committed batch, as final: the exact counts the stream
        would write once later rows moved the horizon past them. Rows that arrive later for these windows are
        late (the flushed window end becomes the horizon's floor). Returns the (window, host, status) rows."""
        from pyspark.sql import functions as F

        committed = self._committed()
        if not committed:
            return 0
        last = max(committed)
        n = int(committed[last].get("open_window_rows", 0))
        if not n or last in (self._flushes or {}):
            return 0
        log.info("writing the windows still open after batch %d as final", last)
        if self.lease is not None:
            self.lease.check()
        carried = self._state(STATE_OPEN, last, OPEN_SCHEMA).persist()
        try:
            until = carried.agg(F.max("window_end")).first()[0]
            tables = [(with_window_date(carried.where(F.col("grain") == grain).select(*WINDOW_COLUMNS, key, "count"))
                       .coalesce(1), table)
                      for grain, key, table in (("host", "host", "windows/by_host"),
                                                ("status", "http_response", "windows/by_status"))]
            n = sum(df.count() for df, _ in tables)
            meta = {"batch": last, "rows": n, "flushed_until": until.isoformat()}

            def flush_meta() -> dict[str, Any]:  # just before the marker: a run that lost its lease stops there
                if self.lease is not None:
                    self.lease.check()
                return meta

            written = commit_batch(self.spark, self.root, "flush", last,
                                   [(df, table, [TABLE_PARTITIONS[table]]) for df, table in tables], flush_meta, prefix="f",
                                   fence=self._fence())
        finally:
            carried.unpersist()
        assert self._flushes is not None
        if not written:  # its marker appeared since this run read the flushes: that one stands
            self._flushes[last] = json.loads(self.fs.read_text(self.fs.marker(self.root, "flush", batch_tag(last, "f"))))
            log.info("the open windows after batch %d were flushed already: nothing written", last)
            return 0
        self._flushes[last] = meta
        log.info("flushed %s open window rows (windows ending up to %s)", f"{n:,}", until)
        return n

    # ------------------------------------------------------------------ alerts to Kafka
    def _committed_alert_files(self) -> dict[str, list[str]]:
        """alerts/ files by batch tag, only of batches whose commit marker exists (a crashed attempt's are not)."""
        tags = {marker_tag(f) for f in list_markers(self.fs.ls, f"{self.root}/{COMMITS}/ingest")} - {None}
        out: dict[str, list[str]] = {}
        for f in self.fs.files(self.s.hdfs_uri("alerts")):  # in date folders (in the folder itself on older roots)
            if f.endswith(".parquet") and not in_staging(f) and file_tag(f) in tags:
                out.setdefault(file_tag(f), []).append(f)
        return out

    def send_alerts(self, tags: "Iterable[str] | None" = None) -> bool:
        """Send the committed alerts not sent yet to Kafka (_publish_committed_alerts; `tags`: only those
        batches'); True if all went. A send Kafka refuses or does not acknowledge (the alerts topic gone or taking
        smaller records, the broker away for longer than the send waits) does not stop the job: the alerts stay on
        HDFS (alerts/), their batches without a marker, and the batches go on; a later try sends every unsent
        batch's alerts (send_unsent_alerts). HDFS errors (listing, markers) are raised as before."""
        try:
            self._publish_committed_alerts(tags)
        except AlertsNotSent as exc:
            self.alerts_unsent = str(exc)
            self._alerts_retry_at = time.monotonic() + ALERTS_RETRY_S
            log.error("alerts could not be sent to the Kafka topic %s: %s. They are on HDFS (%s); the job goes on "
                      "and sends them once the topic takes them (tried again after %.0fs, at the stop of a "
                      "continuous run, at the end of an --until-done or --until-idle run and at every start)",
                      self.s.alerts_topic, self.alerts_unsent, self.s.hdfs_uri("alerts"), ALERTS_RETRY_S)
            return False
        if self.alerts_unsent is not None:
            log.info("the alerts not sent before are on the Kafka topic %s now", self.s.alerts_topic)
        self.alerts_unsent = None
        return True

    def send_unsent_alerts(self, *, only_if_due: bool = False) -> bool:
        """Outside a micro-batch callback (a stop, the end of a run, a continuous run's main loop on a quiet topic):
        send every unsent batch's alerts, holding the callbacks' lock, so a callback py4j delivers late cannot
        send a batch beside it. `only_if_due`: only after a failed send once ALERTS_RETRY_S passed, and not while
        a callback runs (that one tries). True if nothing is left unsent."""
        if only_if_due and (self.alerts_unsent is None or time.monotonic() < self._alerts_retry_at):
            return self.alerts_unsent is None
        if not self._in_batch.acquire(timeout=0 if only_if_due else CALLBACK_LOCK_WAIT_S):
            return False
        try:
            return self.send_alerts()
        finally:
            self._in_batch.release()

    def _publish_committed_alerts(self, tags: "Iterable[str] | None" = None) -> None:
        """Send to Kafka every committed alerts batch not sent yet (marker _commits/alerts-kafka/<tag>), in one
        write, then mark each; `tags`: only those batches (each batch sends its own as it commits), else every
        committed one (at start: repairs a crash between an HDFS commit and its send, which no later batch would
        send; after a failed send: the batches since). At least once: a crash after the write and before the
        markers, or a write that failed after Kafka took some of its records, sends those batches again (the Kafka
        key is the alert_id). AlertsNotSent if the write fails."""
        from logpipe.streaming.run import failure_hint, failure_summary

        if tags is None:
            by_tag = self._committed_alert_files()
            sent = {marker_tag(f) for f in list_markers(self.fs.ls, f"{self.root}/{COMMITS}/alerts-kafka")}
        else:  # files of a batch this run just committed: no listing of the whole history (it grows with every batch)
            by_tag = {tag: self.fs.glob(f"{self.s.hdfs_uri('alerts')}/date=*/{tag}-*.parquet") for tag in tags}
            sent = {tag for tag in tags if self.fs.marker(self.root, "alerts-kafka", tag) is not None}
        unsent = {tag: files for tag, files in sorted(by_tag.items()) if files and tag not in sent}
        if not unsent:
            return
        alerts = self.spark.read.parquet(*[f for files in unsent.values() for f in files])  # their footers, here
        try:
            self._write_to_kafka(alerts)
        except Exception as exc:  # noqa: BLE001 (py4j's errors: Kafka's, or a Kafka connector missing)
            text = str(exc)
            raise AlertsNotSent(failure_summary(text) + failure_hint(text, ALERT_SEND_HINTS)) from exc
        for tag in unsent:
            self.fs.write_text(marker_path(self.root, "alerts-kafka", tag),
                               json.dumps({"sent_with": len(unsent), "first": min(unsent), "last": max(unsent)}))

    def _write_to_kafka(self, alerts: "DataFrame") -> None:
        """Write `alerts` (rows of alerts/) to the alerts topic: key the alert_id, value the row as JSON."""
        from pyspark.sql import functions as F

        # the alert's fields only (not a partition column Spark may read from the files' folders); a file an older
        # logpipe wrote may lack some
        value = F.to_json(F.struct(*(c for c in ALERT_COLUMNS if c in alerts.columns)), ALERT_JSON_OPTIONS)
        (alerts.select(F.col("alert_id").alias("key"), value.alias("value"))
         .write.format("kafka").option("kafka.bootstrap.servers", self.s.kafka_address)
         .options(**{f"kafka.{k}": str(v) for k, v in ALERTS_PRODUCER.items()})
         .option("topic", self.s.alerts_topic).save())

    def _emitted(self) -> dict[str, datetime]:
        """The alerts raised for windows that may still change (alert_id -> window end), to raise each once. A
        window that ends by the late horizon is final: no later batch counts it again, so its alerts are
        forgotten (_forget_final_alerts) and this stays as small as the open windows."""
        if self._emitted_alerts is None:
            committed = self._committed()
            horizon = self._horizon(max(committed) + 1) if committed else None
            # only the day folders (the window's start) that can hold a window ending after the horizon, a day's
            # margin for the session's time zone: a start after weeks opens a day's alert files, not every one
            oldest = (horizon - timedelta(seconds=duration_seconds(self.s.window) + 86_400)).date() if horizon else None
            files = [f for fs_ in self._committed_alert_files().values() for f in fs_
                     if oldest is None or (day := partition_day(f)) is None or day >= oldest]
            rows = self.spark.read.parquet(*files).select("alert_id", "window_end").collect() if files else []
            self._emitted_alerts = {r[0]: r[1] for r in rows}
            self._forget_final_alerts(horizon)
        return self._emitted_alerts

    def _forget_final_alerts(self, horizon: datetime | None) -> None:
        """Forget the alerts of windows ending at or before `horizon` (final: see _emitted)."""
        if horizon is not None and self._emitted_alerts:
            self._emitted_alerts = {k: end for k, end in self._emitted_alerts.items() if end > horizon}

    # ------------------------------------------------------------------ running
    def _trigger(self, writer: Any, available_now: bool) -> Any:
        if available_now:
            return writer.trigger(availableNow=True)
        return writer.trigger(processingTime=self.s.trigger_interval)

    def accounting(self) -> dict[str, Any]:
        """Lines in = parsed + quarantined, summed over every committed batch; late and duplicate rows."""
        from logpipe.results import sum_commit_records

        folders, _ = commit_history_by_folder(self.spark, self.root, "ingest")
        total = sum_commit_records(chain.from_iterable(folders))  # a folder's records at a time
        # in the run's metrics (_metrics/latest.json, which verify reads) the records' `duplicates` are so named
        total["duplicates_dropped"] = total.pop("duplicates")
        return total

    def record_progress(self, name: str, progress: dict[str, Any]) -> None:
        """Called by the listener per micro-batch (for the logs and run statistics)."""
        self.stats.rows[name] = self.stats.rows.get(name, 0) + int(progress.get("numInputRows", 0))

    def write_run_metrics(self, extra: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
        """The root's accounting (every committed batch, of every run) with `extra`, written to _metrics/latest.json
        and returned; with `before` (the accounting when this run began) also `this_run`: this run's share."""
        if self.lease is not None:  # a run that lost the root does not write over the new holder's figures
            self.lease.check()
        metrics = {**self.accounting(), **extra}
        if before is not None:
            metrics["this_run"] = {k: metrics[k] - before.get(k, 0) for k in RUN_COUNTS}
        self.fs.write_text(self.s.hdfs_uri("_metrics", "latest.json"), json.dumps(metrics, default=str))
        return metrics


class MicroBatch:
    """One micro-batch of the ingest query, step by step. StreamJob._run_batch calls parse, drop_repeats and
    count_windows, then commits `writes()` with `meta()` (the batch's accounting, once its files are written);
    `release()` unpersists what the steps cached. The frames are Spark plans: each step runs only the jobs it
    needs to learn its counts, the writes run the rest."""

    def __init__(self, job: StreamJob, batch: "DataFrame", batch_id: int, prev: int | None) -> None:
        self.job, self.s, self.spark = job, job.s, job.spark
        self.batch, self.batch_id = batch, batch_id
        self.prev = prev  # the last committed batch before this one: its carried state is read
        self.stage = staging_dir(job.root, "events", batch_tag(batch_id))  # see PASS_DIR
        # a line dated after this is quarantined (TIMESTAMP_IN_FUTURE): the batch's start plus the tolerance, in
        # whole seconds (as the log's times are: verify compares them with it)
        self.future_tolerance_s = duration_seconds(self.s.future_tolerance)
        self.not_after = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=self.future_tolerance_s)
        self.cached: list[DataFrame] = []
        self.new_alerts: list[dict[str, Any]] = []
        self._host_metrics: dict[str, Any] = {}
        self._meta: dict[str, Any] = {}

    def _persist(self, df: "DataFrame") -> "DataFrame":
        df = df.persist()
        self.cached.append(df)
        return df

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()

    def parse(self, horizon: datetime | None) -> None:
        """The batch's one pass over its records: parse each once, mark the parsed rows behind `horizon` late,
        and write every row to the batch's staging folder (PASS_DIR), tallying them on the way (an Observation):
        lines, quarantined, late, staged events and the newest event time; then the lines per quarantine reason
        (from the few staged quarantined rows)."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F
        from pyspark.sql.types import TimestampType

        parsed = source_columns(quarantine_in_future(with_cutoff(
            parse_columns(self.batch, request_parts=self.s.events_request_parts), horizon, not_after=self.not_after)),
            F.lit(self.s.topic))
        bad = F.col("reason").isNotNull()
        late = ~bad & F.coalesce(F.col("timestamp") < F.col("_cutoff"), F.lit(False))
        self.seen_rows = Observation(f"parse_{self.batch_id}")
        tallied = parsed.observe(
            self.seen_rows, F.count(F.lit(1)).alias("lines"), F.count_if(bad).alias("quarantined"),
            F.count_if(late).alias("late"), F.max(F.when(~bad, F.unix_micros("timestamp"))).alias("max_ts"))
        staged = staged_rows(tallied, self.job.event_columns, bad, late)
        (staged.write.mode("overwrite").partitionBy("date").options(**EVENTS_PARQUET_OPTIONS)
         .parquet(f"{self.stage}/{PASS_DIR}"))
        seen = self.seen_rows.get
        if any(seen.get(k) is None for k in ("lines", "quarantined", "late")):
            raise RuntimeError(f"batch {self.batch_id}: the parse pass reported no metrics ({seen})")
        self.n_lines, n_bad, self.n_late = seen["lines"], seen["quarantined"], seen["late"]
        self.n_parsed = self.n_lines - n_bad
        self.n_staged_events = self.n_parsed - self.n_late
        self.max_ts: datetime | None = (TimestampType().fromInternal(seen["max_ts"]) if seen["max_ts"] is not None
                                        else None)
        self.quarantined: dict[str, int] = {}
        if n_bad:
            by_reason = self._staged(QUARANTINE_DIR).groupBy("host").count().collect()  # host: the reason
            self.quarantined = {r[0]: r[1] for r in by_reason}
            if sum(self.quarantined.values()) != n_bad:
                raise RuntimeError(f"batch {self.batch_id}: {n_bad:,} lines quarantined, {self.quarantined} staged")

    def _staged(self, part: str, folder: str = PASS_DIR) -> "DataFrame":
        """The rows the batch staged in one partition folder (`date=<part>`) of `folder`."""
        return self.spark.read.parquet(f"{self.stage}/{folder}/date={part}")

    def _event_dates(self, folder: str) -> list[str]:
        """The date folders (`date=2004-05-18`) of the events staged in `folder`."""
        return sorted({f.rsplit("/", 2)[-2] for f in self.job.fs.files(f"{self.stage}/{folder}")
                       if f.endswith(".parquet")} - {f"date={QUARANTINE_DIR}", f"date={LATE_DIR}"})

    def _staged_events(self, folder: str) -> "DataFrame":
        """The batch's staged events (every date folder of `folder`), with their key_hash."""
        from pyspark.sql import functions as F

        dates = self._event_dates(folder)
        if not dates:
            return self.spark.createDataFrame([], staged_events_schema(self.job.event_columns))
        return (self.spark.read.option("basePath", f"{self.stage}/{folder}")
                .parquet(*(f"{self.stage}/{folder}/{d}" for d in dates))
                .withColumn("key_hash", F.xxhash64("src_key")))

    def drop_repeats(self) -> None:
        """The batch's events: the staged ones without the repeats of a source line (see drop_duplicate_lines).
        A batch that has repeats (a restarted producer) writes its events again without them."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        self.seen_prev = self.job._state(STATE_SEEN, self.prev, SEEN_SCHEMA)
        staged = self._staged_events(PASS_DIR)
        self.events, self.n_events = drop_duplicate_lines(staged, self.seen_prev, self.n_staged_events)
        self.events_dir = PASS_DIR
        self.events_written: Any = SimpleNamespace(get={"rows": self.n_staged_events})
        if self.events is not staged:
            self.events_written = Observation(f"events_{self.batch_id}")
            (self.events.drop("key_hash").observe(self.events_written, F.count(F.lit(1)).alias("rows"))
             .write.mode("overwrite").partitionBy("date").options(**EVENTS_PARQUET_OPTIONS)
             .parquet(f"{self.stage}/{REWRITE_DIR}"))
            self.events_dir = REWRITE_DIR
            self.events = self._staged_events(REWRITE_DIR)

    def count_windows(self, next_horizon: datetime | None) -> None:
        """The running window counts: this batch's events plus the open windows carried in. Those ending by
        `next_horizon` are final (written once); the others, with the source keys still inside the horizon, are
        carried on to the next batch."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        self.next_horizon = next_horizon
        carried = self.job._state(STATE_OPEN, self.prev, OPEN_SCHEMA)
        # per status, and per (host, status) of failed requests: small, cached, split into final and open
        self.counts_of: dict[str, DataFrame] = {}
        for grain in ("status", "failed"):
            rows = windowed_rows(self.events, carried, grain, self.s.window, self.s.slide)
            self.counts_of[grain] = self._persist(with_cutoff(summed(rows, GRAINS[grain]), next_horizon)
                                                  .withColumn("_final", final_at_cutoff()).drop("_cutoff"))
        # per host: about as many rows as events. The final ones are summed and written in one pass, as a batch
        # job would; that pass also counts them and gathers those at or over the rate-limit ceiling (an
        # Observation), so they are not cached and scanned again. The open ones are few (host_window_counts).
        final_host, open_host = host_window_counts(self.events, carried, next_horizon, self.s.window, self.s.slide)
        self.host_seen = Observation(f"by_host_{self.batch_id}")
        self.final_host = final_host.observe(
            self.host_seen, F.count(F.lit(1)).alias("rows"),
            F.collect_list(F.when(F.col("count") >= self.job.rules.rate_limit.ceiling,
                                  F.struct(*WINDOW_COLUMNS, "host", "count"))).alias("over"))
        self.open_host = self._persist(open_host)
        self.seen_next = self._persist(
            with_cutoff(self.seen_prev.unionByName(self.events.select("src_key", "key_hash", "timestamp")),
                        next_horizon).where("_cutoff IS NULL OR timestamp >= _cutoff").drop("_cutoff"))

        def final_and_open(grain: str) -> dict[bool, int]:
            return {r[0]: r[1] for r in self.counts_of[grain].groupBy(F.col("_final")).count().collect()}

        # four small jobs, each a scan of the batch and a few tasks, run at once to keep both cores busy (one
        # after the other they ran at about 40 % of the CPU): 1 GB topic, second batch, 4.8 -> 4.1 s here
        status_sizes, failed_sizes, n_open_host, self.n_seen = run_at_once(
            self.spark, [lambda: final_and_open("status"), lambda: final_and_open("failed"), self.open_host.count,
                         self.seen_next.count], 4)
        self.sizes = {"status": status_sizes, "failed": failed_sizes}
        self.n_open = n_open_host + status_sizes.get(False, 0) + failed_sizes.get(False, 0)

    def final_host_metrics(self) -> dict[str, Any]:
        """What the by_host pass observed: its row count and the rows over the ceiling. Only valid once
        windows/by_host is written (Observation.get waits for that pass: call it only after it)."""
        if not self._host_metrics:
            got = self.host_seen.get
            if "rows" not in got or "over" not in got:
                raise RuntimeError(f"batch {self.batch_id}: the windows/by_host pass reported no metrics ({got})")
            self._host_metrics.update(got)
        return self._host_metrics

    def alerts(self) -> "DataFrame | None":
        """The alerts of this batch's running counts (also kept in `new_alerts`). Given to commit_batch as a
        function, so it runs after every write given as a frame, windows/by_host among them: that pass gathered
        the final host windows over the ceiling."""
        over = [HostCount(*r) for r in self.final_host_metrics()["over"]]
        alerts = alerts_of_running_counts(self.job.rules, over, self.open_host, self.counts_of["status"],
                                          self.counts_of["failed"])
        self.new_alerts.extend(self.job._new_alerts(alerts))
        return (with_window_date(self.spark.createDataFrame(self.new_alerts, ALERTS_SCHEMA)).coalesce(1)
                if self.new_alerts else None)

    def writes(self) -> list[TableWrite]:
        """Every table of the batch, for commit_batch."""
        from pyspark.sql import functions as F

        is_final = F.col("_final")
        # events/: the staged files, moved in last (the other writes read them)
        writes: list[TableWrite] = [TableWrite(None, "events", staged=f"{self.stage}/{self.events_dir}",
                                               staged_parts=self._event_dates(self.events_dir))]
        if self.quarantined:
            q = self._staged(QUARANTINE_DIR).withColumn("raw_bytes", F.unbase64("request"))  # see staged_rows
            quarantine = q.select(F.expr("make_valid_utf8(TRIM(TRAILING '\\r\\n' FROM CAST(raw_bytes AS STRING)))")
                                  .alias("raw"),  # U+FFFD for bad bytes
                                  "raw_bytes", F.col("host").alias("reason"), "src", "off", "src_key",
                                  "kafka_partition", "kafka_offset")
            # by the day it was read (UTC): a line that did not parse has no time of its own
            ingest_date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            writes.append(TableWrite(quarantine.withColumn("ingest_date", F.lit(ingest_date)).repartition(1),
                                     "quarantine", [TABLE_PARTITIONS["quarantine"]]))
        if self.n_late:
            late = self._staged(LATE_DIR).drop("date").withColumn("date", F.date_format("timestamp", "yyyy-MM-dd"))
            writes.append(TableWrite(late.repartition(1), "late", [TABLE_PARTITIONS["late"]]))
        # the tables are partitioned by day (root_layout.TABLE_PARTITIONS): a folder on HDFS holds 1,048,576 entries
        writes.append(TableWrite(with_window_date(self.final_host).coalesce(2), "windows/by_host",
                                 [TABLE_PARTITIONS["windows/by_host"]],
                                 keep=lambda: self.final_host_metrics()["rows"] > 0))
        if self.sizes["status"].get(True, 0):
            writes.append(TableWrite(with_window_date(self.counts_of["status"].where(is_final).drop("_final"))
                                     .coalesce(1), "windows/by_status", [TABLE_PARTITIONS["windows/by_status"]]))
        # a function: after windows/by_host, see alerts()
        writes.append(TableWrite(self.alerts, "alerts", [TABLE_PARTITIONS["alerts"]]))
        if self.n_open:
            still_open = [df.select(F.lit(g).alias("grain"), *WINDOW_COLUMNS,
                                    *(F.col(c) if c in GRAINS[g] else F.lit(None).alias(c)
                                      for c in ("host", "http_response")), "count")
                          for g, df in (("host", self.open_host),
                                        ("status", self.counts_of["status"].where(~is_final)),
                                        ("failed", self.counts_of["failed"].where(~is_final)))]
            open_rows = still_open[0].unionByName(still_open[1]).unionByName(still_open[2])
            writes.append(TableWrite(open_rows.coalesce(1), STATE_OPEN))
        if self.n_seen:
            writes.append(TableWrite(self.seen_next.coalesce(1), STATE_SEEN))
        return writes

    def meta(self) -> dict[str, Any]:
        """The batch's accounting (its commit record), made once its files are written (the final host windows
        are counted by then); the same record on later calls."""
        if not self._meta:
            written = self.events_written.get.get("rows")
            if written != self.n_events:
                raise RuntimeError(f"batch {self.batch_id}: the events write wrote {written} rows, the batch holds "
                                   f"{self.n_events:,} events: not committed (the batch is run again at the next start)")
            quarantined = sum(self.quarantined.values())
            self._meta = {
                "batch": self.batch_id, "lines": self.n_parsed + quarantined, "parsed": self.n_parsed,
                "quarantined": quarantined, "quarantined_by_reason": self.quarantined, "late": self.n_late,
                "duplicates": self.n_parsed - self.n_late - self.n_events, "events": self.n_events,
                "max_ts": self.max_ts.isoformat() if self.max_ts else None,
                "horizon": self.next_horizon.isoformat() if self.next_horizon else None,
                # the bound is this batch's start plus the tolerance: verify checks it against the clock
                "not_after": self.not_after.isoformat(), "future_tolerance_s": self.future_tolerance_s,
                "final_window_rows": self.final_host_metrics()["rows"] + self.sizes["status"].get(True, 0),
                "open_window_rows": self.n_open, "seen_keys": self.n_seen, "alerts": len(self.new_alerts),
                "at": time.time()}
        return self._meta


def staged_rows(parsed: "DataFrame", event_columns: list[str], bad: "Column", late: "Column") -> "DataFrame":
    """The rows a micro-batch stages in its one pass (see PASS_DIR): the events' columns, the source position, and
    `date` (the partition folder): the event's date, LATE_DIR for a late row, QUARANTINE_DIR for a line that did
    not parse. A quarantined row keeps its reason in `host` and its record's bytes, base64, in `request` (the
    quarantine table is made of them: MicroBatch.writes)."""
    from pyspark.sql import functions as F

    swapped = {"host": F.when(bad, F.col("reason")).otherwise(F.col("host")),
               "request": F.when(bad, F.base64("value")).otherwise(F.col("request"))}
    date = (F.when(bad, F.lit(QUARANTINE_DIR)).when(late, F.lit(LATE_DIR))
            .otherwise(F.date_format("timestamp", "yyyy-MM-dd")))
    return parsed.select(*(swapped[c].alias(c) if c in swapped else F.col(c) for c in event_columns),
                         "src", "off", "src_key", F.col("partition").alias("kafka_partition"),
                         F.col("offset").alias("kafka_offset"), date.alias("date"))


def with_window_date(windows: "DataFrame") -> "DataFrame":
    """`windows` (window counts) with `date`, their partition column (TABLE_PARTITIONS): the UTC day their window
    starts (the session's time zone is UTC)."""
    from pyspark.sql import functions as F

    return windows.withColumn("date", F.to_date("window_start"))


def staged_events_schema(event_columns: list[str]) -> str:
    """The schema of a batch's staged events with their key_hash (MicroBatch._staged_events)."""
    types = {"timestamp": "TIMESTAMP", "http_response": "INT", "bytes_sent": "INT"}
    return ", ".join([f"{c} {types.get(c, 'STRING')}" for c in event_columns]
                     + ["src STRING", "off BIGINT", "src_key STRING", "kafka_partition INT", "kafka_offset BIGINT",
                        "date STRING", "key_hash BIGINT"])


def windowed_rows(events: "DataFrame", carried: "DataFrame", grain: str, window: str, slide: str) -> "DataFrame":
    """A row (window_start, window_end, <the grain's keys>, count 1) per window of each event, plus the grain's
    carried open windows with their counts: summed per window and keys, the grain's running counts."""
    from pyspark.sql import functions as F

    keys = GRAINS[grain]
    events = events.where(f"http_response >= {FAILED_STATUS}") if grain == "failed" else events
    return (window_rows(events, window, slide).select(*WINDOW_COLUMNS, *keys, F.lit(1).cast("bigint").alias("count"))
            .unionByName(carried.where(F.col("grain") == grain).select(*WINDOW_COLUMNS, *keys, "count")))


def summed(rows: "DataFrame", keys: list[str]) -> "DataFrame":
    """The counts of `rows` summed per window and `keys`."""
    from pyspark.sql import functions as F

    return rows.groupBy(*WINDOW_COLUMNS, *keys).agg(F.sum("count").alias("count"))


def final_at_cutoff() -> "Column":
    """Whether a window is final: it ends at or before the `_cutoff` column (the next horizon; NULL: none yet)."""
    from pyspark.sql import functions as F

    return F.coalesce(F.col("window_end") <= F.col("_cutoff"), F.lit(False))


def host_window_counts(events: "DataFrame", carried: "DataFrame", cutoff: datetime | None, window: str,
                       slide: str) -> tuple["DataFrame", "DataFrame"]:
    """The per-host running counts, split at `cutoff` (None: nothing is final yet): (final, open). The final
    windows (ending at or before the cutoff) come from all rows and the carried windows. The open ones come only
    from the carried windows and the rows late enough to fall in a window ending after the cutoff (later than
    cutoff - window length): few, without a scan of every row's windows."""
    from pyspark.sql import functions as F

    final = summed(with_cutoff(windowed_rows(events, carried, "host", window, slide), cutoff)
                   .where(final_at_cutoff()).drop("_cutoff"), ["host"])
    recent = (with_cutoff(events.select("timestamp", "host", "http_response"), cutoff)
              .where(F.col("_cutoff").isNull()
                     | (F.col("timestamp") > F.col("_cutoff") - F.expr(f"INTERVAL {duration_seconds(window)} SECONDS")))
              .drop("_cutoff"))
    still_open = summed(with_cutoff(windowed_rows(recent, carried, "host", window, slide), cutoff)
                        .where(~final_at_cutoff()).drop("_cutoff"), ["host"])
    return final, still_open


def window_rows(df: "DataFrame", window: str, slide: str) -> "DataFrame":
    """(window_start, window_end, host, http_response): a row per sliding window that holds each row's timestamp."""
    from pyspark.sql import functions as F

    return (df.select(F.window("timestamp", window, slide).alias("w"), "host", "http_response")
            .select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"), "host",
                    "http_response"))


def with_cutoff(df: "DataFrame", cutoff: datetime | None, *, not_after: datetime | None = None) -> "DataFrame":
    """`df` with a column `_cutoff` holding `cutoff` (NULL: none yet), joined from a one-row broadcast frame (with
    `not_after`, also a column `_not_after` holding it: parse.quarantine_in_future).
    As a literal, the cutoff would be compiled into Spark's generated code, which would then differ, and be
    compiled and JIT-compiled again, every micro-batch. The frame is a local table (SQL VALUES), held by the
    driver: a frame made from Python rows would run a Spark job with a Python worker each time it is broadcast
    (some seven times a batch). The column is nullable whether or not the cutoff is NULL: the column of a plain
    `CAST(:cutoff AS TIMESTAMP)` is not nullable when the value is not NULL, so the first batch (no cutoff yet)
    and the later ones compiled different code for every stage that reads the cutoff, the one pass among them,
    and the JIT compiled each twice."""
    from pyspark.sql import functions as F

    if not_after is None:
        one = df.sparkSession.sql("SELECT * FROM VALUES (CAST(if(:cutoff IS NULL, NULL, :cutoff) AS TIMESTAMP)) "
                                  "AS t(_cutoff)", args={"cutoff": cutoff})
    else:
        one = df.sparkSession.sql("SELECT * FROM VALUES (CAST(if(:cutoff IS NULL, NULL, :cutoff) AS TIMESTAMP), "
                                  "CAST(:not_after AS TIMESTAMP)) AS t(_cutoff, _not_after)",
                                  args={"cutoff": cutoff, "not_after": not_after})
    return df.crossJoin(F.broadcast(one))


# hashes the duplicate check gathers in one task at most (about 40 B each there, boxed in a list, then a set)
HASHES_PER_TASK = 4_000_000


def drop_duplicate_lines(rows: "DataFrame", seen_prev: "DataFrame", n_rows: int) -> tuple["DataFrame", int]:
    """`rows` without the repeats of a source line (src_key) within them or in `seen_prev`, and how many remain
    (`n_rows`: how many `rows` has). Both frames have src_key and its key_hash. Repeats are searched for on the
    64-bit key_hash (a shuffle of longs, not strings); only rows whose hash repeats are then compared on src_key,
    and the rows themselves are shuffled only when there are real repeats (a restarted producer). Most batches
    have none: one aggregation shows that every hash is distinct and none was seen before, and the rows are
    returned as they are. That aggregation splits the hashes into buckets (hash modulo their number) of at most
    about HASHES_PER_TASK and counts each bucket's distinct hashes in one task (a list, then a set of longs); a
    hash lies in one bucket, so the buckets' counts add up. count(DISTINCT) aggregates every hash in a hash map
    on the map side, then again after the shuffle (2.1 M rows: 1.0 s against 0.6 s; 10-11 M rows: 7.6-9.7 s).
    The aggregation also counts the rows: fewer than `n_rows` (staged files gone) is an error, not a batch
    committed short."""
    from pyspark.sql import functions as F

    spark = rows.sparkSession
    seen_hashes = F.broadcast(seen_prev.select("key_hash", F.lit(True).alias("_seen")))
    buckets = max(1, -(-n_rows // HASHES_PER_TASK))
    per_bucket = (rows.select("key_hash").join(seen_hashes, "key_hash", "left")
                  .groupBy(F.pmod("key_hash", F.lit(buckets)).alias("_bucket"))
                  .agg(F.count(F.lit(1)).alias("rows"), F.size(F.array_distinct(F.collect_list("key_hash")))
                       .alias("distinct"), F.max("_seen").alias("seen"))
                  .collect())
    # staged files gone before they were listed: the batch would commit rows no table holds. (The join counts a
    # row twice when two seen keys share its 64-bit hash: then the rows are counted alone.)
    read = sum(r["rows"] for r in per_bucket)
    if read != n_rows and rows.count() != n_rows:
        raise RuntimeError(f"the duplicate check read {read:,} staged events where {n_rows:,} were staged: files of "
                           "them are gone (removed outside this run); not committed, the batch runs again at the "
                           "next start")
    check = {"distinct": sum(r["distinct"] for r in per_bucket), "seen": any(r["seen"] for r in per_bucket)}
    if check["distinct"] == n_rows and not check["seen"]:
        return rows, n_rows

    def repeats(keys: "DataFrame", key: str) -> list[Any]:
        repeated = keys.groupBy(key).count().where("count > 1").select(key)
        again = keys.join(F.broadcast(seen_prev.select(key)), key, "left_semi")
        return [r[0] for r in repeated.union(again).distinct().collect()]

    hashes = repeats(rows.select("key_hash"), "key_hash")
    if not hashes:
        return rows, n_rows
    candidates = rows.join(F.broadcast(spark.createDataFrame([(h,) for h in hashes], "key_hash BIGINT")),
                           "key_hash", "left_semi")
    dup_keys = repeats(candidates.select("src_key"), "src_key")
    if not dup_keys:  # hash collisions only
        return rows, n_rows
    dups = F.broadcast(spark.createDataFrame([(k,) for k in dup_keys], "src_key STRING"))
    kept = (rows.join(dups, "src_key", "left_semi")
            .join(F.broadcast(seen_prev.select("src_key")), "src_key", "left_anti")
            .dropDuplicates(["src_key"]))
    out = rows.join(dups, "src_key", "left_anti").unionByName(kept)
    return out, out.count()


def alerts_of_running_counts(rules: AlertRules, final_over: "list[HostCount]", open_host: "DataFrame",
                             by_status: "DataFrame", failed: "DataFrame") -> list[Alert]:
    """The alerts of a micro-batch's running window counts, decided by `rules` (logpipe.rules) in the driver from
    the few rows they need: the final host windows at or over the ceiling (`final_over`, gathered by the
    windows/by_host pass), the open host windows (`open_host`: window_start, window_end, host, count; only those
    over the ceiling are read), every per-status count (`by_status`: window_start, window_end, http_response,
    count, ...; small: a row per window and status) and, for the statuses that surge, their per-host counts
    from `failed` (window_start, window_end, host, http_response, count, ...: per (host, status) of failed
    requests). One or two small Spark jobs over cached frames, where a Spark plan of the rules ran some ten
    stages (joins, a window function) each batch."""
    from pyspark.sql import functions as F

    spark = open_host.sparkSession
    status_rows, open_over = run_at_once(spark, [
        lambda: by_status.select(*WINDOW_COLUMNS, "http_response", "count").collect(),
        lambda: open_host.where(F.col("count") >= rules.rate_limit.ceiling)
        .select(*WINDOW_COLUMNS, "host", "count").collect()], 2)
    surges = rules.failure_surge.surges(StatusCount(*r) for r in status_rows)
    behind: list[Any] = []
    if surges:
        # their keys as a local table (SQL VALUES, held by the driver): as literals in a filter, they would be
        # compiled into the generated code, which would differ every batch. Named parameters: Spark 4.2 binds
        # positional ones (`?`) in such a table to the wrong columns
        rows = ", ".join(f"(CAST(:ws{i} AS TIMESTAMP), CAST(:we{i} AS TIMESTAMP), CAST(:st{i} AS INT))"
                         for i in range(len(surges)))
        args = {f"{k}{i}": v for i, s in enumerate(surges)
                for k, v in (("ws", s.window_start), ("we", s.window_end), ("st", s.http_response))}
        keys = spark.sql(f"SELECT * FROM VALUES {rows} AS t(window_start, window_end, http_response)", args=args)
        behind = (failed.join(F.broadcast(keys), [*WINDOW_COLUMNS, "http_response"], "left_semi")
                  .select(*WINDOW_COLUMNS, "host", "http_response", "count").collect())
    return (rules.rate_limit.alerts_of(final_over + [HostCount(*r) for r in open_over])
            + rules.failure_surge.alerts_of(surges, (WindowCount(*r) for r in behind)))
