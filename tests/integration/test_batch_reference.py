"""The benchmark's batch reference (`python -m logpipe.streaming.batch`) counts what the stream counts: its window
tables on HDFS equal verify's pure-Python count of the same log, and it reads every line (its rate is the
yardstick of the stream/batch ratio, so a reference that skipped lines or counted other windows would flatter or
wrong the stream)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration


def test_the_batch_reference_counts_the_windows_verify_counts(stack: Settings, unique: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from logpipe.results import webhdfs_fs
    from logpipe.verify import count_log

    log = tmp_path / "access.log"
    env = {**os.environ, "LOGPIPE_HDFS_ROOT": f"/tests/batchref-{unique}"}
    gen = subprocess.run([sys.executable, "-m", "logpipe", "generate", "--lines", "30000", "--seed", "5",
                          "--malformed-share", "0.01", "--out", str(log), "--no-progress"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert gen.returncode == 0, gen.stderr
    with log.open("ab") as f:  # a lone CR inside a line: the pipeline splits at LF only, and so must the reference
        f.write(b'10.9.9.9 - - [2004-05-18 00:00:07] "GET /a\rb HTTP/1.1" 200 5\n')
    out = tmp_path / "batch.json"
    run = subprocess.run([sys.executable, "-m", "logpipe.streaming.batch", str(log), "--json", str(out)],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())

    s = stack.with_overrides(hdfs_root=env["LOGPIPE_HDFS_ROOT"])
    expected = count_log(log, 20, 10)
    assert (result["lines"], result["parsed"]) == (expected.lines, expected.parsed)
    assert expected.lines == 30001
    assert 0 < expected.parsed < expected.lines  # the log has malformed lines, which neither counts

    fs = webhdfs_fs(s)
    for table, key in (("by_host", "host"), ("by_status", "http_response")):
        t = ds.dataset(s.hdfs_path("_batch_reference", table), filesystem=fs, format="parquet").to_table()
        starts = pc.struct_field(t.column("window"), "start").cast(pa.int64())  # microseconds since the epoch
        got = {(w // 1_000_000, k, n) for w, k, n in zip(starts.to_pylist(), t.column(key).to_pylist(),
                                                         t.column("count").to_pylist())}
        frame = (expected.host if key == "host" else expected.status).frame()
        want = {(int(w), int(k) if key == "http_response" else k, int(n))
                for w, k, n in zip(frame["window_start"], frame[key], frame["count"])}
        assert got == want, (table, sorted(got ^ want)[:10])
        assert result["window_rows"][table] == len(got)  # what `bench` holds against verify's recount
        assert len(want) > 1000 if key == "host" else len(want) > 50
