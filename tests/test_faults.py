"""Fault injection: each test proves one row of docs/FAULTS.md.

Kills are real: the run forks a child that SIGKILLs itself at the chosen point (mid-epoch, inside a
checkpoint write, between two checkpoint files, between stages, inside an ODC update); the parent then
resumes the run directory and compares it bit for bit with an uninterrupted run (deterministic: true).
Forking keeps the imports warm, so a kill costs seconds. Long variants (a real `python -m
detach_framework` process killed from outside, repeated kills) are marked slow: pytest -m slow.
"""

from __future__ import annotations

import ast
import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lmdb
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_spec

from detach_framework import atomic
from detach_framework import plugins as plugin_module
from detach_framework.cache import build as build_module
from detach_framework.cache import store as store_module
from detach_framework.cache.build import ensure_store
from detach_framework.cache.keys import plan_cache
from detach_framework.cli import main
from detach_framework.data.recordings import DataSkipWarning, Recording, WindowedSource
from detach_framework.data.settings import DataSettings
from detach_framework.data.transforms import NanPolicyStep, Pipeline, ResampleStep, ZScoreStep, detach_preprocessing
from detach_framework.data.video import VideoError, index_frame, read_index, write_video
from detach_framework.engine import checkpoint as checkpoint_module
from detach_framework.engine import distributed as distributed_module
from detach_framework.engine import rundir as rundir_module
from detach_framework.engine import trainer as trainer_module
from detach_framework.engine.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session
from detach_framework.errors import UserError
from detach_framework.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STAGE = {"aligner": {"name": "global_contrastive"}, "loss": {"name": "infonce"}, "optimizer": {"lr": 1e-3}}
# Two stages (2 + 1 epochs) of a very small model: 2 optimizer steps per epoch, a run in about two seconds.
FAST = tiny_spec(
    deterministic=True,
    data={
        "dataset": {"name": "synthetic_kitchen", "preset": "tiny"},
        "frames": 2,
        "frame_size": 16,
        "sensor_length": 16,
        "batch_size": 16,
    },
    model={
        "video_backbone": {"name": "small_cnn", "channels": [4, 4, 8, 8]},
        "video_head": {"name": "pooled_projection", "dim": 8},
        "sensor_encoder": {"name": "imu2clip_sensor", "dim": 8, "channels": [4, 8, 8], "gru_hidden": 8},
    },
    stages=[{"name": "a", "epochs": 2, **STAGE}, {"name": "b", "epochs": 1, **STAGE}],
    eval={"evaluators": [{"name": "retrieval"}, {"name": "linear_probe", "epochs": 3}]},
)
# DETACH stage 1 alone: ODC memory bank, labels and centroids updated after every optimizer step.
ODC = tiny_spec(
    deterministic=True,
    data=FAST["data"],
    model={
        "video_backbone": {"name": "small_cnn", "channels": [4, 4, 8, 8]},
        "video_head": {"name": "detach_spatial_head", "dim": 8, "head_channels": 4},
        "sensor_encoder": {"name": "detach_sensor_spatial", "dim": 8, "pool_steps": 8},
        "clusterer": {"name": "odc", "k": 3, "min_cluster_size": 2, "kmeans_init": 1},
    },
    stages=[
        {
            "name": "spatial",
            "epochs": 3,
            "optimizer": {"lr": 1e-3},
            "aligner": {"name": "detach_spatial", "warmup_epochs": 1, "joint_epochs": 1, "refine_epochs": 1},
        }
    ],
    eval={"evaluators": [{"name": "retrieval"}]},
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine this runs several times faster, and the straight,
    killed and resumed runs must use the same thread count to be bit-identical anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def train(spec: str, run: Path, *extra: str) -> int:
    return main(["train", spec, "--run-dir", str(run), *extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> SimpleNamespace:
    """The uninterrupted runs every resumed run is compared with."""
    folder = tmp_path_factory.mktemp("straight")
    fast, odc = write_spec(folder, FAST, "fast.yaml"), write_spec(folder, ODC, "odc.yaml")
    assert train(fast, folder / "fast") == 0
    assert train(odc, folder / "odc") == 0
    return SimpleNamespace(fast=folder / "fast", odc=folder / "odc", fast_spec=fast, odc_spec=odc)


def epoch_records(run: Path) -> list[tuple]:
    records = RunDirectory(run).read_metrics()
    return [(r["stage"], r["epoch"], r.get("train_loss"), r.get("val_loss")) for r in records if r["kind"] == "epoch"]


def assert_identical(expected: Path, actual: Path) -> None:
    """Same final weights (model, aligner, optimizer moments), same best.pt, same epoch log, same metrics."""
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(run / "checkpoints" / name) for run in (expected, actual))
        assert (a["stage"], a["epochs_done"], a["global_step"]) == (b["stage"], b["epochs_done"], b["global_step"])
        for part in ("model", "aligner"):
            assert a[part].keys() == b[part].keys()
            for key, value in a[part].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[part][key]), (name, part, key)
        moments = [s for s in a["optimizer"]["state"].values()]
        others = [s for s in b["optimizer"]["state"].values()]
        assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in zip(moments, others, strict=True))
    assert epoch_records(expected) == epoch_records(actual)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (expected, actual)]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]


# ---- forked children that die at a chosen point ---------------------------------------------------------


def fork_child(body: Callable[[], int], log: Path) -> int:
    """Run `body` in a forked child with stdout/stderr in `log`; returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            handle = open(log, "w", buffering=1)  # noqa: SIM115 - lives until os._exit
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            sys.stdout = sys.stderr = handle
            warnings.simplefilter("default")
            # Ctrl-C as in a terminal, also when the suite runs as a background job (whose SIGINT is ignored)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = body()
        except BaseException:  # noqa: BLE001 - reported in the log, the parent sees code 99
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_child(pid: int) -> int:
    """The child's exit code, or -N when signal N killed it."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_child(body: Callable[[], int], log: Path) -> int:
    return wait_child(fork_child(body, log))


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_call(owner: Any, name: str, when: Callable[..., bool], action: Callable[[], None], after: bool = False):
    """Wrap owner.name (in the child only): run `action` before (or after) the call for which `when(*args)`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        hit = when(*args, **kwargs)
        if hit and not after:
            action()
        result = original(*args, **kwargs)
        if hit and after:
            action()
        return result

    setattr(owner, name, wrapper)


def nth(n: int, test: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., bool]:
    """A `when` that is true on the n-th call for which `test` holds."""
    seen = {"count": 0}

    def when(*args, **kwargs):
        if test(*args, **kwargs):
            seen["count"] += 1
            return seen["count"] == n
        return False

    return when


def named(filename: str) -> Callable[..., bool]:
    return lambda path, *a, **k: Path(path).name == filename


def killed_then_resumed(tmp_path: Path, spec: str, arm: Callable[[], None]) -> Path:
    """Train in a child armed to SIGKILL itself; assert it died by SIGKILL; resume here to the end."""
    run = tmp_path / "run"

    def body() -> int:
        arm()
        return train(spec, run)

    code = run_child(body, tmp_path / "child.log")
    assert code == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    assert train(spec, run, "--resume") == 0
    assert not list(run.rglob(".*.tmp"))  # the killed write's temporary file was swept
    return run


def test_sigkill_mid_epoch(straight, tmp_path):
    # The third optimizer step is the first of epoch 2 of stage a.
    def arm():
        on_call(torch.optim.AdamW, "step", nth(3), kill_self)

    assert_identical(straight.fast, killed_then_resumed(tmp_path, straight.fast_spec, arm))


def test_sigkill_during_a_checkpoint_write(straight, tmp_path):
    # Half of epoch 2's last.pt is in its temporary file when the process dies.
    def half_then_kill(path, data):
        def write(handle):
            handle.write(data[: len(data) // 2])
            handle.flush()
            kill_self()

        return atomic.atomic_write(path, write)

    def arm():
        original = checkpoint_module.atomic_write_bytes
        when = nth(2, named("last.pt"))
        checkpoint_module.atomic_write_bytes = lambda p, d: half_then_kill(p, d) if when(p) else original(p, d)

    run = killed_then_resumed(tmp_path, straight.fast_spec, arm)
    assert_identical(straight.fast, run)


def test_sigkill_before_the_first_last_checkpoint(straight, tmp_path):
    # Epoch 1 is logged and best.pt written, last.pt not: resume starts afresh and must not log epoch 1 twice.
    def arm():
        on_call(checkpoint_module, "atomic_write_bytes", nth(1, named("last.pt")), kill_self)

    assert_identical(straight.fast, killed_then_resumed(tmp_path, straight.fast_spec, arm))


def test_sigkill_between_the_checkpoint_files_of_one_epoch(straight, tmp_path):
    # Killed right after the first of the last epoch's files (best.pt, then last.pt) is in place: resuming
    # must neither evaluate a stale best.pt nor skip the epoch. (Writing last.pt first failed this.)
    def arm():
        first_of_last_epoch = nth(1, lambda path, state, **k: state["stage"] == "b")
        on_call(trainer_module, "save_checkpoint", first_of_last_epoch, kill_self, after=True)

    assert_identical(straight.fast, killed_then_resumed(tmp_path, straight.fast_spec, arm))


def test_sigkill_between_stages(straight, tmp_path):
    def arm():
        on_call(trainer_module, "save_checkpoint", nth(1, named("stage_a.pt")), kill_self, after=True)

    run = killed_then_resumed(tmp_path, straight.fast_spec, arm)
    assert_identical(straight.fast, run)
    stage_a = [load_checkpoint(r / "checkpoints" / "stage_a.pt")["model"] for r in (straight.fast, run)]
    assert all(torch.equal(stage_a[0][k], stage_a[1][k]) for k in stage_a[0])


def test_sigkill_during_an_odc_update(straight, tmp_path):
    from detach_plugins.detach.odc import OnlineDeepClustering

    def half_update_then_kill(self, indices, features):
        self.bank[indices[: len(indices) // 2]] = 0.0  # the bank is half rewritten when the process dies
        kill_self()

    def arm():
        original = OnlineDeepClustering.update_bank
        when = nth(3)  # epoch 2's first step

        def update_bank(self, indices, features):
            if when():
                half_update_then_kill(self, indices, features)
            return original(self, indices, features)

        OnlineDeepClustering.update_bank = update_bank

    assert_identical(straight.odc, killed_then_resumed(tmp_path, straight.odc_spec, arm))


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_epoch(straight, tmp_path, monkeypatch, capsys):
    original = distributed_module.wrap_step

    def wrap_step(model, aligner, device):
        step, calls = original(model, aligner, device), {"n": 0}

        def diverging(batch):
            out = step(batch)
            calls["n"] += 1
            return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == 3 else out

        return diverging

    monkeypatch.setattr(distributed_module, "wrap_step", wrap_step)
    run = tmp_path / "run"
    assert train(straight.fast_spec, run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "detach train: error: stage 'a' epoch 2: loss became nan (try a lower optimizer.lr)"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epochs_done"] == 1
    monkeypatch.undo()
    assert train(straight.fast_spec, run, "--resume") == 0
    assert_identical(straight.fast, run)


# ---- SIGTERM and SIGINT: finish the write, exit 143 / 130 with one line ----------------------------------


def last_line(log: Path) -> str:
    text = log.read_text()
    assert "Traceback" not in text, text
    return text.strip().splitlines()[-1]


def test_sigterm_during_a_checkpoint_write_completes_it_then_exits_143(straight, tmp_path):
    run, log = tmp_path / "run", tmp_path / "child.log"

    def body() -> int:
        # SIGTERM arrives just as epoch 2's last.pt starts being written.
        on_call(checkpoint_module, "atomic_write_bytes", nth(2, named("last.pt")), lambda: os.kill(os.getpid(), 15))
        return train(straight.fast_spec, run)

    assert run_child(body, log) == 143
    line = last_line(log)
    assert line.startswith("detach train: interrupted by SIGTERM") and "--resume" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epochs_done"] == 2  # the write was completed
    assert train(straight.fast_spec, run, "--resume") == 0
    assert_identical(straight.fast, run)


def test_sigint_from_outside_mid_epoch_exits_130(straight, tmp_path):
    run, log, ready = tmp_path / "run", tmp_path / "child.log", tmp_path / "ready"

    def wait_for_signal():
        ready.touch()
        time.sleep(60)  # interrupted by the parent's SIGINT

    def body() -> int:
        on_call(torch.optim.AdamW, "step", nth(3), wait_for_signal)
        return train(straight.fast_spec, run)

    pid = fork_child(body, log)
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGINT)
    assert wait_child(pid) == 130, log.read_text()
    assert last_line(log).startswith("detach train: interrupted by SIGINT")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epochs_done"] == 1
    assert train(straight.fast_spec, run, "--resume") == 0
    assert_identical(straight.fast, run)


# ---- damaged checkpoints: checksum, previous one used with a warning ------------------------------------


def tiny_state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "epochs_done": int(value)}


def test_checksum_catches_flipped_bytes_and_truncation(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", tiny_state(1.0))
    assert load_checkpoint(path)["epochs_done"] == 1
    flip_tensor_byte(path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path / "d.pt", tiny_state(1.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated checkpoint"):
        load_checkpoint(path)


def test_damaged_last_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, tiny_state(1.0), keep_previous=True)
    assert not previous_path(last).exists()
    save_checkpoint(last, tiny_state(2.0), keep_previous=True)
    assert load_checkpoint(previous_path(last))["epochs_done"] == 1
    flip_tensor_byte(last)
    with pytest.warns(CheckpointWarning, match="checksum mismatch.*using the previous checkpoint last.prev.pt"):
        state, used = load_latest(last)
    assert used.name == "last.prev.pt" and state["epochs_done"] == 1
    assert (tmp_path / "last.damaged.pt").is_file() and not last.exists()  # kept aside, not rotated over prev
    # Both damaged: one clear error naming both files.
    save_checkpoint(last, tiny_state(3.0))
    last.write_bytes(b"garbage")
    previous_path(last).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt: .* and .*last.prev.pt: .*no usable checkpoint"):
        load_latest(last)


def test_resume_from_a_damaged_last_checkpoint(straight, tmp_path, capsys):
    run = Path(shutil.copytree(straight.fast, tmp_path / "run"))
    flip_tensor_byte(run / "checkpoints" / "last.pt")
    with pytest.warns(CheckpointWarning, match="checksum mismatch.*using the previous checkpoint"):
        assert train(straight.fast_spec, run, "--resume") == 0
    assert_identical(straight.fast, run)  # stage b's epoch was trained again from last.prev.pt, identically


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor's stored bytes (found through the zip's member list)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = member.header_offset
    name_length, extra_length = (int.from_bytes(data[header + k : header + k + 2], "little") for k in (26, 28))
    data[header + 30 + name_length + extra_length + member.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


# ---- disk full and map full ----------------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_stops_with_one_line_and_loses_nothing(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    original = checkpoint_module.atomic_write_bytes
    when = nth(2, named("last.pt"))

    def full_disk(path, data):
        if not when(path):
            return original(path, data)

        def write(handle):
            handle.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return atomic.atomic_write(path, write)

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", full_disk)
    assert train(straight.fast_spec, run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detach train: error: cannot write ") and "last.pt: No space left on device" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epochs_done"] == 1  # epoch 1 intact
    assert not list(run.rglob(".*.tmp"))
    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", original)
    assert train(straight.fast_spec, run, "--resume") == 0  # space freed: the run goes on
    assert_identical(straight.fast, run)


def test_disk_full_while_appending_metrics(tmp_path, monkeypatch):
    run = RunDirectory.prepare(tmp_path / "run")
    run.log({"kind": "epoch", "epoch": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir_module, "open", full, raising=False)
    with pytest.raises(UserError, match=r"cannot append to .*metrics.jsonl: No space left on device"):
        run.log({"kind": "epoch", "epoch": 2})
    monkeypatch.undo()
    assert [r["epoch"] for r in run.read_metrics()] == [1]


def test_disk_full_while_writing_any_file_keeps_the_old_version(tmp_path):
    path = atomic.atomic_write_text(tmp_path / "summary.json", "old")

    def write(handle):
        handle.write(b"new, partly")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(atomic.WriteError, match="summary.json: No space left on device") as caught:
        atomic.atomic_write(path, write)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


class FullDiskEnv:
    """An LMDB environment whose `fail_on`-th write transaction fails like a full disk (or, with
    `map_full`, whose map cannot grow any more)."""

    def __init__(self, env: lmdb.Environment, fail_on: int, map_full: bool = False) -> None:
        self._env, self._fail_on, self._map_full, self._writes = env, fail_on, map_full, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def begin(self, write: bool = False, **kwargs):
        txn = self._env.begin(write=write, **kwargs)
        if write:
            self._writes += 1
            if self._writes >= self._fail_on:
                return FailingTxn(txn, lmdb.MapFullError if self._map_full else lmdb.Error)
        return txn

    def set_mapsize(self, size: int) -> None:
        raise lmdb.Error("mdb_env_set_mapsize: Cannot allocate memory")


class FailingTxn:
    def __init__(self, txn, error: type[Exception]) -> None:
        self._txn, self._error = txn, error

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self._txn.abort()
        return False

    def put(self, key, value):
        raise self._error("mdb_put: No space left on device")


@pytest.fixture()
def cache_context(tmp_path, host):
    spec = copy.deepcopy(FAST)
    spec["model"]["video_backbone"]["frozen"] = True
    spec["cache"] = {"dir": str(tmp_path / "cache")}
    context = Session.from_spec(load_spec(spec, host.registry), host).cache_context()
    return context, plan_cache(context)


@pytest.mark.parametrize("map_full", [False, True], ids=["disk_full", "map_cannot_grow"])
def test_cache_build_on_a_full_disk_stops_clearly_and_resumes(cache_context, monkeypatch, map_full):
    context, plan = cache_context
    monkeypatch.setattr(build_module, "COMMIT_BYTES", 1)  # one commit per batch of 16
    real_open = store_module.open_env
    monkeypatch.setattr(
        store_module, "open_env", lambda path, **kw: FullDiskEnv(real_open(path, **kw), fail_on=2, map_full=map_full)
    )
    with pytest.raises(UserError, match="writing stopped .*the entries committed so far are kept"):
        ensure_store(plan, context)
    assert plan.partial_path.is_dir() and not plan.path.exists()
    monkeypatch.setattr(store_module, "open_env", real_open)
    assert ensure_store(plan, context) == plan.entries - 16  # the first commit survived; the build resumed
    assert plan.path.is_dir()


# ---- security -------------------------------------------------------------------------------------------------


def _leave_mark(path: str) -> None:
    Path(path).write_text("a pickle payload ran")


class Payload:
    """Unpickling this calls _leave_mark: what a malicious checkpoint would do with os.system."""

    def __init__(self, mark: Path) -> None:
        self.mark = str(mark)

    def __reduce__(self):
        return (_leave_mark, (self.mark,))


def test_checkpoint_with_a_pickle_payload_is_refused(straight, tmp_path, capsys):
    mark = tmp_path / "owned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "extra": Payload(mark)}, evil)
    with pytest.raises(CheckpointError, match="refused to load a checkpoint holding non-tensor objects"):
        load_checkpoint(evil)
    # Through the CLI: a run whose checkpoints were swapped for the payload.
    run = Path(shutil.copytree(straight.fast, tmp_path / "run"))
    for name in ("best.pt", "last.pt"):
        shutil.copy(evil, run / "checkpoints" / name)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused to load a checkpoint holding non-tensor objects" in err[0]
    assert not mark.exists()


UNPICKLING_CALLS = {"torch.load", "np.load", "numpy.load", "pickle.load", "pickle.loads", "torch.serialization.load"}


def test_cache_package_never_unpickles():
    banned_modules = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
    offenders = []
    for path in (ROOT / "detach_framework" / "cache").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                offenders.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                if target in UNPICKLING_CALLS or target.endswith("Unpickler"):
                    offenders.append(f"{path.name}: {target}()")
                if any(k.arg == "allow_pickle" for k in node.keywords):
                    offenders.append(f"{path.name}: allow_pickle")
    assert offenders == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.dataset.name=os.system", "unknown dataset 'os.system'"),
        ("model.video_backbone.name=builtins.eval", "unknown video_backbone 'builtins.eval'"),
        ("stages.0.aligner.name=subprocess:run", "unknown aligner 'subprocess:run'"),
    ],
)
def test_specs_cannot_name_import_paths(tmp_path, capsys, override, expected):
    assert main(["validate", write_spec(tmp_path, FAST), override]) == 2
    assert expected in capsys.readouterr().err


def test_yaml_tags_cannot_construct_objects(tmp_path, capsys):
    mark = tmp_path / "owned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {mark}']\n")
    assert main(["validate", str(path)]) == 2
    assert "could not determine a constructor" in capsys.readouterr().err
    assert not mark.exists()


# ---- data faults ----------------------------------------------------------------------------------------------

DATA = DataSettings(window_seconds=1.0, stride_seconds=1.0, frames=2, frame_size=16, sensor_length=16)


def windowed(recordings: list[Recording], data: DataSettings = DATA, **kwargs) -> WindowedSource:
    return WindowedSource(
        name="faulty",
        recordings=recordings,
        assignment={"train": [0], "test": list(range(1, len(recordings)))},
        class_names=["Null", "act"],
        channel_names=["x", "y"],
        fixture_names=[],
        data=data,
        preprocessing=detach_preprocessing(),
        require_video=kwargs.pop("require_video", False),
        **kwargs,
    )


def stream(seconds: float, rate: float = 30.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, int(seconds * rate))).astype(np.float32)


def all_sensors(source: WindowedSource) -> np.ndarray:
    split = source.split("test")
    return np.stack([split[i]["sensor"].numpy() for i in range(len(split))])


def test_inf_bursts_are_handled_like_nan():
    train, test = stream(8, seed=1), stream(8, seed=2)
    with_nan, with_inf = test.copy(), test.copy()
    with_nan[0, 40:44] = np.nan  # a short burst: interpolated
    with_inf[0, 40:44] = [np.inf, -np.inf, np.inf, np.inf]
    with_nan[1, 95:120] = np.nan  # most of a window: the channel is dropped (zero) there
    with_inf[1, 95:120] = np.inf
    sensors = []
    for faulty in (with_nan, with_inf):
        train_burst = train.copy()
        train_burst[1, 10:14] = np.nan if faulty is with_nan else np.inf  # fitting the z-score skips it too
        source = windowed([Recording("train", 1, train_burst, 30.0), Recording("test", 2, faulty, 30.0)])
        sensors.append(all_sensors(source))
    assert np.isfinite(sensors[1]).all()
    np.testing.assert_array_equal(sensors[0], sensors[1])
    assert (sensors[1][3, 1] == 0).all()  # window 3 (samples 90..119): channel y dropped


def test_pipeline_without_a_nan_policy_names_inf():
    pipeline = Pipeline([ResampleStep()], 16, "faulty preprocessing")
    with pytest.raises(UserError, match="leaves NaN or inf in a window; add a `nan_policy` step"):
        pipeline(np.full((1, 2, 30), np.inf))
    nan_only = Pipeline([NanPolicyStep(), ZScoreStep(), ResampleStep()], 16, "ok")
    nan_only.fit(lambda: [np.where(np.arange(30) < 3, np.inf, 1.0 * np.arange(30))[None, None].repeat(2, 1)])
    assert np.isfinite(nan_only.stats[1][0]).all()


def test_mismatched_sampling_rates_are_a_clear_error():
    with pytest.raises(UserError, match=r"different rates \(train 30 Hz, test 50 Hz\); resample the streams"):
        windowed([Recording("train", 1, stream(8), 30.0), Recording("test", 2, stream(8, 50.0), 50.0)])


def test_zero_length_windows_are_a_clear_error():
    data = DataSettings(window_seconds=0.01, stride_seconds=1.0, frames=2, frame_size=16, sensor_length=16)
    with pytest.raises(UserError, match=r"window_seconds=0.01 holds 0 sensor sample\(s\) at 30 Hz; .* at least 2"):
        windowed([Recording("train", 1, stream(8), 30.0), Recording("test", 2, stream(8), 30.0)], data)


def test_recording_shorter_than_a_window_is_a_counted_reported_skip():
    recordings = [Recording("train", 1, stream(8), 30.0), Recording("test", 2, stream(8), 30.0)]
    recordings.append(Recording("empty", 3, np.zeros((2, 0), np.float32), 30.0))
    with pytest.warns(DataSkipWarning, match=r"empty: shorter than one window \(0 samples < 30\)"):
        source = windowed(recordings)
    assert source.skips["short_recordings"] == 1 and len(source.split("test")) == 8


def test_truncated_video_mid_file_names_the_file(tmp_path):
    video = tmp_path / "cam.avi"
    write_video(video, np.stack([index_frame(i, 32, 32) for i in range(80)]), 10.0, "mjpeg")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # cut in the middle of the file
    recordings = [Recording("train", 1, stream(8), 30.0, video=video), Recording("test", 2, stream(8), 30.0)]
    source = windowed(recordings, require_video=False)
    train = source.split("train")
    assert read_index(train[0]["video"][0].numpy()) == 2  # the first half still reads (frame at 0.25 s)
    with pytest.raises(VideoError, match=r"cam\.avi: "):
        train[len(train) - 1]  # the last window lies past the cut
    assert issubclass(VideoError, UserError)  # so the CLI shows it as its one-line error, exit 2


# ---- plugin faults --------------------------------------------------------------------------------------------

BAD_PLUGINS = {
    "acme_import": "raise ImportError('needs libacme')\n",
    "acme_register": """
from detach_framework.plugins import hookimpl
@hookimpl
def detach_register_components(register):
    raise RuntimeError('registration broke')
""",
    "acme_shapes": """
import torch
from torch import nn
from detach_framework.plugins import hookimpl
from detach_framework.registry import ComponentParams

class Params(ComponentParams):
    dim: int = 8

class WrongWidth(nn.Module):
    def __init__(self, params, in_channels, length):
        super().__init__()
        self.out_dim = params.dim
        self.linear = nn.Linear(in_channels * length, params.dim + 1)  # one feature too many

    def forward(self, sensor):
        return self.linear(sensor.flatten(1))

@hookimpl
def detach_register_components(register):
    register(kind="sensor_encoder", name="acme_encoder", factory=WrongWidth, params=Params)
""",
}


@pytest.fixture()
def acme(tmp_path, monkeypatch):
    """Three third-party plugins of the distribution acme-plugins: one fails to import, one fails to
    register, one registers an encoder that returns the wrong width."""
    for name, text in BAD_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = plugin_module.entry_points

    def entry_points(group):
        fake = [SimpleNamespace(name=n, value=n, dist=SimpleNamespace(name="acme-plugins")) for n in BAD_PLUGINS]
        return [*real(group=group), *fake]

    monkeypatch.setattr(plugin_module, "entry_points", entry_points)
    yield
    for name in BAD_PLUGINS:
        sys.modules.pop(name, None)


def test_plugin_failing_at_import_or_registration_is_named_with_its_distribution(acme, tmp_path, capsys):
    host = plugin_module.load_plugins(autoload=True)
    failed = {p.name: (p.distribution, p.error) for p in host.failures}
    assert failed == {
        "acme_import": ("acme-plugins", "ImportError: needs libacme"),
        "acme_register": ("acme-plugins", "RuntimeError: registration broke"),
    }
    assert "acme_import (ImportError: needs libacme) from acme-plugins" in host.registry.failed_plugins
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("acme_register "))
    assert row.split()[1:3] == ["acme-plugins", "failed"] and "RuntimeError: registration broke" in row
    # The rest keep working: a spec of built-in components validates; a missing one names the failures.
    spec = write_spec(tmp_path, FAST)
    assert main(["validate", spec]) == 0
    assert main(["validate", spec, "model.sensor_encoder.name=acme_missing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed to load: acme_import (ImportError: needs libacme) from acme-plugins" in err[0]


def test_component_returning_a_wrong_shape_is_named_with_plugin_and_distribution(acme, tmp_path, capsys):
    spec = copy.deepcopy(FAST)
    spec["model"]["sensor_encoder"] = {"name": "acme_encoder", "dim": 8}
    assert train(write_spec(tmp_path, spec), tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detach train: error: model.sensor_encoder 'acme_encoder' from plugin 'acme_shapes' ")
    assert "(distribution 'acme-plugins') returned [16, 9] for a batch of 16; its contract is [B, out_dim]" in err[-1]
    assert main(["validate", write_spec(tmp_path, FAST, "good.yaml")]) == 0  # the other components still work


def test_builtin_components_carry_their_distribution(host):
    component = host.registry.get("sensor_encoder", "imu2clip_sensor")
    assert component.distribution.replace("_", "-") == "detach-framework"
    assert component.origin == f"plugin 'imu2clip' (distribution '{component.distribution}')"


# ---- long variants: a real console process, repeated kills ---------------------------------------------------


def console(spec: str, run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as in the straight run
    command = [sys.executable, "-m", "detach_framework", "train", spec, "--run-dir", str(run), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run: Path, process: subprocess.Popen, epochs: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if len([r for r in RunDirectory(run).read_metrics() if r.get("kind") == "epoch"]) >= epochs:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached {epochs} epochs")


@pytest.mark.slow
def test_console_process_sigterm_then_sigkill_then_resume(straight, tmp_path):
    run = tmp_path / "run"
    first = console(straight.fast_spec, run)
    wait_for_epochs(run, first, 1)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143 and err.strip().splitlines()[-1].startswith("detach train: interrupted by SIGTERM")
    second = console(straight.fast_spec, run, "--resume")
    wait_for_epochs(run, second, 2)
    second.kill()  # SIGKILL, wherever it is
    second.communicate(timeout=300)
    assert second.returncode == -signal.SIGKILL
    third = console(straight.fast_spec, run, "--resume")
    assert third.wait(timeout=300) == 0, third.communicate()[1]
    assert_identical(straight.fast, run)


@pytest.mark.slow
@pytest.mark.parametrize("spec_name", ["fast", "odc"])
def test_killed_at_every_step_and_checkpoint_still_matches(straight, tmp_path, spec_name):
    """Kill after each optimizer step and inside each checkpoint write in turn, resuming every time."""
    spec, expected = getattr(straight, f"{spec_name}_spec"), getattr(straight, spec_name)
    run = tmp_path / "run"
    for attempt in range(1, 40):

        def body(attempt: int = attempt) -> int:
            if attempt % 2:
                on_call(torch.optim.AdamW, "step", nth(attempt // 2 + 1), kill_self)
            else:
                on_call(checkpoint_module, "atomic_write_bytes", nth(attempt // 2), kill_self)
            return train(spec, run, *(["--resume"] if run.exists() else []))

        code = run_child(body, tmp_path / f"child{attempt}.log")
        if code == 0:
            break
        assert code == -signal.SIGKILL, (tmp_path / f"child{attempt}.log").read_text()
    else:
        raise AssertionError("the run never completed")
    assert_identical(expected, run)
