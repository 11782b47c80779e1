"""`logpipe demo`'s own decisions, without services: when it stops instead of going on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_the_demo_stops_when_its_old_topics_cannot_be_deleted(monkeypatch):
    """The demo uses the names again at once: a topic the broker keeps would mix old and new records, so it exits
    with the broker's reason instead of going on."""
    from logpipe.commands import demo
    from logpipe.config import load_settings

    def kept(*_a, **_k):
        raise TimeoutError("Kafka at 127.0.0.1:9092 still lists the deleted topics ['t']")

    monkeypatch.setattr("logpipe.topics.delete_topics", kept)
    with pytest.raises(SystemExit, match="demo: Kafka at .* still lists the deleted topics"):
        demo.delete_topics_or_exit(load_settings(), ["t"])


@pytest.mark.parametrize("command, size, shown", [("demo", "40M", "not a size: '40M'"),
                                                   ("demo", "0MB", "'0MB': a size must be more than 0 bytes"),
                                                   ("bench", "1GB,0", "'0': a size must be more than 0 bytes")])
def test_a_bad_sample_size_is_refused_before_the_stack_starts(monkeypatch, capsys, command, size, shown):
    """`demo --size 40M` (not a size: decimal units with B), or a size of 0, ends at once with the reason, exit 2;
    before, the stack started first (minutes on a fresh machine) and the generate step then failed (bench: with a
    traceback, leaving an empty results folder)."""
    from logpipe import cli
    from logpipe.stack import services

    started = []
    monkeypatch.setattr(services, "up", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--size", size])
    assert exc.value.code == 2 and not started
    err = capsys.readouterr().err
    assert "--size" in err and shown in err, err
    args = cli.build_parser().parse_args(["demo", "--size", "2.5GB"])
    assert args.size == "2.5GB"  # handed on to generate as given


class _StopAfterSample(Exception):
    """Raised by the step after the sample (the results' check): a demo test ends there."""


def _demo_up_to_the_sample(monkeypatch) -> tuple[list, list]:
    """The demo with a stack that starts at once, steps that only record their names, and an end at the step after
    the sample (_StopAfterSample): (the stack starts, the steps' names)."""
    from logpipe.commands import demo
    from logpipe.stack import services

    started: list = []
    steps: list = []

    def no_more(*_a, **_k):
        raise _StopAfterSample

    monkeypatch.setattr(services, "up", lambda *a, **k: started.append(a))
    monkeypatch.setattr(demo, "_step", lambda name, *a, **k: steps.append(name) or (0.0, 0))
    monkeypatch.setattr(demo, "fresh_results_for", no_more)
    return started, steps


@pytest.mark.parametrize("given, generated", [([], False), (["--size", "5MB"], True), (["--seed", "7"], True)])
def test_a_named_log_that_does_not_exist_is_an_error_unless_a_sample_is_asked_for(monkeypatch, capsys, tmp_path,
                                                                                   given, generated):
    """`make demo DEMO_ARGS='--log nope.log'` (a typo for the user's own log) generated a 40 MB sample there,
    replayed it, found it exact and exited 0: the user took the sample's results for their log's. A --log that
    does not exist is now an error, exit 2, before the stack starts; with --size or --seed the user asks for a
    sample there, and gets one."""
    from logpipe import cli

    log = tmp_path / "nope.log"
    started, steps = _demo_up_to_the_sample(monkeypatch)
    if generated:
        with pytest.raises(_StopAfterSample):
            cli.main(["demo", "--log", str(log), *given])
        assert steps == ["generate sample"] and started
    else:
        assert cli.main(["demo", "--log", str(log)]) == 2
        assert not started and not steps
        assert f"logpipe demo: log file not found: {log}" in capsys.readouterr().err


# a step standing in for `logpipe stream`: on SIGINT or SIGTERM it finishes its work (0.5 s) and says so
_GRACEFUL_STEP = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(0.5)
    print("graceful stop done", signum, flush=True)
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print("step running", flush=True)
time.sleep(60)
"""

# the demo running that step through demo._step (its Popen given the stand-in's command)
_DEMO = """
import signal, subprocess, sys
# Ctrl-C as in a terminal: a shell without job control (CI scripts, `cmd &`) starts its children with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from logpipe.cli import exit_on_termination
from logpipe.commands import demo
real = subprocess.Popen
demo.subprocess.Popen = lambda argv, **kw: real([sys.executable, "-c", sys.argv[1]], **kw)
exit_on_termination()
demo._step("stream --until-done", ["stream"], env=None, stop_grace_s=float(sys.argv[2]))
"""


def _demo_with_a_step(step: str, grace_s: float):
    import subprocess
    import sys

    demo = subprocess.Popen([sys.executable, "-c", _DEMO, step, str(grace_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert demo.stdout.readline().strip() == "step running"
    return demo


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_stopped_demo_lets_its_running_step_stop_cleanly(signal_name):
    """SIGTERM reaches the demo alone: it passes it on to the step (before, the step ran on, orphaned). Ctrl-C
    reaches the whole foreground group: the demo waits for the step's own clean stop (before, it killed the step
    0.25 s later: the stream could not finish its micro-batch, nor the producer save its position)."""
    import os
    import signal

    demo = _demo_with_a_step(_GRACEFUL_STEP, grace_s=0)  # the step's grace: 0 + 30 s
    sig = getattr(signal, signal_name)
    if sig == signal.SIGINT:
        os.killpg(demo.pid, sig)  # as a terminal's Ctrl-C: the demo and its step
    else:
        demo.send_signal(sig)
    out, _ = demo.communicate(timeout=60)
    assert f"graceful stop done {int(sig)}" in out, out
    # SIGTERM: exit 143; Ctrl-C: Python ends on its KeyboardInterrupt by the signal itself
    assert demo.returncode == (143 if sig == signal.SIGTERM else -signal.SIGINT), out


def test_a_step_that_does_not_stop_within_the_grace_is_killed():
    import signal

    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('step running', flush=True)\n" \
               "time.sleep(60)\n"
    demo = _demo_with_a_step(stubborn, grace_s=-29)  # 1 s in all
    demo.send_signal(signal.SIGTERM)
    out, _ = demo.communicate(timeout=30)
    assert "did not stop within 1s: killing it" in out and demo.returncode == 143, out


def test_a_bench_table_it_cannot_write_is_refused_before_the_runs(monkeypatch, capsys, tmp_path):
    """The results table was written after every run (an hour at three sizes), and a path it could not write then
    ended the command with a traceback."""
    from logpipe import cli
    from logpipe.stack import services

    started = []
    monkeypatch.setattr(services, "up", lambda *a, **k: started.append(a))
    (tmp_path / "file").write_text("")
    for table in (tmp_path, tmp_path / "file" / "benchmarks.md"):
        assert cli.main(["bench", "--size", "1MB", "--markdown", str(table)]) == 2 and not started
        err = capsys.readouterr().err
        assert "logpipe bench: " in err and f"--markdown {table}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("given, said", [([], None), (["--size", "5MB"], "--size 5MB: "),
                                         (["--size", "5MB", "--seed", "7"], "--size 5MB, --seed 7: ")])
def test_a_sample_size_for_a_log_that_exists_is_said_to_be_unused(monkeypatch, capsys, tmp_path, given, said):
    """`demo --size 5MB` with the 40 MB sample already there replayed it without a word; the demo still never
    overwrites an existing log, but now says that the flags made no sample."""
    from logpipe import cli

    log = tmp_path / "access.log"
    log.write_text("1.2.3.4 - - [2004-05-18 05:58:48] \"GET / HTTP/1.0\" 200 1\n")
    _, steps = _demo_up_to_the_sample(monkeypatch)
    with pytest.raises(_StopAfterSample):
        cli.main(["demo", "--log", str(log), *given])
    assert steps == []  # nothing generated: the log exists
    warned = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    if said is None:
        assert not warned
    else:
        assert len(warned) == 1 and f"logpipe.demo: {said}{log} exists, so it is replayed" in warned[0], warned


def test_the_notebook_hint_runs_from_any_folder(tmp_path, monkeypatch):
    """The closing hint was `.venv/bin/jupyter lab notebooks/...`, right only in the project folder: both paths
    are now absolute, and a results root other than the default travels with it."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from logpipe.commands import demo
    from logpipe.config import load_settings

    words = shlex.split(demo.notebook_command(load_settings()))
    assert words[-2] == "lab" and Path(words[-1]).is_absolute() and Path(words[-1]).is_file()
    jupyter = Path(words[0])
    assert jupyter.is_absolute() and jupyter.parent == Path(sys.executable).parent
    # the command as printed starts from another folder
    assert subprocess.run([words[0], "--version"], cwd=tmp_path, capture_output=True).returncode == 0
    other = shlex.split(demo.notebook_command(load_settings(hdfs_root="/my results")))
    assert other[0] == "LOGPIPE_HDFS_ROOT=/my results" and other[1:] == words
    # a NameNode on another port (another stack's): the notebook, opened from a new shell, must read that one
    monkeypatch.setenv("LOGPIPE_NAMENODE_HTTP_PORT", "29870")
    moved = shlex.split(demo.notebook_command(load_settings()))
    assert moved[0] == "LOGPIPE_WEBHDFS_URL=http://127.0.0.1:29870" and moved[1:] == words


def _summary(monkeypatch, capsys, tmp_path, report: dict, hosts: list[str], tables: list[str] | None = None,
             report_path: Path | None = None) -> str:
    """The demo's summary of `report`, with results whose hosts are `hosts` (read from fakes, not HDFS)."""
    from datetime import datetime

    import pandas as pd
    import pyarrow as pa

    import logpipe.results
    from logpipe.commands import demo
    from logpipe.config import load_settings
    from logpipe.stack import services

    log = tmp_path / "access.log"
    log.write_text("x\n")
    by_host = pa.table({"host": hosts, "count": list(range(len(hosts), 0, -1))})
    w = datetime(2024, 1, 1)
    alerts = pd.DataFrame({"rule": ["rate_limit"] * len(hosts), "key": hosts, "window_start": [w] * len(hosts),
                           "window_end": [w] * len(hosts), "count": [300] * len(hosts),
                           "top_hosts": [[h] for h in hosts]})
    monkeypatch.setattr(logpipe.results, "load_arrow", lambda s, table, cols=None: by_host)
    monkeypatch.setattr(logpipe.results, "load_table", lambda s, table, cols=None: alerts)
    monkeypatch.setattr(services, "urls", lambda s: {"HDFS UI": "http://127.0.0.1:9870"})
    monkeypatch.setattr(logpipe.results, "existing_tables",
                        lambda s: list(logpipe.results.TABLES) if tables is None else tables)
    demo.print_summary(load_settings(), log, report, {"stream": 1.0}, 2.0, report_path)
    return capsys.readouterr().out


def test_the_summary_prints_hosts_and_keys_as_they_are_not_as_markup(monkeypatch, capsys, tmp_path):
    """Hosts come from the log (any non-blank text): rich read `[fe80::1]` as markup and printed nothing, and a
    host holding `[/x]` raised MarkupError after verify had finished."""
    report = {"ok": True, "verdict": "exact", "windows_compared": 10,
              "accounting": {"lines": 5, "parsed": 5, "quarantined": 0, "late": 0, "ok": True}}
    out = _summary(monkeypatch, capsys, tmp_path, report, ["[fe80::1]", "evil[/x]", "[bold]plain"])
    for host in ("[fe80::1]", "evil[/x]", "[bold]plain"):
        assert out.count(host) >= 3, out  # busiest hosts, alert key, top hosts
    assert "lines read 5 = parsed 5 + quarantined 0" in out


def test_a_verify_that_made_no_recount_is_said_not_shown_as_zero_lines(monkeypatch, capsys, tmp_path):
    """verify's report of a failure before its recount (e.g. fractions of a second in the results) has no
    accounting: the summary said `lines read 0 = parsed 0 + quarantined 0` as if the log were empty."""
    report = {"ok": False, "verdict": "mismatch", "error": "event times with fractions of a second: [12:00:00.5]"}
    out = _summary(monkeypatch, capsys, tmp_path, report, ["10.0.0.1"])
    assert "lines read" not in out
    assert "verify made no recount: event times with fractions of a second: [12:00:00.5]" in out
    assert "MISMATCH" in out


def test_the_summary_names_only_the_tables_that_exist_and_a_mismatch_s_report(monkeypatch, capsys, tmp_path):
    """A run without late lines has no late/ folder: the summary offered /logpipe/late all the same, and a user
    who opened it found nothing. A mismatch names the file of verify's report (its examples)."""
    report = {"ok": True, "verdict": "exact", "windows_compared": 10,
              "accounting": {"lines": 5, "parsed": 5, "quarantined": 0, "late": 0, "ok": True}}
    out = _summary(monkeypatch, capsys, tmp_path, report, ["10.0.0.1"],
                   tables=["events", "alerts", "windows/by_host", "windows/by_status"])
    assert "/logpipe/{events,alerts,windows/by_host,windows/by_status} (no quarantine, late: written with their " \
           "first row)" in out, out
    assert "its report" not in out
    every = _summary(monkeypatch, capsys, tmp_path, report, ["10.0.0.1"])
    assert "/logpipe/{events,quarantine,late,alerts,windows/by_host,windows/by_status}\n" in every, every
    bad = _summary(monkeypatch, capsys, tmp_path, {**report, "ok": False, "verdict": "mismatch"}, ["10.0.0.1"],
                   report_path=tmp_path / "demo-verify.json")
    assert f"MISMATCH (10 window counts compared); its report: {tmp_path / 'demo-verify.json'}" in bad, bad


@pytest.mark.parametrize("renewed", [True, False], ids=["renewed meanwhile", "not renewed"])
def test_a_lease_from_a_host_whose_clock_lags_is_watched_before_the_demo_deletes_the_root(monkeypatch, renewed):
    """A run on another host stamps its lease's renewals with its own clock: one a minute behind this host's
    looked stale at every renewal, and the demo deleted the live run's root. A lease of another host that looks
    stale is watched for a heartbeat: renewed meanwhile, the demo refuses; not, it goes on."""
    import io
    import json
    from contextlib import contextmanager

    from logpipe.commands import demo
    from logpipe.config import load_settings
    from logpipe.streaming import lease

    stamps = iter([1_000_000, 1_000_000 + (10_000 if renewed else 0)])  # ms: 2026 minus decades, as if behind

    class Client:
        def status(self, path, strict=True):
            return {"modificationTime": next(stamps)}

        @contextmanager
        def read(self, path):
            yield io.BytesIO(json.dumps({"host": "other-host", "pid": 7, "machine": "m2"}).encode())

    slept: list[float] = []
    monkeypatch.setattr(demo.time, "sleep", slept.append)
    if renewed:
        with pytest.raises(SystemExit, match="a streaming run holds it .*other-host, lease .* renewed it just now"):
            demo.refuse_if_a_run_holds(load_settings(), Client())
    else:
        demo.refuse_if_a_run_holds(load_settings(), Client())
    assert slept == [lease.HEARTBEAT_S + 2]


def test_the_summary_names_the_notebook_only_where_it_is(monkeypatch, capsys, tmp_path):
    """A package installed outside a checkout has no notebooks/ folder: the summary printed `jupyter lab` of a path
    that did not exist."""
    from logpipe.commands import demo

    report = {"ok": True, "verdict": "exact", "windows_compared": 1,
              "accounting": {"lines": 1, "parsed": 1, "quarantined": 0, "late": 0, "ok": True}}
    out = _summary(monkeypatch, capsys, tmp_path, report, ["10.0.0.1"])
    assert f"lab {demo.DEMO_NOTEBOOK}" in out.replace("\n", "")  # this checkout's notebook (a long line: wrapped)
    monkeypatch.setattr(demo, "DEMO_NOTEBOOK", demo.PROJECT_ROOT / "nowhere" / "demo.ipynb")
    out = " ".join(_summary(monkeypatch, capsys, tmp_path, report, ["10.0.0.1"]).split())
    assert "jupyter" not in out and "nowhere/demo.ipynb of a logpipe checkout (not installed with the package)" in out


def test_webhdfs_that_does_not_answer_is_one_line_naming_what_to_check(monkeypatch, capsys, tmp_path):
    """The demo's check of its results root talks to WebHDFS with LOGPIPE_CONNECT_TIMEOUT_S as its limit (it had
    none: a hung NameNode hung the demo); a time-out or a refused connection ends it in one line, no traceback."""
    import requests

    from logpipe import cli
    from logpipe.commands import demo

    log = tmp_path / "access.log"
    log.write_text("1.2.3.4 - - [2004-05-18 05:58:48] \"GET / HTTP/1.0\" 200 1\n")
    real_check = demo.fresh_results_for
    _demo_up_to_the_sample(monkeypatch)
    monkeypatch.setattr(demo, "fresh_results_for", real_check)  # up to WebHDFS, which does not answer here
    seen: list[float | None] = []

    class Client:
        def __init__(self, url: str, user: str | None = None, timeout: float | None = None) -> None:
            seen.append(timeout)

        def status(self, *a, **k):
            raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr("hdfs.InsecureClient", Client)
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "7")
    monkeypatch.setattr("kafka.admin.KafkaAdminClient", lambda **k: type("A", (), {
        "list_topics": lambda self: [], "close": lambda self: None})())
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--log", str(log)])
    assert seen == [7.0]
    assert "over WebHDFS" in str(exc.value) and "ReadTimeout" in str(exc.value) and "stack status" in str(exc.value)
