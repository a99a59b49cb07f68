"""`frontalab train-landmarks`: teach the landmark student (`LandmarkNet`) dlib's 68 points.

The prepared dataset already holds dlib's points for every kept face (the teacher ran in
`frontalab prepare`), so this is plain supervised regression on its train split (UTKFace and
the LFW train identities). Augmentations make the student robust to what generated faces do
differently from the crops: mirrored faces (flip + `landmarks.mirror`), other colours
(brightness, contrast, saturation, greyscale) and other framings (a random similarity: scale,
rotation, shift), the last applied to image and points alike. Faces are resized once to the
student's input size (exactly as the student resizes its inputs) and augmented there: the
augmentation then costs a few percent of a step instead of a third of it.

Evaluation is on the held-out LFW identities (val split, photos with an identity): the NME
against the teacher, and the NME of mirrored faces (predict on the flipped image, mirror back).
The weights file (``{"config", "state_dict"}``) and a JSON sidecar with the config, metrics and
the dataset hash are written atomically at the end.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from frontalab import storage
from frontalab.data.dataset import FaceDataset
from frontalab.models import landmarks as lm
from frontalab.models.landmark_net import LandmarkNet, default_weights_path, nme
from frontalab.sections import ConfigError

EVAL_BATCH = 128


# ---------------------------------------------------------------- data


def identities(uri: str, manifest: dict[str, Any]) -> dict[int, str]:
    """Row index -> identity ('' for photos without one), read from the dataset's shards."""
    out: dict[int, str] = {}
    for shard in manifest["shards"]:
        t = pq.read_table(storage.cached(storage.join(uri, shard)), columns=["index", "identity"])
        out.update(zip(t.column("index").to_pylist(), t.column("identity").to_pylist()))
    return out


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """uint8 faces -> uint8 faces of side ``size``, resized exactly as `LandmarkNet.resize` does."""
    if images.shape[-1] == size:
        return images
    out = torch.empty(images.shape[0], 3, size, size, dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float in [-1, 1], the dataset's and the decoder's range."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------- augmentation


def uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def colour_matrix(images: torch.Tensor, gen: torch.Generator, strength: float = 0.3,
                  p_grey: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-face brightness, contrast, saturation and (with probability p_grey) greyscale, as one affine map.

    All four are linear in RGB, so they compose into ``x' = M x + c`` per face (one batched
    matmul instead of a pass per jitter). With b, k, s the brightness, contrast and saturation
    factors, m the face's mean luma and ``L = 1 luma^T`` the projection onto grey:
    ``x' = G (k b S x) + (1 - k) b m``, where ``S = s I + (1 - s) L`` and G is I or L.
    Returns ``M (N, 3, 3)`` and ``c (N, 3, 1)`` for values in [0, 1].
    """
    n = images.shape[0]
    b, k, s = (uniform(n, 1 - strength, 1 + strength, gen).view(n, 1, 1) for _ in range(3))
    eye, grey = torch.eye(3), torch.ones(3, 1) * LUMA.view(1, 3)
    sat = s * eye + (1 - s) * grey
    to_grey = (torch.rand(n, generator=gen) < p_grey).view(n, 1, 1)
    m = k * b * torch.where(to_grey, grey @ sat, sat)
    mean = (images.float().mean((2, 3)) @ LUMA / 255).view(n, 1, 1)
    return m, ((1 - k) * b * mean).expand(n, 3, 1)


def similarity(n: int, gen: torch.Generator, scale: float = 0.1, degrees: float = 10.0, shift: float = 0.05,
               p: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarities about the image centre: ``p' = A (p - 0.5) + 0.5 + t`` in normalised units,
    A = s R with s in 1 +- scale, R a rotation within +- degrees, t within +- shift. Returns A, t.

    A share ``1 - p`` of the faces keeps the identity: resampling blurs a little, and the crops
    the student meets at evaluation are not resampled twice.
    """
    on = (torch.rand(n, generator=gen) < p).float()
    s = 1 + on.view(n, 1, 1) * uniform(n, -scale, scale, gen).view(n, 1, 1)
    a = on * uniform(n, -math.radians(degrees), math.radians(degrees), gen)
    t = on.view(n, 1) * torch.stack([uniform(n, -shift, shift, gen), uniform(n, -shift, shift, gen)], -1)
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return s * rot, t


def warp_similarity(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Resample images so that content at p moves to ``A (p - 0.5) + 0.5 + t``; bilinear, edges
    replicated (as the crops replicate them).

    In grid_sample's [-1, 1] units (g = 2p - 1, image edges at +-1) the output at g' reads the
    input at ``A^-1 (g' - 2t)``; the grid is one batched matmul of the pixel centres.
    """
    n, _, h, w = x.shape
    ys, xs = ((torch.arange(h) + 0.5) / h * 2 - 1), ((torch.arange(w) + 0.5) / w * 2 - 1)
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(1, h * w, 2)
    inv = torch.linalg.inv(a)
    grid = (centres - 2 * t.unsqueeze(1)) @ inv.transpose(1, 2)
    return F.grid_sample(x, grid.view(n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False)


def augment(images: torch.Tensor, points: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 faces and their points -> augmented float faces in [-1, 1] and their points.

    A horizontal flip (half the faces; `landmarks.mirror` renames left and right), a random
    similarity applied to pixels and points alike, then the colour jitter.
    """
    n = images.shape[0]
    flipped = torch.rand(n, generator=gen) < 0.5
    images, points = images.clone(), points.clone()
    images[flipped] = images[flipped].flip(-1)
    points[flipped] = lm.mirror(points[flipped])
    a, t = similarity(n, gen)
    points = (points - 0.5) @ a.transpose(1, 2) + 0.5 + t.unsqueeze(1)
    m, c = colour_matrix(images, gen)
    x = warp_similarity(images.float(), a, t)
    # Colour in [0, 1] units, then to [-1, 1]: x' = 2 (M x / 255 + c) - 1, clamped.
    x = torch.baddbmm(2 * c - 1, (2 / 255) * m, x.view(n, 3, -1)).clamp_(-1, 1)
    return x.view(n, 3, *images.shape[2:]), points


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(net: LandmarkNet, images: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
    """Points of uint8 faces, in batches; ``mirrored``: of the flipped faces, mirrored back."""
    out = []
    for i in range(0, len(images), EVAL_BATCH):
        x = to_float(images[i:i + EVAL_BATCH])
        out.append(lm.mirror(net(x.flip(-1))) if mirrored else net(x))
    return torch.cat(out)


def landmark_errors(net: LandmarkNet, images: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """NME vs the teacher, NME of mirrored faces, and the mirror consistency of the student itself."""
    was_training = net.training
    net.eval()
    pred, pred_m = predict(net, images), predict(net, images, mirrored=True)
    net.train(was_training)
    per_face = nme(pred, teacher)
    return {"nme": per_face.mean().item(), "nme_median": per_face.median().item(),
            "nme_p95": per_face.quantile(0.95).item(), "failure_rate_10pct": (per_face > 0.1).float().mean().item(),
            "mirror_nme": nme(pred_m, teacher).mean().item(), "mirror_consistency": nme(pred_m, pred).mean().item(),
            "faces": len(images)}


# ---------------------------------------------------------------- training


def lr_factor(step: int, steps: int, warmup: float = 0.03) -> float:
    """Linear warm-up over the first 3% of steps, then cosine decay to zero."""
    w = max(1, int(steps * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def save_weights(net: LandmarkNet, path: str) -> None:
    buf = io.BytesIO()
    torch.save({"config": net.config(), "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}}, buf)
    storage.write_bytes_atomic(path, buf.getvalue())


def sidecar_path(weights: str) -> str:
    return weights[:-3] + ".json" if weights.endswith(".pt") else weights + ".json"


def train_landmarks(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Train on ``cfg.landmarks.data``'s train split, evaluate, write weights + sidecar; returns the sidecar.

    ``command``: the command line that ran this, recorded in the sidecar.
    """
    lc = cfg.landmarks
    if lc.input_size % 16 or len(lc.widths) != 4:
        raise ConfigError("config keys 'landmarks.input_size' and 'landmarks.widths': the input size must be a "
                          f"multiple of 16 and there must be 4 widths (got {lc.input_size}, {list(lc.widths)})")
    start = time.perf_counter()
    if lc.threads:
        torch.set_num_threads(lc.threads)
    out = lc.out or str(default_weights_path())

    def say(msg: str) -> None:
        print(f"train-landmarks: {msg}", file=sys.stderr, flush=True)

    train = FaceDataset(lc.data, split="train")
    # Augmentation runs at the student's input size (4-6x cheaper than at 160 px), on faces
    # resized exactly as the student resizes them at evaluation.
    train_images = resize_uint8(train.images, lc.input_size)
    train.images = None
    manifest = train.manifest
    try:
        val = FaceDataset(lc.data, split="val")
    except ValueError:  # a tiny dataset can have no held-out face at all
        val = None
    who = identities(lc.data, manifest)
    named = torch.tensor([who.get(int(i), "") != "" for i in val.index] if val is not None else [], dtype=torch.bool)
    say(f"{len(train)} training faces, {int(named.sum())} held-out LFW faces, "
        f"{int((~named).sum())} held-out unlabelled faces ({manifest['image']['size']} px, dataset {manifest['dataset_hash']}); "
        f"loaded in {time.perf_counter() - start:.0f} s")

    torch.manual_seed(lc.seed)
    gen = torch.Generator().manual_seed(lc.seed)
    net = LandmarkNet(input_size=lc.input_size, widths=tuple(lc.widths))
    decay = [p for n, p in net.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in net.named_parameters() if p.dim() <= 1]  # norms and biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": lc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lc.lr)
    # `plan` is the number of steps the schedule runs to: landmarks.steps, unless the time budget
    # (landmarks.max_minutes) cannot fit them at the measured speed; then it shrinks, and the
    # cosine follows it, so a slowed-down run still ends annealed instead of cut off mid-way.
    plan = lc.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, plan))
    bs = min(lc.batch_size, len(train))
    log_every = max(1, lc.steps // 40)
    reserve = 60.0  # seconds kept for evaluation and writing
    a, b = lm.OUTER_EYE_CORNERS

    net.train()
    order, pos, epoch = torch.randperm(len(train), generator=gen), 0, 0
    t_loop, window_loss, window_n, done = time.perf_counter(), 0.0, 0, 0
    while done < plan:
        if pos + bs > len(train):  # a fresh permutation per epoch; the ragged tail is dropped
            order, pos, epoch = torch.randperm(len(train), generator=gen), 0, epoch + 1
        idx = order[pos:pos + bs]
        pos += bs
        x, target = augment(train_images[idx], train.landmarks[idx], gen)
        pred = net(x)
        # L1 of the coordinates in units of each face's eye-corner distance: the metric's scale.
        iod = (target[:, a] - target[:, b]).norm(dim=-1).clamp_min(1e-3).view(-1, 1, 1)
        loss = ((pred - target).abs() / iod).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at step {done + 1}")
        window_loss, window_n, done = window_loss + loss.item(), window_n + 1, done + 1
        if done % log_every == 0 or done == plan or done == 5:
            now = time.perf_counter()
            # The speed so far, not the last window's: a short burst of other work on the machine
            # must not cut the plan (the hard stop below catches a lasting slow-down).
            rate = done / (now - t_loop)
            if lc.max_minutes and done >= 0.05 * plan and done < plan:
                left = 60 * lc.max_minutes - (now - start) - reserve
                fits = done + max(1, int(0.95 * left * rate))
                if fits < plan:
                    say(f"re-planned from {plan} to {fits} steps: at {rate:.2f} it/s the rest does not fit "
                        f"landmarks.max_minutes={lc.max_minutes:g}")
                    plan = fits
            say(f"step {done}/{plan} epoch {epoch} loss {window_loss / window_n:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {rate:.2f} it/s ETA {_fmt_time((plan - done) / rate)}")
            window_loss, window_n = 0.0, 0
        if lc.max_minutes and done < plan and time.perf_counter() - start > 60 * lc.max_minutes - reserve:
            say(f"stopping at step {done} of {plan}: the landmarks.max_minutes={lc.max_minutes:g} budget is spent")
            break
    train_seconds = time.perf_counter() - t_loop

    net.eval()
    metrics = {}
    if named.any():
        metrics["val_lfw"] = landmark_errors(net, val.images[named], val.landmarks[named])
    if (~named).any():
        metrics["val_unlabelled"] = landmark_errors(net, val.images[~named], val.landmarks[~named])
    save_weights(net, out)
    sidecar = {
        "weights": out,
        "command": command,
        "config": OmegaConf.to_container(lc, resolve=True),
        "model": net.config(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "metrics": metrics,
        "dataset": {"uri": lc.data, "dataset_hash": manifest["dataset_hash"], "train_faces": len(train),
                    "val_lfw_faces": int(named.sum()), "val_unlabelled_faces": int((~named).sum())},
        "steps": done,
        "planned_steps": lc.steps,
        "epochs": round(done * bs / len(train), 2),
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(done / train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    storage.write_bytes_atomic(sidecar_path(out), json.dumps(sidecar, indent=1).encode())
    for name, v in metrics.items():
        say(f"{name} ({v['faces']} faces): NME {100 * v['nme']:.2f}%, mirror NME {100 * v['mirror_nme']:.2f}%, "
            f"mirror consistency {100 * v['mirror_consistency']:.2f}%")
    if not named.any():
        say("WARNING: no held-out LFW identity in this dataset: no val_lfw metrics")
    say(f"wrote {out} and {sidecar_path(out)}")
    return sidecar
