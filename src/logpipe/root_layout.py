"""The names of a results root's bookkeeping: micro-batch tags, table file names and commit markers (written by
streaming.commit and the job, read by results, verify and the job's recovery)."""

from __future__ import annotations

COMMITS = "_commits"  # under the results root: the markers, one folder per query (ingest, flush, alerts-kafka), the
# root's settings record (root_record) and the run's lease (streaming.lease)
DONE = ".json"  # a commit marker: the batch's files are all in place (it holds the batch's record)
PENDING = ".pending"  # an attempt that began moving its files into the tables and has not committed (yet)
ROLLUP = ".rollup"  # the records of every marker up to its tag, in one file (commit_log: read instead of each marker)
STAGING = "_staging"  # a table's folder for the files a batch writes before they are moved in


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


def marker_path(root: str, query: str, tag: str, kind: str = DONE) -> str:
    """Where the commit marker (`kind` DONE) or pending marker (PENDING) of one batch of one query lives."""
    return f"{root}/{COMMITS}/{query}/{tag}{kind}"


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
