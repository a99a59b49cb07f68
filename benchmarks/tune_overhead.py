"""What Ray Tune + MLflow cost one trial, against the bare trainer loop with logging off.

Same trial config in both arms (64 px, batch 8, ``--steps`` steps, validation and checkpoints
as in sweeps/quick.yaml, one torch thread):

(a) bare: ``run_trial`` in this process with ``tracking.enabled=false`` (a tracker that only
    keeps what the loop hands it in memory, to read the loop's own ``train/steps_per_s``);
(b) Tune: a one-trial sweep of sweeps/quick.yaml through ``run_sweep`` (FIFO scheduler) on
    embedded Ray, with its MLflow child run and checkpoints in S3. Ray is started before the
    clock runs (a sweep pays it once, not per trial).

Printed:
- fixed cost of starting a trial: time from the call until the trial's step-0 metrics are
  logged (a new Ray worker process, imports, data, models, the MLflow run), Tune minus bare;
- steady-state step-time ratio: median ``train/steps_per_s`` of the bare loop over the Tune
  trial's, over logging intervals that contain no validation or checkpoint (both arms run the
  same code between those);
- whole-trial ratio: wall time of the one-trial sweep over the bare ``run_trial`` call;
- where the time goes: call -> the trial's MLflow run, -> step-0 metrics, the loop, the wrap-up.

Arms alternate over ``--rounds`` and medians are reported.

    python benchmarks/tune_overhead.py [--data s3://frontalab/datasets/demo] [--steps 200] [--rounds 1]
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from frontalab.config import load_config, load_sweep

REPO = Path(__file__).resolve().parent.parent
QUICK = str(REPO / "sweeps" / "quick.yaml")
LOG_EVERY, VAL_EVERY = 10, 50
# The searched keys of quick.yaml, pinned: the Tune trial and the bare loop train the same config.
PINNED = {"loss.texture": 20, "train.g_steps_per_d": 4}


class RecordingTracker:
    """A NullTracker that keeps the loop's metrics (and when they arrived) in memory."""

    run_id = None

    def __init__(self):
        self.points: list[tuple[float, int, dict]] = []

    def log_metrics(self, metrics, step):
        self.points.append((time.time(), step, dict(metrics)))

    def log_image(self, image, key, step): ...
    def log_artifact(self, path, artifact_path=None): ...
    def set_tags(self, tags): ...
    def flush(self, timeout=None): return True
    def finish(self, status="FINISHED", timeout=600): return True


def steady(rates_by_step: dict[int, float]) -> float:
    """Median steps/s over logging intervals that contain no validation or checkpoint."""
    clean = [r for s, r in rates_by_step.items() if s > LOG_EVERY and (s - LOG_EVERY) % VAL_EVERY != 0]
    return statistics.median(clean)


def overrides(data: str, steps: int) -> list[str]:
    return [f"base.data.path={data}", "base.model.out_size=64", f"base.train.steps={steps}", "base.train.batch_size=8",
            f"base.train.log_every={LOG_EVERY}", f"base.train.val_every={VAL_EVERY}",
            f"base.train.checkpoint_every={VAL_EVERY}", "base.train.workers=1", "scheduler.name=fifo",
            "num_samples=1", "max_concurrent=1", "resources.cpu=1", "max_failures=0",
            *[f"base.{k}={v}" for k, v in PINNED.items()], *[f"search.{k}={{choice:[{v}]}}" for k, v in PINNED.items()]]


def bare_config(data: str, steps: int):
    from omegaconf import OmegaConf

    _, trial_cfg = load_sweep(QUICK, overrides(data, steps))
    return load_config(None, ["tracking.enabled=false"], base=OmegaConf.to_container(trial_cfg, resolve=True))


def bare(data: str, steps: int) -> dict:
    from frontalab.training.trial import run_trial

    cfg = bare_config(data, steps)
    tracker = RecordingTracker()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as ckpt:
        run_trial(cfg, checkpoint_dir=Path(ckpt), tracker_factory=lambda **_: tracker)
    t1 = time.time()
    first = min(t for t, s, m in tracker.points if s == 0)
    last = max(t for t, s, m in tracker.points if "train/g/total" in m)
    rates = {s: m["train/steps_per_s"] for _, s, m in tracker.points if "train/steps_per_s" in m}
    return {"wall": t1 - t0, "start": first - t0, "steady": steady(rates), "loop": last - first, "end": t1 - last}


def tuned(data: str, steps: int, name: str) -> dict:
    from mlflow import MlflowClient

    from frontalab.sweep.tune import run_sweep

    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_sweep(QUICK, overrides(data, steps), name=name)
    t1 = time.time()
    client = MlflowClient()
    run_id = summary["best_run_id"]
    first = min(m.timestamp for m in client.get_metric_history(run_id, "val/mean_abs_yaw") if m.step == 0) / 1000
    last = max(m.timestamp for m in client.get_metric_history(run_id, "train/g/total")) / 1000
    opened = client.get_run(run_id).info.start_time / 1000
    rates = {m.step: m.value for m in client.get_metric_history(run_id, "train/steps_per_s")}
    return {"wall": t1 - t0, "start": first - t0, "steady": steady(rates), "loop": last - first, "end": t1 - last,
            "opened": opened - t0, "run_id": run_id}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="s3://frontalab/datasets/demo")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("overrides", nargs="*", metavar="services.KEY=VALUE", help="which services to use")
    args = ap.parse_args()

    from frontalab import services
    from frontalab.compute import connect

    cfg = load_config(None, args.overrides)
    services.up(cfg.services, quiet=True)
    os.environ.update(services.client_env(cfg.services))
    t = time.time()
    connect(num_cpus=2)
    print(f"embedded Ray up in {time.time() - t:.1f} s (not counted)")

    from frontalab.training.trial import Trial

    with tempfile.TemporaryDirectory() as ckpt:  # warm this process's caches (imports, weights, data): not counted
        Trial(bare_config(args.data, args.steps), lambda **_: RecordingTracker(), checkpoint_dir=Path(ckpt))
    a, b = [], []
    for r in range(args.rounds):
        a.append(bare(args.data, args.steps))
        b.append(tuned(args.data, args.steps, f"bench-tune-{time.strftime('%Y%m%d-%H%M%S')}-{r}"))
        print(f"round {r}: bare {a[-1]['wall']:.1f} s (start {a[-1]['start']:.1f} s, {a[-1]['steady']:.2f} steps/s); "
              f"tune {b[-1]['wall']:.1f} s (start {b[-1]['start']:.1f} s, {b[-1]['steady']:.2f} steps/s)")

    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    print(f"\n{args.steps}-step 64 px trial, batch 8, 1 thread ({args.rounds} round(s), medians)")
    print(f"start to step-0 metrics: bare {med(a, 'start'):.2f} s, tune+mlflow {med(b, 'start'):.2f} s")
    print(f"fixed cost of starting a trial (tune+mlflow - bare): {med(b, 'start') - med(a, 'start'):.2f} s")
    print(f"steady-state steps/s: bare {med(a, 'steady'):.3f}, tune+mlflow {med(b, 'steady'):.3f}")
    print(f"steady-state step-time ratio (tune+mlflow / bare): {med(a, 'steady') / med(b, 'steady'):.3f}")
    print(f"whole trial: bare {med(a, 'wall'):.1f} s, tune+mlflow {med(b, 'wall'):.1f} s; "
          f"ratio {med(b, 'wall') / med(a, 'wall'):.3f}")
    print("where the time goes (s)      bare   tune+mlflow")
    print(f"  call -> trial's MLflow run     -   {med(b, 'opened'):6.1f}  (driver set-up, Ray worker, imports, data, models)")
    print(f"  call -> step-0 metrics    {med(a, 'start'):6.1f}   {med(b, 'start'):6.1f}")
    print(f"  step 0 -> last step       {med(a, 'loop'):6.1f}   {med(b, 'loop'):6.1f}  (includes validations, checkpoints, reports)")
    print(f"  last step -> return       {med(a, 'end'):6.1f}   {med(b, 'end'):6.1f}  (final flush, Tune and sweep wrap-up)")


if __name__ == "__main__":
    main()
