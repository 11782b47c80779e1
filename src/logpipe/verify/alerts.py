"""The job's alerts checked against the recount, replayed micro-batch by micro-batch, and on the Kafka topic."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from logpipe.config import Settings
from logpipe.results import committed_files
from logpipe.rules import FAILED_STATUS, alert_id
from logpipe.topics import TopicNotFound, TopicReadTimeout, read_topic
from logpipe.verify.recount import LogCounts
from logpipe.verify.tables import ALERT_FIELDS, _batch_of, _epoch_s, _epoch_s_arrow
from logpipe.windows import duration_seconds, window_starts_array


class StatusReplay:
    """Counts per (micro-batch, window, status) of the job's events/ rows, gathered record batch by record batch,
    to replay the failure-surge rule as the running counts stood after each micro-batch: a surge whose share
    fell below the rule by its window's end must still have been raised, in the batch that first crossed it."""

    def __init__(self, size_s: int, slide_s: int) -> None:
        self.size_s, self.slide_s = size_s, slide_s
        self.parts: list[pd.DataFrame] = []

    def add(self, batch: int, ts: np.ndarray, status: np.ndarray) -> None:
        status = np.asarray(status, dtype=np.int64)
        for starts in window_starts_array(ts, self.size_s, self.slide_s):
            keep = starts != -1
            keys, n = np.unique(starts[keep] * 1000 + status[keep], return_counts=True)  # a status is < 1000
            self.parts.append(pd.DataFrame({"batch": batch, "key": keys, "n": n}))

    def first_surges(self, min_count: int, min_share: float) -> pd.DataFrame:
        """(window_start, http_response, batch): each (window, failed status) whose running count and share
        met the surge rule after some micro-batch, with the first such batch."""
        empty = pd.DataFrame({"window_start": pd.Series(dtype="int64"), "http_response": pd.Series(dtype="int64"),
                              "batch": pd.Series(dtype="int64")})
        if not self.parts:
            return empty
        d = pd.concat(self.parts, ignore_index=True).groupby(["batch", "key"], as_index=False)["n"].sum()
        d["window_start"], d["http_response"] = d.key // 1000, d.key % 1000
        d = d.sort_values(["window_start", "http_response", "batch"], kind="stable")
        d["count"] = d.groupby(["window_start", "http_response"])["n"].cumsum()
        tot = (d.groupby(["window_start", "batch"], as_index=False)["n"].sum()
               .sort_values(["window_start", "batch"], kind="stable"))
        tot["total"] = tot.groupby("window_start")["n"].cumsum()
        # a status's running share can only rise in a batch that brought rows of it: testing those batches finds
        # the first crossing
        d = d.merge(tot[["window_start", "batch", "total"]], on=["window_start", "batch"])
        hit = d[(d.http_response >= FAILED_STATUS) & (d["count"] >= min_count) & (d["count"] / d["total"] >= min_share)]
        if not len(hit):
            return empty
        return hit.groupby(["window_start", "http_response"], as_index=False)["batch"].min()


def expected_alerts(c: LogCounts, s: Settings) -> pd.DataFrame:
    """(rule, key, window_start) the rules imply for the FINAL window counts."""
    rate = c.host.frame(c.host.count >= s.rate_limit_ceiling)
    rate = pd.DataFrame({"rule": "rate_limit", "key": rate.host.astype(str), "window_start": rate.window_start})
    st = c.by_status.merge(c.window_totals, on="window_start")
    st = st[(st.http_response >= FAILED_STATUS) & (st["count"] >= s.surge_min_count)
            & (st["count"] / st.total >= s.surge_min_share)]
    surge = pd.DataFrame({"rule": "failure_surge", "key": st.http_response.astype(str),
                          "window_start": st.window_start})
    return pd.concat([rate, surge], ignore_index=True)


def check_alerts(c: LogCounts, alerts: pd.DataFrame, s: Settings,
                 surges: pd.DataFrame | None = None) -> dict[str, Any]:
    """Every alert the counts imply was raised, exactly once; raised alerts are backed by the counts. The rate
    limits are those of the final counts (a running count only grows); the surges are `surges`
    (StatusReplay.first_surges: those the running counts met after any micro-batch, including the ones whose
    share fell by the window's end) when given, else those of the final counts, plus any raised surge whose final
    count meets the count rule (a transient share)."""
    exp = expected_alerts(c, s)
    final_surges = int((exp.rule == "failure_surge").sum())
    if surges is not None:
        exp = pd.concat([exp[exp.rule == "rate_limit"], pd.DataFrame({
            "rule": "failure_surge", "key": surges.http_response.astype(str),
            "window_start": surges.window_start.astype("int64")})], ignore_index=True)
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
    if surges is None:
        weak = extra_surge[extra_surge["count"].fillna(0) < s.surge_min_count]
        unexplained_rows = pd.concat([extra[extra.rule == "rate_limit"], weak[["rule", "key", "window_start"]]])
        transient = int(len(extra)) - len(unexplained_rows)
    else:  # every surge the running counts met is expected: any other alert is unexplained
        unexplained_rows = extra
        transient = max(int(len(surges)) - final_surges, 0)  # a failing run may replay fewer than are final
    unexplained = int(len(unexplained_rows))
    off_rule = alert_rows_off_rule(c, alerts, s)
    return {"expected": int(len(exp)), "raised": int(len(act)), "missing": int(len(missing)),
            "duplicates": dups, "transient_surges": transient, "unexplained": unexplained,
            "off_rule": off_rule, "ok": not (len(missing) or dups or unexplained or off_rule),
            "examples_missing": json.loads(missing.drop(columns="_merge").head(10).to_json(orient="records")),
            "examples_unexplained": json.loads(unexplained_rows[["rule", "key", "window_start"]].head(10)
                                               .to_json(orient="records"))}


def alert_rows_off_rule(c: LogCounts, alerts: pd.DataFrame, s: Settings) -> int:
    """Raised alerts whose own figures break their rule: a count under the threshold, a surge's share under the
    minimum, or a count over the window's final count (a window's running count only grows)."""
    if not len(alerts):
        return 0
    a = alerts.assign(window_start=_epoch_s(alerts.window_start))
    final_host = c.host.frame(c.host.count >= s.rate_limit_ceiling)
    final_host = pd.DataFrame({"window_start": final_host.window_start, "key": final_host.host.astype(str),
                               "final": final_host["count"]})
    rate = a[a.rule == "rate_limit"].merge(final_host, on=["window_start", "key"], how="left")
    final_status = pd.DataFrame({"window_start": c.by_status.window_start,
                                 "key": c.by_status.http_response.astype(str), "final": c.by_status["count"]})
    surge = a[a.rule == "failure_surge"].merge(final_status, on=["window_start", "key"], how="left")
    bad_rate = (rate["count"] < s.rate_limit_ceiling) | ~(rate["count"] <= rate["final"])  # NaN final: no window
    bad_surge = ((surge["count"] < s.surge_min_count) | ~(surge["share"] >= s.surge_min_share - 1e-12)
                 | ~(surge["count"] <= surge["final"]))
    return int(bad_rate.sum() + bad_surge.sum())


def merged_ranges(starts: "np.ndarray", size_s: int) -> list[list[int]]:
    """The windows [start, start + size_s) of the sorted `starts`, merged where they overlap or touch: [lo, hi)."""
    ranges: list[list[int]] = []
    for a in starts:
        if ranges and a <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], a + size_s)
        else:
            ranges.append([a, a + size_s])
    return ranges


def _events_in_ranges(s: Settings, fs: Any, ranges: list[list[int]]) -> pd.DataFrame:
    """The committed events/ rows whose time (epoch s) is in one of `ranges`: t, host, status and the batch that
    wrote them (by file tag). Files of other days are skipped, then the rows in the ranges kept (a root written
    before logpipe stored INT64 timestamps holds INT96 ones, which carry no statistics to filter files by)."""
    import pyarrow.parquet as pq

    events_dir = s.hdfs_path("events")
    lo_arr = np.array([r[0] for r in ranges], dtype=np.int64)
    hi_arr = np.array([r[1] for r in ranges], dtype=np.int64)
    days = {datetime.fromtimestamp(int(x), timezone.utc).strftime("%Y-%m-%d") for lo, hi in ranges
            for x in range(int(lo) - int(lo) % 86400, int(hi), 86400)}
    parts = []
    for f in committed_files(s, "events", fs):
        at = f.find(events_dir.strip("/"))  # the partition below events/, not a `date=` folder of the root's own
        below = f[at + len(events_dir.strip("/")):] if at >= 0 else f
        day = below.split("/date=", 1)[1][:10] if "/date=" in below else None
        tag = _batch_of(f, events_dir)
        if (day is not None and day not in days) or tag is None:
            continue
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, columns=["timestamp", "host", "http_response"])
        ts = _epoch_s_arrow(table.column("timestamp"))
        at = np.searchsorted(lo_arr, ts, "right") - 1  # the range that starts last at or before each row
        rows = np.nonzero((at >= 0) & (ts < hi_arr[np.maximum(at, 0)]))[0]
        if len(rows):
            parts.append(pd.DataFrame({
                "t": ts[rows], "host": table.column("host").take(rows).to_numpy(zero_copy_only=False),
                "status": table.column("http_response").take(rows).to_numpy(zero_copy_only=False),
                "batch": tag[1]}))
    return (pd.concat(parts, ignore_index=True) if parts else
            pd.DataFrame({"t": pd.Series(dtype="int64"), "host": pd.Series(dtype=object),
                          "status": pd.Series(dtype="int64"), "batch": pd.Series(dtype="int64")}))


def check_alert_figures(s: Settings, fs: Any, alerts: pd.DataFrame, size_s: int) -> dict[str, Any]:
    """Each alert against the running counts of its window when the micro-batch that raised it committed, replayed
    from the events/ rows of that batch and the ones before it (by file tag), in that window:
    - its count, and a surge's share (the final counts alone cannot tell a share, which is taken part-way through
      its window): a job that divided by the wrong total, or counted a batch's rows twice, does not pass;
    - raised as soon as the rule held: the running counts after the batches before it must not have met the rule
      (a job that evaluated its rules only on final windows raises late);
    - its other columns: window_end = window_start + window, the rule's threshold, a unique alert_id that is the
      stable id of (rule, key, window_start) (logpipe.rules.alert_id), and
      top_hosts: [host] for a rate limit; for a surge, the hosts with most requests of that status in the window
      so far (ties by host name), as many as surge_top_hosts allows."""
    if not len(alerts):
        return {"checked": 0, "wrong": 0, "raised_late": 0, "columns_wrong": 0, "examples": [], "ok": True}
    lacking = {c for row in alerts.get("absent_columns", []) for c in str(row).split(",") if c}  # see load_alerts
    absent = [c for c in ALERT_FIELDS if c not in alerts.columns or c in lacking]
    if absent:  # no figure is taken from the rule in a column's place: the table is not the job's
        return {"checked": int(len(alerts)), "wrong": 0, "raised_late": 0, "columns_wrong": int(len(alerts)),
                "examples": [{"problem": f"alerts/ has no column {', '.join(absent)} (the job writes "
                              f"{', '.join(ALERT_FIELDS)})"}], "ok": False}
    alerts = alerts.assign(ws=_epoch_s(alerts.window_start))
    ev = _events_in_ranges(s, fs, merged_ranges(np.unique(alerts.ws.to_numpy()), size_s))
    # sorted by time, each alert reads only its window's slice (not every row once per alert: 1,800 alerts over
    # millions of rows at 2.5 GB)
    ev = ev.sort_values("t", kind="stable")
    t_, host_, status_, batch_ = (ev[c].to_numpy() for c in ("t", "host", "status", "batch"))
    ceiling, min_count, min_share = s.rate_limit_ceiling, s.surge_min_count, s.surge_min_share
    id_repeated = alerts["alert_id"].duplicated(keep=False).to_numpy()
    ends = _epoch_s(alerts.window_end).to_numpy()
    wrong, late, columns = [], [], []
    for i, a in enumerate(alerts.itertuples(index=False)):
        lo, hi = np.searchsorted(t_, a.ws, "left"), np.searchsorted(t_, a.ws + size_s, "left")
        b_, h_, st_ = batch_[lo:hi], host_[lo:hi], status_[lo:hi]
        upto = b_ <= a.batch
        if a.rule == "rate_limit":
            mine = h_ == a.key
            count, share = int((mine & upto).sum()), None
            raised_late = int((mine & (b_ < a.batch)).sum()) >= ceiling
            top, threshold = [a.key], ceiling
        else:
            mine = st_ == int(a.key)
            count = int((mine & upto).sum())
            total = int(upto.sum())
            share = count / total if total else None
            # the rule met after an earlier batch (its share can only rise in a batch that brought rows of it)
            raised_late = any(
                (n := int((mine & (b_ <= b)).sum())) >= min_count and n / int((b_ <= b).sum()) >= min_share
                for b in np.unique(b_[mine & (b_ < a.batch)]))
            per_host = pd.Series(h_[mine & upto]).value_counts()
            ranked = sorted(per_host.items(), key=lambda kv: (-kv[1], kv[0]))
            top, threshold = [h for h, _ in ranked[:s.surge_top_hosts]], min_count
        good = int(a.count) == count and (share is None or (a.share is not None and abs(a.share - share) < 1e-9))
        seen = {"rule": a.rule, "key": a.key, "window_start": int(a.ws), "batch": int(a.batch),
                "count": int(a.count), "share": None if a.share is None or pd.isna(a.share) else a.share}
        if not good:
            wrong.append({**seen, "replayed_count": count, "replayed_share": share})
        if raised_late:
            late.append({**seen, "problem": "the rule held after an earlier batch"})
        got_top = [] if a.top_hosts is None else list(a.top_hosts)
        stable_id = alert_id(a.rule, a.key, datetime.fromtimestamp(int(a.ws), timezone.utc))
        bad = [name for name, ok in (("window_end", int(ends[i]) == int(a.ws) + size_s),
                                     ("threshold", a.threshold == threshold), ("top_hosts", got_top == top),
                                     ("alert_id", not id_repeated[i] and a.alert_id == stable_id)) if not ok]
        if bad:
            columns.append({**seen, "problem": ", ".join(bad), "top_hosts": got_top, "replayed_top_hosts": top})
    return {"checked": int(len(alerts)), "wrong": len(wrong), "raised_late": len(late), "columns_wrong": len(columns),
            "examples": (wrong + late + columns)[:10], "ok": not (wrong or late or columns)}


ALERT_TIME_FIELDS = ("window_start", "window_end", "detected_at")


def _same_alert_field(k: str, have: Any, want: Any) -> bool:
    """Whether field `k` of a published alert (`have`, from its JSON) is the value of its row (`want`)."""
    try:
        if k in ALERT_TIME_FIELDS:  # a naive time (a root's INT96 column) is UTC, as everywhere in logpipe
            return have is not None and abs(pd.to_datetime(have, utc=True) - pd.to_datetime(want, utc=True)) < \
                pd.Timedelta(1, "ms")
        if k == "share":
            return (have is None) == pd.isna(want) and (have is None or abs(float(have) - float(want)) <= 1e-12)
        if k == "top_hosts":
            return list(have or []) == list(want)
        return bool(have == want)
    except (TypeError, ValueError):
        return False


def alert_payload_differences(row: dict[str, Any], value: bytes | None) -> list[str]:
    """How an alert's Kafka record value (the JSON object the job publishes) differs from its row of alerts/: one
    text per field, none if it is the same alert. Times are compared to the millisecond (JSON has no more)."""
    try:
        got = json.loads(value)  # type: ignore[arg-type]
        if not isinstance(got, dict):
            raise ValueError(f"a JSON {type(got).__name__}")
    except (TypeError, ValueError) as exc:
        return [f"not the JSON object of an alert ({exc})"]
    diffs = [f"{k} unexpected" for k in got if k not in ALERT_FIELDS]
    for k, want in row.items():
        if k not in ALERT_FIELDS:  # e.g. the batch tag verify adds to a row
            continue
        if k not in got:
            diffs.append(f"{k} absent")
            continue
        have = got[k]
        if isinstance(want, np.generic):
            want = want.item()
        if not _same_alert_field(k, have, want):
            shown = list(want) if isinstance(want, np.ndarray) else str(want) if k in ALERT_TIME_FIELDS else want
            diffs.append(f"{k} {have!r} (alerts/ has {shown!r})")
    return diffs


def check_alerts_on_kafka(s: Settings, alerts: pd.DataFrame, timeout_s: float | None = None) -> dict[str, Any]:
    """Every committed alert was published to the Kafka topic `alerts_topic` (keyed by its alert_id), as the same
    JSON object as its row of alerts/: the topic is read from its start to its end. Copies of an alert (at least
    once: a crash between the send and its marker) and alerts of other roots (the same log on another root has the
    same ids) are reported, not failed."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    wanted = set(alerts["alert_id"]) if len(alerts) else set()

    def failed(error: str, read: list, ok: bool = False, unchecked: bool = False) -> dict[str, Any]:
        got = {r.key.decode("utf-8", "replace") for r in read if r.key}
        return {"topic": s.alerts_topic, "published": len(got), "missing": len(wanted - got), "copies": 0,
                "error": error, "ok": ok, "unchecked": unchecked}

    try:
        records = read_topic(s, s.alerts_topic, s.connect_timeout_s if timeout_s is None else timeout_s)
    except KafkaConfigurationError:
        raise
    except TopicNotFound:  # not "alerts lost": the topic itself is not there
        return failed(f"topic {s.alerts_topic} does not exist on {s.kafka_address} (the job makes it when it "
                      "starts: was it deleted, or is --alerts-topic / LOGPIPE_ALERTS_TOPIC another name than the job's?)", [],
                      ok=not wanted)
    except TopicReadTimeout as exc:
        return failed(str(exc), exc.records, ok=not wanted, unchecked=bool(wanted))
    except KafkaError as exc:  # with no alert to find, there is nothing to check on the topic
        return failed(f"Kafka at {s.kafka_address} not reachable ({exc}): is it running? `logpipe stack status`", [],
                      ok=not wanted, unchecked=bool(wanted))
    rows = {r["alert_id"]: r for r in alerts.to_dict("records")} if len(alerts) else {}
    seen: dict[str, int] = {}
    same: set[str] = set()  # ids with a record equal to their row
    unlike: dict[str, dict[str, Any]] = {}  # id -> its first record unlike its row
    for r in records:
        key = r.key.decode("utf-8", "replace") if r.key else ""
        seen[key] = seen.get(key, 0) + 1
        if key in rows:
            if diffs := alert_payload_differences(rows[key], r.value):
                unlike.setdefault(key, {"alert_id": key, "offset": r.offset, "differs": diffs[:5]})
            else:
                same.add(key)
    # an id whose records are all unlike its row was published wrong; a record unlike the row beside an equal one
    # is another root's alert of the same window (the same log on another root, on a shared topic: its own
    # detected_at, and counts of its own micro-batches)
    wrong = [w for k, w in unlike.items() if k not in same]
    missing = sorted(wanted - set(seen))
    return {"topic": s.alerts_topic, "published": sum(seen[k] for k in wanted if k in seen), "missing": len(missing),
            "copies": sum(seen[k] - 1 for k in wanted if seen.get(k, 0) > 1), "wrong_payload": len(wrong),
            "other_roots_records": len(set(unlike) & same), "other_alerts": len(set(seen) - wanted),
            "examples_missing": missing[:10], "examples_wrong": wrong[:5], "ok": not missing and not wrong}


def check_every_alert(s: Settings, fs: Any, counts: LogCounts, alerts: pd.DataFrame, replay: StatusReplay,
                      alerts_on_kafka: bool) -> dict[str, Any]:
    """The job's alerts against the batch counts (check_alerts), against the running counts of the micro-batch
    that raised each (check_alert_figures), and, with `alerts_on_kafka`, on the Kafka alerts topic."""
    size_s = duration_seconds(s.window)
    check = check_alerts(counts, alerts, s, replay.first_surges(s.surge_min_count, s.surge_min_share))
    check["figures"] = check_alert_figures(s, fs, alerts, size_s)
    check["kafka"] = check_alerts_on_kafka(s, alerts) if alerts_on_kafka else None
    # the alerts' own checks, apart from the topic's: what a report says when only the topic could not be read
    check["rules_ok"] = check["ok"] and check["figures"]["ok"]
    check["ok"] = check["rules_ok"] and (check["kafka"] is None or check["kafka"]["ok"])
    return check
