"""What the command-line tests share: the example spec they start from, a way to run `detach` in-process and the
check of a one-line error."""

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


def assert_one_line_error(code, err, *fragments):
    """Exit code 2 and one line on stderr holding every fragment: how each user mistake must end."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
