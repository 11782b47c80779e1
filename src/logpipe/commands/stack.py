"""`logpipe stack up|down|status`: the native Kafka + HDFS stack."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from logpipe.cli import add_setting_flags, exit_on_termination, misplaced_flag, settings_from_args
from logpipe.health import ServiceTimeout
from logpipe.stack import services
from logpipe.stack.jars import StackError

log = logging.getLogger("logpipe.stack")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="start/stop/inspect the native Kafka + HDFS stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--wipe", action="store_true",
                   help="with down: also delete the Kafka and HDFS data and the producer positions (unless "
                        "LOGPIPE_PRODUCER_STATE_DIR keeps them elsewhere)")
    p.add_argument("--json", action="store_true", help="with status: machine-readable output")
    add_setting_flags(p, "run_dir", "bind_host", "kafka_port", "namenode_rpc_port", "namenode_http_port",
                      "kafka_heap", "namenode_heap", "datanode_heap", "java_home", "stack_timeout_s")
    p.epilog = ("A flag applies to this command only, and nothing is remembered: to run the stack on other ports, "
                "another address or run folder, set LOGPIPE_KAFKA_PORT, LOGPIPE_NAMENODE_RPC_PORT, ... in the "
                "environment, so that every command (produce, stream, verify, stack down) uses the same.")
    p.set_defaults(func=run)


def _print_status(rows: list[dict], urls: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="logpipe native stack")
    for col in ("service", "state", "pid", "ports", "data", "log"):
        table.add_column(col)
    for r in rows:
        state = ("[red]stopped[/]" if not r["running"] else "[green]running[/]" if r["ports_as_set"]
                 else "[yellow]running, on other ports[/]")
        table.add_row(r["service"], state, str(r["pid"] or "-"), r["ports"], r["data"], r["log"])
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    for k, v in urls.items():
        console.print(f"  {k}: {v}")
    if stopped := [r["service"] for r in rows if not r["running"]]:
        console.print(f"  {', '.join(stopped)} not running: `logpipe stack up` starts "
                      f"{'it' if len(stopped) == 1 else 'them'} (`make stack-up` from a checkout)")
    if others := [r["service"] for r in rows if r["running"] and not r["ports_as_set"]]:
        console.print(f"  {' and '.join(others)} listen{'s' if len(others) == 1 else ''} on other ports than the "
                      "LOGPIPE_* port settings now give (the ports shown): the other commands would look for "
                      f"{'it' if len(others) == 1 else 'them'} on the set ones. Use the settings the stack was "
                      "started with, or `logpipe stack down` with them, then `logpipe stack up`")


def run(args: argparse.Namespace) -> int:
    misplaced = misplaced_flag(args, "action", {"wipe": ("down",), "json": ("status",)})
    if misplaced:
        print(f"logpipe stack {args.action}: {misplaced}", file=sys.stderr)
        return 2
    s = settings_from_args(args)
    # `stack up` may be training the AOT cache: a Spark JVM in a session of its own, which only its clean-up
    # stops (a SIGTERM with Python's default action left it running, beyond the reach of `stack down`)
    exit_on_termination()
    try:
        if args.action == "up":
            t = time.monotonic()
            try:
                rows = services.up(s, progress=lambda m: log.info(m))
            except KeyboardInterrupt:  # what was started runs on: say so, and what to do
                running = [r["service"] for r in services.status(s) if r["running"]]
                if running:
                    print(f"logpipe stack up: interrupted; {', '.join(running)} "
                          f"{'runs' if len(running) == 1 else 'run'} on: `logpipe stack up` completes the start, "
                          "`logpipe stack down` stops them", file=sys.stderr)
                raise
            _print_status(rows, services.urls(s))
            if down := [r for r in rows if not (r["running"] and r["ports_as_set"])]:  # e.g. died during the AOT training
                print(f"logpipe stack up: {', '.join(r['service'] for r in down)} "
                      f"{'is' if len(down) == 1 else 'are'} not running as set at the end of the start; see "
                      f"{', '.join(r['log'] for r in down)}", file=sys.stderr)
                return 1
            log.info("stack ready in %.1fs", time.monotonic() - t)
        elif args.action == "down":
            services.down(s, wipe=args.wipe, progress=lambda m: log.info(m))
        else:
            rows = services.status(s)
            if args.json:
                print(json.dumps({"services": rows, "urls": services.urls(s)}, indent=2))
            else:
                _print_status(rows, services.urls(s))
            return 0 if all(r["running"] and r["ports_as_set"] for r in rows) else 3
    except (StackError, ServiceTimeout, RuntimeError, OSError) as exc:  # OSError: e.g. a full disk, a read-only run folder
        print(f"logpipe stack {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
