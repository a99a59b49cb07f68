"""`frontalab lineup`: would you know them? A small line-up a person can check by eye.

For N people with two photos or more (the last N such folders of a folder-per-person set, so the demo
always shows the same people), the model frontalizes each person's first photo; the independent judge
(`frontalab.evaluation.judge`) then asks, for each output, which of the N people's *second* photos it
lies nearest. A hit is its own person's. The photos themselves (first photo against the second photos)
give the ceiling. The grid shows what the judge compared: first photo | output | second photo.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from frontalab.data.crop import encoder_chip
from frontalab.data.decode import IMAGE_SUFFIXES, Skip, decode
from frontalab.evaluation.judge import FaceResJudge
from frontalab.evaluation.metrics import distance_matrix
from frontalab.evaluation.run import load_model
from frontalab.measure import embed, measure_outputs
from frontalab.sections import ConfigError
from frontalab.serving.frontalizer import side_by_side


def lineup_people(root: Path, count: int) -> list[tuple[str, Path, Path]]:
    """(name, first photo, second photo) of the last ``count`` people (sorted folders) with 2+ photos."""
    if not root.is_dir():
        raise ConfigError(f"lineup: {root} is not a folder of one sub-folder per person")
    chosen = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        photos = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 2:
            chosen.append((folder.name, photos[0], photos[1]))
        if len(chosen) == count:
            break
    if len(chosen) < 2:
        raise ConfigError(f"lineup: {root} has {len(chosen)} people with two photos; a line-up needs 2 or more")
    return chosen[::-1]


def run_lineup(model_spec: str, root: Path, count: int, out: Path | None = None) -> dict[str, Any]:
    """Frontalize, line up and score; writes the outputs (PNG) and the three-column grid into ``out``."""
    model = load_model(model_spec)
    f, judge = model.frontalizer, FaceResJudge()
    teacher = f.teacher
    rows, skipped = [], []
    for name, first, second in lineup_people(root, count):
        try:
            rgb, _ = decode(first.read_bytes())
            other, _ = decode(second.read_bytes())
        except Skip as skip:
            skipped.append(f"{name}: {skip}")
            continue
        box, _ = teacher.central_face(rgb)
        other_box, _ = teacher.central_face(other)
        if box is None or other_box is None:
            skipped.append(f"{name}: no face found")
            continue
        chips = [encoder_chip(teacher, image, b, judge) for image, b in ((rgb, box), (other, other_box))]
        rows.append({"name": name, "first": rgb, "output": f.frontalize_face(rgb, box), "second": other, "chips": chips})
    if len(rows) < 2:
        raise ConfigError(f"lineup: only {len(rows)} people could be frontalized ({'; '.join(skipped)})")
    measured = measure_outputs(teacher, np.stack([r["output"] for r in rows]), (judge,))
    photos = embed(judge, [c for r in rows for c in r["chips"]]).reshape(len(rows), 2, -1)
    firsts, outputs, seconds = photos[:, 0], measured.embeddings[judge.name], photos[:, 1]
    picked = distance_matrix(outputs, seconds).argmin(1)
    photo_picked = distance_matrix(firsts, seconds).argmin(1)
    names = [r["name"] for r in rows]
    result = {"model": model.uri, "judge": judge.name, "people": len(rows),
              "picked_own": int((picked == np.arange(len(rows))).sum()),
              "photos_picked_own": int((photo_picked == np.arange(len(rows))).sum()),
              "outputs_with_a_face": int(measured.detected.sum()),
              "picks": {n: names[p] for n, p in zip(names, picked)}, "skipped": skipped}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for r in rows:
            Image.fromarray(r["output"]).save(out / f"{r['name']}.png")
        Image.fromarray(side_by_side([(r["first"], r["output"], r["second"]) for r in rows])).save(out / "grid.png")
        result.update(out=str(out), grid=str(out / "grid.png"))
    print(f"lineup: {result['picked_own']} of {len(rows)} outputs pick their own person's second photo "
          f"(the first photos: {result['photos_picked_own']} of {len(rows)})", file=sys.stderr)
    return result
