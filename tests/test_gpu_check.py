"""`benchmarks/gpu_check.py --smoke`: the GPU check's whole path (synthetic dataset, streamed batches,
the full thesis step, trials sharing a device) runs on CPU, so the script cannot rot between GPU runs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_one_and_two_trials_on_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("1 trial(s):") and lines[1].startswith("2 trial(s):")
    # A measurement, not a claim (two trials on a shared CPU may be faster or slower): the ratio printed is the
    # one of the two throughputs printed above it.
    one, two = (float(line.split(":")[1].split()[0]) for line in lines[:2])
    assert one > 0 and two > 0
    assert float(lines[-1].removeprefix("shared2_over_one=")) == pytest.approx(two / one, rel=0.03, abs=0.01)


def test_gpu_recipe_trains_the_128px_champion_at_tiny_size_on_cpu(tmp_path, lfw_photos):
    """tools/gpu_recipe.py --smoke: the one-call GPU recipe's whole path on CPU (3 steps of a synthetic dataset); its
    checkpoint is a 128-px input-texture thesis decoder that evaluate and frontalize take as they are."""
    import json

    import numpy as np

    from frontalab.data.decode import decode
    from frontalab.evaluation import load_model

    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_recipe.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["val_faces"] == 32
    assert json.loads((tmp_path / "validation.json").read_text()) == result
    model = load_model(str(tmp_path / "checkpoint.pt"))
    f = model.frontalizer
    assert f.takes_texture and f.G.out_size == 128 and f.step == 3
    face = f(decode(lfw_photos[0].read_bytes())[0])
    assert face.shape == (128, 128, 3) and face.dtype == np.uint8
