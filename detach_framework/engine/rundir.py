"""Run directories: runs/<name>/<uid>/ with spec.yaml, env.json, metrics.jsonl, summary.json, checkpoints/."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from detach_framework.atomic import atomic_write_json, atomic_write_text, write_error
from detach_framework.engine.runlock import RunLock
from detach_framework.errors import UserError

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ENV_FILE = "env.json"
MARKER_FILE = ".detach-run"  # written into every run directory this framework creates
EVAL_DIR = "eval"  # re-evaluations under other eval settings: eval/<eval-uid>/ (summary.json, plots/, eval.yaml)
EVAL_SPEC_FILE = "eval.yaml"


def is_run_directory(path: Path) -> bool:
    """Written by this framework: its marker, or (runs older than the marker) spec.yaml beside checkpoints/."""
    return (path / MARKER_FILE).is_file() or ((path / SPEC_FILE).is_file() and (path / "checkpoints").is_dir())


def _check_location(path: Path) -> None:
    """One-line errors for a run directory that is a link, a file, or below a file."""
    if path.is_symlink():
        raise UserError(f"run directory {path} is a symbolic link (to {os.readlink(path)}); pass the directory itself")
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory {path} exists and is not a directory")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create run directory {path}: {parent} is a file, not a directory")
            break


@dataclass
class RunDirectory:
    """One run's directory. `prepare` and `open_existing(write=True)` hold its lock (see runlock.py) until
    `close()` or the end of the process."""

    path: Path
    lock: RunLock | None = field(default=None, repr=False, compare=False)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def spec_file(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    def eval_dir(self, eval_uid: str) -> Path:
        """Where a re-evaluation under other eval settings writes, leaving the training summary alone."""
        return self.path / EVAL_DIR / eval_uid

    @property
    def replaced(self) -> Path:
        """Where `--overwrite` keeps the run it replaces until the new run has saved its first checkpoint."""
        return self.path.with_name(f".{self.path.name}.replaced")

    @classmethod
    def prepare(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunDirectory:
        """Create the directory and lock it; refuse a non-empty one unless resuming or overwriting a run
        directory. `overwrite` moves the old run aside (`replaced`); `commit_replacement` deletes it."""
        path = Path(path)
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        _check_location(path)
        non_empty = path.is_dir() and any(path.iterdir())
        if non_empty and not (resume or overwrite):
            raise UserError(
                f"run directory {path} is not empty: pass --resume to continue it or --overwrite to replace it"
            )
        if resume and not non_empty:
            raise UserError(f"nothing to resume: run directory {path} is empty or missing")
        if non_empty and not is_run_directory(path):
            action = "resuming" if resume else "replacing"
            raise UserError(
                f"{path} is not a run directory written by detach-framework (no {MARKER_FILE}, no {SPEC_FILE} + "
                f"checkpoints/); not {action} it: choose another --run-dir"
            )
        run = cls(path)
        if overwrite and non_empty:
            run._move_aside()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
        run.lock = RunLock.acquire(path)
        if not (path / MARKER_FILE).is_file():
            atomic_write_json(path / MARKER_FILE, {"framework": _version("detach-framework"), "created": time.time()})
        run.checkpoints.mkdir(exist_ok=True)
        run.plots.mkdir(exist_ok=True)
        if resume:  # a killed run leaves the temporary file of the write it was in: never read, just clutter
            for folder in (run.path, run.checkpoints, run.plots):
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
        return run

    def _move_aside(self) -> None:
        """Rename the run being overwritten to `replaced` (under its lock, so a live writer refuses it)."""
        cwd = Path.cwd().resolve()
        if self.path.resolve() in (cwd, *cwd.parents):
            raise UserError(f"--overwrite: {self.path} is the working directory or holds it; not replacing it")
        if self.replaced.exists():
            raise UserError(
                f"--overwrite: an earlier overwrite of {self.path} was interrupted and its previous run is kept in "
                f"{self.replaced}; move it back or delete it first"
            )
        old_lock = RunLock.acquire(self.path)
        try:
            os.replace(self.path, self.replaced)
        except OSError as exc:
            raise UserError(f"--overwrite: cannot move {self.path} aside: {exc.strerror or exc}") from None
        finally:
            old_lock.release()

    def commit_replacement(self) -> None:
        """The new run has saved a checkpoint: the run it replaced (if any) can go."""
        if self.replaced.is_dir() and is_run_directory(self.replaced):
            shutil.rmtree(self.replaced, ignore_errors=True)

    @classmethod
    def open_existing(cls, path: str | Path, *, write: bool = False) -> RunDirectory:
        """An existing run directory; `write` locks it (eval and report rewrite files in it)."""
        run = cls(Path(path))
        if not run.spec_file.is_file():
            raise UserError(f"{path} is not a run directory: {SPEC_FILE} is missing")
        if write:
            run.lock = RunLock.acquire(run.path)
        return run

    def check_same_spec(self, spec: Any, registry: Any) -> None:
        """Resume only under the spec this directory was started with: its spec.yaml and every checkpoint."""
        from detach_framework.engine.checkpoint import checkpoint_uid
        from detach_framework.spec import load_spec

        recorded = {self.spec_file: load_spec(self.spec_file, registry).uid} if self.spec_file.is_file() else {}
        for path in sorted(self.checkpoints.glob("*.pt")):
            recorded[path] = checkpoint_uid(path)
        for path, uid in recorded.items():
            if uid is not None and uid != spec.uid:
                raise UserError(
                    f"--resume: {path} belongs to spec uid {uid}, but the requested spec's uid is {spec.uid}; "
                    "resume with the run's own spec.yaml or start a new run directory"
                )

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def write_spec(self, text: str) -> None:
        atomic_write_text(self.spec_file, text)

    def write_env(self, plugins: list[dict[str, Any]], threads: dict[str, Any] | None = None) -> None:
        atomic_write_json(self.path / ENV_FILE, environment_info(plugins, threads))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line; a line is written whole and flushed so a killed run keeps its history."""
        line = json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n"
        try:
            with open(self.metrics_file, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        except OSError as exc:  # a full disk: a cut line is skipped by read_metrics, earlier lines stay
            raise write_error(self.metrics_file, exc, "append to") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        records = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: skip it rather than lose the rest
        return records

    def truncate_metrics_after(self, stage_index: int, epoch: int) -> None:
        """On resume, drop records logged after the checkpoint being resumed from (they will be redone)."""
        kept = [
            r for r in self.read_metrics() if (r.get("stage_index", -1), r.get("epoch", -1)) <= (stage_index, epoch)
        ]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_file, summary)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment_info(plugins: list[dict[str, Any]], threads: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("detach-framework", "torch", "timm", "numpy", "pydantic")},
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": threads,
        "plugins": plugins,
    }
