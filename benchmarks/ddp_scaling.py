"""Images per second of one trial on 1 and on 2 data-parallel workers (`frontalab.training.workers`), one torch
thread each, and their ratio (last line).

The same trial (thesis decoder at ``--size`` px with D and the identity relation, global batch ``--batch``,
tracking off) trains ``--steps`` steps, then as many again; the rate is over the latter, between the reports at
their ends (a checkpoint at each; a validation of 2 faces at the last: both arms pay them). One worker is
`run_trial` in this process, today's path; two workers are a Ray Train job (gloo) on embedded Ray, each with one
thread. On this machine's 2 cores the 2-worker arm has a core per worker; the target is 1.6x.

    python benchmarks/ddp_scaling.py [--data DATASET] [--size 128] [--batch 32] [--steps 20]

Workers are for long runs, at 128 px (the identity recipe) and more, so 128 px is the default. At 64 px
(``--size 64 --steps 40``) a step is many small operations whose cost does not halve with the batch, and the
ratio is lower (1.5x when written; docs/SCALE.md).

Without ``--data`` it prepares 96 UTKFace photos from $FRONTALAB_FACES into a temporary folder first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from frontalab.compute import connect
from frontalab.config import load_config
from frontalab.paths import faces_dir
from frontalab.training.trial import mlflow_tracker_factory, run_trial
from frontalab.training.workers import train_on_workers


def prepared(tmp: Path) -> Path:
    source, out = tmp / "src", tmp / "faces"
    source.mkdir()
    for photo in sorted((faces_dir() / "utkface").glob("*.jpg"))[:96]:
        (source / photo.name).symlink_to(photo)
    subprocess.run([sys.executable, "-m", "frontalab", "prepare", "--source", str(source), "--out", str(out)],
                   check=True, capture_output=True)
    return out


def rate(reports: list[tuple[float, float]], warmup: int, batch: int) -> float:
    """Images/s between the reports at step ``warmup`` and at the last step."""
    at = dict((step, t) for step, t in reports)
    last = max(at)
    return (last - warmup) * batch / (at[last] - at[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--batch", type=int, default=32, help="the whole batch (sweeps/thesis.yaml: 32)")
    ap.add_argument("--steps", type=int, default=20, help="steps timed, after as many untimed")
    ap.add_argument("--size", type=int, default=128, choices=(64, 128),
                    help="output side (model.out_size): 128, the identity recipe's; workers are for long runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(prepared(Path(tmp)))
        total = 2 * args.steps
        overrides = [f"model.out_size={args.size}", f"data.path={data}", f"train.batch_size={args.batch}", "train.val_faces=2",
                     f"train.steps={total}", f"train.checkpoint_every={args.steps}", f"train.val_every={total}",
                     "train.workers=1", "tracking.enabled=false", "loss.adversarial=1", "loss.identity_relation=5"]
        rates = {}
        for workers in (1, 2):
            cfg = load_config(None, overrides + [f"resources.workers={workers}",
                                                 f"train.checkpoint_dir={tmp}/ckpt{workers}"])
            reports: list[tuple[float, float]] = []

            def report(metrics, checkpoint):
                reports.append((metrics["step"], time.perf_counter()))

            if workers == 1:
                run_trial(cfg, report=report)
            else:
                connect(num_cpus=2)
                train_on_workers(cfg, mlflow_tracker_factory(), storage=f"{tmp}/ray-train", name="ddp-scaling",
                                 report=report)
                ray.shutdown()
            rates[workers] = rate(reports, args.steps, args.batch)
            print(f"{workers} worker(s): {rates[workers]:.2f} images/s ({args.size} px, batch {args.batch}, {args.steps} steps)")
        print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
