"""Starts, checks and stops the native stack: one Kafka KRaft broker, one HDFS NameNode and one DataNode."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from logpipe import health
from logpipe.config import Settings
from logpipe.procstats import start_ticks
from logpipe.stack.aot import ensure_aot_cache, stop_orphaned_trainings
from logpipe.stack.configs import native_kafka_address, native_webhdfs_address, write_configs
from logpipe.stack.jars import StackError, classpath, is_resolved, resolve
from logpipe.stack.java import java_binary
from logpipe.stack.layout import Layout, stack_lock

log = logging.getLogger(__name__)

LOG_ROTATE_BYTES = 20 << 20  # a service log over this size moves to <service>.log.1 when the service starts
PID_START_SLACK_S = 5.0  # a recorded start time and the process's create time differ by at most this much


# ------------------------------------------------------------------------------------------------
# services
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    name: str
    main_class: str
    jars: str  # classpath name in jars.CLASSPATHS
    ports: tuple[int, ...]
    heap: str
    data_dir: Path
    args: tuple[str, ...]
    # ports it also binds, at random, once up (the DataNode's internal web server, behind its HTTP port)
    extra_ports: int = 0


def services(s: Settings, lay: Layout) -> list[Service]:
    """The services in start order."""
    return [
        Service("kafka", "kafka.Kafka", "kafka", (s.kafka_port, s.kafka_controller_port), s.kafka_heap,
                lay.data / "kafka", (str(lay.conf / "kafka" / "server.properties"),)),
        Service("namenode", "org.apache.hadoop.hdfs.server.namenode.NameNode", "hdfs",
                (s.namenode_rpc_port, s.namenode_http_port), s.namenode_heap, lay.data / "namenode", ()),
        Service("datanode", "org.apache.hadoop.hdfs.server.datanode.DataNode", "hdfs",
                (s.datanode_data_port, s.datanode_http_port, s.datanode_ipc_port), s.datanode_heap,
                lay.data / "datanode", (), extra_ports=1),
    ]


def _java_cmd(java: str, svc_jars: Path, lay: Layout, main: str, args: tuple[str, ...], heap: str,
              kind: str) -> list[str]:
    opts = [f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true"]
    if kind == "kafka":
        opts.append(f"-Dlog4j2.configurationFile={lay.conf / 'kafka' / 'log4j2.properties'}")
        cp = classpath(svc_jars)
    else:
        opts += [f"-Dhadoop.log.dir={lay.logs}", f"-Dhadoop.home.dir={lay.root}",
                 f"-Dlog4j.configuration=file:{lay.conf / 'hadoop' / 'log4j.properties'}"]
        cp = classpath(svc_jars, lay.conf / "hadoop")
    return [java, *opts, "-cp", cp, main, *args]


def _read_pid(lay: Layout, name: str) -> dict | None:
    try:
        return json.loads(lay.pid_file(name).read_text())
    except (OSError, ValueError):
        return None


def _names_run_dir(cmd: list[str], root: Path) -> bool:
    """True if an argument of cmd holds a path inside root (not merely starting like it: /tmp/lp vs /tmp/lp2),
    whole or after a ':' or '=' (classpath entries, -Dkey=path, file:path)."""
    inside = re.compile(r"(?:^|[:=])" + re.escape(str(root).rstrip(os.sep) + os.sep))
    return any(inside.search(arg) for arg in cmd)


def _record_pid(lay: Layout, svc: Service, pid: int) -> None:
    lay.pid_file(svc.name).write_text(json.dumps({"pid": pid, "main": svc.main_class, "started": time.time(),
                                                  "start_ticks": start_ticks(pid)}))


def _is_ours(lay: Layout, svc: Service, cmd: list[str]) -> bool:
    """cmd runs svc's main class from this run folder: the service, or its one-off storage format (_is_format)."""
    return svc.main_class in cmd and _names_run_dir(cmd, lay.root)


def _is_format(svc: Service, cmd: list[str]) -> bool:
    """cmd is svc's one-off storage format (`NameNode -format`), e.g. left running by a killed `stack up`: stopped
    with the service, never taken for it (it opens no port)."""
    return "-format" in cmd[cmd.index(svc.main_class) + 1:] if svc.main_class in cmd else False


def running_pid(lay: Layout, svc: Service) -> int | None:
    """The pid of our running instance of svc: the recorded pid, if that process started when recorded (a pid
    reused after a reboot is not ours) and its command line runs svc's main class from this run folder."""
    rec = _read_pid(lay, svc.name)
    if not rec:
        return None
    try:
        pid = int(rec["pid"])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        ticks = start_ticks(pid) if rec.get("start_ticks") is not None else None
        if ticks is not None:
            if ticks != int(rec["start_ticks"]):
                return None
        elif abs(proc.create_time() - float(rec["started"])) > PID_START_SLACK_S:  # a record without ticks
            return None
        cmd = proc.cmdline()
    except (KeyError, TypeError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if _is_ours(lay, svc, cmd) else None


def unrecorded_pids(lay: Layout, svc: Service, *, formats: bool = False) -> list[int]:
    """Processes that run svc's main class from this run folder but are not the recorded pid: its pid record was
    lost, or no longer matches (written by an older logpipe before the wall clock was stepped). With `formats`,
    also a storage format of svc's left running (which is never the service itself)."""
    return [pid for pid, is_format in _unrecorded(lay, svc) if formats or not is_format]


def format_pids(lay: Layout, svc: Service) -> list[int]:
    """Storage formats of svc (`NameNode -format`) running from this run folder: left by a killed `stack up`."""
    return [pid for pid, is_format in _unrecorded(lay, svc) if is_format]


def _unrecorded(lay: Layout, svc: Service) -> list[tuple[int, bool]]:
    """(pid, is a storage format) of each process of svc from this run folder but the recorded one."""
    recorded = running_pid(lay, svc)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.pid != recorded and proc.status() != psutil.STATUS_ZOMBIE and _is_ours(lay, svc, cmd):
                found.append((proc.pid, _is_format(svc, cmd)))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def our_pid(lay: Layout, svc: Service) -> int | None:
    """The pid of svc running from this run folder: the recorded one, else one no record names (see
    unrecorded_pids), else None."""
    return running_pid(lay, svc) or next(iter(unrecorded_pids(lay, svc)), None)


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process `pid` listens on (TCP)."""
    try:
        return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr}
    except (psutil.Error, OSError):
        return set()


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> bool:
    """Move path to path.1 (replacing an older one) if it is over max_bytes. True if it moved."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    path.replace(path.with_name(path.name + ".1"))
    return True


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_owner(port: int) -> str:
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({p.name()})"
    except (psutil.Error, OSError):
        pass
    return "another process"


FORMAT_TIMEOUT_S = 300  # a storage format takes seconds; one that hangs (a locked storage) is stopped


def _run_once(cmd: list[str], log_path: Path, what: str) -> None:
    """Run a one-off Java tool (a storage format) into its log; StackError with the log's tail if it fails."""
    rotate_log(log_path)
    with log_path.open("a") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise StackError(f"{what} did not end in {FORMAT_TIMEOUT_S} s (stopped). Last lines of {log_path}:\n"
                             f"{_log_tail(log_path)}") from None
    if proc.returncode != 0:
        raise StackError(f"{what} failed (exit {proc.returncode}). Last lines of {log_path}:\n{_log_tail(log_path)}")


def _format_if_needed(lay: Layout, java: str) -> None:
    """Format Kafka's storage (a new cluster id) and the NameNode's, unless done to the end before."""
    kafka_meta = lay.data / "kafka" / "meta.properties"
    if not kafka_meta.exists():
        (lay.data / "kafka").mkdir(parents=True, exist_ok=True)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # like Kafka's Uuid.randomUuid: a leading '-' reads as a CLI option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        log.info("formatting Kafka storage (cluster id %s)", cluster_id)
        cmd = _java_cmd(java, lay.jars / "kafka", lay, "kafka.tools.StorageTool",
                        ("format", "-t", cluster_id, "-c", str(lay.conf / "kafka" / "server.properties"), "-g"),
                        "256m", "kafka")
        _run_once(cmd, lay.log_file("kafka-format"), "formatting Kafka storage")
    if not namenode_formatted(lay.data / "namenode"):
        log.info("formatting the HDFS NameNode")
        cmd = _java_cmd(java, lay.jars / "hdfs", lay, "org.apache.hadoop.hdfs.server.namenode.NameNode",
                        ("-format", "-nonInteractive", "-force"), "256m", "hdfs")
        _run_once(cmd, lay.log_file("namenode-format"), "formatting the HDFS NameNode")


def namenode_formatted(name_dir: Path) -> bool:
    """Whether the NameNode's storage was formatted to the end. The format writes current/VERSION first and the
    empty namespace image (fsimage_*) after it: a format stopped between the two (Ctrl-C) left a VERSION the
    NameNode cannot start from ("No valid image files found"), and it was never done again. A storage with no
    image holds nothing to lose (there is nothing the NameNode could load), so it is formatted again."""
    current = name_dir / "current"
    return (current / "VERSION").is_file() and any(current.glob("fsimage_*"))


def _ready_probe(s: Settings, name: str) -> Callable[[], object]:
    # the services this stack starts, not the client settings: those may name compose's or another cluster
    if name == "kafka":
        return lambda: health.probe_kafka(native_kafka_address(s))
    if name == "namenode":
        def nn() -> None:
            health.probe_port(s.bind_host, s.namenode_rpc_port)
            health.probe_namenode_ui(native_webhdfs_address(s))
        return nn
    # the DataNode itself, not only the NameNode: that lists a dead DataNode as live for a while after it died
    return lambda: health.probe_datanode_ready(s.bind_host, s.datanode_data_port,
                                               f"http://{s.bind_host}:{s.datanode_http_port}",
                                               native_webhdfs_address(s))


def _ready_hint(s: Settings, lay: Layout, name: str) -> str:
    hint = f"Check its log: {lay.log_file(name)}."
    if name == "datanode":
        hint += (f" Its own state: http://{s.bind_host}:{s.datanode_http_port}/jmx?qry=Hadoop:service=DataNode,"
                 f"name=DataNodeInfo (ActorState RUNNING once registered); the NameNode's: "
                 f"{native_webhdfs_address(s)}/dfshealth.html#tab-datanode. If the NameNode stays in safe mode "
                 f"because its disk is nearly full ('low on available disk space' in "
                 f"{lay.log_file('namenode')}), free space, then `logpipe stack down` and `logpipe stack up`.")
    return hint + (" It is left running (it may still come up: `logpipe stack status`); `logpipe stack down` "
                   "stops it")


def _start(s: Settings, lay: Layout, java: str, svc: Service) -> tuple[int, bool]:
    """Start svc unless it runs; wait until ready. Returns (pid, started_now)."""
    pid = running_pid(lay, svc)
    if pid is None and (strays := unrecorded_pids(lay, svc)):
        pid = strays[0]
        log.warning("%s already runs from %s as pid %d, which its pid record did not name (lost, or written before "
                    "the wall clock was stepped): taking it as this stack's", svc.name, lay.root, pid)
        _record_pid(lay, svc, pid)
    if pid is None:
        for port in svc.ports:
            if health.port_open(s.bind_host, port):
                raise StackError(f"cannot start {svc.name}: port {s.bind_host}:{port} is taken by {_port_owner(port)}. "
                                 f"Stop it, or choose other ports (LOGPIPE_* port settings).")
        cmd = _java_cmd(java, lay.jars / svc.jars, lay, svc.main_class, svc.args, svc.heap,
                        "kafka" if svc.jars == "kafka" else "hdfs")
        log_path = lay.log_file(svc.name)
        rotate_log(log_path)
        with log_path.open("a") as out:
            out.write(f"\n===== logpipe: starting {svc.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=lay.root, start_new_session=True)
        _record_pid(lay, svc, proc.pid)
        pid, started = proc.pid, True

        def alive() -> str | None:
            code = proc.poll()
            return None if code is None else f"exit code {code}. Last lines of {log_path}:\n{_log_tail(log_path)}"
    else:
        started = False

        def alive() -> str | None:
            return None if running_pid(lay, svc) else "process vanished"

    health.wait_until(_ready_probe(s, svc.name), what=svc.name, timeout=s.stack_timeout_s, alive=alive,
                      hint=_ready_hint(s, lay, svc.name))
    return pid, started


# the classpaths `up` resolves: the services' and Spark's Kafka connector, so that streaming works offline after it
UP_CLASSPATHS = ("kafka", "hdfs", "spark-kafka")


def up(s: Settings, progress: Callable[[str], None] = print) -> list[dict]:
    """Resolve jars, write configs, format once, start every service and wait until all are ready."""
    with stack_lock(s.run_dir, "stack up"):
        return _up(s, progress)


def _resolve_jars(s: Settings, lay: Layout, progress: Callable[[str], None]) -> None:
    """Resolve every classpath `stack up` needs, but not one whose pom changed (a newer logpipe) under a service that
    runs on its jars: resolving deletes them first, and the JVM opens a jar only when it first looks for a class
    in it, so a running broker or NameNode would later fail on a class it had not loaded yet."""
    in_use = {svc.jars: svc.name for svc in services(s, lay) if our_pid(lay, svc) is not None}
    for name in UP_CLASSPATHS:
        if name in in_use and (lay.jars / name).is_dir() and not is_resolved(name, lay.jars):
            log.warning("%s runs on the %s jars of an older logpipe, so they are kept as they are: `logpipe stack "
                        "down` then `logpipe stack up` resolves the new ones (data kept)", in_use[name], name)
            continue
        t = time.monotonic()
        resolve(name, lay.jars)
        if time.monotonic() - t > 1:
            progress(f"resolved {name} jars in {time.monotonic() - t:.1f}s")


def _up(s: Settings, progress: Callable[[str], None]) -> list[dict]:
    lay = Layout(s.run_dir)
    for d in (lay.logs, lay.pids, lay.data, lay.jars):
        d.mkdir(parents=True, exist_ok=True)
    java = java_binary(s)
    _check_free_disk(lay)
    _check_before_start(s, lay)  # before minutes of jar resolution on a fresh machine
    _resolve_jars(s, lay, progress)
    before = {f: f.read_text() for f in lay.conf.rglob("*") if f.is_file()} if lay.conf.exists() else {}
    write_configs(s, lay)
    changed = {f.parent.name for f in lay.conf.rglob("*") if f.is_file() and before.get(f) != f.read_text()}
    for svc in services(s, lay):
        conf = "kafka" if svc.name == "kafka" else "hadoop"
        if conf in changed and running_pid(lay, svc):  # e.g. a newer logpipe changed a broker setting
            log.warning("%s runs with an older configuration than %s now holds: `logpipe stack down` then "
                        "`logpipe stack up` applies it (data kept)", svc.name, lay.conf / conf)
    for svc in services(s, lay):  # a format a killed `stack up` left running would hold the storage's lock
        for pid in format_pids(lay, svc):
            log.warning("stopping the storage format of %s a stopped `stack up` left running (pid %d)", svc.name, pid)
            _stop_pid(pid, 30.0)
    _format_if_needed(lay, java)
    for svc in services(s, lay):
        t = time.monotonic()
        pid, started = _start(s, lay, java, svc)
        progress(f"{svc.name:9s} {'started' if started else 'running'} (pid {pid})"
                 + (f", ready in {time.monotonic() - t:.1f}s" if started else ""))
    if s.kafka_bootstrap and s.kafka_bootstrap != native_kafka_address(s) or \
            s.webhdfs_url and s.webhdfs_url.rstrip("/") != native_webhdfs_address(s):
        log.warning("LOGPIPE_KAFKA_BOOTSTRAP / LOGPIPE_WEBHDFS_URL name %s / %s: the other commands use those, not "
                    "this stack (%s, %s)", s.kafka_address, s.webhdfs_address, native_kafka_address(s),
                    native_webhdfs_address(s))
    ensure_aot_cache(s, progress)
    return status(s)


# free disk the services need under the run folder's data/: the NameNode stays in safe mode with under 100 MB
# (dfs.namenode.resource.du.reserved), a DataNode takes no new block with under one block (128 MB) free; a margin
# for Kafka's segments and the logs
MIN_FREE_DISK_BYTES = 512 * 1024**2


def _check_free_disk(lay: Layout) -> None:
    """Refuse to start on a disk too full for HDFS to take writes (else it said ready and every write failed with
    "could only be written to 0 of the 1 minReplication nodes", or the start timed out in safe mode)."""
    free = shutil.disk_usage(lay.data).free
    if free < MIN_FREE_DISK_BYTES:
        raise StackError(f"only {free / 1024**2:,.0f} MiB free on the disk of {lay.data}: HDFS needs at least "
                         f"{MIN_FREE_DISK_BYTES // 1024**2} MiB there (its NameNode stays in safe mode under 100 MiB, "
                         "its DataNode takes no block under 128 MiB). Free space on that disk, or set "
                         "LOGPIPE_RUN_DIR to a folder on another one")


def _check_before_start(s: Settings, lay: Layout) -> None:
    """Before anything starts: each running service of ours listens on the ports now set, and no port of a service
    to start is taken (found one service at a time, a busy DataNode port left Kafka and the NameNode running)."""
    owners: dict[int, list[str]] = {}
    for svc in services(s, lay):
        for port in svc.ports:
            owners.setdefault(port, []).append(svc.name)
    if shared := {port: names for port, names in owners.items() if len(names) > 1}:
        raise StackError("cannot start the stack: " + "; ".join(f"port {port} is set for {' and '.join(names)}"
                                                                for port, names in sorted(shared.items()))
                         + ". Give each its own port (LOGPIPE_* port settings); nothing was started")
    taken = []
    for svc in services(s, lay):
        pid = our_pid(lay, svc)
        if pid is not None:
            # one still starting (some of its ports not bound yet) is left to the start's readiness wait: a
            # NameNode loading a long edit log binds its web port many seconds before its RPC port
            listening = _listening_addresses(pid)
            if _moved(s, svc, listening):
                raise StackError(
                    f"{svc.name} runs (pid {pid}) on {', '.join(f'{ip}:{port}' for ip, port in sorted(listening))}, "
                    f"not on {', '.join(f'{_bind_ip(s)}:{port}' for port in svc.ports)} as now set (a LOGPIPE_* port or "
                    "LOGPIPE_BIND_HOST changed): `logpipe stack down` with the old settings, then `logpipe stack up`")
            continue
        taken += [f"{s.bind_host}:{port} ({svc.name}) by {_port_owner(port)}" for port in svc.ports
                  if health.port_open(s.bind_host, port)]
    if taken:
        raise StackError(f"cannot start the stack: port{'s' if len(taken) > 1 else ''} {', '.join(taken)} "
                         f"taken. Stop {'them' if len(taken) > 1 else 'it'}, or choose other ports (LOGPIPE_* port "
                         f"settings); nothing was started")


def _stop_pid(pid: int, timeout: float, *, kill: bool = False) -> None:
    """SIGTERM pid and wait up to `timeout` s, then SIGKILL (at once with kill=True) and wait until it has ended.
    A process already gone is fine; raises StackError if it outlives SIGKILL by `timeout` s."""
    try:
        proc = psutil.Process(pid)
        if not kill:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                return
            except psutil.TimeoutExpired:
                log.warning("pid %d did not end %.0fs after SIGTERM: sending SIGKILL", pid, timeout)
        proc.kill()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as exc:
        raise StackError(f"pid {pid} still runs {timeout:.0f}s after SIGKILL (stuck in the kernel, e.g. on a hung "
                         f"disk: see `ps -o pid,stat,wchan -p {pid}`)") from exc


def _service(s: Settings, lay: Layout, name: str) -> Service:
    """The native service `name` (kafka, namenode, datanode); ValueError naming the known ones for another name."""
    known = services(s, lay)
    for svc in known:
        if svc.name == name:
            return svc
    raise ValueError(f"no native service {name!r}: {', '.join(x.name for x in known)}")


def stop_service(s: Settings, name: str, *, kill: bool = False, timeout: float = 30.0) -> bool:
    """Stop one service we started (SIGTERM, or SIGKILL with kill=True) and wait until its process has ended:
    the recorded pid and any other instance running from this run folder. True if one was running."""
    lay = Layout(s.run_dir)
    svc = _service(s, lay, name)
    with stack_lock(s.run_dir, f"stop {name}"):
        pid = running_pid(lay, svc)
        strays = unrecorded_pids(lay, svc, formats=True)
        pids = ([pid] if pid else []) + strays
        if not pids:
            return False
        if strays:
            log.warning("%s runs from %s as pid %s, which its pid record did not name (lost, written before the "
                        "wall clock was stepped, a second start, or a storage format a killed `stack up` left): "
                        "stopping it", name, lay.root, ", ".join(map(str, strays)))
        for p in pids:
            _stop_pid(p, timeout, kill=kill)
        lay.pid_file(name).unlink(missing_ok=True)
        return True


def service_pid(s: Settings, name: str) -> int | None:
    """The pid of the native service `name` (kafka, namenode, datanode) running from this run folder, or None."""
    lay = Layout(s.run_dir)
    return our_pid(lay, _service(s, lay, name))


def native_service_down(s: Settings, name: str) -> str | None:
    """Why waiting for the native stack's `name` (kafka, namenode) is pointless, or None: the client settings name
    its address here, nothing listens there, no process of this run folder runs it, and no `stack up` (or test
    session) holds the run folder's lock. A `stream` or `verify` with the stack down then says so at once, not
    after LOGPIPE_CONNECT_TIMEOUT_S (60 s). Another service on those addresses (compose's published ports) is not
    this: it listens, or is started by something this cannot see, and the wait goes on."""
    import fcntl
    from urllib.parse import urlparse

    if name == "kafka":
        client, native, what = s.kafka_address, native_kafka_address(s), "Kafka"
    else:
        web = urlparse(s.webhdfs_address)
        client, native = f"{web.hostname}:{web.port}", native_webhdfs_address(s).removeprefix("http://")
        what = "HDFS NameNode"
    host, port = native.rsplit(":", 1)
    if client != native or health.port_open(host, int(port)):
        return None
    lay = Layout(s.run_dir)
    if lay.lock_file.exists():
        fd = os.open(lay.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released with the fd below
        except BlockingIOError:
            return None  # a `stack up` (or a test session) is on it: the service may come
        finally:
            os.close(fd)
    if service_pid(s, name) is not None:
        return None  # starting, or busy: its own wait decides
    return (f"the native stack's {what} is not running (run folder {s.run_dir}): start it with `logpipe stack up`, "
            f"or point the settings at the {what} you run")


def start_service(s: Settings, name: str) -> int:
    """(Re)start one service and wait until it is ready (for fault tests)."""
    lay = Layout(s.run_dir)
    svc = _service(s, lay, name)
    with stack_lock(s.run_dir, f"start {name}"):
        return _start(s, lay, java_binary(s), svc)[0]


def down(s: Settings, wipe: bool = False, progress: Callable[[str], None] = print) -> None:
    """Stop the services we started (reverse order): the recorded pids, and any other process of theirs running
    from this run folder (stop_service). wipe=True also deletes their data."""
    with stack_lock(s.run_dir, "stack down"):
        _down(s, wipe, progress)


def _down(s: Settings, wipe: bool, progress: Callable[[str], None]) -> None:
    lay = Layout(s.run_dir)
    stop_orphaned_trainings(s, progress)  # first: it removes their topics and HDFS folder while the services run
    for pid, what in stack_clients(s, lay).items():
        log.warning("pid %d uses the stack and fails once it is down (the same command goes on after the next "
                    "`stack up`): %s", pid, what)
    for svc in reversed(services(s, lay)):
        if stop_service(s, svc.name):
            progress(f"{svc.name:9s} stopped")
        else:
            progress(f"{svc.name:9s} was not running")
    left = {svc.name: pids for svc in services(s, lay) if (pids := unrecorded_pids(lay, svc, formats=True))}
    if wipe and left:
        raise StackError(f"not wiping {lay.data}: {left} still run{'s' if len(left) == 1 else ''} from it")
    # only the services' own folders: a run folder set to a folder that holds other things (LOGPIPE_RUN_DIR=. in
    # the checkout, whose data/ holds the sample logs) keeps them
    for folder in (svc.data_dir for svc in services(s, lay)) if wipe else ():
        if folder.exists():
            shutil.rmtree(folder)
            progress(f"wiped {folder}")
    if wipe and lay.data.is_dir() and not any(lay.data.iterdir()):
        lay.data.rmdir()
    positions = s.run_dir / "producer"  # the producer's default position store: it points into the wiped topics
    if wipe and not s.producer_state_dir and positions.exists():
        shutil.rmtree(positions)
        progress(f"wiped {positions}")


def stack_clients(s: Settings, lay: Layout) -> dict[int, str]:
    """The processes other than the services themselves connected to Kafka's or the NameNode's client ports (a
    streaming job, a producer, verify, a notebook): pid -> its command line, shortened. Empty if connections
    cannot be listed."""
    import psutil

    import ipaddress
    import socket

    ports = {s.kafka_port, s.namenode_rpc_port, s.namenode_http_port}

    def ipv4(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """`ip` as an address, a v4 one mapped into v6 (`::ffff:127.0.0.1`, a Java socket's) as the v4 one."""
        address = ipaddress.ip_address(ip.split("%")[0])
        return getattr(address, "ipv4_mapped", None) or address

    try:
        ours = {ipv4(info[4][0]) for info in socket.getaddrinfo(s.bind_host, None)}
    except (OSError, ValueError):
        return {}
    own = {pid for svc in services(s, lay) if (pid := our_pid(lay, svc)) is not None}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return {}
    found: dict[int, str] = {}
    for c in conns:
        if (c.pid and c.pid not in own and c.pid != os.getpid() and c.raddr and c.raddr.port in ports
                and c.status == psutil.CONN_ESTABLISHED and c.pid not in found and ipv4(c.raddr.ip) in ours):
            try:
                proc = psutil.Process(c.pid)
                cmd = " ".join(proc.cmdline())
                if "org.apache.spark.deploy.SparkSubmit" in cmd and (parent := proc.parent()) is not None:
                    cmd = f"Spark's JVM of pid {parent.pid}: {' '.join(parent.cmdline())}"  # the job, not the JVM
            except psutil.Error:
                continue
            found[c.pid] = cmd if len(cmd) <= 160 else cmd[:157] + "..."
    return found


def status(s: Settings) -> list[dict]:
    """Each service: running or not, its pid, the ports it listens on (`ports_as_set` False when it runs on other
    ports than the settings now give: the other commands would look for it there), its data and log."""
    lay = Layout(s.run_dir)
    rows = []
    for svc in services(s, lay):
        # a process of ours that its pid record does not name (lost, or written before a clock step) runs too:
        # `stack down` stops it, `stack up` takes it back
        pid = our_pid(lay, svc)
        listening = _listening_addresses(pid) if pid is not None else set()
        as_set = not _moved(s, svc, listening)
        ports = (",".join(f"{s.bind_host}:{p}" for p in svc.ports) if as_set
                 else ",".join(f"{ip}:{port}" for ip, port in sorted(listening, key=lambda a: (a[1], a[0]))))
        rows.append({"service": svc.name, "running": pid is not None, "pid": pid, "ports": ports,
                     "ports_as_set": as_set, "data": str(svc.data_dir), "log": str(lay.log_file(svc.name))})
    return rows


def _moved(s: Settings, svc: Service, listening: set[tuple[str, int]]) -> bool:
    """Whether a running service listens elsewhere than the settings say: one of its ports at another address, or
    as many ports bound as it binds without its own among them. One that has bound only some is still starting
    (a service binds them seconds apart; the DataNode's random port counts: bound before its IPC port, it made a
    starting DataNode look moved for about a second)."""
    wanted = _addresses_as_set(s, svc)
    if wanted <= listening:
        return False
    if any(port in svc.ports and (ip, port) not in wanted for ip, port in listening):
        return True
    return len({port for _ip, port in listening}) >= len(svc.ports) + svc.extra_ports


def _bind_ip(s: Settings) -> str:
    """The address the services bind (the JVMs run IPv4-only: localhost is 127.0.0.1)."""
    return "127.0.0.1" if s.bind_host == "localhost" else s.bind_host


def _addresses_as_set(s: Settings, svc: Service) -> set[tuple[str, int]]:
    """The (address, port) pairs svc listens on with these settings."""
    return {(_bind_ip(s), port) for port in svc.ports}


def urls(s: Settings) -> dict[str, str]:
    """Where users look: the web UIs and the Kafka address (printed by `stack up`/`status` and the demo)."""
    # Spark takes the next port when its own is taken (a second job), and any free one for 0: the job logs it
    spark_ui = (f"http://{s.bind_host}:{s.spark_ui_port}/" if s.spark_ui_port
                else "a free port picked as the job starts (its log names it)")
    return {
        "HDFS NameNode UI": f"{s.webhdfs_address}/dfshealth.html",
        "HDFS file browser": f"{s.webhdfs_address}/explorer.html#{s.hdfs_root}",
        "HDFS DataNode UI": f"http://{s.bind_host}:{s.datanode_http_port}/",
        "Kafka bootstrap": s.kafka_address,
        "Spark UI (while a job runs)": spark_ui,
    }
