"""The job's TIMESTAMP_IN_FUTURE decisions against the bound each micro-batch recorded (its `not_after`)."""

from __future__ import annotations

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


def check_in_future(scans: dict[str, TableScan], bounds: dict[int, int], future: FutureScan) -> dict[str, Any]:
    """The job kept every line dated after its micro-batch's bound out of events/ and late/ (a batch's newest row
    there is not after it), and quarantined only such lines (FutureScan.not_after_bound)."""
    past = sorted({bid for table in ("events", "late") for (kind, bid), (_, newest) in scans[table].ranges.items()
                   if kind == "b" and bid in bounds and newest > bounds[bid]})
    return {"batches_with_a_bound": len(bounds), "quarantined": future.rows,
            "quarantined_not_after_the_bound": future.not_after_bound, "batches_keeping_rows_past_the_bound": past[:10],
            "ok": not past and not future.not_after_bound}
