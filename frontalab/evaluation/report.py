"""An evaluation's report: plots, the input/output pairs, metrics.json and report.md in a folder, and
the MLflow run that holds them, linked both ways to the model version."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from frontalab.evaluation.metrics import roc_auc, roc_curve
from frontalab.naming import (COMMAND_TAG, ENCODER_TAG, LABEL_TAG, MODEL_NAME_TAG, MODEL_URI_TAG, MODEL_VERSION_TAG,
                              ROLE_EVALUATION, ROLE_TAG, SOURCE_RUN_TAG, evaluation_run)
from frontalab.paths import portable
from frontalab.models.images import to_tensor
from frontalab.tracking import store
from frontalab.training.trial import image_grid


def write_report(out: Path, results: dict[str, Any], arrays: dict[str, np.ndarray], faces,
                 model, encoder_name: str, command: str) -> None:
    """The report of ``faces`` (`frontalab.evaluation.run.Faces`) and ``model`` (its `ModelUnderTest`) in ``out``."""
    # deferred: matplotlib takes ~1 s to import; only a report draws
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    inputs = to_tensor(np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i, _ in faces.grid])) * 2 - 1
    outputs = to_tensor(np.stack([o for _, o in faces.grid])) * 2 - 1
    half = (len(faces.grid) + 1) // 2
    columns = {"input": inputs[:half], "output": outputs[:half]}
    if len(faces.grid) > half:  # two pairs per row
        pad = half - (len(faces.grid) - half)
        fill = torch.ones(pad, 3, size, size)
        columns.update({"input ": torch.cat([inputs[half:], fill]), "output ": torch.cat([outputs[half:], fill])})
    Image.fromarray(image_grid(columns)).save(out / "pairs.png")

    (out / "metrics.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    rows = [("outputs within the threshold of their input", f"{results['identity_within_threshold']:.1%}"),
            ("people whose outputs are closer together than their inputs", f"{results['normalized_share']:.1%}"),
            ("verification AUC, outputs / inputs", f"{results['auc_outputs']:.3f} / {results['auc_inputs']:.3f} "
             f"(outputs' 95% interval over people: {results['auc_outputs_ci95'][0]:.3f}–{results['auc_outputs_ci95'][1]:.3f})"),
            ("mean abs yaw, outputs / inputs (deg)", f"{results['mean_abs_yaw']:.1f} / {results['inputs_mean_abs_yaw']:.1f}"),
            ("mean abs pitch, outputs / inputs (deg)",
             f"{results['mean_abs_pitch']:.1f} / {results['inputs_mean_abs_pitch']:.1f}"),
            ("outputs in which the teacher's detector finds a face", f"{results['output_face_detected']:.1%}"),
            ("different people's output distance / input distance", f"{results['different_people_spread']:.2f}"),
            ("mouth opening, outputs / inputs", f"{results['mean_mouth_opening']:.3f} / {results['inputs_mean_mouth_opening']:.3f}"),
            ("identity distance mean / median / p95",
             f"{results['identity_distance_mean']:.3f} / {results['identity_distance_median']:.3f} / "
             f"{results['identity_distance_p95']:.3f}"),
            ("blur: outputs' fine detail / real frontal photos' at the same size", f"{results['blur_ratio']:.2f}"),
            ("colour cast (0-255), outputs / inputs", f"{results['output_colour_cast']:.1f} / {results['inputs_colour_cast']:.1f}"),
            ("faces / people (2+ faces) / same pairs", f"{results['n_faces']} / {results['n_people']} / {results['same_pairs']}")]
    for encoder, m in results.get("identity", {}).items():
        rows.append((f"by {encoder}: line-up rank-1 (of {m['lineup_size']}) / AUC output vs photos / AUC among "
                     f"outputs / within threshold",
                     f"{m['lineup_rank1']:.1%} / {m['auc_output_vs_photos']:.3f} / {m['auc_outputs']:.3f} / "
                     f"{m['within_threshold']:.1%} (the photos themselves: {m['photos']['lineup_rank1']:.1%} / "
                     f"{m['photos']['auc_output_vs_photos']:.3f} / {m['photos']['auc_outputs']:.3f})"))
    lines = [f"# Evaluation of `{model.uri}`", "",
             f"Encoder: `{encoder_name}` (same-identity threshold {thr:g}). Command: `{command}`", "",
             "| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
             f"Skipped photos: {json.dumps(results['skipped'])}", "",
             "![input/output pairs](pairs.png)", "", "![identity](identity_distance.png)", "",
             "![pairs](pair_distances.png) ![roc](roc.png)", "", "![yaw](yaw.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def log_evaluation(e, faces_root: Path, results: dict[str, Any], out: Path, model,
                   encoder_name: str, label: str, command: str) -> str:
    """An MLflow run holding the numbers and the report, linked both ways to the model version; returns its id."""
    tags = {ROLE_TAG: ROLE_EVALUATION, LABEL_TAG: label, COMMAND_TAG: command,
            MODEL_URI_TAG: model.uri, MODEL_NAME_TAG: model.name, MODEL_VERSION_TAG: model.version,
            SOURCE_RUN_TAG: model.source_run, ENCODER_TAG: encoder_name}
    params = {"faces": portable(faces_root), "encoder": encoder_name, "min_photos": e.min_photos,
              "max_photos_per_person": e.max_photos_per_person, "max_people": e.max_people, "seed": e.seed}
    metrics = {f"eval/{k}": float(v) for k, v in results.items() if isinstance(v, (int, float))}
    for encoder, measures in results.get("identity", {}).items():
        for of, values in (("outputs", measures), ("photos", measures["photos"])):
            metrics.update({f"eval/{encoder}/{of}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))})
    from mlflow.entities import Metric, Param  # deferred: MLflow takes seconds to import

    client = store.client()
    run_id = store.create_run(client, store.experiment_id(client, e.experiment), evaluation_run(label), tags).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifacts(run_id, str(out), "report")
    client.set_terminated(run_id)
    if model.name and model.version:  # the version links to its evaluations
        client.set_model_version_tag(model.name, model.version, f"evaluation.{label}", run_id)
    return run_id
