#!/usr/bin/env bash
# Entry point of the namenode and datanode containers (apache/hadoop image): writes core-site.xml and
# hdfs-site.xml from the environment, formats the NameNode on its first start, then runs the daemon in
# the foreground. `start-hadoop.sh health` is the compose healthcheck of either role.
#
#   start-hadoop.sh namenode|datanode|health
#
# Environment (defaults match docker-compose.yml and the native stack's ports):
#   HDFS_ROLE                namenode | datanode (default: the role this container was started with)
#   HDFS_NAMENODE_HOST       namenode        host name of the NameNode inside the compose network
#   HDFS_DATANODE_HOSTNAME   datanode        name the DataNode registers with (clients connect to it)
#   HDFS_NAMENODE_RPC_PORT   8020            HDFS_NAMENODE_HTTP_PORT 9870
#   HDFS_DATANODE_DATA_PORT  9866            HDFS_DATANODE_HTTP_PORT 9864   HDFS_DATANODE_IPC_PORT 9867
#   HDFS_BIND_HOST           0.0.0.0         inside a container: every interface (compose publishes on 127.0.0.1)
#   HDFS_NAME_DIR            /hadoop/dfs/name
#   HDFS_DATA_DIR            /hadoop/dfs/data
#   HDFS_LOG4J               /opt/logpipe-hadoop/log4j.properties   the daemons' logging (the image's if missing)
set -euo pipefail

NN_HOST="${HDFS_NAMENODE_HOST:-namenode}"
DN_HOSTNAME="${HDFS_DATANODE_HOSTNAME:-datanode}"
RPC_PORT="${HDFS_NAMENODE_RPC_PORT:-8020}"
NN_HTTP_PORT="${HDFS_NAMENODE_HTTP_PORT:-9870}"
DN_DATA_PORT="${HDFS_DATANODE_DATA_PORT:-9866}"
DN_HTTP_PORT="${HDFS_DATANODE_HTTP_PORT:-9864}"
DN_IPC_PORT="${HDFS_DATANODE_IPC_PORT:-9867}"
BIND="${HDFS_BIND_HOST:-0.0.0.0}"
NAME_DIR="${HDFS_NAME_DIR:-/hadoop/dfs/name}"
DATA_DIR="${HDFS_DATA_DIR:-/hadoop/dfs/data}"
CONF_DIR="${HADOOP_CONF_DIR:?HADOOP_CONF_DIR must be set (the Dockerfile sets it)}"
LOG4J="${HDFS_LOG4J:-/opt/logpipe-hadoop/log4j.properties}"

property() { printf '  <property><name>%s</name><value>%s</value></property>\n' "$1" "$2"; }

write_config() {
  mkdir -p "$CONF_DIR"
  # keep the image's other files (hadoop-env.sh and friends); replace the two site files, and the logging with the
  # native stack's (HDFS_LOG4J: without the per-operation and per-block lines, which never stop on a busy stream)
  if [ -d "${HADOOP_HOME:-/opt/hadoop}/etc/hadoop" ] && [ ! -f "$CONF_DIR/log4j.properties" ]; then
    cp -n "${HADOOP_HOME:-/opt/hadoop}/etc/hadoop/"* "$CONF_DIR/" 2>/dev/null || true
  fi
  if [ -f "$LOG4J" ]; then
    cp "$LOG4J" "$CONF_DIR/log4j.properties"
  fi
  {
    echo '<?xml version="1.0"?>'
    echo '<configuration>'
    property fs.defaultFS "hdfs://${NN_HOST}:${RPC_PORT}"
    property hadoop.tmp.dir /tmp/hadoop
    echo '</configuration>'
  } > "$CONF_DIR/core-site.xml"
  {
    echo '<?xml version="1.0"?>'
    echo '<configuration>'
    property dfs.replication 1
    property dfs.namenode.name.dir "$NAME_DIR"
    property dfs.datanode.data.dir "$DATA_DIR"
    # the NameNode is reached by its service name; it listens on every interface of its container
    property dfs.namenode.rpc-address "${NN_HOST}:${RPC_PORT}"
    property dfs.namenode.rpc-bind-host "$BIND"
    property dfs.namenode.servicerpc-bind-host "$BIND"
    property dfs.namenode.http-address "${BIND}:${NN_HTTP_PORT}"
    property dfs.namenode.http-bind-host "$BIND"
    property dfs.datanode.address "${BIND}:${DN_DATA_PORT}"
    property dfs.datanode.http.address "${BIND}:${DN_HTTP_PORT}"
    property dfs.datanode.ipc.address "${BIND}:${DN_IPC_PORT}"
    # clients (Spark, WebHDFS redirects) reach the DataNode by its compose host name, never by a container IP
    property dfs.datanode.hostname "$DN_HOSTNAME"
    property dfs.client.use.datanode.hostname true
    property dfs.datanode.use.datanode.hostname true
    # container IPs have no reverse DNS entry the NameNode could check
    property dfs.namenode.datanode.registration.ip-hostname-check false
    property dfs.webhdfs.enabled true
    property dfs.namenode.safemode.extension 0
    property dfs.namenode.heartbeat.recheck-interval 30000
    property dfs.client.block.write.replace-datanode-on-failure.policy NEVER
    echo '</configuration>'
  } > "$CONF_DIR/hdfs-site.xml"
}

health() {
  # NameNode: its RPC answers (safe mode may still be on: the DataNode must be able to start and report).
  # DataNode: safe mode is off, at least one DataNode is live (HDFS accepts writes), and this one has registered.
  local role="${HDFS_ROLE:-$(cat "$CONF_DIR/role" 2>/dev/null || true)}"
  local mode
  mode="$(hdfs dfsadmin -safemode get 2>/dev/null)" || { echo "NameNode RPC does not answer"; return 1; }
  if [ "$role" = "namenode" ]; then
    echo "$mode"
    return 0
  fi
  case "$mode" in
    *"Safe mode is OFF"*) ;;
    *) echo "NameNode still in safe mode: $mode"; return 1 ;;
  esac
  if ! hdfs dfsadmin -report -live 2>/dev/null | grep -Eq 'Live datanodes \([1-9]'; then
    echo "no live DataNode yet"
    return 1
  fi
  # and this DataNode itself has registered (the NameNode lists a DataNode that died as live for a while, so a
  # restarted one looked healthy before it could serve): one of its block-pool actors is RUNNING, as the native
  # stack checks it (logpipe.health.probe_datanode). Its JMX over bash's /dev/tcp: no curl needed in the image
  local host="$BIND" jmx
  [ "$host" = "0.0.0.0" ] && host=127.0.0.1
  # shellcheck disable=SC2016  # $1, $2: the inner shell's arguments
  jmx="$(timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "GET /jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3 && cat <&3' _ "$host" "$DN_HTTP_PORT" 2>/dev/null)" || true
  if ! grep -Eq 'ActorState[^A-Za-z]+RUNNING' <<< "$jmx"; then
    echo "this DataNode ($host:$DN_HTTP_PORT) has not registered with the NameNode yet (no RUNNING block-pool actor)"
    return 1
  fi
  echo "HDFS writable"
  return 0
}

role="${1:-${HDFS_ROLE:-}}"
case "$role" in
  namenode)
    write_config
    echo namenode > "$CONF_DIR/role"
    # formatted = VERSION and an fsimage (a format writes VERSION first: one stopped between the two left a
    # storage the NameNode cannot load, "No valid image files found"; it holds nothing, so it is formatted again,
    # as the native stack does: logpipe.stack.services.namenode_formatted). A fixed cluster id: a DataNode
    # volume that outlived the NameNode's still joins (with a random one it refuses: "Incompatible clusterIDs")
    if [ ! -f "$NAME_DIR/current/VERSION" ] || ! compgen -G "$NAME_DIR/current/fsimage_*" > /dev/null; then
      echo "formatting the NameNode in $NAME_DIR (first start)"
      hdfs namenode -format -nonInteractive -force -clusterid CID-logpipe
    fi
    exec hdfs namenode
    ;;
  datanode)
    write_config
    echo datanode > "$CONF_DIR/role"
    exec hdfs datanode
    ;;
  health)
    health
    ;;
  *)
    echo "usage: $0 namenode|datanode|health (got '${role}')" >&2
    exit 2
    ;;
esac
