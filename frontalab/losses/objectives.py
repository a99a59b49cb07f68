"""Training objectives that own their generator (G) and discriminator (D) phases.

In the spirit of stylegan2-ada's loss objects: an objective knows *what* each phase
computes; the training loop decides *when* each runs (the G:D update ratio lives there).

A batch is a dict of tensors (`frontalab.data.dataset.Rows.to_batch`): ``image`` (N, 3, S, S) in [-1, 1] at the
output size, ``landmarks`` (N, 68, 2) teacher points (normalised), ``features`` and
``embedding`` (the frozen encoder's, cached at preparation).
"""

from __future__ import annotations

from functools import cached_property, partial
from typing import Any, Mapping, NamedTuple, Optional

import torch
from kornia.filters import gaussian_blur2d
from omegaconf import DictConfig
from torch import nn

from frontalab.losses.composite import WeightedLoss, weighted_sum
from frontalab.losses.perceptual import perceptual_loss
from frontalab.losses.terms import COLE, THESIS, Term, terms_of, weight
from frontalab.losses.texture import canonical_inputs, texture_loss
from frontalab.models import landmarks as lm
from frontalab.models.encoders import encoder_input
from frontalab.models.warp import sparse_image_warp


class GeneratorPass(NamedTuple):
    loss: WeightedLoss
    composite: torch.Tensor  # the frontalized face F_O, (N, 3, S, S) in [-1, 1]
    noisy: torch.Tensor  # what D judges (thesis: F_N); the composite for Cole
    mask: Optional[torch.Tensor]
    points: torch.Tensor  # (N, 68, 2) landmarks of the output


def embed_faces(encoder: nn.Module, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Encoder embeddings of faces in [-1, 1] with their landmarks, fed as the cached input embeddings were."""
    return encoder.embed(encoder_input(encoder, (images + 1) / 2, points))


def seen_by_encoder(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Faces as the encoder's loss terms see them: Gaussian-blurred by ``sigma`` pixels (``loss.encoder_blur``;
    0 = as they are). The blur's adjoint is the blur, so it also low-passes the encoder's gradients."""
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma + 0.5))
    return gaussian_blur2d(images, (2 * radius + 1, 2 * radius + 1), (sigma, sigma), border_type="reflect")


def encoder_pass(encoder: nn.Module, images: torch.Tensor, points: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(feature maps, embedding) of faces in [-1, 1] cut at ``points``, from one pass through the encoder."""
    maps = encoder.feature_maps(encoder_input(encoder, (images + 1) / 2, points))
    return maps, encoder.embed_from_features(encoder.pool(maps[-1]))


class DiscriminatorContext(NamedTuple):
    """What the discriminator's term reads."""
    D: nn.Module
    real: torch.Tensor  # input faces
    fake: torch.Tensor  # the generator's noisy faces, detached


def phase_loss(terms: tuple[Term, ...], loss_cfg: Mapping[str, Any], context: Any) -> WeightedLoss:
    """The weighted sum of ``terms`` (`frontalab.losses.terms`) on ``context``, each term computed only when its
    weight is non-zero and it applies to this batch."""
    return weighted_sum({t.key: weight(loss_cfg, t.key) if t.applies(context) else 0.0 for t in terms},
                        {t.key: partial(t.compute, context) for t in terms})


class ThesisContext:
    """What the thesis' terms read, each piece computed on first use and once per generator phase."""

    def __init__(self, objective: "ThesisObjective", batch: dict[str, torch.Tensor]):
        self.objective, self.batch, self.loss_cfg, self.D = objective, batch, objective.loss_cfg, objective.D
        self._passes: dict[str, tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.out = objective.decode(batch, self.target if objective.G.input_texture else None)
        self.points = objective.landmark_net(self.out.composite)  # (N, 68, 2) landmarks of the output

    @cached_property
    def target(self) -> torch.Tensor:  # I*
        return self.objective.canonical_texture(self.batch)

    @cached_property
    def region(self) -> torch.Tensor:
        return self.objective.region(self.out.composite.shape[-1])

    @cached_property
    def canonical(self) -> torch.Tensor:
        return self.objective.canonical.expand_as(self.points)

    def output_pass(self, chip: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(feature maps, embedding) of the output, cut at the student's points or the canonical ones."""
        if chip not in self._passes:
            at = self.canonical if chip == "canonical" else self.points
            self._passes[chip] = encoder_pass(self.objective.encoder,
                                              seen_by_encoder(self.out.composite, self.loss_cfg.encoder_blur), at)
        return self._passes[chip]

    @cached_property
    def identity_embedding(self) -> torch.Tensor:
        return self.output_pass(self.loss_cfg.identity_chip)[1]

    def texture(self) -> torch.Tensor:
        # The mask tells the texture term where the face is (thesis: it "guides the learning of colour").
        options = self.loss_cfg
        output_points = self.points if options.texture_frame == "student" else None
        return texture_loss(self.target, self.out.noisy, output_points, self.objective.canonical,
                            mask=self.out.mask if options.texture_region == "mask" else None,
                            region=self.region if options.texture_region == "face" else None)

    def perceptual(self) -> torch.Tensor:
        seen = self.target
        if self.out.mask is not None:  # the target as the composite shows it: the face region on white
            seen = self.region * seen + (1 - self.region)
        with torch.no_grad():
            target_maps, _ = encoder_pass(self.objective.encoder, seen_by_encoder(seen, self.loss_cfg.encoder_blur),
                                          self.canonical)
        return perceptual_loss(self.output_pass("canonical")[0], target_maps)


class ThesisObjective:
    """Wang 2019 §3.5: texture, landmark (geo/sym/tilt/expr), mask, identity and LSGAN terms
    (`frontalab.losses.terms`, paper ``thesis``).

    Options that depart from the thesis (config keys; evidence in docs/RESULTS.md): the texture term over
    the canonical face region instead of the learned mask (``texture_region``), a mask term that holds the
    mask to that region (``mask_target``), the identity chip cut at the canonical points
    (``identity_chip``), a perceptual term from the encoder's feature maps (``perceptual``), and a term that
    keeps different people's outputs as far apart as their inputs (``identity_relation``).

    ``loss_cfg`` is the config's ``loss`` section: each term's weight, and the options above.
    """

    def __init__(self, generator: nn.Module, discriminator: Optional[nn.Module], encoder: nn.Module,
                 landmark_net: nn.Module, loss_cfg: DictConfig, canonical: torch.Tensor):
        self.G, self.D, self.encoder, self.landmark_net = generator, discriminator, encoder, landmark_net
        self.loss_cfg, self.canonical = loss_cfg, canonical
        self._regions: dict[int, torch.Tensor] = {}
        if loss_cfg.adversarial > 0 and discriminator is None:
            raise ValueError("loss.adversarial > 0 needs a discriminator")

    def region(self, size: int) -> torch.Tensor:
        """The canonical face region ``(size, size)``: where a frontal face's pixels are (``loss.region_scale``)."""
        if size not in self._regions:
            region = lm.face_region(self.canonical.cpu(), size, scale=self.loss_cfg.region_scale)
            self._regions[size] = region.to(self.canonical.device)
        return self._regions[size]

    def canonical_texture(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """I*: the batch's inputs warped to the canonical landmarks at the output size (data: no gradient)."""
        with torch.no_grad():
            return canonical_inputs(batch["image"], batch["landmarks"], self.canonical, self.G.out_size)

    def decode(self, batch: dict[str, torch.Tensor], texture: Optional[torch.Tensor] = None):
        """G on a batch: its features, and I* too when the decoder takes the input's texture."""
        if not self.G.input_texture:
            return self.G(batch["features"])
        return self.G(batch["features"], self.canonical_texture(batch) if texture is None else texture)

    def generator_phase(self, batch: dict[str, torch.Tensor]) -> GeneratorPass:
        c = ThesisContext(self, batch)
        loss = phase_loss(terms_of(THESIS), self.loss_cfg, c)
        return GeneratorPass(loss, c.out.composite, c.out.noisy, c.out.mask, c.points)

    def discriminator_phase(self, real: torch.Tensor, fake: torch.Tensor) -> WeightedLoss:
        """LSGAN D loss (eq. 3.11) on real input faces vs the generator's (detached) noisy faces."""
        (term,) = terms_of(THESIS, "D")
        value = term.compute(DiscriminatorContext(self.D, real, fake.detach()))
        return WeightedLoss(value, {term.key: value})


class ColeContext:
    """What Cole's terms read, each piece computed on first use and once per generator phase."""

    def __init__(self, objective: "ColeObjective", batch: dict[str, torch.Tensor]):
        self.objective, self.batch, self.loss_cfg = objective, batch, objective.loss_cfg
        self.out = objective.decode(batch)

    @cached_property
    def target(self) -> torch.Tensor:
        """The input warped to the mean face, where the decoder draws its texture (data: no gradient)."""
        size = self.out.texture.shape[-1]
        with torch.no_grad():
            src = lm.to_pixels(self.batch["landmarks"], size)
            mean = lm.to_pixels(self.objective.G.mean_landmarks, size).expand_as(src)
            return sparse_image_warp(self.batch["image"], src, mean)

    @cached_property
    def identity_embedding(self) -> torch.Tensor:
        return embed_faces(self.objective.encoder, seen_by_encoder(self.out.composite, self.loss_cfg.encoder_blur),
                           self.out.landmarks)

    def perceptual(self) -> torch.Tensor:
        return input_perceptual(self.objective.encoder, self.out.composite, self.batch, self.loss_cfg.encoder_blur)


def input_perceptual(encoder: nn.Module, output: torch.Tensor, batch: dict[str, torch.Tensor],
                     blur: float) -> torch.Tensor:
    """Cole's perceptual term: the output's encoder maps against the (frontal) input's, both cut at the input's
    landmarks, so that the two chips are pixel-aligned and the term asks for the input's edges and parts where
    they are."""
    points = batch["landmarks"]
    with torch.no_grad():
        target_maps, _ = encoder_pass(encoder, seen_by_encoder(batch["image"], blur), points)
    return perceptual_loss(encoder_pass(encoder, seen_by_encoder(output, blur), points)[0], target_maps)


class ColeObjective:
    """Cole et al. §3.3: texture MAE x100, landmark MSE x1, negative-cosine identity x10, and optionally our
    perceptual term (``loss.cole.perceptual``; 0, the paper, by default) (`frontalab.losses.terms`, paper
    ``cole``).

    The texture target is the input warped to the mean face (the decoder draws its texture
    there); the landmark target is the input's own teacher landmarks.
    """

    def __init__(self, generator: nn.Module, encoder: nn.Module, loss_cfg: DictConfig):
        self.G, self.D, self.encoder, self.loss_cfg = generator, None, encoder, loss_cfg

    def decode(self, batch: dict[str, torch.Tensor]):
        """G on a batch: its features, and I* (the inputs warped to the mean face) when it takes the texture."""
        if not self.G.input_texture:
            return self.G(batch["features"])
        with torch.no_grad():
            texture = canonical_inputs(batch["image"], batch["landmarks"], self.G.mean_landmarks, self.G.out_size)
        return self.G(batch["features"], texture)

    def generator_phase(self, batch: dict[str, torch.Tensor]) -> GeneratorPass:
        c = ColeContext(self, batch)
        loss = phase_loss(terms_of(COLE), self.loss_cfg, c)
        return GeneratorPass(loss, c.out.composite, c.out.composite, None, c.out.landmarks)
