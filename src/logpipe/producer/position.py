"""Producer positions: where reading of one file (identity + generation) may resume, saved atomically after delivery.

One JSON file per (topic, file identity): `<state_dir>/<topic>/<dev>-<ino>.json`. A position is written only
after every record before `offset` was acknowledged by the broker, so a restart (even after kill -9) resumes at a
line boundary whose earlier lines are all in Kafka; lines after it may be sent again, with the same (src, off).

The stored head (length + SHA-256 of the file's first bytes) detects that the inode now holds different content
(copytruncate while the producer was down, or a deleted file whose inode number was reused): then the file is read
from byte 0 under the next *generation*, which changes `src` (in the record key) so old and new offsets never collide.

A file whose device number changed (its file system mounted again, e.g. on another machine or after a reboot that
numbered the devices anew) keeps its inode number and its first bytes: its position moves to the new identity and
keeps the old `src` (`src_base`), so lines sent again after the last save have the keys the stream drops repeats by.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

HEAD_BYTES = 4096  # how much of a file's beginning identifies its content


def file_key(st: os.stat_result) -> str:
    """The identity of an open file: `<st_dev>:<st_ino>` (survives renames; the path does not)."""
    return f"{st.st_dev}:{st.st_ino}"


def src_id(key: str, generation: int) -> str:
    """`src` in the record key: the file key, with `:<generation>` appended once the inode's content was replaced."""
    return key if generation == 0 else f"{key}:{generation}"


def head_digest(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


@dataclass(frozen=True)
class Position:
    """Everything before `offset` in file `key` (generation `generation`) is acknowledged by the broker."""

    key: str
    generation: int
    offset: int
    path: str
    head_len: int
    head_sha256: str
    updated_at: str = ""
    finished: bool = False  # the file was rotated away and read to its definite end: nothing of it is left to send
    src_base: str = ""  # the identity its src is made of, when not `key` (the file's device number changed)
    partition: int | None = None  # the Kafka partition its records went to (None: saved by an earlier version)
    # when the producer last saw this file at the log's path (ISO, UTC; "" for a file rotated away, or saved by an
    # earlier version): a rotation named like the log's and written since may have been at the path unseen
    path_seen_at: str = ""

    @property
    def src(self) -> str:
        return src_id(self.src_base or self.key, self.generation)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_position(file: Path) -> Position:
    """The position saved in `file`; PositionFolderError naming it if it is not one (edited or damaged by hand:
    saves are atomic)."""
    try:
        return Position(**json.loads(file.read_text()))
    except (ValueError, TypeError) as exc:  # bad JSON, bad UTF-8, or fields that are not a position's
        raise PositionFolderError(
            f"the saved position {file} cannot be read ({type(exc).__name__}: {exc}): restore it, or remove it to read "
            "that file from byte 0 again (its lines sent before are then sent again: the job drops those of a file "
            "still as it was)") from exc


class ProducerBusy(RuntimeError):
    """Another producer holds the log (PositionStore.exclusive)."""


class PositionFolderError(RuntimeError):
    """The folder of the saved positions cannot be made or written (PositionStore.exclusive)."""


class PositionStore:
    """Position files of one topic under `directory` (created on first save)."""

    def __init__(self, directory: Path, topic: str) -> None:
        safe_topic = re.sub(r"[^A-Za-z0-9._-]", "_", topic)
        self.directory = Path(directory) / safe_topic
        self._locks_held: set[str] = set()  # the names of the lock files `exclusive` holds now

    def _file(self, key: str) -> Path:
        return self.directory / (key.replace(":", "-") + ".json")

    def load(self, key: str) -> Position | None:
        """The saved position of file `key`, or None if there is none."""
        try:
            return _read_position(self._file(key))
        except FileNotFoundError:
            return None

    def all(self) -> list[Position]:
        """Every saved position of this topic."""
        if not self.directory.is_dir():
            return []
        return [_read_position(p) for p in sorted(self.directory.glob("*.json"))]

    def save(self, position: Position) -> None:
        """Write atomically and durably: temp file, fsync, rename over the old one, fsync the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamped = Position(**{**asdict(position), "updated_at": datetime.now(timezone.utc).isoformat()})
        target = self._file(position.key)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=target.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(stamped), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    @property
    def topic_id_file(self) -> Path:
        """The broker's id of the topic the positions were saved for (a topic deleted and made again gets a new
        one, and holds none of the lines they stand for)."""
        return self.directory / "topic-id"

    def topic_id(self) -> str | None:
        """The topic id recorded beside the positions, or None (none recorded: a new folder, or an older logpipe)."""
        try:
            return self.topic_id_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def record_topic_id(self, topic_id: str) -> None:
        """Record the id of the topic the positions are now saved for (replacing the file whole)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.topic_id_file.with_name("topic-id.tmp")
        tmp.write_text(topic_id + "\n")
        os.replace(tmp, self.topic_id_file)

    @property
    def heartbeat_file(self) -> Path:
        """Touched by a running producer of this topic whenever it has delivered and saved, or waits for more
        lines: its age tells whether the produce loop still moves (`logpipe health producer`)."""
        return self.directory / "heartbeat"

    def beat(self) -> None:
        """Touch the heartbeat file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.heartbeat_file.touch()

    @contextmanager
    def exclusive(self, log_path: str | Path) -> Iterator[None]:
        """Held while a producer sends `log_path` to this topic: a second one (same positions folder) is refused
        with ProducerBusy, instead of both sending the log and each saving its own positions over the other's
        (a restart would then go back and send lines again). An advisory lock (flock) on a file beside the
        positions: the OS releases it when its holder exits, even by kill -9. Locked under the path as given and,
        when it is a symlink, under the file it names too: a producer of `current -> access.log` and one of
        `access.log` are refused as one log, and so are two of `current` started before and after it moved."""
        import fcntl

        fds: list[int] = []
        try:
            for path in dict.fromkeys((os.path.abspath(log_path), os.path.realpath(log_path))):
                name = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
                lock = self.directory / f"producer-{name}.lock"
                try:  # the first thing the producer writes there: a folder it cannot use is said here, once
                    self.directory.mkdir(parents=True, exist_ok=True)
                    fds.append(fd := os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
                except OSError as exc:
                    raise PositionFolderError(
                        f"cannot keep the producer's positions in {self.directory}: {exc.strerror or exc} "
                        f"({exc.filename}). Set LOGPIPE_PRODUCER_STATE_DIR (or --producer-state-dir) to a folder "
                        "it may write") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise ProducerBusy(f"another producer (pid {holder}) is sending {path} to topic "
                                       f"{self.directory.name} with the positions in {self.directory}: stop it first "
                                       f"(lock file {lock})") from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._locks_held.add(lock.name)
            yield
        finally:
            self._locks_held.clear()
            for fd in fds:
                os.close(fd)  # releases its lock

    def end_beat(self) -> None:
        """The producer ends (call it inside `exclusive`): remove the heartbeat file, so that `logpipe health
        producer` does not count it alive for the heartbeat's last minute; unless another producer of this topic
        (another log, the same positions folder: it holds a lock of its own) runs, whose heartbeat it is too."""
        import fcntl

        for lock in self.directory.glob("producer-*.lock"):
            if lock.name in self._locks_held:
                continue
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # held: another producer runs
            finally:
                os.close(fd)
        self.heartbeat_file.unlink(missing_ok=True)

    def clear(self) -> int:
        """Delete every saved position of this topic; returns how many there were."""
        files = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        for f in files:
            f.unlink(missing_ok=True)
        if files:
            _fsync_dir(self.directory)
        return len(files)
