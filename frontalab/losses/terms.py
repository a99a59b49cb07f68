"""Every loss term, declared once.

A term's key is its weight's config key under ``loss`` (``alpha_geo``, ``cole.texture``) and its name in the
logs (``train/g/alpha_geo``). Its row holds that weight's default, from which the config's loss section is made
(`frontalab.config`), so a weight with no term cannot be written. Its function takes the objective's context:
the batch and what the phase has computed so far, each piece made on first use
(`frontalab.losses.objectives`), so a term whose weight is zero costs nothing. The objectives, the trial's
MLflow params, `docs/RESULTS.md`'s tables and the ablation sweeps all read this table; adding a term is its loss
function, one row here and its test. The ``loss`` keys that are not weights are the terms' options
(`frontalab.config.LossOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from frontalab.losses import landmark as lml
from frontalab.losses.adversarial import discriminator_adversarial_loss, generator_adversarial_loss
from frontalab.losses.cole import cole_identity_loss, cole_landmark_loss, cole_texture_loss
from frontalab.losses.identity import identity_cosine_loss, identity_l2_loss, identity_relation_loss
from frontalab.losses.mask import mask_loss
from frontalab.losses.texture import pixel_symmetry_loss

THESIS, COLE = "thesis", "cole"  # the papers: `model.decoder`'s values


@dataclass(frozen=True)
class Term:
    key: str  # ``loss.KEY`` weighs it; ``train/g/KEY`` (or ``train/d/KEY``) logs it
    paper: str  # the objective that has it: THESIS (Wang 2019) or COLE (Cole et al. 2017)
    source: str  # the paper's equation, or "ours" and what it adds
    compute: Callable[[Any], torch.Tensor]  # of the objective's context
    default: float = 0.0  # its weight's default: the paper's value; 0 (off) for ours, so the papers stay the default
    phase: str = "G"  # "G": the generator's update; "D": the discriminator's (unweighted: D has one term)
    applies: Callable[[Any], bool] = lambda context: True  # False: weight 0 for this batch (no mask branch)


TERMS: tuple[Term, ...] = (
    # Wang 2019 §3.5, in the order the generator's total adds them.
    Term("texture", THESIS, "eq. 3.1: L1 to I*, weighted by the mask (or the face region: loss.texture_region)",
         lambda c: c.texture(), default=1.0),
    Term("alpha_geo", THESIS, "eq. 3.3: 1 - cosine of the landmarks' L1 distance matrices",
         lambda c: lml.geometry_loss(c.batch["landmarks"], c.points), default=160.0),
    Term("sym", THESIS, "eq. 3.4: left/right symmetry about the vertical midline",
         lambda c: lml.symmetry_loss(c.points), default=1.0),
    Term("tilt", THESIS, "eq. 3.5: left/right pairs at equal height", lambda c: lml.tilt_loss(c.points), default=1.0),
    Term("expr", THESIS, "eq. 3.6: closed inner lips", lambda c: lml.expression_loss(c.points), default=1.0),
    Term("mask", THESIS, "eq. 3.8, 3.9: mean(M^p) (or |M - R|^p: loss.mask_target) + total variation",
         lambda c: mask_loss(c.out.mask, c.loss_cfg.mask_p, c.region if c.loss_cfg.mask_target == "face" else None),
         applies=lambda c: c.out.mask is not None, default=1.0),
    Term("identity", THESIS, "§3.5: 1 - cosine of input and output embeddings",
         lambda c: identity_cosine_loss(c.batch["embedding"], c.identity_embedding), default=1.0),
    Term("identity_l2", THESIS, "§3.5: L2 distance of input and output embeddings",
         lambda c: identity_l2_loss(c.batch["embedding"], c.identity_embedding)),
    Term("identity_relation", THESIS, "ours: different people's outputs as far apart as their inputs",
         lambda c: identity_relation_loss(c.batch["embedding"], c.identity_embedding)),
    Term("perceptual", THESIS, "ours: L1 of the encoder's feature maps of the output and of I*",
         lambda c: c.perceptual()),
    Term("pixel_symmetry", THESIS, "ours, after TP-GAN (Huang et al. 2017, eq. 4): L1 of F_O to its mirror image",
         lambda c: pixel_symmetry_loss(c.out.composite)),
    Term("adversarial", THESIS, "eq. 3.10: LSGAN generator loss on F_N",
         lambda c: generator_adversarial_loss(c.D(c.out.noisy)), default=1.0),
    Term("adversarial", THESIS, "eq. 3.11: LSGAN discriminator loss, real inputs against F_N",
         lambda c: discriminator_adversarial_loss(c.D(c.real), c.D(c.fake)), phase="D"),
    # Cole et al. 2017 §3.3.
    Term("cole.texture", COLE, "§3.3: texture MAE to the input warped to the mean face",
         lambda c: cole_texture_loss(c.out.texture, c.target), default=100.0),
    Term("cole.landmark", COLE, "§3.3: landmark MSE to the input's teacher landmarks",
         lambda c: cole_landmark_loss(c.out.landmarks, c.batch["landmarks"]), default=1.0),
    Term("cole.identity", COLE, "§3.3: negative cosine of input and output embeddings",
         lambda c: cole_identity_loss(c.batch["embedding"], c.identity_embedding), default=10.0),
    Term("cole.perceptual", COLE, "ours: L1 of the encoder's feature maps of output and input, cut at its landmarks",
         lambda c: c.perceptual()),
)


def terms_of(paper: str, phase: str = "G") -> tuple[Term, ...]:
    return tuple(t for t in TERMS if t.paper == paper and t.phase == phase)


def weight(loss: Mapping[str, Any], key: str) -> float:
    """``loss.KEY`` of the config's ``loss`` section (a dotted key reaches into ``loss.cole``)."""
    node: Any = loss
    for part in key.split("."):
        node = node[part]
    return float(node)
