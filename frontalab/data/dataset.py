"""Read a prepared dataset (local or S3): its manifest, and its kept rows as stacked training-ready tensors."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

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


def read_manifest(uri: str, encoder: str = "") -> dict[str, Any]:
    """The dataset's manifest; with ``encoder``, refused unless the dataset caches that encoder's features."""
    target = storage.join(uri, MANIFEST)
    if not storage.exists(uri):
        others = datasets_beside(uri)
        hint = (f"datasets there: {', '.join(others)} (train on one: data.path=URI)" if others
                else f"prepare one: frontalab prepare --source PHOTOS --out {uri}")
        raise IncompleteDataset(f"dataset {uri} not found; {hint}")
    if not storage.exists(target):
        raise IncompleteDataset(f"{uri} has no {MANIFEST}: it is not a finished dataset "
                                f"(run or resume `frontalab prepare --out {uri}`)")
    manifest = json.loads(storage.read_bytes(target))
    if encoder and encoder not in manifest["encoders"]:
        raise IncompleteDataset(f"{uri} has no cached features for encoder {encoder!r}; "
                         f"it has {sorted(manifest['encoders'])} (re-run prepare with --encoders)")
    return manifest


def no_faces(uri: str, split: str | None) -> ValueError:
    return ValueError(f"{uri} has no kept faces in split {split!r}")


@dataclass
class Rows:
    """Kept faces as stacked tensors, the form batches are cut from (index, not Python items).

    ``image`` stays uint8 until it reaches the device: a quarter of the bytes to copy.
    """
    image: torch.Tensor  # (N, 3, S, S) uint8
    landmarks: torch.Tensor  # (N, 68, 2) teacher points in normalised units
    features: torch.Tensor  # the frozen encoder's cached input features
    embedding: torch.Tensor  # and its identity embedding
    yaw: torch.Tensor  # degrees
    pitch: torch.Tensor
    index: torch.Tensor  # the row's index in the source listing

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: torch.Tensor | slice) -> Rows:
        return Rows(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Rows)))

    def pinned(self) -> Rows:
        """Page-locked copies, so that the copy to a GPU can overlap compute (non_blocking)."""
        return Rows(*(getattr(self, f.name).pin_memory() for f in fields(self)))

    def to_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The training batch on ``device``: ``image`` as float in [-1, 1] (the decoder's output range)."""
        batch = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)}
        batch["image"] = batch["image"].float() / 127.5 - 1.0
        return batch


def shards_of(manifest: dict[str, Any], split: str | None) -> list[str]:
    """The shard files holding ``split``'s rows: the photos', and for training also Cole's morphs."""
    morphs = manifest.get("morphs", {}).get("shards", []) if split in (None, "train") else []
    return manifest["shards"] + morphs


def read_table(uri: str, shard: str, split: str | None, columns: list[str], cache_bytes: int = 0) -> pd.DataFrame:
    """The kept rows of ``split`` (None: all splits) in one shard, in source order."""
    wanted = [("status", "=", KEPT)] + ([("split", "=", split)] if split else [])

    def read() -> pd.DataFrame:
        path = storage.cached(storage.join(uri, shard), cache_bytes)
        return pq.read_table(path, columns=columns, filters=wanted).to_pandas().sort_values("index")

    try:
        return read()
    except FileNotFoundError:  # another trial on this node trimmed its cached copy in between: fetch again
        return read()


def read_rows(uri: str, shards: list[str], split: str | None, encoder: str, image_size: int, prepared: int,
              threads: int = 1, limit: int = 0, cache_bytes: int = 0,
              decoded: Callable[[int], np.ndarray] | None = None) -> Rows:
    """``split``'s kept rows of ``shards`` (the first ``limit`` of them when given), images decoded at ``image_size``.

    Pillow releases the GIL while it decodes and resizes, so ``threads`` decode in parallel. ``decoded``, given
    the number of rows, says which to decode (a boolean mask): the others' images stay zero, for a reader that
    never hands them out (a data-parallel worker's stream).
    """
    columns = ["index", "image", "landmarks", "yaw", "pitch", f"features_{encoder}", f"embedding_{encoder}"]
    tables, count = [], 0
    for shard in shards:
        if limit and count >= limit:
            break
        table = read_table(uri, shard, split, columns, cache_bytes)
        tables.append(table)
        count += len(table)
    df = pd.concat(tables) if tables else pd.DataFrame(columns=columns)
    df = df.iloc[:limit] if limit else df
    # Decoded straight into one array: a window's images are held once, not once per step of the way.
    images = np.zeros((len(df), 3, image_size, image_size), np.uint8)
    wanted = np.flatnonzero(decoded(len(df))) if decoded else range(len(df))

    def decode_into(i: int) -> None:
        images[i] = decode_image(df["image"].iloc[i], image_size)

    if threads > 1 and len(wanted) > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode_into, wanted))
    else:
        for i in wanted:
            decode_into(i)
    pts = np.stack([np.frombuffer(b, np.float32).reshape(68, 2) for b in df["landmarks"]]) if len(df) else np.zeros((0, 68, 2), np.float32)

    def vectors(column: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.frombuffer(b, np.float32) for b in df[column]])) if len(df) else torch.zeros(0, 0)

    return Rows(
        image=torch.from_numpy(images),
        landmarks=torch.from_numpy((pts + 0.5) / prepared),
        features=vectors(f"features_{encoder}"),
        embedding=vectors(f"embedding_{encoder}"),
        yaw=torch.tensor(df["yaw"].to_numpy(np.float32)),
        pitch=torch.tensor(df["pitch"].to_numpy(np.float32)),
        index=torch.tensor(df["index"].to_numpy(np.int64)),
    )


def decode_image(data: bytes, size: int) -> np.ndarray:
    """(3, size, size) uint8 from a stored crop."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im).transpose(2, 0, 1).copy()


class FaceDataset:
    """All kept faces of one split, decoded into memory at ``image_size`` (or the prepared size).

    For small sets read whole (the landmark student's, tests'); trials stream theirs (`frontalab.data.stream`).
    Attributes hold `Rows`' tensors: ``images`` (uint8), ``landmarks``, ``features``, ``embeddings``, ``yaw``,
    ``pitch``, ``index`` (a caller may drop ``images`` once it has what it needs of them).
    """

    def __init__(self, uri: str, split: str | None = "train", encoder: str = DLIB_RESNET,
                 image_size: int | None = None):
        self.uri, self.split, self.encoder = uri, split, encoder
        self.manifest = read_manifest(uri, encoder)
        prepared = self.manifest["image"]["size"]
        self.image_size = image_size or prepared
        rows = read_rows(uri, shards_of(self.manifest, split), split, encoder, self.image_size, prepared)
        if not len(rows):
            raise no_faces(uri, split)
        self.images, self.landmarks, self.features, self.embeddings = rows.image, rows.landmarks, rows.features, rows.embedding
        self.yaw, self.pitch, self.index = rows.yaw, rows.pitch, rows.index

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.index)
