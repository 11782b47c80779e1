"""The Kafka record of one log line: the value is the raw line, the key its source position `lp:<src>:<off>`."""

from __future__ import annotations

KEY_PREFIX = "lp:"
# `KEY_FORMAT % (src, off)`: the producer's hot loop formats the key inline, without a function call per line
KEY_FORMAT = b"lp:%s:%d"


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
