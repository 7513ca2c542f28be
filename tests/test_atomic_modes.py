"""Atomic writes leave the modes a plain write would: the umask's for new files and directories (mkstemp and
mkdtemp alone would leave 0600 / 0700), and an existing file's own mode when it is replaced."""

from __future__ import annotations

import os
import stat

from detach_framework.atomic import _UMASK, atomic_directory, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_and_directories_follow_the_umask(tmp_path):
    assert _UMASK == os.umask(_UMASK)  # read once at import: still the process's umask
    target = atomic_write_text(tmp_path / "a.json", "{}")
    assert mode(target) == 0o666 & ~_UMASK
    folder = atomic_directory(tmp_path / "export", lambda tmp: (tmp / "x.txt").write_text("x"), "test")
    assert mode(folder) == 0o777 & ~_UMASK and (folder / "x.txt").read_text() == "x"


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "b.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640
