"""The 128-px thesis champion's recipe in one GPU call: train from a prepared dataset for a fixed time budget, and
return the checkpoint and its validation numbers.

`sweeps/cpu_thesis_128.yaml`'s model and losses (the thesis decoder with the input-texture skips), run by the same
G/D step as `frontalab train` (`frontalab.training.step.Learner`) on a dataset folder carried to the device
(`frontalab prepare --out DIR`), with no services, MLflow, Ray or dlib. It times its first steps, sets the cosine
schedule to the number of steps the budget allows, trains, then measures the fixed validation batch (dlib identity
distance, different people's spread, |yaw| from the landmark student) and writes:

- ``OUT/checkpoint.pt``: the decoder in the packaged champions' format (tensors only), which `frontalab evaluate
  --model OUT/checkpoint.pt` and `tools/package_champion.py thesis --model OUT/checkpoint.pt` take here;
- ``OUT/validation.json``: steps, images/s, the validation numbers and the device.

    python tools/gpu_recipe.py --data DIR --encoder-bundle dlib.pt --out OUT [--minutes 8] [--batch 64]
    python tools/gpu_recipe.py --smoke --out OUT    # CPU, tiny, on a synthetic dataset: tests/test_gpu_check.py

On the device, carry the dataset, the dlib encoder bundle (`benchmarks/gpu_check.py --write-encoder-bundle`) and
wheels of omegaconf, antlr4-python3-runtime, platformdirs, kornia and kornia_rs (see benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf, read_write

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from synthetic_faces import write_dataset  # noqa: E402

from frontalab.config import load_sweep  # noqa: E402
from frontalab.data.stream import ShardStream, feature_sample, first_rows  # noqa: E402
from frontalab.data.teacher import head_pose  # noqa: E402
from frontalab.losses.objectives import embed_faces  # noqa: E402
from frontalab.metrics import all_pairs, different_people_spread  # noqa: E402
from frontalab.models import landmarks as lm  # noqa: E402
from frontalab.losses.papers import build_generator  # noqa: E402
from frontalab.models.build import encoder_from_config  # noqa: E402
from frontalab.models.encoders import encoder_from_bundle  # noqa: E402
from frontalab.models.landmark_net import load_landmark_net  # noqa: E402
from frontalab.models.pretrained import champion_config  # noqa: E402
from frontalab.training.step import Learner  # noqa: E402

RECIPE = REPO / "sweeps" / "cpu_thesis_128.yaml"
TIMING_STEPS = 10  # steps timed before the schedule's length is set


def build(data: str, batch: int, device: torch.device, encoder_bundle: str) -> Learner:
    _, cfg = load_sweep(RECIPE, [f"base.data.path={data}", f"base.train.batch_size={batch}",
                                 f"base.train.device={device}", "base.tracking.enabled=false"])
    encoder = (encoder_from_bundle(torch.load(encoder_bundle, weights_only=True)) if encoder_bundle
               else encoder_from_config(cfg)).to(device)
    landmark_net = load_landmark_net().to(device).eval().requires_grad_(False)
    features = feature_sample(data, "train", cfg.encoder.name, cfg.data.feature_sample)
    G = build_generator(cfg, features.shape[1])
    G.standardize.fit(features)
    return Learner(cfg, G, encoder, landmark_net, device)


@torch.no_grad()
def validate(learner: Learner, data: str, count: int) -> dict[str, float]:
    """What `frontalab train` validates, less the face detector (dlib's, not on a bare GPU machine)."""
    cfg, device = learner.cfg, learner.device
    batch = first_rows(data, "val", cfg.encoder.name, cfg.model.out_size, count).to_batch(device)
    learner.G.eval()
    composite = learner.objective.decode(batch).composite.float()
    learner.G.train()
    points = learner.objective.landmark_net(composite)
    embeddings = embed_faces(learner.encoder, composite, points)
    dist = learner.encoder.distance(batch["embedding"], embeddings).cpu().numpy()
    size = composite.shape[-1]
    yaws = [head_pose(p, (size, size))[0] for p in lm.to_pixels(points, size).cpu().numpy()]
    return {"identity_distance_mean": float(dist.mean()),
            "identity_within_threshold": float((dist < learner.encoder.same_identity_threshold).mean()),
            "different_people_spread": different_people_spread(batch["embedding"].cpu().numpy(),
                                                               embeddings.cpu().numpy(), all_pairs(len(dist))),
            "mean_abs_yaw": float(np.mean(np.abs(yaws))), "val_faces": len(dist)}


def run(data: str, out: Path, minutes: float, batch: int, device: torch.device, encoder_bundle: str = "",
        max_steps: int = 0) -> dict:
    learner = build(data, batch, device, encoder_bundle)
    cfg = learner.cfg
    stream = ShardStream(data, "train", cfg.encoder.name, cfg.model.out_size, batch, cfg.train.seed, window=2,
                         threads=4, pin=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    budget = minutes * 60
    start = time.perf_counter()
    def set_steps(n: int) -> None:  # the schedule's length follows from the first steps' time
        with read_write(learner.cfg):
            learner.train.steps = n

    set_steps(max_steps or 10**6)
    step = 0
    while True:
        learner.step(stream.next(device), step)
        step += 1
        if step == TIMING_STEPS:
            sync()
            per_step = (time.perf_counter() - start) / step
            planned = int(budget / per_step)
            set_steps(min(max_steps, planned) if max_steps else planned)
            print(f"gpu_recipe: {per_step:.3f} s a step at batch {batch}: {learner.train.steps} steps in "
                  f"{minutes:g} min", file=sys.stderr, flush=True)
        if step >= learner.train.steps or (step >= TIMING_STEPS and time.perf_counter() - start > budget):
            break
        if step % 200 == 0:
            print(f"gpu_recipe: step {step}/{learner.train.steps}", file=sys.stderr, flush=True)
    sync()
    seconds = time.perf_counter() - start
    stream.close()
    numbers = validate(learner, data, cfg.train.val_faces)
    config = champion_config(OmegaConf.to_container(cfg, resolve=True))
    config["train"]["steps"] = step  # what it trained, for a fine-tune's schedule
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"G": {k: v.detach().cpu() for k, v in learner.G.state_dict().items()}, "config": config,
                "step": step, "dataset_hash": stream.manifest["dataset_hash"], "run_id": ""}, out / "checkpoint.pt")
    result = {"steps": step, "seconds": round(seconds, 1), "images_per_s": round(step * batch / seconds, 1),
              "batch": batch, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dataset_hash": stream.manifest["dataset_hash"], **numbers}
    (out / "validation.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="a prepared dataset folder (frontalab prepare --out DIR)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget (the call's limit is 9 min)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--encoder-bundle", default="")
    ap.add_argument("--smoke", action="store_true", help="CPU, 3 steps on a tiny synthetic dataset")
    args = ap.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            data = str(write_dataset(Path(tmp) / "faces", 128, shards=1, per_shard=16))
            result = run(data, Path(args.out), 1.0, 4, torch.device("cpu"), args.encoder_bundle, max_steps=3)
    else:
        if not args.data:
            ap.error("--data is needed (or --smoke)")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("gpu_recipe: no CUDA device here (run with --smoke for the CPU check)")
        result = run(args.data, Path(args.out), args.minutes, args.batch, torch.device(args.device), args.encoder_bundle)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
