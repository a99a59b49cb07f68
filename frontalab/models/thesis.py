"""Wang 2019 face decoder (thesis §3.3, Table 3.1) and discriminator (§3.5.4, Table 3.2).

Decoder: encoder features (standardised, see features.py) -> two FC layers -> a W x W x K volume -> n stages of
(two residual blocks, one x2 upsampling conv that halves the channels) -> tanh. At 320 px:
4800 -> 5x5x192 -> 10x10x96 -> ... -> 320x320x3. ``width`` multiplies every width but the RGB
output's: at 64 px the thesis' widths are 48 -> 24 -> 12 -> 6 channels, too few for a face's detail. An attention-mask branch of the same
design starts from the out_size/4 tensor (80x80x12 at 320 px) and ends in a conv to one
channel; the output composites the "noisy" face onto white: F_O = M*F_N + (1-M)*1.

Our departure, ``input_texture`` (config ``model.input_texture``; off = the thesis): the decoder also sees
the input's own texture warped to the canonical landmarks, I* (the very target of the texture term,
eq. 3.1), through U-Net skips into every stage, and draws F_N as a residual over I* (zero at
initialisation), with the mask starting at the canonical face region. From encoder features alone
(the thesis) a decoder draws a face of *someone*: a second recognizer picked the person out of 100 for
one output in five; the skips carry the person's own eyes, skin and hair (docs/RESULTS.md).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from frontalab.models.features import FeatureStandardizer
from frontalab.models.skips import TextureSkips, check_texture, norm_layer, over_texture


class DecoderOutput(NamedTuple):
    noisy: torch.Tensor  # F_N, (N, 3, S, S) in [-1, 1]; what the discriminator sees
    mask: Optional[torch.Tensor]  # M, (N, 1, S, S) in [0, 1]; None when the branch is off
    composite: torch.Tensor  # F_O, the frontalized face


def decoder_geometry(out_size: int) -> tuple[int, int]:
    """(W, n) with out_size = W * 2**n and W the smallest side >= 4: 320 -> (5, 6), 64 -> (4, 4).

    The channel count then starts at K = 3 * 2**n so that n halvings end at RGB.
    """
    n = 0
    while out_size % 2 ** (n + 1) == 0 and out_size // 2 ** (n + 1) >= 4:
        n += 1
    if n < 2:
        raise ValueError(f"out_size {out_size} must be W * 2**n with W >= 4 and n >= 2")
    return out_size // 2**n, n


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm_layer(norm, channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm_layer(norm, channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Stage(nn.Sequential):
    """Two residual blocks, then a x2 upsampling conv from ``c`` to ``c // 2`` channels (3 in a branch's
    last stage, which ends raw: tanh or a 1-channel conv follows it).

    Nearest upsampling followed by a 3x3 conv avoids the checkerboard of transposed convs.
    """

    def __init__(self, channels: int, norm: str, last: bool):
        out = 3 if last else channels // 2
        layers: list[nn.Module] = [
            ResidualBlock(channels, norm), ResidualBlock(channels, norm),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1),
        ]
        if not last:
            layers += [norm_layer(norm, out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class ThesisDecoder(nn.Module):
    def __init__(self, in_features: int, out_size: int = 320, mask: bool = True, norm: str = "batch", width: int = 1,
                 input_texture: bool = False, mask_prior: Optional[torch.Tensor] = None):
        """``input_texture``: our departure (module docstring); ``mask_prior`` ``(S, S)`` in [0, 1], where the
        mask starts (the canonical face region), only with it."""
        super().__init__()
        self.out_size = out_size
        self.side, depth = decoder_geometry(out_size)
        # Table 3.1 at width 1: the channels halve at every stage and the last one ends at RGB.
        self.channels = 3 * 2**depth * width
        volume = self.side * self.side * self.channels
        self.standardize = FeatureStandardizer(in_features)
        self.fc = nn.Sequential(nn.Linear(in_features, volume), nn.ReLU(inplace=True),
                                nn.Linear(volume, volume), nn.ReLU(inplace=True))
        widths = [self.channels // 2**i for i in range(depth)]
        self.stages = nn.ModuleList(Stage(c, norm, last=i == depth - 1) for i, c in enumerate(widths))
        # The mask branch mirrors the last two stages, from the out_size/4 tensor.
        self.mask_from = depth - 2
        self.mask_stages = (nn.Sequential(Stage(widths[-2], norm, last=False),
                                          Stage(widths[-1], norm, last=True),
                                          nn.Conv2d(3, 1, 3, padding=1))
                            if mask else None)
        self.input_texture = input_texture
        if input_texture:
            self.skips = TextureSkips(out_size, self.side, widths, norm)
            # Zero residual and mask logits at first: F_N = I*, M = the prior, so training starts from the
            # input's own face on white and learns what to change.
            for last in (self.stages[-1][-1], *((self.mask_stages[-1],) if mask else ())):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            prior = torch.full((out_size, out_size), 0.5) if mask_prior is None else mask_prior.float()
            self.register_buffer("mask_prior_logit", torch.logit(prior.clamp(0.02, 0.98))[None, None])

    def forward(self, features: torch.Tensor, texture: Optional[torch.Tensor] = None) -> DecoderOutput:
        """``texture``: I*, the input warped to the canonical landmarks, ``(N, 3, S, S)`` in [-1, 1] (with
        ``input_texture`` only)."""
        check_texture(self.input_texture, texture)
        x = self.fc(self.standardize(features)).view(-1, self.channels, self.side, self.side)
        skips = self.skips(texture) if texture is not None else None
        mask = None
        for i, stage in enumerate(self.stages):
            if skips is not None:
                x = x + skips[i]
            if i == self.mask_from and self.mask_stages is not None:
                logits = self.mask_stages(x)
                mask = torch.sigmoid(logits + self.mask_prior_logit if texture is not None else logits)
            x = stage(x)
        # With the input's texture, F_N is a residual over it (in tanh's domain, so it stays in [-1, 1]).
        noisy = torch.tanh(x) if texture is None else over_texture(x, texture)
        composite = noisy if mask is None else mask * noisy + (1 - mask)  # white background = 1
        return DecoderOutput(noisy, mask, composite)


class Discriminator(nn.Module):
    """Table 3.2: nine 3x3 convs, leaky ReLU 0.2, a patch map of out_size/16 (20x20 at 320 px).

    The table gives C8 stride 1 but halves 40 -> 20; we follow the shapes (stride 2).
    """

    CHANNELS = (32, 32, 64, 64, 128, 128, 256, 256, 1)
    STRIDES = (1, 2, 1, 2, 1, 2, 1, 2, 1)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (c, s) in enumerate(zip(self.CHANNELS, self.STRIDES)):
            layers.append(nn.Conv2d(c_in, c, 3, stride=s, padding=1))
            if i < len(self.CHANNELS) - 1:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
