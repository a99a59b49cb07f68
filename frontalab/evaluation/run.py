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

import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from frontalab.data.crop import crop, encoder_chip, loose_crop_box
from frontalab.data.decode import IMAGE_SUFFIXES, UNREADABLE, Skip, decode
from frontalab.data.faces import identity_source
from frontalab.data.teacher import Box, LandmarkTeacher
from frontalab.evaluation.judge import FaceResJudge
from frontalab.evaluation.metrics import (auc_interval, identity_measures, normalized_share, pair_distances, roc_auc,
                                          verification_pairs)
from frontalab.evaluation.report import log_evaluation, write_report
from frontalab.measure import (Outputs, colour_cast, embed, high_frequency_energy, measure_outputs, pose_and_mouth,
                               summarise_outputs)
from frontalab.models import landmarks as lm
from frontalab.models.encoders import build_encoder
from frontalab.naming import DLIB_RESNET, VERSION_RUN_TAG
from frontalab.paths import state_dir
from frontalab.sections import ConfigError
from frontalab.serving.frontalizer import Frontalizer, canonical_texture
from frontalab.tracking import registry
from frontalab.tracking.provenance import command_line
from frontalab.training.sources import checkpoint_file

HEADLINE = ("identity_within_threshold", "normalized_share", "auc_outputs", "auc_outputs_ci95", "auc_inputs",
            "mean_abs_yaw", "inputs_mean_abs_yaw", "output_size", "output_face_detected", "different_people_spread",
            "mean_mouth_opening", "inputs_mean_mouth_opening", "n_faces", "n_people", "blur_ratio",
            "output_colour_cast", "inputs_colour_cast", "identity")


GRID_PAIRS = 16
FRONTAL_YAW = 10.0  # degrees: inputs this frontal are the sharpness reference of the outputs


def select_people(root: Path, min_photos: int, max_per_person: int, max_people: int, seed: int) -> list[tuple[str, list[Path]]]:
    """People (sub-folders) with >= ``min_photos`` photos, each capped at the first ``max_per_person``."""
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
WARP_BASELINE = re.compile(r"warp:(\d+)")


class InputAsOutput:
    """A baseline that does not frontalize: its "output" is the input's own loose crop at ``size`` px.

    Evaluated like a model, it shows what the output resolution alone costs the identity numbers
    (a ceiling for any frontalizer of that size), and the inputs' own pose.
    """

    def __init__(self, size: int):
        self.size = size
        self.views = 1  # the crop itself is the output: no encoder views
        self.teacher = LandmarkTeacher()
        self.encoder = build_encoder(DLIB_RESNET)

    def crop(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        return crop(rgb, loose_crop_box(self.teacher.landmarks68(rgb, box)), self.size)[0]


class WarpAsOutput(InputAsOutput):
    """A baseline that learns nothing: its "output" is I*, the input warped to the canonical landmarks, on white
    outside the canonical face region (1.4 x the outline): what an input-texture decoder draws before training
    (`model.input_texture`), so an evaluation of it shows what the training added."""

    def __init__(self, size: int):
        super().__init__(size)
        self.region = lm.face_region(lm.mean_face(), size, scale=1.4).numpy()[..., None]

    def crop(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        texture = (canonical_texture(self.teacher, rgb, box, self.size) + 1) / 2
        return ((self.region * texture + 1 - self.region) * 255 + 0.5).astype(np.uint8)


def model_outputs(f, batch: list[tuple[np.ndarray, Box, np.ndarray]]) -> np.ndarray:
    """(N, S, S, 3) uint8 outputs for (photo, face box, model input chip) triples."""
    if isinstance(f, InputAsOutput):
        return np.stack([f.crop(rgb, box) for rgb, box, _ in batch])
    textures = np.stack([f.canonical_texture(rgb, box) for rgb, box, _ in batch]) if f.takes_texture else None
    return f.frontalize_chips(np.stack([chip for _, _, chip in batch]), textures)


def load_model(spec: str, views: int = 0) -> ModelUnderTest:
    """A packaged champion (pretrained:NAME), a registered model version (models:/NAME@ALIAS,
    models:/NAME/VERSION), a run id, a checkpoint, the no-frontalization baseline ``input:SIZE``, or the
    no-learning baseline ``warp:SIZE`` (`WarpAsOutput`);
    ``views``: the encoder views a model averages (0: its own ``model.test_views``)."""
    if match := INPUT_BASELINE.fullmatch(spec):
        return ModelUnderTest(InputAsOutput(int(match[1])), spec)
    if match := WARP_BASELINE.fullmatch(spec):
        return ModelUnderTest(WarpAsOutput(int(match[1])), spec)
    with tempfile.TemporaryDirectory() as tmp:
        frontalizer = Frontalizer(checkpoint_file(spec, Path(tmp)), views=views)
    if spec.startswith("models:/"):
        name, version = registry.model_version(spec)
        return ModelUnderTest(frontalizer, spec, name, str(version.version),
                              version.tags.get(VERSION_RUN_TAG, version.run_id or ""), dict(version.tags))
    return ModelUnderTest(frontalizer, spec, source_run=frontalizer.run_id)


@dataclass
class Faces:
    """Per evaluated face: who, what the evaluation measured of its input, and of its output."""
    person: list[int] = field(default_factory=list)
    emb_in: list[np.ndarray] = field(default_factory=list)  # by the evaluation encoder
    # By each other grading encoder (the judge): name -> embeddings of the inputs.
    graded_in: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pose_in: list[tuple[float, float, float]] = field(default_factory=list)
    cast_in: list[float] = field(default_factory=list)  # `colour_cast` of each input's chip
    # Fine detail (`high_frequency_energy`) of each frontal input's loose crop at the output's size: the
    # outputs' over these is their sharpness against real frontal photos (1 = as sharp).
    detail_frontal_photos: list[float] = field(default_factory=list)
    grid: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (input chip, output) pairs
    # The outputs, batch by batch, as `frontalab.measure` measures them (by the evaluation encoder and graders).
    outputs: list[Outputs] = field(default_factory=list)

    def measured(self) -> Outputs:
        return Outputs.concat(self.outputs)


def run_faces(model: ModelUnderTest, eval_encoder, people: list[tuple[str, list[Path]]], batch_size: int,
              skipped: Counter, graders: tuple = ()) -> Faces:
    """Every photo's face through the model; inputs and outputs embedded by ``eval_encoder`` and by each
    of ``graders`` (encoders that only grade, each through its own crop of the same faces)."""
    f = model.frontalizer
    teacher = f.teacher
    same_encoder = eval_encoder.name == f.encoder.name
    photos = [(i, p) for i, (_, paths) in enumerate(people) for p in paths]
    faces = Faces(graded_in={g.name: [] for g in graders})
    grid_people: set[int] = set()
    # (person, (photo, face box, model chip), evaluation chip, pose and mouth, the photo's 68 points)
    pending: list[tuple[int, tuple, np.ndarray, tuple, np.ndarray]] = []

    def flush() -> None:
        outputs = model_outputs(f, [photo for _, photo, _, _, _ in pending])
        faces.outputs.append(measure_outputs(teacher, outputs, (eval_encoder, *graders)))
        for (who, (rgb, _, _), eval_chip, pose_in, points), out in zip(pending, outputs):
            faces.cast_in.append(colour_cast(eval_chip))
            if abs(pose_in[0]) < FRONTAL_YAW:
                faces.detail_frontal_photos.append(high_frequency_energy(crop(rgb, loose_crop_box(points), len(out))[0]))
            faces.person.append(who)
            faces.pose_in.append(pose_in)
            if who not in grid_people and len(faces.grid) < GRID_PAIRS:
                grid_people.add(who)
                faces.grid.append((eval_chip, out))
        faces.emb_in.extend(embed(eval_encoder, [e for _, _, e, _, _ in pending]))
        for g in graders:
            faces.graded_in[g.name].extend(embed(g, [encoder_chip(teacher, rgb, box, g, points)
                                                     for _, (rgb, box, _), _, _, points in pending]))
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
        points = teacher.landmarks68(rgb, box)
        model_chip = encoder_chip(teacher, rgb, box, f.encoder, points)
        eval_chip = model_chip if same_encoder else encoder_chip(teacher, rgb, box, eval_encoder, points)
        pending.append((who, (rgb, box, model_chip), eval_chip, pose_and_mouth(points, rgb.shape[:2]), points))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return faces


def summarise(faces: Faces, threshold: float, seed: int, encoder_name: str = DLIB_RESNET,
              grader_thresholds: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Headline numbers (the outputs' by `frontalab.measure.summarise_outputs`, by the evaluation encoder
    ``encoder_name``), the identity measures by it and by each grader (under ``identity``, keyed by encoder name,
    each with its same-person threshold), and the arrays behind the plots."""
    person = np.array(faces.person)
    counts = Counter(person.tolist())
    if sum(1 for c in counts.values() if c >= 2) < 2:
        raise ConfigError(f"evaluate: {sum(1 for c in counts.values() if c >= 2)} people have 2+ faces found; "
                          "normalisation and verification need at least 2 (evaluate more people)")
    out = faces.measured()
    emb_in, emb_out = np.stack(faces.emb_in), out.embeddings[encoder_name]
    pairs, same = verification_pairs(person, seed)
    d_in, d_out = pair_distances(emb_in, pairs), pair_distances(emb_out, pairs)
    pose_in = np.array(faces.pose_in)
    results = {
        **summarise_outputs(out, encoder_name, emb_in, threshold, pairs[~same]),
        "normalized_share": normalized_share(emb_in, emb_out, person),
        "auc_outputs": roc_auc(-d_out, same),
        "auc_outputs_ci95": auc_interval(-d_out, same, pairs, person, seed),
        "auc_inputs": roc_auc(-d_in, same),
        "n_faces": int(len(person)),
        "n_people": int(sum(1 for c in counts.values() if c >= 2)),
        "threshold": float(threshold),
        "inputs_mean_abs_yaw": float(np.nanmean(np.abs(pose_in[:, 0]))),
        "inputs_mean_abs_pitch": float(np.nanmean(np.abs(pose_in[:, 1]))),
        "inputs_mean_mouth_opening": float(pose_in[:, 2].mean()),
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        # Outputs' fine detail over real frontal photos' at the same size (1 = as sharp; blur lowers it).
        "blur_ratio": (float(out.detail.mean() / np.mean(faces.detail_frontal_photos))
                       if faces.detail_frontal_photos else float("nan")),
        "output_size": int(faces.grid[0][1].shape[0]) if faces.grid else 0,
        "inputs_colour_cast": float(np.mean(faces.cast_in)) if faces.cast_in else float("nan"),
        "identity": {encoder_name: identity_measures(emb_in, emb_out, person, threshold, seed)},
    }
    for name, grader_threshold in (grader_thresholds or {}).items():
        results["identity"][name] = identity_measures(np.stack(faces.graded_in[name]), out.embeddings[name],
                                                      person, grader_threshold, seed)
    arrays = {"identity": np.linalg.norm(emb_in - emb_out, axis=1), "same": same, "pair_in": d_in,
              "pair_out": d_out, "yaw_in": pose_in[:, 0], "yaw_out": out.pose[:, 0]}
    return results, arrays


def evaluate_model(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.evaluate.model`` on ``cfg.evaluate.faces``; returns the results (+ report, run id)."""
    e = cfg.evaluate
    faces_root = Path(e.faces) if e.faces else identity_source()
    people = select_people(faces_root, e.min_photos, e.max_photos_per_person, e.max_people, e.seed)
    t0 = time.time()
    model = load_model(e.model, e.views)
    own = model.frontalizer.encoder
    encoder = own if e.encoder in ("", own.name) else build_encoder(e.encoder)
    label = e.label or re.sub(r"[^A-Za-z0-9_.-]+", "-", model.uri).strip("-")
    out = Path(e.out) if e.out else state_dir(cfg.services.state_dir) / "evaluations" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    graders = (FaceResJudge(),) if e.judge else ()
    skipped: Counter = Counter()
    faces = run_faces(model, encoder, people, e.batch_size, skipped, graders)
    if not faces.person:
        raise ConfigError(f"evaluate: no face found in any of the {sum(len(p) for _, p in people)} photos of {faces_root}")
    results, arrays = summarise(faces, encoder.same_identity_threshold, e.seed, encoder.name,
                                {g.name: g.same_identity_threshold for g in graders})
    results.update(photos=sum(len(p) for _, p in people), skipped=dict(skipped), seconds=round(time.time() - t0, 1),
                   encoder=encoder.name, model=model.uri, label=label,
                   views=model.frontalizer.views)
    command = command_line()
    write_report(out, results, arrays, faces, model, encoder.name, command)
    results["report"] = str(out / "report.md")
    if e.track:
        results["run_id"] = log_evaluation(e, faces_root, results, out, model, encoder.name, label, command)
    return results
