"""Forward+backward images/s of the thesis G (decoder) + D (discriminator) on this CPU.

Prints parameter counts and throughput at 64, 128 and 320 px. One G step here is the
decoder forward, D on the noisy face, and backward through both; the frozen encoder is
not included (its features are cached by data preparation).

    python benchmarks/generator_discriminator.py [--batch 8] [--repeats 3]
"""

import argparse
import time

import torch

from frontalab.models.thesis import Discriminator, ThesisDecoder

FEATURES = 256  # the dlib port's pooled feature vector


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images_per_second(size: int, batch: int, repeats: int) -> float:
    g, d = ThesisDecoder(FEATURES, out_size=size), Discriminator()
    x = torch.randn(batch, FEATURES)
    best = float("inf")
    for i in range(repeats + 1):  # the first pass warms up allocators and kernels
        start = time.perf_counter()
        out = g(x)
        loss = d(out.noisy).pow(2).mean() + out.composite.mean()
        loss.backward()
        elapsed = time.perf_counter() - start
        if i:
            best = min(best, elapsed)
    return batch / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'size':>5} {'G params':>12} {'D params':>10} {'img/s (fwd+bwd)':>16}")
    for size in (64, 128, 320):
        g, d = ThesisDecoder(FEATURES, out_size=size), Discriminator()
        ips = images_per_second(size, args.batch if size < 320 else max(1, args.batch // 4), args.repeats)
        print(f"{size:>5} {count(g):>12,} {count(d):>10,} {ips:>16.1f}")


if __name__ == "__main__":
    main()
