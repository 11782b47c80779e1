""".ci/deps on a machine that lacks things: what it finds missing, and the Python it refuses (on a PATH of stand-ins,
without apt-get, so nothing is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

DEPS = PROJECT_ROOT / ".ci" / "deps"
TOOLS = ("bash", "sed", "head", "id", "env", "cat")  # what the script runs besides the commands it checks


def _machine(tmp_path: Path, **fakes: str) -> dict[str, str]:
    """An environment whose PATH holds only the shell's tools and the given stand-ins (name -> script body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


JAVA_17 = "echo 'openjdk version \"17.0.9\" 2023-10-17' >&2"
PY_OK = 'exec "$REAL_PYTHON" "$@"'


def _deps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash"), str(DEPS), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_machine_with_everything_changes_nothing(tmp_path):
    import sys

    env = _machine(tmp_path, java=JAVA_17, mvn=":", make=":", python3=PY_OK)
    r = _deps({**env, "REAL_PYTHON": sys.executable})
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r


def test_missing_make_python_and_an_old_java_are_named(tmp_path):
    """A fresh Debian may lack make and python3 (the CI runs .ci/deps before make for that); without apt-get here,
    it says what is missing and exits 1."""
    env = _machine(tmp_path, java="echo 'openjdk version \"11.0.2\"' >&2", mvn=":")
    r = _deps(env)
    assert r.returncode == 1, r
    assert "missing java 17+ (found 11) make python3: installing with apt-get" in r.stdout
    assert "no apt-get here" in r.stderr


def test_a_python_older_than_3_11_is_refused_with_what_to_do(tmp_path):
    old = "[ \"$1\" = -c ] && case \"$2\" in *version_info*) exit 1 ;; *python_version*) echo 3.9.2 ;; esac"
    env = _machine(tmp_path, java=JAVA_17, mvn=":", make=":", python3=old)
    r = _deps(env)
    assert r.returncode == 1, r
    assert "python3 is Python 3.9.2; logpipe needs 3.11+" in r.stderr and "PYTHON=" in r.stderr


@pytest.mark.parametrize("home", ["old", "none", "good"])
def test_the_java_the_stack_runs_is_checked_java_home_first(tmp_path, home):
    """The stack runs $LOGPIPE_JAVA_HOME/bin/java, else $JAVA_HOME's, before the `java` on PATH
    (stack.java.java_binary): deps checked only PATH's, so a JAVA_HOME of Java 11 passed and `stack up` failed, and
    one of Java 17 with no java on PATH had a JDK installed that nothing used. A review's finding."""
    import sys

    env = _machine(tmp_path, java="echo 'openjdk version \"11.0.2\"' >&2", mvn=":", make=":", python3=PY_OK)
    jdk = tmp_path / "jdk"
    if home != "none":
        (jdk / "bin").mkdir(parents=True)
        (jdk / "bin" / "java").write_text(f"#!{shutil.which('bash')}\n"
                                          + (JAVA_17 if home == "good" else "echo 'version \"11.0.2\"' >&2") + "\n")
        (jdk / "bin" / "java").chmod(0o755)
    r = _deps({**env, "REAL_PYTHON": sys.executable, "JAVA_HOME": str(jdk)})
    if home == "good":  # PATH's java 11 is not what the stack runs
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    else:
        assert r.returncode == 1 and "apt-get" not in r.stdout, r
        assert f"JAVA_HOME={jdk} " + ("is Java 11; Kafka 4 and Spark 4 need 17+" if home == "old"
                                      else "has no bin/java") in r.stderr, r


def test_a_java_still_too_old_after_installing_a_jdk_is_an_error_naming_what_to_set(tmp_path):
    """A Java 11 first on PATH that Debian's alternatives do not manage stays the `java` run after the JDK is
    installed: deps exited 0 and `stack up` failed later. It now checks again and names LOGPIPE_JAVA_HOME."""
    import sys

    env = _machine(tmp_path, java="echo 'openjdk version \"11.0.2\"' >&2", mvn=":", make=":", python3=PY_OK,
                   sudo='exec "$@"', grep=f'exec {shutil.which("grep")} "$@"',
                   **{"apt-cache": 'echo "  Candidate: 17.0.9+9-1"',
                      "apt-get": f'echo "apt-get $*" >> {tmp_path}/apt.log'})
    r = _deps({**env, "REAL_PYTHON": sys.executable})
    assert r.returncode == 1, r
    assert "install -y openjdk-17-jdk-headless" in (tmp_path / "apt.log").read_text()
    assert "installed openjdk-17-jdk-headless, but `java` is still 11" in r.stderr and "LOGPIPE_JAVA_HOME" in r.stderr, r
