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
