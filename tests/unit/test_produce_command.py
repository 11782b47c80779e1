"""`logpipe produce` turns the producer's failures into one clear line and an exit code, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from logpipe.cli import build_parser
from logpipe.commands import produce

pytestmark = pytest.mark.unit


def _ended_stderr(proc: "subprocess.Popen") -> str:
    """The stderr of `proc`, killed first if it still runs (a wait that timed out must fail, not hang)."""
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=30)[1]


def _errors_of(monkeypatch, capsys, exc: BaseException, tmp_path) -> tuple[int, str]:
    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr("logpipe.producer.run.produce_file", fail)
    monkeypatch.setattr(produce.signal, "signal", lambda *_: None)  # keep pytest's own Ctrl-C handler
    args = build_parser().parse_args(["produce", str(tmp_path / "a.log")])
    code = produce.run(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("exc", ["kafka-python", "confluent"])
def test_a_kafka_client_error_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path, exc):
    if exc == "kafka-python":
        from kafka.errors import KafkaTimeoutError

        error: BaseException = KafkaTimeoutError("Failed to update metadata after 60.0 secs.")
    else:
        from confluent_kafka import KafkaError, KafkaException

        error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    code, err = _errors_of(monkeypatch, capsys, error, tmp_path)
    assert code == 1 and err.startswith("logpipe produce: the Kafka client failed") and "stack status" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_delivery_error_says_delivery_failed(monkeypatch, capsys, tmp_path):
    from logpipe.producer.clients import DeliveryError

    monkeypatch.setattr(produce, "_topic_gone", lambda s: False)
    code, err = _errors_of(monkeypatch, capsys, DeliveryError("3 records failed: MSG_SIZE_TOO_LARGE"), tmp_path)
    assert code == 1 and err.startswith("logpipe produce: delivery failed: 3 records failed: MSG_SIZE_TOO_LARGE. ")
    # what to check, and that running it again loses nothing (before: the error alone)
    assert "the topic access-logs still exists" in err and "the same command then goes on" in err
    assert len(err.strip().splitlines()) == 1
    # the topic deleted under the producer: the next run starts it again from byte 0, and old results cannot go on
    monkeypatch.setattr(produce, "_topic_gone", lambda s: True)
    code, err = _errors_of(monkeypatch, capsys, DeliveryError("3 records failed: UNKNOWN_TOPIC_OR_PART"), tmp_path)
    assert code == 1 and "The topic access-logs no longer exists" in err and "from byte 0" in err, err
    assert "goes on from the last position" not in err and len(err.strip().splitlines()) == 1


def test_other_errors_are_not_hidden(monkeypatch, capsys, tmp_path):
    with pytest.raises(ZeroDivisionError):
        _errors_of(monkeypatch, capsys, ZeroDivisionError(), tmp_path)


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def test_ctrl_c_while_waiting_for_the_broker_ends_the_wait(tmp_path):
    """Before, the wait for an unreachable broker went on for its whole timeout whatever the signals."""
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LOGPIPE_PRODUCER_CONNECT_TIMEOUT_S": "120",
           "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")}
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM):  # logpipe's handlers are in place (Python catches SIGINT anyway)
        assert proc.poll() is None and time.monotonic() < deadline, _ended_stderr(proc)
        time.sleep(0.05)
    time.sleep(0.5)  # into the wait
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5, err
    assert proc.returncode == 1 and "stopped while waiting for Kafka" in err and "nothing was sent" in err, err


def test_a_second_stop_signal_quits_at_once(monkeypatch, capsys):
    import signal
    import threading

    from logpipe.commands import produce

    exits = []
    monkeypatch.setattr(produce.os, "_exit", exits.append)
    stop = threading.Event()
    produce.on_stop_signal(stop, signal.SIGTERM, first=True)
    assert stop.wait(5) and exits == []
    produce.on_stop_signal(stop, signal.SIGINT, first=False)
    assert exits == [128 + signal.SIGINT]
    assert "sent again next time" in capsys.readouterr().err


@pytest.mark.parametrize("handler", ["produce", "stream"])
def test_a_signal_while_the_main_thread_enters_or_leaves_its_wait_does_not_deadlock(handler, monkeypatch):
    """Signal handlers run in the main thread, between two bytecodes: one that came while the main thread held the
    stop event's lock (entering or leaving Event.wait) called Event.set, which waited for that lock for ever. A
    producer hung so on SIGTERM in a CI rehearsal (py-spy: on_stop_signal -> Event.set -> Condition.__enter__,
    under Event.wait). Here a thread holds the event's lock as the main thread would and runs the handler: it
    must return, and the event be set once the lock is let go."""
    import signal
    import threading

    from logpipe.commands import produce
    from logpipe.streaming import run

    if handler == "produce":
        stop = threading.Event()
        handle = lambda: produce.on_stop_signal(stop, signal.SIGTERM, first=True)  # noqa: E731
    else:
        got = run.StopSignal.__new__(run.StopSignal)  # without touching the process's handlers
        got.event, got.signum, got._before = threading.Event(), None, {}
        stop, handle = got.event, lambda: got._handle(signal.SIGTERM, None)  # noqa: E731
    returned = threading.Event()

    def main_thread_in_its_wait() -> None:
        with stop._cond:  # what Event.wait holds as it starts and ends
            handle()
            returned.set()

    threading.Thread(target=main_thread_in_its_wait, daemon=True).start()
    assert returned.wait(5), "the handler waited for the lock its own thread held"
    assert stop.wait(5)


def test_every_compression_the_settings_accept_has_its_kafka_python_codec():
    """kafka-python needs a library per codec; zstd and snappy were accepted by the settings but failed at start."""
    import typing

    from kafka.producer.kafka import KafkaProducer

    from logpipe.config import Settings

    for codec in typing.get_args(Settings.model_fields["compression"].annotation):
        available, _ = KafkaProducer._COMPRESSORS[None if codec == "none" else codec]
        assert available(), f"LOGPIPE_COMPRESSION={codec}: kafka-python finds no library for it"


def test_a_delivery_failure_is_the_error_reported_when_the_client_cannot_close(tmp_path, monkeypatch, caplog):
    """Records not acknowledged (DeliveryError at the flush), then the client's close fails too (a broker away
    makes kafka-python's close time out): the DeliveryError, which says how many records failed, is what the
    caller gets; the close's error is a warning. Before, the close's error replaced it."""
    import logging

    from logpipe.config import Settings
    from logpipe.producer import run
    from logpipe.producer.clients import DeliveryError

    class FailingSink:
        sent = failed = 0

        def partitions(self, topic: str) -> int:
            return 1

        def send_lines(self, topic, lines, src, off, partition) -> int:
            self.sent += len(lines)
            return off

        def flush(self, timeout: float = 120.0) -> None:
            self.failed = self.sent
            raise DeliveryError(f"{self.failed} records not acknowledged; first error: broker away")

        def close(self) -> None:
            raise TimeoutError("close timed out")

    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\n")
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: FailingSink())
    s = Settings(producer_state_dir=str(tmp_path / "pos"))
    with caplog.at_level(logging.WARNING, logger="logpipe.producer"), \
            pytest.raises(DeliveryError, match="2 records not acknowledged"):
        run.produce_file(s, log, progress=False)
    assert any("close timed out" in r.getMessage() for r in caplog.records)


def _produce(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logpipe", "produce", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_missing_file_exits_2_before_reaching_kafka(tmp_path):
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")}
    r = _produce(env, str(tmp_path / "nope.log"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_fifo_is_refused_at_once_even_without_a_writer(tmp_path):
    """A named pipe cannot be read by offset (nor resumed): refused with exit 2. Opening one that has no writer
    blocks in open(2) itself, so the check must not wait for the open to return."""
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")}
    r = _produce(env, str(fifo), timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_a_compressed_log_is_refused_naming_its_format(tmp_path, kind):
    """Sent as it is, a compressed log's bytes would make garbage lines, every one quarantined: refused, exit 2,
    before Kafka is reached (a text log whose first host starts with the letters of a format's magic is sent)."""
    import bz2
    import gzip
    import lzma
    import zipfile

    text = b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n'
    log = tmp_path / "access.log.1"
    if kind == "zip":
        with zipfile.ZipFile(log, "w") as z:
            z.writestr("access.log", text)
    else:
        log.write_bytes({"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind](text))
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")}
    r = _produce(env, str(log))
    assert r.returncode == 2 and f"is {kind}-compressed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    from logpipe.producer.source import compression_of

    assert compression_of(b"BZh9 - - [2004-05-18 05:58:48]") is None and compression_of(b"PK.example.com -") is None


def test_a_positions_folder_it_cannot_make_is_one_line_naming_the_setting(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    (tmp_path / "file").write_bytes(b"")
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "file" / "pos")}  # under a file: no folder can be made
    r = _produce(env, str(log))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot keep the producer's positions in {tmp_path / 'file' / 'pos'}" in r.stderr, r.stderr
    assert "LOGPIPE_PRODUCER_STATE_DIR" in r.stderr


def test_an_unreachable_broker_is_a_clear_error(tmp_path, free_ports):
    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    port = free_ports(1)[0]
    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "LOGPIPE_PRODUCER_CONNECT_TIMEOUT_S": "3",
           "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")}
    r = _produce(env, str(log))
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_native_stack_down_is_said_at_once_not_after_the_connect_timeout(tmp_path, free_ports):
    """No broker on the native stack's port, no process of it and no `stack up` on its run folder: the producer
    says that the native stack's Kafka is not running and how to start it, at once (as `stream` and `verify`
    do), not after LOGPIPE_PRODUCER_CONNECT_TIMEOUT_S."""
    import time

    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    env = {k: v for k, v in os.environ.items() if k != "LOGPIPE_KAFKA_BOOTSTRAP"}
    env.update({"LOGPIPE_RUN_DIR": str(tmp_path / "run"), "LOGPIPE_KAFKA_PORT": str(free_ports(1)[0]),
                "LOGPIPE_PRODUCER_CONNECT_TIMEOUT_S": "120", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos")})
    t0 = time.monotonic()
    r = _produce(env, str(log))
    assert r.returncode == 1 and "the native stack's Kafka is not running" in r.stderr, r.stderr
    assert "logpipe stack up" in r.stderr and time.monotonic() - t0 < 60, r.stderr


def test_follow_waits_for_a_log_that_does_not_exist_yet_and_stops_on_sigterm(tmp_path):
    """--follow on a path with no file yet waits for it (with a heartbeat, so the container stays healthy), as
    `tail -F` does; SIGTERM ends the wait with one line. Without --follow it is an error (above)."""
    import signal
    import time

    env = {**os.environ, "LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos"),
           "LOGPIPE_TOPIC": "waiting"}
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(tmp_path / "later.log"), "--follow"],
                            env=env, stderr=subprocess.PIPE, text=True)
    heartbeat = tmp_path / "pos" / "waiting" / "heartbeat"
    deadline = time.monotonic() + 60
    while not (heartbeat.exists() and _catches(proc.pid, signal.SIGTERM)):
        assert proc.poll() is None and time.monotonic() < deadline, _ended_stderr(proc)
        time.sleep(0.05)
    first = heartbeat.stat().st_mtime
    time.sleep(1.5)
    assert proc.poll() is None, "gave up waiting for the log"
    assert heartbeat.stat().st_mtime > first, "no heartbeat while waiting for the log"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "waiting for it to appear" in err, err
    assert f"stopped while waiting for {tmp_path / 'later.log'} to appear; nothing was sent" in err, err
    assert "Traceback" not in err, err
    # ended: `logpipe health producer` (which only reads the heartbeat's age) counted it alive for a minute more
    assert not heartbeat.exists()


class _StoppingSink:
    """Takes the lines it is given (no broker) and, after `stop_after` lines, delivers a stop signal to the
    command's own handler, as a Ctrl-C or `docker stop` would."""

    sent = failed = 0

    def __init__(self, handlers: dict, stop_after: int | None) -> None:
        self.handlers, self.stop_after, self.lines = handlers, stop_after, 0

    def partitions(self, topic: str) -> int:
        return 1

    def send_lines(self, topic, lines, src, off, partition) -> int:
        import signal

        self.lines += len(lines)
        self.sent += len(lines)
        if self.stop_after is not None and self.lines >= self.stop_after and self.handlers:
            self.handlers.pop(signal.SIGTERM)(signal.SIGTERM, None)
        return off + sum(len(line) + 1 for line in lines)

    def send(self, topic, value, key, headers=None, partition=None) -> None:
        self.sent += 1

    def flush(self, timeout: float = 120.0) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("stop_after", [None, 1], ids=["to the end", "stopped by SIGTERM"])
def test_a_one_shot_run_stopped_before_the_end_does_not_exit_0(monkeypatch, capsys, tmp_path, stop_after):
    """Before, a signal ended a one-shot run with exit 0 and a summary like any other: `timeout 60 logpipe produce
    big.log && logpipe stream --until-done` took the log for sent. Now it exits 128 + the signal, as `stream
    --until-done` does, saying how far it got; a run that reached the end exits 0."""
    import json
    import signal

    from logpipe.producer import run

    log = tmp_path / "a.log"
    line = b'1.2.3.4 - - [2004-05-18 00:00:01] "GET / HTTP/1.1" 200 5'
    log.write_bytes((line + b"\n") * 60_000)  # several blocks
    handlers: dict = {}
    sink = _StoppingSink(handlers, stop_after)
    monkeypatch.setattr(produce.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: sink)
    args = build_parser().parse_args(["produce", str(log), "--producer-state-dir", str(tmp_path / "pos")])
    code = produce.run(args)
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    if stop_after is None:
        assert code == 0 and summary["lines"] == 60_000 and not summary["stopped_early"], err
    else:
        assert 0 < summary["lines"] < 60_000 and summary["stopped_early"], summary
        assert code == 128 + signal.SIGTERM, err
        said = [e for e in err.splitlines() if e.startswith("logpipe produce: stopped by SIGTERM before the end")]
        assert len(said) == 1 and f"{summary['lines']:,} lines sent" in said[0] and "same command again" in said[0]
        # its position was saved: the same command again sends the rest, and only the rest
        rest = _StoppingSink({}, None)
        monkeypatch.setattr(run, "make_sink", lambda s: rest)
        assert produce.run(args) == 0
        again = json.loads(capsys.readouterr()[0].strip().splitlines()[-1])
        assert again["lines"] == rest.lines == 60_000 - summary["lines"] and not again["stopped_early"], again


def test_a_one_shot_run_that_finds_its_log_truncated_exits_1_saying_so(monkeypatch, capsys, tmp_path):
    """copytruncate while a one-shot run reads: the rest of the log is in the copy, not sent. The command prints
    its summary, says so, and exits 1: `logpipe produce log && logpipe stream --until-done` must not go on."""
    import json

    from logpipe.producer import run

    log = tmp_path / "a.log"
    line = b'1.2.3.4 - - [2004-05-18 00:00:01] "GET / HTTP/1.1" 200 5'
    log.write_bytes((line + b"\n") * 60_000)  # several blocks

    class TruncatingSink(_StoppingSink):
        def send_lines(self, topic, lines, src, off, partition) -> int:
            if not self.lines:  # logrotate's copytruncate, after the first block was read
                (tmp_path / "a.log.1").write_bytes(log.read_bytes())
                log.write_bytes(b"")
            return super().send_lines(topic, lines, src, off, partition)

    monkeypatch.setattr(produce.signal, "signal", lambda sig, handler: None)
    monkeypatch.setattr(run.health, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(run, "claim_topic", lambda *a: None)
    monkeypatch.setattr(run, "make_sink", lambda s: TruncatingSink({}, None))
    args = build_parser().parse_args(["produce", str(log), "--producer-state-dir", str(tmp_path / "pos")])
    code = produce.run(args)
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and 0 < summary["lines"] < 60_000 and not summary["stopped_early"], (code, summary, err)
    said = [e for e in err.splitlines() if e.startswith("logpipe produce: ")]
    assert said and "was truncated while it was read" in said[-1] and f"{summary['lines']:,} lines sent" in said[-1]


def test_closing_the_confluent_client_after_a_flush_that_gave_up_does_not_wait_again():
    """A broker that stays away: the flush gives up after its timeout (120 s in a run), then close() waited 30 s
    more for the same broker, so the producer exited later than the delivery timeout it documents. The real
    client, against a port where no broker listens."""
    import time

    from logpipe.config import Settings
    from logpipe.producer.clients import ConfluentSink, DeliveryError

    sink = ConfluentSink(Settings(kafka_bootstrap="127.0.0.1:1"))
    sink.send("t", b"a line", b"lp:x:0", partition=0)
    with pytest.raises(DeliveryError, match="1 records still unacknowledged after 2s"):
        sink.flush(timeout=2)
    t = time.monotonic()
    sink.close()
    assert time.monotonic() - t < 5


def test_the_producer_service_generates_the_log_that_produce_reads_whatever_the_order_of_flags(tmp_path, monkeypatch):
    """python_service/app.py takes LOG as `logpipe produce` parses it. Before, it took the first word not starting
    with "-" for LOG, so `--topic weblogs LOG` generated the sample into ./weblogs and then waited for LOG. Found
    by a review."""
    import importlib.util

    from logpipe.config import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("producer_service_app", PROJECT_ROOT / "python_service" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    calls: list[list[str]] = []
    monkeypatch.setattr(app, "main", lambda argv: calls.append(argv) or 0)
    log = tmp_path / "access.log"
    args = ["--topic", "weblogs", str(log), "--follow"]
    assert app.run([*args, "--generate-if-missing", "40MB"]) == 0
    assert calls == [["generate", "--size", "40MB", "--seed", str(app.SAMPLE_SEED), "--out", str(log)],
                     ["produce", *args]]
    log.write_text("")
    calls.clear()
    assert app.run(["--generate-if-missing", "40MB", *args]) == 0 and calls == [["produce", *args]]
