"""Read a prepared dataset (local or S3) as a torch Dataset of training-ready tensors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from PIL import Image

from frontalab import storage
from frontalab.data.schema import KEPT, MANIFEST
from frontalab.naming import DLIB_RESNET


class IncompleteDataset(FileNotFoundError):
    """A dataset that is not there, or a folder without manifest.json: preparation has not finished there."""


def datasets_beside(uri: str) -> list[str]:
    """Finished datasets (folders with a manifest) in `uri`'s parent folder, e.g. the demo's beside the default."""
    parent = uri.rstrip("/").rpartition("/")[0] if storage.is_s3(uri) else str(Path(uri).expanduser().resolve().parent)
    try:
        return [folder for folder in storage.list_folders(parent) if storage.exists(storage.join(folder, MANIFEST))]
    except OSError:  # only a hint for the message: a store that cannot be listed leaves it out
        return []


def read_manifest(uri: str) -> dict[str, Any]:
    target = storage.join(uri, MANIFEST)
    if not storage.exists(uri):
        others = datasets_beside(uri)
        hint = (f"datasets there: {', '.join(others)} (train on one: data.path=URI)" if others
                else f"prepare one: frontalab prepare --source PHOTOS --out {uri}")
        raise IncompleteDataset(f"dataset {uri} not found; {hint}")
    if not storage.exists(target):
        raise IncompleteDataset(f"{uri} has no {MANIFEST}: it is not a finished dataset "
                                f"(run or resume `frontalab prepare --out {uri}`)")
    return json.loads(storage.read_bytes(target))


class FaceDataset(torch.utils.data.Dataset):
    """Kept faces of one split. Items are dicts of tensors:

    - ``image``: ``(3, S, S)`` float in [-1, 1] (the decoder's output range), S = ``image_size``
      or the prepared size;
    - ``landmarks``: ``(68, 2)`` teacher points in normalised units;
    - ``features`` / ``embedding``: the frozen encoder's cached vectors for this input;
    - ``yaw``, ``pitch``: degrees; ``index``: the row's index in the source listing.

    Shards are read through the local S3 cache and decoded once, into memory, at ``image_size``.
    """

    def __init__(self, uri: str, split: str | None = "train", encoder: str = DLIB_RESNET,
                 image_size: int | None = None):
        self.uri, self.split, self.encoder = uri, split, encoder
        self.manifest = read_manifest(uri)
        if encoder not in self.manifest["encoders"]:
            raise ValueError(f"{uri} has no cached features for encoder {encoder!r}; "
                             f"it has {sorted(self.manifest['encoders'])} (re-run prepare with --encoders)")
        prepared = self.manifest["image"]["size"]
        self.image_size = image_size or prepared
        columns = ["index", "status", "split", "image", "landmarks", "yaw", "pitch",
                   f"features_{encoder}", f"embedding_{encoder}"]
        tables = [pq.read_table(storage.cached(storage.join(uri, s)), columns=columns).to_pandas()
                  for s in self.manifest["shards"] + self.manifest.get("morphs", {}).get("shards", [])]
        rows = [t[(t["status"] == KEPT) & ((t["split"] == split) if split else True)] for t in tables]
        rows = [r for r in rows if len(r)]
        if not rows:
            raise ValueError(f"{uri} has no kept faces in split {split!r}")
        df = pd.concat(rows).sort_values("index")
        self.index = torch.tensor(df["index"].to_numpy())
        self.images = torch.from_numpy(np.stack([self._decode(b) for b in df["image"]]))
        pts = np.stack([np.frombuffer(b, np.float32).reshape(68, 2) for b in df["landmarks"]])
        self.landmarks = torch.from_numpy((pts + 0.5) / prepared)
        self.features = torch.from_numpy(np.stack([np.frombuffer(b, np.float32) for b in df[f"features_{encoder}"]]))
        self.embeddings = torch.from_numpy(np.stack([np.frombuffer(b, np.float32) for b in df[f"embedding_{encoder}"]]))
        self.yaw = torch.tensor(df["yaw"].to_numpy(), dtype=torch.float32)
        self.pitch = torch.tensor(df["pitch"].to_numpy(), dtype=torch.float32)

    def _decode(self, data: bytes) -> np.ndarray:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        if im.size != (self.image_size, self.image_size):
            im = im.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        return np.asarray(im).transpose(2, 0, 1).copy()

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i].float() / 127.5 - 1.0,
            "landmarks": self.landmarks[i],
            "features": self.features[i],
            "embedding": self.embeddings[i],
            "yaw": self.yaw[i],
            "pitch": self.pitch[i],
            "index": self.index[i],
        }
