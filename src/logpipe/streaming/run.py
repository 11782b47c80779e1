"""Runs the streaming job: continuously, `until_done` (drain the topic, then flush the open windows), or
`until_idle_s` (run continuously while records arrive; once they stop, finish as `until_done` does)."""

from __future__ import annotations

import json
import math
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from logpipe.config import Settings
from logpipe.stopping import set_from_handler

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

    from logpipe.streaming.job import StreamJob

log = logging.getLogger("logpipe.stream")


class StopRequested(Exception):
    """A SIGINT or SIGTERM ended a run-to-the-end stream (`until_done`, `until_idle_s`) before the end of its
    input. The micro-batches committed so far stand; running the same command again goes on from there."""

    def __init__(self, signum: int, lines: int | None) -> None:
        self.signum, self.lines = signum, lines
        held = (f"{lines:,} lines in the micro-batches committed so far" if lines is not None
                else "the micro-batches committed so far stand (their count could not be read)")
        super().__init__(f"stopped by {signal.Signals(signum).name} before the end of the topic: {held} (their "
                         "windows still open are not written yet); run the same command again to go on from there")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignal:
    """SIGINT and SIGTERM ask the job to stop between micro-batches (`event` is set, `signum` says which). A second
    signal acts as it did before: an impatient user can still stop at once (a batch cut short is redone on
    restart). Python takes signals in the main thread only: elsewhere nothing is installed and the event is never
    set (the caller's thread keeps the process's handlers)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._before: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig in self._before:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        set_from_handler(self.event)  # event.set() here could wait for ever on the lock the main thread holds
        self.restore()
        log.info("%s: stopping once the running micro-batch is done (again to stop at once)",
                 signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._before = {}


def records_behind(end: dict[int, int], planned: dict[int, int] | None, now: dict[int, int] | None) -> int:
    """The records of a topic that a micro-batch which read up to `end` ({partition: offset}) left for later: per
    partition, the newest end offset known (`planned`: Spark's, when it planned the batch; `now`: the run's poller's,
    read since) minus `end`. A live tail's batch reads all that is there when it is planned, so its lag is what
    arrived while it ran: only `now` shows that."""
    known = [ends for ends in (planned, now) if ends]
    return sum(max([end.get(p, 0), *(ends.get(p, 0) for ends in known)]) - end.get(p, 0)
               for p in set(end).union(*known))


def _listener(job: StreamJob, input_ends: Callable[[], dict[int, int] | None]) -> Any:
    """The run's progress logger; `input_ends`: the input topic's end offsets as last read (None: unknown)."""
    from pyspark.sql.streaming import StreamingQueryListener

    topic = job.s.topic

    class ProgressLogger(StreamingQueryListener):
        """Logs each micro-batch (rows, rows/s, lag: the records waiting once it was done)."""

        def onQueryStarted(self, event: Any) -> None:
            log.info("query %s started (id %s)", event.name, event.id)

        def onQueryProgress(self, event: Any) -> None:
            p = json.loads(event.progress.json)
            name = p.get("name")
            job.record_progress(name, p)
            rows = int(p.get("numInputRows", 0))
            if not rows:
                return
            lag = ""
            for src in p.get("sources", []):
                latest, end = kafka_offsets(src.get("latestOffset")), kafka_offsets(src.get("endOffset"))
                if latest is not None and end is not None:
                    now = input_ends()
                    behind = sum(records_behind(end.get(t, {}), parts, now if t == topic else None)
                                 for t, parts in latest.items())
                    lag = f", lag {behind:,} records"
            # the carried window state and the late horizon are in the job's own line for the batch
            log.info("%-7s batch %d: %s rows, %.0f rows/s%s", name, p["batchId"], f"{rows:,}",
                     float(p.get("processedRowsPerSecond") or 0), lag)

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            if event.exception:
                log.error("query %s failed: %s", event.id, failure_summary(event.exception))

    return ProgressLogger()


def make_alerts_topic(s: Settings) -> None:
    """Make the alerts topic the job publishes to, with the pipeline's settings, unless it exists: never left to
    the broker's auto-creation on the first alert. Not allowed to (no right to create topics): a warning, as an
    admin may have made it; the first send tells."""
    from kafka.errors import KafkaError

    from logpipe.topics import create_topic

    try:
        create_topic(s, s.alerts_topic, partitions=1)
    except KafkaError as exc:
        log.warning("could not make the alerts topic %s (%s): alerts are published there, so make it by hand if it "
                    "does not exist", s.alerts_topic, exc)


# how long a run waits, after its query stopped, for a micro-batch callback the stop left running (it still renames
# its files and writes its marker) before it writes the run's metrics and releases the lease
CALLBACK_WAIT_S = 30.0
# what a root holds before the job's first run wrote its record: the lease (under _commits/), Spark's checkpoints,
# the demo's mark of the log it replays, the batch reference's tables (`python -m logpipe.streaming.batch`)
ROOT_ENTRIES_BEFORE_THE_RECORD = frozenset({"_commits", "_checkpoints", "_source.json", "_batch_reference"})


def foreign_entries(s: Settings, fs: Any) -> list[str]:
    """The entries of a results root without the job's record that hold files the job did not put there (sorted
    names), unless it holds committed batches (a root whose record was lost is the job's own). Empty folders are
    not counted: nothing in them can be read as results (an administrator may make a table's folder first, e.g. to
    give it a quota)."""
    from logpipe.root_layout import COMMITS

    if not fs.exists(s.hdfs_path()) or fs.exists(s.hdfs_path(COMMITS, "ingest")):
        return []
    found = []
    for entry in fs.ls(s.hdfs_path(), detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name not in ROOT_ENTRIES_BEFORE_THE_RECORD and (entry["type"] != "directory" or fs.find(entry["name"])):
            found.append(name)
    return sorted(found)


def precheck_root(s: Settings, topic_id: str | None) -> None:
    """Refuse at once, before Spark starts (10-15 s), a results root the job would refuse (StreamJob.claim_root,
    which checks again under the root's lease): read over WebHDFS."""
    from logpipe.results import webhdfs_fs
    from logpipe.root_layout import COMMITS, list_markers, marker_tag
    from logpipe.root_record import ROOT_SETTINGS, ROOT_SETTINGS_FILE, claim_refusal, parse_root_record
    from logpipe.streaming.job import ResultsRootMismatch

    fs = webhdfs_fs(s)
    path = s.hdfs_path(*ROOT_SETTINGS_FILE.split("/"))
    try:
        if not fs.exists(path):  # a new root, or one of files the job did not write (its record lost: the job judges)
            if foreign := foreign_entries(s, fs):
                raise ResultsRootMismatch(
                    f"{s.hdfs_uri()} holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''} but no "
                    f"results of the streaming job (no {ROOT_SETTINGS_FILE}): its tables would be written beside "
                    "them, and verify, the notebook and the job itself would read them as its own. Give another "
                    "LOGPIPE_HDFS_ROOT (--hdfs-root), or empty this folder")
            return
        record = fs.cat_file(path)
        commits = s.hdfs_path(COMMITS, "ingest")
        committed = (sum(marker_tag(f) is not None for f in list_markers(lambda p: fs.ls(p, detail=False), commits))
                     if fs.exists(commits) else 0)
        has_offsets = fs.exists(s.hdfs_path("_checkpoints", "ingest", "offsets"))
    except OSError as exc:  # a folder of the root the HDFS user may not read, or HDFS stopped answering
        hint = (" -- the HDFS user (LOGPIPE_HDFS_USER, else your login name) may not read it: choose another "
                "LOGPIPE_HDFS_ROOT, or give that user the folder") if isinstance(exc, PermissionError) else ""
        raise RuntimeError(f"could not read the results root {s.hdfs_uri()} over WebHDFS: {type(exc).__name__}: "
                           f"{exc}{hint}") from exc
    try:
        theirs = parse_root_record(s.hdfs_uri(*ROOT_SETTINGS_FILE.split("/")), record.decode())
    except ValueError as exc:
        raise ResultsRootMismatch(str(exc)) from exc
    why = claim_refusal(s.hdfs_uri(), theirs, {k: getattr(s, k) for k in ROOT_SETTINGS}, committed=committed,
                        offsets=f"{s.hdfs_uri('_checkpoints', 'ingest')}/offsets",
                        has_offsets=has_offsets, topic=s.topic, topic_id=topic_id)
    if why:
        raise ResultsRootMismatch(why)


def run_stream(s: Settings, *, until_done: bool, until_idle_s: float | None = None) -> dict[str, Any]:
    """Run the job. until_done: returns the run's metrics when everything in the topic has been processed.
    until_idle_s: process records as they arrive (a producer may still be writing them); once the first records
    were processed and then none arrived for until_idle_s seconds, finish as until_done does."""
    from py4j.protocol import Py4JError, Py4JJavaError

    from logpipe import health
    from logpipe.spark import build_spark
    from logpipe.stack.services import native_service_down
    from logpipe.streaming.job import SPARK_CONF, StreamJob
    from logpipe.streaming.lease import RootLease
    from logpipe.topics import topic_id

    health.wait_for_kafka(s.kafka_address, s.connect_timeout_s, down=lambda: native_service_down(s, "kafka"))
    health.wait_for_hdfs(s.webhdfs_address, s.connect_timeout_s, down=lambda: native_service_down(s, "namenode"))
    check_until_idle(s, until_idle_s)
    if until_done and until_idle_s is None:  # drains what is there: a topic nobody produced to is a mistake
        health.wait_until(lambda: health.probe_topic(s.kafka_address, s.topic), what=f"topic {s.topic!r}",
                          timeout=min(s.connect_timeout_s, 10),
                          hint="Nothing was produced to it: check LOGPIPE_TOPIC, or run `logpipe produce` first.")
    else:  # a stream that waits for records may start before the producer, which creates the topic
        try:
            health.probe_topic(s.kafka_address, s.topic)
        except health.NotReady:
            log.info("waiting for topic %s on %s: the producer creates it with its first records", s.topic,
                     s.kafka_address)
            health.wait_until(lambda: health.probe_topic(s.kafka_address, s.topic), what=f"topic {s.topic!r}",
                              timeout=float("inf"), hint="", interval=1.0)
    topic_now = topic_id(s, s.topic)  # the broker's id of the topic: read once, checked before and under the lease
    precheck_root(s, topic_now)
    # until Spark has stopped, py4j's records of a failed callback or of a call Ctrl-C cut short are one line each (a
    # Ctrl-C raises KeyboardInterrupt without a call into the JVM: spark.plain_keyboard_interrupt)
    with _short_py4j_records():
        spark = build_spark(s, health.STREAM_APP, extra=SPARK_CONF)
        try:
            job = StreamJob(spark, s)
            lease = RootLease(job.fs, job.root)  # one run per results root
        except BaseException:  # a Ctrl-C here too: Spark is stopped
            _stop_spark(spark)
            raise
        try:
            lease.acquire()
            job.lease = lease
            job.claim_root(topic_now)
            lease.check()  # a newcomer that took it over meanwhile: stop before recover() cleans its batch in progress
            make_alerts_topic(s)  # once the root is known to be usable: a refused root leaves no topic behind
            job.recover()  # sends the alerts a crash kept from Kafka
            before = job.accounting()  # what earlier runs committed: the end of the run says what this one added
        except BaseException as exc:
            lease.release()
            _stop_spark(spark)
            if isinstance(exc, Py4JJavaError):  # HDFS refused (permissions, safe mode, no space): one line
                # taking the lease, recording the settings, cleaning a crashed attempt or sending the alerts a crash
                # kept from Kafka (recover): HDFS or Kafka refused
                raise RuntimeError(f"could not start on the results root {job.root}: {failure_summary(str(exc))}"
                                   f"{what_to_check(str(exc), job)}") from exc
            if isinstance(exc, Py4JError):
                if _interrupted(exc):
                    raise KeyboardInterrupt from exc
                raise RuntimeError(_jvm_gone(job, exc)) from exc
            raise
        from logpipe.topics import TopicEnds

        at_once = False  # a second signal (KeyboardInterrupt): no wait for the running micro-batch
        quiet: TopicQuiet | None = None
        stop: StopSignal | None = None
        try:  # from here on the finally below releases the lease and stops Spark, whatever fails or interrupts
            ends = TopicEnds(s, s.topic)  # connects on its first read, in the poller's thread
            poller = quiet = TopicQuiet(s.topic, ends.read, on_exit=ends.close).start()  # the thread closes its consumer
            spark.streams.addListener(_listener(job, lambda: poller.ends))
            t0 = time.monotonic()
            stop = StopSignal()
            log.info("reading topic %s at %s into %s; Spark UI %s", s.topic, s.kafka_address, s.hdfs_uri(),
                     spark.sparkContext.uiWebUrl)  # in every mode: with spark_ui_port 0 or 4040 taken, only this says where
            if until_idle_s is not None:
                _follow_until_idle(job, s, stop, until_idle_s, quiet)
            if until_done or until_idle_s is not None:
                return _drain_and_flush(job, s, stop, t0, before)
            return _run_until_stopped(job, s, stop, t0, before)
        except Py4JJavaError as exc:  # HDFS refused a write outside the queries (the flush, the metrics, recover()):
            # one line, as a failed micro-batch is reported (a query's failures come as StreamingQueryException)
            raise RuntimeError(f"writing the results under {job.root} failed: {failure_summary(str(exc))}"
                               f"{what_to_check(str(exc), job)}") from exc
        except Py4JError as exc:  # not an error of Java's: the JVM no longer answers, or a Ctrl-C cut a call short
            if not _interrupted(exc):
                raise RuntimeError(_jvm_gone(job, exc)) from exc
            at_once = True
            log.warning("stopping now: a micro-batch cut short is redone on restart")
            raise KeyboardInterrupt from exc
        except KeyboardInterrupt:  # the second Ctrl-C: stop at once (Spark's stop below ends the query)
            at_once = True
            log.warning("stopping now: a micro-batch cut short is redone on restart")
            raise
        finally:
            if quiet is not None:
                quiet.stop(timeout=1.0)  # a hung read is not waited for: the thread closes `ends` once it ends
            if stop is not None:
                stop.restore()
            # a callback a stop left running may still rename files: not yet (nor, stopping at once, at all)
            if job.wait_for_batch(timeout=0 if at_once else CALLBACK_WAIT_S):
                lease.release()
            else:
                log.warning("a micro-batch callback is still running: the lease %s is left to be taken over once this "
                            "process has ended", lease.path)
            _stop_spark(spark)


def _interrupted(exc: BaseException) -> bool:
    """Whether py4j's error `exc` came of a Ctrl-C: py4j closes a call that KeyboardInterrupt cut short, and that
    clean-up may raise an error of its own ("Gateway must be connected to send cancel cmd."), which hides the
    interrupt (it is the error's context)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


class InterruptedCallRecords(logging.Filter):
    """py4j logs a call that Ctrl-C cut short ("KeyboardInterrupt while sending command.", on the root logger) and
    the failures of closing its connection as errors with their tracebacks; the run says itself that it was
    interrupted. Such records (a KeyboardInterrupt in their exception's chain) go to debug level (`logpipe -v`
    shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # and py4j's notice, with its traceback, that it sends a call again on a new connection (the one a Ctrl-C
        # broke): at info level on the root logger, before a retry; a retry that fails is logged as an error
        retried = (record.name == "root" and record.levelno < logging.WARNING
                   and record.getMessage().startswith("Exception while sending command"))
        if retried or (exc is not None and _interrupted(exc)):
            log.debug("py4j: %s (a call to Spark's JVM cut short by Ctrl-C)", record.getMessage(),
                      exc_info=record.exc_info)
            return False
        return True


@contextmanager
def _short_py4j_records() -> Iterator[None]:
    """While the run's Spark session lives (until Spark has stopped): py4j's record of a failed micro-batch callback
    in one line (ShortCallbackErrors) and none of a call Ctrl-C cut short (InterruptedCallRecords)."""
    loggers = [logging.getLogger(name) for name in ("", "py4j.clientserver", "py4j.java_gateway")]
    short, interrupted = ShortCallbackErrors(), InterruptedCallRecords()
    loggers[1].addFilter(short)
    for logger in loggers:
        logger.addFilter(interrupted)
    try:
        yield
    finally:
        loggers[1].removeFilter(short)
        for logger in loggers:
            logger.removeFilter(interrupted)


def _jvm_gone(job: StreamJob, exc: BaseException) -> str:
    """The error of a run whose Spark JVM stopped answering (py4j's own error, not one Java raised)."""
    return (f"Spark's JVM stopped answering ({type(exc).__name__}: {failure_summary(str(exc)) or 'no detail'}): "
            "was it killed, or out of memory (see `dmesg` for the OOM killer)? The micro-batches committed so far "
            f"stand; run the same command again to go on from there{_spark_log_note(job)}")


def _stop_spark(spark: Any) -> None:
    """spark.stop(), which raises when the JVM is gone already: that must not hide the run's own outcome (its
    error, or the StopRequested of a signal) behind a py4j traceback. A query still running (a second Ctrl-C
    stops at once) is stopped first: stopped with Spark under it, its thread printed Java stack traces as the
    process ended."""
    from py4j.protocol import Py4JError

    try:
        queries = spark.streams.active
    except Py4JError:
        queries = []
    for query in queries:
        try:
            with _quiet_interrupted_callbacks():
                query.stop()
        except Py4JError as exc:  # Spark's stop below ends it anyway
            log.debug("stopping query %s: %s", getattr(query, "name", "?"), type(exc).__name__)
    try:
        spark.stop()
    except Py4JError as exc:
        log.warning("stopping Spark: its JVM no longer answers (%s)", type(exc).__name__)


def _follow_until_idle(job: StreamJob, s: Settings, stop: StopSignal, until_idle_s: float,
                       quiet: TopicQuiet) -> None:
    """Process records as they arrive until, after the first ones, none came for `until_idle_s` seconds (`quiet`:
    the input topic's end offsets, polled); then stop the query between micro-batches (the drain takes over). A
    signal meanwhile raises StopRequested."""
    follow = job.ingest_query(available_now=False)
    log.info("following topic %s: finishing once records came and then none for %.0fs", s.topic, until_idle_s)
    idle = _wait_until_idle(follow, job, until_idle_s, stop.event, processed_before=job.has_history(), topic=quiet)
    if not idle:
        _stop_before_the_end(follow, job, s, stop, may_end=False)
    _stop_or_raise(follow, job, s, "ended by itself while stopping")
    log.info("no new records for %.0fs: draining what is left and writing the still-open windows", until_idle_s)
    job.recover()  # a batch the stop interrupted after all: its half-written files go, it is redone next


def _drain_and_flush(job: StreamJob, s: Settings, stop: StopSignal, t0: float,
                     before: dict[str, Any]) -> dict[str, Any]:
    """Process everything the topic holds now, then write the windows still open: the run's metrics."""
    drain = job.ingest_query(available_now=True)
    if not _await_end(drain, stop.event, job):  # returns if the drain was done anyway:
        _stop_before_the_end(drain, job, s, stop, may_end=True, read_ends=lambda: _topic_ends_now(s))
    # a signal from here on lets the still-open windows be written: the run then ends as if none came
    t_ingest = time.monotonic() - t0
    flushed = job.flush_open_windows()
    if job.alerts_unsent is not None:  # a send failed during the run: a last try before the run ends
        job.send_unsent_alerts()
    extra = {"ingest_s": round(t_ingest, 2), "total_s": round(time.monotonic() - t0, 2), "flushed_window_rows": flushed}
    if job.alerts_unsent is not None:
        extra["alerts_unsent"] = job.alerts_unsent
    metrics = job.write_run_metrics(extra, before)
    log.info("done in %.1fs: %s", time.monotonic() - t0, run_summary(metrics))
    if job.alerts_unsent is not None:
        raise RuntimeError(f"the results on {job.root} are complete, but alerts of committed batches could not be "
                           f"sent to the Kafka topic {s.alerts_topic}: {job.alerts_unsent}. They are on HDFS "
                           f"({s.hdfs_uri('alerts')}); run the job again once the topic takes them (every start "
                           "sends the alerts not sent yet)")
    return metrics


def _run_until_stopped(job: StreamJob, s: Settings, stop: StopSignal, t0: float,
                       before: dict[str, Any]) -> dict[str, Any]:
    """Process records as they arrive until a signal, then stop between micro-batches: the run's metrics. The
    windows still open stay open (the next run closes them)."""
    query = job.ingest_query(False)
    log.info("streaming until stopped (Ctrl-C, SIGTERM)")
    while not stop.event.wait(2):
        if not query.isActive:
            _raise_if_failed(query, job)
            raise RuntimeError(f"query {query.name} stopped")
        job.send_unsent_alerts(only_if_due=True)  # after a failed send, on a topic where no batch comes to try
    log.info("stopping: letting the running micro-batch finish (up to %.0fs)", s.stop_grace_s)
    _stop_or_raise(query, job, s, "failed: it ended by itself while stopping")
    # a callback the stop left running still renames its files and writes its marker: the metrics count its batch
    if not job.wait_for_batch(timeout=CALLBACK_WAIT_S):
        log.warning("a micro-batch callback is still running after %.0fs: the run's metrics may leave its batch out "
                    "(verify and the notebook read the commit records, which count it once it commits)",
                    CALLBACK_WAIT_S)
    else:  # a stop that cancelled the query's jobs just after a batch's commit marker also cancelled the send of
        # its alerts (a Spark job of the same group), which only the next start would then make
        job.send_unsent_alerts()
    extra: dict[str, Any] = {"total_s": round(time.monotonic() - t0, 2)}
    if job.alerts_unsent is not None:
        extra["alerts_unsent"] = job.alerts_unsent
    metrics = job.write_run_metrics(extra, before)
    log.info("stopped after %.1fs: %s", time.monotonic() - t0, run_summary(metrics))
    return metrics


def _stop_or_raise(q: StreamingQuery, job: StreamJob, s: Settings, ended_text: str) -> None:
    """Stop `q` between micro-batches (up to the stop grace time); if it had ended by itself meanwhile (its last
    batch failed), raise its failure, or `streaming query <name> <ended_text>`."""
    with _quiet_interrupted_callbacks():
        ended = _stop_between_batches(q, s.stop_grace_s)
    if ended:
        _raise_if_failed(q, job)
        raise RuntimeError(f"streaming query {q.name} {ended_text}")


def run_summary(metrics: dict[str, Any]) -> str:
    """The end of a run in one line: its lines (parsed, quarantined, late, duplicates dropped) and, when earlier
    runs committed batches on the same results root, the root's totals beside them (the metrics are the root's)."""
    def counts(m: dict[str, Any]) -> str:
        return (f"{m['lines']:,} lines = {m['parsed']:,} parsed + {m['quarantined']:,} quarantined; late "
                f"{m['late']:,}, duplicates dropped {m['duplicates_dropped']:,}")

    run = metrics.get("this_run")
    if run is None or run["batches"] == metrics["batches"]:  # no earlier run's batches: the root's are this run's
        return counts(metrics)
    return f"this run {counts(run)} (the results root, with earlier runs: {counts(metrics)})"


def _stop_before_the_end(q: StreamingQuery, job: StreamJob, s: Settings, stop: StopSignal, *, may_end: bool,
                         read_ends: Callable[[], dict[int, int]] | None = None) -> None:
    """A signal came before a run-to-the-end query was done: stop it between micro-batches, then raise
    StopRequested, or the query's own failure if its last batch failed meanwhile. `may_end`: the query is the
    drain, which ends by itself after its last batch; if it did so while we waited, or the batch it was stopped
    after had read the topic up to its present ends (`read_ends`: {partition: end offset}; the signal came during
    the drain's last batch), this returns: the run goes on to write the still-open windows, as it does for a
    signal after the drain. A continuous query that ended by itself is a failure."""
    log.info("stopping: letting the running micro-batch finish (up to %.0fs)", s.stop_grace_s)
    with _quiet_interrupted_callbacks():
        ended = _stop_between_batches(q, s.stop_grace_s)
    if ended:
        _raise_if_failed(q, job)
        if may_end:
            log.info("the topic was drained meanwhile: finishing the run")
            return
        raise RuntimeError(f"streaming query {q.name} ended by itself while stopping")
    if may_end and read_ends is not None and _read_to_the_ends(q, s.topic, read_ends):
        log.info("the micro-batch the stop waited for was the drain's last (it read the topic to its end): "
                 "finishing the run")
        return
    assert stop.signum is not None
    try:
        lines: int | None = job.accounting()["lines"]
    except Exception as exc:  # noqa: BLE001 (the stop is what matters; the count is a courtesy)
        log.warning("could not count the committed lines: %s", str(exc).splitlines()[0] if str(exc) else exc)
        lines = None
    raise StopRequested(stop.signum, lines)


def _topic_ends_now(s: Settings, timeout_s: float = 10.0) -> dict[int, int]:
    """The input topic's end offsets now ({partition: end offset}), read with a consumer of its own in a thread of
    its own: a broker that does not answer holds up a stop `timeout_s` at most (TimeoutError; the consumer's
    connect and metadata waits have no such limit), and the thread closes the consumer when its read ends."""
    from logpipe.topics import TopicEnds

    got: dict[str, Any] = {}

    def read() -> None:
        ends = TopicEnds(s, s.topic)
        try:
            got["ends"] = ends.read()
        except Exception as exc:  # noqa: BLE001 (handed to the caller)
            got["error"] = exc
        finally:
            ends.close()

    reader = threading.Thread(target=read, name="logpipe-drain-ends", daemon=True)
    reader.start()
    reader.join(timeout_s)
    if "ends" in got:
        return got["ends"]
    raise got.get("error") or TimeoutError(f"no answer from Kafka at {s.kafka_address} in {timeout_s:.0f}s")


def _read_to_the_ends(q: StreamingQuery, topic: str, read_ends: Callable[[], dict[int, int]]) -> bool:
    """Whether `q`'s last reported (so committed) micro-batch read `topic` up to the end offsets `read_ends`
    gives now; False when either is unknown (the ends could not be read: the run then stops as asked)."""
    done = processed_ends(q, topic)
    if done is None:
        return False
    try:
        return done == read_ends()
    except Exception as exc:  # noqa: BLE001 (a stop is never refused for want of the ends)
        log.warning("could not read the end offsets of %s to see whether the drain was done: %s", topic, exc)
        return False


def check_until_idle(s: Settings, until_idle_s: float | None) -> None:
    """Raise ValueError unless until_idle_s (if given) is longer than the trigger interval: between two triggers
    the job does not look for new records, so a shorter idle time could end it while records wait."""
    from logpipe.windows import interval_seconds

    if until_idle_s is not None and not math.isfinite(until_idle_s):  # nan compares false: it never ended
        raise ValueError(f"--until-idle must be a number of seconds, not {until_idle_s:g}")
    if until_idle_s is not None and until_idle_s <= interval_seconds(s.trigger_interval):
        raise ValueError(f"--until-idle {until_idle_s:g} must be longer than the trigger interval "
                         f"({s.trigger_interval}): between two triggers the job does not look for new records")


class TopicQuiet:
    """When the input topic's end offsets last moved, as read by a daemon thread every `every_s` seconds
    (`read_ends`: {partition: end offset}; the thread is the only caller, so a slow or hung read never holds up
    the job's wait for idleness, its stop or its failure). `moved_at` is when a read first saw the ends as they
    are (within a read of the last record's arrival), or the first read; `ends` is None while they are unknown
    (not read yet, or the last read failed). `read_once` is one read, for a caller without the thread;
    `on_exit` is called by the thread as it ends (it closes the reader: only the thread uses it)."""

    def __init__(self, topic: str, read_ends: Callable[[], dict[int, int]], every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, on_exit: Callable[[], None] | None = None) -> None:
        self.topic, self._read, self.every_s, self._clock, self._on_exit = topic, read_ends, every_s, clock, on_exit
        self.ends: dict[int, int] | None = None
        self.moved_at: float | None = None
        self._started = self._done = 0  # reads begun, reads finished
        self._stalled = 0  # the read read_again last gave up waiting for: until it ends, read_again does not wait
        self._failing = False  # the last read failed (its first failure is logged as a warning)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> None:
        with self._changed:
            self._started += 1
        try:
            ends: dict[int, int] | None = self._read()
        except Exception as exc:  # noqa: BLE001 (unknown ends only make the idle wait the job's own, as before)
            (log.debug if self._failing else log.warning)(
                "could not read the end offsets of %s (the lag in the progress lines is then Spark's, as of each "
                "micro-batch's start, and --until-idle ends after its own idle time, not sooner): %s",
                self.topic, exc)
            ends = None
        self._failing = ends is None
        t = self._clock()  # after the read: a record that came during it is not dated before it
        with self._changed:
            if ends is None:
                self.ends, self.moved_at = None, None
            elif ends != self.ends:
                self.ends, self.moved_at = ends, t
            self._done += 1
            self._changed.notify_all()

    def start(self) -> "TopicQuiet":
        def run() -> None:
            try:
                while True:
                    self.read_once()
                    if self._stop.wait(self.every_s):
                        return
            finally:
                if self._on_exit is not None:
                    try:
                        self._on_exit()
                    except Exception as exc:  # noqa: BLE001 (a failed close of a reader nobody uses any more)
                        log.debug("closing the end-offset reader of %s: %s", self.topic, exc)

        self._thread = threading.Thread(target=run, name=f"logpipe-topic-ends-{self.topic}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; False if a read still holds it after `timeout` (the thread then ends, and calls
        `on_exit`, once that read returns, or with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def read_again(self, timeout: float) -> bool:
        """Wait until a read that begins after this call has finished (the thread's next one); False after
        `timeout`, and at once while the read it last gave up on is still running (a hung broker does not hold
        up every call)."""
        with self._changed:
            if self._done < self._stalled:
                return False
            target = self._started + 1
            if self._changed.wait_for(lambda: self._done >= target, timeout):
                return True
            self._stalled = self._started
            return False

    def quiet_since(self, q: StreamingQuery) -> float | None:
        """Since when no record came that `q` has not processed: `moved_at` if `q`'s last micro-batch read up to
        the topic's present ends, else None."""
        with self._changed:
            ends, moved_at = self.ends, self.moved_at
        if ends is None or moved_at is None:
            return None
        return moved_at if processed_ends(q, self.topic) == ends else None


def kafka_offsets(value: Any) -> dict[str, dict[int, int]] | None:
    """A Kafka source's offsets in a query progress ({topic: {partition: offset}}, as JSON text or already
    parsed) as {topic: {partition: offset}}; None if `value` is not such offsets."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
        return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in parsed.items()}
    except (TypeError, ValueError, AttributeError):
        return None


def processed_ends(q: StreamingQuery, topic: str) -> dict[int, int] | None:
    """The offsets up to which `q`'s last reported micro-batch read `topic` ({partition: offset}), or None."""
    try:
        progress = q.lastProgress
        ends = kafka_offsets(progress["sources"][0]["endOffset"]) if progress is not None else None
    except (KeyError, IndexError, TypeError):
        return None
    return ends.get(topic) if ends is not None else None


def _wait_until_idle(q: StreamingQuery, job: StreamJob, idle_s: float, stop: threading.Event | None = None, *,
                     processed_before: bool = False, topic: TopicQuiet | None = None) -> bool:
    """Return True once `q` has processed records (or earlier runs did: `processed_before`, so a run restarted
    after its input was all processed ends too) and then, for idle_s seconds, found no new ones and finished no
    batch; False as soon as `stop` is set. Raises if the query fails meanwhile. (While idle, the query keeps asking
    Kafka for new offsets, so `isTriggerActive` flickers; `isDataAvailable` stays true during a batch with records
    and false between.) With `topic` (the input's end offsets, polled), the idle time counts from the last
    record's arrival once `q` has read up to it: after a backlog, the job does not wait idle_s more for records that
    stopped coming long ago."""
    idle_since: float | None = None
    rows_seen = 0
    while True:
        if stop is not None and stop.is_set():
            return False
        if not q.isActive:
            _raise_if_failed(q, job)
            raise RuntimeError(f"streaming query {q.name} stopped before the input went idle")
        rows, now = job.stats.rows.get(q.name, 0), time.monotonic()
        # after a restart with nothing new, the idle time counts from the query's first look at the topic (not
        # while it is still initializing)
        looked = processed_before and (q.lastProgress is not None
                                       or "Waiting for data" in str(q.status.get("message", "")))
        if q.status.get("isDataAvailable") or not (rows or looked) or rows != rows_seen:
            idle_since, rows_seen = None, rows
        else:
            if idle_since is None:
                idle_since = now
            if now - idle_since >= idle_s:
                return True
            quiet = topic.quiet_since(q) if topic is not None else None
            if quiet is not None and now - quiet >= idle_s:
                # the ends as they are now, not as of the last read (a record may have come since)
                if topic.read_again(timeout=2.0):  # none in time (a hung broker): no shortcut, this time
                    quiet = topic.quiet_since(q)
                    if quiet is not None and now - quiet >= idle_s:
                        return True
        time.sleep(0.1)


def _await_end(q: StreamingQuery, stop: threading.Event | None = None, job: StreamJob | None = None) -> bool:
    """Wait for a run-to-the-end query: True once it ended (its failure raised), False as soon as `stop` is set
    (the query still runs)."""
    from pyspark.errors import StreamingQueryException

    try:
        while not q.awaitTermination(1):
            if stop is not None and stop.is_set():
                return False
    except StreamingQueryException:
        pass  # raised below, with the cause a user can act on
    _raise_if_failed(q, job)
    return True


class ShortCallbackErrors(logging.Filter):
    """py4j logs the exception a micro-batch callback raised with its whole traceback, as an error, and Spark's
    error then carries that traceback too: a failed batch filled the terminal. The run reports the exception
    itself (its one-line error), so the py4j record is cut to one line; the traceback is logged at debug level
    (`logpipe -v stream` shows it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and "Python Proxy" in record.getMessage():
            exc = record.exc_info[1]
            log.debug("the micro-batch callback's traceback", exc_info=record.exc_info)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {first} (`logpipe -v` shows the traceback)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


@contextmanager
def _quiet_interrupted_callbacks() -> Iterator[logging.Filter]:
    """While a deliberate stop runs: a stop that lands just as a new micro-batch starts interrupts its Python
    callback, and py4j then logs the InterruptedException as an error with a traceback. That batch was not
    committed and is redone on restart, so those records are noise during the stop: they are logged as one info
    line instead. Only within the `with` block: outside a stop, such a record may be the real failure."""
    class DropInterrupted(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            text = record.getMessage() + (logging.Formatter().formatException(record.exc_info)
                                          if record.exc_info else "")
            if "InterruptedException" in text or "Python Proxy" in text:
                log.info("a micro-batch interrupted by the stop will be redone on restart")
                return False
            return True

    drop = DropInterrupted()
    py4j = logging.getLogger("py4j.clientserver")
    py4j.addFilter(drop)
    try:
        yield drop
    finally:
        py4j.removeFilter(drop)


def _stop_between_batches(q: StreamingQuery, grace_s: float) -> bool:
    """Stop a query once its running micro-batch is done (waiting up to grace_s), so a stop interrupts no write
    in the middle; a batch that is interrupted anyway is redone on restart (its commit is idempotent). Returns
    True if the query had ended by itself (failed) before the stop."""
    def last_batch() -> int:
        return int((q.lastProgress or {}).get("batchId", -1))

    running, deadline = last_batch() + 1, time.monotonic() + grace_s
    while q.isActive and q.status.get("isTriggerActive") and last_batch() < running and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = not q.isActive
    q.stop()
    return ended


def _raise_if_failed(q: StreamingQuery, job: StreamJob | None = None) -> None:
    """Raise if query `q` failed, with the cause a user can act on: the exception a micro-batch callback raised
    (`job.batch_error`; a lost lease is raised as the RootBusy it is), else the telling line of Spark's error,
    and a hint of what to check next."""
    from logpipe.streaming.lease import RootBusy

    exc = q.exception()
    if exc is None:
        return
    cause = getattr(job, "batch_error", None)
    if isinstance(cause, RootBusy):
        raise cause
    text = str(exc) if cause is None else f"{cause}\n{exc}"
    summary = failure_summary(str(cause)) if cause is not None else failure_summary(text)
    raise RuntimeError(f"streaming query {q.name} failed: {summary}{what_to_check(text, job)}{_spark_log_note(job)}")


def what_to_check(text: str, job: StreamJob | None) -> str:
    """What to check next for the run's error `text`: first whether the native stack's services it uses are
    still running (a `stack down` during the run: the Kafka client's error then reads as a broker that hangs),
    else the error's own hint (failure_hint)."""
    from logpipe.stack.services import native_service_down

    settings = getattr(job, "s", None)
    try:
        down = [] if settings is None else [why for name in ("kafka", "namenode")
                                            if (why := native_service_down(settings, name))]
    except OSError:  # the run folder unreadable: the error's own hint
        down = []
    if down:
        return f" -- {'; '.join(down)}; the job resumes from its last committed micro-batch when started again"
    return failure_hint(text)


def _spark_log_note(job: StreamJob | None) -> str:
    """Where Spark's errors are whole (stderr has one line of each)."""
    from logpipe.spark import spark_log_file

    settings = getattr(job, "s", None)
    return f" (Spark's errors in full: {spark_log_file(settings)})" if settings is not None else ""


def failure_hint(text: str, hints: dict[str, str] | None = None) -> str:
    """What to check next for an error whose text is `text` (`hints`, by default FAILURE_HINTS), or ''."""
    return next((h for k, h in (FAILURE_HINTS if hints is None else hints).items() if k in text), "")


# `Caused by: a.b.CException(x.YException): msg`, `: a.b.CError: msg`, `RuntimeError: msg`
_CAUSE_LINE = re.compile(r"^(?:Caused by: |: )?(?:[\w$]+\.)*[\w$]*(?:Exception|Error)(?:\([\w.$]*\))?(?::\s|$)")


def failure_summary(text: str) -> str:
    """The line of an error's text that names its cause: the innermost `Caused by:` or the last `XError: ...` line
    (a Python traceback's last line, a Java exception's message), else the first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if _CAUSE_LINE.match(line) and not line.startswith("Traceback")]
    if not causes:
        return lines[0] if lines else text
    inner = [line for line in causes if line.startswith("Caused by: ")]
    return (inner or causes)[-1]


_KAFKA_NO_ANSWER = (" -- the Kafka broker did not answer in time (hung, overloaded or paused): check `logpipe stack "
                    "status` and the broker's log; start the job again once it answers (it resumes from its last "
                    "committed micro-batch)")
_NAMENODE_LOST = (" -- the connection to HDFS's NameNode broke (it stopped or restarted): check `logpipe stack "
                  "status` and its log; the job resumes from its checkpoints when started again")
FAILURE_HINTS = {  # what to check next, by a telling part of the error (the first that matches)
    "There are 0 datanode(s) running": " -- HDFS has no DataNode to write to: check `logpipe stack status` and the "
                                       "DataNode log; once it is back, start the job again (it resumes from its "
                                       "checkpoints)",
    "minReplication": " -- the DataNode took no block: it was away or restarting during the write, its disk is "
                      "full, or this machine cannot reach its data port (see `logpipe stack status` and its log); "
                      "start the job again once it is up (it resumes from its checkpoints)",
    "KAFKA_DATA_LOSS": " -- records this job had not read yet are gone from the topic (its retention deleted them, "
                       "or the topic was emptied): the results on this root cannot be completed exactly. Run the job "
                       "on a new LOGPIPE_HDFS_ROOT (it reads what the topic still holds), and produce the log again "
                       "into a new LOGPIPE_TOPIC if all of it is needed",
    # a broker that stopped answering (hung, paused) for longer than Spark's Kafka reads wait
    # (spark.network.timeout, 120 s); the alerts' send has hints of its own (job.ALERT_SEND_HINTS)
    "Cannot fetch record for offset": _KAFKA_NO_ANSWER,
    "org.apache.kafka.common.errors.TimeoutException": _KAFKA_NO_ANSWER,
    # Hadoop's RPC client (the NameNode's calls) ends each failure's text with a link named by its kind ("Call From h
    # to nn:8020 failed on connection exception: ...; For more details see:  http://wiki.apache.org/hadoop/
    # ConnectionRefused"); Spark's Kafka reads and the alerts' send have texts of their own
    "wiki.apache.org/hadoop/SocketTimeout": " -- HDFS's NameNode did not answer in time (hung, overloaded or "
                                            "paused): check `logpipe stack status` and its log; start the job again "
                                            "once it answers (it resumes from its checkpoints)",
    "wiki.apache.org/hadoop/ConnectionRefused": " -- HDFS's NameNode is not reachable (LOGPIPE_HDFS_URL): check "
                                                "`logpipe stack status` and its log; the job resumes from its "
                                                "checkpoints when started again",
    "wiki.apache.org/hadoop/EOFException": _NAMENODE_LOST,
    "wiki.apache.org/hadoop/SocketException": _NAMENODE_LOST,
    "Connection refused": " -- a service is not reachable: check `logpipe stack status`; the job resumes from its"
                          " checkpoints when started again",
    "AccessControlException": " -- the HDFS user (LOGPIPE_HDFS_USER, else your login name) may not write there: "
                              "choose another LOGPIPE_HDFS_ROOT, or give that user the folder",
    # DSQuotaExceededException (space) and NSQuotaExceededException (names: files and folders)
    "QuotaExceededException": " -- a quota on a folder of the results root is used up (the error names it; "
                              "WebHDFS's op=GETQUOTAUSAGE shows its quotas): raise or clear it, or choose another "
                              "LOGPIPE_HDFS_ROOT; the job resumes from its checkpoints",
    "SafeModeException": " -- the NameNode is in safe mode (e.g. its disk is nearly full): see its log "
                         "(`logpipe stack status` shows where)",
}
