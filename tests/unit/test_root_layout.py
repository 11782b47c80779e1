"""The names of a results root's bookkeeping: tags, table files and markers read back as they were written."""

from __future__ import annotations

import pytest

from logpipe.root_layout import (DONE, PENDING, batch_tag, file_tag, in_staging, marker_path, marker_tag,
                                 staging_dir, tag_id)

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
    assert done == f"/r/_commits/ingest/{tag}{DONE}" and pending == f"/r/_commits/ingest/{tag}.pending"
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
