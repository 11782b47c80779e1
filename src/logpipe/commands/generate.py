"""`logpipe generate`: write a realistic access log with planted incidents and its ground-truth file."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("logpipe.generate")


def register(sub: argparse._SubParsersAction) -> None:
    from logpipe.cli import add_setting_flags
    from logpipe.generator import DEFAULT_MALFORMED_SHARE, DEFAULT_OUT_OF_ORDER_SHARE, DEFAULT_RATE

    p = sub.add_parser("generate", help="generate an access log (+ <out>.truth.json) deterministically")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", help="approximate size in decimal units, e.g. 40MB, 2.5GB")
    size.add_argument("--lines", type=int, help="exact number of lines")
    p.add_argument("--seed", type=int, default=0, help="the same seed and arguments give the same log (default 0)")
    p.add_argument("--out", type=Path, default=Path("data/access.log"),
                   help="the log to write (default data/access.log, from the current folder); the truth goes beside it")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (refused otherwise)")
    p.add_argument("--format", dest="fmt", choices=["seed", "clf", "combined"], default="seed",
                   help="the lines' format: the seed's `[2004-05-18 05:58:48]` (UTC), Apache's Common or Combined "
                        "Log Format (with zone offsets) (default seed)")
    p.add_argument("--start", default="2004-05-18T00:00:00Z",
                   help="log time of the first line (ISO, UTC if no zone) (default %(default)s)")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help="average lines per second of log time (default %(default)s)")
    p.add_argument("--malformed-share", type=float, default=DEFAULT_MALFORMED_SHARE,
                   help="share of lines made unparseable on purpose, each kind with its reason in the truth file "
                        "(default %(default)s)")
    p.add_argument("--out-of-order-share", type=float, default=DEFAULT_OUT_OF_ORDER_SHARE,
                   help="share of lines stamped 1-10 s before their place in the file (out of order, inside the "
                        "watermark) (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when not a TTY)")
    # the traffic is shaped by the alert rules: background below them, incidents clearly above
    add_setting_flags(p, "rate_limit_ceiling", "surge_min_count", "surge_min_share", "window", "slide")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from logpipe.cli import exit_on_termination, settings_from_args
    from logpipe.generator import generate, parse_size, truth_path

    s = settings_from_args(args)
    exit_on_termination()  # SIGTERM ends it through its clean-up, as Ctrl-C does: no half-written <out>.partial
    try:
        size_bytes = parse_size(args.size) if args.size else None
    except ValueError as exc:
        print(f"logpipe generate: --size: {exc}", file=sys.stderr)
        return 2
    try:
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    except ValueError:
        print(f"logpipe generate: --start: not an ISO date and time: {args.start!r} (e.g. 2004-05-18T00:00:00Z)",
              file=sys.stderr)
        return 2
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if args.out.is_dir() or not args.out.name:  # --force would not help: say so now
        print(f"logpipe generate: --out {args.out} is a folder: give the log's file name, e.g. "
              f"{args.out / 'access.log'}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.force:  # it may be a real log, or the one a topic was produced from
        print(f"logpipe generate: {args.out} exists: give --force to replace it, or another --out", file=sys.stderr)
        return 2
    try:
        truth = generate(args.out, lines=args.lines, size_bytes=size_bytes, seed=args.seed, fmt=args.fmt,
                         start=start, rate=args.rate, malformed_share=args.malformed_share,
                         out_of_order_share=args.out_of_order_share, settings=s,
                         progress=False if args.no_progress else None)
    except ValueError as exc:  # an argument out of range: the message says which
        print(f"logpipe generate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out in a folder that cannot be made or written, or a folder itself
        path = exc.filename2 or exc.filename  # a rename's target, or the file or folder it could not make
        where = f" ({path})" if path and str(path) != str(args.out) else ""
        print(f"logpipe generate: cannot write {args.out}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    log.info("%s: %d lines, %.1f MB (%d malformed, %d out of order), %d incidents; truth in %s", args.out,
             truth.total_lines, truth.total_bytes / 1e6, truth.malformed_lines, truth.out_of_order_lines,
             len(truth.incidents), truth_path(args.out))
    return 0
