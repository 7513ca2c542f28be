"""Run directories are the user's results: only ours are replaced, one writer at a time, resumed only under
their own spec, never left holding a diverged model, and every bad location is a one-line error.
Each test is one case of docs/FAULTS.md ("Run directories")."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import train_until_interrupted
from test_faults import FAST, train, write_spec

from detach_framework.cli import main
from detach_framework.engine import trainer as trainer_module
from detach_framework.engine.checkpoint import load_checkpoint, save_checkpoint
from detach_framework.engine.rundir import MARKER_FILE, RunDirectory
from detach_framework.engine.runlock import RunLock


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def spec(tmp_path) -> str:
    return write_spec(tmp_path, FAST)


def one_line(capsys, *fragments: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    error = [line for line in lines if "error:" in line]
    assert len(error) == 1 and error[0] == lines[-1], lines
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])
    return error[0]


# -- --overwrite replaces only run directories, and loses nothing when interrupted -------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_run_directory(spec, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "notes" / "a.txt").write_text("a")
    assert train(spec, folder, "--overwrite") == 2
    one_line(capsys, str(folder), "not a run directory written by detach-framework")
    assert (folder / "thesis.tex").read_text() == "years of work" and (folder / "notes" / "a.txt").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["notes", "thesis.tex"]  # nothing added either


def test_overwrite_refuses_the_working_directory(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    assert main(["train", spec, "--run-dir", ".", "--overwrite"]) == 2
    one_line(capsys, "not a run directory")
    assert (tmp_path / "keep.txt").is_file()
    # Even a real run directory that holds the working directory is not moved away from under it.
    run = tmp_path / "run"
    assert train(spec, run) == 0
    monkeypatch.chdir(run)
    assert main(["train", spec, "--run-dir", str(run), "--overwrite"]) == 2
    one_line(capsys, "working directory")


def test_overwrite_moves_the_old_run_aside_until_the_new_one_has_a_checkpoint(spec, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert train(spec, run) == 0
    old_summary = (run / "summary.json").read_text()
    (run / "plots" / "my_figure.png").write_bytes(b"mine")
    original = trainer_module.Trainer._train_epoch

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    # Interrupted before the new run's first checkpoint: the old run is kept, whole, beside the new one.
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", interrupted)
    assert train(spec, run, "--overwrite") == 130
    replaced = RunDirectory(run).replaced
    assert (replaced / "summary.json").read_text() == old_summary
    assert (replaced / "plots" / "my_figure.png").read_bytes() == b"mine"
    assert not (run / "summary.json").exists()
    capsys.readouterr()
    # A second overwrite does not replace the kept copy: it says where the old run is.
    assert train(spec, run, "--overwrite") == 2
    one_line(capsys, str(replaced), "interrupted")
    # Resuming the interrupted new run finishes it; its first checkpoint releases the old run.
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", original)
    assert train(spec, run, "--resume") == 0
    assert not replaced.exists() and (run / "summary.json").is_file()
    # A plain overwrite of a finished run replaces it and leaves nothing aside.
    (run / "plots" / "my_figure.png").write_bytes(b"mine")
    assert train(spec, run, "--overwrite") == 0
    assert not replaced.exists() and not (run / "plots" / "my_figure.png").exists()
    assert (run / MARKER_FILE).is_file() and (run / "summary.json").is_file()


# -- --resume only under the run's own spec ------------------------------------------------------------------


def test_resume_before_the_first_checkpoint_refuses_another_spec(spec, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_until_interrupted(monkeypatch, spec, run, at_epoch=1)  # killed before any checkpoint exists
    monkeypatch.undo()
    assert not list((run / "checkpoints").glob("*.pt"))
    capsys.readouterr()
    for override in ("seed=8", "stages.0.optimizer.lr=0.01", "model.sensor_encoder.gru_hidden=16"):
        assert main(["train", spec, "--run-dir", str(run), "--resume", override]) == 2
        line = one_line(capsys, "--resume", "spec.yaml", "belongs to spec uid")
        assert line.count("synthetic_kitchen-") == 2  # both uids named
    assert train(spec, run, "--resume") == 0  # its own spec resumes


def test_resume_refuses_a_run_whose_checkpoints_carry_another_uid(spec, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(spec, run) == 0
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state.pop("format_version")
    save_checkpoint(run / "checkpoints" / "best.pt", {**state, "uid": "someone-elses-uid"})
    assert train(spec, run, "--resume") == 2
    one_line(capsys, "best.pt", "someone-elses-uid")


def test_eval_and_report_refuse_a_checkpoint_of_another_spec(spec, tmp_path, capsys, host):
    from detach_framework.report import load_test_embeddings

    run = tmp_path / "run"
    assert train(spec, run) == 0
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        state.pop("format_version")
        save_checkpoint(run / "checkpoints" / name, {**state, "uid": "another-uid"})
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    one_line(capsys, "another-uid", "does not belong to this run's spec")
    with pytest.raises(Exception, match="another-uid"):
        load_test_embeddings(RunDirectory(run), host)


# -- one writer at a time --------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(spec, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(spec, run) == 0
    capsys.readouterr()
    holder = RunLock.acquire(run)  # another writer (its descriptor locks like another process's)
    try:
        commands = (
            ["train", spec, "--run-dir", str(run), "--resume"],
            ["train", spec, "--run-dir", str(run), "--overwrite"],
            ["eval", str(run)],
            ["report", str(run)],
        )
        for argv in commands:
            before = (run / "metrics.jsonl").read_text()
            assert main(argv) == 2, argv
            one_line(capsys, str(run), "in use by", f"pid {os.getpid()}")
            assert (run / "metrics.jsonl").read_text() == before
        assert not RunDirectory(run).replaced.exists()
    finally:
        holder.release()
    assert main(["eval", str(run)]) == 0  # free again


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    (tmp_path / "run").mkdir()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies by SIGKILL, as a killed training would
        RunLock.acquire(tmp_path / "run")
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    RunLock.acquire(tmp_path / "run").release()  # the kernel released it


# -- a diverged stage is never saved ----------------------------------------------------------------------------


def test_non_finite_weights_stop_the_run_and_keep_the_last_good_checkpoint(spec, tmp_path, monkeypatch, capsys):
    original = trainer_module.Trainer._train_epoch

    def poisoned(self, pos, *args, **kwargs):
        record = original(self, pos, *args, **kwargs)
        if pos.stage_index == 0 and pos.epochs_done == 1:  # the loss stayed finite, the weights did not
            with torch.no_grad():
                next(self.model.sensor_encoder.parameters()).fill_(math.nan)
        return record

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", poisoned)
    run = tmp_path / "run"
    assert train(spec, run) == 2
    one_line(capsys, "stage 'a' epoch 2", "diverged", "model.sensor_encoder.", "last good checkpoint is kept")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["stage"], last["epochs_done"]) == ("a", 1)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    epochs = [r["epoch"] for r in RunDirectory(run).read_metrics() if r.get("kind") == "epoch"]
    assert epochs == [1]  # the diverged epoch is not logged as if it had counted


# -- bad locations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["symlink", "under_a_file", "unwritable", "a_file"])
def test_bad_run_directory_locations_are_one_line_errors(spec, tmp_path, capsys, case):
    target = tmp_path / "elsewhere"
    target.mkdir()
    run = {
        "symlink": tmp_path / "link",
        "under_a_file": tmp_path / "file.txt" / "run",
        "unwritable": Path("/proc/detach-no-such-place/run"),
        "a_file": tmp_path / "file.txt",
    }[case]
    (tmp_path / "file.txt").write_text("x")
    if case == "symlink":
        run.symlink_to(target)
    assert train(spec, run) == 2
    one_line(capsys, str(run) if case != "under_a_file" else "is a file")
    assert (tmp_path / "file.txt").read_text() == "x" and not any(target.iterdir())
