"""`logpipe demo` keeps a root's results while they come from the same log, and starts over for another one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logpipe.config import Settings

pytestmark = pytest.mark.integration


def _topics(s: Settings) -> set[str]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_results_of_the_same_log_are_kept_and_another_log_starts_over(stack, unique, tmp_path: Path, hdfs_client):
    """Same log and settings: the root, the topic and the producer's positions stay (a second `make demo` adds
    nothing). Other settings, or another log (e.g. the sample made again): all three are dropped first, so two
    runs' results never mix."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from logpipe.commands.demo import fresh_results_for
    from logpipe.root_record import ROOT_SETTINGS
    from logpipe.topics import create_topic, delete_topics, topic_id

    s = stack.with_overrides(topic=f"demo-{unique}", alerts_topic=f"alerts-{unique}",
                             hdfs_root=f"/tests/demo-{unique}", producer_state_dir=str(tmp_path / "pos"))
    first, other = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(b"1.2.3.4 - - [2004-05-18 05:58:48] \"GET / HTTP/1.1\" 200 1\n")
    other.write_bytes(b"5.6.7.8 - - [2004-05-18 05:58:48] \"GET / HTTP/1.1\" 200 1\n")
    fresh_results_for(s, first)  # a new root: marked as the first log's
    results = f"{s.hdfs_root}/events/b0000000000-00000.parquet"
    hdfs_client.write(results, data=b"results", overwrite=True)
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address)
    try:
        admin.create_topics([NewTopic(s.topic, 1, 1)])
    finally:
        admin.close()
    position = tmp_path / "pos" / s.topic / "1-2.json"
    position.parent.mkdir(parents=True)
    position.write_text("{}")

    fresh_results_for(s, first)
    assert hdfs_client.status(results, strict=False) is not None and s.topic in _topics(s) and position.exists()
    # the settings the job records, all the same as the demo's: kept too
    recorded = {k: getattr(s, k) for k in ROOT_SETTINGS}
    hdfs_client.write(f"{s.hdfs_root}/_commits/job.json", overwrite=True, data=json.dumps(recorded))
    fresh_results_for(s, first)
    assert hdfs_client.status(results, strict=False) is not None and s.topic in _topics(s) and position.exists()

    # the topic the job read, recorded on the root by its id: kept while it is the same topic; deleted and made
    # again (the checkpoint's offsets mean nothing there, and `logpipe stream` refuses the root), the demo starts over
    hdfs_client.write(f"{s.hdfs_root}/_commits/job.json", overwrite=True,
                      data=json.dumps({**recorded, "topic_id": topic_id(s, s.topic)}))
    fresh_results_for(s, first)
    assert hdfs_client.status(results, strict=False) is not None and s.topic in _topics(s) and position.exists()
    delete_topics(s, [s.topic])
    create_topic(s, s.topic, 1)
    fresh_results_for(s, first)
    assert hdfs_client.status(results, strict=False) is None and not position.parent.exists()
    assert s.topic not in _topics(s)  # the producer makes it again with the demo's lines
    hdfs_client.write(results, data=b"results", overwrite=True)
    position.parent.mkdir(parents=True)
    position.write_text("{}")

    # the same log, but results made with another rate-limit ceiling (`logpipe stream` would refuse to add to them)
    hdfs_client.write(f"{s.hdfs_root}/_commits/job.json", overwrite=True,
                      data=json.dumps({**recorded, "rate_limit_ceiling": s.rate_limit_ceiling + 1}))
    fresh_results_for(s, first)
    assert hdfs_client.status(results, strict=False) is None and not position.parent.exists()

    hdfs_client.write(results, data=b"results", overwrite=True)
    fresh_results_for(s, other)
    assert hdfs_client.status(results, strict=False) is None
    assert s.topic not in _topics(s) and not position.parent.exists()
    with hdfs_client.read(f"{s.hdfs_root}/_source.json") as f:
        assert json.loads(f.read())["log"] == str(other.resolve())

    # the same bytes at the same path, made again (a new inode, as `generate` makes it): the producer would send
    # every line again as a new source, all late on the old results, so the demo starts over
    hdfs_client.write(results, data=b"results", overwrite=True)
    again = other.with_suffix(".new")
    again.write_bytes(other.read_bytes())
    again.replace(other)
    fresh_results_for(s, other)
    assert hdfs_client.status(results, strict=False) is None


def test_the_demo_does_not_start_over_on_a_root_a_running_job_holds(stack, unique, tmp_path: Path, hdfs_client):
    """A root the demo must start over on (another log), whose lease a live streaming run holds: the demo stops
    with a message naming that run, and deletes nothing. A lease left by a process that is gone does not stop
    it."""
    import os
    import socket
    import subprocess
    import sys

    from logpipe.commands.demo import fresh_results_for

    s = stack.with_overrides(topic=f"demo-{unique}", alerts_topic=f"alerts-{unique}",
                             hdfs_root=f"/tests/demo-{unique}", producer_state_dir=str(tmp_path / "pos"))
    first, other = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(b"1.2.3.4 - - [2004-05-18 05:58:48] \"GET / HTTP/1.1\" 200 1\n")
    other.write_bytes(b"5.6.7.8 - - [2004-05-18 05:58:48] \"GET / HTTP/1.1\" 200 1\n")
    fresh_results_for(s, first)
    results = f"{s.hdfs_root}/events/b0000000000-00000.parquet"
    hdfs_client.write(results, data=b"results", overwrite=True)
    lease = f"{s.hdfs_root}/_commits/lease.json"
    hdfs_client.write(lease, overwrite=True, data=json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with pytest.raises(SystemExit, match=f"process {os.getpid()} on"):
        fresh_results_for(s, other)
    assert hdfs_client.status(results, strict=False) is not None

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    hdfs_client.write(lease, overwrite=True, data=json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    fresh_results_for(s, other)
    assert hdfs_client.status(results, strict=False) is None


def test_the_demo_does_not_delete_results_or_topics_it_did_not_make(stack, unique, tmp_path: Path, hdfs_client):
    """A root holding `logpipe stream` results (no `_source.json`: not the demo's), or a topic filled by hand
    while the root is empty: the demo exits naming what it would delete, and deletes nothing; with --fresh it
    starts over."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from logpipe.commands.demo import fresh_results_for

    s = stack.with_overrides(topic=f"demo-{unique}", alerts_topic=f"alerts-{unique}",
                             hdfs_root=f"/tests/demo-{unique}", producer_state_dir=str(tmp_path / "pos"))
    log = tmp_path / "a.log"
    log.write_bytes(b"1.2.3.4 - - [2004-05-18 05:58:48] \"GET / HTTP/1.1\" 200 1\n")
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address)
    try:
        admin.create_topics([NewTopic(s.topic, 1, 1)])
    finally:
        admin.close()
    with pytest.raises(SystemExit, match=f"would delete the Kafka topic {s.topic}: .*--fresh"):
        fresh_results_for(s, log)
    assert s.topic in _topics(s)
    results = f"{s.hdfs_root}/_commits/ingest/b0000000000.json"
    hdfs_client.write(results, data=b"{}", overwrite=True)
    with pytest.raises(SystemExit, match=f"the HDFS root {s.hdfs_root} \\(results: not made by the demo\\)"):
        fresh_results_for(s, log)
    assert hdfs_client.status(results, strict=False) is not None and s.topic in _topics(s)
    # a root holding anything else (kept bench runs one level down, a user's folder) is not the demo's either:
    # it was deleted without --fresh
    hdfs_client.delete(f"{s.hdfs_root}/_commits", recursive=True)
    kept = f"{s.hdfs_root}/20261205T055753-2.50GB/_commits/ingest/b0000000000.json"
    hdfs_client.write(kept, data=b"{}", overwrite=True)
    with pytest.raises(SystemExit, match=f"the HDFS root {s.hdfs_root} \\(holding 20261205T055753-2.50GB: not made "
                                         "by the demo\\)"):
        fresh_results_for(s, log)
    assert hdfs_client.status(kept, strict=False) is not None
    fresh_results_for(s, log, fresh=True)
    assert hdfs_client.status(kept, strict=False) is None and s.topic not in _topics(s)
    fresh_results_for(s, log)  # the demo's own root now: kept, no question asked
    assert hdfs_client.status(f"{s.hdfs_root}/_source.json", strict=False) is not None
