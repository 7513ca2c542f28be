"""Evaluation: metric formulas against hand computations, the linear probe, retrieval, plots, plugins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult
from detach_framework.evaluation import (
    accuracy,
    average_precision_per_class,
    confusion_matrix,
    format_metrics,
    format_table,
    linear_probe,
    macro_map,
    per_class_rows,
    plot_confusion_matrix,
    recall_at_k,
    true_pair_ranks,
    weighted_f1,
)
from detach_framework.registry import Registry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 3-class example worked by hand:
#   class 0: TP 2, FP 0, FN 1 -> P 1,   R 2/3, F1 0.8    support 3
#   class 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 0.5    support 2
#   class 2: TP 1, FP 1, FN 0 -> P 1/2, R 1,   F1 2/3    support 1
#   weighted F1 = (3*0.8 + 2*0.5 + 1*2/3) / 6 = 61/90
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_weighted_f1_and_accuracy_match_hand_computation() -> None:
    assert weighted_f1(Y_TRUE, Y_PRED) == pytest.approx(61 / 90)
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_per_class_rows_and_confusion_matrix_match_hand_computation() -> None:
    rows = per_class_rows(Y_TRUE, Y_PRED, ["a", "b", "c", "unused"])
    assert [r["class"] for r in rows] == ["a", "b", "c", "unused"]
    assert [r["support"] for r in rows] == [3, 2, 1, 0]
    assert [r["precision"] for r in rows] == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 0.5, 1.0, 0.0])
    assert [r["f1"] for r in rows] == pytest.approx([0.8, 0.5, 2 / 3, 0.0])
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError):
        per_class_rows(Y_TRUE, Y_PRED, ["a", "b"])  # label 2 has no name


def test_average_precision_of_a_ranked_example() -> None:
    # Ranked by score: pos, neg, pos, neg -> precisions at the positives 1/1 and 2/3 -> AP 5/6.
    y = np.array([0, 1, 0, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.05]])
    ap = average_precision_per_class(y, scores)
    assert ap[0] == pytest.approx(5 / 6)
    # Class 1 ranked: idx2 neg (0.3), idx1 pos (0.2), idx0 neg (0.1), idx3 pos (0.05) -> (1/2 + 2/4) / 2.
    assert ap[1] == pytest.approx(0.5)
    assert macro_map(y, scores) == pytest.approx((5 / 6 + 0.5) / 2)


def test_class_absent_from_test_labels_is_excluded_from_map() -> None:
    y = np.array([0, 1, 0, 1])
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.9], [0.7, 0.3, 0.1], [0.6, 0.05, 0.7]])
    assert set(average_precision_per_class(y, scores)) == {0, 1}
    assert macro_map(y, scores) == pytest.approx((5 / 6 + 0.5) / 2)


def test_metrics_reject_malformed_input() -> None:
    with pytest.raises(ValueError):
        weighted_f1(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        macro_map(np.array([0, 3]), np.ones((2, 3)))
    with pytest.raises(ValueError):
        accuracy(np.array([0.0, 1.0]), np.array([0, 1]))


# Video rows e0, e1, e2; sensor rows s0=(1,0,0), s1=(.8,.6,0), s2=(.6,0,.8). sim[i, j] = s_j[i]:
#   [[1, .8, .6],      v2s (rows):    every diagonal is its row's maximum -> R@1 = 1
#    [0, .6, 0 ],      s2v (columns): col 1 = (.8, .6, 0): video 0 beats the true pair -> rank 1
#    [0, 0,  .8]]      so s2v R@1 = 2/3, R@2 = 1
VIDEO = np.eye(3)
SENSOR = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8]])


def test_recall_at_k_on_a_reasoned_3x3_example() -> None:
    r = recall_at_k(VIDEO, SENSOR, ks=[1, 2])
    assert list(r) == ["v2s_R@1", "v2s_R@2", "s2v_R@1", "s2v_R@2"]
    assert r["v2s_R@1"] == pytest.approx(1.0)
    assert r["s2v_R@1"] == pytest.approx(2 / 3)
    assert r["s2v_R@2"] == pytest.approx(1.0)


def test_recall_ties_are_pessimistic_and_k_above_n_is_clipped() -> None:
    # Ties count against the query: collapsed embeddings must not look perfect.
    same = np.tile([[0.6, 0.8]], (3, 1))
    r = recall_at_k(same, same, ks=[1, 3, 10])
    assert r["v2s_R@1"] == 0.0 and r["s2v_R@1"] == 0.0
    assert r["v2s_R@3"] == 1.0 and r["v2s_R@10"] == 1.0
    np.testing.assert_array_equal(true_pair_ranks(np.array([[0.5, 0.5], [0.1, 0.9]])), [1, 0])
    with pytest.raises(ValueError):
        recall_at_k(VIDEO, SENSOR, ks=[0])
    with pytest.raises(ValueError):
        recall_at_k(VIDEO, SENSOR[:2])


def _blobs(n: int, seed: int, dim: int = 8, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = np.eye(classes, dim) * 6.0
    return centres[y] + rng.normal(size=(n, dim)), y


def test_probe_separates_linearly_separable_data() -> None:
    xtr, ytr = _blobs(300, 0)
    xte, yte = _blobs(150, 1)
    probs = linear_probe(xtr, ytr, xte, 3, epochs=20, lr=1e-2, batch_size=64, seed=0)
    assert probs.shape == (150, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert accuracy(yte, probs.argmax(1)) > 0.95
    assert macro_map(yte, probs) > 0.95


def test_probe_is_at_chance_on_shuffled_labels() -> None:
    xtr, ytr = _blobs(600, 0)
    xte, yte = _blobs(600, 1)
    rng = np.random.default_rng(7)
    probs = linear_probe(xtr, rng.permutation(ytr), xte, 3, epochs=20, batch_size=64, seed=0)
    assert 0.2 < accuracy(yte, probs.argmax(1)) < 0.47


def test_probe_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    xtr, ytr = _blobs(120, 0)
    xte, _ = _blobs(40, 1)
    state = torch.get_rng_state()
    a = linear_probe(xtr, ytr, xte, 3, epochs=3, batch_size=16, seed=5)
    b = linear_probe(xtr, ytr, xte, 3, epochs=3, batch_size=16, seed=5)
    c = linear_probe(xtr, ytr, xte, 3, epochs=3, batch_size=16, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_probe_standardises_with_train_statistics() -> None:
    xtr, ytr = _blobs(120, 0)
    xte, _ = _blobs(40, 1)
    base = linear_probe(xtr, ytr, xte, 3, epochs=5, batch_size=32, seed=0)
    # An affine change of units applied to both splits is undone by the train standardisation...
    scaled = linear_probe(xtr * 50 + 3, ytr, xte * 50 + 3, 3, epochs=5, batch_size=32, seed=0)
    np.testing.assert_allclose(base, scaled, atol=1e-4)
    # ...but a shift of the test split alone is not (test statistics would have hidden it).
    shifted = linear_probe(xtr, ytr, xte + 5.0, 3, epochs=5, batch_size=32, seed=0)
    assert not np.allclose(base, shifted, atol=1e-3)
    raw = linear_probe(xtr * 50 + 3, ytr, xte * 50 + 3, 3, epochs=5, batch_size=32, seed=0, standardize=False)
    assert not np.allclose(base, raw, atol=1e-3)


def test_confusion_png_is_written_atomically(tmp_path: Path) -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 5]])  # an empty true row must not divide by zero
    out = plot_confusion_matrix(cm, ["null", "open door", "close drawer"], tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.parent.iterdir()) == ["cm.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_text_tables_align_columns() -> None:
    text = format_metrics({"weighted_f1": 0.73, "macro_map": 0.8712})
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["weighted_f1", "0.7300"] and lines[3].split() == ["macro_map", "0.8712"]
    rows = per_class_rows(Y_TRUE, Y_PRED, ["a", "bb", "c"])
    table = format_table(rows).splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert len({len(line) for line in table[2:]}) == 1  # right-aligned numbers end in one column
    assert table[3].split() == ["bb", "0.5000", "0.5000", "0.5000", "2"]


def _embedding_set(n: int, seed: int) -> EmbeddingSet:
    x, y = _blobs(n, seed)
    rng = np.random.default_rng(seed + 100)
    video = rng.normal(size=(n, 4))
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    sensor = video + 0.05 * rng.normal(size=(n, 4))
    sensor /= np.linalg.norm(sensor, axis=1, keepdims=True)
    zeros = np.zeros(n, dtype=np.int64)
    return EmbeddingSet(probe=x, video=video, sensor=sensor, labels=y, subjects=zeros, fixtures=zeros - 1)


@pytest.fixture()
def registry() -> Registry:
    from detach_plugins.evaluators import detach_register_components

    reg = Registry()
    detach_register_components(reg.add)
    return reg


def test_evaluator_plugins_register_with_documented_params(registry: Registry) -> None:
    assert {"linear_probe", "retrieval"} <= set(registry.names("evaluator"))
    probe_params = registry.get("evaluator", "linear_probe").params
    assert probe_params().model_dump() == {
        "epochs": 30,
        "lr": 1e-3,
        "batch_size": 256,
        "weight_decay": 0.0,
        "standardize": True,
    }
    retrieval_params = registry.get("evaluator", "retrieval").params
    assert retrieval_params().ks == [1, 5, 10]
    for params in (probe_params, retrieval_params):
        assert all(f.description for f in params.model_fields.values())
    with pytest.raises(ValidationError):
        probe_params(epoch=3)
    with pytest.raises(ValidationError):
        retrieval_params(ks=[1, 0])


def test_linear_probe_evaluator_produces_metrics_table_and_png(registry: Registry, tmp_path: Path) -> None:
    component = registry.get("evaluator", "linear_probe")
    evaluator = component.factory(component.params(epochs=20, lr=1e-2, batch_size=64))
    ctx = EvalContext(class_names=["null", "a", "b"], out_dir=tmp_path / "eval" / "probe", seed=3)
    result = evaluator.evaluate(_embedding_set(200, 0), _embedding_set(90, 1), ctx)
    assert isinstance(result, EvalResult)
    assert set(result.metrics) == {"weighted_f1", "macro_map", "accuracy"}
    assert result.metrics["accuracy"] > 0.9
    assert [row["class"] for row in result.tables["per_class"]] == ["null", "a", "b"]
    png = ctx.out_dir / "confusion_matrix.png"
    assert result.plots == [png]
    assert png.read_bytes()[:8] == PNG_MAGIC
    again = evaluator.evaluate(_embedding_set(200, 0), _embedding_set(90, 1), ctx)
    assert again.metrics == result.metrics  # ctx.seed makes reruns identical


def test_retrieval_evaluator_reports_each_k(registry: Registry, tmp_path: Path) -> None:
    component = registry.get("evaluator", "retrieval")
    evaluator = component.factory(component.params(ks=[1, 5]))
    ctx = EvalContext(class_names=["null", "a", "b"], out_dir=tmp_path)
    result = evaluator.evaluate(_embedding_set(20, 0), _embedding_set(30, 1), ctx)
    assert list(result.metrics) == ["v2s_R@1", "v2s_R@5", "s2v_R@1", "s2v_R@5"]
    assert result.metrics["v2s_R@1"] > 0.8  # the sensor rows are small perturbations of their videos
    assert result.metrics["s2v_R@5"] >= result.metrics["s2v_R@1"]
