"""The benchmark's resource sampler: per-process peaks, and the peak of all watched processes at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import psutil

from logpipe.procstats import ResourceSampler

pytestmark = pytest.mark.unit

HOLD_50MB = "import time; b = bytearray(50 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep({})"


def test_concurrent_peak_counts_processes_running_together_not_one_after_another():
    sampler = ResourceSampler(interval=0.05).start()
    try:
        first = subprocess.Popen([sys.executable, "-c", HOLD_50MB.format(1.5)])
        second = subprocess.Popen([sys.executable, "-c", HOLD_50MB.format(1.5)])
        sampler.watch("first", first.pid)
        sampler.watch("second", second.pid)
        first.wait()
        second.wait()
        together = sampler.peak_concurrent_mb
        time.sleep(0.2)
        third = subprocess.Popen([sys.executable, "-c", HOLD_50MB.format(1.0)])  # alone, after the others ended
        sampler.watch("third", third.pid)
        third.wait()
    finally:
        stats = sampler.stop()
    assert all(stats[n].peak_rss_mb >= 50 for n in ("first", "second", "third"))
    assert together >= stats["first"].peak_rss_mb + stats["second"].peak_rss_mb - 10  # both at once
    # the third never ran with the others: the concurrent peak is below the sum of all three peaks
    assert sampler.peak_concurrent_mb < sum(s.peak_rss_mb for s in stats.values()) - 40


BUSY = ("import time, subprocess, sys; time.sleep(0.3); "  # the child is born after the tree's first sample
        "child = subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 1.5: pass\\nprint(time.process_time(), flush=True)\\ntime.sleep(2.5)'], "
        "capture_output=True, text=True); print(child.stdout.strip())")


def test_cpu_of_a_child_born_while_watched_counts_from_its_start():
    """A stage's process starts the real worker (the stream's JVM, say) after the sampler first saw the tree: its
    CPU counts from its start, not from the first time a sample caught it."""
    # samples every 2 s: at least one falls in the child's 2.5 s sleep after its 1.5 CPU s, however slowly the
    # busy loop ran (with a 1 s sleep, a loaded CI machine's samples fell before its end and after its exit)
    sampler = ResourceSampler(interval=2.0).start()
    try:
        parent = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
        sampler.watch("stage", parent.pid)
        out, _ = parent.communicate(timeout=60)
    finally:
        stats = sampler.stop()
    child_cpu = float(out.strip())  # what the child itself measured
    assert child_cpu >= 1.5
    assert child_cpu - 0.15 <= stats["stage"].cpu_s <= child_cpu + 1.0  # + the parent's own start-up



SPIN = "import time\nt = time.process_time()\nwhile True:\n    if time.process_time() - t > {}: time.sleep(60)"


# waits for a line on stdin, spins {} CPU s, prints its CPU seconds at the start and end of the spin, then sleeps
SPIN_ON_CUE = ("import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
               "while time.process_time() - t < {}: pass\nprint(t, time.process_time(), flush=True)\ntime.sleep(60)")


def test_a_services_cpu_is_told_per_stage():
    """A service (Kafka, the NameNode) runs through every stage of a bench: the CPU it used during one stage is
    the difference of two readings, not its total over the run. The service spins on cue and says when it is
    done, so the readings do not depend on how fast a loaded machine runs it (a fixed sleep did)."""
    sampler = ResourceSampler(interval=10.0).start()  # readings only when asked
    service = subprocess.Popen([sys.executable, "-c", SPIN_ON_CUE.format(0.6)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", SPIN.format(0.3)])
    try:
        sampler.watch("kafka", service.pid, service=True)
        sampler.watch("stage", other.pid)
        start = sampler.services_cpu_s()
        assert list(start) == ["kafka"]  # stages are not services
        service.stdin.write("go\n")
        service.stdin.flush()
        began, ended = map(float, service.stdout.readline().split())  # its own CPU clock, around the spin
        during = sampler.services_cpu_s()["kafka"] - start["kafka"]
        time.sleep(0.5)  # it sleeps now
        after = sampler.services_cpu_s()["kafka"] - start["kafka"] - during
    finally:
        service.kill()
        other.kill()
        service.communicate()
        sampler.stop()
    assert ended - began - 0.02 <= during <= ended - began + 0.2 and after < 0.05, (during, ended - began, after)


def test_a_failing_sample_is_counted_and_sampling_goes_on():
    """An unexpected error in one sample (psutil raising what the sampler did not expect) used to end the thread
    silently, and every later peak was lost."""

    class FlakySampler(ResourceSampler):
        failures = 2

        def _sample_all(self) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("boom")
            super()._sample_all()

    sampler = FlakySampler(interval=0.05).start()
    try:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_50MB.format(0.2) + "; b2 = bytearray(80 * 2**20); "
                                 "b2[::4096] = b'x' * len(b2[::4096]); time.sleep(1.0)"])
        sampler.watch("grows", proc.pid)  # sampled at once: before the second allocation
        proc.wait()
    finally:
        sampler.stop()
    assert sampler.errors == 2
    assert sampler.peak_concurrent_mb >= 120  # the thread's later samples saw the 130 MB


def test_the_pid_of_an_ended_stage_given_to_another_process_does_not_count_for_it():
    """Every stage's root was sampled for the whole run: once the kernel gave an ended stage's pid to another
    process (or a JVM thread), that stranger's CPU and memory counted as the stage's (a review reproduced it in a
    pid namespace). A root is now known by its pid and create time, and no longer sampled once it has ended."""
    import psutil

    sampler = ResourceSampler(interval=60)  # samples only when told
    short = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler.watch("short", short.pid)
    short.wait()
    stranger = subprocess.Popen([sys.executable, "-c", HOLD_50MB.format(2)])
    try:
        time.sleep(0.5)
        # as if the kernel had handed the ended root's pid to the stranger: same pid, another create time
        created = psutil.Process(stranger.pid).create_time() - 5
        sampler._roots["short"] = (stranger.pid, created)
        before = sampler.stats["short"].as_dict()
        sampler._sample_all()
        assert sampler.stats["short"].as_dict() == before
        assert "short" not in sampler._roots and sampler.peak_concurrent_mb < 50
        sampler.watch("stranger", stranger.pid)  # the stranger itself, watched under its own name, counts
        assert sampler.stats["stranger"].peak_rss_mb >= 50
    finally:
        stranger.kill()
        stranger.wait()


def test_cpu_keeps_counting_after_the_wall_clock_is_stepped(monkeypatch):
    """A process is known by its pid and start ticks, not psutil's create_time: that is the boot time read from
    the wall clock plus the start ticks, so a clock step (NTP, a VM resumed) moved it, the sampler took every
    watched tree for ended and its CPU and memory figures stopped without a word. The step is simulated by moving
    the boot time psutil reads, as a step of the wall clock does."""
    import psutil._pslinux as pslinux

    burn = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    sampler = ResourceSampler(interval=0.1).start()
    sampler.watch("stage", burn.pid)
    time.sleep(0.8)
    real_boot_time = pslinux.boot_time
    monkeypatch.setattr(pslinux, "boot_time", lambda: real_boot_time() + 2.0)  # the wall clock stepped 2 s ahead
    time.sleep(1.7)
    t = psutil.Process(burn.pid).cpu_times()
    used = t.user + t.system
    burn.wait()
    stats = sampler.stop()["stage"]
    assert stats.cpu_s >= used - 0.3, f"the process used {used:.2f} CPU s, the sampler saw {stats.cpu_s:.2f}"


def test_a_child_that_ends_during_a_sample_is_not_counted_twice(monkeypatch):
    """A child reaped between the reading of its CPU times and of its start time looked like a new process
    (start None), and its whole CPU counted a second time. The race is forced: its start time reads None."""
    from logpipe import procstats

    spawn = ("import subprocess, sys, time\n"
             f"c = subprocess.Popen([sys.executable, '-c', {SPIN.format(0.5)!r}])\n"
             "print(c.pid, flush=True)\ntime.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        # it has spun (to 0.5 s by its own precise clock; /proc's ticks, which the sampler reads, may show less:
        # waiting for all of it there could wait forever on a loaded machine)
        while sum(psutil.Process(child).cpu_times()[:2]) < 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sampler = ResourceSampler(interval=60.0)  # not started: samples taken here
        sampler.watch("stage", parent.pid)  # the first sample: the tree counts from here
        real = procstats.start_ticks
        monkeypatch.setattr(procstats, "start_ticks", lambda pid: None if pid == child else real(pid))
        sampler._sample_all()
    finally:
        if child is not None:  # first: it holds the parent's stdout open
            psutil.Process(child).kill()
        parent.kill()
        parent.communicate()
    assert sampler.stats["stage"].cpu_s < 0.1, sampler.stats["stage"].cpu_s
