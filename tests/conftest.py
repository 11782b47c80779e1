"""Shared fixtures: settings, unique names, and the native stack (started once per session, or reused)."""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator

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
def free_ports() -> Callable[[int], list[int]]:
    """`free_ports(n)`: n distinct ports free on 127.0.0.1 now, chosen by the OS (for services a test starts or
    fakes itself; fixed numbers collide with another checkout's tests)."""
    def pick(n: int) -> list[int]:
        socks = [socket.socket() for _ in range(n)]
        try:
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
            return [sock.getsockname()[1] for sock in socks]
        finally:
            for sock in socks:
                sock.close()

    return pick


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
def stack(settings: Settings) -> Iterator[Settings]:
    """The native stack, ready. Reused if already up (or if LOGPIPE_KAFKA_BOOTSTRAP points elsewhere);
    otherwise started here and stopped at the end of the session unless LOGPIPE_KEEP_STACK=1."""
    from logpipe import health
    from logpipe.stack import services

    external = settings.kafka_bootstrap is not None
    rows = [] if external else services.status(settings)
    started_here = [r["service"] for r in rows if not r["running"]]  # only these are stopped at the end
    if started_here:
        services.up(settings, progress=lambda m: None)
    health.wait_for_kafka(settings.kafka_address, timeout=60)
    health.wait_for_hdfs(settings.webhdfs_address, timeout=60)
    yield settings
    if started_here and os.environ.get("LOGPIPE_KEEP_STACK") != "1":
        if len(started_here) == len(rows):
            services.down(settings, progress=lambda m: None)
        else:
            for name in reversed(started_here):
                services.stop_service(settings, name)


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
