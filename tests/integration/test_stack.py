"""The native stack really works: Kafka round trip, HDFS via WebHDFS, Spark on hdfs:// and Kafka, web UIs."""

from __future__ import annotations

import json
import urllib.request

import pytest

from logpipe import health
from logpipe.topics import read_topic

pytestmark = pytest.mark.integration


def test_kafka_round_trip(stack, unique):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"t-roundtrip-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    sent = [f"line {i} é".encode() for i in range(500)]
    producer = KafkaProducer(bootstrap_servers=stack.kafka_address, acks="all", compression_type="lz4")
    for value in sent:
        producer.send(topic, value)
    producer.flush()
    producer.close()
    got = [m.value for m in read_topic(stack, topic)]
    assert got == sent


def test_hdfs_write_list_read(hdfs_client, stack, unique):
    base = f"/tests/stack-{unique}"
    hdfs_client.write(f"{base}/a.txt", data=b"hello hdfs\n")
    hdfs_client.write(f"{base}/b.txt", data=b"x" * 100_000)
    assert sorted(hdfs_client.list(base)) == ["a.txt", "b.txt"]
    with hdfs_client.read(f"{base}/a.txt") as r:
        assert r.read() == b"hello hdfs\n"
    assert hdfs_client.status(f"{base}/b.txt")["length"] == 100_000
    hdfs_client.delete(base, recursive=True)


def test_spark_parquet_on_hdfs(spark, stack, unique):
    path = stack.hdfs_address + f"/tests/spark-{unique}/numbers"
    df = spark.range(0, 10_000).selectExpr("id", "id % 7 AS k")
    df.write.mode("overwrite").parquet(path)
    back = spark.read.parquet(path)
    assert back.count() == 10_000
    assert back.groupBy("k").count().orderBy("k").collect()[0]["count"] == len([i for i in range(10_000) if i % 7 == 0])


def test_the_broker_makes_no_topic_a_client_merely_names(stack, unique):
    """auto.create.topics.enable=false, as production brokers often run: every topic the pipeline uses is made by
    logpipe itself (the producer's log topic, the job's alerts topic), so nothing works here only by accident."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    topic = f"t-nobody-made-{unique}"
    producer = KafkaProducer(bootstrap_servers=stack.kafka_address, max_block_ms=3000)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(topic, b"x").get(timeout=10)
    finally:
        producer.close(timeout=5)
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_spark_reads_kafka_with_connector(spark, stack, unique):
    from kafka import KafkaProducer

    from logpipe.topics import create_topic

    topic = f"t-spark-{unique}"
    assert create_topic(stack, topic, partitions=1)
    producer = KafkaProducer(bootstrap_servers=stack.kafka_address)
    for i in range(100):
        producer.send(topic, f"v{i}".encode(), headers=[("src", b"test")])
    producer.flush()
    producer.close()
    df = (spark.read.format("kafka").option("kafka.bootstrap.servers", stack.kafka_address)
          .option("subscribe", topic).option("startingOffsets", "earliest").option("includeHeaders", "true").load())
    rows = df.selectExpr("CAST(value AS STRING) AS v", "headers[0].key AS h").collect()
    assert sorted(r.v for r in rows) == sorted(f"v{i}" for i in range(100))
    assert {r.h for r in rows} == {"src"}


def test_namenode_ui_and_webhdfs(stack, hdfs_client, unique):
    hdfs_client.makedirs(f"/tests/ui-{unique}")
    page = urllib.request.urlopen(f"{stack.webhdfs_address}/explorer.html", timeout=10).read()
    assert b"Browse Directory" in page
    listing = json.loads(urllib.request.urlopen(
        f"{stack.webhdfs_address}/webhdfs/v1/tests?op=LISTSTATUS&user.name=tests", timeout=10).read())
    names = {f["pathSuffix"] for f in listing["FileStatuses"]["FileStatus"]}
    assert f"ui-{unique}" in names
    info = health.probe_hdfs(stack.webhdfs_address)
    assert info["Safemode"] == ""


def test_services_listen_on_loopback_only(stack):
    import psutil

    from logpipe.stack import services

    pids = {r["pid"] for r in services.status(stack) if r["running"]}
    if not pids:
        pytest.fail("stack fixture gave no running service we started")
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "our services listen on no socket?"
    bad = [(c.pid, c.laddr) for c in listening if not c.laddr.ip.startswith("127.")]
    assert not bad, f"sockets not on loopback: {bad}"


def test_the_spark_jvm_listens_on_loopback_only(spark):
    """The job's own sockets (driver RPC, block manager, the Spark UI on 4040) are on 127.0.0.1, as the services'
    are: logpipe.spark binds the driver there and sets SPARK_LOCAL_IP (which the UI uses)."""
    import ipaddress

    import psutil

    jvm = spark._jvm.java.lang.ProcessHandle.current().pid()
    listening = [c for c in psutil.Process(jvm).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ui_port = int(spark.sparkContext.uiWebUrl.rsplit(":", 1)[-1])
    assert ui_port in {c.laddr.port for c in listening}, f"not the JVM of the Spark UI: {listening}"
    def loopback(ip: str) -> bool:  # a Java socket may be IPv6 with the IPv4 address mapped (::ffff:127.0.0.1)
        addr = ipaddress.ip_address(ip)
        return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback

    bad = [c.laddr for c in listening if not loopback(c.laddr.ip)]
    assert not bad, f"Spark sockets not on loopback: {bad}"


@pytest.mark.parametrize("service", ["kafka", "hdfs"])
def test_health_command_as_compose_runs_it(stack, service, free_ports):
    """`logpipe health kafka|hdfs` (the producer container's healthcheck): exit 0 on the running stack, exit 1 with
    the address and what to check when nothing answers there."""
    import os
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "logpipe", "health", service, "--timeout", "20"], env=os.environ,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and f"{service}: ready" in ok.stdout, ok.stdout + ok.stderr[-2000:]
    port = free_ports(1)[0]  # nothing listens there
    name, address = (("LOGPIPE_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}") if service == "kafka"
                     else ("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}"))
    down = subprocess.run([sys.executable, "-m", "logpipe", "health", service, "--timeout", "1"],
                          env={**os.environ, name: address}, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and address in down.stderr and "not ready" in down.stderr, down.stderr
    if service == "hdfs":  # as compose's hdfs-ready runs it: the DataNode asked too
        dn = subprocess.run([sys.executable, "-m", "logpipe", "health", "hdfs", "--datanode", "127.0.0.1",
                             "--timeout", "20"], env=os.environ, capture_output=True, text=True, timeout=60)
        assert dn.returncode == 0 and "hdfs: ready" in dn.stdout, dn.stdout + dn.stderr[-2000:]


def test_spark_starts_from_the_aot_cache_stack_up_trained(stack, tmp_path, ci_expects_aot_cache):
    """`stack up` trains an AOT cache for Spark's JVM (Java 25+) with a real stream run; a Spark start is then
    given it, and the JVM takes it without a word (one it refused, e.g. made for another classpath, would print
    `[aot]` errors). Where Spark's Java is older, there is none and no option."""
    import os
    import subprocess
    import sys

    from logpipe.stack.aot import aot_cache_file, ensure_aot_cache

    path = aot_cache_file(stack)  # None: Spark's Java is older than 25, which has no AOT cache
    trained_by_up = path is not None and path.is_file()  # before anything here could make it
    made = ensure_aot_cache(stack, progress=lambda m: None)
    assert made == path
    assert path is None or trained_by_up, f"`stack up` left no AOT cache at {path} (see the warning it logged)"
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from logpipe.config import load_settings\nfrom logpipe.spark import build_spark\n"
            "spark = build_spark(load_settings(), 'aot-test', kafka=False)\n"
            "print('rows', spark.range(1000).count())\nspark.stop()\n")
    r = subprocess.run([sys.executable, "-c", code], env=os.environ, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0 and "rows 1000" in r.stdout, r.stderr[-3000:]
    if path is None:
        # CI's machine has Java 25 (conftest.ci_expects_aot_cache): there this branch would pass untested
        assert not ci_expects_aot_cache, "CI found no AOT cache for Spark's Java 25: the cache went untested"
        assert "AOTCache" not in r.stderr
        return
    assert path.is_file() and path.stat().st_size > 50 * 2**20  # Spark's classes: ~220 MiB here
    assert f"-XX:AOTCache={path}" in r.stderr
    assert "[aot]" not in r.stdout + r.stderr, r.stderr[-3000:]
