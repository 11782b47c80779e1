"""Readiness checks (port, HTTP, Kafka metadata, HDFS out of safe mode, producer heartbeat, Spark UI) shared by
the launcher, compose and tests."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class NotReady(Exception):
    """A single readiness probe failed; the message says why."""


class ServiceTimeout(TimeoutError):
    """A service did not become ready in time. The message says what to check next."""


class ServiceDown(ServiceTimeout):
    """Waiting for a service is pointless: nothing listens where it should, and nothing is starting it (the
    message says how to start it). A ServiceTimeout, so every caller reports it as one."""


class ServiceDied(RuntimeError):
    """A service's process ended while we waited for it to become ready (the message holds its last words)."""


class WaitStopped(Exception):
    """The wait for a service was given up on request (Ctrl-C, SIGTERM)."""


def wait_until(
    probe: Callable[[], T],
    *,
    what: str,
    timeout: float,
    hint: str,
    interval: float = 0.5,
    alive: Callable[[], str | None] | None = None,
    stop: threading.Event | None = None,
    announce: bool = False,
    down: Callable[[], str | None] | None = None,
) -> T:
    """Call `probe` until it returns without raising NotReady/OSError; raise ServiceTimeout after `timeout` s.

    `alive`, if given, is checked between tries; a returned string means the service died (it becomes the error).
    `stop`, if given and set, ends the wait between tries with WaitStopped. `announce`: log once, after the first
    failed try, that the wait has begun and how long it may take (a wrong address is then no silent minute).
    `down`, if given, is checked after a failed try; a returned string means that no wait will help (e.g. the
    native stack is not running): ServiceDown with it at once, not ServiceTimeout after `timeout` s.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        try:
            return probe()
        except (NotReady, OSError) as exc:
            if down is not None and (why := down()):
                raise ServiceDown(f"{what} not ready ({str(exc) or type(exc).__name__}): {why}") from None
            if announce and last == "no attempt made":
                log.info("%s not ready (%s): waiting up to %.0fs. %s", what, str(exc) or type(exc).__name__, timeout,
                         hint)
            last = str(exc) or type(exc).__name__
        if alive is not None:
            dead = alive()
            if dead:
                raise ServiceDied(f"{what} died while starting: {dead}")
        if time.monotonic() >= deadline:
            raise ServiceTimeout(f"{what} not ready after {timeout:.0f}s (last error: {last}). {hint}")
        if stop is None:
            time.sleep(interval)
        elif stop.wait(interval):
            raise WaitStopped(f"stopped while waiting for {what} (last error: {last})")


def connect_problem(host: str, port: int, timeout: float = 1.0) -> str | None:
    """Why no TCP connection to host:port can be made now (a host name that does not resolve, or nothing listening
    there), or None if something accepts one."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:  # a typo in the address, or a name not (yet) in DNS, e.g. a container's
        return f"cannot resolve host {host!r} ({exc.strerror}): is the host name in the address right?"
    except OSError:
        return f"nothing listens on {host}:{port}"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections at host:port."""
    return connect_problem(host, port, timeout) is None


def probe_port(host: str, port: int) -> None:
    if problem := connect_problem(host, port):
        raise NotReady(problem)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    """GET url and return the body; raise NotReady on non-2xx or connection errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs from settings
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise NotReady(f"GET {url} -> HTTP {exc.code}") from exc
    except (urllib.error.URLError, ConnectionError, socket.timeout) as exc:
        raise NotReady(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from exc
    except http.client.HTTPException as exc:  # not HTTP at all (BadStatusLine, ...): not the service we want
        raise NotReady(f"GET {url}: not an HTTP answer ({exc!r})") from exc


def jmx_beans(web: str, query: str, role: str = "NameNode") -> list:
    """The beans of a Hadoop JMX query to the web server at `web`; NotReady if what answers there does not give
    JMX JSON (another web service at that address: the Spark UI, a proxy's error page)."""
    url = f"{web.rstrip('/')}/jmx?qry={query}"
    try:
        beans = json.loads(http_get(url)).get("beans", [])
    except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is not an object
        setting = "LOGPIPE_WEBHDFS_URL" if role == "NameNode" else "the DataNode's HTTP port setting"
        raise NotReady(f"GET {url}: not a {role}'s JMX answer (is {setting} the {role}'s web address?)") from exc
    return beans if isinstance(beans, list) else []


def probe_kafka(bootstrap: str) -> int:
    """Ask the broker for cluster metadata; return the number of brokers. Raises NotReady."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    # fail fast when no bootstrap address takes a connection: kafka-python would wait ~30 s on closed ports.
    # Any one open is enough (the client bootstraps from whichever answers)
    addresses = [a.strip().rpartition(":") for a in bootstrap.split(",") if a.strip()]
    problems = [problem for host, _, port in addresses
                if host and port.isdigit() and (problem := connect_problem(host.strip("[]"), int(port)))]
    if problems and len(problems) == len(addresses):
        closed = [p.removeprefix("nothing listens on ") for p in problems if p.startswith("nothing listens on ")]
        raise NotReady("; ".join(([f"nothing listens on {', '.join(closed)}"] if closed else [])
                                 + [p for p in problems if not p.startswith("nothing listens on ")]))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000,
                                 client_id="logpipe-health")
    except KafkaConfigurationError:
        raise
    except (KafkaError, ValueError) as exc:
        raise NotReady(f"Kafka at {bootstrap}: {exc!r}") from exc
    try:
        cluster = admin.describe_cluster()
        brokers = cluster.get("brokers", [])
        if not brokers:
            raise NotReady(f"Kafka at {bootstrap} answered with no brokers")
        return len(brokers)
    except KafkaError as exc:
        raise NotReady(f"Kafka at {bootstrap}: {exc!r}") from exc
    finally:
        admin.close()


def probe_topic(bootstrap: str, topic: str) -> None:
    """Raise NotReady unless `topic` exists on the broker."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000,
                                 client_id="logpipe-health")
    except (KafkaError, ValueError) as exc:
        raise NotReady(f"Kafka at {bootstrap}: {exc!r}") from exc
    try:
        if topic not in admin.list_topics():
            raise NotReady(f"topic {topic!r} does not exist yet")
    except KafkaError as exc:
        raise NotReady(f"Kafka at {bootstrap}: {exc!r}") from exc
    finally:
        admin.close()


def namenode_info(webhdfs: str) -> dict:
    """The NameNode's NameNodeInfo JMX bean (safe mode, live datanodes, version)."""
    beans = jmx_beans(webhdfs, "Hadoop:service=NameNode,name=NameNodeInfo")
    if not beans:
        raise NotReady("NameNode JMX has no NameNodeInfo bean yet")
    return beans[0]


def probe_blocks_reported(webhdfs: str) -> int:
    """Every block has a live replica: after a DataNode (re)starts, its files cannot be read until it has sent
    the NameNode its block report. Returns the number of blocks."""
    beans = jmx_beans(webhdfs, "Hadoop:service=NameNode,name=FSNamesystem")
    if not beans:
        raise NotReady("NameNode JMX has no FSNamesystem bean yet")
    missing = int(beans[0].get("MissingBlocks", 0))
    if missing:
        raise NotReady(f"{missing} HDFS blocks have no live replica yet (a DataNode has not reported its blocks; "
                       "if this persists, see the DataNode log, and list the files whose blocks are lost with "
                       f"`curl '{webhdfs.rstrip('/')}/fsck?ugi=$USER&path=/&listcorruptfileblocks=1'`: the "
                       "NameNode's fsck, no Hadoop command needed)")
    return int(beans[0].get("BlocksTotal", 0))


def probe_hdfs(webhdfs: str) -> dict:
    """HDFS is writable: NameNode out of safe mode, at least one live DataNode, WebHDFS answers."""
    info = namenode_info(webhdfs)
    if info.get("Safemode"):
        raise NotReady(f"NameNode in safe mode: {info['Safemode'].strip()}")
    try:
        live = json.loads(info.get("LiveNodes") or "{}")
    except ValueError as exc:
        raise NotReady("the NameNode's LiveNodes is not JSON") from exc
    if not live:
        raise NotReady("NameNode has no live DataNode")
    body = http_get(f"{webhdfs.rstrip('/')}/webhdfs/v1/?op=LISTSTATUS&user.name=logpipe-health")
    if b"FileStatuses" not in body:
        raise NotReady("WebHDFS LISTSTATUS gave an unexpected answer")
    return info


def probe_namenode_ui(webhdfs: str) -> None:
    """The "Browse the file system" page is served (needs the webapps folder on the classpath)."""
    body = http_get(f"{webhdfs.rstrip('/')}/explorer.html")
    if b"Browse Directory" not in body:
        raise NotReady("explorer.html is served but is not the HDFS file browser")


def datanode_info(datanode_http: str) -> dict:
    """The DataNode's own DataNodeInfo JMX bean (ports, block-pool actors, volumes), from its web server."""
    beans = jmx_beans(datanode_http, "Hadoop:service=DataNode,name=DataNodeInfo", role="DataNode")
    if not beans:
        raise NotReady(f"DataNode JMX at {datanode_http} has no DataNodeInfo bean yet")
    return beans[0]


def probe_datanode(host: str, data_port: int, datanode_http: str) -> dict:
    """This DataNode runs and has registered with its NameNode, asked of the DataNode itself (the NameNode keeps
    listing a dead DataNode as live for a while): its data port accepts connections, its JMX answers and one of
    its block-pool actors is RUNNING (it reaches that state once registered). Returns its DataNodeInfo bean."""
    probe_port(host, data_port)
    info = datanode_info(datanode_http)
    try:
        actors = json.loads(info.get("BPServiceActorInfo") or "[]")
    except ValueError as exc:
        raise NotReady(f"DataNode JMX at {datanode_http}: unreadable BPServiceActorInfo") from exc
    if not any(a.get("ActorState") == "RUNNING" and a.get("BlockPoolID") for a in actors):
        states = ", ".join(f"{a.get('NamenodeAddress', '?')}: {a.get('ActorState', '?')}" for a in actors) or "none"
        raise NotReady(f"DataNode at {datanode_http} has not registered with the NameNode yet (block-pool actors: "
                       f"{states}; INIT_FAILED or FAILED: see the DataNode log, e.g. 'Incompatible clusterIDs' "
                       "after the NameNode was formatted again)")
    return info


def probe_datanode_ready(host: str, data_port: int, datanode_http: str, webhdfs: str) -> dict:
    """A (re)started DataNode is ready: it answers itself (probe_datanode) and HDFS, as the NameNode sees it, is
    writable and readable (probe_hdfs_ready). What the native stack waits for after starting a DataNode. Returns
    the NameNode's NameNodeInfo bean."""
    probe_datanode(host, data_port, datanode_http)
    return probe_hdfs_ready(webhdfs)


def wait_for_kafka(bootstrap: str, timeout: float = 60.0, stop: threading.Event | None = None,
                   down: Callable[[], str | None] | None = None) -> int:
    """Wait until the broker at `bootstrap` answers (probe_kafka); `stop` ends the wait early (a signal), `down`
    as for wait_until."""
    return wait_until(lambda: probe_kafka(bootstrap), what=f"Kafka at {bootstrap}", timeout=timeout, stop=stop,
                      announce=True, down=down, hint="Check that the broker runs and its log (native stack: `logpipe stack "
                           "status`; compose: `docker compose ps kafka`, `docker compose logs kafka`); "
                           "LOGPIPE_KAFKA_BOOTSTRAP must name its PLAINTEXT listener.")


def probe_hdfs_ready(webhdfs: str) -> dict:
    """HDFS is writable (probe_hdfs) and its files readable: every block reported by a live DataNode. What the
    native stack waits for, compose's `hdfs-ready` service (`logpipe health hdfs`) and the streaming job at start
    check (verify checks the blocks with probe_blocks_reported)."""
    info = probe_hdfs(webhdfs)
    probe_blocks_reported(webhdfs)
    return info


def wait_for_hdfs(webhdfs: str, timeout: float = 60.0, down: Callable[[], str | None] | None = None) -> dict:
    """Wait until HDFS is writable and its files readable (probe_hdfs_ready); `down` as for wait_until."""
    return wait_until(lambda: probe_hdfs_ready(webhdfs), what=f"HDFS at {webhdfs}", timeout=timeout, announce=True,
                      down=down, hint="Check the NameNode and DataNode logs (native stack: `logpipe stack status` "
                           "names them; compose: `docker compose logs namenode datanode`): safe mode stays on with "
                           "under 100 MB free disk or with no DataNode registered; LOGPIPE_WEBHDFS_URL must name "
                           "the NameNode's web address.")


STREAM_APP = "logpipe-stream"  # the streaming job's Spark application name (streaming.run)


def probe_spark_ui(ui: str) -> int:
    """The Spark UI at `ui` (http://host:port) answers its REST API with the streaming job's application (another
    SparkSession, e.g. a notebook's, may hold the port: the job then takes the next one). Returns how many
    applications it lists."""
    try:
        apps = json.loads(http_get(f"{ui}/api/v1/applications"))
    except ValueError as exc:
        raise NotReady(f"{ui} is not a Spark UI (its /api/v1/applications is not JSON)") from exc
    if not isinstance(apps, list) or not apps:
        raise NotReady(f"the Spark UI at {ui} lists no application")
    names = [a.get("name") for a in apps if isinstance(a, dict)]
    if STREAM_APP not in names:
        raise NotReady(f"the Spark UI at {ui} is another Spark application's ({', '.join(map(str, names))}), not "
                       f"the streaming job's ({STREAM_APP}): with that port taken, the job takes the next one (its "
                       "log names it); free the port, or set LOGPIPE_SPARK_UI_PORT")
    return len(apps)


def spark_ui_problem() -> str:
    """Why the Spark UI of a job with LOGPIPE_SPARK_UI_PORT=0 cannot be checked."""
    return ("LOGPIPE_SPARK_UI_PORT is 0 (any free port): the job logs the port it took, which no health check can "
            "know; set a fixed port to check it")


def spark_ui_address(ui_host: str, ui_port: int) -> str:
    """Where to reach the Spark UI of a job on this machine that listens on `ui_host` (0.0.0.0: any, so loopback)."""
    if not ui_port:
        raise ValueError(spark_ui_problem())
    return f"http://{'127.0.0.1' if ui_host == '0.0.0.0' else ui_host}:{ui_port}"


def producer_heartbeat_max_age(producer_checkpoint_s: float) -> float:
    """The oldest producer heartbeat that still counts as alive, by default: a minute, or three checkpoint
    intervals (a producer sending at full speed touches it only after each flush) if that is longer."""
    return max(60.0, 3 * producer_checkpoint_s)


def probe_heartbeat(path: Path, max_age_s: float) -> float:
    """The age in seconds of the heartbeat file `path` (a producer touches it after each flush and at each wait
    while its loop moves); NotReady when it is missing or older than `max_age_s`."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        raise NotReady(f"no heartbeat file {path}: the producer has not started, has ended (it removes the file when "
                       "it does), or runs with another LOGPIPE_TOPIC or LOGPIPE_PRODUCER_STATE_DIR") from None
    if age > max_age_s:
        raise NotReady(f"the producer's last heartbeat ({path}) is {age:.0f}s old (> {max_age_s:g}s): its loop is "
                       "stuck or it stopped. Check its log: a broker it cannot reach holds every send until the "
                       "delivery timeout")
    return age


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not 0 <= value < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be a finite number, 0 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `logpipe health` (also `python -m logpipe.health`)."""
    parser.add_argument("service", choices=["kafka", "hdfs", "producer", "spark"],
                        help="spark: the streaming job's Spark UI answers (the job runs), at LOGPIPE_SPARK_UI_PORT")
    parser.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for the service (default 5)")
    parser.add_argument("--max-age", type=seconds, default=None,
                        help="producer: the oldest heartbeat that counts as alive, in seconds (default 60, or "
                             "three LOGPIPE_PRODUCER_CHECKPOINT_S if longer)")
    parser.add_argument("--datanode", metavar="HOST", default=None,
                        help="hdfs: also ask the DataNode on HOST itself (its data port and JMX, at "
                             "LOGPIPE_DATANODE_DATA_PORT and LOGPIPE_DATANODE_HTTP_PORT) whether it has registered, "
                             "as the native stack does: the NameNode lists a DataNode that died as live for a while")
    parser.add_argument("--topic", default=None,
                        help="producer: the topic the producer sends to, whose heartbeat is checked (default: "
                             "LOGPIPE_TOPIC, as `logpipe produce --topic`)")


def run(args: argparse.Namespace) -> int:
    """Check the service `args.service` once ready or timed out: 0 ready, 1 not (the reason on stderr), 2 a flag
    that does not apply to it, or settings that make the check impossible (the Spark UI on any free port)."""
    from logpipe.cli import misplaced_flag
    from logpipe.config import load_settings

    misplaced = misplaced_flag(args, "service", {"max_age": ("producer",), "datanode": ("hdfs",),
                                                 "topic": ("producer",)})
    if misplaced:
        print(f"logpipe health {args.service}: {misplaced}", file=sys.stderr)
        return 2
    s = load_settings(topic=args.topic)
    if args.service == "spark" and not s.spark_ui_port:  # no port to check: not "not running"
        print(f"logpipe health spark: {spark_ui_problem()}", file=sys.stderr)
        return 2
    try:
        if args.service == "kafka":
            wait_for_kafka(s.kafka_address, args.timeout)
        elif args.service == "hdfs" and args.datanode:
            dn_http = f"http://{args.datanode}:{s.datanode_http_port}"
            wait_until(lambda: probe_datanode_ready(args.datanode, s.datanode_data_port, dn_http, s.webhdfs_address),
                       what=f"HDFS at {s.webhdfs_address} with the DataNode at {args.datanode}", timeout=args.timeout,
                       hint=f"Check the DataNode's log and its state at {dn_http}/jmx?qry=Hadoop:service=DataNode,"
                            "name=DataNodeInfo, and the NameNode's log (native stack: `logpipe stack status` "
                            "names them; in compose that address is on the compose network: `docker compose logs "
                            "datanode namenode`).")
        elif args.service == "hdfs":
            wait_for_hdfs(s.webhdfs_address, args.timeout)
        elif args.service == "spark":
            ui = spark_ui_address(s.spark_ui_host or s.bind_host, s.spark_ui_port)
            wait_until(lambda: probe_spark_ui(ui), what=f"the Spark UI at {ui}", timeout=args.timeout,
                       hint="It answers while `logpipe stream` runs: check the job's log (compose: `docker compose "
                            "logs streaming`) and that LOGPIPE_SPARK_UI_PORT is the job's.")
        else:
            from logpipe.producer.position import PositionStore

            beat = PositionStore(s.producer_positions_dir, s.topic).heartbeat_file
            max_age = args.max_age if args.max_age is not None else producer_heartbeat_max_age(
                s.producer_checkpoint_s)
            age = wait_until(lambda: probe_heartbeat(beat, max_age), what="producer", timeout=args.timeout,
                             hint="A running producer touches it after each flush and at each wait for new "
                                  "lines: check that it runs and its log (compose: `docker compose logs producer`), "
                                  f"and that the topic (--topic or LOGPIPE_TOPIC, now {s.topic}) and "
                                  "LOGPIPE_PRODUCER_STATE_DIR are the producer's.")
            print(f"producer: heartbeat {age:.1f}s ago")
            return 0
    except (ServiceTimeout, RuntimeError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.service}: ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m logpipe.health kafka|hdfs|producer|spark`: the same as `logpipe health` (its settings errors too)."""
    from logpipe.cli import main as cli_main

    return cli_main(["health", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
