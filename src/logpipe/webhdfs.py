"""The WebHDFS filesystem the readers of the results use: fsspec's, with errors that are errors and a time limit."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from fsspec.implementations.webhdfs import WebHDFS


class WebHdfsRemoteError(OSError):
    """The NameNode answered with an error fsspec has no exception of its own for (StandbyException, "NameNode
    still not started", ParentNotDirectoryException, ...): an OSError like every other failed read of HDFS."""


def _raise_unless_gone(exc: OSError) -> None:
    """walk's on_error: a folder that went away while being walked (a batch's staging folder the job removed) is
    skipped; any other error is raised."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


class StrictWebHDFS(WebHDFS):
    """fsspec's WebHDFS, whose answers cannot pass an error off as an empty result. fsspec's own `exists` says
    False for any error and its `walk` (under `find`) lists a folder it could not read as empty: with the NameNode
    gone after a reader's first check, every table then read as missing (`verify` reported each window row
    missing). Here `exists` is False only for a path that is not there, a listing fails on any error but a folder
    gone meanwhile, every request gives up after `no_answer_s` seconds without an answer (fsspec's waited for ever
    on a hung NameNode or DataNode), and the NameNode's other errors are WebHdfsRemoteError (fsspec raises
    RuntimeError)."""

    def __init__(self, *args: Any, no_answer_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if no_answer_s is not None:  # each request's connect and each read of its answer (not its whole time)
            self.session.request = functools.partial(self.session.request, timeout=no_answer_s)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._call(*args, **kwargs)
        except RuntimeError as exc:  # fsspec's RuntimeError(message) for a RemoteException it does not map
            raise WebHdfsRemoteError(str(exc)) from exc

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def walk(self, path: str, maxdepth: int | None = None, topdown: bool = True, on_error: Any = "omit",
             **kwargs: Any) -> Iterator[Any]:
        # fsspec's walk calls itself for each subfolder without on_error: every level comes through here
        yield from super().walk(path, maxdepth=maxdepth, topdown=topdown, on_error=_raise_unless_gone, **kwargs)
