"""Export the generated ground truth to disk and read it back: manifest.json + one .npz per recording.

No pickle anywhere: arrays go through np.savez and come back with np.load(allow_pickle=False).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from detach_framework.atomic import atomic_directory
from detach_framework.contracts import SensorRecording
from detach_framework.errors import UserError
from detach_framework.spec import first_error_line

from .layout import DEFAULT_LAYOUT, SENSOR_RATE_HZ, KitchenLayout
from .presets import KitchenLayoutParams, Knobs
from .scene import SceneRecording

FORMAT = "detach-synthetic-kitchen"
VERSION = 2  # 2: per-visit open and rest extents, nudges; a manifest without "layout" holds the default kitchen
MANIFEST = "manifest.json"


@dataclass
class StoredKitchen:
    preset: str
    seed: int
    knobs: Knobs
    layout: KitchenLayout
    recordings: list[SceneRecording]


def export_recordings(
    out_dir: Path, preset: str, seed: int, knobs: Knobs, layout: KitchenLayout, recordings: list[SceneRecording]
) -> None:
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
            "channel_names": layout.channels().names,
            "knobs": knobs.to_dict(),
            "layout": KitchenLayoutParams.of(layout).model_dump(mode="json"),
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
        layout = _stored_layout(manifest, manifest_path)
        if manifest["channel_names"] != layout.channels().names:
            raise ValueError("its channel names differ from those its layout gives in this version")
        if manifest["sensor_rate_hz"] != SENSOR_RATE_HZ:
            raise ValueError(f"sensor rate {manifest['sensor_rate_hz']} != {SENSOR_RATE_HZ}")
        knobs = Knobs.from_dict(manifest["knobs"])
        preset, seed, entries = str(manifest["preset"]), int(manifest["seed"]), list(manifest["recordings"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"synthetic_kitchen root: bad {manifest_path}: {exc}") from None
    channels = len(layout.channels().names)
    recordings = [_load_recording(root, entry, manifest_path, channels) for entry in entries]
    return StoredKitchen(preset=preset, seed=seed, knobs=knobs, layout=layout, recordings=recordings)


def _stored_layout(manifest: dict, manifest_path: Path) -> KitchenLayout:
    if "layout" not in manifest:  # written before the layout was a param: the one kitchen there was
        return DEFAULT_LAYOUT
    try:
        return KitchenLayoutParams.model_validate(manifest["layout"]).resolve()
    except ValidationError as exc:
        raise UserError(f"synthetic_kitchen root: bad {manifest_path}: layout.{first_error_line(exc)}") from None


def _load_recording(root: Path, entry: dict, manifest_path: Path, channels: int) -> SceneRecording:
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
        if rec.sensor.shape != (channels, n) or rec.sensor.dtype != np.float32:
            raise ValueError(
                f"sensor is {rec.sensor.dtype}{list(rec.sensor.shape)}, expected float32 [{channels}, {n}]"
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
    names = _channel_names_beside(path)
    if sensor.ndim != 2 or sensor.shape[0] != len(names) or not np.issubdtype(sensor.dtype, np.floating):
        raise UserError(
            f"synthetic_kitchen recording {path}: sensor is {sensor.dtype}{list(sensor.shape)}, "
            f"expected float [{len(names)}, samples]"
        )
    return SensorRecording(channel_names=list(names), rate_hz=SENSOR_RATE_HZ, stream=sensor)


def _channel_names_beside(path: Path) -> list[str]:
    """The channels of the kitchen a recording file was exported from: those its manifest lists when it sits beside
    the file (another layout has other channels), else the default kitchen's."""
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return DEFAULT_LAYOUT.channels().names
    try:
        names = json.loads(manifest.read_text())["channel_names"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("channel_names is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"synthetic_kitchen recording {path}: bad {manifest}: {exc}") from None
    return names
