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

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from frontalab import storage
from frontalab.compute import connect
from frontalab.config import load_config, load_sweep, search_overrides
from frontalab.data.dataset import read_manifest
from frontalab.models.build import encoder_from_config
from frontalab.models.landmark_net import load_landmark_net
from frontalab.naming import (HOST_TAG, NODE_TAG, SWEEP_TAG, TRIAL_NAME_TAG, TRIAL_TAG, TUNE_EXPERIMENT_TAG, bundle_tag,
                              sweep_experiment, trial_run_name)
from frontalab.sections import ConfigError
from frontalab.tracking import store, sweep_runs
from frontalab.sweep.report import TrialRecord, refresh, report_refresher, trial_records
from frontalab.tracking.provenance import command_line
from frontalab.training.checkpoints import architecture_differences, checkpoint_config, load_checkpoint
from frontalab.training.sources import checkpoint_file
from frontalab.training.trial import mlflow_tracker_factory, run_trial
from frontalab.tracking.outcome import FAILED, FINISHED, INTERRUPTED, KILLED, Outcome, on_stop_signals, run_outcome
from frontalab.training.workers import PLACEMENT_GROUP, release, report_to_ray, train_on_workers
from frontalab.verbosity import quiet_libraries

EXCLUDED_FROM_TRIALS = ("services.",)  # endpoints are the driver's business
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


def experiment_name(sweep: DictConfig) -> str:
    return sweep_experiment(sweep.name)


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
    from ray import tune  # deferred: Ray takes seconds to import

    def domain(spec: dict) -> Any:
        kind, values = next(iter(spec.items()))
        return {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
                "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
                "randint": lambda v: tune.randint(*v)}[kind](list(values))

    return {key: domain(spec) for key, spec in OmegaConf.to_container(sweep.search, resolve=True).items()}


def scheduler(sweep: DictConfig, trial_cfg: DictConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining  # deferred: Ray

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


def search_algorithm(sweep: DictConfig, points: Optional[list[dict]] = None, rewards: Optional[list[float]] = None):
    """Tune's searcher for ``sweep.search_alg``, seeded by ``sweep.seed``: Tune's variant generator (grid points,
    the other specs sampled at random), or Optuna's TPE through Tune's OptunaSearch: multivariate, with a constant
    liar so that concurrent trials are not all given the same suggestion, and told ``points`` with their
    ``rewards`` first (the finished trials of an earlier run of the sweep: `frontalab sweep --more`)."""
    # deferred: Ray takes seconds to import. The searcher holds `max_concurrent` (0: as many as resources allow):
    # Tune ignores its own max_concurrent_trials when given a variant generator.
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if sweep.search_alg != "optuna":
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent)
    import optuna  # deferred: only model-based sweeps import it
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's default of 10 random trials before TPE's model is for budgets of hundreds; a sweep of tens of
    # trials would spend half of them at random: a quarter, between 2 and 10.
    startup = max(2, min(10, sweep.num_samples // 4))
    sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=sweep.seed,
                                         n_startup_trials=startup)
    searcher = OptunaSearch(metric=sweep.metric, mode=sweep.mode, sampler=sampler, points_to_evaluate=points,
                            evaluated_rewards=rewards)
    return ConcurrencyLimiter(searcher, sweep.max_concurrent) if sweep.max_concurrent else searcher


# ---------------------------------------------------------------- inside a trial (a Ray worker)


def sweep_trial(config: dict[str, Any], *, base: dict, parent_run_id: str, experiment: str, sweep: str,
                command: str, assets: dict[str, Any], workers_storage: str) -> None:
    """The function trainable: one trial, reporting to Tune, tracked in its own child run."""
    # deferred: Ray takes seconds to import (this runs in the trial's worker, where it is loaded already)
    import ray
    from ray import tune

    quiet_libraries()  # a worker on another cluster has not inherited the driver's settings
    cfg = load_config(None, [*search_overrides(config), f"tracking.experiment={experiment}"], base=base)
    store.ride_out_outages(cfg.tracking.reconnect_s)  # a (re)started trial waits out a tracking-server restart
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    client = store.client()
    run_id = sweep_runs.find_child_run(client, store.experiment_id(client, experiment), trial_id)
    trial_tags = {TRIAL_TAG: trial_id, TRIAL_NAME_TAG: ctx.get_trial_name(), SWEEP_TAG: sweep,
                  NODE_TAG: ray.get_runtime_context().get_node_id(), HOST_TAG: socket.gethostname(),
                  # A named bundle (an ablation arm) is a tag, so the UI can group and compare by it.
                  **{bundle_tag(key): value["name"] for key, value in config.items()
                     if isinstance(value, dict) and "name" in value}}

    local = Path(tempfile.mkdtemp(prefix=f"trial-{trial_id}-"))
    # A scheduler's stop (ASHA) ends this thread with SystemExit while Tune already ends the actor's process,
    # which may beat the `finally` below: the folder then goes when the interpreter exits. (Everything up to
    # the last report is in MLflow by then: `report` flushes first.)
    def remove_local() -> None:
        shutil.rmtree(local, ignore_errors=True)

    atexit.register(remove_local)
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
        factory = mlflow_tracker_factory(parent_run_id=parent_run_id, extra_tags=trial_tags, source=command,
                                         run_name=trial_run_name(config, ctx.get_trial_name().rsplit("_", 1)[-1]))
        tracker = factory(cfg=cfg, resume_run_id=run_id, tags=tags, **resume_journal)
        tracker_holder["t"] = tracker
        return tracker

    def report(metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
        report_to_ray(tune.report, tune.Checkpoint, tracker_holder.get("t"), metrics, checkpoint_path, under=local)

    try:
        if cfg.resources.workers > 1:  # a Ray Train job, from Tune's checkpoint (a restart's, PBT's) copied above
            # Stopped by the scheduler (ASHA), its workers go with this actor: the sweep's driver ends its run
            # (`end_trial_run`) and frees its placement group (`worker_groups_released`).
            factory = mlflow_tracker_factory(parent_run_id=parent_run_id, extra_tags=trial_tags, source=command,
                                             run_name=trial_run_name(config, ctx.get_trial_name().rsplit("_", 1)[-1]))
            train_on_workers(cfg, partial(_trial_run_tracker, factory, experiment, trial_id), storage=workers_storage,
                             name=trial_id, resume=Path(resume) if resume else None, report=report, assets=assets)
        else:
            run_trial(cfg, resume=resume, report=report, checkpoint_dir=local, tracker_factory=open_tracker,
                      encoder=assets.get("encoder"), landmark_net=assets.get("landmark_net"))
    finally:  # Tune's storage and the MLflow run hold the checkpoints: the node's disk must not fill
        tracker = tracker_holder.get("t")
        if tracker is None or tracker.delivered is not False:
            remove_local()
        else:  # the run lacks points: their journal stays where its tag says
            atexit.unregister(remove_local)
            print(f"trial {trial_id}: kept {local}: its MLflow run lacks points that its journal there holds",
                  file=sys.stderr)


def _trial_run_tracker(factory, experiment: str, trial_id: str, **kwargs: Any):
    """The trial's own run, looked up by trial id when rank 0 opens it (after Ray Train restarts the workers too,
    the run exists by then), whichever checkpoint the trial starts from (PBT's may be another trial's); a function
    of its arguments only, so that Ray Train can ship it to the trial's rank 0."""
    c = store.client()
    return factory(**{**kwargs, "resume_run_id": sweep_runs.find_child_run(c, store.experiment_id(c, experiment), trial_id)})


# ---------------------------------------------------------------- the driver


def end_trial_run(experiment: str, steps: int):
    """``(trial, status)`` -> the trial's MLflow run ended from the driver too: a killed or early-stopped trial
    cannot end its own run, and a run must never stay RUNNING. A trial that FINISHED short of ``steps`` (the
    trials' ``train.steps``) was stopped by the scheduler, at its last reported step."""
    def end(trial, status: str) -> None:
        step = (trial.last_result or {}).get("step")
        short = status == FINISHED and step is not None and step < steps
        outcome = Outcome(status, "" if status == FINISHED else "the trial's process failed (Ray's error file has "
                                                                 "why)", stopped_early=short)
        try:
            sweep_runs.end_trial_run(experiment, trial.trial_id, outcome, None if step is None else int(step))
        except Exception as err:  # the sweep outlives its tracking server; `promote` skips a RUNNING trial
            print(f"sweep: could not mark trial {trial.trial_id}'s run {status}: {str(err).splitlines()[0][:300]}",
                  file=sys.stderr, flush=True)

    return end


def trial_end_callback(*handlers):
    """A Tune callback calling each ``handler(trial, status)`` in turn when a trial ends: FINISHED, or FAILED."""
    from ray.tune import Callback  # deferred: Ray takes seconds to import

    class _Callback(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            for handler in handlers:
                handler(trial, FINISHED)

        def on_trial_error(self, iteration, trials, trial, **info):
            for handler in handlers:
                handler(trial, FAILED)

    return _Callback()


def worker_groups_released():
    """A Tune callback freeing a data-parallel trial's placement group whenever the trial stops or starts again
    (`frontalab.training.workers.release`); one-worker trials have none."""
    from ray.tune import Callback  # deferred: Ray takes seconds to import

    def free(trial) -> None:
        try:
            release((trial.last_result or {}).get(PLACEMENT_GROUP))
        except Exception as err:  # the trial's next start reports its own; a sweep never fails for this
            print(f"sweep: could not free trial {trial.trial_id}'s placement group: {str(err)[:200]}", file=sys.stderr)

    class _Callback(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            free(trial)

        def on_trial_restore(self, iteration, trials, trial, **info):
            free(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):
            free(trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            free(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            free(trial)

    return _Callback()


def _shared_assets(trial_cfg: DictConfig) -> dict[str, Any]:
    """The frozen encoder and landmark student, built once here and shipped through Ray's object store."""
    return {"encoder": encoder_from_config(trial_cfg),
            "landmark_net": load_landmark_net(trial_cfg.landmarks.weights or None)}


def _trial_values(sweep: DictConfig, trial_cfg: DictConfig, key: str) -> list[Any]:
    """Every value ``key`` takes in the sweep's trials: the base's, or each one its search may choose."""
    spec = OmegaConf.to_container(sweep.search, resolve=True).get(key)
    if isinstance(spec, dict) and next(iter(spec)) in ("choice", "grid"):
        return list(next(iter(spec.values())))
    return [OmegaConf.select(trial_cfg, key)]


def check_before_start(sweep: DictConfig, trial_cfg: DictConfig) -> dict[str, Any]:
    """What every trial will need, checked before any trial or MLflow run exists, so that a doomed sweep ends
    at once with its documented status (`frontalab.cli.EXIT_STATUS`) and leaves nothing behind: each dataset is
    there, finished and caches the encoder's features; each ``train.init_from`` resolves and fits the trials'
    architecture; the encoder's weights load. Returns the frozen networks the trials share."""
    for uri in _trial_values(sweep, trial_cfg, "data.path"):
        read_manifest(uri, trial_cfg.encoder.name)
    try:
        assets = _shared_assets(trial_cfg)  # FaceNet's or the landmark student's weights missing end here
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    searched = tuple(OmegaConf.to_container(sweep.search, resolve=True))
    for spec in filter(None, _trial_values(sweep, trial_cfg, "train.init_from")):
        with tempfile.TemporaryDirectory() as tmp:
            path = checkpoint_file(spec, Path(tmp))
            source = checkpoint_config(load_checkpoint(path), path)
        differs = architecture_differences(source, trial_cfg, ignore=searched)
        if differs:
            raise ConfigError(f"train.init_from={spec}: that model is not the trials' architecture ({differs})")
    return assets


def run_sweep(sweep_file: str, overrides: list[str], *, address: Optional[str] = None, resume: bool = False,
              name: Optional[str] = None, more: int = 0) -> dict[str, Any]:
    """Run the sweep; ``resume``: continue its interrupted run (Tune's state, the searcher's included); ``more``:
    add that many trials to a sweep that ran before, under the same parent run, the searcher first told every
    earlier finished trial's values and result."""
    from ray import tune  # deferred: Ray takes seconds to import

    if resume and more:
        raise ConfigError("--resume continues the sweep's last run (a growth too); --more starts a growth: one or the other")
    sweep, trial_cfg = load_sweep(sweep_file, overrides + ([f"name={name}"] if name else []))
    assets = check_before_start(sweep, trial_cfg)
    client = store.client()
    exp_name = experiment_name(sweep)
    exp_id = store.experiment_id(client, exp_name)
    storage_path = tune_storage_path(sweep.storage)
    earlier = trial_records(client, exp_name, sweep) if more else []
    if more and not earlier:
        raise ConfigError(f"sweep {sweep.name} has no finished trial to grow from: run it first")
    if more and sweep.search_alg == "grid":
        raise ConfigError(f"sweep {sweep.name} searches a grid, which its trials have covered (search_alg=random or "
                          f"optuna can add trials)")
    # Each growth is a Tune experiment of its own beside the first (its trials' checkpoints, its state); the parent
    # run names the one it ran last, which --resume continues.
    last = sweep_runs.latest_sweep_parent(client, exp_id, sweep.name) if resume else None
    tune_name = (last.data.tags.get(TUNE_EXPERIMENT_TAG, sweep.name) if last is not None
                 else f"{sweep.name}-more{len(earlier)}" if more else sweep.name)
    experiment_path = f"{sweep.storage.rstrip('/')}/{tune_name}"
    if resume and not tune.Tuner.can_restore(tune_storage_path(experiment_path)):
        raise ConfigError(f"nothing to resume at {experiment_path}; run without --resume first")
    command = command_line()
    parent = sweep_runs.sweep_parent_run(client, exp_id, sweep.name, resume or bool(more), command, tune_name)
    with _ends_with_the_sweep(client, parent):
        sweep_runs.log_sweep_files(client, parent, sweep_file, OmegaConf.to_yaml(sweep), OmegaConf.to_container(sweep.search))
        store.ride_out_outages(trial_cfg.tracking.reconnect_s)  # started: from here on, outlive a server restart

        where = connect(address)
        print(f"sweep {sweep.name}: Ray {where}; MLflow experiment {exp_name}", file=sys.stderr)
        base = OmegaConf.to_container(trial_cfg, resolve=True)
        base = {k: v for k, v in base.items() if not any(p.startswith(k + ".") for p in EXCLUDED_FROM_TRIALS)}
        trainable = tune.with_parameters(sweep_trial, base=base, parent_run_id=parent, experiment=exp_name,
                                         sweep=sweep.name, command=command, assets=assets,
                                         workers_storage=tune_storage_path(f"{experiment_path}-workers"))
        r = sweep.resources
        # A trial of several workers is a Ray Train job that claims its workers' resources itself; the trial's
        # own actor only waits for it, on no CPU (Tune refuses a request of nothing: one byte of memory).
        trainable = tune.with_resources(trainable, {"cpu": r.cpu, "gpu": r.gpu} if r.workers == 1
                                        else {"cpu": 0, "memory": 1})
        # In this order: a trial's run has ended before the report reads the finished trials.
        callbacks = [trial_end_callback(end_trial_run(exp_name, trial_cfg.train.steps), report_refresher(parent, exp_name, sweep)),
                     worker_groups_released()]
        if resume:
            tuner = tune.Tuner.restore(tune_storage_path(experiment_path), trainable, resume_errored=True,
                                       param_space=search_space(sweep))
        else:
            tuner = tune.Tuner(
                trainable, param_space=search_space(sweep),
                tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler(sweep, trial_cfg),
                                            search_alg=search_algorithm(sweep, [r.values for r in earlier] or None,
                                                                        [r.metric for r in earlier] or None),
                                            num_samples=more or sweep.num_samples, reuse_actors=False),
                run_config=tune.RunConfig(name=tune_name, storage_path=storage_path, callbacks=callbacks,
                                          failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                          # PBT restores a trial from another's latest checkpoint, which must
                                          # outlive that trial's next reports (Tune warns below 3).
                                          checkpoint_config=tune.CheckpointConfig(
                                              num_to_keep=4 if sweep.scheduler.name == "pbt" else 2)),
            )
        with _stopped_by_signals() as stopped:
            results = tuner.fit()
        if stopped:  # the trials Tune stopped ended their runs as stopped early: they were killed with the sweep
            sweep_runs.end_running_trials(client, parent, Outcome(KILLED, INTERRUPTED), since_ms=stopped[0])
            raise KeyboardInterrupt
        return _summarise(client, parent, exp_id, sweep, sweep_file, results, earlier)


@contextlib.contextmanager
def _ends_with_the_sweep(client, parent: str):
    """The parent run never stays RUNNING: KILLED when the sweep is stopped (Ctrl-C; SIGTERM, which Ray's driver
    turns into SystemExit), FAILED with its reason when it raises; the trials it stopped end KILLED. A sweep that
    ends ends it FINISHED (`sweep_runs.log_sweep_results`)."""
    def end(outcome: Outcome) -> None:
        if outcome.status != FINISHED:
            sweep_runs.end_running_trials(client, parent, Outcome(KILLED, INTERRUPTED))
            store.end_run(client, parent, outcome)

    with run_outcome(end, in_trial=False):
        yield


@contextlib.contextmanager
def _stopped_by_signals():
    """SIGINT and SIGTERM stop the sweep as Tune's own Ctrl-C does (trials stopped, experiment state saved, so
    ``--resume`` continues it); the list yielded then holds when the signal came (ms), so that the caller ends
    the parent run and the trials it stopped KILLED. A second signal interrupts at once."""
    stopped: list[int] = []

    def stop(signum: int, frame) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's graceful stop, installed while `fit` runs
        if stopped or not callable(tune_stop):
            raise KeyboardInterrupt
        stopped.append(int(time.time() * 1000) - 1000)  # when (ms, a second early: MLflow's clock is the server's)
        tune_stop(signum, frame)

    tune_sigint = os.environ.get(TUNE_SIGINT_ENV)
    os.environ[TUNE_SIGINT_ENV] = "1"  # ours, not Tune's: Tune's would not tell us it was stopped
    try:
        with on_stop_signals(stop):
            yield stopped
    finally:
        if tune_sigint is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = tune_sigint


def sweep_description(sweep_file: str) -> str:
    """The sweep file's header comment, as Markdown: what the sweep answers and what it costs."""
    lines = []
    for line in Path(sweep_file).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines).strip() or f"sweep file {Path(sweep_file).name}"


def _summarise(client, parent: str, exp_id: str, sweep: DictConfig, sweep_file: str, results,
               earlier: list[TrialRecord]) -> dict[str, Any]:
    df = results.get_dataframe()
    rows = []
    for result in results:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        rows.append({"trial_id": trial_id, "metric": (result.metrics or {}).get(sweep.metric),
                     "step": (result.metrics or {}).get("step"), "error": str(result.error)[:200] if result.error else "",
                     **{k: v for k, v in (result.config or {}).items()}})
    # Named by trial id, else by its folder (an error before its first report); the error's last line says what.
    errored = [{"trial": r["trial_id"] or Path(result.path).name,
                "error": str(result.error).strip().splitlines()[-1][:200]} for r, result in zip(rows, results) if r["error"]]
    summary: dict[str, Any] = {"sweep": sweep.name, "trials": len(rows), "errors": len(errored),
                               "errored_trials": errored}
    best_tags: dict[str, str] = {}
    description = sweep_description(sweep_file)
    try:
        best = results.get_best_result(metric=sweep.metric, mode=sweep.mode)
    except RuntimeError:
        best = None
    # (value, trial, values): this run's best, and each trial of the sweep's earlier runs (`--more`).
    candidates = [(r.metric, r.trial, r.values) for r in earlier]
    if best is not None and best.metrics and sweep.metric in best.metrics:
        candidates.append((best.metrics[sweep.metric], best.metrics.get("trial_id"), best.config))
    if candidates:
        value, trial_id, config = (max if sweep.mode == "max" else min)(candidates, key=lambda c: c[0])
        best_run = sweep_runs.find_child_run(client, exp_id, trial_id)
        best_tags = {"best_trial": str(trial_id), "best_run_id": str(best_run), "metric": sweep.metric,
                     "mode": sweep.mode}
        description += (f"\n\n**Best trial:** [{trial_id}]({store.run_url(exp_id, str(best_run))}), "
                        f"{sweep.metric} = {value:.4g} ({sweep.mode}).")
        summary.update(best_trial=trial_id, best_run_id=best_run, best_metric=value, best_config=config)
    report = refresh(client, parent, experiment_name(sweep), sweep)
    if report is not None:
        summary["importance"] = report["importance"]
    sweep_runs.log_sweep_results(client, parent, df, best_tags, description)
    summary["mlflow_ui"] = store.runs_table_url(exp_id, sweep.metric, sweep.mode)
    summary["parent_run_id"] = parent
    return summary
