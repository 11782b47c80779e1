"""The job's accounting checked: its own counts, its late rows, and what to check when the line counts differ."""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path
from typing import Any

from logpipe.config import Settings
from logpipe.logformat import TOO_LARGE
from logpipe.results import ACCOUNTING_FIELDS, committed_accounting, committed_files
from logpipe.verify.tables import TableScan, _batch_of, _epoch_s_arrow, newest_event_per_batch, scan_table
from logpipe.windows import duration_seconds


def other_log_hint(file_lines: int, job_lines: int, log_path: Path) -> str | None:
    """Why the file's lines and the job's distinct source lines may differ, or None when their numbers agree. A
    few lines apart (at most 0.1 %, or 10), rows changed in the tables come first: a row deleted from events/
    was told "the results may be of another log", which sent its reader to the wrong place."""
    if file_lines == job_lines:
        return None
    gap = abs(job_lines - file_lines)
    more = "more" if job_lines > file_lines else "fewer"
    another_log = ("is it the log that was produced to the topic, whole? Lines added to it since were not sent or not "
                   "read yet (`logpipe produce` sends them, `logpipe stream --until-done` reads them); a rotated log is "
                   "checked as one file of its parts in order (e.g. `--log <(cat access.log.1 access.log)`); another "
                   "log's results are under another root (--hdfs-root)")
    tables = (f"rows {'added to' if more == 'more' else 'missing from'} the result tables (events/, late/, "
              "quarantine/) since the job wrote them: the checks below say which table")
    head = (f"The job's results hold {job_lines:,} distinct source lines, {gap:,} {more} than the {file_lines:,} of "
            f"{log_path}: ")
    if gap <= max(10, file_lines // 1000):
        return head + f"{tables}; or, {another_log}."
    return head + f"{another_log}. Or {tables}."


def too_large_hint(s: Settings, file_by_reason: dict[str, int], job_by_reason: dict[str, int]) -> str | None:
    """Why the file's and the job's too_large counts may differ, or None when they agree: the producer sends a
    line over its --max-message-bytes as a too_large record (quarantined by the job), and verify takes the lines
    over its own setting for those. The setting is the producer's: nothing records it where verify can read it."""
    mine, job = file_by_reason.get(TOO_LARGE, 0), job_by_reason.get(TOO_LARGE, 0)
    if mine == job:
        return None
    return (f"{mine:,} lines of the file are over max_message_bytes ({s.max_message_bytes:,}) and the job "
            f"quarantined {job:,} as too_large: if the producer ran with another --max-message-bytes "
            "(LOGPIPE_MAX_MESSAGE_BYTES), give verify the same")


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


def check_job_accounting(s: Settings, fs: Any, *, event_rows: int, late_rows: int,
                         quarantine_rows: int) -> dict[str, Any]:
    """The job's own accounting (summed over the records of its committed micro-batches, `_commits/ingest/`)
    against the rows of its tables: a job that counted a batch twice, or wrote rows it did not count, does not
    pass, even when its windows are right."""
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
