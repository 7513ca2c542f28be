"""Write-then-rename file helpers: a reader never sees a half-written file, a crash loses nothing old.

A failed write (a full disk, a quota, a read-only or vanished directory) becomes a `WriteError`: one line
naming the file, printed by the CLI with exit code 2, and the file's previous version stays in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from detach_framework.errors import UserError


class WriteError(UserError, OSError):
    """A file could not be written. Also an OSError, so callers that expect one from I/O still catch it."""


def write_error(path: str | Path, exc: OSError, what: str = "write") -> WriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    error = WriteError(f"cannot {what} {path}: {reason}; files written before are unchanged")
    error.errno = exc.errno
    return error


def _read_umask() -> int:
    mask = os.umask(0)  # the umask can only be read by setting it
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _mode_for(path: Path, full: int) -> int:
    """The mode a plain open()/mkdir() would leave: an existing target's own, else `full` less the umask
    (mkstemp/mkdtemp create 0600/0700, which would hide runs and exports from the user's group)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return full & ~_UMASK


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(path, 0o666))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from None
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def atomic_directory(path: str | Path, fill: Callable[[Path], None], what: str) -> Path:
    """Call `fill(tmp)` on a temporary sibling directory, then rename it to `path` (all or nothing).
    `path` must be absent or an empty directory; `what` names the caller in the error."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what}: {path} exists and is not an empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        fill(tmp)
        os.chmod(tmp, _mode_for(path, 0o777))
        if path.exists():
            path.rmdir()  # empty (checked above): rename cannot replace a directory portably
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
