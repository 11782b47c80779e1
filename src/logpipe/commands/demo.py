"""`logpipe demo`: the main job: stack up, sample log, produce, stream until done, verify, summary."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from logpipe.cli import add_setting_flags, exit_on_termination, settings_from_args, size_bytes
from logpipe.config import PRODUCER_CLIENTS, PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from hdfs import InsecureClient

log = logging.getLogger("logpipe.demo")

DEMO_LOG = PROJECT_ROOT / "data" / "access.log"
DEMO_NOTEBOOK = PROJECT_ROOT / "notebooks" / "Section_A_Log_Analytics_Demo.ipynb"
# (rule, key) rows in the summary's alerts table; the rest are counted below it
SUMMARY_ALERT_KEYS = 20
SAMPLE_SIZE, SAMPLE_SEED = "40MB", 42  # the sample the demo generates when its log does not exist


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a ~40 MB sample log (the README's main job)")
    p.add_argument("--log", type=Path, default=None,
                   help="log to replay (default data/access.log, generated if missing). A --log that does not exist "
                        "is an error, unless --size or --seed asks for a sample to be generated there")
    p.add_argument("--size", type=_size, default=None,
                   help="size of the sample it generates when the --log file does not exist yet, in decimal units "
                        f"(default {SAMPLE_SIZE})")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the generated sample (default {SAMPLE_SEED}); as --size, only for a new sample")
    p.add_argument("--client", choices=PRODUCER_CLIENTS, default=None,
                   help="the producer's Kafka client (default: LOGPIPE_PRODUCER_CLIENT, else kafka-python)")
    p.add_argument("--report", type=Path, default=None,
                   help="where verify writes its JSON report (default: <run dir>/demo-verify.json)")
    p.add_argument("--fresh", action="store_true",
                   help="start over on a root or topics the demo did not make (their results and records are "
                        "deleted); without it the demo refuses and says what it would delete")
    add_setting_flags(p, "topic", "alerts_topic", "hdfs_root")
    p.epilog = ("The demo keeps its results while they come from the same log and settings; otherwise it starts "
                "over: it deletes its HDFS root, its topic and alerts topic and the producer's positions (and says "
                "so). A root or topics it did not make are deleted only with --fresh.")
    p.set_defaults(func=run, needs_spark=True)


def _size(text: str) -> str:
    """--size, checked as the command starts (before the stack, which may take minutes on a fresh machine) and
    handed on to `generate` as given."""
    size_bytes(text)
    return text


def missing_log_problem(log: Path | None, size: str | None, seed: int | None) -> str | None:
    """Why `demo --log LOG` cannot run, or None. The demo generates its sample when the log is missing; for a
    --log the user named, that made a mistyped path pass for their log (a 40 MB sample replayed, verify exact,
    exit 0). A named log must exist, unless --size or --seed asks for a sample there."""
    if log is None or log.exists() or size is not None or seed is not None:
        return None
    return (f"log file not found: {log} (the demo generates a sample only at data/access.log, or at a --log given "
            "with --size or --seed)")


def _step(name: str, cmd: list[str], env: dict[str, str], ok_codes: tuple[int, ...] = (0,), *,
          stop_grace_s: float = 120.0) -> tuple[float, int]:
    """Run one pipeline step as its own process (own JVM for Spark), streaming its output. Returns seconds and
    the exit code (one of ok_codes; another ends the demo). Stopped (Ctrl-C, SIGTERM), the demo lets the step stop
    as it does on its own (see _stop_step)."""
    log.info("== %s: logpipe %s", name, " ".join(cmd))
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", *cmd], env=env, cwd=PROJECT_ROOT)
    try:
        code = proc.wait()
    except BaseException as exc:
        _stop_step(proc, name, forward=not isinstance(exc, KeyboardInterrupt), grace_s=stop_grace_s + 30)
        raise
    if code not in ok_codes:
        raise SystemExit(f"demo: step '{name}' failed with exit code {code} (see its output above)")
    return time.monotonic() - t, code


def _stop_step(proc: subprocess.Popen, name: str, *, forward: bool, grace_s: float) -> None:
    """The demo is stopped while step `name` runs: wait up to `grace_s` for the step's own clean stop (the stream
    finishes its running micro-batch, the producer saves its position), then kill it. Ctrl-C reached the step too
    (the terminal signals the whole foreground group); SIGTERM or SIGHUP reached the demo alone (`forward`), so it
    is passed on as SIGTERM. Before, the step was killed 0.25 s after a Ctrl-C, and ran on alone after a SIGTERM."""
    import signal

    if proc.poll() is not None:
        return
    if forward:
        proc.send_signal(signal.SIGTERM)
    log.warning("demo stopped: waiting up to %.0fs for step '%s' (pid %d) to stop cleanly; Ctrl-C again kills it",
                grace_s, name, proc.pid)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning("step '%s' did not stop within %.0fs: killing it", name, grace_s)
    except KeyboardInterrupt:
        log.warning("killing step '%s'", name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    import requests

    from logpipe.generator import truth_path
    from logpipe.stack import services

    exit_on_termination()  # SIGTERM, SIGHUP: the running step is stopped too (_stop_step), not left running alone
    s: Settings = settings_from_args(args)
    if problem := missing_log_problem(args.log, args.size, args.seed):  # before the stack (minutes when fresh)
        print(f"logpipe demo: {problem}", file=sys.stderr)
        return 2
    args.log = (args.log or DEMO_LOG).resolve()  # the steps run in the project folder
    t0 = time.monotonic()
    log.info("== stack up")
    services.up(s, progress=log.info)
    env = {**os.environ, "LOGPIPE_TOPIC": s.topic, "LOGPIPE_ALERTS_TOPIC": s.alerts_topic,
           "LOGPIPE_HDFS_ROOT": s.hdfs_root}
    timings: dict[str, float] = {}
    # an existing log is never overwritten (data/access.log may be the user's own); without its ground truth,
    # verify checks the counts and the alert rules, not recall against planted incidents
    if not args.log.exists():
        args.log.parent.mkdir(parents=True, exist_ok=True)
        timings["generate"], _ = _step("generate sample", ["generate", "--size", args.size or SAMPLE_SIZE, "--seed",
                                                           str(SAMPLE_SEED if args.seed is None else args.seed),
                                                           "--out", str(args.log)], env, stop_grace_s=s.stop_grace_s)
    else:
        given = [f"{flag} {value}" for flag, value in (("--size", args.size), ("--seed", args.seed))
                 if value is not None]
        if given:
            log.warning("%s: %s exists, so it is replayed as it is (%s make a new sample only: give another --log, "
                        "or delete this one)", ", ".join(given), args.log, "they" if len(given) > 1 else "it")
        if not truth_path(args.log).exists():
            log.info("%s has no ground truth beside it (%s): verify checks the window counts and the alert rules, not "
                     "planted incidents (delete the log to have the demo make its sample again)", args.log,
                     truth_path(args.log).name)
    try:
        fresh_results_for(s, args.log, fresh=args.fresh)
    except requests.RequestException as exc:  # WebHDFS did not answer in LOGPIPE_CONNECT_TIMEOUT_S, or refused
        raise SystemExit(f"demo: reading the results root {s.hdfs_root} over WebHDFS ({s.webhdfs_address}) failed: "
                         f"{type(exc).__name__}: {exc}; check the NameNode (`logpipe stack status`)") from exc
    produce = ["produce", str(args.log)] + (["--client", args.client] if args.client else [])
    timings["produce"], _ = _step("produce", produce, env, stop_grace_s=s.stop_grace_s)
    timings["stream"], _ = _step("stream --until-done", ["stream", "--until-done"], env,
                                 stop_grace_s=s.stop_grace_s)
    report_path = (args.report or s.run_dir / "demo-verify.json").resolve()  # verify runs in the project folder
    report_path.unlink(missing_ok=True)  # a report is this run's or none
    timings["verify"], code = _step("verify", ["verify", "--log", str(args.log), "--json", str(report_path)], env,
                                    ok_codes=(0, 1), stop_grace_s=s.stop_grace_s)
    if not report_path.exists():
        raise SystemExit(f"demo: verify wrote no report ({report_path}); see its output above")
    print_summary(s, args.log, json.loads(report_path.read_text()), timings, time.monotonic() - t0, report_path)
    return code


def _log_identity(path: Path) -> dict:
    """What makes the demo's results those of this log: its path, size, first MB and file identity (device and
    inode). A sample made again is byte for byte the same file in a new inode, which the producer reads as a new
    source (its record keys hold the inode): its lines would all be late on the old results, so the demo starts
    over then."""
    import hashlib

    from logpipe.producer.position import file_key

    with path.open("rb") as f:
        head = f.read(1 << 20)
        st = os.fstat(f.fileno())
    return {"log": str(path.resolve()), "size": st.st_size, "head_sha256": hashlib.sha256(head).hexdigest(),
            "file": file_key(st)}


def _other_settings(s: Settings, client: "InsecureClient") -> list[str]:
    """How the settings the root's results were made with (`_commits/job.json`) differ from `s`, and whether the
    topic they were read from is gone or was deleted and made again (its id, recorded there, changed): the demo
    starts over then, where `logpipe stream` would refuse to add to them."""
    from logpipe.results import ResultsSettingsError, settings_of_results
    from logpipe.root_record import ROOT_SETTINGS_FILE
    from logpipe.topics import topic_id

    path = s.hdfs_path(*ROOT_SETTINGS_FILE.split("/"))
    if client.status(path, strict=False) is None:
        return []
    with client.read(path) as f:
        try:
            record = json.loads(f.read())
            topic, was = record.get("topic"), record.get("topic_id")
        except (ValueError, AttributeError):
            return [f"{path} is unreadable"]
    try:
        _, notes = settings_of_results(s)
    except ResultsSettingsError as exc:
        return [str(exc)]
    other = ([f"topic {topic!r} there, {s.topic!r} now"] if topic not in (None, s.topic) else []) + \
        [f"made with {note}" for note in notes]
    if not other and was and (now := topic_id(s, s.topic)) != was:
        other.append(f"its topic {s.topic} is gone" if now is None else f"its topic {s.topic} was deleted and made "
                     "again")
    return other


def refuse_if_a_run_holds(s: Settings, client: "InsecureClient") -> None:
    """Exit (SystemExit, with what to do) if a streaming run may still hold the root's lease: the demo must not
    delete the results, checkpoint and topic of a job that is running on them."""
    from hdfs.util import HdfsError

    from logpipe.streaming.lease import HEARTBEAT_S, LEASE_FILE, holder_may_run, judge_holder

    path = s.hdfs_path(*LEASE_FILE.split("/"))
    status = client.status(path, strict=False)
    if status is None:
        return
    try:
        with client.read(path) as f:
            holder = json.loads(f.read())
    except (ValueError, HdfsError):  # being written, or gone meanwhile
        holder = {}
    holder = holder if isinstance(holder, dict) else {}
    age = time.time() - status["modificationTime"] / 1000
    renews = False
    if not holder_may_run(holder, age) and holder and judge_holder(holder, socket.gethostname())[0] == "elsewhere":
        # a run on another host stamps its renewals with its own clock, which may lag this one's: old by this
        # clock is no proof it stopped; a renewal within a heartbeat is
        log.info("the lease %s of a run on %s looks %.0fs old by this host's clock: watching it for %.0fs to see "
                 "whether that run still renews it", path, holder.get("host"), age, HEARTBEAT_S + 2)
        time.sleep(HEARTBEAT_S + 2)
        again = client.status(path, strict=False)
        renews = again is not None and again["modificationTime"] != status["modificationTime"]
    if renews or holder_may_run(holder, age):
        who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "a run starting now"
        when = "renewed it just now" if renews else f"renewed {age:.0f}s ago"
        raise SystemExit(f"demo: {s.hdfs_root} must start over, but a streaming run holds it ({who}, lease {path} "
                         f"{when}): stop that run, or give the demo another root (--hdfs-root)")


def delete_topics_or_exit(s: Settings, topics: list[str]) -> None:
    """Delete the demo's old topics and wait until they are gone; exit with the reason if the broker keeps them (the
    names are used again at once: producing now would mix old and new records)."""
    from logpipe.topics import delete_topics

    try:
        delete_topics(s, topics)
    except TimeoutError as exc:
        raise SystemExit(f"demo: {exc}") from exc


def fresh_results_for(s: Settings, log_path: Path, fresh: bool = False) -> None:
    """Results, topic and producer position must all come from this log and these settings: if the demo's HDFS root
    holds results of another log (e.g. the sample was regenerated) or of other settings (window, slide, watermark,
    alert rules), start over instead of mixing the two. A root the demo did not make (no `_source.json`) that holds
    anything, or topics that exist without such a root (e.g. `logpipe produce` run by hand), are the user's: deleted
    only with `fresh`, else the demo exits saying what it would delete."""
    import shutil

    from hdfs import InsecureClient
    from kafka.admin import KafkaAdminClient

    client = InsecureClient(s.webhdfs_address, user=s.hdfs_user_name, timeout=s.connect_timeout_s)
    marker = s.hdfs_path("_source.json")
    ident = _log_identity(log_path)
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address)
    try:
        topics = [t for t in dict.fromkeys((s.topic, s.alerts_topic)) if t in admin.list_topics()]
    finally:
        admin.close()
    positions = s.producer_positions_dir / s.topic
    if client.status(marker, strict=False) is not None:
        with client.read(marker) as f:
            same_log = json.loads(f.read()) == ident
        other = _other_settings(s, client)
        if same_log and not other:
            return
        why = "; ".join(other) if same_log else f"it does not hold results of {log_path}"
    else:
        why = f"it does not hold results of {log_path}"
        # anything in a root without the demo's mark is someone else's: results of `logpipe stream`, kept bench
        # runs one level down (/bench/<run>/_commits), any other folder given as --hdfs-root
        held = client.list(s.hdfs_root) if client.status(s.hdfs_root, strict=False) is not None else []
        theirs = ([f"the HDFS root {s.hdfs_root} ("
                   + ("results" if "_commits" in held else "holding " + ", ".join(sorted(held)[:3])
                      + (", ..." if len(held) > 3 else "")) + ": not made by the demo)"] if held else [])
        theirs += [f"the Kafka topic {t}" for t in topics]
        if theirs and not fresh:
            raise SystemExit(
                f"demo: {s.hdfs_root} has no results of the demo, and starting there would delete "
                f"{', '.join(theirs)}{' and the producer positions in ' + str(positions) if positions.exists() else ''}"
                ": give the demo its own root and topics (--hdfs-root, --topic, --alerts-topic), or pass --fresh "
                "to delete them (with make: make demo DEMO_ARGS=--fresh)")
    refuse_if_a_run_holds(s, client)
    doomed = [f"HDFS {s.hdfs_root}"] if client.status(s.hdfs_root, strict=False) is not None else []
    doomed += [f"topic {t}" for t in topics] + ([f"positions {positions}"] if positions.exists() else [])
    log.info("starting over on %s: %s%s", s.hdfs_root, why, f"; deleting {', '.join(doomed)}" if doomed else "")
    client.delete(s.hdfs_root, recursive=True)
    delete_topics_or_exit(s, topics)
    shutil.rmtree(positions, ignore_errors=True)
    client.write(marker, data=json.dumps(ident), overwrite=True)


def print_summary(s: Settings, log_path: Path, report: dict, timings: dict[str, float], total_s: float,
                  report_path: Path | None = None) -> None:
    import pyarrow.compute as pc
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from logpipe.results import TABLES, alerts_by_key, existing_tables, load_arrow, load_table
    from logpipe.stack import services

    console = Console() if sys.stdout.isatty() else Console(width=160)
    # every text from the log or the settings (hosts, alert keys, paths) is escaped: rich reads `[...]` as markup,
    # so a host `[fe80::1]` printed as nothing and one holding `[/x]` crashed the summary after verify
    acc = report.get("accounting", {})
    console.rule("[bold]logpipe demo: summary")
    console.print(f"log: {escape(str(log_path))} ({log_path.stat().st_size / 1e6:.1f} MB)")
    if "accounting" not in report:  # verify ended before its recount (its report holds the error instead)
        console.print(f"[red]verify made no recount:[/] {escape(str(report.get('error', 'see its output above')))}")
    else:
        console.print("lines read {:,} = parsed {:,} + quarantined {:,}; late (behind watermark) {:,}".format(
            acc.get("lines", 0), acc.get("parsed", 0), acc.get("quarantined", 0), acc.get("late", 0)))
    if not acc.get("ok", True):  # the line above is verify's recount of the log; the job's differ
        console.print("[red]the job's results hold[/] parsed {:,} + quarantined {:,} lines: see verify's report "
                      "above".format(acc.get("job_parsed_unique", 0), acc.get("job_quarantined_unique", 0)))
    compared = report.get("windows_compared")
    compared = f"{compared:,}" if isinstance(compared, int) else "?"
    verdict = {"exact": "[green]exact", "incomplete": "[yellow]INCOMPLETE (the alerts topic could not be read)"}.get(
        report.get("verdict", "exact" if report.get("ok") else ""), "[red]MISMATCH")
    console.print(f"verify: {verdict}[/] ({compared} window counts compared)"
                  + ("" if report.get("ok") or report_path is None else f"; its report: {escape(str(report_path))}"))
    by_host = load_arrow(s, "windows/by_host", ["host", "count"])  # ~1.5 rows a line: summed up in Arrow
    if by_host is not None and by_host.num_rows:
        top = by_host.group_by("host").aggregate([("count", "max")]).sort_by([("count_max", "descending")])
        t = Table(title="busiest hosts (max requests in one window)", min_width=44)  # no wrapped title
        t.add_column("host")
        t.add_column("max/window", justify="right")
        for host, c in zip(top["host"][:5].to_pylist(), pc.cast(top["count_max"][:5], "int64").to_pylist()):
            t.add_row(escape(str(host)), f"{c:,}")
        console.print(t)
    alerts = load_table(s, "alerts")
    keys = alerts_by_key(alerts)
    t = Table(title=f"alerts fired: {len(alerts):,} (rule, key, window), for {len(keys):,} (rule, key)")
    for col, justify in (("rule", "left"), ("key", "left"), ("windows", "right"), ("first window start", "left"),
                         ("last window end", "left"), ("peak count", "right"), ("top hosts", "left")):
        t.add_column(col, justify=justify)
    for _, k in keys.head(SUMMARY_ALERT_KEYS).iterrows():
        t.add_row(escape(str(k["rule"])), escape(str(k["key"])), f"{k['windows']:,}", str(k["first"]),
                  str(k["last"]), f"{int(k['peak_count']):,}", escape(", ".join(k["top_hosts"])))
    console.print(t)
    if len(keys) > SUMMARY_ALERT_KEYS:
        console.print(f"... and {len(keys) - SUMMARY_ALERT_KEYS:,} more (rule, key): all {len(alerts):,} alerts are "
                      f"in {escape(s.hdfs_root)}/alerts and in the notebook")
    console.print("steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total_s:.1f}s")
    for name, url in services.urls(s).items():
        console.print(f"{name}: {escape(url)}")
    present = existing_tables(s)
    absent = [t for t in TABLES if t not in present]
    console.print(f"results on HDFS: {escape(s.hdfs_root)}/{{{','.join(present)}}}"
                  + (f" (no {', '.join(absent)}: written with their first row)" if absent else ""))
    if DEMO_NOTEBOOK.is_file():
        console.print(f"notebook: {escape(notebook_command(s))}")
    else:  # a package installed outside a checkout: the notebook is not in it
        console.print(f"notebook: {DEMO_NOTEBOOK.relative_to(PROJECT_ROOT)} of a logpipe checkout (not installed with "
                      "the package)")


def notebook_command(s: Settings) -> str:
    """The shell command that opens the demo notebook on these results, from any folder: this environment's
    jupyter (if installed beside this Python) and the notebook by absolute paths, the results root if not the
    default."""
    jupyter = Path(sys.executable).parent / "jupyter"
    exe = shlex.quote(str(jupyter)) if jupyter.exists() else "jupyter"
    default = Settings.model_construct()  # the defaults, not the environment
    where = "".join(f"{name}={shlex.quote(value)} " for name, value, default_value in (
        ("LOGPIPE_HDFS_ROOT", s.hdfs_root, default.hdfs_root),
        ("LOGPIPE_WEBHDFS_URL", s.webhdfs_address, default.webhdfs_address)) if value != default_value)
    return f"{where}{exe} lab {shlex.quote(str(DEMO_NOTEBOOK))}"
