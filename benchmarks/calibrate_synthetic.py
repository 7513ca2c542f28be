"""Calibrate a synthetic kitchen preset with two method-agnostic controls on the sensor modality alone.

Control (a), random encoder: an untrained `imu2clip_sensor` encoder (default params), frozen, embeds the
train and test sensor windows; a linear probe (Adam lr 1e-3, 50 epochs, batch 64, standardised features)
is fitted on train and scored on the test subjects. Target: weighted F1 <= 0.50 (the task is not solved by
any fixed projection of the raw channels).
Control (b), supervised encoder: the same architecture plus a linear classifier trained end to end with
cross-entropy on the train labels (AdamW lr 1e-3, weight decay 1e-4, batch 64, a fixed number of epochs;
nothing is selected on test). Target: weighted F1 >= 0.90 on the test subjects (the labels are learnable
from the sensors).

Only the preset's nuisance knobs are calibrated, never by how DETACH or a baseline scores.

Calibration log. Test weighted F1 of (a) the random-encoder probe and (b) the supervised encoder; data
seed 42, 2 s windows, stride 1 s, sensor length 128. Knobs not named keep the old preset's values (noise 0.03,
crosstalk 0.25, walking 0.15, NaN 0.5/min, speed 0.15, amplitude 0.2, rows 14+ knobs off; 10 subjects x 5
recordings x 80 s, 2370 train windows). "s0" = model seed 0 only, "s0-2" = mean +/- std over seeds 0,1,2;
"gpu" = (b) was trained on a GPU in a sweep (same code, not bit-identical to a CPU run).
   1. preset as is                                  a 0.735 +/- 0.009 (s0-2)  b 0.953 (s0, 10 ep)
   2. noise 0.1                                     a 0.650 +/- 0.006 (s0-2)
   3. noise 0.3                                     a 0.550 (s0)  b 0.863 (s0, 20 ep)
   4. noise 0.4                                     a 0.521 (s0-2)  b 0.76-0.78 (s0 gpu, flat from 10 to 50 ep)
   5. noise 0.45                                    a 0.509 (s0-2)  b 0.72-0.75 (s0 gpu, flat from 10 to 50 ep)
   6. noise 0.5                                     a 0.492 (s0)  b 0.708 (s0, 20 ep)
   7. one nuisance at a time, noise 0.03 (a only, s0): walking 0.5 / 1.0 / 2.0 -> 0.715 / 0.729 / 0.740;
      crosstalk 0.6 -> 0.742; amplitude spread 0.5 / 1.0 -> 0.714 / 0.679; speed spread 0.4 -> 0.728;
      NaN 2.0 / 4.0 per min -> 0.709 / 0.665. Only sensor noise moves (a) substantially.
   8. noise 0.4, NaN 1.0, amplitude 0.35, speed 0.25, crosstalk 0.35, walking 0.25
                                                    a 0.509 (s0-2)  b 0.79 (s0 gpu, 50 ep)
   9. noise 0.45, NaN 0.1, crosstalk 0.1, walking 0.05, amplitude 0.1, speed 0.1
                                                    a 0.486 (s0)  b 0.742 (s0, 20 ep)
  10. as 9, 20 subjects x 100 s (5940 train)       a 0.526 (s0)  b 0.888 (s0, 15 ep)
  11. noise 0.5, NaN 0.1, 20 subjects x 120 s (7140 train)
                                                    a 0.501 (s0)  b 0.844 / 0.863 (s0, 10 / 15 ep)
  12. noise 0.5, NaN 0.1, 20 subjects x 160 s (9540 train)
                                                    a 0.493 (s0)  b 0.870 / 0.875 (s0, 10 / 15 ep)
  13. noise 0.55, NaN 0.1, 20 subjects x 160 s       a 0.479 (s0)
Rows 1-13 show the old sensor side could not meet both: the random probe reads which reed switch is on at
the end of a window (P2's "which channels fire"); only noise near 0.5 of an action's peak pushed (a) to
0.50, and that noise costs (b) as much. Rows 14+ add sensor-side nuisances (knobs, off in tiny/quickstart)
that make channel identity need temporal evidence, on the same 10 x 5 x 80 s unless a size is named:
  14. baseline wander 0.1 / 0.3 / 1.0               a 0.561 / 0.519 / 0.520 (s0)  b 0.916 / 0.839 / 0.756
      (s0, 15 / 15 / 10 ep): a fixed projection no longer reads the accelerometers (door classes -> ~0);
      above ~0.15 the supervised encoder cannot learn them either.
  15. max hold 8 s (no wander)                     a 0.785 (s0): longer holds only add easy Null windows
  16. wander 0.1, ajar 0.5                         a 0.522 (s0)  b 0.893 (s0, 15 ep)
  17. wander 0.1, shallow opens (min extent 0.1)   a 0.487 (s0)  b 0.788 (s0, 15 ep): costs (b) the doors
  18. wander 0.1, ajar 0.8, hold 5, nudges 0.5     a 0.526 +/- 0.012 (s0-2)
      (a fixture left ajar drifting shut by itself, tried instead of staying ajar: a 0.537, dropped)
  19. as 18 + reed dropout 0.3                      a 0.481 +/- 0.010 (s0-2)  b 0.757 (s0, 15 ep)
  20. as 19, 25 subjects                            a 0.456 (s0)  b 0.898 (s0, 15 ep)
  21. as 20, nudges 0.3                             a 0.461 (s0)  b 0.905; wander 0.07 instead: 0.492 / 0.913
  22. as 21, 30 subjects (7110 train windows)       SHIPPED: see below
      The supervised control gains more from data than the random probe once the accelerometers carry
      classes that only a learned (matched) filter reads; the random probe stays low.
Shipped benchmark preset (row 22): 30 subjects x 5 recordings x 80 s; wander 0.1, hold up to 5 s, nudges
0.3, ajar 0.8, reed dropout 0.3, other knobs as before:
  (a) 0.454 +/- 0.004 (s0-2: 0.455, 0.448, 0.458)   (b) 0.915 +/- 0.004 (s0-2, 15 ep: 0.910, 0.915, 0.920)
both targets met (`python benchmarks/calibrate_synthetic.py`, 343 s on this 2-core machine).
Not an under-trained probe: on the shipped preset (seed 0) the probe at 50 / 200 epochs (lr 1e-3) and 200
epochs at lr 1e-2 gives 0.455 / 0.465 / 0.472.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detach_framework.data.settings import DataSettings
from detach_framework.evaluation import linear_probe, weighted_f1
from detach_plugins.datasets.synthetic_kitchen import build_synthetic_kitchen
from detach_plugins.datasets.synthetic_kitchen.presets import SyntheticKitchenParams
from detach_plugins.methods.imu2clip import Imu2ClipSensorEncoder, Imu2ClipSensorParams

RANDOM_MAX = 0.50  # control (a) must stay at or below this
SUPERVISED_MIN = 0.90  # control (b) must reach at least this
PROBE = dict(epochs=50, lr=1e-3, batch_size=64, standardize=True)
SUPERVISED_LR, SUPERVISED_WD, SUPERVISED_BATCH = 1e-3, 1e-4, 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="benchmark", choices=["tiny", "quickstart", "benchmark"])
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated model seeds.")
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of the supervised control.")
    parser.add_argument("--sensor-length", type=int, default=128, help="Steps per sensor window.")
    parser.add_argument("--data-seed", type=int, default=DataSettings().seed, help="Dataset generation seed.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Override one preset knob (for calibration trials); repeatable.",
    )
    return parser.parse_args(argv)


def parse_knobs(items: list[str]) -> dict[str, float]:
    knobs: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        knobs[name.strip()] = float(value) if "." in value or "e" in value else int(value)
    return knobs


@torch.no_grad()
def embed(encoder: nn.Module, sensor: np.ndarray, batch: int = 256) -> np.ndarray:
    encoder.eval()
    x = torch.from_numpy(sensor)
    return torch.cat([encoder(x[i : i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def random_control(seed: int, train, test, num_classes: int) -> float:
    torch.manual_seed(seed)
    channels, length = train.sensor.shape[1:]
    encoder = Imu2ClipSensorEncoder(Imu2ClipSensorParams(), channels, length)
    scores = linear_probe(
        embed(encoder, train.sensor), train.labels, embed(encoder, test.sensor), num_classes, seed=seed, **PROBE
    )
    return weighted_f1(test.labels, scores.argmax(axis=1))


def supervised_control(seed: int, train, test, num_classes: int, epochs: int) -> float:
    torch.manual_seed(seed)
    channels, length = train.sensor.shape[1:]
    encoder = Imu2ClipSensorEncoder(Imu2ClipSensorParams(), channels, length)
    model = nn.Sequential(encoder, nn.Linear(encoder.out_dim, num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=SUPERVISED_LR, weight_decay=SUPERVISED_WD)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(train.sensor), torch.from_numpy(train.labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), SUPERVISED_BATCH):
            idx = order[start : start + SUPERVISED_BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    logits = embed(model, test.sensor)
    return weighted_f1(test.labels, logits.argmax(axis=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    params = SyntheticKitchenParams(preset=args.preset, **parse_knobs(args.knob))
    data = DataSettings(sensor_length=args.sensor_length, seed=args.data_seed)
    source = build_synthetic_kitchen(params, data)
    train, test = source.split("train"), source.split("test")
    num_classes = len(source.class_names)
    null_share = float(np.mean(test.labels == 0))
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"preset: {args.preset}  knobs: {source.knobs.to_dict()}")
    print(
        f"data seed {args.data_seed}; windows train/val/test: {len(train)}/{len(source.split('val'))}/{len(test)}; "
        f"test Null share {null_share:.2f}; built in {time.perf_counter() - began:.1f} s"
    )
    print(f"{'seed':>4}  {'random probe wF1':>16}  {'supervised wF1':>14}  {'seconds':>7}")
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        a = random_control(seed, train, test, num_classes)
        b = supervised_control(seed, train, test, num_classes, args.epochs)
        rows.append((a, b))
        print(f"{seed:>4}  {a:>16.3f}  {b:>14.3f}  {time.perf_counter() - t0:>7.1f}", flush=True)
    a_all, b_all = np.array(rows).T
    passed_a, passed_b = a_all.mean() <= RANDOM_MAX, b_all.mean() >= SUPERVISED_MIN
    print(
        f"random encoder + linear probe: {a_all.mean():.3f} +/- {a_all.std():.3f}  "
        f"(target <= {RANDOM_MAX:.2f}) {'PASS' if passed_a else 'FAIL'}"
    )
    print(
        f"supervised end to end ({args.epochs} epochs): {b_all.mean():.3f} +/- {b_all.std():.3f}  "
        f"(target >= {SUPERVISED_MIN:.2f}) {'PASS' if passed_b else 'FAIL'}"
    )
    print(f"overall: {'PASS' if passed_a and passed_b else 'FAIL'}; wall time {time.perf_counter() - began:.1f} s")
    return 0 if passed_a and passed_b else 1


if __name__ == "__main__":
    sys.exit(main())
