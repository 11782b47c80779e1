"""Readiness helpers: timeouts say what to check, a dead service is reported at once, probes fail cleanly."""

from __future__ import annotations

import socket
import time

import pytest

from logpipe import health

pytestmark = pytest.mark.unit


def test_timeout_names_the_service_and_the_hint(free_ports):
    (port,) = free_ports(1)
    with pytest.raises(health.ServiceTimeout) as err:
        health.wait_until(lambda: health.probe_port("127.0.0.1", port), what="thing", timeout=0.3,
                          hint="Check the thing's log.", interval=0.05)
    assert "thing not ready" in str(err.value) and "Check the thing's log." in str(err.value)
    assert f"127.0.0.1:{port}" in str(err.value)


def test_dead_service_fails_fast(free_ports):
    (port,) = free_ports(1)
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="died while starting: exit code 1"):
        health.wait_until(lambda: health.probe_port("127.0.0.1", port), what="svc", timeout=30,
                          hint="", interval=0.01, alive=lambda: "exit code 1")
    assert time.monotonic() - t < 5


def test_port_probe_sees_a_listener():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        assert health.port_open("127.0.0.1", srv.getsockname()[1])


def test_http_probe_on_closed_port_is_not_ready(free_ports):
    with pytest.raises(health.NotReady):
        health.http_get(f"http://127.0.0.1:{free_ports(1)[0]}/", timeout=1)


def test_kafka_probe_on_closed_port_is_not_ready(free_ports):
    with pytest.raises(health.NotReady, match="nothing listens on 127.0.0.1"):
        health.probe_kafka(f"127.0.0.1:{free_ports(1)[0]}")
