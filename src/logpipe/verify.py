"""`logpipe verify`: recompute window counts and accounting from the raw log (independently of Spark) and
compare them row by row with the job's results on HDFS; score alerts against the generator's ground truth."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logpipe.config import Settings
from logpipe.logformat import try_parse_line
from logpipe.windows import duration_seconds, window_starts_array

log = logging.getLogger(__name__)
CHUNK_LINES = 500_000


@dataclass
class BatchCounts:
    """Counts computed from the raw log."""

    lines: int = 0
    parsed: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    by_host: pd.DataFrame | None = None      # window_start (int s), host, count
    by_status: pd.DataFrame | None = None    # window_start (int s), http_response, count
    window_totals: pd.DataFrame | None = None  # window_start, total


def count_log(path: Path, size_s: int, slide_s: int, progress: bool = False) -> BatchCounts:
    """Parse every line with the reference parser and count per (window, host) and (window, status)."""
    out = BatchCounts()
    host_parts, status_parts = [], []

    def flush(ts: list[int], hosts: list[str], statuses: list[int]) -> None:
        if not ts:
            return
        t = np.asarray(ts, dtype=np.int64)
        frame = pd.DataFrame({"host": hosts, "http_response": np.asarray(statuses, dtype=np.int32)})
        for starts in window_starts_array(t, size_s, slide_s):
            f = frame.assign(window_start=starts)
            f = f[f.window_start >= 0] if (starts < 0).any() else f
            host_parts.append(f.groupby(["window_start", "host"], sort=False).size())
            status_parts.append(f.groupby(["window_start", "http_response"], sort=False).size())

    ts: list[int] = []
    hosts: list[str] = []
    statuses: list[int] = []
    with path.open("rb") as f:
        for raw in f:
            out.lines += 1
            r = try_parse_line(raw)
            if isinstance(r, str):
                out.quarantined_by_reason[r] = out.quarantined_by_reason.get(r, 0) + 1
                continue
            out.parsed += 1
            ts.append(int(r.timestamp.timestamp()))
            hosts.append(r.host)
            statuses.append(r.http_response)
            if len(ts) >= CHUNK_LINES:
                flush(ts, hosts, statuses)
                ts, hosts, statuses = [], [], []
                if progress:
                    log.info("verify: %s lines read", f"{out.lines:,}")
    flush(ts, hosts, statuses)

    def merge(parts: list[pd.Series], key: str) -> pd.DataFrame:
        if not parts:
            return pd.DataFrame(columns=["window_start", key, "count"])
        s = pd.concat(parts).groupby(level=[0, 1], sort=False).sum()
        return s.rename("count").reset_index()

    out.by_host = merge(host_parts, "host")
    out.by_status = merge(status_parts, "http_response")
    out.window_totals = out.by_status.groupby("window_start", as_index=False)["count"].sum().rename(
        columns={"count": "total"})
    return out


def _epoch_s(col: pd.Series) -> pd.Series:
    """Timestamps from Parquet (datetime64, naive UTC or aware) -> epoch seconds."""
    c = pd.to_datetime(col, utc=True)
    return (c - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def compare_counts(expected: pd.DataFrame, actual: pd.DataFrame, key: str, limit: int = 10) -> dict[str, Any]:
    """Row-by-row comparison of (window_start, key) -> count. Reports missing, extra, wrong and duplicate rows."""
    dup_mask = actual.duplicated(["window_start", key], keep=False)
    dups = actual[dup_mask]
    act = actual.drop_duplicates(["window_start", key])
    m = expected.merge(act, on=["window_start", key], how="outer", suffixes=("_expected", "_actual"),
                       indicator=True)
    missing = m[m._merge == "left_only"]
    extra = m[m._merge == "right_only"]
    both = m[m._merge == "both"]
    wrong = both[both.count_expected != both.count_actual]

    def sample(df: pd.DataFrame) -> list[dict]:
        return json.loads(df.drop(columns=["_merge"], errors="ignore").head(limit).to_json(orient="records"))

    return {"compared": int(len(m)), "expected_rows": int(len(expected)), "actual_rows": int(len(actual)),
            "missing": int(len(missing)), "extra": int(len(extra)), "wrong": int(len(wrong)),
            "duplicates": int(len(dups)), "ok": not (len(missing) or len(extra) or len(wrong) or len(dups)),
            "examples": {"missing": sample(missing), "extra": sample(extra), "wrong": sample(wrong),
                         "duplicates": sample(dups)}}


def expected_alerts(c: BatchCounts, s: Settings) -> pd.DataFrame:
    """(rule, key, window_start) the rules imply for the FINAL window counts."""
    rate = c.by_host[c.by_host["count"] >= s.rate_limit_ceiling]
    rate = pd.DataFrame({"rule": "rate_limit", "key": rate.host.astype(str), "window_start": rate.window_start})
    st = c.by_status.merge(c.window_totals, on="window_start")
    st = st[(st.http_response >= 400) & (st["count"] >= s.surge_min_count)
            & (st["count"] / st.total >= s.surge_min_share)]
    surge = pd.DataFrame({"rule": "failure_surge", "key": st.http_response.astype(str),
                          "window_start": st.window_start})
    return pd.concat([rate, surge], ignore_index=True)


def check_alerts(c: BatchCounts, alerts: pd.DataFrame, s: Settings) -> dict[str, Any]:
    """Every alert the final counts imply was raised, exactly once; raised alerts are backed by the counts."""
    exp = expected_alerts(c, s)
    act = alerts[["rule", "key"]].assign(window_start=_epoch_s(alerts.window_start)) if len(alerts) else \
        pd.DataFrame(columns=["rule", "key", "window_start"])
    dups = int(act.duplicated().sum())
    m = exp.merge(act.drop_duplicates(), how="outer", indicator=True)
    missing = m[m._merge == "left_only"]
    extra = m[m._merge == "right_only"]
    # a surge alert fires when count and share cross during the window; the share may drop below the rule by the
    # window's end (more traffic arrived). Such an alert is right if the final count still meets the count rule.
    st = c.by_status.assign(key=c.by_status.http_response.astype(str))
    extra_surge = extra[extra.rule == "failure_surge"].merge(st, on=["window_start", "key"], how="left")
    unexplained = int((extra.rule == "rate_limit").sum() + (extra_surge["count"].fillna(0) < s.surge_min_count).sum())
    return {"expected": int(len(exp)), "raised": int(len(act)), "missing": int(len(missing)),
            "duplicates": dups, "transient_surges": int(len(extra)) - unexplained, "unexplained": unexplained,
            "ok": not (len(missing) or dups or unexplained),
            "examples_missing": json.loads(missing.drop(columns="_merge").head(10).to_json(orient="records"))}


def score_against_truth(alerts: pd.DataFrame, truth: dict[str, Any], size_s: int) -> dict[str, Any]:
    """Recall over the incidents' expected alerts, precision over raised alerts, detection delay."""

    def ts(iso: str) -> int:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())

    a = alerts.assign(ws=_epoch_s(alerts.window_start)) if len(alerts) else pd.DataFrame(
        columns=["rule", "key", "ws"])
    matched_alerts: set[int] = set()
    incidents = []
    found = wanted = 0
    for inc in truth.get("incidents", []):
        start, end = ts(inc["start"]), ts(inc["end"])
        rows = []
        for e in inc.get("expected_alerts", []):
            wanted += 1
            hit = a[(a.rule == e["rule"]) & (a.key == e["key"]) & (a.ws < end) & (a.ws + size_s > start)]
            matched_alerts.update(hit.index.tolist())
            if len(hit):
                found += 1
                delay = int(hit.ws.min()) + size_s - start
            else:
                delay = None
            rows.append({**e, "detected": bool(len(hit)), "alerts": int(len(hit)), "delay_s": delay})
        incidents.append({"id": inc["id"], "kind": inc["kind"], "start": inc["start"], "end": inc["end"],
                          "expected": rows})
    false_pos = a.drop(index=list(matched_alerts))
    return {"recall": found / wanted if wanted else 1.0,
            "precision": (len(a) - len(false_pos)) / len(a) if len(a) else 1.0,
            "expected_alerts": wanted, "detected": found, "false_positives": int(len(false_pos)),
            "false_positive_examples": json.loads(false_pos.head(10).to_json(orient="records", date_format="iso")),
            "incidents": incidents}


@dataclass
class VerifyReport:
    ok: bool
    log: str
    seconds: float
    accounting: dict[str, Any]
    windows_by_host: dict[str, Any]
    windows_by_status: dict[str, Any]
    alerts: dict[str, Any]
    truth: dict[str, Any] | None
    windows_compared: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def verify_run(s: Settings, log_path: Path, truth_path: Path | None = None, *, strict_truth: bool = True,
               progress: bool = False) -> VerifyReport:
    from logpipe.results import load_table, webhdfs_fs

    t0 = time.monotonic()
    size_s, slide_s = duration_seconds(s.window), duration_seconds(s.slide)
    counts = count_log(log_path, size_s, slide_s, progress=progress)
    fs = webhdfs_fs(s)
    by_host = load_table(s, "windows/by_host", ["window_start", "host", "count"], fs=fs)
    by_status = load_table(s, "windows/by_status", ["window_start", "http_response", "count"], fs=fs)
    for df in (by_host, by_status):
        if len(df):
            df["window_start"] = _epoch_s(df["window_start"])
    host_cmp = compare_counts(counts.by_host, by_host, "host")
    status_cmp = compare_counts(counts.by_status.astype({"http_response": "int32"}),
                                by_status.astype({"http_response": "int32"}) if len(by_status) else by_status,
                                "http_response")
    # accounting: unique source lines in the job's tables vs the file
    events = load_table(s, "events", ["src_key"], fs=fs)
    late = load_table(s, "late", ["src_key"], fs=fs)  # parsed lines the job kept aside as late (not in windows)
    if len(late):
        events = pd.concat([events, late], ignore_index=True)
    quarantine = load_table(s, "quarantine", ["src_key", "reason"], fs=fs)
    q_unique = quarantine.drop_duplicates("src_key") if len(quarantine) else quarantine
    job_q_by_reason = q_unique.groupby("reason").size().to_dict() if len(q_unique) else {}
    metrics_path = s.hdfs_path("_metrics", "latest.json")
    metrics = json.loads(fs.cat(metrics_path)) if fs.exists(metrics_path) else {}
    acc = {"lines": counts.lines, "parsed": counts.parsed, "quarantined": sum(counts.quarantined_by_reason.values()),
           "quarantined_by_reason": counts.quarantined_by_reason,
           "job_parsed_unique": int(events.src_key.nunique()) if len(events) else 0,
           "job_event_rows": int(len(events)),
           "job_quarantined_unique": int(len(q_unique)), "job_quarantined_by_reason": job_q_by_reason,
           "job_records_read": metrics.get("lines"), "late": metrics.get("late", 0),
           "duplicates_dropped": metrics.get("duplicates_dropped", 0)}
    acc["ok"] = (acc["job_parsed_unique"] == counts.parsed and acc["job_quarantined_unique"] == acc["quarantined"]
                 and job_q_by_reason == counts.quarantined_by_reason
                 and counts.lines == counts.parsed + acc["quarantined"])
    alerts = load_table(s, "alerts", fs=fs)
    alert_check = check_alerts(counts, alerts, s)
    truth = None
    tp = truth_path or log_path.with_name(log_path.name + ".truth.json")
    if tp.exists():
        truth = score_against_truth(alerts, json.loads(tp.read_text()), size_s)
        truth["ok"] = (truth["recall"] == 1.0 and truth["false_positives"] == 0) if strict_truth else True
    ok = host_cmp["ok"] and status_cmp["ok"] and acc["ok"] and alert_check["ok"] and (truth is None or truth["ok"])
    return VerifyReport(ok=ok, log=str(log_path), seconds=round(time.monotonic() - t0, 2), accounting=acc,
                        windows_by_host=host_cmp, windows_by_status=status_cmp, alerts=alert_check, truth=truth,
                        windows_compared=host_cmp["compared"] + status_cmp["compared"])
