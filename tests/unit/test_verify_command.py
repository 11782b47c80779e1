"""`logpipe verify` refuses what it cannot check with one clear line, before it recounts the log."""

from __future__ import annotations

import socket

import pytest

from logpipe.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n')
    return path


def test_a_missing_truth_file_is_an_error_not_a_skipped_check(log, tmp_path, capsys):
    code = main(["verify", "--log", str(log), "--truth", str(tmp_path / "nope.truth.json")])
    assert code == 2 and "no such truth file" in capsys.readouterr().err


def test_hdfs_down_is_one_line_that_says_what_to_check(log, monkeypatch, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LOGPIPE_CONNECT_TIMEOUT_S", "1")
    code = main(["verify", "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and f"HDFS at http://127.0.0.1:{port} not ready" in err and "stack status" in err, err
    assert "Traceback" not in err
