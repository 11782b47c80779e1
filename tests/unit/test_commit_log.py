"""Commit records: the newest roll-up that fits the markers is read instead of them, any other is not used."""

from __future__ import annotations

import json
import logging

import pytest

from logpipe.commit_log import read_commit_records, read_commit_records_by_folder, rollup_text, stale_rollups
from logpipe.root_layout import marker_folder

pytestmark = pytest.mark.unit

D = "hdfs://nn/r/_commits/ingest"


def _folder(markers: range, rollups: dict[int, range]) -> dict[str, str]:
    """A query's folder: name -> text, the markers of batches `markers` and a roll-up per tag of those in it."""
    files = {f"{D}/b{i:010d}.json": json.dumps({"batch": i, "lines": 10 * i}) for i in markers}
    for tag, covered in rollups.items():
        files[f"{D}/b{tag:010d}.rollup"] = rollup_text({f"b{i:010d}": {"batch": i, "lines": 10 * i} for i in covered})
    return files


def _read(files: dict[str, str]):
    opened: list[str] = []

    def read(name: str) -> str:
        opened.append(name.rsplit("/", 1)[-1])
        return files[name]
    return read, opened


def test_without_a_roll_up_every_marker_is_read_in_batch_order():
    files = _folder(range(3), {})
    read, opened = _read(files)
    got = read_commit_records(reversed(list(files) + [f"{D}/b0000000003.pending", f"{D}/.b0.tmp"]), read)
    assert [(t, r["batch"]) for t, r in got] == [("b0000000000", 0), ("b0000000001", 1), ("b0000000002", 2)]
    assert sorted(opened) == ["b0000000000.json", "b0000000001.json", "b0000000002.json"]


def test_the_newest_roll_up_stands_for_the_markers_it_covers():
    files = _folder(range(7), {2: range(3), 4: range(5)})
    read, opened = _read(files)
    got = read_commit_records(files, read)
    assert [r["lines"] for _, r in got] == [10 * i for i in range(7)]
    assert opened == ["b0000000004.rollup", "b0000000005.json", "b0000000006.json"]


@pytest.mark.parametrize("newest", [range(4), range(6), [0, 1, 2, 3, 5]],
                         ids=["a record short", "a record more", "another batch"])
def test_a_roll_up_that_does_not_match_the_markers_up_to_it_is_not_used(newest, caplog):
    """A marker the roll-up lacks, one it holds that is not listed: the older roll-up that fits is used."""
    files = _folder(range(6), {2: range(3), 4: newest})
    if 5 in newest:
        del files[f"{D}/b0000000004.json"]  # "a record more": its marker is gone (removed by hand)
    read, opened = _read(files)
    with caplog.at_level(logging.WARNING, logger="logpipe.commit_log"):
        got = read_commit_records(files, read)
    assert [t for t, _ in got] == sorted(t.rsplit("/", 1)[-1][:-5] for t in files if t.endswith(".json"))
    assert opened[:2] == ["b0000000004.rollup", "b0000000002.rollup"] and "b0000000000.json" not in opened
    assert "roll-up" in caplog.text and "b0000000004.rollup" in caplog.text


@pytest.mark.parametrize("broken", ['{"tags": ["b0000000000"', '{"tags": ["b0000000000"], "records": []}', "[]", None],
                         ids=["cut short", "lengths differ", "not ours", "gone"])
def test_a_roll_up_that_cannot_be_read_leaves_the_markers_to_read(broken, caplog):
    files = _folder(range(2), {1: range(2)})
    if broken is not None:
        files[f"{D}/b0000000001.rollup"] = broken
    read, opened = _read(files)

    def read_or_gone(name: str) -> str:
        if broken is None and name.endswith(".rollup"):
            raise FileNotFoundError(name)  # removed between the listing and the read (a newer one was written)
        return read(name)

    with caplog.at_level(logging.WARNING, logger="logpipe.commit_log"):
        got = read_commit_records(files, read_or_gone)
    assert [r["batch"] for _, r in got] == [0, 1]
    assert {"b0000000000.json", "b0000000001.json"} <= set(opened)
    assert "cannot be read" in caplog.text


def test_only_the_newest_roll_ups_are_kept():
    names = [f"{D}/b{i:010d}.rollup" for i in (99, 399, 199, 299)] + [f"{D}/b0000000399.json"]
    assert stale_rollups(names) == [f"{D}/b0000000099.rollup", f"{D}/b0000000199.rollup"]
    assert stale_rollups(names, keep=1) == [f"{D}/b{i:010d}.rollup" for i in (99, 199, 299)]
    assert stale_rollups(names[:2]) == []


def _tag(i: int) -> str:
    return f"b{i:010d}"


def _record(i: int) -> dict:
    return {"batch": i, "lines": 10 * i}


def _foldered(markers: list[int], rollups: dict[int, list[int]], flat_rollups: dict[int, list[int]] | None = None
              ) -> dict[str, str]:
    """A query's listing as list_markers gives it: markers and roll-ups in their marker folders (root_layout), and
    `flat_rollups` in the query's folder (an earlier logpipe's, each of every batch up to its tag)."""
    files = {f"{D}/{marker_folder(_tag(i))}/{_tag(i)}.json": json.dumps(_record(i)) for i in markers}
    for tag, covered in rollups.items():
        files[f"{D}/{marker_folder(_tag(tag))}/{_tag(tag)}.rollup"] = rollup_text({_tag(i): _record(i) for i in covered})
    for tag, covered in (flat_rollups or {}).items():
        files[f"{D}/{_tag(tag)}.rollup"] = rollup_text({_tag(i): _record(i) for i in covered})
    return files


def test_each_marker_folder_has_its_roll_ups_and_only_the_newest_of_each_is_opened():
    """A roll-up holds the records of its marker folder up to its tag (10,000 batches at most, so its size stays
    bounded however long the job runs): a reader takes the newest that fits in each folder, and opens the markers
    after it. The older roll-up of a folder is not opened: the newer one covers all it holds."""
    first, second = list(range(9_990, 10_000)), list(range(10_000, 10_005))
    files = _foldered(first + second, {9_995: first[:6], 9_999: first, 10_003: second[:4]})
    read, opened = _read(files)
    got = read_commit_records(files, read)
    assert [t for t, _ in got] == [_tag(i) for i in first + second] and [r for _, r in got] == [
        _record(i) for i in first + second]
    assert opened == ["b0000010003.rollup", "b0000009999.rollup", "b0000010004.json"]


def test_a_root_rolled_up_by_an_earlier_version_is_read_with_the_new_folder_roll_ups():
    """A root an earlier logpipe rolled up in one file of every batch (in the query's folder), continued by this
    version, which rolls up the newest folder only: the old roll-up still stands for the folders before."""
    old = list(range(9_950, 10_000)) + list(range(10_000, 10_020))
    new = list(range(10_020, 10_060))
    files = _foldered(old + new, {10_050: list(range(10_000, 10_051))}, flat_rollups={10_019: old})
    read, opened = _read(files)
    got = read_commit_records(files, read)
    assert [r for _, r in got] == [_record(i) for i in old + new]
    assert opened == ["b0000010050.rollup", "b0000010019.rollup"] + [f"{_tag(i)}.json" for i in range(10_051, 10_060)]

    # once each folder has a roll-up of its own (commit.fold_in_flat_rollups), the old one is not opened though
    # its tag is the newest but one: it held every batch (~79 MB after a week) and was opened at every read
    files = _foldered(old + new, {9_999: list(range(9_950, 10_000)), 10_050: list(range(10_000, 10_051))},
                      flat_rollups={10_019: old})
    read, opened = _read(files)
    assert [r for _, r in read_commit_records(files, read)] == [_record(i) for i in old + new]
    assert opened[:2] == ["b0000010050.rollup", "b0000009999.rollup"] and "b0000010019.rollup" not in opened


def test_a_roll_up_of_a_folder_that_does_not_fit_leaves_that_folder_to_its_markers_only():
    """A marker removed by hand from the first folder: its roll-up is passed over (a warning), and that folder's
    markers are read; the other folder still reads from its own."""
    files = _foldered(list(range(9_998, 10_003)), {9_999: [9_998, 9_999], 10_002: [10_000, 10_001, 10_002]})
    del files[f"{D}/b000000xxxx/b0000009998.json"]
    read, opened = _read(files)
    got = read_commit_records(files, read)
    assert [r["batch"] for _, r in got] == [9_999, 10_000, 10_001, 10_002]
    assert opened == ["b0000010002.rollup", "b0000009999.rollup", "b0000009999.json"]


def test_each_marker_folder_keeps_its_newest_roll_ups():
    names = list(_foldered([], {99: [], 199: [], 299: [], 10_099: [], 10_199: []}, flat_rollups={5: [], 7: [], 9: []}))
    assert stale_rollups(names) == [f"{D}/{_tag(5)}.rollup", f"{D}/b000000xxxx/{_tag(99)}.rollup"]
    assert stale_rollups(names, keep=1) == [f"{D}/{_tag(i)}.rollup" for i in (5, 7)] + [
        f"{D}/b000000xxxx/{_tag(i)}.rollup" for i in (99, 199)] + [f"{D}/b000001xxxx/{_tag(10_099)}.rollup"]
    assert stale_rollups(names, keep=3) == []


def test_records_are_read_one_marker_folder_at_a_time_and_an_earlier_version_s_root_in_one_go():
    """The job keeps the records of two folders only: read_commit_records_by_folder hands them over a folder at a
    time, each read when its turn comes. A root with a roll-up (or markers) in the query's folder itself, which an
    earlier logpipe wrote and which may cover several folders, is read in one go."""
    files = _foldered([0, 1, 9_999, 10_000, 20_005], {1: [0, 1]})
    read, opened = _read(files)
    groups = read_commit_records_by_folder(files, read)
    first = next(groups)
    assert [t for t, _ in first] == [_tag(0), _tag(1), _tag(9_999)] and opened == ["b0000000001.rollup",
                                                                                   "b0000009999.json"]
    assert [[r for _, r in g] for g in groups] == [[_record(10_000)], [_record(20_005)]]
    assert opened[2:] == ["b0000010000.json", "b0000020005.json"]
    old = _foldered([9_999, 10_000, 10_001], {}, flat_rollups={10_000: [9_999, 10_000]})
    read, opened = _read(old)
    assert [[t for t, _ in g] for g in read_commit_records_by_folder(old, read)] == [
        [_tag(9_999), _tag(10_000), _tag(10_001)]]
    assert opened == ["b0000010000.rollup", "b0000010001.json"]


def test_markers_an_earlier_version_wrote_in_the_query_s_folder_are_read_with_their_batch_s_folder():
    """The oldest roots hold every marker in the query's folder itself; once their roll-ups are per folder
    (commit.fold_in_flat_rollups), they are read a folder at a time too, each folder's roll-up standing for its
    markers wherever they lie."""
    files = {f"{D}/{_tag(i)}.json": json.dumps(_record(i)) for i in (0, 1, 9_999, 10_000)}
    files |= _foldered([10_001, 20_000], {9_999: [0, 1, 9_999], 10_001: [10_000, 10_001]})
    read, opened = _read(files)
    groups = read_commit_records_by_folder(files, read)
    assert [r for _, r in next(groups)] == [_record(i) for i in (0, 1, 9_999)] and opened == ["b0000009999.rollup"]
    assert [[r["batch"] for _, r in g] for g in groups] == [[10_000, 10_001], [20_000]]
    assert opened == ["b0000009999.rollup", "b0000010001.rollup", "b0000020000.json"]
