"""`logpipe stack up|status|down` lifecycle on a private run folder and ports: idempotent up, data kept by down,
wiped (with the producer's positions) by down --wipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PORT_SETTINGS = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "NAMENODE_RPC_PORT", "NAMENODE_HTTP_PORT",
                 "DATANODE_HTTP_PORT", "DATANODE_DATA_PORT", "DATANODE_IPC_PORT")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logpipe", "stack", *args], env=env, capture_output=True, text=True,
                          timeout=400)


def test_up_status_down_up_keeps_data(tmp_path: Path, settings, free_ports):
    from hdfs import InsecureClient

    *free, spare = free_ports(len(PORT_SETTINGS) + 1)
    ports = dict(zip(PORT_SETTINGS, free))
    http = ports["NAMENODE_HTTP_PORT"]
    env = {**os.environ, "LOGPIPE_RUN_DIR": str(tmp_path / "run"), **{f"LOGPIPE_{k}": str(v) for k, v in ports.items()}}
    env.pop("LOGPIPE_KAFKA_BOOTSTRAP", None)
    env.pop("LOGPIPE_PRODUCER_STATE_DIR", None)  # the default position store, under the run folder
    env["LOGPIPE_SPARK_AOT_CACHE"] = "false"  # no Spark training run for this private stack (test_stack.py has one)
    positions = tmp_path / "run" / "producer" / "some-topic"
    timings = {}
    try:
        t = time.monotonic()
        r = _cli(env, "up")
        timings["up_from_nothing_s"] = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        t = time.monotonic()
        r = _cli(env, "up")
        timings["up_again_s"] = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        assert "started" not in r.stderr  # nothing restarted: up twice is harmless
        assert "older configuration" not in r.stderr
        # a setting of the broker changed while it runs (as after an upgrade of logpipe): up says how to apply it
        r = _cli({**env, "LOGPIPE_TOPIC_PARTITIONS": "3"}, "up")
        assert r.returncode == 0 and "started" not in r.stderr, r.stderr[-3000:]
        assert "kafka runs with an older configuration" in r.stderr and "namenode runs" not in r.stderr, r.stderr
        # a port changed while it runs: said at once, not after the readiness timeout on the new port
        t = time.monotonic()
        r = _cli({**env, "LOGPIPE_KAFKA_PORT": str(spare)}, "up")
        wanted = f"127.0.0.1:{spare}, 127.0.0.1:{ports['KAFKA_CONTROLLER_PORT']}"
        assert r.returncode == 1 and f"not on {wanted} as now set" in r.stderr, r.stderr
        assert time.monotonic() - t < 60
        # its pid record lost (or written before a step of the wall clock): up takes the broker as its own again
        (tmp_path / "run" / "pids" / "kafka.json").unlink()
        r = _cli(env, "up")
        assert r.returncode == 0 and "taking it as this stack's" in r.stderr and "started" not in r.stderr, r.stderr
        r = _cli(env, "status", "--json")
        assert r.returncode == 0
        status = json.loads(r.stdout)
        assert [s["service"] for s in status["services"]] == ["kafka", "namenode", "datanode"]
        assert all(s["running"] and s["pid"] for s in status["services"])
        assert all(Path(s["log"]).is_file() for s in status["services"])
        assert status["urls"]["HDFS file browser"].startswith(f"http://127.0.0.1:{http}/explorer.html")

        client = InsecureClient(f"http://127.0.0.1:{http}", user=settings.hdfs_user_name)
        client.write("/keep/me.txt", data=b"kept", overwrite=True)

        t = time.monotonic()
        import socket

        # a client of the stack, named by `down`: through a v6 socket, as Java's are (`::ffff:127.0.0.1`)
        with socket.socket(socket.AF_INET6) as client_socket:
            client_socket.connect(("::ffff:127.0.0.1", ports["KAFKA_PORT"]))
            r = _cli(env, "down")
        timings["down_s"] = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"pid {os.getpid()} uses the stack and fails once it is down" in r.stderr, r.stderr[-3000:]
        assert _cli(env, "status").returncode == 3  # not running any more
        t = time.monotonic()
        r = _cli(env, "up")
        timings["up_with_data_s"] = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        with client.read("/keep/me.txt") as f:
            assert f.read() == b"kept"
        positions.mkdir(parents=True)
        (positions / "1-2.json").write_text("{}")  # a producer position: it points into the topics wiped below
    finally:
        _cli(env, "down", "--wipe")
        print("stack lifecycle timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert not (tmp_path / "run" / "data").exists()
    assert not positions.parent.exists()  # a producer would otherwise resume past lines the new topics lack


def test_port_taken_is_a_clear_error(tmp_path: Path, free_ports):
    """Two of the stack's ports held by another process (this test's listening sockets, on ports of its own: not
    the session stack's, which an external cluster would not hold): `stack up` names every taken port and its
    owner, and starts nothing."""
    import socket

    ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS))))
    env = {**os.environ, "LOGPIPE_RUN_DIR": str(tmp_path / "run2"), "LOGPIPE_BIND_HOST": "127.0.0.1",
           **{f"LOGPIPE_{k}": str(v) for k, v in ports.items()}}
    env.pop("LOGPIPE_KAFKA_BOOTSTRAP", None)
    held = []
    try:
        for name in ("KAFKA_PORT", "DATANODE_IPC_PORT"):
            sock = socket.socket()
            sock.bind(("127.0.0.1", ports[name]))
            sock.listen()
            held.append(sock)
        r = _cli(env, "up")
    finally:
        for sock in held:
            sock.close()
    assert r.returncode == 1
    owner = f"by pid {os.getpid()}"
    assert f"127.0.0.1:{ports['KAFKA_PORT']} (kafka) {owner}" in r.stderr, r.stderr  # every taken port, named
    assert f"127.0.0.1:{ports['DATANODE_IPC_PORT']} (datanode) {owner}" in r.stderr and "nothing was started" \
        in r.stderr
    assert not (tmp_path / "run2" / "jars").exists() or not any((tmp_path / "run2" / "jars").iterdir())
    assert not (tmp_path / "run2" / "pids").exists() or not any((tmp_path / "run2" / "pids").iterdir())
