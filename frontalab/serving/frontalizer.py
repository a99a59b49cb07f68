"""Photos in, frontal faces out: the preprocessing, frozen encoder and trained decoder of one checkpoint.

`Frontalizer` is plain Python; `frontalab.serving.pyfunc.FrontalizerModel` wraps it as an MLflow
pyfunc, so the same object serves `frontalab frontalize`, `frontalab evaluate` and `mlflow models serve`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from frontalab.config import ModelConfig
from frontalab.data.crop import crop, encoder_chip, loose_crop_box, points_to_crop
from frontalab.data.teacher import Box, LandmarkTeacher
from frontalab.losses.papers import build_generator
from frontalab.losses.texture import canonical_inputs
from frontalab.models import landmarks as lm
from frontalab.models.build import encoder_from_config
from frontalab.models.images import to_tensor, to_uint8
from frontalab.sections import PrepareConfig
from frontalab.training.checkpoints import check_fits, checkpoint_config, load_checkpoint


class Frontalizer:
    def __init__(self, checkpoint: str | Path, encoder: Optional[torch.nn.Module] = None, device: str = "cpu",
                 views: int = 0):
        ckpt = load_checkpoint(checkpoint, device)
        self.cfg = checkpoint_config(ckpt, checkpoint)
        # Checkpoints from before test-time views get the current default: how this code frontalizes.
        self.views = views or self.cfg.model.get("test_views", ModelConfig.test_views)
        self.encoder = (encoder if encoder is not None else encoder_from_config(self.cfg)).to(device).eval()
        with torch.device("meta"):  # the shapes first: a damaged size in the file is refused, never allocated
            check_fits(build_generator(self.cfg, self.encoder.feature_dim), ckpt["G"], checkpoint,
                       optional=("standardize.",))
        # Checkpoints from before feature standardisation lack its buffers; their defaults
        # (mean 0, std 1) are the identity, which is how those decoders were trained.
        self.G = build_generator(self.cfg, self.encoder.feature_dim).to(device)
        self.G.load_state_dict(ckpt["G"], strict=False)
        self.G.eval()
        self.teacher = LandmarkTeacher()
        self.device = device
        self.step = ckpt["step"]
        self.run_id = ckpt.get("run_id") or ""  # the training run that wrote the checkpoint

    @property
    def takes_texture(self) -> bool:
        """Does the decoder also take the input's canonical texture (model.input_texture)?"""
        return bool(getattr(self.G, "input_texture", False))

    def canonical_texture(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """I* of the face in ``box`` at this decoder's output size, made as its training made it."""
        prepare = self.cfg.get("prepare", {})
        return canonical_texture(self.teacher, rgb, box, self.G.out_size, prepare.get("size", PrepareConfig.size),
                                 prepare.get("face_ratio", PrepareConfig.face_ratio))

    @torch.no_grad()
    def frontalize_chips(self, chips: np.ndarray, textures: Optional[np.ndarray] = None) -> np.ndarray:
        """(N, S, S, 3) uint8 frontal faces for (N, s, s, 3) uint8 input chips of this model's encoder (and,
        for a decoder that takes it, their `canonical_texture` ``(N, S, S, 3)``)."""
        features = self.encoder.view_features(to_tensor(chips).to(self.device), self.views)
        if self.takes_texture:
            if textures is None:
                raise ValueError("this model also takes each input's canonical texture (model.input_texture)")
            out = self.G(features, torch.from_numpy(textures).permute(0, 3, 1, 2).to(self.device)).composite
        else:
            out = self.G(features).composite
        return to_uint8(out)

    @torch.no_grad()
    def average_face(self) -> np.ndarray:
        """(S, S, 3) uint8: the face the decoder draws for the mean of its training features (a registered
        model's input example: a photo it can take, made by the model itself); over a blank grey texture
        for a decoder that takes one."""
        mean = self.G.standardize.mean[None]
        if self.takes_texture:
            out = self.G(mean, mean.new_zeros(1, 3, self.G.out_size, self.G.out_size))
        else:
            out = self.G(mean)
        return to_uint8(out.composite)[0]

    def frontalize_face(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """(S, S, 3) uint8 frontal face for the face in ``box`` of a (H, W, 3) uint8 RGB photo."""
        chip = encoder_chip(self.teacher, rgb, box, self.encoder)[None]
        textures = self.canonical_texture(rgb, box)[None] if self.takes_texture else None
        return self.frontalize_chips(chip, textures)[0]

    def __call__(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """(S, S, 3) uint8 frontal face for a (H, W, 3) uint8 RGB photo, or None when no face is found."""
        box, _ = self.teacher.central_face(rgb)
        if box is None:
            return None
        return self.frontalize_face(rgb, box)


def canonical_texture(teacher: LandmarkTeacher, rgb: np.ndarray, box: Box, size: int,
                      prepared: int = PrepareConfig.size, face_ratio: float = PrepareConfig.face_ratio) -> np.ndarray:
    """(S, S, 3) float32 in [-1, 1]: I*, the face in ``box`` warped to the canonical landmarks, made as training
    makes it: the loose crop at the prepared size (`frontalab prepare`), resized to ``size`` as the dataset
    reader does, then warped (`frontalab.losses.texture.canonical_inputs`)."""
    points = teacher.landmarks68(rgb, box)
    face, scale, shift = crop(rgb, loose_crop_box(points, face_ratio), prepared)
    face = np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.LANCZOS))
    normalised = lm.to_normalised(torch.from_numpy(points_to_crop(points, scale, shift)), prepared)
    texture = canonical_inputs(to_tensor(face[None]) * 2 - 1, normalised[None], lm.mean_face(), size)
    return texture[0].permute(1, 2, 0).numpy()


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def side_by_side(rows: list[tuple[np.ndarray, ...]], side: int = 128) -> np.ndarray:
    """Rows of images side by side (input photo | frontal face | ...), each centre-cropped square and resized
    to ``side``: uint8 HxWx3."""
    def square(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        top, left = (h - min(h, w)) // 2, (w - min(h, w)) // 2
        crop = Image.fromarray(rgb[top:top + min(h, w), left:left + min(h, w)])
        return np.asarray(crop.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))

    return np.concatenate([np.concatenate([square(image) for image in row], axis=1) for row in rows], axis=0)
