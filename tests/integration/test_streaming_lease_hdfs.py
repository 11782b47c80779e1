"""The results root's lease on the real HDFS: a lease file another client is still writing is "taken", not an error."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_create_new_of_a_file_another_client_is_writing_is_refused_not_raised(stack, spark, unique):
    """HDFS refuses a create of a file still open for writing (its lease held by the writer) with
    AlreadyBeingCreatedException, not FileAlreadyExistsException: two runs starting at the same moment then got an
    HDFS error from the second one instead of "root busy" (RootLease.acquire reads create_new's False)."""
    from logpipe.streaming.commit import HadoopFs

    root = stack.with_overrides(hdfs_root=f"/tests/lease-{unique}").hdfs_uri()
    fs = HadoopFs(spark, root)
    path = f"{root}/_commits/lease.json"
    writing = fs.fs.create(fs.path(path), False)  # open, not closed: as a run between its create and close
    try:
        writing.write(bytearray(b"{"))
        writing.hflush()
        assert fs.create_new(path, "{}") is False
    finally:
        writing.close()
    assert fs.create_new(path, "{}") is False  # closed: the plain "exists"
    assert fs.create_new(f"{root}/_commits/other.json", "{}") is True
