"""In CI (CI=true) a skipped or xfailed test fails the run (tests/conftest.py): a test that did not run must not
pass for one that did. Checked on a pytest run of its own, with the suite's conftest and pytest settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

TESTS = '''
import pytest

pytestmark = pytest.mark.unit


def test_runs():
    assert 1 + 1 == 2


def test_skipped():
    pytest.skip("a service is missing")


@pytest.mark.xfail(reason="known bug")
def test_xfailed():
    assert False
'''


def _run(tmp_path: Path, ci: str | None, body: str, **modules: str) -> subprocess.CompletedProcess:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    shutil.copy(PROJECT_ROOT / "tests" / "conftest.py", suite / "conftest.py")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", suite / "pyproject.toml")  # markers, xfail_strict
    (suite / "test_some.py").write_text(body)
    for name, text in modules.items():
        (suite / f"{name}.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)], cwd=suite,
                          env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_or_xfail_fails_the_run_in_ci_only(tmp_path: Path) -> None:
    r = _run(tmp_path, "true", TESTS)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2 test(s) skipped or xfailed" in r.stderr
    assert "test_some.py::test_skipped" in r.stderr and "test_some.py::test_xfailed" in r.stderr
    r = _run(tmp_path, None, TESTS)  # outside CI a skip is reported (-ra), not a failure
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 passed, 1 skipped, 1 xfailed" in r.stdout


def test_in_ci_a_run_without_skips_passes_and_an_unexpected_pass_fails(tmp_path: Path) -> None:
    r = _run(tmp_path, "true", TESTS.split("\n\ndef test_skipped")[0])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = _run(tmp_path, None, TESTS.replace("assert False", "assert True"))  # xfail_strict: XPASS fails
    assert r.returncode == 1 and "XPASS(strict)" in r.stdout, r.stdout[-2000:]


def test_in_ci_a_module_skipped_as_it_is_collected_fails_the_run(tmp_path: Path) -> None:
    """A whole module skipped at import (pytest.skip(allow_module_level=True), importorskip) never reaches the
    per-test reports: the collection's report counts it."""
    passing = TESTS.split("\n\ndef test_skipped")[0]
    skipped = ('import pytest\n\npytest.skip("no broker here", allow_module_level=True)\n\n\n'
               'def test_never_collected():\n    assert False\n')
    missing = 'import pytest\n\npytest.importorskip("a_module_that_is_not_installed")\n'
    r = _run(tmp_path, "true", passing, test_module_skip=skipped, test_import_skip=missing)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2 test(s) skipped or xfailed" in r.stderr
    assert "test_module_skip.py" in r.stderr and "test_import_skip.py" in r.stderr
    r = _run(tmp_path, None, passing, test_module_skip=skipped, test_import_skip=missing)
    assert r.returncode == 0 and "1 passed, 2 skipped" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
