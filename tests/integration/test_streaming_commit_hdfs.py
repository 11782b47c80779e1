"""The job's commit records on the real HDFS: written whole through a temp file and a rename, and a temp file left by
a writer killed half-way is read by no one."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_a_record_is_replaced_whole_and_a_killed_writers_temp_file_is_ignored(stack, spark, hdfs_client, unique):
    """HadoopFs.write_text writes a hidden temp file beside its target and renames it over the target (HDFS shows
    an unclosed file, so a reader could meet half a record otherwise): written twice, the second text stands and no
    temp file is left. A temp file that a killed writer left (with half a record in it) is not a commit: the job's
    reader (committed_meta) and verify's (committed_tags, committed_accounting) take the whole records only."""
    from logpipe.results import committed_accounting, committed_tags, webhdfs_fs
    from logpipe.root_layout import batch_tag, marker_path
    from logpipe.streaming.commit import HadoopFs, committed_meta

    s = stack.with_overrides(hdfs_root=f"/tests/commit-{unique}")
    root = s.hdfs_uri()
    fs = HadoopFs(spark, root)
    folder = f"{s.hdfs_root}/_commits/ingest"
    first = {"batch": 0, "lines": 10, "parsed": 9, "quarantined": 1, "late": 0, "duplicates": 0, "events": 9}
    record = marker_path(root, "ingest", batch_tag(0))
    fs.write_text(record, json.dumps({**first, "lines": 1}))
    fs.write_text(record, json.dumps(first))  # over the first text
    assert hdfs_client.list(folder) == [f"{batch_tag(0)}.json"]  # no temp file left beside it
    assert json.loads(fs.read_text(record)) == first

    # batch 1's writer killed between its create and its rename: a hidden temp file holding part of a record
    with hdfs_client.write(f"{folder}/.{batch_tag(1)}.json.{unique}.tmp") as half:
        half.write(b'{"batch": 1, "lines": 5')
    assert len(hdfs_client.list(folder)) == 2
    assert committed_meta(spark, root, "ingest") == [first]
    web = webhdfs_fs(s)
    assert committed_tags(s, web) == {batch_tag(0)}
    acc = committed_accounting(s, web)
    assert acc["batches"] == 1 and acc["lines"] == 10 and acc["per_batch"] == [first]
