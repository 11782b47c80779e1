"""commit_batch on a local file system: frames given as functions are built in turn, `keep` drops a write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit



def _files(root: Path, table: str) -> list[str]:
    return sorted(p.name for p in (root / table).glob("*.parquet"))


@pytest.mark.parametrize("concurrent", [0, 3], ids=["one at a time", "at once"])
def test_lazy_frames_run_in_order_and_keep_drops_a_write(local_spark, tmp_path: Path, concurrent: int):
    from logpipe.root_layout import batch_tag
    from logpipe.streaming.commit import commit_batch

    root = f"file:{tmp_path}"  # as Hadoop names local paths (commit_batch maps its listings back onto root)
    calls: list[str] = []
    first = local_spark.range(3)

    def second():  # built only after `first` is written, as the alerts frame is after windows/by_host
        calls.append("second")
        for table in ("first", "kept"):  # every frame given as such is written before a lazy one is built
            assert _files(tmp_path, table), table
        return local_spark.range(5)

    def nothing():
        calls.append("nothing")
        return None

    writes = [(first, "first", []), (second, "second", []), (nothing, "skipped", []),
              (local_spark.range(0), "dropped", [], lambda: False), (local_spark.range(2), "kept", [], lambda: True)]
    assert commit_batch(local_spark, root, "q", 7, writes, lambda: {"n": len(calls)}, concurrent=concurrent)
    assert calls == ["second", "nothing"]
    assert local_spark.read.parquet(f"{root}/second").count() == 5
    assert _files(tmp_path, "kept") and all(f.startswith(batch_tag(7) + "-") for f in _files(tmp_path, "kept"))
    assert not (tmp_path / "skipped").exists()
    assert not _files(tmp_path, "dropped") and not list((tmp_path / "dropped").rglob("*.parquet"))
    marker = json.loads(next((tmp_path / "_commits" / "q").rglob("*.json")).read_text())
    assert marker == {"n": 2}
    # committed: a second run writes nothing and builds no frame
    assert not commit_batch(local_spark, root, "q", 7, writes, {"n": 0})
    assert calls == ["second", "nothing"]


def test_a_half_moved_batch_is_cleaned_before_lazy_frames_are_built(local_spark, tmp_path: Path):
    """A pending marker (an attempt that died while moving files) removes the tag's files from every listed table,
    those of lazy frames and of dropped writes too, before the batch is written again."""
    from logpipe.root_layout import batch_tag
    from logpipe.streaming.commit import TableWrite, commit_batch

    root = f"file:{tmp_path}"
    tag = batch_tag(3)
    for table in ("lazy", "dropped"):  # what the dead attempt had moved in
        (tmp_path / table).mkdir()
        local_spark.range(4).coalesce(1).write.parquet(f"{root}/{table}/_tmp")
        next((tmp_path / table / "_tmp").glob("*.parquet")).rename(tmp_path / table / f"{tag}-00000.parquet")
    (tmp_path / "_commits" / "q" / "b000000xxxx").mkdir(parents=True)
    (tmp_path / "_commits" / "q" / "b000000xxxx" / f"{tag}.pending").write_text("")
    kept: list[bool] = []

    def keep() -> bool:
        kept.append(True)
        return False

    writes = [TableWrite(lambda: local_spark.range(2), "lazy"), TableWrite(local_spark.range(1), "dropped", keep=keep),
              TableWrite(lambda: None, "none", keep=keep)]
    assert commit_batch(local_spark, root, "q", 3, writes, {})
    assert local_spark.read.parquet(f"{root}/lazy/{tag}-*.parquet").count() == 2  # the old 4 rows are gone
    assert not list((tmp_path / "dropped").glob(f"{tag}-*.parquet"))
    assert kept == [True]  # keep runs after a write only, not for a frame that returned None
    assert not (tmp_path / "_commits" / "q" / "b000000xxxx" / f"{tag}.pending").exists()


@pytest.mark.parametrize("concurrent", [0, 3], ids=["one at a time", "at once"])
def test_a_failed_write_fails_the_batch_and_leaves_no_marker(local_spark, tmp_path: Path, concurrent: int):
    from logpipe.streaming.commit import commit_batch

    root = f"file:{tmp_path}"
    built: list[str] = []

    def later():
        built.append("later")
        return local_spark.range(1)

    failing = local_spark.range(3).selectExpr("raise_error('boom') AS x")
    writes = [(local_spark.range(2), "a", []), (failing, "bad", []), (local_spark.range(2), "b", []),
              (later, "c", [])]
    with pytest.raises(Exception, match="boom"):
        commit_batch(local_spark, root, "q", 4, writes, {"n": 1}, concurrent=concurrent)
    assert built == []  # nothing built after the failure
    assert not list((tmp_path / "_commits" / "q").rglob("*.json"))  # not committed ...
    assert list((tmp_path / "_commits" / "q").rglob("*.pending"))  # ... and marked for cleaning on the next run


def test_writer_options_reach_the_parquet_writer(local_spark, tmp_path: Path):
    """A TableWrite's options go to its Parquet writer: the events table's (no dictionary encoding) and no other."""
    import pyarrow.parquet as pq

    from logpipe.streaming.commit import TableWrite, commit_batch
    from logpipe.streaming.job import EVENTS_PARQUET_OPTIONS

    frame = local_spark.range(1000).selectExpr("CAST(id % 3 AS STRING) AS host", "id")  # dictionary-friendly
    writes = [TableWrite(frame.coalesce(1), "plain", options=EVENTS_PARQUET_OPTIONS),
              TableWrite(frame.coalesce(1), "default")]
    assert commit_batch(local_spark, f"file:{tmp_path}", "q", 0, writes, {})

    def encodings(table: str) -> set[str]:
        (f,) = (tmp_path / table).glob("*.parquet")
        md = pq.ParquetFile(f).metadata.row_group(0)
        return {e for c in range(md.num_columns) for e in md.column(c).encodings}

    assert not {e for e in encodings("plain") if "DICTIONARY" in e}
    assert {e for e in encodings("default") if "DICTIONARY" in e}


@pytest.mark.parametrize("workers", [0, 4])
def test_run_at_once_returns_results_in_call_order_and_raises_a_failure(local_spark, workers: int):
    """The batch's small count jobs run through run_at_once: each result comes back in the place of its call,
    whatever order the jobs finish in, and a failing job fails the whole call."""
    from logpipe.streaming.commit import run_at_once

    sizes = [50_000, 1, 2_000, 3]
    calls = [lambda n=n: local_spark.range(n).selectExpr("id % 7 AS k").distinct().count() + n for n in sizes]
    assert run_at_once(local_spark, calls, workers) == [min(n, 7) + n for n in sizes]

    def fails() -> int:
        return len(local_spark.range(3).selectExpr("assert_true(id < 2) AS ok").collect())

    with pytest.raises(Exception, match="is not true"):
        run_at_once(local_spark, [calls[0], fails, calls[1]], workers)


def test_staged_files_are_moved_in_last_and_only_the_folders_named(local_spark, tmp_path: Path):
    """A write whose files a pass of the batch staged already is moved into its table after every other write
    (which may read the staged files), keeping its partition folders; folders not named stay out."""
    from logpipe.root_layout import batch_tag
    from logpipe.streaming.commit import TableWrite, commit_batch

    root = f"file:{tmp_path}"
    staged = f"{root}/stage"
    frame = local_spark.createDataFrame([(1, "2004-05-18"), (2, "2004-05-19"), (3, "_other")], "n INT, date STRING")
    frame.coalesce(1).write.partitionBy("date").parquet(staged)
    reader = local_spark.read.parquet(f"{staged}/date=_other")  # a write that reads a staged file
    writes = [TableWrite(None, "events", staged=staged, staged_parts=["date=2004-05-18", "date=2004-05-19"]),
              TableWrite(reader, "other")]
    assert commit_batch(local_spark, root, "q", 2, writes, {})
    assert local_spark.read.parquet(f"{root}/other").collect()[0]["n"] == 3
    moved = sorted(p.relative_to(tmp_path / "events").as_posix() for p in (tmp_path / "events").rglob("*.parquet"))
    tag = batch_tag(2)
    assert moved == [f"date=2004-05-18/{tag}-00000.parquet", f"date=2004-05-19/{tag}-00001.parquet"]
    assert sorted(r["n"] for r in local_spark.read.parquet(f"{root}/events").collect()) == [1, 2]
    assert list((tmp_path / "stage").rglob("*.parquet")) == list((tmp_path / "stage" / "date=_other").glob("*.parquet"))


def test_a_batch_whose_staged_files_are_gone_is_not_committed(local_spark, tmp_path: Path):
    """The batch listed its staged date folders, then they went (another run on the root removed them): moving
    nothing and writing the marker would commit a batch whose record counts rows no table holds. It fails, with
    no marker, and the next start cleans it up and runs it again."""
    import shutil

    from logpipe.streaming.commit import TableWrite, commit_batch

    root = f"file:{tmp_path}"
    staged = f"{root}/stage"
    local_spark.createDataFrame([(1, "2004-05-18")], "n INT, date STRING").write.partitionBy("date").parquet(staged)
    shutil.rmtree(tmp_path / "stage")
    with pytest.raises(RuntimeError, match=r"staged files of events in .*stage \(date=2004-05-18\) are gone"):
        commit_batch(local_spark, root, "q", 3, [TableWrite(None, "events", staged=staged,
                                                             staged_parts=["date=2004-05-18"])], {"events": 1})
    assert not (tmp_path / "_commits" / "q" / "b000000xxxx" / "b0000000003.json").exists()
    assert (tmp_path / "_commits" / "q" / "b000000xxxx" / "b0000000003.pending").exists()


def test_a_pending_marker_left_beside_its_commit_marker_is_removed_not_taken_for_a_crash(local_spark, tmp_path: Path):
    """A kill between writing a commit marker and deleting its `.pending` left the pending marker for good (a
    batch that committed): the start's clean-up removes it and keeps the batch's files; a pending marker without
    its commit marker is still a crashed attempt, whose files go. A killed writer's temp files (a review's
    finding: they stayed for good) go as well."""
    from logpipe.root_layout import batch_tag
    from logpipe.streaming.commit import clean_crashed_attempts

    root = f"file:{tmp_path}"
    done, died = batch_tag(1), batch_tag(2)
    (tmp_path / "t").mkdir()
    for tag in (done, died):
        (tmp_path / "t" / f"{tag}-00000.parquet").write_bytes(b"")
    # batch 1's markers where a root written before marker folders has them, batch 2's in its marker folder
    markers = tmp_path / "_commits" / "ingest"
    folder = markers / "b000000xxxx"
    folder.mkdir(parents=True)
    (markers / f"{done}.json").write_text("{}")
    (markers / f"{done}.pending").write_text("")
    (folder / f"{died}.pending").write_text("")
    # the temp files of a marker and a roll-up whose writer was killed before their rename go too; the root's own
    # files (the lease a live run renews through such a temp file, the settings record) are not touched
    (folder / f".{batch_tag(3)}.json.0a1b.tmp").write_text("{")
    (markers / f".{batch_tag(99)}.rollup.0a1b.tmp").write_text("{")
    (tmp_path / "_commits" / ".lease.json.0a1b.tmp").write_text("{")
    (tmp_path / "_commits" / "job.json").write_text("{}")
    assert clean_crashed_attempts(local_spark, root, ["t"]) == [died]
    assert sorted(p.name for p in markers.iterdir()) == [f"{done}.json", "b000000xxxx"]
    assert not list(folder.iterdir())
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [f"{done}-00000.parquet"]
    assert sorted(p.name for p in (tmp_path / "_commits").iterdir()) == [".lease.json.0a1b.tmp", "ingest", "job.json"]


def test_ls_names_a_folder_s_entries_in_one_call_and_a_name_with_a_line_break_too(local_spark, tmp_path: Path):
    from logpipe.streaming.commit import HadoopFs

    folder = tmp_path / "q"
    (folder / "sub").mkdir(parents=True)
    for name in ("b0000000000.json", "b0000000001.rollup", ".b2.tmp"):
        (folder / name).write_text("{}")
    fs = HadoopFs(local_spark, f"file://{tmp_path}")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"file://{folder}")) == [
        ".b2.tmp", "b0000000000.json", "b0000000001.rollup", "sub"]
    assert fs.ls(f"file://{tmp_path}/none") == []
    (folder / "odd\nname.json").write_text("{}")
    assert "odd\nname.json" in [p.rsplit("/", 1)[-1] for p in fs.ls(f"file://{folder}")]


def test_a_batch_committed_before_marker_folders_is_not_written_again(local_spark, tmp_path: Path):
    """A root written by a logpipe without marker folders has its markers in the query's folder itself: a batch
    committed there is known as committed (Spark may run it again after a crash before its own commit log), and a
    new batch's marker goes to its marker folder."""
    from logpipe.root_layout import batch_tag
    from logpipe.streaming.commit import HadoopFs, TableWrite, commit_batch

    root = f"file:{tmp_path}"
    (tmp_path / "_commits" / "q").mkdir(parents=True)
    (tmp_path / "_commits" / "q" / f"{batch_tag(3)}.json").write_text('{"n": 3}')
    assert commit_batch(local_spark, root, "q", 3, [TableWrite(local_spark.range(2), "t")], {"n": 0}) is False
    assert not (tmp_path / "t").exists()
    assert commit_batch(local_spark, root, "q", 4, [TableWrite(local_spark.range(2), "t")], {"n": 4}) is True
    fs = HadoopFs(local_spark, root)
    assert fs.marker(root, "q", batch_tag(3)).endswith(f"/_commits/q/{batch_tag(3)}.json")
    assert fs.marker(root, "q", batch_tag(4)).endswith(f"/_commits/q/b000000xxxx/{batch_tag(4)}.json")
    assert fs.marker(root, "q", batch_tag(5)) is None
