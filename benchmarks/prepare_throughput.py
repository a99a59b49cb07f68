"""Images/s of `frontalab prepare` on the same photos: on Ray with 1 vs 2 CPUs, and on Ray with 1 CPU vs a
plain single-process loop over the same shard worker. The issue's targets: 2 CPUs >= 1.6x 1 CPU, and Ray
at 1 CPU >= 0.95x the plain loop; the last line prints both ratios.

With ``--cluster`` the two Ray runs join a local cluster started beforehand, as a user's cluster is: one node of
1 CPU, then a head and a worker node of 1 CPU each (separate `ray start` processes on this machine). Ray's own
start-up is then out of the timing; each run still starts its `ShardWorker` actors.

    python benchmarks/prepare_throughput.py [--images 500] [--cluster]   # photos from $FRONTALAB_FACES/utkface
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN_LOOP = """
import sys, time
from frontalab.config import load_config
from frontalab.data.prepare import ShardWorker, _settings, list_inputs, shard_jobs
cfg = load_config(None, [f"prepare.source={sys.argv[1]}", f"prepare.out={sys.argv[2]}"])
settings = _settings(cfg)
start = time.perf_counter()
rows = list_inputs(cfg.prepare.source, 0, cfg.prepare.shard_size)
worker = ShardWorker(settings, cfg.prepare.out)
for job in shard_jobs(rows, {}):  # the photos have no identities: every split is by content
    worker.write(*job)
print(len(rows) / (time.perf_counter() - start))
"""

RAY = """
import sys, time, ray
from frontalab.config import load_config
from frontalab.data.prepare import prepare
where = sys.argv[3]  # a CPU count for embedded Ray, or a cluster's address
if where.isdigit():
    ray.init(num_cpus=int(where), include_dashboard=False, _node_ip_address="127.0.0.1")
else:
    ray.init(address=where)
cfg = load_config(None, [f"prepare.source={sys.argv[1]}", f"prepare.out={sys.argv[2]}"])
start = time.perf_counter()
manifest = prepare(cfg)
print(manifest["input_count"] / (time.perf_counter() - start))
"""


def run(code: str, *args: str, env: dict[str, str] | None = None) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return float(out.stdout.strip().splitlines()[-1])


def on_cluster(nodes: int, src: Path, out: Path) -> float:
    """Images/s of prepare on a local cluster of ``nodes`` nodes of 1 CPU each, started before the timing."""
    from frontalab.testing import LocalCluster

    with LocalCluster(workers=nodes - 1, cpus_per_node=1, state_dir=out.with_name(out.name + "-ray")) as cluster:
        return run(RAY, str(src), str(out), cluster.address, env=cluster.driver_env())


def main() -> None:
    from frontalab.paths import faces_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--cluster", action="store_true", help="Ray runs on a local cluster of 1, then 2 nodes")
    args = ap.parse_args()
    photos = sorted((faces_dir() / "utkface").glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for p in photos:
            (src / p.name).symlink_to(p)
        # Start-up (Ray, actors, model loading) is part of what a user waits for: it is included.
        results = {"plain loop, 1 process": run(PLAIN_LOOP, str(src), str(Path(tmp) / "plain"))}
        if args.cluster:
            results["Ray, 1 CPU"] = on_cluster(1, src, Path(tmp) / "one")
            results["Ray, 2 CPUs"] = on_cluster(2, src, Path(tmp) / "two")
        else:
            results["Ray, 1 CPU"] = run(RAY, str(src), str(Path(tmp) / "one"), "1")
            results["Ray, 2 CPUs"] = run(RAY, str(src), str(Path(tmp) / "two"), "2")
    for name, ips in results.items():
        print(f"{name:24s} {ips:7.1f} images/s")
    print(json.dumps({"images": len(photos), "ray": "local cluster" if args.cluster else "embedded", **results}))
    two_over_one = results["Ray, 2 CPUs"] / results["Ray, 1 CPU"]
    ray1_over_plain = results["Ray, 1 CPU"] / results["plain loop, 1 process"]
    print(f"two_over_one={two_over_one:.2f} ray1_over_plain={ray1_over_plain:.2f}")


if __name__ == "__main__":
    main()
