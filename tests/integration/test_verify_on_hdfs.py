"""`logpipe verify` against the real HDFS: a root without the job's results is said so, not reported as a mismatch
of every window."""

from __future__ import annotations

import json
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
    """verify reads the alerts topic from its start: an alert of alerts/ that was never published fails, and so
    does a record under an alert's id that is not that alert; one sent twice (at least once) and another root's
    alert are reported, not failed."""
    import pandas as pd
    from kafka import KafkaProducer

    from logpipe.topics import create_topic
    from logpipe.verify import check_alerts_on_kafka

    s = stack.with_overrides(alerts_topic=f"alerts-{unique}")
    t0 = pd.Timestamp("2004-05-18 00:13:00", tz="UTC")
    alerts = pd.DataFrame({"rule": ["rate_limit", "failure_surge"], "key": ["203.0.113.2", "404"],
                           "window_start": [t0, t0], "window_end": [t0 + pd.Timedelta(20, "s")] * 2,
                           "count": [620, 2201], "share": [None, 0.8125], "threshold": [200, 50],
                           "top_hosts": [["203.0.113.2"], ["198.51.100.2", "23.197.167.1"]], "alert_id": ["a1", "a2"],
                           "detected_at": [pd.Timestamp("2026-12-03 15:12:18.780369", tz="UTC")] * 2})

    def as_published(i: int, **change: object) -> bytes:  # as the job's to_json writes it
        row = {**alerts.iloc[i].to_dict(), **change}
        for k in ("window_start", "window_end", "detected_at"):
            row[k] = row[k].strftime("%Y-%m-%dT%H:%M:%S.") + f"{row[k].microsecond // 1000:03d}Z"
        row["share"] = None if pd.isna(row["share"]) else row["share"]
        return json.dumps({k: v.item() if hasattr(v, "item") else v for k, v in row.items()}).encode()

    r = check_alerts_on_kafka(s, alerts, timeout_s=20)  # no such topic yet: nothing published, and said why
    assert (r["missing"], r["ok"]) == (2, False), r
    assert f"topic {s.alerts_topic} does not exist" in r["error"]
    assert check_alerts_on_kafka(s, alerts.iloc[:0], timeout_s=20)["ok"]  # no alert to find: no topic needed
    create_topic(s, s.alerts_topic, partitions=1)  # as the job does when it starts
    producer = KafkaProducer(bootstrap_servers=s.kafka_address)
    for key, value in (("a1", as_published(0)), ("a1", as_published(0)), ("a2", as_published(1)), ("other", b"{}")):
        producer.send(s.alerts_topic, key=key.encode(), value=value)
    producer.flush()
    r = check_alerts_on_kafka(s, alerts, timeout_s=20)
    assert (r["missing"], r["copies"], r["other_alerts"], r["wrong_payload"], r["ok"]) == (0, 1, 1, 0, True), r
    r = check_alerts_on_kafka(s, pd.concat([alerts.iloc[:1], pd.DataFrame({"alert_id": ["a3"]})]), timeout_s=20)
    assert (r["missing"], r["examples_missing"], r["ok"]) == (1, ["a3"], False), r
    # a record under an alert's key unlike that alert, beside one equal to it: another root's alert of the same
    # window (the same log on another root, a shared topic: its own counts and detected_at), reported only
    producer.send(s.alerts_topic, key=b"a2", value=as_published(1, count=7))
    producer.flush()
    r = check_alerts_on_kafka(s, alerts, timeout_s=20)
    assert (r["missing"], r["wrong_payload"], r["other_roots_records"], r["ok"]) == (0, 0, 1, True), r
    # an alert whose every record is unlike it fails: the ids alone proved nothing
    producer.send(s.alerts_topic, key=b"a3", value=as_published(1, alert_id="a3", count=7))
    producer.flush()
    producer.close()
    r = check_alerts_on_kafka(s, pd.concat([alerts, alerts.iloc[1:].assign(alert_id="a3")], ignore_index=True),
                              timeout_s=20)
    assert (r["missing"], r["wrong_payload"], r["ok"]) == (0, 1, False), r
    assert r["examples_wrong"][0]["alert_id"] == "a3" and r["examples_wrong"][0]["differs"] == [
        "count 7 (alerts/ has 2201)"], r


def test_the_results_reader_tells_a_missing_path_from_a_namenode_that_does_not_answer(stack, unique, free_ports):
    """On the real NameNode, a path that is not there does not exist and one that is does; a NameNode that does
    not answer is an error, not a missing path (fsspec's own exists() says False for any error, and every table
    then read as missing)."""
    import requests

    from logpipe.results import webhdfs_fs

    fs = webhdfs_fs(stack)
    fs.makedirs(f"/tests/exists-{unique}", exist_ok=True)
    try:
        assert fs.exists(f"/tests/exists-{unique}") and not fs.exists(f"/tests/exists-{unique}/nothing-here")
    finally:
        fs.rm(f"/tests/exists-{unique}", recursive=True)
    gone = webhdfs_fs(stack.with_overrides(webhdfs_url=f"http://127.0.0.1:{free_ports(1)[0]}"))
    with pytest.raises(requests.ConnectionError):
        gone.exists(f"/tests/exists-{unique}")
