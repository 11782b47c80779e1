"""Shared fixtures: settings, unique names, and the native stack (started once per session, or reused)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logpipe.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


KINDS = ("unit", "integration", "e2e")
STACK_FIXTURES = {"stack", "spark", "hdfs_client", "demo_results"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test is of exactly one kind (unit, integration, e2e; faults are integration tests too), and a unit test
    uses no fixture that needs the stack: `pytest -m unit` must run without services."""
    wrong = []
    for item in items:
        kinds = [k for k in KINDS if item.get_closest_marker(k)]
        if len(kinds) != 1:
            wrong.append(f"{item.nodeid}: marked {kinds or 'with none'} of {', '.join(KINDS)}")
        elif kinds == ["unit"] and STACK_FIXTURES & set(item.fixturenames):
            wrong.append(f"{item.nodeid}: a unit test using {sorted(STACK_FIXTURES & set(item.fixturenames))}")
    if wrong:
        raise pytest.UsageError("tests with wrong markers:\n  " + "\n  ".join(wrong))
    # the fast tests first (a broken parser fails in minutes, not after the e2e tests), then those on the stack;
    # a stable sort keeps each kind in file order
    items.sort(key=lambda item: next(i for i, k in enumerate(KINDS) if item.get_closest_marker(k)))


class _BackgroundStackUp:
    """`logpipe stack up` in a process of its own, started once the tests are collected if any needs the stack
    and it is not up: the unit tests (which come first and need no services) run while the JVMs start and
    Spark's AOT cache is trained. A process, not a thread: unit tests monkeypatch the stack's modules."""

    def __init__(self, settings: Settings) -> None:
        from logpipe.stack import services

        self.settings = settings
        rows = services.status(settings)
        self.started_here = [r["service"] for r in rows if not r["running"]]
        self.whole_stack = len(self.started_here) == len(rows)
        self.log = Path(tempfile.mkstemp(prefix="logpipe-tests-stack-up-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.claimed = False  # the `stack` fixture took it over (and stops what it started)
        if self.started_here:
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen([sys.executable, "-m", "logpipe", "stack", "up"], stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)

    def wait(self, timeout: float = 900) -> None:
        """Until `stack up` has finished; its output in the error if it failed."""
        if self.proc is None:
            return
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"`logpipe stack up` did not finish in {timeout:.0f} s; its output:\n"
                               + self.log.read_text(errors="replace")[-5000:]) from None
        if code != 0:
            raise RuntimeError(f"`logpipe stack up` failed (exit {code}); its output ({self.log}):\n"
                               + self.log.read_text(errors="replace")[-5000:])
        self.log.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop_started(self) -> None:
        """Stop the services this session started (none that ran before it), unless LOGPIPE_KEEP_STACK=1."""
        from logpipe.stack import services

        if not self.started_here or os.environ.get("LOGPIPE_KEEP_STACK") == "1":
            return
        if self.whole_stack:
            services.down(self.settings, progress=lambda m: None)
        else:
            for name in reversed(self.started_here):
                services.stop_service(self.settings, name)


_STACK_UP: list[_BackgroundStackUp] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not any(STACK_FIXTURES & set(i.fixturenames) for i in session.items):
        return
    s = load_settings()
    if s.kafka_bootstrap is None:  # else the tests use a cluster that runs elsewhere
        _STACK_UP.append(_BackgroundStackUp(s))


_SKIPPED: list[str] = []  # tests (or modules) skipped or xfailed in this session: the two report hooks below


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:  # a skip (in any phase) or an xfail
        _SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module skipped as it is collected (pytest.skip(allow_module_level=True), importorskip)
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A background `stack up` the `stack` fixture never took over (interrupted during the unit tests, say):
    stopped, with what it started. In CI (CI=true), a test skipped or xfailed fails the run: a skip is a test that
    did not run, and must not pass for one that did."""
    for bg in _STACK_UP:
        if not bg.claimed:
            bg.kill()
            bg.stop_started()
    if os.environ.get("CI") == "true" and _SKIPPED and session.exitstatus == pytest.ExitCode.OK:
        print(f"\nCI=true: {len(_SKIPPED)} test(s) skipped or xfailed, which CI counts as failed:\n  "
              + "\n  ".join(sorted(set(_SKIPPED))), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test item, so that a fixture can tell whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Iterator[str]:
    """A short unique suffix for topic names and HDFS paths of one test. A test on the stack that passed has its
    topics and HDFS paths holding the suffix (under /tests) deleted afterwards; a failed one keeps them for a
    look, and LOGPIPE_KEEP_RESULTS=1 keeps them all."""
    suffix = uuid.uuid4().hex[:10]
    yield suffix
    # no report (the run was interrupted in the test): kept, as a failure's
    passed = all(getattr(getattr(request.node, f"report_{w}", None), "passed", False) for w in ("setup", "call"))
    if "stack" in request.fixturenames and passed and os.environ.get("LOGPIPE_KEEP_RESULTS") != "1":
        try:
            _delete_test_data(request.getfixturevalue("stack"), suffix)
        except Exception as exc:  # a leftover is no reason to fail a test that passed; it is reported
            warnings.warn(f"could not delete the test's topics and HDFS paths ({suffix}): {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def sigterm_once_writing() -> Callable[[subprocess.Popen, Path], tuple[str, str]]:
    """`sigterm_once_writing(proc, partial)`: wait (60 s at most) until `proc`, still running, has written bytes to
    `partial`, then SIGTERM it; returns its (stdout, stderr) once it has ended."""
    import time

    def stop(proc: subprocess.Popen, partial: Path) -> tuple[str, str]:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 0):
            if proc.poll() is not None or time.monotonic() >= deadline:
                if proc.poll() is None:  # killed: its output, without waiting for it to write the whole log
                    proc.kill()
                output = proc.communicate(timeout=30)
                raise AssertionError(f"no bytes in {partial} within 60 s (exit {proc.returncode}): {output}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=60)

    return stop


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], list[int]]:
    """`free_ports(n)`: n distinct ports free on 127.0.0.1 now (for services a test starts or fakes itself; fixed
    numbers collide with another checkout's tests). They are drawn at random below the kernel's ephemeral range
    (ip_local_port_range), which the OS gives to outgoing connections: a port the OS picked and freed can be taken
    by a client's connection (Maven's downloads, a Kafka client) before the test's service binds it, and a
    DataNode started some 20 s later then failed with "Address already in use"."""
    def pick(n: int) -> list[int]:
        low = _ephemeral_low()
        pool = range(EPHEMERAL_FREE_FROM, low) if low - EPHEMERAL_FREE_FROM >= 100 * n else range(0)
        candidates = random.SystemRandom().sample(pool, min(len(pool), 20 * n)) if pool else []
        socks: list[socket.socket] = []
        try:
            for port in candidates:
                if len(socks) == n:
                    break
                sock = socket.socket()
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    sock.close()
                    continue
                socks.append(sock)
            while len(socks) < n:  # no room below the ephemeral range: let the OS choose
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                socks.append(sock)
            return [sock.getsockname()[1] for sock in socks]
        finally:
            for sock in socks:
                sock.close()

    return pick


# the lowest port free_ports draws from (below it: well-known and registered services, logpipe's defaults among them)
EPHEMERAL_FREE_FROM = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: /proc/sys/net/ipv4/ip_local_port_range; else IANA's)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


@pytest.fixture(scope="session")
def delete_test_data() -> Callable[[Settings, str], None]:
    """The clean-up of `unique`, for fixtures that make their own suffix."""
    return _delete_test_data


def _delete_test_data(s: Settings, suffix: str) -> None:
    """Delete the Kafka topics and the entries of HDFS /tests whose names hold `suffix`."""
    from hdfs import InsecureClient
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.kafka_address)
    try:
        topics = [t for t in admin.list_topics() if suffix in t]
        if topics:
            admin.delete_topics(topics)
    finally:
        admin.close()
    client = InsecureClient(s.webhdfs_address, user=s.hdfs_user_name)
    for name in client.list("/tests") if client.status("/tests", strict=False) else []:
        if suffix in name:
            client.delete(f"/tests/{name}", recursive=True)


@pytest.fixture(scope="session")
def records_in() -> Callable[[Settings, str], int]:
    """How many records a topic holds (the sum of its partitions' end offsets; 0 while it does not exist), read
    with a plain kafka-python consumer, not logpipe's code."""
    return _records_in


def _records_in(s: Settings, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.kafka_address, client_id="logpipe-tests")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in parts]).values()) if parts else 0
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The native stack, ready. Reused if already up (or if LOGPIPE_KAFKA_BOOTSTRAP points elsewhere);
    otherwise started here (in the background since the tests were collected) and stopped at the end of the
    session unless LOGPIPE_KEEP_STACK=1."""
    from logpipe import health

    bg = _STACK_UP[0] if _STACK_UP else None
    if bg is None and settings.kafka_bootstrap is None:  # not started at collection (no test seemed to need it)
        bg = _BackgroundStackUp(settings)
        _STACK_UP.append(bg)
    if bg is not None:
        bg.wait()  # if it fails, the session's end stops what it started
        bg.claimed = True
    health.wait_for_kafka(settings.kafka_address, timeout=60)
    health.wait_for_hdfs(settings.webhdfs_address, timeout=60)
    yield settings
    if bg is not None:
        bg.stop_started()


def _installed_jdks_25_plus() -> list[Path]:
    """JDKs under /usr/lib/jvm of a Java 25 or later that Spark supports (SPARK_JAVA_RELEASES), by their `release`
    files (not by logpipe's own lookup, which the AOT tests check)."""
    import re

    from logpipe.stack.java import SPARK_JAVA_RELEASES

    found = []
    for release in Path("/usr/lib/jvm").glob("*/release"):
        version = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(errors="replace"), re.M)
        if version and int(version.group(1)) >= 25 and int(version.group(1)) in SPARK_JAVA_RELEASES:
            found.append(release.parent)
    return found


@pytest.fixture(scope="session")
def ci_expects_aot_cache() -> bool:
    """True in CI on a machine with a JDK 25+ under /usr/lib/jvm (CI's machine image has a Temurin 25), unless the
    settings turn the cache off or pin Spark's Java: there the AOT tests must take their branch with a cache, or
    its training, interruption and use would go untested while every test passed. Elsewhere (a plain Debian 12,
    whose newest JDK is 17) Spark runs on 17 without a cache, and that is what they check."""
    return (os.environ.get("CI") == "true" and bool(_installed_jdks_25_plus())
            and not os.environ.get("LOGPIPE_SPARK_JAVA_HOME")
            and os.environ.get("LOGPIPE_SPARK_AOT_CACHE", "").lower() not in ("false", "0", "no", "off"))


@pytest.fixture(scope="session")
def local_spark(request: pytest.FixtureRequest):
    """One SparkSession (local mode) for the whole test session, unit and integration tests alike: a JVM cannot
    take the Kafka connector's jars once it runs, so they are on it from the start whenever a collected test reads
    Kafka (uses `spark`), whichever test comes first."""
    from logpipe.spark import build_spark

    kafka = any("spark" in item.fixturenames for item in request.session.items)
    session = build_spark(load_settings(), "logpipe-tests", kafka=kafka)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark(stack: Settings, local_spark):
    """The session's SparkSession, with the Kafka connector, once the stack runs."""
    return local_spark


@pytest.fixture(scope="session")
def hdfs_client(stack: Settings):
    from hdfs import InsecureClient

    return InsecureClient(stack.webhdfs_address, user=stack.hdfs_user_name)
