"""Is the loader the bottleneck on this CPU? Images/s of the streaming loader (`frontalab.data.stream`:
read, decode, shuffle, batch) with 1 and 2 decode threads, next to images/s of the training step it
feeds (`frontalab.training.step.Learner`, the full thesis step), at 128 and 320 px.

The data is synthetic in the real format (benchmarks/synthetic_faces.py), stored at the size trained.

    python benchmarks/loader_throughput.py [--batch 8] [--steps 2]

Each line ends ``loader_over_step=X``: above 1, the loader outruns the step with one thread to spare.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_learner  # noqa: E402
from synthetic_faces import write_dataset  # noqa: E402

from frontalab.data.stream import ShardStream  # noqa: E402


def loader_images_per_s(data: str, size: int, batch: int, threads: int) -> float:
    """Steady images/s over a whole epoch (window reads and decodes included) of 4 shards of 256 faces."""
    stream = ShardStream(data, "train", "dlib-resnet", size, batch, seed=0, window=2, threads=threads)
    cpu = torch.device("cpu")
    stream.next(cpu)  # the first window: start-up, not throughput
    batches = 1024 // batch
    start = time.perf_counter()
    for _ in range(batches):
        stream.next(cpu)
    seconds = time.perf_counter() - start
    stream.close()
    return batches * batch / seconds


def step_images_per_s(data: str, size: int, batch: int, steps: int) -> float:
    learner = build_learner(data, size, batch, torch.device("cpu"), compile="disabled")
    stream = ShardStream(data, "train", "dlib-resnet", size, batch, seed=0, window=2)
    learner.step(stream.next(torch.device("cpu")), 0)  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        learner.step(stream.next(torch.device("cpu")), step)
    seconds = time.perf_counter() - start
    stream.close()
    return steps * batch / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for size in (128, 320):
            data = str(write_dataset(Path(tmp) / f"faces{size}", size, shards=4))
            loader = {threads: loader_images_per_s(data, size, args.batch, threads) for threads in (1, 2)}
            step = step_images_per_s(data, size, args.batch, args.steps)
            print(f"{size} px: loader {loader[1]:7.1f} images/s (1 thread), {loader[2]:7.1f} (2 threads); "
                  f"training step {step:6.1f} images/s; loader_over_step={loader[1] / step:.1f}", flush=True)


if __name__ == "__main__":
    main()
