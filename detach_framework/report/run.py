"""The report of one run directory: training curves, the confusion matrix, and figures of the test split's
embeddings under the checkpoint evaluation chose (the model rebuilt through a Session), then the sections
plugins add through the `detach_report_sections` hook (e.g. DETACH's stage-2 weights and clusters).

It reads only what runs write (metrics.jsonl, summary.json, plots/, checkpoints) and the model's own methods,
never a plugin module: a plugin draws what only it knows from a ReportContext.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detach_framework.atomic import atomic_write_text
from detach_framework.data.transforms import load_preprocessing
from detach_framework.engine.evaluate import embed_split, evaluated_checkpoint_path, load_evaluated_checkpoint
from detach_framework.engine.rundir import RunDirectory
from detach_framework.engine.session import Session
from detach_framework.errors import PluginError, UserError
from detach_framework.evaluation import figures
from detach_framework.report.context import ReportContext
from detach_framework.report.page import REPORT_FILE, Section, esc, html_table, page
from detach_framework.spec import load_spec

# The core's own sections, in report order; plugins add theirs after these (plugin_sections).
SECTIONS = (
    ("training-curves", "Training curves"),
    ("confusion-matrix", "Confusion matrix (linear probe, test)"),
    ("tsne", "t-SNE of test sensor embeddings"),
    ("cosine-histogram", "Cosine similarity of different-label video pairs"),
    ("similarity-scatter", "Spatial vs temporal similarity"),
)


@dataclass
class TestEmbeddings:
    """The run's chosen checkpoint applied to the test split, and what the figures need to name things."""

    probe: np.ndarray
    video: np.ndarray
    sensor: np.ndarray
    labels: np.ndarray
    fixtures: np.ndarray
    class_names: list[str]
    fixture_names: list[str]
    checkpoint: str
    decomposed: bool
    # Per modality (z, h) when the model is decomposed: sliced from the joint embeddings.
    spaces: dict[str, tuple[np.ndarray, np.ndarray]] | None
    seed: int


def load_test_embeddings(run: Any, host: Any) -> TestEmbeddings:
    """Rebuild the run's model from spec.yaml, load the checkpoint evaluation chose, embed the test split."""
    spec = load_spec(run.spec_file, host.registry)
    evaluated_checkpoint_path(spec, run)  # before building the dataset: refuses a run with nothing to embed
    session = Session.from_spec(spec, host, run.path)
    load_preprocessing(session.source, run.path)
    _, path = load_evaluated_checkpoint(session, run)
    test = embed_split(session, "test")
    model = session.model
    spaces = None
    if model.decomposed:
        # embed() lays the joint vectors out as [n(z), n(h)] (scaled): split them back at the spatial size.
        dv, ds = int(model.video_head.out_dim), int(model.sensor_encoder.out_dim)
        if test.video.shape[1] == dv + int(model.video_temporal_head.out_dim) and test.probe.shape[1] == ds + int(
            model.sensor_temporal_encoder.out_dim
        ):
            spaces = {
                "video": (test.video[:, :dv], test.video[:, dv:]),
                "sensor": (test.probe[:, :ds], test.probe[:, ds:]),
            }
    return TestEmbeddings(
        probe=test.probe,
        video=test.video,
        sensor=test.sensor,
        labels=np.asarray(test.labels),
        fixtures=np.asarray(test.fixtures),
        class_names=[str(c) for c in session.source.class_names],
        fixture_names=[str(f) for f in session.source.fixture_names],
        checkpoint=path.name,
        decomposed=model.decomposed,
        spaces=spaces,
        seed=spec.seed,
    )


def anchor_class(labels: np.ndarray, fixtures: np.ndarray) -> int | None:
    """The class with the most test windows that have a fixture (Null windows have none)."""
    counts = np.bincount(labels[fixtures >= 0]) if (fixtures >= 0).any() else np.zeros(0)
    return int(counts.argmax()) if counts.size and counts.max() > 0 else None


def run_sections(
    run: Any, host: Any, summary: dict[str, Any], log: Callable[[str], None] = print
) -> tuple[list[Section], dict[str, Any]]:
    """The core's sections (SECTIONS, in order), then those the plugins add; each skipped one is logged."""
    records = run.read_metrics()
    context = ReportContext(records=records, summary=summary, run_path=run.path, out=run.plots / "report")
    titles = dict(SECTIONS)
    sections: dict[str, Section] = {}

    def skip(key: str, reason: str) -> None:
        sections[key] = context.skip(key, titles[key], reason)

    def draw(key: str, plot: Callable[[Path], Path], caption: str) -> None:
        sections[key] = context.draw(key, titles[key], plot, caption)

    if figures.epoch_records(records):
        draw(
            "training-curves",
            lambda p: figures.plot_training_curves(records, p),
            "Per-epoch means from metrics.jsonl; train solid, validation dashed; dotted lines separate stages.",
        )
    else:
        skip("training-curves", "metrics.jsonl holds no epoch records (nothing was trained)")

    confusion = run.plots / "confusion_matrix.png"
    if confusion.is_file():
        sections["confusion-matrix"] = Section(
            "confusion-matrix",
            titles["confusion-matrix"],
            png=confusion.read_bytes(),
            caption="Written by the linear_probe evaluator: colours are recall per true class, cells raw counts.",
        )
    else:
        skip("confusion-matrix", "plots/confusion_matrix.png is missing (no linear_probe evaluator, or not evaluated)")

    info: dict[str, Any] = {}
    try:
        emb: TestEmbeddings | None = load_test_embeddings(run, host)
    except UserError as exc:
        emb = None
        for key in ("tsne", "cosine-histogram", "similarity-scatter"):
            skip(key, f"the run's model could not be loaded: {exc}")
    if emb is not None:
        info["checkpoint"] = emb.checkpoint
        draw(
            "tsne",
            lambda p: figures.plot_tsne(
                emb.probe, emb.fixtures, emb.labels, emb.fixture_names, emb.class_names, p, seed=emb.seed
            ),
            f"Linear-probe features of the test split ({emb.checkpoint}); 'none' marks windows without a fixture.",
        )
        kind = "decomposed model, joint u = [z, h]" if emb.decomposed else "global model"
        draw(
            "cosine-histogram",
            lambda p: figures.plot_cosine_histogram(
                figures.different_label_cosines(emb.video, emb.labels), p, title=kind
            ),
            "The paper's P1 figure: global alignment piles different-label pairs near 0.7, DETACH spreads them "
            "over 0.2-0.5. Test-split joint video embeddings.",
        )
        anchor = anchor_class(emb.labels, emb.fixtures)
        if emb.spaces is None:
            skip("similarity-scatter", "the model is not decomposed (no temporal branch h)")
        elif anchor is None:
            skip("similarity-scatter", "no test window has a ground-truth fixture, so negative types are unknown")
        else:
            name = emb.class_names[anchor] if anchor < len(emb.class_names) else str(anchor)
            draw(
                "similarity-scatter",
                lambda p: figures.plot_similarity_scatter(
                    emb.spaces, emb.labels, emb.fixtures, anchor, name, p, seed=emb.seed
                ),
                f"Anchor class: {name}. False = same fixture and action, hard = same fixture, other action, "
                "easy = other fixture, untyped = a window without fixture.",
            )

    ordered = [sections[key] for key, _ in SECTIONS] + plugin_sections(host, context)
    for section in ordered:
        if section.skip:
            log(f"skipped {section.title}: {section.skip}")
    return ordered, info


def plugin_sections(host: Any, context: ReportContext) -> list[Section]:
    """Every plugin's `detach_report_sections(context)`, plugin by plugin in load order (the order of
    get_hookimpls; a plain hook call would run the last registered first)."""
    sections: list[Section] = []
    for impl in host.manager.hook.detach_report_sections.get_hookimpls():
        contributed = impl.function(context=context)
        if not isinstance(contributed, list) or not all(isinstance(s, Section) for s in contributed):
            raise PluginError(
                f"plugin '{impl.plugin_name}': detach_report_sections returned {type(contributed).__name__}, "
                "not a list of detach_framework.report.Section"
            )
        sections += contributed
    return sections


def _summary_tables(summary: dict[str, Any]) -> list[str]:
    parts = []
    metrics = summary.get("metrics") or {}
    if metrics:
        parts += ["<h2>Metrics</h2>", html_table(("metric", "value"), [(k, float(v)) for k, v in metrics.items()])]
    for name, rows in (summary.get("tables") or {}).items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            header = list(dict.fromkeys(k for r in rows for k in r))
            parts += [f"<h3>{esc(name)}</h3>", html_table(header, [[r.get(h, "") for h in header] for r in rows])]
    return parts


def write_run_report(path: Path, host: Any, log: Callable[[str], None] = print) -> Path:
    run = RunDirectory.open_existing(path, write=True)
    try:
        return _write_run_report(run, host, log)
    finally:
        run.close()


def _write_run_report(run: Any, host: Any, log: Callable[[str], None]) -> Path:
    summary: dict[str, Any] = {}
    if run.summary_file.is_file():
        summary = json.loads(run.summary_file.read_text(encoding="utf-8"))
    sections, info = run_sections(run, host, summary, log)
    name = summary.get("name") or run.path.name
    split = summary.get("split", "test")
    meta = [
        ("run directory", str(run.path)),
        ("uid", summary.get("uid", "-")),
        ("checkpoint", info.get("checkpoint", summary.get("checkpoint", "-"))),
        (f"train / {split} windows", f"{summary.get('train_samples', '-')} / {summary.get(f'{split}_samples', '-')}"),
    ]
    body = [
        f"<h1>Run report: {esc(name)}</h1>",
        '<table class="meta">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in meta) + "</table>",
    ]
    if not summary:
        body.append('<p class="skip">No summary.json: the run has not been evaluated (run detach eval).</p>')
    body += _summary_tables(summary)
    body += [section.render() for section in sections]
    return atomic_write_text(run.path / REPORT_FILE, page(f"detach report: {name}", body))
