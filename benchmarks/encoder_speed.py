"""Embedding speed of the dlib ResNet port (torch) against dlib itself, same chips, same threads.

Both get the same batch of 150x150 chips (dlib's own chips of real faces when
$FRONTALAB_FACES is available, else random pixels: speed does not depend on content).
torch runs with ``--threads`` threads; dlib's CPU network (the dlib-bin wheel has no BLAS)
is single-threaded, so the default of 1 thread compares like with like. Prints images/s of
each and the ratio; the port is meant to be >= 5x faster at a batch of 32.

    python benchmarks/encoder_speed.py [--batch 32] [--threads 1] [--repeats 3]
"""

import argparse
import os

import numpy as np
import torch

from frontalab.models.dlib_models import FACE_RECOGNITION_RESNET, SHAPE_PREDICTOR_5, model_path
from frontalab.models.encoders import build_encoder
from frontalab.paths import faces_dir
from timing import best_time


def load_chips(batch: int) -> tuple[np.ndarray, str]:
    """(batch, 150, 150, 3) uint8 chips: dlib's chips of UTKFace photos, else random."""
    import dlib

    folder = faces_dir() / "utkface"
    if folder.is_dir():
        detector = dlib.get_frontal_face_detector()
        shape5 = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))
        chips = []
        for path in sorted(folder.glob("*.jpg")):
            img = dlib.load_rgb_image(str(path))
            dets = detector(img, 1)
            if dets:
                chips.append(np.array(dlib.get_face_chip(img, shape5(img, dets[0]), 150, 0.25)))
            if len(chips) == batch:
                return np.stack(chips), f"dlib chips of {batch} UTKFace photos"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, 150, 150, 3), dtype=np.uint8), "random pixels"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import dlib

    torch.set_num_threads(args.threads)
    chips, what = load_chips(args.batch)
    encoder = build_encoder("dlib-resnet")
    recognizer = dlib.face_recognition_model_v1(str(model_path(FACE_RECOGNITION_RESNET)))
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255.0
    batch_list = list(chips)

    def port_forward():
        with torch.no_grad():
            encoder.embed(x)

    def port_backward():
        xi = x.clone().requires_grad_(True)
        encoder.embed(xi).pow(2).sum().backward()

    def dlib_forward():
        recognizer.compute_face_descriptor(batch_list)  # dlib's batched call

    t_port = best_time(port_forward, args.repeats)
    t_port_bwd = best_time(port_backward, args.repeats)
    t_dlib = best_time(dlib_forward, max(1, args.repeats - 1))

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), dlib {dlib.__version__} "
          f"(CPU, BLAS {'on' if dlib.DLIB_USE_BLAS else 'off'}), {os.cpu_count()} cores; "
          f"batch {args.batch} of {what}")
    print(f"{'':<28}{'s/batch':>10}{'images/s':>10}")
    print(f"{'port forward':<28}{t_port:>10.3f}{args.batch / t_port:>10.1f}")
    print(f"{'port forward+backward':<28}{t_port_bwd:>10.3f}{args.batch / t_port_bwd:>10.1f}")
    print(f"{'dlib forward':<28}{t_dlib:>10.3f}{args.batch / t_dlib:>10.1f}")
    ratio = t_dlib / t_port
    print(f"ratio port/dlib (forward): {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
