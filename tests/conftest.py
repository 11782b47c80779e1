"""Shared fixtures: settings, unique names, and the native stack (started once per session, or reused)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from logpipe.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names and HDFS paths of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The native stack, ready. Reused if already up (or if LOGPIPE_KAFKA_BOOTSTRAP points elsewhere);
    otherwise started here and stopped at the end of the session unless LOGPIPE_KEEP_STACK=1."""
    from logpipe import health
    from logpipe.stack import services

    external = settings.kafka_bootstrap is not None
    already = external or all(r["running"] for r in services.status(settings))
    if not already:
        services.up(settings, progress=lambda m: None)
    health.wait_for_kafka(settings.kafka_address, timeout=60)
    health.wait_for_hdfs(settings.webhdfs_address, timeout=60)
    yield settings
    if not already and os.environ.get("LOGPIPE_KEEP_STACK") != "1":
        services.down(settings, progress=lambda m: None)


@pytest.fixture(scope="session")
def spark(stack: Settings):
    """One SparkSession (local mode, connector jars) for the whole test session."""
    from logpipe.spark import build_spark

    session = build_spark(stack, "logpipe-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def hdfs_client(stack: Settings):
    from hdfs import InsecureClient

    return InsecureClient(stack.webhdfs_address, user=stack.hdfs_user_name)
