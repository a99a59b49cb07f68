"""One trial on many workers: a Ray Train data-parallel job (``resources.workers`` > 1).

Each worker runs the trial's own loop (`frontalab.training.trial.run_trial`) in a process group set up by Ray
Train's `TorchTrainer` (gloo on CPUs, NCCL on GPUs); `frontalab.training.distributed` says what differs from a
lone trial. Rank 0 tracks the MLflow run, validates and writes the checkpoints, which it reports to Ray Train;
the other ranks track nothing.

Restarts are Ray Train's: when a worker or its node dies, Ray Train starts the workers again (up to
``resources.max_failures`` times) on the resources left, and each resumes from the last reported checkpoint,
with the same MLflow run, whose journal drops the steps already logged. A trial started again from outside
(``--resume``, a Tune trial restarted or exploited by PBT) is a new Ray Train run from the checkpoint it is given.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from frontalab.compute import connect
from frontalab.tracking.outcome import FAILED, outcome_of
from frontalab.tracking.tracker import NullTracker
from frontalab.naming import WORKER_NODES_TAG
from frontalab.training.checkpoints import claim_folder, default_checkpoint_dir, newest_readable_checkpoint
from frontalab.training.distributed import gather_objects
from frontalab.training.step import NonFiniteLoss
from frontalab.training.trial import Report, TrialState, refuse_used_folder, run_trial
from frontalab.verbosity import quiet_libraries, verbose

FINAL = "final"  # the key of each worker's last report: the trial's outcome, not a validation point
# The key of every report that names the workers' placement group, for whoever must free it (see `release`).
PLACEMENT_GROUP = "ray_train_placement_group"
CHECKPOINT_FILE = "step-*.pt"


def newest_file(folder: Path) -> Optional[Path]:
    found = sorted(Path(folder).glob(CHECKPOINT_FILE))
    return found[-1] if found else None


def report_to_ray(report: Callable[..., None], checkpoint_class: Any, tracker: Any, metrics: dict[str, Any],
                  checkpoint_path: Optional[str], under: Path) -> None:
    """A validation point to Ray: ``report(values, checkpoint=...)`` (Tune's or Ray Train's, with its
    ``checkpoint_class``), the checkpoint file in a folder of its own under ``under`` (the trial's scratch
    folder, removed at the trial's end, or at its process's exit where Ray stops it inside `report`), since Ray
    persists a whole folder.
    The trial's ``tracker`` is flushed first: what Ray stops or kills next must already be in MLflow."""
    if tracker is not None:
        tracker.flush(timeout=60)
    values = {k: v if isinstance(v, str) else float(v) for k, v in metrics.items()}  # strings: ids
    if not checkpoint_path:
        report(values)
        return
    folder = Path(tempfile.mkdtemp(prefix="report-", dir=under))
    try:
        shutil.copy2(checkpoint_path, folder / Path(checkpoint_path).name)
        report(values, checkpoint=checkpoint_class.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def train(cfg: DictConfig, tracker_factory: Callable[..., Any], *, resume: bool | str = False,
          address: Optional[str] = None) -> TrialState:
    """`frontalab train`: one process for one worker; a Ray Train job on Ray (embedded, or the cluster at
    ``address``) for more, whose checkpoints go under the run's checkpoint folder (shared by the workers' nodes
    on a cluster), where ``--resume`` finds them whatever number of workers wrote them."""
    if cfg.resources.workers == 1:
        return run_trial(cfg, resume=resume, tracker_factory=tracker_factory)
    folder = Path(cfg.train.checkpoint_dir or default_checkpoint_dir(cfg)).resolve()
    with claim_folder(folder):
        refuse_used_folder(folder, resume)
        start = resume if isinstance(resume, str) else newest_readable_checkpoint(folder) if resume else None
        connect(address)
        return train_on_workers(cfg, tracker_factory, storage=str(folder / "ray-train"), name="train",
                                resume=Path(start) if start else None)


def _worker_loop(loop: dict[str, Any]) -> None:
    """One worker of the trial (Ray Train's ``train_loop_per_worker``)."""
    import ray  # deferred: runs in a Ray Train worker, where Ray is loaded
    import ray.train
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution import context as train_context

    quiet_libraries()  # a worker on another node has not inherited the driver's settings
    if not verbose():  # Ray Train logs every report at INFO, under its file's path
        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    cfg = OmegaConf.create(loop["cfg"])
    rank = ray.train.get_context().get_world_rank()
    if cfg.resources.gpu > 0:  # Ray Train gives each worker its own GPU as its cuda:0
        cfg.train.device = str(ray.train.torch.get_device())
    local = Path(tempfile.mkdtemp(prefix=f"worker{rank}-"))
    try:
        # Ray Train's own restart (a worker died) first, else the checkpoint the trial was started from.
        resume: bool | str = False
        restart = ray.train.get_checkpoint()
        if restart is not None:
            with restart.as_directory() as folder:
                found = newest_file(Path(folder))
                if found is not None:
                    resume = str(shutil.copy2(found, local / found.name))
        elif loop["resume"] is not None:
            name, data = loop["resume"]
            (local / name).write_bytes(ray.get(data))
            resume = str(local / name)
        tracker_holder: dict[str, Any] = {}
        group = ray.util.get_current_placement_group()
        nodes = gather_objects(ray.get_runtime_context().get_node_id())  # where the workers run, in rank order

        def open_tracker(**kwargs: Any):
            kwargs["tags"] = {**kwargs["tags"], WORKER_NODES_TAG: ",".join(nodes)}
            tracker = loop["tracker_factory"](**kwargs) if rank == 0 else NullTracker()
            tracker_holder["t"] = tracker
            return tracker

        def report(metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
            group_id = {PLACEMENT_GROUP: group.id.hex()} if group is not None else {}
            report_to_ray(ray.train.report, Checkpoint, tracker_holder.get("t"), {**metrics, **group_id},
                          checkpoint_path, under=local)

        try:
            state = run_trial(cfg, resume=resume, report=report, checkpoint_dir=local / "checkpoints",
                              tracker_factory=open_tracker, encoder=loop.get("encoder"),
                              landmark_net=loop.get("landmark_net"))
        except NonFiniteLoss as err:  # the run is FAILED with its reason; a restart would meet it again
            outcome = outcome_of(err, in_trial=True)
            ray.train.report({FINAL: 1, "status": outcome.status, "reason": outcome.reason})
            return
        ray.train.report({FINAL: 1, "step": state.step, "status": state.status, "run_id": state.run_id,
                          "tracking_complete": state.tracking_complete,
                          **{k: v for k, v in state.metrics.items() if k.startswith("val/")}})
    finally:
        shutil.rmtree(local, ignore_errors=True)


def train_on_workers(cfg: DictConfig, tracker_factory: Callable[..., Any], *, storage: str, name: str,
                     resume: Optional[Path] = None, report: Optional[Report] = None,
                     assets: Optional[dict] = None) -> TrialState:
    """Train the trial on ``cfg.resources.workers`` Ray Train workers (Ray must be connected). ``storage``: Ray
    Train's storage for the checkpoints (a shared folder or S3 on a cluster); ``name``: the Ray Train run's.
    ``resume``: a checkpoint file here, which reaches every worker through Ray's object store (whichever node it
    runs on, and however soon Tune deletes a checkpoint that PBT exploits); ``report(metrics, checkpoint)``: called in
    this process for every validation point (a Tune trial's report), with the reported checkpoint's folder."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray.util.queue import Queue

    r = cfg.resources
    per_worker = {"CPU": r.cpu, **({"GPU": r.gpu} if r.gpu > 0 else {})}
    reports = Queue(actor_options={"num_cpus": 0})  # rank 0's reports, from Ray Train's controller to here
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": OmegaConf.to_container(cfg, resolve=True),
                           "resume": (resume.name, ray.put(resume.read_bytes())) if resume else None,
                           "tracker_factory": tracker_factory, **(assets or {})},
        torch_config=TorchConfig(backend="nccl" if r.gpu > 0 else "gloo"),
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpu > 0, resources_per_worker=per_worker,
                                     placement_strategy=r.placement.upper()),
        run_config=RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=storage,
                             callbacks=[_forward_to(reports)],
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None)))
    result, final = _fit_forwarding(trainer, reports, report)
    if final.get("reason"):  # every worker met the same non-finite loss (the workers' mean)
        raise NonFiniteLoss(final["reason"])
    return TrialState(step=int(final.get("step", 0)), run_id=final.get("run_id"), status=final.get("status", FAILED),
                      tracking_complete=bool(final.get("tracking_complete", True)),
                      checkpoint=_checkpoint_file(result.checkpoint),
                      metrics={k: v for k, v in final.items() if k.startswith("val/")})


def _checkpoint_file(checkpoint) -> Optional[str]:
    """The step file in Ray Train's last checkpoint when its storage is a folder here (`frontalab train`), as a
    one-worker run names its own; else the checkpoint's address (a sweep's S3 storage)."""
    if checkpoint is None:
        return None
    found = newest_file(Path(checkpoint.path)) if Path(checkpoint.path).is_dir() else None
    return str(found) if found else checkpoint.path


def _forward_to(reports):
    """A Ray Train callback (it runs in Ray Train's controller) putting rank 0's reports on ``reports``."""
    from ray.train.v2.api.callback import UserCallback

    class Forward(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            reports.put((metrics[0], checkpoint))

    return Forward()


def _fit_forwarding(trainer, reports, report: Optional[Report]) -> tuple[Any, dict[str, Any]]:
    """``trainer.fit()`` in a thread while this one hands each validation point to ``report``, with its checkpoint
    downloaded (a Tune trial reports from the thread Tune runs it in, where Tune may stop it: ASHA). Returns
    Ray Train's result and rank 0's last report (the trial's outcome)."""
    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}
    final: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # raised in this thread below
            outcome["error"] = err

    runner = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    runner.start()
    while runner.is_alive() or not reports.empty():
        try:
            metrics, checkpoint = reports.get(timeout=1.0)
        except Empty:
            continue
        if FINAL in metrics:
            final = metrics
        elif report is None:
            continue
        elif checkpoint is None:
            report(metrics, None)
        else:
            with checkpoint.as_directory() as folder:
                found = newest_file(Path(folder))
                report(metrics, str(found) if found else None)
    runner.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], final


def release(group_id: Optional[str]) -> None:
    """Free a data-parallel trial's placement group, by the id its reports carried (`PLACEMENT_GROUP`), once its
    trial has stopped. Ray Train's controller frees it when it ends, but a controller that dies with its Tune
    trial (ASHA's stop, PBT's restart) leaves that to Ray Train's cleaner, which needs Ray's state API, which a
    cluster without a dashboard (embedded Ray, `frontalab cluster`) does not serve: the group would hold its
    workers' CPUs and GPUs until the sweep ends, and the next trials would wait for them."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not group_id:
        return
    table = ray.util.placement_group_table()
    if table.get(group_id, {}).get("state") not in (None, "REMOVED"):
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
