"""Spec fuzzing from the registry's own JSON Schema: a few leaves of a tiny valid spec are set to values at and
beyond the bounds the schema declares (or a component slot is switched to another registered component), and
each spec goes through `detach validate` and, when it validates, a short training in a forked child bounded by
a timeout. The property: exit 0, or exit 2 with one `detach CMD: error: ...` line on stderr; never a traceback,
a signal or a hang.

The default run (about 45 s) validates 150 specs, trains 8 that validate (reproducibly: derandomize) and replays
the specs the fuzzer once found crashing; `pytest -m slow` runs 3000 + 150 random ones and a sweep training every
base spec with each of its values at a bound.
`python tests/test_fault_property.py [VALIDATE_TRIALS] [TRAIN_TRIALS] [SEED]` prints the counts of each outcome
for a fresh set of random trials.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_SPEC
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from test_faults import FAST, ODC

from detach_framework import cli
from detach_framework.spec import json_schema, load_spec

BASES = (TINY_SPEC, FAST, ODC)
VALIDATE_TIMEOUT_S = 10
TRAIN_TIMEOUT_S = 60
GOOD = ("ok", "error")
OUTCOMES = ("ok", "error", "traceback", "signal", "hang", "other")
NOTES = ("run directory: ",)  # what `detach train` prints on stderr before it starts, besides the error
ABSENT = object()  # a key the spec does not set: mutating it adds it

SHORT = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
LONG = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


# ---- the schema -------------------------------------------------------------------------------------------


def resolve(root: dict, node: dict) -> dict:
    """Follow `$ref`s (JSON pointers into the same document)."""
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def strip_null(root: dict, node: dict) -> tuple[dict, bool]:
    """(the alternative that is not null, whether null is allowed) of an `anyOf: [X, null]`."""
    alternatives = node.get("anyOf", [])
    rest = [alt for alt in alternatives if alt.get("type") != "null"]
    if len(rest) == 1 and len(rest) < len(alternatives):
        return resolve(root, rest[0]), True
    return resolve(root, node), False


def slot_members(root: dict, node: dict) -> dict[str, dict] | None:
    """{component name: its params' schema} when `node` is a component slot: a union told apart by a `name`
    const; None for anything else."""
    members = {}
    for alternative in node.get("oneOf", []):
        alternative = resolve(root, alternative)
        name = alternative.get("properties", {}).get("name", {}).get("const")
        if name is None:
            return None
        members[name] = alternative
    return members or None


@dataclass(frozen=True)
class Target:
    """One place in a spec a mutation can set, with the schema of what belongs there."""

    path: tuple[str | int, ...]
    schema: dict
    nullable: bool
    default: Any
    members: dict[str, dict] | None = None  # a component slot's components

    @property
    def dotted(self) -> str:
        return ".".join(map(str, self.path))


def targets(root: dict, node: dict, value: Any, path: tuple[str | int, ...] = ()) -> Iterator[Target]:
    """Every place the spec `value` (checked against `node`) can be mutated: set leaves, leaves the spec leaves
    to their defaults, sections, list items and component slots (descending into the chosen component)."""
    inner, nullable = strip_null(root, node)
    default = node.get("default", inner.get("default"))
    members = slot_members(root, inner)
    yield Target(path, inner, nullable, default, members)
    if members is not None:
        name = value.get("name") if isinstance(value, dict) else None
        if isinstance(name, str) and name in members:
            yield from property_targets(root, members[value["name"]], value, path)
    elif "properties" in inner:
        if value is ABSENT or isinstance(value, dict):
            yield from property_targets(root, inner, {} if value is ABSENT else value, path)
    elif inner.get("type") == "array" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from targets(root, inner["items"], item, (*path, index))


def property_targets(root: dict, schema: dict, value: dict, path: tuple[str | int, ...]) -> Iterator[Target]:
    for key, sub in schema["properties"].items():
        yield from targets(root, sub, value.get(key, ABSENT), (*path, key))


def unshared(base: dict) -> dict:
    """A copy sharing no node with `base` nor within itself: the bases reuse one dict in several places (FAST's
    stages share an optimizer section), which deepcopy keeps shared, so one mutation would land in all of them."""
    return json.loads(json.dumps(base))


def get_path(spec: Any, path: tuple[str | int, ...]) -> Any:
    node = spec
    for part in path:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return ABSENT
    return node


def set_path(spec: dict, path: tuple[str | int, ...], value: Any) -> None:
    """Set `value` at `path`, creating the sections a spec left to their defaults."""
    node: Any = spec
    for part in path[:-1]:
        node = node[part] if isinstance(node, list) else node.setdefault(part, {})
    node[path[-1]] = value


# ---- values at and beyond the bounds ----------------------------------------------------------------------

HUGE_NUMBERS = [10**12, 2**63, -(10**12), 10**400, 1e30, -1e30, math.inf, -math.inf, math.nan]
PATH_LIKE = ["", " ", "..", "~", "a" * 300, "nul\x00byte", "/proc/detach-fuzz/x", "ünï😀"]
WRONG_TYPES = [None, "", "7", True, [], {}, {"name": 1}]


def integer_values(schema: dict, default: Any) -> tuple[list, list, st.SearchStrategy | None]:
    low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else None)
    high = schema.get("maximum", schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else None)
    bounds = [b for b in (low, high) if b is not None]
    at = [*bounds, default] if isinstance(default, int) else bounds
    beyond = [*(b + step for b, step in ((low, -1), (high, 1)) if b is not None), 0, -1, *HUGE_NUMBERS]
    beyond += [float(bounds[0]) if bounds else 1.0, 2.5, *WRONG_TYPES]
    inside = st.integers(low, high) if bounds else None
    return at, beyond, inside


def number_values(schema: dict, default: Any) -> tuple[list, list, st.SearchStrategy | None]:
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    at = [b for b in (minimum, maximum) if b is not None]
    at += [math.nextafter(above, math.inf)] if above is not None else []
    at += [math.nextafter(below, -math.inf)] if below is not None else []
    if maximum is None and below is None:  # unbounded above: the largest finite floats are in range
        at += [1e30, sys.float_info.max]
    if isinstance(default, float | int) and not isinstance(default, bool):
        at.append(default)
    beyond = [b for b in (above, below) if b is not None]
    beyond += [math.nextafter(minimum, -math.inf), minimum - 1] if minimum is not None else []
    beyond += [math.nextafter(maximum, math.inf), maximum + 1] if maximum is not None else []
    beyond += [0.0, -1.0, 5e-324, *HUGE_NUMBERS, "nan", "1e3", *WRONG_TYPES]
    low = minimum if minimum is not None else above
    high = maximum if maximum is not None else below
    inside = None
    if low is not None and high is not None:
        inside = st.floats(low, high, exclude_min=minimum is None, exclude_max=maximum is None, allow_nan=False)
    return at, beyond, inside


def string_values(schema: dict, default: Any) -> tuple[list, list, st.SearchStrategy | None]:
    if "const" in schema:
        name = schema["const"]
        return [name], ["", name.upper(), name + "_x", None, 1, []], None
    if "enum" in schema:
        choices = list(schema["enum"])
        return choices, ["", choices[0].upper(), choices[0] + " ", 0, None, True, []], None
    if "pattern" in schema:  # a name or a device: strings matching the pattern, and path-like ones that do not
        at = [default] if isinstance(default, str) else []
        return at, [*PATH_LIKE, "a" * 65, "-x", 0, None, True, []], st.from_regex(schema["pattern"], fullmatch=True)
    # a free string (a path, a model name): every string validates, what it names is checked later
    return [default if isinstance(default, str) else "x", *PATH_LIKE], [0, None, True, [], {}], None


def array_values(root: dict, schema: dict, default: Any) -> tuple[list, list]:
    item_schema, _ = strip_null(root, schema["items"])
    members = slot_members(root, item_schema)
    if members is not None:
        item: Any = {"name": sorted(members)[0]}
    else:
        at, _, _ = leaf_values(root, Target((), item_schema, False, item_schema.get("default")))
        item = at[0] if at else 1
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    at = [[item] * low, *([[item]] if low == 0 else []), *([[item] * high] if high is not None else [])]
    at += [default] if default is not None else []
    beyond = [[item] * (high + 1)] if high is not None else [[item] * 10_000]
    beyond += [[item] * (low - 1)] if low > 0 else []
    beyond += [[None] * max(low, 1), [[item]], None, "", 5, {}]
    return at, beyond


def slot_values(target: Target, current: Any) -> tuple[list, list]:
    """Switch the slot to each other registered component: with that component's defaults, and keeping the
    params the old and the new component share (so paired embedding sizes still meet)."""
    kept = current if isinstance(current, dict) else {}
    at, beyond = [], [{"name": "no_such_component"}, {}, [], "x"]
    for name, schema in sorted(target.members.items()):
        shared = {k: v for k, v in kept.items() if k != "name" and k in schema["properties"]}
        at += [{"name": name, **shared}, {"name": name}]
        beyond.append({"name": name, "unknown_key": 1})
    return at + ([None] if target.nullable else []), beyond + ([] if target.nullable else [None])


def leaf_values(root: dict, target: Target, current: Any = ABSENT) -> tuple[list, list, st.SearchStrategy | None]:
    """(values at the bounds, values beyond them, a strategy for values inside) for one target."""
    schema, inside = target.schema, None
    if target.members is not None:
        at, beyond = slot_values(target, current)
    elif "properties" in schema:  # a whole section
        at, beyond = [], [None, [], "", 0, {"unknown_key": 1}]
    elif schema.get("type") == "integer":
        at, beyond, inside = integer_values(schema, target.default)
    elif schema.get("type") == "number":
        at, beyond, inside = number_values(schema, target.default)
    elif schema.get("type") == "string" or "enum" in schema or "const" in schema:
        at, beyond, inside = string_values(schema, target.default)
    elif schema.get("type") == "boolean":
        at, beyond = [True, False], [None, "yes", 2, "", []]
    elif schema.get("type") == "array":
        at, beyond = array_values(root, schema, target.default)
    else:
        at, beyond = [], WRONG_TYPES
    if target.nullable and target.members is None:
        at = [None, *at]
    return at, beyond, inside


@st.composite
def mutated_specs(draw, root: dict, in_range_weight: int = 1) -> tuple[dict, list[str]]:
    """A base spec with 1-3 targets set to drawn values; `in_range_weight` favours values at the bounds over
    values beyond them (so more of the specs validate and train). Returns the spec and what was changed."""
    spec = unshared(draw(st.sampled_from(BASES)))
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(list(targets(root, root, spec))))
        current = get_path(spec, target.path)
        at, beyond, inside = leaf_values(root, target, current)
        in_range = [st.sampled_from(at)] if at else []
        in_range += [inside] if inside is not None else []
        choices = in_range * in_range_weight + [st.sampled_from(beyond)]
        value = draw(st.one_of(choices))
        if not target.path:  # the whole document
            spec = copy.deepcopy(value)
        else:
            set_path(spec, target.path, copy.deepcopy(value))
        changes.append(f"{target.dotted or '<top>'}={value!r}"[:200])
    return spec, changes


# ---- running the CLI --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    code: int | None
    stderr: str

    def __str__(self) -> str:
        return f"{self.kind} (exit {self.code}): {self.stderr[-3000:]}"


def classify(command: str, code: int | None, stderr: str) -> Outcome:
    if code is None:
        kind = "hang"
    elif "Traceback (most recent call last)" in stderr:
        kind = "traceback"
    elif code < 0:
        kind = "signal"
    elif code == 0:
        kind = "ok"
    else:
        lines = [line for line in stderr.splitlines() if not line.startswith(NOTES)]
        one_line = len(lines) == 1 and lines[0].startswith(f"detach {command}: error: ")
        kind = "error" if code == 2 and one_line else "other"
    return Outcome(kind, code, stderr)


class ValidateTimeout(Exception):
    pass


def _timed_out(signum, frame):
    raise ValidateTimeout


def validate(spec_path: Path) -> Outcome:
    """`detach validate SPEC` in this process, under an alarm; an exception out of main() is a traceback."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(VALIDATE_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["validate", str(spec_path)])
    except ValidateTimeout:
        return classify("validate", None, err.getvalue())
    except (Exception, SystemExit):  # noqa: BLE001 - the property reports it
        return classify("validate", 1, err.getvalue() + traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return classify("validate", code, err.getvalue())


def train_in_child(spec_path: Path, folder: Path, timeout_s: float = TRAIN_TIMEOUT_S) -> Outcome:
    """`detach train SPEC --run-dir folder/run` in a forked child (cwd: folder, so a relative cache.dir lands
    there), killed after `timeout_s`: a signal or a hang is an outcome, not a dead pytest."""
    out_path, err_path = folder / "stdout", folder / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            for fd, path in ((1, out_path), (2, err_path)):
                with open(path, "w") as handle:
                    os.dup2(handle.fileno(), fd)
            sys.stdout, sys.stderr = open(1, "w", buffering=1, closefd=False), open(2, "w", buffering=1, closefd=False)
            torch.set_num_threads(1)
            os.chdir(folder)
            code = cli.main(["train", str(spec_path), "--run-dir", str(folder / "run")])
        except BaseException:  # noqa: BLE001 - the parent reads it from stderr
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = None
            break
        time.sleep(0.05)
    return classify("train", code, err_path.read_text(errors="replace"))


# ---- what is trained --------------------------------------------------------------------------------------

TRAIN_SIZE = 32  # widths, hidden sizes and embedding sizes are cut to this for training
SIZE_KEYS = {"dim", "hidden", "gru_hidden", "head_channels", "projection_hidden", "projection_dim", "decoder_hidden"}
SIZE_KEYS |= {"channels", "pool_steps", "img_size"}
TINY_KITCHEN = {"subjects": 3, "recordings_per_subject": 2, "recording_seconds": 24.0}
DATA_CAPS = {"frames": 4, "frame_size": 32, "sensor_length": 32, "batch_size": 16, "num_workers": 1}


def cap_sizes(node: Any) -> None:
    for key, value in node.items() if isinstance(node, dict) else ():
        if key in SIZE_KEYS and isinstance(value, int):
            node[key] = min(value, TRAIN_SIZE)
        elif key in SIZE_KEYS and isinstance(value, list):
            node[key] = [min(v, TRAIN_SIZE) for v in value]
        elif key == "kmeans_init":
            node[key] = min(value, 2)
        else:
            cap_sizes(value)


def cap_stage_epochs(stage: dict) -> None:
    """One epoch a stage; an aligner whose `*_epochs` phases must add up to the stage's gets one epoch a phase."""
    phases = {k: v for k, v in stage["aligner"].items() if k.endswith("_epochs")}
    if phases and sum(phases.values()) == stage["epochs"]:
        stage["aligner"].update({k: min(v, 1) for k, v in phases.items()})
        stage["epochs"] = max(1, sum(min(v, 1) for v in phases.values()))
    else:
        stage["epochs"] = 1


def trainable(validated: dict) -> dict:
    """The validated spec (every default filled in) cut to a run of seconds: the tiny kitchen, small frames and
    sensor windows, narrow models, one epoch a stage, short probes, no progress bars. Only sizes and counts
    shrink; every other mutated value is trained as drawn."""
    spec = copy.deepcopy(validated)
    data = spec["data"]
    data.update({key: min(data[key], limit) for key, limit in DATA_CAPS.items()})
    data["stride_seconds"] = max(data["stride_seconds"], 1.0)
    dataset = data["dataset"]
    if dataset["name"] == "synthetic_kitchen":
        dataset["preset"] = "tiny"
        dataset.update({k: min(dataset[k], v) for k, v in TINY_KITCHEN.items() if dataset.get(k) is not None})
    cap_sizes(spec["model"])
    for stage in spec["stages"]:
        cap_sizes(stage["aligner"])
        cap_stage_epochs(stage)
    spec["eval"]["evaluators"] = spec["eval"]["evaluators"][:4]
    for evaluator in spec["eval"]["evaluators"]:
        if "epochs" in evaluator:
            evaluator["epochs"] = min(evaluator["epochs"], 3)
    spec["runtime"]["progress"] = "off"
    return spec


# ---- one trial --------------------------------------------------------------------------------------------


def write_spec(folder: Path, spec: Any, name: str) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Trial:
    spec: Any
    changes: list[str]
    validated: Outcome
    trained: Outcome | None = None
    trained_spec: dict | None = None

    @property
    def good(self) -> bool:
        return all(o is None or o.kind in GOOD for o in (self.validated, self.trained))

    def report(self) -> str:
        lines = [f"changes: {self.changes}", f"validate: {self.validated}"]
        if self.trained is not None:
            lines += [f"train: {self.trained}", "trained spec:", yaml.safe_dump(self.trained_spec, sort_keys=False)]
        else:
            lines += ["spec:", yaml.safe_dump(self.spec, allow_unicode=True, sort_keys=False)]
        return "\n".join(lines)


def run_trial(spec: Any, changes: list[str], registry, workdir: Path, train: bool) -> Trial:
    folder = Path(tempfile.mkdtemp(dir=workdir))
    try:
        spec_path = write_spec(folder, spec, "spec.yaml")
        trial = Trial(spec, changes, validate(spec_path))
        if train and trial.validated.kind == "ok":
            trial.trained_spec = trainable(load_spec(spec_path, registry).model_dump(mode="json"))
            trial.trained = train_in_child(write_spec(folder, trial.trained_spec, "train.yaml"), folder)
        return trial
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- the property -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def shared_host(host):
    """Every call (and every forked child) reuses the session's plugin host instead of importing plugins again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_host", lambda args: host)
        yield


@dataclass
class Fuzz:
    """What every trial needs; a short repr, because Hypothesis prints a failing test's arguments."""

    schema: dict
    registry: Any
    workdir: Path

    def __repr__(self) -> str:
        return "Fuzz(...)"

    def trial(self, drawn: tuple[Any, list[str]], train: bool) -> Trial:
        return run_trial(*drawn, self.registry, self.workdir, train=train)


@pytest.fixture(scope="module")
def fuzz(registry, tmp_path_factory) -> Fuzz:
    return Fuzz(json_schema(registry), registry, tmp_path_factory.mktemp("fault_property"))


def check(trial: Trial) -> None:
    assert trial.good, trial.report()


@settings(max_examples=150, **SHORT)
@given(data=st.data())
def test_schema_mutations_validate_or_fail_in_one_line(fuzz, data):
    check(fuzz.trial(data.draw(mutated_specs(fuzz.schema)), train=False))


@settings(max_examples=8, **SHORT)
@given(data=st.data())
def test_schema_mutations_that_validate_train_or_fail_in_one_line(fuzz, data):
    trial = fuzz.trial(data.draw(mutated_specs(fuzz.schema, in_range_weight=4)), train=True)
    check(trial)
    assume(trial.trained is not None)  # max_examples counts the specs that trained


@pytest.mark.slow
@settings(max_examples=3000, **LONG)
@given(data=st.data())
def test_schema_mutations_validate_or_fail_in_one_line_long(fuzz, data):
    check(fuzz.trial(data.draw(mutated_specs(fuzz.schema)), train=False))


@pytest.mark.slow
@settings(max_examples=150, **LONG)
@given(data=st.data())
def test_schema_mutations_that_validate_train_or_fail_in_one_line_long(fuzz, data):
    trial = fuzz.trial(data.draw(mutated_specs(fuzz.schema, in_range_weight=4)), train=True)
    check(trial)
    assume(trial.trained is not None)


def bound_cases(root: dict) -> Iterator[tuple[dict, list[str]]]:
    """Every base spec with one target set to each of its values at the bounds (and each slot switch): the
    systematic sweep behind the random draws."""
    for base in BASES:
        for target in targets(root, root, base):
            for value in leaf_values(root, target, get_path(base, target.path))[0]:
                spec = unshared(base)
                if target.path:
                    set_path(spec, target.path, copy.deepcopy(value))
                yield spec, [f"{target.dotted}={value!r}"[:200]]


@pytest.mark.slow
def test_every_value_at_a_bound_trains_or_fails_in_one_line_long(fuzz):
    bad = [trial for trial in (fuzz.trial(case, train=True) for case in bound_cases(fuzz.schema)) if not trial.good]
    assert not bad, "\n\n".join(trial.report() for trial in bad)


# Specs the fuzzer found crashing a training with a traceback, replayed every run, with the command that now
# answers them: "train" (a clean run or its one-line error) or "validate" (refused before anything runs).
FOUND = [
    pytest.param(FAST, {"stages.1.loss": None}, "train", id="global_contrastive-without-a-loss"),
    pytest.param(ODC, {"model.clusterer.max_weight_ratio": sys.float_info.max}, "train", id="odc-weight-ratio-huge"),
    pytest.param(ODC, {"model.clusterer.k": 1024}, "train", id="more-clusters-than-windows"),
    pytest.param(ODC, {"data.stride_seconds": 600.0}, "train", id="fewer-windows-than-clusters"),
    pytest.param(TINY_SPEC, {"data.dataset.root": "a" * 300}, "train", id="dataset-root-name-too-long"),
    pytest.param(TINY_SPEC, {"stages.0.init_from": "a" * 300}, "train", id="init_from-name-too-long"),
    pytest.param(
        TINY_SPEC,
        {"model.video_head": {"name": "detach_temporal_head", "dim": 16}},
        "train",
        id="frames-head-in-the-maps-slot",
    ),
    pytest.param(TINY_SPEC, {"eval.evaluators.0.lr": sys.float_info.max}, "validate", id="probe-lr-huge"),
    pytest.param(TINY_SPEC, {"eval.evaluators.0.weight_decay": 1e39}, "validate", id="probe-weight-decay-huge"),
    pytest.param(
        TINY_SPEC,
        {"eval.evaluators.0.lr": 10.0, "eval.evaluators.0.weight_decay": 10.0},
        "train",
        id="probe-at-its-bounds",
    ),
]


@pytest.mark.parametrize("base, changes, answered_by", FOUND)
def test_specs_the_fuzzer_found(fuzz, base, changes, answered_by):
    spec = unshared(base)
    for dotted, value in changes.items():
        set_path(spec, tuple(int(p) if p.isdigit() else p for p in dotted.split(".")), value)
    trial = fuzz.trial((spec, [f"{k}={v!r}" for k, v in changes.items()]), train=True)
    check(trial)
    assert (trial.trained is not None) == (answered_by == "train"), trial.report()


def _killed() -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def _hangs() -> int:
    time.sleep(30)
    return 0


def _raises() -> int:
    raise RuntimeError("boom")


def _two_lines() -> int:
    print("detach train: error: one\ntwo", file=sys.stderr)
    return 2


def _one_line() -> int:
    print("run directory: x\ndetach train: error: one", file=sys.stderr)
    return 2


@pytest.mark.parametrize(
    "body, kind",
    [(_killed, "signal"), (_hangs, "hang"), (_raises, "traceback"), (_two_lines, "other"), (_one_line, "error")],
)
def test_a_crash_or_hang_in_the_child_is_an_outcome_not_a_dead_pytest(monkeypatch, tmp_path, body, kind):
    monkeypatch.setattr(cli, "main", lambda argv: body())
    assert train_in_child(tmp_path / "spec.yaml", tmp_path, timeout_s=1).kind == kind


def test_every_registered_component_can_be_switched_in(fuzz):
    """Every component the schema knows is reached by a few mutations of a base spec (a slot switched, a list
    item added, that item switched), so a new plugin's params are fuzzed without touching this file."""
    root = fuzz.schema
    components = {
        definition["properties"]["name"]["const"]
        for definition in root["$defs"].values()
        if "const" in definition.get("properties", {}).get("name", {})
    }
    reached: set[str] = set()
    specs = [unshared(base) for base in BASES]
    for _ in range(3):
        grown = []
        for spec in specs:
            for target in targets(root, root, spec):
                if target.members is None and target.schema.get("type") != "array":
                    continue
                for value in leaf_values(root, target, get_path(spec, target.path))[0]:
                    items = value if isinstance(value, list) else [value]
                    names = {item["name"] for item in items if isinstance(item, dict) and "name" in item} - reached
                    if names:
                        reached |= names
                        grown.append(copy.deepcopy(spec))
                        set_path(grown[-1], target.path, copy.deepcopy(value))
        specs = grown
    assert components <= reached, sorted(components - reached)


# ---- outcome counts (for the fault notes) -----------------------------------------------------------------


def count_outcomes(validate_trials: int = 300, train_trials: int = 30, seed: int = 0) -> dict[str, Counter]:
    """Run random trials (validate-only, then ones that validate and train) and print the count of each outcome,
    with the first trial of each distinct bad outcome (by its last line). Used for docs/FAULTS.md; not a test."""
    from detach_framework.plugins import load_plugins

    host = load_plugins()
    fuzz = Fuzz(json_schema(host.registry), host.registry, Path(tempfile.mkdtemp(prefix="fault_property_")))
    counts: dict[str, Counter] = {"validate": Counter(), "validate (in-range draws)": Counter(), "train": Counter()}
    examples: dict[str, str] = {}
    train_errors: Counter = Counter()  # the one-line errors of specs that validated: worth a look
    cli._host = lambda args: host

    def record(label: str, outcome: Outcome | None, trial: Trial) -> None:
        if outcome is not None:
            counts[label][outcome.kind] += 1
            last = (outcome.stderr.strip().splitlines() or ["(no output)"])[-1][:160]
            if outcome.kind not in GOOD:
                examples.setdefault(f"{label} {outcome.kind}: {last}", trial.report())
            elif outcome.kind == "error" and label == "train":
                train_errors[last] += 1

    generate_only = settings(
        deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )

    @hypothesis_seed(seed)
    @settings(generate_only, max_examples=validate_trials)
    @given(drawn=mutated_specs(fuzz.schema))
    def validate_trial(drawn):
        trial = fuzz.trial(drawn, train=False)
        record("validate", trial.validated, trial)

    @hypothesis_seed(seed)
    @settings(generate_only, max_examples=train_trials)
    @given(drawn=mutated_specs(fuzz.schema, in_range_weight=4))
    def train_trial(drawn):
        trial = fuzz.trial(drawn, train=True)
        record("validate (in-range draws)", trial.validated, trial)
        record("train", trial.trained, trial)
        assume(trial.trained is not None)  # max_examples counts the specs that trained

    validate_trial()
    train_trial()
    shutil.rmtree(fuzz.workdir, ignore_errors=True)
    for command, counter in counts.items():
        print(f"{command}: {sum(counter.values())} trials: " + ", ".join(f"{k} {counter[k]}" for k in OUTCOMES))
    for line, count in train_errors.most_common():
        print(f"  train error x{count}: {line}")
    for label, text in examples.items():
        print(f"\n--- first {label}:\n{text}")
    return counts


if __name__ == "__main__":
    count_outcomes(*(int(arg) for arg in sys.argv[1:4]))
