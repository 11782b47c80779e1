"""The producer on the real broker: every line once with its source position, both clients, follow mode with
rotation and truncation, kill -9 and resume, oversize lines, clear failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logpipe.record import parse_record_key
from logpipe.topics import read_topic

pytestmark = pytest.mark.integration


def _lines(n: int, tag: str = "") -> list[bytes]:
    return [f'10.0.{i % 250}.{i % 7} - - [2004-05-18 00:{(i // 60) % 60:02d}:{i % 60:02d}] "GET /{tag}{i} HTTP/1.1" 200 {i}'
            .encode() for i in range(n)]


def _consume(stack, topic: str, *, records: bool = False) -> list:
    """Every record on `topic`, read to its end (call it once the producers that sent them have exited): (position,
    value) of each, position = (src, off) parsed from its key; the records themselves with `records`."""
    got = read_topic(stack, topic)
    return got if records else [(parse_record_key(m.key), m.value) for m in got]


def _env(stack, unique, tmp_path, **extra) -> dict[str, str]:
    # PYTHONFAULTHANDLER: a producer that does not end on SIGTERM prints every thread's stack on SIGABRT
    # (_stop_or_dump), so a failure says where it hung
    return {**os.environ, "LOGPIPE_TOPIC": f"prod-{unique}", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos"),
            "PYTHONFAULTHANDLER": "1", **extra}


def _stop_or_dump(proc: subprocess.Popen, err_file: Path, timeout: float = 60) -> None:
    """SIGTERM `proc` and wait for it; one that has not ended after `timeout` s fails the test with its log and
    every thread's stack (SIGABRT with PYTHONFAULTHANDLER), not a bare TimeoutExpired (it happened once in a CI
    rehearsal, with nothing to say where the producer waited)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pytest.fail(f"the producer did not end within {timeout:.0f}s of SIGTERM; its log and stacks:\n"
                    f"{err_file.read_text(errors='replace')[-6000:]}")


def _stop_and_read(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    """SIGTERM `proc` (its stdout and stderr piped) and return its output once it ended; as _stop_or_dump, one
    that has not ended after `timeout` s fails the test with its stacks (SIGABRT), and none is left running."""
    proc.send_signal(signal.SIGCONT)  # one a test stopped
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        pytest.fail(f"the producer did not end within {timeout:.0f}s of SIGTERM; its log and stacks:\n"
                    f"{(err or '')[-6000:]}")


def _produce(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "logpipe", "produce", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _wait_for(what: str, ready, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Poll `ready()` until true (the producer has reached a step), instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the producer ended before {what}"
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def _offsets(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    for line in data.split(b"\n")[:-1]:
        out[off] = line
        off += len(line) + 1
    return out


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_every_line_once_with_position(stack, unique, tmp_path, client):
    log = tmp_path / "a.log"
    lines = _lines(20_000) + [b"", b"\xff\xfe not utf-8", b"crlf line\r"]
    log.write_bytes(b"\n".join(lines) + b"\n")
    env = _env(stack, unique, tmp_path)
    r = _produce(env, str(log), "--client", client)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["lines"] == summary["records"] == len(lines) and summary["errors"] == 0
    got = _consume(stack, env["LOGPIPE_TOPIC"])
    assert len(got) == len(lines)
    expected = _offsets(log.read_bytes())
    by_off = {pos[1]: v for pos, v in got}
    assert by_off == expected  # every line exactly once, value = raw bytes, off = its byte offset (in the key)
    st = log.stat()
    assert {pos[0] for pos, _ in got} == {f"{st.st_dev}:{st.st_ino}"}  # src: the file's identity
    assert [v for _, v in got] == lines  # one partition: file order kept


def test_every_line_of_a_log_goes_to_one_partition_in_order(stack, unique, tmp_path):
    """On a topic of 3 partitions, every record of one log goes to one partition (a stable hash of the log's path),
    in line order: spread over partitions, a micro-batch could read later lines of the log before earlier ones
    waiting in another partition, which would then be late. Every line is sent once; batches stay large."""
    from logpipe.producer.run import partition_of

    log = tmp_path / "p.log"
    lines = _lines(80_000)  # ~5.3 MiB: 6 blocks
    log.write_bytes(b"\n".join(lines) + b"\n")
    env = _env(stack, unique, tmp_path, LOGPIPE_TOPIC_PARTITIONS="3")
    r = _produce(env, str(log), "--client", "confluent")
    assert r.returncode == 0, r.stderr[-2000:]
    got = _consume(stack, env["LOGPIPE_TOPIC"], records=True)
    index = {off: i for i, off in enumerate(_offsets(log.read_bytes()))}  # byte offset -> line number
    assert {m.partition for m in got} == {partition_of(str(log.resolve()), 3)}
    in_kafka_order = [index[parse_record_key(m.key)[1]] for m in sorted(got, key=lambda m: m.offset)]
    assert in_kafka_order == list(range(len(lines)))


@pytest.mark.faults
def test_resume_after_kill9_loses_nothing(stack, unique, tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"\n".join(_lines(300_000, "k")) + b"\n")
    env = _env(stack, unique, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pos_dir = tmp_path / "pos"
    deadline = time.monotonic() + 120
    def confirmed() -> bool:  # a position past byte 0 (the one at 0 is saved before the first record is sent)
        return any(json.loads(p.read_text())["offset"] > 0 for p in pos_dir.rglob("*.json"))

    while not confirmed():  # wait for a first confirmed position, then kill mid-file
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    second = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 < second["resumed_from"] < log.stat().st_size
    got = _consume(stack, env["LOGPIPE_TOPIC"])
    expected = _offsets(log.read_bytes())
    seen: dict[int, bytes] = {}
    for (_, off), v in got:
        assert seen.setdefault(off, v) == v  # a line sent twice carries the same (src, off) and value
    assert seen == expected  # nothing lost


def test_follow_waits_for_the_log_to_appear_then_sends_it(stack, unique, tmp_path, records_in):
    """`produce --follow` started before the log exists (a web server not yet up) waits for it, then sends its lines
    and follows it, as `tail -F` would."""
    log = tmp_path / "later.log"
    env = _env(stack, unique, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log), "--follow"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        heartbeat = tmp_path / "pos" / env["LOGPIPE_TOPIC"] / "heartbeat"
        _wait_for("the wait for the log", heartbeat.exists, proc)
        log.write_bytes(b"\n".join(_lines(40, "w")) + b"\n")
        _wait_for("the 40 lines of the log that appeared", lambda: records_in(stack, env["LOGPIPE_TOPIC"]) >= 40,
                  proc)
        with log.open("ab") as f:
            f.write(b"\n".join(_lines(5, "x")) + b"\n")
        _wait_for("the 5 appended lines", lambda: records_in(stack, env["LOGPIPE_TOPIC"]) >= 45, proc)
    finally:
        _, err = _stop_and_read(proc)
    assert proc.returncode == 0, err[-2000:]
    assert "waiting for it to appear" in err and "appeared" in err
    assert [v for _, v in _consume(stack, env["LOGPIPE_TOPIC"])] == _lines(40, "w") + _lines(5, "x")


def test_follow_rotation_and_truncation(stack, unique, tmp_path, records_in):
    log = tmp_path / "live.log"
    log.write_bytes(b"\n".join(_lines(100, "a")) + b"\n")
    env = _env(stack, unique, tmp_path)
    topic = env["LOGPIPE_TOPIC"]
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log), "--follow"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for("the first 100 lines", lambda: records_in(stack, topic) >= 100, proc)
        with log.open("ab") as f:
            f.write(b"\n".join(_lines(50, "b")) + b"\n")
            f.write(b"partial line without newline")   # must not be sent before its newline
        _wait_for("the 50 appended lines", lambda: records_in(stack, topic) >= 150, proc)
        time.sleep(1.5)  # several polls of the file
        assert records_in(stack, topic) == 150, "the unterminated line was sent before its newline"
        with log.open("ab") as f:
            f.write(b" now complete\n")
        _wait_for("the completed line", lambda: records_in(stack, topic) >= 151, proc)
        log.rename(tmp_path / "live.log.1")             # rotation: rename, then a new file
        log.write_bytes(b"\n".join(_lines(30, "c")) + b"\n")
        _wait_for("the new file's 30 lines", lambda: records_in(stack, topic) >= 181, proc)
        with log.open("r+b") as f:                       # truncated in place, then written again
            f.truncate(0)
        time.sleep(1)
        log.write_bytes(b"\n".join(_lines(20, "d")) + b"\n")
        _wait_for("the 20 lines after the truncation", lambda: records_in(stack, topic) >= 201, proc)
        time.sleep(1.5)  # nothing more may come
    finally:
        out, err = _stop_and_read(proc)
    assert proc.returncode == 0, err[-2000:]
    got = [v for _, v in _consume(stack, topic)]
    want = (_lines(100, "a") + _lines(50, "b") + [b"partial line without newline now complete"]
            + _lines(30, "c") + _lines(20, "d"))
    assert sorted(got) == sorted(want)
    assert len(got) == len(want)


def test_an_oversize_line_is_sent_as_a_too_large_record_in_its_place(stack, unique, tmp_path):
    """A line over the Kafka limit goes to the same topic, at its own source position, as the too_large stand-in:
    its length and its first 16 KB (the job quarantines it)."""
    from logpipe.record import too_large_value

    log = tmp_path / "o.log"
    big = b"x" * 50_000
    log.write_bytes(b"small one\n" + big + b"\nsmall two\n")
    env = _env(stack, unique, tmp_path, LOGPIPE_MAX_MESSAGE_BYTES="10000")
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["lines"], s["records"], s["quarantined"]) == (3, 3, 1)
    got = dict(_consume(stack, env["LOGPIPE_TOPIC"]))
    assert {off: v for (_, off), v in got.items()} == {0: b"small one", 10: too_large_value(big, 50_000),
                                                       50_011: b"small two"}
    assert got[next(k for k in got if k[1] == 10)].startswith(b"\x00logpipe:too_large:50000\x00xxx")
    named = [line for line in r.stderr.splitlines() if "is 50000 bytes (> 10000, LOGPIPE_MAX_MESSAGE_BYTES)" in line]
    assert len(named) == 1 and "its length and first 16384 bytes" in named[0], r.stderr[-2000:]
    # many such lines: the first ten are named, one more warning says that more follow; every one is counted
    many = tmp_path / "many.log"
    many.write_bytes(b"".join(b"y" * (12_000 + i) + b"\n" for i in range(25)))
    r = _produce({**env, "LOGPIPE_TOPIC": env["LOGPIPE_TOPIC"] + "-many"}, str(many))
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["quarantined"] == 25, r.stderr[-2000:]
    warned = [line for line in r.stderr.splitlines() if " WARNING " in line]
    assert sum("bytes (> 10000, LOGPIPE_MAX_MESSAGE_BYTES)" in line for line in warned) == 10, warned
    assert sum("not named one by one" in line for line in warned) == 1 and len(warned) == 11, warned


def test_a_limit_above_kafkas_default_is_given_to_the_topic_and_an_existing_lower_one_refused(stack, unique,
                                                                                                tmp_path):
    """LOGPIPE_MAX_MESSAGE_BYTES above Kafka's ~1 MB default: the producer creates the topic with a
    max.message.bytes that takes such a line, and a 1.5 MB incompressible line is delivered as itself. A topic that
    already exists with the default limit is refused at the start with one clear line, not at the first large
    line on every restart."""
    big = os.urandom(1_500_000).replace(b"\n", b"x")  # incompressible: over the default limit in any codec
    log = tmp_path / "big.log"
    log.write_bytes(b"small one\n" + big + b"\nsmall two\n")
    env = _env(stack, unique, tmp_path, LOGPIPE_MAX_MESSAGE_BYTES=str(2 << 20))
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["lines"], s["records"], s["quarantined"]) == (3, 3, 0)
    got = dict(_consume(stack, env["LOGPIPE_TOPIC"]))
    assert sorted(got.values(), key=len) == [b"small one", b"small two", big]

    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    try:
        admin.create_topics([NewTopic(f"prod-small-{unique}", num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    env = {**env, "LOGPIPE_TOPIC": f"prod-small-{unique}", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "pos2")}
    r = _produce(env, str(log))
    assert r.returncode == 1
    assert "max.message.bytes" in r.stderr and f"prod-small-{unique}" in r.stderr and "Traceback" not in r.stderr
    assert "or lower LOGPIPE_MAX_MESSAGE_BYTES to" in r.stderr, r.stderr  # the broker's default (1 MB) takes batches
    from logpipe.topics import create_topic

    create_topic(stack, f"prod-tiny-{unique}", partitions=1, configs={"max.message.bytes": "2000"})
    r = _produce({**env, "LOGPIPE_TOPIC": f"prod-tiny-{unique}"}, str(log))
    # under the producer's batch size no setting helps: it said "or lower the setting"
    assert r.returncode == 1 and "takes none of them, whatever LOGPIPE_MAX_MESSAGE_BYTES says" in r.stderr, r.stderr


def test_a_topic_the_producer_makes_has_a_limit_of_its_own_at_the_default_setting(stack, unique):
    """At the default LOGPIPE_MAX_MESSAGE_BYTES (under Kafka's default limit) the topic still gets its own
    max.message.bytes: without it the topic takes the broker's message.max.bytes, and on a broker where that was
    lowered, the first long line failed to deliver instead of being sent."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    from logpipe.producer.run import ensure_topic
    from logpipe.record import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, largest_record_bytes

    topic = f"own-limit-{unique}"
    assert ensure_topic(stack, topic) is True
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    try:
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=["max.message.bytes"])],
                                     config_filter="all")["topic"][topic]["max.message.bytes"]
    finally:
        admin.close()
    assert got["config_source"] == "DYNAMIC_TOPIC_CONFIG", got
    assert int(got["value"]) == max(largest_record_bytes(stack.max_message_bytes), KAFKA_DEFAULT_MAX_MESSAGE_BYTES)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_record_the_broker_rejects_is_a_delivery_error(stack, unique, client):
    """A record the broker refuses (larger than its 1 MB message limit, let through by a raised producer limit)
    fails flush() with the broker's reason: confluent reports deliveries of failures only, and still counts them."""
    from logpipe.producer.clients import DeliveryError, make_sink
    from logpipe.topics import create_topic

    s = stack.with_overrides(producer_client=client, max_message_bytes=4_000_000)
    create_topic(s, f"reject-{unique}", partitions=1)  # Kafka's default limit (1 MB), not the producer's ensure_topic
    sink = make_sink(s)
    try:
        sink.send(f"reject-{unique}", b"ok", b"lp:t:0")
        sink.send(f"reject-{unique}", os.urandom(2_000_000), b"lp:t:3")  # incompressible
        with pytest.raises(DeliveryError, match="(?i)too.?large|size"):
            sink.flush(timeout=60)
    finally:
        sink.close()


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_batch_the_broker_refuses_as_too_large_is_a_delivery_error_with_its_reason(stack, unique, client):
    """Small records batched with a large one, to a topic whose limit is below the batch: kafka-python splits the
    batch and sends it again, and its flush() first ended with UnknownError('Future not done'), naming no reason
    (the producer then told the user to check that the broker was up). flush() now waits for the records' own
    errors and raises DeliveryError with the broker's reason."""
    from logpipe.producer.clients import DeliveryError, make_sink
    from logpipe.topics import create_topic

    topic = f"refuse-split-{unique}"
    create_topic(stack, topic, partitions=1, configs={"max.message.bytes": "100000"})
    sink = make_sink(stack.with_overrides(producer_client=client))
    try:
        sink.send(topic, b"ok", b"lp:t:0", partition=0)
        sink.send(topic, os.urandom(400_000), b"lp:t:3", partition=0)  # incompressible, one batch with the others
        sink.send(topic, b"ok two", b"lp:t:400004", partition=0)
        with pytest.raises(DeliveryError, match="(?i)too.?large|size"):
            sink.flush(timeout=60)
    finally:
        sink.close()


def test_a_file_rotated_while_stopped_is_finished_once(stack, unique, tmp_path, records_in):
    """Lines appended to the log, then the log rotated, while the producer was stopped: the next `--follow` run
    sends the old file's tail and saves that file's end before moving to the new file, so a third run sends
    nothing again (the tail was re-sent on every restart when only the new file's position was saved)."""
    log = tmp_path / "live.log"
    log.write_bytes(b"\n".join(_lines(100, "a")) + b"\n")
    env = _env(stack, unique, tmp_path, LOGPIPE_PRODUCER_CHECKPOINT_S="3600")  # saves at idle, switch and end only

    topic = env["LOGPIPE_TOPIC"]
    runs = 0

    def follow_briefly(records: int, resumed: str = "resuming at byte") -> None:
        """A --follow run, stopped once the topic holds `records` and the run has resumed (or started) on the
        current file (its log says `resumed`), plus a few polls of the file."""
        nonlocal runs
        runs += 1
        err_file = tmp_path / f"follow-{runs}.err"
        with err_file.open("w") as err_out:
            proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log), "--follow"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=err_out, text=True)
        try:
            _wait_for(f"{records} records", lambda: records_in(stack, topic) >= records, proc)
            if runs > 1:
                _wait_for("the resume", lambda: resumed in err_file.read_text(), proc)
            time.sleep(1.5)
        finally:
            _stop_or_dump(proc, err_file)
        assert proc.returncode == 0, err_file.read_text()[-2000:]

    follow_briefly(100)
    with log.open("ab") as f:
        f.write(b"\n".join(_lines(10, "t")) + b"\n")
    log.rename(tmp_path / "live.log.1")
    log.write_bytes(b"\n".join(_lines(30, "c")) + b"\n")
    follow_briefly(140)  # finishes live.log.1 (the 10 t lines), then follows the new live.log
    # nothing new: it resumes at the new file's end (any re-send of live.log.1's tail comes before that, and is
    # flushed to the topic by the stop), not merely after a pause
    size = log.stat().st_size
    follow_briefly(140, resumed=f"live.log: resuming at byte {size} of {size}")
    got = [v for _, v in _consume(stack, env["LOGPIPE_TOPIC"])]
    want = _lines(100, "a") + _lines(10, "t") + _lines(30, "c")
    assert sorted(got) == sorted(want)  # each line exactly once


def test_positions_of_a_topic_that_no_longer_exists_are_dropped(stack, unique, tmp_path):
    """Saved positions whose topic is gone (the broker's data wiped, the topic deleted) stand for lines the new
    topic does not hold: the producer creates the topic, drops them and sends the whole file."""
    import shutil

    log = tmp_path / "a.log"
    log.write_bytes(b"\n".join(_lines(500)) + b"\n")
    env = _env(stack, unique, tmp_path)
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    gone = f"gone-{unique}"  # the same positions, for a topic that does not exist (as after `stack down --wipe`)
    shutil.copytree(tmp_path / "pos" / env["LOGPIPE_TOPIC"], tmp_path / "pos" / gone)
    r = _produce({**env, "LOGPIPE_TOPIC": gone}, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["resumed_from"], summary["lines"]) == (0, 500) and "dropped 1 saved position" in r.stderr
    assert sorted(v for _, v in _consume(stack, gone)) == sorted(_lines(500))


def test_positions_of_a_topic_made_again_by_hand_are_dropped(stack, unique, tmp_path):
    """The topic deleted and made again by someone else (not the producer) between two runs: the broker gives it a
    new id, so the saved positions, which stand for lines of the old topic, are dropped and the whole file is sent
    to the new one. Before, the producer resumed at them and the new topic never got the file's first lines."""
    from logpipe.topics import create_topic, delete_topics

    log = tmp_path / "a.log"
    log.write_bytes(b"\n".join(_lines(300)) + b"\n")
    env = _env(stack, unique, tmp_path)
    topic = env["LOGPIPE_TOPIC"]
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "pos" / topic / "topic-id").read_text().strip()
    delete_topics(stack, [topic])
    create_topic(stack, topic, partitions=1)
    r = _produce(env, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["resumed_from"], summary["lines"]) == (0, 300)
    assert "was deleted and made again" in r.stderr and "dropped 1 saved position" in r.stderr
    assert sorted(v for _, v in _consume(stack, topic)) == sorted(_lines(300))
    r = _produce(env, str(log))  # the same topic now: resumed at the end, nothing sent again
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["lines"] == 0, r.stderr[-2000:]


def test_a_following_producer_is_healthy_while_its_loop_moves(stack, unique, tmp_path, records_in):
    """`logpipe health producer` (compose's producer healthcheck): healthy while a --follow run waits for lines;
    unhealthy once its loop stops moving (SIGSTOP: as stuck as a process gets); healthy again when it moves on,
    and the lines appended meanwhile still arrive."""
    log = tmp_path / "live.log"
    log.write_bytes(b"\n".join(_lines(50, "a")) + b"\n")
    env = _env(stack, unique, tmp_path)
    topic = env["LOGPIPE_TOPIC"]

    def health(max_age: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "logpipe", "health", "producer", "--timeout", "0",
                               "--max-age", str(max_age)], env=env, capture_output=True, text=True, timeout=60)

    assert health(60).returncode == 1  # no producer has run on this topic and state folder
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "produce", str(log), "--follow"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for("the first 50 lines", lambda: records_in(stack, topic) >= 50, proc)
        time.sleep(3)  # idle: only the waits for new lines touch the heartbeat now
        r = health(2.5)
        assert r.returncode == 0 and "heartbeat" in r.stdout, r.stdout
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while (r := health(2.5)).returncode == 0:
            assert time.monotonic() < deadline, "a stopped producer stayed healthy"
            time.sleep(0.5)
        assert "stuck" in r.stderr and r.stdout == "", r.stdout + r.stderr  # the reason on stderr
        with log.open("ab") as f:
            f.write(b"\n".join(_lines(10, "b")) + b"\n")
        proc.send_signal(signal.SIGCONT)
        _wait_for("the lines appended while it was stopped", lambda: records_in(stack, topic) >= 60, proc)
        assert health(2.5).returncode == 0
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        r = health(60)  # ended: not alive for the heartbeat's last minute
        assert r.returncode == 1 and "has ended" in r.stderr, r.stdout + r.stderr
    finally:
        out, err = _stop_and_read(proc)
    assert proc.returncode == 0, err[-2000:]


def test_a_topic_with_records_but_no_saved_positions_is_warned_about(stack, unique, tmp_path):
    """Positions saved in another folder than this run's (another LOGPIPE_PRODUCER_STATE_DIR or run folder) while
    the topic holds records: the producer reads the log from byte 0 and says so, naming the folder it looked in.
    The first run into an empty topic says nothing of the kind."""
    log = tmp_path / "a.log"
    log.write_bytes(b"\n".join(_lines(200)) + b"\n")
    env = _env(stack, unique, tmp_path)
    r = _produce(env, str(log))
    assert r.returncode == 0 and "already got" not in r.stderr, r.stderr[-2000:]
    elsewhere = tmp_path / "other-positions"
    r = _produce({**env, "LOGPIPE_PRODUCER_STATE_DIR": str(elsewhere)}, str(log))
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [line for line in r.stderr.splitlines() if "already got 200 records" in line]
    assert len(warned) == 1 and str(elsewhere) in warned[0] and "LOGPIPE_PRODUCER_STATE_DIR" in warned[0], r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["lines"] == 200  # read from byte 0, as said
