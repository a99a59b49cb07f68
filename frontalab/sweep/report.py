"""What a sweep found, on its parent run and in the terminal: which swept key mattered, how the best result grew
with the number of trials, and every trial's values against its metric.

- Parameter importance: fANOVA (`optuna.importance`), the share of the metric's variance over the trials that
  each swept key explains, alone and with the others; also parent-run metrics ``importance/KEY``, so that
  sweeps can be sorted and compared by them.
- ``report/best_so_far.png``: the best metric against the number of finished trials.
- ``report/parallel_coordinates.png``: each trial a line through its swept values, coloured by its metric.
- ``report/trials.csv`` and ``report/importance.json``.

The records are the sweep's finished trial runs in MLflow (their params and last metric), so the report reads
the same whether the sweep runs now (`report_refresher`, after each trial) or ended long ago (`frontalab report`).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from frontalab.naming import TRIAL_TAG
from frontalab.tracking import store, sweep_runs

IMPORTANCE_METRIC = "importance/{key}"


@dataclass
class TrialRecord:
    trial: str  # Tune's trial id
    values: dict[str, Any]  # swept key -> the value this trial ran with
    metric: float
    started: int  # ms: the order trials ran in


def trial_records(client, experiment: str, sweep: DictConfig) -> list[TrialRecord]:
    """The sweep's finished trials that reported ``sweep.metric``, in the order they started."""
    _, runs = sweep_runs.finished_trial_runs(client, experiment)
    records = []
    for run in runs:
        value = run.data.metrics.get(sweep.metric)
        if TRIAL_TAG not in run.data.tags or value is None or not math.isfinite(value):
            continue
        values = {key: _param(run.data.params, key, spec) for key, spec in _search(sweep).items()}
        records.append(TrialRecord(run.data.tags[TRIAL_TAG], values, float(value), run.info.start_time))
    return sorted(records, key=lambda r: r.started)


def _search(sweep: DictConfig) -> dict[str, dict]:
    return OmegaConf.to_container(sweep.search, resolve=True)


def _param(params: dict[str, str], key: str, spec: dict) -> Any:
    """A swept value as the trial's params record it; a bundle (a dict choice) by its name."""
    kind, values = next(iter(spec.items()))
    if kind in ("choice", "grid") and any(isinstance(v, dict) for v in values):
        for bundle in values:
            if all(_same(params.get(k, ""), v) for k, v in bundle.items() if k != "name"):
                return bundle.get("name", json.dumps(bundle))
        return "?"
    text = params.get(key, "")
    if kind in ("choice", "grid"):  # the value as the sweep file gives it
        return next((v for v in values if _same(text, v)), text)
    return int(float(text)) if kind == "randint" else float(text)


def _same(text: str, value: Any) -> bool:
    """Does a logged param ``text`` record ``value``? (A float key's 10 is logged as 10.0.)"""
    return text == str(value) or _number(value) is not None and _number(value) == _number(text)


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def importance(records: list[TrialRecord], sweep: DictConfig) -> dict[str, float]:
    """fANOVA importance of each swept key for ``sweep.metric`` (they sum to 1); {} with fewer than 3 trials or no
    key that varied."""
    import optuna  # deferred: only reports and model-based sweeps import it
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    search = _search(sweep)
    varied = [k for k in search if len({json.dumps(r.values[k], default=str) for r in records}) > 1]
    if len(records) < 3 or not varied:
        return {}

    def distribution(spec: dict):
        kind, values = next(iter(spec.items()))
        if kind in ("choice", "grid"):
            return CategoricalDistribution([v.get("name", json.dumps(v)) if isinstance(v, dict) else v for v in values])
        if kind == "randint":
            return IntDistribution(values[0], values[1] - 1)
        return FloatDistribution(values[0], values[1], log=kind == "loguniform")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    distributions = {k: distribution(search[k]) for k in varied}
    for r in records:
        study.add_trial(optuna.trial.create_trial(params={k: r.values[k] for k in varied},
                                                  distributions=distributions, value=r.metric))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=sweep.seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return {k: float(found.get(k, 0.0)) for k in search if k in varied}


def best_so_far(records: list[TrialRecord], mode: str) -> list[float]:
    best: list[float] = []
    for r in records:
        better = max if mode == "max" else min
        best.append(r.metric if not best else better(best[-1], r.metric))
    return best


def write_plots(records: list[TrialRecord], sweep: DictConfig, folder: Path) -> list[Path]:
    import matplotlib  # deferred: plots only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(records) + 1), best_so_far(records, sweep.mode), marker="o")
    ax.set(xlabel="finished trials", ylabel=f"best {sweep.metric}", title=f"sweep {sweep.name}: best so far")
    ax.grid(alpha=0.3)
    paths.append(folder / "best_so_far.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    keys = list(_search(sweep))
    if keys:
        fig, ax = plt.subplots(figsize=(max(5, 2 * len(keys) + 2), 4))
        search = _search(sweep)
        positions = {k: _axis_positions([r.values[k] for r in records], log="loguniform" in search[k]) for k in keys}
        metrics = [r.metric for r in records]
        low, high = min(metrics), max(metrics)
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(records):
            shade = (r.metric - low) / (high - low) if high > low else 1.0
            ax.plot(range(len(keys)), [positions[k][i] for k in keys], color=cmap(shade if sweep.mode == "max"
                                                                                   else 1 - shade), alpha=0.8)
        ax.set_xticks(range(len(keys)), keys, rotation=15)
        ax.set_yticks([])
        for x, k in enumerate(keys):
            values = [r.values[k] for r in records]
            for value, y in zip(values, positions[k]):
                ax.annotate(f"{value:.3g}" if isinstance(value, float) else str(value), (x, y), fontsize=7,
                            xytext=(3, 0), textcoords="offset points")
        ax.set_title(f"sweep {sweep.name}: swept values, coloured by {sweep.metric} (bright = best)")
        paths.append(folder / "parallel_coordinates.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths


def _axis_positions(values: list[Any], log: bool = False) -> list[float]:
    """Each value's height on its axis in [0, 1]: numbers by value (by its logarithm on a ``log`` axis), other
    values by their sorted order."""
    if all(isinstance(v, (int, float)) for v in values):
        values = [math.log(v) for v in values] if log else values
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.5 for v in values]
    order = sorted({str(v) for v in values})
    return [order.index(str(v)) / max(len(order) - 1, 1) for v in values]


def table(records: list[TrialRecord], sweep: DictConfig, found: dict[str, float]) -> str:
    """The terminal's report: every trial, best first, then the importance of each swept key."""
    keys = list(_search(sweep))
    ranked = sorted(records, key=lambda r: r.metric, reverse=sweep.mode == "max")
    header = ["trial", sweep.metric, *keys]
    rows = [[r.trial, f"{r.metric:.4g}", *(f"{r.values[k]:.4g}" if isinstance(r.values[k], float) else str(r.values[k])
                                            for k in keys)] for r in ranked]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [f"sweep {sweep.name}: {len(records)} finished trials, {sweep.metric} ({sweep.mode})", ""]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    lines += ["", "importance (fANOVA, share of the metric's variance):" if found else
              "importance: needs 3 finished trials and a swept key that varied"]
    lines += [f"  {k:{max(map(len, found))}s}  {v:.3f}" for k, v in sorted(found.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def publish(client, parent: str, experiment: str, sweep: DictConfig) -> Optional[dict[str, Any]]:
    """The report of the sweep's finished trials so far, logged on its parent run (artifacts under ``report/``,
    the importance as ``importance/KEY`` metrics at step = the number of trials); None before the first trial."""
    records = trial_records(client, experiment, sweep)
    if not records:
        return None
    found = importance(records, sweep)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_plots(records, sweep, folder)
        (folder / "importance.json").write_text(json.dumps(found, indent=1))
        (folder / "trials.csv").write_text("\n".join(
            [",".join(["trial", sweep.metric, *_search(sweep)])]
            + [",".join([r.trial, repr(r.metric), *(json.dumps(r.values[k], default=str) for k in _search(sweep))])
               for r in records]) + "\n")
        sweep_runs.log_report(client, parent, folder, {IMPORTANCE_METRIC.format(key=k): v for k, v in found.items()},
                         step=len(records))
    return {"trials": len(records), "importance": found, "best": best_so_far(records, sweep.mode)[-1],
            "table": table(records, sweep, found)}


def refresh(client, parent: str, experiment: str, sweep: DictConfig) -> Optional[dict[str, Any]]:
    """`publish`, where a failure is one line on stderr and None: a report never ends the sweep it reports on."""
    try:
        return publish(client, parent, experiment, sweep)
    except Exception as err:  # noqa: BLE001 - the sweep's trials and results stand without their report
        print(f"sweep {sweep.name}: could not refresh its report: "
              f"{str(err).splitlines()[0][:300] if str(err) else repr(err)}", file=sys.stderr, flush=True)
        return None


def report_refresher(parent: str, experiment: str, sweep: DictConfig):
    """``(trial, status)`` -> the report on the parent run refreshed, as each trial ends."""
    def on_trial_end(trial, status: str) -> None:
        refresh(store.client(), parent, experiment, sweep)

    return on_trial_end
