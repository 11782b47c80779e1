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
    folder = f"{s.hdfs_root}/_commits/ingest/b000000xxxx"  # the marker folder of batches 0-9999
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


def test_roll_ups_on_hdfs_are_read_in_place_of_their_markers_and_each_folder_keeps_its_newest_two(
        stack, spark, hdfs_client, unique):
    """roll_up_records on the real HDFS, with batches in two marker folders: each roll-up lies in its folder and
    holds that folder's records (three written in the first, the oldest removed); one of two folders' records is
    refused. The job's reader and verify's (WebHDFS) both get every marker's record, opening the newest roll-up of
    each folder and the marker after them. A roll-up an earlier logpipe wrote in the query's folder is folded into
    the folders' own."""
    from logpipe.results import committed_accounting, webhdfs_fs
    from logpipe.root_layout import batch_tag, marker_path
    from logpipe.commit_log import rollup_text
    from logpipe.streaming.commit import HadoopFs, committed_meta, fold_in_flat_rollups, roll_up_records

    s = stack.with_overrides(hdfs_root=f"/tests/rollup-{unique}")
    root = s.hdfs_uri()
    fs = HadoopFs(spark, root)
    ids = [0, 1, 2, 3, 10_000, 10_001, 10_002]
    records = {batch_tag(i): {"batch": i, "lines": 10 + i, "parsed": 9 + i, "quarantined": 1, "late": 0,
                              "duplicates": 0, "events": 9 + i} for i in ids}
    for i in ids:
        fs.write_text(marker_path(root, "ingest", batch_tag(i)), json.dumps(records[batch_tag(i)]))
        if i in (1, 2, 3, 10_001):
            first = 0 if i < 10_000 else 10_000
            roll_up_records(spark, root, "ingest", {batch_tag(b): records[batch_tag(b)] for b in ids if first <= b <= i})
    with pytest.raises(ValueError, match="one marker folder"):
        roll_up_records(spark, root, "ingest", records)
    folder = f"{s.hdfs_root}/_commits/ingest"
    assert hdfs_client.list(folder) == ["b000000xxxx", "b000001xxxx"]
    assert sorted(n for n in hdfs_client.list(f"{folder}/b000000xxxx") if n.endswith(".rollup")) == [
        f"{batch_tag(2)}.rollup", f"{batch_tag(3)}.rollup"]
    assert sorted(n for n in hdfs_client.list(f"{folder}/b000001xxxx") if n.endswith(".rollup")) == [
        f"{batch_tag(10_001)}.rollup"]
    hdfs_client.delete(f"{folder}/b000000xxxx/{batch_tag(1)}.json")  # removed by hand: neither roll-up fits any more
    assert committed_meta(spark, root, "ingest") == [r for t, r in records.items() if t != batch_tag(1)]
    hdfs_client.write(f"{folder}/b000000xxxx/{batch_tag(1)}.json", json.dumps(records[batch_tag(1)]).encode())
    assert committed_meta(spark, root, "ingest") == list(records.values())
    web = webhdfs_fs(s)
    opened: list[str] = []
    real_cat = web.cat
    web.cat = lambda p: opened.append(p.rsplit("/", 1)[-1]) or real_cat(p)
    assert committed_accounting(s, web)["per_batch"] == list(records.values())
    assert opened == [f"{batch_tag(10_001)}.rollup", f"{batch_tag(3)}.rollup", f"{batch_tag(10_002)}.json"]

    # a roll-up of every batch in the query's folder itself, as an earlier logpipe wrote: a start folds it into
    # the folders' own (the second folder's newest batch had none) and removes it
    fs.write_text(f"{root}/_commits/ingest/{batch_tag(10_002)}.rollup", rollup_text(records))
    folded = fold_in_flat_rollups(spark, root, "ingest")
    assert [p.rsplit("/", 1)[-1] for p in folded] == [f"{batch_tag(10_002)}.rollup"]
    assert hdfs_client.list(folder) == ["b000000xxxx", "b000001xxxx"]
    assert sorted(n for n in hdfs_client.list(f"{folder}/b000001xxxx") if n.endswith(".rollup")) == [
        f"{batch_tag(10_001)}.rollup", f"{batch_tag(10_002)}.rollup"]
    assert sorted(n for n in hdfs_client.list(f"{folder}/b000000xxxx") if n.endswith(".rollup")) == [
        f"{batch_tag(2)}.rollup", f"{batch_tag(3)}.rollup"]
    assert fold_in_flat_rollups(spark, root, "ingest") == []
    opened.clear()
    assert committed_accounting(s, web)["per_batch"] == list(records.values())
    assert opened == [f"{batch_tag(10_002)}.rollup", f"{batch_tag(3)}.rollup"]
