"""`logpipe health kafka|hdfs|producer|spark`: exit 0 when it is ready (compose healthchecks and scripts use it)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from logpipe import health

    p = sub.add_parser("health", help="check that Kafka or HDFS is ready, that a producer's loop still moves, or "
                                      "that the streaming job's Spark UI answers (exit 0) or not (exit 1; 2: a flag "
                                      "that does not apply or invalid LOGPIPE_* settings)")
    health.add_arguments(p)
    p.set_defaults(func=health.run)
