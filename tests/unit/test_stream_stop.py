"""Stopping and finishing the stream: a stop quiets py4j's interrupted-callback traceback; --until-idle's check."""

from __future__ import annotations

import json
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from logpipe.streaming import run

pytestmark = pytest.mark.unit


def test_interrupted_callback_traceback_is_quieted_only_once_stopping(caplog: pytest.LogCaptureFixture) -> None:
    py4j = logging.getLogger("py4j.clientserver")
    caplog.set_level(logging.INFO)
    try:
        raise RuntimeError("An error occurred while calling o1.collectToPython.\n: java.lang.InterruptedException")
    except RuntimeError:
        py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # before a stop: shown as it is
    caplog.clear()
    with run._quiet_interrupted_callbacks():
        try:
            raise RuntimeError(": java.lang.InterruptedException")
        except RuntimeError:
            py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
        py4j.error("some other py4j failure")
    assert [(r.name, r.levelname) for r in caplog.records] == [
        ("logpipe.stream", "INFO"), ("py4j.clientserver", "ERROR")]
    assert "redone on restart" in caplog.records[0].getMessage()
    caplog.clear()
    try:  # after the stop: the filter is gone, such a record may be the real failure again
        raise RuntimeError(": java.lang.InterruptedException")
    except RuntimeError:
        py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
    assert [(r.name, r.levelname) for r in caplog.records] == [("py4j.clientserver", "ERROR")]
    assert not py4j.filters


def test_a_callback_error_is_one_line_and_its_traceback_is_kept_for_verbose_runs(caplog) -> None:
    """py4j's record of a failed micro-batch callback is cut to one line naming the exception; the traceback is
    logged at debug level (`logpipe -v`); other py4j records pass as they are."""
    py4j = logging.getLogger("py4j.clientserver")
    caplog.set_level(logging.DEBUG)
    short = run.ShortCallbackErrors()
    py4j.addFilter(short)
    try:
        try:
            raise KeyError("max_ts")
        except KeyError:
            py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
        py4j.error("some other py4j failure")
    finally:
        py4j.removeFilter(short)
    records = [(r.name, r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records[0][:2] == ("logpipe.stream", "DEBUG") and records[0][3]  # the traceback, for -v
    assert records[1][:2] == ("py4j.clientserver", "ERROR") and not records[1][3]
    assert "\n" not in records[1][2] and "KeyError: 'max_ts'" in records[1][2] and "logpipe -v" in records[1][2]
    assert records[2] == ("py4j.clientserver", "ERROR", "some other py4j failure", False)
    assert len(records) == 3


class _Query:
    """The few StreamingQuery members the stop logic reads; the running batch fails after `fails_after` polls."""

    name = "ingest"

    def __init__(self, fails_after: int | None) -> None:
        self.polls, self.fails_after, self.stopped = 0, fails_after, False

    @property
    def isActive(self) -> bool:  # noqa: N802 (PySpark's name)
        self.polls += 1
        return not self.stopped and (self.fails_after is None or self.polls <= self.fails_after)

    status = {"isTriggerActive": True}
    lastProgress = {"batchId": 3}

    def stop(self) -> None:
        self.stopped = True

    def exception(self) -> object | None:
        return "org.apache.spark.SparkException: write failed\n\tat ..." if self.fails_after is not None else None


def test_a_batch_that_fails_during_the_stop_is_reported() -> None:
    """Ctrl-C waits for the running batch; if that batch fails meanwhile, the stop reports it (exit non-zero),
    it does not pass for a clean stop."""
    failing = _Query(fails_after=3)
    assert run._stop_between_batches(failing, grace_s=5) is True and failing.stopped
    with pytest.raises(RuntimeError, match="streaming query ingest failed: .*write failed"):
        run._raise_if_failed(failing)
    running = _Query(fails_after=None)  # still busy when the grace time is over: stopped, not a failure
    assert run._stop_between_batches(running, grace_s=0.3) is False and running.stopped


def test_until_idle_must_be_longer_than_the_trigger_interval():
    from logpipe.config import load_settings
    from logpipe.streaming.run import check_until_idle

    s = load_settings().with_overrides(trigger_interval="10 seconds")
    check_until_idle(s, None)
    check_until_idle(s, 10.5)
    with pytest.raises(ValueError, match="longer than the trigger interval"):
        check_until_idle(s, 10)
    for endless in ("nan", "inf"):  # nan compared false with everything: the run never went idle
        with pytest.raises(ValueError, match=f"--until-idle must be a number of seconds, not {endless}"):
            check_until_idle(s, float(endless))


def test_first_signal_asks_for_a_stop_and_a_second_acts_as_before() -> None:
    """SIGTERM sets the stop event (the job stops between micro-batches); the handler that was there before is back
    at once, so a second signal stops at once; restore() puts it back if no signal came."""
    import os
    import signal

    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        stop = run.StopSignal()
        assert not stop.event.is_set() and stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(5) and stop.signum == signal.SIGTERM and seen == []
        os.kill(os.getpid(), signal.SIGTERM)  # the earlier handler again
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]
        again = run.StopSignal()
        again.restore()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM] * 2 and not again.event.is_set()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_stop_requested_says_what_stands_and_exits_with_the_signal_code() -> None:
    import signal

    exc = run.StopRequested(signal.SIGTERM, 1_234_567)
    assert exc.exit_code == 143 and run.StopRequested(signal.SIGINT, 0).exit_code == 130
    assert "SIGTERM" in str(exc) and "1,234,567 lines" in str(exc) and "run the same command again" in str(exc)


class _Draining:
    """A run-to-the-end query: awaitTermination(timeout) says whether it ended; it ends after `polls` waits."""

    def __init__(self, polls: int) -> None:
        self.left = polls

    def awaitTermination(self, timeout: float) -> bool:  # noqa: N802 (PySpark's name)
        self.left -= 1
        return self.left <= 0

    def exception(self) -> None:
        return None


def test_waiting_for_the_end_returns_early_on_a_stop() -> None:
    stop = threading.Event()
    assert run._await_end(_Draining(3), stop) is True
    stop.set()
    query = _Draining(1_000)
    assert run._await_end(query, stop) is False and query.left == 999  # one wait, then the stop is seen


def test_waiting_for_idle_returns_early_on_a_stop() -> None:
    from types import SimpleNamespace

    stop = threading.Event()
    stop.set()
    job = SimpleNamespace(stats=SimpleNamespace(rows={"ingest": 5}))
    query = SimpleNamespace(isActive=True, name="ingest", status={"isDataAvailable": True})
    assert run._wait_until_idle(query, job, 60, stop) is False
    idle = SimpleNamespace(isActive=True, name="ingest", status={"isDataAvailable": False})
    assert run._wait_until_idle(idle, job, 0.3, threading.Event()) is True  # records came, then none for 0.3 s


def test_waiting_for_idle_after_a_restart_that_finds_nothing_new() -> None:
    """A run restarted once its input was all processed by an earlier run reads no record: it still ends after
    the idle time (it waited forever, so the still-open windows were never written). A first run without records
    waits for them."""
    from types import SimpleNamespace

    job = SimpleNamespace(stats=SimpleNamespace(rows={}))
    idle = SimpleNamespace(isActive=True, name="ingest", lastProgress=None,
                           status={"isDataAvailable": False, "message": "Waiting for data to arrive"})
    t = time.monotonic()
    assert run._wait_until_idle(idle, job, 0.3, threading.Event(), processed_before=True) is True
    assert time.monotonic() - t >= 0.3
    for query, processed_before in ((idle, False),  # a first run waits for records
                                    # a restarted query that has not looked at the topic yet is not idle
                                    (SimpleNamespace(isActive=True, name="ingest", lastProgress=None,
                                                     status={"isDataAvailable": False,
                                                             "message": "Initializing sources"}), True)):
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        assert run._wait_until_idle(query, job, 0.3, stop, processed_before=processed_before) is False


class _Stopping:
    """A query being stopped after a signal: `ends_itself` says whether it ended on its own during the grace
    time (the drain after its last batch, or a failure if `error`)."""

    name = "ingest"
    status = {"isTriggerActive": True}
    lastProgress = {"batchId": 0}

    def __init__(self, ends_itself: bool, error: str | None = None) -> None:
        self.ends_itself, self.error, self.stopped = ends_itself, error, False

    @property
    def isActive(self) -> bool:  # noqa: N802 (PySpark's name)
        return not (self.ends_itself or self.stopped)

    def stop(self) -> None:
        self.stopped = True

    def exception(self) -> str | None:
        return self.error


class _Job:
    def __init__(self, lines: int | None) -> None:
        self.lines = lines

    def accounting(self) -> dict:
        if self.lines is None:
            raise RuntimeError("py4j: HDFS is gone")
        return {"lines": self.lines}


def _signalled(signum: int) -> "run.StopSignal":
    stop = run.StopSignal.__new__(run.StopSignal)  # as after a signal, without touching the process's handlers
    stop.event, stop.signum, stop._before = threading.Event(), signum, {}
    stop.event.set()
    return stop


def test_a_stop_before_the_end_says_what_is_committed_or_lets_a_finished_drain_finish() -> None:
    import signal

    from logpipe.config import load_settings

    s = load_settings().with_overrides(stop_grace_s=1)
    running = _Stopping(ends_itself=False)
    with pytest.raises(run.StopRequested) as got:
        run._stop_before_the_end(running, _Job(150_000), s, _signalled(signal.SIGTERM), may_end=True)
    assert running.stopped and got.value.exit_code == 143 and "150,000 lines" in str(got.value)
    with pytest.raises(run.StopRequested, match="could not be read") as got:  # the count is a courtesy
        run._stop_before_the_end(_Stopping(False), _Job(None), s, _signalled(signal.SIGINT), may_end=True)
    assert got.value.exit_code == 130 and got.value.lines is None
    # the drain ended by itself while we waited: the run goes on (to write the still-open windows)
    assert run._stop_before_the_end(_Stopping(True), _Job(1), s, _signalled(signal.SIGTERM), may_end=True) is None
    with pytest.raises(RuntimeError, match="ended by itself while stopping"):  # a continuous query must not end
        run._stop_before_the_end(_Stopping(True), _Job(1), s, _signalled(signal.SIGTERM), may_end=False)
    with pytest.raises(RuntimeError, match="streaming query ingest failed: .*disk full"):
        run._stop_before_the_end(_Stopping(True, "org.apache.spark.SparkException: disk full"), _Job(1), s,
                                 _signalled(signal.SIGTERM), may_end=True)


def test_a_stop_during_the_drains_last_batch_lets_the_run_finish(caplog) -> None:
    """Stopped between batches, the drain whose last batch read the topic to its present ends is done: the run
    goes on (to the flush). Not so when records came after that batch, when its ends cannot be read, or for a
    continuous query; a batch that reported no progress yet never counts as the last."""
    import signal

    from logpipe.config import load_settings

    s = load_settings().with_overrides(stop_grace_s=0.1)

    def stopped_after(ends: dict[int, int] | None) -> _Stopping:
        q = _Stopping(ends_itself=False)
        q.lastProgress = (None if ends is None else
                          {"batchId": 3, "sources": [{"endOffset": json.dumps({s.topic: {str(p): o
                                                                                       for p, o in ends.items()}})}]})
        return q

    def unreadable() -> dict[int, int]:
        raise OSError("broker gone")

    def stop(q: _Stopping, ends, *, may_end: bool = True) -> None:
        run._stop_before_the_end(q, _Job(100_000), s, _signalled(signal.SIGTERM), may_end=may_end,
                                 read_ends=ends)

    q = stopped_after({0: 50_000, 1: 50_000})
    with caplog.at_level(logging.INFO, logger="logpipe.stream"):
        assert stop(q, lambda: {0: 50_000, 1: 50_000}) is None
    assert q.stopped and "was the drain's last" in caplog.text
    for q, ends, may_end in ((stopped_after({0: 50_000, 1: 50_000}), lambda: {0: 50_000, 1: 50_001}, True),
                             (stopped_after({0: 50_000}), lambda: {0: 50_000, 1: 0}, True),
                             (stopped_after(None), lambda: {0: 50_000}, True),
                             (stopped_after({0: 50_000}), unreadable, True),
                             (stopped_after({0: 50_000}), lambda: {0: 50_000}, False)):
        with pytest.raises(run.StopRequested, match="100,000 lines"):
            stop(q, ends, may_end=may_end)
    assert "could not read the end offsets" in caplog.text


def test_stop_signal_installs_nothing_outside_the_main_thread() -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    made: list[run.StopSignal] = []
    t = threading.Thread(target=lambda: made.append(run.StopSignal()))
    t.start()
    t.join()
    assert made and signal.getsignal(signal.SIGTERM) is before and not made[0].event.is_set()
    made[0].restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_recover_waits_for_a_batch_callback_that_is_still_running(monkeypatch) -> None:
    """A query stopped after its grace time leaves its Python callback running (its HDFS renames and marker go
    on): the clean-up before the drain waits for it, so it cannot remove the files of a batch that then commits."""
    from logpipe.streaming import job as job_mod

    j = job_mod.StreamJob.__new__(job_mod.StreamJob)  # the lock and the two calls only: no Spark
    j._in_batch, j.spark, j.root, j._generation, j.lease = threading.Lock(), None, "hdfs://x/r", 0, None
    order: list[str] = []
    release = threading.Event()

    def slow_batch(_batch: object, _batch_id: int) -> None:
        order.append("batch starts")
        release.wait(10)
        order.append("batch commits")

    class StagingFs:
        def delete(self, path: str) -> None:
            order.append(f"delete {path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}")

        def ls(self, path: str) -> list[str]:  # the tables' folders (recover() looks for files outside day folders)
            return []

    class WatchedLock:
        """The job's lock, telling when the clean-up's thread reaches it."""

        def __init__(self, lock: Any) -> None:
            self.lock, self.cleanup_waits = lock, threading.Event()

        def __enter__(self) -> bool:
            if threading.current_thread().name == "clean-up":
                self.cleanup_waits.set()
            return self.lock.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.lock.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:  # acquire, release
            return getattr(self.lock, name)

    j._in_batch = watched = WatchedLock(j._in_batch)
    j._run_batch = slow_batch
    j.fs = StagingFs()
    j._publish_committed_alerts = lambda tags=None: order.append("alerts sent")
    monkeypatch.setattr(job_mod, "clean_crashed_attempts", lambda *_a: order.append("clean-up") or [])
    monkeypatch.setattr(job_mod, "fold_in_flat_rollups", lambda *_a: [])  # a root of this version's layout
    callback = threading.Thread(target=j._batch, args=(None, 7))
    callback.start()
    deadline = time.monotonic() + 10
    while order != ["batch starts"]:
        assert time.monotonic() < deadline, f"the batch callback did not start: {order}"
        time.sleep(0.01)
    failed: list[BaseException] = []

    def recover() -> None:
        try:
            j.recover()
        except BaseException as exc:  # noqa: BLE001 (shown by the assertion below)
            failed.append(exc)

    cleanup = threading.Thread(target=recover, name="clean-up")
    cleanup.start()
    assert watched.cleanup_waits.wait(10), "the clean-up never took the job's batch lock"
    time.sleep(0.3)
    assert order == ["batch starts"]  # the clean-up waits at the lock
    release.set()
    callback.join(10)
    cleanup.join(10)
    assert not failed, failed
    assert order == ["batch starts", "batch commits", "clean-up", "delete events/_staging", "alerts sent"]


def test_a_failed_batch_is_reported_by_its_own_error_not_the_python_proxy_line(local_spark, tmp_path) -> None:
    """An error raised in a micro-batch callback reaches the query as the Python proxy's traceback, whose first
    line says only 'An exception was raised by the Python Proxy': the run reports the callback's own exception
    (with the hint for its kind), on a real Spark query."""
    from pyspark.errors import StreamingQueryException

    class Job:
        batch_error: Exception | None = None

        def batch(self, df, batch_id: int) -> None:
            try:
                raise RuntimeError("the _state/open state of committed batch 3 is gone: remove that root")
            except Exception as exc:
                self.batch_error = exc
                raise

    job = Job()
    q = (local_spark.readStream.format("rate").option("rowsPerSecond", 1).load().writeStream
         .foreachBatch(job.batch).option("checkpointLocation", (tmp_path / "ck").as_uri()).start())
    with pytest.raises(StreamingQueryException):
        q.awaitTermination(60)
    assert "Python Proxy" in str(q.exception()).splitlines()[0]  # what the run reported before
    with pytest.raises(RuntimeError, match=r"^streaming query None failed: the _state/open state of committed "
                                           r"batch 3 is gone: remove that root$"):
        run._raise_if_failed(q, job)
    # without the callback's exception at hand, the telling line of Spark's text, not its first
    with pytest.raises(RuntimeError, match=r"failed: RuntimeError: the _state/open state of committed batch 3"):
        run._raise_if_failed(q)


def test_failure_summary_picks_the_cause_and_the_hint_is_found_anywhere_in_the_error() -> None:
    from logpipe.streaming.lease import RootBusy

    java = ("An error occurred while calling o412.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
            "\tat org.apache.spark.sql.X.y(X.scala:1)\nCaused by: org.apache.hadoop.ipc.RemoteException"
            "(java.io.IOException): File /r/x could only be written to 0 of the 1 minReplication nodes. There are 0 "
            "datanode(s) running and no node(s) are excluded in this operation.\n\tat z")
    assert run.failure_summary(java).startswith("Caused by: org.apache.hadoop.ipc.RemoteException")
    assert run.failure_summary("no cause named here\nsecond") == "no cause named here"

    class Failed(_Query):
        def __init__(self, text: str) -> None:
            super().__init__(fails_after=0)
            self.text = text

        def exception(self) -> object:
            return self.text

    class Job:
        batch_error: Exception | None = None

    job = Job()
    job.batch_error = Exception(java)
    proxy = "An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n..."
    with pytest.raises(RuntimeError, match="minReplication nodes.* -- HDFS has no DataNode to write to"):
        run._raise_if_failed(Failed(proxy), job)
    # a DataNode that runs but takes no block (full, or its data port unreachable) is not "no DataNode"
    full = java.replace("There are 0 datanode(s) running and no node(s)", "There are 1 datanode(s) running and 1 node(s)")
    assert "the DataNode took no block: it was away or restarting during the write, its disk is full" in (
        run.failure_hint(full))
    assert "no DataNode" not in run.failure_hint(full)
    # records deleted from the topic (retention) before the job read them: say the root cannot be completed
    lost = ("Caused by: org.apache.spark.sql.kafka010.KafkaIllegalStateException: [KAFKA_DATA_LOSS.COULD_NOT_READ_"
            "OFFSET_RANGE] Some data may have been lost because they are not available in Kafka any more;")
    assert "new LOGPIPE_HDFS_ROOT" in run.failure_hint(lost) and "retention" in run.failure_hint(lost)
    # an HDFS quota on the root (names or space) used up: say so, not nothing
    for quota in ("NSQuotaExceededException: The NameSpace quota (directories and files) of directory /r is exceeded",
                  "DSQuotaExceededException: The DiskSpace quota of /r is exceeded: quota = 1 B"):
        assert "a quota on a folder of the results root is used up" in run.failure_hint(f"Caused by: a.b.{quota}")
    # a broker that hung longer than Spark's Kafka reads wait (measured: a 170 s SIGSTOP), or the alerts' send
    hung = ("Caused by: java.util.concurrent.TimeoutException: Cannot fetch record for offset 25000 in 120000 "
            "milliseconds")
    expired = "Caused by: org.apache.kafka.common.errors.TimeoutException: Expiring 3 record(s) for alerts-0"
    for text in (hung, expired):
        assert "the Kafka broker did not answer in time" in run.failure_hint(text)
    # the NameNode stopped, killed or hung while the job ran (Hadoop's RPC texts, measured on the native stack)
    call = "java.io.IOException: Call From vm/127.0.0.1 to localhost:8020 failed on "
    for failed, hint in (
            ("connection exception: java.net.ConnectException: Connection refused; For more details see:  "
             "http://wiki.apache.org/hadoop/ConnectionRefused", "HDFS's NameNode is not reachable"),
            ("socket exception: java.net.SocketException: Connection reset; For more details see:  "
             "http://wiki.apache.org/hadoop/SocketException", "the connection to HDFS's NameNode broke"),
            ("x\n: java.io.EOFException: End of File Exception between local host is: \"vm/127.0.0.1\"; destination "
             "host is: \"localhost\":8020; : java.io.EOFException; For more details see:  "
             "http://wiki.apache.org/hadoop/EOFException", "the connection to HDFS's NameNode broke"),
            ("socket timeout exception: java.net.SocketTimeoutException: 60000 millis timeout while waiting for "
             "channel to be ready for read. ch : java.nio.channels.SocketChannel[connected local=/127.0.0.1:38010 "
             "remote=localhost/127.0.0.1:8020]; For more details see:  http://wiki.apache.org/hadoop/SocketTimeout",
             "HDFS's NameNode did not answer in time")):
        assert hint in run.failure_hint(f"{call}{failed}\n\tat x\nCaused by: java.net.Y: z"), failed
    job.batch_error = RootBusy("this run lost its lease on /r: now held by process 7 on host h")
    with pytest.raises(RootBusy, match="lost its lease"):
        run._raise_if_failed(Failed(proxy), job)


def test_no_right_to_make_the_alerts_topic_is_a_warning_not_a_crash(monkeypatch, caplog):
    """A job whose Kafka user may not create topics still runs (an admin may have made the alerts topic); the log
    says what could not be done."""
    from kafka.errors import TopicAuthorizationFailedError

    from logpipe.config import load_settings

    def refused(*_a, **_k):
        raise TopicAuthorizationFailedError("not allowed")

    monkeypatch.setattr("logpipe.topics.create_topic", refused)
    with caplog.at_level(logging.WARNING):
        run.make_alerts_topic(load_settings().with_overrides(alerts_topic="alerts-x"))
    assert any("could not make the alerts topic alerts-x" in r.getMessage() for r in caplog.records)



def test_a_new_query_does_not_inherit_the_batch_error_of_an_earlier_one() -> None:
    """`--until-idle` stops its follow query (a batch the stop cancels records its error) and starts the drain:
    a later failure of the drain must be reported by its own cause, not the follow query's cancellation."""
    from logpipe.config import Settings
    from logpipe.streaming import job as job_mod

    class Chain:  # stands for the DataStreamWriter chain: every call returns it
        def __getattr__(self, _name: str) -> "Chain":
            return self

        def __call__(self, *_a: object, **_k: object) -> "Chain":
            return self

    j = job_mod.StreamJob.__new__(job_mod.StreamJob)
    j.s, j.batch_error, j._generation = Settings(), RuntimeError("the follow query's batch, cancelled by the stop"), 1
    j._kafka_stream = Chain
    j.ingest_query(available_now=True)
    assert j.batch_error is None


def _progress(topic: str, end: int) -> dict:
    return {"sources": [{"endOffset": json.dumps({topic: {"0": end}})}]}


def _query(end: int):
    from types import SimpleNamespace

    return SimpleNamespace(isActive=True, name="ingest", status={"isDataAvailable": False},
                           lastProgress=_progress("t", end))


def _stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return stop


def test_topic_quiet_follows_the_topic_ends() -> None:
    """moved_at is when the ends were first seen as they are; a failed read makes them unknown."""
    clock = [1000.0]
    ends: dict = {"now": {0: 500}}

    def read() -> dict[int, int]:
        if ends["now"] is None:
            raise ConnectionError("broker down")
        return dict(ends["now"])

    quiet = run.TopicQuiet("t", read, clock=lambda: clock[0])
    quiet.read_once()
    assert quiet.ends == {0: 500} and quiet.moved_at == 1000.0
    clock[0] = 1100.0
    quiet.read_once()
    assert quiet.moved_at == 1000.0  # no new record: still the first sighting
    assert quiet.quiet_since(_query(500)) == 1000.0 and quiet.quiet_since(_query(400)) is None
    ends["now"] = {0: 600}
    quiet.read_once()
    assert quiet.moved_at == 1100.0 and quiet.quiet_since(_query(500)) is None
    ends["now"] = None
    quiet.read_once()
    assert quiet.ends is None and quiet.quiet_since(_query(600)) is None
    assert run.processed_ends(_query(7), "t") == {0: 7}
    assert run.processed_ends(SimpleNamespace(lastProgress=None), "t") is None
    assert run.processed_ends(SimpleNamespace(lastProgress={"sources": []}), "t") is None
    assert run.processed_ends(SimpleNamespace(lastProgress={"sources": [{"endOffset": {"t": {"0": 3}}}]}),
                              "t") == {0: 3}
    assert run.processed_ends(_query(7), "other") is None
    assert run.kafka_offsets('{"t": {"0": 5, "1": 9}}') == {"t": {0: 5, 1: 9}}
    assert run.kafka_offsets(None) is None and run.kafka_offsets("not json") is None
    assert not quiet.read_again(timeout=0.2)  # no thread: no read comes


def test_idle_time_counts_from_the_last_record_once_the_job_has_read_it() -> None:
    """With the topic's end offsets read in the background, a job that was busy with a backlog long after the
    producer's last record ends as soon as it has read that record. One that has read up to the ends but whose
    last record came less than the idle time ago, or one that has not read up to the ends, waits; the latter ends
    after the idle time from its own last batch, as without them."""
    job = SimpleNamespace(stats=SimpleNamespace(rows={"ingest": 500}))
    quiet = run.TopicQuiet("t", lambda: {0: 500}, every_s=0.05).start()
    try:
        assert quiet.read_again(timeout=5)
        quiet.moved_at = time.monotonic() - 120  # the last record came two minutes ago
        t = time.monotonic()
        assert run._wait_until_idle(_query(500), job, 30, threading.Event(), topic=quiet) is True
        assert time.monotonic() - t < 5  # not the 30 s idle time

        quiet.moved_at = time.monotonic() - 1  # it came a second ago: not idle for 30 s yet
        assert run._wait_until_idle(_query(500), job, 30, _stop_after(1.5), topic=quiet) is False

        t = time.monotonic()
        assert run._wait_until_idle(_query(400), job, 0.5, threading.Event(), topic=quiet) is True
        assert time.monotonic() - t >= 0.5  # not read up to the end: its own idle time
    finally:
        assert quiet.stop()


def test_idle_shortcut_needs_a_fresh_read_of_the_ends() -> None:
    """Before ending on the topic's quiet, the job waits for a read that begins after its decision: a record
    that came since the last read keeps it going, and so does a read that does not come (a hung broker)."""
    job = SimpleNamespace(stats=SimpleNamespace(rows={"ingest": 500}))
    reads = {"n": 0}

    def read() -> dict[int, int]:
        reads["n"] += 1
        return {0: 500} if reads["n"] == 1 else {0: 501}  # a record came after the first read

    quiet = run.TopicQuiet("t", read, every_s=3600).start()  # one read, then none for an hour
    try:
        deadline = time.monotonic() + 5
        while quiet.ends is None and time.monotonic() < deadline:
            time.sleep(0.01)
        quiet.moved_at = time.monotonic() - 120
        t = time.monotonic()
        assert run._wait_until_idle(_query(500), job, 30, _stop_after(4.0), topic=quiet) is False
        assert time.monotonic() - t >= 3.9 and reads["n"] == 1  # it waited for a read that did not come
    finally:
        quiet.stop(timeout=0.5)
    quiet = run.TopicQuiet("t", read, every_s=0.05).start()  # reads go on: the next sees offset 501
    try:
        assert quiet.read_again(timeout=5)
        quiet.moved_at = time.monotonic() - 120
        assert run._wait_until_idle(_query(500), job, 30, _stop_after(1.0), topic=quiet) is False
        assert quiet.ends == {0: 501}
    finally:
        assert quiet.stop()


def test_a_hung_read_of_the_ends_is_waited_for_once_and_its_reader_closed_when_it_ends() -> None:
    """A read that hangs (a broker that does not answer) holds up one read_again, not every later one; stopping
    does not wait for it, and the thread closes the reader (on_exit) once the read ends."""
    release, closed = threading.Event(), threading.Event()
    reads = {"n": 0}

    def read() -> dict[int, int]:
        reads["n"] += 1
        if reads["n"] == 2:
            release.wait(30)  # the second read hangs
        return {0: 500}

    quiet = run.TopicQuiet("t", read, every_s=0.05, on_exit=closed.set).start()
    try:
        deadline = time.monotonic() + 5
        while reads["n"] < 2 and time.monotonic() < deadline:  # the first read done, the second under way
            time.sleep(0.01)
        assert quiet.ends == {0: 500}
        t = time.monotonic()
        assert quiet.read_again(timeout=0.3) is False  # the hung read
        assert quiet.read_again(timeout=5) is False and time.monotonic() - t < 2  # not waited for again
        t = time.monotonic()
        assert quiet.stop(timeout=0.2) is False and time.monotonic() - t < 1  # still in the hung read
        assert not closed.is_set()
    finally:
        release.set()
    assert closed.wait(5)  # the read ended: the thread closed its reader and ended
    assert quiet.stop(timeout=5)


def test_a_failing_read_of_the_ends_is_a_warning_once_and_a_sighting_is_dated_after_its_read(caplog) -> None:
    clock = [1000.0]
    fail = {"on": True}

    def read() -> dict[int, int]:
        clock[0] += 7.0  # the read takes 7 s
        if fail["on"]:
            raise ConnectionError("broker down")
        return {0: 1}

    quiet = run.TopicQuiet("t", read, clock=lambda: clock[0])
    with caplog.at_level(logging.DEBUG, logger=run.log.name):
        quiet.read_once()
        quiet.read_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "end offsets of t" in r.message]
    assert len(warnings) == 1 and "broker down" in warnings[0].message
    fail["on"] = False
    quiet.read_once()
    assert quiet.moved_at == 1021.0  # when the read that saw the ends returned, not when it began


def test_a_callback_of_a_query_stopped_before_recover_does_not_run(monkeypatch) -> None:
    """The follow query is stopped between batches, then recover() cleans up and the drain query starts. A callback
    of the stopped query that py4j delivers only after recover() (a trigger that began as it was stopped) must not
    run beside the drain's batch of the same id: it is refused; a callback of the current query runs."""
    from logpipe.streaming import job as job_mod

    j = job_mod.StreamJob.__new__(job_mod.StreamJob)  # no Spark: the guard only
    j._in_batch, j._generation, j.batch_error, j.lease = threading.Lock(), 0, None, None
    ran: list[int] = []
    j._run_batch = lambda _batch, batch_id: ran.append(batch_id)
    j.fs, j.spark, j.root = type("Fs", (), {"delete": lambda self, p: None, "ls": lambda self, p: []})(), None, \
        "hdfs://x/r"
    j._publish_committed_alerts = lambda tags=None: None
    monkeypatch.setattr(job_mod, "clean_crashed_attempts", lambda *_a: [])
    monkeypatch.setattr(job_mod, "fold_in_flat_rollups", lambda *_a: [])
    j.recover()  # before the follow query
    follow_generation = j._generation
    j._batch(None, 3, follow_generation)
    j.recover()  # after the follow query was stopped, before the drain
    with pytest.raises(RuntimeError, match="micro-batch 4 of a query stopped before recover"):
        j._batch(None, 4, follow_generation)
    j._batch(None, 4, j._generation)  # the drain's
    assert ran == [3, 4]


def test_the_end_of_a_run_says_what_it_added_beside_the_roots_totals() -> None:
    """A run on a root earlier runs wrote to says its own lines first; the root's totals (what the metrics hold)
    follow. A first run's are the same numbers, said once."""
    def acc(batches: int, lines: int, quarantined: int, late: int, dups: int) -> dict:
        return {"batches": batches, "lines": lines, "parsed": lines - quarantined, "quarantined": quarantined,
                "late": late, "duplicates_dropped": dups, "events": lines - quarantined - late - dups}

    first = acc(4, 1_000, 10, 0, 0)
    first["this_run"] = dict(first)
    assert run.run_summary(first) == ("1,000 lines = 990 parsed + 10 quarantined; late 0, duplicates dropped 0")
    later = acc(6, 1_876, 28, 434, 3)
    later["this_run"] = {k: later[k] - first[k] for k in first["this_run"]}
    assert run.run_summary(later) == (
        "this run 876 lines = 858 parsed + 18 quarantined; late 434, duplicates dropped 3 (the results root, with "
        "earlier runs: 1,876 lines = 1,848 parsed + 28 quarantined; late 434, duplicates dropped 3)")
    del later["this_run"]  # metrics written without a start (as before this field): the root's only
    assert run.run_summary(later).startswith("1,876 lines")


def test_the_end_offsets_read_at_a_stop_wait_for_a_silent_broker_no_longer_than_their_timeout(monkeypatch) -> None:
    """kafka-python's consumer waits for a broker's metadata without a limit of its own: the read runs in a thread
    the stop does not wait for beyond its timeout (the stop then goes on as one before the end)."""
    import logpipe.topics
    from logpipe.config import load_settings

    closed = threading.Event()

    class SilentBroker:
        def __init__(self, s, topic) -> None:
            pass

        def read(self) -> dict[int, int]:
            time.sleep(3)
            return {0: 1}

        def close(self) -> None:
            closed.set()

    monkeypatch.setattr(logpipe.topics, "TopicEnds", SilentBroker)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer from Kafka at .* in 0s"):
        run._topic_ends_now(load_settings(), timeout_s=0.3)
    assert time.monotonic() - t < 2
    assert closed.wait(5)  # the thread closed its consumer once the read ended


def test_a_root_the_job_would_refuse_is_refused_before_spark_starts(tmp_path, monkeypatch) -> None:
    """precheck_root reads the root's record over WebHDFS (here a local file system in its place) and refuses, as
    the job would under its lease, a root of other settings, a broken record, or committed batches whose
    checkpoint is gone; a new root and one of the same settings pass."""
    import fsspec

    import logpipe.results
    from logpipe.config import load_settings
    from logpipe.root_record import ROOT_SETTINGS
    from logpipe.streaming.job import ResultsRootMismatch

    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    s = load_settings(hdfs_root=str(tmp_path / "root"))
    run.precheck_root(s, None)  # a new root
    record = tmp_path / "root" / "_commits" / "job.json"
    record.parent.mkdir(parents=True)
    mine = {k: getattr(s, k) for k in ROOT_SETTINGS}
    record.write_text(json.dumps(mine))
    run.precheck_root(s, None)  # the same settings, nothing committed yet
    record.write_text(json.dumps({**mine, "window": "30 seconds"}))
    with pytest.raises(ResultsRootMismatch, match="other settings .*window '30 seconds' there"):
        run.precheck_root(s, None)
    record.write_text("{")
    with pytest.raises(ResultsRootMismatch, match="is not the JSON the job writes"):
        run.precheck_root(s, None)
    record.write_text(json.dumps(mine))
    (record.parent / "ingest").mkdir()
    (record.parent / "ingest" / "b0000000000.json").write_text("{}")  # a committed batch, and no checkpoint
    with pytest.raises(ResultsRootMismatch, match="checkpoint"):
        run.precheck_root(s, None)
    (tmp_path / "root" / "_checkpoints" / "ingest" / "offsets").mkdir(parents=True)
    run.precheck_root(s, None)


def test_a_folder_of_other_files_is_not_taken_for_a_results_root(tmp_path, monkeypatch) -> None:
    """`stream --hdfs-root` of a folder holding files the job did not write (here a Parquet file in events/) ran,
    wrote its tables beside them, and verify then failed on a stray file: refused before Spark starts. A root
    holding only what the job or the demo put there before the job's record (the lease, checkpoints, the demo's
    _source.json) passes, as does one with committed batches whose record was lost (the job judges those)."""
    import fsspec

    import logpipe.results
    from logpipe.config import load_settings
    from logpipe.streaming.job import ResultsRootMismatch

    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    root = tmp_path / "root"
    s = load_settings(hdfs_root=str(root))
    (root / "_commits").mkdir(parents=True)
    (root / "_commits" / "lease.json").write_text("{}")
    (root / "_checkpoints").mkdir()
    (root / "_source.json").write_text("{}")
    (root / "_batch_reference" / "by_host").mkdir(parents=True)  # `python -m logpipe.streaming.batch` on the root
    (root / "windows" / "by_status").mkdir(parents=True)  # empty folders made first (e.g. to give them a quota)
    run.precheck_root(s, None)
    (root / "events").mkdir()
    (root / "events" / "x.parquet").write_bytes(b"PAR1")
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ResultsRootMismatch, match=r"root holds events, notes\.txt but no results of the streaming "
                                                  r"job \(no _commits/job\.json\).*another LOGPIPE_HDFS_ROOT"):
        run.precheck_root(s, None)
    (root / "_commits" / "ingest").mkdir()
    (root / "_commits" / "ingest" / "b0000000000.json").write_text("{}")
    run.precheck_root(s, None)  # committed batches: the job's own root, its record lost (the job judges it)


def test_a_root_webhdfs_will_not_let_it_read_is_one_line_with_what_to_do(tmp_path, monkeypatch) -> None:
    """The pre-check's reads refused (a folder of the root the HDFS user may not read: WebHDFS's 403, an error
    since its exists() no longer says False for it): one line naming the root, with the hint for permissions."""
    from fsspec.implementations.local import LocalFileSystem

    import logpipe.results
    from logpipe.config import load_settings

    class Refusing(LocalFileSystem):
        def exists(self, path, **kwargs):
            raise PermissionError(f"Permission denied: user=someone, access=EXECUTE, inode={path}")

    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: Refusing())
    s = load_settings(hdfs_root=str(tmp_path / "root"))
    with pytest.raises(RuntimeError, match=r"could not read the results root .*root over WebHDFS: PermissionError: "
                                           r"Permission denied.* -- the HDFS user \(LOGPIPE_HDFS_USER.*may not read it"):
        run.precheck_root(s, None)


def test_stop_or_raise_stops_a_running_query_and_raises_for_one_that_ended_by_itself() -> None:
    """The stop step of --until-idle's follow query and of a continuous run: a query still running is stopped
    between batches and the run goes on; one that had ended by itself raises its failure, or says it ended."""
    from logpipe.config import load_settings

    s = load_settings(stop_grace_s=0.2)
    running = _Stopping(False)
    assert run._stop_or_raise(running, _Job(1), s, "ended by itself while stopping") is None and running.stopped
    with pytest.raises(RuntimeError, match="streaming query ingest ended by itself while stopping"):
        run._stop_or_raise(_Stopping(True), _Job(1), s, "ended by itself while stopping")
    with pytest.raises(RuntimeError, match="streaming query ingest failed: .*disk full"):
        run._stop_or_raise(_Stopping(True, "org.apache.spark.SparkException: disk full"), _Job(1), s, "x")


def test_a_continuous_run_ends_on_a_signal_and_fails_when_its_query_stops_by_itself() -> None:
    """`logpipe stream` (no --until-*): a signal stops the query between batches and writes the run's metrics,
    once a micro-batch callback the stop left running has committed (they counted without its batch); a query
    that stopped by itself (it failed) is raised, with no metrics written."""
    import signal

    from logpipe.config import load_settings

    class Job(_Job):
        def __init__(self, query) -> None:
            super().__init__(10)
            self.query, self.metrics, self.committed = query, None, 10
            self.in_batch = threading.Lock()

        def ingest_query(self, available_now: bool):
            assert available_now is False
            return self.query

        def wait_for_batch(self, timeout: float) -> bool:
            if not self.in_batch.acquire(timeout=timeout):
                return False
            self.in_batch.release()
            return True

        def write_run_metrics(self, extra, before):
            self.metrics = {**extra, "lines": self.committed, "parsed": self.committed, "quarantined": 0, "late": 0,
                            "duplicates_dropped": 0}
            return self.metrics

        alerts_unsent = None

        def send_unsent_alerts(self, *, only_if_due: bool = False) -> bool:
            if not only_if_due:  # the stop's send, of every unsent batch (a cancelled send of the last one among them)
                self.sent_after = self.committed
            return True

    s = load_settings(stop_grace_s=0.2)
    job = Job(_Stopping(False))
    job.in_batch.acquire()  # a callback still renaming its files when the stop's grace time is over

    def callback_ends() -> None:
        time.sleep(1.0)
        job.committed += 5  # its marker: the batch's 5 lines are committed
        job.in_batch.release()

    threading.Thread(target=callback_ends).start()
    metrics = run._run_until_stopped(job, s, _signalled(signal.SIGTERM), time.monotonic(), {})
    assert job.query.stopped and metrics is job.metrics and "total_s" in metrics
    assert metrics["lines"] == 15
    assert job.sent_after == 15  # the alerts a stop may have kept from Kafka: sent once the callback ended
    stop = run.StopSignal.__new__(run.StopSignal)
    stop.event, stop.signum, stop._before = threading.Event(), None, {}
    failed = Job(_Stopping(True, "org.apache.spark.SparkException: disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        run._run_until_stopped(failed, s, stop, time.monotonic(), {})
    assert failed.metrics is None and not hasattr(failed, "sent_after")


def test_a_continuous_run_tries_unsent_alerts_again_between_batches_and_its_stop_metrics_say_what_is_unsent():
    """After a failed send of alerts, a batch tries again once ALERTS_RETRY_S passed; on a topic where no batch
    comes the alerts waited for the stop: the run's main loop now tries when due. A stop whose send fails too
    writes the cause into the run's metrics (`alerts_unsent`), as the end of an --until-done run does."""
    import signal

    from logpipe.config import load_settings

    class Job(_Job):
        alerts_unsent = "Topic alerts not present in metadata after 10000 ms."

        def __init__(self) -> None:
            super().__init__(10)
            self.query, self.tries = _Stopping(False), []

        def ingest_query(self, available_now: bool):
            return self.query

        def wait_for_batch(self, timeout: float) -> bool:
            return True

        def write_run_metrics(self, extra, before):
            return {**extra, "lines": 10, "parsed": 10, "quarantined": 0, "late": 0, "duplicates_dropped": 0}

        def send_unsent_alerts(self, *, only_if_due: bool = False) -> bool:
            self.tries.append("due" if only_if_due else "stop")
            return False

    job = Job()
    stop = run.StopSignal.__new__(run.StopSignal)
    stop.event, stop.signum, stop._before = threading.Event(), signal.SIGTERM, {}
    threading.Timer(5.0, stop.event.set).start()  # two turns of the main loop (2 s each), then the stop
    metrics = run._run_until_stopped(job, load_settings(stop_grace_s=0.2), stop, time.monotonic(), {})
    assert job.tries[-1] == "stop" and job.tries.count("due") >= 2, job.tries
    assert metrics["alerts_unsent"] == Job.alerts_unsent


class _NoEnds:
    """A TopicEnds that knows no end offsets (no broker in these tests)."""

    def __init__(self, s, topic: str) -> None: ...

    def read(self) -> dict[int, int]:
        raise ConnectionError("no broker here")

    def close(self) -> None: ...


def _fake_run_stream_parts(monkeypatch, query: Any) -> tuple[type, type, type]:
    """run_stream's services, Spark, job and lease, faked: (Spark, Job, Lease) classes that count their calls. The
    job's query is `query`; Spark's stop() raises as it does once the JVM is gone."""
    from py4j.protocol import Py4JNetworkError

    import logpipe.spark
    import logpipe.streaming.job
    import logpipe.streaming.lease
    import logpipe.topics
    from logpipe import health

    for name in ("wait_for_kafka", "wait_for_hdfs", "probe_topic"):
        monkeypatch.setattr(health, name, lambda *a, **k: None)
    monkeypatch.setattr(logpipe.topics, "topic_id", lambda s, t: "id")
    monkeypatch.setattr(logpipe.topics, "TopicEnds", _NoEnds)  # the run's poller of the input's end offsets
    monkeypatch.setattr(run, "precheck_root", lambda s, t: None)
    monkeypatch.setattr(run, "make_alerts_topic", lambda s: None)

    class Spark:
        streams = SimpleNamespace(addListener=lambda listener: None, active=[])
        sparkContext = SimpleNamespace(uiWebUrl="http://127.0.0.1:4040")
        stopped = 0

        def stop(self) -> None:
            Spark.stopped += 1
            raise Py4JNetworkError("Answer from Java side is empty")

    class Job(_Job):
        waits: list[float] = []
        callback_running = False  # a micro-batch callback still renaming files: wait_for_batch gives up

        def __init__(self, spark, s) -> None:
            super().__init__(0)
            self.s, self.fs, self.root, self.lease = s, None, "hdfs://x/logpipe", None

        def claim_root(self, topic_id) -> None: ...
        def recover(self) -> None: ...
        def accounting(self) -> dict: return {}
        def ingest_query(self, available_now: bool): return query

        def wait_for_batch(self, timeout: float) -> bool:
            Job.waits.append(timeout)
            return not Job.callback_running

    class Lease:
        released = 0
        path = "hdfs://x/logpipe/_lease"

        def __init__(self, fs, root) -> None: ...
        def acquire(self) -> None: ...
        def check(self) -> None: ...

        def release(self) -> None:
            Lease.released += 1

    monkeypatch.setattr(logpipe.spark, "build_spark", lambda *a, **k: Spark())
    monkeypatch.setattr(logpipe.streaming.job, "StreamJob", Job)
    monkeypatch.setattr(logpipe.streaming.lease, "RootLease", Lease)
    return Spark, Job, Lease


def test_a_spark_jvm_that_stops_answering_is_one_line_and_does_not_hide_a_stop(monkeypatch) -> None:
    """A JVM killed under the job (the OOM killer, a SIGKILL) makes py4j raise its own errors, not Java's: the run
    says so in one line (a RuntimeError, which `logpipe stream` prints and exits 1 with), and spark.stop(), which
    then raises too, neither shows a traceback nor replaces the run's outcome (a signal's StopRequested: 143)."""
    from py4j.protocol import Py4JNetworkError

    from logpipe.config import load_settings

    class Query:
        name = "ingest"

        @property
        def isActive(self) -> bool:
            raise Py4JNetworkError("Answer from Java side is empty")

    Spark, _, Lease = _fake_run_stream_parts(monkeypatch, Query())
    s = load_settings()
    with pytest.raises(RuntimeError, match=r"^Spark's JVM stopped answering \(Py4JNetworkError: .*killed, or out of "
                                           r"memory .*run the same command again"):
        run.run_stream(s, until_done=False)
    assert Spark.stopped == 1 and Lease.released == 1

    def stopped_by_a_signal(*args) -> None:
        raise run.StopRequested(15, 1_000)

    monkeypatch.setattr(run, "_drain_and_flush", stopped_by_a_signal)
    with pytest.raises(run.StopRequested) as stop:
        run.run_stream(s, until_done=True)
    assert stop.value.exit_code == 143 and Spark.stopped == 2


@pytest.mark.parametrize("callback_running", [False, True], ids=["no callback running", "a callback running"])
def test_a_second_ctrl_c_stops_at_once_without_waiting_for_the_running_batch(monkeypatch, caplog,
                                                                           callback_running) -> None:
    """The first Ctrl-C waits for the running micro-batch; the second (KeyboardInterrupt) must not then wait
    CALLBACK_WAIT_S more for it with the query still running: Spark is stopped at once. The lease is released
    when no micro-batch callback runs, and left to be taken over (with a warning) when one still may rename
    files into the tables: another run taking the root then would find them moving under it."""
    from logpipe.config import load_settings

    Spark, Job, Lease = _fake_run_stream_parts(monkeypatch, None)
    Job.callback_running = callback_running

    def interrupted(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_run_until_stopped", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.run_stream(load_settings(), until_done=False)
    assert Job.waits == [0] and Spark.stopped == 1
    assert "stopping now: a micro-batch cut short is redone on restart" in caplog.text
    assert Lease.released == (0 if callback_running else 1)
    assert ("is left to be taken over once this process has ended" in caplog.text) == callback_running


@pytest.mark.unit
def test_the_lag_of_a_live_tail_is_what_arrived_while_its_batch_ran() -> None:
    """A live tail's micro-batch reads everything there when it is planned, so Spark's own offsets (the newest
    when planned minus what the batch read up to) always said "lag 0" while the job ran seconds behind (a 45-minute
    soak at 2,500 lines/s: 0 in every line, 4.6-7.8 s behind in fact). The lag is now taken against the end
    offsets the run's poller read since, where it knows them."""
    assert run.records_behind({0: 100, 1: 50}, {0: 100, 1: 50}, None) == 0  # what Spark alone says
    assert run.records_behind({0: 100, 1: 50}, {0: 100, 1: 50}, {0: 7_600, 1: 50}) == 7_500
    # a backlog capped by maxOffsetsPerTrigger: Spark's planned ends say it; a poll older than the plan changes
    # nothing, nor one that has not seen a partition yet
    assert run.records_behind({0: 100}, {0: 1_000}, {0: 900}) == 900
    assert run.records_behind({0: 100, 1: 0}, {0: 100, 1: 30}, {0: 120}) == 50
    # a partition the batch did not read (added since) counts whole
    assert run.records_behind({0: 100}, {0: 100}, {0: 100, 1: 40}) == 40


@pytest.mark.unit
def test_the_progress_line_takes_the_lag_from_the_polled_end_offsets(caplog) -> None:
    """The listener's line for a batch: its rows, and the records waiting once it was done, from the poller's end
    offsets of the input topic (Spark's planned ones when the poller knows none)."""
    job = SimpleNamespace(s=SimpleNamespace(topic="logs"), record_progress=lambda name, p: None)
    polled: list[dict[int, int] | None] = [{0: 10_000, 1: 5_000}]
    listener = run._listener(job, lambda: polled[0])
    progress = {"name": "ingest", "batchId": 7, "numInputRows": 3_000, "processedRowsPerSecond": 1_500.0,
                "sources": [{"latestOffset": '{"logs": {"0": 9000, "1": 4000}}',
                             "endOffset": '{"logs": {"0": 9000, "1": 4000}}'}]}
    event = SimpleNamespace(progress=SimpleNamespace(json=json.dumps(progress)))
    with caplog.at_level(logging.INFO, logger=run.log.name):
        listener.onQueryProgress(event)
        polled[0] = None
        listener.onQueryProgress(event)
    lines = [r.getMessage() for r in caplog.records if "batch 7" in r.getMessage()]
    assert lines == ["ingest  batch 7: 3,000 rows, 1500 rows/s, lag 2,000 records",
                     "ingest  batch 7: 3,000 rows, 1500 rows/s, lag 0 records"], lines


def _py4j_error_caused_by(spark: Any, java_exception: Any) -> Exception:
    """A real Py4JJavaError: a JVM call that fails with `java_exception` as its cause (what an interrupted write
    or HDFS call in a micro-batch callback raises)."""
    future = spark._jvm.java.util.concurrent.CompletableFuture()
    future.completeExceptionally(java_exception)
    try:
        future.get()
    except Exception as exc:  # noqa: BLE001 - the error is the point
        return exc
    raise AssertionError("the JVM call did not fail")


def test_an_interrupted_callback_hands_spark_a_short_traceback_it_takes_for_an_interruption(local_spark) -> None:
    """Spark tells a callback interrupted by the stop from a failure by its regex StreamExecution.PROXY_ERROR over
    the Python traceback, which recurses once per character: over the traceback of a real interrupted py4j call
    (some 2,400 characters, with its Java stack) it dies of a StackOverflowError, which a review saw printed as
    ~1,000 lines at 4 of 10 stops of a continuous run. The callback now raises a short BatchInterrupted that the
    same regex, run in the JVM, recognises; the cause is still kept for the run's report, and a failure that is
    no interruption is raised as it was."""
    import traceback

    from py4j.protocol import Py4JJavaError

    from logpipe.streaming.job import BatchInterrupted, StreamJob

    jvm = local_spark._jvm
    spark_takes_for_interruption = getattr(
        jvm, "org.apache.spark.sql.execution.streaming.runtime.StreamExecution").PROXY_ERROR().findFirstIn

    def callback_raising(exc: Exception) -> tuple[SimpleNamespace, BaseException]:
        def run_batch(batch: Any, batch_id: int) -> None:
            raise exc

        job = SimpleNamespace(_in_batch=threading.Lock(), _generation=0, _run_batch=run_batch, batch_error=None)
        with pytest.raises(Exception) as raised:
            StreamJob._batch(job, None, 7)
        return job, raised.value

    interrupted = _py4j_error_caused_by(local_spark, jvm.java.lang.InterruptedException("sleep interrupted"))
    long_text = "".join(traceback.format_exception(interrupted))
    with pytest.raises(Py4JJavaError, match="StackOverflowError"):  # Spark's own check of the old traceback
        spark_takes_for_interruption(long_text)

    job, exc = callback_raising(interrupted)
    assert isinstance(exc, BatchInterrupted) and job.batch_error is interrupted
    text = "".join(traceback.format_exception(exc))
    assert len(text) < 1000 and "micro-batch 7: java.lang.InterruptedException" in text, text
    assert spark_takes_for_interruption(text).isDefined(), text

    failed = _py4j_error_caused_by(local_spark, jvm.java.lang.IllegalStateException("disk full"))
    job, exc = callback_raising(failed)
    assert exc is failed and job.batch_error is failed


def test_a_failure_while_the_native_stack_is_down_says_so_before_the_error_s_own_hint(tmp_path, monkeypatch) -> None:
    """A `stack down` while the job runs: Spark's Kafka client fails with a timeout, whose own hint says the broker
    hangs. With the native stack's services not running (nothing on their ports, no process, no `stack up` on the
    run folder), the run says that instead; without a job's settings, the error's own hint."""
    import socket

    from logpipe.config import load_settings

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    for name in ("LOGPIPE_KAFKA_BOOTSTRAP", "LOGPIPE_WEBHDFS_URL", "LOGPIPE_HDFS_URL"):  # the native stack's addresses
        monkeypatch.delenv(name, raising=False)

    class Job:
        s = load_settings(run_dir=tmp_path, kafka_port=free_port(), namenode_http_port=free_port())

    text = "Caused by: org.apache.kafka.common.errors.TimeoutException: Timed out waiting for a node assignment"
    got = run.what_to_check(text, Job())
    assert "the native stack's Kafka is not running" in got and "the native stack's HDFS NameNode is not running" in got, got
    assert "did not answer in time" not in got and "resumes from its last committed micro-batch" in got
    assert run.what_to_check(text, None) == run.failure_hint(text) != ""


def test_a_py4j_error_that_hides_a_ctrl_c_is_taken_for_the_interrupt() -> None:
    """py4j closes a call that Ctrl-C cut short, and may raise an error of its own while doing so: the run takes it
    for the interrupt (exit 130), not for a JVM that died; a py4j error with no interrupt behind it is not one."""
    from py4j.protocol import Py4JError

    def hidden() -> Py4JError:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise Py4JError("Gateway must be connected to send cancel cmd.")  # noqa: B904 (as py4j does)
        except Py4JError as exc:
            return exc

    assert run._interrupted(hidden())
    assert not run._interrupted(Py4JError("An error occurred while calling o58.sc"))
    looped = Py4JError("x")
    looped.__context__ = looped
    assert not run._interrupted(looped)


def test_py4j_s_record_of_a_call_ctrl_c_cut_short_is_kept_off_the_console(caplog) -> None:
    """py4j logs "KeyboardInterrupt while sending command." with a traceback on the root logger: while the run's
    Spark session lives it goes to debug level; other root records pass, and once the session is over the filter
    is gone."""
    caplog.set_level(logging.DEBUG)
    with run._short_py4j_records():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            logging.exception("KeyboardInterrupt while sending command.")
        try:  # the next call finds the connection the Ctrl-C broke: py4j says so at info level, and retries
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            logging.info("Exception while sending command.", exc_info=True)
        logging.warning("another root record")
    assert [(r.name, r.levelname) for r in caplog.records] == [("logpipe.stream", "DEBUG"), ("logpipe.stream", "DEBUG"),
                                                              ("root", "WARNING")]
    assert not logging.getLogger().filters and not logging.getLogger("py4j.clientserver").filters


def test_stopping_spark_stops_its_queries_first_and_spark_whatever_they_raise() -> None:
    """A run that ends with a query still running (a second Ctrl-C) stops the query, then Spark: stopped with Spark
    under it, the query's thread printed Java stack traces as the process ended. A query whose stop fails (its JVM
    going) does not keep Spark from being stopped."""
    from py4j.protocol import Py4JError

    calls: list[str] = []

    class Query:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails = name, fails

        def stop(self) -> None:
            calls.append(f"stop {self.name}")
            if self.fails:
                raise Py4JError("An error occurred while calling o90.stop")

    class Spark:
        streams = SimpleNamespace(active=[Query("ingest", True), Query("other", False)])

        def stop(self) -> None:
            calls.append("spark")

    run._stop_spark(Spark())
    assert calls == ["stop ingest", "stop other", "spark"]
