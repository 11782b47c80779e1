"""End to end on the real stack: generate -> produce -> Kafka -> Spark -> HDFS, then `verify` must be exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from logpipe.topics import read_topic

pytestmark = pytest.mark.e2e

# issue 5's acceptance is on a log of at least 1 M lines; a smaller one (a quicker local run) is refused in CI
E2E_LINES = int(os.environ.get("LOGPIPE_E2E_LINES", "1000000"))
if os.environ.get("CI") == "true" and E2E_LINES < 1_000_000:
    raise pytest.UsageError(f"LOGPIPE_E2E_LINES={E2E_LINES} in CI: the end-to-end acceptance needs >= 1,000,000 lines")


def logpipe(env: dict[str, str], *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logpipe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_env(stack, unique: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LOGPIPE_TOPIC": f"e2e-{unique}", "LOGPIPE_HDFS_ROOT": f"/tests/e2e-{unique}",
            "LOGPIPE_ALERTS_TOPIC": f"alerts-{unique}", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "positions")}


# what the brief and the README give as the defaults; verify checks with what the root records, so a job that
# recorded (and used) other values would agree with itself: the report says which it checked with
BRIEF_DEFAULTS = {"window": "20 seconds", "slide": "10 seconds", "rate_limit_ceiling": 200, "surge_min_count": 100,
                  "surge_min_share": 0.25}


def verify(env: dict[str, str], log: Path, out: Path) -> dict:
    r = logpipe(env, "verify", "--log", str(log), "--json", str(out))
    assert out.is_file(), f"verify wrote no report (exit {r.returncode}):\n{r.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert {k: report["settings"][k] for k in BRIEF_DEFAULTS} == BRIEF_DEFAULTS, report["settings"]
    assert report["settings"]["alerts_topic"] == env["LOGPIPE_ALERTS_TOPIC"]
    return report


def test_million_lines_exact(stack, unique, tmp_path):
    """>= 1 M lines: windows equal the batch recomputation, every incident alerted, none from background,
    lines in = parsed + quarantined."""
    log = tmp_path / "access.log"
    env = run_env(stack, unique, tmp_path)
    r = logpipe(env, "generate", "--lines", str(E2E_LINES), "--seed", "7", "--out", str(log))
    assert r.returncode == 0, r.stderr
    truth = json.loads(log.with_name("access.log.truth.json").read_text())
    r = logpipe(env, "produce", str(log), "--client", "confluent")
    assert r.returncode == 0, r.stderr[-3000:]
    produced = json.loads(r.stdout.strip().splitlines()[-1])
    assert produced["lines"] == truth["total_lines"] == E2E_LINES
    assert produced["records"] == E2E_LINES and produced["errors"] == 0
    r = logpipe(env, "stream", "--until-done")
    assert r.returncode == 0, r.stderr[-5000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["lines"] == E2E_LINES
    # the job's own counts against the generator's (lines = parsed + quarantined holds by the job's arithmetic)
    assert metrics["quarantined"] == truth["malformed_lines"] > 0
    assert metrics["parsed"] == truth["total_lines"] - truth["malformed_lines"]
    # the generator moves lines up to 10 s back, within the 30 s watermark, and one partition keeps file order:
    # none is late (verify takes late lines out of its counts, so a job calling on-time lines late is caught here)
    assert metrics["late"] == 0 and truth["out_of_order_lines"] > 0
    report = verify(env, log, tmp_path / "verify.json")
    assert report["ok"]
    assert report["windows_compared"] > 1000
    # recall is 1.0 of nothing too: the planted incidents and their alerts must be there
    assert len(truth["incidents"]) > 0 and report["truth"]["expected_alerts"] > 0
    assert report["truth"]["recall"] == 1.0 and report["truth"]["false_positives"] == 0
    assert report["alerts"]["raised"] >= report["truth"]["expected_alerts"]
    # verify's recount of the file, and the job's unique lines in its tables, against the generator's counts
    acc = report["accounting"]
    assert acc["lines"] == truth["total_lines"] and acc["quarantined"] == truth["malformed_lines"]
    assert acc["job_parsed_unique"] == acc["parsed"] == truth["total_lines"] - truth["malformed_lines"]
    assert acc["job_quarantined_unique"] == truth["malformed_lines"]
    # alerts also reached Kafka, once each
    ids = [json.loads(m.value)["alert_id"] for m in read_topic(stack, env["LOGPIPE_ALERTS_TOPIC"])]
    assert len(ids) == len(set(ids)) == report["alerts"]["raised"]


@pytest.mark.faults
def test_restart_after_kill9_is_exact(stack, unique, tmp_path):
    """kill -9 the streaming job mid-stream, restart it: results are still exact (no loss, no double count)."""
    log = tmp_path / "access.log"
    env = run_env(stack, unique, tmp_path)
    env["LOGPIPE_MAX_OFFSETS_PER_TRIGGER"] = "20000"   # many small batches, so the kill lands mid-stream
    assert logpipe(env, "generate", "--lines", "200000", "--seed", "11", "--out", str(log)).returncode == 0
    assert logpipe(env, "produce", str(log), "--client", "confluent").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "stream"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # a job that hangs without output is killed after 600 s: its output then ends and the test fails below
    watchdog = threading.Timer(600, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:  # wait until a few batches are committed, then kill the whole process group
            seen.append(line)
            if "ingest  batch 3:" in line:
                break
    finally:
        watchdog.cancel()
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the kill landed mid-stream: batch 3 was committed (of the 10 the 200,000 lines need) and the job still ran
    assert alive and "ingest  batch 3:" in seen[-1], "".join(seen[-30:])
    # the restart drains the rest in large batches (the batch planned before the kill keeps its logged offsets)
    r = logpipe({**env, "LOGPIPE_MAX_OFFSETS_PER_TRIGGER": "500000"}, "stream", "--until-done")
    assert r.returncode == 0, r.stderr[-5000:]
    # its metrics are the root's (every line), its own part beside them; its last line says both
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    run = metrics["this_run"]
    assert metrics["lines"] == 200000 and 0 < run["lines"] < 200000 and 0 < run["batches"] < metrics["batches"]
    assert f"this run {run['lines']:,} lines = " in r.stderr and "(the results root, with earlier runs: 200,000 lines" \
        in r.stderr, r.stderr[-3000:]
    report = verify(env, log, tmp_path / "verify.json")
    assert report["ok"] and report["accounting"]["job_parsed_unique"] == report["accounting"]["parsed"]
    assert report["accounting"]["job_event_rows"] == report["accounting"]["parsed"]  # no event row written twice


@pytest.mark.faults
def test_restarted_producer_duplicates_are_dropped(stack, unique, tmp_path):
    """The producer sends the whole file twice (--reset, as after losing its position): counts stay exact, and
    every parsed line of the second copy is dropped, as a duplicate or (if its first copy is behind the watermark
    by then) as late. The log is in time order, so that the first copy has no late lines of its own."""
    log = tmp_path / "access.log"
    env = run_env(stack, unique, tmp_path)
    assert logpipe(env, "generate", "--lines", "100000", "--seed", "5", "--out-of-order-share", "0",
                   "--out", str(log)).returncode == 0
    assert logpipe(env, "produce", str(log)).returncode == 0
    r = logpipe(env, "produce", str(log), "--reset")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["records"] == 100000
    r = logpipe(env, "stream", "--until-done")
    assert r.returncode == 0, r.stderr[-5000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["lines"] == 200000  # every record read ...
    report = verify(env, log, tmp_path / "verify.json")  # ... but every window counted once
    assert report["ok"]
    assert metrics["duplicates_dropped"] + metrics["late"] == 100000 - report["accounting"]["quarantined"]
    # the same results against a log with lines the job never read (appended since): a mismatch that says why
    grown = tmp_path / "grown.log"
    grown.write_bytes(log.read_bytes() + b'10.0.0.1 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n' * 5)
    r = logpipe(env, "verify", "--log", str(grown), "--json", str(tmp_path / "grown.json"))
    hint = json.loads((tmp_path / "grown.json").read_text())["accounting"]["hint"]
    assert r.returncode == 1 and hint and f"fewer than the 100,005 of {grown}" in hint, r.stdout[-3000:]


def test_a_log_out_of_order_beyond_the_watermark_and_a_line_too_large_for_kafka_verify(stack, unique, tmp_path):
    """Lines minutes older than their neighbours (a merged log): the job keeps them out of its windows as late;
    `verify` takes them out of its batch counts too and is exact, reporting how many it took out. A line over the
    Kafka message limit (one that would parse) is quarantined as too_large, and verify counts it so."""
    from datetime import datetime, timedelta, timezone

    from logpipe import logformat as lf

    log = tmp_path / "access.log"
    # several micro-batches: lines are late against the watermark of the batches before theirs
    env = {**run_env(stack, unique, tmp_path), "LOGPIPE_MAX_OFFSETS_PER_TRIGGER": "4000",
           "LOGPIPE_MAX_MESSAGE_BYTES": "10000"}
    assert logpipe(env, "generate", "--lines", "8000", "--seed", "9", "--out", str(log)).returncode == 0
    start = datetime(2004, 5, 18, tzinfo=timezone.utc)
    late = [lf.format_line(f"10.9.9.{i % 3}", start + timedelta(seconds=i), "GET /late HTTP/1.1",
                           404 if i % 2 else 200, 5).encode() for i in range(40)]
    huge = lf.format_line("10.9.9.9", start + timedelta(hours=1), "GET /" + "a" * 20_000 + " HTTP/1.1", 200, 5)
    assert not isinstance(lf.try_parse_line(huge.encode()), str)  # it parses: only its size quarantines it
    with log.open("ab") as f:
        f.write(b"\n".join(late) + b"\n" + huge.encode() + b"\n")
    r = logpipe(env, "produce", str(log))
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["quarantined"] == 1, r.stderr[-3000:]
    r = logpipe(env, "stream", "--until-done")
    assert r.returncode == 0, r.stderr[-5000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["late"] == 40 and metrics["quarantined_by_reason"].get("too_large") == 1, metrics
    report = verify(env, log, tmp_path / "verify.json")
    assert report["ok"] and report["accounting"]["late_lines_excluded"] == 40
    assert report["accounting"]["quarantined_by_reason"]["too_large"] == 1
    assert report["windows_compared"] > 1000


def test_stream_until_idle_waits_for_the_topic_and_its_records_then_ends_by_itself(stack, unique, tmp_path):
    """`stream --until-idle` started before anything exists: it waits for the topic, then for the first records
    (longer than its idle time), processes them in micro-batches, finishes by itself once none arrive, exact.
    (A job committing batches while the producer still sends: tests/faults, the Kafka restart.)"""
    from logpipe.producer.run import ensure_topic

    log = tmp_path / "access.log"
    env = {**run_env(stack, unique, tmp_path), "LOGPIPE_MAX_OFFSETS_PER_TRIGGER": "40000"}
    assert logpipe(env, "generate", "--lines", "200000", "--seed", "13", "--out", str(log)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "stream", "--until-idle", "3"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(900, lambda: os.killpg(proc.pid, signal.SIGKILL))  # a silent hang ends the read
    watchdog.start()
    seen: list[str] = []

    def read_until(text: str) -> None:
        for line in proc.stdout:
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"the stream ended before {text!r}:\n" + "".join(seen[-30:]))

    try:
        read_until("waiting for topic")
        ensure_topic(stack, env["LOGPIPE_TOPIC"])  # as the producer does when it starts
        read_until("query ingest started")
        time.sleep(4)  # longer than the idle time: waiting for the first records is not idleness
        r = logpipe(env, "produce", str(log), "--client", "confluent")
        assert r.returncode == 0, r.stderr[-3000:]
        out, _ = proc.communicate(timeout=900)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(seen) + out
    assert proc.returncode == 0, text[-5000:]
    assert "no new records for 3s" in text
    metrics = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
    assert metrics["lines"] == 200000 and metrics["batches"] >= 5
    report = verify(env, log, tmp_path / "verify.json")
    assert report["ok"] and report["accounting"]["lines"] == 200000


def test_stream_until_done_on_a_topic_never_produced_to_says_so(stack, unique, tmp_path):
    env = {**run_env(stack, unique, tmp_path), "LOGPIPE_CONNECT_TIMEOUT_S": "2"}
    r = logpipe(env, "stream", "--until-done", timeout=120)
    assert r.returncode == 1
    assert f"topic 'e2e-{unique}'" in r.stderr and "logpipe produce" in r.stderr, r.stderr[-2000:]
