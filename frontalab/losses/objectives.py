"""Training objectives that own their generator (G) and discriminator (D) phases.

In the spirit of stylegan2-ada's loss objects: an objective knows *what* each phase
computes; the training loop decides *when* each runs (the G:D update ratio lives there).

A batch is a dict of tensors (`frontalab.data.dataset.Rows.to_batch`): ``image`` (N, 3, S, S) in [-1, 1] at the
output size, ``landmarks`` (N, 68, 2) teacher points (normalised), ``features`` and
``embedding`` (the frozen encoder's, cached at preparation).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from omegaconf import DictConfig
from kornia.filters import gaussian_blur2d
from torch import nn

from frontalab.losses import landmark as lml
from frontalab.losses.adversarial import discriminator_adversarial_loss, generator_adversarial_loss
from frontalab.losses.cole import cole_identity_loss, cole_landmark_loss, cole_texture_loss
from frontalab.losses.composite import WeightedLoss, weighted_sum
from frontalab.losses.identity import identity_cosine_loss, identity_l2_loss, identity_relation_loss
from frontalab.losses.mask import mask_loss
from frontalab.losses.perceptual import perceptual_loss
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


class ThesisObjective:
    """Wang 2019 §3.5: texture, landmark (geo/sym/tilt/expr), mask, identity and LSGAN terms.

    Options that depart from the thesis (config keys; evidence in docs/RESULTS.md): the texture term over
    the canonical face region instead of the learned mask (``texture_region``), a mask term that holds the
    mask to that region (``mask_target``), the identity chip cut at the canonical points
    (``identity_chip``), a perceptual term from the encoder's feature maps (``perceptual``), and a term that
    keeps different people's outputs as far apart as their inputs (``identity_relation``).
    """

    def __init__(self, generator: nn.Module, discriminator: Optional[nn.Module], encoder: nn.Module,
                 landmark_net: nn.Module, weights: DictConfig, canonical: torch.Tensor):
        self.G, self.D, self.encoder, self.landmark_net = generator, discriminator, encoder, landmark_net
        self.w, self.canonical = weights, canonical
        self._regions: dict[int, torch.Tensor] = {}
        if weights.adversarial > 0 and discriminator is None:
            raise ValueError("loss.adversarial > 0 needs a discriminator")

    def region(self, size: int) -> torch.Tensor:
        """The canonical face region ``(size, size)``: where a frontal face's pixels are (``loss.region_scale``)."""
        if size not in self._regions:
            region = lm.face_region(self.canonical.cpu(), size, scale=self.w.region_scale)
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
        cached: dict[str, Any] = {}

        def once(key: str, make):
            if key not in cached:
                cached[key] = make()
            return cached[key]

        def target() -> torch.Tensor:  # I*
            return self.canonical_texture(batch)

        out = self.decode(batch, once("target", target) if self.G.input_texture else None)
        points = self.landmark_net(out.composite)
        l_in = batch["landmarks"]
        size = out.composite.shape[-1]
        region = self.region(size)
        canonical = self.canonical.expand_as(points)
        w = self.w

        def output_pass(chip: str):
            at = canonical if chip == "canonical" else points
            return once(f"out-{chip}", lambda: encoder_pass(self.encoder, seen_by_encoder(out.composite, w.encoder_blur), at))

        def identity_embedding() -> torch.Tensor:
            return output_pass(w.identity_chip)[1]

        def perceptual() -> torch.Tensor:
            seen = once("target", target)
            if out.mask is not None:  # the target as the composite shows it: the face region on white
                seen = region * seen + (1 - region)
            with torch.no_grad():
                target_maps, _ = encoder_pass(self.encoder, seen_by_encoder(seen, w.encoder_blur), canonical)
            return perceptual_loss(output_pass("canonical")[0], target_maps)

        mask_for_texture = out.mask if w.texture_region == "mask" else None
        terms = {
            # The mask tells the texture term where the face is (thesis: it "guides the learning of colour").
            "texture": lambda: texture_loss(once("target", target), out.noisy,
                                            points if w.texture_frame == "student" else None, self.canonical,
                                            mask=mask_for_texture, region=region if w.texture_region == "face" else None),
            "geo": lambda: lml.geometry_loss(l_in, points),
            "sym": lambda: lml.symmetry_loss(points),
            "tilt": lambda: lml.tilt_loss(points),
            "expr": lambda: lml.expression_loss(points),
            "mask": lambda: mask_loss(out.mask, w.mask_p, region if w.mask_target == "face" else None),
            "identity": lambda: identity_cosine_loss(batch["embedding"], identity_embedding()),
            "identity_l2": lambda: identity_l2_loss(batch["embedding"], identity_embedding()),
            "identity_relation": lambda: identity_relation_loss(batch["embedding"], identity_embedding()),
            "perceptual": perceptual,
            "adversarial": lambda: generator_adversarial_loss(self.D(out.noisy)),
        }
        weights = {"texture": w.texture, "geo": w.alpha_geo, "sym": w.sym, "tilt": w.tilt, "expr": w.expr,
                   "mask": w.mask if out.mask is not None else 0.0, "identity": w.identity,
                   "identity_l2": w.identity_l2, "identity_relation": w.identity_relation, "perceptual": w.perceptual,
                   "adversarial": w.adversarial}
        loss = weighted_sum(weights, terms)
        return GeneratorPass(loss, out.composite, out.noisy, out.mask, points)

    def discriminator_phase(self, real: torch.Tensor, fake: torch.Tensor) -> WeightedLoss:
        """LSGAN D loss (eq. 3.11) on real input faces vs the generator's (detached) noisy faces."""
        value = discriminator_adversarial_loss(self.D(real), self.D(fake.detach()))
        return WeightedLoss(value, {"adversarial": value})


class ColeObjective:
    """Cole et al. §3.3: texture MAE x100, landmark MSE x1, negative-cosine identity x10, and optionally our
    perceptual term (``loss.cole.perceptual``; 0, the paper, by default).

    The texture target is the input warped to the mean face (the decoder draws its texture
    there); the landmark target is the input's own teacher landmarks.
    """

    def __init__(self, generator: nn.Module, encoder: nn.Module, weights: DictConfig):
        self.G, self.D, self.encoder, self.w = generator, None, encoder, weights

    def decode(self, batch: dict[str, torch.Tensor]):
        """G on a batch: its features, and I* (the inputs warped to the mean face) when it takes the texture."""
        if not self.G.input_texture:
            return self.G(batch["features"])
        with torch.no_grad():
            texture = canonical_inputs(batch["image"], batch["landmarks"], self.G.mean_landmarks, self.G.out_size)
        return self.G(batch["features"], texture)

    def generator_phase(self, batch: dict[str, torch.Tensor]) -> GeneratorPass:
        out = self.decode(batch)
        size = out.texture.shape[-1]
        with torch.no_grad():
            src = lm.to_pixels(batch["landmarks"], size)
            target = sparse_image_warp(batch["image"], src, lm.to_pixels(self.G.mean_landmarks, size).expand_as(src))
        terms = {
            "cole_texture": lambda: cole_texture_loss(out.texture, target),
            "cole_landmark": lambda: cole_landmark_loss(out.landmarks, batch["landmarks"]),
            "cole_identity": lambda: cole_identity_loss(batch["embedding"], embed_faces(
                self.encoder, seen_by_encoder(out.composite, self.w.encoder_blur), out.landmarks)),
            "cole_perceptual": lambda: self.perceptual(out.composite, batch),
        }
        weights = {"cole_texture": self.w.cole.texture, "cole_landmark": self.w.cole.landmark,
                   "cole_identity": self.w.cole.identity, "cole_perceptual": self.w.cole.perceptual}
        loss = weighted_sum(weights, terms)
        return GeneratorPass(loss, out.composite, out.composite, None, out.landmarks)

    def perceptual(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output's encoder maps against the (frontal) input's, both cut at the input's landmarks, so that
        the two chips are pixel-aligned and the term asks for the input's edges and parts where they are."""
        points, blur = batch["landmarks"], self.w.encoder_blur
        with torch.no_grad():
            target_maps, _ = encoder_pass(self.encoder, seen_by_encoder(batch["image"], blur), points)
        return perceptual_loss(encoder_pass(self.encoder, seen_by_encoder(output, blur), points)[0], target_maps)


# The decoder (config `model.decoder`) -> the objective that trains it.
OBJECTIVES = {"thesis": ThesisObjective, "cole": ColeObjective}


def build_objective(cfg: DictConfig, generator: nn.Module, discriminator: Optional[nn.Module], encoder: nn.Module,
                    landmark_net: nn.Module, canonical: torch.Tensor):
    """The objective that trains decoder ``cfg.model.decoder``: Cole's, or the thesis' (the default)."""
    if OBJECTIVES.get(cfg.model.decoder) is ColeObjective:
        return ColeObjective(generator, encoder, cfg.loss)
    return ThesisObjective(generator, discriminator, encoder, landmark_net, cfg.loss, canonical)
