"""The job's window tables compared row by row with the recount, less the lines it kept out as late."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from logpipe.config import Settings
from logpipe.results import committed_files, committed_tags, load_arrow
from logpipe.root_layout import batch_tag, flat_marker_path, marker_path, tag_id
from logpipe.verify.recount import PARSED_FIELDS, LogCounts, KeyedCounts, _pack, row_fingerprint
from logpipe.verify.tables import _epoch_s_arrow, keyed_counts_of_table
from logpipe.windows import window_starts_array


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


def exclude_late_lines(counts: LogCounts, late_t: Any, event_keys: Any, size_s: int,
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


def window_files_types_wrong(s: Settings, table: str, key: str, fs: Any, limit: int = 5) -> list[str]:
    """`file: column: type` for the first `limit` committed files of a window table holding a column of another
    type than the job writes (window_table_types_wrong), or missing one; their footers only are read."""
    import pyarrow.parquet as pq

    wrong: list[str] = []
    for path in committed_files(s, table, fs):
        schema = pq.read_schema(path, filesystem=fs)
        missing = [c for c in ("window_start", "window_end", key, "count") if schema.get_field_index(c) < 0]
        problems = [f"{c}: missing" for c in missing] or window_table_types_wrong(schema, key)
        wrong += [f"{path.rsplit('/', 1)[-1]}: {p}" for p in problems]
        if len(wrong) >= limit:
            break
    return wrong[:limit]


def compare_window_tables(s: Settings, fs: Any, counts: LogCounts, size_s: int) -> dict[str, dict[str, Any]]:
    """windows/by_host and windows/by_status against the batch counts, row by row; each row's window must also
    be [window_start, window_start + window)."""
    comparisons = {}
    for table, kc in (("windows/by_host", counts.host), ("windows/by_status", counts.status)):
        columns = ["window_start", "window_end", kc.key, "count"]
        # each file's types first: Arrow reads a table in its first file's types, casting the others' (a count
        # of whole doubles passed as int64; one with a fraction stopped verify with Arrow's traceback)
        if files_wrong := window_files_types_wrong(s, table, kc.key, fs):
            comparisons[table] = not_compared(kc, None, files_wrong)
            continue
        rows, date_wrong = _window_rows(s, table, columns, fs)
        # a table of other types or with NULLs is reported as such, not compared (its values cannot be read as
        # the job's): its rows are neither counted as matching nor as missing
        types_wrong = [] if rows is None else window_table_types_wrong(rows.schema, kc.key) + [
            f"{c}: {rows.column(c).null_count:,} nulls" for c in columns if rows.column(c).null_count]
        if types_wrong:
            comparisons[table] = not_compared(kc, rows, types_wrong)
            continue
        # checked record batch by record batch
        ends_wrong = 0 if rows is None else sum(
            int((_epoch_s_arrow(rb.column(1), f"{table}.window_end") - _epoch_s_arrow(rb.column(0), f"{table}.window_start")
                 != size_s).sum())
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
        comparisons[table]["date_partition_wrong"] = date_wrong
        comparisons[table]["types_wrong"] = []  # none: a table with any was reported as not compared above
        comparisons[table]["ok"] = comparisons[table]["ok"] and not ends_wrong and not date_wrong
        del actual
    if any(c.get("missing") for c in comparisons.values()) and (hint := unflushed_hint(s, fs)):
        for c in comparisons.values():
            if c.get("missing"):
                c["hint"] = hint
    return comparisons


def _window_rows(s: Settings, table: str, columns: list[str], fs: Any) -> tuple[Any, int]:
    """A window table's `columns` (Arrow; None if it has no committed file), and how many of its rows lie in a
    `date=` folder other than their window start's UTC day (root_layout.TABLE_PARTITIONS; 0 for a root written
    before the windows were partitioned, whose files have no such folder)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        rows = load_arrow(s, table, [*columns, "date"], fs=fs, dictionary_partitions=True)
    except (pa.ArrowInvalid, KeyError):  # no `date` partition: files written before it
        return load_arrow(s, table, columns, fs=fs), 0
    if rows is None:
        return None, 0
    wrong = 0
    for rb in rows.select(["window_start", "date"]).to_batches():
        day = pc.strftime(rb.column(0), format="%Y-%m-%d")
        # a row without a folder (a file of a root written before, continued since) has a null `date`: not counted
        wrong += int(pc.sum(pc.not_equal(pc.cast(rb.column(1), pa.string()), day)).as_py() or 0)
    return rows.select(columns), wrong


def unflushed_hint(s: Settings, fs: Any) -> str | None:
    """What missing window rows may mean when the job's last micro-batch left windows open and no flush wrote
    them (a continuous `stream` stopped, or still running): those are not written yet. None when it was flushed or
    left none open (a window missing then is missing), or no batch was committed."""
    ids = {tag_id(t) for t in committed_tags(s, fs)} - {None}
    last = max((n for kind, n in ids if kind == "b"), default=None)
    if last is None or ("f", last) in ids:
        return None
    marker = marker_path(s.hdfs_path(), "ingest", batch_tag(last))
    if not fs.exists(marker):  # a root written before marker folders
        marker = flat_marker_path(s.hdfs_path(), "ingest", batch_tag(last))
    record = json.loads(fs.cat(marker))
    open_rows = int(record.get("open_window_rows", 0))
    if not open_rows:  # the job writes no flush then: nothing was left to write
        return None
    return (f"the job's last micro-batch ({last}) left {open_rows:,} window rows open and no flush wrote them: a "
            "continuous `logpipe stream` writes a window once the watermark passes its end; `logpipe stream "
            "--until-done` on this root writes them, then run verify again")


def not_compared(expected: KeyedCounts, rows: Any, problems: list[str], n_rows: int | None = None) -> dict[str, Any]:
    """The comparison of a window table that could not be compared row by row (`problems` say why): failed."""
    return {"compared": 0, "expected_rows": int(len(expected)),
            "actual_rows": int(n_rows if n_rows is not None else 0 if rows is None else rows.num_rows),
            "missing": 0, "extra": 0, "wrong": 0, "duplicates": 0, "window_end_wrong": 0, "date_partition_wrong": 0, "types_wrong": problems,
            "examples": {}, "ok": False}
