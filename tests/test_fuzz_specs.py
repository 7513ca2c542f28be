"""Spec fuzzing: random YAML documents, mutated specs and override strings never give the CLI a traceback,
only exit 0 or the one-line error with exit 2. The default run tries a few hundred inputs; the `slow`
variants (pytest -m slow tests/test_fuzz_specs.py) try thousands."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detach_framework import cli
from detach_framework.cli import main

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of the tiny spec (list items by index): where the fuzzer aims its overrides."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, f"{prefix}.{index}")
    return out


PATHS = _paths(TINY_SPEC)
KEYS = sorted({part for path in PATHS for part in path.split(".") if not part.isdigit()} | {"os.system", "__class__"})

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["synthetic_kitchen", "small_cnn", "infonce", "os.system", "builtins.eval", "", "auto", "~"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner),
    max_leaves=12,
)


@pytest.fixture(scope="module", autouse=True)
def shared_host(host):
    """Every call reuses the session's plugin host: the fuzzer measures validation, not plugin imports."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_host", lambda args: host)
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_cli(argv: list[str]) -> None:
    """The property: exit 0 or 2, and when 2 exactly one line on stderr, never a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue()
    assert code in (0, 2), (code, text)
    assert "Traceback" not in text
    if code == 2:
        assert text.endswith("\n") and text.count("\n") == 1 and len(text.splitlines()) == 1, repr(text)
        assert text.startswith("detach validate: error: ")
    else:
        assert text == ""


def validate_document(workdir: Path, text: str | bytes, overrides: list[str] = ()) -> None:
    path = workdir / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    check_cli(["validate", str(path), *overrides])


def dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


def mutate(spec: dict, path: str, value: Any) -> dict:
    spec = copy.deepcopy(spec)
    node: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


override_keys = st.sampled_from(PATHS) | st.text(max_size=12) | st.sampled_from(["a..b", "stages.x.epochs", "0", ".x"])
override_values = st.text(max_size=16) | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values) | st.text(max_size=16),
    max_size=3,
).map(lambda items: [item for item in items if not item.startswith("-")])  # an option is argparse's to reject


# ---- random documents -------------------------------------------------------------------------------------


@FAST
@given(document=values)
def test_random_documents(workdir, document):
    validate_document(workdir, dump(document))


@FAST
@given(text=st.text(max_size=80))
def test_random_text(workdir, text):
    validate_document(workdir, text)


@FAST
@given(path=st.sampled_from(PATHS), value=values)
def test_mutated_spec(workdir, path, value):
    validate_document(workdir, dump(mutate(TINY_SPEC, path, value)))


@FAST
@given(items=overrides)
def test_override_strings(workdir, items):
    validate_document(workdir, dump(TINY_SPEC), items)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,  # PyYAML recursed out of the stack: was a RecursionError traceback
        "{a: " * 3000,
        "a: &x [*x]\n",  # a self-referencing document
        "data: &d {dataset: *d}\nmodel: {}\nstages: []\n",
        "!!python/object/apply:os.system ['echo owned']\n",
        "seed: 2018-01-01\n",
        "? [1]\n: 2\n",
        "\ufeffname: x\n",
        "name: x\nname: y\n",
        "---\na: 1\n---\nb: 2\n",
    ],
)
def test_known_hostile_documents(workdir, text):
    validate_document(workdir, text)


def test_deep_override_value_is_a_plain_string(workdir):
    validate_document(workdir, dump(TINY_SPEC), ["stages.0.epochs=" + "[" * 5000])


def test_non_utf8_and_nul_bytes(workdir):
    validate_document(workdir, b"name: \xff\xfe\x00\n")


def test_spec_keeps_special_floats_out_of_integers(workdir):
    for value in (math.nan, math.inf, -math.inf, 1e300):
        validate_document(workdir, dump(mutate(TINY_SPEC, "stages.0.epochs", value)))


# ---- long variants ----------------------------------------------------------------------------------------


@pytest.mark.slow
@LONG
@given(path=st.sampled_from(PATHS), value=values, items=overrides)
def test_mutated_spec_and_overrides_long(workdir, path, value, items):
    validate_document(workdir, dump(mutate(TINY_SPEC, path, value)), items)


@pytest.mark.slow
@LONG
@given(document=values, text=st.text(max_size=200))
def test_random_documents_and_text_long(workdir, document, text):
    validate_document(workdir, dump(document))
    validate_document(workdir, text)
