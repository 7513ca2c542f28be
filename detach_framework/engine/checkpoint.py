"""Checkpoints: atomic writes, a content checksum, the previous `last.pt` kept, loaded with weights_only=True.

Every checkpoint holds a sha256 `checksum` of its own content (each tensor's dtype, shape and bytes, every
key, number and string, in order). A truncated file already fails to unpickle, but flipped bytes inside a
tensor would load silently as wrong weights: the checksum catches those. `save_checkpoint(...,
keep_previous=True)` first keeps the file it replaces as `<name>.prev.pt`, so resuming (`load_latest`) falls
back to it, with a warning, when the newest checkpoint is damaged. Loading never unpickles arbitrary
objects (weights_only=True): a checkpoint carrying a pickled class instance is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from detach_framework.atomic import atomic_write_bytes, write_error
from detach_framework.engine.interrupts import critical_section
from detach_framework.errors import UserError

LAST = "last.pt"  # the latest finished epoch
BEST = "best.pt"  # the epoch with the lowest validation loss

FORMAT_VERSION = 1
CHECKSUM_KEY = "checksum"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, unreadable, damaged, unsafe or not one of ours."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over for the previous one."""


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checksum(state: Any) -> str:
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    # Type tags and lengths keep different structures from hashing alike (["ab"] vs ["a", "b"]).
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        tensor = (tensor.to_dense() if tensor.is_sparse else tensor).cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str | bytes):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        digest.update(f"{'S' if isinstance(value, str) else 'B'}{len(data)};".encode())
        digest.update(data)
    else:  # numbers, None, torch.dtype/device: repr is exact for all of them
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def save_checkpoint(path: str | Path, state: dict[str, Any], *, keep_previous: bool = False) -> Path:
    """Write `state` (+ format_version and checksum) atomically; `keep_previous` keeps the replaced file."""
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **state}
    payload[CHECKSUM_KEY] = checksum(payload)  # over everything before it; load pops it and recomputes
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with critical_section():  # SIGINT/SIGTERM wait until the new file is in place
        if keep_previous and path.is_file():
            _keep_previous(path)
        return atomic_write_bytes(path, buffer.getvalue())


def _keep_previous(path: Path) -> None:
    """`path` -> `<name>.prev.pt` while `path` itself stays in place: a crash at any point leaves both."""
    previous = previous_path(path)
    link = path.with_name(f".{previous.name}.link.tmp")  # a leftover is swept when the run resumes
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # no hard links on this filesystem: a copy does the same
        atomic_write_bytes(previous, path.read_bytes())
        return
    try:
        os.replace(link, previous)
    except OSError as exc:
        link.unlink(missing_ok=True)
        raise write_error(previous, exc) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint written by `save_checkpoint`; anything needing unpickling is refused."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        raise CheckpointError(f"checkpoint not readable: {path} ({exc.strerror})") from None
    if not found:
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load a checkpoint holding non-tensor objects ({first})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a detach-framework checkpoint (format_version {FORMAT_VERSION} expected)")
    expected = state.pop(CHECKSUM_KEY, None)  # absent only in checkpoints older than the checksum
    if expected is not None and checksum(state) != expected:
        raise CheckpointError(f"{path}: checksum mismatch, the file was damaged after it was written")
    return state


def checkpoint_uid(path: str | Path) -> str | None:
    """The spec uid a checkpoint was written under, read without loading its tensors (None: unreadable)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError):
        return None  # damaged: load_latest and load_checkpoint report it where it matters
    uid = state.get("uid") if isinstance(state, dict) else None
    return uid if isinstance(uid, str) else None


def load_latest(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The checkpoint at `path` or, when it is missing or damaged, the previous one it replaced (with a
    CheckpointWarning; a damaged `path` is renamed `<name>.damaged.pt`); None when neither exists.
    Both damaged: a CheckpointError naming both."""
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if candidate != path:
            why = problems[0] if problems else f"{path} is missing"
            if problems:  # moved aside (kept for inspection) so the next save does not rotate it over the good one
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(f"{path.stem}.damaged{path.suffix}"))
                why += f" (moved to {path.stem}.damaged{path.suffix})"
            warnings.warn(f"{why}; using the previous checkpoint {candidate.name}", CheckpointWarning, stacklevel=2)
        return state, candidate
    if problems:
        raise CheckpointError(" and ".join(problems) + "; no usable checkpoint is left: start the run again")
    return None
