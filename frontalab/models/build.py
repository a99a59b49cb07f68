"""Networks from config: the decoder a trial trains and the frozen encoder it is judged by.

The one place a config's ``model.*`` and ``encoder.*`` keys become modules, for training, sweeps
and serving alike. (Which builder a ``model.decoder`` takes, and which objective trains it, is
`frontalab.losses.papers`.)
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from frontalab.models import landmarks as lm
from frontalab.models.cole import ColeDecoder
from frontalab.models.encoders import FaceEncoder, build_encoder
from frontalab.models.thesis import ThesisDecoder


def build_thesis(cfg: DictConfig, feature_dim: int) -> torch.nn.Module:
    input_texture = cfg.model.get("input_texture", False)  # checkpoints from before the key: the papers' decoders
    prior = (lm.face_region(lm.mean_face(), cfg.model.out_size, scale=cfg.loss.region_scale)
             if input_texture and cfg.model.mask else None)
    return ThesisDecoder(feature_dim, out_size=cfg.model.out_size, mask=cfg.model.mask, norm=cfg.model.norm,
                         width=cfg.model.width, input_texture=input_texture, mask_prior=prior)


def build_cole(cfg: DictConfig, feature_dim: int) -> torch.nn.Module:
    return ColeDecoder(feature_dim, lm.mean_face(), out_size=cfg.model.out_size, hidden=cfg.model.cole_hidden,
                       channels=cfg.model.cole_channels, input_texture=cfg.model.get("input_texture", False))


def encoder_from_config(cfg: DictConfig) -> FaceEncoder:
    """The frozen encoder ``cfg.encoder`` names, with ``cfg.encoder.weights`` when given."""
    options = {"weights": cfg.encoder.weights} if cfg.encoder.weights else {}
    return build_encoder(cfg.encoder.name, **options)
