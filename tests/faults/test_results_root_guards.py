"""One results root, one run, one set of settings: what `logpipe stream` refuses, on the real stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logpipe.config import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _env(stack: Settings, unique: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LOGPIPE_TOPIC": f"g-{unique}", "LOGPIPE_HDFS_ROOT": f"/tests/guards-{unique}",
            "LOGPIPE_ALERTS_TOPIC": f"alerts-{unique}", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "positions"),
            **extra}


def _logpipe(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logpipe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _lines(n: int) -> bytes:
    return b"".join(f'10.0.0.{i % 9} - - [2004-05-18 00:{i // 60 % 60:02d}:{i % 60:02d}] "GET /p{i} HTTP/1.1" 200 '
                    f'{i}\n'.encode() for i in range(n))


def test_a_second_run_on_a_root_in_use_is_refused(stack, unique, tmp_path, hdfs_client):
    """While one `logpipe stream` runs, a second on the same root exits 1 with one line naming the first; it
    writes nothing (before the lease, its start-up cleanup deleted the first run's batch in progress)."""
    env = _env(stack, unique, tmp_path)
    log = tmp_path / "a.log"
    log.write_bytes(_lines(2000))
    assert _logpipe(env, "produce", str(log)).returncode == 0
    out = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "logpipe", "stream"], env=env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        root = env["LOGPIPE_HDFS_ROOT"]
        deadline = time.monotonic() + 240
        while not hdfs_client.status(f"{root}/_commits/ingest/b0000000000.json", strict=False):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1)
        second = _logpipe(env, "stream", "--until-done")
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"another streaming run writes to" in second.stderr and f"process {first.pid} on" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(300)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert not hdfs_client.status(f"{env['LOGPIPE_HDFS_ROOT']}/_commits/lease.json", strict=False)  # released
    # the root is free again: the same settings finish it, and verify is exact
    done = _logpipe(env, "stream", "--until-done")
    assert done.returncode == 0, done.stderr[-3000:]
    v = _logpipe(env, "verify", "--log", str(log))
    assert v.returncode == 0, v.stdout[-3000:]


def test_other_settings_or_a_lost_checkpoint_are_refused(stack, unique, tmp_path, hdfs_client):
    """A root holds results of one window, slide, watermark and topic: a run with another value is refused
    (a longer watermark would move the horizon back and write final windows again); so is a root whose Spark
    checkpoint was deleted (the batch ids would start at 0 again and new records be skipped as committed)."""
    env = _env(stack, unique, tmp_path)
    log = tmp_path / "a.log"
    log.write_bytes(_lines(500))
    assert _logpipe(env, "produce", str(log)).returncode == 0
    assert _logpipe(env, "stream", "--until-done").returncode == 0
    assert _logpipe({**env, "LOGPIPE_TOPIC": f"other-{unique}"}, "produce", str(log)).returncode == 0
    for flag, value, shown in (("--watermark", "2 minutes", "watermark '30 seconds' there, '2 minutes' now"),
                               ("--window", "1 minute", "window '20 seconds' there, '1 minute' now"),
                               ("--topic", f"other-{unique}", f"topic 'g-{unique}' there, 'other-{unique}' now")):
        r = _logpipe(env, "stream", "--until-done", flag, value)
        assert r.returncode == 1 and "holds results made with other settings" in r.stderr, r.stderr[-3000:]
        assert shown in r.stderr and "Traceback" not in r.stderr
    assert _logpipe(env, "stream", "--until-done", "--watermark", "30s").returncode == 2  # not a Spark interval
    same = _logpipe(env, "stream", "--until-done", "--watermark", "30 second")  # the same, spelled otherwise
    assert same.returncode == 0, same.stderr[-3000:]
    hdfs_client.delete(f"{env['LOGPIPE_HDFS_ROOT']}/_checkpoints", recursive=True)
    r = _logpipe(env, "stream", "--until-done")
    assert r.returncode == 1 and "checkpoint" in r.stderr and "is gone" in r.stderr, r.stderr[-3000:]
