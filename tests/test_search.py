"""Sweeps that learn from their trials: the search algorithms a sweep file may name, and the report of what
mattered (fANOVA importance, best so far, parallel coordinates) with known answers."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from frontalab.config import load_sweep
from frontalab.sections import ConfigError
from frontalab.sweep.report import TrialRecord, best_so_far, importance, table, write_plots

QUICK = "sweeps/quick.yaml"


@pytest.mark.parametrize("overrides, refused", [
    (["search_alg=optuna"], "search.loss.texture is a grid"),  # quick.yaml's grid: TPE chooses values itself
    (["search_alg=grid", "search.loss.texture={uniform:[10,100]}"], "search.loss.texture is not one"),
    (["search_alg=optuna", "search.loss.texture={uniform:[10,100]}", "search.train.g_steps_per_d={choice:[1,4]}",
      "search.loss.identity={loguniform:[1,100]}"], None),
    (["search_alg=annealing"], "search_alg"),
])
def test_search_alg_takes_the_specs_it_can_search(overrides, refused):
    if refused is None:
        sweep, _ = load_sweep(QUICK, overrides)
        assert sweep.search_alg == "optuna"
    else:
        with pytest.raises(ConfigError, match=refused):
            load_sweep(QUICK, overrides)


def test_optuna_searcher_is_tpe_multivariate_with_a_constant_liar_and_warm_starts():
    from frontalab.sweep.tune import search_algorithm

    sweep, _ = load_sweep(QUICK, ["search_alg=optuna", "search.loss.texture={uniform:[10,100]}",
                                  "search.train.g_steps_per_d={choice:[1,4]}", "seed=3"])
    # grid and random: Tune's variant generator, seeded: the same seed draws the same values.
    variant = search_algorithm(load_sweep(QUICK, ["seed=3"])[0])
    assert variant.max_concurrent == 2
    draws = [search_algorithm(load_sweep(QUICK, ["seed=3"])[0])._random_state._rng.random() for _ in range(2)]
    assert draws[0] == draws[1] != search_algorithm(load_sweep(QUICK)[0])._random_state._rng.random()
    limiter = search_algorithm(sweep, points=[{"loss.texture": 20.0, "train.g_steps_per_d": 1}], rewards=[0.5])
    assert limiter.max_concurrent == 2  # quick.yaml's max_concurrent: the searcher holds it
    searcher = limiter.searcher
    sampler = searcher._sampler
    assert type(sampler).__name__ == "TPESampler" and sampler._multivariate and sampler._constant_liar
    assert sampler._n_startup_trials == 2  # quick.yaml's num_samples 1: the floor
    assert searcher._metric == sweep.metric and searcher._mode == "max"
    assert searcher._points_to_evaluate == [{"loss.texture": 20.0, "train.g_steps_per_d": 1}]
    assert searcher._evaluated_rewards == [0.5]


def three_key_sweep():
    return OmegaConf.create({"name": "known", "metric": "val/score", "mode": "max", "seed": 0, "search": {
        "loss.texture": {"uniform": [0, 1]}, "loss.identity": {"uniform": [0, 1]},
        "train.g_steps_per_d": {"choice": [1, 2, 4]}}})


def records_where_only_texture_matters(n: int = 24) -> list[TrialRecord]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        values = {"loss.texture": rng.random(), "loss.identity": rng.random(),
                  "train.g_steps_per_d": rng.choice([1, 2, 4])}
        out.append(TrialRecord(f"t{i}", values, 3 * values["loss.texture"] + 0.01 * rng.random(), i))
    return out


def test_the_one_key_that_moves_the_metric_gets_the_largest_importance():
    found = importance(records_where_only_texture_matters(), three_key_sweep())
    assert set(found) == {"loss.texture", "loss.identity", "train.g_steps_per_d"}
    assert max(found, key=found.get) == "loss.texture" and found["loss.texture"] > 0.8
    assert sum(found.values()) == pytest.approx(1.0)
    assert importance(records_where_only_texture_matters(2), three_key_sweep()) == {}  # too few to say


def test_best_so_far_and_the_report_files(tmp_path):
    records = records_where_only_texture_matters(6)
    best = best_so_far(records, "max")
    assert best == sorted(best) and best[-1] == max(r.metric for r in records)
    assert best_so_far(records, "min")[-1] == min(r.metric for r in records)
    paths = write_plots(records, three_key_sweep(), tmp_path)
    assert [p.name for p in paths] == ["best_so_far.png", "parallel_coordinates.png"]
    assert all(p.stat().st_size > 5000 for p in paths)
    text = table(records, three_key_sweep(), {"loss.texture": 0.9, "loss.identity": 0.05, "train.g_steps_per_d": 0.05})
    lines = text.splitlines()
    best_trial = max(records, key=lambda r: r.metric).trial
    assert lines[3].startswith(best_trial)  # the header, a blank line, the column names, then the best trial
    assert lines[-3].strip().startswith("loss.texture")  # importance, largest first


def test_a_trials_params_read_back_as_the_values_the_sweep_file_gave():
    from frontalab.sweep.report import _param

    assert _param({"loss.texture": "10.0"}, "loss.texture", {"grid": [10, 20]}) == 10  # a float key logs 10 as 10.0
    assert _param({"train.g_steps_per_d": "4"}, "train.g_steps_per_d", {"choice": [1, 4]}) == 4
    assert _param({"loss.identity": "12.5"}, "loss.identity", {"loguniform": [1, 100]}) == 12.5
    assert _param({"model.norm": "instance"}, "model.norm", {"choice": ["batch", "instance"]}) == "instance"
    bundles = {"choice": [{"name": "full", "loss.mask": 1}, {"name": "no_mask", "loss.mask": 0}]}
    assert _param({"loss.mask": "0.0"}, "arm", bundles) == "no_mask"
