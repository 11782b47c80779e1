"""`logpipe verify`: check the job's results on HDFS against an independent batch computation over the log."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from logpipe.cli import add_setting_flags, output_file_problem, settings_from_args

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.table import Table

    from logpipe.config import Settings
    from logpipe.verify import VerifyReport


# a command that writes a compressed file's text to stdout, per format (logpipe.producer.source.compression_of)
DECOMPRESS_TO_STDOUT = {"gzip": "zcat", "bzip2": "bzcat", "xz": "xzcat", "zstd": "zstdcat", "zip": "unzip -p",
                        "lz4": "lz4cat"}


class _GivenOnce(argparse.Action):
    """A flag that may be given once: argparse keeps the last of two `--log`s, and verify would then check the
    results against the second log alone while the user meant both."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: verify recounts one log; give a rotated log as one file of "
                         "its parts in order, e.g. --log <(cat access.log.1 access.log)")
        setattr(namespace, self.dest, values)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare HDFS results with a batch recomputation from the raw log")
    p.add_argument("--log", type=Path, required=True, action=_GivenOnce,
                   help="the log file that was produced into the topic")
    p.add_argument("--truth", type=Path, default=None, help="ground truth (default: <log>.truth.json if present)")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--lenient-truth", action="store_true",
                   help="report recall/precision against the truth file but do not fail on them")
    p.add_argument("--no-kafka", action="store_true",
                   help="check the results on HDFS only: skip the check that every alert was published to the "
                        "Kafka alerts topic (the report says it was not checked); for results whose broker is gone")
    add_setting_flags(p, "hdfs_root", "max_message_bytes")
    # no flags for the window, the rules or the alerts topic: a root's own record of them always wins
    p.epilog = ("The window, slide, watermark, alert rules and alerts topic a root's results were made with are "
                "recorded on it (_commits/job.json): verify checks with those, and says where they differ from the "
                "LOGPIPE_* environment (which applies only to a root without that record).")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from logpipe.results import ResultsSettingsError, settings_of_results
    from logpipe.verify import verify_run
    from logpipe.verify.processes import WorkerDied
    from logpipe.verify.tables import FractionalTimes

    problem = input_problem(args)  # said now, not after the minutes a large log's recount takes
    if problem:
        print(f"logpipe verify: {problem}", file=sys.stderr)
        return 2
    s = settings_from_args(args)
    problem = results_problem(s) or (None if args.no_kafka else kafka_problem(s))
    if problem:
        print(f"logpipe verify: {problem}", file=sys.stderr)
        return 1
    try:
        s, notes = settings_of_results(s)
        for note in notes:
            if args.no_kafka and note.startswith("alerts_topic "):  # no topic is read: nothing is checked with it
                continue
            print(f"logpipe verify: the results were made with {note}: checking with the job's", file=sys.stderr)
        r = verify_run(s, args.log, args.truth, strict_truth=not args.lenient_truth, progress=True,
                       alerts_on_kafka=not args.no_kafka)
    except ResultsSettingsError as exc:
        print(f"logpipe verify: {exc}", file=sys.stderr)
        return 1
    except FractionalTimes as exc:  # results no whole-second comparison may pass: wrong, whatever else holds
        print(f"logpipe verify: {exc}", file=sys.stderr)
        if args.json:  # a report saying so (bench records a MISMATCH row from it, not a crashed verify)
            try:
                args.json.write_text(json.dumps({"ok": False, "verdict": "mismatch", "error": str(exc)}, indent=2))
            except OSError as write_exc:
                print(f"logpipe verify: could not write the report to {args.json}: {write_exc}", file=sys.stderr)
        print("verify: MISMATCH")
        return 1
    except WorkerDied as exc:
        print(f"logpipe verify: the recount of {args.log} failed: {exc}; run it again (if the system ran out of "
              "memory, with fewer processes beside it)", file=sys.stderr)
        return 1
    except OSError as exc:  # HDFS stopped answering or refused a read (logpipe.webhdfs: OSErrors), or the log
        print(f"logpipe verify: a read failed during the checks ({type(exc).__name__}: {exc}): check that HDFS at "
              f"{s.webhdfs_address} answers (`logpipe stack status`, the NameNode's log) and that {args.log} is "
              "readable, then run verify again", file=sys.stderr)
        return 1
    if args.json:
        try:
            args.json.write_text(r.to_json())
        except OSError as exc:  # it could be written a moment ago: the verdict still stands, and is printed
            print(f"logpipe verify: could not write the report to {args.json}: {exc}", file=sys.stderr)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(report_table(args, r))
    examples = [] if r.ok else mismatch_examples(r)
    for line in examples:
        console.print(line, markup=False, highlight=False)
    if examples:
        console.print(f"every example: the report in {args.json}" if args.json else
                      f"--json FILE writes the report, with up to {EXAMPLES_IN_REPORT} examples of each difference")
    if not r.ok and (first := other_log_line(r)):  # the cause of every other difference, said last and plainly
        console.print(first, markup=False, highlight=False, soft_wrap=True)
    if r.verdict == "incomplete":
        console.print(f"[bold yellow]verify: INCOMPLETE[/]: every check made passed, but the alerts topic could not "
                      f"be read ({r.unchecked}); run verify again once Kafka answers, or with --no-kafka")
    else:
        console.print("[bold green]verify: exact[/]" if r.ok else "[bold red]verify: MISMATCH[/]")
    return 0 if r.ok else 1


EXAMPLES_SHOWN = 3  # of each kind of difference, under the report's table (the JSON report holds more)
EXAMPLES_IN_REPORT = 10


def _utc(epoch_s: object) -> str:
    """A window start as verify's reports hold it (epoch seconds) in UTC, as the tables show it."""
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(int(epoch_s), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch_s)


def other_log_line(r: "VerifyReport") -> str | None:
    """When the results hold another number of source lines than the log (another log, a log that grew since, rows
    lost from the tables),
    one line that says so, naming the log `logpipe demo` recorded for the root if it is another file: every other
    difference follows from it, and a full MISMATCH table buried it (a review's wrong --log)."""
    acc = getattr(r, "accounting", None) or {}
    if not acc.get("other_log"):
        return None
    recorded = f" (`logpipe demo` made this root's results from {acc['recorded_log']})" if acc.get("recorded_log") \
        else ""
    return f"the results hold another number of lines than the log{recorded}: {acc['other_log']}"


def mismatch_examples(r: "VerifyReport") -> list[str]:
    """The first few differences of each failed check, one per line, times in UTC: what to look up in the tables
    (the report's table above gives only their numbers)."""
    lines: list[str] = []

    def section(title: str, rows: list[str]) -> None:
        if rows:
            lines.append(title)
            lines.extend(f"  {row}" for row in rows[:EXAMPLES_SHOWN])

    for table, c in (("windows/by_host", r.windows_by_host), ("windows/by_status", r.windows_by_status)):
        ex = c.get("examples") or {}
        key = "host" if table.endswith("host") else "http_response"

        def where(e: dict, key: str = key) -> str:
            return f"window starting {_utc(e.get('window_start'))}, {key} {e.get(key)}"

        section(f"{table}: windows the recount of the log has and the table has not",
                [f"{where(e)}: count {e.get('count')}" for e in ex.get("missing", [])])
        section(f"{table}: rows the recount of the log has not",
                [f"{where(e)}: count {e.get('count')}" for e in ex.get("extra", [])])
        section(f"{table}: counts that differ",
                [f"{where(e)}: the log's {e.get('count_expected')}, the table's {e.get('count_actual')}"
                 for e in ex.get("wrong", [])])
        section(f"{table}: rows written more than once",
                [f"{where(e)}: count {e.get('count')}" for e in ex.get("duplicates", [])])
    al = r.alerts

    def alert(e: dict) -> str:
        return f"{e.get('rule')} {e.get('key')}, window starting {_utc(e.get('window_start'))}"

    section("alerts the rules imply for the log's counts, not raised",
            [alert(e) for e in al.get("examples_missing", [])])
    section("alerts raised that the rules do not imply for the log's counts",
            [alert(e) for e in al.get("examples_unexplained", [])])
    section("alerts whose figures or columns are not those of their batch's running counts",
            [f"{alert(e)} (batch {e.get('batch')}): "
             + (e["problem"] if "problem" in e else
                f"count {e.get('count')}, share {e.get('share')}; replayed: count {e.get('replayed_count')}, "
                f"share {e.get('replayed_share')}") for e in (al.get("figures") or {}).get("examples", [])])
    kafka = al.get("kafka") or {}
    section(f"alerts not published to the Kafka topic {kafka.get('topic')} (their alert_id)",
            [str(e) for e in kafka.get("examples_missing", [])])
    return lines


def input_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the files given (the log, the truth file, the report's path), or None: each is checked
    before anything else, so a typo is said at once."""
    from logpipe.generator import truth_path
    from logpipe.producer.source import compression_of
    from logpipe.verify import TruthFileError, load_truth

    if args.log.is_dir():
        return f"--log {args.log} is a folder: give the log file that was produced into the topic"
    if not args.log.exists():  # a regular file, or a pipe (`--log <(zcat access.log.gz)`)
        return f"no such log file: {args.log}"
    if args.log.is_file():
        try:
            with args.log.open("rb") as f:
                kind = compression_of(f.read(16))
        except OSError as exc:
            return f"cannot read the log {args.log}: {exc.strerror or exc}"
        if kind:
            return (f"{args.log} is {kind}-compressed: give the log as the producer read it, e.g. "
                    f"--log <({DECOMPRESS_TO_STDOUT[kind]} {args.log})")
    if args.truth is not None and not args.truth.is_file():
        return f"no such truth file: {args.truth}"
    truth = args.truth or truth_path(args.log)
    try:
        if truth.is_file():
            load_truth(truth)
    except TruthFileError as exc:
        return str(exc)
    return (args.json and output_file_problem(args.json, "--json")) or None


def report_table(args: argparse.Namespace, r: "VerifyReport") -> "Table":
    """The report as a table: one row per check, its verdict and figures."""
    from rich.table import Table

    t = Table(title=f"logpipe verify {args.log} ({r.seconds:.1f}s)")
    for col in ("check", "result", "details"):
        t.add_column(col)
    mark = lambda ok: "[green]ok[/]" if ok else "[red]FAIL[/]"  # noqa: E731
    t.add_row("accounting", mark(r.accounting["ok"]), accounting_text(r.accounting))
    for name, c in (("windows by host", r.windows_by_host), ("windows by status", r.windows_by_status)):
        t.add_row(name, mark(c["ok"]), f"{c['compared']:,} rows compared: missing {c['missing']}, extra {c['extra']}, "
                  f"wrong {c['wrong']}, duplicates {c['duplicates']}, window_end not start + window "
                  f"{c['window_end_wrong']}"
                  + (f", in another day's date= folder {c['date_partition_wrong']:,}" if c.get("date_partition_wrong")
                     else "") + (f"; columns unlike the job's (not compared): {', '.join(c['types_wrong'])}"
                                                if c.get("types_wrong") else "") + (f"; {c['hint']}" if c.get("hint") else ""))
    al = r.alerts
    alerts_mark = "[yellow]unchecked[/]" if al.get("rules_ok") and r.unchecked else mark(al["ok"])
    t.add_row("alerts vs rules", alerts_mark, f"expected {al['expected']}, raised {al['raised']}, missing "
              f"{al['missing']}, duplicates {al['duplicates']}, transient surges {al['transient_surges']}, "
              f"figures off the rule {al['off_rule']}, figures unlike the running counts of their batch "
              f"{al['figures']['wrong']} of {al['figures']['checked']}, raised after the batch that first met the "
              f"rule {al['figures']['raised_late']}, other columns wrong (window_end, threshold, top_hosts, "
              f"alert_id) {al['figures']['columns_wrong']}; {kafka_text(al['kafka'])}")
    if r.truth:
        lenient = not r.truth.get("enforced", True) and (r.truth["recall"] < 1.0 or r.truth["false_positives"])
        t.add_row("alerts vs ground truth", "[yellow]not enforced[/]" if lenient else mark(r.truth["ok"]),
                  truth_text(r.truth) + ("; --lenient-truth: not a condition of the verdict" if lenient else ""))
    else:
        t.add_row("alerts vs ground truth", "-", f"not scored: no truth file ({args.truth or 'none given'}, and no "
                  f"{args.log.name}.truth.json beside the log); `logpipe generate` writes one")
    return t


def accounting_text(a: dict) -> str:
    """The accounting row of the report."""
    return (f"lines {a['lines']:,} = parsed {a['parsed']:,} + quarantined "
            f"{a['quarantined']:,}; job: parsed {a['job_parsed_unique']:,} (in {a['job_event_rows']:,} event rows), "
            f"quarantined "
            f"{a['job_quarantined_unique']:,}; late {a['late']} ({a['late_lines_excluded']:,} lines out of the windows), "
            f"duplicates dropped {a['duplicates_dropped']}; late rows not behind their batch's horizon "
            f"{a['late_check']['not_behind_horizon']}, batches with events behind it "
            f"{a['late_check']['event_batches_behind_horizon']}; " + _future_text(a.get("future_check"))
            + "the job's counts against its tables: "
            f"{'; '.join(a['job_accounting']['mismatches']) or 'equal'}; parsed fields line by line: "
            f"{'equal' if a['parsed_fields_equal'] else 'DIFFERENT'}; quarantined records and reasons: "
            f"{'equal' if a['quarantine_records_equal'] else 'DIFFERENT'}; quarantine rows of a Kafka record already "
            f"written {a.get('quarantine_records_written_twice', 0):,}; events in the wrong date partition "
            f"{a['events_in_wrong_date_partition']:,}; files no commit covers: stray "
            f"{a['uncommitted_files']['stray']}, of unfinished attempts "
            f"{a['uncommitted_files']['of_unfinished_attempts']}" + (f". {a['hint']}" if a.get("hint") else ""))


def truth_text(tr: dict) -> str:
    """The ground truth's row of the report: recall, precision, detection delays."""
    delays = [e["delay_s"] for i in tr["incidents"] for e in i["expected"] if e["delay_s"] is not None]
    raised = [e["raised_after_s"] for i in tr["incidents"] for e in i["expected"]
              if e.get("raised_after_s") is not None]
    # a log too short for incidents has none to find: its recall is 1.0 by definition, and says nothing
    recall = (f"recall {tr['recall']:.0%}" if tr["expected_alerts"]
              else "recall not scored (the log has no planted incidents)")
    delay = (f"detection delay (log time): first alerted window ends max {max(delays)} s after an incident "
             "starts" if delays else "detection delay: none measured (no incident was alerted)")
    if raised:
        delay += (f"; raised by a micro-batch that had read the log up to max {max(raised)} s (log time) past the "
                  "incident's start (a replay's batches span much log time; a live tail's, about a trigger)")
    return (f"{recall}, precision {tr['precision']:.0%}, false positives {tr['false_positives']}, {delay}"
            + (f". {tr['hint']}" if tr.get("hint") else ""))


def kafka_text(k: dict | None) -> str:
    """The alerts topic's line of the report (None: not checked)."""
    if k is None:
        return "the alerts topic not checked (--no-kafka)"
    if k.get("unchecked"):  # not a count of alerts missing: the topic was not read
        return f"on Kafka topic {k['topic']}: not checked, it could not be read ({k['error']})"
    text = f"on Kafka topic {k['topic']}: {k['missing']} not published"
    if k.get("error"):
        return f"{text} ({k['error']})"
    if k["missing"] and not k["published"]:  # none of them: the topic lost them (the root names the one they went to)
        text += (" (none of this root's alerts is there, though the job sent them to this topic, the one the root "
                 "records: was the topic deleted, or the broker's data wiped, since? The job sends a batch's alerts "
                 "once, marked in _commits/alerts-kafka/ under the root: remove that folder and run `logpipe stream "
                 "--until-done` on the root to send them again)")
    if k.get("wrong_payload"):
        text += (f", {k['wrong_payload']} records unlike their alert in alerts/ (e.g. "
                 f"{k['examples_wrong'][0]['alert_id']}: {'; '.join(k['examples_wrong'][0]['differs'])})")
    text += f", {k['copies']} copies (sent again after a crash, or by another root over the same log)"
    if k.get("other_roots_records"):
        text += (f", {k['other_roots_records']} of its alerts also published unlike its rows, beside an equal record "
                 "(another root's alerts of the same windows, on a shared alerts topic)")
    if k.get("other_alerts"):
        text += f", {k['other_alerts']} alerts that are not this root's (another root's, on a shared alerts topic)"
    return text


def not_ready(probe: "Callable[[], object]", what: str, timeout: float, hint: str,
              down: "Callable[[], str | None] | None" = None) -> str | None:
    """Why `what` did not answer `probe` within `timeout` seconds (the wait's one line, with `hint`), or None;
    `down` as for health.wait_until (the native stack not running: said at once)."""
    from logpipe import health

    try:  # announced: a service that is down is no silent minute (LOGPIPE_CONNECT_TIMEOUT_S sets the wait)
        health.wait_until(probe, what=what, timeout=timeout, hint=f"{hint} (LOGPIPE_CONNECT_TIMEOUT_S sets this wait)",
                          announce=True, down=down)
    except health.ServiceTimeout as exc:
        return str(exc)
    return None


def kafka_problem(s: "Settings") -> str | None:
    """Why the alerts topic cannot be read (no broker answers within connect_timeout_s), or None: said before
    the recount, in one line, not as a MISMATCH of the alerts after it (`--no-kafka` skips that check)."""
    from logpipe import health
    from logpipe.stack.services import native_service_down

    return not_ready(lambda: health.probe_kafka(s.kafka_address), f"Kafka at {s.kafka_address}", s.connect_timeout_s,
                     "verify reads the job's alerts topic from it. Is the broker running? `logpipe stack status`; "
                     "LOGPIPE_KAFKA_BOOTSTRAP must name it (or --no-kafka: check the results on HDFS only).",
                     down=lambda: native_service_down(s, "kafka"))


def results_problem(s: "Settings") -> str | None:
    """Why the job's results cannot be read (HDFS down, blocks not reported yet, no results under the root), or
    None. Waits up to connect_timeout_s for HDFS, as the job does."""
    from logpipe import health
    from logpipe.results import webhdfs_fs
    from logpipe.root_layout import COMMITS
    from logpipe.stack.services import native_service_down

    if problem := not_ready(lambda: health.probe_blocks_reported(s.webhdfs_address), f"HDFS at {s.webhdfs_address}",
                            s.connect_timeout_s, "Is the NameNode (and DataNode) running? `logpipe stack status`; "
                            "LOGPIPE_WEBHDFS_URL must name the NameNode's web address.",
                            down=lambda: native_service_down(s, "namenode")):
        return problem
    try:
        found = webhdfs_fs(s).exists(s.hdfs_path(COMMITS))
    except OSError as exc:  # a folder of the root's path the HDFS user may not read, HDFS gone since the wait
        what = ("check the path and that the HDFS user (LOGPIPE_HDFS_USER, else your login name) may read it"
                if isinstance(exc, PermissionError) else "check `logpipe stack status` and the NameNode's log")
        return f"cannot read {s.hdfs_root} on HDFS ({type(exc).__name__}: {exc}): {what}"
    if not found:
        return (f"no results of the streaming job under {s.hdfs_root} on HDFS: run `logpipe stream --until-done` "
                "first, or point LOGPIPE_HDFS_ROOT / --hdfs-root at the job's results")
    return None


def _batches(numbers: list[int]) -> str:
    """Micro-batches by number, or "none" (a bare 0 read as none where batch 0 was meant)."""
    return ("batch " if len(numbers) == 1 else "batches ") + ", ".join(map(str, numbers)) if numbers else "none"


def _future_text(check: dict | None) -> str:
    """The timestamp_in_future check's part of the accounting row ("" when no micro-batch recorded a bound)."""
    if not check or not check["batches_with_a_bound"]:
        return ""
    past = check["batches_keeping_rows_past_the_bound"]
    off = check.get("bounds_not_at_the_batch_start", [])
    unchecked = check.get("bounds_not_checked", 0)
    return (f"lines quarantined as dated after their batch's bound {check['quarantined']:,} (not after it: "
            f"{check['quarantined_not_after_the_bound']:,}), batches keeping rows past it: "
            f"{_batches(past)}, bounds not at their batch's start plus the tolerance: {_batches(off)}"
            # the batches are dated by the times of Spark's offset files: a copy that did not keep them moves them
            + (" (a root copied without its files' times, e.g. `hdfs dfs -cp` without -p, fails this check)"
               if off else "")
            + (f" ({unchecked:,} recorded without their tolerance, not checked)" if unchecked else "") + "; ")
