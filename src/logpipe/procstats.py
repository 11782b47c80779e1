"""Samples CPU seconds and peak memory of running processes (and their children) for benchmarks."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux: /proc/<pid>/stat, field 22), or None. Unlike
    psutil's create_time (the boot time read from the wall clock, plus this), it does not move when the wall
    clock is stepped (NTP, a VM resumed after its host slept): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (comm)": field 3 (state) is index 0
    except (OSError, ValueError, IndexError):
        return None

@dataclass
class ProcStats:
    """CPU seconds used and peak resident memory of one process tree while it was watched."""

    name: str
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    # by (pid, start ticks): a pid the kernel hands out again is another process
    _start_cpu: dict[tuple[int, int | None], float] = field(default_factory=dict, repr=False)
    _last_cpu: dict[tuple[int, int | None], float] = field(default_factory=dict, repr=False)
    _sampled: bool = field(default=False, repr=False)

    def as_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "cpu_s": round(self.cpu_s, 2), "peak_rss_mb": round(self.peak_rss_mb, 1)}


class ResourceSampler:
    """Polls named process trees every `interval` s in a background thread.

    CPU is the growth of user+system time while watched (so long-running services such as Kafka count only
    the benchmark's share; a child born while watched counts from its start); the CPU a process uses after the
    last sample before it ends is not seen (at most `interval` s of it); memory is the peak sum of RSS over the tree. `peak_concurrent_mb` is the highest sum of
    RSS over every watched tree in one sample: the memory the machine really needed at once (over the whole time
    watched: stages that ran one after the other are not summed). Samples are taken under a lock (`watch` samples
    a new tree at once, beside the thread); a sample that fails is logged and the next one goes on, so the figures
    never stop silently (`errors` counts them). A tree whose root has ended is not sampled again: its pid may be
    handed to another process (or thread) later in a long run, which must not count as the ended stage.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        # name -> root (pid, start ticks: not psutil's create_time, which moves with a step of the wall clock and
        # then made every tree look ended, its figures stopping silently); ended: removed
        self._roots: dict[str, tuple[int, int | None]] = {}
        self.stats: dict[str, ProcStats] = {}
        self._services: list[str] = []
        self.peak_concurrent_mb = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _roots, stats and every sample
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def watch(self, name: str, pid: int, *, service: bool = False) -> None:
        """Watch the tree of `pid` as `name`. A `service` (Kafka, the NameNode) runs through every stage: its CPU
        is also told per stage (services_cpu_s)."""
        with self._lock:
            created = start_ticks(pid)  # None: already gone, nothing to count
            self._roots[name] = (pid, created)
            self.stats.setdefault(name, ProcStats(name))
            if service:
                self._services.append(name)
            self._sample_one(name, pid, created)

    def services_cpu_s(self) -> dict[str, float]:
        """The CPU seconds each service has used since it was first watched, sampled now: the difference of two
        calls is a stage's share of the services' CPU."""
        with self._lock:
            for name in self._services:
                if name in self._roots:
                    self._sample_one(name, *self._roots[name])
            return {name: self.stats[name].cpu_s for name in self._services}

    def start(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def stop(self) -> dict[str, ProcStats]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample_all()
        return self.stats

    def __enter__(self) -> "ResourceSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample_all()
            except Exception:  # noqa: BLE001 - a bad sample must not end the sampling
                self.errors += 1
                log.warning("resource sample failed (%d so far); sampling goes on", self.errors, exc_info=True)

    def _sample_all(self) -> None:
        with self._lock:
            total = sum(self._sample_one(name, pid, created) for name, (pid, created) in list(self._roots.items()))
            self.peak_concurrent_mb = max(self.peak_concurrent_mb, total / 2**20)

    def _sample_one(self, name: str, pid: int, created: int | None) -> int:
        """Sample one tree; returns its RSS in bytes now (0 when it has ended, and then it is no longer watched)."""
        st = self.stats[name]
        try:
            root = psutil.Process(pid)
            if created is None or start_ticks(pid) != created:
                raise psutil.NoSuchProcess(pid)  # the pid of an ended root, given to another process
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # ended, or a zombie/denied root: nothing of it to count now, or later
            self._roots.pop(name, None)
            return 0
        rss = 0
        for p in procs:
            # its identity first: a child reaped after its times were read gave (pid, None), a "new" process
            # whose whole CPU then counted a second time
            key = (p.pid, start_ticks(p.pid))
            if key[1] is None:  # ended (and reaped) since the tree was listed
                continue
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    rss += p.memory_info().rss
            except psutil.Error:
                continue
            # the processes of the first sample count from there (a service already running counts only its
            # share of the benchmark); one that appears later was born while watched: all its CPU counts
            st._start_cpu.setdefault(key, cpu if not st._sampled else 0.0)
            st._last_cpu[key] = cpu
        st._sampled = True
        st.cpu_s = sum(st._last_cpu[k] - st._start_cpu[k] for k in st._last_cpu)
        st.peak_rss_mb = max(st.peak_rss_mb, rss / 2**20)
        return rss
