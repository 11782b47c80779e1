"""`logpipe demo`'s own decisions, without services: when it stops instead of going on."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_the_demo_stops_when_its_old_topics_cannot_be_deleted(monkeypatch):
    """The demo uses the names again at once: a topic the broker keeps would mix old and new records, so it exits
    with the broker's reason instead of going on."""
    from logpipe.commands import demo
    from logpipe.config import load_settings

    def kept(*_a, **_k):
        raise TimeoutError("Kafka at 127.0.0.1:9092 still lists the deleted topics ['t']")

    monkeypatch.setattr("logpipe.topics.delete_topics", kept)
    with pytest.raises(SystemExit, match="demo: Kafka at .* still lists the deleted topics"):
        demo.delete_topics_or_exit(load_settings(), ["t"])
