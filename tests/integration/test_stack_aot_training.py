"""The AOT cache training of `stack up`, interrupted on the real stack: what it made goes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

TRAINING = "logpipe-aot-training-"


def _training_topics(stack) -> set[str]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_address)
    try:
        return {t for t in consumer.topics() if t.startswith(TRAINING)}
    finally:
        consumer.close()


def _training_folders(hdfs_client) -> set[str]:
    return {name for name in hdfs_client.list("/tmp") if name.startswith(TRAINING)} \
        if hdfs_client.status("/tmp", strict=False) else set()


@pytest.mark.parametrize("when", ["its topic made", "its stream under way"])
def test_an_interrupted_training_removes_its_topics_folder_jvm_and_partial_cache(stack, hdfs_client, tmp_path, when,
                                                                                 ci_expects_aot_cache):
    """Ctrl-C to `stack up` while it trains the cache: the training's process group is stopped, its topics and HDFS
    folder are deleted from the real services, and no partial cache file is left to be taken for a cache.
    - its topic made (it produces, or starts Spark): SIGTERM ends the training run at once, without its own
      clean-up; `stack up` deletes the topic;
    - its stream under way (its results root on HDFS, its Spark JVM up): the stream stops between micro-batches
      and the run removes its topics and root itself (or, stopped with SIGKILL 10 s later, `stack up` does).
    The unit test (tests/unit/test_stack_aot.py) stands in for the services; this one deletes from them."""
    from logpipe.stack.aot import aot_cache_file

    s = stack.with_overrides(run_dir=tmp_path / "run")  # a cache folder of its own: the stack's cache stays
    (tmp_path / "run" / "logs").mkdir(parents=True)
    cache = aot_cache_file(s)
    before_topics, before_folders = _training_topics(stack), _training_folders(hdfs_client)
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO)\nfrom logpipe.config import Settings\n"
            "from logpipe.stack.aot import ensure_aot_cache\n"
            "print('cache', ensure_aot_cache(Settings.model_validate_json(sys.argv[1]), print), flush=True)\n")
    out = tmp_path / "up.log"
    with out.open("w") as f:
        up = subprocess.Popen([sys.executable, "-c", code, s.model_dump_json()], stdout=f, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        if cache is None:  # Spark's Java is older than 25 here: nothing is trained, nothing made
            assert not ci_expects_aot_cache, "CI found no AOT cache for Spark's Java 25: the training went untested"
            assert up.wait(120) == 0 and "cache None" in out.read_text(), out.read_text()[-3000:]
            assert _training_topics(stack) == before_topics and _training_folders(hdfs_client) == before_folders
            return
        deadline = time.monotonic() + 600
        def ready() -> bool:
            if not _training_topics(stack) - before_topics:
                return False
            return when == "its topic made" or any(hdfs_client.status(f"/tmp/{d}/_commits", strict=False)
                                                   for d in _training_folders(hdfs_client) - before_folders)

        while not ready():
            assert up.poll() is None, "the training ended before the interrupt:\n" + out.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the training was not at '{when}' in time"
            time.sleep(0.1)
        made = _training_topics(stack) - before_topics
        training_pid = int(next(iter(made)).removeprefix(TRAINING).removesuffix("-alerts"))
        up.send_signal(signal.SIGINT)
        rc = up.wait(120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    text = out.read_text()
    assert rc != 0 and "KeyboardInterrupt" in text, text[-3000:]  # the interrupt reached the caller
    try:
        os.killpg(training_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the training's process group (its run, its Spark JVM) outlived the interrupt"
    assert _training_topics(stack) - before_topics == set(), "the training's topics were left on the broker"
    assert _training_folders(hdfs_client) - before_folders == set(), "the training's results root was left on HDFS"
    assert not cache.exists() and list(cache.parent.iterdir()) == [], list(cache.parent.iterdir())
