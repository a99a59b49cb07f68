"""Inference speed of the landmark student (`LandmarkNet`, packaged weights), in images/s.

Batches of ``--batch`` faces at 64 and 160 px (the generator's smallest output and the
dataset's crop; the student resizes both to its input size), forward only and forward +
backward to the input pixels (its cost as a loss network), with ``--threads`` torch threads.
Random pixels: speed does not depend on content. Untrained weights are used when the
packaged file is missing (same architecture from the config defaults).

    python benchmarks/landmark_speed.py [--batch 32] [--threads 2] [--repeats 5]
"""

import argparse
import os

import torch

from frontalab.models.landmark_net import LandmarkNet, load_landmark_net
from timing import best_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 160])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        net, what = load_landmark_net().frozen(), "packaged weights"
    except FileNotFoundError:
        from frontalab.config import load_config

        lc = load_config().landmarks
        net, what = LandmarkNet(lc.input_size, tuple(lc.widths)).frozen(), "untrained (no packaged weights)"
    params = sum(p.numel() for p in net.parameters())
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} cores; "
          f"LandmarkNet {net.config()} ({params / 1e6:.2f} M parameters, {what}); batch {args.batch}")
    print(f"{'input':<10}{'pass':<24}{'s/batch':>10}{'images/s':>10}")
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, generator=gen) * 2 - 1

        def forward():
            with torch.no_grad():
                net(x)

        def backward():
            xi = x.clone().requires_grad_(True)
            net(xi).sum().backward()

        for name, fn in (("forward", forward), ("forward+input grad", backward)):
            t = best_time(fn, args.repeats)
            print(f"{f'{size} px':<10}{name:<24}{t:>10.4f}{args.batch / t:>10.1f}")


if __name__ == "__main__":
    main()
