"""The benchmark report: rows land in the results table of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_bench_rows_go_at_the_end_of_the_results_table():
    from logpipe.bench import MD_HEADER, add_table_row

    doc = f"# Benchmarks\n\nintro\n\n{MD_HEADER}\n| old row |\n\nanalysis after the table\n"
    out = add_table_row(doc, "| new row |")
    assert out.index("| old row |") < out.index("| new row |") < out.index("analysis after the table")
    assert add_table_row("", "| r |") == MD_HEADER + "\n| r |\n"


def _result(pipeline: bool, ok: bool = True, pipeline_ok: bool = True) -> dict:
    seq = {"stage": "end-to-end, one after the other (produce, then stream)", "wall_s": 300.0, "lines": 3000,
           "lines_per_s": 10}
    at_once = {"stage": "end-to-end (produce and stream at once)", "wall_s": 200.0, "lines": 3000, "lines_per_s": 15}
    return {"date": "20261130T000000", "size_bytes": 2_500_000_000, "lines": 3000, "client": "confluent",
            "stages": [{"stage": "produce", "lines_per_s": 1000}, {"stage": "stream", "lines_per_s": 20}],
            "end_to_end": at_once if pipeline else seq, "end_to_end_sequential": seq,
            "ratios": {"stream_vs_batch": 0.5}, "peak_rss_mb_concurrent": 2048.0, "peak_rss_mb_total": 3000.0,
            "verify": {"ok": ok}, "verify_pipeline": {"ok": pipeline_ok} if pipeline else None}


def test_bench_row_shows_both_end_to_end_figures_and_needs_both_runs_exact():
    from logpipe.bench import MD_HEADER, markdown_row, verified_exact

    columns = len(MD_HEADER.splitlines()[0].split("|"))
    row = markdown_row(_result(pipeline=True))
    assert len(row.split("|")) == columns
    assert "| 200.0 s | 15 | 300.0 s | 10 |" in row and row.endswith("| exact |")
    assert "| not run |  | 300.0 s | 10 |" in markdown_row(_result(pipeline=False))
    assert verified_exact(_result(pipeline=False, pipeline_ok=False))  # no pipeline run: only the stream's verify
    assert not verified_exact(_result(pipeline=True, pipeline_ok=False))
    assert not verified_exact(_result(pipeline=True, ok=False))
    assert markdown_row(_result(pipeline=True, pipeline_ok=False)).endswith("| MISMATCH |")
    # every check made passed, but the alerts topic could not be read: said as such, not as a mismatch
    incomplete = _result(pipeline=True, pipeline_ok=False)
    incomplete["verify"]["verdict"], incomplete["verify_pipeline"]["verdict"] = "exact", "incomplete"
    assert markdown_row(incomplete).endswith("| INCOMPLETE |") and not verified_exact(incomplete)
    incomplete["verify"] = {"ok": False, "verdict": "mismatch"}
    assert markdown_row(incomplete).endswith("| MISMATCH |")


def test_a_last_line_without_a_newline_is_counted(tmp_path):
    """count_lines gives the rates' line count: the producer sends a last line without its newline and verify
    counts it, so the rates divided by one line too few."""
    from logpipe.bench import count_lines

    for text, n in ((b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2)):
        (tmp_path / "log").write_bytes(text)
        assert count_lines(tmp_path / "log") == n, text


def test_bench_row_figures_have_thousands_separators_and_references_not_run_are_blank():
    from logpipe.bench import markdown_row

    r = _result(pipeline=False)
    r["stages"] += [{"stage": "java-producer-perf", "lines_per_s": 934479},
                    {"stage": "batch-reference", "lines_per_s": 162658}]
    assert "| 1,000 | 934,479 | 20 | 162,658 |" in markdown_row(r)
    assert "| 1,000 |  | 20 |  |" in markdown_row(_result(pipeline=False))  # --no-reference


def test_a_result_records_the_versions_and_commit_it_ran_with():
    """Two results can be compared only knowing what differed: the stack's Kafka and Hadoop (from its poms), the
    Java Spark ran on, and the code's commit."""
    import re

    from logpipe.bench import versions
    from logpipe.config import load_settings
    from logpipe.stack import services

    v = versions(load_settings())
    pom = (Path(services.__file__).parent / "poms" / "kafka.xml").read_text()
    assert f"<kafka.version>{v['kafka_broker']}</kafka.version>" in pom
    assert re.fullmatch(r"\d+\.\d+\.\d+", v["hadoop"])
    assert re.match(r"\d+ \(", v["spark_java"]), v["spark_java"]
    assert re.fullmatch(r"[0-9a-f]{40}( \(dirty\))?", v["commit"]), v["commit"]


def test_each_size_gets_a_log_of_its_own():
    """A run reuses the log of its label: labels that rounded (1.5 MB and 2 MB: both "2MB") made a size measure
    another size's log. The usual sizes keep their names (the logs in data/ are reused)."""
    from logpipe.bench import size_label
    from logpipe.generator import parse_size

    sizes = ["1.5MB", "2MB", "2.5MB", "250MB", "250.4MB", "1GB", "2.5GB", "2.504GB"]
    labels = [size_label(parse_size(x)) for x in sizes]
    assert len(set(labels)) == len(sizes), labels
    assert labels[3] == "250MB" and labels[5] == "1.00GB" and labels[6] == "2.50GB"


def test_a_bench_ended_by_sigterm_leaves_no_stage_running(tmp_path):
    """`timeout 2h logpipe bench`, a cancelled CI job: SIGTERM ends bench through its clean-up, which kills the
    running stage and its children (a stream's Spark JVM). Python's default action ended bench alone, and the stage
    ran on, holding its root's lease and skewing the next measurements."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    marker = f"bench-stage-{os.getpid()}"
    stage = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',"
             f" '{marker}-child'])\ntime.sleep(60)")
    bench = (
        "import os, signal, sys\nfrom pathlib import Path\n"
        "from logpipe.bench import run_stage\nfrom logpipe.cli import exit_on_termination\n"
        "from logpipe.procstats import ResourceSampler\n"
        "exit_on_termination()\n"
        f"run_stage('stream', [sys.executable, '-c', {stage!r}, '{marker}'], dict(os.environ), "
        f"ResourceSampler().start(), 1, Path({str(tmp_path)!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", bench])

    def ours() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if any(marker in a for a in p.info["cmdline"] or [])]

    deadline = time.monotonic() + 30
    while len(ours()) < 2:  # the stage and its child
        assert time.monotonic() < deadline and proc.poll() is None, "the stage did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM

    def running() -> list[psutil.Process]:  # a killed process may take a moment to die (a zombie is dead)
        out = []
        for p in ours():
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 10
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in left:
        p.kill()
    assert left == [], [p.info["cmdline"] for p in left]


def test_the_java_producer_sends_lines_of_the_log(tmp_path):
    """Kafka's ProducerPerformance gets the log's own lines as payloads (random letters compress far worse than log
    lines under lz4, so it sent more bytes per record than our producer): non-empty lines, without their CR/LF."""
    from logpipe.bench import java_perf_command, payload_sample
    from logpipe.config import Settings

    log = tmp_path / "a.log"
    log.write_bytes(b"first line\r\n\nsecond line\nthird\nfourth\n")
    out = tmp_path / "payload.txt"
    assert payload_sample(log, out, lines=3) == 3
    assert out.read_bytes() == b"first line\nsecond line\nthird\n"
    cmd = java_perf_command(Settings(), "t", 1000, out)
    assert cmd[cmd.index("--payload-file") + 1] == str(out) and "--record-size" not in cmd
    assert cmd[cmd.index("--num-records") + 1] == "1000" and "compression.type=lz4" in cmd


def test_a_long_stage_shows_its_last_output_line_as_it_runs(tmp_path, monkeypatch, caplog):
    """A stage's output goes to its own log file: a 13-minute produce with kafka-python said nothing until its end.
    Every PROGRESS_EVERY_S the bench logs where the stage is: its last line so far."""
    import logging
    import os
    import sys

    from logpipe import bench
    from logpipe.procstats import ResourceSampler

    monkeypatch.setattr(bench, "PROGRESS_EVERY_S", 0.3)
    stage = "import time\nfor i in range(4):\n    print(f'batch {i} done', flush=True)\n    time.sleep(0.4)\n"
    sampler = ResourceSampler().start()
    try:
        with caplog.at_level(logging.INFO, logger="logpipe.bench"):
            got = bench.run_stage("stream", [sys.executable, "-c", stage], dict(os.environ), sampler, 4, tmp_path)
    finally:
        sampler.stop()
    assert got.lines == 4
    shown = [r.getMessage().split("its last line: ")[1] for r in caplog.records
             if r.getMessage().startswith("stage stream: ") and "so far; its last line: " in r.getMessage()]
    assert set(shown) <= {"(none yet)"} | {f"batch {i} done" for i in range(4)}, shown
    assert len(set(shown) - {"(none yet)"}) >= 2, shown  # it moves on with the stage
    assert bench.last_line(tmp_path / "missing.log") == "(none yet)"


def test_the_java_reference_must_deliver_every_record(tmp_path):
    """Kafka's ProducerPerformance exits 0 when sends fail and counts only the records delivered: its rate over
    the records asked for filled the Java column of a run that lost records. Its MiB/s is given as MB/s."""
    from logpipe.bench import java_perf_figures

    log = tmp_path / "java-producer-perf.log"
    final = "1000 records sent, 500.0 records/sec (1.00 MB/sec), 3.1 ms avg latency, 40.0 ms max latency."
    log.write_text(f"500 records sent, 480.1 records/sec (0.96 MB/sec)\n{final}\n")
    assert java_perf_figures(log, 1000) == {"records_per_s": 500.0, "mb_per_s": 1.05}
    with pytest.raises(RuntimeError, match="delivered 1,000 of 1,200 records"):
        java_perf_figures(log, 1200)
    log.write_text("org.apache.kafka.common.errors.TimeoutException: Expiring 12 record(s)\n")
    with pytest.raises(RuntimeError, match="no final figures.*\n.*TimeoutException"):
        java_perf_figures(log, 1000)


@pytest.mark.parametrize("which", ["stage", "pipeline"])
def test_an_interrupt_as_a_stage_starts_leaves_it_not_running(tmp_path, which):
    """A stage runs in a session of its own (the terminal's Ctrl-C does not reach it): an interrupt between its
    start and the sampler's watch left it running alone."""
    import os

    from logpipe.bench import run_pipeline, run_stage

    started: list[int] = []

    class InterruptedSampler:
        def services_cpu_s(self) -> dict[str, float]:
            return {}

        def watch(self, name: str, pid: int) -> None:
            started.append(pid)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        if which == "stage":
            run_stage("sleeper", ["sleep", "60"], dict(os.environ), InterruptedSampler(), 0, tmp_path)
        else:
            run_pipeline({"sleeper": ["sleep", "60"]}, dict(os.environ), InterruptedSampler(), 0, tmp_path)
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(started[0], 0)


def test_a_failed_stage_ends_bench_with_its_log_tail_not_a_traceback(monkeypatch, capsys, tmp_path):
    """A stage that fails (here: exit 3 after a line of output) ended `logpipe bench` with a traceback of bench's
    own code around the message; the message alone says what failed and where its log is."""
    import os
    import sys

    from logpipe import bench, cli
    from logpipe.procstats import ResourceSampler
    from logpipe.stack import services

    monkeypatch.setattr(services, "up", lambda *a, **k: None)

    def one_failing_stage(*_a, **_k):
        bench.run_stage("produce", [sys.executable, "-c", "print('the broker said no'); raise SystemExit(3)"],
                        dict(os.environ), ResourceSampler(), 1, tmp_path)

    monkeypatch.setattr(bench, "bench_one", one_failing_stage)
    assert cli.main(["bench", "--size", "1MB", "--no-markdown", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"logpipe bench: stage produce failed (exit 3); log {tmp_path / 'produce.log'}" in err
    assert "the broker said no" in err and "Traceback" not in err


def test_a_failed_run_keeps_its_figures_and_names_its_data(tmp_path, monkeypatch):
    """A stage that fails late must not lose what was measured: partial.json holds the stages that ended, the
    error, and every topic and HDFS folder the run may have left (not deleted: kept to look into)."""
    import json

    from logpipe import bench
    from logpipe.config import Settings
    from logpipe.stack import services

    monkeypatch.setattr(services, "status", lambda s: [])

    def stages_then_failure(s, run, client, env, sampler, stages, **kw):
        assert env["LOGPIPE_TOPIC"] == run.topic and env["LOGPIPE_HDFS_ROOT"] == run.root
        stages.append(bench.Stage("produce", 2.0, 1000))
        raise bench.BenchFailed("verify wrote no report\nits log's tail")

    monkeypatch.setattr(bench, "_run_stages", stages_then_failure)
    with pytest.raises(bench.BenchFailed):
        bench.bench_one(Settings(), 2_500_000, "confluent", data_dir=tmp_path / "data", out_dir=tmp_path / "out",
                        name="bx")
    [partial] = (tmp_path / "out").glob("run-*-*/partial.json")
    got = json.loads(partial.read_text())
    topic = f"bx-{got['date']}-{bench.size_label(2_500_000)}".replace(".", "_")
    assert got["error"] == "verify wrote no report" and [st["stage"] for st in got["stages"]] == ["produce"]
    assert got["topics"] == [topic, f"{topic}-alerts", f"{topic}-java", f"{topic}-pipeline",
                             f"{topic}-pipeline-alerts"]
    assert got["hdfs_roots"] == [f"/bx/{got['date']}-{bench.size_label(2_500_000)}",
                                 f"/bx/{got['date']}-{bench.size_label(2_500_000)}-pipeline"]
    assert not list((tmp_path / "out").glob("run-*/result.json"))


def test_the_rows_a_bench_appends_do_not_mark_the_next_run_dirty(tmp_path, monkeypatch):
    """A bench appends its row to docs/benchmarks.md (and its result under benchmarks/results): the next run's
    commit read `(dirty)` with no code changed. A change of the code still does."""
    import subprocess

    from logpipe import bench

    repo = tmp_path / "repo"
    for f in ("docs/benchmarks.md", "benchmarks/results/r.json", "src/code.py"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(bench, "PROJECT_ROOT", repo)
    (repo / "docs/benchmarks.md").write_text("1\nrow\n")
    (repo / "benchmarks/results/r.json").write_text("2\n")
    assert not bench.versions()["commit"].endswith("(dirty)")
    (repo / "src/code.py").write_text("2\n")
    assert bench.versions()["commit"].endswith("(dirty)")


def test_the_batch_reference_counts_as_one_only_with_the_recounts_figures():
    """The batch reference's rate is held against the stream's: one that parsed other lines or wrote other window
    rows than verify's recount of the same log is no reference (bench fails); rows are compared only when verify
    excluded no late line (the reference has no watermark)."""
    from logpipe.bench import batch_reference_problem

    report = {"accounting": {"parsed": 1_000, "late_lines_excluded": 0},
              "windows_by_host": {"expected_rows": 700}, "windows_by_status": {"expected_rows": 90}}
    same = {"parsed": 1_000, "window_rows": {"by_host": 700, "by_status": 90}}
    assert batch_reference_problem(same, report) is None
    assert batch_reference_problem({**same, "parsed": 999}, report) == "999 lines parsed, the recount 1,000"
    fewer = {**same, "window_rows": {"by_host": 700, "by_status": 89}}
    assert batch_reference_problem(fewer, report) == "89 windows/by_status rows, the recount 90"
    late = {**report, "accounting": {"parsed": 1_000, "late_lines_excluded": 3}}
    assert batch_reference_problem(fewer, late) is None  # the recount left late lines out; the reference did not
    assert batch_reference_problem({"parsed": 1_000}, report) is None  # a batch.json of before the rows were written
