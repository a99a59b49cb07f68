"""The one door to MLflow's store: every MLflow client call of the platform goes through here
(besides a trial's own tracker and its sender, `frontalab.tracking.tracker`).

Experiments, a sweep's parent run and its trials' child runs, checkpoint artifacts, registered
model versions and their aliases, the landmark student registered as an asset, and evaluation
runs. Names (experiments, tags, aliases) come from `frontalab.naming`. MLflow itself is imported
inside the functions: it takes seconds, and commands that never touch MLflow must not pay it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from frontalab import storage
from frontalab.config import ConfigError, mask_userinfo
from frontalab.naming import (ASSET_SHA_TAG, ASSETS_EXPERIMENT, CHAMPION, COMMAND_TAG, EXPERIMENT_KIND_TAG, LANDMARK_MODEL,
                              NOTE_TAG, PARENT_RUN_TAG, PREVIOUS, ROLE_ASSET, ROLE_SWEEP, ROLE_TAG, STOPPED_EARLY_TAG,
                              SWEEP_TAG, TRIAL_TAG, TUNE_EXPERIMENT_TAG)
from frontalab.tracking.outcome import Outcome
from frontalab.tracking.provenance import command_line, standard_tags

# Our own loop retries forever in the background; the client's per-request retries
# (7, with minutes of backoff by default) would only delay noticing the outage.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


_reconnect_s = 0.0  # see `ride_out_outages`


def ride_out_outages(seconds: float) -> None:
    """From now on, in this process, a client call whose request cannot connect to the tracking server is
    retried for up to ``seconds``: a sweep's driver and trials outlive a server restart. A request that never
    connected never reached the server, so retrying it cannot apply it twice."""
    global _reconnect_s
    _reconnect_s = float(seconds)


def _could_not_connect(err: Exception) -> bool:
    text = str(err)
    return "NewConnectionError" in text or "Connection refused" in text


class _Client:
    """`MlflowClient`, its calls retried while the server cannot be reached (`ride_out_outages`)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            deadline = time.monotonic() + _reconnect_s
            delay, told = 1.0, False
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as err:
                    if not _could_not_connect(err) or time.monotonic() + delay > deadline:
                        raise
                    if not told:
                        print(f"MLflow unreachable ({name}); retrying for up to {deadline - time.monotonic():.0f} s",
                              file=sys.stderr, flush=True)
                        told = True
                    time.sleep(delay)
                    delay = min(2 * delay, 10.0)

        return call


def client():
    """An MLflow client for ``$MLFLOW_TRACKING_URI``: every frontalab call to MLflow goes through one."""
    from mlflow import MlflowClient  # deferred: MLflow takes seconds to import

    return _Client(MlflowClient())


def runs_table_url(experiment_id: str, metric: str | None = None, mode: str = "max") -> str:
    """The MLflow UI's training-runs table of an experiment (a bare #/experiments/N opens the GenAI overview);
    printed, so a user:password@ in the tracking URI is masked. Sorted by ``metric``, best first: the UI then
    lists the trials flat (it nests children under the parent only when sorted by date)."""
    url = f"{mask_userinfo(os.environ.get('MLFLOW_TRACKING_URI', ''))}/#/experiments/{experiment_id}/runs" \
          "?workflowType=machine_learning"
    if metric:
        url += f"&orderByKey={quote(f'metrics.`{metric}`', safe='')}&orderByAsc={str(mode == 'min').lower()}"
    return url


def experiment_id(client, name: str) -> str:
    """Get or create the experiment, tagged so the UI opens on training runs."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        eid = exp.experiment_id
    else:
        try:
            eid = client.create_experiment(name)
        except Exception as err:  # created meanwhile by another trial
            if "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
            eid = client.get_experiment_by_name(name).experiment_id
    client.set_experiment_tag(eid, *EXPERIMENT_KIND_TAG)
    return eid


def create_run(client, experiment_id: str, run_name: str, tags: dict[str, str], source: str = ""):
    """A new run with MLflow's User, Source and git commit tags (``source``: the command that made it; default:
    this process's), which `MlflowClient.create_run` alone leaves empty."""
    return client.create_run(experiment_id, run_name=run_name or None,
                             tags={**standard_tags(source or command_line()), **tags})


def run_url(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (printed: user:password in the tracking URI is masked)."""
    return f"{mask_userinfo(os.environ.get('MLFLOW_TRACKING_URI', ''))}/#/experiments/{experiment_id}/runs/{run_id}"


def log_training_inputs(client, run_id: str, config_yaml: str, dataset_uri: str, dataset_hash: str) -> None:
    """A new trial run's full resolved config (``config.yaml``; its params hold only the keys that shape
    training) and its prepared dataset as MLflow's dataset input: the hash as digest, the URI as source."""
    from mlflow.entities import Dataset, DatasetInput, InputTag  # deferred: MLflow takes seconds to import

    client.log_text(run_id, config_yaml, "config.yaml")
    dataset = Dataset(name=dataset_uri.rstrip("/").rsplit("/", 1)[-1], digest=dataset_hash,
                      source_type="s3" if storage.is_s3(dataset_uri) else "local",
                      source=json.dumps({"uri": dataset_uri}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


# ---------------------------------------------------------------- a sweep's runs


def find_child_run(client, experiment_id: str, trial_id: str) -> Optional[str]:
    """The run of Tune trial ``trial_id``, found by its tag (a restarted trial continues it)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=5,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def end_trial_run(experiment: str, trial_id: str, outcome: Outcome, step: Optional[int] = None) -> None:
    """End trial ``trial_id``'s run with ``outcome`` if it is still RUNNING (a killed trial cannot end its own, nor can
    a data-parallel trial's workers, which go with their trial); ``step``: its last reported step."""
    c = client()
    run_id = find_child_run(c, experiment_id(c, experiment), trial_id)
    if run_id and c.get_run(run_id).info.status == "RUNNING":
        end_run(c, run_id, outcome, step)


def end_run(client, run_id: str, outcome: Outcome, step: Optional[int] = None) -> None:
    """Mark a run that is not this process's own with ``outcome``'s status and tags (`frontalab.tracking.outcome`)."""
    for key, value in outcome.tags(step).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=outcome.status)


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
        end_run(client, run.info.run_id, outcome)


def sweep_parent_run(client, experiment_id: str, sweep: str, resume: bool, command: str, tune_experiment: str) -> str:
    """The sweep's parent run, about to run Tune experiment ``tune_experiment``: the latest one again when
    resuming (or growing), else a new one."""
    if resume:
        latest = latest_sweep_parent(client, experiment_id, sweep)
        if latest is not None:
            client.update_run(latest.info.run_id, status="RUNNING")
            client.set_tag(latest.info.run_id, TUNE_EXPERIMENT_TAG, tune_experiment)
            return latest.info.run_id
    run = create_run(client, experiment_id, sweep, {SWEEP_TAG: sweep, ROLE_TAG: ROLE_SWEEP, COMMAND_TAG: command,
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
    client.set_terminated(parent, status="FINISHED")


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


# ---------------------------------------------------------------- checkpoints and models


class ModelNotFound(LookupError):
    """A model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/…) that names no model on the server."""


@contextlib.contextmanager
def finding_model(uri: str):
    """MLflow's "does not exist" for ``uri`` as `ModelNotFound`, with MLflow's first line as the reason."""
    from mlflow.exceptions import MlflowException  # deferred: MLflow takes seconds to import

    try:
        yield
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFound(f"{uri}: not found ({str(err).splitlines()[0]})") from None


def latest_checkpoint_artifact(client, run_id: str, into: Path) -> Path:
    files = [f.path for f in client.list_artifacts(run_id, "checkpoints") if f.path.endswith(".pt")]
    if not files:
        raise ConfigError(f"run {run_id} has no checkpoint artifact")
    print(f"frontalab: downloading run {run_id}'s {sorted(files)[-1]}", file=sys.stderr, flush=True)
    return Path(client.download_artifacts(run_id, sorted(files)[-1], str(into)))


def download_model(uri: str, into: Path) -> Path:
    """The folder of a registered version (``models:/…``), downloaded under ``into``; one line says so (MLflow's
    bar per file is off unless ``--verbose``)."""
    import mlflow.artifacts  # deferred: MLflow takes seconds to import

    print(f"frontalab: downloading {uri}", file=sys.stderr, flush=True)
    with finding_model(uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))


def model_version(spec: str):
    """(name, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    name, _, ref = spec[len("models:/"):].partition("@")
    c = client()
    with finding_model(spec):
        if ref:
            return name, c.get_model_version_by_alias(name, ref)
        name, _, number = name.partition("/")
        return name, c.get_model_version(name, number)


def log_pyfunc_version(run_id: str, model_code: str | Path, artifacts: dict[str, str], code_paths: list[str],
                       registered_model_name: str, pip_requirements: list[str], signature: Any,
                       input_example: Any, description: str, model_config: dict[str, Any]) -> str:
    """Log a pyfunc model in the run that trained it and register it, so the version links to its training
    curves; returns the new version. The run keeps its end status. The model is logged from code:
    ``model_code`` is the Python file that sets it (`mlflow.models.set_model`), copied into the model
    folder and run at each load, so that no pickled Python object is logged or ever unpickled."""
    import mlflow  # deferred: MLflow takes seconds to import

    c = client()
    status = c.get_run(run_id).info.status
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="frontalizer", python_model=str(model_code), artifacts=artifacts,
                                       code_paths=code_paths, registered_model_name=registered_model_name,
                                       pip_requirements=pip_requirements, signature=signature,
                                       input_example=input_example, model_config=model_config)
    c.set_terminated(run_id, status=status)
    version = str(info.registered_model_version)
    c.update_model_version(registered_model_name, version, description=description)
    return version


def make_champion(client, name: str, version: str, tags: dict[str, str]) -> Optional[str]:
    """``version`` becomes ``name``'s champion (the one before, if another, its previous); returns that one."""
    previous = None
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # no champion yet
        pass
    if previous and previous != version:
        client.set_registered_model_alias(name, PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


def ensure_landmark_model(weights: Path) -> str:
    """The registered `landmarks68` version holding these student weights, registered on first use."""
    c = client()
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    try:
        versions = c.search_model_versions(f"name = '{LANDMARK_MODEL}'")
    except Exception:
        versions = []
    for v in versions:
        if v.tags.get(ASSET_SHA_TAG) == sha:
            return str(v.version)
    if not versions:
        try:
            c.create_registered_model(LANDMARK_MODEL, description="dlib-68 landmark student (frontalab.models.landmark_net)")
        except Exception:  # registered concurrently by another trial
            pass
    run = create_run(c, experiment_id(c, ASSETS_EXPERIMENT), f"{LANDMARK_MODEL}-{sha[:8]}",
                     {ROLE_TAG: ROLE_ASSET, ASSET_SHA_TAG: sha})
    c.log_artifact(run.info.run_id, str(weights), LANDMARK_MODEL)
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        c.log_artifact(run.info.run_id, str(sidecar), LANDMARK_MODEL)
        metrics = json.loads(sidecar.read_text()).get("metrics", {})
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                c.log_metric(run.info.run_id, key, float(value))
    c.set_terminated(run.info.run_id)
    version = c.create_model_version(LANDMARK_MODEL, source=f"{run.info.artifact_uri}/{LANDMARK_MODEL}",
                                     run_id=run.info.run_id, tags={ASSET_SHA_TAG: sha})
    return str(version.version)


# ---------------------------------------------------------------- evaluations


def log_evaluation_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
                       metrics: dict[str, float], report: Path, model_name: str, model_version: str,
                       version_tag: str) -> str:
    """A run holding an evaluation's numbers and report, linked both ways to the model version."""
    import mlflow  # deferred: MLflow takes seconds to import

    mlflow.set_experiment(experiment)
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(report), "report")
    if model_name and model_version:
        client().set_model_version_tag(model_name, model_version, version_tag, run.info.run_id)
    return run.info.run_id
