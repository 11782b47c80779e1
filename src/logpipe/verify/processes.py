"""Run calls in worker processes, one each, results in order: the first that fails stops the others at once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process ended without a result (killed for memory, or by a signal): the message gives its exit
    code."""


def run_in_processes(fn: Callable[..., Any], calls: list[tuple[Any, ...]], *, ctx: Any, initializer: Any = None,
                     initargs: tuple[Any, ...] = (), on_wait: Callable[[], None] | None = None,
                     report_every_s: float = 6.0) -> list[Any]:
    """fn(*args) for each of `calls`, each in a `ctx` process of its own (after `initializer(*initargs)`), results
    in order. The first call that fails, or whose process dies without a result (killed for memory), stops the
    others at once (their processes are terminated) and is raised: a failed range does not wait for the rest of
    the file to be read, and a dead worker is an error, not a wait for ever. `on_wait` is called every
    `report_every_s` while they run (progress)."""
    from multiprocessing.connection import wait

    procs, conns = [], []
    try:
        for args in calls:
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_call_and_send, args=(send, fn, args, initializer, initargs), daemon=True)
            with _sigint_ignored():  # the worker starts with it ignored (an ignored signal stays so across exec)
                proc.start()
            send.close()  # the worker holds the other end: its exit, with or without a result, ends the pipe
            procs.append(proc)
            conns.append(receive)
        results: dict[int, Any] = {}
        next_report = time.monotonic() + report_every_s
        while len(results) < len(calls):
            for conn in wait([c for i, c in enumerate(conns) if i not in results], timeout=0.5):
                i = conns.index(conn)
                try:
                    ok, value = conn.recv()
                except EOFError:
                    procs[i].join(5)
                    raise WorkerDied(f"worker process {i + 1} of {len(calls)} ended without a result (exit code "
                                       f"{procs[i].exitcode}; a negative one is the signal that killed it, e.g. -9 "
                                       "when the system ran out of memory)") from None
                if not ok:
                    raise value
                results[i] = value
            if on_wait is not None and time.monotonic() >= next_report:
                on_wait()
                next_report = time.monotonic() + report_every_s
        return [results[i] for i in range(len(calls))]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        for conn in conns:
            conn.close()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while the block runs (the main thread only: elsewhere, nothing changes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.SIG_DFL)


def _call_and_send(send: Any, fn: Callable[..., Any], args: tuple[Any, ...], initializer: Any,
                   initargs: tuple[Any, ...]) -> None:
    """In a run_in_processes worker: (True, fn(*args)) or (False, its error, with the worker's traceback as a note)
    through `send`. Ctrl-C reaches the whole process group: the worker leaves it to the caller, which stops the
    workers (each printed `Process SpawnProcess-N:` and its traceback under the caller's `interrupted`)."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if initializer is not None:
            initializer(*initargs)
        out: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:
        exc.add_note(f"in worker process {os.getpid()}:\n{traceback.format_exc()}")
        out = (False, exc)
    try:
        send.send(out)
    except Exception as exc:  # a result or error that does not pickle: say so, with the error's text
        what = "its result" if out[0] else f"its error {out[1]!r}"
        send.send((False, RuntimeError(f"worker process {os.getpid()} could not send {what}: {exc}")))
    send.close()
