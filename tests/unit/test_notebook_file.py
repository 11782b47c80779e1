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
    monkeypatch.setenv("LOG_FILE", str(tmp_path / "no-such.log"))
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


@pytest.mark.parametrize("truth", [None, {"incidents": [], "total_lines": 30, "malformed_lines": 0}],
                         ids=["no truth file", "a truth file without incidents"])
def test_the_incident_check_says_whether_the_truth_file_is_missing_or_plants_nothing(tmp_path, monkeypatch, truth):
    """A log too short for incidents has a truth file that plants none: the notebook says so, not that the file is
    missing (before, both read "No ground-truth file next to the log")."""
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
    monkeypatch.setenv("LOG_FILE", str(log))
    _run_cells()
    said = [o.data for o in shown if isinstance(o, IPython.display.Markdown)]
    missing = [m for m in said if m.startswith("No ground-truth file next to the log")]
    empty = [m for m in said if "plants no incidents" in m]
    assert (len(missing), len(empty)) == ((1, 0) if truth is None else (0, 1)), said


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
    monkeypatch.setenv("LOG_FILE", str(tmp_path / "no-such.log"))
    namespace = _run_cells()
    assert namespace["n_events"] == 31 and namespace["per_minute"].sum() == 31
    assert len(namespace["per_minute"]) == 2  # the two minutes with requests, not every minute between
    assert "minutes without requests are not drawn" in capsys.readouterr().out
