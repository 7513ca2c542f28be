"""`detach report`: every figure section of a DETACH run, skip lines for a global run, escaping, study tables,
and (where Debian's chromium is installed) the page as a headless browser renders it."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_spec
from test_detach import detach_spec

from detach_framework.cli import main
from detach_framework.report import SECTIONS as CORE_SECTIONS
from detach_plugins.detach.report import SECTIONS as DETACH_SECTIONS

SECTIONS = CORE_SECTIONS + DETACH_SECTIONS  # the core's sections, then those the detach plugin adds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
EMBEDDING_SECTIONS = ("tsne", "cosine-histogram", "similarity-scatter")


class ReportParser(HTMLParser):
    """Per <section id>: its embedded images and skip lines; plus every tag and attribute seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, list]] = {}
        self.current: str | None = None
        self.in_skip = False
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[str] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "section":
            self.current = attributes["id"]
            self.sections[self.current] = {"img": [], "skip": []}
        elif tag == "img" and self.current is not None:
            self.sections[self.current]["img"].append(attributes["src"])
        elif tag == "p" and attributes.get("class") == "skip":
            self.in_skip = True
        elif tag == "td":
            self.in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None
        elif tag == "p":
            self.in_skip = False
        elif tag == "td":
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_skip and self.current is not None:
            self.sections[self.current]["skip"].append(data)
        if self.in_cell:
            self.cells[-1] += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def png_bytes(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :], validate=True)


def assert_offline(text: str) -> None:
    # No scripts and nothing fetched from anywhere: the page must open on an air-gapped machine.
    lowered = text.lower()
    assert "<script" not in lowered and "http://" not in lowered and "https://" not in lowered
    assert "Content-Security-Policy" in text


def train(tmp: Path, spec: dict, name: str) -> Path:
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run = tmp / name
    assert main(["train", str(spec_file), "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def detach_run(tmp_path_factory) -> Path:
    """A tiny DETACH run (one epoch per stage-1 phase, one stage-2 epoch) and its report."""
    tmp = tmp_path_factory.mktemp("detach")
    spec = detach_spec()
    spec["stages"][1]["epochs"] = 1
    run = train(tmp, spec, "run")
    assert main(["report", str(run)]) == 0
    return run


def test_detach_report_has_every_figure(detach_run):
    report = detach_run / "report.html"
    text = report.read_text(encoding="utf-8")
    assert_offline(text)
    parsed = parse(report)
    assert list(parsed.sections) == [key for key, _ in SECTIONS]
    for key, found in parsed.sections.items():
        assert not found["skip"], f"{key} skipped: {found['skip']}"
        assert len(found["img"]) == 1, key
        data = png_bytes(found["img"][0])
        assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR", key
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 100 and height > 100, key
    assert (detach_run / "plots" / "report" / "weight-cdfs.png").is_file()
    assert "weighted_f1" in parsed.cells and "Open Fridge" in parsed.cells  # metrics and per-class tables


def test_stage2_logs_weight_quantiles_per_negative_type(detach_run):
    records = [json.loads(line) for line in (detach_run / "metrics.jsonl").read_text().splitlines()]
    stage2 = [r for r in records if r.get("kind") == "epoch" and r["stage"] == "temporal"]
    assert stage2
    for record in stage2:
        for kind in ("false", "hard", "easy"):
            quantiles = record[f"w_{kind}_quantiles"]
            assert len(quantiles) == 21 and quantiles == sorted(quantiles)
            # The mean of the same epoch's weights lies between their minimum and maximum.
            assert quantiles[0] - 1e-4 <= record[f"w_{kind}"] <= quantiles[-1] + 1e-4


def test_weight_reservoir_is_bounded_and_uniform(registry):
    from detach_framework.engine.model import AlignmentModel
    from detach_framework.spec import load_spec
    from detach_plugins.detach.temporal import W_RESERVOIR, TemporalAligner, TemporalParams
    from detach_plugins.methods.imu2clip import InfoNceLoss, InfoNceParams

    spec = load_spec(detach_spec(), registry)
    model = AlignmentModel(
        spec.model, registry, SimpleNamespace(channel_names=["a", "b"], class_names=[]), 32, num_train=8
    )
    aligner = TemporalAligner(TemporalParams(), model, InfoNceLoss(InfoNceParams(temperature=0.1, learnable=False)))
    state = torch.random.get_rng_state()
    aligner.on_epoch_start(1)
    for chunk in torch.linspace(0, 1, 20_001).split(3000):
        aligner._reservoir_add("easy", chunk)
    assert torch.equal(state, torch.random.get_rng_state())  # a private generator: training RNG untouched
    assert len(aligner._samples["easy"][0]) == W_RESERVOIR
    quantiles = aligner.on_epoch_end(model)["w_easy_quantiles"]
    assert np.allclose(quantiles, np.linspace(0, 1, 21), atol=0.03)
    assert "w_false_quantiles" not in aligner.on_epoch_end(model)  # no pair of that type seen


def test_user_strings_are_escaped_and_missing_checkpoints_skip(detach_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(detach_run, run, ignore=shutil.ignore_patterns("*.pt", "report.html"))
    summary = json.loads((run / "summary.json").read_text())
    summary["name"] = XSS
    summary["metrics"][XSS] = 0.5
    summary["tables"]["per_class"][0]["class"] = XSS
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert_offline(text)
    assert text.count(ESCAPED) >= 4  # title, heading, metric row, class row
    parsed = parse(run / "report.html")
    assert parsed.cells.count(XSS) == 2  # the parser decodes the escapes back to the literal text
    for key in EMBEDDING_SECTIONS:
        assert "holds no checkpoint" in " ".join(parsed.sections[key]["skip"])
    assert parsed.sections["weight-cdfs"]["img"] and parsed.sections["clusters"]["img"]


def test_global_run_gets_skip_lines(tmp_path):
    spec = tiny_spec()
    spec["stages"][0]["epochs"] = 1
    run = train(tmp_path, spec, "imu2clip")
    assert main(["report", str(run)]) == 0
    assert_offline((run / "report.html").read_text(encoding="utf-8"))
    sections = parse(run / "report.html").sections
    for key in ("training-curves", "confusion-matrix", "tsne", "cosine-histogram"):
        assert len(sections[key]["img"]) == 1 and not sections[key]["skip"], key
    expected = {
        "weight-cdfs": "no DETACH temporal stage",
        "similarity-scatter": "not decomposed",
        "clusters": "no clustering stage",
    }
    for key, reason in expected.items():
        assert not sections[key]["img"] and reason in " ".join(sections[key]["skip"]), key


def test_study_report_renders_table(tmp_path):
    from matplotlib.figure import Figure

    from detach_framework.evaluation.plots import save_figure_atomic

    study = tmp_path / "study"
    (study / "runs" / "uid1").mkdir(parents=True)
    (study / "runs" / "uid1" / "report.html").write_text("<p>run</p>")
    metric = "f1<i>"
    rows = [
        {"variant": "full", "seed": 1, "uid": "uid1", metric: 0.5},
        {"variant": "full", "seed": 2, "uid": "uid2", metric: 0.7},
        {"variant": XSS, "seed": 1, "uid": "uid3", metric: "nan"},
    ]
    with (study / "study.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "seed", "uid", metric])
        writer.writeheader()
        writer.writerows(rows)
    (study / "study.md").write_text("### mini & co\n\n| variant | n |\n")
    save_figure_atomic(Figure(figsize=(2, 2)), study / "study.png")
    assert main(["report", str(study)]) == 0
    report = study / "report.html"
    text = report.read_text(encoding="utf-8")
    assert_offline(text)
    assert ESCAPED in text and "f1&lt;i&gt;" in text and "mini &amp; co" in text and XSS not in text
    parsed = parse(report)
    assert ["full", "2", "0.600 ± 0.141"] == parsed.cells[:3] and [XSS, "1", "-"] == parsed.cells[3:6]
    links = [a["href"] for tag, a in parsed.tags if tag == "a"]
    assert links == ["runs/uid1/report.html"]  # only runs that have their own report are linked
    images = [a["src"] for tag, a in parsed.tags if tag == "img"]
    assert len(images) == 1 and png_bytes(images[0]).startswith(PNG_MAGIC)


def test_report_refuses_other_directories(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed")
def test_page_renders_in_headless_chromium(detach_run, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        (detach_run / "report.html").resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=90)
    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1280
    # A page of figures is far from blank: many pixels are neither white nor one flat colour.
    grey = pixels[..., :3].mean(axis=2)
    assert (grey < 0.9).mean() > 0.02 and grey.std() > 0.05
