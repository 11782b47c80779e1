"""The tests' port picker (conftest.free_ports): distinct, bindable ports outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_free_ports_are_distinct_and_bindable(free_ports):
    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.skipif(not RANGE_FILE.is_file(), reason="no Linux ephemeral port range to check against")
def test_free_ports_are_below_the_ephemeral_range(free_ports):
    low = int(RANGE_FILE.read_text().split()[0])
    # the OS gives ports of that range to outgoing connections: one could take a picked port before its service binds
    assert all(p < low for p in free_ports(8))
