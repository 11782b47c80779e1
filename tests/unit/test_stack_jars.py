"""Resolving the native stack's classpaths (stack.jars) with a stand-in `mvn` on PATH: one Maven run at a time,
and a limit on each."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from logpipe.stack import jars

pytestmark = pytest.mark.unit


def _fake_mvn(bin_dir: Path, journal: Path, seconds: float) -> None:
    """An `mvn` that notes when it starts and ends (with its pom) and puts one jar where it was told; with
    seconds < 0 it hangs instead, as one process (the real mvn script execs its JVM)."""
    bin_dir.mkdir()
    script = bin_dir / "mvn"
    script.write_text(f"""#!/usr/bin/env bash
pom=""; out=""
prev=""
for a in "$@"; do
  [ "$prev" = "-f" ] && pom="$(basename "$a")"
  case "$a" in -DoutputDirectory=*) out="${{a#-DoutputDirectory=}}";; esac
  prev="$a"
done
echo "start $pom $(date +%s.%N)" >> {journal}
{"exec sleep 600" if seconds < 0 else f"sleep {seconds}"}
touch "$out/x.jar"
echo "end $pom $(date +%s.%N)" >> {journal}
""")
    script.chmod(0o755)


def test_two_classpaths_resolved_at_once_run_maven_one_after_the_other(tmp_path: Path, monkeypatch) -> None:
    """`stack up` in the background and a Spark session resolve different classpaths into one jars folder: on a
    fresh machine both Maven runs would fill the empty ~/.m2 at once (Maven 3.8 does not lock it), so the second
    waits for the first, and both get their jars."""
    journal = tmp_path / "journal"
    _fake_mvn(tmp_path / "bin", journal, 1.0)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    root = tmp_path / "jars"
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            jars.resolve(name, root)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("kafka", "spark-kafka")]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(30)
    assert not errors, errors
    events = [line.split() for line in journal.read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end", "start", "end"], events  # never two at once
    assert {e[1] for e in events} == {"kafka.xml", "spark-kafka.xml"}
    assert all(jars.is_resolved(n, root) and (root / n / "x.jar").is_file() for n in ("kafka", "spark-kafka"))
    journal.unlink()
    jars.resolve("kafka", root)  # resolved: no Maven run
    assert not journal.exists()


def test_a_maven_run_over_its_limit_is_stopped_with_a_hint(tmp_path: Path, monkeypatch) -> None:
    """A Maven that hangs (an unreachable mirror) is stopped at the limit, with the command to watch it by; the
    classpath stays unresolved, so the next call runs Maven again."""
    journal = tmp_path / "journal"
    _fake_mvn(tmp_path / "bin", journal, -1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setattr(jars, "MVN_TIMEOUT_S", 1)
    started = time.monotonic()
    with pytest.raises(jars.StackError, match=r"resolving the hdfs jars took over 1 s") as info:
        jars.resolve("hdfs", tmp_path / "jars")
    assert time.monotonic() - started < 10
    assert "-q" not in str(info.value).split() and "copy-dependencies" in str(info.value)
    assert not jars.is_resolved("hdfs", tmp_path / "jars")
