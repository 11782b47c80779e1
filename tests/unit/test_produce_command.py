"""`logpipe produce` turns the producer's failures into one clear line and an exit code, not a traceback."""

from __future__ import annotations

import pytest

from logpipe.cli import build_parser
from logpipe.commands import produce

pytestmark = pytest.mark.unit


def _errors_of(monkeypatch, capsys, exc: BaseException, tmp_path) -> tuple[int, str]:
    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr("logpipe.producer.run.produce_file", fail)
    monkeypatch.setattr(produce.signal, "signal", lambda *_: None)  # keep pytest's own Ctrl-C handler
    args = build_parser().parse_args(["produce", str(tmp_path / "a.log")])
    code = produce.run(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("exc", ["kafka-python", "confluent"])
def test_a_kafka_client_error_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path, exc):
    if exc == "kafka-python":
        from kafka.errors import KafkaTimeoutError

        error: BaseException = KafkaTimeoutError("Failed to update metadata after 60.0 secs.")
    else:
        from confluent_kafka import KafkaError, KafkaException

        error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    code, err = _errors_of(monkeypatch, capsys, error, tmp_path)
    assert code == 1 and err.startswith("logpipe produce: the Kafka client failed") and "stack status" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_delivery_error_says_delivery_failed(monkeypatch, capsys, tmp_path):
    from logpipe.producer.clients import DeliveryError

    code, err = _errors_of(monkeypatch, capsys, DeliveryError("3 records failed: MSG_SIZE_TOO_LARGE"), tmp_path)
    assert code == 1 and err.strip() == "logpipe produce: delivery failed: 3 records failed: MSG_SIZE_TOO_LARGE"


def test_other_errors_are_not_hidden(monkeypatch, capsys, tmp_path):
    with pytest.raises(ZeroDivisionError):
        _errors_of(monkeypatch, capsys, ZeroDivisionError(), tmp_path)
