"""Does S_tm tell a false negative from a hard one? A diagnosis of a trained DETACH run's temporal encoders.

Stage 2 down-weights a negative pair by W_tm = 1 - S_sp * S_tm, meant to spare false negatives (same fixture,
same action) while keeping hard ones (same fixture, other action) heavy. That needs S_tm to be higher for false
pairs than for hard ones. On the synthetic kitchen the two actions of a fixture (open / close) are the same
motion in opposite directions, so this script also asks whether g_v and g_s see the direction at all: it
compares each window's embedding with the embedding of the same window played backwards (video frames and
sensor samples reversed in time).

Printed, for the windows of one split (validation by default: an analysis, not a choice, but it keeps the test
subjects unseen):
- mean S_tm (cross-modal, as in the paper, and intra-modal, the authors' code) per negative type, and the AUC of
  S_tm for telling false pairs from hard ones (0.5: no better than chance);
- per modality, the mean cosine of an embedding with its time-reversed window's, next to the mean cosine of
  false and of hard pairs: a reversal cosine near 1 means the encoder is blind to the direction of motion.

Uses the online temporal encoders the checkpoint holds (the momentum copies S_tm is computed with in training
trail them by an EMA). Run (any DETACH run directory, e.g. one of a study's):
    python benchmarks/temporal_direction.py RUN_DIR [--split val] [--max-windows 1024] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from detach_framework.api import load_run
from detach_framework.engine.session import make_loader, to_device
from detach_plugins.detach.temporal import NEGATIVE_TYPES, negative_types, s_tm_matrix


def reversed_in_time(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # video [B, T, C, H, W] along T, sensor [B, C, n] along n
    return {**batch, "video": batch["video"].flip(1), "sensor": batch["sensor"].flip(-1)}


@torch.no_grad()
def temporal_embeddings(run_dir: Path, split: str, max_windows: int) -> dict[str, torch.Tensor]:
    session = load_run(run_dir).session
    model = session.model
    if not model.decomposed:
        raise SystemExit(f"{run_dir}: not a DETACH run (it has no temporal encoders)")
    parts: dict[str, list[torch.Tensor]] = {}
    seen = 0
    for batch in make_loader(session.split(split), session.spec, shuffle=False):
        batch = to_device(batch, session.device)
        back = reversed_in_time(batch)
        values = {
            "h_v": model.encode_video_temporal(batch),
            "h_s": model.encode_sensor_temporal(batch),
            "h_v_reversed": model.encode_video_temporal(back),
            "h_s_reversed": model.encode_sensor_temporal(back),
            "label": batch["label"],
            "fixture": batch["fixture"],
        }
        for key, value in values.items():
            parts.setdefault(key, []).append(value.cpu())
        seen += len(batch["label"])
        if seen >= max_windows:
            break
    return {key: torch.cat(value)[:max_windows] for key, value in parts.items()}


def diagnose(emb: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    types = negative_types(emb["label"], emb["fixture"])
    result: dict[str, dict[str, float]] = {}
    for mode in ("cross_modal", "intra_modal"):
        s_tm = s_tm_matrix(emb["h_v"], emb["h_s"], mode)
        row = {f"s_tm_{kind}": float(s_tm[types[kind]].mean()) for kind in NEGATIVE_TYPES if types[kind].any()}
        scores = torch.cat([s_tm[types["false"]], s_tm[types["hard"]]]).numpy()
        truth = [1] * int(types["false"].sum()) + [0] * int(types["hard"].sum())
        row["auc_false_vs_hard"] = float(roc_auc_score(truth, scores))
        result[mode] = row
    for modality in ("h_v", "h_s"):
        h = F.normalize(emb[modality], dim=-1)
        cos = h @ h.T
        row = {"reversal_cos": float((h * F.normalize(emb[f"{modality}_reversed"], dim=-1)).sum(-1).mean())}
        row |= {f"cos_{kind}": float(cos[types[kind]].mean()) for kind in NEGATIVE_TYPES if types[kind].any()}
        result[modality] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--max-windows", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    result = diagnose(temporal_embeddings(args.run_dir, args.split, args.max_windows))
    for section, row in result.items():
        print(f"{section:12s} " + "  ".join(f"{key} {value:.3f}" for key, value in row.items()))
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run_dir), "split": args.split, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
