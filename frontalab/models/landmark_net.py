"""The landmark student: a small CNN that reproduces dlib's 68 points, differentiably.

dlib's shape predictor (`frontalab.data.teacher`) labels real photos, but it is not
differentiable, so it cannot tell a decoder how to move its output's landmarks. This
network learns to imitate it (`frontalab train-landmarks`) and then serves as a loss
network: points of a generated face, with gradients back to its pixels.

    image (N, 3, S, S) in [-1, 1], any S
      -> resize to ``input_size`` (bilinear, antialiased)
      -> encoder: residual stages at strides 2, 4, 8, 16 (whole-face context at stride 16)
      -> decoder: upsample + skip back to stride 4
      -> 68 heatmaps at stride 4
      -> spatial soft-argmax: each point is the expected position under its heatmap's softmax
      -> (N, 68, 2) ``(x, y)`` in normalised units (`frontalab.models.landmarks`)

Soft-argmax (integral regression) gives sub-pixel points from coarse heatmaps and is smooth
in the input, unlike an argmax. Downsampling is a 4x4 stride-2 stem, then 2x2 average
pooling; upsampling is bilinear with ``align_corners=False``. On even-sized maps all their
sampling grids are mirror-symmetric (no half-pixel drift to one side), so heatmap cell ``j``
of a side-``w`` map is centred at exactly ``(j + 0.5) / w`` and a mirrored face can give
mirrored points.

Used as a loss network, freeze it first (``net.frozen()``): eval mode, so batch norm uses its
running statistics, and no parameter gradients; input gradients still flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from frontalab.models.landmarks import NUM_LANDMARKS, OUTER_EYE_CORNERS

WEIGHTS_FILE = "landmarks68.pt"

# Channels of the encoder stages at strides 2, 4, 8, 16 of the (resized) input.
DEFAULT_WIDTHS = (24, 48, 96, 160)


class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (1x1-projected when the width changes), ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) logits -> (N, K, 2) expected (x, y) in normalised units.

    Cell ``(i, j)`` is centred at ``((j + 0.5) / w, (i + 0.5) / h)``; the softmax runs over all
    cells of a map, so every point lies inside the image.
    """
    n, k, h, w = heatmaps.shape
    prob = heatmaps.flatten(2).softmax(-1).view(n, k, h, w)
    xs = (torch.arange(w, device=heatmaps.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=heatmaps.device, dtype=prob.dtype) + 0.5) / h
    x = (prob.sum(2) * xs).sum(-1)  # marginal over rows, then its mean column
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], -1)


class LandmarkNet(nn.Module):
    """Face crop ``(N, 3, S, S)`` in [-1, 1] -> dlib's 68 points ``(N, 68, 2)`` in normalised units.

    Trained on the dataset's loose crops (the thesis' framing, face ratio 0.625) with small
    similarity jitter, so it expects a face roughly centred and filling ~60% of the image.
    ``input_size`` must be a multiple of 16.
    """

    def __init__(self, input_size: int = 64, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        c1, c2, c3, c4 = widths
        self.input_size = input_size
        self.widths = tuple(widths)
        # A 4x4 stride-2 stem: nothing runs at full resolution (CPU time), and a 4x4 window
        # centred between pixels is as flip-symmetric as the 2x2 pools below.
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1),
                                  nn.ReLU(inplace=True))
        # Encoder: each later stage halves the resolution by 2x2 average pooling, then convolves.
        self.enc2 = ResBlock(c1, c1)                                   # stride 2
        self.enc4 = nn.Sequential(ResBlock(c1, c2), ResBlock(c2, c2))  # stride 4: the heatmap grid
        self.enc8 = nn.Sequential(ResBlock(c2, c3), ResBlock(c3, c3))  # stride 8
        self.enc16 = nn.Sequential(ResBlock(c3, c4), ResBlock(c4, c4))  # stride 16: sees the whole face
        # Decoder: coarse context is projected to the finer width and added to the skip.
        self.lat8 = nn.Conv2d(c4, c3, 1)
        self.dec8 = ResBlock(c3, c3)
        self.lat4 = nn.Conv2d(c3, c2, 1)
        self.dec4 = ResBlock(c2, c2)
        self.head = nn.Conv2d(c2, NUM_LANDMARKS, 1)

    def config(self) -> dict[str, Any]:
        """What `__init__` needs to rebuild this network (stored beside the weights)."""
        return {"input_size": self.input_size, "widths": list(self.widths)}

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Any square size -> ``input_size``; antialiased, so large generator outputs do not alias."""
        if images.shape[-1] == self.input_size and images.shape[-2] == self.input_size:
            return images
        return F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                             align_corners=False, antialias=True)

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 68, input_size/4, input_size/4) heatmap logits."""
        f2 = self.enc2(self.stem(self.resize(images)))
        f4 = self.enc4(F.avg_pool2d(f2, 2))
        f8 = self.enc8(F.avg_pool2d(f4, 2))
        f16 = self.enc16(F.avg_pool2d(f8, 2))
        d8 = self.dec8(f8 + F.interpolate(self.lat8(f16), scale_factor=2, mode="bilinear", align_corners=False))
        d4 = self.dec4(f4 + F.interpolate(self.lat4(d8), scale_factor=2, mode="bilinear", align_corners=False))
        return self.head(d4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected (N, 3, S, S) images, got {tuple(images.shape)}")
        return soft_argmax(self.heatmaps(images))

    def frozen(self) -> "LandmarkNet":
        """Eval mode, no parameter gradients: the state to use it in as a loss network."""
        self.eval()
        self.requires_grad_(False)
        return self


def nme(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-face normalised mean error ``(N,)``: mean point distance / target's outer-eye-corner distance."""
    a, b = OUTER_EYE_CORNERS
    scale = (target[:, a] - target[:, b]).norm(dim=-1).clamp_min(1e-6)
    return (pred - target).norm(dim=-1).mean(-1) / scale


def default_weights_path() -> Path:
    """The packaged weights, ``frontalab/models/landmarks68.pt``."""
    return Path(__file__).resolve().parent / WEIGHTS_FILE


def load_landmark_net(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> LandmarkNet:
    """The trained student, in eval mode (call ``.frozen()`` to use it as a loss network).

    ``path`` defaults to the packaged weights; the file holds ``{"config": ..., "state_dict": ...}``.
    """
    path = Path(path) if path else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"no landmark-student weights at {path}; train them with "
                                f"`frontalab train-landmarks` (it writes {default_weights_path()} by default)")
    saved = torch.load(path, map_location=map_location, weights_only=True)
    cfg = saved["config"]
    net = LandmarkNet(input_size=int(cfg["input_size"]), widths=tuple(cfg["widths"]))
    net.load_state_dict(saved["state_dict"])
    return net.eval()
