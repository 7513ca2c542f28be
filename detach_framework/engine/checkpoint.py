"""Checkpoints: atomic writes, loaded with weights_only=True (never arbitrary unpickling)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from detach_framework.atomic import atomic_write_bytes
from detach_framework.errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`; anything needing unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise UserError(f"{path}: refused to load a checkpoint holding non-tensor objects ({first})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a detach-framework checkpoint (format_version {FORMAT_VERSION} expected)")
    return state
