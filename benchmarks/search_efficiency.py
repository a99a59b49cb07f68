"""Does model-based search find better trials than random search at the same budget?

A known objective through the sweep's real search path: Ray Tune runs each trial in a process of its own, with
the sweep's searcher (`frontalab.sweep.tune.search_algorithm`: Optuna's TPE for ``search_alg=optuna``, Tune's
variant generator for ``random``) over the sweep's search space (`search_space`), Tune's state in the S3 bucket,
and every trial a child run in MLflow under its sweep's parent run. The trial itself is Branin's function of two
swept keys, mapped onto its domain (x = -5 + 15 u, y = 15 v), plus Gaussian noise (sigma 0.1), reported as its
metric and minimised: its minimum is 0.397887, at three points. Each search gets 20 trials, two at a time, for
five seeds.

    python benchmarks/search_efficiency.py [--trials 20] [--seeds 5]

Per seed: the best Branin value (noise-free) each search found; the last line: both medians and in how many
seeds TPE came closer to the optimum. Starts the embedded services if they are not running (minutes in all).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frontalab import services  # noqa: E402
from frontalab.compute import connect  # noqa: E402
from frontalab.config import load_config  # noqa: E402
from frontalab.naming import PARENT_RUN_TAG, SWEEP_TAG, TRIAL_TAG, sweep_experiment  # noqa: E402
from frontalab.sweep.tune import search_algorithm, search_space, tune_storage_path  # noqa: E402
from frontalab.tracking import store, sweep_runs  # noqa: E402
from frontalab.verbosity import quiet_libraries  # noqa: E402

BRANIN_MIN = 0.397887
METRIC = "branin"


def branin(x: float, y: float) -> float:
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return a * (y - b * x ** 2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


def point(config: dict) -> tuple[float, float]:
    return -5 + 15 * config["loss.texture"], 15 * config["loss.identity"]


def branin_trial(config: dict, *, parent: str, experiment_id: str, sweep: str) -> None:
    """One trial: its MLflow child run, Branin's value plus noise reported to Tune and logged."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    client = store.client()
    run = store.create_run(client, experiment_id, trial_id, {TRIAL_TAG: trial_id, PARENT_RUN_TAG: parent,
                                                             SWEEP_TAG: sweep})
    for key, value in config.items():
        client.log_param(run.info.run_id, key, value)
    noisy = branin(*point(config)) + random.Random(trial_id).gauss(0, 0.1)
    client.log_metric(run.info.run_id, METRIC, noisy)
    client.set_terminated(run.info.run_id, "FINISHED")
    tune.report({METRIC: noisy})


def search(algorithm: str, seed: int, trials: int, storage: str) -> float:
    """The best noise-free Branin value among ``trials`` trials of one search."""
    from ray import tune

    name = f"branin-{algorithm}-{seed}-{int(time.time())}"
    sweep = OmegaConf.create({"name": name, "metric": METRIC, "mode": "min", "seed": seed, "search_alg": algorithm,
                              "num_samples": trials, "max_concurrent": 2,
                              "search": {"loss.texture": {"uniform": [0, 1]}, "loss.identity": {"uniform": [0, 1]}}})
    client = store.client()
    experiment_id = store.experiment_id(client, sweep_experiment(name))
    parent = sweep_runs.sweep_parent_run(client, experiment_id, name, False, "benchmarks/search_efficiency.py", name)
    trainable = tune.with_parameters(branin_trial, parent=parent, experiment_id=experiment_id, sweep=name)
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space=search_space(sweep),
                       tune_config=tune.TuneConfig(metric=METRIC, mode="min", search_alg=search_algorithm(sweep),
                                                   num_samples=trials),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))
    results = tuner.fit()
    client.set_terminated(parent, "FINISHED")
    return min(branin(*point(r.config)) for r in results if r.metrics and METRIC in r.metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    quiet_libraries()
    cfg = load_config(None, [])
    services.up(cfg.services)
    os.environ.update(services.client_env(cfg.services))  # Ray's workers inherit it
    connect(num_cpus=2)
    storage = tune_storage_path("s3://frontalab/benchmarks")
    found = {"optuna": [], "random": []}
    for seed in range(args.seeds):
        for algorithm in found:
            found[algorithm].append(search(algorithm, seed, args.trials, storage))
        print(f"seed {seed}: best Branin TPE {found['optuna'][-1]:.4f}, random {found['random'][-1]:.4f} "
              f"(optimum {BRANIN_MIN})", flush=True)
    closer = sum(t < r for t, r in zip(found["optuna"], found["random"]))
    print(f"tpe_median={statistics.median(found['optuna']):.4f} random_median={statistics.median(found['random']):.4f} "
          f"optimum={BRANIN_MIN} tpe_closer_in={closer}/{args.seeds} trials={args.trials}")


if __name__ == "__main__":
    main()
