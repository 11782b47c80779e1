"""`logpipe verify` against the real HDFS: a root without the job's results is said so, not reported as a mismatch
of every window."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_a_root_without_results_says_so(stack, unique, tmp_path):
    import os

    log = tmp_path / "access.log"
    log.write_bytes(b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 1\n')
    r = subprocess.run([sys.executable, "-m", "logpipe", "verify", "--log", str(log), "--hdfs-root",
                        f"/tests/never-streamed-{unique}"], env=os.environ, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"no results of the streaming job under /tests/never-streamed-{unique}" in r.stderr
    assert "logpipe stream --until-done" in r.stderr and "Traceback" not in r.stderr
