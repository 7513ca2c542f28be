"""Run directories: runs/<name>/<uid>/ with spec.yaml, env.json, metrics.jsonl, summary.json, checkpoints/."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from detach_framework.atomic import atomic_write_json, atomic_write_text, write_error
from detach_framework.errors import UserError

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ENV_FILE = "env.json"


@dataclass
class RunDirectory:
    path: Path

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

    @classmethod
    def prepare(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunDirectory:
        """Create the directory; refuse a non-empty one unless resuming or overwriting."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"run directory {path} exists and is not a directory")
        non_empty = path.is_dir() and any(path.iterdir())
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        if non_empty and overwrite:
            shutil.rmtree(path)
        elif non_empty and not resume:
            raise UserError(
                f"run directory {path} is not empty: pass --resume to continue it or --overwrite to replace it"
            )
        elif resume and not non_empty:
            raise UserError(f"nothing to resume: run directory {path} is empty or missing")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.checkpoints.mkdir(exist_ok=True)
        run.plots.mkdir(exist_ok=True)
        if resume:  # a killed run leaves the temporary file of the write it was in: never read, just clutter
            for folder in (run.path, run.checkpoints, run.plots):
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
        return run

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDirectory:
        run = cls(Path(path))
        if not run.spec_file.is_file():
            raise UserError(f"{path} is not a run directory: {SPEC_FILE} is missing")
        return run

    def write_spec(self, text: str) -> None:
        atomic_write_text(self.spec_file, text)

    def write_env(self, plugins: list[dict[str, Any]]) -> None:
        atomic_write_json(self.path / ENV_FILE, environment_info(plugins))

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


def environment_info(plugins: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("detach-framework", "torch", "timm", "numpy", "pydantic")},
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "plugins": plugins,
    }
