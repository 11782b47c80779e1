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


def test_a_bad_sample_size_is_refused_before_the_stack_starts(monkeypatch, capsys):
    """`demo --size 40M` (not a size: decimal units with B) ends at once with the reason, exit 2; before, the
    stack started first (minutes on a fresh machine) and the generate step then failed."""
    from logpipe import cli
    from logpipe.stack import services

    started = []
    monkeypatch.setattr(services, "up", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--size", "40M"])
    assert exc.value.code == 2 and not started
    err = capsys.readouterr().err
    assert "--size" in err and "not a size: '40M'" in err, err
    args = cli.build_parser().parse_args(["demo", "--size", "2.5GB"])
    assert args.size == "2.5GB"  # handed on to generate as given
