"""LMDB feature cache: codec, keys, build/resume, faults (partial, stale, corrupt, map full, not LMDB),
worker reads, and training that reads a frozen backbone's features from the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_spec

from detach_framework.cache import build as build_module
from detach_framework.cache import keys as keys_module
from detach_framework.cache.build import ensure_store
from detach_framework.cache.dataset import CachedSplit, run_stats, split_from_context
from detach_framework.cache.keys import plan_cache
from detach_framework.cache.store import (
    COMPLETE,
    LAST_RUN,
    CorruptEntryError,
    StoreReader,
    StoreWriter,
    decode_record,
    encode_record,
    release_readers,
)
from detach_framework.cli import main
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session, make_loader
from detach_framework.engine.trainer import Trainer
from detach_framework.errors import UserError
from detach_framework.spec import load_spec


def frozen_spec(cache_dir: Path, **cache) -> dict:
    spec = tiny_spec(cache={"dir": str(cache_dir), **cache})
    spec["model"]["video_backbone"]["frozen"] = True
    spec["stages"][0]["epochs"] = 1
    return spec


def context_for(spec: dict, host, overrides: tuple[str, ...] = ()):
    return Session.from_spec(load_spec(spec, host.registry, list(overrides)), host).cache_context()


def write_spec(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, host):
    """One complete store of the tiny spec with a frozen backbone: (context, plan)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    context = context_for(frozen_spec(cache_dir), host)
    plan = plan_cache(context)
    assert ensure_store(plan, context) == plan.entries
    return context, plan


# ---- codec ---------------------------------------------------------------------------------------


def test_codec_round_trips_every_field_exactly():
    arrays = {
        "video": np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8), dtype=np.uint8),
        "video_maps": np.random.default_rng(1).standard_normal((4, 16, 2, 2)).astype(np.float16),
        "sensor": np.random.default_rng(2).standard_normal((34, 32)).astype(np.float32)[:, ::2],  # strided
        "label": np.array(3, dtype=np.int64),  # 0-d stays 0-d
        "empty": np.zeros((0, 5), dtype=np.float64),
        "mask": np.array([True, False]),
    }
    out = decode_record(encode_record(arrays), "k")
    assert list(out) == list(arrays)
    for name, array in arrays.items():
        assert out[name].shape == array.shape, name
        assert out[name].numpy().dtype == array.dtype, name
        np.testing.assert_array_equal(out[name].numpy(), array)
    out["sensor"] += 1  # writable tensors (no read-only buffer warnings downstream)


def test_codec_checksum_and_header_errors_name_the_key():
    value = bytearray(encode_record({"x": np.arange(100, dtype=np.float32)}))
    value[-3] ^= 0x01
    with pytest.raises(CorruptEntryError, match="'uid/train/000000007'.*checksum mismatch"):
        decode_record(bytes(value), "uid/train/000000007")
    with pytest.raises(CorruptEntryError, match="bad magic"):
        decode_record(b"PICKLE" + bytes(value), "k")
    with pytest.raises(CorruptEntryError, match="'k'"):
        decode_record(bytes(value[:40]), "k")
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_record({"x": np.array(["text"])})


# ---- keys ----------------------------------------------------------------------------------------


def test_uid_changes_with_every_value_changing_setting_only(tmp_path, host, monkeypatch):
    spec = frozen_spec(tmp_path)
    base = plan_cache(context_for(spec, host))
    assert base.features and not base.frames and base.uid.startswith("synthetic_kitchen-small_cnn-")
    changing = [
        "data.frame_size=48",
        "data.frames=3",
        "data.window_seconds=3.0",
        "data.stride_seconds=0.5",
        "data.sensor_length=24",
        "data.dataset.flicker_amplitude=0.1",
        "seed=8",
        "model.video_backbone.channels=[8,8,16,32]",
        "cache.features_dtype=float32",
        "cache.frames=on",
    ]
    uids = {override: plan_cache(context_for(spec, host, (override,))).uid for override in changing}
    assert base.uid not in uids.values() and len(set(uids.values())) == len(changing), uids
    neutral = ("data.batch_size=4", "data.num_workers=2", "runtime.device=cpu", "runtime.progress=on")
    neutral += ("cache.build_workers=3",)
    for override in neutral:
        assert plan_cache(context_for(spec, host, (override,))).uid == base.uid, override
    # Weights content, not only params: another init (or weights file) is another uid.
    context = context_for(spec, host)
    with torch.no_grad():
        next(context.model.video_backbone.parameters()).add_(1e-3)
    assert plan_cache(context).uid != base.uid
    monkeypatch.setattr(keys_module, "CACHE_FORMAT", keys_module.CACHE_FORMAT + 1)
    assert plan_cache(context_for(spec, host)).uid != base.uid
    monkeypatch.undo()
    monkeypatch.setattr(keys_module, "source_digest", lambda *classes: "edited")  # the dataset's code changed
    assert plan_cache(context_for(spec, host)).uid != base.uid


def test_nothing_cached_for_a_trainable_backbone_or_mode_off(tmp_path, host):
    assert plan_cache(context_for(tiny_spec(cache={"dir": str(tmp_path)}), host)) is None
    assert plan_cache(context_for(frozen_spec(tmp_path, mode="off"), host)) is None
    frames = plan_cache(context_for(tiny_spec(cache={"dir": str(tmp_path), "frames": "on"}), host))
    assert frames.frames and not frames.features


def test_frames_head_of_a_decomposed_model_gets_cached_frames_too(tmp_path, host):
    from test_detach import DETACH_MODEL, DETACH_STAGES

    model = dict(DETACH_MODEL, video_backbone=dict(DETACH_MODEL["video_backbone"], frozen=True))
    context = context_for(tiny_spec(model=model, stages=DETACH_STAGES, cache={"dir": str(tmp_path)}), host)
    plan = plan_cache(context)
    assert plan.features and plan.frames  # the temporal head's input is "frames"
    sample = split_from_context(context, "train")[3]
    assert sample["video_maps"].dtype == torch.float16
    assert torch.equal(sample["video"], context.source.split("train")[3]["video"])


# ---- build, resume, faults -----------------------------------------------------------------------


def test_interrupted_build_is_partial_and_resumes(tmp_path, host, monkeypatch, capsys):
    spec = frozen_spec(tmp_path / "cache")
    path = write_spec(tmp_path, spec)
    context = context_for(spec, host)
    plan = plan_cache(context)
    monkeypatch.setattr(build_module, "COMMIT_BYTES", 1)  # a commit per batch of 16
    original = StoreWriter.put_batch
    calls = {"n": 0}

    def killed(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed during the third commit
        return original(self, items)

    monkeypatch.setattr(StoreWriter, "put_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_store(plan, context)
    assert plan.partial_path.is_dir() and not plan.path.exists()
    assert not (plan.partial_path / COMPLETE).exists()
    capsys.readouterr()
    assert main(["cache", "verify", path]) == 1
    assert "partial: 32 of 138 entries written" in capsys.readouterr().out

    monkeypatch.setattr(StoreWriter, "put_batch", original)
    assert ensure_store(plan, context) == plan.entries - 32  # the committed entries are skipped
    assert (plan.path / COMPLETE).is_file() and not plan.partial_path.exists()
    assert main(["cache", "verify", path]) == 0
    assert "every checksum matches" in capsys.readouterr().out


def test_map_full_grows_and_retries_the_batch(tmp_path, host, monkeypatch):
    context = context_for(frozen_spec(tmp_path), host)
    plan = plan_cache(context)
    grown = []
    original = StoreWriter.close

    def record(self):
        grown.append(self.grown)
        original(self)

    monkeypatch.setattr(StoreWriter, "close", record)
    assert ensure_store(plan, context, map_size=64 << 10) == plan.entries  # 64 KiB: far too small
    assert grown[0] >= 3
    split = split_from_context(context, "test")
    assert len({int(split[i]["index"]) for i in range(len(split))}) == plan.split_sizes["test"]  # nothing lost


def test_float16_overflow_is_refused(tmp_path, host, monkeypatch):
    context = context_for(frozen_spec(tmp_path), host)
    huge = lambda context, video: torch.full((len(video), 4, 16, 1, 1), 1e6)  # noqa: E731
    monkeypatch.setattr(build_module, "backbone_maps", huge)
    with pytest.raises(UserError, match="overflow float16.*features_dtype: float32"):
        ensure_store(plan_cache(context), context)


def test_changed_spec_builds_its_own_cache_never_mixed(built, tmp_path, host, capsys):
    context, plan = built
    changed = frozen_spec(plan.root)
    changed["data"]["frame_size"] = 48
    path = write_spec(tmp_path, changed)
    capsys.readouterr()
    assert main(["cache", "verify", path]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and f"stale: {plan.uid} was built for other settings (data.frame_size" in out
    new_context = context_for(changed, host)
    split = split_from_context(new_context, "train")
    assert split.path != plan.path
    assert split[0]["video_maps"].shape[-1] == 3  # 48 px / 16, not the old cache's 2
    assert split_from_context(context, "train")[0]["video_maps"].shape[-1] == 2


def test_stale_store_under_this_uid_is_a_clear_error(built, tmp_path, host, capsys):
    context, plan = built
    other = frozen_spec(tmp_path)
    other["seed"] = 99
    other_context = context_for(other, host)
    other_plan = plan_cache(other_context)
    shutil.copytree(plan.path, other_plan.path)  # a store of another uid where this one's should be
    with pytest.raises(UserError, match=f"holds cache uid {plan.uid}"):
        split_from_context(other_context, "train")
    capsys.readouterr()
    assert main(["cache", "verify", write_spec(tmp_path, other)]) == 1
    assert "stale" in capsys.readouterr().out


def test_corrupted_value_fails_its_checksum_naming_the_key(built, tmp_path, host, capsys):
    context, plan = built
    copy_root = tmp_path / "cache"
    shutil.copytree(plan.path, copy_root / plan.uid)
    spec = frozen_spec(copy_root)
    copied = split_from_context(context_for(spec, host), "val")
    key = plan.key("val", 5)
    release_readers(copied.path)
    env = lmdb.open(str(copied.path), subdir=True)
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(key))
        value[len(value) // 2] ^= 0xFF
        txn.put(key, bytes(value))
    env.close()
    copied[4]  # neighbours still read
    with pytest.raises(CorruptEntryError, match=f"'{key.decode()}': checksum mismatch"):
        copied[5]
    capsys.readouterr()
    assert main(["cache", "verify", write_spec(tmp_path, spec)]) == 1
    out = capsys.readouterr().out
    assert "corrupt: 1 entries" in out and key.decode() in out


def test_cache_directory_that_is_not_lmdb(tmp_path, host, capsys):
    spec = frozen_spec(tmp_path / "cache")
    context = context_for(spec, host)
    plan = plan_cache(context)
    plan.path.mkdir(parents=True)
    (plan.path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a detach cache"):
        split_from_context(context, "train")
    (plan.path / COMPLETE).write_text(json.dumps({"uid": plan.uid}))
    (plan.path / "data.mdb").write_bytes(b"not lmdb" * 1000)
    with pytest.raises(UserError, match="cannot be opened as an LMDB store.*not removing it"):
        split_from_context(context, "train")  # damaged: rebuilt, were it not for notes.txt
    path = write_spec(tmp_path, spec)
    assert main(["cache", "clear", path]) == 2  # holds a file a cache never has: not deleted
    assert "not removing it" in capsys.readouterr().err and (plan.path / "notes.txt").is_file()
    file_dir = frozen_spec(tmp_path / "a_file")
    (tmp_path / "a_file").write_text("x")
    assert main(["cache", "build", write_spec(tmp_path, file_dir)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_build_workers_resolve_and_write_the_same_store(tmp_path, host):
    """`cache.build_workers`: auto is data.num_workers when set, else a worker per core (at most 4); a store built
    by worker processes holds exactly the records one built in the main process holds."""
    from detach_framework.engine.threads import CACHE_BUILD_WORKERS_MAX, cache_build_workers

    assert cache_build_workers("auto", 0, 2) == 2 and cache_build_workers("auto", 0, 64) == CACHE_BUILD_WORKERS_MAX
    assert cache_build_workers("auto", 3, 2) == 3 and cache_build_workers(0, 3, 2) == 0
    assert context_for(tiny_spec(cache={"build_workers": 1}), host).build_workers == 1
    records = {}
    for workers in (0, 2):
        spec = tiny_spec(cache={"dir": str(tmp_path / f"w{workers}"), "frames": "on", "build_workers": workers})
        context = context_for(spec, host)
        assert context.build_workers == workers
        plan = plan_cache(context)
        assert ensure_store(plan, context) == plan.entries
        reader = StoreReader(plan.path)
        keys = [plan.key(split, i) for split, size in plan.split_sizes.items() for i in range(size)]
        records[workers] = [bytes(reader.get(key)) for key in keys]
        release_readers(plan.path)
    assert records[0] == records[2]
    with pytest.raises(UserError, match="build_workers"):
        load_spec(tiny_spec(cache={"build_workers": 65}), host.registry)


# ---- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_reads_agree_across_num_workers(built, workers):
    context, plan = built
    split = split_from_context(context, "train")
    assert isinstance(split, CachedSplit)
    spec = context.spec.model_copy(update={"data": context.spec.data.model_copy(update={"num_workers": workers})})
    batches = list(make_loader(split, spec, shuffle=False))
    maps = torch.cat([b["video_maps"] for b in batches])
    assert maps.dtype == torch.float16 and maps.shape[0] == len(split)
    assert "video" not in batches[0]
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(len(split)))
    assert split.stats() == {"hits": len(split), "misses": 0}  # counted in the workers, seen here
    reference = split_from_context(context, "train")
    assert torch.equal(maps[7], reference[7]["video_maps"])


def test_cached_maps_match_the_backbone_and_fall_back_when_weights_change(built):
    context, plan = built
    split = split_from_context(context, "val")
    raw = context.source.split("val")
    model = context.model.eval()
    with torch.no_grad():
        computed = model.video_maps({"video": torch.stack([raw[i]["video"] for i in range(4)])})
        cached = model.video_maps({"video_maps": torch.stack([split[i]["video_maps"] for i in range(4)])})
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, computed, rtol=2e-3, atol=2e-3)  # float16 rounding only
    state = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {k: v + 0.5 if k.startswith("video_backbone.") and v.is_floating_point() else v for k, v in state.items()}
    with pytest.warns(UserWarning, match="differ from those the feature cache was built with"):
        model.load_state_dict(changed)
    sample = split[0]
    assert "video_maps" not in sample and torch.equal(sample["video"], raw[0]["video"])
    model.load_state_dict(state)
    assert "video_maps" in split[0]


# ---- training ------------------------------------------------------------------------------------


def _train(spec: dict, host, run: Path) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(Session.from_spec(load_spec(spec, host.registry), host), RunDirectory.prepare(run))
    trainer.fit()
    return trainer, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_frozen_backbone_trains_from_the_cache_with_the_same_loss(tmp_path, host, capsys):
    spec = frozen_spec(tmp_path / "cache")
    cached, cached_log = _train(spec, host, tmp_path / "cached")
    assert isinstance(cached.train_set, CachedSplit)
    hits = cached.train_set.stats()["hits"]
    assert hits == 32 and cached.train_set.stats()["misses"] == 0  # one epoch: 2 full batches of 16
    stats = run_stats()[str(cached.train_set.path)]
    assert stats["built"] == 138 and stats["hits"] >= 32 + 46  # train epoch + validation
    plain, plain_log = _train(frozen_spec(tmp_path / "cache", mode="off"), host, tmp_path / "plain")
    assert not isinstance(plain.train_set, CachedSplit)
    first = [r for r in cached_log if r["kind"] == "epoch"][0]
    reference = [r for r in plain_log if r["kind"] == "epoch"][0]
    assert first["train_loss"] == pytest.approx(reference["train_loss"], rel=5e-3)
    assert first["val_loss"] == pytest.approx(reference["val_loss"], rel=5e-3)


def test_cli_build_info_verify_clear(tmp_path, host, capsys):
    from detach_framework.cache.dataset import flush_run_stats

    spec = frozen_spec(tmp_path / "cache")
    path = write_spec(tmp_path, spec)
    assert main(["cache", "info", path]) == 0
    assert "not built yet" in capsys.readouterr().out
    assert main(["cache", "build", path]) == 0
    assert "built:" in capsys.readouterr().out
    assert main(["cache", "build", path]) == 0
    assert "already complete" in capsys.readouterr().out
    context = context_for(spec, host)
    split = split_from_context(context, "test")
    for i in range(5):
        split[i]
    flush_run_stats()
    last = json.loads((split.path / LAST_RUN).read_text())
    assert last["hits"] >= 5 and last["hit_rate"] == 1.0
    assert main(["cache", "info", path]) == 0
    out = capsys.readouterr().out
    assert "complete: 138 entries" in out and "hit rate 100.0%" in out and "features (float16)" in out
    assert main(["cache", "clear", path]) == 0
    assert not split.path.exists()
    assert main(["cache", "build", write_spec(tmp_path, frozen_spec(tmp_path, mode="off"))]) == 2
    assert "cache.mode is off" in capsys.readouterr().err
