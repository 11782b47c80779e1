"""Builds the SparkSession: local mode by default, Kafka connector jars on spark.jars, UTC, driver on loopback."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from logpipe.config import Settings
from logpipe.stack.jars import spark_kafka_jars
from logpipe.stack.java import spark_java_home
from logpipe.stack.layout import Layout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


# the Spark JVM's logging: one line per warning or error on stderr, the whole text in spark_log_file
SPARK_LOG4J = Path(__file__).with_name("spark-log4j2.properties")

# How long the HDFS client waits before asking the NameNode again whether a file it closes (or the block before the
# one it starts) is stored. The NameNode learns it from the DataNode's report, a few milliseconds after the last
# write; the client asks at once and, when too early, sleeps Hadoop's default 400 ms (doubling, 5 times) before
# asking again. 20 small files written one after the other took 0.02 s or 0.42 s each (half of them slept), all
# 0.02 s from 20 ms. A stream over the 1 GB topic has 7-33 such closes (task Parquet files, commit markers, Spark's
# checkpoint files; the NameNode logs each: "COMMITTED but not COMPLETE"), several on the batch's critical path.
# From 20 ms, doubling 10 times, the client still waits 20.5 s in all before a close fails (the default: 12.4 s).
HDFS_CLOSE_RETRY = {"spark.hadoop.dfs.client.block.write.locateFollowingBlock.initial.delay.ms": "20",
                    "spark.hadoop.dfs.client.block.write.locateFollowingBlock.retries": "10"}


def spark_log_file(s: Settings) -> Path:
    """Where the Spark JVM writes its warnings and errors whole, with stack traces (stderr gets one line each)."""
    return Layout(s.run_dir).log_file("spark")


def spark_conf(s: Settings, app_name: str = "logpipe", *, kafka: bool = True) -> dict[str, str]:
    """The Spark configuration logpipe uses (also handy for spark-submit in containers)."""
    conf = {
        "spark.app.name": app_name,
        "spark.master": s.spark_master,
        "spark.driver.memory": s.spark_driver_memory,
        "spark.driver.host": s.bind_host,
        "spark.driver.bindAddress": s.bind_host,
        "spark.ui.port": str(s.spark_ui_port),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.sql.adaptive.enabled": "false",  # not used by streaming; keeps batch plans comparable
        "spark.hadoop.fs.defaultFS": s.hdfs_address,
        "spark.hadoop.dfs.replication": str(s.hdfs_replication),
        # one DataNode: never try to replace it in a write pipeline
        "spark.hadoop.dfs.client.block.write.replace-datanode-on-failure.policy": "NEVER",
        "spark.hadoop.dfs.client.use.datanode.hostname": "true",
        **HDFS_CLOSE_RETRY,
        "spark.sql.parquet.compression.codec": s.parquet_codec,
        # timestamps as Parquet's INT64 TIMESTAMP(MICROS, UTC), not Spark's default INT96 (deprecated by Parquet):
        # INT64 columns carry min/max statistics, so a reader that filters on time (a Spark query, an Arrow
        # dataset filter) can skip row groups and files. Tables holding older INT96 files read the same in Spark
        # and Arrow (one type per file). The batch reference writes the same: 1 GB, no difference in its time
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.showConsoleProgress": "false",
    }
    # default the throughput collector: the jobs are batch-like and a pause is harmless. Measured, 1 GB topic, two
    # runs each: stream 138-141 s / 246-256 CPU s with G1 (Java's default), 131-133 s / 233 CPU s with it; batch
    # reference 62.8 -> 60.9 s. In local mode the driver JVM is the executor.
    if s.spark_driver_java_options.strip():
        conf["spark.driver.extraJavaOptions"] = s.spark_driver_java_options.strip()
    # logging (SPARK_LOG4J): before the setting's options, which may replace it
    conf["spark.driver.defaultJavaOptions"] = (f"-Dlog4j2.configurationFile={SPARK_LOG4J.as_uri()} "
                                               f"-Dlogpipe.spark.log=\"{spark_log_file(s)}\"")
    if kafka and s.spark_kafka_jars:
        conf["spark.jars"] = s.spark_kafka_jars
    return conf


def set_spark_local_ip(s: Settings) -> str:
    """Set SPARK_LOCAL_IP, the address the Spark UI listens on (0.0.0.0 without it), to spark_ui_host (default
    bind_host: loopback, as every native service). A value already in the environment (a user's shell on a
    machine with several interfaces) is replaced, with a warning: it would put the UI on another interface."""
    ui_host = s.spark_ui_host or s.bind_host
    before = os.environ.get("SPARK_LOCAL_IP")
    if before not in (None, ui_host):
        log.warning("SPARK_LOCAL_IP=%s in the environment is not used: the Spark UI listens on %s "
                    "(LOGPIPE_SPARK_UI_HOST sets that address)", before, ui_host)
    os.environ["SPARK_LOCAL_IP"] = ui_host
    return ui_host


def build_spark(s: Settings, app_name: str = "logpipe", *, kafka: bool = True,
                extra: dict[str, str] | None = None, aot_output: Path | None = None) -> "SparkSession":
    """A SparkSession for logpipe. Resolves the connector jars with mvn on first use (native stack). A new JVM
    starts from the AOT cache `stack up` made (logpipe.stack.aot), if there is one; with aot_output, it records
    one instead and writes it there as it exits (the training run)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from logpipe.stack.aot import aot_java_option

    if kafka and not s.spark_kafka_jars:
        s = s.with_overrides(spark_kafka_jars=",".join(spark_kafka_jars(Layout(s.run_dir).jars)))
    # PySpark turns collected timestamps into naive datetimes, and datetimes back, in the process's local zone
    # (fromtimestamp/mktime): outside UTC, the job's stored cutoffs and alert windows would shift by the offset, an
    # hour at a daylight-saving change. logpipe's times are UTC, so the driver process (and its JVM) runs in UTC.
    if os.environ.get("TZ") != "UTC":
        os.environ["TZ"] = "UTC"
        time.tzset()
    # Hadoop's client takes its user from HADOOP_USER_NAME: LOGPIPE_HDFS_USER, when set, wins over one inherited
    # (the same user as the job's WebHDFS calls); else an inherited one stands, else the login name
    if s.hdfs_user:
        os.environ["HADOOP_USER_NAME"] = s.hdfs_user
    else:
        os.environ.setdefault("HADOOP_USER_NAME", s.hdfs_user_name)
    set_spark_local_ip(s)
    spark_log_file(s).parent.mkdir(parents=True, exist_ok=True)
    # Spark's Python workers (a DataFrame made from Python rows is unpickled by one) run this interpreter, not
    # whatever `python3` is first on PATH, which may be another version than the driver's (Spark refuses that)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = {**spark_conf(s, app_name, kafka=kafka), **(extra or {})}
    aot = None
    if SparkContext._gateway is None:  # JVM options count only when the JVM starts
        aot = f"-XX:AOTCacheOutput={aot_output}" if aot_output is not None else aot_java_option(s)
    if aot:
        conf["spark.driver.extraJavaOptions"] = f"{conf.get('spark.driver.extraJavaOptions', '')} {aot}".strip()
    builder = SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    if SparkContext._active_spark_context is not None:  # the JVM runs already: its session, with these settings
        spark = builder.getOrCreate()
        plain_keyboard_interrupt()
        if kafka and not spark.sparkContext.getConf().get("spark.jars", ""):
            raise RuntimeError("a SparkSession without the Kafka connector runs in this process already (built "
                               "with kafka=False), and a running JVM cannot take jars: build the first session "
                               "with kafka=True, or stop it first")
    else:
        # pyspark starts the JVM from JAVA_HOME: Spark's Java while it starts, then as it was (the services and
        # other child processes keep theirs)
        java_home, _ = spark_java_home(s)
        saved = os.environ.get("JAVA_HOME")
        if saved and os.path.realpath(saved) != os.path.realpath(java_home):
            log.info("JAVA_HOME is %s; Spark runs on %s, the newest Java it supports here "
                     "(LOGPIPE_SPARK_JAVA_HOME pins one)", saved, java_home)
        os.environ["JAVA_HOME"] = java_home
        try:
            spark = builder.getOrCreate()
            plain_keyboard_interrupt()
        finally:
            if saved is None:
                os.environ.pop("JAVA_HOME", None)
            else:
                os.environ["JAVA_HOME"] = saved
        jvm = spark._jvm.System
        log.info("Spark %s on Java %s (%s)%s", spark.version, jvm.getProperty("java.version"),
                 jvm.getProperty("java.home"), f", {aot}" if aot else "")
        if aot_output is None:  # a training JVM is stopped as before: its cache is written as it exits
            leave_termination_to_python(spark)
    spark.sparkContext.setLogLevel("WARN")
    return spark


def plain_keyboard_interrupt() -> None:
    """Ctrl-C raises KeyboardInterrupt, as in any Python program. pyspark's SIGINT handler (set by the SparkContext)
    first cancels every job through py4j, from inside the signal handler: the call the main thread is in then
    breaks ("reentrant call", py4j's tracebacks), and a second Ctrl-C could end as if the JVM had died. Spark's
    stop, which every end of a logpipe run makes, cancels the jobs anyway."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


JVM_IGNORES = ("TERM", "HUP")


def leave_termination_to_python(spark: "SparkSession") -> None:
    """Make Spark's JVM ignore SIGTERM and SIGHUP, as pyspark makes it ignore SIGINT. The JVM runs in the Python
    process's group, so `timeout`, systemd's stop or `kill -- -PGID` signal both: the JVM's shutdown hook then
    stopped Spark under the job's graceful stop (a micro-batch cut off, no metrics, the lease left behind). Python
    owns the stop; the JVM still ends with it (pyspark's gateway exits at the end of its stdin), and SIGKILL
    still kills it."""
    from py4j.protocol import Py4JError

    jvm = spark._jvm
    try:
        for name in JVM_IGNORES:
            jvm.sun.misc.Signal.handle(jvm.sun.misc.Signal(name), jvm.sun.misc.SignalHandler.SIG_IGN)
    except Py4JError as exc:  # a JVM without sun.misc.Signal: it stops with the group's signal, as before
        log.warning("Spark's JVM could not be made to leave SIGTERM to Python: %s", str(exc).splitlines()[0])
