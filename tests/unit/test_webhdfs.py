"""The results readers' WebHDFS client against a small stand-in NameNode: a missing path is missing, every other
error is an error (never an empty folder), and a request with no answer gives up."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = pytest.mark.unit

DIR = {"type": "DIRECTORY", "length": 0}
# path -> what LISTSTATUS / GETFILESTATUS answer: a listing, a status, or a RemoteException (HTTP status, name)
TREE = {
    "/root": [dict(DIR, pathSuffix="a"), dict(DIR, pathSuffix="gone")],
    "/root/a": [{"type": "FILE", "length": 3, "pathSuffix": "b0000000001-00000.parquet"}],
    "/root/gone": (404, "FileNotFoundException"),  # removed between its parent's listing and its own
    "/broken": [dict(DIR, pathSuffix="sub")],
    "/broken/sub": (403, "StandbyException"),  # the NameNode's answer to a read it will not serve now
    "/illegal": (400, "IllegalArgumentException"),  # fsspec raises a ValueError for it
    "/data/ok": {"type": "FILE", "length": 3},
    "/data/denied": {"type": "FILE", "length": 3},  # the DataNode refuses the read
    "/data/odd": {"type": "FILE", "length": 3},  # the DataNode answers 500 with no RemoteException
}
# what the DataNode answers for a file's bytes (after the NameNode's redirect)
DATANODE = {"/data/ok": (200, b"abc"),
            "/data/denied": (403, json.dumps({"RemoteException": {"exception": "AccessControlException",
                                                                   "message": "Permission denied"}}).encode()),
            "/data/odd": (500, b"<html>proxy error</html>")}


class _NameNode(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        if url.path.startswith("/datanode/"):
            status, data = DATANODE[url.path.removeprefix("/datanode")]
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        path = url.path.removeprefix("/webhdfs/v1").rstrip("/") or "/"
        op = parse_qs(url.query)["op"][0]
        entry = TREE.get(path, (404, "FileNotFoundException"))
        if op == "OPEN" and not isinstance(entry, tuple):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/datanode{path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(entry, tuple):
            status, body = entry[0], {"RemoteException": {"exception": entry[1], "message": f"{entry[1]}: {path}"}}
        elif op == "LISTSTATUS":
            status, body = 200, {"FileStatuses": {"FileStatus": [dict(e) for e in entry]}}
        else:
            status, body = 200, {"FileStatus": dict(entry if isinstance(entry, dict) else DIR, pathSuffix="")}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def namenode():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NameNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fs(url: str, **overrides):
    from logpipe.config import load_settings
    from logpipe.results import webhdfs_fs

    return webhdfs_fs(load_settings(webhdfs_url=url, **overrides))


def test_a_missing_path_is_missing_and_a_refused_read_is_an_error(namenode):
    from logpipe.webhdfs import WebHdfsRemoteError

    fs = _fs(namenode)
    assert fs.exists("/root") and not fs.exists("/nothing")
    with pytest.raises(WebHdfsRemoteError, match="StandbyException"):  # fsspec's own exists() said False
        fs.exists("/broken/sub")
    with pytest.raises(WebHdfsRemoteError, match="refused the request: IllegalArgumentException"):  # a ValueError
        fs.exists("/illegal")


def test_a_listing_skips_a_folder_gone_meanwhile_and_fails_on_any_other_error(namenode):
    """fsspec's find() listed a folder it could not read as empty: a table then read as missing rows."""
    from logpipe.webhdfs import WebHdfsRemoteError

    fs = _fs(namenode)
    assert fs.find("/root") == ["/root/a/b0000000001-00000.parquet"]  # /root/gone went away: skipped
    assert fs.find("/nothing") == []
    with pytest.raises(WebHdfsRemoteError, match="StandbyException"):
        fs.find("/broken")


def test_a_read_the_datanode_refuses_is_an_error_not_the_files_bytes(namenode):
    """fsspec returned the body of a DataNode's refusal (its RemoteException JSON) as the file's contents: a commit
    record read so counted 0 lines, a settings record held no settings."""
    import requests

    fs = _fs(namenode)
    assert fs.cat_file("/data/ok") == b"abc"
    with pytest.raises(PermissionError, match="AccessControlException: Permission denied"):
        fs.cat_file("/data/denied")
    with pytest.raises(requests.HTTPError, match="500"):
        fs.cat_file("/data/odd")


def test_isfile_and_isdir_say_false_only_for_a_missing_path(namenode):
    """pyarrow opens a dataset's files after fsspec's isfile(), which said False for any error: a NameNode's refusal
    or a timeout then read as `FileNotFoundError`, hiding the cause."""
    from logpipe.webhdfs import WebHdfsRemoteError

    fs = _fs(namenode)
    assert fs.isfile("/data/ok") and not fs.isdir("/data/ok") and fs.isdir("/root") and not fs.isfile("/root")
    assert not fs.isfile("/nothing") and not fs.isdir("/nothing")
    for probe in (fs.isfile, fs.isdir):
        with pytest.raises(WebHdfsRemoteError, match="StandbyException"):
            probe("/broken/sub")


def test_a_namenode_that_is_gone_is_an_error_for_exists_and_listings(free_ports):
    import requests

    fs = _fs(f"http://127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(requests.ConnectionError):
        fs.exists("/root")
    with pytest.raises(requests.ConnectionError):
        fs.find("/root")


def test_the_client_can_be_pickled_with_its_settings(namenode):
    """fsspec filesystems travel by pickle (to worker processes, in Arrow datasets): the class is a module's."""
    import pickle

    from logpipe.webhdfs import StrictWebHDFS

    data = pickle.dumps(_fs(namenode, connect_timeout_s=7))
    StrictWebHDFS.clear_instance_cache()  # else unpickling hands back the cached instance itself
    fs = pickle.loads(data)
    assert fs.exists("/root") and fs.session.request.keywords["timeout"] == 7
