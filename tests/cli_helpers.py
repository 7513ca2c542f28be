"""What the command-line tests share: the example spec they start from and a way to run `detach` in-process."""

from __future__ import annotations

from pathlib import Path

from detach_framework.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "examples" / "quickstart.yaml")


def run(capsys, *argv):
    """`detach ARGV...` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
