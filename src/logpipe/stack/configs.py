"""The native stack's configuration: the files `stack up` writes for the Kafka broker and the HDFS daemons, and
the addresses they listen on."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from logpipe.config import Settings
from logpipe.stack.layout import Layout

# the HDFS daemons' logging, natively and in the compose containers (hdfs_service/Dockerfile copies it)
HDFS_LOG4J = Path(__file__).with_name("hdfs-log4j.properties")


def native_kafka_address(s: Settings) -> str:
    """Where the native stack's broker listens (LOGPIPE_KAFKA_BOOTSTRAP, a client setting, may name another)."""
    return f"{s.bind_host}:{s.kafka_port}"


def native_webhdfs_address(s: Settings) -> str:
    """Where the native stack's NameNode serves HTTP (LOGPIPE_WEBHDFS_URL, a client setting, may name another)."""
    return f"http://{s.bind_host}:{s.namenode_http_port}"


def hadoop_xml(props: dict[str, str]) -> str:
    rows = "\n".join(f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>"
                     for k, v in props.items())
    return f'<?xml version="1.0"?>\n<!-- written by logpipe stack up -->\n<configuration>\n{rows}\n</configuration>\n'


def write_configs(s: Settings, lay: Layout) -> None:
    h = s.bind_host
    kconf = lay.conf / "kafka"
    hconf = lay.conf / "hadoop"
    kconf.mkdir(parents=True, exist_ok=True)
    hconf.mkdir(parents=True, exist_ok=True)
    (kconf / "server.properties").write_text("\n".join([
        "# written by logpipe stack up: single-node KRaft broker+controller on loopback",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{h}:{s.kafka_controller_port}",
        f"listeners=PLAINTEXT://{h}:{s.kafka_port},CONTROLLER://{h}:{s.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://{h}:{s.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={lay.data / 'kafka'}",
        f"num.partitions={s.topic_partitions}",
        # as in production: a topic exists because logpipe made it (the producer its log topic, the job its alerts
        # topic), with the pipeline's settings, never because a client named it
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=168",
        "log.segment.bytes=268435456",
        "",
    ]))
    (kconf / "log4j2.properties").write_text("\n".join([
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = OUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.out.ref = OUT",
        "logger.state.name = state.change.logger",
        "logger.state.level = WARN",
        "logger.request.name = kafka.request.logger",
        "logger.request.level = WARN",
        "",
    ]))
    (hconf / "core-site.xml").write_text(hadoop_xml({
        "fs.defaultFS": f"hdfs://{h}:{s.namenode_rpc_port}",
        "hadoop.tmp.dir": str(lay.data / "hadoop-tmp"),
    }))
    (hconf / "hdfs-site.xml").write_text(hadoop_xml({
        "dfs.replication": "1",
        "dfs.namenode.name.dir": str(lay.data / "namenode"),
        "dfs.datanode.data.dir": str(lay.data / "datanode"),
        "dfs.namenode.rpc-address": f"{h}:{s.namenode_rpc_port}",
        "dfs.namenode.http-address": f"{h}:{s.namenode_http_port}",
        "dfs.namenode.https-address": f"{h}:{s.namenode_http_port + 1}",
        "dfs.namenode.secondary.http-address": f"{h}:{s.namenode_http_port - 2}",
        "dfs.datanode.address": f"{h}:{s.datanode_data_port}",
        "dfs.datanode.http.address": f"{h}:{s.datanode_http_port}",
        "dfs.datanode.ipc.address": f"{h}:{s.datanode_ipc_port}",
        # not started (dfs.http.policy is HTTP_ONLY), but were it turned on: loopback, not Hadoop's 0.0.0.0:9865
        "dfs.datanode.https.address": f"{h}:{s.datanode_http_port + 1}",
        "dfs.datanode.hostname": h,
        "dfs.webhdfs.enabled": "true",
        "dfs.namenode.safemode.extension": "0",
        # a restarted DataNode re-registers quickly; a dead one is noticed in ~1 min, not 10
        "dfs.namenode.heartbeat.recheck-interval": "30000",
    }))
    (hconf / "log4j.properties").write_text(HDFS_LOG4J.read_text())  # the compose containers use it too
