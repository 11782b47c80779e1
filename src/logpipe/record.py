"""The Kafka record of one log line: the value is the raw line, the key its source position `lp:<src>:<off>`.
A line too large for a Kafka record is sent as a `too_large` record instead (too_large_value)."""

from __future__ import annotations

KEY_PREFIX = "lp:"
# `KEY_FORMAT % (src, off)`: the producer's hot loop formats the key inline, without a function call per line
KEY_FORMAT = b"lp:%s:%d"


# A line over the Kafka message limit: the value is this prefix, the line's length in bytes, a NUL, and the line's
# first TOO_LARGE_HEAD_BYTES bytes. No log line starts with a NUL (a line holding one never parses), so the stream
# tells it from a line, and quarantines it with the reason `too_large`.
TOO_LARGE_PREFIX = b"\x00logpipe:too_large:"
TOO_LARGE_HEAD_BYTES = 16 << 10
# what marks a value as such a stand-in (a line of the log that looks like one is taken as one, on both sides)
TOO_LARGE_PATTERN = r"\A\x00logpipe:too_large:[0-9]+\x00"


# room for the key, the record and batch headers beside a line of LOGPIPE_MAX_MESSAGE_BYTES. None for compression:
# both clients send a batch uncompressed when compressing would make it larger (an incompressible line: kafka-python's
# record batch builder, librdkafka's message set writer)
RECORD_OVERHEAD_BYTES = 4096
# Kafka's default max.message.bytes (broker message.max.bytes), which a topic created without it gets
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def largest_record_bytes(max_line_bytes: int) -> int:
    """The largest record batch the producer may send for lines of up to `max_line_bytes` (its request limit,
    and what the topic's max.message.bytes must allow)."""
    return max(max_line_bytes + RECORD_OVERHEAD_BYTES, 1 << 20)


def too_large_value(head: bytes, length: int) -> bytes:
    """The record value standing for a line of `length` bytes too large for Kafka, of which `head` is the start."""
    return TOO_LARGE_PREFIX + str(length).encode() + b"\x00" + head[:TOO_LARGE_HEAD_BYTES]


def record_key(src: bytes, off: int) -> bytes:
    """The key of the line at byte `off` of source `src` (`<st_dev>:<st_ino>[:<generation>]`, see position.py).
    Equal for a line sent again after a producer restart, so the stream can drop the repeat; unique otherwise."""
    return KEY_FORMAT % (src, off)


def parse_record_key(key: bytes | None) -> tuple[str, int] | None:
    """(src, off) from a logpipe record key; None for a record from another producer (no key, another format)."""
    if not key or not key.startswith(KEY_PREFIX.encode()):
        return None
    src, sep, off = key[len(KEY_PREFIX):].decode("utf-8", "replace").rpartition(":")
    if not sep or not src or not (off.isascii() and off.isdigit()) or str(int(off)) != off or int(off) >= 1 << 63:
        return None  # off: a canonical non-negative 64-bit integer, as the stream reads it
    return src, int(off)
