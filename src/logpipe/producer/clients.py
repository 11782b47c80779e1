"""One small producer interface with two implementations: kafka-python (default) and confluent-kafka (fast path)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from logpipe.config import Settings

log = logging.getLogger("logpipe.producer")


class DeliveryError(RuntimeError):
    """Records were not acknowledged by the broker."""


class RecordSink(Protocol):
    """Sends raw records with headers; `flush` waits for every acknowledgement and raises on failures."""

    sent: int
    failed: int

    def send(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None: ...

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int) -> int: ...

    def flush(self, timeout: float = 120.0) -> None: ...

    def close(self) -> None: ...


class KafkaPythonSink:
    """kafka-python: acks=all, idempotent, compressed, batched."""

    def __init__(self, s: Settings) -> None:
        from kafka import KafkaProducer

        self.sent = self.failed = 0
        self.first_error: str | None = None
        self._p = KafkaProducer(
            bootstrap_servers=s.kafka_address, acks="all", enable_idempotence=True,
            compression_type=None if s.compression == "none" else s.compression,
            batch_size=s.batch_size, linger_ms=s.linger_ms, max_request_size=max(s.max_message_bytes + 4096, 1 << 20),
            retries=2**31 - 1, request_timeout_ms=30000, client_id="logpipe-producer")

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = repr(exc)

    def send(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._p.send(topic, value=value, headers=headers).add_errback(self._on_error)
        self.sent += 1

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int) -> int:
        """Each line as a record with headers src and off (its byte offset); returns the offset after the last."""
        for line in lines:
            self.send(topic, line, [("src", src), ("off", b"%d" % off)])
            off += len(line) + 1
        return off

    def flush(self, timeout: float = 120.0) -> None:
        self._p.flush(timeout=timeout)
        if self.failed:
            raise DeliveryError(f"{self.failed} records not acknowledged; first error: {self.first_error}")

    def close(self) -> None:
        self._p.close(timeout=30)


class ConfluentSink:
    """confluent-kafka (librdkafka): the same guarantees, several times the throughput."""

    def __init__(self, s: Settings) -> None:
        from confluent_kafka import Producer

        self.sent = self.failed = 0
        self.first_error: str | None = None
        self._p = Producer({
            "bootstrap.servers": s.kafka_address, "acks": "all", "enable.idempotence": True,
            "compression.type": s.compression, "linger.ms": s.linger_ms, "batch.size": s.batch_size,
            "message.max.bytes": max(s.max_message_bytes + 4096, 1 << 20),
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1 << 20,
            # a Python callback per failed record only (not one per record): flush() still waits for every
            # acknowledgement, and a failure is still counted and raised
            "delivery.report.only.error": True, "on_delivery": self._on_delivery,
            "client.id": "logpipe-producer"})
        self._since_poll = 0

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def send(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._produce(topic, value, headers)
        self.sent += 1
        self._since_poll += 1
        if self._since_poll >= 10_000:
            self._p.poll(0)
            self._since_poll = 0

    def _produce(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self._p.produce(topic, value, headers=headers)
                return
            except BufferError:
                self._p.poll(0.05)  # local queue full: let deliveries drain

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int) -> int:
        """Each line as a record with headers src and off (its byte offset); returns the offset after the last.
        The hot loop of the producer: one C call per line, the queue-full retry only when it happens."""
        produce = self._p.produce
        for line in lines:
            headers = [("src", src), ("off", b"%d" % off)]
            try:
                produce(topic, line, headers=headers)
            except BufferError:
                self._produce(topic, line, headers)
            off += len(line) + 1
        self.sent += len(lines)
        self._p.poll(0)
        return off

    def flush(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self._p.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise DeliveryError(f"{len(self._p)} records still unacknowledged after {timeout:.0f}s")
        if self.failed:
            raise DeliveryError(f"{self.failed} records not acknowledged; first error: {self.first_error}")

    def close(self) -> None:
        self._p.flush(30)


def make_sink(s: Settings) -> RecordSink:
    return ConfluentSink(s) if s.producer_client == "confluent" else KafkaPythonSink(s)
