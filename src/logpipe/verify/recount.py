"""The recount of the raw log: each line parsed with the reference parser, counted per (window, host/status)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from logpipe.logformat import MIN_TIME, TIMESTAMP_IN_FUTURE, TOO_LARGE, try_parse_line
from logpipe.record import TOO_LARGE_PATTERN, too_large_value
from logpipe.verify.processes import run_in_processes
from logpipe.windows import window_starts_array

log = logging.getLogger("logpipe.verify")  # the command's name in its progress lines
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
class LogCounts:
    """What the recount of the raw log found: lines, parsed, quarantined by reason, the window counts by host and
    by status, and the fingerprints of the parsed and quarantined lines."""

    lines: int = 0
    parsed: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    host: KeyedCounts | None = None      # per (window_start, host)
    status: KeyedCounts | None = None    # per (window_start, http_response)
    parsed_fingerprint: int = 0          # row_fingerprint of the parsed lines' PARSED_FIELDS
    quarantine_fingerprint: int = 0      # row_fingerprint of the quarantined lines' record value and reason
    # parsed lines of count_log's `set_aside` values (each with its newline, if any), not counted yet:
    # resolve_set_aside counts them
    set_aside: list[bytes] = field(default_factory=list)

    @property
    def by_status(self) -> pd.DataFrame:
        return self.status.frame().astype({"http_response": "int64"})

    @property
    def window_totals(self) -> pd.DataFrame:
        return self.by_status.groupby("window_start", as_index=False)["count"].sum().rename(
            columns={"count": "total"})


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
              max_line_bytes: int | None = None, workers: int | None = None,
              set_aside: frozenset[bytes] = frozenset()) -> LogCounts:
    """Parse every line with the reference parser and count per (window, host) and (window, status). A line over
    `max_line_bytes` (without its newline) is quarantined as too_large, as the producer sends it (and so is a line
    that looks like the producer's stand-in for one, as the job takes it). `workers`: processes that each count
    one range of the file's lines (default: one per CPU this process may use, for a log of PARALLEL_MIN_BYTES or
    more; 1 counts in this process); their counts are summed, so the result is the same for any number.
    `set_aside`: record values whose parsed lines are set aside, not counted (LogCounts.set_aside: resolve_set_aside
    counts them as the job decided)."""
    if workers is None:
        workers = usable_cpus() if path.is_file() and path.stat().st_size >= PARALLEL_MIN_BYTES else 1
    ranges = line_ranges(path, workers) if workers > 1 else [(0, None)]
    if len(ranges) == 1:
        return _count_range(path, 0, None, size_s, slide_s, max_line_bytes, set_aside, progress=progress)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (a Spark gateway, Arrow)
    read = ctx.Value("q", 0)

    def report() -> None:
        if progress and read.value:
            log.info("verify: %s lines read (%d processes)", f"{read.value:,}", len(ranges))

    args = [(path, a, b, size_s, slide_s, max_line_bytes, set_aside) for a, b in ranges]
    parts = run_in_processes(_count_range, args,
                             ctx=ctx, initializer=_share_lines_read, initargs=(read,), on_wait=report)
    return merge_log_counts(parts, int(MIN_TIME.timestamp()) - size_s)


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
                 set_aside: frozenset[bytes] = frozenset(), *, progress: bool = False) -> LogCounts:
    """count_log over the lines that start in [start, end) of `path` (end None: to the end of the file)."""
    counter = _LineCounter(size_s, slide_s, max_line_bytes, set_aside=set_aside)
    with path.open("rb") as f:
        if start:  # 0: the whole file, which may be a pipe (`--log <(zcat access.log.gz)`)
            f.seek(start)
        pos = start
        for raw in f:
            if end is not None and pos >= end:
                break
            pos += len(raw)
            if counter.add(raw) and progress:
                log.info("verify: %s lines read", f"{counter.out.lines:,}")
    return counter.result()


class _LineCounter:
    """count_log's work on one line after another (`add`): each parsed with the reference parser and counted, or
    quarantined with its reason. A parsed line whose record value is in `set_aside` is set aside, uncounted
    (LogCounts.set_aside: the job quarantined a line of that value as TIMESTAMP_IN_FUTURE, see resolve_set_aside);
    one whose record value is in `in_future` (a multiset, taken from) is quarantined with that reason."""

    def __init__(self, size_s: int, slide_s: int, max_line_bytes: int | None, *,
                 set_aside: frozenset[bytes] = frozenset(), in_future: Counter[bytes] | None = None) -> None:
        import re

        self.stand_in = re.compile(TOO_LARGE_PATTERN.encode())
        self.size_s, self.slide_s, self.max_line_bytes = size_s, slide_s, max_line_bytes
        self.set_aside, self.in_future = set_aside, in_future
        self.out = LogCounts()
        base = int(MIN_TIME.timestamp()) - size_s  # every parsed timestamp is >= MIN_TIME
        self.hosts, self.statuses = _WindowCounter("host", base), _WindowCounter("http_response", base)
        # per chunk: the parsed lines' fields, their host and status codes; the quarantined lines' record values
        self.chunk: dict[str, list] = {}
        self.quarantined: dict[str, list] = {"raw_bytes": [], "reason": []}
        self.counted = 0  # lines already added to the shared count
        self._new_chunk()

    def _new_chunk(self) -> None:
        self.chunk.update({name: [] for name in (*PARSED_FIELDS, "host_code", "status_code")})

    def _flush(self) -> None:
        out, chunk = self.out, self.chunk
        if chunk["timestamp"]:
            starts = window_starts_array(np.asarray(chunk["timestamp"], dtype=np.int64), self.size_s, self.slide_s)
            self.hosts.add(starts, np.asarray(chunk["host_code"], dtype=np.int64))
            self.statuses.add(starts, np.asarray(chunk["status_code"], dtype=np.int64))
            out.parsed_fingerprint = (out.parsed_fingerprint + row_fingerprint(chunk, PARSED_FIELDS)) % _MOD
        self._new_chunk()
        if _lines_read is not None:
            with _lines_read.get_lock():
                _lines_read.value += out.lines - self.counted
            self.counted = out.lines

    def _quarantine(self, value: bytes, reason: str) -> None:
        out, quarantined = self.out, self.quarantined
        out.quarantined_by_reason[reason] = out.quarantined_by_reason.get(reason, 0) + 1
        quarantined["raw_bytes"].append(value)
        quarantined["reason"].append(reason)
        if len(quarantined["reason"]) >= CHUNK_LINES:
            out.quarantine_fingerprint = (out.quarantine_fingerprint
                                          + row_fingerprint(quarantined, QUARANTINE_FIELDS)) % _MOD
            quarantined.update(raw_bytes=[], reason=[])

    def add(self, raw: bytes) -> bool:
        """Count one line as read (with its newline, if any); True when a chunk of parsed lines was just counted."""
        out, chunk = self.out, self.chunk
        out.lines += 1
        value = raw[:-1] if raw.endswith(b"\n") else raw  # the record value the producer sends
        if self.max_line_bytes is not None and len(value) > self.max_line_bytes:
            self._quarantine(too_large_value(value, len(value)), TOO_LARGE)
            return False
        if raw.startswith(b"\x00") and self.stand_in.match(raw):
            self._quarantine(value, TOO_LARGE)
            return False
        r = try_parse_line(raw)
        if isinstance(r, str):
            self._quarantine(value, r)
            return False
        if self.set_aside and value in self.set_aside:
            out.set_aside.append(raw)
            return False
        if self.in_future and self.in_future.get(value, 0) > 0:
            self.in_future[value] -= 1
            self._quarantine(value, TIMESTAMP_IN_FUTURE)
            return False
        out.parsed += 1
        chunk["host"].append(r.host)
        chunk["timestamp"].append(int(r.timestamp.timestamp()))
        chunk["request"].append(r.request)
        chunk["http_response"].append(r.http_response)
        chunk["bytes_sent"].append(r.bytes_sent)
        chunk["host_code"].append(self.hosts.code(r.host))
        chunk["status_code"].append(self.statuses.code(r.http_response))
        if len(chunk["timestamp"]) >= CHUNK_LINES:
            self._flush()
            return True
        return False

    def result(self) -> LogCounts:
        out = self.out
        self._flush()
        out.quarantine_fingerprint = (out.quarantine_fingerprint
                                      + row_fingerprint(self.quarantined, QUARANTINE_FIELDS)) % _MOD
        out.host, out.status = self.hosts.result(), self.statuses.result()
        return out


def resolve_set_aside(counts: LogCounts, in_future: Counter[bytes], size_s: int, slide_s: int) -> LogCounts:
    """`counts` with its set-aside lines (count_log's `set_aside`: the values of `in_future`) counted as the job
    decided: as many lines of each record value as the job quarantined as TIMESTAMP_IN_FUTURE (`in_future`, a
    multiset of record values: each source line once) quarantined with that reason, the others parsed (copies of
    a line are alike: which of them does not change a count). Whether each decision keeps to its micro-batch's
    bound is checked apart (verify.future)."""
    if not counts.set_aside:
        return counts
    counter = _LineCounter(size_s, slide_s, None, in_future=Counter(in_future))
    for raw in counts.set_aside:
        counter.add(raw)
    extra = counter.result()
    extra.lines = 0  # counted as read already
    merged = merge_log_counts([counts, extra], int(MIN_TIME.timestamp()) - size_s)
    merged.set_aside = []
    return merged


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


def merge_log_counts(parts: list[LogCounts], base: int) -> LogCounts:
    """The counts of consecutive ranges of one log (in order) as one: count_log over the whole log."""
    out = LogCounts()
    for p in parts:
        out.lines += p.lines
        out.parsed += p.parsed
        for reason, n in p.quarantined_by_reason.items():
            out.quarantined_by_reason[reason] = out.quarantined_by_reason.get(reason, 0) + n
        out.parsed_fingerprint = (out.parsed_fingerprint + p.parsed_fingerprint) % _MOD
        out.quarantine_fingerprint = (out.quarantine_fingerprint + p.quarantine_fingerprint) % _MOD
        out.set_aside.extend(p.set_aside)
    out.host = merge_keyed_counts([p.host for p in parts], base)
    out.status = merge_keyed_counts([p.status for p in parts], base)
    return out
