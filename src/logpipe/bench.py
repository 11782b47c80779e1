"""`logpipe bench`: the whole pipeline on a big log, stage by stage, beside Kafka's Java producer and a batch Spark job."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from logpipe.config import PROJECT_ROOT, Settings
from logpipe.procstats import ResourceSampler
from logpipe.stack import java, services
from logpipe.stack.jars import classpath
from logpipe.stack.layout import Layout

log = logging.getLogger(__name__)


class BenchFailed(RuntimeError):
    """A stage of the benchmark failed or gave no usable figures: the message says which, with its log's path and
    last lines (`logpipe bench` prints it without a traceback)."""


@dataclass
class Stage:
    name: str
    wall_s: float
    lines: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "wall_s": round(self.wall_s, 2), "lines": self.lines,
                "lines_per_s": round(self.lines_per_s), **self.extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "logpipe", *args]


def size_label(size_bytes: int) -> str:
    """The size in run folders, topics and the generated log's name (an existing log of that name is reused):
    2.50GB, 250MB; the bytes when those would round (1.5 MB and 2 MB were both "2MB", and the second run
    measured the first one's log)."""
    if size_bytes >= 1e9 and size_bytes % 10_000_000 == 0:
        return f"{size_bytes / 1e9:.2f}GB"
    if size_bytes < 1e9 and size_bytes % 1_000_000 == 0:
        return f"{size_bytes // 1_000_000}MB"
    return f"{size_bytes}B"


def kill_stage(proc: subprocess.Popen) -> None:
    """Kill a stage started in a session of its own, with its children (the stream's Spark JVM), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # ended meanwhile, with its group
        pass
    proc.wait()


# how often a running stage's last output line is logged (its output goes to a file of its own)
PROGRESS_EVERY_S = 30.0


def last_line(path: Path, tail_bytes: int = 4096) -> str:
    """The last non-empty line of the file at `path` ("(none yet)" if none), from its last `tail_bytes` bytes."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(none yet)"
    return lines[-1][:300] if lines else "(none yet)"


def run_stage(name: str, cmd: list[str], env: dict[str, str], sampler: ResourceSampler, lines: int,
              log_dir: Path, ok_codes: tuple[int, ...] = (0,)) -> Stage:
    """Run one stage as a subprocess, watched by the sampler; raise with the log tail if it fails (an exit code
    not in ok_codes)."""
    log_path = log_dir / f"{name}.log"
    shown = " ".join(a if len(a) < 200 else a[:60] + "..." for a in cmd[2:])  # a classpath is not worth reading
    log.info("stage %s: %s (its output: %s)", name, shown, log_path)
    services_before = sampler.services_cpu_s()
    t = time.monotonic()
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                start_new_session=True)
        try:  # from its start: in a session of its own, a Ctrl-C reaches it only through kill_stage
            sampler.watch(name, proc.pid)
            while True:
                try:
                    code = proc.wait(PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:  # a long stage: show where it is
                    log.info("stage %s: %.0fs so far; its last line: %s", name, time.monotonic() - t,
                             last_line(log_path))
        except BaseException:  # Ctrl-C, SIGTERM: the stage's figures are void; do not leave it running on its own
            kill_stage(proc)
            raise
    wall = time.monotonic() - t
    if code not in ok_codes:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchFailed(f"stage {name} failed (exit {code}); log {log_path}:\n{tail}")
    stage = Stage(name, wall, lines, {"services_cpu_s": services_cpu_since(sampler, services_before)})
    if lines:
        log.info("stage %s: %.1fs, %.0f lines/s", name, wall, stage.lines_per_s)
    else:  # generate: its lines are counted after it
        log.info("stage %s: %.1fs", name, wall)
    return stage


def services_cpu_since(sampler: ResourceSampler, before: dict[str, float]) -> dict[str, float]:
    """The CPU seconds each service (Kafka, NameNode, DataNode) used since `before` (sampler.services_cpu_s)."""
    return {name: round(cpu - before.get(name, 0.0), 2) for name, cpu in sampler.services_cpu_s().items()}


def run_pipeline(cmds: dict[str, list[str]], env: dict[str, str], sampler: ResourceSampler, lines: int,
                 log_dir: Path) -> Stage:
    """Run the stages in `cmds` at the same time (the producer and the stream, as the pipeline runs in
    production), each watched by the sampler and logged to pipeline-<name>.log; the Stage's wall time is from
    their start to the end of the last. Raises with the log tail of any that fails; the others are then killed."""
    procs: dict[str, tuple[subprocess.Popen, float]] = {}
    services_before = sampler.services_cpu_s()
    t = time.monotonic()
    try:
        for name, cmd in cmds.items():
            log.info("pipeline %s: %s", name, " ".join(cmd[2:]))
            with (log_dir / f"pipeline-{name}.log").open("w") as out:  # the child keeps its own handle
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                        start_new_session=True)
            procs[name] = (proc, time.monotonic())  # first: its own session, so only the finally below stops it
            sampler.watch(f"pipeline-{name}", proc.pid)
        walls: dict[str, float] = {}
        shown = time.monotonic()
        while len(walls) < len(procs):
            if time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                for name in procs.keys() - walls.keys():
                    log.info("pipeline %s: %.0fs so far; its last line: %s", name, shown - t,
                             last_line(log_dir / f"pipeline-{name}.log"))
            for name, (proc, started) in procs.items():
                if name in walls or proc.poll() is None:
                    continue
                walls[name] = time.monotonic() - started
                log.info("pipeline %s: done in %.1fs (exit %d)", name, walls[name], proc.returncode)
                if proc.returncode != 0:
                    path = log_dir / f"pipeline-{name}.log"
                    tail = "\n".join(path.read_text(errors="replace").splitlines()[-30:])
                    raise BenchFailed(f"pipeline stage {name} failed (exit {proc.returncode}); log {path}:\n{tail}")
            time.sleep(0.2)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                kill_stage(proc)
    stage = Stage("end-to-end (produce and stream at once)", time.monotonic() - t, lines,
                  {**{f"{name}_wall_s": round(w, 2) for name, w in walls.items()},
                   "services_cpu_s": services_cpu_since(sampler, services_before)})
    log.info("pipeline: %.1fs, %.0f lines/s", stage.wall_s, stage.lines_per_s)
    return stage


# the Java producer sends lines of the log, drawn at random from its first PAYLOAD_LINES (ProducerPerformance holds
# its payloads in memory): records of the same size and as compressible as ours. With --record-size it sent random
# letters, which lz4 barely compresses: more bytes per record than our producer sends
PAYLOAD_LINES = 100_000


def payload_sample(log_path: Path, out: Path, lines: int = PAYLOAD_LINES) -> int:
    """Write the first `lines` non-empty lines of the log to `out`, newline-separated (ProducerPerformance's
    --payload-file; it reads the file as UTF-8, and an empty payload would be a record our producer never sends);
    returns how many."""
    n = 0
    with log_path.open("rb") as src, out.open("wb") as dst:
        for line in src:
            line = line.rstrip(b"\r\n")
            if line:
                dst.write(line + b"\n")
                n += 1
                if n == lines:
                    break
    return n


def java_perf_command(s: Settings, topic: str, records: int, payload: Path) -> list[str]:
    """Kafka's ProducerPerformance: `records` records of lines drawn from `payload`, with our producer's settings."""
    lay = Layout(s.run_dir)
    return [java.java_binary(s), "-Xmx1g", f"-Dlog4j2.configurationFile={lay.conf / 'kafka' / 'log4j2.properties'}",
            "-cp", classpath(lay.jars / "kafka"), "org.apache.kafka.tools.ProducerPerformance",
            "--topic", topic, "--num-records", str(records), "--payload-file", str(payload),
            "--throughput", "-1", "--producer-props", f"bootstrap.servers={s.kafka_address}", "acks=all",
            f"compression.type={s.compression}", f"batch.size={s.batch_size}", f"linger.ms={s.linger_ms}"]


def java_producer_perf(s: Settings, topic: str, records: int, log_path: Path, sampler: ResourceSampler,
                       log_dir: Path) -> Stage:
    """Kafka's own ProducerPerformance with the same record count, lines of the same log and producer settings as
    ours (its topic made beforehand, as ours is by `produce`)."""
    from logpipe.producer.run import ensure_topic

    payload = log_dir / "java-payload.txt"
    sampled = payload_sample(log_path, payload)
    ensure_topic(s, topic)
    stage = run_stage("java-producer-perf", java_perf_command(s, topic, records, payload), dict(os.environ),
                      sampler, records, log_dir)
    payload.unlink()
    stage.extra["payload"] = f"lines drawn at random from the log's first {sampled:,}"
    stage.extra.update(java_perf_figures(log_dir / "java-producer-perf.log", records))
    return stage


def java_perf_figures(log: Path, records: int) -> dict[str, float]:
    """records_per_s and mb_per_s from ProducerPerformance's output in `log`; RuntimeError (with the output's tail)
    if it printed no final figures or delivered fewer than `records`: it exits 0 when sends fail (each failure a
    stack trace) and counts only the records delivered, so its rate would be that of a reference that lost some."""
    text = log.read_text(errors="replace")
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", text)
    tail = "\n".join(text.splitlines()[-20:])
    if not m:
        raise BenchFailed(f"ProducerPerformance printed no final figures (log {log}):\n{tail}")
    if int(m[-1][0]) != records:
        raise BenchFailed(f"ProducerPerformance delivered {int(m[-1][0]):,} of {records:,} records: its figures "
                           f"are not a reference (log {log}):\n{tail}")
    # its "MB/sec" is MiB/s (it divides by 1024 * 1024): MB/s here, as everywhere else in the results
    return {"records_per_s": float(m[-1][1]), "mb_per_s": round(float(m[-1][2]) * 1.048576, 2)}


def count_lines(path: Path) -> int:
    """The lines of a log as the producer sends them and verify counts them: a last line without a newline counts."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def batch_reference_problem(batch: dict[str, Any], report: dict[str, Any]) -> str | None:
    """What makes the batch reference's figures not those of the log, or None: its parsed lines and the rows of
    its two window tables against verify's recount of the same log (`report`; the rows only when verify excluded
    no late line, which the reference counts). A fast reference that counted wrong would flatter the stream's
    ratio in the other direction: it is a reference only if it did the work."""
    problems = []
    if batch["parsed"] != report["accounting"]["parsed"]:
        problems.append(f"{batch['parsed']:,} lines parsed, the recount {report['accounting']['parsed']:,}")
    if "window_rows" in batch and not report["accounting"].get("late_lines_excluded"):
        for name in ("by_host", "by_status"):
            want = report[f"windows_{name}"]["expected_rows"]
            if batch["window_rows"][name] != want:
                problems.append(f"{batch['window_rows'][name]:,} windows/{name} rows, the recount {want:,}")
    return "; ".join(problems) or None


def _require_report(report: Path, log_path: Path) -> None:
    """verify exits 1 on a mismatch and on a crash; only a mismatch leaves its report."""
    if not report.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchFailed(f"verify wrote no report ({report}); log {log_path}:\n{tail}")


# settings recorded with each result, and passed to every stage's process
REPORTED_SETTINGS = ("topic_partitions", "compression", "batch_size", "linger_ms", "spark_master",
                     "shuffle_partitions", "max_offsets_per_trigger", "window", "slide", "watermark")


@dataclass(frozen=True)
class BenchRun:
    """The names of one benchmark run: its output folder, log file, Kafka topics and HDFS roots."""

    stamp: str
    label: str
    run_dir: Path
    log_path: Path
    topic: str
    root: str

    @classmethod
    def new(cls, name: str, size_bytes: int, seed: int, data_dir: Path, out_dir: Path) -> BenchRun:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        label = size_label(size_bytes)
        # resolved: the stages run in the project folder (run_stage)
        return cls(stamp, label, out_dir.resolve() / f"run-{stamp}-{label}",
                   data_dir.resolve() / f"bench-{label}-seed{seed}.log",
                   f"{name}-{stamp}-{label}".replace(".", "_").replace("/", "-"), f"/{name}/{stamp}-{label}")

    def topics(self, reference: bool, pipeline: bool) -> list[str]:
        """The run's topics: the stages' log and alerts, the Java producer's, the pipeline's log and alerts."""
        return ([self.topic, self.topic + "-alerts"] + ([self.topic + "-java"] if reference else [])
                + ([self.topic + "-pipeline", self.topic + "-pipeline-alerts"] if pipeline else []))

    def roots(self, pipeline: bool) -> list[str]:
        return [self.root] + ([self.root + "-pipeline"] if pipeline else [])


def bench_one(s: Settings, size_bytes: int, client: str, *, data_dir: Path, out_dir: Path, seed: int = 1,
              reference: bool = True, pipeline: bool = True, idle_s: float = 5.0,
              keep_data: bool = False, name: str = "bench") -> dict[str, Any]:
    """One full benchmark run at one log size. Returns the result record (also written as JSON).

    The stages run one after the other, each measured alone: produce, stream --until-done (and the references).
    With `pipeline`, the pipeline then runs as in production into a fresh topic and HDFS root: the producer and
    `stream --until-idle idle_s` start together, and end to end is from their start to the stream's exit (its
    last windows written; the idle wait included). Both runs are verified.

    Once measured and verified exact, the run's Kafka topics and HDFS folders are deleted unless `keep_data` (each
    topic holds the whole log: a 2.5 GB run left about 7.5 GB in Kafka). A run that fails or mismatches keeps them,
    to look into."""
    run = BenchRun.new(name, size_bytes, seed, data_dir, out_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    # the stages run with the settings the result reports (a bench flag such as --shuffle-partitions reaches them)
    # each run publishes its alerts to topics of its own: verify reads the alerts topic from its start, and on a
    # shared one it saw every earlier run's alerts too (exact still, but its copies and other_alerts meant nothing)
    env = {**os.environ, **{f"LOGPIPE_{k.upper()}": str(getattr(s, k)) for k in REPORTED_SETTINGS},
           "LOGPIPE_TOPIC": run.topic, "LOGPIPE_ALERTS_TOPIC": run.topic + "-alerts", "LOGPIPE_HDFS_ROOT": run.root,
           "LOGPIPE_PRODUCER_CLIENT": client}
    log.info("benchmark %s: results and each stage's output (<stage>.log) in %s", run.label, run.run_dir)
    sampler = ResourceSampler().start()
    for row in services.status(s):
        if row["running"]:
            sampler.watch(row["service"], row["pid"], service=True)
    stages: list[Stage] = []
    try:
        lines, e2e_seq, e2e = _run_stages(s, run, client, env, sampler, stages, reference=reference,
                                          pipeline=pipeline, idle_s=idle_s, seed=seed, size_bytes=size_bytes)
    except BaseException as exc:  # keep what was measured: a late stage failing must not lose an hour's figures
        stats = sampler.stop()
        (run.run_dir / "partial.json").write_text(json.dumps({
            "date": run.stamp, "size_bytes": size_bytes, "client": client,
            "error": (str(exc) or type(exc).__name__).splitlines()[0],
            # kept for a look (a failed run's data is not deleted): where to find it, and what to delete after
            "topics": run.topics(True, True), "hdfs_roots": run.roots(True),
            "stages": [st.as_dict() for st in stages], "processes": {k: v.as_dict() for k, v in stats.items()},
            "peak_rss_mb_concurrent": round(sampler.peak_concurrent_mb, 1)}, indent=2, default=str))
        raise
    stats = sampler.stop()
    by = {st.name: st for st in stages}
    ratios = {}
    if "java-producer-perf" in by:
        ratios["producer_vs_java"] = round(by["produce"].lines_per_s / by["java-producer-perf"].lines_per_s, 3)
    if "batch-reference" in by:
        ratios["stream_vs_batch"] = round(by["stream"].lines_per_s / by["batch-reference"].lines_per_s, 3)
    result = {
        "date": run.stamp, "machine": machine_info(), "versions": versions(s), "client": client,
        "size_bytes": run.log_path.stat().st_size, "lines": lines, "log": str(run.log_path), "topic": run.topic,
        "hdfs_root": run.root, "settings": {k: getattr(s, k) for k in REPORTED_SETTINGS},
        # every setting the stages ran with (those not in REPORTED_SETTINGS reach them from the environment), and the
        # run's own parameters: results of two runs can be compared knowing all that differed
        "all_settings": json.loads(s.with_overrides(topic=run.topic, alerts_topic=run.topic + "-alerts",
                                                    hdfs_root=run.root, producer_client=client).model_dump_json()),
        "seed": seed, "idle_s": idle_s,
        "stages": [st.as_dict() for st in stages],
        "end_to_end": e2e.as_dict(),
        "end_to_end_sequential": e2e_seq.as_dict(),
        "ratios": ratios,
        "processes": {k: v.as_dict() for k, v in stats.items()},
        "peak_rss_mb_total": round(sum(v.peak_rss_mb for v in stats.values()), 1),  # sum of per-process peaks
        "peak_rss_mb_concurrent": round(sampler.peak_concurrent_mb, 1),  # all processes in one sample
        "verify": _read_report(run.run_dir / "verify.json"),
        "verify_pipeline": _read_report(run.run_dir / "verify-pipeline.json"),
        "run_data": "kept" if keep_data else "deleted",
    }
    if not keep_data:
        result["run_data"] = _drop_if_exact(s, run, result, reference=reference, pipeline=pipeline)
    (run.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _run_stages(s: Settings, run: BenchRun, client: str, env: dict[str, str], sampler: ResourceSampler,
                stages: list[Stage], *, reference: bool, pipeline: bool, idle_s: float, seed: int,
                size_bytes: int) -> tuple[int, Stage, Stage]:
    """Run the stages, appending each to `stages` as it ends: generate (if the log is missing), Kafka's Java
    producer, produce, stream, the batch reference, verify, then the pipeline and its verify. Returns the log's
    line count and the two end-to-end stages (one after the other; the pipeline's, or the first again)."""
    run_dir, log_path = run.run_dir, run.log_path
    t_gen = None
    if not log_path.exists():
        t_gen = run_stage("generate", _cli("generate", "--size", str(size_bytes), "--seed", str(seed),
                                             "--out", str(log_path)), env, sampler, 0, run_dir)
    lines = count_lines(log_path)
    if t_gen:
        t_gen.lines = lines
        log.info("stage generate: %s lines, %.0f lines/s", f"{lines:,}", t_gen.lines_per_s)
        stages.append(t_gen)
    if reference:
        stages.append(java_producer_perf(s, run.topic + "-java", lines, log_path, sampler, run_dir))
    t0 = time.monotonic()
    stages.append(run_stage("produce", _cli("produce", str(log_path), "--client", client), env, sampler, lines,
                            run_dir))
    stages.append(run_stage("stream", _cli("stream", "--until-done"), env, sampler, lines, run_dir))
    e2e_seq = Stage("end-to-end, one after the other (produce, then stream)", time.monotonic() - t0, lines)
    if reference:
        stages.append(run_stage("batch-reference",
                                [sys.executable, "-m", "logpipe.streaming.batch", str(log_path),
                                 "--json", str(run_dir / "batch.json")], env, sampler, lines, run_dir))
        batch_lines = json.loads((run_dir / "batch.json").read_text())["lines"]
        if batch_lines != lines:  # its rate is computed from the log's line count: it must have read them all
            raise BenchFailed(f"the batch reference read {batch_lines:,} lines, the log has {lines:,}")
    _verify_stage("verify", log_path, env, sampler, lines, run_dir, stages)
    if reference and (problem := batch_reference_problem(json.loads((run_dir / "batch.json").read_text()),
                                                         json.loads((run_dir / "verify.json").read_text()))):
        raise BenchFailed(f"the batch reference's results are not the log's: {problem} ({run_dir / 'batch.json'}, "
                          f"{run_dir / 'verify.json'}): its rate says nothing")
    if not pipeline:
        return lines, e2e_seq, e2e_seq
    penv = {**env, "LOGPIPE_TOPIC": run.topic + "-pipeline", "LOGPIPE_ALERTS_TOPIC": run.topic + "-pipeline-alerts",
            "LOGPIPE_HDFS_ROOT": run.root + "-pipeline"}
    e2e = run_pipeline({"stream": _cli("stream", "--until-idle", str(idle_s)),
                        "produce": _cli("produce", str(log_path), "--client", client)},
                       penv, sampler, lines, run_dir)
    stages.append(e2e)
    _verify_stage("verify-pipeline", log_path, penv, sampler, lines, run_dir, stages)
    return lines, e2e_seq, e2e


def _verify_stage(name: str, log_path: Path, env: dict[str, str], sampler: ResourceSampler, lines: int,
                  run_dir: Path, stages: list[Stage]) -> None:
    """`logpipe verify` of the log against the stage's results, its report in <name>.json, appended to `stages`.
    It exits 1 on a mismatch: that is a result to record (the row says MISMATCH), not a crash, unless it wrote no
    report (BenchFailed, the stage's figures kept)."""
    report = run_dir / f"{name}.json"
    stages.append(run_stage(name, _cli("verify", "--log", str(log_path), "--json", str(report)), env, sampler, lines,
                            run_dir, ok_codes=(0, 1)))
    _require_report(report, run_dir / f"{name}.log")


def _read_report(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _drop_if_exact(s: Settings, run: BenchRun, result: dict[str, Any], *, reference: bool, pipeline: bool) -> str:
    """Delete the run's Kafka topics and HDFS folders if verify found it exact; what `run_data` then says."""
    if not verified_exact(result):
        log.warning("verify found a mismatch: the run's Kafka topics and HDFS folders (%s) are kept", run.root)
        return "kept: verify found a mismatch"
    gone, failed = drop_run_data(s, run.topics(reference, pipeline), run.roots(pipeline))
    log.info("deleted the run's data (--keep-data keeps it): %s", ", ".join(gone) or "nothing was left")
    if failed:  # the figures stand; say what is left behind
        log.warning("could not delete all of the run's data: %s", "; ".join(failed))
        return "not all deleted: " + "; ".join(failed)
    return "deleted"


def drop_run_data(s: Settings, topics: list[str], roots: list[str]) -> tuple[list[str], list[str]]:
    """Delete a benchmark run's Kafka topics (and the producer's saved positions in them) and HDFS folders, those
    that exist. Returns (what was deleted, what could not be deleted and why)."""
    import shutil

    from hdfs import InsecureClient

    from logpipe.producer.position import PositionStore
    from logpipe.topics import delete_topics

    gone: list[str] = []
    failed: list[str] = []
    try:
        gone += [f"topic {t}" for t in delete_topics(s, topics)]
        for t in topics:  # positions in a deleted topic would make a later produce into that name resume
            positions = PositionStore(s.producer_positions_dir, t).directory
            shutil.rmtree(positions, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 (reported in the result, not fatal: the figures stand)
        failed.append(f"Kafka topics {topics}: {exc}")
    client = InsecureClient(s.webhdfs_address, user=s.hdfs_user_name, timeout=s.connect_timeout_s)
    for root in roots:
        try:
            if client.delete(root, recursive=True):
                gone.append(f"hdfs:{root}")
        except Exception as exc:  # noqa: BLE001
            failed.append(f"HDFS {root}: {exc}")
    return gone, failed


def machine_info() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def versions(s: Settings | None = None) -> dict[str, Any]:
    """The versions a result depends on: Python packages, the Kafka and Hadoop of the stack's poms, the Java that
    Spark and the services run on, and the code's git commit (with `dirty` if it had uncommitted changes)."""
    from importlib.metadata import version

    out: dict[str, Any] = {p: version(p) for p in ("pyspark", "kafka-python", "confluent-kafka")}
    poms = Path(services.__file__).parent / "poms"
    for key, pom, prop in (("kafka_broker", "kafka.xml", "kafka.version"), ("hadoop", "hdfs.xml", "hadoop.version")):
        m = re.search(rf"<{re.escape(prop)}>([^<]+)<", (poms / pom).read_text())
        out[key] = m.group(1) if m else "?"
    if s is not None:
        try:
            home, release = java.spark_java_home(s)
            out["spark_java"] = f"{release} ({home})"
            out["services_java"] = java.java_binary(s)
        except Exception as exc:  # noqa: BLE001 (a missing Java fails the run elsewhere, with its own message)
            out["spark_java"] = f"? ({exc})"
    try:
        git = ["git", "-C", str(PROJECT_ROOT)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # the rows a bench appends to docs/benchmarks.md and its results folder are no change of the code
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/benchmarks.md", ":(exclude)benchmarks/results"], capture_output=True,
                               text=True, check=True).stdout.strip()
        out["commit"] = head + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "? (not a git checkout)"
    return out


def verified_exact(r: dict[str, Any]) -> bool:
    """Whether `verify` found the results exact, for the stream run and, if it ran, the pipeline run."""
    ran_pipeline = r["end_to_end"]["stage"] != (r.get("end_to_end_sequential") or r["end_to_end"])["stage"]
    reports = [r.get("verify")] + ([r.get("verify_pipeline")] if ran_pipeline else [])
    return all((v or {}).get("ok") for v in reports)


def verify_label(r: dict[str, Any]) -> str:
    """The verify column: `exact`; `INCOMPLETE` when a report's checks all passed but one could not be made (the
    alerts topic unreadable); else `MISMATCH`."""
    if verified_exact(r):
        return "exact"
    ran_pipeline = r["end_to_end"]["stage"] != (r.get("end_to_end_sequential") or r["end_to_end"])["stage"]
    reports = [r.get("verify")] + ([r.get("verify_pipeline")] if ran_pipeline else [])
    return "INCOMPLETE" if all((v or {}).get("verdict") in ("exact", "incomplete") for v in reports) else "MISMATCH"


def markdown_row(r: dict[str, Any]) -> str:
    st = {x["stage"]: x for x in r["stages"]}
    def get(name: str, key: str = "lines_per_s") -> str:  # a figure with thousands separators; "" if not run
        v = st.get(name, {}).get(key, "")
        return f"{v:,}" if isinstance(v, (int, float)) else str(v)

    seq = r.get("end_to_end_sequential") or r["end_to_end"]
    at_once = r["end_to_end"] if r["end_to_end"]["stage"] != seq["stage"] else None
    at_once_wall, at_once_rate = ((f"{at_once['wall_s']} s", f"{at_once['lines_per_s']:,}") if at_once
                                  else ("not run", ""))
    return (f"| {r['date']} | {r['size_bytes'] / 1e9:.2f} GB | {r['lines']:,} | {r['client']} | "
            f"{at_once_wall} | {at_once_rate} | {seq['wall_s']} s | {seq['lines_per_s']:,} | {get('produce')} | "
            f"{get('java-producer-perf')} | {get('stream')} | {get('batch-reference')} | "
            f"{r['ratios'].get('producer_vs_java', '')} | {r['ratios'].get('stream_vs_batch', '')} | "
            f"{r.get('peak_rss_mb_concurrent', r['peak_rss_mb_total']) / 1024:.1f} GiB | "
            f"{verify_label(r)} |")


# e2e at once: producer and stream started together (the pipeline as it runs); one after the other: produce, then
# stream --until-done (each also measured alone for the stage columns)
MD_HEADER = ("| date | size | lines | client | e2e at once | e2e at once lines/s | e2e one after the other | "
             "lines/s | produce lines/s | Java producer rec/s | stream lines/s | batch Spark lines/s | producer/Java | "
             "stream/batch | peak mem (at once) | verify |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def add_table_row(markdown: str, row: str) -> str:
    """`markdown` with `row` added at the end of the results table (the table is created at the end if absent)."""
    lines = markdown.splitlines()
    header = MD_HEADER.splitlines()[0]
    if header not in lines:
        return markdown.rstrip("\n") + ("\n\n" if markdown.strip() else "") + MD_HEADER + "\n" + row + "\n"
    end = lines.index(header) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:end] + [row] + lines[end:]) + "\n"
