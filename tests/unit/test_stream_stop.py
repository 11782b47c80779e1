"""A deliberate stop: py4j's traceback for an interrupted micro-batch callback becomes one info line."""

from __future__ import annotations

import logging

import pytest

from logpipe.streaming import run

pytestmark = pytest.mark.unit


def test_interrupted_callback_traceback_is_quieted_only_once_stopping(caplog: pytest.LogCaptureFixture) -> None:
    py4j = logging.getLogger("py4j.clientserver")
    caplog.set_level(logging.INFO)
    try:
        raise RuntimeError("An error occurred while calling o1.collectToPython.\n: java.lang.InterruptedException")
    except RuntimeError:
        py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # before a stop: shown as it is
    caplog.clear()
    drop = run._quiet_interrupted_callbacks()
    try:
        try:
            raise RuntimeError(": java.lang.InterruptedException")
        except RuntimeError:
            py4j.error("There was an exception while executing the Python Proxy on the Python Side.", exc_info=True)
        py4j.error("some other py4j failure")
    finally:
        py4j.removeFilter(drop)
    assert [(r.name, r.levelname) for r in caplog.records] == [
        ("logpipe.stream", "INFO"), ("py4j.clientserver", "ERROR")]
    assert "redone on restart" in caplog.records[0].getMessage()
