"""The judge's credibility and calibration on real photos (docs/RESULTS.md, "The judge").

On LFW people with 2+ photos (folder per person, `$FRONTALAB_FACES/lfw-gray` by default), every photo's
central face is cropped by the judge's policy (dlib's 5-point chip at 224 px) for each chip margin
asked, embedded by the judge, and scored: verification ROC-AUC over all same-person pairs and as many
random different-person pairs, the equal-error-rate threshold (as a cosine), and the line-up rank-1 of
the photos themselves. `frontalab.evaluation.judge` fixes the margin and threshold this measures.

    python tools/judge_calibration.py [--faces DIR] [--people 300] [--per-person 4] [--paddings 0.25,0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from frontalab.data.decode import Skip, decode
from frontalab.data.faces import identity_source
from frontalab.data.teacher import LandmarkTeacher
from frontalab.evaluation.judge import FaceResJudge
from frontalab.evaluation.metrics import (equal_error_threshold, lineup_rank1, pair_distances, roc_auc,
                                          verification_pairs)
from frontalab.evaluation.run import select_people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default="")
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--per-person", type=int, default=4)
    parser.add_argument("--paddings", default="0.25,0.4,0.5,0.65,0.8")
    parser.add_argument("--seed", type=int, default=1)  # evaluate's default sample uses seed 0
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paddings = [float(p) for p in args.paddings.split(",")]
    root = Path(args.faces) if args.faces else identity_source()
    people = select_people(root, 2, args.per_person, args.people, args.seed)
    teacher, judge = LandmarkTeacher(), FaceResJudge()
    chips: dict[float, list[np.ndarray]] = {p: [] for p in paddings}
    person = []
    t0 = time.time()
    for who, (_, paths) in enumerate(tqdm(people, desc="photos", unit="person", file=sys.stderr)):
        for path in paths:
            try:
                rgb, _ = decode(path.read_bytes())
            except Skip:
                continue
            box, _ = teacher.central_face(rgb)
            if box is None:
                continue
            for p in paddings:
                chips[p].append(teacher.chip(rgb, box, judge.input_size, p))
            person.append(who)
    person = np.array(person)
    pairs, same = verification_pairs(person, args.seed)
    rows = []
    for p in paddings:
        with torch.no_grad():
            batches = [torch.from_numpy(np.stack(chips[p][i:i + 64])).permute(0, 3, 1, 2).float() / 255
                       for i in range(0, len(person), 64)]
            emb = torch.cat([judge.embed(b) for b in batches]).numpy()
        d = pair_distances(emb, pairs)
        threshold, eer = equal_error_threshold(d, same)
        rank1, size = lineup_rank1(emb, emb, person, seed=args.seed)
        rows.append({"padding": p, "auc": roc_auc(-d, same), "eer": eer, "threshold_cosine": 1 - threshold ** 2 / 2,
                     "lineup_rank1": rank1, "lineup_size": size})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"faces": len(person), "people": int(len(set(person.tolist()))), "photos": sum(len(p) for _, p in people),
               "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
               "seconds": round(time.time() - t0, 1), "by_padding": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "by_padding"}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
