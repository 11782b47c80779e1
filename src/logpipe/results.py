"""Reads the job's results (Parquet on HDFS) over WebHDFS into Arrow and pandas, for verify, the demo, the notebook and
benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from logpipe.commit_log import read_commit_records
from logpipe.config import Settings
from logpipe.root_layout import COMMITS, file_tag, list_markers, marker_tag
from logpipe.root_record import ROOT_SETTINGS_FILE, RUN_SETTINGS, setting_differs

if TYPE_CHECKING:
    import fsspec
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

# result tables under settings.hdfs_root
TABLES = ("events", "quarantine", "late", "alerts", "windows/by_host", "windows/by_status")
# the columns of the small tables, for an empty frame when a table holds no committed file yet (the job's Spark
# schemas in logpipe.streaming.job; a test checks they agree)
COLUMNS = {
    "windows/by_status": ["window_start", "window_end", "http_response", "count"],
    "windows/by_host": ["window_start", "window_end", "host", "count"],
    "alerts": ["rule", "key", "window_start", "window_end", "count", "share", "threshold", "top_hosts", "alert_id",
               "detected_at"],
}


def webhdfs_fs(s: Settings) -> "fsspec.AbstractFileSystem":
    """An fsspec WebHDFS filesystem for the NameNode in the settings (logpipe.webhdfs.StrictWebHDFS: an error is
    never read as a missing path or an empty folder; a request without an answer fails after
    LOGPIPE_CONNECT_TIMEOUT_S). WebHDFS redirects each read and write to a DataNode's own HTTP address, which this
    process must reach too (on the native stack: loopback)."""
    from logpipe.webhdfs import StrictWebHDFS

    url = urlparse(s.webhdfs_address)
    host = url.hostname or ""
    # fsspec writes host:port into its URLs as given: an IPv6 address needs its brackets back
    return StrictWebHDFS(host=f"[{host}]" if ":" in host else host, port=url.port, user=s.hdfs_user_name,
                         use_https=url.scheme == "https", no_answer_s=s.connect_timeout_s)


def existing_tables(s: Settings, fs: "fsspec.AbstractFileSystem | None" = None) -> list[str]:
    """The TABLES whose folder exists under the results root (`late/` and `quarantine/` appear with their first
    row, `alerts/` with its first alert)."""
    fs = fs or webhdfs_fs(s)
    return [t for t in TABLES if fs.exists(s.hdfs_path(t))]


def committed_tags(s: Settings, fs: "fsspec.AbstractFileSystem") -> set[str]:
    """The tags (`b0000000003`, `f0000000007`) of the micro-batches and flushes whose commit marker exists: files of
    other tags belong to an attempt that died before its commit, or to a batch still being written."""
    tags: set[str] = set()
    for query in ("ingest", "flush"):
        d = s.hdfs_path(COMMITS, query)
        if fs.exists(d):
            tags |= {marker_tag(f) for f in list_markers(lambda p: fs.ls(p, detail=False), d)} - {None}
    return tags


def committed_files(s: Settings, table: str, fs: "fsspec.AbstractFileSystem",
                    tags: set[str] | None = None) -> list[str]:
    """The Parquet files of `table` that committed batches wrote (named `<tag>-NNNNN.parquet`), without staging
    folders or hidden files; `tags`: committed_tags (read when not given)."""
    path = s.hdfs_path(table)
    if not fs.exists(path):
        return []
    tags = committed_tags(s, fs) if tags is None else tags
    base = path.strip("/")
    out = []
    for f in fs.find(path):
        at = f.find(base)  # fsspec may list paths without the leading slash; the root itself may hold "/_"
        below = f[at + len(base):] if at >= 0 else f
        name = below.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and "/_" not in below and "/." not in below and file_tag(name) in tags:
            out.append(f)
    return out


# what each committed micro-batch's record counts (StreamJob's MicroBatch.meta)
ACCOUNTING_FIELDS = ("lines", "parsed", "quarantined", "late", "duplicates", "events")


def committed_accounting(s: Settings, fs: "fsspec.AbstractFileSystem",
                         tags: set[str] | None = None) -> dict[str, Any]:
    """The job's accounting summed over its committed micro-batches (their records in `_commits/ingest/`; with
    `tags`, those of the snapshot committed_tags gave): batches, lines, parsed, quarantined, late, duplicates,
    events, and `per_batch` (the records, in batch order). Always current, where `_metrics/latest.json` is
    written only when a run ends."""
    d = s.hdfs_path(COMMITS, "ingest")
    records = (read_commit_records(list_markers(lambda p: fs.ls(p, detail=False), d), fs.cat) if fs.exists(d)
               else [])
    metas = [record for tag, record in records if tags is None or tag in tags]
    return {**sum_commit_records(metas), "per_batch": metas}


def sum_commit_records(metas: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The accounting of committed micro-batches from their commit records (read once: an iterator of a long
    history's records need not be held at once): batches, the ACCOUNTING_FIELDS summed (a field an older record
    lacks counts 0) and quarantined_by_reason."""
    batches, totals, by_reason = 0, dict.fromkeys(ACCOUNTING_FIELDS, 0), {}
    for m in metas:
        batches += 1
        for k in ACCOUNTING_FIELDS:
            totals[k] += int(m.get(k, 0))
        for reason, n in m.get("quarantined_by_reason", {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + int(n)
    return {"batches": batches, **totals, "quarantined_by_reason": by_reason}


def load_arrow(s: Settings, table: str, columns: list[str] | None = None, *,
               fs: "fsspec.AbstractFileSystem | None" = None, tags: set[str] | None = None,
               head: int | None = None, dictionary_partitions: bool = False,
               where: "pc.Expression | None" = None) -> "pa.Table | None":
    """One result table as an Arrow table (None if the folder does not exist or holds no data): the files of
    committed batches only (committed_files; `tags`: a snapshot of committed_tags, so that several tables read
    while a job runs are of the same batches); `head`: its first rows only (read no further); `where`: only the
    rows it holds for (a pyarrow.compute expression, e.g. `pc.field("reason") == "malformed"`).

    Hive partitions (e.g. events/date=2004-05-18/) become columns (`dictionary_partitions`: dictionary-encoded,
    4 bytes a row where a string column takes 14).
    """
    import pyarrow.dataset as ds

    fs = fs or webhdfs_fs(s)
    path = s.hdfs_path(table)
    files = committed_files(s, table, fs, tags)
    if not files:
        return None
    partitioning = ds.HivePartitioning.discover(infer_dictionary=True) if dictionary_partitions else "hive"
    dataset = ds.dataset(files, filesystem=fs, format="parquet", partitioning=partitioning, partition_base_dir=path)
    if head is None:
        return dataset.to_table(columns=columns, filter=where)
    return dataset.head(head, columns=columns, filter=where)


def load_table(s: Settings, table: str, columns: list[str] | None = None, *,
               fs: "fsspec.AbstractFileSystem | None" = None, tags: set[str] | None = None,
               head: int | None = None, where: "pc.Expression | None" = None) -> "pd.DataFrame":
    """One result table as a pandas DataFrame (an empty frame with `columns`, or the table's COLUMNS, if there is
    no data); `tags`, `head` and `where` as for load_arrow."""
    import pandas as pd

    t = load_arrow(s, table, columns, fs=fs, tags=tags, head=head, where=where)
    return pd.DataFrame(columns=columns or COLUMNS.get(table, [])) if t is None else t.to_pandas()


def alerts_by_key(alerts: "pd.DataFrame", top: int = 3) -> "pd.DataFrame":
    """One row per (rule, key) of the alerts table, oldest first: how many windows it fired in, the first window's
    start and the last window's end, the peak count, and the `top` hosts named most often behind it (a rate-limit
    alert names its own host; a surge names the hosts behind the failures)."""
    from collections import Counter

    import pandas as pd

    cols = ["rule", "key", "windows", "first", "last", "peak_count", "top_hosts"]
    if alerts.empty:
        return pd.DataFrame(columns=cols)

    def most_named(lists: "pd.Series") -> list[str]:
        # Counter keeps ties in the order first named (the alerts are sorted by window first)
        named = Counter(h for hosts in lists if hosts is not None for h in hosts)
        return [h for h, _ in named.most_common(top)]

    a = alerts.sort_values(["window_start", "rule", "key"], kind="stable").reset_index(drop=True)
    out = (a.groupby(["rule", "key"], sort=False)
           .agg(windows=("window_start", "size"), first=("window_start", "min"), last=("window_end", "max"),
                peak_count=("count", "max"), top_hosts=("top_hosts", most_named))
           .reset_index())
    return out.sort_values(["first", "rule", "key"], kind="stable").reset_index(drop=True)[cols]


class ResultsSettingsError(RuntimeError):
    """The record of the settings a root's results were made with cannot be read (the message says which)."""


def settings_of_results(s: Settings, fs: "fsspec.AbstractFileSystem | None" = None) -> tuple[Settings, list[str]]:
    """`s` with the window, slide, watermark, alert rules and alerts topic that the results under s.hdfs_root were made with
    (recorded by the job in `_commits/job.json`), and a note for each value that differs from `s`: the numbers on a
    root must be read with its own settings, not the reader's. `s` itself when nothing is recorded."""
    import json

    fs = fs or webhdfs_fs(s)
    path = s.hdfs_path(*ROOT_SETTINGS_FILE.split("/"))
    if not fs.exists(path):
        return s, []
    try:
        with fs.open(path, "rb") as f:
            recorded = json.load(f)
        theirs = {k: recorded[k] for k in RUN_SETTINGS if k in recorded}
        # the root's topic too, with no note (readers do not read it): with the reader's own, a root whose alerts
        # topic is named as the reader's topic would fail the check that the two differ
        ran_with = s.with_overrides(**theirs, **{k: recorded[k] for k in ("topic",) if k in recorded})
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, or values the settings refuse
        raise ResultsSettingsError(f"{path} is not the record the job writes ({exc}): it says which window, slide, "
                                   "watermark and rules the results were made with; restore it, or read the "
                                   "results with the settings they were made with") from exc
    notes = []
    for k, v in theirs.items():
        mine = getattr(s, k)
        if setting_differs(k, v, mine):
            notes.append(f"{k} {v!r} (the job's, from {path}; not {mine!r})")
    return ran_with, notes
