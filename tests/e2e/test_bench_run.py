"""`logpipe bench` end to end on a small log: every stage runs and is verified, the row is written, and the run's
Kafka topics and HDFS folders are removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_small_bench_measures_verifies_and_removes_its_data(stack, hdfs_client, tmp_path, unique):
    from kafka.admin import KafkaAdminClient

    from logpipe.producer.position import PositionStore

    md = tmp_path / "benchmarks.md"
    positions = tmp_path / "positions"
    # bench names its topics (alerts topics too) and HDFS folders by --name and the time; the positions are this
    # test's. An alerts topic set outside is not the run's: bench gives each run its own
    env = {**os.environ, "LOGPIPE_ALERTS_TOPIC": f"alerts-{unique}", "LOGPIPE_PRODUCER_STATE_DIR": str(positions)}
    # relative paths, from a folder other than the project's (where the stages run): the same places for all
    r = subprocess.run([sys.executable, "-m", "logpipe", "bench", "--size", "4MB", "--no-reference",
                        "--name", f"tests/bench-{unique}", "--data-dir", "data", "--out-dir", "results",
                        "--markdown", md.name],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    (result_file,) = (tmp_path / "results").glob("run-*/result.json")
    result = json.loads(result_file.read_text())
    log = tmp_path / "data" / "bench-4MB-seed1.log"
    assert result["lines"] == sum(1 for _ in log.open("rb")) > 10_000
    # every setting as the stages ran with it, the ones bench gives them too (the settings alone said kafka-python
    # and the alerts topic of the environment)
    ran = result["all_settings"]
    assert (ran["producer_client"], ran["topic"], ran["alerts_topic"], ran["hdfs_root"]) == (
        result["client"], result["topic"], result["topic"] + "-alerts", result["hdfs_root"])
    assert f"results and each stage's output (<stage>.log) in {result_file.parent}" in r.stderr
    stages = {st["stage"]: st for st in result["stages"]}
    assert {"generate", "produce", "stream", "verify", "verify-pipeline"} <= stages.keys()
    assert result["verify"]["ok"] and result["verify_pipeline"]["ok"]
    # the rates are of the file's lines: each run's job read them all, counted by the job and by verify's own parse
    for run in ("verify", "verify_pipeline"):
        acc = result[run]["accounting"]
        assert acc["job_records_read"] == acc["lines"] == result["lines"] == acc["parsed"] + acc["quarantined"], acc
    assert result["end_to_end"]["stage"] == "end-to-end (produce and stream at once)"
    assert "| exact |" in md.read_text().splitlines()[-1]

    # each run's alerts went to a topic of its own (the job made it), which held exactly that run's alerts, once
    # each. A log this small has no planted incidents, so none: that alerts do reach Kafka, each once, is
    # tests/e2e/test_pipeline.py's to show; here, that each run read its own topic
    for run, alerts_topic in (("verify", result["topic"] + "-alerts"),
                              ("verify_pipeline", result["topic"] + "-pipeline-alerts")):
        kafka = result[run]["alerts"]["kafka"]
        assert kafka["topic"] == alerts_topic and kafka["ok"] and "error" not in kafka, kafka
        assert (kafka["missing"], kafka["copies"], kafka["other_alerts"]) == (0, 0, 0), kafka
        assert kafka["published"] == result[run]["alerts"]["raised"], result[run]["alerts"]

    assert result["run_data"] == "deleted"
    topics = [result["topic"] + suffix for suffix in ("", "-alerts", "-pipeline", "-pipeline-alerts")]
    assert result["hdfs_root"].startswith(f"/tests/bench-{unique}/") and f"bench-{unique}" in result["topic"]
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    try:
        left = set(topics) & set(admin.list_topics())  # drop_run_data waits until the broker no longer lists them
    finally:
        admin.close()
    assert not left, f"topics still there: {left}"
    for root in (result["hdfs_root"], result["hdfs_root"] + "-pipeline"):
        assert hdfs_client.status(root, strict=False) is None, root
    assert positions.is_dir()  # the producer saved its positions there, and they went with the topics
    assert not any(PositionStore(positions, t).directory.exists() for t in topics), list(positions.iterdir())
