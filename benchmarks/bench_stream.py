"""Streaming job vs a batch Spark job doing the stream's whole work over the same lines (lines/s): the same parse,
the events and quarantine tables, the duplicate check and the window counts (`logpipe bench`'s reference, in
`logpipe.streaming.batch`, is the lean one: parse and window counts only).

Generates a log (`logpipe generate`), produces it to a fresh topic (`logpipe produce --client confluent`), then:
- stream: `logpipe stream --until-done` in its own process into a fresh HDFS root; rate = lines / the job's
  `total_s` (Spark already started: ingest + windows + alerts + flush of the open windows);
- batch: one Spark batch job over the same Kafka topic (spark.read.format("kafka")) with the same parse
  (streaming.parse), events Parquet by date, quarantine, and by_host/by_status sliding-window counts to HDFS.
Both exclude JVM start-up; the batch job also gets a trivial Spark job before its timer starts, which the stream's
`total_s` does not. Results as JSON on stdout (and --json FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def logpipe(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "logpipe", *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"logpipe {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else ""  # the JSON result of produce and stream; generate prints none


def batch_job(topic: str, root: str) -> dict:
    """The same parse + counts as one batch job, timed after the session is up."""
    from pyspark.sql import functions as F

    from logpipe.config import load_settings
    from logpipe.spark import build_spark
    from logpipe.streaming.parse import EVENT_COLUMNS, parse_columns, source_columns

    s = load_settings().with_overrides(topic=topic, hdfs_root=root)
    spark = build_spark(s, "bench-batch")
    spark.range(1).count()  # warm the JVM a little, like the streaming job's first batch
    t0 = time.monotonic()
    raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", s.kafka_address).option("subscribe", topic)
           .option("startingOffsets", "earliest").load())
    parsed = source_columns(parse_columns(raw)).persist()
    events = parsed.where("reason IS NULL").select(*EVENT_COLUMNS, "src", "off", "src_key", F.col("partition").alias(
        "kafka_partition"), F.col("offset").alias("kafka_offset"), F.date_format("timestamp", "yyyy-MM-dd").alias("date"))
    events.write.mode("overwrite").partitionBy("date").parquet(s.hdfs_uri("events"))
    parsed.where("reason IS NOT NULL").select("line", "value", "reason").coalesce(1).write.mode(
        "overwrite").parquet(s.hdfs_uri("quarantine"))
    fine = (events.dropDuplicates(["src_key"])
            .groupBy(F.window("timestamp", s.window, s.slide).alias("w"), "host", "http_response").count().persist())
    fine.groupBy("w", "host").agg(F.sum("count").alias("count")).coalesce(1).write.mode("overwrite").parquet(
        s.hdfs_uri("windows", "by_host"))
    fine.groupBy("w", "http_response").agg(F.sum("count").alias("count")).coalesce(1).write.mode(
        "overwrite").parquet(s.hdfs_uri("windows", "by_status"))
    lines = parsed.count()
    wall = time.monotonic() - t0
    spark.stop()
    return {"lines": lines, "wall_s": round(wall, 2), "lines_per_s": round(lines / wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_500_000)
    ap.add_argument("--max-offsets-per-trigger", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--batch-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch_only:  # its own process: one SparkSession per process
        print(json.dumps(batch_job(args.topic, args.root)))
        return
    tag = uuid.uuid4().hex[:8]
    topic, root = f"bench-{tag}", f"/bench/stream-{tag}"
    env = {**os.environ, "LOGPIPE_TOPIC": topic, "LOGPIPE_HDFS_ROOT": root, "LOGPIPE_ALERTS_TOPIC": f"alerts-{tag}"}
    if args.max_offsets_per_trigger:
        env["LOGPIPE_MAX_OFFSETS_PER_TRIGGER"] = str(args.max_offsets_per_trigger)
    try:
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "access.log"
            env["LOGPIPE_PRODUCER_STATE_DIR"] = str(Path(d) / "positions")
            logpipe(env, "generate", "--lines", str(args.lines), "--seed", "3", "--out", str(log))
            t = time.monotonic()
            produced = json.loads(logpipe(env, "produce", str(log), "--client", "confluent"))
            produce_s = time.monotonic() - t
        t = time.monotonic()
        metrics = json.loads(logpipe(env, "stream", "--until-done"))
        stream_wall = time.monotonic() - t
        batch = json.loads(subprocess.run([sys.executable, __file__, "--batch-only", "--topic", topic, "--root",
                                           f"/bench/batch-{tag}"], env=env, capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
    finally:  # the topic holds the whole log, the roots its events: nothing is left behind
        from logpipe.bench import drop_run_data
        from logpipe.config import load_settings

        gone, failed = drop_run_data(load_settings(), [topic, f"alerts-{tag}"], [root, f"/bench/batch-{tag}"])
        print(f"deleted: {', '.join(gone) or 'nothing'}" + (f"; not deleted: {'; '.join(failed)}" if failed else ""),
              file=sys.stderr)
    stream_rate = metrics["lines"] / metrics["total_s"]
    result = {"lines": args.lines, "produced": produced.get("records"), "produce_s": round(produce_s, 1),
              "stream": {"lines": metrics["lines"], "total_s": metrics["total_s"], "ingest_s": metrics.get("ingest_s"),
                         "wall_with_startup_s": round(stream_wall, 1), "lines_per_s": round(stream_rate)},
              "batch": batch, "stream_vs_batch": round(stream_rate / batch["lines_per_s"], 2),
              "topic": topic, "hdfs_root": root,
              "run_data": "deleted" if not failed else "not all deleted: " + "; ".join(failed)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
