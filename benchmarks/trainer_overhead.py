"""What tracking and cached features cost one trial, as ratios measured in this run.

1. Logging on / off: two identical trials (same seed, so the same batches and work) in this
   process, each with an MLflow tracker against the embedded server, trained in alternating
   blocks of ``train.val_every`` steps at the default logging cadence (metrics every 10 steps;
   validation and a sample grid every 50; a checkpoint, 25 MB uploaded, every 250) unless
   overridden. In each block both trials train the same steps, one tracked and one with its
   tracker swapped for the untracked one; the roles swap every two blocks and the order every
   block (X on, Y off | Y off, X on | Y on, X off | X off, Y on | ...).
   Why roles swap: two identical models in one process do not run equally fast (memory
   placement, the shared cache of a VM; an A/A run differs by a few %, consistently within a
   run), so a fixed tracked object would add its bias to the ratio. Wall time on a shared VM
   drifts by ±10% between runs, more than the effect measured; blocks seconds apart, in one
   process with one heap and one set of threads, drift together. The bootstrap interval over
   the paired blocks says how far a ratio can be trusted.
   - A block runs from mid-interval to mid-interval (steps 25-75, 75-125, ...), so the
     validation's metrics, sample grid and checkpoint are sent while the tracked trial trains
     on, as in a real run. The tracked block ends with a flush, counted in its time, so no
     send spills into the untracked block.
   - Printed: the median of the paired block ratios (step time), the ratio of the blocks'
     total times with a bootstrap interval, and the wait for each run's end (``finish``).
   - CPU seconds of the sender processes and of the embedded services (MLflow, S3) during
     tracked and untracked blocks. What they use in untracked blocks is background that reaches
     both arms (system-metrics sampling: both senders sample); their excess in tracked blocks is
     the logging's own work, also printed as a share of the untracked blocks' time: the ratio to
     expect where no core is spare, so that each of its CPU-seconds stalls the lock-stepped
     training threads.
   - ``--services-apart`` emulates a cluster, where the tracking server and S3 run on other
     machines: their threads are pinned to the last CPU, and this process (training and its
     senders) to the others, with one training thread fewer. Without it, on a small machine the
     services' work for the tracked trial (storing a 25 MB checkpoint costs SeaweedFS ~0.35
     CPU-seconds) competes with the training threads.
2. Cached / recomputed input features: two trials built side by side, one reading the
   encoder's input features from the dataset and one running the encoder on every batch,
   stepped alternately ``--steps`` times each; the ratio of their median step times. Measured for
   each encoder in ``--encoders``, with its ceiling: the identity loss runs the same encoder forward
   and backward on the outputs in every step, so even were the rest of the step free, the saving
   would be bounded. FaceNet (the thesis's encoder) has no weights offline: its arm builds the
   same network with random weights saved to a file, prepares 64 UTKFace photos with it,
   and trains on them. The compute is identical, the embeddings meaningless.

    python benchmarks/trainer_overhead.py [--data s3://frontalab/datasets/demo] [--blocks 16] [--services-apart] [--steps 60]
        [--encoders dlib-resnet,facenet-vggface2] [key=value ...]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from frontalab.config import load_config
from frontalab.losses.objectives import embed_faces
from frontalab.paths import faces_dir
from frontalab import services
from frontalab.tracking.tracker import NullTracker
from frontalab.training.trial import Trial, mlflow_tracker_factory

BENCH_DIR = Path(tempfile.gettempdir()) / "frontalab-bench"  # kept between runs: the FaceNet-features dataset
CHECKPOINTS = tempfile.TemporaryDirectory(prefix="trainer-overhead-")  # deleted when the benchmark exits


def make_trial(data: str, steps: int, *overrides: str) -> Trial:
    cfg = load_config(None, ["model.out_size=64", f"data.path={data}", f"train.steps={steps}", "train.batch_size=8",
                             "tracking.experiment=benchmark-trainer",
                             f"train.checkpoint_dir={Path(CHECKPOINTS.name) / str(time.time_ns())}", *overrides])
    return Trial(cfg, mlflow_tracker_factory())


def service_processes() -> list:
    """The embedded tracking server's and S3's processes (none for remote services)."""
    import psutil

    st = services.status(load_config().services)
    procs = [psutil.Process(pid) for pid in filter(None, (st["mlflow_pid"], st["s3_pid"]))]
    return [p for proc in procs for p in (proc, *proc.children(recursive=True))]


def cpu_seconds(procs: list) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs (Linux; 0 elsewhere): on a shared VM it
    lengthens whichever block it falls in."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def sender_processes() -> list:
    """The trial's MLflow sender (it also runs MLflow's system-metrics monitor): a child process."""
    import psutil

    return [p for p in psutil.Process().children() if "frontalab.tracking.sender" in " ".join(p.cmdline())]


@contextmanager
def services_apart() -> Iterator[list[str]]:
    """Pin the embedded services' threads to the last CPU and this process to the others; yields
    the training-thread override for the CPUs left. Restores every affinity on the way out."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--services-apart needs at least 2 CPUs")
    mine, theirs = cpus[:-1], cpus[-1:]
    threads = [t.id for proc in service_processes() for t in proc.threads()]
    for tid in threads:
        os.sched_setaffinity(tid, theirs)
    os.sched_setaffinity(0, mine)  # before any training thread or the sender exists: they inherit it
    print(f"  services on CPU {theirs[0]}, training on CPU {','.join(map(str, mine))}", flush=True)
    try:
        yield [f"train.workers={len(mine)}"]
    finally:
        os.sched_setaffinity(0, cpus)
        for tid in threads + [t.id for proc in service_processes() for t in proc.threads()]:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass


def bootstrap_interval(on: list[float], off: list[float], draws: int = 10000) -> tuple[float, float]:
    """95% interval of sum(on) / sum(off), resampling the paired blocks (seeded: the same data, the same interval)."""
    import random

    rng, pairs = random.Random(0), list(zip(on, off))
    ratios = sorted(sum(a for a, _ in sample) / sum(b for _, b in sample)
                    for sample in (rng.choices(pairs, k=len(pairs)) for _ in range(draws)))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def logging_overhead(data: str, blocks: int, overrides: list[str]) -> None:
    every = load_config(None, overrides).train.val_every
    half = every // 2
    steps = half + blocks * every
    trials = [make_trial(data, steps, *overrides) for _ in range(2)]
    trackers, untracked = [trial.tracker for trial in trials], NullTracker()
    sender, procs = sender_processes(), service_processes()
    seconds = {arm: [] for arm in ("on", "off")}
    cpu = {arm: {"sender": 0.0, "services": 0.0, "trial": 0.0, "stolen": 0.0} for arm in seconds}

    def block(index: int, arm: str, until: int) -> None:
        trial = trials[index]
        trial.tracker = trackers[index] if arm == "on" else untracked
        before = cpu_seconds(sender), cpu_seconds(procs), time.process_time(), stolen_seconds()
        start = time.perf_counter()
        trial.run(until=until)
        trial.tracker.flush()
        seconds[arm].append(time.perf_counter() - start)
        for key, was, now in zip(("sender", "services", "trial", "stolen"), before,
                                 (cpu_seconds(sender), cpu_seconds(procs), time.process_time(), stolen_seconds())):
            cpu[arm][key] += now - was

    for index in range(2):  # warm-up, tracked: the run's first validation, allocator and oneDNN primitives
        block(index, "on", half)
    seconds["on"].clear()
    for counts in cpu.values():
        counts.update(dict.fromkeys(counts, 0.0))

    def tracked_in(b: int) -> int:  # X (0) is tracked in blocks 0, 1, 4, 5, ...; Y (1) in 2, 3, 6, 7, ...
        return (b // 2) % 2

    for b in range(blocks):
        until = half + (b + 1) * every
        order = [(tracked_in(b), "on"), (1 - tracked_in(b), "off")]
        for index, arm in (order if b % 2 == 0 else order[::-1]):
            block(index, arm, until)
            print(f"  block {b + 1}/{blocks} (steps {until - every}-{until}) {'XY'[index]} {arm:3s}: "
                  f"{seconds[arm][-1]:.2f} s", flush=True)
    for trial, tracker in zip(trials, trackers):
        trial.tracker = tracker
    end = time.perf_counter()
    for tracker in trackers:
        tracker.finish()
    finish = (time.perf_counter() - end) / len(trackers)

    on, off = seconds["on"], seconds["off"]
    paired = [a / b for a, b in zip(on, off)]
    print(f"logging on  : {statistics.median(on):.2f} s per block of {every} steps (median), "
          f"then {finish:.2f} s to finish each run")
    print(f"logging off : {statistics.median(off):.2f} s per block")
    print(f"step-time ratio on/off: {statistics.median(paired):.3f} (median of {blocks} paired blocks; "
          f"per block {', '.join(f'{p:.3f}' for p in paired)})")
    low, high = bootstrap_interval(on, off)
    print(f"  ratio of total block times: {sum(on) / sum(off):.3f} (95% bootstrap interval over the paired blocks "
          f"{low:.3f}-{high:.3f})")
    for i in range(2):  # each trial's own tracked vs untracked blocks: the bias the role swap cancels
        mine_on = sum(on[b] for b in range(blocks) if tracked_in(b) == i)
        mine_off = sum(off[b] for b in range(blocks) if tracked_in(b) != i)
        print(f"  trial {'XY'[i]} alone: {mine_on / mine_off:.3f}")
    trial_cpu = cpu["off"]["trial"]
    print(f"CPU seconds: the trial process {cpu['on']['trial']:.1f} in tracked blocks, {trial_cpu:.1f} in untracked "
          f"ones; the MLflow senders {cpu['on']['sender']:.2f} during tracked blocks "
          f"(= {100 * cpu['on']['sender'] / trial_cpu:.1f}% of the trial's CPU), "
          f"{cpu['off']['sender']:.2f} during untracked ones (system-metrics sampling)")
    print(f"  embedded MLflow + S3: {cpu['on']['services']:.2f} during tracked blocks, "
          f"{cpu['off']['services']:.2f} during untracked ones")
    print(f"  stolen by the hypervisor (all CPUs): {cpu['on']['stolen']:.2f} during tracked blocks, "
          f"{cpu['off']['stolen']:.2f} during untracked ones")
    work = sum(cpu["on"][key] - cpu["off"][key] for key in ("sender", "services"))
    print(f"the logging's own work (senders and services, tracked minus untracked blocks): {work:.2f} CPU-seconds "
          f"= {100 * work / sum(off):.1f}% of the untracked blocks' time: what it adds on a machine without a spare "
          f"core, where each of its CPU-seconds stalls the training threads, which step in lock-step")


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
    e = identity_pass_seconds(trials["cached"])
    print(f"{encoder:17s} cached {1 / c:.2f} steps/s, recomputed {1 / r:.2f} steps/s: "
          f"speed-up {r / c:.2f}x ({len(times['cached'])} alternating steps each)")
    print(f"{'':17s} ceiling {(e + r - c) / e:.2f}x, were all but the identity loss free: its encoder forward and "
          f"backward on the outputs ({1000 * e:.0f} ms) stay in every step; the inputs' forward costs {1000 * (r - c):.0f} ms")


def identity_pass_seconds(trial: Trial, reps: int = 20) -> float:
    """Median time of the encoder's part of the identity loss on a batch: forward and backward."""
    n = trial.cfg.train.batch_size
    faces, points = trial.val_batch["image"][:n], trial.val_batch["landmarks"][:n]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        embed_faces(trial.encoder, faces.clone().requires_grad_(), points).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # after warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="s3://frontalab/datasets/demo")
    ap.add_argument("--blocks", type=int, default=16,
                    help="paired blocks of train.val_every steps, logging on/off; a multiple of 4 (a full cycle of roles)")
    ap.add_argument("--steps", type=int, default=60, help="alternating steps of the cached-features comparison")
    ap.add_argument("--encoders", default="dlib-resnet,facenet-vggface2",
                    help="encoders of the cached-features comparison, comma-separated")
    ap.add_argument("--services-apart", action="store_true",
                    help="logging on/off with the embedded services pinned to a CPU of their own, as on a cluster")
    ap.add_argument("--skip-logging", action="store_true", help="only the cached-features comparison")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="trial config for both arms, e.g. train.workers=1")
    args = ap.parse_args()
    if args.blocks <= 0 or args.blocks % 4:
        ap.error(f"--blocks must be a positive multiple of 4, so that each trial is tracked as often as not "
                 f"and in both orders; got {args.blocks}")
    cfg = load_config()
    services.up(cfg.services, quiet=True)
    os.environ.update(services.client_env(cfg.services))
    if not args.skip_logging:
        print(f"logging on vs off: {args.blocks} paired blocks", flush=True)
        with services_apart() if args.services_apart else nullcontext([]) as pinned:
            logging_overhead(args.data, args.blocks, [*args.overrides, *pinned])
    print("cached vs recomputed input features (batch 8, 64 px):", flush=True)
    for encoder in filter(None, args.encoders.split(",")):
        cached_speedup(args.data, encoder, args.steps, args.overrides)


if __name__ == "__main__":
    main()
