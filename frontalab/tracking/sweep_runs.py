"""A sweep in MLflow: one experiment per sweep, a parent run holding the sweep's files, results and report, and a
child run per trial found again by its Tune trial id (`frontalab.sweep`); `promote` reads the finished trials."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from frontalab.naming import (COMMAND_TAG, NOTE_TAG, PARENT_RUN_TAG, ROLE_SWEEP, ROLE_TAG, STOPPED_EARLY_TAG, SWEEP_TAG,
                              TRIAL_TAG, TUNE_EXPERIMENT_TAG)
from frontalab.tracking import store
from frontalab.tracking.outcome import FINISHED, RUNNING, Outcome


def find_child_run(client, experiment_id: str, trial_id: str) -> Optional[str]:
    """The run of Tune trial ``trial_id``, found by its tag (a restarted trial continues it)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=5,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def end_trial_run(experiment: str, trial_id: str, outcome: Outcome, step: Optional[int] = None) -> None:
    """End trial ``trial_id``'s run with ``outcome`` if it is still RUNNING (a killed trial cannot end its own, nor can
    a data-parallel trial's workers, which go with their trial); ``step``: its last reported step."""
    c = store.client()
    run_id = find_child_run(c, store.experiment_id(c, experiment), trial_id)
    if run_id and c.get_run(run_id).info.status == RUNNING:
        store.end_run(c, run_id, outcome, step)


def end_running_trials(client, parent: str, outcome: Outcome, since_ms: Optional[int] = None) -> None:
    """End every still-RUNNING trial run under sweep run ``parent`` with ``outcome``: a stopped sweep's trials are
    stopped by Tune without a chance to end their own runs (``--resume`` reopens them). ``since_ms``: when the
    sweep was told to stop; a trial that ended its own run since, as stopped early, was stopped by the sweep's
    stop, not by its scheduler: it ends so too."""
    experiment = client.get_run(parent).info.experiment_id
    child = f"tags.`{PARENT_RUN_TAG}` = '{parent}'"
    runs = client.search_runs([experiment], max_results=10000, filter_string=f"{child} and attributes.status = 'RUNNING'")
    if since_ms is not None:
        runs += client.search_runs([experiment], max_results=10000,
                                   filter_string=f"{child} and attributes.status = 'FINISHED' and "
                                                 f"attributes.end_time >= {since_ms} and tags.`{STOPPED_EARLY_TAG}` != ''")
    for run in runs:
        store.end_run(client, run.info.run_id, outcome)


def sweep_parent_run(client, experiment_id: str, sweep: str, resume: bool, command: str, tune_experiment: str) -> str:
    """The sweep's parent run, about to run Tune experiment ``tune_experiment``: the latest one again when
    resuming (or growing), else a new one."""
    if resume:
        latest = latest_sweep_parent(client, experiment_id, sweep)
        if latest is not None:
            client.update_run(latest.info.run_id, status=RUNNING)
            client.set_tag(latest.info.run_id, TUNE_EXPERIMENT_TAG, tune_experiment)
            return latest.info.run_id
    run = store.create_run(client, experiment_id, sweep, {SWEEP_TAG: sweep, ROLE_TAG: ROLE_SWEEP, COMMAND_TAG: command,
                                                    TUNE_EXPERIMENT_TAG: tune_experiment}, source=command)
    return run.info.run_id


def latest_sweep_parent(client, experiment_id: str, sweep: str):
    """The newest parent run of sweep ``sweep``, or None."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' "
                              f"and tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def resolved_sweep(client, parent: str) -> str:
    """The resolved sweep file (YAML) a parent run was started with (`log_sweep_files`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(parent, "sweep/sweep.resolved.yaml", tmp)).read_text()


def log_sweep_files(client, parent: str, sweep_file: str, resolved_yaml: str, search_space: dict) -> None:
    """The sweep file as given, resolved, and its search space, on the parent run."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(sweep_file, Path(tmp) / Path(sweep_file).name)
        (Path(tmp) / "sweep.resolved.yaml").write_text(resolved_yaml)
        (Path(tmp) / "search_space.json").write_text(json.dumps(search_space, indent=1))
        client.log_artifacts(parent, tmp, "sweep")
    if not client.get_run(parent).data.params:  # a resumed sweep already has it
        client.log_param(parent, "sweep.file", Path(sweep_file).name)


def log_sweep_results(client, parent: str, results_table, best_tags: dict[str, str], description: str) -> None:
    """The results table (a DataFrame), the best trial's tags and the run's description on the parent run, which
    then ends FINISHED. No metrics: the trials hold them, and copies on the parent would head every chart."""
    from mlflow.entities import RunTag  # deferred: MLflow takes seconds to import

    with tempfile.TemporaryDirectory() as tmp:
        results_table.to_csv(Path(tmp) / "results.csv", index=False)
        client.log_artifacts(parent, tmp, "results")
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in {**best_tags, NOTE_TAG: description}.items()])
    client.set_terminated(parent, status=FINISHED)


def log_report(client, parent: str, folder: Path, metrics: dict[str, float], step: int) -> None:
    """A sweep report's files (``report/``) and numbers on its parent run, which keeps its status."""
    from mlflow.entities import Metric  # deferred: MLflow takes seconds to import

    client.log_artifacts(parent, str(folder), "report")
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(parent, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def finished_trial_runs(client, sweep_experiment: str):
    """(experiment, FINISHED runs) of a sweep's experiment; None for the experiment when there is none."""
    exp = client.get_experiment_by_name(sweep_experiment)
    if exp is None:
        return None, []
    return exp, client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                   max_results=5000)
