"""The streaming job: Kafka -> parse -> events/quarantine/late, final sliding-window counts, early alerts (HDFS + Kafka).

Three queries, each with its own checkpoint on HDFS (_checkpoints/<query>):
- ingest:  Kafka -> parse once (JVM) -> events/ (by date) + quarantine/ + late/, per-batch accounting in the
           commit marker _commits/ingest/b<batch>.json. Late = event time older than (newest event time of the
           earlier committed batches - watermark): kept in late/, counted, not in the windows.
- windows: events/ (file stream) -> watermark -> drop duplicate source lines (src, off) within the watermark ->
           count per (window, host, status) in append mode -> windows/by_host + windows/by_status, each
           (window, key) written once, final.
- alerts:  events/ (file stream) -> per window the set of (host, status, source line) in update mode, so a
           threshold is seen in the micro-batch that crosses it -> alerts/ + Kafka topic, once per (rule, key, window).
Every batch's files are committed idempotently per batch id (streaming.commit), so a re-run batch never writes twice.
`until_done` runs ingest to the end of the topic, then windows and alerts to the end of events/, then writes
the windows the watermark has not closed yet from the windows query's state store (exact, not recomputed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from logpipe.config import Settings
from logpipe.rules import AlertRules
from logpipe.streaming.commit import HadoopFs, commit_batch, committed_meta, is_committed
from logpipe.streaming.parse import EVENT_COLUMNS, header_columns, parse_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

EVENTS_SCHEMA = ("host STRING, timestamp TIMESTAMP, request STRING, http_response INT, bytes_sent INT, "
                 "method STRING, path STRING, protocol STRING, src STRING, off BIGINT, src_key STRING, "
                 "kafka_partition INT, kafka_offset BIGINT, date STRING")


@dataclass
class RunStats:
    """What the listener saw, per query."""

    batches: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    last_batch: dict[str, int] = field(default_factory=dict)


class StreamJob:
    def __init__(self, spark: "SparkSession", s: Settings) -> None:
        self.spark, self.s = spark, s
        self.root = s.hdfs_uri()
        self.stats = RunStats()
        self._emitted_alerts: set[str] | None = None
        self._flushed_until = None
        self._batch_max_ts: dict[int, Any] | None = None

    # ------------------------------------------------------------------ ingest
    def _kafka_stream(self) -> "DataFrame":
        s = self.s
        return (self.spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", s.kafka_address)
                .option("subscribe", s.topic)
                .option("startingOffsets", "earliest")
                .option("includeHeaders", "true")
                .option("maxOffsetsPerTrigger", str(s.max_offsets_per_trigger))
                .option("minPartitions", str(s.kafka_read_tasks))
                .option("kafka.max.poll.records", "20000")  # default 500: measured 90k -> 138k records/s read
                .load())

    def _ingest_batch(self, batch: "DataFrame", batch_id: int) -> None:
        from pyspark.sql import functions as F

        t0 = time.monotonic()
        horizon = self._late_horizon(batch_id)
        parsed = parse_columns(header_columns(batch))
        late_flag = F.lit(False) if horizon is None else F.col("timestamp") < F.lit(horizon)
        # cache only what the outputs need: the raw line and bytes are kept for quarantined lines only
        parsed = (parsed.withColumn("_late", F.when(F.col("reason").isNull(), late_flag))
                  .select(*EVENT_COLUMNS, "src", "off", "src_key", "partition", "offset", "reason", "_late",
                          *(F.when(F.col("reason").isNotNull(), F.col(c)).alias(c) for c in ("line", "value")))
                  .persist())
        try:
            ok = (parsed.where("reason IS NULL")
                  .select(*EVENT_COLUMNS, "src", "off", "src_key", "_late",
                          F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
                          F.date_format("timestamp", "yyyy-MM-dd").alias("date")))
            events = ok.where("NOT _late").drop("_late")
            late = ok.where("_late").drop("_late")
            quarantine = (parsed.where("reason IS NOT NULL")
                          .select(F.expr("make_valid_utf8(line)").alias("raw"),  # U+FFFD for bad bytes
                                  F.col("value").alias("raw_bytes"), "reason", "src",
                                  "off", "src_key", F.col("partition").alias("kafka_partition"),
                                  F.col("offset").alias("kafka_offset")))
            groups = (parsed.groupBy("reason", "_late")
                      .agg(F.count(F.lit(1)).alias("n"), F.max("timestamp").alias("max_ts")).collect())
            counts: dict[str, int] = {}
            for r in groups:
                counts[r["reason"] or "parsed"] = counts.get(r["reason"] or "parsed", 0) + r["n"]
            n_late = sum(r["n"] for r in groups if r["_late"])
            max_ts = max((r["max_ts"] for r in groups if r["reason"] is None and r["max_ts"] is not None),
                         default=None)
            total = sum(counts.values())
            meta = {"batch": batch_id, "lines": total, "parsed": counts.pop("parsed", 0),
                    "quarantined": sum(counts.values()), "quarantined_by_reason": counts, "late": n_late,
                    "max_ts": max_ts.isoformat() if max_ts else None, "at": time.time()}
            # one file per date per batch: the window queries then read whole ingest batches, so their event-time
            # watermark never runs ahead of rows of another Kafka partition still to come (they would be "late")
            writes = [(events.coalesce(1), "events", ["date"])]
            if meta["quarantined"]:
                writes.append((quarantine.coalesce(1), "quarantine", []))
            if n_late:
                writes.append((late.coalesce(1), "late", []))
            t1 = time.monotonic()
            commit_batch(self.spark, self.root, "ingest", batch_id, writes, meta)
            if max_ts is not None:
                self._batch_max_ts[batch_id] = max_ts
            log.info("ingest batch %d: %s lines (%s late), parse+count %.1fs, write+commit %.1fs", batch_id,
                     f"{total:,}", f"{n_late:,}", t1 - t0, time.monotonic() - t1)
        finally:
            parsed.unpersist()

    def _late_horizon(self, batch_id: int) -> Any:
        """Events older than this are late: (newest event time of the earlier committed ingest batches) minus
        the watermark. Judged at ingest, so late rows are kept in late/ instead of being dropped by Spark."""
        from datetime import datetime, timedelta

        from logpipe.windows import duration_seconds

        if self._batch_max_ts is None:
            self._batch_max_ts = {m["batch"]: datetime.fromisoformat(m["max_ts"])
                                  for m in committed_meta(self.spark, self.root, "ingest") if m.get("max_ts")}
        earlier = [ts for b, ts in self._batch_max_ts.items() if b < batch_id]
        if not earlier:
            return None
        return max(earlier) - timedelta(seconds=duration_seconds(self.s.watermark))

    def ingest_query(self, available_now: bool) -> "StreamingQuery":
        w = (self._kafka_stream().writeStream.queryName("ingest")
             .foreachBatch(self._ingest_batch)
             .option("checkpointLocation", self.s.hdfs_uri("_checkpoints", "ingest")))
        return self._trigger(w, available_now).start()

    # ------------------------------------------------------------------ event streams
    def _events_stream(self) -> "DataFrame":
        self._ensure_dir("events")
        return (self.spark.readStream.schema(EVENTS_SCHEMA)
                .option("maxFilesPerTrigger", str(self.s.windows_max_files_per_trigger))
                .parquet(self.s.hdfs_uri("events")))

    def _ensure_dir(self, table: str) -> None:
        fs = HadoopFs(self.spark, self.root)
        fs.fs.mkdirs(fs.path(self.s.hdfs_uri(table)))

    # ------------------------------------------------------------------ windows
    def _window_counts(self) -> "DataFrame":
        from pyspark.sql import functions as F

        s = self.s
        return (self._events_stream()
                .withWatermark("timestamp", s.watermark)
                .dropDuplicatesWithinWatermark(["src_key"])
                .groupBy(F.window("timestamp", s.window, s.slide).alias("window"), "host", "http_response")
                .agg(F.count(F.lit(1)).alias("count")))

    def _write_windows(self, fine: "DataFrame", tag_id: int, query: str, prefix: str = "b") -> None:
        from pyspark.sql import functions as F

        fine = fine.select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                           "host", "http_response", "count")
        if self._flushed_until is not None:  # already written by an earlier --until-done flush
            fine = fine.where(F.col("window_end") > F.lit(self._flushed_until))
        if query == "windows" and is_committed(self.spark, self.root, query, tag_id, prefix):
            # Spark re-runs a batch whose rows we committed when it died before its own commit log entry: the
            # rows are not written again, but the batch must still run through, or its state stores would not
            # advance (Spark 4 refuses such a batch: STATE_STORE_COMMIT_VALIDATION_FAILED)
            fine.write.format("noop").mode("overwrite").save()
            log.info("windows batch %d was already committed: state advanced, nothing written again", tag_id)
            return
        fine = fine.persist()
        try:
            by_host = fine.groupBy("window_start", "window_end", "host").agg(F.sum("count").alias("count"))
            by_status = (fine.groupBy("window_start", "window_end", "http_response")
                         .agg(F.sum("count").alias("count")))
            # the de-duplication and watermark counts of this very batch go into its commit marker: counted
            # exactly once, however often the batch is re-run after a crash
            meta = ((lambda: {"batch": tag_id, **self._dropped_rows(query)}) if query == "windows"
                    else {"batch": tag_id})
            commit_batch(self.spark, self.root, query, tag_id,
                         [(by_host.coalesce(1), "windows/by_host", []),
                          (by_status.coalesce(1), "windows/by_status", [])], meta, prefix=prefix)
        finally:
            fine.unpersist()

    def _dropped_rows(self, query: str) -> dict[str, int]:
        """Rows the running micro-batch of `query` dropped: duplicates, and rows behind the watermark. Read from
        the SQL metrics of its stateful operators once the batch's writes are done (Spark reports them only
        after the batch commits, too late to be committed with it)."""
        q = next(q for q in self.spark.streams.active if q.name == query)
        totals = {"late": 0, "duplicates_dropped": 0}
        nodes = [q._jsq.streamingQuery().lastExecution().executedPlan()]
        while nodes:
            node = nodes.pop()
            metrics = node.metrics()
            for key, name in (("numRowsDroppedByWatermark", "late"), ("numDroppedDuplicateRows", "duplicates_dropped")):
                found = metrics.get(key)
                if found.isDefined():
                    totals[name] += int(found.get().value())
            children = node.children()
            nodes.extend(children.apply(i) for i in range(children.size()))
        return totals

    def windows_query(self, available_now: bool) -> "StreamingQuery":
        self._flushed_until = self._read_flushed_until()
        w = (self._window_counts().writeStream.queryName("windows").outputMode("append")
             .foreachBatch(lambda df, bid: self._write_windows(df, bid, "windows"))
             .option("checkpointLocation", self.s.hdfs_uri("_checkpoints", "windows")))
        return self._trigger(w, available_now).start()

    def _read_flushed_until(self) -> Any:
        fs = HadoopFs(self.spark, self.root)
        p = self.s.hdfs_uri("_checkpoints", "windows_flushed_until")
        if not fs.exists(p):
            return None
        from datetime import datetime

        return datetime.fromisoformat(fs.read_text(p).strip())

    def flush_open_windows(self) -> int:
        """Write the windows still held in the windows query's state (not yet closed by the watermark).

        Reads the aggregation's state store at the last committed batch (Spark's state data source): the exact
        counts the stream would emit once the watermark passed. Records the newest flushed window end so a
        later run does not write those windows again. Returns the number of (window, host, status) rows.
        """
        from pyspark.sql import functions as F

        ckpt = self.s.hdfs_uri("_checkpoints", "windows")
        fs = HadoopFs(self.spark, self.root)
        if not fs.exists(ckpt + "/commits"):
            return 0
        commits = [int(f.rsplit("/", 1)[-1]) for f in fs.files(ckpt + "/commits") if f.rsplit("/", 1)[-1].isdigit()]
        if not commits:
            return 0
        last = max(commits)
        state = None
        for op in range(4):  # operator 0 is the de-duplication, the aggregation follows
            try:
                df = (self.spark.read.format("statestore").option("operatorId", str(op))
                      .option("batchId", str(last)).load(ckpt))
            except Exception:  # noqa: BLE001 - no such operator
                continue
            key_fields = df.schema["key"].dataType.fieldNames()
            if "window" in key_fields and "count" in df.schema["value"].dataType.fieldNames():
                state = df
                break
        if state is None:
            raise RuntimeError(f"no window aggregation state found in {ckpt}")
        fine = state.select(F.col("key.window").alias("window"), F.col("key.host").alias("host"),
                            F.col("key.http_response").alias("http_response"),
                            F.col("value.count").alias("count")).persist()
        n = fine.count()
        if n:
            self._write_windows(fine, last, "windows-flush", prefix="f")
            until = fine.agg(F.max("window.end")).first()[0]
            prev = self._read_flushed_until()
            if prev is None or until > prev:
                fs.write_text(self.s.hdfs_uri("_checkpoints", "windows_flushed_until"), until.isoformat())
        fine.unpersist()
        return n

    # ------------------------------------------------------------------ alerts
    def _alert_window_sets(self) -> "DataFrame":
        from pyspark.sql import functions as F

        s = self.s
        return (self._events_stream()
                .withWatermark("timestamp", s.watermark)
                .groupBy(F.window("timestamp", s.window, s.slide).alias("window"))
                .agg(F.collect_set(F.struct("host", "http_response", "src_key")).alias("items")))

    def _alerts_batch(self, batch: "DataFrame", batch_id: int) -> None:
        from pyspark.sql import functions as F

        s = self.s
        items = (batch.select("window", F.explode("items").alias("it"))
                 .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                         "it.host", "it.http_response").persist())
        try:
            alerts = alerts_of_items(items, AlertRules.from_settings(s))
            rows = alerts.collect()
        finally:
            items.unpersist()
        emitted = self._emitted()
        new = [r for r in rows if r["alert_id"] not in emitted]
        if not new:
            return
        new_df = self.spark.createDataFrame(new, alerts.schema)
        commit_batch(self.spark, self.root, "alerts", batch_id, [(new_df.coalesce(1), "alerts", [])],
                     {"batch": batch_id, "alerts": len(new)})
        emitted.update(r["alert_id"] for r in new)
        self._publish_committed_alerts()
        for r in new:
            log.warning("ALERT %s %s window %s count %s%s", r["rule"], r["key"], r["window_start"], r["count"],
                        f" share {r['share']:.0%} top hosts {list(r['top_hosts'] or [])}" if r["share"] else "")

    def _committed_alert_files(self) -> dict[str, list[str]]:
        """alerts/ files by batch tag, only of batches whose commit marker exists (a crashed attempt's are not)."""
        fs = HadoopFs(self.spark, self.root)
        tags = {f.rsplit("/", 1)[-1][:-5] for f in fs.files(f"{self.root}/_commits/alerts") if f.endswith(".json")}
        out: dict[str, list[str]] = {}
        for f in fs.files(self.s.hdfs_uri("alerts")):
            name = f.rsplit("/", 1)[-1]
            if name.endswith(".parquet") and "/_staging/" not in f and name.split("-", 1)[0] in tags:
                out.setdefault(name.split("-", 1)[0], []).append(f)
        return out

    def _publish_committed_alerts(self) -> None:
        """Send to Kafka every committed alerts batch not sent yet (marker _commits/alerts-kafka/<tag>): a crash
        between the HDFS commit and the send is repaired by the next batch or run. A crash after the send and
        before its marker re-sends that batch (at-least-once there; the Kafka key is the alert_id)."""
        from pyspark.sql import functions as F

        fs = HadoopFs(self.spark, self.root)
        for tag, files in sorted(self._committed_alert_files().items()):
            marker = f"{self.root}/_commits/alerts-kafka/{tag}.json"
            if fs.exists(marker):
                continue
            df = self.spark.read.parquet(*files)
            n = df.count()
            value = F.to_json(F.struct(*df.columns), {"ignoreNullFields": "false"})  # share: null, not absent
            (df.select(F.col("alert_id").alias("key"), value.alias("value"))
             .write.format("kafka").option("kafka.bootstrap.servers", self.s.kafka_address)
             .option("topic", self.s.alerts_topic).save())
            fs.write_text(marker, json.dumps({"alerts": n}))

    def _emitted(self) -> set[str]:
        if self._emitted_alerts is None:
            files = [f for fs_ in self._committed_alert_files().values() for f in fs_]
            self._emitted_alerts = ({r[0] for r in self.spark.read.parquet(*files).select("alert_id").collect()}
                                    if files else set())
            self._publish_committed_alerts()  # repairs a crash between an HDFS commit and its Kafka send
        return self._emitted_alerts

    def alerts_query(self, available_now: bool) -> "StreamingQuery":
        w = (self._alert_window_sets().writeStream.queryName("alerts").outputMode("update")
             .foreachBatch(self._alerts_batch)
             .option("checkpointLocation", self.s.hdfs_uri("_checkpoints", "alerts")))
        return self._trigger(w, available_now).start()

    # ------------------------------------------------------------------ running
    def _trigger(self, writer: Any, available_now: bool) -> Any:
        if available_now:
            return writer.trigger(availableNow=True)
        return writer.trigger(processingTime=self.s.trigger_interval)

    def accounting(self) -> dict[str, Any]:
        """Lines in = parsed + quarantined, summed over every committed ingest batch."""
        metas = committed_meta(self.spark, self.root, "ingest")
        by_reason: dict[str, int] = {}
        for m in metas:
            for k, v in m.get("quarantined_by_reason", {}).items():
                by_reason[k] = by_reason.get(k, 0) + v
        return {"batches": len(metas), "lines": sum(m["lines"] for m in metas),
                "parsed": sum(m["parsed"] for m in metas), "quarantined": sum(m["quarantined"] for m in metas),
                "quarantined_by_reason": by_reason, "late_kept": sum(m.get("late", 0) for m in metas)}

    def record_progress(self, name: str, progress: dict[str, Any]) -> None:
        """Called by the listener per micro-batch (for the logs and run statistics)."""
        self.stats.batches[name] = self.stats.batches.get(name, 0) + 1
        self.stats.last_batch[name] = int(progress.get("batchId", -1))
        self.stats.rows[name] = self.stats.rows.get(name, 0) + int(progress.get("numInputRows", 0))

    def late_and_duplicates(self) -> dict[str, int]:
        """Totals over every committed windows batch (from the commit markers)."""
        metas = committed_meta(self.spark, self.root, "windows")
        return {"late_dropped_by_watermark": sum(m.get("late", 0) for m in metas),
                "duplicates_dropped": sum(m.get("duplicates_dropped", 0) for m in metas)}

    def write_run_metrics(self, extra: dict[str, Any]) -> dict[str, Any]:
        metrics = {**self.accounting(), **self.late_and_duplicates(), **extra}
        # late = kept in late/ (judged at ingest) + any dropped by the windows query's own watermark (normally 0)
        metrics["late"] = metrics["late_kept"] + metrics["late_dropped_by_watermark"]
        HadoopFs(self.spark, self.root).write_text(
            self.s.hdfs_uri("_metrics", "latest.json"), json.dumps(metrics, default=str))
        return metrics


def alerts_of_items(items: "DataFrame", rules: AlertRules) -> "DataFrame":
    """Alerts (alerts table columns) of the running window contents `items` (one row per distinct event:
    window_start, window_end, host, http_response). The Spark twin of rules.AlertRules.evaluate."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ceiling, surge = rules.rate_limit.ceiling, rules.failure_surge
    totals = items.groupBy("window_start", "window_end").agg(F.count(F.lit(1)).alias("total"))
    by_host = items.groupBy("window_start", "window_end", "host").agg(F.count(F.lit(1)).alias("count"))
    rate = (by_host.where(F.col("count") >= ceiling)
            .select(F.lit(rules.rate_limit.name).alias("rule"), F.col("host").alias("key"), "window_start",
                    "window_end", "count", F.lit(None).cast("double").alias("share"),
                    F.lit(ceiling).alias("threshold"), F.array("host").alias("top_hosts")))
    failed = items.where("http_response >= 400")
    by_status = (failed.groupBy("window_start", "window_end", "http_response")
                 .agg(F.count(F.lit(1)).alias("count"))
                 .join(totals, ["window_start", "window_end"])
                 .withColumn("share", F.col("count") / F.col("total"))
                 .where((F.col("count") >= surge.min_count) & (F.col("share") >= surge.min_share)))
    hosts = (failed.groupBy("window_start", "window_end", "http_response", "host")
             .agg(F.count(F.lit(1)).alias("n"))
             .withColumn("rank", F.row_number().over(
                 Window.partitionBy("window_start", "window_end", "http_response").orderBy(F.desc("n"), "host")))
             .where(F.col("rank") <= surge.top_hosts)
             .groupBy("window_start", "window_end", "http_response")
             .agg(F.sort_array(F.collect_list(F.struct(F.col("rank"), F.col("host")))).alias("ranked")))
    surges = (by_status.join(hosts, ["window_start", "window_end", "http_response"], "left")
              .select(F.lit(surge.name).alias("rule"), F.col("http_response").cast("string").alias("key"),
                      "window_start", "window_end", "count", "share", F.lit(surge.min_count).alias("threshold"),
                      F.expr("transform(ranked, r -> r.host)").alias("top_hosts")))
    return (rate.unionByName(surges)
            .withColumn("alert_id", F.sha2(F.concat_ws("|", "rule", "key", F.col("window_start").cast("string")), 256)
                        .substr(1, 20))
            .withColumn("detected_at", F.current_timestamp()))
