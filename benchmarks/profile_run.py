"""Where one `detach train` run's time goes, as shares of its wall time.

    .venv/bin/python benchmarks/profile_run.py examples/quickstart.yaml data.dataset.preset=benchmark
    .venv/bin/python benchmarks/profile_run.py SPEC [k=v ...] [--run-dir DIR] [--json OUT]

The run is the CLI's own (`detach train SPEC --run-dir DIR`) in this process, timed from outside by hooks:
module forward hooks on each model slot, backward pre-hooks on the slots' outputs and post-accumulate hooks
on their parameters, the global optimizer-step hooks, and wrappers around the data loader's iterator, the
cache reader, collation, the aligners' lifecycle methods, checkpoint writes and evaluation. Rows are
exclusive where they nest (a slot's forward inside an aligner's forward is not counted twice); the last row
is what no row claims (Python glue, logging, the progress bar, validation bookkeeping).

Per-slot backward times are intervals: from the moment a slot's output gradient is ready to the moment its
last parameter's gradient is accumulated. Branches that autograd interleaves can overlap, so their sum may
differ from the measured total backward (the total is exact).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as optimizer_hooks

if importlib.util.find_spec("detach_framework") is None:  # not installed: use the checkout this script is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detach_framework import cli  # noqa: E402
from detach_framework.cache import dataset as cache_dataset  # noqa: E402
from detach_framework.engine import evaluate, model, session, trainer  # noqa: E402
from detach_framework.plugins import load_plugins  # noqa: E402

SLOTS = ("video_backbone", "video_head", "sensor_encoder", "video_temporal_head", "sensor_temporal_encoder")
LIFECYCLE = ("on_stage_start", "on_epoch_start", "after_optimizer_step", "on_epoch_end")


class Clock:
    """Exclusive seconds per row: time spent in a nested row is taken off the row around it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [row, started, time taken by nested rows]
        self.phase = "setup"

    @contextlib.contextmanager
    def row(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def start(self, name: str) -> None:
        self.stack.append([name, time.perf_counter(), 0.0])

    def stop(self) -> None:
        name, started, nested = self.stack.pop()
        spent = time.perf_counter() - started
        self.seconds[name] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent

    def wrap(self, owner: Any, attribute: str, name: str | Callable[[], str]) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.row(name() if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


class Backward:
    """Per-slot backward intervals (see the module docstring) and the exact total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.open: dict[str, list[float]] = {}

    def output_ready(self, slot: str) -> None:
        self.open.setdefault(slot, [time.perf_counter(), time.perf_counter()])

    def param_done(self, slot: str) -> None:
        if slot in self.open:
            self.open[slot][1] = time.perf_counter()

    def close_step(self) -> None:
        for slot, (start, end) in self.open.items():
            self.seconds[slot] += max(end - start, 0.0)
        self.open.clear()


def instrument(clock: Clock, backward: Backward) -> None:
    phase_row = lambda what: lambda: f"{clock.phase}: {what}"  # noqa: E731

    # Data: the loader's iterator (sampling, rendering or reading, collation), split into its parts.
    clock.wrap(torch.utils.data.dataloader._BaseDataLoaderIter, "__next__", phase_row("data: other"))
    clock.wrap(torch.utils.data._utils.collate, "default_collate", phase_row("data: collate"))
    clock.wrap(cache_dataset.CachedSplit, "__getitem__", phase_row("data: cache read"))
    build_source = session.build_source
    wrapped: set[type] = set()

    def source_with_timed_windows(*args: Any, **kwargs: Any) -> Any:
        source = build_source(*args, **kwargs)
        split_type = type(source.split("train"))  # whatever the dataset serves: rendered or read windows
        if split_type not in wrapped:
            wrapped.add(split_type)
            clock.wrap(split_type, "__getitem__", phase_row("data: render / read a window"))
        return source

    session.build_source = source_with_timed_windows

    # Model slots: forward hooks attached as the model is built; backward via hooks on outputs and params.
    built = model.AlignmentModel.__init__

    def init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        built(self, *args, **kwargs)
        for slot in SLOTS:
            part = getattr(self, slot, None)
            if isinstance(part, nn.Module):
                attach(part, slot)

    def attach(part: nn.Module, slot: str) -> None:
        def pre(module: nn.Module, args: Any) -> None:
            # deepcopy copies hooks: the aligners' momentum copies of a slot land in their own row
            clock.start(f"{clock.phase}: forward {slot}" + ("" if module is part else " (momentum copy)"))

        def post(module: nn.Module, args: Any, output: Any) -> Any:
            clock.stop()
            if module is part and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: backward.output_ready(slot) or grad)
            return None

        part.register_forward_pre_hook(pre)
        part.register_forward_hook(post)
        for parameter in part.parameters():
            parameter.register_post_accumulate_grad_hook(lambda p: backward.param_done(slot))

    model.AlignmentModel.__init__ = init

    original_backward = torch.Tensor.backward

    def timed_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        with clock.row(f"{clock.phase}: backward (total)"):
            original_backward(self, *args, **kwargs)
        backward.close_step()

    torch.Tensor.backward = timed_backward

    optimizer_hooks.register_optimizer_step_pre_hook(lambda *a: clock.start(f"{clock.phase}: optimizer step"))
    optimizer_hooks.register_optimizer_step_post_hook(lambda *a: clock.stop())

    # Aligners: their forward (losses, W, ODC assignment) and lifecycle (bank, centroids, k-means, EMA).
    registry = load_plugins().registry
    for component in registry.components("aligner"):
        cls = component.factory if isinstance(component.factory, type) else None
        if cls is None:
            continue
        clock.wrap(cls, "forward", phase_row(f"aligner {component.name}: forward (loss, W, assignment)"))
        for hook in LIFECYCLE:
            if hook in vars(cls):
                clock.wrap(cls, hook, phase_row(f"aligner {component.name}: {hook}"))

    clock.wrap(trainer, "save_checkpoint", "checkpoints")
    clock.wrap(session.Session, "from_spec", "setup: dataset, model, cache (other)")
    clock.wrap(trainer.Trainer, "__init__", "setup: dataset, model, cache (other)")
    clock.wrap(evaluate, "embed_split", "evaluation: encode splits (other)")

    fit = trainer.Trainer.fit

    def timed_fit(self: Any, *args: Any, **kwargs: Any) -> None:
        clock.phase = "train"
        try:
            return fit(self, *args, **kwargs)
        finally:
            clock.phase = "evaluation"

    trainer.Trainer.fit = timed_fit
    clock.wrap(evaluate, "evaluate_run", "evaluation: evaluators (probe fit, retrieval, ...)")


def _evaluation_rows(seconds: dict[str, float]) -> dict[str, float]:
    """Inside evaluation, data and forward rows are part of encoding the splits: fold them together."""
    out: dict[str, float] = defaultdict(float)
    for name, value in seconds.items():
        if name.startswith("evaluation: ") and ("data:" in name or "forward" in name or "encode" in name):
            name = "evaluation: encode splits (forward + data)"
        elif name.startswith("evaluation: ") and ("backward" in name or "optimizer" in name):
            name = "evaluation: evaluators (probe fit, retrieval, ...)"  # the probe's own training steps
        out[name] += value
    return out


def profile(spec: str, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    clock, backward = Clock(), Backward()
    instrument(clock, backward)
    started = time.perf_counter()
    code = cli.main(["train", spec, *overrides, "--run-dir", str(run_dir)])
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"detach train exited with {code}")
    rows = _evaluation_rows(clock.seconds)
    rows["(not in any row: glue, logging, validation bookkeeping)"] = wall - sum(rows.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "spec": spec,
        "overrides": overrides,
        "wall_s": wall,
        "rows": dict(sorted(rows.items(), key=lambda kv: -kv[1])),
        "backward_by_slot_s": dict(backward.seconds),
        "metrics": summary.get("metrics", {}),
        "threads": torch.get_num_threads(),
    }


def format_table(result: dict[str, Any]) -> str:
    wall = result["wall_s"]
    lines = [
        f"{result['spec']} {' '.join(result['overrides'])}: wall {wall:.1f} s, {result['threads']} threads",
        "",
        "| where | seconds | share |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value:.2f} | {value / wall:.1%} |" for name, value in result["rows"].items()]
    if result["backward_by_slot_s"]:
        lines += ["", "backward by slot (intervals, see the docstring):"]
        lines += [f"  {slot}: {value:.2f} s" for slot, value in sorted(result["backward_by_slot_s"].items())]
    metrics = result["metrics"]
    if metrics:
        lines += ["", "metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    parser.add_argument("--run-dir", type=Path, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="detach-profile-") as tmp:
        result = profile(args.spec, args.overrides, args.run_dir or Path(tmp) / "run")
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
