"""`frontalab prepare`: photos -> aligned crops, teacher landmarks, pose and cached encoder features.

Everything here is the same for every trial and every step, so it is computed once, on
Ray (embedded, or a cluster with ``--address``), and stored as Parquet shards plus a
``manifest.json`` where every Ray worker can read them (a folder or S3).

    files (sorted, sharded) -> per shard, in one worker: decode -> detect + align + landmarks + pose
                                                         -> encoder features -> its Parquet shard
                            -> [--morphs N: Cole's random morphs of training faces, extra shards]
                            -> manifest.json (last, by the driver)

The shard is the unit of work: a pool of actors, one per CPU, each loading the teacher and encoders
once, takes whole shards and writes them itself, so no image passes through the driver or Ray's
object store (a job is a shard's URIs, a result its counts) and the CPUs scale without a shuffle.
A source of fewer shards than CPUs leaves CPUs idle: lower ``shard_size`` for it.

Every photo yields exactly one row: kept, or skipped with its reason, so
``kept + sum(skipped) == input_count`` always holds. A shard is written atomically once
all its rows are in, so a killed run resumes by skipping the shards that exist.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from frontalab import storage
from frontalab.compute import cluster_cpus, connect
from frontalab.data import decode as dec
from frontalab.data import morph
from frontalab.data.crop import crop, loose_crop_box, points_to_crop
from frontalab.data.schema import (CONTENT_KEYS, DLIB_CHIP, FORMAT, INPUTS, KEPT, MANIFEST, MORPH_KEYS,
                                   SETTINGS, morph_shard_name, shard_name)
from frontalab.data.teacher import LandmarkTeacher, head_pose
from frontalab.models import landmarks as lm
from frontalab.models.encoders import build_encoder, fit_input
from frontalab.sections import ConfigError, PrepareConfig


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / float(16**12)


def split_of(identity: str, sha256: str, seed: int, val_fraction: float) -> str:
    """'val' or 'train': by identity when the photo has one (no person in both), else by content."""
    key = f"id:{identity}" if identity else f"sha:{sha256}"
    return "val" if _unit_hash(f"{seed}:{key}") < val_fraction else "train"


def identity_splits(inputs: list[dict[str, Any]], seed: int, val_fraction: float) -> tuple[str, dict[str, str]]:
    """(rule, split of each photo that has an identity, by URI), decided from the whole listing.

    By person (`split_of`), so that validation measures faces of people training never saw. Left to the
    hash alone, few people often give validation nobody (two people at 0.1: 81% of seeds) and training dies
    on an empty split, so:

    - with enough people that one person is about the asked share or less (people x val_fraction >= 0.5),
      at least one person is in validation (the lowest hash) and at least one in training (the highest);
    - with fewer (two to four people at 0.1), one person would be a third of the data or more: each person's
      photos are split instead, a ``val_fraction`` share of them (at least one, from two photos on) held back
      by the hash of the file name. These people are then in both splits, and the manifest's rule says so.

    A ``val_fraction`` of 0 asks for no validation and gets none. Unlabelled photos keep the content-hash rule.
    """
    people: dict[str, list[str]] = defaultdict(list)
    for row in inputs:
        if row["identity"]:
            people[row["identity"]].append(row["uri"])
    if not people or val_fraction <= 0:
        return "identity", {uri: split_of(person, "", seed, val_fraction)
                            for person, uris in people.items() for uri in uris}
    if len(people) * val_fraction >= 0.5:
        ranked = sorted(people, key=lambda person: _unit_hash(f"{seed}:id:{person}"))
        val = {p for p in ranked if split_of(p, "", seed, val_fraction) == "val"} or {ranked[0]}
        if len(val) == len(ranked):
            val.discard(ranked[-1])
        return "identity", {uri: "val" if person in val else "train" for person, uris in people.items() for uri in uris}
    splits = {}
    for person, uris in people.items():
        ranked = sorted(uris, key=lambda uri: _unit_hash(f"{seed}:photo:{person}/{PurePosixPath(uri).name}"))
        held = min(len(ranked) - 1, max(1, round(val_fraction * len(ranked))))
        splits.update({uri: "val" if i < held else "train" for i, uri in enumerate(ranked)})
    return "photos of each identity", splits


def list_inputs(source: str, limit: int, shard_size: int) -> list[dict[str, Any]]:
    """Photos under ``source`` (comma-separated folders or s3:// prefixes), by image extension.

    Sorted per source, sources in the order given; the identity of a photo is its first
    sub-folder below its source (folder-per-person, as LFW), else empty.
    """
    rows: list[dict[str, Any]] = []
    for root in (s.strip().rstrip("/") for s in source.split(",") if s.strip()):
        for uri in storage.list_files(root, dec.IMAGE_SUFFIXES):
            rel = PurePosixPath(uri[len(root):].lstrip("/"))
            rows.append({"uri": uri, "identity": rel.parts[0] if len(rel.parts) > 1 else ""})
    rows = rows[:limit] if limit else rows
    for i, row in enumerate(rows):
        row.update(index=i, shard=i // shard_size)
    return rows


# ---------------------------------------------------------------- the stages of a shard

def _empty_columns(n: int) -> dict[str, Any]:
    """Every column every row carries, so a shard's batches share one schema whatever was skipped."""
    return {"status": [KEPT] * n, "detail": [""] * n, "conversion": [""] * n, "sha256": [""] * n,
            "image": [b""] * n, "landmarks": [b""] * n, "landmarks5": [b""] * n,
            "yaw": [np.nan] * n, "pitch": [np.nan] * n, "roll": [np.nan] * n, "faces": [0] * n}


def greyed(sha256: str, seed: int, share: float) -> bool:
    """Whether the photo with this content hash is turned grey (``prepare.grey_share``): fixed per photo and seed."""
    return share > 0 and _unit_hash(f"grey:{seed}:{sha256}") < share


def decode_stage(batch: pd.DataFrame, min_side: int, grey_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Read and decode each photo (a ``grey_share`` of them turned grey, as 3 equal channels); skipped rows
    keep their reason and carry no pixels."""
    cols = _empty_columns(len(batch))
    pixels, shapes = [], []
    for i, uri in enumerate(batch["uri"]):
        rgb = None
        try:
            data = storage.read_bytes(uri)
        except Exception as err:  # an unreadable object is counted, never fatal
            cols["status"][i], cols["detail"][i] = dec.UNREADABLE, type(err).__name__
        else:
            cols["sha256"][i] = hashlib.sha256(data).hexdigest()
            try:
                rgb, conversion = dec.decode(data, min_side)
                if greyed(cols["sha256"][i], seed, grey_share):
                    rgb = np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)
                    conversion = f"{conversion}+grey" if conversion else "grey"
                cols["conversion"][i] = conversion or ""
            except dec.Skip as skip:
                cols["status"][i], cols["detail"][i] = skip.reason, str(skip)[:200]
        pixels.append(rgb.tobytes() if rgb is not None else b"")
        shapes.append(rgb.shape[:2] if rgb is not None else (0, 0))
    out = batch.assign(**cols)
    out["rgb"] = pixels
    out["height"] = [s[0] for s in shapes]
    out["width"] = [s[1] for s in shapes]
    return out


class AlignStage:
    """Detect, pick one face, 68 + 5 landmarks, head pose, loose crop, encoder chips."""

    def __init__(self, settings: dict[str, Any]):
        self.s = settings
        self.teacher = LandmarkTeacher()

    def _one(self, rgb: np.ndarray, row: dict[str, Any]) -> None:
        box, found = self.teacher.central_face(rgb)
        row["faces"] = found
        if box is None:
            raise dec.Skip(dec.NO_FACE)
        if found > 1 and self.s["multiple_faces"] == "skip":
            raise dec.Skip(dec.MULTIPLE_FACES, f"{found} faces")
        h, w = rgb.shape[:2]
        points = self.teacher.landmarks68(rgb, box)
        yaw, pitch, roll = head_pose(points, (h, w))
        row.update(yaw=yaw, pitch=pitch, roll=roll)
        if self.s["frontal_only"] and not (abs(yaw) <= self.s["max_yaw"]
                                           and self.s["min_pitch"] <= pitch <= self.s["max_pitch"]):
            raise dec.Skip(dec.NOT_FRONTAL, f"yaw {yaw:.1f} pitch {pitch:.1f}")
        size = self.s["size"]
        face, scale, shift = crop(rgb, loose_crop_box(points, self.s["face_ratio"]), size)
        points5 = self.teacher.landmarks5(rgb, box)
        row["landmarks"] = points_to_crop(points, scale, shift).tobytes()
        row["landmarks5"] = points_to_crop(points5, scale, shift).tobytes()
        buf = io.BytesIO()
        Image.fromarray(face).save(buf, format="JPEG", quality=self.s["jpeg_quality"])
        row["image"] = buf.getvalue()
        row["crop_raw"] = face.tobytes()
        row["dlib_chip"] = self.teacher.chip(rgb, box, DLIB_CHIP).tobytes()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        for row in rows:
            row["crop_raw"], row["dlib_chip"] = b"", b""
            if row["status"] != KEPT:
                continue
            rgb = np.frombuffer(row["rgb"], np.uint8).reshape(row["height"], row["width"], 3)
            try:
                self._one(rgb, row)
            except dec.Skip as skip:
                row["status"], row["detail"] = skip.reason, str(skip)[:200]
        return pd.DataFrame(rows).drop(columns=["rgb"])


class EncodeStage:
    """The frozen encoders' features and embeddings of each kept input face."""

    def __init__(self, settings: dict[str, Any]):
        torch.set_num_threads(1)
        self.s = settings
        self.encoders = {name: build_encoder(name) for name in settings["encoders"]}

    def _inputs(self, name: str, rows: list[dict[str, Any]]):
        enc = self.encoders[name]
        if enc.aligned_chip:  # dlib's own aligned chip of the photo, exactly as its network expects
            arr = np.stack([np.frombuffer(r["dlib_chip"], np.uint8).reshape(DLIB_CHIP, DLIB_CHIP, 3) for r in rows])
            return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 255
        # the loose crop itself (thesis §3: a 160 px loose crop), as the encoder's policy takes crops
        size = self.s["size"]
        arr = np.stack([np.frombuffer(r["crop_raw"], np.uint8).reshape(size, size, 3) for r in rows])
        return fit_input(enc, torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 255)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        kept = [r for r in rows if r["status"] == KEPT]
        for name, enc in self.encoders.items():
            for r in rows:
                r[f"features_{name}"], r[f"embedding_{name}"] = b"", b""
            if kept:
                with torch.no_grad():
                    x = self._inputs(name, kept)
                    feats, embs = enc.encode(x)
                for r, f, e in zip(kept, feats.numpy().astype(np.float32), embs.numpy().astype(np.float32)):
                    r[f"features_{name}"], r[f"embedding_{name}"] = f.tobytes(), e.tobytes()
        return pd.DataFrame(rows).drop(columns=["crop_raw", "dlib_chip"])


# ---------------------------------------------------------------- a shard, in its worker

def _assign_split(shard: pd.DataFrame, settings: dict[str, Any], by_uri: dict[str, str]) -> pd.Series:
    """`identity_splits`'s answer for a photo with an identity, else by content hash."""
    return pd.Series([by_uri.get(u) or split_of("", h, settings["seed"], settings["val_fraction"])
                      for u, h in zip(shard["uri"], shard["sha256"])], index=shard.index)


def _write_parquet(uri: str, rows: pd.DataFrame) -> None:
    """One shard, atomically: a reader sees all of it or none."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), buf, compression="zstd")
    storage.write_bytes_atomic(uri, buf.getvalue())


class ShardWorker:
    """Whole shards: decode, align and encode their photos in batches, write each shard, return its counts.

    Photos are decoded where they are aligned, never shipped, so decoding keeps the resolution the teacher
    finds faces and landmarks at (up to `decode.MAX_SIDE`) and costs no transfer for it."""

    def __init__(self, settings: dict[str, Any], out: str):
        self.s, self.out = settings, out
        self.align, self.encode = AlignStage(settings), EncodeStage(settings)

    def write(self, shard_id: int, inputs: list[dict[str, Any]], splits: dict[str, str]) -> dict[str, int]:
        """Shard ``shard_id`` of ``inputs`` (its photos, in order) with `identity_splits`'s ``splits`` of them;
        returns how many rows have each status."""
        bs = self.s["batch_size"]
        shard = pd.concat([self.encode(self.align(decode_stage(pd.DataFrame(inputs[i:i + bs]), self.s["min_side"],
                                                               self.s["grey_share"], self.s["seed"])))
                           for i in range(0, len(inputs), bs)], ignore_index=True)
        shard["split"] = _assign_split(shard, self.s, splits)
        _write_parquet(storage.join(self.out, shard_name(shard_id)), shard.drop(columns=["height", "width"]))
        return dict(Counter(shard["status"]))


def shard_jobs(todo: list[dict[str, Any]], by_uri: dict[str, str]) -> list[tuple]:
    """`ShardWorker.write`'s arguments for each shard of ``todo``: only its own photos' splits travel with it."""
    shards: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in todo:
        shards[row["shard"]].append(row)
    return [(shard_id, rows, {r["uri"]: by_uri[r["uri"]] for r in rows if r["uri"] in by_uri})
            for shard_id, rows in sorted(shards.items())]


# ---------------------------------------------------------------- driver

def _settings(cfg: DictConfig) -> dict[str, Any]:
    """What the stages need: the settings that define the rows (`CONTENT_KEYS`), then how to run them."""
    pc = OmegaConf.to_container(cfg.prepare, resolve=True)
    return {k: pc[k] for k in (*CONTENT_KEYS, "batch_size", "concurrency", *MORPH_KEYS)}


def _check_settings(out: str, settings: dict[str, Any]) -> None:
    """A dataset folder belongs to one set of settings: refuse to mix two into it."""
    uri = storage.join(out, SETTINGS)
    if storage.exists(uri):
        before = json.loads(storage.read_bytes(uri))
        # A setting added since that dataset was written had its default value there.
        changed = sorted(k for k in settings if before.get(k, getattr(PrepareConfig(), k)) != settings[k])
        if changed:
            raise ConfigError(
                f"{out} was prepared with other settings ({', '.join(f'prepare.{k}' for k in changed)}); "
                f"use another --out or the same settings")
    else:
        storage.write_bytes_atomic(uri, json.dumps(settings, indent=1).encode())


def _check_inputs(out: str, source: str, inputs: list[dict[str, Any]]) -> None:
    """A dataset folder belongs to one listing of photos: its shards are numbered by position in it, so a grown
    or changed source would reuse shards of other photos and break ``kept + skipped == input_count``. The
    listing is of names below each source folder: the same photos from a moved checkout are the same listing."""
    # Each root as `list_inputs` spells its photos' URIs (a local folder resolved).
    roots = [("s3://" if storage.is_s3(r) else "") + storage.filesystem(r.strip())[1].rstrip("/")
             for r in source.split(",") if r.strip()]

    def name(uri: str) -> str:
        return next((uri[len(r):].lstrip("/") for r in roots if uri.startswith(r + "/")), uri)

    listing = hashlib.sha256("\n".join(name(r["uri"]) for r in inputs).encode()).hexdigest()
    uri = storage.join(out, INPUTS)
    if storage.exists(uri):
        before = json.loads(storage.read_bytes(uri))
        if before["sha256"] != listing:
            raise ConfigError(f"{out} was prepared from another listing of photos ({before['count']} then, "
                              f"{len(inputs)} now, or other names); use another --out for a changed source")
    else:
        storage.write_bytes_atomic(uri, json.dumps({"count": len(inputs), "sha256": listing}).encode())


def _progress(total: int, initial: int):
    return tqdm(total=total, initial=initial, unit="img", desc="prepare", dynamic_ncols=True, mininterval=1.0)


def run_pipeline(todo: list[dict[str, Any]], settings: dict[str, Any], out: str, bar, counts: Counter,
                 by_uri: dict[str, str]) -> None:
    """The shards of ``todo`` on a pool of `ShardWorker` actors (one CPU each); ``counts`` and ``bar`` follow
    each shard as it is written."""
    import ray  # deferred: Ray takes seconds to import; reading a dataset never needs it
    from ray.util import ActorPool

    jobs = shard_jobs(todo, by_uri)
    worker = ray.remote(num_cpus=1)(ShardWorker)
    actors = min(settings["concurrency"] or cluster_cpus(), len(jobs))
    pool = ActorPool([worker.remote(settings, out) for _ in range(actors)])
    for done in pool.map_unordered(lambda actor, job: actor.write.remote(*job), jobs):
        counts.update(done)
        bar.update(sum(done.values()))
        bar.set_postfix(kept=counts[KEPT], skipped=sum(v for k, v in counts.items() if k != KEPT), refresh=False)


def _read_index(out: str, shard_id: int) -> pd.DataFrame:
    cols = ["index", "status", "conversion", "faces", "sha256", "identity", "split", "landmarks", "yaw"]
    return _read_shard(out, shard_name(shard_id), cols)


def _read_shard(out: str, name: str, columns: list[str]) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, name))), columns=columns).to_pandas()


def add_morphs(out: str, inputs: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """Cole's random morphs of the training faces as extra shards (resumable like the photo shards)."""
    count, per_shard = settings["morphs"], settings["shard_size"]
    names = [morph_shard_name(settings, i) for i in range(-(-count // per_shard))]
    if all(storage.exists(storage.join(out, n)) for n in names):
        return names
    cols = ["index", "status", "split", "image", "landmarks", "landmarks5", "sha256"]
    rows = pd.concat([_read_shard(out, shard_name(s), cols) for s in sorted({r["shard"] for r in inputs})])
    train = rows[(rows["status"] == KEPT) & (rows["split"] == "train")].sort_values("index").reset_index(drop=True)
    size = settings["size"]
    points = np.stack([np.frombuffer(b, np.float32).reshape(68, 2) for b in train["landmarks"]])
    mean = points.mean(0)
    # Distances on small textures: the crops at 64 px, warped to the mean geometry, 32x32 grey.
    small = 64
    textures = []
    for lo in tqdm(range(0, len(train), 256), desc="morphs: textures", unit="batch", file=sys.stderr):
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((small, small), Image.Resampling.BILINEAR))
                         for b in train["image"].iloc[lo:lo + 256]])
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        pts = lm.to_pixels(lm.to_normalised(torch.from_numpy(points[lo:lo + 256]), size), small)
        textures.append(morph.texture_maps(x, pts, lm.to_pixels(lm.to_normalised(torch.from_numpy(mean), size), small)))
    neighbours = morph.nearest_neighbours(lm.to_normalised(torch.from_numpy(points), size), torch.cat(textures),
                                          settings["morph_neighbours"], settings["morph_lambda"])
    planned = morph.plan(len(train), neighbours, count, settings["seed"])
    encoders = {name: build_encoder(name) for name in settings["encoders"]}
    for i, name in enumerate(tqdm(names, desc="morphs", unit="shard", file=sys.stderr)):
        if storage.exists(storage.join(out, name)):
            continue
        todo = planned.iloc[i * per_shard:(i + 1) * per_shard]
        made = morph.morph_rows(train, todo, mean, settings, len(inputs) + i * per_shard, encoders)
        _write_parquet(storage.join(out, name), made)
    return names


def build_manifest(out: str, inputs: list[dict[str, Any]], settings: dict[str, Any], seconds: float,
                   morph_shards: list[str], identity_rule: str) -> dict[str, Any]:
    """Counts, split, hash and provenance, from the shards themselves (so resumed runs agree)."""
    shards = sorted({r["shard"] for r in inputs})
    index = pd.concat([_read_index(out, s) for s in shards])
    kept = index[index["status"] == KEPT]
    digest = hashlib.sha256()
    for name in [shard_name(s) for s in shards] + morph_shards:
        digest.update(hashlib.sha256(storage.read_bytes(storage.join(out, name))).digest())
    size = settings["size"]
    mean_landmarks = None
    if len(kept):
        pts = np.stack([np.frombuffer(b, np.float32).reshape(68, 2) for b in kept["landmarks"]])
        mean_landmarks = ((pts + 0.5) / size).mean(0).round(5).tolist()
    return {
        "format": FORMAT,
        "input_count": len(inputs),
        "kept": int(len(kept)),
        "skipped": {k: int(v) for k, v in sorted(Counter(index.loc[index["status"] != KEPT, "status"]).items())},
        # Kept after handling: an unusual image mode converted, or the central one of several faces.
        "handled": {**{k: int(v) for k, v in sorted(Counter(c for c in kept["conversion"] if c).items())},
                    **({"multiple_faces_central": int((kept["faces"] > 1).sum())} if (kept["faces"] > 1).any() else {})},
        "split": {"rule": identity_rule if (kept["identity"] != "").any() else "content hash",
                  "seed": settings["seed"], "val_fraction": settings["val_fraction"],
                  "train": int((kept["split"] == "train").sum()), "val": int((kept["split"] == "val").sum())},
        "identities": int(kept.loc[kept["identity"] != "", "identity"].nunique()),
        "shards": [shard_name(s) for s in shards],
        # Extra training rows (Cole §5.1), outside the photo counts above.
        "morphs": {"count": settings.get("morphs", 0), "neighbours": settings.get("morph_neighbours"),
                   "lambda": settings.get("morph_lambda"), "shards": morph_shards},
        "dataset_hash": digest.hexdigest()[:16],
        "settings": {k: settings[k] for k in CONTENT_KEYS},
        "encoders": {name: {"features": f"features_{name}", "embedding": f"embedding_{name}"}
                     for name in settings["encoders"]},
        "image": {"size": size, "format": "jpeg", "face_ratio": settings["face_ratio"]},
        "landmarks": {"format": "float32 (68, 2) pixel (x, y) in the crop, pixel centres at integers",
                      "mean_normalised": mean_landmarks},
        "versions": {p: version(p) for p in ("frontalab", "torch", "ray", "dlib-bin", "pillow")},
        "seconds": round(seconds, 1),
    }


def prepare(cfg: DictConfig, address: str | None = None) -> dict[str, Any]:
    """Prepare ``cfg.prepare.source`` into ``cfg.prepare.out``; returns the manifest."""
    pc = cfg.prepare
    if not pc.source or not pc.out:
        raise ConfigError("prepare needs a source and an out (prepare.source=..., prepare.out=...)")
    settings = _settings(cfg)
    content = {k: settings[k] for k in CONTENT_KEYS}
    start = time.perf_counter()
    inputs = list_inputs(pc.source, pc.limit, pc.shard_size)
    if not inputs:
        raise ConfigError(f"no photos ({', '.join(dec.IMAGE_SUFFIXES)}) under prepare.source={pc.source}")
    rule, by_uri = identity_splits(inputs, pc.seed, pc.val_fraction)
    _check_settings(pc.out, content)
    _check_inputs(pc.out, pc.source, inputs)
    done = {s for s in {r["shard"] for r in inputs} if storage.exists(storage.join(pc.out, shard_name(s)))}
    todo = [r for r in inputs if r["shard"] not in done]
    bar = _progress(len(inputs), len(inputs) - len(todo))
    counts: Counter = Counter()
    if todo:
        where = connect(address)
        bar.write(f"prepare: {len(todo)} of {len(inputs)} photos to do ({len(done)} shards already written), Ray {where}",
                  file=sys.stderr)
        run_pipeline(todo, settings, pc.out, bar, counts, by_uri)
    bar.close()
    morph_shards = add_morphs(pc.out, inputs, settings) if pc.morphs else []
    manifest = build_manifest(pc.out, inputs, settings, time.perf_counter() - start, morph_shards, rule)
    storage.write_bytes_atomic(storage.join(pc.out, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest
