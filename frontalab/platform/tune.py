"""`frontalab sweep`: many trials of the shared library on Ray Tune, tracked under one MLflow parent run.

Layout in MLflow: one experiment per sweep (``sweep-NAME``), a parent run holding the sweep
file, the search space and the results table, and one child run per trial
(``mlflow.parentRunId``), tagged with its Tune trial id, node id and host. A child run is
found again by its trial id, so a trial that Tune restarts (dead worker, resumed driver)
continues the *same* run from its last checkpoint, and no step is logged twice.

Trial checkpoints live under the sweep's S3 ``storage``; S3 credentials reach Ray's
filesystem through the environment only (explicit keys would be pickled into Tune's
experiment state in the bucket).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from frontalab.config import ConfigError, load_config, search_overrides
from frontalab.platform import storage

TRIAL_TAG = "frontalab.trial_id"
SWEEP_TAG = "frontalab.sweep"
EXCLUDED_FROM_TRIALS = ("services.",)  # endpoints are the driver's business


def runs_table_url(experiment_id: str) -> str:
    """The MLflow UI's training-runs table of an experiment (a bare #/experiments/N opens the GenAI overview)."""
    return f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def experiment_name(sweep: DictConfig) -> str:
    return f"sweep-{sweep.name}"


def tune_storage_path(storage_uri: str) -> str:
    """Ray's S3 filesystem pointed at the configured endpoint (credentials stay in the environment)."""
    if not storage.is_s3(storage_uri):
        return str(Path(storage_uri).expanduser().resolve())
    endpoint = storage.s3_endpoint()
    if not endpoint:
        return storage_uri
    ep = urlparse(endpoint)
    return f"{storage_uri.rstrip('/')}?endpoint_override={ep.netloc}&scheme={ep.scheme or 'http'}"


def search_space(sweep: DictConfig) -> dict[str, Any]:
    from ray import tune

    def domain(spec: dict) -> Any:
        kind, values = next(iter(spec.items()))
        return {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
                "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
                "randint": lambda v: tune.randint(*v)}[kind](list(values))

    return {key: domain(spec) for key, spec in OmegaConf.to_container(sweep.search, resolve=True).items()}


def scheduler(sweep: DictConfig, trial_cfg: DictConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = sweep.scheduler
    if s.name == "asha":
        return ASHAScheduler(time_attr="step", max_t=trial_cfg.train.steps, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        mutations = {k: search_space(OmegaConf.create({"search": {k: v}}))[k]
                     for k, v in OmegaConf.to_container(s.mutations, resolve=True).items()}
        return PopulationBasedTraining(time_attr="step", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=mutations)
    return FIFOScheduler()


# ---------------------------------------------------------------- inside a trial (a Ray worker)


def _find_child_run(client, experiment_id: str, trial_id: str) -> Optional[str]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=5,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def sweep_trial(config: dict[str, Any], *, base: dict, parent_run_id: str, experiment: str, sweep: str,
                assets: dict[str, Any]) -> None:
    """The function trainable: one trial, reporting to Tune, tracked in its own child run."""
    import ray
    from ray import tune

    from frontalab.platform.tracking import experiment_id
    from frontalab.platform.trainer import mlflow_tracker_factory, run_trial

    cfg = load_config(None, [*search_overrides(config), f"tracking.experiment={experiment}"], base=base)
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = _find_child_run(client, experiment_id(client, experiment), trial_id)
    trial_tags = {TRIAL_TAG: trial_id, "frontalab.trial_name": ctx.get_trial_name(), SWEEP_TAG: sweep,
                  "ray.node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                  # A named bundle (an ablation arm) is a tag, so the UI can group and compare by it.
                  **{f"frontalab.{key}": value["name"] for key, value in config.items()
                     if isinstance(value, dict) and "name" in value}}

    local = Path(tempfile.mkdtemp(prefix=f"trial-{trial_id}-"))
    resume: bool | str = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            found = sorted(Path(folder).glob("step-*.pt"))
            if found:
                shutil.copy2(found[-1], local / found[-1].name)
                resume = str(local / found[-1].name)

    tracker_holder: dict[str, Any] = {}

    def open_tracker(cfg: DictConfig, resume_run_id: Optional[str], tags: dict[str, str], **resume_journal: Any):
        # The trial's own run, found by trial id: a checkpoint may come from another trial (PBT).
        factory = mlflow_tracker_factory(parent_run_id=parent_run_id, run_name=ctx.get_trial_name(),
                                         extra_tags=trial_tags)
        tracker = factory(cfg=cfg, resume_run_id=run_id, tags=tags, **resume_journal)
        tracker_holder["t"] = tracker
        return tracker

    def report(metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
        tracker = tracker_holder.get("t")
        if tracker is not None:
            tracker.flush(timeout=60)  # what Tune stops or kills next must already be in MLflow
        values = {k: float(v) for k, v in metrics.items()}
        if checkpoint_path:
            folder = Path(tempfile.mkdtemp(prefix="report-"))
            shutil.copy2(checkpoint_path, folder / Path(checkpoint_path).name)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            shutil.rmtree(folder, ignore_errors=True)
        else:
            tune.report(values)

    try:
        run_trial(cfg, resume=resume, report=report, checkpoint_dir=local, tracker_factory=open_tracker,
                  encoder=assets.get("encoder"), landmark_net=assets.get("landmark_net"))
    finally:  # Tune's storage and the MLflow run hold the checkpoints: the node's disk must not fill
        shutil.rmtree(local, ignore_errors=True)


# ---------------------------------------------------------------- the driver


class EndRunCallback:
    """Ends each trial's MLflow run from the driver too: a killed or early-stopped trial
    cannot end its own run, and a run must never stay RUNNING."""

    def __init__(self, experiment: str):
        self.experiment = experiment

    def _end(self, trial, status: str) -> None:
        from mlflow import MlflowClient

        from frontalab.platform.tracking import experiment_id

        client = MlflowClient()
        run_id = _find_child_run(client, experiment_id(client, self.experiment), trial.trial_id)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)

    def as_tune_callback(self):
        from ray.tune import Callback

        outer = self

        class _Callback(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                outer._end(trial, "FINISHED")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer._end(trial, "FAILED")

        return _Callback()


def _parent_run(client, experiment_id: str, sweep: DictConfig, resume: bool) -> str:
    if resume:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep.name}' "
                                  f"and tags.`frontalab.role` = 'sweep'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
    from frontalab.platform.tracking import command_line

    run = client.create_run(experiment_id, run_name=sweep.name, tags={SWEEP_TAG: sweep.name, "frontalab.role": "sweep",
                                                                       "frontalab.command": command_line()})
    return run.info.run_id


def _shared_assets(trial_cfg: DictConfig) -> dict[str, Any]:
    """The frozen encoder and landmark student, built once here and shipped through Ray's object store."""
    from frontalab.models.encoders import build_encoder
    from frontalab.models.landmark_net import load_landmark_net

    options = {"weights": trial_cfg.encoder.weights} if trial_cfg.encoder.weights else {}
    return {"encoder": build_encoder(trial_cfg.encoder.name, **options),
            "landmark_net": load_landmark_net(trial_cfg.landmarks.weights or None)}


def run_sweep(sweep_file: str, overrides: list[str], *, address: Optional[str] = None, resume: bool = False,
              name: Optional[str] = None, services_cfg: Optional[DictConfig] = None) -> dict[str, Any]:
    from mlflow import MlflowClient
    from ray import tune

    from frontalab.config import load_sweep
    from frontalab.platform.cluster import connect
    from frontalab.platform.tracking import experiment_id

    sweep, trial_cfg = load_sweep(sweep_file, overrides + ([f"name={name}"] if name else []))
    client = MlflowClient()
    exp_name = experiment_name(sweep)
    exp_id = experiment_id(client, exp_name)
    storage_path = tune_storage_path(sweep.storage)
    experiment_path = f"{sweep.storage.rstrip('/')}/{sweep.name}"
    if resume and not tune.Tuner.can_restore(tune_storage_path(experiment_path)):
        raise ConfigError(f"nothing to resume at {experiment_path}; run without --resume first")
    parent = _parent_run(client, exp_id, sweep, resume)
    _log_sweep_files(client, parent, sweep_file, sweep)

    where = connect(address)
    print(f"sweep {sweep.name}: Ray {where}; MLflow experiment {exp_name}", file=sys.stderr)
    base = OmegaConf.to_container(trial_cfg, resolve=True)
    base = {k: v for k, v in base.items() if not any(p.startswith(k + ".") for p in EXCLUDED_FROM_TRIALS)}
    trainable = tune.with_parameters(sweep_trial, base=base, parent_run_id=parent, experiment=exp_name,
                                     sweep=sweep.name, assets=_shared_assets(trial_cfg))
    trainable = tune.with_resources(trainable, {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    callbacks = [EndRunCallback(exp_name).as_tune_callback()]
    if resume:
        tuner = tune.Tuner.restore(tune_storage_path(experiment_path), trainable, resume_errored=True,
                                   param_space=search_space(sweep))
    else:
        tuner = tune.Tuner(
            trainable, param_space=search_space(sweep),
            tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler(sweep, trial_cfg),
                                        num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent or None,
                                        reuse_actors=False),
            run_config=tune.RunConfig(name=sweep.name, storage_path=storage_path, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
    results = tuner.fit()
    return _summarise(client, parent, exp_id, sweep, results)


def _log_sweep_files(client, parent: str, sweep_file: str, sweep: DictConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(sweep_file, Path(tmp) / Path(sweep_file).name)
        (Path(tmp) / "sweep.resolved.yaml").write_text(OmegaConf.to_yaml(sweep))
        (Path(tmp) / "search_space.json").write_text(json.dumps(OmegaConf.to_container(sweep.search), indent=1))
        client.log_artifacts(parent, tmp, "sweep")
    if not client.get_run(parent).data.params:  # a resumed sweep already has it
        client.log_param(parent, "sweep.file", Path(sweep_file).name)


def _summarise(client, parent: str, exp_id: str, sweep: DictConfig, results) -> dict[str, Any]:
    from mlflow.entities import Metric, RunTag

    df = results.get_dataframe()
    rows = []
    for result in results:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        rows.append({"trial_id": trial_id, "metric": (result.metrics or {}).get(sweep.metric),
                     "step": (result.metrics or {}).get("step"), "error": str(result.error)[:200] if result.error else "",
                     **{k: v for k, v in (result.config or {}).items()}})
    summary: dict[str, Any] = {"sweep": sweep.name, "trials": len(rows), "errors": sum(1 for r in rows if r["error"])}
    with tempfile.TemporaryDirectory() as tmp:
        df.to_csv(Path(tmp) / "results.csv", index=False)
        client.log_artifacts(parent, tmp, "results")
    try:
        best = results.get_best_result(metric=sweep.metric, mode=sweep.mode)
    except RuntimeError:
        best = None
    if best is not None and best.metrics and sweep.metric in best.metrics:
        trial_id = best.metrics.get("trial_id")
        best_run = _find_child_run(client, exp_id, trial_id)
        metrics = {f"best/{k}": float(v) for k, v in best.metrics.items()
                   if isinstance(v, (int, float)) and (k.startswith(("val/", "train/")) or k == "step")}
        import time

        now = int(time.time() * 1000)
        client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=[RunTag("best_trial", str(trial_id)), RunTag("best_run_id", str(best_run)),
                               RunTag("metric", sweep.metric), RunTag("mode", sweep.mode)])
        summary.update(best_trial=trial_id, best_run_id=best_run, best_metric=best.metrics.get(sweep.metric),
                       best_config=best.config)
    client.set_terminated(parent, status="FINISHED")
    summary["mlflow_ui"] = runs_table_url(exp_id)
    summary["parent_run_id"] = parent
    return summary
