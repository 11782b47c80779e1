"""The native stack's run folder: where its jars, configs, data, logs and pid records live, and its lock."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def jars(self) -> Path:
        return self.root / "jars"

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def aot(self) -> Path:
        return self.root / "aot"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.pids / f"{service}.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "stack.lock"

# one stack operation at a time per run folder
@dataclass
class _Held:
    guard: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fd: int | None = None


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def stack_lock(run_dir: Path, what: str = "stack operation") -> Iterator[None]:
    """Hold an exclusive flock on <run_dir>/stack.lock: `stack up`, `stack down`, start_service and stop_service of
    one run folder run one at a time (no two mvn runs into one jars folder, no double format or start). Blocks,
    with a log line naming the holder, while another process holds it. Re-entrant within a process (up() calls
    _start, down() calls stop_service); other threads of this process wait like other processes do."""
    path = Layout(Path(run_dir)).lock_file
    with _HELD_GUARD:
        held = _HELD.setdefault(path, _Held())
    with held.guard:
        if held.depth == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the JVMs (O_CLOEXEC)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                    log.warning("waiting for %s to finish: it holds %s (another `logpipe stack` run or a test "
                                "session on this run folder)", holder, path)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} ({what}: {' '.join(sys.argv)[:200]})\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)  # releases the flock
