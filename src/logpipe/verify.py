"""`logpipe verify`: recompute window counts and accounting from the raw log (independently of Spark) and
compare them row by row with the job's results on HDFS; score alerts against the generator's ground truth."""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logpipe.config import Settings
from logpipe.logformat import MIN_TIME, try_parse_line
from logpipe.results import committed_files
from logpipe.root_record import RUN_SETTINGS
from logpipe.rules import FAILED_STATUS, alert_id
from logpipe.windows import duration_seconds, window_starts_array

log = logging.getLogger(__name__)
CHUNK_LINES = 500_000
_KEY_BITS = 32  # a (window, key) pair packs into one uint64: seconds since a base << 32 | key code


@dataclass
class KeyedCounts:
    """Counts per (window_start, key), held as arrays: `code` indexes `labels` (host names or statuses). Integer
    codes keep tens of millions of rows in a few hundred MB, where a pandas frame of host strings took GBs."""

    key: str                    # "host" | "http_response"
    window_start: np.ndarray    # int64 epoch seconds
    code: np.ndarray            # int64, index into labels
    count: np.ndarray           # int64
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.count)

    def frame(self, mask: np.ndarray | None = None) -> pd.DataFrame:
        """Rows (all, or those under `mask`) as a DataFrame window_start, <key>, count."""
        sel = slice(None) if mask is None else mask
        labels = np.asarray(self.labels, dtype=object)
        return pd.DataFrame({"window_start": self.window_start[sel], self.key: labels[self.code[sel]],
                             "count": self.count[sel]})

    @classmethod
    def from_arrays(cls, key: str, window_start: Any, values: Any, count: Any,
                    labels: list[Any] | None = None) -> "KeyedCounts":
        """From columns (numpy, pandas or Arrow); key values are coded against `labels` (extended with new ones),
        so that two tables coded against the same labels can be compared by code."""
        import pyarrow as pa
        import pyarrow.compute as pc

        labels = list(labels or [])
        values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if not len(values):
            codes = np.zeros(0, dtype=np.int64)
        else:
            known = pa.array(labels, type=values.type) if labels else pa.array([], type=values.type)
            idx = pc.index_in(values, value_set=known, skip_nulls=False)
            if idx.null_count:
                labels += pc.unique(pc.filter(values, pc.is_null(idx))).to_pylist()
                idx = pc.index_in(values, value_set=pa.array(labels, type=values.type), skip_nulls=False)
            codes = np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)
        return cls(key, np.asarray(window_start, dtype=np.int64), codes, np.asarray(count, dtype=np.int64), labels)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, key: str, labels: list[Any] | None = None) -> "KeyedCounts":
        return cls.from_arrays(key, df["window_start"].to_numpy(), df[key].tolist(), df["count"].to_numpy(), labels)


def _pack(window_start: np.ndarray, code: np.ndarray, base: int) -> np.ndarray:
    rel = window_start - base
    if len(rel) and (rel.min() < 0 or rel.max() >= 1 << _KEY_BITS):
        raise ValueError("window starts span more than 136 years: cannot pack them")
    return (rel.astype(np.uint64) << np.uint64(_KEY_BITS)) | code.astype(np.uint64)


def _unpack(packed: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    return ((packed >> np.uint64(_KEY_BITS)).astype(np.int64) + base,
            (packed & np.uint64((1 << _KEY_BITS) - 1)).astype(np.int64))


# the parsed fields of a line, in the fingerprint's column order and types (the events/ columns of the same name)
PARSED_FIELDS = {"host": object, "timestamp": np.int64, "request": object, "http_response": np.int64,
                 "bytes_sent": np.int64}
QUARANTINE_FIELDS = {"raw_bytes": object, "reason": object}
_MOD = 1 << 64


def row_fingerprint(columns: dict[str, Any], fields: dict[str, Any]) -> int:
    """An order-independent fingerprint of a multiset of rows: the sum, mod 2**64, of a 64-bit hash of each row's
    `fields` (cast to the given types; timestamps as epoch seconds). Two tables holding the same rows, in any order
    and split into any chunks, have the same sum; a row with one field changed changes it."""
    return int(row_hashes(columns, fields).sum(dtype=np.uint64))


def row_hashes(columns: dict[str, Any], fields: dict[str, Any]) -> np.ndarray:
    """The 64-bit hash of each row's `fields` that row_fingerprint sums (uint64, one per row)."""
    frame = pd.DataFrame({name: np.asarray(columns[name], dtype=kind) for name, kind in fields.items()})
    if not len(frame):
        return np.zeros(0, np.uint64)
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


@dataclass
class QuarantineScan:
    """The quarantine/ table read record batch by record batch: its rows, its records once per source line (by
    src_key, the first row of each), their count per reason and their row_fingerprint of QUARANTINE_FIELDS."""

    rows: int = 0
    unique: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    fingerprint: int = 0


def scan_quarantine(s: Settings, fs: Any) -> QuarantineScan:
    """Read quarantine/ in bounded memory: per row, only a 64-bit hash of its src_key, the hash of its record and
    reason, and its reason's code are kept (24 bytes a row, where the table held the raw lines: a log of mostly
    bad lines would otherwise take twice its size in memory)."""
    import pyarrow.dataset as ds

    files = committed_files(s, "quarantine", fs)
    out = QuarantineScan()
    if not files:
        return out
    keys, hashes, codes = [], [], []
    reasons: dict[str, int] = {}
    scanner = ds.dataset(files, filesystem=fs, format="parquet").scanner(
        columns=["src_key", *QUARANTINE_FIELDS], fragment_readahead=1, batch_readahead=2)
    for rb in scanner.to_batches():
        if not rb.num_rows:
            continue
        cols = {c: rb.column(c).to_pandas() for c in ("src_key", *QUARANTINE_FIELDS)}
        keys.append(pd.util.hash_pandas_object(cols["src_key"], index=False).to_numpy())
        hashes.append(row_hashes(cols, QUARANTINE_FIELDS))
        codes.append(np.array([reasons.setdefault(r, len(reasons)) for r in cols["reason"]], dtype=np.int32))
    key_arr = np.concatenate(keys)
    out.rows = len(key_arr)
    _, first = np.unique(key_arr, return_index=True)  # the first row of each source line, as drop_duplicates keeps
    del key_arr
    out.unique = len(first)
    out.fingerprint = int(np.concatenate(hashes)[first].sum(dtype=np.uint64))
    names = list(reasons)
    per_code = np.bincount(np.concatenate(codes)[first], minlength=len(names))
    out.by_reason = {names[i]: int(n) for i, n in enumerate(per_code) if n}
    return out


@dataclass
class BatchCounts:
    """Counts computed from the raw log."""

    lines: int = 0
    parsed: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    host: KeyedCounts | None = None      # per (window_start, host)
    status: KeyedCounts | None = None    # per (window_start, http_response)
    parsed_fingerprint: int = 0          # row_fingerprint of the parsed lines' PARSED_FIELDS
    quarantine_fingerprint: int = 0      # row_fingerprint of the quarantined lines' record value and reason

    @property
    def by_status(self) -> pd.DataFrame:
        return self.status.frame().astype({"http_response": "int64"})

    @property
    def window_totals(self) -> pd.DataFrame:
        return self.by_status.groupby("window_start", as_index=False)["count"].sum().rename(
            columns={"count": "total"})


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


class _WindowCounter:
    """Accumulates (window_start, key code) pairs chunk by chunk, packed in uint64, and counts them at the end."""

    def __init__(self, key: str, base: int) -> None:
        self.key, self.base, self.parts = key, base, []
        self.codes: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        c = self.codes.get(value)
        if c is None:
            c = self.codes[value] = len(self.codes)
        return c

    def add(self, starts: list[np.ndarray], codes: np.ndarray) -> None:
        for s in starts:
            keep = s != -1  # -1: this window does not hold the timestamp (window_starts_array)
            self.parts.append(_pack(s, codes, self.base) if keep.all() else _pack(s[keep], codes[keep], self.base))

    def result(self) -> KeyedCounts:
        packed, counts = np.unique(np.concatenate(self.parts) if self.parts else np.zeros(0, np.uint64),
                                   return_counts=True)
        self.parts = []
        ws, code = _unpack(packed, self.base)
        return KeyedCounts(self.key, ws, code, counts.astype(np.int64), list(self.codes))


# a log at least this large is counted by several processes (count_log), each over its own range of lines, at
# most MAX_WORKERS (each loads numpy and pandas, some 100 MB; the ranges' counts take the same memory in all)
PARALLEL_MIN_BYTES = 64 * 1000 * 1000
MAX_WORKERS = 8


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it), at most MAX_WORKERS."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n, MAX_WORKERS))


def count_log(path: Path, size_s: int, slide_s: int, progress: bool = False,
              max_line_bytes: int | None = None, workers: int | None = None) -> BatchCounts:
    """Parse every line with the reference parser and count per (window, host) and (window, status). A line over
    `max_line_bytes` (without its newline) is quarantined as too_large, as the producer sends it (and so is a line
    that looks like the producer's stand-in for one, as the job takes it). `workers`: processes that each count
    one range of the file's lines (default: one per CPU this process may use, for a log of PARALLEL_MIN_BYTES or
    more; 1 counts in this process); their counts are summed, so the result is the same for any number."""
    if workers is None:
        workers = usable_cpus() if path.is_file() and path.stat().st_size >= PARALLEL_MIN_BYTES else 1
    ranges = line_ranges(path, workers) if workers > 1 else [(0, None)]
    if len(ranges) == 1:
        return _count_range(path, 0, None, size_s, slide_s, max_line_bytes, progress=progress)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (a Spark gateway, Arrow)
    read = ctx.Value("q", 0)

    def report() -> None:
        if progress and read.value:
            log.info("verify: %s lines read (%d processes)", f"{read.value:,}", len(ranges))

    parts = run_in_processes(_count_range, [(path, a, b, size_s, slide_s, max_line_bytes) for a, b in ranges],
                             ctx=ctx, initializer=_share_lines_read, initargs=(read,), on_wait=report)
    return merge_batch_counts(parts, int(MIN_TIME.timestamp()) - size_s)


def run_in_processes(fn: Callable[..., Any], calls: list[tuple[Any, ...]], *, ctx: Any, initializer: Any = None,
                     initargs: tuple[Any, ...] = (), on_wait: Callable[[], None] | None = None,
                     report_every_s: float = 6.0) -> list[Any]:
    """fn(*args) for each of `calls`, each in a `ctx` process of its own (after `initializer(*initargs)`), results
    in order. The first call that fails, or whose process dies without a result (killed for memory), stops the
    others at once (their processes are terminated) and is raised: a failed range does not wait for the rest of
    the file to be read, and a dead worker is an error, not a wait for ever. `on_wait` is called every
    `report_every_s` while they run (progress)."""
    from multiprocessing.connection import wait

    procs, conns = [], []
    try:
        for args in calls:
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_call_and_send, args=(send, fn, args, initializer, initargs), daemon=True)
            proc.start()
            send.close()  # the worker holds the other end: its exit, with or without a result, ends the pipe
            procs.append(proc)
            conns.append(receive)
        results: dict[int, Any] = {}
        next_report = time.monotonic() + report_every_s
        while len(results) < len(calls):
            for conn in wait([c for i, c in enumerate(conns) if i not in results], timeout=0.5):
                i = conns.index(conn)
                try:
                    ok, value = conn.recv()
                except EOFError:
                    procs[i].join(5)
                    raise RuntimeError(f"worker process {i + 1} of {len(calls)} ended without a result (exit code "
                                       f"{procs[i].exitcode}; a negative one is the signal that killed it, e.g. -9 "
                                       "when the system ran out of memory)") from None
                if not ok:
                    raise value
                results[i] = value
            if on_wait is not None and time.monotonic() >= next_report:
                on_wait()
                next_report = time.monotonic() + report_every_s
        return [results[i] for i in range(len(calls))]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        for conn in conns:
            conn.close()


def _call_and_send(send: Any, fn: Callable[..., Any], args: tuple[Any, ...], initializer: Any,
                   initargs: tuple[Any, ...]) -> None:
    """In a run_in_processes worker: (True, fn(*args)) or (False, its error, with the worker's traceback as a note)
    through `send`."""
    import traceback

    try:
        if initializer is not None:
            initializer(*initargs)
        out: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:
        exc.add_note(f"in worker process {os.getpid()}:\n{traceback.format_exc()}")
        out = (False, exc)
    try:
        send.send(out)
    except Exception as exc:  # a result or error that does not pickle: say so, with the error's text
        what = "its result" if out[0] else f"its error {out[1]!r}"
        send.send((False, RuntimeError(f"worker process {os.getpid()} could not send {what}: {exc}")))
    send.close()


def line_ranges(path: Path, n: int) -> list[tuple[int, int | None]]:
    """`path` cut into up to `n` byte ranges of about equal size, each [start, end) starting at the beginning of a
    line (the last one's end None: to the end of the file). Empty ranges are left out."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for k in range(1, n):
            f.seek(max(k * size // n - 1, cuts[-1]))
            f.readline()  # to the start of the next line (a cut at a line start reads that line's previous byte)
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    return [(a, b if i < len(spans) - 1 else None) for i, (a, b) in enumerate(spans)] or [(0, None)]


_lines_read: Any = None  # in a count_log worker: the shared count of lines read, for the progress log


def _share_lines_read(counter: Any) -> None:
    global _lines_read
    _lines_read = counter


def _count_range(path: Path, start: int, end: int | None, size_s: int, slide_s: int, max_line_bytes: int | None,
                 *, progress: bool = False) -> BatchCounts:
    """count_log over the lines that start in [start, end) of `path` (end None: to the end of the file)."""
    import re

    from logpipe.logformat import TOO_LARGE
    from logpipe.record import TOO_LARGE_PATTERN, too_large_value

    stand_in = re.compile(TOO_LARGE_PATTERN.encode())

    out = BatchCounts()
    base = int(MIN_TIME.timestamp()) - size_s  # every parsed timestamp is >= MIN_TIME
    hosts, statuses = _WindowCounter("host", base), _WindowCounter("http_response", base)

    # per chunk: the parsed lines' fields, their host and status codes; the quarantined lines' record values
    chunk: dict[str, list] = {}
    quarantined: dict[str, list] = {"raw_bytes": [], "reason": []}
    counted = 0  # lines already added to the shared count

    def new_chunk() -> None:
        chunk.update({name: [] for name in (*PARSED_FIELDS, "host_code", "status_code")})

    def flush() -> None:
        nonlocal counted
        if chunk["timestamp"]:
            starts = window_starts_array(np.asarray(chunk["timestamp"], dtype=np.int64), size_s, slide_s)
            hosts.add(starts, np.asarray(chunk["host_code"], dtype=np.int64))
            statuses.add(starts, np.asarray(chunk["status_code"], dtype=np.int64))
            out.parsed_fingerprint = (out.parsed_fingerprint + row_fingerprint(chunk, PARSED_FIELDS)) % _MOD
        new_chunk()
        if _lines_read is not None:
            with _lines_read.get_lock():
                _lines_read.value += out.lines - counted
            counted = out.lines

    def quarantine(value: bytes, reason: str) -> None:
        out.quarantined_by_reason[reason] = out.quarantined_by_reason.get(reason, 0) + 1
        quarantined["raw_bytes"].append(value)
        quarantined["reason"].append(reason)
        if len(quarantined["reason"]) >= CHUNK_LINES:
            out.quarantine_fingerprint = (out.quarantine_fingerprint
                                          + row_fingerprint(quarantined, QUARANTINE_FIELDS)) % _MOD
            quarantined.update(raw_bytes=[], reason=[])

    new_chunk()
    with path.open("rb") as f:
        if start:  # 0: the whole file, which may be a pipe (`--log <(zcat access.log.gz)`)
            f.seek(start)
        pos = start
        for raw in f:
            if end is not None and pos >= end:
                break
            pos += len(raw)
            out.lines += 1
            value = raw[:-1] if raw.endswith(b"\n") else raw  # the record value the producer sends
            if max_line_bytes is not None and len(value) > max_line_bytes:
                quarantine(too_large_value(value, len(value)), TOO_LARGE)
                continue
            if raw.startswith(b"\x00") and stand_in.match(raw):
                quarantine(value, TOO_LARGE)
                continue
            r = try_parse_line(raw)
            if isinstance(r, str):
                quarantine(value, r)
                continue
            out.parsed += 1
            chunk["host"].append(r.host)
            chunk["timestamp"].append(int(r.timestamp.timestamp()))
            chunk["request"].append(r.request)
            chunk["http_response"].append(r.http_response)
            chunk["bytes_sent"].append(r.bytes_sent)
            chunk["host_code"].append(hosts.code(r.host))
            chunk["status_code"].append(statuses.code(r.http_response))
            if len(chunk["timestamp"]) >= CHUNK_LINES:
                flush()
                if progress:
                    log.info("verify: %s lines read", f"{out.lines:,}")
    flush()
    out.quarantine_fingerprint = (out.quarantine_fingerprint + row_fingerprint(quarantined, QUARANTINE_FIELDS)) % _MOD
    out.host, out.status = hosts.result(), statuses.result()
    return out


def merge_keyed_counts(parts: list[KeyedCounts], base: int) -> KeyedCounts:
    """The sum of counts of the same key (host or status) coded against their own labels: one KeyedCounts whose
    labels are the parts' in order of first appearance (as counting the parts' lines in order would give them),
    its rows in (window_start, code) order. `base`: at most every window start (for packing)."""
    labels: dict[Any, int] = {}
    packed, counts = [], []
    for p in parts:
        remap = np.fromiter((labels.setdefault(v, len(labels)) for v in p.labels), dtype=np.int64,
                            count=len(p.labels))
        packed.append(_pack(p.window_start, remap[p.code], base))
        counts.append(p.count)
    keys = np.concatenate(packed) if packed else np.zeros(0, np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, count = keys[order], np.concatenate(counts)[order] if counts else np.zeros(0, np.int64)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    total = np.add.reduceat(count, first) if len(keys) else np.zeros(0, np.int64)
    ws, code = _unpack(keys[first], base)
    return KeyedCounts(parts[0].key, ws, code, total.astype(np.int64), list(labels))


def merge_batch_counts(parts: list[BatchCounts], base: int) -> BatchCounts:
    """The counts of consecutive ranges of one log (in order) as one: count_log over the whole log."""
    out = BatchCounts()
    for p in parts:
        out.lines += p.lines
        out.parsed += p.parsed
        for reason, n in p.quarantined_by_reason.items():
            out.quarantined_by_reason[reason] = out.quarantined_by_reason.get(reason, 0) + n
        out.parsed_fingerprint = (out.parsed_fingerprint + p.parsed_fingerprint) % _MOD
        out.quarantine_fingerprint = (out.quarantine_fingerprint + p.quarantine_fingerprint) % _MOD
    out.host = merge_keyed_counts([p.host for p in parts], base)
    out.status = merge_keyed_counts([p.status for p in parts], base)
    return out


def without_late(expected: KeyedCounts, late_ts: np.ndarray, late_values: Any, size_s: int,
                 slide_s: int) -> tuple[KeyedCounts, int]:
    """`expected` less the windows of lines the job kept out of its windows as late (a log out of order by more
    than the watermark), and how many of those (window, key) contributions `expected` does not hold (not 0 only
    if the late table holds lines that are not in the log)."""
    if not len(late_ts):
        return expected, 0
    late = KeyedCounts.from_arrays(expected.key, late_ts, late_values, np.ones(len(late_ts)), expected.labels)
    starts = window_starts_array(late.window_start, size_s, slide_s)
    ws = np.concatenate(starts)
    codes = np.tile(late.code, len(starts))
    keep = ws != -1
    ws, codes = ws[keep], codes[keep]
    base = int(min(expected.window_start.min(initial=ws.min()), ws.min()))
    e_keys = _pack(expected.window_start, expected.code, base)
    order = np.argsort(e_keys, kind="stable")
    l_keys, l_counts = np.unique(_pack(ws, codes, base), return_counts=True)
    pos = np.searchsorted(e_keys, l_keys, sorter=order)
    found = pos < len(e_keys)
    found[found] = e_keys[order[pos[found]]] == l_keys[found]
    count = expected.count.copy()
    np.subtract.at(count, order[pos[found]], l_counts[found])
    nonzero = count > 0
    return (KeyedCounts(expected.key, expected.window_start[nonzero], expected.code[nonzero], count[nonzero],
                        late.labels[:len(expected.labels)]),
            int(l_counts[~found].sum()) + int((count < 0).sum()))


def _epoch_s(col: pd.Series) -> pd.Series:
    """Timestamps from Parquet (datetime64, naive UTC or aware) -> epoch seconds."""
    c = pd.to_datetime(col, utc=True)
    return (c - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _epoch_s_arrow(col: Any) -> np.ndarray:
    """An Arrow timestamp column -> int64 epoch seconds."""
    import pyarrow as pa

    per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
    return np.asarray(col.cast(pa.int64()).to_numpy(), dtype=np.int64) // per_s


def keyed_counts_of_table(table: Any, key: str, labels: list[Any]) -> KeyedCounts:
    """A result table (Arrow: window_start, <key>, count) coded against the expected table's labels."""
    if table is None or not table.num_rows:
        return KeyedCounts(key, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), list(labels))
    return KeyedCounts.from_arrays(key, _epoch_s_arrow(table.column("window_start")), table.column(key),
                                   table.column("count").to_numpy(), labels)


def compare_counts(expected: KeyedCounts, actual: KeyedCounts, limit: int = 10) -> dict[str, Any]:
    """Row-by-row comparison of (window_start, key) -> count. Reports missing, extra, wrong and duplicate rows.
    Both sides must be coded against the same labels (see KeyedCounts.from_arrays)."""
    if expected.labels != actual.labels[:len(expected.labels)]:
        raise ValueError("expected and actual counts are not coded against the same labels")
    starts = [a.window_start for a in (expected, actual) if len(a)]
    base = int(min(s.min() for s in starts)) if starts else 0
    # packed keys sort as (window_start, code): the expected side from count_log is sorted already
    e_keys = _pack(expected.window_start, expected.code, base)
    e_order = None if (e_keys[1:] > e_keys[:-1]).all() else np.argsort(e_keys, kind="stable")
    if e_order is not None:
        e_keys = e_keys[e_order]
        if (e_keys[1:] == e_keys[:-1]).any():
            raise ValueError("expected counts hold a (window, key) twice")
    a_order = np.argsort(_pack(actual.window_start, actual.code, base), kind="stable")
    a_keys = _pack(actual.window_start[a_order], actual.code[a_order], base)
    # duplicates: every actual row whose (window, key) appears more than once; the first one is compared
    same_as_next = a_keys[1:] == a_keys[:-1]
    dups = np.zeros(len(actual), bool)
    dups[a_order[:-1][same_as_next]] = True
    dups[a_order[1:][same_as_next]] = True
    first = np.ones(len(a_keys), bool)
    first[1:] = ~same_as_next
    del same_as_next
    a_rows, a_keys = a_order[first], a_keys[first]  # actual rows, one per (window, key), in key order
    del a_order, first
    pos = np.searchsorted(e_keys, a_keys)
    found = pos < len(e_keys)
    found[found] = e_keys[pos[found]] == a_keys[found]
    del e_keys, a_keys
    e_rows = pos[found] if e_order is None else e_order[pos[found]]
    extra = np.zeros(len(actual), bool)
    extra[a_rows[~found]] = True
    a_rows = a_rows[found]
    del pos, found, e_order
    wrong = expected.count[e_rows] != actual.count[a_rows]
    missing = np.ones(len(expected), bool)
    missing[e_rows] = False

    def sample(kc: KeyedCounts, mask: np.ndarray) -> list[dict]:
        idx = np.flatnonzero(mask)[:limit]
        sel = np.zeros(len(kc), bool)
        sel[idx] = True
        return json.loads(kc.frame(sel).to_json(orient="records"))

    wrong_rows = e_rows[wrong][:limit]
    wrong_examples = [{"window_start": int(expected.window_start[e]), expected.key: expected.labels[expected.code[e]],
                       "count_expected": int(expected.count[e]), "count_actual": int(actual.count[a])}
                      for e, a in zip(wrong_rows, a_rows[wrong][:limit])]
    n_missing, n_extra, n_wrong, n_dups = int(missing.sum()), int(extra.sum()), int(wrong.sum()), int(dups.sum())
    return {"compared": int(len(expected) + n_extra), "expected_rows": int(len(expected)),
            "actual_rows": int(len(actual)), "missing": n_missing, "extra": n_extra, "wrong": n_wrong,
            "duplicates": n_dups, "ok": not (n_missing or n_extra or n_wrong or n_dups),
            "examples": {"missing": sample(expected, missing), "extra": sample(actual, extra),
                         "wrong": json.loads(json.dumps(wrong_examples, default=str)),
                         "duplicates": sample(actual, dups)}}


def expected_alerts(c: BatchCounts, s: Settings) -> pd.DataFrame:
    """(rule, key, window_start) the rules imply for the FINAL window counts."""
    rate = c.host.frame(c.host.count >= s.rate_limit_ceiling)
    rate = pd.DataFrame({"rule": "rate_limit", "key": rate.host.astype(str), "window_start": rate.window_start})
    st = c.by_status.merge(c.window_totals, on="window_start")
    st = st[(st.http_response >= FAILED_STATUS) & (st["count"] >= s.surge_min_count)
            & (st["count"] / st.total >= s.surge_min_share)]
    surge = pd.DataFrame({"rule": "failure_surge", "key": st.http_response.astype(str),
                          "window_start": st.window_start})
    return pd.concat([rate, surge], ignore_index=True)


def check_alerts(c: BatchCounts, alerts: pd.DataFrame, s: Settings,
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
        unexplained = int((extra.rule == "rate_limit").sum()
                          + (extra_surge["count"].fillna(0) < s.surge_min_count).sum())
        transient = int(len(extra)) - unexplained
    else:  # every surge the running counts met is expected: any other alert is unexplained
        unexplained = int(len(extra))
        transient = max(int(len(surges)) - final_surges, 0)  # a failing run may replay fewer than are final
    off_rule = alert_rows_off_rule(c, alerts, s)
    return {"expected": int(len(exp)), "raised": int(len(act)), "missing": int(len(missing)),
            "duplicates": dups, "transient_surges": transient, "unexplained": unexplained,
            "off_rule": off_rule, "ok": not (len(missing) or dups or unexplained or off_rule),
            "examples_missing": json.loads(missing.drop(columns="_merge").head(10).to_json(orient="records"))}


def alert_rows_off_rule(c: BatchCounts, alerts: pd.DataFrame, s: Settings) -> int:
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
    import pyarrow.parquet as pq

    if not len(alerts):
        return {"checked": 0, "wrong": 0, "raised_late": 0, "columns_wrong": 0, "examples": [], "ok": True}
    lacking = {c for row in alerts.get("absent_columns", []) for c in str(row).split(",") if c}  # see load_alerts
    absent = [c for c in ALERT_FIELDS if c not in alerts.columns or c in lacking]
    if absent:  # no figure is taken from the rule in a column's place: the table is not the job's
        return {"checked": int(len(alerts)), "wrong": 0, "raised_late": 0, "columns_wrong": int(len(alerts)),
                "examples": [{"problem": f"alerts/ has no column {', '.join(absent)} (the job writes "
                              f"{', '.join(ALERT_FIELDS)})"}], "ok": False}
    alerts = alerts.assign(ws=_epoch_s(alerts.window_start))
    # the events of the alerted windows only: the windows merged into time ranges; files of other days skipped,
    # then the rows in the ranges kept (a root written before logpipe stored INT64 timestamps holds INT96 ones,
    # which carry no statistics to filter files by)
    starts = np.unique(alerts.ws.to_numpy())
    ranges: list[list[int]] = []
    for a in starts:
        if ranges and a <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], a + size_s)
        else:
            ranges.append([a, a + size_s])
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
    ev = (pd.concat(parts, ignore_index=True) if parts else
          pd.DataFrame({"t": pd.Series(dtype="int64"), "host": pd.Series(dtype=object),
                        "status": pd.Series(dtype="int64"), "batch": pd.Series(dtype="int64")}))
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


def other_log_hint(file_lines: int, job_lines: int, log_path: Path) -> str | None:
    """Why the file's lines and the job's distinct source lines may differ, or None when their numbers agree."""
    if file_lines == job_lines:
        return None
    more = "more" if job_lines > file_lines else "fewer"
    return (f"The job's results hold {job_lines:,} distinct source lines, {more} than the {file_lines:,} of "
            f"{log_path}: is it the log that was produced to the topic, whole? Lines added to it since were not "
            "sent or not read yet (`logpipe produce` sends them, `logpipe stream --until-done` reads them); a rotated "
            "log is checked as one file of its parts in order (e.g. `--log <(cat access.log.1 access.log)`); another "
            "log's results are under another root (--hdfs-root).")


def truth_log_hint(truth: dict[str, Any], file_lines: int, truth_path: Path, log_path: Path) -> str | None:
    """What to check when the ground truth describes another log than `log_path` (its line count differs): its
    incidents are another log's, and recall and precision against them say nothing about this run."""
    described = truth.get("total_lines")
    if not isinstance(described, int) or described == file_lines:
        return None
    return (f"{truth_path} describes a log of {described:,} lines, {log_path} has {file_lines:,}: it is the truth "
            "of another log (or of this one before it changed), so the score above is against incidents this log "
            "may not hold; give the log's own with --truth, or --lenient-truth not to fail on it")


def too_large_hint(s: Settings, file_by_reason: dict[str, int], job_by_reason: dict[str, int]) -> str | None:
    """Why the file's and the job's too_large counts may differ, or None when they agree: the producer sends a
    line over its --max-message-bytes as a too_large record (quarantined by the job), and verify takes the lines
    over its own setting for those. The setting is the producer's: nothing records it where verify can read it."""
    from logpipe.logformat import TOO_LARGE

    mine, job = file_by_reason.get(TOO_LARGE, 0), job_by_reason.get(TOO_LARGE, 0)
    if mine == job:
        return None
    return (f"{mine:,} lines of the file are over max_message_bytes ({s.max_message_bytes:,}) and the job "
            f"quarantined {job:,} as too_large: if the producer ran with another --max-message-bytes "
            "(LOGPIPE_MAX_MESSAGE_BYTES), give verify the same")


ALERT_TIME_FIELDS = ("window_start", "window_end", "detected_at")
# an alert as README's results table describes it: the columns of alerts/, and the fields of its Kafka record
ALERT_FIELDS = ("rule", "key", "window_start", "window_end", "count", "share", "threshold", "top_hosts", "alert_id",
                "detected_at")


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
        try:
            if k in ALERT_TIME_FIELDS:  # a naive time (a root's INT96 column) is UTC, as everywhere in logpipe
                same = have is not None and abs(pd.to_datetime(have, utc=True) - pd.to_datetime(want, utc=True)) < \
                    pd.Timedelta(1, "ms")
            elif k == "share":
                same = (have is None) == pd.isna(want) and (have is None or abs(float(have) - float(want)) <= 1e-12)
            elif k == "top_hosts":
                same = list(have or []) == list(want)
            else:
                same = have == want
        except (TypeError, ValueError):
            same = False
        if not same:
            shown = list(want) if isinstance(want, np.ndarray) else str(want) if k in ALERT_TIME_FIELDS else want
            diffs.append(f"{k} {have!r} (alerts/ has {shown!r})")
    return diffs


def check_alerts_on_kafka(s: Settings, alerts: pd.DataFrame, timeout_s: float = 30.0) -> dict[str, Any]:
    """Every committed alert was published to the Kafka topic `alerts_topic` (keyed by its alert_id), as the same
    JSON object as its row of alerts/: the topic is read from its start to its end. Copies of an alert (at least
    once: a crash between the send and its marker) and alerts of other roots (the same log on another root has the
    same ids) are reported, not failed."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    from logpipe.topics import TopicNotFound, TopicReadTimeout, read_topic

    wanted = set(alerts["alert_id"]) if len(alerts) else set()

    def failed(error: str, read: list, ok: bool = False) -> dict[str, Any]:
        got = {r.key.decode("utf-8", "replace") for r in read if r.key}
        return {"topic": s.alerts_topic, "published": len(got), "missing": len(wanted - got), "copies": 0,
                "error": error, "ok": ok}

    try:
        records = read_topic(s, s.alerts_topic, timeout_s)
    except KafkaConfigurationError:
        raise
    except TopicNotFound:  # not "alerts lost": the topic itself is not there
        return failed(f"topic {s.alerts_topic} does not exist on {s.kafka_address} (the job makes it when it "
                      "starts: was it deleted, or is --alerts-topic / LOGPIPE_ALERTS_TOPIC another name than the job's?)", [],
                      ok=not wanted)
    except TopicReadTimeout as exc:
        return failed(str(exc), exc.records)
    except KafkaError as exc:
        return failed(f"Kafka at {s.kafka_address} not reachable ({exc}): is it running? `logpipe stack status`", [])
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


class TruthFileError(ValueError):
    """The ground-truth file is not the one `logpipe generate` writes (the message says what is wrong)."""


def load_truth(path: Path) -> dict[str, Any]:
    """The ground truth `logpipe generate` wrote beside a log, checked for what scoring reads (each incident's id,
    kind, start, end and expected alerts' rule and key): read before the recount, so a broken file is said at
    once, not after the minutes a large log takes."""
    try:
        truth = json.loads(path.read_text())
        if not isinstance(truth, dict) or not isinstance(truth.get("incidents", []), list):
            raise ValueError("not a JSON object with a list of incidents")
        for inc in truth.get("incidents", []):
            datetime.fromisoformat(str(inc["start"]).replace("Z", "+00:00"))
            datetime.fromisoformat(str(inc["end"]).replace("Z", "+00:00"))
            inc["id"], inc["kind"]  # noqa: B018 - present, as the report names them
            for e in inc.get("expected_alerts", []):
                e["rule"], e["key"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TruthFileError(f"{path} is not a ground-truth file of `logpipe generate` ({type(exc).__name__}: "
                             f"{exc}): give the right one with --truth, or move it away to verify without "
                             "scoring alerts against it") from exc
    return truth


def score_against_truth(alerts: pd.DataFrame, truth: dict[str, Any], size_s: int,
                        read_until_of: dict[int, int] | None = None) -> dict[str, Any]:
    """Recall over the incidents' expected alerts, precision over raised alerts, and two detection delays in log
    time from the incident's start: `delay_s` to the end of the first window alerted (how soon the windows allow),
    and `raised_after_s` to the newest event time the job had read when it raised its first alert (its batch's,
    `read_until_of` by batch id; a job that raised its alerts only at the end shows there)."""

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
            raised_after = None
            if len(hit):
                found += 1
                delay = int(hit.ws.min()) + size_s - start
                if read_until_of is not None and "batch" in hit:
                    seen = [read_until_of[b] for b in hit.batch if b in read_until_of]
                    raised_after = min(seen) - start if seen else None
            else:
                delay = None
            rows.append({**e, "detected": bool(len(hit)), "alerts": int(len(hit)), "delay_s": delay,
                         "raised_after_s": raised_after})
        incidents.append({"id": inc["id"], "kind": inc["kind"], "start": inc["start"], "end": inc["end"],
                          "expected": rows})
    false_pos = a.drop(index=list(matched_alerts))
    return {"recall": found / wanted if wanted else 1.0,
            "precision": (len(a) - len(false_pos)) / len(a) if len(a) else 1.0,
            "expected_alerts": wanted, "detected": found, "false_positives": int(len(false_pos)),
            "false_positive_examples": json.loads(false_pos.head(10).to_json(orient="records", date_format="iso")),
            "incidents": incidents}


def _batch_of(path: str, table_dir: str) -> tuple[str, int] | None:
    """('b', id) for a micro-batch's file `b<id>-NNNNN.parquet` under `table_dir`, ('f', id) for the flush after
    batch id; None for anything else (Spark's _SUCCESS, a staging folder, a hidden file)."""
    at = path.find(table_dir.strip("/"))  # fsspec may list paths without the leading slash
    below = path[at + len(table_dir.strip("/")):] if at >= 0 else path
    name = below.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    if ("/_" in below or "/." in below or not name.endswith(".parquet") or head[:1] not in ("b", "f")
            or not head[1:].isdigit()):
        return None
    return head[0], int(head[1:])


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
            cols = {c: (_epoch_s_arrow(rb.column(c)) if c == column else rb.column(c).to_pandas())
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
            secs = _epoch_s_arrow(values)
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


def check_late_rows(s: Settings, fs: Any, scans: dict[str, TableScan] | None = None) -> dict[str, Any]:
    """Every row in late/ is behind the horizon of the micro-batch that wrote it, and no row in events/ is,
    recomputed from the tables alone: the newest event time in events/ and late/ of the batches before it minus the
    watermark, or, if later, the end of the windows a flush (`--until-done`) wrote before it. verify takes the late
    rows out of its own counts, so a job that called on-time rows late would still match the windows; it does not
    pass this, nor does a job that counted rows it should have set aside as late. `scans`: the timestamps of
    events/ and late/ (scan_table), if read already."""
    import pyarrow.parquet as pq

    watermark_s = duration_seconds(s.watermark)
    scans = scans or {t: scan_table(s, t, "timestamp", fs) for t in ("events", "late")}
    newest = newest_event_per_batch(s, fs, scans)
    floors: dict[int, int] = {}
    for table in ("windows/by_host", "windows/by_status"):
        for (kind, bid), (_, end) in scan_table(s, table, "window_end", fs).ranges.items():
            if kind == "f":
                floors[bid] = max(floors.get(bid, end), end)

    # the horizon of batch `bid`: the running maximum over the batches before it, found by bisection (a scan of
    # every earlier batch per batch took minutes for a root of tens of thousands of batches)
    marks = sorted([(b, t - watermark_s) for b, t in newest.items()] + list(floors.items()))
    marked_ids = [b for b, _ in marks]
    running_max = list(itertools.accumulate((v for _, v in marks), max))

    def horizon(bid: int) -> int | None:
        i = bisect.bisect_left(marked_ids, bid)
        return running_max[i - 1] if i else None

    late_rows = ahead = 0
    path = s.hdfs_path("late")
    for f in committed_files(s, "late", fs):
        tag = _batch_of(f, path)
        if tag is None:
            continue
        with fs.open(f, "rb") as fh:
            ts = _epoch_s_arrow(pq.read_table(fh, columns=["timestamp"]).column("timestamp"))
        h = horizon(tag[1])
        late_rows += len(ts)
        ahead += len(ts) if h is None else int((ts >= h).sum())
    # an events/ file's oldest row against its batch's horizon (a flush writes no events)
    behind = [tag for tag, (oldest, _) in scans["events"].ranges.items()
              if tag[0] == "b" and (h := horizon(tag[1])) is not None and oldest < h]
    return {"late_rows": late_rows, "not_behind_horizon": ahead, "event_batches_behind_horizon": len(behind),
            "ok": ahead == 0 and not behind}


def uncommitted_files(s: Settings, fs: Any, limit: int = 10) -> dict[str, Any]:
    """Parquet files in the result tables that no commit marker covers, which every reader here skips but a plain
    `spark.read.parquet(<table>)` (or the HDFS browser) would not: those of an attempt still running or that died
    before its marker (a `.pending` marker; the job's next run removes them) are reported; any other (an untagged
    file, a tag with no marker at all) is stray and fails."""
    from logpipe.results import TABLES, committed_tags

    tags = committed_tags(s, fs)
    pending: set[str] = set()
    for query in ("ingest", "flush"):
        d = s.hdfs_path("_commits", query)
        if fs.exists(d):
            pending |= {f.rsplit("/", 1)[-1][:-len(".pending")] for f in fs.ls(d, detail=False)
                        if f.endswith(".pending")}
    stray, unfinished = [], 0
    for table in TABLES:
        path = s.hdfs_path(table)
        if not fs.exists(path):
            continue
        base = path.strip("/")
        for f in fs.find(path):
            at = f.find(base)
            below = f[at + len(base):] if at >= 0 else f
            name = below.rsplit("/", 1)[-1]
            tag = name.split("-", 1)[0]
            if not name.endswith(".parquet") or tag in tags:
                continue
            if tag in pending or "/_staging/" in below:
                unfinished += 1
            else:
                stray.append(f)
    return {"stray": len(stray), "of_unfinished_attempts": unfinished, "examples": stray[:limit], "ok": not stray}


def check_job_accounting(s: Settings, fs: Any, *, event_rows: int, late_rows: int,
                         quarantine_rows: int) -> dict[str, Any]:
    """The job's own accounting (summed over the records of its committed micro-batches, `_commits/ingest/`)
    against the rows of its tables: a job that counted a batch twice, or wrote rows it did not count, does not
    pass, even when its windows are right."""
    from logpipe.results import ACCOUNTING_FIELDS, committed_accounting

    acc = committed_accounting(s, fs)
    metas = acc["per_batch"]
    total = {k: acc[k] for k in ACCOUNTING_FIELDS}
    checks = {"events": (total["events"], event_rows), "late": (total["late"], late_rows),
              "quarantined": (total["quarantined"], quarantine_rows)}
    wrong = {f"{k} counted {job} but {rows} rows in {'quarantine' if k == 'quarantined' else k}/": [job, rows]
             for k, (job, rows) in checks.items() if job != rows}
    # each batch's record adds up: every record read is parsed or quarantined, every parsed one an event, late or
    # a dropped repeat (with the checks above and verify's unique-line counts, this also accounts for every copy
    # a restarted producer sent: records read = log lines + repeats dropped + copies kept in late/ or quarantine/)
    for m in metas:
        n = {k: int(m.get(k, 0)) for k in ACCOUNTING_FIELDS}
        if n["lines"] != n["parsed"] + n["quarantined"] or n["parsed"] != n["events"] + n["late"] + n["duplicates"]:
            wrong[f"batch {m.get('batch')} does not add up: {n}"] = [n["lines"], n["parsed"]]
    return {"batches": len(metas), **total, "mismatches": wrong, "ok": not wrong}


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def exclude_late_lines(counts: BatchCounts, late_t: Any, event_keys: Any, size_s: int,
                       slide_s: int) -> tuple[int, int, int]:
    """Take the lines the job kept out of its windows as late (late/ rows that are not a copy of a line in
    events/, once per source line) out of the batch counts, as the job did. Returns how many lines, how many of
    their windows were not in the counts (0 unless the job made up lines), and their row_fingerprint."""
    import pyarrow.compute as pc

    if late_t is None or not late_t.num_rows:
        return 0, 0, 0
    late_t = late_t.filter(pc.invert(pc.is_in(late_t["src_key"], value_set=pc.unique(event_keys))))
    late_t = late_t.group_by("src_key", use_threads=False).aggregate([(c, "first") for c in PARSED_FIELDS])
    n_late_lines = late_t.num_rows
    fingerprint = row_fingerprint(
        {c: (_epoch_s_arrow(late_t[f"{c}_first"]) if c == "timestamp" else late_t[f"{c}_first"].to_pandas())
         for c in PARSED_FIELDS}, PARSED_FIELDS)
    ts = _epoch_s_arrow(late_t.column("timestamp_first")) if n_late_lines else np.zeros(0, np.int64)
    counts.host, miss_h = without_late(counts.host, ts, late_t.column("host_first"), size_s, slide_s)
    counts.status, miss_s = without_late(counts.status, ts, late_t.column("http_response_first"), size_s, slide_s)
    return n_late_lines, miss_h + miss_s, fingerprint


# the column types of the window tables (the job's schema): the comparison reads counts as int64 and times as
# whole seconds, so a table of other types (float counts, times as text) could otherwise compare equal
WINDOW_KEY_TYPES = {"host": ("string", "large_string"), "http_response": ("int32",)}


def window_table_types_wrong(schema: Any, key: str) -> list[str]:
    """`column: type` for each column of a window table whose type is not the job's: window_start and window_end
    timestamps (any unit; INT96 files read as ns), `key` a string (host) or int32 (http_response), count int64."""
    import pyarrow as pa

    wrong = []
    for name in ("window_start", "window_end", key, "count"):
        typ = schema.field(name).type
        ok = (pa.types.is_timestamp(typ) if name.startswith("window_") else str(typ) == "int64" if name == "count"
              else str(typ) in WINDOW_KEY_TYPES[key])
        if not ok:
            wrong.append(f"{name}: {typ}")
    return wrong


def compare_window_tables(s: Settings, fs: Any, counts: BatchCounts, size_s: int) -> dict[str, dict[str, Any]]:
    """windows/by_host and windows/by_status against the batch counts, row by row; each row's window must also
    be [window_start, window_start + window)."""
    from logpipe.results import load_arrow

    comparisons = {}
    for table, kc in (("windows/by_host", counts.host), ("windows/by_status", counts.status)):
        columns = ["window_start", "window_end", kc.key, "count"]
        rows = load_arrow(s, table, columns, fs=fs)
        # a table of other types or with NULLs is reported as such, not compared (its values cannot be read as
        # the job's): its rows are neither counted as matching nor as missing
        types_wrong = [] if rows is None else window_table_types_wrong(rows.schema, kc.key) + [
            f"{c}: {rows.column(c).null_count:,} nulls" for c in columns if rows.column(c).null_count]
        if types_wrong:
            comparisons[table] = not_compared(kc, rows, types_wrong)
            continue
        # checked record batch by record batch
        ends_wrong = 0 if rows is None else sum(
            int((_epoch_s_arrow(rb.column(1)) - _epoch_s_arrow(rb.column(0)) != size_s).sum())
            for rb in rows.to_batches())
        actual = keyed_counts_of_table(rows, kc.key, kc.labels)
        n_rows = 0 if rows is None else rows.num_rows
        del rows  # the Arrow table (a string per host row) is not held through the comparison
        try:
            comparisons[table] = compare_counts(kc, actual)
        except ValueError as exc:  # window starts that cannot be packed: times far from the log's
            comparisons[table] = not_compared(kc, None, [f"window_start: {exc}"], n_rows)
            continue
        comparisons[table]["window_end_wrong"] = ends_wrong
        comparisons[table]["types_wrong"] = types_wrong
        comparisons[table]["ok"] = comparisons[table]["ok"] and not ends_wrong and not types_wrong
        del actual
    return comparisons


def not_compared(expected: KeyedCounts, rows: Any, problems: list[str], n_rows: int | None = None) -> dict[str, Any]:
    """The comparison of a window table that could not be compared row by row (`problems` say why): failed."""
    return {"compared": 0, "expected_rows": int(len(expected)),
            "actual_rows": int(n_rows if n_rows is not None else 0 if rows is None else rows.num_rows),
            "missing": 0, "extra": 0, "wrong": 0, "duplicates": 0, "window_end_wrong": 0, "types_wrong": problems,
            "examples": {}, "ok": False}


def check_every_alert(s: Settings, fs: Any, counts: BatchCounts, alerts: pd.DataFrame, replay: StatusReplay,
                      alerts_on_kafka: bool) -> dict[str, Any]:
    """The job's alerts against the batch counts (check_alerts), against the running counts of the micro-batch
    that raised each (check_alert_figures), and, with `alerts_on_kafka`, on the Kafka alerts topic."""
    size_s = duration_seconds(s.window)
    check = check_alerts(counts, alerts, s, replay.first_surges(s.surge_min_count, s.surge_min_share))
    check["figures"] = check_alert_figures(s, fs, alerts, size_s)
    check["kafka"] = check_alerts_on_kafka(s, alerts) if alerts_on_kafka else None
    check["ok"] = check["ok"] and check["figures"]["ok"] and (check["kafka"] is None or check["kafka"]["ok"])
    return check


def verify_run(s: Settings, log_path: Path, truth_path: Path | None = None, *, strict_truth: bool = True,
               progress: bool = False, fs: Any = None, alerts_on_kafka: bool = True) -> VerifyReport:
    """Recount `log_path` and compare with the job's results under s.hdfs_root (on `fs`, default WebHDFS);
    `alerts_on_kafka`: also check that every alert was published to the Kafka alerts topic."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from logpipe.results import load_arrow, webhdfs_fs

    t0 = time.monotonic()
    size_s, slide_s = duration_seconds(s.window), duration_seconds(s.slide)
    from logpipe.producer.source import LINE_CAP_BYTES

    tp = truth_path or log_path.with_name(log_path.name + ".truth.json")
    truth_data = load_truth(tp) if truth_path is not None or tp.exists() else None  # before the recount

    # the producer sends a line over its message limit, or over the longest line it holds in memory, as too_large
    counts = count_log(log_path, size_s, slide_s, progress=progress,
                       max_line_bytes=min(s.max_message_bytes, LINE_CAP_BYTES))
    fs = fs or webhdfs_fs(s)
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
    acc["parsed_fields_equal"] = (scans["events"].fingerprint + late_fingerprint) % _MOD == counts.parsed_fingerprint
    acc["events_in_wrong_date_partition"] = scans["events"].wrong_partition
    acc["uncommitted_files"] = uncommitted_files(s, fs)
    acc["quarantine_records_equal"] = quarantine.fingerprint == counts.quarantine_fingerprint
    acc["job_accounting"] = check_job_accounting(s, fs, event_rows=acc["job_event_rows"], late_rows=late_rows,
                                                 quarantine_rows=quarantine.rows)
    acc["ok"] = (acc["job_parsed_unique"] == counts.parsed and acc["job_event_rows"] == acc["job_event_lines"]
                 and acc["job_quarantined_unique"] == acc["quarantined"]
                 and job_q_by_reason == counts.quarantined_by_reason and late_unmatched == 0
                 and acc["late_check"]["ok"] and acc["job_accounting"]["ok"] and acc["parsed_fields_equal"]
                 and acc["quarantine_records_equal"] and not acc["events_in_wrong_date_partition"]
                 and acc["uncommitted_files"]["ok"])
    hints = [other_log_hint(counts.lines, acc["job_parsed_unique"] + acc["job_quarantined_unique"], log_path),
             too_large_hint(s, counts.quarantined_by_reason, job_q_by_reason)]
    acc["hint"] = " ".join(h for h in hints if h) or None
    alerts = load_alerts(s, fs)
    alert_check = check_every_alert(s, fs, counts, alerts, replay, alerts_on_kafka)
    truth = None
    if truth_data is not None:
        truth = score_against_truth(alerts, truth_data, size_s, read_until(newest))
        truth["ok"] = (truth["recall"] == 1.0 and truth["false_positives"] == 0) if strict_truth else True
        truth["hint"] = truth_log_hint(truth_data, counts.lines, tp, log_path)
    ok = host_cmp["ok"] and status_cmp["ok"] and acc["ok"] and alert_check["ok"] and (truth is None or truth["ok"])
    return VerifyReport(ok=ok, log=str(log_path), seconds=round(time.monotonic() - t0, 2), accounting=acc,
                        windows_by_host=host_cmp, windows_by_status=status_cmp, alerts=alert_check, truth=truth,
                        windows_compared=host_cmp["compared"] + status_cmp["compared"],
                        settings={k: getattr(s, k) for k in RUN_SETTINGS})
