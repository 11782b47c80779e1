"""The settings of the topics the pipeline makes (logpipe.topics), without a broker."""

from __future__ import annotations

import pytest

from logpipe.config import Settings
from logpipe.topics import topic_configs

pytestmark = pytest.mark.unit


def test_a_replicated_topic_waits_for_a_second_copy_of_each_record():
    """acks=all with the broker's default min.insync.replicas (1) lets the leader alone acknowledge a record once
    its followers fell behind: a topic of 3 copies or more is made with 2, unless the caller set it."""
    limit = {"max.message.bytes": "1052672"}
    assert topic_configs(Settings(topic_replication=3), limit) == {**limit, "min.insync.replicas": "2"}
    assert topic_configs(Settings(topic_replication=5)) == {"min.insync.replicas": "2"}
    assert topic_configs(Settings(topic_replication=2), limit) == limit  # 2 would stop writes while one is down
    assert topic_configs(Settings(topic_replication=3), {"min.insync.replicas": "3"}) == {"min.insync.replicas": "3"}
    assert topic_configs(Settings(topic_replication=1), limit) == limit  # one copy: nothing to wait for
    assert limit == {"max.message.bytes": "1052672"}  # the caller's dict is left as it was
