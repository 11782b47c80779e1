"""The demo notebook is stored clean: valid nbformat, no outputs, a tagged settings cell, plots in matplotlib."""

from __future__ import annotations

import nbformat
import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

NOTEBOOK = PROJECT_ROOT / "notebooks" / "Section_A_Log_Analytics_Demo.ipynb"


def test_notebook_is_stored_without_outputs_and_has_a_settings_cell() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert [c for c in code if c.outputs or c.execution_count is not None] == []
    settings_cell = code[0]
    assert "parameters" in settings_cell.metadata.get("tags", [])
    for name in ("HDFS_ROOT", "WEBHDFS_URL", "LOG_PATH"):
        assert f"{name} = " in settings_cell.source
    source = "\n".join(c.source for c in code)
    # addresses come from logpipe's settings, never hard-coded
    assert "load_settings(" in source and "127.0.0.1:9870\"" not in source.replace("e.g. \"http://127.0.0.1:9870\"", "")
    for table in ("events", "windows/by_host", "windows/by_status", "alerts", "quarantine", "late"):
        assert f'"{table}"' in source, table


def _results(root, *, windows: bool, host_counts: list[int]) -> None:
    """A results root on the local disk: 30 events, a committed batch, and (with `windows`) one window per count."""
    import json
    from datetime import datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "_commits" / "ingest").mkdir(parents=True)
    (root / "_commits" / "ingest" / "b0000000000.json").write_text("{}")
    (root / "_commits" / "job.json").write_text(json.dumps({"topic": "t", "window": "1 minute", "slide": "30 seconds",
                                                            "watermark": "30 seconds", "rate_limit_ceiling": 25}))
    t0 = datetime(2004, 5, 18)
    (root / "events" / "date=2004-05-18").mkdir(parents=True)
    pq.write_table(pa.table({"host": ["1.2.3.4"] * 30, "timestamp": pa.array([t0 + timedelta(seconds=i)
                                                                              for i in range(30)], pa.timestamp("ns")),
                             "http_response": [200] * 30}),
                   root / "events" / "date=2004-05-18" / "b0000000000-00000.parquet")
    if windows:
        for table, key in (("by_host", "host"), ("by_status", "http_response")):
            (root / "windows" / table).mkdir(parents=True)
            n = len(host_counts)
            keys = [f"10.0.0.{i}" for i in range(n)] if key == "host" else pa.array([200] * n, pa.int32())
            pq.write_table(pa.table({"window_start": pa.array([t0] * n, pa.timestamp("ns")),
                                     "window_end": pa.array([t0 + timedelta(minutes=1)] * n, pa.timestamp("ns")),
                                     key: keys, "count": pa.array(host_counts, pa.int64())}),
                           root / "windows" / table / "b0000000000-00000.parquet")


@pytest.mark.parametrize("windows,host_counts", [(False, []), (True, [3, 7]), (True, [3, 30])],
                         ids=["no final windows yet", "no host over the ceiling", "a host over the ceiling"])
def test_the_notebook_runs_top_to_bottom_on_small_results(tmp_path, monkeypatch, capsys, windows, host_counts):
    """Every code cell runs on results without final windows (a running job's first minute) and without a host
    over the ceiling (any log without an abusive host); before, cells 10-16 failed on the first and cell 12 on the
    second. The rate-limit ceiling drawn is the job's (from _commits/job.json), not the reader's default."""
    import fsspec
    import matplotlib
    import matplotlib.pyplot

    import logpipe.results

    matplotlib.use("Agg")
    root = tmp_path / "root"
    _results(root, windows=windows, host_counts=host_counts)
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", str(root))
    monkeypatch.setenv("LOGPIPE_COMPOSE_LOG_FILE", str(tmp_path / "no-such.log"))
    namespace = _run_cells()
    out = capsys.readouterr().out
    assert namespace["ceiling"] == 25 and "rate_limit_ceiling 25" in out
    over = sum(c >= 25 for c in host_counts)
    assert f"{over} host(s) reached the ceiling" in out or not windows


def _run_cells() -> dict:
    """Every code cell of the notebook in one namespace, plots closed; a failing cell fails the test."""
    import matplotlib.pyplot

    namespace: dict = {}
    for i, cell in enumerate(nbformat.read(NOTEBOOK, as_version=4).cells):
        if cell.cell_type == "code":
            try:
                exec(compile(cell.source, f"cell {i}", "exec"), namespace)
            except Exception as exc:
                pytest.fail(f"cell {i} failed: {type(exc).__name__}: {exc}")
            finally:
                matplotlib.pyplot.close("all")
    return namespace


INCIDENT = {"id": "I001", "kind": "url_busting", "start": "2004-05-18T00:00:05Z", "end": "2004-05-18T00:00:20Z",
            "expected_alerts": [{"rule": "failure_surge", "key": "404"}]}


@pytest.mark.parametrize("log_known, truth, said", [
    (True, None, "Ground truth: not found ("),
    (True, {"incidents": [], "total_lines": 30, "malformed_lines": 0}, "plants no incidents"),
    (False, None, "Ground truth: none (the log of this root is unknown: set LOG_PATH)"),
    (True, {"incidents": [INCIDENT], "first_time": "2010-01-01T00:00:00Z", "last_time": "2010-01-01T01:00:00Z"},
     "is not of this log (its lines 2010-01-01 00:00:00 .. 2010-01-01 01:00:00): not used"),
], ids=["no truth file", "a truth file without incidents", "no log known", "the truth of another log"])
def test_the_incident_check_says_why_it_has_nothing_to_compare(tmp_path, monkeypatch, log_known, truth, said):
    """A log too short for incidents has a truth file that plants none: the notebook says so, not that the file is
    missing. A root whose log is unknown (made by `logpipe stream`, which records none) is not compared with the
    demo sample's truth (before, data/access.log's incidents were checked against any root), nor is a root with
    the truth file of a log whose times do not meet its events."""
    import json

    import fsspec
    import IPython.display
    import matplotlib

    import logpipe.results

    matplotlib.use("Agg")
    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])
    log = tmp_path / "access.log"
    log.write_text("")
    if truth is not None:
        log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", str(root))
    if log_known:
        monkeypatch.setenv("LOGPIPE_COMPOSE_LOG_FILE", str(log))
    else:
        monkeypatch.delenv("LOGPIPE_COMPOSE_LOG_FILE", raising=False)
    namespace = _run_cells()
    markdown = [o.data for o in shown if isinstance(o, IPython.display.Markdown)]
    assert [m for m in markdown if said in m], markdown
    assert namespace["truth"] is None or truth["incidents"] == []
    assert "expected" not in namespace  # no incident was checked


def test_the_accounting_shown_is_of_the_committed_batches(tmp_path, monkeypatch):
    """The notebook's accounting sums the records of the committed micro-batches (`_commits/ingest/`), not
    `_metrics/latest.json`, which a running job has not written yet and a stopped one may have left stale."""
    import json

    import fsspec
    import IPython.display
    import matplotlib
    import pandas as pd

    import logpipe.results

    matplotlib.use("Agg")
    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])
    (root / "_commits" / "ingest" / "b0000000000.json").write_text(json.dumps(
        {"batch": 0, "lines": 33, "parsed": 31, "quarantined": 2, "late": 1, "duplicates": 0, "events": 30}))
    (root / "_metrics").mkdir()
    (root / "_metrics" / "latest.json").write_text(json.dumps({"lines": 999, "parsed": 999, "late": 7}))
    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", str(root))
    monkeypatch.delenv("LOGPIPE_COMPOSE_LOG_FILE", raising=False)
    namespace = _run_cells()
    summary = next(o for o in shown if isinstance(o, pd.DataFrame) and "count" in o.columns)["count"]
    assert summary["records read (job)"] == 33 and summary["parsed (job; events + late + repeats dropped)"] == 31
    assert namespace["late_count"] == 0  # rows in late/ (none here), not a count from _metrics
    assert any(isinstance(o, IPython.display.Markdown) and "1 committed micro-batches" in o.data for o in shown)


def test_an_event_dated_decades_away_does_not_fill_millions_of_minutes(tmp_path, monkeypatch, capsys):
    """The per-minute traffic filled every minute from the first event to the last: one line dated 2099 (the
    parser accepts it) among lines of 2004 made some 50 million empty minutes to count and draw. Beyond two
    months the minutes are no longer filled, and the notebook says so."""
    from datetime import datetime

    import fsspec
    import matplotlib
    import pyarrow as pa
    import pyarrow.parquet as pq

    import logpipe.results

    matplotlib.use("Agg")
    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])
    (root / "events" / "date=2099-01-01").mkdir(parents=True)
    pq.write_table(pa.table({"host": ["9.9.9.9"], "timestamp": pa.array([datetime(2099, 1, 1)], pa.timestamp("ns")),
                             "http_response": [200]}),
                   root / "events" / "date=2099-01-01" / "b0000000000-00001.parquet")
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", str(root))
    monkeypatch.setenv("LOGPIPE_COMPOSE_LOG_FILE", str(tmp_path / "no-such.log"))
    namespace = _run_cells()
    assert namespace["n_events"] == 31 and namespace["per_minute"].sum() == 31
    assert len(namespace["per_minute"]) == 2  # the two minutes with requests, not every minute between
    assert "minutes without requests are not drawn" in capsys.readouterr().out


def _quarantine(root, n: int, reasons: list[str] | None = None) -> None:
    """`n` quarantined rows of batch 0 (half of them from another producer: src and off NULL); `reasons`: each
    row's reason (default: all malformed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "quarantine").mkdir(parents=True)
    pq.write_table(pa.table({"raw": [f"bad line {i}" for i in range(n)],
                             "raw_bytes": [f"bad line {i}".encode() for i in range(n)],
                             "reason": reasons or ["malformed"] * n, "src": [None if i % 2 else "f" for i in range(n)],
                             "off": pa.array([None if i % 2 else 100 * i for i in range(n)], pa.int64())}),
                   root / "quarantine" / "b0000000000-00000.parquet")


def _notebook_env(monkeypatch, root, log=None) -> None:
    import fsspec
    import matplotlib

    import logpipe.results

    matplotlib.use("Agg")
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: fsspec.filesystem("file"))
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", str(root))
    monkeypatch.setenv("LOGPIPE_COMPOSE_LOG_FILE", str(log or root / "no-such.log"))


def test_a_root_whose_lines_were_all_quarantined_says_so_not_that_the_job_never_ran(tmp_path, monkeypatch):
    """A log in a format the job does not parse: its batches commit with no event. The notebook said "has the
    streaming job run for this root?"; it now says what the job's records hold: the lines, where they went."""
    import json

    root = tmp_path / "root"
    (root / "_commits" / "ingest").mkdir(parents=True)
    (root / "_commits" / "ingest" / "b0000000000.json").write_text(json.dumps(
        {"batch": 0, "lines": 5, "parsed": 0, "quarantined": 5, "late": 0, "duplicates": 0, "events": 0,
         "quarantined_by_reason": {"malformed": 5}}))
    _quarantine(root, 5)
    _notebook_env(monkeypatch, root)
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    namespace: dict = {}
    with pytest.raises(RuntimeError) as failed:
        for cell in cells:
            exec(compile(cell.source, "cell", "exec"), namespace)
    said = str(failed.value)
    assert "committed micro-batches read 5 lines: quarantined 5 (by reason: malformed 5)" in said, said
    assert "has the streaming job run" not in said


def test_quarantine_rows_are_counted_in_arrow_and_only_a_few_read_whole(tmp_path, monkeypatch):
    """Only the reasons of every quarantined row reach pandas, and three rows of each reason to show (a log of
    mostly bad lines has millions; the first eight rows read showed one reason only), the most frequent reason
    first, each in log order; offsets of other producers' records are NULL, and the others stay integers."""
    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])
    _quarantine(root, 20, reasons=["malformed"] * 14 + ["bad_timestamp"] * 6)
    _notebook_env(monkeypatch, root)
    namespace = _run_cells()
    assert namespace["n_quarantined"] == 20
    assert namespace["reasons"].to_dict() == {"malformed": 14, "bad_timestamp": 6}
    shown = namespace["quarantine"]
    assert "raw_bytes" not in shown.columns and str(shown["off"].dtype) == "Int64"
    assert list(shown["reason"]) == ["malformed"] * 3 + ["bad_timestamp"] * 3
    # rows 0, 1, 2 and 14, 15, 16: src "f" in offset order first, another producer's (NULL) after
    assert list(shown["raw"]) == ["bad line 0", "bad line 2", "bad line 1", "bad line 14", "bad line 16",
                                  "bad line 15"], list(shown["raw"])
    assert list(shown["off"].isna()) == [False, False, True] * 2 and shown["off"][1] == 200


def test_incidents_planted_after_the_newest_event_read_are_not_counted_as_missed(tmp_path, monkeypatch, capsys):
    """A job still reading the log (compose's continuous run): the truth file covers the whole log, the root its
    first part. An incident planted after the newest event is "not read yet", not a miss in the tally."""
    import json

    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])  # events 00:00:00 .. 00:00:29
    log = tmp_path / "access.log"
    log.write_text("")
    later = {**INCIDENT, "id": "I002", "start": "2004-05-18T01:00:00Z", "end": "2004-05-18T01:00:20Z"}
    log.with_name(log.name + ".truth.json").write_text(json.dumps(
        {"incidents": [INCIDENT, later], "first_time": "2004-05-18T00:00:00Z", "last_time": "2004-05-18T02:00:00Z"}))
    _notebook_env(monkeypatch, root, log)
    namespace = _run_cells()
    check = namespace["check"]
    assert list(check["detected"]) == [False, "not read yet"]
    out = capsys.readouterr().out
    assert "0 of 1 expected alerts were raised; 1 more are planted after the newest event read so far" in out


@pytest.mark.parametrize("windows", [True, False], ids=["windows", "no final windows yet"])
def test_time_axes_tell_their_ticks_apart_and_lie_around_the_log(tmp_path, monkeypatch, windows):
    """Every time axis used one format, `%m-%d %H:%M`: on a log of a few minutes its labels repeated
    (`05-18 00:00, 05-18 00:00, 05-18 00:01`), a single minute of requests was one point on an axis years wide,
    and without final windows the window plots were empty axes dated 1970. Now each axis labels its ticks apart
    and spans the log's time (30 s here) with a minute either side; without windows, the window plots say so."""
    from datetime import datetime, timedelta

    import IPython.display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    root = tmp_path / "root"
    _results(root, windows=windows, host_counts=[3, 30])
    _notebook_env(monkeypatch, root)
    drawn: dict[str, tuple[list[str], tuple[float, float]]] = {}

    def show(*args, **kwargs):
        for num in plt.get_fignums():
            fig = plt.figure(num)
            fig.canvas.draw()
            for ax in fig.axes:  # each plot's time axis: the one labelled (a shared axis is labelled once)
                labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
                if "(UTC)" in ax.get_xlabel():
                    drawn[fig.axes[0].get_title()] = (labels, ax.get_xlim())
                else:
                    drawn.setdefault(fig.axes[0].get_title(), None)

    shown: list = []
    monkeypatch.setattr(plt, "show", show)
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    _run_cells()
    t0 = datetime(2004, 5, 18)  # the events: t0 .. t0 + 29 s
    lo, hi = mdates.date2num(t0 - timedelta(minutes=2)), mdates.date2num(t0 + timedelta(minutes=2))
    timed = {title: v for title, v in drawn.items() if v is not None}
    assert any(t.startswith("Requests per minute") for t in timed), drawn
    for title, (labels, (x0, x1)) in timed.items():
        assert lo <= x0 < x1 <= hi, (title, mdates.num2date(x0), mdates.num2date(x1))
        assert len(labels) == len(set(labels)) >= 2, (title, labels)
    window_plots = {"Requests per host per 1 minute window", "Failed requests per status and window"}
    notes = [o.data for o in shown if isinstance(o, IPython.display.Markdown) and "No final windows" in o.data]
    if windows:
        assert window_plots <= set(timed) and not notes, (set(timed), notes)
    else:
        assert not window_plots & set(drawn) and len(notes) == 3, (set(drawn), notes)


def test_a_namenode_that_does_not_answer_is_one_line_saying_what_to_check(tmp_path, monkeypatch, free_ports):
    """The notebook's first read of HDFS, with nothing listening at the NameNode's address, ended in the HTTP
    client's traceback (`Max retries exceeded ... Connection refused`); it says where it asked and what to check."""
    import matplotlib

    matplotlib.use("Agg")
    port = free_ports(1)[0]
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "2")
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    namespace: dict = {}
    with pytest.raises(ConnectionError) as refused:
        for cell in cells[:2]:
            exec(compile(cell.source, "cell", "exec"), namespace)
    said = str(refused.value)
    assert said.startswith(f"no answer from the NameNode at http://127.0.0.1:{port} (") and "stack status" in said
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_the_notebook_notes_the_job_s_settings_it_reads_with_not_its_alerts_topic(tmp_path, monkeypatch, capsys):
    """The notebook says which of the job's settings it reads the results with (the window, the rules); the
    alerts topic the job published to changes nothing it shows (it reads no Kafka), so it is not noted: a note
    about it suggested a difference in what is drawn."""
    import json

    root = tmp_path / "root"
    _results(root, windows=True, host_counts=[3, 7])
    job = root / "_commits" / "job.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "alerts_topic": "elsewhere-alerts"}))
    _notebook_env(monkeypatch, root)
    _run_cells()
    out = capsys.readouterr().out
    assert "reading the results with the job's window '1 minute'" in out
    assert "alerts_topic" not in out and "elsewhere-alerts" not in out
