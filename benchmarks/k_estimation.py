"""How often `model.clusterer.k: auto` finds the number of sensor locations: kitchens of 4, 7 and 10 fixtures.

For each layout and seed the synthetic kitchen is built (the quickstart preset: its benchmark-level sensor
nuisances, ~1000 training windows, 2 s windows at stride 1 s, 128 steps, as examples/quickstart.yaml reads them),
and the estimator (detach_framework/engine/locations.py) runs on the training split's sensor windows exactly as
training runs it, without labels. True K is the layout's number of fixtures (DETACH's K: one cluster per sensor
location, no "none").

    python benchmarks/k_estimation.py            # 3 layouts x 3 seeds (a few minutes on 2 CPU cores)
    python benchmarks/k_estimation.py --smoke    # the tiny preset, one kitchen
"""

from __future__ import annotations

import argparse
import sys
import time

from detach_framework.data.settings import DataSettings
from detach_framework.engine.locations import estimate_locations, train_windows
from detach_framework.errors import UserError
from detach_plugins.datasets.synthetic_kitchen import SyntheticKitchenParams, build_synthetic_kitchen

LAYOUTS = (4, 7, 10)
SEEDS = (0, 1, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quickstart", choices=("tiny", "quickstart", "benchmark"))
    parser.add_argument("--layouts", type=int, nargs="+", default=list(LAYOUTS), help="fixtures per kitchen")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="kitchen generation seeds")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset, 7 fixtures, seed 0")
    return parser.parse_args(argv)


def estimate_one(preset: str, fixtures: int, seed: int) -> tuple[int, int | None, float]:
    """(true K, estimated K or None where the estimator refuses the windows, seconds of the estimate)."""
    data = DataSettings(window_seconds=2.0, stride_seconds=1.0, frames=8, frame_size=48, sensor_length=128, seed=seed)
    source = build_synthetic_kitchen(SyntheticKitchenParams(preset=preset, layout={"fixtures": fixtures}), data)
    started = time.perf_counter()
    try:
        estimate = estimate_locations(train_windows(source.split("train")), list(source.channel_names)).chosen
    except UserError as exc:
        print(f"  layout {fixtures} seed {seed}: {exc}", file=sys.stderr)
        estimate = None
    return len(source.fixture_names), estimate, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset, layouts, seeds = ("tiny", [7], [0]) if args.smoke else (args.preset, args.layouts, args.seeds)
    print(f"preset {preset}: k: auto against each layout's number of fixtures")
    print(f"{'layout':>6} {'seed':>4} {'true K':>6} {'est. K':>6} {'right':>5} {'seconds':>7}")
    right = 0
    for fixtures in layouts:
        for seed in seeds:
            true, estimate, seconds = estimate_one(preset, fixtures, seed)
            ok = estimate == true
            right += ok
            shown = "-" if estimate is None else str(estimate)
            print(f"{fixtures:>6} {seed:>4} {true:>6} {shown:>6} {'yes' if ok else 'no':>5} {seconds:>7.2f}")
    print(f"right: {right}/{len(layouts) * len(seeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
