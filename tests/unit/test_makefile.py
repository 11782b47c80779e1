"""The Makefile's stop and clean targets in a checkout without its virtualenv: they install nothing, and never
say "nothing to stop" over a run folder whose services may still run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit


def _make(target: str, tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(PROJECT_ROOT), target, f"VENV={tmp_path / 'no-venv'}",
                           f"LOGPIPE_RUN_DIR={run_dir}"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", ["stack-down", "clean"])
def test_without_the_virtualenv_service_records_are_not_passed_over(tmp_path: Path, target: str) -> None:
    """`rm -rf .venv` with the stack up, then `make stack-down`: it said "nothing to stop" and exited 0 while the
    JVMs ran on. With records under pids/ both targets fail saying what to do; with none, there is nothing to do."""
    run_dir = tmp_path / "run"
    (run_dir / "pids").mkdir(parents=True)
    (run_dir / "pids" / "kafka.json").write_text('{"pid": 1}')
    proc = _make(target, tmp_path, run_dir)
    assert proc.returncode != 0 and "holds service records" in proc.stderr and "make setup" in proc.stderr, proc
    assert (run_dir / "pids" / "kafka.json").is_file()  # nothing deleted under services that may run

    (run_dir / "pids" / "kafka.json").unlink()
    proc = _make(target, tmp_path, run_dir)
    assert proc.returncode == 0, proc
    assert not (tmp_path / "no-venv").exists()  # nothing installed to stop or clean
    if target == "stack-down":
        assert "nothing to stop" in proc.stdout
    else:
        assert not run_dir.exists()
