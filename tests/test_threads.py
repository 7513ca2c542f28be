"""runtime.threads: the intra-op thread count a training process chooses, and its record in env.json."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_spec

from detach_framework.engine import threads as threads_module
from detach_framework.engine.threads import choose_threads, configure_threads
from detach_framework.errors import UserError
from detach_framework.spec import load_spec


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "workers", "local", "current", "expected"),
    [(8, 0, 1, 8, 8), (8, 2, 1, 8, 6), (2, 4, 1, 2, 1), (16, 0, 4, 16, 4), (16, 1, 4, 16, 3), (8, 0, 1, 1, 1)],
)
def test_auto_leaves_the_cores_workers_and_other_processes_need(cores, workers, local, current, expected):
    # the last case: a process (or a forked child) already at 1 thread is never raised
    assert choose_threads("auto", workers, cores, local, current) == expected


def test_configure_records_the_choice_and_leaves_an_equal_count_alone(restore_threads, monkeypatch):
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 64)
    current = torch.get_num_threads()
    chosen = configure_threads("auto", 0)
    assert chosen["intra_op"] == torch.get_num_threads() == current  # never more than the process had
    assert chosen["usable_cores"] == 64 and chosen["data_workers"] == 0


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
