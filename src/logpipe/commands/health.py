"""`logpipe health kafka|hdfs`: exit 0 when the service is ready (used by compose healthchecks and scripts)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check that Kafka or HDFS is ready (exit 0) or not (exit 1; 2: invalid "
                                      "LOGPIPE_* settings)")
    p.add_argument("service", choices=["kafka", "hdfs"])
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the service (default 5)")
    p.set_defaults(func=lambda a: __import__("logpipe.health", fromlist=["main"]).main(
        [a.service, "--timeout", str(a.timeout)]))
