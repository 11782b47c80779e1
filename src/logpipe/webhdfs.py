"""The WebHDFS filesystem the readers of the results use: fsspec's, with errors that are errors and a time limit."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import requests
from fsspec.implementations.webhdfs import WebHDFS


class WebHdfsRemoteError(OSError):
    """The NameNode answered with an error fsspec has no exception of its own for (StandbyException, "NameNode
    still not started", ParentNotDirectoryException, ...) or raises a ValueError for (IllegalArgumentException): an
    OSError like every other failed read of HDFS."""


_REMOTE_ERRORS = {"FileNotFoundException": FileNotFoundError, "AccessControlException": PermissionError,
                  "SecurityException": PermissionError}


def _checked(response: Any) -> Any:
    """A DataNode's answer to a read, or its error raised: fsspec returns the body of a failed read (a
    RemoteException's JSON) as the file's bytes."""
    if response.status_code < 400:
        return response
    try:
        remote = response.json()["RemoteException"]
        name, message = remote["exception"], remote["message"]
    except (ValueError, KeyError, TypeError):
        response.raise_for_status()  # requests' HTTPError, an OSError
        raise
    raise _REMOTE_ERRORS.get(name, WebHdfsRemoteError)(f"{name}: {message}")


def _raise_unless_gone(exc: OSError) -> None:
    """walk's on_error: a folder that went away while being walked (a batch's staging folder the job removed) is
    skipped; any other error is raised."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


class StrictWebHDFS(WebHDFS):
    """fsspec's WebHDFS, whose answers cannot pass an error off as a result. fsspec's own `exists`, `isfile` and
    `isdir` say False for any error, its `walk` (under `find`) lists a folder it could not read as empty, and a
    file's read returns a DataNode's error message as the file's bytes: with the NameNode gone after a reader's
    first check, every table then read as missing (`verify` reported each window row missing). Here those say False
    only for a path that is not there, a listing fails on any error but a folder gone meanwhile, a failed read
    raises, every request gives up after `no_answer_s` seconds without an answer (fsspec's waited for ever on a
    hung NameNode or DataNode), and the NameNode's other errors are WebHdfsRemoteError (fsspec raises
    RuntimeError)."""

    def __init__(self, *args: Any, no_answer_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if no_answer_s is not None:  # each request's connect and each read of its answer (not its whole time)
            self.session.request = functools.partial(self.session.request, timeout=no_answer_s)
        get = self.session.get  # fsspec's reads from a DataNode (after the NameNode's redirect), and nothing else
        self.session.get = lambda *a, **k: _checked(get(*a, **k))

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._call(*args, **kwargs)
        except RuntimeError as exc:  # fsspec's RuntimeError(message) for a RemoteException it does not map
            raise WebHdfsRemoteError(str(exc)) from exc
        except requests.RequestException:  # InvalidURL and the like are ValueErrors too: the client's, as they are
            raise
        except ValueError as exc:  # fsspec's ValueError for IllegalArgumentException / UnsupportedOperationException
            raise WebHdfsRemoteError(f"the NameNode refused the request: {exc}") from exc

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def isfile(self, path: str) -> bool:
        try:
            return self.info(path)["type"] == "file"
        except FileNotFoundError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return self.info(path)["type"] == "directory"
        except FileNotFoundError:
            return False

    def walk(self, path: str, maxdepth: int | None = None, topdown: bool = True, on_error: Any = "omit",
             **kwargs: Any) -> Iterator[Any]:
        # fsspec's walk calls itself for each subfolder without on_error: every level comes through here
        yield from super().walk(path, maxdepth=maxdepth, topdown=topdown, on_error=_raise_unless_gone, **kwargs)
