"""One trial: the G/D training loop of the thesis (or Cole's decoder), tracked and resumable.

`run_trial` is what `frontalab train` runs and what the sweep hands to Ray Tune; it knows
nothing about Tune. It reports progress through an optional ``report(metrics, checkpoint)``
callback, at every validation point.

The loop drives the objective's phases: a G update every step, a D update after every
``train.g_steps_per_d`` G updates (the thesis uses 4). Batches stream from the dataset's shards
in a seeded order (`frontalab.data.stream`), so a run resumed from a checkpoint sees exactly the
batches the uninterrupted run would have seen, and ends with the same parameters.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw, ImageFont

from frontalab.config import config_hash, training_params
from frontalab.data.stream import ShardStream, feature_sample, first_rows
from frontalab.data.teacher import LandmarkTeacher
from frontalab.losses.papers import build_generator, paper
from frontalab.losses.terms import TERMS
from frontalab.measure import measure_outputs, summarise_outputs
from frontalab.metrics import all_pairs
from frontalab.models.build import encoder_from_config
from frontalab.models.images import to_uint8
from frontalab.models.landmark_net import default_weights_path, load_landmark_net
from frontalab.models.parallel import world
from frontalab.naming import (COMMIT_TAG, CONFIG_HASH_TAG, DATASET_HASH_TAG, DECODER_TAG, ENCODER_TAG, HOST_TAG,
                              LANDMARK_MODEL, VALIDATION_PREFIX)
from frontalab.sections import ConfigError
from frontalab.tracking.provenance import git_commit, host
from frontalab.tracking.registry import ensure_landmark_model
from frontalab.tracking.outcome import FINISHED, RUNNING, Outcome, interrupt, on_stop_signals, run_outcome
from frontalab.tracking.tracker import NullTracker, Tracker
from frontalab.training.checkpoints import (MODEL_KEYS, UnreadableModel, architecture_differences, check_fits,
                                            checkpoint_config,
                                            claim_folder, default_checkpoint_dir, load_checkpoint,
                                            newest_readable_checkpoint, rng_state, save_atomic, set_rng_state)
from frontalab.training.distributed import gather_objects, weights_digest
from frontalab.training.sources import checkpoint_file
from frontalab.training.step import Learner

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float], Optional[str]], None]


# ---------------------------------------------------------------- pieces


class DeviceUnavailable(RuntimeError):
    """``train.device`` names a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    # Checked here, not at the first tensor moved: torch would fail deep inside, with a traceback.
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise DeviceUnavailable(f"train.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                f"use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"train.device={name}: MPS is not available here; use train.device=auto or cpu")
    return device


LABEL_HEIGHT = 12  # px of the strip above a grid's columns that names them


def image_grid(columns: dict[str, torch.Tensor]) -> np.ndarray:
    """Rows of faces under a strip naming the columns: one column per tensor (N, C, S, S) in [-1, 1] or a
    [0, 1] mask, keyed by its label. uint8 HxWx3."""
    rows = []
    for col in columns.values():
        col = col.detach().float().cpu()
        col = col.expand(-1, 3, -1, -1) if col.shape[1] == 1 else (col + 1) / 2
        rows.append(col.clamp(0, 1))
    grid = torch.cat([torch.cat(list(c), dim=1) for c in rows], dim=2)  # faces down, kinds across
    faces = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    strip = Image.new("RGB", (faces.shape[1], LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    for i, (label, col) in enumerate(zip(columns, rows)):
        draw.text((i * col.shape[-1] + 2, 0), label, fill="black", font=ImageFont.load_default())
    return np.concatenate([np.asarray(strip), faces], axis=0)


# ---------------------------------------------------------------- the trial


@dataclass
class TrialState:
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    run_id: Optional[str] = None
    status: str = RUNNING
    tracking_complete: bool = True  # False when not every point reached MLflow (the journal has them)


class Trial:
    def __init__(self, cfg: DictConfig, tracker_factory: Callable[..., Any], report: Optional[Report] = None,
                 checkpoint_dir: Optional[Path] = None, resume_from: Optional[Path] = None,
                 encoder: Optional[torch.nn.Module] = None, landmark_net: Optional[torch.nn.Module] = None):
        self.cfg, self.report = cfg, report
        t = cfg.train
        if t.workers:
            torch.set_num_threads(t.workers)
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN, in case a kernel reads memory it
        # never wrote. None of ours does (resume stays bit-exact), and the ~2000 fills per step
        # cost 3-4% of a CPU step.
        torch.utils.deterministic.fill_uninitialized_memory = False
        self.device = resolve_device(t.device)
        self.checkpoint_dir = checkpoint_dir or Path(t.checkpoint_dir or default_checkpoint_dir(cfg))
        # One of a data-parallel trial's workers (`frontalab.training.distributed`): rank 0 validates, tracks and
        # writes the checkpoints; every rank trains on its part of each batch.
        self.rank, self.workers = world()

        d = cfg.data
        self.stream = ShardStream(d.path, "train", cfg.encoder.name, cfg.model.out_size, t.batch_size, t.seed,
                                  window=d.shuffle_window, threads=d.decode_threads, prefetch=d.prefetch,
                                  cache_bytes=int(d.cache_gb * 1e9), pin=self.device.type == "cuda",
                                  rank=self.rank, workers=self.workers)
        self.dataset_hash = self.stream.manifest["dataset_hash"]

        # Frozen networks may come prebuilt (a sweep ships them once through Ray's object store).
        self.encoder = (encoder if encoder is not None else encoder_from_config(cfg)).to(self.device)
        self.landmark_net = (landmark_net or load_landmark_net(cfg.landmarks.weights or None)).to(self.device).eval()
        self.teacher = LandmarkTeacher()  # its detector judges whether validation outputs hold a face
        for p in self.landmark_net.parameters():
            p.requires_grad_(False)

        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        features = feature_sample(d.path, "train", cfg.encoder.name, d.feature_sample)
        self.G = build_generator(cfg, features.shape[1])
        self.G.standardize.fit(features)
        if t.init_from and resume_from is None:
            self._init_from(t.init_from)
        self.learner = Learner(cfg, self.G, self.encoder, self.landmark_net, self.device)
        self.G, self.D, self.objective = self.learner.G, self.learner.D, self.learner.objective
        self.val_batch = first_rows(d.path, "val", cfg.encoder.name, cfg.model.out_size, t.val_faces).to_batch(self.device)
        self.state = TrialState()

        resume_run_id = None
        if resume_from is not None:
            resume_run_id = self._load(resume_from)
        self.tracker = tracker_factory(cfg=cfg, resume_run_id=resume_run_id, tags=self._tags(),
                                       journal=self.checkpoint_dir / "metrics.jsonl", resume_step=self.state.step)
        self.state.run_id = self.tracker.run_id

    # ---------------------------------------------------------------- tracking helpers

    def _tags(self) -> dict[str, str]:
        return {COMMIT_TAG: git_commit(), CONFIG_HASH_TAG: config_hash(self.cfg), DATASET_HASH_TAG: self.dataset_hash,
                ENCODER_TAG: self.encoder.name, HOST_TAG: host(), DECODER_TAG: self.cfg.model.decoder}

    # ---------------------------------------------------------------- checkpoints

    def _init_from(self, spec: str) -> None:
        """The decoder of another model, which must have this trial's architecture and encoder."""
        with tempfile.TemporaryDirectory() as tmp:
            path = checkpoint_file(spec, Path(tmp))
            ckpt = load_checkpoint(path)
        differs = architecture_differences(checkpoint_config(ckpt, path), self.cfg)
        if differs:
            raise ConfigError(f"train.init_from={spec}: that model is not this trial's architecture ({differs})")
        check_fits(self.G, ckpt["G"], path)
        self.G.load_state_dict(ckpt["G"])  # its feature statistics too: the weights were learnt with them

    def checkpoint(self) -> Optional[Path]:
        """Rank 0 writes the checkpoint, with every worker's random state; other ranks only give theirs."""
        worker_rng = gather_objects(rng_state())
        digests = gather_objects(weights_digest(self.G, self.D))
        if len(set(digests)) > 1:  # the workers no longer train one model: a checkpoint would hold rank 0's only
            raise RuntimeError(f"data-parallel workers hold different weights at step {self.state.step}: {digests}")
        if self.rank:
            return None
        path = self.checkpoint_dir / f"step-{self.state.step:06d}.pt"
        save_atomic({
            "step": self.state.step, **self.learner.state_dict(),
            "order": self.stream.state_dict(), "rng": worker_rng[0], "worker_rng": worker_rng,
            "worker_weights": digests,
            "config": OmegaConf.to_container(self.cfg, resolve=True), "dataset_hash": self.dataset_hash,
            "run_id": self.tracker.run_id,
            "metrics": self.state.metrics,
        }, path)
        self.state.checkpoint = str(path)
        self.tracker.log_artifact(path, "checkpoints")  # holds its own link until uploaded
        if self.cfg.train.keep_checkpoints:
            for old in sorted(self.checkpoint_dir.glob("step-*.pt"))[:-self.cfg.train.keep_checkpoints]:
                old.unlink()
        return path

    def _load(self, path: Path) -> Optional[str]:
        ckpt = load_checkpoint(path, self.device, needs=MODEL_KEYS + ("dataset_hash", "order", "rng"))
        differs = architecture_differences(checkpoint_config(ckpt, path), self.cfg)
        if differs:
            raise ConfigError(f"checkpoint {path} is another architecture than this run's config ({differs}): "
                                  f"start a new run from it with train.init_from={path}")
        if ckpt["dataset_hash"] != self.dataset_hash:
            raise ConfigError(f"checkpoint {path} was trained on dataset {ckpt['dataset_hash']}, "
                              f"not {self.dataset_hash} ({self.cfg.data.path})")
        if "window" not in ckpt["order"]:
            raise ConfigError(f"checkpoint {path} predates streamed batches, so its batch order cannot be "
                              f"replayed: start a new run from it with train.init_from={path}")
        check_fits(self.G, ckpt["G"], path)
        if self.D is not None:
            check_fits(self.D, ckpt.get("D"), path)
        try:
            self.learner.load_state_dict(ckpt)
        except (KeyError, ValueError, RuntimeError) as err:  # the optimisers' state, damaged
            raise UnreadableModel(f"checkpoint {path}: its training state cannot be restored ({err})") from None
        self.stream.load_state_dict(ckpt["order"])
        # Each worker its own random state, when the checkpoint has as many workers' as this trial (else rank 0's).
        worker_rng = ckpt.get("worker_rng") or [ckpt["rng"]]
        set_rng_state(worker_rng[self.rank] if len(worker_rng) == self.workers else ckpt["rng"])
        self.state.step = ckpt["step"]
        self.state.metrics = ckpt.get("metrics", {})
        self.state.checkpoint = str(path)
        return ckpt.get("run_id")

    # ---------------------------------------------------------------- steps

    def train_step(self) -> dict[str, float]:
        metrics = self.learner.step(self.stream.next(self.device), self.state.step)
        self.state.step += 1
        return metrics

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], np.ndarray]:
        """The validation faces' outputs measured as `frontalab evaluate` measures them (`frontalab.measure`),
        their faces taken as different people's, and the grid of them."""
        self.G.eval()
        batch = self.val_batch
        out = self.objective.decode(batch)
        measured = measure_outputs(self.teacher, to_uint8(out.composite), (self.encoder,))
        inputs = batch["embedding"].cpu().numpy()
        numbers = summarise_outputs(measured, self.encoder.name, inputs, self.encoder.same_identity_threshold,
                                    all_pairs(len(inputs)))
        metrics = {f"{VALIDATION_PREFIX}{name}": value for name, value in numbers.items()}
        drawn = paper(self.cfg.model.decoder).preview(out)
        if "mask" in drawn:
            metrics[f"{VALIDATION_PREFIX}mask_mean"] = float(drawn["mask"].mean())
        columns = {"input": batch["image"], **drawn, "output": out.composite}
        return metrics, image_grid({name: images[:8] for name, images in columns.items()})

    # ---------------------------------------------------------------- the loop

    def run(self, until: Optional[int] = None) -> TrialState:
        """Train to step ``until`` (default and at most ``train.steps``); a later call goes on from there."""
        t = self.cfg.train
        until = t.steps if until is None else min(until, t.steps)
        tick, tick_step = time.perf_counter(), self.state.step
        if self.state.step == 0:
            self._validate_and_report(checkpoint=False)
        while self.state.step < until:
            metrics = self.train_step()
            step = self.state.step
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                metrics["train/steps_per_s"] = (step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, step
                self.tracker.log_metrics(metrics, step)
            self.state.metrics.update(metrics)
            at_val, at_ckpt = step % t.val_every == 0 or step == t.steps, step % t.checkpoint_every == 0 or step == t.steps
            if at_val or at_ckpt:
                self._validate_and_report(checkpoint=at_ckpt, validate=at_val)
        if self.state.step >= t.steps:  # also a run resumed from a checkpoint past train.steps
            self.state.status = FINISHED
        return self.state

    def _validate_and_report(self, checkpoint: bool, validate: bool = True) -> None:
        step = self.state.step
        if validate and not self.rank:
            metrics, grid = self.validate()
            self.state.metrics.update(metrics)
            self.tracker.log_metrics(metrics, step)
            self.tracker.log_image(grid, "samples", step)
        path = self.checkpoint() if checkpoint else None
        if self.report is not None:
            self.report({**self.state.metrics, "step": step}, str(path) if path else None)


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """A run's MLflow params: the keys that shape training, less the weights of the other paper's loss terms,
    which this run's objective never reads (`frontalab.losses.terms`)."""
    others = {f"loss.{t.key}" for t in TERMS if t.paper != cfg.model.decoder}
    return {k: v for k, v in training_params(cfg).items() if k not in others}


def mlflow_tracker_factory(parent_run_id: Optional[str] = None, run_name: str = "", extra_tags: dict | None = None,
                           source: str = ""):
    """A factory for `Trial` that opens (or resumes) the trial's MLflow run. ``source``: the command that made
    the run (a sweep's trials name the sweep's command); default: this process's."""
    def open_tracker(cfg: DictConfig, resume_run_id: Optional[str], tags: dict[str, str],
                     journal: Optional[Path] = None, resume_step: int = 0):
        if not cfg.tracking.enabled:
            return NullTracker()
        version = ensure_landmark_model(Path(cfg.landmarks.weights or default_weights_path()))
        tracker = Tracker.open(experiment=cfg.tracking.experiment, run_name=run_name or cfg.tracking.run_name,
                               params=run_params(cfg),
                               tags={**tags, **(extra_tags or {}), f"{LANDMARK_MODEL}_version": version},
                               resume_run_id=resume_run_id, parent_run_id=parent_run_id,
                               system_metrics=cfg.tracking.system_metrics, buffer_limit=cfg.tracking.buffer_limit,
                               send_interval=cfg.tracking.send_interval, journal=journal, resume_step=resume_step,
                               source=source)
        if not resume_run_id:
            shown = OmegaConf.to_container(cfg, resolve=True)
            shown.pop("services", None)  # endpoints are the machine's, not the trial's
            tracker.log_training_inputs(OmegaConf.to_yaml(shown), cfg.data.path, tags[DATASET_HASH_TAG])
        return tracker

    return open_tracker


def run_trial(cfg: DictConfig, *, resume: bool | str = False, report: Optional[Report] = None,
              checkpoint_dir: Optional[Path] = None, tracker_factory=None,
              encoder: Optional[torch.nn.Module] = None, landmark_net: Optional[torch.nn.Module] = None) -> TrialState:
    """Train one trial to ``cfg.train.steps``; resume from the latest (or a given) checkpoint.

    A non-finite loss ends the run FAILED with the reason; an interrupt ends it KILLED. The checkpoint folder is
    this run's alone while it runs, and a fresh run refuses a folder that holds another run's checkpoints.
    """
    folder = checkpoint_dir or Path(cfg.train.checkpoint_dir or default_checkpoint_dir(cfg))
    with claim_folder(folder):
        refuse_used_folder(folder, resume)
        return _run_trial(cfg, folder, resume, report, tracker_factory, encoder, landmark_net)


def refuse_used_folder(folder: Path, resume: bool | str) -> None:
    """A fresh run does not write into a folder holding an earlier run's checkpoints (its workers' too)."""
    if not resume and any(folder.rglob("step-*.pt")):
        raise ConfigError(f"{folder} holds the checkpoints of an earlier run of this config: continue it with "
                          f"--resume, or move the folder away to start afresh")


def _run_trial(cfg: DictConfig, folder: Path, resume: bool | str, report: Optional[Report], tracker_factory,
               encoder: Optional[torch.nn.Module], landmark_net: Optional[torch.nn.Module]) -> TrialState:
    resume_from = None
    if resume:
        resume_from = Path(resume) if isinstance(resume, str) else newest_readable_checkpoint(folder)
        if resume_from is None:
            print(f"frontalab train: no checkpoint in {folder}; starting from step 0", file=sys.stderr)
    trial = Trial(cfg, tracker_factory or mlflow_tracker_factory(), report, folder, resume_from, encoder, landmark_net)

    def end(outcome: Outcome) -> None:
        trial.state.status = outcome.status
        tags = outcome.tags(trial.state.step if trial.state.step < cfg.train.steps else None)
        if tags:
            trial.tracker.set_tags(tags)
        # A run that did not finish waits less for an unreachable server: its journal keeps every point.
        trial.state.tracking_complete = trial.tracker.finish(outcome.status, timeout=600 if outcome.status == FINISHED else 30)

    try:
        with on_stop_signals(interrupt, (signal.SIGTERM,), keep_others=True), run_outcome(end, in_trial=True):
            trial.run()
    finally:
        trial.stream.close()  # its reader thread holds a window of decoded faces
    return trial.state
