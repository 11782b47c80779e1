"""Reading the job's tables: only committed batches' files, whatever the results root is called."""

from __future__ import annotations

import pytest

from logpipe.config import Settings

pytestmark = pytest.mark.unit


def test_only_committed_files_are_read_under_a_root_whose_path_holds_underscores(tmp_path):
    """Files of a batch without its commit marker (a crashed attempt, or one still being written), staging folders
    and hidden files are not part of a table; a root such as /data/_runs/logpipe is read like any other."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from logpipe.results import committed_files, load_arrow, load_table

    root = tmp_path / "_runs" / "logpipe"
    s = Settings(hdfs_root=str(root))

    def write(rel: str, hosts: list[str]) -> None:
        path = root / "events" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"host": hosts}), path)

    write("date=2004-05-18/b0000000000-00000.parquet", ["a", "b"])
    write("date=2004-05-19/b0000000001-00000.parquet", ["c"])
    write("date=2004-05-19/f0000000001-00000.parquet", ["d"])           # a flush's file
    write("date=2004-05-19/b0000000002-00000.parquet", ["uncommitted"])
    write("_staging/b0000000003/date=2004-05-19/part-0.parquet", ["staging"])
    write("date=2004-05-19/.b0000000001-00001.parquet", ["hidden"])
    for query, tag in (("ingest", "b0000000000"), ("ingest", "b0000000001"), ("flush", "f0000000001")):
        (root / "_commits" / query).mkdir(parents=True, exist_ok=True)
        (root / "_commits" / query / f"{tag}.json").write_text("{}")
    (root / "_commits" / "ingest" / "b0000000002.pending").write_text("")
    fs = fsspec.filesystem("file")
    assert len(committed_files(s, "events", fs)) == 3
    table = load_arrow(s, "events", fs=fs)
    assert table is not None
    assert sorted(table.column("host").to_pylist()) == ["a", "b", "c", "d"]
    assert sorted(set(table.column("date").to_pylist())) == ["2004-05-18", "2004-05-19"]
    assert load_arrow(s, "quarantine", fs=fs) is None
    assert list(load_table(s, "quarantine", ["reason"], fs=fs).columns) == ["reason"]
