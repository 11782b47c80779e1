"""The job's TIMESTAMP_IN_FUTURE decisions against the bound each micro-batch recorded (its `not_after`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from logpipe.config import Settings
from logpipe.logformat import TIMESTAMP_IN_FUTURE, try_parse_line
from logpipe.results import committed_files
from logpipe.verify.tables import TableScan, _batch_of


def batch_bounds(records: Iterable[dict[str, Any]]) -> dict[int, int]:
    """{batch id: its `not_after` as epoch s} from the commit records of committed micro-batches: a line dated
    after it was quarantined as TIMESTAMP_IN_FUTURE. Records of an earlier logpipe hold none (it had no such
    rule): their batches are not in it."""
    return {int(r["batch"]): int(datetime.fromisoformat(r["not_after"]).timestamp())
            for r in records if r.get("not_after") and "batch" in r}


# how far the NameNode's clock (a checkpoint file's time) may lag the job's (its batch start): the same clock in the
# native stack and in compose, a few milliseconds apart on an NTP-kept cluster
CLOCK_SLACK_S = 5


def planned_times(s: Settings, fs: Any) -> dict[int, float]:
    """{batch id: when Spark planned that micro-batch, epoch s}: the modification time of its file in the query's
    offset log (`_checkpoints/ingest/offsets/<id>`), which Spark writes before it runs the batch. Spark keeps the
    newest 100 such files (spark.sql.streaming.minBatchesToRetain); older batches are not in it."""
    path = s.hdfs_path("_checkpoints", "ingest", "offsets")
    if not fs.exists(path):
        return {}
    out: dict[int, float] = {}
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.isdigit():  # not Spark's hidden temp files, nor a local file system's .crc files
            # WebHDFS's FileStatus has milliseconds; a local file system (the unit tests) an `mtime` in seconds
            out[int(name)] = (entry["modificationTime"] / 1000 if "modificationTime" in entry
                              else float(entry["mtime"]))
    return out


def check_bounds_are_batch_starts(records: Iterable[dict[str, Any]], planned: dict[int, float]) -> dict[str, Any]:
    """Each batch's bound is the moment it began plus the tolerance it recorded (`future_tolerance_s`), so that
    moment, `not_after - future_tolerance_s`, lies after Spark planned the batch (`planned`: planned_times; when
    Spark no longer keeps that file, after the batch before it committed, its record's `at`) and not after the
    batch's own commit (`at`), and the tolerance is not negative. A bound taken from the lines' own times, or of
    the wrong sign or unit, fails; the checks on each row (check_in_future) alone would take it as the job's word.
    Records of an earlier logpipe, which kept no tolerance, are counted as not checked."""
    wrong: list[int] = []
    checked = unchecked = 0
    prev_at: float | None = None
    for r in sorted((r for r in records if "batch" in r), key=lambda r: int(r["batch"])):
        bid, at = int(r["batch"]), r.get("at")
        if r.get("not_after") and r.get("future_tolerance_s") is not None and at is not None:
            checked += 1
            tolerance = float(r["future_tolerance_s"])
            start = datetime.fromisoformat(r["not_after"]).timestamp() - tolerance
            after = planned.get(bid, prev_at)  # the batch began after this (None: its first, Spark's file gone)
            if (tolerance < 0 or start > float(at)
                    or (after is not None and start < math.floor(after) - CLOCK_SLACK_S)):
                wrong.append(bid)
        elif r.get("not_after"):
            unchecked += 1
        prev_at = float(at) if at is not None else prev_at
    return {"checked": checked, "not_checked": unchecked, "not_at_the_batch_start": wrong}


@dataclass
class FutureScan:
    """The rows of quarantine/ with reason TIMESTAMP_IN_FUTURE: their record values (a multiset, each source line
    once, for resolve_set_aside), how many rows, and how many of them break their batch's bound (dated at or
    before it, a batch that recorded none, or a record that does not parse)."""

    values: Counter[bytes] = field(default_factory=Counter)
    rows: int = 0
    not_after_bound: int = 0


def scan_in_future(s: Settings, fs: Any, bounds: dict[int, int]) -> FutureScan:
    """Read the committed TIMESTAMP_IN_FUTURE rows of quarantine/ (few: a filter on the reason) and check each
    against the bound of the micro-batch that wrote it (`bounds`: batch_bounds)."""
    import pyarrow.dataset as ds

    out = FutureScan()
    files = committed_files(s, "quarantine", fs)
    if not files:
        return out
    path = s.hdfs_path("quarantine")
    table = ds.dataset(files, filesystem=fs, format="parquet").to_table(
        columns=["raw_bytes", "src_key", "__filename"], filter=ds.field("reason") == TIMESTAMP_IN_FUTURE)
    seen: set[str] = set()
    for value, key, name in zip(*(table.column(c).to_pylist() for c in ("raw_bytes", "src_key", "__filename"))):
        out.rows += 1
        tag = _batch_of(name, path)
        parsed = try_parse_line(value)
        bound = bounds.get(tag[1]) if tag is not None and tag[0] == "b" else None
        if bound is None or isinstance(parsed, str) or int(parsed.timestamp.timestamp()) <= bound:
            out.not_after_bound += 1
        if key not in seen:  # a source line sent twice is one line of the log
            seen.add(key)
            out.values[value] += 1
    return out


def check_in_future(scans: dict[str, TableScan], bounds: dict[int, int], future: FutureScan,
                    starts: dict[str, Any]) -> dict[str, Any]:
    """The job kept every line dated after its micro-batch's bound out of events/ and late/ (a batch's newest row
    there is not after it), quarantined only such lines (FutureScan.not_after_bound), and each bound is its batch's
    start plus the tolerance (`starts`: check_bounds_are_batch_starts)."""
    past = sorted({bid for table in ("events", "late") for (kind, bid), (_, newest) in scans[table].ranges.items()
                   if kind == "b" and bid in bounds and newest > bounds[bid]})
    wrong_start = starts["not_at_the_batch_start"]
    return {"batches_with_a_bound": len(bounds), "quarantined": future.rows,
            "quarantined_not_after_the_bound": future.not_after_bound, "batches_keeping_rows_past_the_bound": past[:10],
            "bounds_checked_against_the_clock": starts["checked"], "bounds_not_checked": starts["not_checked"],
            "bounds_not_at_the_batch_start": wrong_start[:10],
            "ok": not past and not future.not_after_bound and not wrong_start}
