"""One streaming run per results root: the lease is refused to a second live run, and taken over from a gone one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def local_fs(local_spark):
    from logpipe.streaming.commit import HadoopFs

    return lambda root: HadoopFs(local_spark, root)


def _lease(local_fs, root: Path, **kw):
    """A lease on `root`; a takeover settles for 50 ms, not the real 2 s, unless a test is about the settling
    (no other newcomer races these tests' takeovers)."""
    from logpipe.streaming.lease import RootLease

    kw.setdefault("settle_s", 0.05)
    return RootLease(local_fs(root.as_uri()), root.as_uri(), **kw)


def test_a_live_run_on_this_host_keeps_the_root_and_a_gone_one_loses_it(local_fs, tmp_path: Path):
    from logpipe.streaming.lease import RootBusy

    sleeper = subprocess.Popen(["sleep", "60"])  # a live process of this host, not this one
    try:
        first = _lease(local_fs, tmp_path, pid=sleeper.pid, heartbeat_s=0.2)
        first.acquire()
        held = json.loads((tmp_path / "_commits" / "lease.json").read_text())
        assert held["pid"] == sleeper.pid and held["run"] == first.me["run"]
        second = _lease(local_fs, tmp_path)
        with pytest.raises(RootBusy, match=f"process {sleeper.pid} on .*stop that run, or give this one another "
                                           "LOGPIPE_HDFS_ROOT"):
            second.acquire()
        first.check()  # still the holder
        mtime, deadline = os.path.getmtime(tmp_path / "_commits" / "lease.json"), time.monotonic() + 10
        while os.path.getmtime(tmp_path / "_commits" / "lease.json") <= mtime:  # renewed (every 0.2 s)
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.05)
    finally:
        sleeper.kill()
        sleeper.wait()
    first._stop.set()  # its renewals die with it (here they run in this test's process)
    first._beat.join()
    # the holder's process is gone (kill -9): the next run takes over at once, and the old holder finds out
    second.acquire()
    with pytest.raises(RootBusy, match=f"lost its lease .*now held by process {os.getpid()} on .*another run took "
                                       "the root over"):
        first.check()
    first.release()  # not its lease any more: left alone
    assert json.loads((tmp_path / "_commits" / "lease.json").read_text())["run"] == second.me["run"]
    second.release()
    assert not (tmp_path / "_commits" / "lease.json").exists()
    with pytest.raises(RootBusy, match="lost its lease .*the file is gone .*start the job again"):
        second.check()  # its lease deleted by hand: said so, not "held by process None on None"


def test_the_same_pid_on_this_host_is_a_restart_and_another_host_is_watched(local_fs, tmp_path: Path):
    """A restarted container is pid 1 on the same host again: it takes over. A lease of another host is taken
    over once it is not renewed for stale_s, and refused while it is renewed."""
    from logpipe.streaming.lease import RootBusy

    old = _lease(local_fs, tmp_path, pid=os.getpid(), heartbeat_s=3600)
    old.acquire()
    old._stop.set()  # it died without a release
    restarted = _lease(local_fs, tmp_path)
    restarted.acquire()
    assert json.loads((tmp_path / "_commits" / "lease.json").read_text())["run"] == restarted.me["run"]
    restarted.release()

    elsewhere = _lease(local_fs, tmp_path, host="another-host", pid=1, heartbeat_s=0.2)
    elsewhere.acquire()  # renewed every 0.2 s
    t = time.monotonic()
    with pytest.raises(RootBusy, match="process 1 on another-host"):
        _lease(local_fs, tmp_path, stale_s=5).acquire()
    assert time.monotonic() - t < 4  # it saw the renewal before the lease could go stale
    elsewhere._stop.set()  # another host's run ends without a release: its lease ages
    elsewhere._beat.join()
    t = time.monotonic()
    taker = _lease(local_fs, tmp_path, stale_s=1.5)
    taker.acquire()
    assert 0.5 < time.monotonic() - t < 10
    assert json.loads((tmp_path / "_commits" / "lease.json").read_text())["run"] == taker.me["run"]
    taker.release()


def test_a_lease_being_written_is_alive_and_an_old_empty_one_is_gone(local_fs, tmp_path: Path):
    """An empty lease file: a run that is creating it (young), or one killed before it wrote it (old)."""
    from logpipe.streaming.lease import RootBusy

    lease = tmp_path / "_commits" / "lease.json"
    lease.parent.mkdir(parents=True)
    lease.write_text("")
    with pytest.raises(RootBusy, match="a run that is writing its lease"):
        _lease(local_fs, tmp_path).acquire()
    os.utime(lease, (time.time() - 30, time.time() - 30))
    taker = _lease(local_fs, tmp_path)
    taker.acquire()
    assert json.loads(lease.read_text())["run"] == taker.me["run"]
    taker.release()


def test_a_lease_of_this_host_whose_process_is_not_the_holder_any_more(local_fs, tmp_path: Path, monkeypatch):
    """A run killed (kill -9, power loss) whose pid now names another process: after a reboot (another boot id),
    or a pid handed out again (another start time), the lease is taken over at once. Before, a live process with
    that pid kept the root refused for good. A lease of another pid namespace on a host of the same name (two
    containers, each with its own pid 7), or one that names no start time (an older logpipe's), is judged by its
    renewals, as another host's."""
    import socket

    from logpipe.streaming import lease as lease_module
    from logpipe.streaming.lease import BOOT_ID, PID_NAMESPACE, RootBusy, holder_may_run

    # a machine without /etc/machine-id (some container images) cannot tell a clone from itself: give it one
    monkeypatch.setattr(lease_module, "MACHINE_ID", lease_module.MACHINE_ID or "this-machine")
    MACHINE_ID = lease_module.MACHINE_ID  # noqa: N806

    lease = tmp_path / "_commits" / "lease.json"
    lease.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process of this host: the pid the lease names
    here = socket.gethostname()
    alive = {"host": here, "pid": sleeper.pid, "run": "0" * 32, "since": "2024-01-01T00:00:00Z",
             "machine": MACHINE_ID, "boot": BOOT_ID, "pidns": PID_NAMESPACE, "start": None}
    try:
        from logpipe.procstats import start_ticks

        alive["start"] = start_ticks(sleeper.pid)
        for holder, gone in [({**alive, "boot": "another-boot"}, "this host restarted since"),
                             ({**alive, "start": alive["start"] - 1}, "now names another process")]:
            lease.write_text(json.dumps(holder) + "\n")
            assert not holder_may_run(holder, 1.0)
            taker = _lease(local_fs, tmp_path, stale_s=30)
            t = time.monotonic()
            taker.acquire()  # at once, not after watching it
            assert time.monotonic() - t < 5, gone
            assert json.loads(lease.read_text())["run"] == taker.me["run"]
            taker.release()
        lease.write_text(json.dumps(alive) + "\n")  # the holder itself: refused
        assert holder_may_run(alive, 1e6)
        with pytest.raises(RootBusy, match=f"process {sleeper.pid} on "):
            _lease(local_fs, tmp_path).acquire()
        # another pid namespace; a machine of the same host name and pid namespace (clones: every host's first
        # pid namespace has the same number), whose pid and boot id mean nothing here; an older lease
        for holder in ({**alive, "pidns": "pid:[1]"}, {**alive, "machine": "another-machine", "boot": "its-boot"},
                       {k: v for k, v in alive.items() if k != "start"}):
            lease.write_text(json.dumps(holder) + "\n")
            assert holder_may_run(holder, 1.0) and not holder_may_run(holder, 1e6)  # by the lease's age
            taker = _lease(local_fs, tmp_path, stale_s=1.5)
            t = time.monotonic()
            taker.acquire()  # watched: not renewed for stale_s, then taken over
            assert time.monotonic() - t > 1.4
            taker.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_that_renews_while_it_is_judged_gone_is_named_as_running(local_fs, tmp_path: Path, monkeypatch):
    """The lease looked gone (here: its process id runs no process of this host), but its modification time moved
    before the takeover: its holder renews it, so it runs. Refused, naming that holder; before, the message said
    "another streaming run took it at the same moment"."""
    from logpipe.streaming.lease import RootBusy, RootLease

    gone = _lease(local_fs, tmp_path, pid=2**22 + 12345)  # a pid no process of this host has
    gone.acquire()
    gone._stop.set()
    gone._beat.join()
    reads = []
    holder = RootLease.holder

    def renewed_after_the_first_read(self):
        held = holder(self)
        reads.append(held)
        return held if len(reads) == 1 else (held[0], held[1], held[2] + 1000)

    monkeypatch.setattr(RootLease, "holder", renewed_after_the_first_read)
    with pytest.raises(RootBusy, match=rf"process {2**22 + 12345} on .* renewed its lease .* just now \(it looked "
                                       "gone: its process .* no longer runs"):
        _lease(local_fs, tmp_path).acquire()
    assert json.loads((tmp_path / "_commits" / "lease.json").read_text())["run"] == gone.me["run"]  # not deleted


def test_a_holder_judged_from_outside_a_run():
    """holder_may_run (the demo asks it before it deletes a root): a live process of this host, another host's
    run renewed within STALE_S, or a lease being written may still run; the others are gone. Unlike a run taking
    the lease, an outsider never has the holder's pid itself (no 'restart' rule)."""
    import socket

    from logpipe.streaming.lease import STALE_S, holder_may_run

    done = subprocess.Popen(["true"])
    done.wait()
    here = socket.gethostname()
    from logpipe.procstats import start_ticks

    assert holder_may_run({"host": here, "pid": os.getpid(), "start": start_ticks(os.getpid())}, 1e6)
    assert not holder_may_run({"host": here, "pid": os.getpid()}, 1e6)  # an older lease: by its age
    assert not holder_may_run({"host": here, "pid": done.pid}, 0.0)
    assert holder_may_run({"host": "elsewhere", "pid": 1}, STALE_S - 1)
    assert not holder_may_run({"host": "elsewhere", "pid": 1}, STALE_S + 1)
    assert holder_may_run({}, 1.0) and not holder_may_run({}, 30.0)


def test_two_runs_taking_over_at_once_do_not_both_hold_the_root(local_fs, tmp_path: Path):
    """Two newcomers take over the same gone holder: the second deletes the lease the first had just created (it
    read the old one before the first's delete) and creates its own. The first finds that out before it starts."""
    import threading

    from logpipe.streaming.lease import RootBusy

    gone = _lease(local_fs, tmp_path, pid=2**22 + 12345)  # a pid no process of this host has
    gone.acquire()
    gone._stop.set()
    gone._beat.join()
    first = _lease(local_fs, tmp_path, settle_s=1.5)
    second = _lease(local_fs, tmp_path)
    path = tmp_path / "_commits" / "lease.json"
    errors: list[BaseException] = []

    def take() -> None:
        try:
            first.acquire()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=take)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (path.exists() and first.me["run"] in path.read_text()):
        time.sleep(0.01)
    # the second newcomer's delete of "the old lease" hits the first's, then it creates its own
    second.fs.delete(second.path)
    assert second.fs.create_new(second.path, json.dumps(second.me) + "\n" + " " * second._pad)
    t.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], RootBusy), errors
    assert "took over" in str(errors[0]) and "at the same moment" in str(errors[0])
    assert json.loads(path.read_text())["run"] == second.me["run"]  # the survivor's lease is left alone
    second.check()


def test_a_holder_killed_but_not_yet_reaped_is_gone():
    """A run killed (kill -9) whose parent has not reaped it yet is a zombie: signal 0 still reaches its pid, and
    the next run was refused as if it still ran; it never renews its lease again."""
    from logpipe.procstats import start_ticks
    from logpipe.streaming import lease

    killed = subprocess.Popen(["sleep", "60"])
    try:
        killed.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{killed.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed process did not become a zombie"
            time.sleep(0.01)
        holder = {"host": socket.gethostname(), "pid": killed.pid, "start": start_ticks(killed.pid),
                  "machine": lease.MACHINE_ID, "pidns": lease.PID_NAMESPACE, "boot": lease.BOOT_ID}
        verdict, why = lease.judge_holder(holder, holder["host"])
        assert (verdict, why) == ("gone", f"its process {killed.pid} no longer runs on this host")
    finally:
        killed.wait()


def test_a_run_refused_the_lease_leaves_the_holders_lease_even_of_its_length(local_fs, tmp_path: Path):
    """The lease file's length is its holder's signature (1 in 65,536 runs share one): a run refused the lease
    (`stream` releases it on any start failure) never made a file, so it removes none, whatever its length."""
    from logpipe.streaming.lease import RootBusy

    sleeper = subprocess.Popen(["sleep", "60"])  # the holder: a live process of this host, not this one
    holder = _lease(local_fs, tmp_path, pid=sleeper.pid, heartbeat_s=3600)
    holder.acquire()
    try:
        refused = _lease(local_fs, tmp_path)
        refused._length = holder._length  # the 1-in-65,536 case, forced
        with pytest.raises(RootBusy, match="another streaming run writes to"):
            refused.acquire()
        refused.release()
        assert json.loads((tmp_path / "_commits" / "lease.json").read_text())["run"] == holder.me["run"]
        holder.check()  # still the holder's
    finally:
        holder.release()
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / "_commits" / "lease.json").exists()
