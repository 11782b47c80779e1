"""Stop requests from signal handlers: a threading.Event set without the deadlock that setting it in the handler
risks."""

from __future__ import annotations

import threading


def set_from_handler(event: threading.Event) -> None:
    """Set `event` from a signal handler. Python runs handlers in the main thread, between two bytecodes of whatever
    it was doing, and Event.set takes the lock that Event.wait holds for a moment as it starts and ends: a signal
    that came in that moment made set() wait, in the main thread, for a lock the main thread held, for ever (a
    producer hung on SIGTERM in a CI rehearsal; py-spy showed it there). A thread of its own sets the event
    instead, once the main thread has let the lock go."""
    threading.Thread(target=event.set, name="stop-request", daemon=True).start()
