"""Cross-modal retrieval recall@k on paired embeddings (video row i pairs with sensor row i).

Ranking is by cosine similarity. Tie rule (pessimistic, order-independent): the rank of the true
pair is the number of OTHER candidates whose similarity is >= the true pair's similarity minus
`tie_tol`. A candidate tied with the true pair therefore ranks above it, so collapsed embeddings
(all rows equal) score chance level instead of a perfect recall, and results never depend on the
order of the rows. `tie_tol` absorbs floating-point noise between mathematically equal similarities.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from detach_framework.evaluation.metrics import finite_matrix

DEFAULT_TIE_TOL = 1e-9


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    arr = finite_matrix(x, name, "E")
    # Renormalise so the ranking is cosine even if the inputs drifted from unit length.
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def true_pair_ranks(similarity: np.ndarray, *, tie_tol: float = DEFAULT_TIE_TOL) -> np.ndarray:
    """0-based rank of candidate i for query i in each row of a square [N, N] similarity matrix."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square [N, N], got shape {sim.shape}")
    true = np.diag(sim)[:, None]
    at_least = sim >= true - tie_tol
    # The true candidate always satisfies the test; it does not rank above itself.
    return (at_least.sum(axis=1) - 1).astype(np.int64)


def _check_ks(ks: Iterable[int]) -> list[int]:
    out = list(ks)
    if not out:
        raise ValueError("ks must name at least one k")
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
    return [int(k) for k in out]


def recall_at_k(
    video: np.ndarray,
    sensor: np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
    *,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> dict[str, float]:
    """{'v2s_R@k': ..., 's2v_R@k': ...} for every k: the share of queries whose pair ranks in the top k.

    A k larger than N is clipped to N (every pair is then found: recall 1.0); the key keeps the k asked for.
    """
    ks = _check_ks(ks)
    v, s = _normalise(video, "video"), _normalise(sensor, "sensor")
    if v.shape != s.shape:
        raise ValueError(f"video and sensor must have the same shape, got {v.shape} vs {s.shape}")
    n = v.shape[0]
    if n == 0:
        raise ValueError("retrieval needs at least one pair")
    sim = v @ s.T  # [video query, sensor candidate]
    ranks = {"v2s": true_pair_ranks(sim, tie_tol=tie_tol), "s2v": true_pair_ranks(sim.T, tie_tol=tie_tol)}
    return {f"{direction}_R@{k}": float(np.mean(r < min(k, n))) for direction, r in ranks.items() for k in ks}
