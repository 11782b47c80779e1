"""DataNode readiness asks the DataNode itself (data port, own JMX), not only the NameNode, which keeps listing a
dead DataNode as live for a while: fake NameNode and DataNode HTTP servers on free loopback ports."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from logpipe import health
from logpipe.config import Settings
from logpipe.stack import services
from logpipe.stack.layout import Layout

pytestmark = pytest.mark.unit

ACTOR = {"NamenodeAddress": "localhost:8020", "BlockPoolID": "BP-1-127.0.0.1-1", "ActorState": "RUNNING"}


class FakeHttp:
    """A loopback HTTP server answering GET paths (with query) from a dict; anything else is a 404."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                for prefix, body in pages.items():
                    if self.path.startswith(prefix):
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _beans(bean: dict) -> bytes:
    return json.dumps({"beans": [bean]}).encode()


@pytest.fixture
def namenode() -> Iterator[FakeHttp]:
    """A NameNode that reports HDFS ready: out of safe mode, one live DataNode, no missing blocks."""
    nn = FakeHttp()
    nn.pages["/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo"] = _beans(
        {"Safemode": "", "LiveNodes": json.dumps({"127.0.0.1:9866": {"lastContact": 1}})})
    nn.pages["/jmx?qry=Hadoop:service=NameNode,name=FSNamesystem"] = _beans({"MissingBlocks": 0, "BlocksTotal": 3})
    nn.pages["/webhdfs/v1/"] = b'{"FileStatuses":{"FileStatus":[]}}'
    yield nn
    nn.close()


@pytest.fixture
def datanode_http() -> Iterator[FakeHttp]:
    dn = FakeHttp()
    yield dn
    dn.close()


@pytest.fixture
def data_port() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv
    srv.close()


def _settings(tmp_path: Path, nn: FakeHttp, dn_http_port: int, dn_data_port: int) -> Settings:
    return Settings(run_dir=tmp_path / "run", bind_host="127.0.0.1", webhdfs_url=nn.url, namenode_http_port=nn.port,
                    datanode_http_port=dn_http_port, datanode_data_port=dn_data_port)


def test_datanode_not_ready_while_only_the_namenode_calls_it_live(tmp_path, namenode, free_ports):
    """Right after a DataNode crash the NameNode still lists it live: the new DataNode is not ready until it
    listens itself."""
    http_port, data = free_ports(2)
    health.probe_hdfs_ready(namenode.url)  # the NameNode alone says all is well
    probe = services._ready_probe(_settings(tmp_path, namenode, http_port, data), "datanode")
    with pytest.raises(health.NotReady, match=f"nothing listens on 127.0.0.1:{data}"):
        probe()


def test_datanode_not_ready_until_its_jmx_answers_and_it_registered(tmp_path, namenode, datanode_http, data_port):
    s = _settings(tmp_path, namenode, datanode_http.port, data_port.getsockname()[1])
    probe = services._ready_probe(s, "datanode")
    with pytest.raises(health.NotReady, match="HTTP 404"):  # data port open, JMX not served yet
        probe()
    bean = "/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo"
    datanode_http.pages[bean] = _beans({"BPServiceActorInfo": json.dumps([{**ACTOR, "ActorState": "CONNECTING"}])})
    with pytest.raises(health.NotReady, match="not registered with the NameNode yet.*CONNECTING"):
        probe()
    datanode_http.pages[bean] = _beans({"BPServiceActorInfo": json.dumps([ACTOR])})
    assert "LiveNodes" in probe()  # ready: the DataNode registered, and the NameNode side holds


def test_datanode_ready_still_needs_the_namenode_side(tmp_path, namenode, datanode_http, data_port):
    datanode_http.pages["/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo"] = _beans(
        {"BPServiceActorInfo": json.dumps([ACTOR])})
    namenode.pages["/jmx?qry=Hadoop:service=NameNode,name=FSNamesystem"] = _beans({"MissingBlocks": 2})
    probe = services._ready_probe(_settings(tmp_path, namenode, datanode_http.port, data_port.getsockname()[1]),
                                  "datanode")
    with pytest.raises(health.NotReady, match="2 HDFS blocks have no live replica") as err:
        probe()
    # a command the native stack can run (it has no `hdfs` script): the NameNode's own fsck page
    assert f"`curl 'http://127.0.0.1:{namenode.port}/fsck?ugi=$USER&path=/&listcorruptfileblocks=1'`" in str(err.value)


def test_datanode_timeout_says_what_to_check(tmp_path, namenode, free_ports):
    http_port, data = free_ports(2)
    s = _settings(tmp_path, namenode, http_port, data)
    lay = Layout(s.run_dir)
    with pytest.raises(health.ServiceTimeout) as err:
        health.wait_until(services._ready_probe(s, "datanode"), what="datanode", timeout=0.2, interval=0.05,
                          hint=services._ready_hint(s, lay, "datanode"))
    msg = str(err.value)
    assert f"nothing listens on 127.0.0.1:{data}" in msg and str(lay.log_file("datanode")) in msg
    assert f"http://127.0.0.1:{http_port}/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo" in msg


def test_health_hdfs_with_datanode_asks_the_datanode_as_compose_runs_it(namenode, datanode_http, data_port,
                                                                       monkeypatch, capsys):
    """`logpipe health hdfs --datanode HOST` (compose's hdfs-ready): the NameNode's word is not enough."""
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", namenode.url)
    monkeypatch.setenv("LOGPIPE_DATANODE_HTTP_PORT", str(datanode_http.port))
    monkeypatch.setenv("LOGPIPE_DATANODE_DATA_PORT", str(data_port.getsockname()[1]))
    assert health.main(["hdfs", "--timeout", "0.2"]) == 0  # the NameNode alone says all is well
    capsys.readouterr()
    bean = "/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo"
    datanode_http.pages[bean] = _beans({"BPServiceActorInfo": json.dumps([{**ACTOR, "ActorState": "CONNECTING"}])})
    assert health.main(["hdfs", "--datanode", "127.0.0.1", "--timeout", "0.2"]) == 1
    out = capsys.readouterr()
    assert "not registered with the NameNode yet" in out.err and "DataNodeInfo" in out.err and out.out == ""
    datanode_http.pages[bean] = _beans({"BPServiceActorInfo": json.dumps([ACTOR])})
    assert health.main(["hdfs", "--datanode", "127.0.0.1", "--timeout", "0.2"]) == 0
    assert "hdfs: ready" in capsys.readouterr().out
