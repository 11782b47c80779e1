"""The names of a results root's bookkeeping: micro-batch tags, table file names and commit markers (written by
streaming.commit and the job, read by results, verify and the job's recovery)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import date

COMMITS = "_commits"  # under the results root: the markers, one folder per query (ingest, flush, alerts-kafka), the
# root's settings record (root_record) and the run's lease (streaming.lease)
DONE = ".json"  # a commit marker: the batch's files are all in place (it holds the batch's record)
PENDING = ".pending"  # an attempt that began moving its files into the tables and has not committed (yet)
ROLLUP = ".rollup"  # the records of its marker folder's markers up to its tag, in one file (commit_log: read instead)
STAGING = "_staging"  # a table's folder for the files a batch writes before they are moved in
# each result table's partition column, a folder per value (`date=2004-05-18`): HDFS refuses a folder's 1,048,576th
# entry (dfs.namenode.fs-limits.max-directory-items), which a tail followed for weeks would reach with a file or two
# a micro-batch in one folder. `date` is the UTC day of the event (events, late) or of the window's start (windows, alerts);
# `ingest_date` the UTC day the job read the line (quarantine: a line that did not parse has no time of its own).
TABLE_PARTITIONS = {"events": "date", "late": "date", "windows/by_host": "date", "windows/by_status": "date",
                    "alerts": "date", "quarantine": "ingest_date"}


def partition_day(path: str) -> date | None:
    """The day of the `date=YYYY-MM-DD` folder a table file at `path` lies in; None for a file outside one (a table
    an earlier logpipe wrote without day folders, or the quarantine's `ingest_date=`)."""
    from datetime import date

    for part in reversed(path.split("/")[:-1]):
        if part.startswith("date="):
            try:
                return date.fromisoformat(part[len("date="):])
            except ValueError:
                return None
    return None


def batch_tag(batch_id: int, prefix: str = "b") -> str:
    """The name of a batch's files and marker: prefix (`b` a micro-batch, `f` the flush after one) + zero-padded
    batch id (sorts in batch order)."""
    return f"{prefix}{batch_id:010d}"


def tag_id(tag: str) -> tuple[str, int] | None:
    """('b', id) or ('f', id) for a tag batch_tag made; None for anything else."""
    if tag[:1] in ("b", "f") and tag[1:].isdigit():
        return tag[0], int(tag[1:])
    return None


def file_tag(path: str) -> str:
    """The batch tag a table file is named by (`<tag>-<n>.parquet`), from its path."""
    return path.rsplit("/", 1)[-1].split("-", 1)[0]


MARKERS_PER_FOLDER = 10_000  # a query's markers lie in folders of this many batches (see marker_folder)
_FOLDER_SUFFIX = "x" * len(str(MARKERS_PER_FOLDER - 1))


def marker_folder(tag: str) -> str:
    """The folder (below the query's) of a batch's commit and pending markers: its tag with the last four digits
    as `x`, e.g. b000012xxxx for b0000120000-b0000129999. HDFS refuses a folder's 1,048,576th entry
    (dfs.namenode.fs-limits.max-directory-items): a tail followed for weeks commits more batches than that."""
    return tag[:-len(_FOLDER_SUFFIX)] + _FOLDER_SUFFIX


def is_marker_folder(path: str) -> bool:
    """Whether `path` names a folder of markers (marker_folder), by its name."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    head = name[:-len(_FOLDER_SUFFIX)]
    return (len(name) == len(batch_tag(0)) and name.endswith(_FOLDER_SUFFIX)
            and tag_id(head + "0" * len(_FOLDER_SUFFIX)) is not None)


def containing_marker_folder(path: str) -> str | None:
    """The name of the marker folder (marker_folder) a file at `path` lies in; None for a file outside one (e.g.
    in the query's folder itself, where earlier logpipe versions wrote markers and roll-ups)."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return parent.rsplit("/", 1)[-1] if parent and is_marker_folder(parent) else None


def marker_path(root: str, query: str, tag: str, kind: str = DONE) -> str:
    """Where the commit marker (`kind` DONE), pending marker (PENDING) or roll-up (ROLLUP) of one batch of one
    query lives: in its marker_folder (a roll-up there covers that folder's batches: commit_log)."""
    return f"{root}/{COMMITS}/{query}/{marker_folder(tag)}/{tag}{kind}"


def flat_marker_path(root: str, query: str, tag: str, kind: str = DONE) -> str:
    """Where a marker lay before marker folders (logpipe up to 2026-12-06): in the query's folder itself (and, until
    folder roll-ups, roll-ups of every batch up to their tag). Roots written then are read as they are (list_markers,
    commit_log) and their batches are known as committed (commit_batch)."""
    return f"{root}/{COMMITS}/{query}/{tag}{kind}"


def list_markers(ls: "Callable[[str], Iterable[str]]", folder: str) -> list[str]:
    """The entries of a query's marker `folder` (`ls` lists one folder, as full paths) with those of its marker
    folders in place of the folders: every commit, pending and roll-up marker (and hidden temp file) of the query,
    old flat ones included."""
    out: list[str] = []
    for entry in ls(folder):
        if is_marker_folder(entry):
            out.extend(ls(entry))
        else:
            out.append(entry)
    return out


def marker_tag(path: str, kind: str = DONE) -> str | None:
    """The batch tag of a marker file of `kind` (its name without the suffix); None for any other file (a hidden
    temp file of a marker being written, another JSON file)."""
    name = path.rsplit("/", 1)[-1]
    tag = name[:-len(kind)] if name.endswith(kind) else None
    return tag if tag is not None and tag_id(tag) is not None else None


def staging_dir(root: str, table: str, tag: str | None = None) -> str:
    """The staging folder of a table (and of one batch's files in it, with `tag`)."""
    return f"{root}/{table}/{STAGING}" + (f"/{tag}" if tag else "")


def in_staging(path: str) -> bool:
    """Whether `path` lies in a table's staging folder (a batch's files not moved into the table)."""
    return f"/{STAGING}/" in path
