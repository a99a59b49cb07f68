"""A synthetic prepared dataset in frontalab's real format (Parquet shards + manifest.json), for benchmarks
that must run where no photos, dlib or services are: the streaming loader reads it like any dataset.

Each row: a smooth random JPEG at the prepared size, the packaged mean face's landmarks jittered,
random encoder features and a unit embedding. Costs (decode, resize, batch assembly) are a real
dataset's; the content is not a face, which a speed measurement does not need.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from frontalab.data.schema import FORMAT, KEPT, MANIFEST, shard_name
from frontalab.models import landmarks as lm
from frontalab.naming import DLIB_RESNET

FEATURE_DIM, EMBEDDING_DIM = 256, 128  # dlib-resnet's


def write_dataset(out: Path, size: int, shards: int, per_shard: int = 256, seed: int = 0,
                  encoder: str = DLIB_RESNET) -> Path:
    """``shards`` shards of ``per_shard`` training rows (and one validation shard of 32) at ``size`` px."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    points = lm.to_pixels(lm.mean_face(), size).numpy()
    names, index = [], 0
    for shard in range(shards + 1):
        rows = 32 if shard == shards else per_shard
        split = "val" if shard == shards else "train"
        images = []
        for _ in range(rows):
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=95)
            images.append(buf.getvalue())
        embeddings = rng.normal(size=(rows, EMBEDDING_DIM)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        table = pa.table({
            "index": np.arange(index, index + rows),
            "status": [KEPT] * rows,
            "split": [split] * rows,
            "image": images,
            "landmarks": [(points + rng.normal(0, size / 100, points.shape)).astype(np.float32).tobytes()
                          for _ in range(rows)],
            "yaw": rng.normal(0, 15, rows).astype(np.float32),
            "pitch": rng.normal(0, 5, rows).astype(np.float32),
            f"features_{encoder}": [v.tobytes() for v in rng.normal(size=(rows, FEATURE_DIM)).astype(np.float32)],
            f"embedding_{encoder}": [v.tobytes() for v in embeddings],
        })
        names.append(shard_name(shard))
        pq.write_table(table, out / names[-1])
        index += rows
    manifest = {
        "format": FORMAT, "shards": names, "kept": index, "input_count": index,
        "split": {"train": shards * per_shard, "val": 32},
        "encoders": {encoder: {"features": f"features_{encoder}", "embedding": f"embedding_{encoder}"}},
        "image": {"size": size, "format": "jpeg"}, "dataset_hash": f"synthetic-{size}-{shards}-{seed}",
        "morphs": {"count": 0, "shards": []},
    }
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out
