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


def test_a_wait_for_kafka_or_hdfs_says_once_that_it_waits_and_for_how_long(free_ports, caplog):
    """A wrong address made produce, stream and verify wait their minute in silence."""
    import logging

    kafka, web = free_ports(2)
    with caplog.at_level(logging.INFO, logger="logpipe.health"):
        with pytest.raises(health.ServiceTimeout):
            health.wait_for_kafka(f"127.0.0.1:{kafka}", timeout=1.2)
        with pytest.raises(health.ServiceTimeout):
            health.wait_for_hdfs(f"http://127.0.0.1:{web}", timeout=1.2)
    said = [r.getMessage() for r in caplog.records if r.name == "logpipe.health"]
    assert len(said) == 2, said  # once per wait, not once per try
    assert said[0].startswith(f"Kafka at 127.0.0.1:{kafka} not ready (") and "waiting up to 1s" in said[0]
    assert "LOGPIPE_KAFKA_BOOTSTRAP" in said[0] and "LOGPIPE_WEBHDFS_URL" in said[1]


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


def test_producer_heartbeat_probe_is_ready_only_while_fresh(tmp_path, monkeypatch):
    """`logpipe health producer`: missing file or one older than --max-age is not ready, and the message says
    what to check; a fresh one is ready (exit 0), whatever the topic's position files hold."""
    import os

    from logpipe.producer.position import PositionStore

    beat = tmp_path / "heartbeat"
    with pytest.raises(health.NotReady, match="no heartbeat file .*LOGPIPE_PRODUCER_STATE_DIR"):
        health.probe_heartbeat(beat, 60)
    beat.touch()
    assert 0 <= health.probe_heartbeat(beat, 60) < 5
    os.utime(beat, (time.time() - 90, time.time() - 90))
    with pytest.raises(health.NotReady, match=r"90s old \(> 60s\): its loop is stuck"):
        health.probe_heartbeat(beat, 60)
    assert health.probe_heartbeat(beat, 120) >= 90

    monkeypatch.setenv("LOGPIPE_PRODUCER_STATE_DIR", str(tmp_path / "pos"))
    monkeypatch.setenv("LOGPIPE_TOPIC", "t1")
    store = PositionStore(tmp_path / "pos", "t1")
    assert health.main(["producer", "--timeout", "0"]) == 1
    store.beat()
    assert store.heartbeat_file.exists() and store.all() == []  # not taken for a position
    assert health.main(["producer", "--timeout", "0"]) == 0
    os.utime(store.heartbeat_file, (time.time() - 30, time.time() - 30))
    assert health.main(["producer", "--timeout", "0", "--max-age", "10"]) == 1
    # the default: a minute, or three checkpoint intervals (it is touched after each flush) if that is longer
    os.utime(store.heartbeat_file, (time.time() - 90, time.time() - 90))
    assert health.main(["producer", "--timeout", "0"]) == 1
    monkeypatch.setenv("LOGPIPE_PRODUCER_CHECKPOINT_S", "40")
    assert health.main(["producer", "--timeout", "0"]) == 0
    # a producer sending to another topic (`produce --topic live`): `--topic` names it, as produce's flag does
    assert health.main(["producer", "--timeout", "0", "--topic", "live"]) == 1
    PositionStore(tmp_path / "pos", "live").beat()
    assert health.main(["producer", "--timeout", "0", "--topic", "live"]) == 0


def test_python_m_health_reports_a_bad_setting_as_the_command_does(monkeypatch, capsys):
    """`python -m logpipe.health` (scripts) and `logpipe health` (compose) are one command: an invalid LOGPIPE_*
    value is one line naming it and exit 2, not a traceback."""
    monkeypatch.setenv("LOGPIPE_WINDOW", "20 sec")
    assert health.main(["kafka", "--timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "LOGPIPE_WINDOW" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "says"), [
    (["kafka", "--max-age", "5"], "--max-age applies to `logpipe health producer` only"),
    (["kafka", "--max-age", "0"], "--max-age applies to `logpipe health producer` only"),
    (["hdfs", "--max-age", "5"], "--max-age applies to `logpipe health producer` only"),
    (["kafka", "--datanode", "127.0.0.1"], "--datanode applies to `logpipe health hdfs` only"),
    (["producer", "--datanode", "127.0.0.1"], "--datanode applies to `logpipe health hdfs` only"),
    (["kafka", "--topic", "live"], "--topic applies to `logpipe health producer` only"),
])
def test_a_health_flag_for_another_service_is_refused(monkeypatch, capsys, argv, says):
    """`health kafka --max-age 5` checked Kafka and ignored the flag: a flag for another service is one line and
    exit 2 (not 1, which says the service is not ready), before any probe."""
    monkeypatch.setattr(health, "wait_until", lambda *a, **k: pytest.fail("probed"))
    assert health.main([*argv, "--timeout", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"logpipe health {argv[0]}: {says}"


def test_kafka_probe_takes_any_open_bootstrap_address(free_ports, monkeypatch):
    """With `b1:9092,b2:9092` and b1 down the cluster is reachable through b2; the fast port check looked at the
    first address only, so the stream and the producer timed out saying the broker was not running. The admin
    client here is a stand-in: what is checked is which addresses the probe lets through to it."""
    import kafka

    given = []

    class Admin:
        def __init__(self, bootstrap_servers, **_):
            given.append(bootstrap_servers)

        def describe_cluster(self):
            return {"brokers": [{"node_id": 1}]}

        def close(self):
            pass

    monkeypatch.setattr(kafka, "KafkaAdminClient", Admin)
    closed, other = free_ports(2)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        bootstrap = f"127.0.0.1:{closed},127.0.0.1:{srv.getsockname()[1]}"
        assert health.probe_kafka(bootstrap) == 1 and given == [bootstrap]
    with pytest.raises(health.NotReady, match=f"nothing listens on 127.0.0.1:{closed}, 127.0.0.1:{other}"):
        health.probe_kafka(f"127.0.0.1:{closed},127.0.0.1:{other}")
    assert len(given) == 1


def test_hdfs_probes_on_a_web_server_that_is_not_hadoop_are_not_ready():
    """LOGPIPE_WEBHDFS_URL pointing at another web service (the Spark UI, a proxy's HTML error page): the probes
    raised JSONDecodeError, a traceback out of `logpipe health hdfs` and `logpipe stream`, instead of the
    timeout whose hint names the setting."""
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not hadoop</html>")

        def log_message(self, *_):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for probe in (health.probe_hdfs, health.probe_blocks_reported):
            with pytest.raises(health.NotReady, match="not a NameNode's JMX answer .*LOGPIPE_WEBHDFS_URL"):
                probe(url)
        with pytest.raises(health.NotReady, match="not a DataNode's JMX answer"):
            health.datanode_info(url)
        with pytest.raises(health.ServiceTimeout, match="not a NameNode's JMX answer"):
            health.wait_for_hdfs(url, timeout=1)
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_spark_ui_probe_wants_a_running_application(free_ports):
    """`logpipe health spark` (the streaming container's healthcheck) is ready only when a Spark UI answers its
    REST API with the streaming job's application; another web server or Spark application, or nothing, is not
    ready."""
    import http.server
    import threading

    answer = {"body": b"[]"}

    class Ui(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/v1/applications" else 404)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *_):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ui)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ui = health.spark_ui_address("0.0.0.0", srv.server_address[1])
    try:
        assert ui == f"http://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(health.NotReady, match="lists no application"):
            health.probe_spark_ui(ui)
        answer["body"] = b"<html>a proxy</html>"
        with pytest.raises(health.NotReady, match="not a Spark UI"):
            health.probe_spark_ui(ui)
        # another SparkSession holding the port (a notebook's): not the job (a review's finding)
        answer["body"] = b'[{"id": "local-2", "name": "a-notebook"}]'
        with pytest.raises(health.NotReady, match="another Spark application's \\(a-notebook\\)"):
            health.probe_spark_ui(ui)
        answer["body"] = b'[{"id": "local-1", "name": "logpipe-stream"}]'
        assert health.probe_spark_ui(ui) == 1
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(health.NotReady):
        health.probe_spark_ui(f"http://127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(ValueError, match="any free port"):
        health.spark_ui_address("127.0.0.1", 0)


def test_a_spark_ui_on_any_free_port_cannot_be_checked_and_says_so_with_exit_2(monkeypatch, capsys):
    """With LOGPIPE_SPARK_UI_PORT=0 no check can know the job's port: that exited 1, which a monitor reads as
    the job being down; it is the setting that does not allow the check (exit 2, as a flag that does not apply)."""
    monkeypatch.setenv("LOGPIPE_SPARK_UI_PORT", "0")
    monkeypatch.setattr(health, "wait_until", lambda *a, **k: pytest.fail("probed"))
    assert health.main(["spark", "--timeout", "0"]) == 2
    assert "LOGPIPE_SPARK_UI_PORT is 0 (any free port)" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_wait_that_is_no_number_of_seconds_is_refused(value, capsys):
    """`health kafka --timeout -1` was taken (and waited no time at all)."""
    from logpipe.cli import main

    for flag in ("--timeout", "--max-age"):
        with pytest.raises(SystemExit) as exit_:
            main(["health", "producer", flag, value])
        assert exit_.value.code == 2 and f"argument {flag}: '{value}'" in capsys.readouterr().err
    assert health.seconds("0") == 0.0 and health.seconds("2.5") == 2.5


def test_a_host_name_that_does_not_resolve_is_said_so_not_taken_for_a_closed_port(free_ports) -> None:
    """`nohost:9092` (a typo in the address) was reported as `nothing listens on nohost:9092`, which sends a user
    to check a broker that runs. The probes say the name does not resolve (`.invalid` never does: RFC 6761)."""
    from logpipe import health

    with pytest.raises(health.NotReady, match=r"cannot resolve host 'nohost\.invalid' .*is the host name in the "
                                              "address right"):
        health.probe_port("nohost.invalid", 9092)
    port = free_ports(1)[0]
    with pytest.raises(health.NotReady, match=rf"^nothing listens on 127\.0\.0\.1:{port}; cannot resolve host "
                                              r"'nohost\.invalid'"):
        health.probe_kafka(f"127.0.0.1:{port},nohost.invalid:9093")
    assert not health.port_open("nohost.invalid", 9092)
