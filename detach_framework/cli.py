"""The `detach` command line. User mistakes: one line on stderr, exit code 2 (`--debug`: traceback)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from detach_framework.engine.interrupts import stop_on_signals
from detach_framework.errors import UserError

DEFAULT_SCHEMA = Path("schemas") / "experiment.schema.json"


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Accepted before or after the command; SUPPRESS keeps a subcommand from resetting the main value.
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--debug", action="store_true", default=default(False), help="show full tracebacks")
    parser.add_argument(
        "--plugin",
        action="append",
        default=default(None),
        metavar="MODULE",
        help="also load this plugin module (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detach", description=__doc__)
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, suppress=True)
        return p

    command("plugins", "list plugins, their distributions and load failures")
    p = command("components", "list registered components (of one kind), or one component's params")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?", help="show this component's params: type, default, description")
    p = command("validate", "validate a spec (with overrides) and print its uid")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--print", action="store_true", help="print the resolved spec (YAML, as the run's spec.yaml)")
    p = command("schema", "write the JSON Schemas of spec files and (beside it, study.schema.json) of study files")
    p.add_argument("--out", type=Path, default=DEFAULT_SCHEMA)
    p = command("train", "train a spec into a run directory, then evaluate it")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--run-dir", type=Path, help="default: runs/<name>/<uid>")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty run directory")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node: relaunches under torchrun")
    p = command("ablate", "run a study: variants x seeds of a base spec, then study.csv / study.md / study.png")
    p.add_argument("study")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time: local processes (each with its share of the CPU threads, and its own GPU when "
        "several are visible), or submitit jobs queued or running",
    )
    p.add_argument("--out", type=Path, help="default: runs/studies/<study name>")
    p.add_argument("--seeds", help="comma-separated subset of the study's seeds to run now (tables use all)")
    p.add_argument("--dry-run", action="store_true", help="list the runs it would start and skip; start none")
    p.add_argument(
        "--executor",
        choices=("local", "submitit"),
        default="local",
        help="where runs execute: subprocesses here, or one SLURM job each through submitit (the slurm extra)",
    )
    p.add_argument("--slurm-partition", help="submitit: the partition of every run's job (default: the cluster's)")
    p.add_argument("--slurm-time", type=int, metavar="MINUTES", help="submitit: time limit per run (default 1440)")
    p.add_argument("--slurm-cpus", type=int, help="submitit: CPUs per run, also its thread count")
    p.add_argument("--slurm-gpus", type=int, help="submitit: GPUs per run (default: the cluster's)")
    p.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit: any other sbatch option of every job, e.g. account=mylab or mem=32G (repeatable)",
    )
    p = command(
        "eval",
        "evaluate a run directory again: rewrite its summary.json, or with eval.* overrides write "
        "RUN_DIR/eval/<eval-uid>/ (no retraining)",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("overrides", nargs="*", metavar="eval.key=value")
    p = command("export", "write a run's sensor encoder, preprocessing and probe to a directory (safetensors + JSON)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the export directory (an existing export is replaced)")
    p = command("predict", "per-window class probabilities of one recording from an export directory, as CSV")
    p.add_argument("export_dir", type=Path)
    p.add_argument("input", type=Path, help="a recording in a registered dataset's format, or a CSV of channels")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.add_argument("--format", default="auto", help="auto (.csv: CSV, else the export's dataset), csv, or a dataset")
    p = command("report", "write report.html (figures, tables) for a run directory or a study directory")
    p.add_argument("path", type=Path)
    p = command("cache", "build, inspect, verify or clear the LMDB feature cache of a spec")
    p.add_argument("action", choices=("build", "info", "verify", "clear"))
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--all", action="store_true", help="clear: every cache under the spec's cache.dir")
    data = command("data", "data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the synthetic kitchen to a directory")
    _common(synth, suppress=True)
    synth.add_argument("--preset", default="quickstart")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=42)
    synth.add_argument("--format", default="native", help="native, or opportunity_pp (the Opportunity++ layout)")
    fixture = data_sub.add_parser("fixture", help="write a tiny dataset in a real dataset's format, with truth.json")
    _common(fixture, suppress=True)
    fixture.add_argument("dataset")
    fixture.add_argument("--out", type=Path, required=True)
    fixture.add_argument("--seed", type=int, default=0)
    inspect = data_sub.add_parser("inspect", help="summarise a dataset root: runs, NaN, labels, video, clock offset")
    _common(inspect, suppress=True)
    inspect.add_argument("root", type=Path)
    inspect.add_argument("--dataset", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # Overrides may follow options (`train SPEC --resume k=v`): argparse leaves those as extras.
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(x for x in extra if x not in overrides) or ' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    try:
        with stop_on_signals():  # SIGINT/SIGTERM: finish the checkpoint being written, then exit 130/143
            return COMMANDS[args.command](args) or 0
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).splitlines())
        print(f"detach {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        hint = "; rerun with --resume to continue from the last checkpoint" if args.command == "train" else ""
        print(f"detach {args.command}: {str(exc) or 'interrupted'}{hint}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


def _host(args: argparse.Namespace):
    from detach_framework.plugins import load_plugins

    return load_plugins(args.plugin or [], debug=args.debug)


def cmd_plugins(args: argparse.Namespace) -> int:
    host = _host(args)
    rows = [
        (p.name, p.distribution or "-", p.status, p.error if p.error else f"{p.components} components")
        for p in host.plugins
    ]
    _print_table(("plugin", "distribution", "status", "detail"), rows)
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    from detach_framework.registry import describe_params

    host = _host(args)
    if args.name is not None:
        component = host.registry.get(args.kind, args.name)
        print(f"{component.kind} '{component.name}' from {component.origin}: {component.description or '-'}")
        _print_table(("param", "type", "default", "description"), describe_params(component.params))
        return 0
    components = host.registry.components(args.kind)
    rows = [(c.kind, c.name, c.plugin, c.description) for c in components]
    _print_table(("kind", "name", "plugin", "description"), rows)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from detach_framework.spec import dump_spec, load_spec

    spec = load_spec(args.spec, _host(args).registry, args.overrides)
    if args.print:  # the YAML alone on stdout, so that it can be redirected into a spec file
        print(dump_spec(spec), end="")
    print(f"ok: {args.spec} is valid; uid {spec.uid}", file=sys.stderr if args.print else sys.stdout)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from detach_framework.atomic import atomic_write_text
    from detach_framework.engine.study import STUDY_SCHEMA_FILE, study_json_schema
    from detach_framework.spec import json_schema

    study_out = args.out.with_name(STUDY_SCHEMA_FILE)
    if study_out == args.out:
        raise UserError(f"--out {args.out}: that name is the study schema's, written beside the spec schema")
    for path, schema in ((args.out, json_schema(_host(args).registry)), (study_out, study_json_schema())):
        atomic_write_text(path, json.dumps(schema, indent=2) + "\n")
    print(f"wrote {args.out} and {study_out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detach_framework.engine.evaluate import format_summary
    from detach_framework.engine.run import train_and_evaluate
    from detach_framework.spec import load_spec

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(args)
    host = _host(args)
    spec = load_spec(args.spec, host.registry, args.overrides)
    result = train_and_evaluate(spec, host, args.run_dir, resume=args.resume, overwrite=args.overwrite)
    if result.summary is not None:  # rank 0
        print(format_summary(result.summary))
    return 0


def _torchrun(args: argparse.Namespace) -> int:
    """`detach train --nproc N ...` relaunches itself under torchrun (PyTorch's launcher) on this node."""
    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "detach_framework",
        *argv,
    ]
    print("launching: " + " ".join(command), file=sys.stderr)
    return subprocess.call(command)


def cmd_ablate(args: argparse.Namespace) -> int:
    from detach_framework.engine.study import dry_run, load_study, run_study

    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a positive number of parallel runs")
    out = args.out or Path("runs") / "studies" / load_study(args.study).name
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise UserError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    if args.dry_run:
        print("\n".join(dry_run(args.study, _host(args).registry, out, seeds=seeds)))
        return 0
    registry = _host(args).registry
    executor = _study_executor(args, out)  # before planning: a missing submitit fails at once
    result = run_study(args.study, registry, out, seeds=seeds, plugins=args.plugin or [], executor=executor)
    print((out / "study.md").read_text(), end="")
    print(f"wrote {out / 'study.csv'}, {out / 'study.md'}, {out / 'study.png'} ({len(result['rows'])} runs)")
    return 0


def _study_executor(args: argparse.Namespace, out: Path):
    """The executor `--executor` names, `--jobs` runs at a time; submitit's files go to OUT/submitit/."""
    from detach_framework.engine.executors import LocalPool, SlurmSettings, submitit_pool

    slurm = {
        "--slurm-partition": args.slurm_partition,
        "--slurm-time": args.slurm_time,
        "--slurm-cpus": args.slurm_cpus,
        "--slurm-gpus": args.slurm_gpus,
        "--slurm-option": args.slurm_option or None,
    }
    if args.executor == "local":
        given = [flag for flag, value in slurm.items() if value is not None]
        if given:
            raise UserError(f"{given[0]} applies only to --executor submitit")
        return LocalPool(args.jobs)
    for flag, value, least in (("--slurm-time", args.slurm_time, 1), ("--slurm-cpus", args.slurm_cpus, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: expected a positive number")
    if args.slurm_gpus is not None and args.slurm_gpus < 0:
        raise UserError(f"--slurm-gpus {args.slurm_gpus}: expected 0 or more")
    options = {}
    for item in args.slurm_option:
        key, equals, value = item.partition("=")
        if not (key.strip() and equals):
            raise UserError(f"--slurm-option {item}: expected KEY=VALUE, an sbatch option such as account=mylab")
        options[key.strip().removeprefix("--")] = value
    settings = SlurmSettings(
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        cpus=args.slurm_cpus,
        gpus=args.slurm_gpus,
        options=options,
    )
    return submitit_pool(out / "submitit", settings, slots=args.jobs)


def cmd_eval(args: argparse.Namespace) -> int:
    from detach_framework.engine.evaluate import evaluate_run_directory, format_summary

    summary, written = evaluate_run_directory(args.run_dir, _host(args), args.overrides)
    print(format_summary(summary))
    print(f"wrote {written}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from detach_framework.engine.export import write_export

    manifest = write_export(args.run_dir, args.out, _host(args))
    probe = f"probe from {manifest.probe.evaluator}" if manifest.probe else "no probe (the spec has no probe evaluator)"
    print(f"wrote {args.out}: {len(manifest.channels)} channels at {manifest.sampling_rate_hz:g} Hz, {probe}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from detach_framework.engine.export import encoder_from_export
    from detach_framework.engine.predict import predict_file

    host = _host(args)
    encoder = encoder_from_export(args.export_dir, host)
    predictions = predict_file(encoder, args.input, args.out, host.registry, args.format)
    print(f"wrote {args.out}: {len(predictions.start_s)} windows x {len(predictions.class_names)} classes")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from detach_framework.report import write_report

    print(f"wrote {write_report(args.path, _host(args))}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from detach_framework.cache.commands import run_cache_command
    from detach_framework.engine.session import Session

    host = _host(args)
    return run_cache_command(args, host, lambda spec: Session.from_spec(spec, host).cache_context())


def cmd_data(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from detach_framework.contracts import ExportableSource
    from detach_framework.data.settings import DataSettings

    host = _host(args)
    if args.data_command == "fixture":
        print(f"wrote a {args.dataset} fixture to {_tool(host, args.dataset, 'fixture')(args.out, seed=args.seed)}")
        return 0
    if args.data_command == "inspect":
        print(_tool(host, args.dataset, "inspect")(args.root))
        return 0
    if args.format != "native":
        _tool(host, "synthetic_kitchen", f"export_{args.format}")(args.out, preset=args.preset, seed=args.seed)
        print(f"wrote the synthetic kitchen ({args.preset}, seed {args.seed}) as {args.format} to {args.out}")
        return 0
    component = host.registry.get("dataset", "synthetic_kitchen")
    try:
        params = component.params.model_validate({"preset": args.preset})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UserError(f"--preset {args.preset}: {first['msg']}") from None
    source = component.factory(params, data=DataSettings(seed=args.seed))
    if not isinstance(source, ExportableSource):
        raise UserError("dataset 'synthetic_kitchen' cannot export itself")
    source.export(args.out)
    print(f"wrote the synthetic kitchen ({args.preset}, seed {args.seed}) to {args.out}")
    return 0


def _tool(host, dataset: str, name: str):
    """A dataset's named tool (registered with the component: the core never imports plugins)."""
    tools = host.registry.get("dataset", dataset).tools
    if name not in tools:
        raise UserError(f"dataset '{dataset}' offers no '{name}' tool (it has: {', '.join(sorted(tools)) or 'none'})")
    return tools[name]


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


COMMANDS = {
    "plugins": cmd_plugins,
    "components": cmd_components,
    "validate": cmd_validate,
    "schema": cmd_schema,
    "train": cmd_train,
    "ablate": cmd_ablate,
    "eval": cmd_eval,
    "export": cmd_export,
    "predict": cmd_predict,
    "report": cmd_report,
    "cache": cmd_cache,
    "data": cmd_data,
}
