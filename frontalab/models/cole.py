"""Cole et al. 2017 decoder (§3.2): landmarks and texture, joined by differentiable warping.

features -> MLP -> (a) a landmark MLP: 68 (x, y) points, (b) a texture CNN: FC to
(S/4)x(S/4)x256, transposed convs (k=5, s=2) halving the channels up to S x S, a last
transposed conv (s=1) to 32 channels, a 1x1 conv to RGB. The texture is drawn on the
mean face and warped from the mean landmarks to the predicted ones (§4).

At S = 224 that is 56x56x256 -> 112x112x128 -> 224x224x64 -> 224x224x32 -> RGB: the paper
names both "224x224x32" and "256/2^i channels after the i-th transposed conv", which
only agree with the last transposed conv at stride 1. ``channels`` scales the 256 (a CPU recipe uses fewer).

``input_texture`` (our departure, `frontalab.models.skips`): the texture CNN also sees I*, the input warped to
the mean face, through skips into its first two transposed convs, and draws the texture as a residual over
it (zero at first); the landmark MLP still places the person's frontal landmarks from the features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from frontalab.models import landmarks as lm
from frontalab.models.features import FeatureStandardizer
from frontalab.models.skips import TextureSkips, check_texture, over_texture
from frontalab.models.warp import sparse_image_warp


class ColeOutput(NamedTuple):
    texture: torch.Tensor  # (N, 3, S, S) in [-1, 1], registered to the mean landmarks
    landmarks: torch.Tensor  # (N, 68, 2) normalised units
    composite: torch.Tensor  # the texture warped to the predicted landmarks


class ColeDecoder(nn.Module):
    def __init__(self, in_features: int, mean_landmarks: torch.Tensor, out_size: int = 224, hidden: int = 256,
                 channels: int = 256, input_texture: bool = False):
        super().__init__()
        if out_size % 4:
            raise ValueError(f"Cole decoder needs out_size divisible by 4, got {out_size}")
        self.out_size = out_size
        self.register_buffer("mean_landmarks", mean_landmarks.reshape(lm.NUM_LANDMARKS, 2).float())
        self.standardize = FeatureStandardizer(in_features)
        self.features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True))
        self.landmark_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, lm.NUM_LANDMARKS * 2))
        # Start at the mean face: predict offsets from it, zero at initialisation.
        nn.init.zeros_(self.landmark_mlp[-1].weight)
        nn.init.zeros_(self.landmark_mlp[-1].bias)
        self.base, self.channels = out_size // 4, channels
        c = channels
        self.texture_fc = nn.Sequential(nn.Linear(hidden, self.base * self.base * c), nn.ReLU(inplace=True))
        self.texture_cnn = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c // 2, c // 4, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c // 4, c // 8, 5, stride=1, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(c // 8, 3, 1), nn.Tanh(),
        )
        self.input_texture = input_texture
        if input_texture:
            # Into the inputs of the first two transposed convs (S/4 and S/2); the 1x1 conv starts at zero,
            # so the texture starts as I* itself.
            self.skips = TextureSkips(out_size, self.base, [c, c // 2], "none")
            nn.init.zeros_(self.texture_cnn[6].weight)
            nn.init.zeros_(self.texture_cnn[6].bias)

    def draw_texture(self, h: torch.Tensor, texture: torch.Tensor | None) -> torch.Tensor:
        x = self.texture_fc(h).view(-1, self.channels, self.base, self.base)
        if texture is None:
            return self.texture_cnn(x)
        skips = self.skips(texture)
        x = self.texture_cnn[1](self.texture_cnn[0](x + skips[0]))
        x = self.texture_cnn[3](self.texture_cnn[2](x + skips[1]))
        return over_texture(self.texture_cnn[6](self.texture_cnn[5](self.texture_cnn[4](x))), texture)

    def forward(self, features: torch.Tensor, texture: torch.Tensor | None = None) -> ColeOutput:
        """``texture``: I*, the input warped to the mean face, ``(N, 3, S, S)`` in [-1, 1] (with
        ``input_texture`` only)."""
        check_texture(self.input_texture, texture)
        h = self.features(self.standardize(features))
        offsets = self.landmark_mlp(h).view(-1, lm.NUM_LANDMARKS, 2)
        points = self.mean_landmarks + offsets
        texture = self.draw_texture(h, texture)
        mean_px = lm.to_pixels(self.mean_landmarks, self.out_size).expand_as(points)
        image = sparse_image_warp(texture, source_points=mean_px, dest_points=lm.to_pixels(points, self.out_size))
        return ColeOutput(texture, points, image)
