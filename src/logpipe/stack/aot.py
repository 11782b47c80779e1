"""An ahead-of-time cache for Spark's JVM (Java 25+, JEP 483/514/515): made once by `stack up` from a small real
stream run, then given to every Spark start, which loads and links its classes from it and starts compiling from
its method profiles. Measured here: a stream run over 500 lines 52.5-54.5 s -> 36.3-38.7 s, CPU 87-91 -> 63-69 s.

The cache is only valid for the JVM build, classpath and JVM options it was made with: its file name holds a
digest of those, so a change (another JDK, pyspark, heap or collector) makes `stack up` train a new one. A cache
the JVM finds unusable anyway is ignored with a warning on the job's output (the JVM runs on without it)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from logpipe.config import Settings
from logpipe.stack.configs import native_kafka_address, native_webhdfs_address
from logpipe.stack.java import spark_java_home
from logpipe.stack.layout import Layout

log = logging.getLogger(__name__)

AOT_MIN_JAVA = 25  # -XX:AOTCacheOutput (one-step training, JEP 514) and method profiles (JEP 515)
# 20,000 lines over 11 minutes of log time: planted incidents (alerts), quarantined and out-of-order lines, so
# their code paths are in the cache too
TRAINING_LINES, TRAINING_RATE = 20_000, 30.0
TRAINING_TIMEOUT_S = 900


def aot_cache_file(s: Settings) -> Path | None:
    """Where the AOT cache for Spark's JVM with these settings lives (it may not exist yet); None if caching is
    off (LOGPIPE_SPARK_AOT_CACHE=false) or Spark's Java is older than AOT_MIN_JAVA."""
    if not s.spark_aot_cache or importlib.util.find_spec("pyspark") is None:
        return None
    home, release = spark_java_home(s)
    if release is None or release < AOT_MIN_JAVA:
        return None
    return Layout(s.run_dir).aot / f"spark-{_jvm_digest(s, Path(home))}.aot"


def _jvm_digest(s: Settings, java_home: Path) -> str:
    """What the cache depends on: the JVM build, Spark's classpath (pyspark's jars), and the JVM options."""
    import pyspark  # aot_cache_file checked that it is installed

    h = hashlib.sha256()
    h.update(str(java_home.resolve()).encode())
    try:
        h.update((java_home / "release").read_bytes())  # the exact build
    except OSError:
        pass
    h.update(pyspark.__version__.encode())
    jars = Path(pyspark.__file__).parent / "jars"
    h.update(str(jars.resolve()).encode())  # the cache holds the classpath's paths: another venv needs its own
    for jar in sorted(jars.glob("*.jar")):
        h.update(f"{jar.name}:{jar.stat().st_size}".encode())
    h.update(s.spark_driver_java_options.strip().encode())
    h.update(s.spark_driver_memory.encode())
    return h.hexdigest()[:16]


def aot_java_option(s: Settings) -> str | None:
    """The JVM option that gives a new Spark JVM its AOT cache, if one was made for these settings."""
    path = aot_cache_file(s)
    return f"-XX:AOTCache={path}" if path is not None and path.is_file() else None


def ensure_aot_cache(s: Settings, progress: Callable[[str], None]) -> Path | None:
    """Train the AOT cache for Spark's JVM unless it exists (or caching is off or unsupported): a stream run over a
    small generated log on its own topic and results root, both deleted after. The services must be up. A failed
    training is a warning, not an error: Spark then starts without the cache, as it always could."""
    path = aot_cache_file(s)
    if path is None or path.is_file():
        return path
    out = Layout(s.run_dir).log_file("aot-training")
    failed = path.with_name(path.name + ".failed")  # not tried again on every start: it takes minutes
    if failed.is_file():
        log.warning("Spark starts without an AOT cache: training it failed before (%s; see %s). Delete %s to try "
                    "again", failed.read_text().strip(), out, failed)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("spark-*"):  # made for another JDK, pyspark or JVM options
        old.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    progress(f"training the AOT cache for Spark's JVM (once per JDK, pyspark and JVM options; 1-2 minutes), "
             f"log {out}")
    t = time.monotonic()
    # the settings as `stack up` has them (CLI flags included), not as the environment alone gives them
    settings_file = path.with_name(f"{path.name}.{os.getpid()}.settings.json")
    settings_file.write_text(s.model_dump_json())
    try:
        with out.open("w") as f:
            # a session of its own: a timeout or Ctrl-C here stops the training with its Spark JVM (a child of
            # the child), and the topics and results root it made are removed here (its own clean-up did not run)
            proc = subprocess.Popen(_training_command(tmp, settings_file), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code: int | str = proc.wait(TRAINING_TIMEOUT_S)
            except BaseException as exc:
                _stop_training(s, proc)
                for left in path.parent.glob(f"{tmp.name}*"):  # what its JVM wrote as it was stopped
                    left.unlink(missing_ok=True)
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
                code = f"not done in {TRAINING_TIMEOUT_S} s"
    finally:
        settings_file.unlink(missing_ok=True)
    if code != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        for left in path.parent.glob(f"{tmp.name}*"):
            left.unlink(missing_ok=True)
        failed.write_text(f"exit {code} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.warning("training the AOT cache for Spark's JVM failed (exit %s): Spark starts without it, ~15 s slower "
                    "each time; see %s. Delete %s to try again at the next `stack up`", code, out, failed)
        return None
    tmp.replace(path)
    progress(f"AOT cache for Spark's JVM made in {time.monotonic() - t:.0f}s: {path} "
             f"({path.stat().st_size / 2**20:.0f} MiB)")
    return path


def _training_name(pid: int) -> str:
    """The topic and results root name of the training run in process `pid`."""
    return f"logpipe-aot-training-{pid}"


def _stop_training(s: Settings, proc: subprocess.Popen) -> None:
    """Stop a training run (its process group: the run and its Spark JVM) and remove what it made: its topics and
    its results root (the run's own clean-up does not run when it is stopped)."""
    _stop_group(proc.pid, proc.poll)  # poll reaps the run once it ended (a zombie still counts in its group)
    proc.wait()
    _remove_training_outputs(s, _training_name(proc.pid))


def _stop_group(pgid: int, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM a process group, then SIGKILL what is left of it after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 10  # the JVM may outlive the run by a moment
        while time.monotonic() < deadline and _group_alive(pgid):
            reap()
            time.sleep(0.2)
        if not _group_alive(pgid):
            break


def stop_orphaned_trainings(s: Settings, progress: Callable[[str], None]) -> list[int]:
    """Stop the training runs a `stack up` killed outright (SIGKILL, a closed terminal's hang-up) left running in
    their own session, with their Spark JVM, and remove what they made: their topics, HDFS folder, partial cache
    and settings file. Called by `stack down` under the stack lock, while the services still run: no `stack up`
    runs then, so any training of this run folder is such an orphan. Returns their pids."""
    import psutil

    aot_dir = str(Layout(s.run_dir).aot.resolve())
    found: list[tuple[int, list[str]]] = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "logpipe.stack.aot" in cmd and len(cmd) >= 2 and all(
                    str(Path(arg).resolve().parent) == aot_dir for arg in cmd[-2:]) and proc.pid == os.getpgid(proc.pid):
                found.append((proc.pid, cmd))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    for pid, cmd in found:
        progress(f"stopping the AOT training (pid {pid}) that a stopped `stack up` left running")
        _stop_group(pid)
        _remove_training_outputs(s, _training_name(pid))
        out, settings_file = Path(cmd[-2]), Path(cmd[-1])
        for left in out.parent.glob(f"{out.name}*"):  # the partial cache its JVM wrote
            left.unlink(missing_ok=True)
        settings_file.unlink(missing_ok=True)
    return [pid for pid, _ in found]


def _training_command(out: Path, settings_file: Path) -> list[str]:
    """The training run's command: this module's train(), in a process of its own."""
    return [sys.executable, "-m", "logpipe.stack.aot", str(out), str(settings_file)]


def _remove_training_outputs(s: Settings, name: str) -> None:
    """Delete the topics and the HDFS results root of the training run named `name`."""
    try:
        from hdfs import InsecureClient

        from logpipe.topics import delete_topics

        delete_topics(s, [name, f"{name}-alerts"])
        client = InsecureClient(s.webhdfs_address, user=s.hdfs_user_name, timeout=s.connect_timeout_s)
        client.delete(f"/tmp/{name}", recursive=True)
    except Exception as exc:  # noqa: BLE001 (left behind, said so: the training's names are its own)
        log.warning("could not remove the stopped AOT training's topic %s or HDFS folder /tmp/%s: %s", name, name,
                    exc)


def _group_alive(pgid: int) -> bool:
    """Whether process group `pgid` still has a member (a zombie, not yet reaped, counts: the caller reaps its own
    child; init reaps an orphan's)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train(out: Path, base: Settings) -> None:
    """The training run (in its own process): generate, produce and stream a small log with a JVM that writes its
    AOT cache to `out` when it exits; waits for that JVM to end, so `out` is complete on return. `base`: the
    settings of the `stack up` that asked for it."""
    import tempfile

    from pyspark import SparkContext

    from logpipe.generator import generate
    from logpipe.producer.run import produce_file
    from logpipe.spark import build_spark
    from logpipe.streaming.job import SPARK_CONF
    from logpipe.streaming.run import run_stream

    name = _training_name(os.getpid())
    with tempfile.TemporaryDirectory(prefix="logpipe-aot-") as tmp:
        # on the native stack `stack up` just started, whatever cluster the client settings name (compose's,
        # another one: `up` warns of that)
        s = base.with_overrides(topic=name, alerts_topic=f"{name}-alerts", hdfs_root=f"/tmp/{name}",
                                producer_state_dir=Path(tmp) / "positions", kafka_bootstrap=native_kafka_address(base),
                                hdfs_url=f"hdfs://{base.bind_host}:{base.namenode_rpc_port}",
                                webhdfs_url=native_webhdfs_address(base))
        access_log = Path(tmp) / "access.log"
        truth = generate(access_log, lines=TRAINING_LINES, rate=TRAINING_RATE, seed=1, settings=s, progress=False)
        log.info("training log: %d lines, %d incidents", TRAINING_LINES, len(truth.incidents))
        produce_file(s, access_log, progress=False)
        try:
            build_spark(s, "logpipe-aot-training", extra=SPARK_CONF, aot_output=out)  # run_stream reuses its JVM
            run_stream(s, until_done=True)
        finally:
            _remove_training_outputs(s, name)
    gateway = SparkContext._gateway
    if gateway is not None:  # the JVM writes the cache as it exits, which it does at the end of its stdin
        proc = gateway.proc
        gateway.shutdown()
        proc.stdin.close()
        proc.wait(600)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's connection chatter
    train(Path(sys.argv[1]), Settings.model_validate_json(Path(sys.argv[2]).read_text()))
