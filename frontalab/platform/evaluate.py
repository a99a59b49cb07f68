"""`frontalab evaluate`: does a model frontalize? Cole et al. §6 and the thesis' questions as numbers.

On a folder-per-person set (LFW layout) every photo's most central face goes through the
model. An evaluation encoder embeds the input (its aligned chip of the photo) and the output
(its chip of the output, aligned by the teacher's landmarks found in the canonical frame), and:

- identity: the input -> output distance, and the share under the encoder's same-identity
  threshold (Cole Fig. 12: with the FaceNet loss every output stayed under it);
- normalisation: per person, the mean pairwise distance among the outputs vs among the inputs;
  a frontalizer that removes pose, light and expression pulls a person's photos together;
- verification: ROC-AUC of same/different pairs, from outputs and from inputs;
- pose and expression of the outputs from the teacher's 68 points: |yaw|, |pitch|, mouth opening.

The pure metric functions take arrays and have known answers (tests/test_evaluate.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from frontalab.config import ConfigError
from frontalab.data.teacher import Box, LandmarkTeacher, head_pose, read_output
from frontalab.metrics import different_people_spread
from frontalab.models import landmarks as lm

HEADLINE = ("identity_within_threshold", "normalized_share", "auc_outputs", "auc_inputs", "mean_abs_yaw",
            "output_face_detected", "different_people_spread", "mean_mouth_opening", "inputs_mean_mouth_opening",
            "n_faces", "n_people")
GRID_PAIRS = 16


# ---------------------------------------------------------------- metrics (pure)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both positive and negative pairs")
    ranks = rankdata(scores)  # average ranks for ties (Mann-Whitney U)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates), one point per distinct threshold from high to low
    (tied scores move together, so the curve's area is `roc_auc`)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    thresholds, group = np.unique(-scores, return_inverse=True)  # ascending -score = descending score
    tp = np.bincount(group, weights=positive, minlength=len(thresholds))
    fp = np.bincount(group, weights=~positive, minlength=len(thresholds))
    tpr = np.concatenate([[0.0], np.cumsum(tp) / max(positive.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(fp) / max((~positive).sum(), 1)])
    return fpr, tpr


def verification_pairs(person: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All same-person index pairs and as many random different-person pairs: ``(pairs (M, 2), same (M,))``."""
    person = np.asarray(person)
    same = []
    for who in np.unique(person):
        members = np.flatnonzero(person == who)
        i, j = np.triu_indices(len(members), 1)
        same += list(zip(members[i].tolist(), members[j].tolist()))
    same.sort()
    if not same or len(set(person.tolist())) < 2:
        raise ValueError("verification needs a person with two faces and at least two people")
    rng = np.random.default_rng(seed)
    different: set[tuple[int, int]] = set()
    possible = (len(person) ** 2 - sum(c ** 2 for c in Counter(person.tolist()).values())) // 2
    while len(different) < min(len(same), possible):
        i, j = sorted(rng.integers(0, len(person), 2).tolist())
        if person[i] != person[j]:
            different.add((i, j))
    pairs = np.array(same + sorted(different))
    return pairs, np.arange(len(pairs)) < len(same)


def pair_distances(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(embeddings[pairs[:, 0]] - embeddings[pairs[:, 1]], axis=1)


def spread_per_person(embeddings: np.ndarray, person: np.ndarray) -> dict[Any, float]:
    """Mean pairwise distance among each person's embeddings (people with >= 2 faces)."""
    spread = {}
    for who in sorted(set(np.asarray(person).tolist())):
        e = embeddings[np.asarray(person) == who]
        if len(e) >= 2:
            d = np.linalg.norm(e[:, None] - e[None], axis=-1)
            spread[who] = float(d[np.triu_indices(len(e), 1)].mean())
    return spread


def normalized_share(inputs: np.ndarray, outputs: np.ndarray, person: np.ndarray) -> float:
    """The share of people whose outputs lie closer together than their inputs."""
    before, after = spread_per_person(inputs, person), spread_per_person(outputs, person)
    if not before:
        raise ValueError("normalisation needs a person with two faces")
    return float(np.mean([after[p] < before[p] for p in before]))


def mouth_opening(points68: np.ndarray) -> float:
    """Mean inner-lip gap over the outer-eye-corner distance: 0 for closed lips, scale-free."""
    upper = [a for a, _ in lm.INNER_LIP_PAIRS]
    lower = [b for _, b in lm.INNER_LIP_PAIRS]
    gap = np.abs(points68[lower, 1] - points68[upper, 1]).mean()
    left, right = lm.OUTER_EYE_CORNERS
    return float(gap / np.linalg.norm(points68[right] - points68[left]))


def pose_and_mouth(teacher: LandmarkTeacher, rgb: np.ndarray, box: Box) -> tuple[float, float, float]:
    """(yaw, pitch, mouth opening) of the face in ``box`` from the teacher's 68 points; NaN pose when
    no pose fits the points (the averages skip it)."""
    points = teacher.landmarks68(rgb, box)
    try:
        yaw, pitch, _ = head_pose(points, rgb.shape[:2])
    except ValueError:
        yaw = pitch = float("nan")
    return yaw, pitch, mouth_opening(points)


# ---------------------------------------------------------------- inputs


def select_people(root: Path, min_photos: int, max_per_person: int, max_people: int, seed: int) -> list[tuple[str, list[Path]]]:
    """People (sub-folders) with >= ``min_photos`` photos, each capped at the first ``max_per_person``."""
    from frontalab.data.decode import IMAGE_SUFFIXES

    if not root.is_dir():
        raise ConfigError(f"evaluate.faces: {root} is not a folder")
    people = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:max_per_person]
        if len(photos) >= min_photos:
            people.append((folder.name, photos))
    if not people:
        raise ConfigError(f"evaluate.faces: no sub-folder of {root} holds {min_photos}+ photos "
                          f"(expected one folder per person, the LFW layout)")
    if max_people and len(people) > max_people:
        keep = np.sort(np.random.default_rng(seed).choice(len(people), max_people, replace=False))
        people = [people[i] for i in keep]
    return people


@dataclass
class ModelUnderTest:
    frontalizer: Any
    uri: str
    name: str = ""
    version: str = ""
    source_run: str = ""  # the training run whose checkpoint this is
    tags: dict[str, str] = field(default_factory=dict)


INPUT_BASELINE = re.compile(r"input:(\d+)")


class InputAsOutput:
    """A baseline that does not frontalize: its "output" is the input's own loose crop at ``size`` px.

    Evaluated like a model, it shows what the output resolution alone costs the identity numbers
    (a ceiling for any frontalizer of that size), and the inputs' own pose.
    """

    def __init__(self, size: int):
        from frontalab.models.encoders import build_encoder

        self.size = size
        self.teacher = LandmarkTeacher()
        self.encoder = build_encoder("dlib-resnet")

    def crop(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        from frontalab.data.crop import crop, loose_crop_box

        return crop(rgb, loose_crop_box(self.teacher.landmarks68(rgb, box)), self.size)[0]


def model_outputs(f, batch: list[tuple[np.ndarray, Box, np.ndarray]]) -> np.ndarray:
    """(N, S, S, 3) uint8 outputs for (photo, face box, model input chip) triples."""
    if isinstance(f, InputAsOutput):
        return np.stack([f.crop(rgb, box) for rgb, box, _ in batch])
    return f.frontalize_chips(np.stack([chip for _, _, chip in batch]))


def load_model(spec: str) -> ModelUnderTest:
    """A packaged champion (pretrained:NAME), a registered model version (models:/NAME@ALIAS,
    models:/NAME/VERSION), a run id, a checkpoint, or the no-frontalization baseline ``input:SIZE``."""
    from frontalab.platform.inference import Frontalizer
    from frontalab.platform.sources import checkpoint_file

    if match := INPUT_BASELINE.fullmatch(spec):
        return ModelUnderTest(InputAsOutput(int(match[1])), spec)
    with tempfile.TemporaryDirectory() as tmp:
        frontalizer = Frontalizer(checkpoint_file(spec, Path(tmp)))
    if spec.startswith("models:/"):
        from mlflow import MlflowClient

        name, _, ref = spec[len("models:/"):].partition("@")
        client = MlflowClient()
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        return ModelUnderTest(frontalizer, spec, name, str(version.version),
                              version.tags.get("run_id", version.run_id or ""), dict(version.tags))
    return ModelUnderTest(frontalizer, spec, source_run=frontalizer.run_id)


# ---------------------------------------------------------------- the evaluation


@dataclass
class Faces:
    """Per evaluated face: who, and what the evaluation measured on its input and output."""
    person: list[int] = field(default_factory=list)
    emb_in: list[np.ndarray] = field(default_factory=list)
    emb_out: list[np.ndarray] = field(default_factory=list)
    pose_in: list[tuple[float, float, float]] = field(default_factory=list)
    pose_out: list[tuple[float, float, float]] = field(default_factory=list)
    detected_out: list[bool] = field(default_factory=list)  # does the teacher's detector see a face in the output?
    grid: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (input chip, output) pairs


def _embed(encoder, chips: list[np.ndarray]) -> np.ndarray:
    from frontalab.platform.inference import to_tensor

    with torch.no_grad():
        return encoder.embed(to_tensor(np.stack(chips)).to(next(encoder.parameters()).device)).cpu().numpy()


def run_faces(model: ModelUnderTest, eval_encoder, people: list[tuple[str, list[Path]]], batch_size: int,
              skipped: Counter) -> Faces:
    from tqdm import tqdm

    from frontalab.data.decode import UNREADABLE, Skip, decode
    from frontalab.platform.inference import encoder_chip

    f = model.frontalizer
    teacher = f.teacher
    same_encoder = eval_encoder.name == f.encoder.name
    photos = [(i, p) for i, (_, paths) in enumerate(people) for p in paths]
    faces = Faces()
    grid_people: set[int] = set()
    pending: list[tuple[int, tuple, np.ndarray, tuple]] = []

    def flush() -> None:
        outputs = model_outputs(f, [photo for _, photo, _, _ in pending])
        out_chips = []
        for (who, _, eval_chip, pose_in), out in zip(pending, outputs):
            view, box, detected = read_output(teacher, out)
            faces.pose_out.append(pose_and_mouth(teacher, view, box))
            faces.detected_out.append(detected)
            out_chips.append(encoder_chip(teacher, view, box, eval_encoder))
            faces.person.append(who)
            faces.pose_in.append(pose_in)
            if who not in grid_people and len(faces.grid) < GRID_PAIRS:
                grid_people.add(who)
                faces.grid.append((eval_chip, out))
        faces.emb_in.extend(_embed(eval_encoder, [e for _, _, e, _ in pending]))
        faces.emb_out.extend(_embed(eval_encoder, out_chips))
        pending.clear()

    for who, path in tqdm(photos, desc="evaluate", unit="photo", file=sys.stderr, mininterval=2):
        try:
            rgb, _ = decode(path.read_bytes())
        except Skip as skip:
            skipped[skip.reason] += 1
            continue
        except OSError:
            skipped[UNREADABLE] += 1
            continue
        box, _ = teacher.central_face(rgb)
        if box is None:
            skipped["no_face"] += 1
            continue
        model_chip = encoder_chip(teacher, rgb, box, f.encoder)
        eval_chip = model_chip if same_encoder else encoder_chip(teacher, rgb, box, eval_encoder)
        pending.append((who, (rgb, box, model_chip), eval_chip, pose_and_mouth(teacher, rgb, box)))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return faces


def summarise(faces: Faces, threshold: float, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Headline numbers and the arrays behind the plots."""
    person = np.array(faces.person)
    counts = Counter(person.tolist())
    if sum(1 for c in counts.values() if c >= 2) < 2:
        raise ConfigError(f"evaluate: {sum(1 for c in counts.values() if c >= 2)} people have 2+ faces found; "
                          "normalisation and verification need at least 2 (evaluate more people)")
    emb_in, emb_out = np.stack(faces.emb_in), np.stack(faces.emb_out)
    identity = np.linalg.norm(emb_in - emb_out, axis=1)
    pairs, same = verification_pairs(person, seed)
    d_in, d_out = pair_distances(emb_in, pairs), pair_distances(emb_out, pairs)
    pose_in, pose_out = np.array(faces.pose_in), np.array(faces.pose_out)
    results = {
        "identity_within_threshold": float((identity < threshold).mean()),
        "normalized_share": normalized_share(emb_in, emb_out, person),
        "auc_outputs": roc_auc(-d_out, same),
        "auc_inputs": roc_auc(-d_in, same),
        "mean_abs_yaw": float(np.nanmean(np.abs(pose_out[:, 0]))),
        "n_faces": int(len(person)),
        "n_people": int(sum(1 for c in counts.values() if c >= 2)),
        "identity_distance_mean": float(identity.mean()),
        "identity_distance_median": float(np.median(identity)),
        "identity_distance_p95": float(np.percentile(identity, 95)),
        "threshold": float(threshold),
        # Pose read off an output that is no face is the template's: read yaw with this share.
        "output_face_detected": float(np.mean(faces.detected_out)) if faces.detected_out else float("nan"),
        "mean_abs_pitch": float(np.nanmean(np.abs(pose_out[:, 1]))),
        "mean_mouth_opening": float(pose_out[:, 2].mean()),
        "inputs_mean_abs_yaw": float(np.nanmean(np.abs(pose_in[:, 0]))),
        "inputs_mean_abs_pitch": float(np.nanmean(np.abs(pose_in[:, 1]))),
        "inputs_mean_mouth_opening": float(pose_in[:, 2].mean()),
        # Outputs all alike would be "normalised" and make pose read as frontal: how far apart do
        # different people's outputs stay, relative to their inputs? (1 = as distinct as the photos)
        "different_people_spread": different_people_spread(emb_in, emb_out, pairs[~same]),
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
    }
    arrays = {"identity": identity, "same": same, "pair_in": d_in, "pair_out": d_out,
              "yaw_in": pose_in[:, 0], "yaw_out": pose_out[:, 0]}
    return results, arrays


# ---------------------------------------------------------------- report


def write_report(out: Path, results: dict[str, Any], arrays: dict[str, np.ndarray], faces: Faces,
                 model: ModelUnderTest, encoder_name: str, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from frontalab.platform.inference import to_tensor
    from frontalab.platform.trainer import image_grid

    out.mkdir(parents=True, exist_ok=True)
    thr = results["threshold"]

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(arrays["identity"], bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(thr, color="k", ls="--", label=f"same-identity threshold {thr:g}")
    ax.set(xlabel=f"{encoder_name} distance, input to output", ylabel="faces",
           title=f"{results['identity_within_threshold']:.1%} of outputs within the threshold")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "identity_distance.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    same = arrays["same"]
    for ax, key, title in zip(axes, ("pair_in", "pair_out"), ("inputs", "outputs")):
        d = arrays[key]
        ax.hist(d[same], bins=40, alpha=0.6, label="same person")
        ax.hist(d[~same], bins=40, alpha=0.6, label="different people")
        ax.axvline(thr, color="k", ls="--")
        ax.set(title=f"pair distances among {title}", xlabel=f"{encoder_name} distance")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pair_distances.png", dpi=110)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for key, label in (("pair_in", "inputs"), ("pair_out", "outputs")):
        fpr, tpr = roc_curve(-arrays[key], same)
        ax.plot(fpr, tpr, label=f"{label}: AUC {roc_auc(-arrays[key], same):.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="verification")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(-45, 45, 46)
    ax.hist(np.clip(arrays["yaw_in"], -45, 45), bins=bins, alpha=0.6, label="inputs")
    ax.hist(np.clip(arrays["yaw_out"], -45, 45), bins=bins, alpha=0.6, label="outputs")
    ax.set(xlabel="yaw (degrees, teacher landmarks)", ylabel="faces")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "yaw.png", dpi=110)
    plt.close("all")

    size = faces.grid[0][1].shape[0]
    import cv2

    inputs = to_tensor(np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i, _ in faces.grid])) * 2 - 1
    outputs = to_tensor(np.stack([o for _, o in faces.grid])) * 2 - 1
    half = (len(faces.grid) + 1) // 2
    columns = [inputs[:half], outputs[:half]]
    if len(faces.grid) > half:  # two pairs per row
        pad = half - (len(faces.grid) - half)
        fill = torch.ones(pad, 3, size, size)
        columns += [torch.cat([inputs[half:], fill]), torch.cat([outputs[half:], fill])]
    Image.fromarray(image_grid(columns)).save(out / "pairs.png")

    (out / "metrics.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    rows = [("outputs within the threshold of their input", f"{results['identity_within_threshold']:.1%}"),
            ("people whose outputs are closer together than their inputs", f"{results['normalized_share']:.1%}"),
            ("verification AUC, outputs / inputs", f"{results['auc_outputs']:.3f} / {results['auc_inputs']:.3f}"),
            ("mean abs yaw, outputs / inputs (deg)", f"{results['mean_abs_yaw']:.1f} / {results['inputs_mean_abs_yaw']:.1f}"),
            ("mean abs pitch, outputs / inputs (deg)",
             f"{results['mean_abs_pitch']:.1f} / {results['inputs_mean_abs_pitch']:.1f}"),
            ("outputs in which the teacher's detector finds a face", f"{results['output_face_detected']:.1%}"),
            ("different people's output distance / input distance", f"{results['different_people_spread']:.2f}"),
            ("mouth opening, outputs / inputs", f"{results['mean_mouth_opening']:.3f} / {results['inputs_mean_mouth_opening']:.3f}"),
            ("identity distance mean / median / p95",
             f"{results['identity_distance_mean']:.3f} / {results['identity_distance_median']:.3f} / "
             f"{results['identity_distance_p95']:.3f}"),
            ("faces / people (2+ faces) / same pairs", f"{results['n_faces']} / {results['n_people']} / {results['same_pairs']}")]
    lines = [f"# Evaluation of `{model.uri}`", "",
             f"Encoder: `{encoder_name}` (same-identity threshold {thr:g}). Command: `{command}`", "",
             "| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
             f"Skipped photos: {json.dumps(results['skipped'])}", "",
             "![input/output pairs](pairs.png)", "", "![identity](identity_distance.png)", "",
             "![pairs](pair_distances.png) ![roc](roc.png)", "", "![yaw](yaw.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def log_evaluation(e: DictConfig, faces_root: Path, results: dict[str, Any], out: Path, model: ModelUnderTest,
                   encoder_name: str, label: str, command: str) -> str:
    """An MLflow run holding the numbers and the report, linked both ways to the model version."""
    import mlflow
    from mlflow import MlflowClient

    tags = {"frontalab.role": "evaluation", "frontalab.label": label, "frontalab.command": command,
            "model_uri": model.uri, "model_name": model.name, "model_version": model.version,
            "source_run": model.source_run, "encoder": encoder_name}
    mlflow.set_experiment(e.experiment)
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_name=f"eval-{label}", tags=tags) as run:
        mlflow.log_params({"faces": str(faces_root), "encoder": encoder_name, "min_photos": e.min_photos,
                           "max_photos_per_person": e.max_photos_per_person, "max_people": e.max_people,
                           "seed": e.seed})
        mlflow.log_metrics({f"eval/{k}": float(v) for k, v in results.items() if isinstance(v, (int, float))})
        mlflow.log_artifacts(str(out), "report")
    if model.name and model.version:
        MlflowClient().set_model_version_tag(model.name, model.version, f"evaluation.{label}", run.info.run_id)
    return run.info.run_id


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.evaluate.model`` on ``cfg.evaluate.faces``; returns the results (+ report, run id)."""
    from frontalab.data.faces import identity_source
    from frontalab.models.encoders import build_encoder
    from frontalab.paths import state_dir
    from frontalab.platform.tracking import command_line

    e = cfg.evaluate
    faces_root = Path(e.faces) if e.faces else identity_source()
    people = select_people(faces_root, e.min_photos, e.max_photos_per_person, e.max_people, e.seed)
    t0 = time.time()
    model = load_model(e.model)
    own = model.frontalizer.encoder
    encoder = own if e.encoder in ("", own.name) else build_encoder(e.encoder)
    label = e.label or re.sub(r"[^A-Za-z0-9_.-]+", "-", model.uri).strip("-")
    out = Path(e.out) if e.out else state_dir(cfg.services.state_dir) / "evaluations" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    skipped: Counter = Counter()
    faces = run_faces(model, encoder, people, e.batch_size, skipped)
    if not faces.person:
        raise ConfigError(f"evaluate: no face found in any of the {sum(len(p) for _, p in people)} photos of {faces_root}")
    results, arrays = summarise(faces, encoder.same_identity_threshold, e.seed)
    results.update(photos=sum(len(p) for _, p in people), skipped=dict(skipped), seconds=round(time.time() - t0, 1),
                   encoder=encoder.name, model=model.uri, label=label)
    command = command_line()
    write_report(out, results, arrays, faces, model, encoder.name, command)
    results["report"] = str(out / "report.md")
    if e.track:
        results["run_id"] = log_evaluation(e, faces_root, results, out, model, encoder.name, label, command)
    return results
