"""The two papers' systems, one entry each: how its decoder is built, whether it has a discriminator, the
objective that trains it, and what a sample grid shows of its output besides the face.

Everything that asks "which decoder?" (`model.decoder`) asks `paper`; the config's choices for that key are
these names. The loss terms of each are rows of `frontalab.losses.terms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from frontalab.losses.objectives import ColeObjective, ThesisObjective
from frontalab.losses.terms import COLE, THESIS
from frontalab.models.build import build_cole, build_thesis


@dataclass(frozen=True)
class Paper:
    name: str  # `model.decoder`
    build_generator: Callable[[DictConfig, int], nn.Module]  # (config, encoder feature size) -> G
    has_discriminator: Callable[[DictConfig], bool]
    # (config, G, D or None, encoder, landmark student, canonical landmarks) -> the objective
    objective: Callable[[DictConfig, nn.Module, Optional[nn.Module], nn.Module, nn.Module, torch.Tensor], Any]
    preview: Callable[[Any], dict[str, torch.Tensor]]  # the decoder's own columns of a sample grid
    config_problem: Callable[[DictConfig], str]  # why a config cannot train this system ("" when it can)


PAPERS = {
    THESIS: Paper(
        THESIS, build_thesis,
        # An ablation without the adversarial term builds no D.
        has_discriminator=lambda cfg: cfg.loss.adversarial > 0,
        objective=lambda cfg, G, D, encoder, landmark_net, canonical: ThesisObjective(
            G, D, encoder, landmark_net, cfg.loss, canonical),
        preview=lambda out: {"face F_N": out.noisy, **({"mask": out.mask} if out.mask is not None else {})},
        config_problem=lambda cfg: ("config key 'loss.mask' must be 0 when model.mask=false (there is no mask to "
                                    "penalise)" if not cfg.model.mask and cfg.loss.mask > 0 else "")),
    COLE: Paper(
        COLE, build_cole,
        has_discriminator=lambda cfg: False,
        objective=lambda cfg, G, D, encoder, landmark_net, canonical: ColeObjective(G, encoder, cfg.loss),
        preview=lambda out: {"texture": out.texture},
        config_problem=lambda cfg: ""),
}


def paper(name: str) -> Paper:
    try:
        return PAPERS[name]
    except KeyError:
        raise ValueError(f"model.decoder={name!r} is none of {', '.join(PAPERS)}") from None


def build_generator(cfg: DictConfig, feature_dim: int) -> nn.Module:
    """The decoder ``cfg.model.decoder`` names, for an encoder of ``feature_dim`` features."""
    return paper(cfg.model.decoder).build_generator(cfg, feature_dim)
