"""Kafka topic administration: create the pipeline's topics when missing, delete a run's topics and wait until gone."""

from __future__ import annotations

import logging
import time

from logpipe.config import Settings

log = logging.getLogger(__name__)


def create_topic(s: Settings, topic: str, partitions: int, configs: dict[str, str] | None = None) -> bool:
    """Create `topic` (replication LOGPIPE_TOPIC_REPLICATION) unless it exists; True if this call created it.
    The pipeline never relies on the broker creating topics on first use (`auto.create.topics.enable` is often off
    in production, and a topic made that way has the broker's defaults, not ours)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address, client_id="logpipe-admin")
    try:
        if topic in admin.list_topics():
            return False
        configs = topic_configs(s, configs)
        try:  # returns once every partition has a leader: a client may send to it at once
            admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": s.topic_replication,
                                         "configs": configs}}, wait_for_metadata=True)
        except TopicAlreadyExistsError:  # created meanwhile by another process
            return False
        log.info("created topic %s (%d partition%s%s)", topic, partitions, "" if partitions == 1 else "s",
                 "".join(f", {k} {v}" for k, v in (configs or {}).items()))
        return True
    finally:
        admin.close()


def topic_configs(s: Settings, configs: dict[str, str] | None = None) -> dict[str, str]:
    """`configs` for a new topic, with min.insync.replicas 2 when it has 3 copies or more (LOGPIPE_TOPIC_REPLICATION):
    the producers' acks=all then waits for a second copy of every record (a broker's default, 1, lets the leader
    alone acknowledge one once its followers fell behind, and losing that leader's disk loses it, after the producer
    saved its position past it), and one broker may still be down. With 2 copies, 2 would stop every write while
    either broker is down: left to the broker's default there, as with one copy. Left as given when set."""
    out = dict(configs or {})
    if s.topic_replication >= 3:
        out.setdefault("min.insync.replicas", "2")
    return out


def topic_id(s: Settings, topic: str, timeout_s: float | None = None) -> str | None:
    """The broker's id of `topic` (a UUID, new each time a topic of that name is made), or None if there is none.
    Offsets are only meaningful within one id: a topic deleted and made again starts at offset 0. `timeout_s`:
    how long the broker may take to answer (default: the client's own, 30 s)."""
    from kafka.admin import KafkaAdminClient

    limits = {} if timeout_s is None else {"request_timeout_ms": int(timeout_s * 1000),
                                           "bootstrap_timeout_ms": int(timeout_s * 1000)}
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address, client_id="logpipe-admin", **limits)
    try:
        if topic not in admin.list_topics():
            return None
        (meta,) = admin.describe_topics([topic])
        return str(meta["topic_id"]) if meta.get("error_code") == 0 and meta.get("topic_id") else None
    finally:
        admin.close()


def delete_topics(s: Settings, topics: list[str], wait_s: float = 60.0) -> list[str]:
    """Delete those of `topics` that exist and wait until the broker no longer lists them, so the names can be
    created again at once (deletion is asynchronous). Returns the topics deleted; TimeoutError if some are still
    listed `wait_s` after the request was sent."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address, client_id="logpipe-admin",
                             request_timeout_ms=int(max(wait_s, 30) * 1000) + 10_000)
    try:
        existing = set(admin.list_topics())
        present = [t for t in dict.fromkeys(topics) if t in existing]
        if not present:
            return []
        deadline = time.monotonic() + wait_s
        # one deleted meanwhile by someone else is not an error: the wait below sees it gone
        admin.delete_topics(present, timeout_ms=int(max(wait_s, 30) * 1000), raise_errors=False)
        while left := set(present) & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka at {s.kafka_address} still lists the deleted topics {sorted(left)} after "
                                   f"{wait_s:.0f}s: check the broker's log (logpipe stack status shows where)")
            time.sleep(0.5)
        return present
    finally:
        admin.close()


class TopicNotFound(LookupError):
    """The topic does not exist on the broker."""


class TopicReadTimeout(TimeoutError):
    """A topic was not read to its end in time; `records` holds what was read."""

    def __init__(self, message: str, records: list) -> None:
        super().__init__(message)
        self.records = records


def read_topic(s: Settings, topic: str, timeout_s: float = 30.0) -> list:
    """Every record of `topic` (kafka-python ConsumerRecords, by partition, in offset order), from each partition's
    start to its end offset when called: done as soon as the last record is read, with no idle wait, and no
    consumer group (nothing committed). TopicNotFound if it does not exist; TopicReadTimeout if no record came for
    `timeout_s` before its end (a large topic that keeps coming is read to its end, however long that takes); a
    KafkaError if the broker is not reachable."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.kafka_address, enable_auto_commit=False,
                             request_timeout_ms=int(timeout_s * 1000) + 5000,
                             bootstrap_timeout_ms=int(timeout_s * 1000), client_id="logpipe-reader")
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:  # a topic has a partition at least
            raise TopicNotFound(f"topic {topic} does not exist on {s.kafka_address}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        total = sum(end.values()) - sum(consumer.beginning_offsets(tps).values())  # retention may have removed some
        records: list = []
        deadline = time.monotonic() + timeout_s

        def at_end(tp: TopicPartition) -> bool:  # position() waits for a gone broker without a time limit of its own
            pos = consumer.position(tp, timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)))
            return pos is not None and pos >= end[tp]

        while not all(at_end(tp) for tp in tps):
            if time.monotonic() > deadline:
                raise TopicReadTimeout(f"no record of {topic} came for {timeout_s:.0f}s before its end "
                                       f"({len(records):,} of {total:,} read): is the broker at {s.kafka_address} "
                                       "running, and not overloaded? `logpipe stack status`", records)
            for tp, batch in consumer.poll(timeout_ms=500, max_records=50_000).items():
                records.extend(r for r in batch if r.offset < end[tp])
                deadline = time.monotonic() + timeout_s
        return records
    finally:
        consumer.close()


class TopicEnds:
    """Reads the end offsets of a topic's partitions (the offset its next record will get), on demand, with one
    consumer (no group, nothing committed) made on the first read, in the caller's thread. The offsets request
    waits `timeout_s` at most (a metadata fetch for a topic the consumer has not seen yet has no time limit of its
    own: call it where a hang does no harm, as logpipe.streaming.run.TopicQuiet's thread). Close it when done."""

    def __init__(self, s: Settings, topic: str, timeout_s: float = 5.0) -> None:
        self.s, self.topic, self.timeout_s = s, topic, timeout_s
        self._consumer = None

    def read(self) -> dict[int, int]:
        """{partition: end offset}; TopicNotFound if the topic does not exist; a KafkaError (a timeout among
        them) if the broker does not answer in time."""
        from kafka import KafkaConsumer, TopicPartition

        ms = int(self.timeout_s * 1000)
        if self._consumer is None:
            self._consumer = KafkaConsumer(bootstrap_servers=self.s.kafka_address, enable_auto_commit=False,
                                           client_id="logpipe-topic-ends", request_timeout_ms=ms + 1000)
        parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:
            raise TopicNotFound(f"topic {self.topic} does not exist")
        ends = self._consumer.end_offsets([TopicPartition(self.topic, p) for p in sorted(parts)], timeout_ms=ms)
        return {tp.partition: int(off) for tp, off in ends.items()}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
