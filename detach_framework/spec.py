"""Experiment specs: YAML -> overrides -> pydantic validation against the registry -> uid.

Each component slot is a discriminated union (tag: `name`) of the components registered for its kind,
so a spec can only name registered components and every component's params are checked strictly.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, Tag, ValidationError, create_model, field_validator, model_validator

from detach_framework.errors import UserError
from detach_framework.registry import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_SENSOR_LENGTH,
    Registry,
    did_you_mean,
)

SCHEMA_HEADER = "# yaml-language-server: $schema={schema}\n"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Spec field -> component kind, for every slot that holds a registered component.
SLOT_KINDS: dict[str, str] = {
    "dataset": "dataset",
    "video_backbone": "video_backbone",
    "video_head": "video_head",
    "sensor_encoder": "sensor_encoder",
    "video_temporal_head": "video_head",
    "sensor_temporal_encoder": "sensor_encoder",
    "clusterer": "clusterer",
    "aligner": "aligner",
    "loss": "loss",
    "evaluators": "evaluator",
}
# Slots whose embeddings meet in a loss (and in retrieval): their declared sizes must be equal.
EMBEDDING_PAIRS: tuple[tuple[str, str], ...] = (
    ("video_head", "sensor_encoder"),
    ("video_temporal_head", "sensor_temporal_encoder"),
)
MAX_WINDOW_SECONDS = 600.0


class StrictModel(BaseModel):
    """Unknown keys are errors; floats must be finite (inf or NaN would only fail mid-training)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSpec(StrictModel):
    """How samples are cut and batched; `dataset` picks the registered dataset."""

    dataset: Any
    window_seconds: float = Field(2.0, gt=0, le=MAX_WINDOW_SECONDS, description="Sliding-window length in seconds.")
    # A stride far below a sensor sample would only multiply the windows (and the memory they take).
    stride_seconds: float = Field(1.0, ge=0.01, le=MAX_WINDOW_SECONDS, description="Sliding-window stride in seconds.")
    frames: int = Field(8, ge=2, le=256, description="Video frames sampled uniformly per window.")
    frame_size: int = Field(64, ge=16, le=1024, description="Square frame side in pixels.")
    sensor_length: int = Field(128, ge=8, le=MAX_SENSOR_LENGTH, description="Sensor steps per window after resampling.")
    batch_size: int = Field(
        32, ge=2, le=MAX_BATCH_SIZE, description="Training batch size (contrastive losses need >= 2)."
    )
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers (does not change results).")


class ModelSpec(StrictModel):
    """The encoders: a video backbone, a video head on its maps, a sensor encoder; decomposed methods
    add a temporal video head and a temporal sensor encoder (both or neither), and may add a clusterer."""

    video_backbone: Any
    video_head: Any
    sensor_encoder: Any
    video_temporal_head: Any = None
    sensor_temporal_encoder: Any = None
    clusterer: Any = None

    @model_validator(mode="after")
    def _temporal_pair(self) -> ModelSpec:
        if (self.video_temporal_head is None) != (self.sensor_temporal_encoder is None):
            raise ValueError("video_temporal_head and sensor_temporal_encoder go together: set both or neither")
        return self


class OptimizerSpec(StrictModel):
    """AdamW settings of one stage."""

    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm (off if null).")
    warmup_fraction: float = Field(
        0.0, ge=0, lt=1, description="Linear learning-rate warm-up over this fraction of the stage's steps."
    )


class StageSpec(StrictModel):
    """One training stage: its aligner (what is trained and how), loss, epochs and optimizer."""

    name: str = Field(pattern=_NAME, description="Stage name (unique within the spec).")
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description="Epochs of this stage.")
    aligner: Any
    loss: Any = None
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    init_from: str | None = Field(
        None,
        description="A run directory whose checkpoints/stage_<name>.pt supplies this stage's end state "
        "instead of training it (e.g. reuse stage 1 across stage-2 ablations).",
    )


class EvalSpec(StrictModel):
    """Downstream evaluation on the frozen encoders."""

    evaluators: list[Any] = Field(default_factory=list, description="Evaluators run after training.")
    checkpoint: Literal["best", "last"] = Field("best", description="Which checkpoint is evaluated.")
    split: Literal["test", "val"] = Field(
        "test",
        description="The split the evaluators score, each fitted on the train split: test (the reported "
        "numbers) or val (the validation subjects: for choosing hyperparameters without seeing the test ones).",
    )


class RuntimeSpec(StrictModel):
    """Where, in what precision and how verbosely to run. `sync_batchnorm` and `precision` change results
    (they enter the uid)."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto, cpu, cuda[:N].")
    progress: Literal["auto", "on", "off"] = Field("auto", description="tqdm bars (auto: only on a TTY).")
    tensorboard: bool = Field(
        False,
        description="Write TensorBoard scalars to RUN_DIR/tensorboard (needs the extra: pip install "
        "'detach-framework[tensorboard]'; training refuses to start without it). metrics.jsonl has them all anyway.",
    )
    log_every: int = Field(10, ge=1, le=1_000_000, description="Log training scalars every N steps.")
    threads: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto",
        description="Intra-op CPU threads of each training process (auto: the usable cores, shared among the "
        "torchrun processes of a node, less one per DataLoader worker; at least 1). Recorded in env.json.",
    )
    sync_batchnorm: bool = Field(
        False, description="Under torchrun, synchronise batch-norm statistics across processes (SyncBatchNorm)."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Forward passes in float32, or under autocast in bfloat16 / float16 (fp16: CUDA only, with "
        "loss scaling); similarities, softmax and losses always compute in float32.",
    )

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class CacheSpec(StrictModel):
    """LMDB cache of frozen computation (detach_framework/cache): a frozen backbone's per-frame maps and,
    optionally, decoded frames, built on first use under `dir`.

    In the run uid: `mode` and `features_dtype`, because features stored as float16 differ from recomputed
    float32 maps by float16 rounding, so a cached run's losses differ slightly (about 1e-3 relative) from an
    uncached one. Not in it: `dir` (a location), `frames` (uint8 frames are stored exactly) and `build_workers`
    (who renders a sample does not change it).
    """

    mode: Literal["auto", "off"] = Field(
        "auto",
        description="auto: read a frozen backbone's features (and frames, see `frames`) from the cache; off: never.",
    )
    dir: str = Field(".detach_cache", description="Directory holding the caches (one LMDB store per cache uid).")
    frames: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Cache decoded, resized frames. auto: only when features are cached and a temporal head reads "
        "frames; on: also for a trainable backbone.",
    )
    features_dtype: Literal["float16", "float32"] = Field(
        "float16", description="Storage dtype of cached features (restored to float32 by the model)."
    )
    build_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes rendering or decoding the samples while a cache is built (a "
        "frozen backbone still runs in the main process). auto: data.num_workers when set, else the CPUs this "
        "process may use, at most 4. The stored samples are the same for every value.",
    )

    @field_validator("mode", "frames", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Experiment(StrictModel):
    """A whole experiment: data, model, training stages, evaluation, runtime."""

    name: str = Field("experiment", pattern=_NAME, description="Run name (first level of runs/).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for python, numpy, torch and the data loaders.")
    deterministic: bool = Field(False, description="Use deterministic torch algorithms.")
    data: DataSpec
    model: ModelSpec
    stages: list[StageSpec] = Field(description="Training stages in order; [] evaluates the untrained model.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageSpec]) -> list[StageSpec]:
        names = [s.name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(dupes)}")
        return stages

    @property
    def uid(self) -> str:
        return spec_uid(self)


# Paths (model_dump keys) that never change results: excluded from the uid hash.
UID_EXCLUDE: dict[str, Any] = {
    "name": True,
    # sync_batchnorm and precision change results; the thread count at most the float rounding
    "runtime": {"device", "progress", "tensorboard", "log_every", "threads"},
    "data": {"num_workers"},
    "cache": {"dir", "frames", "build_workers"},
    # Evaluation reads the trained weights and never changes them, so `detach eval` and a study may vary it on
    # one trained run. `eval.checkpoint` only picks which checkpoint is read: training writes best.pt and last.pt
    # either way.
    "eval": True,
}
# Fields added after uids were published, left out of the hash while at their default so that a spec not
# setting them keeps its uid (and its run directory, checkpoints and resume).
UID_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("runtime", "precision"): "fp32",
    ("model", "video_temporal_head", "segments"): 1,
    ("model", "sensor_temporal_encoder", "segments"): 1,
    ("model", "video_backbone", "resize"): False,  # the timm backbone's
    ("data", "dataset", "layout"): None,  # the synthetic kitchen's: its original 7 fixtures
}


def spec_uid(spec: BaseModel) -> str:
    """Readable summary of the chosen components + a short hash of every result-changing setting."""
    payload = spec.model_dump(mode="json", exclude=UID_EXCLUDE)
    for (*parents, key), default in UID_NEUTRAL_DEFAULTS.items():
        section = payload
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and key in section and section[key] == default:
            del section[key]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    parts = [spec.data.dataset.name, spec.model.video_backbone.name, spec.model.sensor_encoder.name]
    parts += [stage.aligner.name for stage in spec.stages]
    return "-".join(dict.fromkeys(parts)) + "-" + digest


def eval_uid(spec: Experiment) -> str:
    """Short hash of the resolved eval section: names a re-evaluation's directory (RUN_DIR/eval/<eval-uid>/)."""
    payload = spec.eval.model_dump(mode="json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _slot_union(registry: Registry, kind: str) -> Any:
    members = []
    for component in registry.components(kind):
        members.append(
            create_model(
                f"{_camel(kind)}_{component.name}",
                __base__=component.params,
                __doc__=component.description or None,
                name=(Literal[component.name], Field(description=f"{kind} component")),
            )
        )
    if not members:  # nothing registered: a tag nothing can match, so errors list "(none)"
        members.append(create_model(f"{_camel(kind)}_none", __base__=StrictModel, name=(Literal[""], ...)))
    return Annotated[Union[tuple(members)], Field(discriminator="name")]  # noqa: UP007


def _optional(slot: Any) -> Any:
    return Optional[slot]  # noqa: UP045 - the slot is built at run time


def _camel(kind: str) -> str:
    return "".join(part.title() for part in kind.split("_"))


def _embeddings_meet(registry: Registry) -> Any:
    """A ModelSpec validator: paired video and sensor embeddings of different declared sizes (registry.add's
    `embedding_field`) are refused here, naming both fields, instead of by a matmul in the loss."""

    def check(model: ModelSpec) -> ModelSpec:
        for pair in EMBEDDING_PAIRS:
            declared = []
            for slot in pair:
                entry = getattr(model, slot)
                field = None if entry is None else registry.get(SLOT_KINDS[slot], entry.name).embedding_field
                if field is None:
                    break  # an undeclared size is left to the aligners and the model's output checks
                declared.append((f"{slot}.{field}", getattr(entry, field)))
            else:
                (video, video_dim), (sensor, sensor_dim) = declared
                if video_dim != sensor_dim:
                    raise ValueError(
                        f"{video} is {video_dim} but {sensor} is {sensor_dim}: the video and sensor embeddings "
                        "meet in the loss and in retrieval, so their sizes must be equal"
                    )
        return model

    return model_validator(mode="after")(check)


def build_spec_model(registry: Registry) -> type[Experiment]:
    """The Experiment model whose slots accept exactly the registered components."""
    slot = {kind: _slot_union(registry, kind) for kind in set(SLOT_KINDS.values())}
    data = create_model("DataSpec", __base__=DataSpec, dataset=(slot["dataset"], ...))
    model = create_model(
        "ModelSpec",
        __base__=ModelSpec,
        __validators__={"_embeddings_meet": _embeddings_meet(registry)},
        video_backbone=(slot["video_backbone"], ...),
        video_head=(slot["video_head"], ...),
        sensor_encoder=(slot["sensor_encoder"], ...),
        video_temporal_head=(_optional(slot["video_head"]), None),
        sensor_temporal_encoder=(_optional(slot["sensor_encoder"]), None),
        clusterer=(_optional(slot["clusterer"]), None),
    )
    stage = create_model(
        "StageSpec",
        __base__=StageSpec,
        aligner=(slot["aligner"], ...),
        loss=(_optional(slot["loss"]), None),
    )
    evaluator_slot = slot["evaluator"]
    evaluation = create_model(
        "EvalSpec",
        __base__=EvalSpec,
        evaluators=(
            list[evaluator_slot],  # type: ignore[valid-type]
            Field(default_factory=list, description="Evaluators run after training."),
        ),
    )
    return create_model(
        "Experiment",
        __base__=Experiment,
        data=(data, ...),
        model=(model, ...),
        stages=(list[stage], Field(description="Training stages in order; [] evaluates the untrained model.")),
        eval=(evaluation, Field(default_factory=evaluation)),
    )


def json_schema(registry: Registry) -> dict[str, Any]:
    schema = build_spec_model(registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "detach-framework experiment spec"
    # `base:` is resolved before validation (see `read_spec_file`), so the model has no such field; a spec naming a
    # base may leave out what the base provides.
    schema["properties"] = {"base": BASE_SCHEMA, **schema["properties"]}
    schema["if"] = {"required": ["base"]}
    schema["else"] = {"required": schema.pop("required")}
    return schema


# ----------------------------------------------------------------------------------------------
# Loading and overrides


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a repeated mapping key at any depth (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping whose keys the explicit ones may override
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {str(key)[:60]!r} (first on line {earlier.start_mark.line + 1})",
                    problem_mark=key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A spec or study file as a dict; every problem (bad YAML, a duplicate key, not UTF-8) is one UserError line."""
    path = Path(path)
    if not _is_file(path, "spec file"):
        raise UserError(f"spec file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SpecLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}:{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of spec keys at the top level, got {type(data).__name__}")
    return data


def _is_file(path: Path, what: str) -> bool:
    """Path.is_file, with the errors it lets through (a name longer than the file system allows) as one line."""
    try:
        return path.is_file()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:100]}..."
        raise UserError(f"{what}: {shown!r}: {getattr(exc, 'strerror', None) or exc}") from None


BASE_KEY = "base"
BASE_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "description": "Another spec file (relative to this one) that this spec starts from: mappings are merged key by "
    "key, lists and values replaced; a component slot naming another component replaces the base's slot. One level: "
    "the base may not name a base itself.",
}


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """A spec file as a dict, with its `base:` (if any) merged under it: one level of inheritance."""
    path = Path(path)
    data = read_yaml(path)
    if BASE_KEY not in data:
        return data
    base_path = _base_path(path, data.pop(BASE_KEY))
    if base_path == path.resolve():
        raise UserError(f"{path}: base: {base_path.name} is this file itself")
    if not _is_file(base_path, f"{path}: base"):
        raise UserError(f"{path}: base: {base_path} not found")
    base = read_yaml(base_path)
    if BASE_KEY in base:
        grand = _base_path(base_path, base[BASE_KEY])
        if grand == path.resolve():
            raise UserError(f"{path}: base: {base_path} names this file as its base (a cycle)")
        raise UserError(
            f"{path}: base: {base_path} names a base itself ({base[BASE_KEY]}); one level of inheritance only: "
            "merge the two into one base"
        )
    return merge_spec(base, data)


def _base_path(spec_file: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{spec_file}: base: expected the path of a spec file, got {value!r}")
    try:
        return (spec_file.parent / value).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a link loop
        raise UserError(f"{spec_file}: base: {value[:100]!r} is not a usable path ({exc})") from None


def merge_spec(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge key by key, anything else (lists included) is replaced. A component slot
    naming another component is replaced whole, since the base component's params would not fit it."""
    merged = dict(base)
    for key, value in child.items():
        below = merged.get(key)
        swapped = key in SLOT_KINDS and isinstance(below, dict) and isinstance(value, dict)
        swapped = swapped and below.get("name") != value.get("name", below.get("name"))
        if isinstance(below, dict) and isinstance(value, dict) and not swapped:
            merged[key] = merge_spec(below, value)
        else:
            merged[key] = value
    return merged


_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|\d+))*$")


def parse_override(override: str) -> tuple[list[str], Any]:
    """`key.path=value` -> (the path's parts, the value parsed as YAML)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_KEY.match(key):
        raise UserError(f"override '{override}': expected key.path=value (e.g. stages.0.epochs=3)")
    try:
        value = yaml.load(raw, Loader=SpecLoader) if raw.strip() else ""  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError):
        value = raw  # not valid YAML: take it as a plain string, validation decides
    return key.split("."), value


def check_eval_overrides(overrides: Sequence[str]) -> None:
    """Refuse, naming it, an override outside `eval`: only evaluation can change on a trained run."""
    for override in overrides:
        parts, _ = parse_override(override)
        if parts[0] != "eval":
            raise UserError(
                f"override '{override}': {'.'.join(parts)} is not an eval.* key; only eval.* can change without "
                "retraining (train a new run for the rest)"
            )


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML; digits index lists) to a raw spec dict."""
    apply_overrides(data, [override])


def apply_overrides(
    data: dict[str, Any],
    overrides: Sequence[str],
    note: Callable[[str], None] | None = None,
    registry: Registry | None = None,
) -> None:
    """Apply `key.path=value` overrides in order.

    Setting a component slot's `name` to another component starts the slot from that component's defaults
    (the old component's params would only be refused as unknown keys): the dropped keys go to `note` as one
    line, and a key that another override of the same command line sets, before or after the swap, is kept.
    With a `registry`, only a registered name switches; an unknown one is left for validation to report.
    """
    parsed = [parse_override(override) for override in overrides]
    for index, (parts, value) in enumerate(parsed):
        kind, path = _component_kind(parts), parts[:-1]
        slot = _existing(data, path) if kind else None
        switching = isinstance(slot, dict) and slot.get("name", value) != value
        if switching and (registry is None or value in registry.names(kind)):
            others = [other for position, (other, _) in enumerate(parsed) if position != index]
            given = {other[len(path)] for other in others if len(other) > len(path) and other[: len(path)] == path}
            dropped = [key for key in slot if key != "name" and key not in given]
            for key in dropped:
                del slot[key]
            if dropped and note is not None:
                listed = ", ".join(map(str, dropped))
                note(f"{'.'.join(path)}: switching {slot['name']} -> {value} dropped {listed}")
        _assign(data, parts, value)


def _component_kind(parts: list[str]) -> str | None:
    """The component kind whose tag `parts` sets (`model.video_backbone.name`, `eval.evaluators.0.name`), or None
    for every other path, a stage's or the run's own `name` included."""
    if parts[-1] != "name" or len(parts) < 2:
        return None
    slot = parts[-3] if parts[-2].isdigit() and len(parts) >= 3 else parts[-2]
    return SLOT_KINDS.get(slot)


def _existing(data: dict[str, Any], path: list[str]) -> Any:
    """The value at `path`, or None where the path does not (yet) exist."""
    node: Any = data
    for part in path:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _assign(data: dict[str, Any], parts: list[str], value: Any) -> None:
    key = ".".join(parts)
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise UserError(f"override '{key}': '{here}' indexes a list, expected an integer index")
            index = int(part)
            if index >= len(node):
                raise UserError(f"override '{key}': index {index} out of range at '{here}' (length {len(node)})")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:  # an absent or null slot (`clusterer: null`) is filled from scratch
                    node[part] = {}
                node = node[part]
        else:
            parent = ".".join(parts[:depth])
            raise UserError(f"override '{key}': '{parent}' is a {type(node).__name__}, it has no key '{part}'")


def print_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_spec(
    source: str | Path | dict[str, Any],
    registry: Registry,
    overrides: list[str] | tuple[str, ...] = (),
    note: Callable[[str], None] | None = print_note,
) -> Experiment:
    """Read (if a path, with its `base:`), override, and validate a spec; user errors become one-line UserErrors.

    What a component swap dropped (see `apply_overrides`) goes to `note` (stderr unless told otherwise) once the
    spec is valid; when it is not, it ends the error line instead, since it often explains the error.
    """
    label = str(source) if not isinstance(source, dict) else "<spec>"
    data = read_spec_file(source) if not isinstance(source, dict) else json.loads(json.dumps(source))
    if isinstance(source, dict) and BASE_KEY in data:
        raise UserError(f"<spec>: base: {data[BASE_KEY]!r}: only a spec file may name a base (relative to the file)")
    notes: list[str] = []
    apply_overrides(data, overrides, notes.append, registry)
    model = build_spec_model(registry)
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        after = f" (note: {'; '.join(notes)})" if notes else ""
        raise UserError(f"{label}: " + format_validation_error(exc, model, registry) + after) from None
    for line in notes if note is not None else ():
        note(line)
    return spec


def dump_spec(spec: Experiment, schema_ref: str | None = None) -> str:
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    return (SCHEMA_HEADER.format(schema=schema_ref) if schema_ref else "") + text


# ----------------------------------------------------------------------------------------------
# Error messages: dotted path, bad value, the choices and the closest one


def format_validation_error(exc: ValidationError, model: type[BaseModel], registry: Registry) -> str:
    errors = exc.errors(include_url=False)
    messages = [_format_one(err, model, registry) for err in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return " | ".join(messages) + more


def first_error_line(exc: ValidationError, top: str = "<top>") -> str:
    """`dotted.path: message` of the first error (`top` for the path of the input as a whole): for a file whose
    model has no component slots (a study, an export manifest), where format_validation_error is not needed."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or top
    return f"{where}: {first['msg']}"


def _format_one(err: dict[str, Any], model: type[BaseModel], registry: Registry) -> str:
    loc = tuple(err["loc"])
    path, owner = _resolve(model, loc)
    kind_of_error = err["type"]
    if kind_of_error in {"union_tag_invalid", "union_tag_not_found"}:
        kind = _slot_kind(loc)
        choices = registry.names(kind) if kind else []
        failed = getattr(registry, "failed_plugins", [])
        failed_txt = f"; failed to load: {', '.join(failed)}" if failed else ""
        if kind_of_error == "union_tag_not_found":
            installed = ", ".join(choices)
            return f"{path}.name: missing; expected one of the installed {kind}s: {installed}{failed_txt}"
        tag = err["ctx"]["tag"]
        return (
            f"{path}.name: unknown {kind} '{tag}';{did_you_mean(tag, choices)} "
            f"installed: {', '.join(choices) or '(none)'}{failed_txt}"
        )
    if kind_of_error == "extra_forbidden":
        allowed = sorted(owner.model_fields) if owner is not None else []
        key = str(loc[-1])
        return f"{path}: unknown key '{key}';{did_you_mean(key, allowed)} allowed keys: {', '.join(allowed)}"
    if kind_of_error == "missing":
        return f"{path}: required field missing"
    value = err.get("input")
    if kind_of_error == "value_error" and isinstance(value, dict):  # a model's own check across its fields
        return f"{path}: {err['ctx']['error']}"
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{path}: {err['msg']} (got {shown})"


def _slot_kind(loc: tuple[Any, ...]) -> str | None:
    for element in reversed(loc):
        if isinstance(element, str) and element in SLOT_KINDS:
            return SLOT_KINDS[element]
    return None


def _resolve(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """Dotted user-facing path of `loc` (without union tags) and the model owning its last key."""
    shown: list[str] = []
    current: Any = model
    owner: type[BaseModel] | None = None
    for element in loc:
        current = _optional_model(_strip_annotated(current))
        if isinstance(current, type) and issubclass(current, BaseModel):
            if _union_member(Union[current, None], element) is current:  # noqa: UP007 - a one-member slot
                continue  # the discriminator tag: not part of the user's path
            owner = current
            field = current.model_fields.get(str(element))
            shown.append(str(element))
            current = field.annotation if field is not None else None
            continue
        origin = get_origin(current)
        if origin is list and isinstance(element, int):
            shown.append(str(element))
            current = get_args(current)[0]
        elif origin in UNIONS:
            member = _union_member(current, element) or _tagged_member(current, element)
            if member is not None:  # element is the discriminator tag: not part of the user's path
                current = member
            else:
                shown.append(str(element))
                current = None
        else:
            shown.append(str(element))
            current = None
    current = _strip_annotated(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        owner = current
    return ".".join(shown) or "<top>", owner


UNIONS = (Union, UnionType)  # Union[A, B] and A | B


def _optional_model(tp: Any) -> Any:
    """The model of an optional model field (`layout: Model | None`), whose errors name the model's fields."""
    if get_origin(tp) in UNIONS:
        rest = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(rest) == 1 and isinstance(rest[0], type) and issubclass(rest[0], BaseModel):
            return rest[0]
    return tp


def _tagged_member(union: Any, tag: Any) -> Any:
    """The member of a union told apart by a callable Discriminator that carries Tag(tag), or None."""
    for member in get_args(union):
        if get_origin(member) is Annotated and any(isinstance(m, Tag) and m.tag == tag for m in get_args(member)[1:]):
            return member
    return None


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_member(union: Any, tag: Any) -> type[BaseModel] | None:
    for member in get_args(union):
        member = _strip_annotated(member)
        if get_origin(member) is Union:  # an optional slot: Optional[the slot's tagged union]
            found = _union_member(member, tag)
            if found is not None:
                return found
        elif isinstance(member, type) and issubclass(member, BaseModel) and "name" in member.model_fields:
            if get_args(member.model_fields["name"].annotation) == (tag,):
                return member
    return None
