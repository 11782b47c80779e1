"""The SparkSession logpipe builds: collected timestamps are UTC whatever the machine's zone."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_collected_timestamps_round_trip_in_utc_in_a_zone_with_daylight_saving() -> None:
    """The job stores collected times (the late cutoff, flushed window ends) and sends alert rows back to Spark;
    in Europe/Berlin, at the end of summer time, PySpark's local-time conversions would move them by hours."""
    r = subprocess.run([sys.executable, "-c", ROUND_TRIP], env={**os.environ, "TZ": "Europe/Berlin"},
                       capture_output=True, text=True, timeout=300)
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
