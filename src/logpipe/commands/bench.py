"""`logpipe bench`: benchmark the whole pipeline on the native stack and record the figures."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from logpipe.cli import (add_setting_flags, exit_on_termination, output_file_problem, settings_from_args,
                         size_bytes)
from logpipe.config import PRODUCER_CLIENTS

log = logging.getLogger("logpipe.bench")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark generate -> produce -> stream -> verify at one or more log sizes")
    p.add_argument("--size", default="2.5GB", type=_sizes,
                   help="log size(s) in decimal units, comma-separated, e.g. 250MB,1GB,2.5GB (default 2.5GB)")
    p.add_argument("--client", choices=PRODUCER_CLIENTS, default="confluent",
                   help="the producer's Kafka client (default confluent, whatever LOGPIPE_PRODUCER_CLIENT says)")
    p.add_argument("--seed", type=int, default=1, help="the generated logs' seed (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="where generated logs are kept and reused (default data/, from the current folder)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                   help="where each run's result.json goes (default benchmarks/results/)")
    p.add_argument("--no-reference", action="store_true", help="skip the Java producer and batch Spark references")
    p.add_argument("--no-pipeline", action="store_true",
                   help="skip the run with the producer and the stream at once "
                        "(end to end is then one after the other)")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the run's Kafka topics and HDFS results (each topic holds the whole log); by default "
                        "they are deleted once the run is measured and verified")
    p.add_argument("--markdown", type=Path, default=Path("docs/benchmarks.md"),
                   help="table to append rows to (default docs/benchmarks.md)")
    p.add_argument("--no-markdown", dest="markdown", action="store_const", const=None,
                   help="append no row to a table (each run's result.json is written all the same)")
    p.add_argument("--name", default="bench", type=_name,
                   help="names the run's HDFS folder (/<name>/<time>-<size>) and Kafka topics (<name>-<time>-<size>, "
                        "'/' as '-')")
    add_setting_flags(p, "topic_partitions", "max_offsets_per_trigger", "shuffle_partitions")
    p.set_defaults(func=run, needs_spark=True)


def _name(text: str) -> str:
    """A run name: usable in a Kafka topic name and as an HDFS path (letters, digits, `-`, `_`; `/` for a folder)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '-', '_' (and '/' between them) only")
    return text


def _sizes(text: str) -> list[int]:
    """--size: every size checked before any run starts (a typo in the last would end an hour's work)."""
    return [size_bytes(size) for size in text.split(",")]


def run(args: argparse.Namespace) -> int:
    from logpipe import bench
    from logpipe.stack import services

    problem = args.markdown and output_file_problem(args.markdown, "--markdown")  # not after an hour's runs
    if problem:
        print(f"logpipe bench: {problem}", file=sys.stderr)
        return 2
    s = settings_from_args(args)
    # SIGTERM (`timeout`, a cancelled job) ends the run as Ctrl-C does: through its clean-up, which kills the
    # running stage with its children (Python's default action ended bench alone and left the stage running)
    exit_on_termination()
    services.up(s, progress=log.info)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.size:
        try:
            r = bench.bench_one(s, size, args.client, data_dir=args.data_dir, out_dir=args.out_dir,
                                seed=args.seed, reference=not args.no_reference,
                                pipeline=not args.no_pipeline, keep_data=args.keep_data, name=args.name)
        except bench.BenchFailed as exc:  # what failed and its log's tail: no traceback of bench's own code
            print(f"logpipe bench: {exc}", file=sys.stderr)
            return 1
        results.append(r)
        row = bench.markdown_row(r)
        print(row)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            text = args.markdown.read_text() if args.markdown.exists() else ""
            args.markdown.write_text(bench.add_table_row(text, row))
    print(json.dumps([{k: r[k] for k in ("lines", "end_to_end", "ratios", "peak_rss_mb_concurrent")} for r in results],
                     indent=2), file=sys.stderr)
    return 0 if all(bench.verified_exact(r) for r in results) else 1
