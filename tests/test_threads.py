"""runtime.threads: the intra-op thread count a training process chooses, and its record in env.json."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_spec

from detach_framework.engine import threads as threads_module
from detach_framework.engine.threads import configure_threads
from detach_framework.errors import UserError
from detach_framework.spec import load_spec


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "workers", "local", "expected"),
    [(8, 0, "1", 8), (8, 2, "1", 6), (2, 4, "1", 1), (16, 0, "4", 4), (16, 1, "4", 3)],
)
def test_auto_leaves_the_cores_workers_and_other_processes_need(
    restore_threads, monkeypatch, cores, workers, local, expected
):
    monkeypatch.setattr(threads_module, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    chosen = configure_threads("auto", workers)
    assert chosen["intra_op"] == torch.get_num_threads() == expected
    assert chosen["usable_cores"] == cores and chosen["data_workers"] == workers


def test_an_explicit_count_is_used_as_given(restore_threads):
    assert configure_threads(1, 3)["intra_op"] == 1 == torch.get_num_threads()


def test_threads_are_bounded_and_left_out_of_the_uid(tmp_path, registry):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()))
    base = load_spec(path, registry)
    assert load_spec(path, registry, ["runtime.threads=1"]).uid == base.uid
    for bad in ("0", "many", "2000"):
        with pytest.raises(UserError, match="runtime.threads"):
            load_spec(path, registry, [f"runtime.threads={bad}"])
