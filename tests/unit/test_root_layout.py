"""The names of a results root's bookkeeping: tags, table files and markers read back as they were written."""

from __future__ import annotations

import pytest

from logpipe.root_layout import (DONE, MARKERS_PER_FOLDER, PENDING, ROLLUP, batch_tag, containing_marker_folder,
                                 file_tag, flat_marker_path, in_staging, is_marker_folder, list_markers,
                                 marker_folder, marker_path, marker_tag, staging_dir, tag_id)

pytestmark = pytest.mark.unit


def test_tags_sort_in_batch_order_and_read_back():
    tags = [batch_tag(i) for i in (0, 7, 10, 123_456_789)]
    assert tags == sorted(tags) and tags[1] == "b0000000007"
    assert [tag_id(t) for t in tags] == [("b", 0), ("b", 7), ("b", 10), ("b", 123_456_789)]
    assert tag_id(batch_tag(3, "f")) == ("f", 3)
    assert [tag_id(t) for t in ("part", "b", "bx1", "x0000000001", "_SUCCESS", "")] == [None] * 6


def test_a_table_file_and_a_marker_name_their_batch():
    tag = batch_tag(42)
    assert file_tag(f"hdfs://nn:8020/logpipe/events/date=2004-05-18/{tag}-00003.parquet") == tag
    done, pending = marker_path("/r", "ingest", tag), marker_path("/r", "ingest", tag, PENDING)
    assert done == f"/r/_commits/ingest/b000000xxxx/{tag}{DONE}"
    assert pending == f"/r/_commits/ingest/b000000xxxx/{tag}.pending"
    assert marker_tag(done) == tag and marker_tag(pending, PENDING) == tag
    assert marker_tag(pending) is None and marker_tag(done, PENDING) is None and marker_tag("/r/_commits/job") is None
    # the root's own records, a marker's hidden temp file (written, then renamed over its name), another JSON file
    for other in ("/r/_commits/job.json", "/r/_commits/lease.json", f"/r/_commits/ingest/.{tag}.json",
                  f"/r/_commits/ingest/.{tag}.json.3f2a.tmp", "/r/_commits/ingest/notes.json"):
        assert marker_tag(other) is None, other


def test_staging_paths_are_told_from_table_files():
    stage = staging_dir("/r", "events", batch_tag(1))
    assert stage == "/r/events/_staging/b0000000001" and in_staging(stage + "/pass/x.parquet")
    assert staging_dir("/r", "events") == "/r/events/_staging"
    assert not in_staging("/r/events/date=2004-05-18/b0000000001-00000.parquet")


def test_markers_and_roll_ups_lie_in_folders_of_ten_thousand_batches():
    """HDFS refuses a folder's 1,048,576th entry: a tail followed for weeks at ~1,200 batches an hour commits more
    batches than that, so each folder holds the markers of MARKERS_PER_FOLDER consecutive batches, and the roll-ups
    of their records (commit_log); roots of earlier versions have markers and roll-ups in the query's folder."""
    assert MARKERS_PER_FOLDER == 10_000
    assert [marker_folder(batch_tag(i)) for i in (0, 9_999, 10_000, 123_456_789)] == [
        "b000000xxxx", "b000000xxxx", "b000001xxxx", "b012345xxxx"]
    assert marker_folder(batch_tag(5, "f")) == "f000000xxxx"
    assert {marker_folder(batch_tag(i)) for i in range(0, 10 * MARKERS_PER_FOLDER, 997)} == {
        f"b00000{d}xxxx" for d in range(10)}
    assert marker_path("/r", "ingest", batch_tag(10_001)) == "/r/_commits/ingest/b000001xxxx/b0000010001.json"
    assert marker_path("/r", "ingest", batch_tag(99), ROLLUP) == "/r/_commits/ingest/b000000xxxx/b0000000099.rollup"
    assert marker_path("/r", "ingest", batch_tag(10_099), ROLLUP) == "/r/_commits/ingest/b000001xxxx/b0000010099.rollup"
    assert flat_marker_path("/r", "ingest", batch_tag(99), ROLLUP) == "/r/_commits/ingest/b0000000099.rollup"
    assert flat_marker_path("/r", "ingest", batch_tag(3)) == "/r/_commits/ingest/b0000000003.json"
    assert is_marker_folder("/r/_commits/ingest/b000001xxxx") and is_marker_folder("hdfs://nn/x/f000000xxxx/")
    for other in ("/r/_commits/ingest/b0000010001.json", "/r/_commits/ingest/b00001xxxx", "/r/a/xxxx",
                  "/r/_commits/ingest/c000001xxxx", "/r/_commits/ingest/b000001xxxxx", "/r/_commits/ingest"):
        assert not is_marker_folder(other), other
    assert containing_marker_folder(marker_path("hdfs://nn/r", "ingest", batch_tag(10_099), ROLLUP)) == "b000001xxxx"
    assert containing_marker_folder("b000001xxxx/b0000010001.json") == "b000001xxxx"
    for outside in (flat_marker_path("/r", "ingest", batch_tag(99), ROLLUP), "b0000000099.rollup", "",
                    "/r/_commits/ingest/b000001xxxx", "/r/_commits/ingest/b000001xxxx/x/b0000010001.json"):
        assert containing_marker_folder(outside) is None, outside


def test_a_listing_of_markers_takes_in_the_marker_folders_and_the_old_flat_markers():
    """list_markers: the query folder's own entries (roll-ups; markers of a root written before marker folders)
    with the entries of each marker folder in place of the folder; a marker folder is listed once."""
    tree = {"/q": ["/q/b0000000000.json", "/q/b0000000099.rollup", "/q/b000000xxxx", "/q/b000001xxxx"],
            "/q/b000000xxxx": ["/q/b000000xxxx/b0000000100.json", "/q/b000000xxxx/.b0000000101.json.ab.tmp"],
            "/q/b000001xxxx": ["/q/b000001xxxx/b0000010000.pending"]}
    listed: list[str] = []

    def ls(p: str) -> list[str]:
        listed.append(p)
        return tree[p]

    got = list_markers(ls, "/q")
    assert got == ["/q/b0000000000.json", "/q/b0000000099.rollup", "/q/b000000xxxx/b0000000100.json",
                   "/q/b000000xxxx/.b0000000101.json.ab.tmp", "/q/b000001xxxx/b0000010000.pending"]
    assert listed == ["/q", "/q/b000000xxxx", "/q/b000001xxxx"]
    assert [marker_tag(p) for p in got] == ["b0000000000", None, "b0000000100", None, None]
    assert marker_tag(got[-1], PENDING) == "b0000010000"


def test_a_table_files_day_folder_is_read_from_its_path():
    from datetime import date

    from logpipe.root_layout import partition_day

    assert partition_day("hdfs://nn:9000/logpipe/alerts/date=2004-05-18/b0000000001-00000.parquet") == date(2004, 5, 18)
    assert partition_day("/r/events/date=2004-05-18/x/b0000000001-00000.parquet") == date(2004, 5, 18)
    assert partition_day("/r/alerts/b0000000001-00000.parquet") is None  # an earlier logpipe's: no day folders
    assert partition_day("/r/quarantine/ingest_date=2026-12-07/b0000000001-00000.parquet") is None
    assert partition_day("/r/late/date=_late/b0000000001-00000.parquet") is None
    assert partition_day("/r/date=2004-05-18") is None  # the name of a file, not a folder it lies in
