"""One streaming run per results root: a lease file on the root that a second run finds, and refuses to share.

Two runs on one root would each take the other's batch in progress for a crashed attempt and delete its files
(commit.clean_crashed_attempts), and both would run the same batch ids. The lease `_commits/lease.json` names its
holder (host, process id, run id, and the process's identity on its host: the machine's id, the kernel's boot
id, its pid namespace and its start time in ticks since boot). It is created with create-if-absent, which HDFS
does atomically, and its modification time is renewed every HEARTBEAT_S seconds. A run that finds it takes it
over only when its holder is gone: this host restarted since (the same machine id, another boot id), the same
process id on the same host and pid namespace (this process, started again in place), a process id of this host
that no longer runs (kill -9) or now names another process (another start time: pids are handed out again), or,
for a lease of another host, machine or pid namespace (two containers may share a host name, each with its own
pid 7; two cloned machines a host name and a pid namespace), no renewal while it watched it for STALE_S seconds.
A restarted container is such a case: it gets a new pid namespace, so it waits up to STALE_S before it takes over.
The holder checks the lease again just before each commit marker, so a run that lost it writes no marker.

A takeover is a delete, then the create: two runs taking over the same gone holder at once could each delete
what the other just created. The one whose lease did not survive finds out when it looks again TAKEOVER_SETTLE_S
later, and stops before it starts (RootBusy); a second run would have had to pause that long between its own
re-read and its delete to slip through.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from logpipe.procstats import start_ticks
from logpipe.root_layout import COMMITS
from logpipe.streaming.commit import HadoopFs

log = logging.getLogger(__name__)

LEASE_FILE = f"{COMMITS}/lease.json"
HEARTBEAT_S = 10.0
STALE_S = 60.0
TAKEOVER_SETTLE_S = 2.0


class RootBusy(RuntimeError):
    """Another run holds the results root (the message names it and says what to do)."""


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists (perhaps another user's) and is not a zombie (killed, not yet reaped
    by its parent: signal 0 still reaches it, yet it will never renew its lease)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # field 3, after "pid (comm)"
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]: another container has another
    except OSError:
        return None


BOOT_ID, PID_NAMESPACE = _read("/proc/sys/kernel/random/boot_id"), _pid_namespace()
# systemd's id of the installed machine: two machines of the same host name (clones, a default name) differ in it,
# where their pid namespaces look alike (every host's first one has the same number)
MACHINE_ID = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def judge_holder(other: dict[str, Any], host: str, pid: int | None = None) -> tuple[str, str | None]:
    """How a lease's holder `other` (the lease's content) looks from process `pid` (None: from outside any run) on
    `host`: ("gone", why), ("alive", None): a process this host's kernel shows running, or ("elsewhere", None): a
    process this one cannot see (another host or pid namespace; or an older lease that names no start time, whose
    pid may have been handed out again), to be judged by its renewals."""
    def differs(key: str, mine: str | None) -> bool:
        return other.get(key) is not None and mine is not None and other[key] != mine

    if other.get("host") != host or differs("machine", MACHINE_ID) or differs("pidns", PID_NAMESPACE):
        return "elsewhere", None
    opid = int(other.get("pid", 0))
    if differs("boot", BOOT_ID):
        return "gone", f"this host restarted since its process {opid} wrote it"
    if pid is not None and opid == pid:
        return "gone", f"it was process {opid} on this host, which is this process now (a restart)"
    if not _pid_alive(opid):
        return "gone", f"its process {opid} no longer runs on this host"
    if other.get("start") is None:
        return "elsewhere", None
    if (now := start_ticks(opid)) is not None and now != other["start"]:
        return "gone", f"its process id {opid} now names another process (started later)"
    return "alive", None


def holder_may_run(holder: dict[str, Any], age_s: float) -> bool:
    """Judged from outside any run (the demo, before it deletes a root): whether the lease's holder `holder` (the
    lease's content), renewed `age_s` seconds ago, may still be running: a process of this host that runs, a run
    this host cannot see (judge_holder) that renewed it within STALE_S, or a lease still being written (empty, a
    few seconds old)."""
    if not holder:
        return age_s <= 5
    verdict, _ = judge_holder(holder, socket.gethostname())
    return verdict == "alive" or (verdict == "elsewhere" and age_s < STALE_S)


class RootLease:
    """The lease of one run on `root` (a Hadoop URI): acquire() before the first batch, check() at each batch,
    release() at the end. `host` and `pid` default to this process's."""

    def __init__(self, fs: HadoopFs, root: str, *, host: str | None = None, pid: int | None = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
                 settle_s: float = TAKEOVER_SETTLE_S) -> None:
        self.fs, self.path = fs, f"{root}/{LEASE_FILE}"
        pid = pid or os.getpid()
        self.me = {"host": host or socket.gethostname(), "pid": pid, "run": uuid.uuid4().hex,
                   "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": MACHINE_ID, "boot": BOOT_ID,
                   "pidns": PID_NAMESPACE, "start": start_ticks(pid)}
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        # the lease file's length is this run's signature (its content padded by a number drawn from the run id):
        # checking it takes the NameNode only, so the check at every batch and each renewal work while a DataNode
        # is away (reading the content would wait for one)
        self._pad = uuid.UUID(self.me["run"]).int % 65_536  # at most 64 KB; two runs alike: 1 in 65,536
        self._length = len((json.dumps(self.me) + "\n").encode()) + self._pad
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._created = False  # this run wrote a lease file: only then may release() remove one

    def holder(self) -> tuple[dict[str, Any], float, int] | None:
        """The lease's content, its age in seconds by this host's clock, and its modification time (ms, set by
        its holder's renewals), or None if there is none."""
        try:
            text = self.fs.read_text(self.path)
            mtime = int(self.fs.fs.getFileStatus(self.fs.path(self.path)).getModificationTime())
        except Exception as exc:  # noqa: BLE001 (py4j wraps Java's FileNotFoundException)
            if "FileNotFoundException" in str(exc) or not self.fs.exists(self.path):
                return None
            raise
        age = time.time() - mtime / 1000
        try:
            return json.loads(text), age, mtime
        except ValueError:  # being written, or written by a process killed before it closed the file
            return {}, age, mtime

    def _gone(self, other: dict[str, Any], age: float, mtime: int) -> str | None:
        """Why the holder `other` is gone (its lease may be taken over), or None while it may still run. A holder
        this process cannot see (judge_holder: "elsewhere") is judged by watching its lease (_watch), not by its
        age: the clocks may differ."""
        if not other:
            return "the lease file is empty or unreadable" if age > 5 else None  # young: still being written
        verdict, why = judge_holder(other, self.me["host"], self.me["pid"])
        return self._watch(mtime) if verdict == "elsewhere" else why

    def acquire(self) -> None:
        """Take the lease, or raise RootBusy if a live run holds it."""
        took_over = False
        held = self.holder()
        if held is not None:
            other, age, mtime = held
            why = self._gone(other, age, mtime)
            if why is None:
                who = (f"process {other.get('pid')} on {other.get('host')}, since {other.get('since')} (its lease "
                       f"{self.path} was renewed {age:.0f}s ago)" if other else
                       f"a run that is writing its lease {self.path} at this moment")
                raise RootBusy(
                    f"another streaming run writes to {self.path.rsplit(f'/{COMMITS}/', 1)[0]}: {who}. Two runs on "
                    "one root would undo each other's batches: stop that run, or give this one another "
                    "LOGPIPE_HDFS_ROOT (--hdfs-root)")
            now = self.holder()
            if now is not None and now[0] == other and now[2] == mtime:  # the one judged, not a newcomer's
                log.warning("taking over the lease of %s from process %s on %s: %s", self.path, other.get("pid"),
                            other.get("host"), why)
                self.fs.delete(self.path)
                took_over = True
            elif now is not None and now[0] == other:  # renewed while it was judged: it runs after all
                raise RootBusy(
                    f"another streaming run writes to {self.path.rsplit(f'/{COMMITS}/', 1)[0]}: process "
                    f"{other.get('pid')} on {other.get('host')}, since {other.get('since')}, renewed its lease "
                    f"{self.path} just now (it looked gone: {why}). Stop that run, or give this one another "
                    "LOGPIPE_HDFS_ROOT (--hdfs-root)")
        if not self.fs.create_new(self.path, json.dumps(self.me) + "\n" + " " * self._pad):
            raise RootBusy(f"another streaming run took {self.path} at the same moment: stop it, or give this one "
                           "another LOGPIPE_HDFS_ROOT (--hdfs-root)")
        self._created = True
        if took_over:  # another newcomer may have deleted ours in the same instant (its delete of the old one)
            time.sleep(self.settle_s)
            if not self._ours():
                raise RootBusy(f"another streaming run took over {self.path} at the same moment: stop it, or give "
                               "this one another LOGPIPE_HDFS_ROOT (--hdfs-root)")
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew, name="logpipe-lease", daemon=True)
        self._beat.start()

    def _watch(self, mtime: int) -> str | None:
        """A holder on another host, whose lease has modification time `mtime`: watch it for stale_s (by this
        host's clock; the holder's may differ). Renewed meanwhile: the holder lives (None); not: the reason it is
        taken for gone. A container recreated under a new host name finds its predecessor's lease this way, and
        waits stale_s."""
        log.info("the lease %s is held by a run this process cannot see (another host or pid namespace, or a lease "
                 "of an older logpipe): watching it for %.0fs to see whether that run still renews it", self.path,
                 self.stale_s)
        deadline = time.monotonic() + self.stale_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.heartbeat_s / 4))
            held = self.holder()
            if held is None:
                return "it ended"
            if held[2] != mtime:
                return None
        return f"it was not renewed for {self.stale_s:.0f}s"

    def _ours(self) -> bool:
        """Whether the lease file is still this run's (by its length: the NameNode only)."""
        try:
            return int(self.fs.fs.getFileStatus(self.fs.path(self.path)).getLen()) == self._length
        except Exception as exc:  # noqa: BLE001 (py4j wraps Java's FileNotFoundException)
            if "FileNotFoundException" in str(exc):
                return False
            raise

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._ours():
                    log.warning("the lease %s is no longer this run's: not renewing it", self.path)
                    return
                self.fs.fs.setTimes(self.fs.path(self.path), int(time.time() * 1000), -1)
            except Exception as exc:  # noqa: BLE001 (HDFS away for a moment: the next renewal may work)
                log.warning("could not renew the lease %s: %s", self.path, str(exc).splitlines()[0])

    def check(self) -> None:
        """Raise RootBusy unless this run still holds the lease (another run took it over after our renewals
        stopped for STALE_S, e.g. a process paused that long). Asks the NameNode only."""
        if self._ours():
            return
        try:
            held = self.holder()
        except Exception:  # noqa: BLE001 (only for the message)
            held = None
        if not held:
            raise RootBusy(f"this run lost its lease {self.path}: the file is gone (deleted outside the job, or the "
                           "results root removed?); it stops before writing anything more. Check that nobody "
                           "removes the root while a job writes to it, then start the job again")
        other: dict[str, Any] = held[0]
        raise RootBusy(f"this run lost its lease {self.path} (now held by process {other.get('pid')} on "
                       f"{other.get('host')}: its renewals stopped for longer than {self.stale_s:.0f}s, e.g. the "
                       "process was paused, and another run took the root over): it stops before writing anything "
                       "more")

    def release(self) -> None:
        """Stop renewing, and remove the lease if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        try:
            # never made one (refused): a live holder's lease of the same length (1 in 65,536) is not ours to remove
            if self._created and self._ours():
                self.fs.delete(self.path)
        except Exception as exc:  # noqa: BLE001 (a lease left behind is taken over by the next run)
            log.warning("could not remove the lease %s: %s", self.path, str(exc).splitlines()[0])
