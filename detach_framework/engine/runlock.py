"""An advisory lock on a run directory: one writer at a time (train, eval, report).

`flock` on `<run>/.lock`: the kernel releases it when the holder exits, including on SIGKILL, so a stale lock
never blocks a resume. The holder writes its pid and command into the file so a refused writer can name it.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from detach_framework.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """The held lock of one run directory; `release()` (or process exit) frees it."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | Path) -> RunLock:
        directory = Path(directory)
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock run directory {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"run directory {directory} is in use by {holder}; wait for it to finish or stop it first"
            ) from None
        except OSError as exc:  # a filesystem without flock: refuse rather than run unguarded
            os.close(fd)
            raise UserError(f"cannot lock run directory {directory}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(['detach', *sys.argv[1:]])[:200]}\n".encode())
        return cls(directory, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 300, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"another process ({text})" if text else "another process"
