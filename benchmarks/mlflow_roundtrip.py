"""Round-trip of one synchronous `MlflowClient.log_metric` against the MLflow tracking server.

    python benchmarks/mlflow_roundtrip.py [--calls N] [key=value ...]

With no overrides, starts embedded services (SeaweedFS + MLflow) on free ports in a
temporary state dir and stops them afterwards. With overrides (e.g.
``services.state_dir=~/.frontalab`` or ``services.mlflow_uri=http://host:5000``), uses the
services they describe if those are already healthy, else starts them and stops what it
started. Prints the median, p10 and p90 in milliseconds: a measured number, not a pass/fail.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed log_metric calls (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    parser.add_argument("overrides", nargs="*", help="config overrides (services.*)")
    args = parser.parse_args(argv)

    from frontalab.config import load_config
    from frontalab import services

    tmp = None
    overrides = list(args.overrides)
    if not overrides:
        tmp = tempfile.TemporaryDirectory(prefix="frontalab-bench-")
        overrides = [f"services.state_dir={tmp.name}", f"services.s3_port={_free_port()}",
                     f"services.mlflow_port={_free_port()}"]
    cfg = load_config(None, overrides).services

    started = False
    try:
        if services.status(cfg)["healthy"]:
            ep = services.endpoints(cfg)
            print(f"using running services: {ep.mlflow}", file=sys.stderr)
        else:
            t0 = time.monotonic()
            ep = services.up(cfg)
            started = True
            print(f"services started in {time.monotonic() - t0:.1f} s", file=sys.stderr)

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=ep.mlflow)
        exp_id = client.create_experiment(f"bench-log-metric-{int(time.time() * 1000)}")
        run_id = client.create_run(exp_id).info.run_id
        for i in range(args.warmup):
            client.log_metric(run_id, "warmup", float(i), step=i, synchronous=True)
        times = []
        for i in range(args.calls):
            t = time.perf_counter()
            client.log_metric(run_id, "loss", 1.0 / (i + 1), step=i, synchronous=True)
            times.append((time.perf_counter() - t) * 1000.0)
        client.set_terminated(run_id)
        q = statistics.quantiles(times, n=10)
        print(f"log_metric round-trip over {args.calls} synchronous calls to {ep.mlflow}: "
              f"median {statistics.median(times):.2f} ms (p10 {q[0]:.2f}, p90 {q[-1]:.2f}, "
              f"max {max(times):.2f})")
    finally:
        if started:
            services.down(cfg)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
