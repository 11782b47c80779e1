"""The SparkSession logpipe builds: collected timestamps are UTC whatever the machine's zone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROUND_TRIP = """
from logpipe.config import load_settings
from logpipe.spark import build_spark

spark = build_spark(load_settings(), "tz-test", kafka=False)
t = spark.sql("SELECT TIMESTAMP'2024-10-27 00:30:00' AS t").first().t  # 00:30 UTC: 02:30 in Berlin, DST ends
back = spark.createDataFrame([(t,)], "t TIMESTAMP").selectExpr("CAST(t AS STRING)").first()[0]
print(t.isoformat(), back.replace(" ", "T"))
spark.stop()
"""


def test_collected_timestamps_round_trip_in_utc_in_a_zone_with_daylight_saving(tmp_path) -> None:
    """The job stores collected times (the late cutoff, flushed window ends) and sends alert rows back to Spark;
    in Europe/Berlin, at the end of summer time, PySpark's local-time conversions would move them by hours.
    Rows made in Python are unpickled by a Spark Python worker: it runs the driver's interpreter, not the
    `python3` first on PATH (here one that fails, as another Python version would)."""
    shim = tmp_path / "python3"
    shim.write_text("#!/bin/sh\necho 'the python3 on PATH ran' >&2\nexit 3\n")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.update(TZ="Europe/Berlin", PATH=f"{tmp_path}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-c", ROUND_TRIP], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["2024-10-27T00:30:00", "2024-10-27T00:30:00"]


def test_driver_java_options_are_a_setting_that_can_be_emptied() -> None:
    """The collector is passed to the driver JVM by default; an empty setting leaves Java's defaults (and any
    spark-defaults.conf value) alone."""
    from logpipe.config import load_settings
    from logpipe.spark import spark_conf

    s = load_settings()
    opts = s.with_overrides(spark_driver_java_options=" -XX:+UseParallelGC ")
    assert spark_conf(opts)["spark.driver.extraJavaOptions"] == "-XX:+UseParallelGC"
    assert "spark.driver.extraJavaOptions" not in spark_conf(s.with_overrides(spark_driver_java_options=""))


def test_the_default_java_options_are_taken_by_the_java_spark_runs_on() -> None:
    """Every default option of the Spark JVM is one its Java knows, and sets what it says: the throughput
    collector with its young generation as large as the old one, and C2 compile thresholds above Java's own (a
    misspelt option would stop the JVM from starting)."""
    import re
    import shlex

    from logpipe.config import SPARK_JAVA_OPTIONS, Settings, load_settings
    from logpipe.stack.java import spark_java_home

    assert Settings.model_fields["spark_driver_java_options"].default == SPARK_JAVA_OPTIONS
    java = str(Path(spark_java_home(load_settings())[0]) / "bin" / "java")

    def flags(*opts: str) -> dict[str, str]:
        out = subprocess.run([java, *opts, "-XX:+PrintFlagsFinal", "-version"], capture_output=True, text=True,
                             check=True).stdout
        return {m[1]: m[2] for m in re.finditer(r"^\s*\S+\s+(\w+)\s+:?=\s+(\S+)", out, re.M)}

    ours, java_default = flags(*shlex.split(SPARK_JAVA_OPTIONS)), flags()
    assert ours["UseParallelGC"] == "true"
    assert ours["NewRatio"] == "1"  # the young generation as large as the old one (see config.SPARK_JAVA_OPTIONS)
    for name in ("Tier4InvocationThreshold", "Tier4MinInvocationThreshold", "Tier4CompileThreshold",
                 "Tier4BackEdgeThreshold"):
        assert int(ours[name]) >= 10 * int(java_default[name]), name


def test_the_spark_jvm_logs_one_line_per_error_and_keeps_the_whole_text_in_the_run_folder(tmp_path) -> None:
    """Spark's log configuration comes with the package and is given to the JVM, with the file that keeps every
    warning and error whole (the setting's own JVM options stay theirs, and come after, so they may replace it)."""
    import shlex
    from urllib.parse import unquote, urlparse

    from logpipe.config import load_settings
    from logpipe.spark import spark_conf, spark_log_file

    s = load_settings(run_dir=tmp_path / "run dir")
    opts = dict(o.split("=", 1) for o in shlex.split(spark_conf(s)["spark.driver.defaultJavaOptions"]))
    config = Path(unquote(urlparse(opts["-Dlog4j2.configurationFile"]).path))
    assert config.is_file() and "appender.file.fileName = ${sys:logpipe.spark.log}" in config.read_text()
    assert Path(opts["-Dlogpipe.spark.log"]) == spark_log_file(s) == tmp_path / "run dir" / "logs" / "spark.log"
    assert spark_conf(s)["spark.driver.extraJavaOptions"] == s.spark_driver_java_options.strip()


def test_the_warning_of_a_stop_with_no_job_to_cancel_stays_off_the_console(tmp_path) -> None:
    """Spark warns twice at every stop between micro-batches that it found no job to cancel: kept in the run's
    spark.log, not on stderr, where other warnings still come. Also: a broker gone floods no console, and Ctrl-C
    is a plain KeyboardInterrupt once the session is built."""
    import subprocess
    import sys

    script = """if True:
        import os, sys
        from logpipe.config import load_settings
        from logpipe.spark import build_spark
        spark = build_spark(load_settings(run_dir=sys.argv[1]), "log-filter", kafka=False)
        import signal
        print("SIGINT plain:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        logger = spark._jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.spark.scheduler.DAGScheduler")
        logger.warn("Failed to cancel job group 4a0a3742-5373-46a1-b008-2f813af00b94. Cannot find active jobs for it.")
        logger.warn("Failed to cancel job group 4a0a: something else")
        kafka = spark._jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.kafka.clients.NetworkClient")
        for i in range(30):
            kafka.warn(f"[Producer clientId=producer-1] Connection to node 1 could not be established #{i}")
        kafka.error("a Kafka client error")
        spark.stop()
    """
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Cannot find active jobs" not in r.stderr and "Failed to cancel job group 4a0a: something else" in r.stderr
    # Ctrl-C raises KeyboardInterrupt, not through pyspark's handler, which calls into the JVM from the signal
    assert "SIGINT plain: True" in r.stdout, r.stdout
    # a broker gone: the Kafka clients' warnings at every retry are cut to a few, their errors all come
    retries = r.stderr.count("could not be established #")
    assert 1 <= retries <= 5 and "a Kafka client error" in r.stderr, r.stderr[-3000:]
    kept = (tmp_path / "logs" / "spark.log").read_text()
    assert "Cannot find active jobs for it." in kept and "something else" in kept
    assert kept.count("could not be established #") == 30 and "a Kafka client error" in kept  # the file has all


def _jdk(root, name: str, version: str, *, java: bool = True):
    home = root / name
    (home / "bin").mkdir(parents=True)
    if java:
        (home / "bin" / "java").write_text("")
    (home / "release").write_text(f'IMPLEMENTOR="test"\nJAVA_VERSION="{version}"\n')
    return home


def test_spark_runs_on_the_newest_java_spark_supports(tmp_path, monkeypatch) -> None:
    """Among the JDKs found, Spark gets the newest release it supports (17/21/25): not 26 (unsupported), not a
    home without bin/java; LOGPIPE_SPARK_JAVA_HOME pins one, and a wrong one is a clear error."""
    from logpipe.config import load_settings
    from logpipe.stack.jars import StackError
    from logpipe.stack.java import java_release, spark_java_home

    jvm = tmp_path / "jvm"
    j17 = _jdk(jvm, "java-17", "17.0.15")
    j21 = _jdk(jvm, "java-21", "21.0.2")
    _jdk(jvm, "java-26", "26")
    _jdk(jvm, "broken-25", "25.0.1", java=False)
    _jdk(jvm, "early-25", "25-ea")  # a pre-release build is not taken
    explicit = _jdk(tmp_path, "explicit-17", "17.0.1")
    for name in ("LOGPIPE_JAVA_HOME", "LOGPIPE_SPARK_JAVA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAVA_HOME", str(explicit))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no java on PATH
    s = load_settings()

    assert [java_release(h) for h in (j17, j21, jvm / "java-26", jvm / "broken-25", jvm / "early-25")] == [
        17, 21, 26, None, None]
    assert spark_java_home(s, (jvm,)) == (str(j21), 21)
    j25 = _jdk(jvm, "temurin-25", "25.0.3")
    assert spark_java_home(s, (jvm,)) == (str(j25), 25)
    # nothing newer found: the first of equals, JAVA_HOME before the JVM directory
    assert spark_java_home(s, (tmp_path / "none",)) == (str(explicit), 17)
    assert spark_java_home(s.with_overrides(spark_java_home=str(j17)), (jvm,)) == (str(j17), 17)
    with pytest.raises(StackError, match="LOGPIPE_SPARK_JAVA_HOME=.*no bin/java"):
        spark_java_home(s.with_overrides(spark_java_home=str(tmp_path / "nowhere")), (jvm,))
    with pytest.raises(StackError, match="is Java 26; Spark runs on Java 17/21/25"):
        spark_java_home(s.with_overrides(spark_java_home=str(jvm / "java-26")), (jvm,))
    # an unreadable or missing JVM directory is no error
    assert spark_java_home(s, (tmp_path / "missing",))[1] == 17


def test_the_jvm_runs_on_the_java_logpipe_chose_and_java_home_is_left_as_it_was() -> None:
    """build_spark starts Spark's JVM on spark_java_home's choice and restores JAVA_HOME for other children."""
    code = """
import os
from logpipe.config import load_settings
from logpipe.spark import build_spark
from logpipe.stack.java import java_release, spark_java_home
from pathlib import Path
s = load_settings()
home, release = spark_java_home(s)
spark = build_spark(s, "java-test", kafka=False)
print(release, spark._jvm.System.getProperty("java.specification.version"), os.environ.get("JAVA_HOME", "unset"))
spark.stop()
"""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    release, running, java_home = r.stdout.split()[-3:]
    assert release == running and java_home == "unset"


def test_spark_local_ip_is_the_ui_host_setting_whatever_the_shell_holds(monkeypatch, caplog) -> None:
    """Spark's UI listens on SPARK_LOCAL_IP (every interface without it). A value in the user's shell must not
    move it off loopback: logpipe sets it from spark_ui_host (default bind_host) and says it replaced one."""
    from logpipe.config import load_settings
    from logpipe.spark import set_spark_local_ip

    s = load_settings()
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    assert set_spark_local_ip(s) == "127.0.0.1" and os.environ["SPARK_LOCAL_IP"] == "127.0.0.1"
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.1.2.3")
    with caplog.at_level("WARNING", logger="logpipe.spark"):
        set_spark_local_ip(s)
    assert os.environ["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert "SPARK_LOCAL_IP=10.1.2.3" in caplog.text and "LOGPIPE_SPARK_UI_HOST" in caplog.text
    caplog.clear()
    monkeypatch.delenv("SPARK_LOCAL_IP")
    from logpipe import config

    monkeypatch.setattr(config, "in_streaming_image", lambda: True)  # in the streaming image (see the settings)
    with caplog.at_level("WARNING", logger="logpipe.spark"):  # the compose container's setting: no warning
        set_spark_local_ip(s.with_overrides(spark_ui_host="0.0.0.0"))
    assert os.environ["SPARK_LOCAL_IP"] == "0.0.0.0" and caplog.text == ""


def test_parquet_timestamps_are_int64_micros_with_statistics(local_spark, tmp_path) -> None:
    """Result tables store times as INT64 TIMESTAMP(MICROS, UTC), which carry min/max statistics (Spark's default
    INT96 has none, so no reader could skip a file or row group by time), and read back as the same instants."""
    import pyarrow.parquet as pq

    out = tmp_path / "t"
    (local_spark.sql("SELECT TIMESTAMP'2004-05-18 05:58:48' AS ts UNION ALL SELECT TIMESTAMP'2004-05-18 06:00:00'")
     .coalesce(1).write.parquet(out.as_uri()))
    f = next(out.glob("*.parquet"))
    col = pq.ParquetFile(f).metadata.row_group(0).column(0)
    assert col.physical_type == "INT64" and "timeUnit=microseconds" in str(col.statistics.logical_type)
    assert col.statistics.has_min_max
    assert (col.statistics.min.isoformat(), col.statistics.max.isoformat()) == (
        "2004-05-18T05:58:48+00:00", "2004-05-18T06:00:00+00:00")
    back = sorted(r.ts for r in local_spark.read.parquet(out.as_uri()).collect())
    assert [t.isoformat() for t in back] == ["2004-05-18T05:58:48", "2004-05-18T06:00:00"]


def test_a_table_of_int96_and_int64_files_reads_the_same_instants(local_spark, tmp_path) -> None:
    """A results root written before the switch to INT64 timestamps holds INT96 files, later batches INT64 ones:
    Spark and Arrow (as results.load_arrow reads a table: one dataset over its files) read both as the same
    instants, whichever file comes first."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    df = local_spark.sql("SELECT TIMESTAMP'2004-05-18 05:58:48' AS ts, 1 AS n")
    local_spark.conf.set("spark.sql.parquet.outputTimestampType", "INT96")
    try:
        df.coalesce(1).write.parquet((tmp_path / "old").as_uri())
    finally:
        local_spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    df.coalesce(1).write.parquet((tmp_path / "new").as_uri())
    old, new = next((tmp_path / "old").glob("*.parquet")), next((tmp_path / "new").glob("*.parquet"))
    for files in ([old, new], [new, old]):
        table = ds.dataset([str(f) for f in files], format="parquet").to_table()
        micros = table.column("ts").cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_pylist()
        assert micros == [1084859928_000_000] * 2, table.schema  # 2004-05-18 05:58:48 UTC
    back = local_spark.read.parquet((tmp_path / "old").as_uri(), (tmp_path / "new").as_uri()).collect()
    assert [r.ts.isoformat() for r in back] == ["2004-05-18T05:58:48"] * 2


def test_an_hdfs_close_asks_again_soon_but_gives_up_no_sooner_than_hadoops_default() -> None:
    """The Spark JVM's HDFS client asks the NameNode again after 20 ms, not Hadoop's 400 ms, whether a file it closes
    is stored (the DataNode reports within milliseconds: half the closes slept 400 ms for nothing); it still waits at
    least as long in all as Hadoop's default (400 ms, doubling, 5 times) before a close fails, for a busy DataNode."""
    from logpipe.config import load_settings
    from logpipe.spark import spark_conf

    conf = spark_conf(load_settings())
    first = int(conf["spark.hadoop.dfs.client.block.write.locateFollowingBlock.initial.delay.ms"])
    retries = int(conf["spark.hadoop.dfs.client.block.write.locateFollowingBlock.retries"])
    assert first <= 50
    assert sum(first * 2**i for i in range(retries)) >= sum(400 * 2**i for i in range(5))


GROUP_SIGTERM = """
import os, signal, time
import psutil
from logpipe.config import load_settings
from logpipe.spark import build_spark

spark = build_spark(load_settings(), "term-test", kafka=False)
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # as the job's StopSignal: Python stops
jvm = next(p for p in psutil.Process().children(recursive=True) if p.name() == "java")
ignored = int(next(l for l in open(f"/proc/{jvm.pid}/status") if l.startswith("SigIgn:")).split()[1], 16)
os.killpg(0, signal.SIGTERM)  # as `timeout`, systemd or `kill -- -PGID`: Python and the JVM alike
time.sleep(3)
print("python", got, "ignored", bool(ignored & (1 << (signal.SIGTERM - 1))), bool(ignored & (1 << (signal.SIGHUP - 1))),
      flush=True)
print("rows", spark.range(1000).count(), flush=True)
spark.stop()
"""


def test_a_sigterm_to_the_process_group_is_left_to_python_not_taken_by_the_jvm() -> None:
    """`timeout`, systemd's stop or `kill -- -PGID` signal the whole group: the JVM used to run its shutdown hook,
    which stopped Spark under the job's graceful stop (its micro-batch cut off, no metrics, the lease left). The
    JVM ignores SIGTERM and SIGHUP; Python's handler decides, and Spark still answers afterwards."""
    r = subprocess.run([sys.executable, "-c", GROUP_SIGTERM], capture_output=True, text=True, timeout=300,
                       start_new_session=True)  # its own group: the test's SIGTERM reaches nothing else
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "python [15] ignored True True" in r.stdout and "rows 1000" in r.stdout, r.stdout + r.stderr[-3000:]
