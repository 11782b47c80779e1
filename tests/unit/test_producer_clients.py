"""The producer's Kafka client settings that do not need a broker."""

from __future__ import annotations

import pytest

from logpipe.config import Settings
from logpipe.producer.clients import delivery_timeouts_ms

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("delivery_s", "linger_ms", "want"), [(120, 20, (120_000, 30_000)), (20, 20, (20_000, 19_980)),
                                                               (1, 5, (1_000, 995))])
def test_the_clients_request_timeout_fits_in_their_delivery_timeout(delivery_s, linger_ms, want):
    """Both clients refuse a delivery timeout shorter than linger + request timeout (kafka-python when it is made):
    LOGPIPE_PRODUCER_DELIVERY_TIMEOUT_S below 30 s shortens the request timeout with it."""
    got = delivery_timeouts_ms(Settings(producer_delivery_timeout_s=delivery_s, linger_ms=linger_ms))
    assert got == want and got[0] >= linger_ms + got[1]


def test_kafka_python_takes_the_shortest_delivery_timeout_the_setting_allows():
    """kafka-python checks delivery >= linger + request when the producer is made (before it connects): the
    smallest setting (1 s) with the default linger is accepted."""
    from kafka.producer.record_accumulator import RecordAccumulator

    from kafka.errors import KafkaConfigurationError

    s = Settings(producer_delivery_timeout_s=1)
    delivery_ms, request_ms = delivery_timeouts_ms(s)
    RecordAccumulator(delivery_timeout_ms=delivery_ms, request_timeout_ms=request_ms, linger_ms=s.linger_ms)
    with pytest.raises(KafkaConfigurationError):  # the client's own check, which the line above passes
        RecordAccumulator(delivery_timeout_ms=delivery_ms, request_timeout_ms=request_ms + 1, linger_ms=s.linger_ms)


def test_a_delivery_timeout_too_short_for_the_linger_is_refused_with_both_names():
    """A delivery timeout the linger alone would use up: kafka-python refused it with its own configuration error
    when the producer was made; the settings refuse it first, naming both settings."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="producer_delivery_timeout_s .* linger_ms"):
        Settings(producer_delivery_timeout_s=1, linger_ms=600)
    assert delivery_timeouts_ms(Settings(producer_delivery_timeout_s=1, linger_ms=500)) == (1_000, 500)
