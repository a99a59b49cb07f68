"""Photos in, frontal faces out: the preprocessing, frozen encoder and trained decoder of one checkpoint.

`Frontalizer` is plain Python; `FrontalizerModel` wraps it as an MLflow pyfunc, so the same
object serves `frontalab frontalize` and `mlflow models serve`.

pyfunc input: a DataFrame with an ``image`` column of encoded photos (bytes, or base64 text
as JSON carries them) or a list of ``(H, W, 3)`` uint8 arrays. Output: a DataFrame with
``image`` (base64 PNG of the frontal face, empty when no face was found) and ``face_found``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from frontalab.data.decode import Skip, decode
from frontalab.data.teacher import Box


class Frontalizer:
    def __init__(self, checkpoint: str | Path, encoder: Optional[torch.nn.Module] = None, device: str = "cpu"):
        from frontalab.data.teacher import LandmarkTeacher
        from frontalab.models.encoders import build_encoder
        from frontalab.platform.trainer import build_generator, load_checkpoint

        ckpt = load_checkpoint(checkpoint, device)
        self.cfg = OmegaConf.create(ckpt["config"])
        if encoder is None:
            options = {"weights": self.cfg.encoder.weights} if self.cfg.encoder.weights else {}
            encoder = build_encoder(self.cfg.encoder.name, **options)
        self.encoder = encoder.to(device).eval()
        self.G = build_generator(self.cfg, self.encoder.feature_dim).to(device)
        # Checkpoints from before feature standardisation lack its buffers; their defaults
        # (mean 0, std 1) are the identity, which is how those decoders were trained.
        result = self.G.load_state_dict(ckpt["G"], strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("standardize.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint {checkpoint} does not fit the decoder: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
        self.G.eval()
        self.teacher = LandmarkTeacher()
        self.device = device
        self.step = ckpt["step"]
        self.run_id = ckpt.get("run_id") or ""  # the training run that wrote the checkpoint

    @torch.no_grad()
    def frontalize_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 frontal faces for (N, s, s, 3) uint8 input chips of this model's encoder."""
        out = self.G(self.encoder.features(to_tensor(chips).to(self.device))).composite
        return ((out.clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()

    def __call__(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """(S, S, 3) uint8 frontal face for a (H, W, 3) uint8 RGB photo, or None when no face is found."""
        box, _ = self.teacher.central_face(rgb)
        if box is None:
            return None
        return self.frontalize_chips(encoder_chip(self.teacher, rgb, box, self.encoder)[None])[0]


def encoder_chip(teacher, rgb: np.ndarray, box: Box, encoder: torch.nn.Module) -> np.ndarray:
    """The (s, s, 3) uint8 input of ``encoder`` for the face in ``box``: dlib's chip, or for FaceNet the
    loose crop (default face ratio) resampled straight to the encoder's side."""
    from frontalab.data.crop import crop, loose_crop_box

    if encoder.name == "dlib-resnet":  # dlib's own aligned chip
        return teacher.chip(rgb, box, encoder.input_size)
    face, _, _ = crop(rgb, loose_crop_box(teacher.landmarks68(rgb, box)), encoder.input_size)  # FaceNet: the loose crop
    return face


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _photo(item: Any) -> np.ndarray:
    if isinstance(item, np.ndarray) and item.ndim == 3:
        return item.astype(np.uint8)
    if isinstance(item, str):
        item = base64.b64decode(item)
    rgb, _ = decode(bytes(item), min_side=16)
    return rgb


def load_predictor(spec: str):
    """``predict(DataFrame) -> DataFrame`` for a model spec: a packaged champion (pretrained:NAME) runs
    in-process, with no services; anything else (models:/…, runs:/…, a model folder) through MLflow's
    pyfunc loader, exactly as `mlflow models serve` runs it."""
    from frontalab.models import pretrained

    if pretrained.is_pretrained(spec):
        model = FrontalizerModel()
        model.frontalizer = Frontalizer(pretrained.checkpoint_path(spec))
        return lambda frame: model.predict(None, frame)
    return mlflow.pyfunc.load_model(spec).predict


def side_by_side(pairs: list[tuple[np.ndarray, np.ndarray]], side: int = 128) -> np.ndarray:
    """(input photo | frontal face) rows, each image centre-cropped square and resized to ``side``: uint8 HxWx3."""
    def square(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        top, left = (h - min(h, w)) // 2, (w - min(h, w)) // 2
        crop = Image.fromarray(rgb[top:top + min(h, w), left:left + min(h, w)])
        return np.asarray(crop.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))

    return np.concatenate([np.concatenate([square(a), square(b)], axis=1) for a, b in pairs], axis=0)


class FrontalizerModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around `Frontalizer`; artifacts: ``checkpoint`` and ``encoder`` (a pickled module)."""

    def load_context(self, context) -> None:
        encoder = torch.load(context.artifacts["encoder"], map_location="cpu", weights_only=False)
        self.frontalizer = Frontalizer(context.artifacts["checkpoint"], encoder=encoder)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        items = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        images, found = [], []
        for item in items:
            try:
                face = self.frontalizer(_photo(item))
            except Skip:
                face = None
            found.append(face is not None)
            images.append(base64.b64encode(to_png(face)).decode() if face is not None else "")
        return pd.DataFrame({"image": images, "face_found": found})
