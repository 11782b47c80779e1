"""Reads an access log as blocks of complete lines with their byte offsets; resumable, and `tail -F`-like in follow mode.

The file is read in large blocks (`os.pread`) and split with `bytes.split`, so the per-line cost stays in C.
A line is emitted only once its newline has been read, except at the definite end of a file: the end of a
non-follow run, an old file that was truncated in follow mode, and an old file rotated away in follow mode once it
has had no new bytes for `rotate_grace_s` (its unterminated tail is then the last thing it will hold, so it is sent
rather than lost). Until then, the rotated file is still read beside the new one: a writer goes on appending to
the renamed file until it reopens its log (logrotate's `create`, a web server's graceful restart).

Identity: a file is `<st_dev>:<st_ino>` (see position.py). Renaming keeps it, so a rotated file keeps its
offsets; the new file at the same path is a new identity starting at 0. Truncation (copytruncate) keeps the inode
but restarts the offsets, so it starts a new *generation*: src `<dev>:<ino>:<generation>`. What the producer had not
read before the truncation is in logrotate's copy: a file beside the log that starts with the same bytes and is at
least as long as the read position. It is read from that position on, as the rest of the old generation (same src),
before the new content; without such a copy (compressed, or removed) a warning says which bytes were not sent.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from logpipe.producer.position import HEAD_BYTES, Position, PositionStore, file_key, head_digest, src_id
from logpipe.record import TOO_LARGE_HEAD_BYTES

log = logging.getLogger("logpipe.producer")

BLOCK_BYTES = 1 << 20
LINE_CAP_BYTES = 64 << 20  # longer lines are not held in memory: only their head is kept (they are quarantined)
# a one-shot run that ends in a line without its newline waits until the file has not changed for this long
# before it sends that line as it is: its writer may be in the middle of it (LogSource._settle_tail)
TAIL_SETTLE_S = 1.0


# rotated files under these names are compressed: not readable as a log
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")
# files logpipe itself writes beside a log, named like rotations of it: `logpipe generate`'s ground truth and the
# log it is still writing (logpipe.generator)
SIDE_FILE_SUFFIXES = (".truth.json", ".partial")


class InputFileError(Exception):
    """The log file is missing or cannot be read (the message says which and why)."""


@dataclass(eq=False)
class Segment:
    """One generation of one file being read: its identity, where reading stands, its first bytes."""

    path: str
    fd: int
    key: str
    generation: int
    read_pos: int  # file offset of the next byte to read
    # the file's first bytes (up to HEAD_BYTES): as read, or, for a segment read from byte 0, as they were when the
    # producer took it up (fresh_segment): a truncation before its first read is then seen too
    head: bytes = b""
    carry: bytes = b""  # bytes after the last newline read so far (an incomplete line)
    carry_start: int = 0  # file offset of carry[0]
    skipping: int | None = None  # length so far of an overlong line being skipped
    skip_head: bytes = b""
    skip_start: int = 0
    resumed_from: int = 0
    opened_at: float = field(default_factory=time.time)  # wall clock: when the producer took this file up
    path_seen_at: float = field(default_factory=time.time)  # wall clock: when it last saw this file at the log's path
    replaced: bool = False  # its first bytes changed while it was read: truncated (and maybe refilled)
    lost_rest: bool = False  # truncated without a copy: what it held past the read position is lost (warned)
    src_base: str = ""  # the identity its src is made of, when not `key` (see position.py: a remounted file)

    @property
    def src(self) -> str:
        return src_id(self.src_base or self.key, self.generation)

    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return self.read_pos

    def head_changed(self) -> bool:
        """Whether the file's first bytes are no longer those read from it: truncated and refilled (copytruncate,
        or a new file written over it) since."""
        return bool(self.head) and os.pread(self.fd, len(self.head), 0) != self.head


@dataclass(eq=False)
class Block:
    """Complete lines (without "\\n") of one segment; line i starts at `start + sum(len(l)+1 for l in lines[:i])`."""

    segment: Segment
    start: int
    lines: list[bytes]
    end: int  # offset just after the last line's newline (or the end of an unterminated final line)
    oversize_len: int | None = None  # set when lines == [head of a line of this many bytes]
    final: bool = False  # the segment's definite end (a rotated file finished): its position is saved as finished

    @property
    def src(self) -> str:
        return self.segment.src


class Idle:
    """Yielded in follow mode when the reader waits for more data (a good moment to flush and save)."""


IDLE = Idle()


def fresh_segment(path: str, fd: int, key: str, generation: int, src_base: str = "",
                  head: bytes | None = None) -> Segment:
    """A segment to read file `fd` from byte 0, with the first bytes it holds now (or `head`, those it held when
    it was first seen). Without them, a file truncated again (copytruncate) while the producer was still busy with
    older content (a copy, a rotated file) looked untouched when its turn came: the lines it held then, only in
    the new copy, were never read, without a word."""
    return Segment(path, fd, key, generation, 0, head=os.pread(fd, HEAD_BYTES, 0) if head is None else head,
                   src_base=src_base)


@dataclass
class CheckedLog:
    """The log as `produce` checked it before it waited for Kafka (check_log): the open file, its first bytes and
    when. The source reads this file (not whatever is at the path by then: a rotation may have renamed it away),
    tells a truncation since the check by those bytes, and looks for rotations made since that moment."""

    fd: int
    st: os.stat_result
    head: bytes
    at: float


def check_log(path: str | Path) -> CheckedLog:
    """Open the log (InputFileError with a clear message if it cannot be read) and note its first bytes."""
    fd, st = open_log(path)
    return CheckedLog(fd, st, os.pread(fd, HEAD_BYTES, 0), time.time())


def wait_for_log(path: str | Path, stop: threading.Event, poll_s: float = 0.5,
                 on_wait: Callable[[], None] | None = None) -> bool:
    """Wait until a file exists at `path` (follow mode started before its writer made the log, like `tail -F`):
    True at once if it does, False if `stop` is set first. `on_wait` is called at every poll (a heartbeat)."""
    p = Path(path)
    if p.exists():
        return True
    log.info("%s does not exist yet: waiting for it to appear (--follow)", p)
    while not p.exists():
        if on_wait is not None:
            on_wait()
        if stop.wait(poll_s):
            return False
    log.info("%s appeared", p)
    return True


class CompressedLogError(InputFileError):
    """The log is compressed (compression_of): the producer sends text lines."""


def open_log(path: str | Path) -> tuple[int, os.stat_result]:
    """Open a log for reading; InputFileError with a clear message when it is missing, a directory, a pipe or
    unreadable. Opened without blocking: a FIFO with no writer would otherwise block the open itself, for ever and
    deaf to SIGTERM, before it could be refused."""
    import fcntl

    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise InputFileError(f"log file not found: {p}") from exc
    except PermissionError as exc:
        raise InputFileError(f"log file not readable (permission denied): {p}") from exc
    except OSError as exc:
        raise InputFileError(f"cannot open log file {p}: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    import stat as stat_mod

    if stat_mod.S_ISDIR(st.st_mode):
        os.close(fd)
        raise InputFileError(f"{p} is a folder: give the log file in it")
    if not stat_mod.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputFileError(f"not a regular file: {p} (the producer reads a log by byte offset, to resume from its "
                             "saved position: a pipe or device cannot do that; write it to a file first)")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    try:
        head = os.pread(fd, 16, 0)
    except OSError as exc:
        os.close(fd)
        raise InputFileError(f"cannot read log file {p}: {exc.strerror or exc}") from exc
    kind = compression_of(head)
    if kind:
        os.close(fd)
        raise CompressedLogError(f"{p} is {kind}-compressed: the producer sends text lines (it would send the "
                                 "compressed bytes as lines, each quarantined). Decompress it to a file and produce "
                                 "that one")
    return fd, st


# how compressed files start (their format's magic bytes): no log line starts so
_COMPRESSED_MAGIC = ((re.compile(rb"\A\x1f\x8b"), "gzip"), (re.compile(rb"\ABZh[1-9]1AY&SY"), "bzip2"),
                     (re.compile(rb"\A\xfd7zXZ\x00"), "xz"), (re.compile(rb"\A\x28\xb5\x2f\xfd"), "zstd"),
                     (re.compile(rb"\APK\x03\x04"), "zip"), (re.compile(rb"\A\x04\x22\x4d\x18"), "lz4"))


def compression_of(head: bytes) -> str | None:
    """The compression format a file starting with `head` is in (gzip, bzip2, xz, zstd, zip, lz4), or None."""
    return next((kind for magic, kind in _COMPRESSED_MAGIC if magic.match(head)), None)


def resume_offset(fd: int, offset: int) -> int:
    """Where to go on reading file `fd` from a saved `offset`: the offset itself, or the byte after the line end
    at `offset` when the last line read had none (it was the end of the file then, and was sent as a line) and
    one was written after it since (LF, or CRLF): that line end ends the line sent, it is not a line of its own."""
    prev, ending = (os.pread(fd, 1, offset - 1), os.pread(fd, 2, offset)) if offset else (b"", b"")
    if prev in (b"", b"\n"):  # the start of the file, or the last line read was whole
        return offset
    return offset + 1 if ending[:1] == b"\n" else offset + 2 if ending == b"\r\n" else offset


def _starts_with(path: str, pos: Position) -> bool:
    """Whether the file at `path` begins with the bytes the position `pos` recorded (it is the file we read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(pos.head_len)
    except OSError:
        return False
    return _is_head_of(head, pos)


def _is_head_of(head: bytes, pos: Position) -> bool:
    """Whether `head`, a file's first pos.head_len bytes, are the ones the position `pos` recorded."""
    return len(head) == pos.head_len and head_digest(head) == pos.head_sha256


def _holds(fd: int, st: os.stat_result, pos: Position) -> bool:
    """Whether the open file `fd` (of size st.st_size) still holds the content `pos` was saved for: the same first
    bytes, and at least pos.offset bytes."""
    return _is_head_of(os.pread(fd, pos.head_len, 0), pos) and pos.offset <= st.st_size


def _key_at(path: str) -> str | None:
    """The identity of the file at `path` (not following a link), or None if there is none."""
    try:
        return file_key(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


def _size(path: str) -> int:
    """The size of the file at `path` (0 if there is none)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _path_of(log_path: str, key: str) -> str | None:
    """The path of the file with identity `key` among the files beside the log (_log_places), or None."""
    return next((e.path for d in _log_places(log_path) for e in _scandir(d) if _key_at(e.path) == key), None)


def _scandir(directory: str) -> list[os.DirEntry]:
    """The entries of `directory`; [] if it cannot be listed (gone, not readable)."""
    try:
        return list(os.scandir(directory))
    except OSError:
        return []


def _log_places(path: str) -> dict[str, tuple[str, ...]]:
    """Where rotations of the log at `path` lie: its folder, and, when `path` is a symbolic link, the folder of the
    file it names (e.g. Kubernetes' /var/log/containers/x.log -> /var/log/pods/.../0.log, rotated beside 0.log);
    folder -> the rotation name prefixes there (`<name>.`, `<name>-`)."""
    places: dict[str, tuple[str, ...]] = {}
    for p in (path, os.path.realpath(path)):
        base, folder = os.path.basename(p), os.path.realpath(os.path.dirname(p))  # a folder reached two ways: once
        places[folder] = tuple(dict.fromkeys((*places.get(folder, ()), base + ".", base + "-")))
    return places


def _rotation_names(path: str) -> Iterator[os.DirEntry]:
    """Files beside `path` (or beside the file it links to: _log_places) named like its uncompressed rotations
    (`<name>.1`, `<name>-20261130`), but not the files logpipe writes beside a log (SIDE_FILE_SUFFIXES)."""
    for directory, prefixes in _log_places(path).items():
        for entry in _scandir(directory):
            if entry.name.startswith(prefixes) and not entry.name.endswith(COMPRESSED_SUFFIXES + SIDE_FILE_SUFFIXES):
                yield entry


def find_copy(path: str, starts_with: bytes | Position, offset: int, skip: Callable[[str], bool], *,
              ending_before: bool = False) -> tuple[int, os.stat_result] | None:
    """A copy of the old content of `path` (logrotate's copytruncate): an uncompressed file named like a rotation of
    it that starts with `starts_with` (bytes, or the head a Position recorded), holds at least `offset` bytes, and
    whose identity is not `skip`ped (the file itself, files the producer tracks). (fd, stat) or None.
    `ending_before`: instead, a copy that ends before `offset` (logrotate copied the file before the producer read
    its last lines, and truncated it after): its bytes are then a beginning of `starts_with`."""
    for entry in sorted(_rotation_names(path), key=lambda e: e.name):
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file() or skip(file_key(st)) or (st.st_size >= offset if ending_before
                                                              else st.st_size < offset):
                continue
            fd, st = open_log(entry.path)
        except (OSError, InputFileError):
            continue
        if isinstance(starts_with, Position):
            same = _is_head_of(os.pread(fd, starts_with.head_len, 0), starts_with)
        else:
            head = os.pread(fd, len(starts_with), 0)
            same = head == starts_with or (ending_before and bool(head) and starts_with.startswith(head))
        if same:
            return fd, st
        os.close(fd)
    return None


def _short_copy(path: str, starts_with: bytes | Position, offset: int, skip: Callable[[str], bool]) -> \
        tuple[int, str] | None:
    """(size, identity) of a copy of `path` that ends before `offset` (find_copy with ending_before), or None."""
    found = find_copy(path, starts_with, offset, skip, ending_before=True)
    if found is None:
        return None
    fd, st = found
    os.close(fd)
    return st.st_size, file_key(st)


@dataclass
class LogSource:
    """Blocks of lines from `path`, resuming at the saved position (unless `reset`), following it if `follow`."""

    path: str
    store: PositionStore
    follow: bool = False
    reset: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    block_bytes: int = BLOCK_BYTES
    line_cap: int = LINE_CAP_BYTES
    poll_interval: float = 0.2
    rotate_grace_s: float = 300.0
    current: Segment | None = None
    # files rotated away and still read for lines their writer appends: (segment, when it last grew)
    rotated: list[list[Any]] = field(default_factory=list)
    # copies of a truncated file's old content (copytruncate), read to their end before the file's new content
    copies: list[Segment] = field(default_factory=list)
    # identities of the copies found beside the log (read, or holding nothing unsent): not "never read" rotations
    copy_keys: set[str] = field(default_factory=set)
    # parts of the log that could not be sent (truncated or rotated away before they were read, a line cut by a
    # truncation): each has a warning naming its bytes; the run's summary counts them
    unsent_parts: int = 0
    read_to_end: bool = False  # a one-shot run read the file to its end (no stop before it)
    # bytes of logrotate copies and rotated files still to read when they were queued (the progress's total adds
    # them to the current file's rest)
    backlog_bytes: int = 0
    # new files at the path (a rotation) that could not be opened: identity -> when that was first seen
    unopenable: dict[str, float] = field(default_factory=dict)
    # the files rotated_leftovers found to read, with the identity their position is saved under
    _leftover_keys: dict[str, str] = field(default_factory=dict)
    # the rotations named as never read (warn_unread_rotations): identity -> the name it was last named under.
    # Each is counted once in unsent_parts, and named again only under a new name (shifted by the next rotation)
    _unread_rotations: dict[str | None, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = os.path.abspath(self.path)

    # ---- opening and resuming ------------------------------------------------------------------
    def open(self, checked: CheckedLog | None = None) -> Segment:
        """Open the file (raises InputFileError), or take the one `checked` (which this source then owns), and
        place the cursor at the saved position."""
        fd, st = (checked.fd, checked.st) if checked else open_log(self.path)
        try:
            self.current = self._resume(self.path, fd, st, from_copy=True, first_seen=checked)
        except BaseException:  # e.g. the position store refuses a save: the log and any copy queued are closed
            self.close()
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        if checked:
            self.current.opened_at = self.current.path_seen_at = checked.at
        self.backlog_bytes = sum(max(0, copy.size() - copy.read_pos) for copy in self.copies)
        return self.current

    def _resume(self, path: str, fd: int, st: os.stat_result, from_copy: bool = False,
                shown: str | None = None, first_seen: CheckedLog | None = None) -> Segment:
        """The segment to read the file `fd` (at `path`) from: its saved position, or byte 0 of a new generation
        when its content is not the one saved. `from_copy` (the log at start): the old content's unread rest is
        then queued from logrotate's copy (copytruncate), unless the saved position says it was read to its end.
        `shown`: the file's own name in messages, when `path` is the followed log's (a rotated file's positions
        are recorded under the log's path). `first_seen`: the file as checked before (a new file, read from byte 0,
        keeps the first bytes it had then: a truncation since then is seen)."""
        key = file_key(st)
        name = shown or path
        saved = (self.store.load(key) or self._remounted(path, fd, st)
                 or (self._written_anew(path, fd, st) if from_copy else None))
        if saved is None:
            return fresh_segment(path, fd, key, 0, head=first_seen.head if first_seen else None)
        if not _holds(fd, st, saved):
            copy_key = None
            if saved.finished:  # the content saved was read to its end: nothing of it is left to read
                log.info("%s (%s): its content is not the one read to its end last time (truncated, or a new file "
                         "with the same identity): reading it from byte 0 as generation %d", name, key,
                         saved.generation + 1)
            elif st.st_size < saved.offset and _is_head_of(os.pread(fd, saved.head_len, 0), saved):
                # its end cut off (truncate -s; its host crashed before the writer's last bytes reached the disk):
                # no mark says which of its bytes are the ones sent, so it is read as a new generation, as a
                # replaced file is; said plainly, since its lines sent before are then counted twice
                log.warning("%s (%s): shorter than the position saved (%d bytes, %d read and sent) but starting with "
                            "the same bytes: its end was cut off since the last run. It is read again from byte 0 "
                            "as generation %d, so the lines it still holds that were sent before are sent again "
                            "under new keys and counted twice by the job; what it had after byte %d is not in it "
                            "any more", name, key, st.st_size, saved.offset, saved.generation + 1, st.st_size)
            else:
                log.warning("%s (%s): content differs from the saved position (truncated or replaced since the "
                            "last run, or a new file that took the identity of one rotated away and removed); "
                            "reading from byte 0 as generation %d", name, key, saved.generation + 1)
            if from_copy and not saved.finished:
                copy_key = self._copy_of_old_content(path, key, saved)
            if from_copy and saved.updated_at:  # truncated more than once since: the copies in between are unread
                self.warn_unread_rotations({key} | ({copy_key} if copy_key else set()),
                                           datetime.fromisoformat(saved.updated_at).timestamp())
            return fresh_segment(path, fd, key, saved.generation + 1, saved.src_base)
        if self.reset:
            log.info("%s: --reset: reading from byte 0 again (src %s; downstream drops the duplicates)",
                     name, saved.src)
            return fresh_segment(path, fd, key, saved.generation, saved.src_base)
        if from_copy and not saved.head_len and saved.updated_at:
            # saved before any byte of it was read (an empty log): its first bytes cannot tell whether it was
            # truncated since. If it was (copytruncate), the copy of what it held is a rotation written since then
            self.warn_unread_rotations({key}, datetime.fromisoformat(saved.updated_at).timestamp())
        head = os.pread(fd, min(HEAD_BYTES, saved.offset), 0)
        start = resume_offset(fd, saved.offset)
        if saved.offset:
            log.info("%s: resuming at byte %d of %d (src %s)", name, start, st.st_size, saved.src)
        if 0 < start == saved.offset < st.st_size and os.pread(fd, 1, start - 1) not in (b"", b"\n"):
            # the last run sent an unterminated last line (a one-shot run ends at the end of the file), and the
            # writer went on with that line since: its rest goes out as a line of its own
            log.warning("%s: the line the last run sent last had no line end yet, and more of it was written since "
                        "(byte %d on): that rest is sent as a line of its own, so that log line reaches the job as "
                        "two records (each parsed or quarantined alone). `logpipe produce --follow` waits for a "
                        "line's end", name, start)
        return Segment(path, fd, key, saved.generation, start, head=head, carry_start=start,
                       resumed_from=start, src_base=saved.src_base)

    def _remounted(self, path: str, fd: int, st: os.stat_result) -> Position | None:
        """The saved position of this file under its identity before its device number changed (its file system
        mounted again), or None. It is the position saved for the same path, with the same inode number on
        another device, whose first bytes the file still has. The position moves to the file's identity and keeps
        its src: without this, the file was read again from byte 0 under new keys, and the stream counted all of
        its lines twice."""
        key = file_key(st)
        for p in self.store.all():
            if (p.path != path or p.key == key or p.key.partition(":")[2] != str(st.st_ino) or p.finished
                    or not _holds(fd, st, p)):
                continue
            return self._move_to_identity(p, key, path, f"resuming at byte {p.offset}")
        return None

    def _move_to_identity(self, p: Position, key: str, path: str, doing: str,
                          why: str = "same inode number and first bytes on another device: its file system was "
                                     "mounted again") -> Position:
        """Save position `p` under the file's new identity `key` (its file system mounted again, or the file
        written anew: `why`), keeping its src, remove it under the old one, and say so (`doing`: what is done with
        the file now)."""
        moved = replace(p, key=key, src_base=p.src_base or p.key)
        self.store.save(moved)
        self.store.delete(p.key)
        log.warning("%s: its identity changed from %s to %s (%s); %s under its old src %s", path, p.key, key, why,
                    doing, moved.src)
        return moved

    def _written_anew(self, path: str, fd: int, st: os.stat_result) -> Position | None:
        """At start: the saved position of the file that was at `path` when a new file took its place holding the
        same content and more (rsync's temporary file renamed over it, `cp` to a new file and `mv`): the old file is
        gone (no file beside the log has its identity), and the new one starts with the bytes saved and holds at
        least the offset. The position moves to the new file's identity and keeps its src: read from byte 0 under a
        new src, its lines sent before went out again and the stream counted them twice. None if there is none."""
        key = file_key(st)
        candidates = [p for p in self.store.all()
                      if p.path == path and p.key != key and not p.finished and p.head_len and _holds(fd, st, p)]
        if not candidates:
            return None
        present = {_key_at(e.path) for d in _log_places(path) for e in _scandir(d)}
        for p in sorted(candidates, key=lambda p: p.updated_at, reverse=True):
            if p.key not in present:
                return self._move_to_identity(
                    p, key, path, f"resuming at byte {p.offset}",
                    why=f"the file read before is gone, and this one starts with its first {p.head_len} bytes and "
                        f"holds at least the {p.offset} read: the same log written anew, e.g. by rsync")
        return None

    def _tracked_or(self, key: str) -> Callable[[str], bool]:
        """Identities a copy cannot have: `key` (the file itself) and files with a saved position (read as such)."""
        return lambda k: k == key or self.store.load(k) is not None

    def _copy_of_old_content(self, path: str, key: str, saved: Position) -> str | None:
        """The file at `path` was truncated or replaced since `saved`: queue the rest of its old content from a copy
        beside it (copytruncate), to be read first under the old src, or warn that it is not there. Returns the
        identity of the copy found (read or not)."""
        copy = find_copy(path, saved, saved.offset, self._tracked_or(key))
        if copy is None:
            short = _short_copy(path, saved, saved.offset, self._tracked_or(key))
            if short is not None:
                log.info("%s: its copy (%s) ends at byte %d, where the producer had read it: nothing of its old "
                         "content (src %s) is left to send", path, short[1], short[0], saved.src)
                self.copy_keys.add(short[1])
                return short[1]
            self.unsent_parts += 1
            log.warning("%s: no uncompressed copy of its old content (src %s) found beside it: whatever it held "
                        "after byte %d, if anything, was not sent. If a rotation holds it, send that part with `tail -c +%d "
                        "<rotation> > rest.log; logpipe produce rest.log` (zcat a compressed one first)",
                        path, saved.src, saved.offset, saved.offset + 1)
            return None
        fd, st = copy
        log.warning("%s: reading the rest of its old content (src %s) from its copy (%s) at byte %d first",
                    path, saved.src, file_key(st), saved.offset)
        head = os.pread(fd, min(HEAD_BYTES, saved.offset), 0)
        start = resume_offset(fd, saved.offset)
        self.copies.append(Segment(path, fd, saved.key, saved.generation, start, head=head,
                                   carry_start=start, resumed_from=start, src_base=saved.src_base))
        self.copy_keys.add(file_key(st))
        return file_key(st)

    def rotated_leftovers(self) -> list[str]:
        """At the start of a run: files rotated away from `path` (found by identity among the files of the same
        directory) whose end was not yet delivered, or that were written to within rotate_grace_s (their writer
        may still append to them), oldest first."""
        if self.current is not None:  # the file being read, even if renamed away since it was opened (a rotation)
            current = self.current.key
        else:
            try:
                current = file_key(os.stat(self.path))
            except OSError:
                return []
        positions = [p for p in self.store.all() if p.path == self.path]
        # when the producer last saved a position of this log, as it stood before this scan (which saves some
        # again): the current file's too, since a copy read while it ran is older than that, though newer than the
        # last save of a rotated file finished before it
        saved_at = [datetime.fromisoformat(p.updated_at).timestamp() for p in positions if p.updated_at]
        pending = {p.key: p for p in positions if p.key != current}
        if not pending:
            return []
        found: list[tuple[str, str]] = []
        still_there: set[str] = set()
        truncated: dict[str, str] = {}  # identity -> path of a rotated file found, but not with the content saved
        places = _log_places(self.path)
        for entry in (e for directory in places for e in _scandir(directory)):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not entry.is_file() or file_key(st) == current:  # (a remount of the log itself: _remounted)
                continue
            is_rotation_name = entry.name.startswith(places[os.path.dirname(entry.path)])
            pos = pending.get(file_key(st)) or self._moved_device(entry.path, st, pending, is_rotation_name)
            if pos is None or not _starts_with(entry.path, pos):
                if pos is not None and is_rotation_name:  # (a deleted file's inode number taken by another file
                    truncated[pos.key] = entry.path       # would rarely be named as a rotation of this log)
                continue  # not a file we read: another file can get a deleted file's inode number
            if not pos.head_len and not is_rotation_name:
                continue  # saved while it was empty, so no first bytes to check: only a file named as a rotation
            still_there.add(pos.key)
            if st.st_size > pos.offset or time.time() - st.st_mtime < self.rotate_grace_s:
                found.append((pos.updated_at, entry.path))
                self._leftover_keys[entry.path] = pos.key
            elif not pos.finished:  # quiet for the grace and delivered to its last byte: nothing of it is left
                self.store.save(replace(pos, finished=True))  # (its later removal is then no loss to report)
        for key in pending.keys() - still_there:  # rotated away and since deleted (or compressed): nothing to read
            pos = pending[key]
            if not pos.finished and key in truncated:
                self.unsent_parts += 1
                copy = _short_copy(self.path, pos, 1 << 62, self._tracked_or(key))  # any copy of it, by its head
                # the copy is named here, not again as never read; the truncated file too, unless it holds lines
                # written since its truncation (not read either: it is named for them)
                self.copy_keys |= ({copy[1]} if copy else set()) | ({key} if _size(truncated[key]) == 0 else set())
                log.warning("%s: the file rotated away from it (src %s), now %s, was truncated (copytruncate) while "
                            "the producer was stopped, before the producer read it to its end: lines it got after "
                            "byte %d, if any, were not sent (they are in the copy made of it%s). Send them with "
                            "`tail -c +%d <the copy> > rest.log; logpipe produce rest.log`", self.path, pos.src,
                            truncated[key], pos.offset,
                            f", {_path_of(self.path, copy[1])}" if copy else ": none found beside the log",
                            pos.offset + 1)
            elif not pos.finished:
                self.unsent_parts += 1
                log.warning("%s: the file rotated away from it (src %s) is gone from %s (compressed, deleted, or "
                            "moved to another folder, e.g. by logrotate's olddir) before the producer read it to its "
                            "end: lines it got after byte %d, if any, were not sent. If a rotation holds them, send "
                            "them with `zcat <rotation> | tail -c +%d > rest.log; logpipe produce rest.log`",
                            self.path, pos.src, " and ".join(places), pos.offset, pos.offset + 1)
            self.store.delete(key)
        cur = self.current
        if cur is not None and cur.head and (cur.size() < cur.read_pos or cur.head_changed()):
            # the log was truncated since it was opened (copytruncate at the start): the copy its reading will
            # take its rest from, once it sees that, is not a rotation never read
            copy = find_copy(cur.path, cur.head, cur.read_pos, self._tracked_or(cur.key))
            if copy is not None:
                os.close(copy[0])
                self.copy_keys.add(file_key(copy[1]))
        if saved_at:  # rotated more than once while stopped: the files in between were never current for us
            # (nor while the last run was busy on a file without looking at the path: since it last saw its file
            # there, as the positions of the files current at their saves say, when they say)
            seen_at = [datetime.fromisoformat(p.path_seen_at).timestamp() for p in positions if p.path_seen_at]
            self.warn_unread_rotations({current}, min(max(saved_at), max(seen_at, default=math.inf)))
        return [p for _, p in sorted(found)]

    def _moved_device(self, path: str, st: os.stat_result, pending: dict[str, Position],
                      is_rotation_name: bool) -> Position | None:
        """The position saved in `pending` for the file at `path` under its identity before its device number
        changed (its file system mounted again while the producer was stopped: same inode number, same first
        bytes; one saved while the file was empty only if `path` is named as a rotation), moved to the file's
        identity with its src, as _remounted does for the log itself; None if there is none."""
        key = file_key(st)
        for p in list(pending.values()):
            if (p.key == key or p.key.partition(":")[2] != str(st.st_ino) or not _starts_with(path, p)
                    or not (p.head_len or is_rotation_name)):
                continue
            moved = self._move_to_identity(p, key, path, "it is read on")
            del pending[p.key]
            pending[key] = moved
            return moved
        return None

    def warn_unread_rotations(self, known: set[str], since: float) -> list[str]:
        """Warn about files beside the log, named like its rotations (`<name>.1`, `<name>-20261130`; not
        compressed), that the producer never read and that were written after `since` (wall clock): a log rotated
        twice before the producer saw the first rotation (or while it was stopped) leaves the file in between
        there, which only the path's current file leads to. Such a file is not read on a guess (a copy of the log
        would be sent twice); the warning says how to send it. Returns their paths."""
        # the copies found beside the log (copytruncate) were read, or hold nothing unsent: sending them again
        # under their own identity would send their lines twice, under a src the stream cannot drop as repeats
        known_keys = known | self.copy_keys | {p.key for p in self.store.all() if p.path == self.path}
        found = []
        for entry in _rotation_names(self.path):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_file() and file_key(st) not in known_keys and st.st_mtime >= since:
                found.append(entry.path)  # (an empty one too: a writer that has not reopened its log may fill it)
        for path in sorted(found):
            key = _key_at(path)
            if key not in self._unread_rotations:  # a part not sent: counted once, however often it is named
                self.unsent_parts += 1
            elif self._unread_rotations[key] == path:  # named already, under this name: the warning stands
                continue
            self._unread_rotations[key] = path
            log.warning("%s looks like a rotation of %s written after %s, and the producer never read it (the log "
                        "was rotated again before the producer reached the rotation before): its lines are not "
                        "sent. If they belong to this log, send them with `logpipe produce %s`", path, self.path,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)), path)
        return sorted(found)

    # ---- reading -------------------------------------------------------------------------------
    def blocks(self) -> Iterator[Block | Idle]:
        """Blocks until EOF (or, in follow mode, until `stop` is set); IDLE marks waits in follow mode. Older lines
        first: a truncated file's old content from its copy, then files rotated away while the producer was
        stopped, then the log itself."""
        if self.current is None:
            self.open()
        stopped = yield from self._read_copies()
        if not stopped:
            stopped = yield from self._read_leftovers()
        if not stopped:
            yield from self._read_log()

    def _read_copies(self) -> Generator[Block, None, bool]:
        """The rest of a truncated file's old content (from logrotate's copy), before its new content. True if
        `stop` was set before the end."""
        while self.copies:
            copy = self.copies[0]
            yield from self._read_available(copy)
            if self.stop.is_set():
                return True
            yield from self._finish(copy, final=True)
            os.close(copy.fd)
            self.copies.pop(0)
        return False

    def _read_leftovers(self) -> Generator[Block, None, bool]:
        """Files rotated away while the producer was stopped, before the current one (older lines first). Follow
        mode goes on reading them beside the new file (their writer may still append); a one-shot run reads each
        to its definite end, as it does the current file. True if `stop` was set before the end."""
        for leftover in self.rotated_leftovers():
            log.info("finishing %s, rotated away from %s while the producer was stopped", leftover, self.path)
            opened = self._open_leftover(leftover)
            if opened is None:
                # deleted (logrotate's `rotate N`) between the scan and now: what it held that was not sent is gone.
                # Counted here, and its position dropped (else the next start would count it); one read to its
                # definite end (finished, found as written within the grace) held nothing unsent
                key = self._leftover_keys.pop(leftover)
                saved = self.store.load(key)
                if saved is not None and not saved.finished:
                    self.unsent_parts += 1
                self.store.delete(key)
                log.warning("%s, rotated away from %s while the producer was stopped, was deleted before the producer "
                            "could read it: lines it got after those sent before, if any, were not sent",
                            leftover, self.path)
                continue
            fd, st, leftover = opened
            old = self._resume(self.path, fd, st, shown=leftover)  # positions are recorded under the followed path
            self.backlog_bytes += max(0, st.st_size - old.read_pos)
            self.rotated.append([old, time.monotonic()])
            yield from self._read_available(old)
            if self.stop.is_set():  # stopped before its end: its unread tail is finished next time
                return True
            if self.follow:
                self.rotated[-1][1] = time.monotonic()  # quiet from now on: its grace starts after this read
                continue
            yield from self._settle_tail(old)
            if self.stop.is_set():
                return True
            if self._tail_may_grow(old):  # its position stays before that line: a later run sends it whole
                log.info("%s: its last line has no newline yet and it was written %.0fs ago, within the %.0fs its "
                         "writer may go on appending after a rotation: not sent now; a later run sends it once the "
                         "file has been quiet that long", leftover, time.time() - os.fstat(old.fd).st_mtime,
                         self.rotate_grace_s)
                self.rotated.pop()
                os.close(old.fd)
                continue
            tail = list(self._finish(old, final=True))
            self.rotated.pop()
            os.close(old.fd)
            yield from tail
        return False

    def _open_leftover(self, path: str) -> tuple[int, os.stat_result, str] | None:
        """Open the rotated file rotated_leftovers found at `path`, by its identity: if the log was rotated on since
        the scan (`.1` renamed `.2`, a new copy made `.1`), the file now at `path` is another one (before, it was
        read as a new file from byte 0: a copy already read was sent again under its own src, which the stream
        cannot drop as repeats), and the one found is looked for under its new name beside the log. (fd, stat,
        its path now), or None if it is gone."""
        key = self._leftover_keys[path]
        for _ in range(3):  # renamed again between the look and the open: look again
            where = path if _key_at(path) == key else _path_of(self.path, key)
            if where is None:
                return None
            try:
                fd, st = open_log(where)
            except InputFileError:
                if os.path.lexists(where):
                    raise
                continue
            if file_key(st) == key:
                if where != path:
                    log.info("%s was renamed %s since the producer found it: read under that name", path, where)
                return fd, st, where
            os.close(fd)
        return None

    def _tail_may_grow(self, seg: Segment) -> bool:
        """A rotated file ends in a line without its newline and was written within rotate_grace_s: its writer may
        still finish that line (sent now, the rest would go out as another line: one line as two records)."""
        unterminated = bool(seg.carry) or seg.skipping is not None
        return unterminated and time.time() - os.fstat(seg.fd).st_mtime < self.rotate_grace_s

    def _read_log(self) -> Iterator[Block | Idle]:
        """The log itself: to its end (one-shot), or on and on through truncations and rotations until `stop`."""
        seg = self.current
        assert seg is not None
        while True:
            yield from self._read_available(seg)
            if self.stop.is_set():
                return
            if not self.follow:
                yield from self._read_to_the_end(seg)
                return
            change = self._detect_change(seg)
            if change == "truncated":
                stopped = yield from self._start_after_truncation(seg)
                if stopped:
                    return
                seg = self.current
                continue
            if isinstance(change, tuple):
                seg = self._follow_rotation(seg, *change)
                continue
            yield from self._read_rotated()
            if self.stop.is_set():
                return
            yield IDLE
            if self.stop.wait(self.poll_interval):
                return

    def _read_to_the_end(self, seg: Segment) -> Iterator[Block]:
        """A one-shot run's end: the last bytes once the file stopped growing, its last line, `read_to_end`."""
        yield from self._settle_tail(seg)
        if self.stop.is_set():
            return
        if seg.replaced:  # its unread rest is in logrotate's copy: the next run reads it from there
            log.warning("%s was truncated while it was read: stopped at byte %d; the next run reads the "
                        "rest from its copy, if there is one beside it", seg.path, seg.carry_start)
            return
        yield from self._finish(seg)
        self.read_to_end = True

    def _start_after_truncation(self, seg: Segment) -> Generator[Block, None, bool]:
        """`seg` was truncated: send its old content's rest from the copy, then read the file again from byte 0 as
        the next generation (`self.current`). True if `stop` was set before the copy's end."""
        now = os.pread(seg.fd, len(seg.head), 0)
        if now and seg.head.startswith(now):
            # its end cut off (truncate -s), not emptied: what it still holds was sent, and is read again
            log.warning("%s: its end was cut off (%d bytes had been read and sent; it still starts with the same "
                        "bytes). It is read again from byte 0 as generation %d, so the lines it still holds that were "
                        "sent before are sent again under new keys and counted twice by the job",
                        seg.path, seg.read_pos, seg.generation + 1)
        yield from self._rest_from_copy(seg)
        if self.stop.is_set():  # not read to the copy's end: the next run goes on from the position
            return True
        yield from self._finish(seg, final=True)  # saved as finished: a restart reads no copy again
        # truncated twice between two looks (copytruncate, twice): the copy in between is in no file the producer
        # reads, and the next start would not name it either (made before the producer's last save)
        self.warn_unread_rotations({seg.key, *(old.key for old, _ in self.rotated)}, seg.opened_at)
        log.info("%s was truncated: reading it from byte 0 as generation %d", seg.path, seg.generation + 1)
        self.current = fresh_segment(seg.path, seg.fd, seg.key, seg.generation + 1, seg.src_base)
        return False

    def _follow_rotation(self, seg: Segment, fd: int, st: os.stat_result) -> Segment:
        """The log was rotated: `seg` (the old file) is still read for what its writer appends; the new file at
        the path (`fd`) is followed from now on. Returns its segment (also `self.current`)."""
        self.rotated.append([seg, time.monotonic()])
        new = self._resume(self.path, fd, st)
        log.info("%s was rotated (%s -> %s): following the new file from byte %d; the old one is read "
                 "until it has had no new bytes for %.0fs", self.path, seg.key, new.key, new.read_pos,
                 self.rotate_grace_s)
        self.warn_unread_rotations({new.key, *(old.key for old, _ in self.rotated)}, seg.opened_at)
        self.current = new
        return new

    def _rest_from_copy(self, seg: Segment) -> Iterator[Block]:
        """`seg` was truncated: read what it held after read_pos from its copy beside it (copytruncate), as the
        same segment (a line cut by the truncation is completed from the copy), or warn that it is not there."""
        if not seg.head:
            return
        copy = find_copy(seg.path, seg.head, seg.read_pos, self._tracked_or(seg.key))
        if copy is None:
            seg.replaced = True  # the line it cut is not sent as a line (_finish)
            short = _short_copy(seg.path, seg.head, seg.read_pos, self._tracked_or(seg.key))
            if short is not None:
                log.info("%s was truncated; its copy (%s) ends at byte %d, before where the producer had read: "
                         "nothing of its old content is left to send", seg.path, short[1], short[0])
                self.copy_keys.add(short[1])
                return
            self.unsent_parts += 1
            seg.lost_rest = True  # the line it cut, if any, is part of this loss (_finish)
            log.warning("%s was truncated and no uncompressed copy of its old content is beside it: whatever it "
                        "held after byte %d (src %s), if anything, was not sent", seg.path, seg.carry_start, seg.src)
            return
        fd, st = copy
        log.info("%s was truncated: reading the rest of its old content from its copy (%s) at byte %d", seg.path,
                 file_key(st), seg.read_pos)
        self.copy_keys.add(file_key(st))
        own, seg.fd, seg.replaced = seg.fd, fd, False
        try:
            yield from self._read_available(seg)
        finally:
            seg.fd = own
            os.close(fd)

    def _read_rotated(self) -> Iterator[Block]:
        """New lines of the files rotated away; a file that has had none for rotate_grace_s is finished (its
        unterminated tail sent as its last line) and closed."""
        for entry in list(self.rotated):
            old, last_growth = entry
            before = old.read_pos
            yield from self._read_available(old)
            if self.stop.is_set():  # not read to its end: an unterminated tail is not its last line yet
                return
            now = time.monotonic()
            if old.read_pos != before:
                entry[1] = now
            elif now - last_growth >= self.rotate_grace_s:
                self.rotated.remove(entry)
                tail = list(self._finish(old, final=True))
                os.close(old.fd)
                log.info("%s (rotated away from %s) had no new bytes for %.0fs: finished at byte %d", old.key,
                         self.path, self.rotate_grace_s, old.read_pos)
                yield from tail

    def _detect_change(self, seg: Segment) -> str | tuple[int, os.stat_result] | None:
        """At EOF in follow mode: 'truncated', (fd, stat) of a new file at the path (rotation), or None."""
        if seg.size() < seg.read_pos:
            return "truncated"
        if seg.head_changed():
            return "truncated"  # truncated and refilled past our position between two polls
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # renamed away, new file not created yet: keep reading the old one
        if file_key(st) == seg.key:
            seg.path_seen_at = time.time()
            return None
        try:
            fd, st = open_log(self.path)
        except InputFileError as exc:
            # e.g. logrotate's `create` with an owner or mode this user cannot read: said at once, an error once it
            # lasts rotate_grace_s (its lines would go unsent, with the health check still green); the old file is
            # read on meanwhile, as its writer may still append to it
            key = file_key(st)
            if key not in self.unopenable:
                self.unopenable[key] = time.monotonic()
                log.warning("%s; the log was rotated and its new file cannot be read yet: reading the old one on, "
                            "and stopping with an error if it lasts %.0fs", exc, self.rotate_grace_s)
            elif (waited := time.monotonic() - self.unopenable[key]) >= self.rotate_grace_s:
                fix = ("decompress it" if isinstance(exc, CompressedLogError)
                       else "fix its owner or mode (logrotate's `create`)")
                raise InputFileError(f"{exc}: the log was rotated {waited:.0f}s ago and its new file cannot be "
                                     f"read; {fix}, then run the producer again: it goes on from its saved "
                                     "positions") from exc
            return None
        return fd, st

    def _read_available(self, seg: Segment) -> Iterator[Block]:
        while not self.stop.is_set() and not seg.replaced:
            before = seg.read_pos
            chunk = os.pread(seg.fd, self.block_bytes, before)
            known = before or seg.head  # something of this content was read, or seen when it was taken up
            if not chunk:
                if known and (seg.size() < before or seg.head_changed()):
                    seg.replaced = True  # truncated (and maybe refilled, not past where it was read) meanwhile
                return
            if known and seg.head_changed():
                seg.replaced = True  # truncated (and refilled) since the last read: the chunk is not the old content
                return
            seg.read_pos = before + len(chunk)
            if not known and seg is self.current:
                # its first bytes, in a file taken up empty: a truncation in between cannot be told from its first
                # writes (nothing of it is known to compare with), so a copy made of it since (copytruncate) holds
                # lines no file the producer reads does: named and counted
                self.warn_unread_rotations({seg.key, *(old.key for old, _ in self.rotated)}, seg.opened_at)
            if before <= len(seg.head) < min(HEAD_BYTES, seg.read_pos):
                seg.head += chunk[len(seg.head) - before: HEAD_BYTES - before]
            yield from self._split(seg, chunk)

    def _split(self, seg: Segment, chunk: bytes) -> Iterator[Block]:
        if seg.skipping is not None:
            idx = chunk.find(b"\n")
            if idx < 0:
                seg.skipping += len(chunk)
                return
            total = seg.skipping + idx
            block = Block(seg, seg.skip_start, [seg.skip_head], seg.skip_start + total + 1, oversize_len=total)
            seg.skipping, seg.skip_head = None, b""
            seg.carry, seg.carry_start = b"", block.end
            chunk = chunk[idx + 1:]
            yield block
        data = seg.carry + chunk if seg.carry else chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        start = seg.carry_start
        if lines:
            end = start + len(data) - len(rest)
            seg.carry, seg.carry_start = rest, end
            yield Block(seg, start, lines, end)
        else:
            seg.carry = rest
        if len(seg.carry) > self.line_cap:
            seg.skipping, seg.skip_head, seg.skip_start = len(seg.carry), seg.carry[:TOO_LARGE_HEAD_BYTES], \
                seg.carry_start
            seg.carry = b""

    def _settle_tail(self, seg: Segment) -> Iterator[Block]:
        """One-shot: the file ends in a line without its newline. Sent as it is, and its writer still at it, the
        rest would go out as another line on the next run: one line of the log as two records, neither of which
        parses. So while the file has changed within TAIL_SETTLE_S (its mtime, then what is seen here), the rest
        is read as it comes; a file quiet that long (the usual case: an old log, or one without a final newline)
        is not waited for."""
        now = time.monotonic()
        quiet_since = min(now, now - (time.time() - os.fstat(seg.fd).st_mtime))  # an mtime ahead of the clock: now
        size = seg.read_pos
        while (seg.carry or seg.skipping is not None) and not self.stop.is_set() and not seg.replaced:
            if time.monotonic() - quiet_since >= TAIL_SETTLE_S:
                return
            self.stop.wait(0.05)
            yield from self._read_available(seg)
            if seg.read_pos != size:
                size, quiet_since = seg.read_pos, time.monotonic()

    def _finish(self, seg: Segment, final: bool = False) -> Iterator[Block]:
        """The definite end of a segment: its unterminated last line (if any) is emitted as a line. `final`: the
        segment is done for good (a rotated file or a copy): a last block, possibly empty, says so. A segment
        truncated while it was read (`replaced`) and not completed from a copy has no last line: its unterminated
        rest is the start of a line cut by the truncation, not sent."""
        if seg.replaced and (seg.carry or seg.skipping is not None):
            if not seg.lost_rest:  # else counted with the rest it belongs to
                self.unsent_parts += 1
            log.warning("%s: the line at byte %d was cut by the truncation (%d bytes of it read); not sent",
                        seg.path, seg.skip_start if seg.skipping is not None else seg.carry_start,
                        seg.skipping if seg.skipping is not None else len(seg.carry))
            seg.carry, seg.skipping, seg.skip_head = b"", None, b""
        if seg.skipping is not None:
            total = seg.skipping
            block = Block(seg, seg.skip_start, [seg.skip_head], seg.skip_start + total, oversize_len=total)
            seg.skipping, seg.skip_head, seg.carry_start = None, b"", block.end
            yield block
        elif seg.carry:
            block = Block(seg, seg.carry_start, [seg.carry], seg.carry_start + len(seg.carry))
            log.info("%s: last line has no newline; sending its %d bytes as a line", seg.path, len(seg.carry))
            seg.carry, seg.carry_start = b"", block.end
            yield block
        if final:
            yield Block(seg, seg.carry_start, [], seg.carry_start, final=True)

    def close(self) -> None:
        for copy in self.copies:
            try:
                os.close(copy.fd)
            except OSError:
                pass
        self.copies.clear()
        for old, _ in self.rotated:
            try:
                os.close(old.fd)
            except OSError:
                pass
        self.rotated.clear()
        if self.current is not None:
            try:
                os.close(self.current.fd)
            except OSError:
                pass
            self.current = None
