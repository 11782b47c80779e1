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

    from logpipe.results import committed_files, committed_tags, load_arrow, load_table

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
    # batch 0's marker where a root written before marker folders has it; the others in their marker folders
    for query, tag in (("ingest", "b0000000000"), ("ingest", "b000000xxxx/b0000000001"),
                       ("flush", "f000000xxxx/f0000000001")):
        (root / "_commits" / query / tag).parent.mkdir(parents=True, exist_ok=True)
        (root / "_commits" / query / f"{tag}.json").write_text("{}")
    (root / "_commits" / "ingest" / "b000000xxxx" / "b0000000002.pending").write_text("")
    fs = fsspec.filesystem("file")
    assert committed_tags(s, fs) == {"b0000000000", "b0000000001", "f0000000001"}
    assert len(committed_files(s, "events", fs)) == 3
    table = load_arrow(s, "events", fs=fs)
    assert table is not None
    assert sorted(table.column("host").to_pylist()) == ["a", "b", "c", "d"]
    assert sorted(set(table.column("date").to_pylist())) == ["2004-05-18", "2004-05-19"]
    assert load_arrow(s, "quarantine", fs=fs) is None
    assert list(load_table(s, "quarantine", ["reason"], fs=fs).columns) == ["reason"]


def test_tables_and_accounting_read_from_one_snapshot_of_the_commits(tmp_path):
    """While a job runs, a batch committed between two reads must not show in one table and not the other: the
    reader takes the committed tags once and hands them to every read. The accounting sums the committed
    batches' records (of the snapshot), not an attempt's pending one."""
    import json

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from logpipe.results import committed_accounting, committed_tags, load_arrow, load_table

    root = tmp_path / "r"
    s = Settings(hdfs_root=str(root))
    commits = root / "_commits" / "ingest"
    commits.mkdir(parents=True)
    fs = fsspec.filesystem("file")

    def commit_batch(i: int, hosts: list[str]) -> None:
        path = root / "events" / "date=2004-05-18" / f"b{i:010d}-00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"host": hosts}), path)
        (commits / f"b{i:010d}.json").write_text(json.dumps(
            {"batch": i, "lines": len(hosts) + 1, "parsed": len(hosts), "quarantined": 1, "late": 0,
             "duplicates": 0, "events": len(hosts)}))

    commit_batch(0, ["a", "b"])
    (commits / "b0000000001.pending").write_text("")
    tags = committed_tags(s, fs)
    commit_batch(1, ["c"])  # committed after the snapshot
    assert load_arrow(s, "events", fs=fs, tags=tags).column("host").to_pylist() == ["a", "b"]
    assert list(load_table(s, "events", ["host"], fs=fs, tags=tags)["host"]) == ["a", "b"]
    acc = committed_accounting(s, fs, tags)
    assert (acc["batches"], acc["lines"], acc["events"], acc["quarantined"]) == (1, 3, 2, 1)
    acc = committed_accounting(s, fs)  # now
    assert (acc["batches"], acc["lines"], acc["events"]) == (2, 5, 3)
    assert [m["batch"] for m in acc["per_batch"]] == [0, 1]
    assert sorted(load_arrow(s, "events", fs=fs).column("host").to_pylist()) == ["a", "b", "c"]
    assert committed_accounting(Settings(hdfs_root=str(tmp_path / "none")), fs)["batches"] == 0


def test_the_accounting_reads_a_roll_up_in_place_of_its_markers_and_keeps_to_the_snapshot(tmp_path, monkeypatch):
    """With a roll-up of batches 0-1, only batch 2's marker is opened; a snapshot taken before batch 2 leaves it
    out. The records are the markers' whatever file they come from."""
    import json

    import fsspec

    from logpipe.commit_log import rollup_text
    from logpipe.results import committed_accounting

    s = Settings(hdfs_root=str(tmp_path / "r"))
    commits = tmp_path / "r" / "_commits" / "ingest"
    commits.mkdir(parents=True)
    records = {f"b{i:010d}": {"batch": i, "lines": 5 + i, "parsed": 4 + i, "quarantined": 1, "late": 0,
                              "duplicates": 0, "events": 4 + i} for i in range(3)}
    for tag, record in records.items():
        (commits / f"{tag}.json").write_text(json.dumps(record))
    (commits / "b0000000001.rollup").write_text(rollup_text({t: records[t] for t in ("b0000000000", "b0000000001")}))
    fs = fsspec.filesystem("file")
    opened: list[str] = []
    real_cat = fs.cat
    monkeypatch.setattr(fs, "cat", lambda p: opened.append(p.rsplit("/", 1)[-1]) or real_cat(p))
    acc = committed_accounting(s, fs)
    assert acc["per_batch"] == list(records.values()) and (acc["batches"], acc["lines"]) == (3, 18)
    assert opened == ["b0000000001.rollup", "b0000000002.json"]
    acc = committed_accounting(s, fs, {"b0000000000", "b0000000001"})
    assert (acc["batches"], acc["lines"]) == (2, 11)


def test_results_are_read_with_the_settings_they_were_made_with(tmp_path):
    """verify and the notebook take the window, slide, watermark and rules the job recorded for the root, and say
    where they differ from their own settings (before, `stream --window "1 minute"` then `verify` reported every
    window as wrong, and the notebook drew the default ceiling)."""
    import json

    import fsspec

    from logpipe.results import settings_of_results

    root = tmp_path / "root"
    s = Settings(hdfs_root=str(root))
    fs = fsspec.filesystem("file")
    assert settings_of_results(s, fs) == (s, [])  # nothing recorded: the reader's own
    (root / "_commits").mkdir(parents=True)
    (root / "_commits" / "job.json").write_text(json.dumps(
        {"topic": "t", "window": "1 minute", "slide": "10 seconds", "watermark": "30 second",
         "rate_limit_ceiling": 100}))  # surge rules not recorded (an older job.json): the reader's
    got, notes = settings_of_results(s, fs)
    assert (got.window, got.slide, got.watermark, got.rate_limit_ceiling) == ("1 minute", "10 seconds", "30 second",
                                                                            100)
    assert got.surge_min_count == s.surge_min_count and got.topic == "t"  # the root's topic, with no note
    assert len(notes) == 2 and notes[0].startswith("window '1 minute'") and "rate_limit_ceiling 100" in notes[1]
    # a root whose alerts topic has the name of the reader's topic is read (before: "not the record the job writes")
    (root / "_commits" / "job.json").write_text(json.dumps({"topic": "t", "alerts_topic": s.topic}))
    got, notes = settings_of_results(s, fs)
    assert (got.topic, got.alerts_topic) == ("t", s.topic) and notes == [f"alerts_topic {s.topic!r} (the job's, "
                                                                        f"from {root}/_commits/job.json; not "
                                                                        f"{s.alerts_topic!r})"]
    from logpipe.results import ResultsSettingsError

    for broken in ('{"window": ', '["window"]', '{"window": "30s"}'):  # cut off, not an object, refused value
        (root / "_commits" / "job.json").write_text(broken)
        with pytest.raises(ResultsSettingsError, match="job.json is not the record the job writes"):
            settings_of_results(s, fs)


def test_empty_tables_have_their_columns():
    """A table without committed files yet is an empty frame with its columns (the notebook selects them), and the
    columns are those of the job's schemas."""
    from logpipe.results import COLUMNS
    from logpipe.streaming.job import ALERTS_SCHEMA, GRAINS, HOST_COUNTS_SCHEMA, WINDOW_COLUMNS

    def names(ddl: str) -> list[str]:
        import re

        return [part.split()[0] for part in re.split(r",\s*(?![^<]*>)", ddl)]

    assert COLUMNS["alerts"] == names(ALERTS_SCHEMA)
    assert COLUMNS["windows/by_host"] == names(HOST_COUNTS_SCHEMA) == [*WINDOW_COLUMNS, *GRAINS["host"], "count"]
    assert COLUMNS["windows/by_status"] == [*WINDOW_COLUMNS, *GRAINS["status"], "count"]


def test_the_recorded_settings_are_settings_and_durations_compare_by_length():
    """Every setting a root records is a Settings field (a typo would never match); readers (verify, the notebook)
    take all of them but the topic; "1 minute" recorded is the same window as "60 seconds" now, and a recorded
    duration that is no duration differs (the job then refuses the root, naming it)."""
    from logpipe.root_record import ROOT_SETTINGS, RUN_SETTINGS, setting_differs

    assert set(ROOT_SETTINGS) <= set(Settings.model_fields)
    assert set(RUN_SETTINGS) == set(ROOT_SETTINGS) - {"topic"}
    assert not setting_differs("window", "1 minute", "60 seconds")
    assert setting_differs("window", "20 seconds", "30 seconds")
    assert setting_differs("watermark", "soon", "30 seconds")
    assert not setting_differs("surge_min_share", 0.25, 0.25) and setting_differs("rate_limit_ceiling", 200, 201)


def test_alerts_by_key_gives_one_row_per_rule_and_key_with_its_span_peak_and_most_named_hosts():
    """The demo's summary lists each (rule, key) once, oldest first, instead of the first alerts by window (which
    can all be windows of one incident): its window count, span, peak count and the hosts named most often."""
    import numpy as np
    import pandas as pd

    from logpipe.results import alerts_by_key

    ts = pd.Timestamp
    alerts = pd.DataFrame({
        "rule": ["rate_limit", "failure_surge", "rate_limit", "failure_surge", "rate_limit"],
        "key": ["10.0.0.1", "404", "10.0.0.1", "404", "10.0.0.9"],
        "window_start": [ts("2004-01-01 00:00:10"), ts("2004-01-01 00:00:00"), ts("2004-01-01 00:00:20"),
                         ts("2004-01-01 00:00:10"), ts("2004-01-01 00:05:00")],
        "window_end": [ts("2004-01-01 00:00:30"), ts("2004-01-01 00:00:20"), ts("2004-01-01 00:00:40"),
                       ts("2004-01-01 00:00:30"), ts("2004-01-01 00:05:20")],
        "count": [5, 7, 9, 3, 4],
        # as read from Parquet: arrays, not lists
        "top_hosts": [np.array(["10.0.0.1"]), np.array(["a", "b"]), np.array(["10.0.0.1"]), np.array(["b", "c"]),
                      None],
    })
    got = alerts_by_key(alerts)
    assert got[["rule", "key"]].values.tolist() == [["failure_surge", "404"], ["rate_limit", "10.0.0.1"],
                                                    ["rate_limit", "10.0.0.9"]]
    assert got["windows"].tolist() == [2, 2, 1]
    assert got["first"].tolist() == [ts("2004-01-01 00:00:00"), ts("2004-01-01 00:00:10"), ts("2004-01-01 00:05:00")]
    assert got["last"].tolist() == [ts("2004-01-01 00:00:30"), ts("2004-01-01 00:00:40"), ts("2004-01-01 00:05:20")]
    assert got["peak_count"].tolist() == [7, 9, 4]
    # b is named in both surge windows; a and c once each, a first
    assert got["top_hosts"].tolist() == [["b", "a", "c"], ["10.0.0.1"], []]
    assert alerts_by_key(alerts, top=1)["top_hosts"].tolist()[0] == ["b"]
    assert alerts_by_key(alerts.iloc[:0]).columns.tolist() == ["rule", "key", "windows", "first", "last",
                                                              "peak_count", "top_hosts"]


def test_a_webhdfs_that_accepts_and_never_answers_is_an_error_after_the_setting(free_ports):
    """A NameNode that accepts connections and does not answer (a hung JVM): fsspec's requests waited for ever, so
    verify, the demo or the notebook hung with it; each request now gives up after LOGPIPE_CONNECT_TIMEOUT_S."""
    import socket
    import threading

    import requests

    from logpipe.config import load_settings
    from logpipe.results import webhdfs_fs

    port = free_ports(1)[0]
    got: list[BaseException] = []

    def ask() -> None:
        try:
            fs.exists("/logpipe/_commits")
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            got.append(exc)

    with socket.socket() as hung:  # listens, so the kernel completes connections, and never accepts or answers
        hung.bind(("127.0.0.1", port))
        hung.listen(8)
        fs = webhdfs_fs(load_settings(webhdfs_url=f"http://127.0.0.1:{port}", connect_timeout_s=0.5))
        asking = threading.Thread(target=ask, daemon=True)  # a hang fails the test instead of holding it up
        asking.start()
        asking.join(30)
    assert not asking.is_alive(), "the request still waits after 30 s"
    assert len(got) == 1 and isinstance(got[0], requests.Timeout), got
