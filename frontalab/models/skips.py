"""The input's own texture into a decoder: our departure for both papers (config ``model.input_texture``).

From encoder features alone a decoder draws a face of *someone*: a recognizer it never trained against
picked the person out of 100 for about one output in five (docs/RESULTS.md). With this option the decoder
also sees I*, the input warped to the canonical landmarks (the thesis' texture target, eq. 3.1; Cole's
texture frame), through U-Net skips, and draws its texture as a residual over I*, zero at first.
"""

from __future__ import annotations

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class TextureSkips(nn.Module):
    """I* ``(N, 3, S, S)`` -> one feature map per decoder stage, at that stage's input side (coarse first)."""

    def __init__(self, out_size: int, side: int, stage_widths: list[int], norm: str):
        super().__init__()
        self.down = nn.ModuleList()
        c_in, size = 3, out_size
        channels = []
        while size > side:  # stride-2 convs down to the decoder's first side
            c_out = min(32 * 2 ** len(self.down), 128)
            self.down.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), norm_layer(norm, c_out),
                                           nn.ReLU(inplace=True)))
            c_in, size = c_out, size // 2
            channels.append(c_out)
        # Stage i's input side is side * 2**i: the map made by down layer (len - 1 - i).
        self.project = nn.ModuleList(nn.Conv2d(channels[len(channels) - 1 - i], w, 1)
                                     for i, w in enumerate(stage_widths))

    def forward(self, texture: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], texture
        for layer in self.down:
            x = layer(x)
            maps.append(x)
        return [project(maps[len(maps) - 1 - i]) for i, project in enumerate(self.project)]


def check_texture(takes_texture: bool, texture: torch.Tensor | None) -> None:
    """A decoder gets I* exactly when it was built to take it (``model.input_texture``)."""
    if takes_texture != (texture is not None):
        raise ValueError("this decoder " + ("needs the input's canonical texture" if takes_texture
                                            else "takes no input texture (model.input_texture=false)"))


def over_texture(residual: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """A face in [-1, 1] drawn as ``residual`` over ``texture`` in tanh's domain: ``texture`` itself (to 0.995)
    where the residual is zero, and never outside [-1, 1]."""
    return torch.tanh(residual + torch.atanh(texture.clamp(-0.995, 0.995)))
