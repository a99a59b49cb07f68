"""What tracking and cached features cost one trial, as ratios measured in this run.

1. Logging on / off: the same trial (validation, sample grids and checkpoints included)
   with the MLflow tracker against the embedded server, and with tracking disabled. Runs
   alternate on/off, off/on, ... so a machine that speeds up or slows down mid-benchmark
   skews both arms alike; each round gives one paired ratio, and the median is printed.
   - step time: the training loop (``Trial.run``), where the tracker's background sends
     (and, here, the tracking server and S3 on the same two cores) compete with training;
   - end-of-run flush: what ``finish()`` then waits for (the last uploads), and the whole
     trial including it.
2. Cached / recomputed input features: two trials built side by side, one reading the
   encoder's input features from the dataset and one running the encoder on every batch,
   stepped alternately; the ratio of their median step times. Measured for each encoder in
   ``--encoders``. FaceNet (the thesis's encoder) has no weights offline: its arm builds the
   same network with random weights saved to a file, prepares ``--facenet-photos`` photos
   with it, and trains on them. The compute is identical, the embeddings meaningless.

    python benchmarks/trainer_overhead.py [--data s3://frontalab/datasets/demo] [--steps 60] [--rounds 4]
        [--encoders dlib-resnet,facenet-vggface2] [key=value ...]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from frontalab.config import load_config
from frontalab.paths import faces_dir
from frontalab.platform import services
from frontalab.platform.trainer import Trial, mlflow_tracker_factory

BENCH_DIR = Path(tempfile.gettempdir()) / "frontalab-bench"


def make_trial(data: str, steps: int, *overrides: str) -> Trial:
    cfg = load_config(None, ["model.out_size=64", f"data.path={data}", f"train.steps={steps}", "train.batch_size=8",
                             "train.val_faces=16", "train.log_every=10", "train.val_every=20",
                             f"train.checkpoint_every={steps}", "tracking.experiment=benchmark-trainer",
                             f"train.checkpoint_dir={BENCH_DIR / str(time.time_ns())}", *overrides])
    return Trial(cfg, mlflow_tracker_factory())


def timed_run(data: str, steps: int, *overrides: str) -> tuple[float, float]:
    """Seconds of the training loop, and of the end-of-run flush after it."""
    trial = make_trial(data, steps, *overrides)
    start = time.perf_counter()
    trial.run()
    loop_end = time.perf_counter()
    trial.tracker.finish()
    return loop_end - start, time.perf_counter() - loop_end


def logging_overhead(data: str, steps: int, rounds: int, overrides: list[str]) -> None:
    on, off = [], []
    for r in range(rounds):
        arms = [(on, []), (off, ["tracking.enabled=false"])]
        for times, extra in (arms if r % 2 == 0 else arms[::-1]):
            times.append(timed_run(data, steps, *overrides, *extra))
            print(f"  round {r + 1} {'on ' if times is on else 'off'}: loop {times[-1][0]:.2f} s, "
                  f"flush {times[-1][1]:.2f} s", flush=True)
    paired = [a[0] / b[0] for a, b in zip(on, off)]
    loop_on, loop_off = statistics.median(t for t, _ in on), statistics.median(t for t, _ in off)
    flush = statistics.median(f for _, f in on)
    print(f"logging on  : loop {loop_on:.2f} s for {steps} steps, then {flush:.2f} s end-of-run flush")
    print(f"logging off : loop {loop_off:.2f} s")
    print(f"step-time ratio on/off: {statistics.median(paired):.3f} (median of {rounds} paired rounds; "
          f"per round {', '.join(f'{p:.3f}' for p in paired)})")
    print(f"whole-trial ratio on/off, flush included: {(loop_on + flush) / loop_off:.3f}")


def facenet_dataset(photos: int) -> tuple[str, str]:
    """A local dataset of ``photos`` UTKFace photos with FaceNet features from a random-weights file."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    folder = BENCH_DIR / f"facenet-random-{photos}"
    weights = folder / "facenet-random.pt"
    if not (folder / "data" / "manifest.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), weights)
        print(f"  preparing {photos} photos with FaceNet (random weights) into {folder / 'data'}", flush=True)
        subprocess.run([sys.executable, "-m", "frontalab", "prepare", "--source", str(faces_dir() / "utkface"),
                        "--out", str(folder / "data"), "--limit", str(photos), "--encoders", "facenet-vggface2"],
                       env={**os.environ, "FRONTALAB_FACENET_WEIGHTS": str(weights)}, check=True,
                       stdout=subprocess.DEVNULL)
    return str(folder / "data"), str(weights)


def cached_speedup(data: str, encoder: str, steps: int, rounds: int, overrides: list[str]) -> None:
    extra = [f"encoder.name={encoder}", "tracking.enabled=false", *overrides]
    if encoder.startswith("facenet"):
        data, weights = facenet_dataset(64)
        extra.append(f"encoder.weights={weights}")
    cached = make_trial(data, steps, *extra)
    live = make_trial(data, steps, *extra, "data.cached_features=false")
    times: dict[str, list[float]] = {"cached": [], "recomputed": []}
    for name, trial in (("cached", cached), ("recomputed", live)):
        for _ in range(3):  # warm-up: allocator, oneDNN primitives
            trial.train_step()
    for _ in range(steps * rounds // 2):
        for name, trial in (("cached", cached), ("recomputed", live)):
            start = time.perf_counter()
            trial.train_step()
            times[name].append(time.perf_counter() - start)
    c, r = statistics.median(times["cached"]), statistics.median(times["recomputed"])
    print(f"{encoder:17s} cached {1 / c:.2f} steps/s, recomputed {1 / r:.2f} steps/s: "
          f"speed-up {r / c:.2f}x ({len(times['cached'])} alternating steps each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="s3://frontalab/datasets/demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--encoders", default="dlib-resnet,facenet-vggface2",
                    help="encoders of the cached-features comparison, comma-separated")
    ap.add_argument("--skip-logging", action="store_true", help="only the cached-features comparison")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="trial config for both arms, e.g. train.workers=1")
    args = ap.parse_args()
    cfg = load_config()
    services.up(cfg.services, quiet=True)
    os.environ.update(services.client_env(cfg.services))

    if not args.skip_logging:
        print(f"logging on vs off: {args.rounds} rounds of {args.steps} steps each", flush=True)
        logging_overhead(args.data, args.steps, args.rounds, args.overrides)
    print("cached vs recomputed input features (batch 8, 64 px):", flush=True)
    for encoder in filter(None, args.encoders.split(",")):
        cached_speedup(args.data, encoder, args.steps, args.rounds, args.overrides)


if __name__ == "__main__":
    main()
