"""`benchmarks/gpu_check.py --smoke`: the GPU check's whole path (synthetic dataset, streamed batches,
the full thesis step, trials sharing a device) runs on CPU, so the script cannot rot between GPU runs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_one_and_two_trials_on_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("1 trial(s):") and lines[1].startswith("2 trial(s):")
    ratio = float(lines[-1].removeprefix("shared2_over_one="))
    assert ratio > 0  # a measurement, not a claim: two trials on a shared CPU may be faster or slower
