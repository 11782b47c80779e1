"""`logpipe health kafka|hdfs|producer`: exit 0 when it is ready (compose healthchecks and scripts use it)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check that Kafka or HDFS is ready, or that a producer's loop still moves "
                                      "(exit 0) or not (exit 1; 2: invalid LOGPIPE_* settings)")
    p.add_argument("service", choices=["kafka", "hdfs", "producer"])
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the service (default 5)")
    p.add_argument("--max-age", type=float, default=None,
                   help="producer: the oldest heartbeat that counts as alive, in seconds (default 60, or three "
                        "LOGPIPE_PRODUCER_CHECKPOINT_S if longer)")
    p.set_defaults(func=lambda a: __import__("logpipe.health", fromlist=["main"]).main(
        [a.service, "--timeout", str(a.timeout), *(["--max-age", str(a.max_age)] if a.max_age is not None else [])]))
