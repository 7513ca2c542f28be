"""SIGINT and SIGTERM: let the write in progress finish, then stop with one line and exit code 128 + signal.

The trainer checkpoints after every epoch, so the last completed state is on disk as soon as the write in
progress (if any) has completed. A signal therefore has to do two things only: never cut a checkpoint
write short (`critical_section` defers it until the file is in place) and end the command with the
conventional exit code (130 for SIGINT, 143 for SIGTERM) instead of a traceback or a silent death.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_critical = 0  # nesting depth of critical sections in the main thread
_pending: int | None = None  # a signal that arrived inside one, raised when the outermost ends


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM. A KeyboardInterrupt, so every cleanup path that
    already handles Ctrl-C (temporary files, partial cache builds) runs unchanged."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _critical:
        _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` (deferred inside critical sections)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue  # e.g. SIGINT of a background job: whoever ignored it meant it
        previous[signum] = signal.SIG_DFL if current is None else current
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _pending = None


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """A block a signal must not cut short (a checkpoint write): the signal is raised once it is done."""
    global _critical, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
    # Reached only when the block succeeded: an exception in flight already ends the command.
    if _critical == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)
