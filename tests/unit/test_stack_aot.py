"""The AOT cache of Spark's JVM: where it lives, what makes another one, and when a Spark start is given it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def _jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    (home / "release").write_text(f'JAVA_VERSION="{version}"\nBUILD="{name}"\n')
    return home


def test_ci_runs_the_aot_tests_on_a_java_that_has_the_cache(ci_expects_aot_cache: bool) -> None:
    """The AOT tests here and in tests/integration test the cache where Spark's Java has one (25 on), and only that
    nothing is made where it has not: in CI on a machine with a JDK 25 (its image has a Temurin 25), the first
    branch must be the one run, or the cache's training, its interruption and its use would go untested while
    every test passed. Where no JDK 25 is installed (a plain Debian 12: 17 at most), there is no cache."""
    from logpipe.config import load_settings
    from logpipe.stack.aot import aot_cache_file

    path = aot_cache_file(load_settings())
    if ci_expects_aot_cache:
        assert path is not None, (
            "CI found no Java >= 25 for Spark although one is installed under /usr/lib/jvm: Spark's Java lookup "
            "(logpipe.stack.java.spark_java_home) missed it, and the AOT cache tests would pass without testing it")
    else:  # either answer is right; the path, when given, is where `stack up` trains the cache
        assert path is None or path.suffix == ".aot"


def test_one_cache_per_jvm_build_and_options_and_none_before_java_25(tmp_path) -> None:
    """The cache's name holds a digest of the JVM build and options: another build, heap or collector needs
    another cache (the JVM refuses one made otherwise); Java 17/21 have no AOT cache, and the setting turns it off."""
    from logpipe.config import Settings
    from logpipe.stack.aot import aot_cache_file

    j25 = _jdk(tmp_path, "temurin-25", "25.0.3")
    s = Settings(run_dir=tmp_path / "run", spark_java_home=str(j25))
    path = aot_cache_file(s)
    assert path is not None and path.parent == tmp_path / "run" / "aot" and path.suffix == ".aot"
    assert aot_cache_file(s) == path  # stable
    others = {aot_cache_file(s.with_overrides(**change)) for change in (
        {"spark_driver_java_options": "-XX:+UseG1GC"}, {"spark_driver_memory": "8g"},
        {"spark_java_home": str(_jdk(tmp_path, "other-25", "25.0.3"))})}
    assert path not in others and len(others) == 3
    (j25 / "release").write_text('JAVA_VERSION="25.0.4"\n')  # the same home, updated in place
    assert aot_cache_file(s) != path
    assert aot_cache_file(s.with_overrides(spark_aot_cache=False)) is None
    assert aot_cache_file(s.with_overrides(spark_java_home=str(_jdk(tmp_path, "java-21", "21.0.2")))) is None


def test_the_option_is_given_only_when_the_cache_exists(tmp_path) -> None:
    from logpipe.config import Settings
    from logpipe.stack.aot import aot_cache_file, aot_java_option

    s = Settings(run_dir=tmp_path / "run", spark_java_home=str(_jdk(tmp_path, "temurin-25", "25.0.3")))
    assert aot_java_option(s) is None
    path = aot_cache_file(s)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cache")
    assert aot_java_option(s) == f"-XX:AOTCache={path}"


def test_a_training_that_fails_or_hangs_is_a_warning_once_and_gets_the_callers_settings(tmp_path, monkeypatch,
                                                                                        caplog) -> None:
    """The training's timeout was a traceback out of `stack up` (after the stack was up), its child read the
    settings from the environment alone (so `stack up --kafka-port ...` trained against the default ports), and a
    failed training ran again at every start. Now: a warning, the caller's settings, and one try until the marker
    the warning names is deleted. A training stopped by its timeout is stopped with its children (Spark's JVM ran
    on, orphaned), its partial cache file goes, and its topics and results root are removed."""
    import logging

    from logpipe.config import Settings
    from logpipe.stack import aot

    s = Settings(run_dir=tmp_path / "run", spark_java_home=str(_jdk(tmp_path, "temurin-25", "25.0.3")),
                 kafka_port=19999)
    (tmp_path / "run" / "logs").mkdir(parents=True)
    seen = tmp_path / "settings-seen.json"
    removed: list[str] = []
    # a training that hangs: it starts a child of its own (as the real one starts Spark's JVM) and writes part of
    # the cache file
    hang = (f"import shutil, subprocess, sys, time\nshutil.copy(sys.argv[2], {str(seen)!r})\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'aot-jvm-{os.getpid()}'])\n"
            "open(sys.argv[1], 'wb').write(b'part of a cache')\ntime.sleep(60)\n")
    monkeypatch.setattr(aot, "_training_command", lambda out, settings: [sys.executable, "-c", hang, str(out),
                                                                        str(settings)])
    monkeypatch.setattr(aot, "_remove_training_outputs", lambda s_, name: removed.append(name))
    monkeypatch.setattr(aot, "TRAINING_TIMEOUT_S", 3)
    with caplog.at_level(logging.WARNING, logger="logpipe.stack.aot"):
        assert aot.ensure_aot_cache(s, progress=lambda m: None) is None
        assert aot.ensure_aot_cache(s, progress=lambda m: None) is None
    assert Settings.model_validate_json(seen.read_text()) == s and len(removed) == 1  # tried once, its outputs removed
    assert removed[0].startswith("logpipe-aot-training-")
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"]) if f"aot-jvm-{os.getpid()}" in (p.info["cmdline"] or [])]
    for p in left:
        p.kill()
    assert left == [], "the training's child outlived its timeout"
    failed = aot.aot_cache_file(s).with_name(aot.aot_cache_file(s).name + ".failed")
    assert "not done in" in failed.read_text()
    assert str(failed) in caplog.text and "failed before" in caplog.text
    assert not list(failed.parent.glob("*.settings.json")) and not list(failed.parent.glob("*.tmp"))

    failed.unlink()  # as the warning says: the next start tries again
    monkeypatch.setattr(aot, "_training_command", lambda out, settings: [sys.executable, "-c", "raise SystemExit(3)"])
    assert aot.ensure_aot_cache(s, progress=lambda m: None) is None
    assert failed.read_text().startswith("exit 3")


def test_a_spark_jvm_started_with_a_cache_made_for_another_build_runs_and_says_so(tmp_path) -> None:
    """A cache the JVM cannot use (here: not a cache at all) costs nothing but a warning: Spark starts and works.
    So a stale cache can never stop the job."""
    from logpipe.config import load_settings
    from logpipe.stack.aot import aot_cache_file

    s = load_settings(run_dir=tmp_path / "run")
    path = aot_cache_file(s)  # None where Spark's Java is older than 25: then no option at all
    if path is not None:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not an AOT cache")
    code = """
import logging
logging.basicConfig(level=logging.INFO)
from logpipe.config import load_settings
from logpipe.spark import build_spark
spark = build_spark(load_settings(), "aot-test", kafka=False)
print("rows", spark.range(1000).count())
spark.stop()
"""
    env = {**os.environ, "LOGPIPE_RUN_DIR": str(tmp_path / "run")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rows 1000" in r.stdout
    if path is None:
        assert "AOTCache" not in r.stderr
    else:
        assert f"-XX:AOTCache={path}" in r.stderr  # given, ...
        assert "[aot]" in r.stdout + r.stderr  # ... refused by the JVM with a warning, and Spark ran on


def test_the_training_runs_on_the_native_stack_whatever_cluster_the_client_settings_name(tmp_path,
                                                                                          monkeypatch) -> None:
    """`stack up` trains the cache on the stack it just started: with LOGPIPE_KAFKA_BOOTSTRAP / LOGPIPE_HDFS_URL /
    LOGPIPE_WEBHDFS_URL naming another cluster (compose's), the training made its topics and results root there, or
    failed (and, marked failed, was not tried again) when that cluster was down."""
    from pyspark import SparkContext

    import logpipe.generator
    import logpipe.producer.run
    import logpipe.spark
    import logpipe.streaming.run
    from logpipe.config import Settings
    from logpipe.stack import aot

    s = Settings(run_dir=tmp_path / "run", kafka_port=19092, namenode_rpc_port=18020, namenode_http_port=19870,
                 kafka_bootstrap="kafka:9092", hdfs_url="hdfs://namenode:8020", webhdfs_url="http://namenode:9870")
    used: list[Settings] = []
    monkeypatch.setattr(logpipe.generator, "generate", lambda *a, settings, **k: used.append(settings) or
                        type("Truth", (), {"incidents": []})())
    monkeypatch.setattr(logpipe.producer.run, "produce_file", lambda s_, *a, **k: used.append(s_))
    monkeypatch.setattr(logpipe.spark, "build_spark", lambda s_, *a, **k: used.append(s_))
    monkeypatch.setattr(logpipe.streaming.run, "run_stream", lambda s_, **k: used.append(s_))
    monkeypatch.setattr(aot, "_remove_training_outputs", lambda s_, name: used.append(s_))
    monkeypatch.setattr(SparkContext, "_gateway", None)
    aot.train(tmp_path / "cache.aot", s)
    assert len(used) == 5
    assert {(u.kafka_address, u.hdfs_address, u.webhdfs_address) for u in used} == {
        ("127.0.0.1:19092", "hdfs://127.0.0.1:18020", "http://127.0.0.1:19870")}
    assert all(u.topic.startswith("logpipe-aot-training-") for u in used)


def test_stack_down_stops_a_training_a_killed_stack_up_left_running(tmp_path, monkeypatch) -> None:
    """`stack up` killed outright (SIGKILL, a terminal's hang-up) during the training left the training and its
    Spark JVM running in their own session, writing a cache file nothing would rename, with a topic and HDFS
    folder of their own. `stack down` now stops that process group and removes what it made; a process of
    another run folder's training is left alone."""
    import time

    import psutil

    from logpipe.config import Settings
    from logpipe.stack import aot, services
    from logpipe.stack.layout import Layout

    s = Settings(run_dir=tmp_path / "run")
    other = Settings(run_dir=tmp_path / "other")
    removed: list[str] = []
    monkeypatch.setattr(aot, "_remove_training_outputs", lambda s_, name: removed.append(name))
    marker = f"orphan-jvm-{os.getpid()}"
    # the training as it is started (`-m logpipe.stack.aot <out> <settings>`), with a child as its Spark JVM
    code = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
            f"{marker!r}])\nopen(sys.argv[-2], 'wb').write(b'part of a cache')\ntime.sleep(60)\n")
    pids = []
    for settings in (s, other):
        folder = Layout(settings.run_dir).aot
        folder.mkdir(parents=True)
        out, settings_file = folder / "spark-x.aot.123.tmp", folder / "spark-x.aot.123.settings.json"
        settings_file.write_text("{}")
        # started by a process that then ends, as `stack up` was killed: an orphan, in a session of its own
        spawn = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {code!r}, 'logpipe.stack.aot', "
                 f"{str(out)!r}, {str(settings_file)!r}], start_new_session=True, stdout=subprocess.DEVNULL, "
                 "stderr=subprocess.DEVNULL)\nprint(p.pid)\n")
        pids.append(int(subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True,
                                       check=True).stdout))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len([p for p in psutil.process_iter(["cmdline"])
                                                        if marker in (p.info["cmdline"] or [])]) == 2
                                                   and (Layout(s.run_dir).aot / "spark-x.aot.123.tmp").exists()):
            time.sleep(0.1)
        said: list[str] = []
        services.down(s, progress=said.append)
        assert removed == [f"logpipe-aot-training-{pids[0]}"]
        assert f"stopping the AOT training (pid {pids[0]})" in said[0], said
        assert not _running_in_group(pids[0])  # the whole group ended (zombies wait for init to reap them)
        assert list(Layout(s.run_dir).aot.iterdir()) == []  # its partial cache and settings file gone
        assert psutil.pid_exists(pids[1]) and len(list(Layout(other.run_dir).aot.iterdir())) == 2
        jvms = [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
        assert len(jvms) == 1  # the other folder's: its "JVM" runs on, this one's went with its group
    finally:
        for pid in pids:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass


def _running_in_group(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run (not zombies)."""
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return out
