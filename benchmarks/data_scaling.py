"""Does a trial's memory or start-up grow with its dataset? The same trial (same steps) on a dataset and
on that dataset replicated 10x: peak RSS and time to the first finished step, each in a fresh process.

The dataset is synthetic, in the real format (benchmarks/synthetic_faces.py): 8 shards of 256 faces at
128 px, and the 10x copy lists each shard 10 times (links, so the bytes on disk are the same files).
Batches stream from 4-shard windows (data.shuffle_window=4), fewer shards than either dataset has.

    python benchmarks/data_scaling.py [--steps 10] [--size 128]

The last line reads ``rss_ratio=X start_ratio=Y`` (10x over 1x; the target is <= 1.25 each).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_faces import write_dataset  # noqa: E402

TRIAL = """
import json, resource, sys, time
start = time.perf_counter()
from frontalab.config import load_config
from frontalab.tracking.tracker import NullTracker
from frontalab.training.trial import Trial
data, steps, size, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = load_config(None, [f"data.path={data}", f"model.out_size={size}", "model.width=1", "train.batch_size=8",
                         "train.val_faces=8", "data.shuffle_window=4", "tracking.enabled=false", "train.workers=1",
                         f"train.steps={steps}", f"train.checkpoint_dir={ckpt}"])
trial = Trial(cfg, lambda **_: NullTracker())
trial.train_step()
first = time.perf_counter() - start
for _ in range(steps - 1):
    trial.train_step()
trial.stream.close()
print(json.dumps({"start_s": first, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def replicate(dataset: Path, out: Path, times: int) -> Path:
    """``dataset`` with every shard listed ``times`` times (links to the same files)."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    out.mkdir()
    names = []
    for copy in range(times):
        for name in manifest["shards"]:
            names.append(f"copy{copy:02d}-{name}")
            (out / names[-1]).symlink_to(dataset / name)
    split = {k: v * times for k, v in manifest["split"].items()}
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": names, "split": split,
                                                   "kept": manifest["kept"] * times}))
    return out


def run(data: Path, steps: int, size: int, tmp: Path) -> dict:
    ckpt = tempfile.mkdtemp(dir=tmp)
    out = subprocess.run([sys.executable, "-c", TRIAL, str(data), str(steps), str(size), ckpt],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"data_scaling: the trial failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = write_dataset(Path(tmp) / "one", args.size, shards=8)
        ten = replicate(one, Path(tmp) / "ten", 10)
        t0 = time.perf_counter()
        results = {"1x": run(one, args.steps, args.size, Path(tmp)), "10x": run(ten, args.steps, args.size, Path(tmp))}
    for name, r in results.items():
        print(f"{name:>3}: first step after {r['start_s']:6.1f} s, peak RSS {r['peak_rss_mb']:7.0f} MB")
    print(f"({time.perf_counter() - t0:.0f} s in all; {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB here)")
    print(f"rss_ratio={results['10x']['peak_rss_mb'] / results['1x']['peak_rss_mb']:.2f} "
          f"start_ratio={results['10x']['start_s'] / results['1x']['start_s']:.2f}")


if __name__ == "__main__":
    main()
