"""What tracking and cached features cost one trial, as ratios measured in this run.

1. Logging on / off: the same trial (validation, sample grids and checkpoints included)
   with the MLflow tracker against the embedded server, and with tracking disabled. Each
   run is a fresh process (no arm inherits another's heap or threads); runs alternate
   on/off, off/on, ... so a machine that speeds up or slows down mid-benchmark skews both
   arms alike; each round gives one paired ratio, and the median is printed, then the ratio
   of the total loop times and that of each block of two rounds (where order effects cancel).
   - step time: the training loop (``Trial.run``), where the tracker's sender process
     (and, here, the tracking server and S3 on the same two cores) compete with training;
   - end-of-run flush: what ``finish()`` then waits for (the last uploads), and the whole
     trial including it;
   - CPU seconds of the trial (its process and its MLflow sender process) plus the embedded
     services: wall time on a shared VM drifts by several percent between runs, CPU time far less.
2. Cached / recomputed input features: two trials built side by side, one reading the
   encoder's input features from the dataset and one running the encoder on every batch,
   stepped alternately ``--steps`` times each; the ratio of their median step times. Measured for each encoder in
   ``--encoders``. FaceNet (the thesis's encoder) has no weights offline: its arm builds the
   same network with random weights saved to a file, prepares 64 UTKFace photos with it,
   and trains on them. The compute is identical, the embeddings meaningless.

    python benchmarks/trainer_overhead.py [--data s3://frontalab/datasets/demo] [--steps 60] [--rounds 4]
        [--encoders dlib-resnet,facenet-vggface2] [key=value ...]
"""

import argparse
import json
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


def service_processes() -> list:
    """The embedded tracking server's and S3's processes (none for remote services)."""
    import psutil

    st = services.status(load_config().services)
    procs = [psutil.Process(pid) for pid in filter(None, (st["mlflow_pid"], st["s3_pid"]))]
    return [p for proc in procs for p in (proc, *proc.children(recursive=True))]


def cpu_seconds(procs: list) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def sender_processes() -> list:
    """The trial's MLflow sender (it also runs MLflow's system-metrics monitor): a child process."""
    import psutil

    return [p for p in psutil.Process().children() if "frontalab.platform.tracking" in " ".join(p.cmdline())]


def one_run(data: str, steps: int, overrides: list[str]) -> dict[str, float]:
    """One trial in this process: seconds of the training loop and of the end-of-run flush after
    it; CPU seconds of the trial (this process and its sender), of the sender, and of the services meanwhile."""
    trial = make_trial(data, steps, *overrides)
    procs, sender = service_processes(), sender_processes()
    services_before, cpu_before, sender_before = cpu_seconds(procs), time.process_time(), cpu_seconds(sender)
    start = time.perf_counter()
    trial.run()
    loop_end = time.perf_counter()
    sender_cpu = cpu_seconds(sender) - sender_before
    loop = {"loop": loop_end - start, "trial_cpu": time.process_time() - cpu_before + sender_cpu,
            "sender_cpu": sender_cpu, "services_cpu": cpu_seconds(procs) - services_before}
    trial.tracker.finish()
    return {**loop, "flush": time.perf_counter() - loop_end}


def run_in_child(data: str, steps: int, overrides: list[str]) -> dict[str, float]:
    """`one_run` in a fresh process, so that no arm inherits another's heap, threads or caches."""
    out = subprocess.run([sys.executable, __file__, "--one-run", "--data", data, "--steps", str(steps), *overrides],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def logging_overhead(data: str, steps: int, rounds: int, overrides: list[str]) -> None:
    on, off = [], []
    for r in range(rounds):
        arms = [(on, []), (off, ["tracking.enabled=false"])]
        for runs, extra in (arms if r % 2 == 0 else arms[::-1]):
            runs.append(run_in_child(data, steps, [*overrides, *extra]))
            print(f"  round {r + 1} {'on ' if runs is on else 'off'}: loop {runs[-1]['loop']:.2f} s, "
                  f"flush {runs[-1]['flush']:.2f} s", flush=True)

    def median(runs, key):
        return statistics.median(x[key] for x in runs)

    paired = [a["loop"] / b["loop"] for a, b in zip(on, off)]
    flush = median(on, "flush")
    print(f"logging on  : loop {median(on, 'loop'):.2f} s for {steps} steps, then {flush:.2f} s end-of-run flush")
    print(f"logging off : loop {median(off, 'loop'):.2f} s")
    print(f"step-time ratio on/off: {statistics.median(paired):.3f} (median of {rounds} paired rounds; "
          f"per round {', '.join(f'{p:.3f}' for p in paired)})")
    # Rounds alternate on-first and off-first, so a machine that is slower for a round's first
    # (or second) run skews single rounds but cancels in their sums.
    blocks = [sum(x["loop"] for x in on[r:r + 2]) / sum(x["loop"] for x in off[r:r + 2]) for r in range(0, rounds - 1, 2)]
    print(f"  ratio of total loop times: {sum(x['loop'] for x in on) / sum(x['loop'] for x in off):.3f}; "
          f"per block of two rounds (on-first + off-first): {', '.join(f'{b:.3f}' for b in blocks)}")
    print(f"whole-trial ratio on/off, flush included: {(median(on, 'loop') + flush) / median(off, 'loop'):.3f}")
    loop_cpu = median(off, "trial_cpu")
    print(f"CPU seconds during the loop: the trial {median(on, 'trial_cpu'):.1f} on, {loop_cpu:.1f} off; "
          f"of it the MLflow sender process (with system metrics) {median(on, 'sender_cpu'):.2f} "
          f"= {100 * median(on, 'sender_cpu') / loop_cpu:.1f}% of the trial's CPU")
    extra = median(on, "services_cpu") - median(off, "services_cpu")
    print(f"  embedded MLflow + S3: {median(on, 'services_cpu'):.2f} on, {median(off, 'services_cpu'):.2f} off "
          f"(idle): {extra:.2f} s for logging = {100 * extra / loop_cpu:.1f}% of the trial's CPU, on the same cores here")


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


def cached_speedup(data: str, encoder: str, steps: int, overrides: list[str]) -> None:
    extra = [f"encoder.name={encoder}", "tracking.enabled=false", *overrides]
    if encoder.startswith("facenet"):
        data, weights = facenet_dataset(64)
        extra.append(f"encoder.weights={weights}")
    trials = {"cached": make_trial(data, steps, *extra),
              "recomputed": make_trial(data, steps, *extra, "data.cached_features=false")}
    times: dict[str, list[float]] = {name: [] for name in trials}
    for trial in trials.values():
        for _ in range(3):  # warm-up: allocator, oneDNN primitives
            trial.train_step()
    for _ in range(steps):
        for name, trial in trials.items():
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
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)  # a logging arm's child process
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="trial config for both arms, e.g. train.workers=1")
    args = ap.parse_args()
    cfg = load_config()
    services.up(cfg.services, quiet=True)
    os.environ.update(services.client_env(cfg.services))
    if args.one_run:
        print(json.dumps(one_run(args.data, args.steps, args.overrides)))
        return

    if not args.skip_logging:
        print(f"logging on vs off: {args.rounds} rounds of {args.steps} steps each", flush=True)
        logging_overhead(args.data, args.steps, args.rounds, args.overrides)
    print("cached vs recomputed input features (batch 8, 64 px):", flush=True)
    for encoder in filter(None, args.encoders.split(",")):
        cached_speedup(args.data, encoder, args.steps, args.overrides)


if __name__ == "__main__":
    main()
