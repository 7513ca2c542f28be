"""Export the generated ground truth to disk and read it back: manifest.json + one .npz per recording.

No pickle anywhere: arrays go through np.savez and come back with np.load(allow_pickle=False).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detach_framework.atomic import atomic_directory
from detach_framework.contracts import SensorRecording
from detach_framework.errors import UserError

from .layout import SENSOR_RATE_HZ, channel_layout
from .presets import Knobs
from .scene import SceneRecording

FORMAT = "detach-synthetic-kitchen"
VERSION = 2  # 2: per-visit open and rest extents, nudges
MANIFEST = "manifest.json"


@dataclass
class StoredKitchen:
    preset: str
    seed: int
    knobs: Knobs
    recordings: list[SceneRecording]


def export_recordings(out_dir: Path, preset: str, seed: int, knobs: Knobs, recordings: list[SceneRecording]) -> None:
    """Write into a temporary sibling directory, then rename it into place (all or nothing)."""

    def fill(tmp: Path) -> None:
        entries = []
        for rec in recordings:
            name = f"recording_{rec.rec_id:04d}.npz"
            with open(tmp / name, "wb") as fh:
                np.savez(fh, **{k: np.asarray(getattr(rec, k)) for k in SceneRecording.array_fields()})
            entries.append({"file": name, **{k: getattr(rec, k) for k in SceneRecording.SCALARS}})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "preset": preset,
            "seed": seed,
            "sensor_rate_hz": SENSOR_RATE_HZ,
            "channel_names": channel_layout().names,
            "knobs": knobs.to_dict(),
            "recordings": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    atomic_directory(out_dir, fill, "synthetic_kitchen export")


def load_recordings(root: Path) -> StoredKitchen:
    """Read an exported kitchen; every problem is a UserError naming the offending file."""
    root = Path(root)
    manifest_path = root / MANIFEST
    try:
        found = manifest_path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        raise UserError(f"synthetic_kitchen root: cannot read {root}: {exc.strerror}") from None
    if not found:
        raise UserError(f"synthetic_kitchen root: {manifest_path} not found (write one with export)")
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} manifest")
        if manifest["channel_names"] != channel_layout().names:
            raise ValueError("its channel layout differs from this version's")
        if manifest["sensor_rate_hz"] != SENSOR_RATE_HZ:
            raise ValueError(f"sensor rate {manifest['sensor_rate_hz']} != {SENSOR_RATE_HZ}")
        knobs = Knobs.from_dict(manifest["knobs"])
        preset, seed, entries = str(manifest["preset"]), int(manifest["seed"]), list(manifest["recordings"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"synthetic_kitchen root: bad {manifest_path}: {exc}") from None
    recordings = [_load_recording(root, entry, manifest_path) for entry in entries]
    return StoredKitchen(preset=preset, seed=seed, knobs=knobs, recordings=recordings)


def _load_recording(root: Path, entry: dict, manifest_path: Path) -> SceneRecording:
    try:
        name = str(entry["file"])
        scalars = {k: entry[k] for k in SceneRecording.SCALARS}
    except (KeyError, TypeError) as exc:
        raise UserError(f"synthetic_kitchen root: bad recording entry in {manifest_path}: {exc}") from None
    path = root / name
    if Path(name).name != name or not path.is_file():
        raise UserError(f"synthetic_kitchen root: {path} not found (listed in {manifest_path})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in SceneRecording.array_fields()}
        rec = SceneRecording(**scalars, **arrays)
        n = int(round(rec.duration * SENSOR_RATE_HZ))
        if rec.sensor.shape != (len(channel_layout().names), n) or rec.sensor.dtype != np.float32:
            raise ValueError(
                f"sensor is {rec.sensor.dtype}{list(rec.sensor.shape)}, expected float32 "
                f"[{len(channel_layout().names)}, {n}]"
            )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise UserError(f"synthetic_kitchen root: bad {path}: {exc}") from None
    return rec


def read_sensor_recording(path: Path) -> SensorRecording:
    """The sensor streams of one exported recording file (recording_NNNN.npz): the dataset's read_recording tool."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            sensor = np.asarray(npz["sensor"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise UserError(f"synthetic_kitchen recording {path}: unreadable ({exc})") from None
    names = channel_layout().names
    if sensor.ndim != 2 or sensor.shape[0] != len(names) or not np.issubdtype(sensor.dtype, np.floating):
        raise UserError(
            f"synthetic_kitchen recording {path}: sensor is {sensor.dtype}{list(sensor.shape)}, "
            f"expected float [{len(names)}, samples]"
        )
    return SensorRecording(channel_names=list(names), rate_hz=SENSOR_RATE_HZ, stream=sensor)
