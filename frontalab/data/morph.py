"""Cole et al. §5.1: random morphs between nearest neighbours, as extra training rows.

A face is its landmarks L and its texture T (the photo warped to the mean geometry L̄).
Faces A and B are at distance ``d(A, B) = λ‖L_A − L_B‖ + ‖T_A − T_B‖`` (λ = 10), with L in
normalised crop units and T a 32x32 grey texture in [0, 1], scales at which both terms weigh
alike. A morph picks a seed A, one of its k = 200 nearest neighbours B at random, and
interpolates landmarks and textures independently with weights drawn from U[0, 1]; the
interpolated texture is warped to the interpolated landmarks.

Not reproduced: Cole's gradient-domain pasting onto an original background (their morphs of
averaged identities needed it; ours blend two in-the-wild crops, backgrounds included).
Morphs come from training faces only, so validation stays real photos.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from frontalab.data.schema import KEPT
from frontalab.data.teacher import head_pose
from frontalab.models.warp import sparse_image_warp

TEXTURE_SIDE = 32  # the distance's texture map: grey, 32x32


def to_mean_geometry(images: torch.Tensor, landmarks: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Textures: ``(N, C, S, S)`` images warped so their ``(N, 68, 2)`` pixel landmarks land on ``mean``."""
    return sparse_image_warp(images, landmarks, mean.expand_as(landmarks))


def texture_maps(images: torch.Tensor, landmarks: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``(N, 32*32)`` grey textures in [0, 1] for the distance (images in [0, 1])."""
    grey = to_mean_geometry(images, landmarks, mean).mean(1, keepdim=True)
    return F.adaptive_avg_pool2d(grey, TEXTURE_SIDE).flatten(1)


def nearest_neighbours(landmarks: torch.Tensor, textures: torch.Tensor, k: int, lam: float,
                       chunk: int = 1024) -> torch.Tensor:
    """``(N, k)`` indices of each face's k nearest others under ``λ‖ΔL‖ + ‖ΔT‖`` (Frobenius norms)."""
    n = len(landmarks)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("morphs need at least two faces")
    flat = landmarks.flatten(1).double()
    textures = textures.double()
    out = torch.empty(n, k, dtype=torch.long)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        d = lam * torch.cdist(flat[lo:hi], flat) + torch.cdist(textures[lo:hi], textures)
        d[torch.arange(hi - lo), torch.arange(lo, hi)] = float("inf")  # not one's own neighbour
        out[lo:hi] = d.topk(k, largest=False).indices
    return out


def plan(n: int, neighbours: torch.Tensor, count: int, seed: int) -> pd.DataFrame:
    """``count`` morphs as rows (a, b, alpha_l, alpha_t): seeds, a random neighbour each, weights U[0, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, count)
    b = neighbours.numpy()[a, rng.integers(0, neighbours.shape[1], count)]
    return pd.DataFrame({"a": a, "b": b, "alpha_l": rng.random(count), "alpha_t": rng.random(count)})


def morph(images: torch.Tensor, landmarks: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
          alpha_l: torch.Tensor, alpha_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Morphs of faces ``a`` and ``b``: (images (M, C, S, S), pixel landmarks (M, 68, 2))."""
    al, at = alpha_l[:, None, None], alpha_t[:, None, None, None]
    points = (1 - al) * landmarks[a] + al * landmarks[b]
    texture = (1 - at) * to_mean_geometry(images[a], landmarks[a], mean) + at * to_mean_geometry(images[b], landmarks[b], mean)
    return sparse_image_warp(texture, mean.expand_as(points), points), points


def morph_rows(train: pd.DataFrame, todo: pd.DataFrame, mean: np.ndarray, settings: dict[str, Any],
               first_index: int, encoders: dict[str, Any], batch_size: int = 32) -> pd.DataFrame:
    """Rows shaped like prepared photos (kept, split train, no identity) for the planned morphs ``todo``
    of the training faces ``train`` (prepared rows: image JPEG, landmarks, landmarks5, sha256)."""
    size = settings["size"]
    needed = sorted(set(todo["a"]) | set(todo["b"]))
    slot = {j: i for i, j in enumerate(needed)}
    images = torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(train["image"].iloc[j])).convert("RGB"))
                                        for j in needed])).permute(0, 3, 1, 2).float() / 255
    landmarks = torch.from_numpy(np.stack([np.frombuffer(train["landmarks"].iloc[j], np.float32).reshape(68, 2)
                                           for j in needed])).float()
    five = torch.from_numpy(np.stack([np.frombuffer(train["landmarks5"].iloc[j], np.float32).reshape(5, 2)
                                      for j in needed])).float()
    mean_t = torch.from_numpy(mean).float()
    rows = []
    for lo in range(0, len(todo), batch_size):
        part = todo.iloc[lo:lo + batch_size]
        a = torch.tensor([slot[j] for j in part["a"]])
        b = torch.tensor([slot[j] for j in part["b"]])
        al = torch.tensor(part["alpha_l"].to_numpy(), dtype=torch.float32)
        at = torch.tensor(part["alpha_t"].to_numpy(), dtype=torch.float32)
        with torch.no_grad():
            pixels, points = morph(images, landmarks, mean_t, a, b, al, at)
            # The 5 chip points move with the geometry they sit in: interpolated like the 68.
            points5 = (1 - al[:, None, None]) * five[a] + al[:, None, None] * five[b]
            cached = {}
            for name, enc in encoders.items():
                x = enc.input_from_crop(pixels.clamp(0, 1), points5, quantize=True)
                cached[name] = [t.numpy().astype(np.float32) for t in enc.encode(x)]
        rgb = (pixels.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).numpy()
        for i, (_, m) in enumerate(part.iterrows()):
            buf = io.BytesIO()
            Image.fromarray(rgb[i]).save(buf, format="JPEG", quality=settings["jpeg_quality"])
            pts = points[i].numpy().astype(np.float32)
            yaw, pitch, roll = head_pose(pts, (size, size))
            row = {"index": first_index + lo + i, "status": KEPT, "detail": f"alpha_l={m.alpha_l:.4f} alpha_t={m.alpha_t:.4f}",
                   "uri": f"morph:{train['sha256'].iloc[int(m.a)][:16]}+{train['sha256'].iloc[int(m.b)][:16]}",
                   "identity": "", "conversion": "", "faces": 1, "split": "train",
                   "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "image": buf.getvalue(),
                   "landmarks": pts.tobytes(), "landmarks5": points5[i].numpy().astype(np.float32).tobytes(),
                   "yaw": yaw, "pitch": pitch, "roll": roll}
            for name, (feats, embs) in cached.items():
                row[f"features_{name}"], row[f"embedding_{name}"] = feats[i].tobytes(), embs[i].tobytes()
            rows.append(row)
    return pd.DataFrame(rows)
