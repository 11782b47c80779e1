"""`logpipe verify` refuses what it cannot check with one clear line, before it recounts the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from logpipe.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n')
    return path


@pytest.fixture
def refused_first(monkeypatch):
    """The refusal must come before HDFS is asked for the results and before the recount: either fails the test."""
    import logpipe.verify
    from logpipe.commands import verify as command

    monkeypatch.setattr(command, "results_problem", lambda *a, **k: pytest.fail("asked HDFS before refusing"))
    monkeypatch.setattr(command, "kafka_problem", lambda *a, **k: pytest.fail("asked Kafka before refusing"))
    monkeypatch.setattr(logpipe.verify, "verify_run", lambda *a, **k: pytest.fail("recounted before refusing"))


def test_a_missing_truth_file_is_an_error_not_a_skipped_check(log, tmp_path, capsys):
    code = main(["verify", "--log", str(log), "--truth", str(tmp_path / "nope.truth.json")])
    assert code == 2 and "no such truth file" in capsys.readouterr().err


@pytest.mark.parametrize("text, why", [("{", "JSONDecodeError"), ("[1]", "not a JSON object"),
                                       ('{"incidents": [{"id": 1, "kind": "x", "end": "2004-05-18T00:00:00Z"}]}',
                                        "KeyError: 'start'"),
                                       ('{"incidents": [{"id": 1, "kind": "x", "start": "soon", "end": "later"}]}',
                                        "ValueError")])
def test_a_broken_truth_file_is_said_before_the_recount(log, tmp_path, capsys, text, why, refused_first):
    """It was read after the recount (minutes at 2.5 GB), and then failed with a traceback; the one beside the log
    (`<log>.truth.json`) is checked as well as one given with --truth."""
    log.with_name(log.name + ".truth.json").write_text(text)
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and "is not a ground-truth file of `logpipe generate`" in err and why in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["a folder", "under a file", "no right to write"])
def test_a_report_path_it_cannot_write_is_said_before_the_recount(log, tmp_path, capsys, where, refused_first):
    """--json naming a folder, a path under a file, or a file in a folder it may not write: one line, exit 2, before
    the recount (it was written after it, and failed with a traceback that hid the verdict)."""
    import os

    if where == "no right to write" and os.geteuid() == 0:
        locked = Path("/proc/logpipe-verify.json")  # root may write anywhere but into /proc
    else:
        locked = tmp_path / "locked" / "verify.json"
        locked.parent.mkdir()
        locked.parent.chmod(0o500)
    path = {"a folder": tmp_path, "under a file": log / "verify.json", "no right to write": locked}[where]
    code = main(["verify", "--log", str(log), "--json", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--json {path}" in err and "Traceback" not in err, err
    assert not path.is_file()


def test_a_report_path_that_can_be_written_leaves_nothing_behind_before_the_report(tmp_path):
    from logpipe.cli import output_file_problem

    new = tmp_path / "reports" / "today" / "verify.json"
    assert output_file_problem(new, "--json") is None and new.parent.is_dir() and not new.exists()
    old = tmp_path / "old.json"
    old.write_text("{}")
    assert output_file_problem(old, "--json") is None and old.read_text() == "{}"  # not emptied before the new one
    link, target = tmp_path / "latest.json", tmp_path / "runs" / "run-1.json"
    link.symlink_to(target)  # a link to the report to come stays a link, with nothing made behind it
    assert output_file_problem(link, "--json") is None and link.is_symlink() and not target.exists()
    afile = tmp_path / "afile"  # a file where a folder of the path should be: said so, not "File exists"
    afile.write_text("x")
    assert output_file_problem(afile / "sub" / "r.json", "--json") == (
        f"cannot write --json {afile / 'sub' / 'r.json'}: {afile} is a file, not a folder")


def test_a_second_log_is_refused_not_taken_in_place_of_the_first(log, tmp_path, capsys, refused_first):
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--log", str(log), "--log", str(tmp_path / "other.log")])
    assert exit_.value.code == 2 and "--log given twice: verify recounts one log; give a rotated log as one file" in capsys.readouterr().err


def test_a_folder_given_as_the_log_is_called_a_folder(tmp_path, capsys, refused_first):
    code = main(["verify", "--log", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--log {tmp_path} is a folder" in err and "no such log file" not in err, err


def test_a_log_it_cannot_read_is_one_line(log, monkeypatch, capsys):
    real_open = Path.open

    def refused(self, *args, **kwargs):  # as for a file without read permission (the tests may run as root)
        if self == log:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read the log {log}: Permission denied" in err and "Traceback" not in err, err


def test_a_compressed_log_is_refused_with_how_to_give_it(tmp_path, capsys):
    import gzip

    from logpipe.commands.verify import DECOMPRESS_TO_STDOUT
    from logpipe.producer.source import _COMPRESSED_MAGIC

    assert set(DECOMPRESS_TO_STDOUT) == {kind for _, kind in _COMPRESSED_MAGIC}  # a command for each format
    log = tmp_path / "access.log.gz"
    log.write_bytes(gzip.compress(b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n'))
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and "is gzip-compressed" in err and f"--log <(zcat {log})" in err, err


def test_a_log_read_from_a_pipe_is_taken(tmp_path, monkeypatch, capsys, free_ports):
    """`--log <(zcat access.log.gz)`: the recount reads it once, in one process; the command refused it as no
    file. (With HDFS down here, it gets as far as looking for the results.)"""
    import os

    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "1")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = main(["verify", "--log", str(fifo)])
    err = capsys.readouterr().err
    assert code == 1 and "no such log file" not in err and f"127.0.0.1:{port}" in err, err


def test_hdfs_down_is_one_line_that_says_what_to_check(log, monkeypatch, capsys, free_ports):
    """...and the wait is said as it begins (it was a silent minute), with the setting that sets its length."""
    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "1")
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and f"HDFS at http://127.0.0.1:{port} not ready" in err and "stack status" in err, err
    assert "LOGPIPE_CONNECT_TIMEOUT_S sets this wait" in err and "Traceback" not in err
    assert "not ready (" in err and "waiting up to 1s" in err, err  # the log line as the wait begins


def test_kafka_down_is_one_line_said_before_the_recount(log, monkeypatch, capsys, free_ports):
    """With no broker at LOGPIPE_KAFKA_BOOTSTRAP, verify recounted the log, waited 30 s on the alerts topic and
    reported the alerts as a MISMATCH, as if the results were wrong."""
    import logpipe.verify
    from logpipe.commands import verify as command

    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("LOGPIPE_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setattr(command, "results_problem", lambda s: None)  # as if HDFS had answered
    monkeypatch.setattr(logpipe.verify, "verify_run", lambda *a, **k: pytest.fail("recounted before refusing"))
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and f"Kafka at 127.0.0.1:{port} not ready" in err and "alerts topic" in err, err
    assert "stack status" in err and "MISMATCH" not in err and "Traceback" not in err


def test_the_root_s_record_decides_the_alerts_topic_and_a_lost_topic_says_how_to_send_again():
    """verify has no flags for what the root records (the window, the rules, the alerts topic): the record
    always wins, so such a flag would do nothing. When none of the root's alerts is on its topic, the report
    says the topic lost them and how to send them again."""
    from logpipe.cli import build_parser
    from logpipe.commands.verify import kafka_text

    for flag, value in (("--alerts-topic", "try-alerts"), ("--window", "1 minute"), ("--rate-limit-ceiling", "5")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["verify", "--log", "x.log", flag, value])
    wrong = kafka_text({"topic": "alerts", "published": 0, "missing": 3, "copies": 0})
    assert "3 not published" in wrong and "_commits/alerts-kafka/" in wrong and "stream --until-done" in wrong
    some = kafka_text({"topic": "alerts", "published": 2, "missing": 1, "copies": 0})
    assert "1 not published" in some and "_commits/alerts-kafka/" not in some
    shared = kafka_text({"topic": "alerts", "published": 3, "missing": 0, "copies": 1, "other_alerts": 2})
    assert "1 copies" in shared and "2 alerts that are not this root's" in shared


def test_hdfs_gone_during_the_checks_is_one_line_not_a_traceback(log, monkeypatch, capsys, free_ports):
    """HDFS answered the pre-check, then stopped answering (here: the checks read from a port nothing listens on):
    the WebHDFS client's connection error ended verify with a traceback; it is one line saying what to check."""
    from logpipe.commands import verify as command

    port = free_ports(1)[0]
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(command, "results_problem", lambda s: None)  # as if HDFS had answered it
    monkeypatch.setattr(command, "kafka_problem", lambda s: None)  # and Kafka
    monkeypatch.setattr("logpipe.results.settings_of_results", lambda s: (s, []))
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and "a read failed during the checks (ConnectionError" in err, err
    assert f"HDFS at http://127.0.0.1:{port} answers" in err and "Traceback" not in err


def test_a_recount_worker_that_died_is_one_line(log, monkeypatch, capsys):
    import logpipe.verify
    from logpipe.commands import verify as command
    from logpipe.verify.processes import WorkerDied

    def died(*_a, **_k):
        raise WorkerDied("worker process 2 of 2 ended without a result (exit code -9; ...)")

    monkeypatch.setattr(command, "results_problem", lambda s: None)
    monkeypatch.setattr(command, "kafka_problem", lambda s: None)
    monkeypatch.setattr("logpipe.results.settings_of_results", lambda s: (s, []))
    monkeypatch.setattr(logpipe.verify, "verify_run", died)
    assert main(["verify", "--log", str(log)]) == 1
    err = capsys.readouterr().err
    assert f"logpipe verify: the recount of {log} failed: worker process 2 of 2" in err and "Traceback" not in err


@pytest.mark.parametrize(("error", "what"), [
    (PermissionError("Permission denied: user=someone, access=EXECUTE"), "may read it"),
    (ConnectionRefusedError("Connection refused"), "`logpipe stack status`"),
])
def test_a_results_root_it_cannot_read_is_one_line_with_what_to_check(log, monkeypatch, capsys, error, what):
    """The root's folder answered with an error, not "not there" (a folder the HDFS user may not read; HDFS gone
    since it answered the wait): one line naming the root, the error and what to check, before the recount."""
    from fsspec.implementations.local import LocalFileSystem

    import logpipe.results
    from logpipe import health

    class Refusing(LocalFileSystem):
        def exists(self, path, **kwargs):
            raise error

    monkeypatch.setattr(health, "wait_until", lambda *a, **k: None)  # HDFS answered
    monkeypatch.setattr(logpipe.results, "webhdfs_fs", lambda s: Refusing())
    monkeypatch.setattr("logpipe.verify.verify_run", lambda *a, **k: pytest.fail("recounted"))
    assert main(["verify", "--log", str(log), "--hdfs-root", "/results"]) == 1
    err = capsys.readouterr().err
    assert f"logpipe verify: cannot read /results on HDFS ({type(error).__name__}: {error}): " in err, err
    assert what in err and "Traceback" not in err


def _verify_reporting(monkeypatch, **report: object) -> None:
    """`logpipe verify` with its checks replaced by a failed report holding `report`'s fields (the table shown as
    "the table"): what the command prints around a given report."""
    from types import SimpleNamespace

    import logpipe.verify
    from logpipe.commands import verify as command

    fields = {"ok": False, "verdict": "mismatch", "windows_by_status": {"ok": True, "examples": {}}, "alerts": {},
              "to_json": lambda: "{}"}
    monkeypatch.setattr(command, "results_problem", lambda s: None)
    monkeypatch.setattr(command, "kafka_problem", lambda s: None)
    monkeypatch.setattr("logpipe.results.settings_of_results", lambda s: (s, []))
    monkeypatch.setattr(logpipe.verify, "verify_run", lambda *a, **k: SimpleNamespace(**(fields | report)))
    monkeypatch.setattr(command, "report_table", lambda args, r: "the table")


def test_a_mismatch_prints_its_first_differences_and_where_the_rest_are(log, monkeypatch, capsys, tmp_path):
    """A report that fails names its first differences under the table and where the others are (the --json
    report, or the flag that writes it): the table alone gave only how many."""
    windows = {"ok": False, "examples": {"wrong": [{"window_start": 1084859920, "host": "10.0.0.1",
                                                    "count_expected": 2, "count_actual": 3}]}}
    _verify_reporting(monkeypatch, windows_by_host=windows)
    assert main(["verify", "--log", str(log)]) == 1
    out = capsys.readouterr().out
    assert "window starting 2004-05-18 05:58:40, host 10.0.0.1: the log's 2, the table's 3" in out, out
    assert "--json FILE writes the report" in out and "MISMATCH" in out
    assert main(["verify", "--log", str(log), "--json", str(tmp_path / "r.json")]) == 1
    assert f"every example: the report in {tmp_path / 'r.json'}" in capsys.readouterr().out


def test_results_of_another_log_are_said_in_one_line_above_the_verdict(log, monkeypatch, capsys):
    """`verify --log mylog.log` against the demo's root: the MISMATCH table's window differences all follow from
    the results being another log's, which the report said only inside the accounting cell. One line above the
    verdict now says so, naming the log the demo recorded for the root."""
    hint = "The job's results hold 342,620 distinct source lines, more than the 4,016 of mylog.log: is it ..."
    accounting = {"ok": False, "other_log": hint, "recorded_log": "/work/data/access.log"}
    _verify_reporting(monkeypatch, accounting=accounting, windows_by_host={"ok": False, "examples": {}})
    assert main(["verify", "--log", str(log)]) == 1
    lines = capsys.readouterr().out.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("the results hold another number of lines than the log")]
    assert len(said) == 1 and lines[said[0] + 1].endswith("MISMATCH"), lines
    assert "(`logpipe demo` made this root's results from /work/data/access.log): " + hint == \
        lines[said[0]].removeprefix("the results hold another number of lines than the log ")
    accounting.update(other_log=None)  # the same number of lines: nothing said (the table tells what differs)
    assert main(["verify", "--log", str(log)]) == 1
    assert "another log" not in capsys.readouterr().out


def test_the_truth_row_says_what_its_delays_are_measured_in() -> None:
    """The ground truth's row gave "raised with the job's input read up to max 3980 s after it (micro-batch
    size)", which a reviewer could not read: it says now that it is log time, read by the batch that raised it."""
    from logpipe.commands.verify import truth_text

    tr = {"recall": 1.0, "precision": 1.0, "false_positives": 0, "expected_alerts": 2,
          "incidents": [{"expected": [{"delay_s": 16, "raised_after_s": 3980}, {"delay_s": 8, "raised_after_s": 12}]}]}
    text = truth_text(tr)
    assert "first alerted window ends max 16 s after an incident starts" in text
    assert "raised by a micro-batch that had read the log up to max 3980 s (log time) past the incident's start" in text
    del tr["incidents"][0]["expected"][0]["raised_after_s"], tr["incidents"][0]["expected"][1]["raised_after_s"]
    assert "raised by" not in truth_text(tr)  # a job that recorded no read bounds: no such figure
