"""`logpipe verify`: recompute window counts and accounting from the raw log (independently of Spark) and
compare them row by row with the job's results on HDFS; score alerts against the generator's ground truth."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from logpipe.config import Settings
from logpipe.generator import truth_path as truth_file_of
from logpipe.producer.source import LINE_CAP_BYTES
from logpipe.results import committed_accounting, load_arrow, webhdfs_fs
from logpipe.root_record import RUN_SETTINGS
from logpipe.verify.accounting import check_job_accounting, check_late_rows, other_log_hint, too_large_hint
from logpipe.verify.alerts import (StatusReplay, alert_payload_differences, check_alert_figures, check_alerts,
                                   check_alerts_on_kafka, check_every_alert)
from logpipe.verify.processes import run_in_processes
from logpipe.verify.future import (batch_bounds, check_bounds_are_batch_starts, check_in_future, planned_times,
                                  scan_in_future)
from logpipe.verify.recount import (_MOD, PARSED_FIELDS, QUARANTINE_FIELDS, KeyedCounts, LogCounts, count_log,
                                    line_ranges, resolve_set_aside, row_fingerprint)
from logpipe.verify.tables import (_epoch_s_arrow, load_alerts, newest_event_per_batch, read_until, scan_quarantine,
                                   scan_table, uncommitted_files)
from logpipe.verify.truth import (TruthFileError, load_truth, score_against_truth, truth_log_hint,
                                   truth_settings_hint)
from logpipe.verify.windows import (compare_counts, compare_window_tables, exclude_late_lines, window_table_types_wrong,
                                    without_late)
from logpipe.windows import duration_seconds

# the names the CLI, the demo and the tests take from the package (`from logpipe.verify import X`); the rest
# of each module is its own
__all__ = [
    # recount
    "PARSED_FIELDS", "QUARANTINE_FIELDS", "LogCounts", "KeyedCounts", "count_log", "line_ranges", "row_fingerprint",
    # processes
    "run_in_processes",
    # tables
    "load_alerts", "read_until", "scan_quarantine",
    # windows
    "compare_counts", "window_table_types_wrong", "without_late",
    # accounting
    "check_job_accounting", "check_late_rows", "other_log_hint", "too_large_hint",
    # alerts
    "StatusReplay", "alert_payload_differences", "check_alert_figures", "check_alerts", "check_alerts_on_kafka",
    # truth
    "TruthFileError", "load_truth", "score_against_truth",
    # here
    "VerifyReport", "verify_run",
]


@dataclass
class VerifyReport:
    """What `logpipe verify` found: `ok` only if every part (accounting, both window tables, alerts) matched;
    each part holds its own figures and examples of what differed. `truth`: the alerts scored against the
    generator's planted incidents (None: the log has no truth file)."""

    ok: bool
    log: str
    seconds: float
    accounting: dict[str, Any]
    windows_by_host: dict[str, Any]
    windows_by_status: dict[str, Any]
    alerts: dict[str, Any]
    truth: dict[str, Any] | None
    windows_compared: int
    # what the counts and alerts were checked with (the root's record of them: results.settings_of_results), for
    # a reader to see that they are the ones meant, not only that the job agrees with itself
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def unchecked(self) -> str | None:
        """Why a check could not be made (the alerts topic unreadable: the broker lost during verify), or None."""
        kafka = self.alerts.get("kafka") or {}
        return kafka.get("error") if kafka.get("unchecked") else None

    @property
    def verdict(self) -> str:
        """"exact"; "incomplete" when every check made passed but one could not be made (see `unchecked`); else
        "mismatch"."""
        if self.ok:
            return "exact"
        made_ok = (self.windows_by_host["ok"] and self.windows_by_status["ok"] and self.accounting["ok"]
                   and self.alerts.get("rules_ok", False) and (self.truth is None or self.truth["ok"]))
        return "incomplete" if made_ok and self.unchecked else "mismatch"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict}, indent=2, default=str)


def verify_run(s: Settings, log_path: Path, truth_path: Path | None = None, *, strict_truth: bool = True,
               progress: bool = False, fs: Any = None, alerts_on_kafka: bool = True) -> VerifyReport:
    """Recount `log_path` and compare with the job's results under s.hdfs_root (on `fs`, default WebHDFS);
    `alerts_on_kafka`: also check that every alert was published to the Kafka alerts topic."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t0 = time.monotonic()
    size_s, slide_s = duration_seconds(s.window), duration_seconds(s.slide)

    tp = truth_path or truth_file_of(log_path)
    truth_data = load_truth(tp) if truth_path is not None or tp.exists() else None  # before the recount

    fs = fs or webhdfs_fs(s)
    # each micro-batch's bound: a line dated after it the job quarantined as timestamp_in_future. The recount sets
    # the lines of those records aside and counts them as the job decided; check_in_future then holds each decision
    # to its batch's bound (a line kept past it, or quarantined within it, is a mismatch)
    records = committed_accounting(s, fs)["per_batch"]
    bounds = batch_bounds(records)
    # and each bound is its batch's start plus the tolerance, on the clock (Spark's offset log, the commit times)
    starts = check_bounds_are_batch_starts(records, planned_times(s, fs) if bounds else {})
    del records
    in_future = scan_in_future(s, fs, bounds)
    # the producer sends a line over its message limit, or over the longest line it holds in memory, as too_large
    counts = count_log(log_path, size_s, slide_s, progress=progress,
                       max_line_bytes=min(s.max_message_bytes, LINE_CAP_BYTES), set_aside=frozenset(in_future.values))
    counts = resolve_set_aside(counts, in_future.values, size_s, slide_s)
    # the job's source lines, each table read once: events/ (each line at most once) and late/ (a line sent again
    # after it had left the horizon is kept there as well)
    def keys(t: Any) -> Any:
        return pa.chunked_array(t.column("src_key").chunks if t is not None else [], type=pa.string())

    event_keys = keys(load_arrow(s, "events", ["src_key"], fs=fs))
    late_t = load_arrow(s, "late", ["src_key", *PARSED_FIELDS], fs=fs)
    src_keys = pa.chunked_array(event_keys.chunks + keys(late_t).chunks, type=pa.string())
    late_rows = late_t.num_rows if late_t is not None else 0
    n_late_lines, late_unmatched, late_fingerprint = exclude_late_lines(counts, late_t, event_keys, size_s, slide_s)
    del late_t
    comparisons = compare_window_tables(s, fs, counts, size_s)
    host_cmp, status_cmp = comparisons["windows/by_host"], comparisons["windows/by_status"]
    # accounting: unique source lines in the job's tables vs the file (late: parsed lines the job kept aside)
    quarantine = scan_quarantine(s, fs)
    job_q_by_reason = quarantine.by_reason
    metrics_path = s.hdfs_path("_metrics", "latest.json")
    metrics = json.loads(fs.cat(metrics_path)) if fs.exists(metrics_path) else {}
    acc = {"lines": counts.lines, "parsed": counts.parsed, "quarantined": sum(counts.quarantined_by_reason.values()),
           "quarantined_by_reason": counts.quarantined_by_reason,
           "job_parsed_unique": int(pc.count_distinct(src_keys).as_py()) if len(src_keys) else 0,
           "job_event_rows": int(len(event_keys)),
           "job_event_lines": int(pc.count_distinct(event_keys).as_py()) if len(event_keys) else 0,
           "job_quarantined_unique": quarantine.unique, "job_quarantined_by_reason": job_q_by_reason,
           "quarantine_records_written_twice": quarantine.records_twice,
           "job_records_read": metrics.get("lines"), "late": metrics.get("late", 0),
           "duplicates_dropped": metrics.get("duplicates_dropped", 0),
           "late_lines_excluded": n_late_lines, "late_not_in_log": late_unmatched}
    del event_keys, src_keys  # a string per line: not held through the scan of events/ below
    pa.default_memory_pool().release_unused()
    # every parsed line of the file in events/ or late/, none twice in events/; every other line quarantined with
    # the reference parser's reason
    # events/ read once, record by record: its batches' time ranges (the late check and the detection delay) and
    # the fingerprint of its rows' fields, which with late/'s lines must be the file's parsed lines, field by field
    replay = StatusReplay(size_s, slide_s)

    def replay_rows(tag: tuple[str, int], rb: Any) -> None:
        if tag[0] == "b":
            replay.add(tag[1], _epoch_s_arrow(rb.column("timestamp")),
                       rb.column("http_response").to_numpy(zero_copy_only=False))

    scans = {"events": scan_table(s, "events", "timestamp", fs, fingerprint=PARSED_FIELDS, date_partition="date",
                                  on_rows=replay_rows),
             "late": scan_table(s, "late", "timestamp", fs)}
    newest = newest_event_per_batch(s, fs, scans)
    acc["late_check"] = check_late_rows(s, fs, scans)
    acc["future_check"] = check_in_future(scans, bounds, in_future, starts)
    acc["parsed_fields_equal"] = (scans["events"].fingerprint + late_fingerprint) % _MOD == counts.parsed_fingerprint
    acc["events_in_wrong_date_partition"] = scans["events"].wrong_partition
    acc["uncommitted_files"] = uncommitted_files(s, fs)
    acc["quarantine_records_equal"] = quarantine.fingerprint == counts.quarantine_fingerprint
    acc["job_accounting"] = check_job_accounting(s, fs, event_rows=acc["job_event_rows"], late_rows=late_rows,
                                                 quarantine_rows=quarantine.rows)
    if acc["job_accounting"]["batches"]:  # the figures shown from the committed batches' records, which are
        # checked: _metrics/latest.json is written when a run ends (a killed run's batches are not in it)
        job = acc["job_accounting"]
        acc.update(job_records_read=job["lines"], late=job["late"], duplicates_dropped=job["duplicates"])
    acc["ok"] = (acc["job_parsed_unique"] == counts.parsed and acc["job_event_rows"] == acc["job_event_lines"]
                 and acc["job_quarantined_unique"] == acc["quarantined"]
                 and job_q_by_reason == counts.quarantined_by_reason and late_unmatched == 0
                 and acc["late_check"]["ok"] and acc["future_check"]["ok"] and acc["job_accounting"]["ok"] and acc["parsed_fields_equal"]
                 and acc["quarantine_records_equal"] and not acc["events_in_wrong_date_partition"]
                 and not acc["quarantine_records_written_twice"]
                 and acc["uncommitted_files"]["ok"])
    acc["other_log"] = other_log_hint(counts.lines, acc["job_parsed_unique"] + acc["job_quarantined_unique"],
                                      log_path)
    # the log `logpipe demo` made this root's results of (its _source.json), when that is another file
    source_path = s.hdfs_path("_source.json")
    recorded = json.loads(fs.cat(source_path)).get("log") if fs.exists(source_path) else None
    acc["recorded_log"] = recorded if recorded and recorded != str(Path(log_path).resolve()) else None
    hints = [acc["other_log"], too_large_hint(s, counts.quarantined_by_reason, job_q_by_reason)]
    acc["hint"] = " ".join(h for h in hints if h) or None
    alerts = load_alerts(s, fs)
    alert_check = check_every_alert(s, fs, counts, alerts, replay, alerts_on_kafka)
    truth = None
    if truth_data is not None:
        truth = score_against_truth(alerts, truth_data, size_s, read_until(newest))
        met = truth["recall"] == 1.0 and truth["false_positives"] == 0
        truth["ok"] = met or not strict_truth
        truth["enforced"] = strict_truth  # --lenient-truth: scored and shown, not a condition of the verdict
        truth["hint"] = " ".join(h for h in (truth_log_hint(truth_data, counts.lines, tp, log_path),
                                             truth_settings_hint(truth_data, s, tp)) if h) or None
    ok = host_cmp["ok"] and status_cmp["ok"] and acc["ok"] and alert_check["ok"] and (truth is None or truth["ok"])
    return VerifyReport(ok=ok, log=str(log_path), seconds=round(time.monotonic() - t0, 2), accounting=acc,
                        windows_by_host=host_cmp, windows_by_status=status_cmp, alerts=alert_check, truth=truth,
                        windows_compared=host_cmp["compared"] + status_cmp["compared"],
                        settings={k: getattr(s, k) for k in RUN_SETTINGS})
