"""Reading the job's tables on HDFS: their committed files, time ranges, fingerprints, alerts and stray files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from logpipe.config import Settings
from logpipe.results import TABLES, committed_files, committed_tags
from logpipe.root_layout import COMMITS, PENDING, file_tag, in_staging, list_markers, marker_tag, tag_id
from logpipe.verify.recount import _MOD, QUARANTINE_FIELDS, KeyedCounts, row_fingerprint, row_hashes


@dataclass
class QuarantineScan:
    """The quarantine/ table read record batch by record batch: its rows, its records once per source line (by
    src_key, the first row of each), their count per reason and their row_fingerprint of QUARANTINE_FIELDS."""

    rows: int = 0
    unique: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    fingerprint: int = 0
    # rows beyond the first of one Kafka record (partition, offset): a re-sent line is another record and is kept,
    # the same record written twice is a job's error that the once-per-line counts above cannot see
    records_twice: int = 0


def scan_quarantine(s: Settings, fs: Any) -> QuarantineScan:
    """Read quarantine/ in bounded memory: per row, only a 64-bit hash of its src_key, the hash of its record and
    reason, and its reason's code are kept (24 bytes a row, where the table held the raw lines: a log of mostly
    bad lines would otherwise take twice its size in memory)."""
    import pyarrow.dataset as ds

    files = committed_files(s, "quarantine", fs)
    out = QuarantineScan()
    if not files:
        return out
    keys, hashes, codes, records = [], [], [], []
    reasons: dict[str, int] = {}
    scanner = ds.dataset(files, filesystem=fs, format="parquet").scanner(
        columns=["src_key", "kafka_partition", "kafka_offset", *QUARANTINE_FIELDS], fragment_readahead=1,
        batch_readahead=2)
    for rb in scanner.to_batches():
        if not rb.num_rows:
            continue
        cols = {c: rb.column(c).to_pandas() for c in ("src_key", *QUARANTINE_FIELDS)}
        keys.append(pd.util.hash_pandas_object(cols["src_key"], index=False).to_numpy())
        records.append(pd.util.hash_pandas_object(pd.DataFrame({c: rb.column(c).to_pandas() for c in (
            "kafka_partition", "kafka_offset")}), index=False).to_numpy())
        hashes.append(row_hashes(cols, QUARANTINE_FIELDS))
        codes.append(np.array([reasons.setdefault(r, len(reasons)) for r in cols["reason"]], dtype=np.int32))
    key_arr = np.concatenate(keys)
    out.rows = len(key_arr)
    out.records_twice = out.rows - len(np.unique(np.concatenate(records)))
    _, first = np.unique(key_arr, return_index=True)  # the first row of each source line, as drop_duplicates keeps
    del key_arr
    out.unique = len(first)
    out.fingerprint = int(np.concatenate(hashes)[first].sum(dtype=np.uint64))
    names = list(reasons)
    per_code = np.bincount(np.concatenate(codes)[first], minlength=len(names))
    out.by_reason = {names[i]: int(n) for i, n in enumerate(per_code) if n}
    return out


class FractionalTimes(ValueError):
    """A time of the job's tables is not a whole second: the log's times are, and so are windows of whole-second
    lengths; compared as whole seconds, such a time would pass unseen (a parse that keeps a fraction, a unit mixed
    up). verify then says MISMATCH."""


def _whole_seconds(since_epoch: np.ndarray, per_s: int, what: str) -> np.ndarray:
    """`since_epoch` (int64, `per_s` units a second) as epoch seconds; FractionalTimes if any is not whole."""
    if per_s > 1 and len(since_epoch) and (bad := np.flatnonzero(since_epoch % per_s)).size:
        first = np.datetime64(int(since_epoch[bad[0]]) * (1_000_000_000 // per_s), "ns")
        raise FractionalTimes(f"{what} holds {bad.size:,} time(s) with a fraction of a second (e.g. {first}): the "
                              "job's times are whole seconds, as the log's are")
    return since_epoch // per_s


def _epoch_s(col: pd.Series, what: str = "a time column of the results") -> pd.Series:
    """Timestamps from Parquet (datetime64, naive UTC or aware) -> epoch seconds (FractionalTimes if one is not a
    whole second)."""
    c = pd.to_datetime(col, utc=True)
    ns = (c - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(nanoseconds=1)
    return pd.Series(_whole_seconds(ns.to_numpy(dtype=np.int64), 1_000_000_000, what), index=col.index)


def _epoch_s_arrow(col: Any, what: str = "a time column of the results") -> np.ndarray:
    """An Arrow timestamp column -> int64 epoch seconds (FractionalTimes if one is not a whole second)."""
    import pyarrow as pa

    per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
    return _whole_seconds(np.asarray(col.cast(pa.int64()).to_numpy(), dtype=np.int64), per_s, what)


def keyed_counts_of_table(table: Any, key: str, labels: list[Any]) -> KeyedCounts:
    """A result table (Arrow: window_start, <key>, count) coded against the expected table's labels."""
    if table is None or not table.num_rows:
        return KeyedCounts(key, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), list(labels))
    return KeyedCounts.from_arrays(key, _epoch_s_arrow(table.column("window_start"), "window_start"), table.column(key),
                                   table.column("count").to_numpy(), labels)


def _batch_of(path: str, table_dir: str) -> tuple[str, int] | None:
    """('b', id) for a micro-batch's file `b<id>-NNNNN.parquet` under `table_dir`, ('f', id) for the flush after
    batch id; None for anything else (Spark's _SUCCESS, a staging folder, a hidden file)."""
    at = path.find(table_dir.strip("/"))  # fsspec may list paths without the leading slash
    below = path[at + len(table_dir.strip("/")):] if at >= 0 else path
    name = below.rsplit("/", 1)[-1]
    if "/_" in below or "/." in below or not name.endswith(".parquet"):
        return None
    return tag_id(file_tag(name))


@dataclass
class TableScan:
    """One read of a table's committed batch and flush files: the oldest and newest value of a timestamp column
    per file tag, and (if asked) the row_fingerprint of some of its columns."""

    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    rows: int = 0
    fingerprint: int = 0
    wrong_partition: int = 0  # rows whose partition column (`date`) is not the date of their timestamp


def scan_table(s: Settings, table: str, column: str, fs: Any, fingerprint: dict[str, Any] | None = None, *,
               date_partition: str | None = None,
               on_rows: Callable[[tuple[str, int], Any], None] | None = None) -> TableScan:
    """Read `column` (a timestamp, as epoch seconds) of each batch's and flush's files of `table`, record by record
    (bounded memory), with the `fingerprint` fields when given. `date_partition`: the table's partition column,
    counted where it is not the UTC date of `column`. `on_rows(tag, record batch)` sees every record batch."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = s.hdfs_path(table)
    files = [f for f in committed_files(s, table, fs) if _batch_of(f, path)]
    out = TableScan()
    if not files:
        return out
    columns = list(dict.fromkeys([column, *(fingerprint or {}), *([date_partition] if date_partition else [])]))
    # with the fingerprint's wide columns (request): one file at a time, two record batches ahead (Arrow's default
    # reads 4 files and 16 batches ahead), enough to keep the hashing busy
    readahead = {"fragment_readahead": 1, "batch_readahead": 2} if fingerprint else {}
    scanner = ds.dataset(files, filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=path).scanner(columns=[*columns, "__filename"], **readahead)
    for rb in scanner.to_batches():  # each record batch comes from one file
        if not rb.num_rows:
            continue
        out.rows += rb.num_rows
        if fingerprint:
            cols = {c: (_epoch_s_arrow(rb.column(c), f"{table}.{c}") if c == column else rb.column(c).to_pandas())
                    for c in fingerprint}
            out.fingerprint = (out.fingerprint + row_fingerprint(cols, fingerprint)) % _MOD
        tag = _batch_of(rb.column("__filename")[0].as_py(), path)
        assert tag is not None
        if date_partition:
            day = pc.strftime(rb.column(column), format="%Y-%m-%d")
            out.wrong_partition += int(pc.sum(pc.not_equal(
                pc.cast(rb.column(date_partition), pa.string()), day)).as_py() or 0)
        if on_rows is not None:
            on_rows(tag, rb)
        values = rb.column(column).filter(pc.is_valid(rb.column(column)))
        if len(values):
            secs = _epoch_s_arrow(values, f"{table}.{column}")
            lo, hi = int(secs.min()), int(secs.max())
            old = out.ranges.get(tag, (lo, hi))
            out.ranges[tag] = (min(old[0], lo), max(old[1], hi))
    return out


def newest_event_per_batch(s: Settings, fs: Any, scans: dict[str, TableScan] | None = None) -> dict[int, int]:
    """The newest event time (epoch s) each micro-batch read, from its files in events/ and late/ (`scans` of
    those tables' timestamps, if read already)."""
    newest: dict[int, int] = {}
    for table in ("events", "late"):
        scan = scans[table] if scans else scan_table(s, table, "timestamp", fs)
        for (kind, bid), (_, ts) in scan.ranges.items():
            if kind == "b":
                newest[bid] = max(newest.get(bid, ts), ts)
    return newest


def read_until(newest: dict[int, int]) -> dict[int, int]:
    """For each batch id, the newest event time the job had read once that batch was done (the batches before
    it included): the log time at which it could act."""
    out, top = {}, None
    for bid in sorted(newest):
        top = newest[bid] if top is None else max(top, newest[bid])
        out[bid] = top
    return out


# an alert as README's results table describes it: the columns of alerts/, and the fields of its Kafka record
ALERT_FIELDS = ("rule", "key", "window_start", "window_end", "count", "share", "threshold", "top_hosts", "alert_id",
                "detected_at")


def load_alerts(s: Settings, fs: Any) -> pd.DataFrame:
    """The alerts table with the id of the micro-batch that raised each alert (`batch`, from its file tag) and the
    job's columns its file lacks (`absent_columns`, comma-separated; "" when none: in one frame with other files'
    rows, a lacking column would read as NULLs)."""
    import pyarrow.parquet as pq

    alert_dir = s.hdfs_path("alerts")
    parts = []
    for f in committed_files(s, "alerts", fs):
        tag = _batch_of(f, alert_dir)
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh)
        absent = ",".join(c for c in ALERT_FIELDS if c not in table.column_names)
        parts.append(table.to_pandas().assign(batch=tag[1] if tag and tag[0] == "b" else -1, absent_columns=absent))
    if not parts:
        return pd.DataFrame(columns=[*ALERT_FIELDS, "batch", "absent_columns"])
    return pd.concat(parts, ignore_index=True)


def uncommitted_files(s: Settings, fs: Any, limit: int = 10) -> dict[str, Any]:
    """Parquet files in the result tables that no commit marker covers, which every reader here skips but a plain
    `spark.read.parquet(<table>)` (or the HDFS browser) would not: those of an attempt still running or that died
    before its marker (a `.pending` marker; the job's next run removes them) are reported; any other (an untagged
    file, a tag with no marker at all) is stray and fails. The files are listed first, the markers last: a batch
    committing meanwhile moves its files in under its `.pending` marker, which it removes only after its commit
    marker is written, so a file listed has its batch's `.pending` or commit marker in the later listings."""
    files: list[tuple[str, str, str]] = []  # (path, below its table, name)
    for table in TABLES:
        path = s.hdfs_path(table)
        if not fs.exists(path):
            continue
        base = path.strip("/")
        for f in fs.find(path):
            at = f.find(base)
            below = f[at + len(base):] if at >= 0 else f
            name = below.rsplit("/", 1)[-1]
            if name.endswith(".parquet"):
                files.append((f, below, name))
    pending: set[str] = set()
    for query in ("ingest", "flush"):
        d = s.hdfs_path(COMMITS, query)
        if fs.exists(d):
            pending |= {marker_tag(f, PENDING) for f in list_markers(lambda p: fs.ls(p, detail=False), d)} - {None}
    tags = committed_tags(s, fs)
    stray, unfinished = [], 0
    for f, below, name in files:
        tag = file_tag(name)
        if tag in tags:
            continue
        if tag in pending or in_staging(below):
            unfinished += 1
        else:
            stray.append(f)
    return {"stray": len(stray), "of_unfinished_attempts": unfinished, "examples": stray[:limit], "ok": not stray}
