"""Regenerate frontalab/models/mean_face_68.json: the symmetric mean of dlib's 68 landmarks
over near-frontal faces, in the thesis' loose-crop frame (normalised units).

    python tools/make_mean_face.py [--limit 1500]   # reads $FRONTALAB_FACES/utkface
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from frontalab.data.crop import loose_crop_box
from frontalab.data.teacher import LandmarkTeacher, head_pose
from frontalab.models import landmarks as lm
from frontalab.paths import faces_dir

OUT = Path(__file__).resolve().parent.parent / "frontalab" / "models" / "mean_face_68.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=1500)
    ap.add_argument("--max-yaw", type=float, default=5.0)
    args = ap.parse_args()
    teacher = LandmarkTeacher()
    files = sorted((faces_dir() / "utkface").glob("*.jpg"))[: args.limit]
    kept = []
    for f in tqdm(files, desc="landmarks", unit="img"):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        boxes = teacher.detect(rgb)
        if len(boxes) != 1:
            continue
        pts = teacher.landmarks68(rgb, boxes[0])
        yaw, pitch, roll = head_pose(pts, rgb.shape[:2])
        if abs(yaw) > args.max_yaw or abs(roll) > 5:
            continue
        box = loose_crop_box(pts)
        kept.append((pts + 0.5 - [box.left, box.top]) / (box.right - box.left))
    template = lm.symmetric_mean(torch.tensor(np.stack(kept), dtype=torch.float32))
    # A neutral face: most photos smile, so close the inner lips (expression loss zero).
    for upper, lower in lm.INNER_LIP_PAIRS:
        template[[upper, lower], 1] = template[[upper, lower], 1].mean()
    OUT.write_text(json.dumps({
        "description": "symmetric mean of dlib-68 landmarks, near-frontal UTKFace faces, inner lips closed, loose crop (face ratio 0.625), normalised units",
        "faces": len(kept),
        "points": [[round(float(x), 5), round(float(y), 5)] for x, y in template],
    }, indent=1))
    print(f"{len(kept)} faces -> {OUT}")


if __name__ == "__main__":
    main()
