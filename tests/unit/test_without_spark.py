"""Without the spark extra (the producer's and the notebook's images): the producer, verify, health checks and
results readers import and run; the commands that run Spark say at once what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

# an interpreter in which pyspark and py4j cannot be imported, as when they are not installed
NO_SPARK = """
import importlib.abc, sys
class NoSpark(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pyspark", "py4j"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoSpark())
"""


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_SPARK + code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


def test_the_producer_side_runs_without_pyspark(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    code = f"""
import importlib, pkgutil, sys
import logpipe.commands as pkg
for m in ("logpipe.producer.run", "logpipe.verify", "logpipe.results", "logpipe.health", "logpipe.topics",
          "logpipe.stack.services", "logpipe.bench", *(f"logpipe.commands.{{c.name}}" for c in
          pkgutil.iter_modules(pkg.__path__))):
    importlib.import_module(m)
assert "pyspark" not in sys.modules
from logpipe.cli import main
rc = main(["generate", "--lines", "3000", "--seed", "3", "--out", {str(log)!r}])
from logpipe.producer.source import LogSource  # the producer reads the log
print(rc, "pyspark" in sys.modules)
"""
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["0", "False"]
    assert len(log.read_bytes().splitlines()) == 3000
    assert json.loads(Path(f"{log}.truth.json").read_text())["total_lines"] == 3000


def test_verify_recounts_without_any_code_of_the_streaming_job(tmp_path: Path) -> None:
    """verify is the independent check of the job's numbers: its recount may share the line format
    (logpipe.logformat, checked against hand-written tables in test_logformat.py) but no module of the job, so a
    bug in the job's parsing, windows, repeats or alert code cannot make both sides agree."""
    log = tmp_path / "a.log"
    code = f"""
import importlib, pkgutil, sys
import logpipe.verify as pkg
from logpipe.cli import main
main(["generate", "--lines", "3000", "--seed", "3", "--out", {str(log)!r}])
for m in ("logpipe.commands.verify", *(f"logpipe.verify.{{c.name}}" for c in pkgutil.iter_modules(pkg.__path__))):
    importlib.import_module(m)
from pathlib import Path
from logpipe.verify.recount import count_log
counts = count_log(Path({str(log)!r}), 20, 10)
print(counts.lines, sorted(m for m in sys.modules if m.startswith(("logpipe.streaming", "pyspark"))))
"""
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines, loaded = r.stdout.splitlines()[-1].split(" ", 1)
    assert (int(lines), loaded) == (3000, "[]")


@pytest.mark.parametrize("command", [["stream", "--until-done"], ["demo"], ["bench", "--size", "1MB"]])
def test_a_spark_command_without_pyspark_says_what_to_install_before_anything_else(tmp_path: Path,
                                                                                   command: list[str]) -> None:
    # nothing listens on this Kafka address: a command that went on would fail (or wait) on it, not on pyspark
    code = f"""
import os
os.environ["LOGPIPE_KAFKA_BOOTSTRAP"] = "127.0.0.1:9"
os.environ["LOGPIPE_RUN_DIR"] = {str(tmp_path / 'run')!r}
from logpipe.cli import main
raise SystemExit(main({command!r}))
"""
    r = _run(code, tmp_path)
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1] == (
        f"logpipe {command[0]}: needs pyspark, which is not installed here: pip install 'logpipe[spark]' "
        "(`make setup` installs it; in compose, the streaming image has it)")
    assert "Traceback" not in r.stderr and "warning" not in r.stderr  # every setting above is one
    assert not (tmp_path / "run").exists()  # nothing started
