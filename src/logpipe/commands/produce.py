"""`logpipe produce`: tail an access log into a Kafka topic, one record per line (the python_service)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from logpipe.cli import add_setting_flags, settings_from_args
from logpipe.config import PRODUCER_CLIENTS, Settings
from logpipe.stopping import set_from_handler


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("produce", help="send a log file's lines to Kafka (resumable; --follow: keep reading as it "
                                       "grows and rotates)")
    p.add_argument("file", type=Path, help="the access log to send")
    p.add_argument("--follow", action="store_true",
                   help="keep reading appended lines; survives rotation/truncation, and waits for a log that does "
                        "not exist yet")
    p.add_argument("--reset", action="store_true", help="ignore the saved position and send the file again")
    client = Settings.model_fields["producer_client"]
    p.add_argument("--client", dest="producer_client", choices=PRODUCER_CLIENTS, default=None,
                   help=f"{client.description} (default: {client.default}) [env LOGPIPE_PRODUCER_CLIENT]")
    add_setting_flags(p, "topic", "speed", "compression", "batch_size", "linger_ms", "topic_partitions",
                      "max_message_bytes", "producer_state_dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from logpipe.health import ServiceTimeout, WaitStopped
    from logpipe.producer.clients import DeliveryError
    from logpipe.producer.position import PositionFolderError
    from logpipe.producer.run import produce_file
    from logpipe.producer.source import InputFileError

    s = settings_from_args(args)
    stop = threading.Event()
    signals: list[int] = []  # the stop signals received

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        on_stop_signal(stop, signum, first=len(signals) == 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        summary = produce_file(s, args.file, follow=args.follow, reset=args.reset, stop_event=stop)
    except WaitStopped as exc:
        print(f"logpipe produce: {exc}; nothing was sent", file=sys.stderr)
        return 1
    except (InputFileError, PositionFolderError) as exc:
        print(f"logpipe produce: {exc}", file=sys.stderr)
        return 2
    except DeliveryError as exc:  # before RuntimeError, its base
        if _topic_gone(s):
            print(f"logpipe produce: delivery failed: {exc}. The topic {s.topic} no longer exists (deleted while "
                  "the producer ran): the same command makes it again and sends the log from byte 0 (the positions "
                  "saved stand for lines of the old topic); results made from the old topic cannot be continued "
                  "from the new one (`logpipe stream` refuses their root: give it another LOGPIPE_HDFS_ROOT)",
                  file=sys.stderr)
            return 1
        print(f"logpipe produce: delivery failed: {exc}. Check that the broker at {s.kafka_address} is up and "
              f"that the topic {s.topic} still exists (`logpipe stack status`); the same command then goes on from "
              "the last position Kafka confirmed (the lines after it are sent again under the same keys: the job "
              "drops the repeats)", file=sys.stderr)
        return 1
    except (ServiceTimeout, RuntimeError) as exc:
        print(f"logpipe produce: {exc}", file=sys.stderr)
        return 1
    except kafka_client_errors() as exc:
        print(f"logpipe produce: the Kafka client failed: {exc!r}. Is the broker at {s.kafka_address} up and "
              f"reachable (`logpipe stack status`, LOGPIPE_KAFKA_BOOTSTRAP)? The same command goes on from the last "
              "saved position.", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()))
    if summary.errors:
        return 1
    if summary.stopped_early:  # not 0: a script must not take the log for sent (`stream --until-done` alike)
        signum = signals[0] if signals else signal.SIGTERM
        print(f"logpipe produce: stopped by {signal.Signals(signum).name} before the end of {args.file}: "
              f"{summary.lines:,} lines sent and saved; run the same command again to send the rest",
              file=sys.stderr)
        return 128 + signum
    if summary.truncated_while_read:  # not 0 either: the rest of the log is not sent yet
        print(f"logpipe produce: {args.file} was truncated while it was read: {summary.lines:,} lines sent and saved, "
              "up to the last whole line read; run the same command again to send the rest from its rotated copy",
              file=sys.stderr)
        return 1
    return 0


def on_stop_signal(stop: threading.Event, signum: int, first: bool) -> None:
    """The first Ctrl-C / SIGTERM stops at the next line and waits for the broker to confirm what was sent (then
    the position is saved); a second one quits at once: the unconfirmed lines are sent again next time, under the
    same keys, and the job drops the repeats. Called in the signal handler: `stop` is set by a thread of its own
    (stopping.set_from_handler), and a message that cannot be written there (the main thread was writing to
    stderr) is left out."""
    if first:
        set_from_handler(stop)  # first: the stop must hold even if the message cannot be written
        _say("logpipe produce: stopping: waiting for the broker to confirm the lines sent (again to quit now)")
        return
    _say("logpipe produce: quitting without waiting; the lines after the last saved position are sent again "
         "next time")
    os._exit(128 + signum)


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except RuntimeError:  # a reentrant write: the signal came while the main thread wrote to stderr
        pass


def kafka_client_errors() -> tuple[type[BaseException], ...]:
    """The base exceptions of both Kafka clients (kafka-python's KafkaError, confluent-kafka's KafkaException)."""
    from confluent_kafka import KafkaException
    from kafka.errors import KafkaError

    return (KafkaError, KafkaException)


def _topic_gone(s: Settings) -> bool:
    """Whether the broker answers and has no topic `s.topic` (False when it cannot be asked: a broker down)."""
    from logpipe.topics import topic_id

    try:
        return topic_id(s, s.topic, timeout_s=3.0) is None  # a broker that hangs: asked briefly, not for 30 s
    except Exception:  # noqa: BLE001 (the broker gone too: the general message applies)
        return False
