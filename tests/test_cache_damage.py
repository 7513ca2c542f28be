"""Damaged LMDB caches (docs/FAULTS.md, "Damaged caches"): a data.mdb cut short or with flipped bytes in its
B-tree pages is reported in one line naming the cache, never an lmdb traceback, and by `detach cache verify`
never a SIGBUS; training with cache.mode auto rebuilds a store cut short. Every read of a damaged store runs
in a forked child, so a regression fails the test with the child's signal instead of killing pytest. Also: a
cache.dir nothing can be written to."""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest
from test_cache import built, frozen_spec, write_spec  # noqa: F401 (built: the fixture of one complete store)
from test_faults import one_thread, run_child  # noqa: F401 (one_thread: autouse, forked children stay single-threaded)

from detach_framework.cache.build import ensure_store
from detach_framework.cache.dataset import CachedSplit
from detach_framework.cache.store import BUILDING, COMPLETE, write_marker
from detach_framework.cli import main
from detach_framework.errors import UserError

# LMDB 0.9 page header: pgno u64, pad u16, flags u16, then lower/upper u16 (an overflow run: its page count u32).
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
PAGE_HEADER = 16


@pytest.fixture()
def damaged(built, tmp_path):  # noqa: F811
    """A copy of the built store in this test's own cache.dir: (plan, context, spec file, data.mdb)."""
    context, plan = built
    root = tmp_path / "cache"
    shutil.copytree(plan.path, root / plan.uid)
    plan = replace(plan, root=root)
    return plan, context, write_spec(tmp_path, frozen_spec(root)), plan.path / "data.mdb"


def in_child(tmp_path: Path, body: Callable[[], int]) -> tuple[int, str]:
    """`body()` in a forked child: its exit code (-N for signal N, SIGALRM for a hang) and its output."""

    def bounded() -> int:
        faulthandler.disable()  # (pytest's: its dump of an expected SIGBUS would land in pytest's own output)
        signal.alarm(120)
        return body()

    log = tmp_path / "child.log"
    code = run_child(bounded, log)
    return code, log.read_text()


def read_first_entry(plan, context) -> Callable[[], int]:
    """A child body reading train entry 0 as training does: exit 3 when that raises a UserError (printed)."""

    def body() -> int:
        try:
            CachedSplit(plan, "train", context.source.split("train"), need_frames=False)[0]
        except UserError as exc:
            print(f"{type(exc).__name__}: {exc}")
            return 3
        return 0

    return body


def pages(data: bytes, psize: int) -> dict[int, list[int]]:
    """Branch and leaf page numbers, from LMDB's own page headers (overflow runs skipped)."""
    found: dict[int, list[int]] = {P_BRANCH: [], P_LEAF: []}
    number = 2  # after the two meta pages
    while number < len(data) // psize:
        flags, run = struct.unpack_from("<HI", data, number * psize + 10)
        if flags & P_OVERFLOW:
            number += run
            continue
        for kind, numbers in found.items():
            if flags & kind:
                numbers.append(number)
        number += 1
    assert found[P_BRANCH] and found[P_LEAF], "these tests need a store with a branch page"
    return found


def flip(data_file: Path, kind: int, offsets: Callable[[bytearray, int], list[int]], mask: int) -> None:
    """XOR `mask` into bytes of every page of `kind`, at `offsets(data, page start)`."""
    env = lmdb.open(str(data_file.parent), readonly=True, lock=False)
    psize = env.stat()["psize"]
    env.close()
    data = bytearray(data_file.read_bytes())
    for number in pages(data, psize)[kind]:
        for offset in offsets(data, number * psize):
            data[offset] ^= mask
    data_file.write_bytes(data)


def nodes(data: bytearray, page: int) -> list[int]:
    """Where a page's nodes start: u16 offsets after the header, up to its `lower` bound."""
    lower = struct.unpack_from("<H", data, page + 12)[0]
    return [page + offset for offset in struct.unpack_from(f"<{(lower - PAGE_HEADER) // 2}H", data, page + PAGE_HEADER)]


def assert_verify_reports(code: int, output: str, plan, *expected: str) -> None:
    assert code == 1, f"verify: exit {code} (a negative code is the signal that killed it):\n{output}"
    assert "Traceback" not in output and "lmdb." not in output, output
    assert all(text in output for text in expected), output
    assert str(plan.path) in output.splitlines()[0]


# ---- truncated data.mdb ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["half", 4096, 0])
def test_truncated_cache_is_reported_not_a_sigbus(damaged, tmp_path, size):
    plan, context, spec, data_file = damaged
    os.truncate(data_file, data_file.stat().st_size // 2 if size == "half" else size)
    code, output = in_child(tmp_path, lambda: main(["cache", "verify", spec]))
    assert_verify_reports(code, output, plan, "damaged: cache", "is damaged", "detach cache clear SPEC")
    assert len(output.strip().splitlines()) == 1, output
    code, output = in_child(tmp_path, read_first_entry(plan, context))
    assert code == 3 and output.startswith(f"DamagedStoreError: cache {plan.path} is damaged"), output


def test_truncated_partial_build_starts_over(damaged, tmp_path):
    plan, context, _, data_file = damaged
    os.truncate(data_file, data_file.stat().st_size // 2)
    (plan.path / COMPLETE).unlink()
    write_marker(plan.path / BUILDING, {"uid": plan.uid, "payload": plan.payload})
    plan.path.rename(plan.partial_path)

    def rebuild() -> int:
        with pytest.warns(UserWarning, match=f"cache {plan.partial_path} is damaged .*removed it, building it again"):
            return 0 if ensure_store(plan, context) == plan.entries else 1

    code, output = in_child(tmp_path, rebuild)
    assert code == 0, output


# ---- flipped bytes in the B-tree -----------------------------------------------------------------------

FLIPS = {
    # a leaf page that no longer says it is one: MDB_CORRUPTED
    "leaf_flag": (P_LEAF, lambda data, page: [page + 10], P_LEAF),
    # a branch's children numbered past the file (bit 47 of each page number): MDB_PAGE_NOTFOUND
    "branch_child": (P_BRANCH, lambda data, page: [node + 5 for node in nodes(data, page)], 0x80),
}


@pytest.mark.parametrize("name", list(FLIPS))
def test_flipped_btree_bytes_are_one_line_not_an_lmdb_traceback(damaged, tmp_path, name):
    plan, context, spec, data_file = damaged
    flip(data_file, *FLIPS[name])
    code, output = in_child(tmp_path, lambda: main(["cache", "verify", spec]))
    assert_verify_reports(code, output, plan, "damaged: cache", "detach cache clear SPEC")
    code, output = in_child(tmp_path, read_first_entry(plan, context))
    assert code == 3 and output.startswith(f"DamagedStoreError: cache {plan.path} is damaged"), output
    assert len(output.strip().splitlines()) == 1, output


def test_a_page_that_kills_its_reader_is_reported_by_verify(damaged, tmp_path):
    """Leaf nodes claiming values 1 GiB longer (bit 30 of each size): py-lmdb touches every page of a value it
    returns, past the end of the file. Verify scans in a child of its own and names the cache."""
    plan, _, spec, data_file = damaged
    flip(data_file, P_LEAF, lambda data, page: [node + 3 for node in nodes(data, page)], 0x40)
    code, output = in_child(tmp_path, lambda: main(["cache", "verify", spec]))
    assert_verify_reports(code, output, plan, "damaged: cache", "reading it killed the reader with SIGBUS")
    assert len(output.strip().splitlines()) == 1, output


# ---- training rebuilds a damaged cache -------------------------------------------------------------------


def test_training_with_cache_auto_rebuilds_a_damaged_cache(damaged, tmp_path, capsys):
    plan, _, spec, data_file = damaged
    os.truncate(data_file, data_file.stat().st_size // 2)

    def train() -> int:
        with pytest.warns(UserWarning, match=f"cache {plan.path} is damaged .*removed it, building it again"):
            return main(["train", spec, "--run-dir", str(tmp_path / "run")])

    code, output = in_child(tmp_path, train)
    assert code == 0, output
    assert (tmp_path / "run" / "summary.json").is_file()
    assert main(["cache", "verify", spec]) == 0
    assert "every checksum matches" in capsys.readouterr().out


# ---- cache.dir nothing can be written to -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_cache_dir_is_one_line(tmp_path, capsys, where):
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here (and creating /proc/nope must not succeed)")
    (tmp_path / "a_file").write_text("mine")
    root = tmp_path / "a_file" / "cache" if where == "under_a_file" else Path("/proc/nope")
    spec = write_spec(tmp_path, frozen_spec(root))
    for command in (["cache", "build", spec], ["train", spec, "--run-dir", str(tmp_path / "run")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err  # (train first says which run directory it uses)
        errors = [line for line in err.splitlines() if line.startswith(f"detach {command[0]}: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert f"error: cache.dir {root}: cannot write there" in errors[0]
    assert main(["cache", "clear", spec]) == 0
    assert "nothing to remove" in capsys.readouterr().out
