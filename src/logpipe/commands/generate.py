"""`logpipe generate`: write a realistic access log with planted incidents and its ground-truth file."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path

log = logging.getLogger("logpipe.generate")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate an access log (+ <out>.truth.json) deterministically")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", help="approximate size, e.g. 40MB, 2.5GB")
    size.add_argument("--lines", type=int, help="exact number of lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/access.log"))
    p.add_argument("--format", dest="fmt", choices=["seed", "clf", "combined"], default="seed")
    p.add_argument("--start", default="2004-05-18T00:00:00Z", help="log time of the first line (UTC)")
    p.add_argument("--rate", type=float, default=100.0, help="average lines per second of log time")
    p.add_argument("--malformed-share", type=float, default=0.001)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from logpipe.config import load_settings
    from logpipe.generator import generate, parse_size, truth_path

    s = load_settings()
    start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    truth = generate(args.out, lines=args.lines, size_bytes=parse_size(args.size) if args.size else None,
                     seed=args.seed, fmt=args.fmt, start=start, rate=args.rate, malformed_share=args.malformed_share,
                     ceiling=s.rate_limit_ceiling, surge_min_count=s.surge_min_count)
    log.info("%s: %d lines (%d malformed, %d out of order), %d incidents; truth in %s", args.out, truth.total_lines,
             truth.malformed_lines, truth.out_of_order_lines, len(truth.incidents), truth_path(args.out))
    return 0
