"""Idempotent per-micro-batch Parquet writes on HDFS: a re-run of a batch id never writes its rows twice."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from logpipe.commit_log import (read_commit_records, read_commit_records_by_folder, rollup_scope, rollup_text,
                                stale_rollups)
from logpipe.root_layout import (COMMITS, DONE, PENDING, ROLLUP, batch_tag, file_tag, flat_marker_path, list_markers,
                                  marker_folder, marker_path, marker_tag, staging_dir, tag_id)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class HadoopFs:
    """The few Hadoop FileSystem calls we need, through the driver's JVM (no extra client)."""

    def __init__(self, spark: "SparkSession", uri: str) -> None:
        self.jvm = spark._jvm
        conf = spark._jsc.hadoopConfiguration()
        self.fs = self.jvm.org.apache.hadoop.fs.Path(uri).getFileSystem(conf)
        self.fc = self.jvm.org.apache.hadoop.fs.FileContext.getFileContext(self.fs.getUri(), conf)
        self._gateway = spark.sparkContext._gateway

    def path(self, p: str) -> Any:
        return self.jvm.org.apache.hadoop.fs.Path(p)

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.path(p)))

    def marker(self, root: str, query: str, tag: str) -> str | None:
        """The path of a batch's commit marker if it exists: in its marker folder, or where a root written before
        marker folders has it (root_layout.flat_marker_path); None if it has none."""
        for p in (marker_path(root, query, tag), flat_marker_path(root, query, tag)):
            if self.exists(p):
                return p
        return None

    def delete(self, p: str) -> None:
        self.fs.delete(self.path(p), True)

    def write_text(self, p: str, text: str) -> None:
        """Write p atomically: a temp file beside it, closed, then renamed over p. A process killed half-way
        leaves a hidden `.tmp` file, never an empty or partial p (HDFS keeps an unclosed file visible)."""
        dst = self.path(p)
        tmp = self.path(f"{dst.getParent().toString()}/.{dst.getName()}.{uuid.uuid4().hex}.tmp")
        out = self.fs.create(tmp, True)
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()
        rename = self.jvm.org.apache.hadoop.fs.Options.Rename
        overwrite = self._gateway.new_array(rename, 1)
        overwrite[0] = rename.OVERWRITE
        self.fc.rename(tmp, dst, overwrite)

    def create_new(self, p: str, text: str) -> bool:
        """Create p holding `text` if it does not exist (atomically on HDFS); False if it exists."""
        from py4j.protocol import Py4JJavaError

        try:
            out = self.fs.create(self.path(p), False)
        except Py4JJavaError as exc:
            # AlreadyBeingCreated: another client has the file open since its create (HDFS; in a RemoteException)
            if any(name in str(exc.java_exception) for name in ("FileAlreadyExistsException",
                                                                 "AlreadyBeingCreatedException")):
                return False
            raise
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()
        return True

    def read_text(self, p: str) -> str:
        stream = self.fs.open(self.path(p))
        try:
            reader = self.jvm.java.io.BufferedReader(self.jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            while (line := reader.readLine()) is not None:
                lines.append(line)
            return "\n".join(lines)
        finally:
            stream.close()

    def ls(self, p: str) -> list[str]:
        """The entries of folder p (not below it), as full paths; [] if p does not exist. The names cross from the
        JVM as one string: a loop over the JVM's array costs a py4j call per entry (2,000 markers: 0.72 s against
        0.08 s)."""
        if not self.exists(p):
            return []
        paths = self.jvm.org.apache.hadoop.fs.FileUtil.stat2Paths(self.fs.listStatus(self.path(p)))
        text = self.jvm.scala.collection.immutable.ArraySeq.unsafeWrapArray(paths).mkString("\n")
        names = text.split("\n") if text else []
        if len(names) != len(paths):  # a name with a line break in it: one entry at a time
            names = [path.toString() for path in paths]
        return names

    def files(self, p: str) -> list[str]:
        """All files below p (recursive), as full paths."""
        if not self.exists(p):
            return []
        it = self.fs.listFiles(self.path(p), True)
        out = []
        while it.hasNext():
            out.append(it.next().getPath().toString())
        return out

    def glob(self, pattern: str) -> list[str]:
        """The paths matching a glob pattern (Hadoop's: `*`, `?`, `[...]`, `{a,b}`), as full paths."""
        found = self.fs.globStatus(self.path(pattern))
        return [st.getPath().toString() for st in found] if found is not None else []

    def rename(self, src: str, dst: str) -> None:
        parent = self.path(dst).getParent()
        self.fs.mkdirs(parent)
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise OSError(f"HDFS rename {src} -> {dst} failed")


T = TypeVar("T")


def run_at_once(spark: "SparkSession", calls: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Call each of `calls` (functions that run Spark jobs), up to `workers` at a time, and return their results in
    order; 0 or 1 worker: one after the other. The threads carry the caller's Spark job group and properties, so a
    stopped query cancels their jobs too. The first failure is raised once the running calls end; the calls not
    started yet are not made."""
    if workers <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from pyspark import inheritable_thread_target

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(inheritable_thread_target(spark)(call)) for call in calls]
        try:
            for fut in as_completed(futures):
                fut.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [fut.result() for fut in futures]


class TableWrite(NamedTuple):
    """One table of a batch for commit_batch (a plain (frame, table, parts) tuple works too).

    `frame` may be a function that returns the frame (or None: nothing to write), called when its turn comes, so
    that it can use what the writes before it found out; `keep`, if given, is called after the write, and False
    drops what it wrote (e.g. a frame that turned out empty); `options` are the Parquet writer's options.
    `staged`: the table's files were written already, by a pass of the batch's own (its frame is None): the
    Parquet files in this folder (below it, in partition folders such as `date=2004-05-18`; `staged_parts`:
    only those folders) are moved into the table, after every other write of the batch, which may read them."""

    frame: "DataFrame | Callable[[], DataFrame | None] | None"
    table: str
    parts: Sequence[str] = ()
    keep: Callable[[], bool] | None = None
    options: Mapping[str, str] | None = None
    staged: str | None = None
    staged_parts: Sequence[str] | None = None


def commit_batch(spark: "SparkSession", root_uri: str, query: str, batch_id: int,
                 writes: "Sequence[TableWrite | tuple[Any, ...]]",
                 meta: dict[str, Any] | Callable[[], dict[str, Any]], prefix: str = "b", concurrent: int = 0,
                 fence: Callable[[], None] | None = None) -> bool:
    """Write each TableWrite (frame, table, partition columns[, keep]) of one micro-batch under root_uri/table,
    exactly once.

    Files are written to a staging folder, then renamed into the table with a `b<batch>-` prefix; a commit
    marker `_commits/<query>/<folder>/<batch>.json` (root_layout.marker_path; holding `meta`, or what `meta()` returns once the files are
    written) ends the batch. A batch that was committed is
    skipped on re-run; one that died half-way is cleaned (its prefixed files removed) and redone.
    A TableWrite's `options` go to its Parquet writer; one that is `staged` is only moved into its table, last.
    `concurrent`: up to this many writes of frames given as such run at once (in threads that carry the
    caller's Spark job group, so a stopped query cancels them); then the callables build theirs, in order.
    `fence`, if given, is called before anything is removed from or moved into a table (and before the marker,
    by `meta`): it raises when this run may no longer write to the root (streaming.lease.RootLease.check: a run
    paused past its lease's renewals, whose root another run took over, stops there rather than at its marker).
    Returns False when the batch had already been committed.
    """
    fs = HadoopFs(spark, root_uri)
    tag = batch_tag(batch_id, prefix)
    marker = marker_path(root_uri, query, tag)
    pending = marker_path(root_uri, query, tag, PENDING)
    if fs.marker(root_uri, query, tag) is not None:
        return False
    all_writes = [TableWrite(*w) for w in writes]
    check = fence or (lambda: None)
    check()
    if fs.exists(pending):  # an earlier attempt died while moving files: remove what it moved
        for table in (w.table for w in all_writes):
            for f in fs.files(f"{root_uri}/{table}"):
                if file_tag(f) == tag:
                    fs.delete(f)
    fs.write_text(pending, "")
    # the writes of frames given as such run at once (Spark fills a core one leaves idle: a job's last task, the
    # driver's work between jobs, a wait on HDFS); those built by a callable run after them, in order; the staged
    # tables are moved last (the other writes may read their files)
    ready = [w for w in all_writes if w.staged is None and not callable(w.frame)]
    run_at_once(spark, [lambda w=w: _write_table(fs, root_uri, tag, w, check) for w in ready], concurrent)
    for w in all_writes:
        if w.staged is None and callable(w.frame):
            _write_table(fs, root_uri, tag, w, check)
    for w in all_writes:
        if w.staged is not None:
            check()
            _move_into_table(fs, w.staged, root_uri, w.table, tag, w.staged_parts)
    fs.write_text(marker, json.dumps(meta() if callable(meta) else meta, default=str))
    fs.delete(pending)
    return True


def _write_table(fs: HadoopFs, root_uri: str, tag: str, w: TableWrite, check: Callable[[], None]) -> None:
    """Write one TableWrite's frame as Parquet to the batch's staging folder of its table, then move the files
    into the table (unless its `keep()` says no); `check()` (commit_batch's fence) first."""
    frame, table, parts, keep, options, _, _ = w
    df = frame() if callable(frame) else frame
    if df is None:
        return
    staging = staging_dir(root_uri, table, tag)
    writer = df.write.mode("overwrite").options(**(options or {}))
    if parts:
        writer = writer.partitionBy(*parts)
    writer.parquet(staging)
    if keep is not None and not keep():
        fs.delete(staging)
        return
    check()
    _move_into_table(fs, staging, root_uri, table, tag)
    fs.delete(staging)


def _move_into_table(fs: HadoopFs, staging: str, root_uri: str, table: str, tag: str,
                     only: "Sequence[str] | None" = None) -> None:
    """Move the Parquet files below `staging` into the table, named by the batch's tag, keeping their partition
    folders (`only`: those folders' files, e.g. date=2004-05-18; a RuntimeError if any of them is gone)."""
    base = fs.path(staging).toUri().getPath().rstrip("/")  # (Hadoop lists file:///x as file:/x: by path)
    files = []
    for f in fs.files(staging):
        if not f.endswith(".parquet"):
            continue
        rel_dir = fs.path(f).toUri().getPath()[len(base):].rsplit("/", 1)[0]  # e.g. /date=2004-05-18 or ""
        if only is None or rel_dir.lstrip("/") in only:
            files.append((f, rel_dir))
    if only is not None and (gone := sorted(set(only) - {rel_dir.lstrip("/") for _, rel_dir in files})):
        # the batch found files there; without them the marker would count rows its tables do not hold
        raise RuntimeError(f"the staged files of {table} in {staging} ({', '.join(gone)}) are gone (removed "
                           "by another run on the root?): batch not committed")
    for i, (f, rel_dir) in enumerate(sorted(files)):
        fs.rename(f, f"{root_uri}/{table}{rel_dir}/{tag}-{i:05d}.parquet")


def clean_crashed_attempts(spark: "SparkSession", root_uri: str, tables: list[str]) -> list[str]:
    """Remove what attempts that died before their commit marker left behind: for every `<tag>.pending` of any
    query without its `<tag>.json`, the tag's files in every table and its staging folders. Run once at start,
    before any batch: a crashed flush (which no later batch re-runs under its own tag) or an attempt whose tables
    differ from the re-run's would otherwise leave rows behind. Also removes the hidden temp files of markers and
    roll-ups whose writer died before renaming them (a roll-up's holds up to 10,000 records; HDFS keeps the
    dead writer's lease on it for up to an hour). Returns the cleaned tags."""
    fs = HadoopFs(spark, root_uri)
    crashed = []
    for folder, f in ((d, entry) for d in fs.ls(f"{root_uri}/{COMMITS}") for entry in list_markers(fs.ls, d)):
        name = f.rsplit("/", 1)[-1]
        if f != folder and name.startswith(".") and name.endswith(".tmp"):  # in a query's folder (one per query)
            fs.delete(f)  # a marker or roll-up whose writer died before its rename (HadoopFs.write_text)
            continue
        tag = marker_tag(f, PENDING)
        if tag is None:
            continue
        if fs.exists(f[:-len(PENDING)] + DONE):  # committed; a crash came between its marker and this delete
            fs.delete(f)
        else:
            crashed.append((f, tag))
    if not crashed:
        return []
    tags = {tag for _, tag in crashed}
    for table in tables:
        for f in fs.files(f"{root_uri}/{table}"):
            if file_tag(f) in tags:
                fs.delete(f)
        for tag in tags:
            fs.delete(staging_dir(root_uri, table, tag))
    for pending, _ in crashed:
        fs.delete(pending)
    return sorted(tags)


def committed_meta(spark: "SparkSession", root_uri: str, query: str) -> list[dict[str, Any]]:
    """The record of every committed batch of a query, in batch order (from its newest roll-up and the markers
    after it: commit_log)."""
    return commit_history(spark, root_uri, query)[0]


def commit_history(spark: "SparkSession", root_uri: str, query: str) -> tuple[list[dict[str, Any]], list[int]]:
    """committed_meta's records, and the batch ids of the query's roll-ups (from the same listing). A roll-up that
    cannot be read (removed since the listing, refused) is passed over for the markers, as the WebHDFS readers do:
    its read error is an OSError here, where a marker's stays the JVM's own."""
    folders, rollups = commit_history_by_folder(spark, root_uri, query)
    return [record for records in folders for record in records], rollups


def commit_history_by_folder(spark: "SparkSession", root_uri: str, query: str
                             ) -> tuple["Iterator[list[dict[str, Any]]]", list[int]]:
    """commit_history's records one marker folder at a time (commit_log.read_commit_records_by_folder), read as
    they are iterated, and the roll-ups' batch ids."""
    fs = HadoopFs(spark, root_uri)
    names = list_markers(fs.ls, f"{root_uri}/{COMMITS}/{query}")
    rollups = sorted(tag_id(tag)[1] for n in names if (tag := marker_tag(n, ROLLUP)) is not None)
    folders = ([record for _, record in records]
               for records in read_commit_records_by_folder(names, _commit_record_reader(fs)))
    return folders, rollups


def _commit_record_reader(fs: HadoopFs) -> Callable[[str], str]:
    """The text of a marker or roll-up, for commit_log's readers: a roll-up that cannot be read (removed since the
    listing, refused) raises OSError, so that the readers pass it over for the markers; a marker's error stays the
    JVM's own."""
    from py4j.protocol import Py4JJavaError

    def read(p: str) -> str:
        if marker_tag(p, ROLLUP) is None:
            return fs.read_text(p)
        try:
            return fs.read_text(p)
        except Py4JJavaError as exc:
            raise OSError(str(exc.java_exception).splitlines()[0]) from exc

    return read


def fold_in_flat_rollups(spark: "SparkSession", root_uri: str, query: str) -> list[str]:
    """Replace the roll-ups an earlier logpipe wrote in a query's folder itself, each of every batch up to its tag
    (a root with one is read whole at every start, and readers kept opening it: ~79 MB after a week), by roll-ups
    per marker folder: one for each folder whose newest batch no roll-up of its own covers, then remove the old
    ones. Returns the removed paths ([]: the root had none). Run under the root's lease (the job's start); a crash
    half-way leaves roll-ups that readers take as before, and the next start goes on."""
    fs = HadoopFs(spark, root_uri)
    query_dir = f"{root_uri}/{COMMITS}/{query}"
    if not any(marker_tag(n, ROLLUP) is not None for n in fs.ls(query_dir)):  # the usual case: one listing
        return []
    names = list_markers(fs.ls, query_dir)
    flat = [n for n in names if marker_tag(n, ROLLUP) is not None and rollup_scope(n) is None]
    newest_own: dict[str, str] = {}  # marker folder -> the tag of its newest roll-up of its own
    for n in names:
        if (tag := marker_tag(n, ROLLUP)) is not None and (scope := rollup_scope(n)) is not None:
            newest_own[scope] = max(tag, newest_own.get(scope, tag))
    by_folder: dict[str, dict[str, dict[str, Any]]] = {}
    for tag, record in read_commit_records(names, _commit_record_reader(fs)):  # the whole history, this once
        by_folder.setdefault(marker_folder(tag), {})[tag] = record
    for folder, records in sorted(by_folder.items()):
        if max(records) > newest_own.get(folder, ""):
            roll_up_records(spark, root_uri, query, records)
    for old in flat:
        fs.delete(old)
    return flat


def roll_up_records(spark: "SparkSession", root_uri: str, query: str, records: Mapping[str, dict[str, Any]]) -> str:
    """Write the roll-up of a query's commit records (tag -> record: every committed batch of one marker folder, up
    to the newest) under the newest tag in that folder, then remove the folder's roll-ups older than the newest
    ROLLUPS_KEPT (one that cannot be removed is a warning: the new one covers its batches). Returns its path."""
    from py4j.protocol import Py4JError

    folders = {marker_folder(t) for t in records}
    if len(folders) != 1:
        raise ValueError(f"a roll-up holds the records of one marker folder, not of {sorted(folders)}")
    fs = HadoopFs(spark, root_uri)
    path = marker_path(root_uri, query, max(records), ROLLUP)
    fs.write_text(path, rollup_text(records))
    for old in stale_rollups(fs.glob(f"{path.rsplit('/', 1)[0]}/*{ROLLUP}")):
        try:
            fs.delete(old)
        except Py4JError as exc:  # the new one is written: readers pass the old one over (its batches are covered)
            log.warning("an older roll-up of the commit records, %s, could not be removed (the next roll-up tries "
                        "again): %s", old, str(exc).splitlines()[0] if str(exc) else exc)
    return path
