"""`logpipe verify` against the real HDFS: a root without the job's results is said so, not reported as a mismatch
of every window."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_a_root_without_results_says_so(stack, unique, tmp_path):
    import os

    log = tmp_path / "access.log"
    log.write_bytes(b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n')
    r = subprocess.run([sys.executable, "-m", "logpipe", "verify", "--log", str(log), "--hdfs-root",
                        f"/tests/never-streamed-{unique}"], env=os.environ, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"no results of the streaming job under /tests/never-streamed-{unique}" in r.stderr
    assert "logpipe stream --until-done" in r.stderr and "Traceback" not in r.stderr


def test_every_committed_alert_must_be_on_the_kafka_alerts_topic(stack, unique):
    """verify reads the alerts topic from its start: an alert of alerts/ that was never published fails; one sent
    twice (at least once) and another root's alert are reported, not failed."""
    import pandas as pd
    from kafka import KafkaProducer

    from logpipe.topics import create_topic
    from logpipe.verify import check_alerts_on_kafka

    s = stack.with_overrides(alerts_topic=f"alerts-{unique}")
    alerts = pd.DataFrame({"alert_id": ["a1", "a2"]})
    r = check_alerts_on_kafka(s, alerts, timeout_s=20)  # no such topic yet: nothing published, and said why
    assert (r["missing"], r["ok"]) == (2, False), r
    assert f"topic {s.alerts_topic} does not exist" in r["error"]
    assert check_alerts_on_kafka(s, alerts.iloc[:0], timeout_s=20)["ok"]  # no alert to find: no topic needed
    create_topic(s, s.alerts_topic, partitions=1)  # as the job does when it starts
    producer = KafkaProducer(bootstrap_servers=s.kafka_address)
    for key in ("a1", "a1", "a2", "other"):
        producer.send(s.alerts_topic, key=key.encode(), value=b"{}")
    producer.flush()
    producer.close()
    r = check_alerts_on_kafka(s, alerts, timeout_s=20)
    assert (r["missing"], r["copies"], r["other_alerts"], r["ok"]) == (0, 1, 1, True), r
    r = check_alerts_on_kafka(s, pd.DataFrame({"alert_id": ["a1", "a3"]}), timeout_s=20)
    assert (r["missing"], r["examples_missing"], r["ok"]) == (1, ["a3"], False), r
