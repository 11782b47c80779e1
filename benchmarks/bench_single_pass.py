"""Prototype, not the job: the stream's micro-batch as ONE pass over the Kafka rows, counts read back from it.

Measures the design docs/benchmarks.md calls "the events write as the only pass" (section "One pass over the
parsed rows, measured"). Each micro-batch (foreachBatch, the job's Kafka options and trigger size):
1. parse once (streaming.parse, as the job) and write every row, parsed or not, as Parquet by date to
   <root>/stage/b<batch> (no cache);
2. read that Parquet back, column by column: the lines per reason and the newest time, the distinct source-key
   hashes (the duplicate check's test), and the sliding-window counts by host and by status, written to
   <root>/by_host and <root>/by_status.
It leaves out what the job also does (late split, removal of repeats, carried open windows and keys, alerts,
quarantine as its own table, the commit protocol, the flush), so its time is a lower bound for that design.

    python benchmarks/bench_single_pass.py TOPIC HDFS_ROOT   # prints {"total_s": ..., "batches": [...]}
"""

from __future__ import annotations

import json
import sys
import time

from pyspark.sql import functions as F

from logpipe.config import load_settings
from logpipe.spark import build_spark
from logpipe.streaming.job import STORED_EVENT_COLUMNS, SPARK_CONF, WINDOW_COLUMNS, StreamJob, window_rows
from logpipe.streaming.parse import parse_columns, source_columns


def main() -> None:
    topic, root = sys.argv[1], sys.argv[2]
    s = load_settings().with_overrides(topic=topic, hdfs_root=root)
    spark = build_spark(s, "bench-single-pass", extra=SPARK_CONF)
    times: list[tuple] = []

    def batch(df, bid: int) -> None:
        t0 = time.monotonic()
        parsed = source_columns(parse_columns(df, request_parts=False), F.lit(topic))
        rows = parsed.select(*STORED_EVENT_COLUMNS, "src", "off", "src_key", "key_hash", "partition", "offset",
                             "reason", *(F.when(F.col("reason").isNotNull(), F.col(c)).alias(c) for c in ("line", "value")),
                             F.date_format("timestamp", "yyyy-MM-dd").alias("date"))
        out = f"{s.hdfs_uri('stage')}/b{bid}"
        rows.write.partitionBy("date").option("parquet.enable.dictionary", "false").parquet(out)
        t1 = time.monotonic()
        back = spark.read.parquet(out)
        groups = back.groupBy("reason").agg(F.count(F.lit(1)).alias("n"), F.max("timestamp").alias("mx")).collect()
        distinct = back.where("reason IS NULL").agg(F.count_distinct("key_hash").alias("d")).first()["d"]
        good = back.where("reason IS NULL").select("timestamp", "host", "http_response")
        for key, table, files in (("host", "by_host", 2), ("http_response", "by_status", 1)):
            (window_rows(good, s.window, s.slide).groupBy(*WINDOW_COLUMNS, key).count().coalesce(files)
             .write.parquet(f"{s.hdfs_uri(table)}/b{bid}"))
        times.append((bid, round(t1 - t0, 1), round(time.monotonic() - t1, 1), sum(r["n"] for r in groups), distinct))
        print("batch (id, parse+write s, read back+counts s, lines, distinct keys):", times[-1], flush=True)

    t = time.monotonic()
    # the job's own Kafka source (options, trigger size), on this topic
    q = (StreamJob(spark, s)._kafka_stream().writeStream.foreachBatch(batch)
         .option("checkpointLocation", s.hdfs_uri("_checkpoint")).trigger(availableNow=True).start())
    q.awaitTermination()
    print(json.dumps({"total_s": round(time.monotonic() - t, 1), "batches": times}))


if __name__ == "__main__":
    main()
