"""The prepared dataset's format: file names, row statuses and the settings that define its content.

`prepare` writes it, `morph` adds rows to it, `dataset` reads it; each imports its names from here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FORMAT = "frontalab-faces/1"
MANIFEST = "manifest.json"
SETTINGS = "_settings.json"
INPUTS = "_inputs.json"  # how many photos the source listed, and a hash of their names
KEPT = "kept"  # a row's status when its photo made it in (else the reason it was skipped)
DLIB_CHIP = 150  # dlib's recognition network input: get_face_chip(size=150, padding=0.25)

# Settings that change the rows; a resumed run must use the same ones.
CONTENT_KEYS = ("size", "face_ratio", "encoders", "frontal_only", "max_yaw", "min_pitch", "max_pitch",
                "multiple_faces", "min_side", "limit", "shard_size", "val_fraction", "seed", "jpeg_quality",
                "grey_share")
# Settings of the morph shards; they name the shards, so other values make other shards.
MORPH_KEYS = ("morphs", "morph_neighbours", "morph_lambda")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def morph_shard_name(settings: dict[str, Any], shard: int) -> str:
    key = json.dumps({k: settings[k] for k in (*MORPH_KEYS, "seed")}, sort_keys=True)
    return f"morphs-{hashlib.sha256(key.encode()).hexdigest()[:8]}-{shard:05d}.parquet"
