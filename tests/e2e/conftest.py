"""Fixtures of the end-to-end tests: real pipeline results (`logpipe demo`) in a unique topic and HDFS root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT, Settings

DEMO_SIZE = "7MB"  # ~60,000 lines, ~10 minutes of log time at the generator's default rate, with planted incidents


@dataclass(frozen=True)
class DemoResults:
    """One pipeline run: its settings (unique topic and hdfs_root), the replayed log and step timings."""

    settings: Settings
    log: Path
    seconds: dict[str, float]
    verified: dict  # verify's report of the run


def _step(name: str, args: list[str], env: dict[str, str], log_dir: Path, timeout: float) -> float:
    out = log_dir / f"{name}.log"
    started = time.monotonic()
    with out.open("wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "logpipe", *args], env=env, cwd=PROJECT_ROOT,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = out.read_text(errors="replace")[-4000:]
        pytest.fail(f"`logpipe {' '.join(args)}` failed with exit code {proc.returncode}:\n{tail}")
    return time.monotonic() - started


@pytest.fixture(scope="session")
def demo_results(stack: Settings, tmp_path_factory: pytest.TempPathFactory,
                 delete_test_data: Callable[[Settings, str], None]) -> Iterator[DemoResults]:
    """Real results on HDFS from the README's main job, `logpipe demo` (stack up, generate a sample, produce,
    stream --until-done, verify, summary), into a unique Kafka topic, alerts topic and HDFS root (the shared
    stack's /logpipe is never touched). Its summary must say that verify was exact and account for every line."""
    unique = uuid.uuid4().hex[:10]
    s = stack.with_overrides(topic=f"e2e-{unique}", alerts_topic=f"alerts-{unique}", hdfs_root=f"/tests/e2e-{unique}")
    work = tmp_path_factory.mktemp("demo-results")
    log = work / "access.log"  # missing: the demo generates it
    env = {**os.environ, "LOGPIPE_TOPIC": s.topic, "LOGPIPE_ALERTS_TOPIC": s.alerts_topic,
           "LOGPIPE_HDFS_ROOT": s.hdfs_root, "LOGPIPE_PRODUCER_STATE_DIR": str(work / "producer-state")}
    report = work / "verify.json"
    seconds = {"demo": _step("demo", ["demo", "--log", str(log), "--size", DEMO_SIZE, "--seed", "11",
                                      "--report", str(report)], env, work, timeout=1800)}
    truth = json.loads(log.with_name(log.name + ".truth.json").read_text())
    verified = json.loads(report.read_text())
    assert verified["ok"] and verified["accounting"]["lines"] == truth["total_lines"] > 50_000, verified
    assert verified["truth"]["recall"] == 1.0 and verified["truth"]["false_positives"] == 0, verified["truth"]
    summary = (work / "demo.log").read_text(errors="replace")
    acc = verified["accounting"]
    assert f"verify: exact ({verified['windows_compared']:,} window counts compared)" in summary, summary[-3000:]
    assert (f"lines read {acc['lines']:,} = parsed {acc['parsed']:,} + quarantined {acc['quarantined']:,}"
            in summary), summary[-3000:]
    yield DemoResults(settings=s, log=log, seconds=seconds, verified=verified)
    if os.environ.get("LOGPIPE_KEEP_RESULTS") != "1":  # keep them for a look with LOGPIPE_KEEP_RESULTS=1
        delete_test_data(s, unique)  # its topics and HDFS root
