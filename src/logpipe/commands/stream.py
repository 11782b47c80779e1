"""`logpipe stream`: the Structured Streaming job (Kafka -> parse -> windows/alerts -> Parquet on HDFS)."""

from __future__ import annotations

import argparse
import json
import sys

from logpipe.cli import add_setting_flags, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="run the streaming analytics job")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--until-done", action="store_true",
                      help="process everything in the topic, write the still-open windows, then exit")
    mode.add_argument("--until-idle", type=float, metavar="SECONDS", default=None,
                      help="process records as they arrive (while a producer writes them); once records came and "
                           "then none for SECONDS, finish as --until-done does")
    add_setting_flags(p, "topic", "alerts_topic", "hdfs_root", "spark_master", "window", "slide", "watermark",
                      "future_tolerance", "max_offsets_per_trigger", "trigger_interval", "shuffle_partitions",
                      "rate_limit_ceiling", "surge_min_count", "surge_min_share")
    p.set_defaults(func=run, needs_spark=True)


def run(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from logpipe.health import ServiceTimeout
    from logpipe.streaming.run import StopRequested, check_until_idle, run_stream

    s = settings_from_args(args)
    try:
        check_until_idle(s, args.until_idle)
    except ValueError as exc:
        print(f"logpipe stream: {exc}", file=sys.stderr)
        return 2
    try:
        metrics = run_stream(s, until_done=args.until_done, until_idle_s=args.until_idle)
    except StopRequested as exc:  # committed batches stand: not an error, but not done either
        print(f"logpipe stream: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ServiceTimeout, RuntimeError) as exc:
        print(f"logpipe stream: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:  # the admin calls before the query starts (its topic's id, the alerts topic)
        print(f"logpipe stream: {type(exc).__name__}: {exc} -- check that the broker runs (native stack: `logpipe "
              f"stack status`; compose: `docker compose ps kafka`, `docker compose logs kafka`) and LOGPIPE_KAFKA_BOOTSTRAP ({s.kafka_address})",
              file=sys.stderr)
        return 1
    print(json.dumps(metrics, default=str))
    return 0
