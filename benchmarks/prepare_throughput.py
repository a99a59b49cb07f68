"""Images/s of `frontalab prepare` on the same photos: Ray Data on 1 vs 2 CPUs, and Ray Data vs
a plain single-process loop over the same stage functions. Prints the ratios.

    python benchmarks/prepare_throughput.py [--images 500]   # photos from $FRONTALAB_FACES/utkface
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN_LOOP = """
import sys, time, pandas as pd
from frontalab.config import load_config
from frontalab.data.prepare import AlignStage, EncodeStage, _settings, decode_stage, list_inputs
cfg = load_config(None, [f"prepare.source={sys.argv[1]}", "prepare.out=unused"])
settings = _settings(cfg)
rows = list_inputs(cfg.prepare.source, 0, cfg.prepare.shard_size)
start = time.perf_counter()
align, encode = AlignStage(settings), EncodeStage(settings)
for i in range(0, len(rows), 32):
    batch = decode_stage(pd.DataFrame(rows[i:i + 32]), settings["min_side"])
    encode(align(batch))
print(len(rows) / (time.perf_counter() - start))
"""

RAY = """
import sys, time, ray
from frontalab.config import load_config
from frontalab.data.prepare import prepare
ray.init(num_cpus=int(sys.argv[3]), include_dashboard=False, _node_ip_address="127.0.0.1")
cfg = load_config(None, [f"prepare.source={sys.argv[1]}", f"prepare.out={sys.argv[2]}"])
start = time.perf_counter()
manifest = prepare(cfg)
print(manifest["input_count"] / (time.perf_counter() - start))
"""


def run(code: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from frontalab.paths import faces_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    args = ap.parse_args()
    photos = sorted((faces_dir() / "utkface").glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for p in photos:
            (src / p.name).symlink_to(p)
        # Start-up (Ray, actors, model loading) is part of what a user waits for: it is included.
        results = {
            "plain loop, 1 process": run(PLAIN_LOOP, str(src)),
            "Ray Data, 1 CPU": run(RAY, str(src), str(Path(tmp) / "one"), "1"),
            "Ray Data, 2 CPUs": run(RAY, str(src), str(Path(tmp) / "two"), "2"),
        }
    for name, ips in results.items():
        print(f"{name:24s} {ips:7.1f} images/s")
    print(f"2 CPUs / 1 CPU            {results['Ray Data, 2 CPUs'] / results['Ray Data, 1 CPU']:.2f}x")
    print(f"Ray Data (2) / plain loop {results['Ray Data, 2 CPUs'] / results['plain loop, 1 process']:.2f}x")
    print(json.dumps({"images": len(photos), **results}))


if __name__ == "__main__":
    main()
