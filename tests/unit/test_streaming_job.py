"""The streaming job: its duplicate check (repeats dropped exactly, hash collisions kept), its root settings."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pytest

pytestmark = pytest.mark.unit

ROWS = "src_key STRING, key_hash BIGINT, timestamp TIMESTAMP, n INT"
SEEN = "src_key STRING, key_hash BIGINT, timestamp TIMESTAMP"
T = datetime(2004, 5, 18, 5, 58, 48)



def _dedupe(spark, rows, seen=()):
    from logpipe.streaming.job import drop_duplicate_lines

    df = spark.createDataFrame([(k, h, T, i) for i, (k, h) in enumerate(rows)], ROWS)
    out, n = drop_duplicate_lines(df, spark.createDataFrame([(k, h, T) for k, h in seen], SEEN), len(rows))
    got = sorted((r["src_key"], r["n"]) for r in out.collect())
    assert n == len(got)
    return got


def test_lines_without_repeats_are_all_kept(local_spark):
    assert _dedupe(local_spark, [("a:1", 1), ("a:2", 2), ("b:1", 3)]) == [("a:1", 0), ("a:2", 1), ("b:1", 2)]


def test_a_repeat_within_the_batch_is_kept_once(local_spark):
    got = _dedupe(local_spark, [("a:1", 1), ("a:2", 2), ("a:1", 1), ("a:1", 1)])
    assert [k for k, _ in got] == ["a:1", "a:2"]


def test_a_line_seen_in_an_earlier_batch_is_dropped(local_spark):
    assert _dedupe(local_spark, [("a:1", 1), ("a:2", 2)], seen=[("a:1", 1)]) == [("a:2", 1)]


def test_a_hash_collision_is_not_a_duplicate(local_spark):
    """Different lines with the same hash, in the batch and against the earlier keys, are all kept."""
    rows = [("a:1", 7), ("b:9", 7), ("c:3", 8)]
    assert _dedupe(local_spark, rows, seen=[("z:5", 8)]) == [("a:1", 0), ("b:9", 1), ("c:3", 2)]


def test_collisions_and_real_repeats_together(local_spark):
    rows = [("a:1", 7), ("b:9", 7), ("b:9", 7), ("c:3", 8), ("d:4", 5)]
    got = _dedupe(local_spark, rows, seen=[("z:5", 8), ("d:4", 5)])
    assert [k for k, _ in got] == ["a:1", "b:9", "c:3"]


def test_two_seen_keys_of_one_hash_are_no_lost_rows(local_spark):
    """Two earlier keys that share a 64-bit hash with a row of the batch: the check's join meets that row twice,
    which is not a row too many (nor a reason to fail the batch)."""
    assert _dedupe(local_spark, [("a:1", 7), ("c:3", 8)], seen=[("y:1", 7), ("z:5", 7)]) == [("a:1", 0), ("c:3", 1)]


@pytest.mark.parametrize("rows", [[], [("a:1", 1), ("a:2", 2)]])
def test_staged_events_that_are_gone_fail_the_batch(local_spark, rows):
    """The batch staged more events than the check reads (files removed outside the run before they were listed,
    all or some): it fails, rather than commit a record of rows that no table holds."""
    from logpipe.streaming.job import drop_duplicate_lines

    df = local_spark.createDataFrame([(k, h, T, i) for i, (k, h) in enumerate(rows)], ROWS)
    with pytest.raises(RuntimeError, match=f"read {len(rows)} staged events where 3 were staged: files of them are gone"):
        drop_duplicate_lines(df, local_spark.createDataFrame([], SEEN), 3)


def test_key_hash_is_the_same_for_the_same_src_key(local_spark):
    """Equal src_key -> equal key_hash (what the exact check relies on), for producer and Kafka-position keys."""
    from pyspark.sql import functions as F

    from logpipe.streaming.parse import source_columns

    df = local_spark.createDataFrame(
        [(b"lp:a.log:17", 0, 100), (b"lp:a.log:17", 1, 5), (b"lp:a.log:18", 0, 101), (None, 0, 3), (None, 1, 3),
         (None, 0, 3), (b"lp:a.log:x", 0, 3)],
        "key BINARY, partition INT, offset BIGINT")
    rows = source_columns(df, F.lit("t")).select("src_key", "key_hash").collect()
    by_key: dict[str, set[int]] = {}
    for r in rows:
        by_key.setdefault(r["src_key"], set()).add(r["key_hash"])
    assert all(len(h) == 1 for h in by_key.values()), by_key
    assert sorted(by_key) == ["a.log:17", "a.log:18", "kafka:t:0:3", "kafka:t:1:3"]  # a bad key: the position
    assert len({next(iter(h)) for h in by_key.values()}) == 4  # different keys, different hashes here


@pytest.mark.parametrize("rows, seen, kept", [
    ([("a:1", 1), ("a:2", 2), ("b:1", 3)], [], ["a:1", "a:2", "b:1"]),
    ([("a:1", 1), ("a:2", 2), ("a:1", 1)], [], ["a:1", "a:2"]),
    ([("a:1", 7), ("b:9", 7), ("b:9", 7), ("c:3", 8), ("d:4", 5)], [("z:5", 8), ("d:4", 5)], ["a:1", "b:9", "c:3"]),
])
def test_the_check_in_many_buckets_keeps_the_same_lines(local_spark, monkeypatch, rows, seen, kept):
    """Past HASHES_PER_TASK rows the check counts the distinct hashes of several buckets (hash modulo their
    number) and adds them up: with one row per bucket (as many buckets as rows), the same lines are kept."""
    from logpipe.streaming import job

    monkeypatch.setattr(job, "HASHES_PER_TASK", 1)
    assert [k for k, _ in _dedupe(local_spark, rows, seen)] == kept


def test_with_cutoff_adds_the_cutoff_to_every_row_once(local_spark):
    from logpipe.streaming.job import with_cutoff

    df = local_spark.createDataFrame([(T,), (T,), (None,)], "timestamp TIMESTAMP")
    for cutoff in (None, T):
        got = with_cutoff(df, cutoff).collect()
        assert [r["_cutoff"] for r in got] == [cutoff] * 3
    # the cutoff stays a column of a local table: not folded into the query as a literal (generated code would
    # differ every batch), and no Python rows to unpickle (a job with a Python worker per broadcast)
    rows = local_spark.range(10).selectExpr("timestamp_seconds(id) AS timestamp")
    plan = with_cutoff(rows, T).where("timestamp < _cutoff")._jdf.queryExecution().optimizedPlan().toString()
    assert "< _cutoff#" in plan and "LocalRelation" in plan and "LogicalRDD" not in plan, plan


def test_with_cutoff_compiles_the_same_code_with_or_without_a_cutoff(local_spark):
    """The first batch (no cutoff yet) and the later ones run the same generated code: the cutoff column is
    nullable either way (a not-null column made other code, compiled and JIT-compiled once more per stage)."""
    import re

    from logpipe.streaming.job import with_cutoff

    rows = local_spark.range(10).selectExpr("timestamp_seconds(id) AS timestamp")

    def code(cutoff: datetime | None) -> str:
        df = with_cutoff(rows, cutoff).where("coalesce(timestamp < _cutoff, false)")
        text = local_spark._jvm.PythonSQLUtils.explainString(df._jdf.queryExecution(), "codegen")
        return re.sub(r"(#|plan_id=)\d+", r"\1", text)  # ids differ from plan to plan

    assert [with_cutoff(rows, c).schema["_cutoff"].nullable for c in (None, T)] == [True, True]
    without, with_one = code(None), code(T)
    assert "GeneratedIteratorForCodegenStage" in without
    assert without == with_one


def test_the_future_bound_compiles_the_same_code_in_every_batch(local_spark):
    """Each micro-batch has its own bound (its start plus LOGPIPE_FUTURE_TOLERANCE): joined from the one-row frame
    as the cutoff is, not compiled in as a literal, so the one pass's code is the same from batch to batch."""
    import re
    from datetime import timezone

    from logpipe.streaming.job import with_cutoff
    from logpipe.streaming.parse import quarantine_in_future

    rows = local_spark.range(10).selectExpr("timestamp_seconds(id) AS timestamp", "CAST(NULL AS STRING) AS reason")

    def code(cutoff: datetime | None, not_after: datetime) -> str:
        df = quarantine_in_future(with_cutoff(rows, cutoff, not_after=not_after)).where("reason IS NULL")
        text = local_spark._jvm.PythonSQLUtils.explainString(df._jdf.queryExecution(), "codegen")
        return re.sub(r"(#|plan_id=)\d+", r"\1", text)

    utc = timezone.utc
    first = code(None, datetime(2026, 12, 7, 8, 0, 0, tzinfo=utc))
    assert "GeneratedIteratorForCodegenStage" in first and "1796630400000000" not in first  # the bound's micros
    assert first == code(T, datetime(2026, 12, 7, 8, 0, 7, tzinfo=utc))
    kept = quarantine_in_future(with_cutoff(rows, None, not_after=datetime(1970, 1, 1, 0, 0, 5, tzinfo=utc)))
    assert [r["reason"] for r in kept.orderBy("timestamp").collect()] == [None] * 6 + ["timestamp_in_future"] * 4


OPEN = "grain STRING, window_start TIMESTAMP, window_end TIMESTAMP, host STRING, http_response INT, count BIGINT"


@pytest.mark.parametrize("window,slide", [("20 seconds", "10 seconds"), ("25 seconds", "10 seconds"),
                                          ("1 minute", "1 minute")])
@pytest.mark.parametrize("cutoff_s", [None, -100, 0, 30, 35, 60, 1000])
def test_host_window_counts_split_the_running_counts_at_the_cutoff(local_spark, window, slide, cutoff_s):
    """Final (from every row) and open (from the recent rows only) together are exactly the running counts of every
    row plus the carried windows, split at the cutoff: a window ending at the cutoff is final, NULL cutoff: none."""
    from datetime import timedelta

    from collections import Counter

    from logpipe.streaming.job import host_window_counts
    from logpipe.windows import duration_seconds, window_starts

    t0 = datetime(2004, 5, 18, 6, 0, 0)
    rows = [(t0 + timedelta(seconds=s), h) for s, h in [(0, "a"), (5, "a"), (9, "b"), (10, "a"), (29, "a"), (30, "b"),
                                                        (41, "a"), (59, "a"), (60, "b")]]
    events = local_spark.createDataFrame([(t, h, 200) for t, h in rows],
                                         "timestamp TIMESTAMP, host STRING, http_response INT")
    carried_rows = [("host", t0 - timedelta(seconds=10), t0 + timedelta(seconds=10), "a", None, 7),
                    ("host", t0 + timedelta(seconds=20), t0 + timedelta(seconds=40), "c", None, 2),
                    ("status", t0 - timedelta(seconds=10), t0 + timedelta(seconds=10), None, 200, 9)]
    # open windows from an earlier batch, one per grain; only host's count
    carried = local_spark.createDataFrame(carried_rows, OPEN)
    cutoff = None if cutoff_s is None else t0 + timedelta(seconds=cutoff_s)
    final, still_open = host_window_counts(events, carried, cutoff, window, slide)
    as_set = lambda df: {(r["window_start"], r["window_end"], r["host"], r["count"]) for r in df.collect()}  # noqa: E731
    got_final, got_open = as_set(final), as_set(still_open)
    # the running counts, in plain Python (logpipe.windows, not the job's Spark code): every row in each of its
    # windows, plus the carried host windows
    size, step = duration_seconds(window), duration_seconds(slide)
    epoch = datetime(1970, 1, 1)
    counts: Counter = Counter()
    for t, h in rows:
        for start in window_starts(int((t - epoch).total_seconds()), size, step):
            counts[(epoch + timedelta(seconds=start), epoch + timedelta(seconds=start + size), h)] += 1
    for grain, start, end, h, _, n in carried_rows:
        if grain == "host":
            counts[(start, end, h)] += n
    expected = {(*key, n) for key, n in counts.items()}
    assert got_final | got_open == expected and not got_final & got_open
    assert all(cutoff is not None and end <= cutoff for _, end, _, _ in got_final)
    assert all(cutoff is None or end > cutoff for _, end, _, _ in got_open)
    if window == "20 seconds":  # the carried window of host a adds up with this batch's rows at 0 s and 5 s
        assert (t0 - timedelta(seconds=10), t0 + timedelta(seconds=10), "a", 9) in expected


def test_a_root_records_its_settings_and_refuses_others(local_spark, tmp_path, caplog):
    """claim_root: a new root records the ROOT_SETTINGS; a run with another value (or a record it cannot read)
    is refused with a one-line reason; a record of an earlier version without the alert rules is filled in only
    while the root has no committed batch (after that, the rules its results were made with are unknown, and this
    run's must not be written as theirs)."""
    import json
    import logging

    from logpipe.config import Settings
    from logpipe.streaming.job import ROOT_SETTINGS, ResultsRootMismatch, StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root))
    record = root / "_commits" / "job.json"

    def write(text: str) -> None:  # as another run would, without Hadoop's local checksum file
        record.with_name(".job.json.crc").unlink(missing_ok=True)
        record.write_text(text)

    def claim(**overrides) -> None:
        StreamJob(local_spark, s.with_overrides(**overrides)).claim_root()

    claim()
    assert json.loads(record.read_text()) == {k: getattr(s, k) for k in ROOT_SETTINGS}
    claim(window="20 seconds")  # the same duration, spelled otherwise
    with pytest.raises(ResultsRootMismatch, match="rate_limit_ceiling 200 there, 201 now"):
        claim(rate_limit_ceiling=201)
    # another alerts topic: a batch committed before a crash would be published to it at the restart, and the
    # alerts of one root be split over two topics
    with pytest.raises(ResultsRootMismatch, match="alerts_topic 'alerts' there, 'other-alerts' now"):
        claim(alerts_topic="other-alerts")
    for broken, why in (('["topic"]', "a JSON list, not an object"), ("{", "is not the JSON the job writes")):
        write(broken)
        with pytest.raises(ResultsRootMismatch, match=why):
            claim()
    write(json.dumps({**json.loads(json.dumps({k: getattr(s, k) for k in ROOT_SETTINGS})),
                                  "window": "soon"}))
    with pytest.raises(ResultsRootMismatch, match="window 'soon' there"):
        claim()

    old = {k: getattr(s, k) for k in ("topic", "window", "slide", "watermark")}  # an earlier version's record
    write(json.dumps(old))
    (root / "_commits" / "ingest").mkdir(parents=True)
    (root / "_commits" / "ingest" / "b0000000000.json").write_text(json.dumps({"batch": 0, "lines": 1}))
    (root / "_checkpoints" / "ingest" / "offsets").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="logpipe.streaming.job"):
        claim(rate_limit_ceiling=50)
    assert json.loads(record.read_text()) == old
    assert any("did not record rate_limit_ceiling" in r.getMessage() for r in caplog.records)
    (root / "_commits" / "ingest" / "b0000000000.json").unlink()  # no committed batch: filled in
    claim(rate_limit_ceiling=50)
    assert json.loads(record.read_text())["rate_limit_ceiling"] == 50


def test_a_root_refuses_a_topic_deleted_and_made_again(local_spark, tmp_path):
    """The root records the broker's id of its topic. Once the job has offsets of it (a checkpoint), a topic of the
    same name with another id (deleted and made again, e.g. by the producer) is refused: Spark would go on at the
    old offsets in the new topic and skip its first records without a word (a review found 1,201 of 3,201 lines
    skipped, caught only by verify). Before any offsets the new id is simply recorded."""
    import json

    from logpipe.config import Settings
    from logpipe.streaming.job import ResultsRootMismatch, StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root))
    record = root / "_commits" / "job.json"

    def claim(topic_id: str | None) -> None:
        StreamJob(local_spark, s).claim_root(topic_id)

    claim("id-a")
    assert json.loads(record.read_text())["topic_id"] == "id-a"
    claim("id-a")
    claim(None)  # not known (no check), the record kept
    claim("id-b")  # no offsets of id-a were read: nothing to skip
    assert json.loads(record.read_text())["topic_id"] == "id-b"
    (root / "_checkpoints" / "ingest" / "offsets").mkdir(parents=True)
    with pytest.raises(ResultsRootMismatch, match=r"deleted and made again .*its id was id-b, it is id-c now"):
        claim("id-c")
    assert json.loads(record.read_text())["topic_id"] == "id-b"


def test_carried_state_deleted_by_hand_is_an_error_not_an_empty_state(local_spark, tmp_path):
    """The open windows (or seen keys) a committed batch carried on are read by the next batch and the flush;
    files gone while the batch's record says they held rows would silently give short windows: refused, naming
    the files. A batch that carried nothing, or whose open windows were flushed, reads as empty."""
    import json

    from logpipe.config import Settings
    from logpipe.streaming.job import OPEN_SCHEMA, SEEN_SCHEMA, STATE_OPEN, STATE_SEEN, StreamJob

    root = tmp_path / "root"
    ingest = root / "_commits" / "ingest"
    ingest.mkdir(parents=True)
    (ingest / "b0000000004.json").write_text(json.dumps({"batch": 4, "open_window_rows": 3, "seen_keys": 0}))
    (ingest / "b0000000005.json").write_text(json.dumps({"batch": 5, "open_window_rows": 0, "seen_keys": 0}))
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    with pytest.raises(RuntimeError, match=r"_state/open state of committed batch 4 \(3 rows, files b0000000004-\*"):
        job._state(STATE_OPEN, 4, OPEN_SCHEMA)
    assert job._state(STATE_SEEN, 4, SEEN_SCHEMA).count() == 0  # it carried no keys
    assert job._state(STATE_OPEN, 5, OPEN_SCHEMA).count() == 0
    assert job._state(STATE_OPEN, None, OPEN_SCHEMA).count() == 0  # before the first batch
    local_spark.sql("SELECT 'host' AS grain, TIMESTAMP'2004-05-18 00:00:00' AS window_start, "
                    "TIMESTAMP'2004-05-18 00:00:20' AS window_end, 'a' AS host, CAST(NULL AS INT) AS http_response, "
                    "3L AS count").coalesce(1).write.parquet((root / "_state" / "open" / "_staging" / "x").as_uri())
    for i, f in enumerate(sorted((root / "_state" / "open" / "_staging" / "x").glob("*.parquet"))):
        f.rename(root / "_state" / "open" / f"b0000000004-{i:05d}.parquet")
    assert job._state(STATE_OPEN, 4, OPEN_SCHEMA).count() == 1  # the files are there: read
    job._flushes[4] = {"batch": 4}
    (root / "_state" / "open" / "b0000000004-00000.parquet").unlink()
    assert job._state(STATE_OPEN, 4, OPEN_SCHEMA).count() == 0  # flushed: nothing open after it


def test_a_flush_committed_meanwhile_is_not_written_or_reported_again(local_spark, tmp_path):
    """The open windows after the last batch are flushed once: when the flush's marker appeared after this run read
    the flushes (another run's), this one writes no window rows, returns 0 and takes the committed record."""
    import json

    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    (root / "_commits" / "ingest").mkdir(parents=True)
    (root / "_commits" / "ingest" / "b0000000004.json").write_text(
        json.dumps({"batch": 4, "open_window_rows": 1, "seen_keys": 0}))
    local_spark.sql("SELECT 'host' AS grain, TIMESTAMP'2004-05-18 00:00:00' AS window_start, "
                    "TIMESTAMP'2004-05-18 00:00:20' AS window_end, 'a' AS host, CAST(NULL AS INT) AS http_response, "
                    "3L AS count").coalesce(1).write.parquet((root / "_state" / "open" / "_staging" / "x").as_uri())
    for i, f in enumerate(sorted((root / "_state" / "open" / "_staging" / "x").glob("*.parquet"))):
        f.rename(root / "_state" / "open" / f"b0000000004-{i:05d}.parquet")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    assert job._committed() and job._flushes == {}  # read before the other run's flush commits
    (root / "_commits" / "flush").mkdir(parents=True)
    theirs = {"batch": 4, "rows": 1, "flushed_until": "2004-05-18T00:00:20"}
    (root / "_commits" / "flush" / "f0000000004.json").write_text(json.dumps(theirs))
    assert job.flush_open_windows() == 0
    assert job._flushes[4] == theirs
    assert not (root / "windows").exists()
    # a root whose flush is not committed yet: written once, then found flushed
    (root / "_commits" / "flush" / "f0000000004.json").unlink()
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    assert job.flush_open_windows() == 1
    # in the folder of its window's day (root_layout.TABLE_PARTITIONS)
    assert len(list((root / "windows" / "by_host" / "date=2004-05-18").glob("f0000000004-*.parquet"))) == 1
    assert job.flush_open_windows() == 0


def test_alerts_of_final_windows_are_forgotten_and_a_batch_finds_its_own_alert_files(local_spark, tmp_path):
    """Each alert is raised once per (rule, key, window): the job remembers the alert ids of windows that may still
    change, and forgets those of windows that end by the late horizon (no later batch counts them), so a
    continuous run does not hold every alert it ever raised. A batch's own alert files are found by their tag
    (no listing of the whole history)."""
    import json
    from datetime import datetime

    from logpipe.config import Settings
    from logpipe.streaming.job import ALERTS_SCHEMA, StreamJob

    root = tmp_path / "root"
    (root / "_commits" / "ingest").mkdir(parents=True)
    (root / "_commits" / "ingest" / "b0000000000.json").write_text(
        json.dumps({"batch": 0, "max_ts": "2004-05-18T00:01:00"}))  # watermark 30 s: horizon 00:00:30
    t = datetime.fromisoformat
    rows = [(f"rule_{i}", "k", t(f"2004-05-18T00:00:{end - 20:02d}"), t(f"2004-05-18T00:00:{end:02d}"), 5, None, 1,
             [], alert_id, t("2004-05-18T00:01:00")) for i, (alert_id, end) in enumerate((("final", 20),
                                                                                          ("edge", 30),
                                                                                          ("open", 40)))]
    local_spark.createDataFrame(rows, ALERTS_SCHEMA).coalesce(1).write.parquet(
        (root / "alerts" / "_staging" / "x").as_uri())
    (root / "alerts" / "date=2004-05-18").mkdir()
    committed = root / "alerts" / "date=2004-05-18" / "b0000000000-00000.parquet"
    (next((root / "alerts" / "_staging" / "x").glob("*.parquet"))).rename(committed)
    # an attempt that never committed: its alerts were never raised (one file where an older logpipe wrote them)
    for uncommitted in (root / "alerts" / "b0000000001-00000.parquet",
                        root / "alerts" / "date=2004-05-18" / "b0000000001-00000.parquet"):
        uncommitted.write_bytes(committed.read_bytes())
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    assert job._emitted() == {"open": t("2004-05-18T00:00:40")}
    job._forget_final_alerts(t("2004-05-18T00:00:39"))
    assert set(job._emitted()) == {"open"}
    job._forget_final_alerts(t("2004-05-18T00:00:40"))
    assert job._emitted() == {}
    alerts = job.s.hdfs_uri("alerts")
    assert [f.rsplit("/", 1)[-1] for f in job.fs.glob(f"{alerts}/date=*/b0000000000-*.parquet")] == [
        "b0000000000-00000.parquet"]
    assert job.fs.glob(f"{alerts}/date=*/b0000000002-*.parquet") == []


def test_a_start_reads_the_alerts_of_the_days_that_can_hold_open_windows_only(local_spark, tmp_path):
    """The alerts already raised are read at a start to raise each once, but only those of windows that may still
    change matter: of the alerts/ day folders (the window's start), those more than a window and a day before the
    late horizon are not opened (a start after weeks read every alert file ever written). A file in such a folder
    that is not Parquet at all proves it: reading it would fail the start."""
    import json
    from datetime import datetime

    from logpipe.config import Settings
    from logpipe.streaming.job import ALERTS_SCHEMA, StreamJob

    root = tmp_path / "root"
    (root / "_commits" / "ingest").mkdir(parents=True)
    for b, newest in ((0, "2004-05-16T08:00:00"), (1, "2004-05-18T00:01:00")):  # horizon 2004-05-18 00:00:30
        (root / "_commits" / "ingest" / f"b000000000{b}.json").write_text(json.dumps({"batch": b, "max_ts": newest}))
    t = datetime.fromisoformat
    row = ("rate_limit", "h", t("2004-05-18T00:00:20"), t("2004-05-18T00:00:40"), 5, None, 1, [], "open",
           t("2004-05-18T00:01:00"))
    local_spark.createDataFrame([row], ALERTS_SCHEMA).coalesce(1).write.parquet((root / "alerts" / "_staging" / "x").as_uri())
    for day in ("date=2004-05-16", "date=2004-05-17", "date=2004-05-18"):
        (root / "alerts" / day).mkdir()
    (next((root / "alerts" / "_staging" / "x").glob("*.parquet"))).rename(
        root / "alerts" / "date=2004-05-18" / "b0000000001-00000.parquet")
    (root / "alerts" / "date=2004-05-16" / "b0000000000-00000.parquet").write_bytes(b"not Parquet: never opened")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    assert job._emitted() == {"open": t("2004-05-18T00:00:40")}
    # a day folder within the margin is read: the same unreadable file there fails the start
    (root / "alerts" / "date=2004-05-16" / "b0000000000-00000.parquet").rename(
        root / "alerts" / "date=2004-05-17" / "b0000000000-00000.parquet")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    with pytest.raises(Exception, match="(?i)parquet") as info:
        job._emitted()
    assert "date=2004-05-17/b0000000000-00000.parquet" in str(info.value)  # that file, not another error


def test_a_run_that_lost_its_lease_removes_nothing_when_it_recovers(local_spark, tmp_path):
    """--until-idle calls recover() again after its idle wait. A run paused past the lease's stale time meanwhile
    (its lease taken over by a run on another host, now in the middle of a batch) took that batch for a crashed
    attempt and deleted its pending marker, the files it had moved in and its staged events: the new holder then
    committed the batch without its events. recover() now checks the lease first and removes nothing."""
    from logpipe.config import Settings
    from logpipe.streaming.commit import HadoopFs
    from logpipe.streaming.job import StreamJob
    from logpipe.streaming.lease import RootBusy, RootLease

    root = tmp_path / "root"
    uri = root.as_uri()
    fs = HadoopFs(local_spark, uri)
    paused = RootLease(fs, uri, host="host-a", pid=1, heartbeat_s=3600)  # it stops renewing
    paused.acquire()
    taker = RootLease(fs, uri, host="host-b", pid=2, stale_s=1.0, heartbeat_s=3600)
    taker.acquire()  # watched it for 1 s, took it over
    in_progress = [root / "_commits" / "ingest" / "b0000000007.pending",
                   root / "quarantine" / "b0000000007-00000.parquet",
                   root / "events" / "_staging" / "b0000000007" / "pass" / "date=2004-05-18" / "part-0.parquet"]
    for f in in_progress:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.lease = paused
    try:
        with pytest.raises(RootBusy, match="lost its lease .*now held by process 2 on host-b"):
            job.recover()
        assert [f for f in in_progress if not f.exists()] == []
    finally:
        paused._stop.set()
        taker.release()


def _job_whose_lease_another_run_can_take(local_spark, tmp_path):
    """(job, root folder, its lease, another host's lease): the job's lease is never renewed (a paused run), and
    the other's acquire() takes the root over after watching it for 1 s."""
    from logpipe.config import Settings
    from logpipe.streaming.commit import HadoopFs
    from logpipe.streaming.job import StreamJob
    from logpipe.streaming.lease import RootLease

    root = tmp_path / "root"
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    fs = HadoopFs(local_spark, root.as_uri())
    paused = RootLease(fs, root.as_uri(), host="host-a", pid=1, heartbeat_s=3600)  # it stops renewing
    paused.acquire()
    job.lease = paused
    taker = RootLease(fs, root.as_uri(), host="host-b", pid=2, stale_s=1.0, heartbeat_s=3600)
    return job, root, paused, taker


def _five_lines_at_06_00(local_spark, s, *more: str):
    """Kafka records of one host's five lines at 2004-05-18 06:00:00-04 (then `more` lines), keyed by position."""
    from pyspark.sql import functions as F

    from logpipe import logformat as lf

    lines = [lf.format_line("9.9.9.9", datetime(2004, 5, 18, 6, 0, sec), "GET / HTTP/1.0", 200, 1)
             for sec in range(5)] + list(more)
    rows = [(f"lp:app.log:{i * 100}".encode(), v.encode(), 0, i) for i, v in enumerate(lines)]
    return (local_spark.createDataFrame(rows, "key BINARY, value BINARY, partition INT, offset BIGINT")
            .withColumn("topic", F.lit(s.topic)))


def test_a_run_that_lost_its_lease_during_a_batch_moves_nothing_into_the_tables(local_spark, tmp_path,
                                                                                monkeypatch):
    """A run paused past its lease's stale time in the middle of a batch (another host's run took the root over and
    runs that batch again under the same tag) wrote its files into the tables and deleted the batch's staging
    folder before its marker's check stopped it. The commit's fence stops it before anything is moved or removed:
    no table file, no pending marker, and the staged events are left to the run that holds the root."""
    from logpipe.streaming.job import MicroBatch
    from logpipe.streaming.lease import RootBusy

    job, root, paused, taker = _job_whose_lease_another_run_can_take(local_spark, tmp_path)
    counted = MicroBatch.count_windows

    def count_then_lose_the_root(mb, horizon):
        counted(mb, horizon)
        taker.acquire()  # the pause: another run watched the lease for 1 s and took it over

    monkeypatch.setattr(MicroBatch, "count_windows", count_then_lose_the_root)
    records = _five_lines_at_06_00(local_spark, job.s, "not a log line")
    try:
        with pytest.raises(RootBusy, match="lost its lease .*now held by process 2 on host-b"):
            job._batch(records, 0)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert [f for f in files if f.endswith(".parquet") and "/_staging/" not in f] == [], files
        assert not [f for f in files if f.startswith("_commits/ingest/")], files
        assert [f for f in files if f.startswith("events/_staging/b0000000000/") and f.endswith(".parquet")], files
    finally:
        paused._stop.set()
        taker.release()


def test_a_run_that_lost_its_lease_during_the_flush_writes_no_final_windows_nor_metrics(local_spark, tmp_path,
                                                                                         monkeypatch):
    """A run paused past its lease while it writes the windows still open as final (the end of `--until-done`)
    would write them into a root another run now holds, which counts those windows on: rows twice. The flush's
    fence stops it before anything is moved into the tables or marked, and the run's metrics are not written over
    the new holder's."""
    import logpipe.streaming.job as job_module
    from logpipe.streaming.lease import RootBusy

    job, root, paused, taker = _job_whose_lease_another_run_can_take(local_spark, tmp_path)
    records = _five_lines_at_06_00(local_spark, job.s)
    real_commit = job_module.commit_batch

    def take_the_root_then_commit(spark, root_uri, query, *args, **kwargs):
        if query == "flush":
            taker.acquire()  # the pause: after the flush's first check, before its files are moved
        return real_commit(spark, root_uri, query, *args, **kwargs)

    try:
        job._batch(records, 0)
        assert job._committed()[0]["open_window_rows"] > 0  # windows left open for the flush
        monkeypatch.setattr(job_module, "commit_batch", take_the_root_then_commit)
        with pytest.raises(RootBusy, match="lost its lease .*now held by process 2 on host-b"):
            job.flush_open_windows()
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert not [f for f in files if f.startswith("windows/") and "/_staging/" not in f
                    and f.rsplit("/", 1)[-1].startswith("f")], files
        assert not [f for f in files if f.startswith("_commits/flush/")], files
        with pytest.raises(RootBusy):
            job.write_run_metrics({"status": "done"})
        assert not (root / "_metrics" / "latest.json").exists()
    finally:
        paused._stop.set()
        taker.release()


def test_carried_state_of_earlier_batches_is_pruned_by_tag(local_spark, tmp_path):
    """After batch 3 commits, the open windows and seen keys carried out of earlier batches are removed (a re-run
    batch is skipped, so none reads them again); batch 3's own files and a staging folder are left."""
    from logpipe.config import Settings
    from logpipe.root_layout import file_tag
    from logpipe.streaming.job import StreamJob

    assert file_tag("hdfs://nn:8020/r/_state/open/b0000000003-00001.parquet") == "b0000000003"
    root = tmp_path / "root"
    names = {"_state/open/b0000000001-00000.parquet", "_state/open/b0000000003-00000.parquet",
             "_state/seen/b0000000002-00000.parquet", "_state/seen/_staging/b0000000001/part-0.parquet"}
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    job._prune_state(3)
    left = {str(p.relative_to(root)) for p in root.rglob("*.parquet")}
    assert left == {"_state/open/b0000000003-00000.parquet", "_state/seen/_staging/b0000000001/part-0.parquet"}


def test_a_batch_whose_events_write_wrote_other_rows_is_not_committed():
    """meta() (called just before the commit marker) compares the rows the events write observed with the
    batch's event count: a difference raises, so the batch is not committed with an accounting that is not of
    its files."""
    from types import SimpleNamespace

    from logpipe.streaming.job import MicroBatch

    mb = MicroBatch.__new__(MicroBatch)
    mb.batch_id, mb._meta, mb.n_events = 7, {}, 1_000
    mb.events_written = SimpleNamespace(get={"rows": 999})
    with pytest.raises(RuntimeError, match="batch 7: the events write wrote 999 rows, the batch holds 1,000 events"):
        mb.meta()


def test_staged_rows_put_each_row_in_its_folder_and_keep_a_quarantined_record_whole(local_spark):
    """The one pass stages events by date, late rows in _late and quarantined ones in _quarantine, all in the
    events' columns; a quarantined row keeps its reason and its record's exact bytes (invalid UTF-8 too)."""
    from pyspark.sql import functions as F

    from logpipe import logformat as lf
    from logpipe.streaming.job import (STORED_EVENT_COLUMNS, LATE_DIR, QUARANTINE_DIR, staged_rows,
                                       with_cutoff)
    from logpipe.streaming.parse import parse_columns, source_columns

    good = lf.format_line("1.2.3.4", datetime(2004, 5, 18, 5, 58, 48), "GET /a HTTP/1.0", 404, 7).encode()
    old = lf.format_line("1.2.3.4", datetime(2004, 5, 17, 23, 0, 0), "GET /b HTTP/1.0", 200, 1).encode()
    bad = b"\xff\xfe not a log line\r\n"
    records = [(f"lp:app.log:{i * 100}".encode(), v, 0, i) for i, v in enumerate([good, old, bad])]
    df = local_spark.createDataFrame(records, "key BINARY, value BINARY, partition INT, offset BIGINT")
    parsed = source_columns(with_cutoff(parse_columns(df, request_parts=False), datetime(2004, 5, 18)), F.lit("t"))
    is_bad = F.col("reason").isNotNull()
    is_late = ~is_bad & F.coalesce(F.col("timestamp") < F.col("_cutoff"), F.lit(False))
    out = staged_rows(parsed, STORED_EVENT_COLUMNS, is_bad, is_late)
    assert out.columns == [*STORED_EVENT_COLUMNS, "src", "off", "src_key", "kafka_partition", "kafka_offset", "date"]
    rows = {r["kafka_offset"]: r for r in out.withColumn("raw_bytes", F.unbase64("request")).collect()}
    assert rows[0]["date"] == "2004-05-18" and rows[0]["host"] == "1.2.3.4" and rows[0]["request"] == "GET /a HTTP/1.0"
    assert rows[1]["date"] == LATE_DIR and rows[1]["request"] == "GET /b HTTP/1.0"
    assert rows[2]["date"] == QUARANTINE_DIR and rows[2]["host"] == lf.INVALID_UTF8
    assert bytes(rows[2]["raw_bytes"]) == bad and rows[2]["src_key"] == "app.log:200"


def _kafka_rows(spark, s, first: int, n: int, second: int):
    """A micro-batch's Kafka rows: `n` requests of one host at 06:00:<second>, records first.. of one source."""
    from pyspark.sql import functions as F

    from logpipe import logformat as lf

    lines = [lf.format_line("9.9.9.9", datetime(2004, 5, 18, 6, 0, second), "GET / HTTP/1.0", 200, 1).encode()
             for _ in range(n)]
    rows = [(f"lp:app.log:{(first + i) * 100}".encode(), v, 0, first + i) for i, v in enumerate(lines)]
    return (spark.createDataFrame(rows, "key BINARY, value BINARY, partition INT, offset BIGINT")
            .withColumn("topic", F.lit(s.topic)))


def _job_rolling_up_every_two(spark, tmp_path, monkeypatch):
    """A StreamJob on a local root that rolls up its records every 2 batches and sends no alerts (no Kafka here):
    (job, settings, root, the ingest query's marker folder)."""
    from logpipe.config import Settings
    from logpipe.streaming import job as job_module
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root))
    monkeypatch.setattr(job_module, "ROLLUP_EVERY", 2)
    job = StreamJob(spark, s)
    monkeypatch.setattr(job, "_publish_committed_alerts", lambda *a, **k: None)
    return job, s, root, root / "_commits" / "ingest"


def test_a_clean_up_that_fails_after_the_commit_does_not_raise_the_batch_s_alerts_again(local_spark, tmp_path,
                                                                                        monkeypatch):
    """The batch committed, then removing its staging folder failed: the run had not yet noted the batch as
    committed nor its alerts as raised, so Spark's re-run of it was taken for another run's commit, and the next
    batch raised the same alerts again (a second row in alerts/, a second Kafka record). Found by a review's
    crash-injection harness."""
    import pyarrow.parquet as pq

    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root), rate_limit_ceiling=3)
    job = StreamJob(local_spark, s)
    monkeypatch.setattr(job, "_publish_committed_alerts", lambda *a, **k: None)  # no Kafka here

    def records(first: int, n: int, second: int):
        return _kafka_rows(local_spark, s, first, n, second)

    real_delete, failed = job.fs.delete, []

    def delete_failing_once(path: str, *a, **k):
        if "_staging" in path and not failed:
            failed.append(path)
            raise OSError("HDFS went away for a moment")
        return real_delete(path, *a, **k)

    monkeypatch.setattr(job.fs, "delete", delete_failing_once)
    batch0 = records(0, 4, 1)  # 4 requests of one host in its windows: over the ceiling of 3
    with pytest.raises(OSError, match="went away"):
        job._batch(batch0, 0)
    assert failed and (root / "_commits" / "ingest" / "b000000xxxx" / "b0000000000.json").exists()  # committed
    job._batch(batch0, 0)  # Spark re-runs the batch: skipped as this run's own commit
    job._batch(records(4, 2, 3), 1)  # more requests of the host in the same, still open, windows
    files = sorted(str(f) for f in (root / "alerts").glob("date=*/*.parquet"))  # committed files only
    alerts = pq.read_table(files, columns=["alert_id", "rule"]).to_pandas() if files else None
    assert alerts is not None and len(alerts) > 0 and (alerts["rule"] == "rate_limit").all()
    assert not alerts["alert_id"].duplicated().any(), alerts


def test_a_failed_batch_reports_its_own_error_when_its_clean_up_fails_too(local_spark, tmp_path, monkeypatch,
                                                                          caplog):
    """The NameNode in safe mode (or gone) fails a batch's commit, and then the removal of its staging folder: the
    batch's own error is raised ("Cannot create file ..."), not the clean-up's ("Cannot delete ..._staging"), which
    is a warning. Measured before: the clean-up's error replaced the commit's in the job's one-line failure."""
    from logpipe.config import Settings
    from logpipe.streaming import job as job_module
    from logpipe.streaming.job import StreamJob

    s = Settings(hdfs_url="file://", hdfs_root=str(tmp_path / "root"))
    job = StreamJob(local_spark, s)
    monkeypatch.setattr(job, "_publish_committed_alerts", lambda *a, **k: None)  # no Kafka here

    def commit_refused(*_a, **_k) -> bool:
        raise OSError("Cannot create file /root/_commits/ingest/.b0.pending.tmp. Name node is in safe mode.")

    def delete_refused(path: str, *_a, **_k) -> None:
        raise OSError(f"Cannot delete {path}. Name node is in safe mode.")

    monkeypatch.setattr(job_module, "commit_batch", commit_refused)
    monkeypatch.setattr(job.fs, "delete", delete_refused)
    with caplog.at_level("WARNING", logger="logpipe.streaming.job"), pytest.raises(OSError, match="Cannot create"):
        job._batch(_kafka_rows(local_spark, s, 0, 3, 1), 0)
    assert any("was not removed after the batch failed: " in r.getMessage() and "Cannot delete" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # a batch the query's stop interrupted: its clean-up, interrupted too, is no news (info, not a warning)
    caplog.clear()

    def commit_interrupted(*_a, **_k) -> bool:
        raise job_module.BatchInterrupted("java.lang.InterruptedException (the query was stopped)")

    monkeypatch.setattr(job_module, "commit_batch", commit_interrupted)
    with caplog.at_level("INFO", logger="logpipe.streaming.job"), pytest.raises(job_module.BatchInterrupted):
        job._batch(_kafka_rows(local_spark, s, 0, 3, 1), 0)
    said = [r for r in caplog.records if "was not removed after the batch" in r.getMessage()]
    assert [(r.levelname, "after the batch was stopped" in r.getMessage()) for r in said] == [("INFO", True)], said


def test_the_job_rolls_up_its_commit_records_and_a_restart_reads_the_roll_up_not_each_marker(local_spark, tmp_path,
                                                                                            monkeypatch, caplog):
    """Every ROLLUP_EVERY batches the job writes the records of its marker folder's markers in one file, in that
    folder (the two newest kept); a new run, and the readers of results, get every record exactly as its marker
    holds it, opening only the roll-up and the markers after it. A roll-up that cannot be written is a warning:
    the batch stays committed."""
    import fsspec

    from logpipe.config import Settings
    from logpipe.results import committed_accounting
    from logpipe.streaming import commit, job as job_module
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root))
    monkeypatch.setattr(job_module, "ROLLUP_EVERY", 2)
    job = StreamJob(local_spark, s)
    monkeypatch.setattr(job, "_publish_committed_alerts", lambda *a, **k: None)  # no Kafka here
    for b in range(5):
        job._batch(_kafka_rows(local_spark, s, 10 * b, 3, 2 * b), b)
    folder = root / "_commits" / "ingest"
    assert sorted(p.name for p in folder.glob("*/*.rollup")) == ["b0000000001.rollup", "b0000000003.rollup"]
    assert not list(folder.glob("*.rollup"))
    markers = [json.loads(p.read_text()) for p in sorted((folder / "b000000xxxx").glob("b*.json"))]
    assert [m["batch"] for m in markers] == list(range(5)) and all(m["lines"] == 3 for m in markers)

    opened: list[str] = []
    real_read = commit.HadoopFs.read_text
    monkeypatch.setattr(commit.HadoopFs, "read_text",
                        lambda self, p: opened.append(p.rsplit("/", 1)[-1]) or real_read(self, p))
    restarted = StreamJob(local_spark, s)
    assert [restarted._committed()[b] for b in range(5)] == markers
    assert opened == ["b0000000003.rollup", "b0000000004.json"]
    assert committed_accounting(s, fsspec.filesystem("file"))["per_batch"] == markers

    def no_hdfs(*a, **k):
        raise OSError("HDFS went away for a moment")

    monkeypatch.setattr(job_module, "roll_up_records", no_hdfs)
    with caplog.at_level(logging.WARNING, logger="logpipe.streaming.job"):
        restarted._batch(_kafka_rows(local_spark, s, 50, 3, 10), 5)
    assert (folder / "b000000xxxx" / "b0000000005.json").exists()
    assert not list(folder.glob("**/b0000000005.rollup"))
    assert "roll-up of the commit records could not be written" in caplog.text and "went away" in caplog.text


def test_a_missed_roll_up_is_written_after_the_next_batch_and_one_gone_after_the_listing_is_passed_over(
        local_spark, tmp_path, monkeypatch, caplog):
    """A review's cases. (1) A roll-up's write failed (or the run died before it): the next batch writes it, not
    the one ROLLUP_EVERY batches on (readers opened up to ROLLUP_EVERY more markers meanwhile). (2) A roll-up
    removed between the JVM's listing and its read (a run that lost the root still rolling up): the job reads the
    markers, as the WebHDFS readers do (py4j's error was not taken for a read error, and the start failed)."""
    from logpipe.streaming import commit, job as job_module
    from logpipe.streaming.job import StreamJob

    job, s, root, folder = _job_rolling_up_every_two(local_spark, tmp_path, monkeypatch)
    real_roll_up = job_module.roll_up_records
    failing = [True]

    def roll_up_failing_once(*a, **k):
        if failing and failing.pop():
            raise OSError("HDFS went away for a moment")
        return real_roll_up(*a, **k)

    monkeypatch.setattr(job_module, "roll_up_records", roll_up_failing_once)
    for b in range(3):
        job._batch(_kafka_rows(local_spark, s, 10 * b, 3, 2 * b), b)
    assert sorted(p.name for p in folder.glob("*/*.rollup")) == ["b0000000002.rollup"]  # batch 1's failed
    for b in range(3, 6):
        job._batch(_kafka_rows(local_spark, s, 10 * b, 3, 2 * b), b)
    assert sorted(p.name for p in folder.glob("*/*.rollup")) == ["b0000000002.rollup", "b0000000004.rollup"]
    markers = [json.loads(p.read_text()) for p in sorted((folder / "b000000xxxx").glob("b*.json"))]
    assert [m["batch"] for m in markers] == list(range(6))

    real_read = commit.HadoopFs.read_text

    def rollup_gone_after_listing(self, p: str) -> str:
        if p.endswith(".rollup"):
            (folder / "b000000xxxx" / p.rsplit("/", 1)[-1]).unlink(missing_ok=True)
        return real_read(self, p)

    monkeypatch.setattr(commit.HadoopFs, "read_text", rollup_gone_after_listing)
    with caplog.at_level(logging.WARNING, logger="logpipe.commit_log"):
        assert [m for _, m in sorted(StreamJob(local_spark, s)._committed().items())] == markers
    assert "b0000000004.rollup cannot be read" in caplog.text and "b0000000002.rollup cannot be read" in caplog.text


def test_alerts_kafka_does_not_take_leave_the_batches_going_and_go_once_it_does(local_spark, tmp_path, monkeypatch,
                                                                                caplog):
    """A send of alerts that failed (the alerts topic gone, records too large for it, the broker away) failed the
    micro-batch after its commit, so the query: the job stopped ingesting, and at the next start recover() failed
    the same way, so it did not start. The batches now go on, the alerts stay on HDFS with no marker, and once
    ALERTS_RETRY_S passed a later batch sends every unsent batch's alerts in one write and marks each batch. The
    Kafka write itself is replaced here (its real failure: tests/integration/test_stream_job.py); the listing,
    the markers and the job's files are real, on a local root."""
    import pyarrow.parquet as pq

    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root), rate_limit_ceiling=3)
    job = StreamJob(local_spark, s)
    written: list[list[str]] = []

    def kafka_refuses(alerts) -> None:
        raise RuntimeError("org.apache.kafka.common.errors.TimeoutException: Topic alerts not present in metadata "
                           "after 10000 ms.")

    def kafka_takes(alerts) -> None:
        written.append(sorted(r[0] for r in alerts.select("alert_id").collect()))

    monkeypatch.setattr(job, "_write_to_kafka", kafka_refuses)
    with caplog.at_level(logging.ERROR, logger="logpipe.streaming.job"):
        job._batch(_kafka_rows(local_spark, s, 0, 4, 1), 0)  # 4 requests of one host: over the ceiling of 3
    markers = root / "_commits" / "alerts-kafka"
    assert (root / "_commits" / "ingest" / "b000000xxxx" / "b0000000000.json").exists() and not markers.exists()
    assert "not present in metadata" in job.alerts_unsent and "no broker answered" in job.alerts_unsent
    assert any(f"alerts could not be sent to the Kafka topic {s.alerts_topic}" in r.getMessage()
               for r in caplog.records), caplog.text

    monkeypatch.setattr(job, "_write_to_kafka", kafka_takes)
    job._batch(_kafka_rows(local_spark, s, 4, 4, 13), 1)  # alerts of later windows, within the wait: not tried
    assert written == [] and job.alerts_unsent and not markers.exists()
    monkeypatch.setattr(job, "_alerts_retry_at", 0.0)  # the wait is over
    job._batch(_kafka_rows(local_spark, s, 8, 1, 14), 2)
    files = sorted(str(f) for f in (root / "alerts").glob("date=*/*.parquet"))
    on_hdfs = sorted(pq.read_table(files, columns=["alert_id"]).column("alert_id").to_pylist())
    assert len({f.rsplit("/", 1)[-1][:11] for f in files}) == 2  # alerts of batches 0 and 1
    assert written == [on_hdfs] and job.alerts_unsent is None  # both batches' alerts in one write
    assert sorted(f.name for f in (markers / "b000000xxxx").glob("b*")) == ["b0000000000.json", "b0000000001.json"]
    assert job.send_unsent_alerts() and written == [on_hdfs]  # nothing left to send


def test_the_newest_event_time_is_carried_on_from_batch_to_batch(local_spark, tmp_path):
    """The late horizon needs the newest event time of every committed batch before a batch. It is carried on
    from call to call, reading only the records committed since (taken from every record, twice a batch, it cost
    0.05 s a call after a week of a live tail); an earlier batch's or a history read again is taken whole. Equal to
    the newest over every record, batch ids with gaps and records without an event time among them."""
    import random
    from datetime import datetime, timedelta

    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob

    class Record(dict):
        reads = 0

        def get(self, key, default=None):
            Record.reads += 1
            return super().get(key, default)

    rng = random.Random(5)
    t0 = datetime(2004, 5, 18)
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(tmp_path / "r")))
    job._metas = {b: Record(batch=b, max_ts=None if rng.random() < 0.2 else
                            (t0 + timedelta(seconds=rng.randrange(100_000))).isoformat())
                  for b in range(0, 400) if rng.random() < 0.9}
    job._flushes = {}

    def newest(before: int):
        return max((datetime.fromisoformat(m["max_ts"]) for b, m in job._metas.items() if b < before
                    and m["max_ts"]), default=None)

    for before in (0, 1, 2, 7, 7, 150, 151, 120, 399, 400, 401, 3):
        assert job._newest_before(before) == newest(before), before
    assert job._newest_before(401) == newest(401)
    Record.reads = 0
    job._metas[401] = Record(batch=401, max_ts=(t0 + timedelta(days=9)).isoformat())  # a batch commits
    assert job._newest_before(402) == t0 + timedelta(days=9)
    assert Record.reads == 1  # the new record only
    job._metas = dict(job._metas)  # the history read again (another run committed meanwhile)
    job._metas[402] = Record(batch=402, max_ts=None)
    assert job._newest_before(403) == t0 + timedelta(days=9) and Record.reads > 300


def test_the_job_keeps_the_records_of_two_marker_folders_and_rolls_up_each_folder(local_spark, tmp_path,
                                                                                  monkeypatch):
    """A job followed a tail for weeks kept every batch's record (~2 KB each: ~0.4 GB a week at the default
    trigger) and rewrote one roll-up of all of them (~11 MB more a day). It now keeps the records of its newest
    batch's marker folder and the one before, and of the earlier batches only their count and newest event time
    (the late horizon needs it); each folder has roll-ups of its own. Batches in three folders here (ids 0, 1,
    9,999, 10,000, 10,001, 20,000, 20,001), the newest event time in batch 1's: the horizon after the trim still
    has it, a restart opens only the roll-ups, a batch before the records kept is known committed by its marker,
    and a folder whose last roll-up was lost gets one again."""
    from logpipe.streaming import commit
    from logpipe.streaming.job import StreamJob

    job, s, root, folder = _job_rolling_up_every_two(local_spark, tmp_path, monkeypatch)
    seconds = {0: 0, 1: 55, 9_999: 5, 10_000: 6, 10_001: 7, 20_000: 8, 20_001: 9}
    for i, (b, second) in enumerate(seconds.items()):
        job._batch(_kafka_rows(local_spark, s, 10 * i, 3, second), b)
    assert sorted(job._committed()) == [10_000, 10_001, 20_000, 20_001]
    assert (job._earlier.count, job._earlier.last) == (3, 9_999)
    assert job._newest_before(20_002) == datetime(2004, 5, 18, 6, 0, 55)
    markers = {int(p.stem[1:]): json.loads(p.read_text()) for p in folder.glob("*/b*.json")}
    assert sorted(markers) == sorted(seconds) and all(m["lines"] == 3 for m in markers.values())
    # batch 1's 06:00:55 moved the horizon past every later row: all late, also after batch 1's record went
    assert [markers[b]["late"] for b in sorted(seconds)] == [0, 0, 3, 3, 3, 3, 3]
    rollups = {p.parent.name: sorted(q.name for q in p.parent.glob("*.rollup")) for p in folder.glob("*/*.rollup")}
    assert rollups == {"b000000xxxx": ["b0000000001.rollup", "b0000009999.rollup"],
                       "b000001xxxx": ["b0000010001.rollup"], "b000002xxxx": ["b0000020000.rollup"]}
    in_rollup = json.loads((folder / "b000001xxxx" / "b0000010001.rollup").read_text())
    assert in_rollup["tags"] == ["b0000010000", "b0000010001"]  # its folder's records only

    opened: list[str] = []
    real_read = commit.HadoopFs.read_text
    monkeypatch.setattr(commit.HadoopFs, "read_text",
                        lambda self, p: opened.append(p.rsplit("/", 1)[-1]) or real_read(self, p))
    restarted = StreamJob(local_spark, s)
    monkeypatch.setattr(restarted, "_publish_committed_alerts", lambda *a, **k: None)
    assert {b: m for b, m in restarted._committed().items()} == {b: markers[b] for b in (10_000, 10_001, 20_000,
                                                                                         20_001)}
    assert sorted(opened) == ["b0000009999.rollup", "b0000010001.rollup", "b0000020000.rollup", "b0000020001.json"]
    assert restarted._earlier == job._earlier and restarted.has_history()
    assert restarted._is_committed(1) and restarted._is_committed(20_001) and not restarted._is_committed(5)
    restarted._batch(_kafka_rows(local_spark, s, 900, 3, 30), 1)  # Spark runs batch 1 again: known as committed
    assert json.loads((folder / "b000000xxxx" / "b0000000001.json").read_text()) == markers[1]
    with pytest.raises(RuntimeError, match="batch 5 has no commit marker, but batches after it are committed"):
        restarted._batch(_kafka_rows(local_spark, s, 950, 3, 30), 5)  # a gap before the records kept: not run
    assert not list(folder.glob("*/b0000000005.*")) and not list(root.glob("windows/by_host/*/b0000000005-*"))

    (folder / "b000001xxxx" / "b0000010001.rollup").unlink()  # lost: the folder's batches have none
    again = StreamJob(local_spark, s)
    monkeypatch.setattr(again, "_publish_committed_alerts", lambda *a, **k: None)
    for b in (20_002, 20_003):
        again._batch(_kafka_rows(local_spark, s, 100 * b, 3, 20), b)
    assert sorted(q.name for q in (folder / "b000001xxxx").glob("*.rollup")) == ["b0000010001.rollup"]
    assert sorted(q.name for q in (folder / "b000002xxxx").glob("*.rollup")) == ["b0000020000.rollup",
                                                                                  "b0000020002.rollup"]
    # 06:00:20, late only behind batch 1's 06:00:55 (a 30 s watermark), whose record the restarted job does not
    # hold: it came from EarlierBatches
    assert [json.loads((folder / "b000002xxxx" / f"b00000{b}.json").read_text())["late"] for b in (20_002, 20_003)
            ] == [3, 3]


def test_a_start_rolls_up_per_folder_what_an_earlier_version_rolled_up_in_one_file(local_spark, tmp_path,
                                                                                  monkeypatch, caplog):
    """A root an earlier logpipe wrote: markers in the query's folder itself (the oldest layout) and in marker
    folders, and a roll-up of every batch in the query's folder, which made every start read the whole history at
    once (and readers open that roll-up for good). A start (recover) writes a roll-up for each folder without one
    of its own, then removes the old one; a start that failed half-way goes on at the next. The next start reads
    the history a folder at a time, opening the folders' roll-ups only, and every record is as its marker holds
    it."""
    from logpipe.commit_log import rollup_text
    from logpipe.streaming import commit
    from logpipe.streaming.job import StreamJob

    job, s, root, folder = _job_rolling_up_every_two(local_spark, tmp_path, monkeypatch)
    batches = (0, 1, 9_999, 10_000, 10_001, 20_000)
    for i, b in enumerate(batches):
        job._batch(_kafka_rows(local_spark, s, 10 * i, 3, i), b)
    for p in folder.glob("*/*.rollup"):  # the earlier layout: no roll-up in the folders ...
        p.unlink()
    for b in (0, 1):  # ... the first markers in the query's folder ...
        (folder / "b000000xxxx" / f"b{b:010d}.json").rename(folder / f"b{b:010d}.json")
    markers = {int(p.stem[1:]): json.loads(p.read_text()) for p in folder.glob("**/b*.json")}
    assert sorted(markers) == list(batches)
    flat = folder / "b0000010001.rollup"  # ... and a roll-up of every batch up to 10,001 beside them
    flat.write_text(rollup_text({f"b{b:010d}": markers[b] for b in batches[:5]}))

    def fail_on_second_folder(spark, root_uri, query, records):
        if min(records) >= "b0000010000":
            raise OSError("HDFS went away for a moment")
        return real_roll_up(spark, root_uri, query, records)

    real_roll_up = commit.roll_up_records
    monkeypatch.setattr(commit, "roll_up_records", fail_on_second_folder)
    crashed = StreamJob(local_spark, s)
    with pytest.raises(OSError, match="went away"):
        crashed.recover()
    assert flat.exists() and sorted(p.name for p in folder.glob("*/*.rollup")) == ["b0000009999.rollup"]
    monkeypatch.setattr(commit, "roll_up_records", real_roll_up)

    restarted = StreamJob(local_spark, s)
    monkeypatch.setattr(restarted, "_publish_committed_alerts", lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger="logpipe.streaming.job"):
        restarted.recover()
    assert "b0000010001.rollup are now rolled up per marker folder" in caplog.text
    assert not flat.exists()
    rollups = {p.parent.name: p.name for p in folder.glob("*/*.rollup")}
    assert rollups == {"b000000xxxx": "b0000009999.rollup", "b000001xxxx": "b0000010001.rollup",
                       "b000002xxxx": "b0000020000.rollup"}
    assert json.loads((folder / "b000000xxxx" / "b0000009999.rollup").read_text())["records"] == [
        markers[b] for b in (0, 1, 9_999)]
    restarted.recover()  # nothing left to do: nothing written again
    assert {p.parent.name: p.name for p in folder.glob("*/*.rollup")} == rollups

    opened: list[str] = []
    real_read = commit.HadoopFs.read_text
    monkeypatch.setattr(commit.HadoopFs, "read_text",
                        lambda self, p: opened.append(p.rsplit("/", 1)[-1]) or real_read(self, p))
    again = StreamJob(local_spark, s)
    assert again._committed() == {b: markers[b] for b in (10_000, 10_001, 20_000)}
    assert (again._earlier.count, again._earlier.last) == (3, 9_999)
    assert sorted(opened) == sorted(rollups.values())
    assert again.accounting()["lines"] == 3 * len(batches)


def test_a_start_warns_of_tables_an_earlier_logpipe_wrote_without_day_folders(local_spark, tmp_path, caplog):
    """Roots written before the tables had day folders hold their files in the table's folder itself. The job
    goes on writing day folders beside them, and says so at its start: Spark's own reader of such a table
    (`spark.read.parquet` of its folder) counted only the rows in day folders. Day folders alone: no warning."""
    import logging

    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob

    root = tmp_path / "root"
    for f in ("events/date=2004-05-18/b0000000000-00000.parquet", "windows/by_host/date=2004-05-18/b0000000001-00000.parquet",
              "quarantine/ingest_date=2026-12-06/b0000000001-00000.parquet"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    job = StreamJob(local_spark, Settings(hdfs_url="file://", hdfs_root=str(root)))
    job.root = root.as_uri()
    with caplog.at_level(logging.WARNING, logger="logpipe.streaming.job"):
        assert job._warn_of_tables_without_day_folders() == []
    assert "day folders" not in caplog.text
    for f in ("windows/by_status/b0000000000-00000.parquet", "alerts/b0000000000-00000.parquet"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="logpipe.streaming.job"):
        assert job._warn_of_tables_without_day_folders() == ["windows/by_status", "alerts"]
    assert "windows/by_status, alerts hold(s) files an earlier logpipe wrote" in caplog.text
    assert "spark.read.parquet" in caplog.text


def test_a_line_dated_after_its_batch_s_bound_is_quarantined_and_moves_no_horizon(local_spark, tmp_path, monkeypatch,
                                                                                  caplog):
    """One line dated 2099 (inside the parse's 1990-2099 range) among a micro-batch's lines: it would have moved
    the late horizon to 2099 and made every later line late. It is quarantined as timestamp_in_future, with a
    warning, the next batch's lines are on time, and the batch records its bound. `verify`, given the same lines
    as a log, finds the root exact; with a bound moved after the line, or before the batch's events, it does not:
    each decision is held to its batch's bound."""
    from datetime import timedelta, timezone

    import fsspec
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from logpipe import logformat as lf
    from logpipe.commands.verify import accounting_text
    from logpipe.config import Settings
    from logpipe.streaming.job import StreamJob
    from logpipe.verify import verify_run

    root = tmp_path / "root"
    s = Settings(hdfs_url="file://", hdfs_root=str(root))
    job = StreamJob(local_spark, s)
    monkeypatch.setattr(job, "_publish_committed_alerts", lambda *a, **k: None)  # no Kafka here
    utc = timezone.utc
    lines = [lf.format_line("9.9.9.9", datetime(2004, 5, 18, 6, 0, sec, tzinfo=utc), "GET / HTTP/1.0", 200, 1)
             for sec in (1, 2, 3)]
    lines.insert(2, lf.format_line("6.6.6.6", datetime(2099, 1, 1, tzinfo=utc), "GET /x HTTP/1.0", 404, 1))
    later = [lf.format_line("9.9.9.9", datetime(2004, 5, 18, 6, 0, sec, tzinfo=utc), "GET / HTTP/1.0", 200, 1)
             for sec in (5, 6, 7)]
    offsets, off = [], 0
    for line in lines + later:
        offsets.append(off)
        off += len(line) + 1
    log_file = tmp_path / "access.log"
    log_file.write_text("".join(f"{line}\n" for line in lines + later))

    def records(first: int, batch_lines: list[str]):
        rows = [(f"lp:app.log:{offsets[first + i]}".encode(), v.encode(), 0, first + i)
                for i, v in enumerate(batch_lines)]
        return (local_spark.createDataFrame(rows, "key BINARY, value BINARY, partition INT, offset BIGINT")
                .withColumn("topic", F.lit(s.topic)))

    with caplog.at_level(logging.WARNING, logger="logpipe.streaming.job"):
        job._batch(records(0, lines), 0)
        job._batch(records(len(lines), later), 1)
    job.flush_open_windows()
    markers = root / "_commits" / "ingest" / "b000000xxxx"
    meta = [json.loads((markers / f"b000000000{b}.json").read_text()) for b in (0, 1)]
    assert meta[0]["quarantined_by_reason"] == {lf.TIMESTAMP_IN_FUTURE: 1} and meta[0]["events"] == 3, meta[0]
    assert meta[1]["late"] == 0 and meta[1]["events"] == 3, meta[1]  # 3 late with the 2099 line as an event
    assert datetime.fromisoformat(meta[0]["horizon"]).year == 2004
    assert datetime.fromisoformat(meta[0]["not_after"]) > datetime.now(utc), meta[0]
    quarantined = pq.read_table(sorted(str(f) for f in (root / "quarantine").glob("ingest_date=*/*.parquet")))
    assert quarantined.column("reason").to_pylist() == [lf.TIMESTAMP_IN_FUTURE]
    assert quarantined.column("raw_bytes").to_pylist() == [lines[2].encode()]
    assert "1 lines dated after" in caplog.text and "check the clock and the time zone" in caplog.text

    local = fsspec.filesystem("file")
    r = verify_run(s, log_file, fs=local, alerts_on_kafka=False)
    assert r.ok, r.to_json()
    assert r.accounting["quarantined_by_reason"] == {lf.TIMESTAMP_IN_FUTURE: 1}
    assert r.accounting["future_check"]["quarantined"] == 1 and r.accounting["future_check"]["ok"]
    assert r.accounting["future_check"]["bounds_checked_against_the_clock"] == 2
    assert meta[0]["future_tolerance_s"] == 300 and meta[0]["at"] < meta[1]["at"]
    shown = " ".join(accounting_text(r.accounting).split())  # the report's accounting row
    assert ("quarantined as dated after their batch's bound 1 (not after it: 0), batches keeping rows past it: none, "
            "bounds not at their batch's start plus the tolerance: none;") in shown

    def verify_with_bound(batch: int, bound: datetime):
        path = markers / f"b000000000{batch}.json"
        path.write_text(json.dumps({**meta[batch], "not_after": bound.isoformat()}))
        try:
            return verify_run(s, log_file, fs=local, alerts_on_kafka=False)
        finally:
            path.write_text(json.dumps(meta[batch]))

    after_the_line = verify_with_bound(0, datetime(2099, 6, 1, tzinfo=utc))  # the line was not past it
    assert not after_the_line.ok and after_the_line.accounting["future_check"]["quarantined_not_after_the_bound"] == 1
    before_events = verify_with_bound(1, datetime(2004, 5, 18, 6, 0, 6, tzinfo=utc))  # 06:00:07 kept as an event
    assert not before_events.ok
    assert before_events.accounting["future_check"]["batches_keeping_rows_past_the_bound"] == [1]
    assert before_events.accounting["future_check"]["bounds_not_at_the_batch_start"] == [1]
    shown = " ".join(accounting_text(before_events.accounting).split())
    assert "batches keeping rows past it: batch 1," in shown
    assert "the tolerance: batch 1 (a root copied without its files' times" in shown
    # batch 0 is named as a batch, not a bare 0 that read as "none"
    batch_0 = verify_with_bound(0, datetime(2004, 5, 18, 6, 0, 0, tzinfo=utc))
    assert "batches keeping rows past it: batch 0," in " ".join(accounting_text(batch_0.accounting).split())
    # a bound that no row breaks but that is not the batch's start plus the tolerance: an hour before batch 0's
    # commit (taken, say, from the lines' own times), a second after batch 1's commit plus the tolerance, or a
    # tolerance recorded as negative
    for bid, bound, tolerance in ((1, datetime.fromtimestamp(meta[0]["at"] - 3600, utc), 300),
                                  (1, datetime.fromtimestamp(meta[1]["at"] + 301, utc), 300),
                                  (0, datetime.fromisoformat(meta[0]["not_after"]) - timedelta(seconds=600), -300)):
        path = markers / f"b000000000{bid}.json"
        path.write_text(json.dumps({**meta[bid], "not_after": bound.isoformat(), "future_tolerance_s": tolerance}))
        try:
            wrong = verify_run(s, log_file, fs=local, alerts_on_kafka=False)
        finally:
            path.write_text(json.dumps(meta[bid]))
        assert not wrong.ok and wrong.accounting["future_check"]["bounds_not_at_the_batch_start"] == [bid], bound
        assert wrong.accounting["future_check"]["quarantined_not_after_the_bound"] == 0
        assert f"plus the tolerance: batch {bid} (a root copied" in " ".join(accounting_text(wrong.accounting).split())
    old_record = {k: v for k, v in meta[1].items() if k != "future_tolerance_s"}  # an earlier logpipe's record
    (markers / "b0000000001.json").write_text(json.dumps(old_record))
    try:
        unchecked = verify_run(s, log_file, fs=local, alerts_on_kafka=False)
    finally:
        (markers / "b0000000001.json").write_text(json.dumps(meta[1]))
    assert unchecked.ok and unchecked.accounting["future_check"]["bounds_not_checked"] == 1
    assert "(1 recorded without their tolerance, not checked)" in accounting_text(unchecked.accounting)
    assert verify_run(s, log_file, fs=local, alerts_on_kafka=False).ok  # the records as the job wrote them
