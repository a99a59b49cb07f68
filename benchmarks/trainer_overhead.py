"""What tracking and cached features cost one trial, as ratios measured in this run.

1. logging on / logging off: the same steps (validation, grids, checkpoints included) with
   the MLflow tracker against the embedded server, and with tracking disabled;
2. cached / recomputed input features: steps/s when the encoder's input features come from
   the dataset vs an encoder forward on every batch.

Measurements alternate between the two arms (``--rounds``) and report medians, so a busy
machine skews both alike.

    python benchmarks/trainer_overhead.py [--data s3://frontalab/datasets/demo] [--steps 60] [--rounds 3] [key=value ...]
"""

import argparse
import os
import statistics
import time

from frontalab.config import load_config
from frontalab.platform import services
from frontalab.platform.trainer import Trial, mlflow_tracker_factory


def make_trial(data: str, steps: int, *overrides: str) -> Trial:
    cfg = load_config(None, ["model.out_size=64", f"data.path={data}", f"train.steps={steps}", "train.batch_size=8",
                             "train.val_faces=16", "train.log_every=10", "train.val_every=20",
                             f"train.checkpoint_every={steps}", "tracking.experiment=benchmark-trainer",
                             f"train.checkpoint_dir={os.path.join('/tmp', 'frontalab-bench', str(time.time_ns()))}",
                             *overrides])
    return Trial(cfg, mlflow_tracker_factory())


def timed_run(data: str, steps: int, *overrides: str) -> float:
    trial = make_trial(data, steps, *overrides)
    start = time.perf_counter()
    trial.run()
    trial.tracker.finish()  # what is still queued is part of logging's cost
    return time.perf_counter() - start


def steps_per_second(data: str, steps: int, *overrides: str) -> float:
    trial = make_trial(data, steps, "tracking.enabled=false", *overrides)
    for _ in range(3):  # warm-up
        trial.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trial.train_step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="s3://frontalab/datasets/demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="trial config for both arms, e.g. train.workers=1")
    args = ap.parse_args()
    cfg = load_config()
    services.up(cfg.services, quiet=True)
    os.environ.update(services.client_env(cfg.services))

    on, off = [], []
    for _ in range(args.rounds):
        on.append(timed_run(args.data, args.steps, *args.overrides))
        off.append(timed_run(args.data, args.steps, "tracking.enabled=false", *args.overrides))
    print(f"logging on  : {statistics.median(on):.2f} s for {args.steps} steps (runs: {', '.join(f'{t:.2f}' for t in on)})")
    print(f"logging off : {statistics.median(off):.2f} s (runs: {', '.join(f'{t:.2f}' for t in off)})")
    print(f"ratio on/off: {statistics.median(on) / statistics.median(off):.3f}")

    cached, live = [], []
    for _ in range(args.rounds):
        cached.append(steps_per_second(args.data, args.steps // 2, *args.overrides))
        live.append(steps_per_second(args.data, args.steps // 2, "data.cached_features=false", *args.overrides))
    print(f"cached features    : {statistics.median(cached):.2f} steps/s")
    print(f"recomputed features: {statistics.median(live):.2f} steps/s")
    print(f"speed-up cached/recomputed: {statistics.median(cached) / statistics.median(live):.2f}x")


if __name__ == "__main__":
    main()
