"""The Kafka record of a log line: its key, the stand-in for a line too large, the producer's request limit."""

from __future__ import annotations

import pytest

from logpipe.record import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, RECORD_OVERHEAD_BYTES, largest_record_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("max_line", [1, 64 << 10, (1 << 20) - RECORD_OVERHEAD_BYTES])
def test_the_request_limit_is_kafkas_one_mib_for_ordinary_lines(max_line):
    assert largest_record_bytes(max_line) == 1 << 20
    assert largest_record_bytes(max_line) <= KAFKA_DEFAULT_MAX_MESSAGE_BYTES  # a topic's default takes such a batch


@pytest.mark.parametrize("max_line", [(1 << 20) - RECORD_OVERHEAD_BYTES + 1, 4 << 20, 100 << 20])
def test_a_larger_line_limit_leaves_room_for_the_key_and_headers(max_line):
    assert largest_record_bytes(max_line) == max_line + RECORD_OVERHEAD_BYTES > 1 << 20


@pytest.mark.parametrize("codec", ["gzip", "snappy"])  # the two that grow random bytes most
def test_a_batch_of_one_incompressible_line_at_the_limit_fits_the_limit(codec):
    """The limit leaves no room for compression's framing, which makes random bytes larger (gzip and snappy by
    about 0.03 %, more than the 4 KB room for a line of 14 MB or more): the client sends such a batch uncompressed.
    Checked with kafka-python's record batch builder, as it sends (librdkafka does the same: its msgset writer)."""
    import os

    from kafka.record.default_records import DefaultRecordBatchBuilder
    from kafka.record.memory_records import MemoryRecordsBuilder

    line = os.urandom(16 << 20)
    batch = MemoryRecordsBuilder(magic=2, compression_type=getattr(DefaultRecordBatchBuilder, f"CODEC_{codec.upper()}"),
                                 batch_size=1)
    batch.append(timestamp=None, key=b"lp:2049:1234567:1:%d" % (1 << 40), value=line, headers=[])
    batch.close()
    assert len(line) < len(batch.buffer()) <= largest_record_bytes(len(line))
