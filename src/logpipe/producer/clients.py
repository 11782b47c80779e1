"""One small producer interface with two implementations: kafka-python (default) and confluent-kafka (fast path)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from logpipe.config import Settings
from logpipe.record import KEY_FORMAT, largest_record_bytes

log = logging.getLogger("logpipe.producer")


class DeliveryError(RuntimeError):
    """Records were not acknowledged by the broker."""


class RecordSink(Protocol):
    """Sends raw keyed records; `flush` waits for every acknowledgement and raises on failures."""

    sent: int
    failed: int

    def partitions(self, topic: str) -> int: ...

    def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]] | None = None,
             partition: int | None = None) -> None: ...

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int, partition: int) -> int: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


# Both clients ask a broker to make a topic they send to that does not exist (their default; Kafka's brokers make
# it unless auto.create.topics.enable=false): a log topic deleted under a running producer then came back with the
# broker's defaults (partitions, replication, a 1 MB record limit) and the lines after the deletion only. The
# producer makes its topic itself (producer.run.ensure_topic); a topic gone meanwhile fails the sends instead.


class KafkaPythonSink:
    """kafka-python: acks=all, idempotent, compressed, batched."""

    def __init__(self, s: Settings) -> None:
        from kafka import KafkaProducer

        self.sent = self.failed = 0
        self.first_error: str | None = None
        self.delivery_timeout_s = s.producer_delivery_timeout_s
        delivery_ms, request_ms = delivery_timeouts_ms(s)
        self._p = KafkaProducer(
            bootstrap_servers=s.kafka_address, acks="all", enable_idempotence=True,
            compression_type=None if s.compression == "none" else s.compression,
            batch_size=s.batch_size, linger_ms=s.linger_ms, max_request_size=largest_record_bytes(s.max_message_bytes),
            retries=2**31 - 1, delivery_timeout_ms=delivery_ms, request_timeout_ms=request_ms,
            allow_auto_create_topics=False,  # see above KafkaPythonSink
            client_id="logpipe-producer")
        self._timed_out = False  # a flush gave up: close() then does not wait for the broker again

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = repr(exc)

    def partitions(self, topic: str) -> int:
        return len(self._p.partitions_for(topic))

    def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]] | None = None,
             partition: int | None = None) -> None:
        self._p.send(topic, value=value, key=key, headers=headers, partition=partition).add_errback(self._on_error)
        self.sent += 1

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int, partition: int) -> int:
        """Each line as a record keyed `lp:<src>:<off>` (off: its byte offset) to `partition`; returns the offset
        after the last line."""
        for line in lines:
            self.send(topic, line, KEY_FORMAT % (src, off), partition=partition)
            off += len(line) + 1
        return off

    def flush(self, timeout: float | None = None) -> None:
        from kafka.errors import KafkaError, KafkaTimeoutError

        timeout = self.delivery_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                # kafka-python's flush(t) waits up to t for each unfinished batch in turn, so a hung broker held
                # it for a multiple of t (240 s of a 120 s timeout measured): short waits, up to the deadline
                self._p.flush(timeout=min(max(deadline - time.monotonic(), 0.001), 1.0))
                break
            except KafkaTimeoutError as exc:
                if time.monotonic() < deadline:
                    continue
                self._timed_out = True
                raise DeliveryError(f"records still unacknowledged after {timeout:.0f}s ({exc}); {self.failed} "
                                    f"failed so far, first error: {self.first_error}") from exc
            except KafkaError as exc:
                # kafka-python 3.0 ends a flush with UnknownError('Future not done') while a batch the broker
                # refused as too large is split and sent again; its records' own errors come a moment later
                if time.monotonic() >= deadline:
                    self._timed_out = True
                    raise DeliveryError(f"records not acknowledged within {timeout:.0f}s ({exc!r}); "
                                        f"{self.failed} failed so far, first error: {self.first_error}") from exc
                time.sleep(0.05)
        if self.failed:
            # records expired (the broker did not answer in the delivery timeout): closing must not wait for its
            # requests still in flight (measured: 6-10 s more with a hung broker)
            self._timed_out = True
            raise DeliveryError(f"{self.failed} records not acknowledged; first error: {self.first_error}")

    def close(self) -> None:
        from kafka.errors import KafkaTimeoutError

        # kafka-python's close(t) first flushes for t seconds and raises if that times out, before it stops its
        # sender thread; after a flush that gave up or saw records fail, the broker had its delivery timeout:
        # close(0) skips the wait (then its flush raises at once and the sender, a daemon thread, is stopped by
        # force; every record sent was done or failed already)
        if not self._timed_out:
            self._p.close(timeout=30)
            return
        try:
            self._p.close(timeout=0)
        except KafkaTimeoutError:
            sender = getattr(self._p, "_sender", None)  # kafka-python's own close(0) would do this after its flush
            if sender is not None:
                sender.force_close()


class ConfluentSink:
    """confluent-kafka (librdkafka): the same guarantees, several times the throughput."""

    def __init__(self, s: Settings) -> None:
        from confluent_kafka import Producer

        self.sent = self.failed = 0
        self.first_error: str | None = None
        self.delivery_timeout_s = s.producer_delivery_timeout_s
        delivery_ms, request_ms = delivery_timeouts_ms(s)
        self._p = Producer({
            "bootstrap.servers": s.kafka_address, "acks": "all", "enable.idempotence": True,
            "compression.type": s.compression, "linger.ms": s.linger_ms, "batch.size": s.batch_size,
            "message.max.bytes": largest_record_bytes(s.max_message_bytes),
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1 << 20,
            # a Python callback per failed record only (not one per record): flush() still waits for every
            # acknowledgement, and a failure is still counted and raised
            "delivery.report.only.error": True, "on_delivery": self._on_delivery,
            "delivery.timeout.ms": delivery_ms, "request.timeout.ms": request_ms,
            "client.id": "logpipe-producer", "allow.auto.create.topics": False,  # see above KafkaPythonSink
            # librdkafka's own messages (a broker unreachable, ...) through Python's logging, in the producer's log
            # format, not written straight to stderr by the C library
            "logger": logging.getLogger("logpipe.producer.librdkafka")})
        self._since_poll = 0
        self._timed_out = False  # a flush gave up: close() then does not wait for the broker again

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def partitions(self, topic: str) -> int:
        """The topic's partition count. librdkafka reports a topic it cannot describe (deleted, or not known to
        the broker yet) with an error and no partitions, where kafka-python raises: so does this, rather than
        returning 0 and sending the log to another partition than its earlier lines."""
        meta = self._p.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise RuntimeError(f"Kafka cannot describe topic {topic!r}: {meta.error if meta is not None else 'absent'}"
                               " (was it deleted meanwhile? `logpipe stack status`; the same command goes on from"
                               " the last saved position)")
        return len(meta.partitions)

    def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]] | None = None,
             partition: int | None = None) -> None:
        extra: dict[str, object] = {} if partition is None else {"partition": partition}
        if headers:
            extra["headers"] = headers
        self._produce(topic, value, key, **extra)
        self.sent += 1
        self._since_poll += 1
        if self._since_poll >= 10_000:
            self._p.poll(0)
            self._since_poll = 0

    def _produce(self, *args: object, **kwargs: object) -> None:
        while True:
            try:
                self._p.produce(*args, **kwargs)
                return
            except BufferError:
                self._p.poll(0.05)  # local queue full: let deliveries drain

    def send_lines(self, topic: str, lines: list[bytes], src: bytes, off: int, partition: int) -> int:
        """Each line as a record keyed `lp:<src>:<off>` (off: its byte offset) to `partition`; returns the offset
        after the last line. The hot loop of the producer: one C call per line with positional arguments, no
        headers (headers cost librdkafka an allocation per record: 200 k -> 320 k lines/s without them), the
        queue-full retry only when it happens."""
        produce = self._p.produce
        key_format = KEY_FORMAT
        for line in lines:
            key = key_format % (src, off)
            try:
                produce(topic, line, key, partition)
            except BufferError:
                self._produce(topic, line, key, partition)
            off += len(line) + 1
        self.sent += len(lines)
        self._p.poll(0)
        return off

    def flush(self, timeout: float | None = None) -> None:
        timeout = self.delivery_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while self._p.flush(1.0) > 0:
            if time.monotonic() > deadline:
                self._timed_out = True
                raise DeliveryError(f"{len(self._p)} records still unacknowledged after {timeout:.0f}s")
        if self.failed:
            raise DeliveryError(f"{self.failed} records not acknowledged; first error: {self.first_error}")

    def close(self) -> None:
        # after a flush that gave up, the broker had its delivery timeout: waiting 30 s more only delays the exit
        # (the unconfirmed lines are sent again by the next run, from the saved position)
        self._p.flush(0 if self._timed_out else 30)


def delivery_timeouts_ms(s: Settings) -> tuple[int, int]:
    """The clients' delivery timeout (a record not confirmed by then fails) and request timeout: the setting, and
    30 s (both clients' default) or less, as both require a delivery timeout of at least linger + request."""
    delivery_ms = int(s.producer_delivery_timeout_s * 1000)
    return delivery_ms, max(min(30_000, delivery_ms - s.linger_ms), 1)


def make_sink(s: Settings) -> RecordSink:
    return ConfluentSink(s) if s.producer_client == "confluent" else KafkaPythonSink(s)
