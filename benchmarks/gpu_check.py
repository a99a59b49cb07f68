"""GPU check: how fast a 320 px thesis trial trains on one GPU, alone and with 2 or 4 trials sharing it.

A trial here is the full training step of `frontalab train` (`frontalab.training.step.Learner`: G, D,
the landmark student, the identity encoder; bf16 autocast, channels-last, TF32 and fused Adam by their
CUDA defaults; torch.compile only with ``--compile enabled``) fed by the streaming loader
(`frontalab.data.stream`) from a synthetic dataset in the real format. For 1, 2 and 4 trials (processes)
at once it reports images/s of all trials together, peak GPU memory per trial, GPU utilisation sampled
by nvidia-smi while the timed steps run, and the share of the time a trial waited for its loader.
A few minutes on an H200; the measured numbers are in docs/SCALE.md.

    python benchmarks/gpu_check.py [--size 320] [--batch 32] [--steps 30] [--out gpu_check.json]
    python benchmarks/gpu_check.py --smoke     # CPU, 64 px, 2 steps, 1 and 2 trials: `make test` runs it

Dependencies: torch, numpy, pandas, pyarrow, pillow, omegaconf and kornia (carry wheels of omegaconf,
antlr4-python3-runtime, platformdirs, kornia and kornia_rs where missing), and this source tree on
PYTHONPATH; no services, dlib, MLflow, Ray or face_recognition_models. The dlib encoder's converted
weights: ``--encoder-bundle FILE``, written here by ``--write-encoder-bundle FILE`` (where
face_recognition_models is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_faces import write_dataset  # noqa: E402

from frontalab.config import load_config  # noqa: E402
from frontalab.data.stream import ShardStream, feature_sample  # noqa: E402
from frontalab.losses.papers import build_generator  # noqa: E402
from frontalab.models.build import encoder_from_config  # noqa: E402
from frontalab.models.encoders import encoder_bundle, encoder_from_bundle  # noqa: E402
from frontalab.models.landmark_net import load_landmark_net  # noqa: E402
from frontalab.training.step import Learner  # noqa: E402


BARRIER_SECONDS = 600  # a trial waits this long for the others to be warm


def build_learner(data: str, size: int, batch: int, device: torch.device, compile: str = "disabled",
                  encoder_bundle: str = "") -> Learner:
    """What a 320 px thesis trial trains, as `frontalab train` builds it (the dataset's features standardised)."""
    cfg = load_config(None, [f"model.out_size={size}", f"data.path={data}", f"train.batch_size={batch}",
                             f"train.device={device}", "tracking.enabled=false", f"train.compile={compile}"])
    encoder = (encoder_from_bundle(torch.load(encoder_bundle, weights_only=True)) if encoder_bundle
               else encoder_from_config(cfg)).to(device)
    landmark_net = load_landmark_net().to(device).eval().requires_grad_(False)
    features = feature_sample(data, "train", cfg.encoder.name, 1024)
    G = build_generator(cfg, features.shape[1])
    G.standardize.fit(features)
    return Learner(cfg, G, encoder, landmark_net, device)


def trial(args: argparse.Namespace) -> dict:
    """One trial's timed steps (after warm-up, and after every trial sharing the device is warm)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    learner = build_learner(args.data, args.size, args.batch, device, args.compile, args.encoder_bundle)
    stream = ShardStream(args.data, "train", learner.cfg.encoder.name, args.size, args.batch, seed=args.rank,
                         window=2, threads=2, pin=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(args.warmup):
        learner.step(stream.next(device), step)
    sync()
    Path(args.barrier, f"ready-{args.rank}").touch()
    deadline = time.monotonic() + BARRIER_SECONDS
    while len(list(Path(args.barrier).glob("ready-*"))) < args.trials:
        if time.monotonic() > deadline:
            raise SystemExit(f"gpu_check: trial {args.rank}: the other trials never got ready")
        time.sleep(0.05)
    start = time.perf_counter()
    waited = 0.0  # host time spent waiting for the loader: the share of a step the data path costs
    for step in range(args.warmup, args.warmup + args.steps):
        asked = time.perf_counter()
        batch = stream.next(device)
        waited += time.perf_counter() - asked
        learner.step(batch, step)
    sync()
    seconds = time.perf_counter() - start
    stream.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": args.steps * args.batch / seconds, "step_s": seconds / args.steps, "peak_memory_gib": peak,
            "loader_wait_share": waited / seconds}


class UtilisationSampler(threading.Thread):
    """nvidia-smi's GPU utilisation every 0.2 s (none where there is no nvidia-smi)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)


def shared(args: argparse.Namespace, trials: int) -> dict:
    """``trials`` processes training at once on the device; their images/s summed."""
    with tempfile.TemporaryDirectory() as barrier:
        argv = [sys.executable, __file__, "--worker", "--data", args.data, "--size", str(args.size), "--batch",
                str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                "--trials", str(trials), "--barrier", barrier, "--threads", str(args.threads),
                "--compile", args.compile] + (["--encoder-bundle", args.encoder_bundle] if args.encoder_bundle else [])
        procs = [subprocess.Popen(argv + ["--rank", str(rank)], stdout=subprocess.PIPE, text=True)
                 for rank in range(trials)]
        sampler = UtilisationSampler()
        while len(list(Path(barrier).glob("ready-*"))) < trials and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        sampler.start()
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):  # one failed (out of memory?): stop the rest
                for p in procs:
                    p.kill()
            time.sleep(0.2)
        outs = [p.stdout.read() for p in procs]
        sampler.stop.set()
    if any(p.returncode for p in procs):
        raise SystemExit(f"gpu_check: a trial process failed ({[p.returncode for p in procs]})")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    util = sampler.samples
    peaks = [r["peak_memory_gib"] for r in results if r["peak_memory_gib"] is not None]
    return {"trials": trials, "images_per_s": sum(r["images_per_s"] for r in results),
            "step_s": max(r["step_s"] for r in results),
            "peak_memory_gib_per_trial": max(peaks) if peaks else None,
            "loader_wait_share": max(r["loader_wait_share"] for r in results),
            "gpu_utilisation_mean": sum(util) / len(util) if util else None, "utilisation_samples": len(util)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, 64 px, 2 steps, 1 and 2 trials")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per trial")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    ap.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", default="disabled", choices=("auto", "enabled", "disabled"),
                    help="train.compile (its default, disabled: measured no faster on an H200)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per trial; 0 = torch's default")
    ap.add_argument("--encoder-bundle", default="")
    ap.add_argument("--write-encoder-bundle", default="", metavar="FILE")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.trials = args.trials[0]
        print(json.dumps(trial(args)))
        return
    if args.write_encoder_bundle:
        cfg = load_config(None, [])
        torch.save(encoder_bundle(encoder_from_config(cfg)), args.write_encoder_bundle)
        print(f"gpu_check: wrote {args.write_encoder_bundle}")
        return
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup, args.trials = 64, 4, 2, 1, [1, 2]
        args.device, args.threads = "cpu", 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (run with --smoke for the CPU check)")
    with tempfile.TemporaryDirectory() as tmp:
        args.data = str(write_dataset(Path(tmp) / "faces", args.size, shards=4, per_shard=64 if args.smoke else 256))
        env = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "size": args.size, "batch": args.batch, "steps": args.steps}
        print(f"gpu_check: {env}", file=sys.stderr)
        rows = []
        for n in args.trials:
            rows.append(shared(args, n))
            r = rows[-1]
            mem = f"{r['peak_memory_gib_per_trial']:.1f} GiB" if r["peak_memory_gib_per_trial"] is not None else "-"
            util = f"{r['gpu_utilisation_mean']:.0f}%" if r["gpu_utilisation_mean"] is not None else "-"
            print(f"{n} trial(s): {r['images_per_s']:8.1f} images/s  step {r['step_s']:.3f} s  "
                  f"peak {mem}/trial  utilisation {util}  loader wait {r['loader_wait_share']:.0%}", flush=True)
            if args.out:  # after every setting, so a run stopped at its time limit keeps what it measured
                Path(args.out).write_text(json.dumps({**env, "compile": args.compile, "settings": rows}, indent=1))
    base = rows[0]["images_per_s"]
    print(" ".join(f"shared{r['trials']}_over_one={r['images_per_s'] / base:.2f}" for r in rows[1:]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
