"""Commit records: the newest roll-up that fits the markers is read instead of them, any other is not used."""

from __future__ import annotations

import json
import logging

import pytest

from logpipe.commit_log import read_commit_records, rollup_text, stale_rollups

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
