"""The G/D update of one training step, apart from where batches come from, tracking and checkpoints.

`frontalab.training.trial.Trial` drives it; `benchmarks/gpu_check.py` times it on a bare GPU machine,
which is why nothing here imports MLflow, Ray or dlib. The GPU speed-ups (bf16 autocast, channels-last,
torch.compile, TF32, fused Adam) are applied here, each from its ``train.*`` setting.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import DictConfig

from frontalab.losses.papers import paper
from frontalab.models import landmarks as lm
from frontalab.models.encoders import encoder_input
from frontalab.models.parallel import parallel, synced_batch_norm
from frontalab.models.thesis import Discriminator
from frontalab.tracking.outcome import RunFailure
from frontalab.training.distributed import average_gradients, mean_over_workers


class NonFiniteLoss(RunFailure):
    """A loss became NaN or infinite: the trial stops instead of training on garbage."""


def speedup_on(setting: str, device: torch.device) -> bool:
    """A GPU speed-up's setting: enabled, disabled, or auto (on CUDA only, where each is fastest and correct)."""
    return setting == "enabled" or (setting == "auto" and device.type == "cuda")


# A fault for tests to inject: the generator's loss is NaN at this step. Read from the environment, not the
# config: no user sets it, and it is no MLflow param. Ray's workers on this machine inherit it.
NAN_AT_ENV = "FRONTALAB_TEST_NAN_AT_STEP"


class Learner:
    """The decoder G, its discriminator D (when the loss has an adversarial term), their optimisers and
    the objective whose phases update them. ``G`` comes built (and standardised, or fine-tuned) by the caller."""

    def __init__(self, cfg: DictConfig, G: torch.nn.Module, encoder: torch.nn.Module, landmark_net: torch.nn.Module,
                 device: torch.device):
        t = self.train = cfg.train
        self.cfg, self.device, self.encoder = cfg, device, encoder
        self.nan_at = int(os.environ.get(NAN_AT_ENV) or 0)
        self.G = G.to(device)
        system = paper(cfg.model.decoder)
        self.D = Discriminator().to(device) if system.has_discriminator(cfg) else None
        if parallel():  # normalise with the whole batch's statistics (`frontalab.training.distributed`)
            synced_batch_norm(self.G)
            if self.D is not None:
                synced_batch_norm(self.D)
        self.channels_last = speedup_on(t.channels_last, device)
        if self.channels_last:
            self.G = self.G.to(memory_format=torch.channels_last)
            self.D = self.D.to(memory_format=torch.channels_last) if self.D is not None else None
        if device.type == "cuda":  # set both ways: an earlier trial in this process may have turned it on
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = speedup_on(t.tf32, device)
        if speedup_on(t.compile, device):  # in place: parameter names, and so checkpoints, are unchanged
            self.G.compile()
            if self.D is not None:
                self.D.compile()
        adam: dict[str, Any] = {"betas": (t.beta1, t.beta2)}
        if speedup_on(t.fused_optimizer, device):
            adam["fused"] = True
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, **adam) if self.D is not None else None
        self.objective = system.objective(cfg, self.G, self.D, encoder, landmark_net, lm.mean_face().to(device))
        self.last_d: dict[str, float] = {}

    def autocast(self):
        if {"bf16": True, "fp32": False}.get(self.train.precision, speedup_on("auto", self.device)):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def set_learning_rates(self, step: int) -> None:
        """The rates for step ``step + 1``, a function of the step alone (so a resumed run continues the schedule)."""
        t = self.train
        scale = 1.0
        if t.lr_schedule == "cosine":
            scale = 0.5 * (1 + math.cos(math.pi * min(step / t.steps, 1.0)))
        for opt, lr in ((self.opt_g, t.lr_g), (self.opt_d, t.lr_d)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr * scale

    @torch.no_grad()
    def encode_inputs(self, batch: dict[str, torch.Tensor]) -> None:
        """The encoder forward on the inputs that cached features save (data.cached_features=false)."""
        features = self.encoder.features(encoder_input(self.encoder, (batch["image"] + 1) / 2, batch["landmarks"]))
        batch["features"], batch["embedding"] = features, self.encoder.embed_from_features(features)

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Step ``step + 1``: a G update, and a D update every ``train.g_steps_per_d`` G updates."""
        t = self.train
        self.set_learning_rates(step)
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if not self.cfg.data.cached_features:
            self.encode_inputs(batch)
        self.G.train()
        if self.D is not None:
            # The G phase backpropagates through D only to its input: D's weight gradients would be
            # computed for nothing: the D phase sets them to zero before its own backward.
            self.D.requires_grad_(False)
        with self.autocast():
            g = self.objective.generator_phase(batch)
        total = g.loss.total
        if step + 1 == self.nan_at:
            total = total * float("nan")
        # The whole batch's losses: every worker sees the same values, so a NaN stops every worker at once.
        logged = mean_over_workers({**g.loss.terms, "total": total})
        check_finite(logged, "generator", step + 1)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        if self.D is not None:
            self.D.requires_grad_(True)
        self._update(self.opt_g, self.G)
        metrics = {f"train/g/{k}": v.item() for k, v in logged.items()}
        if self.D is not None and (step + 1) % t.g_steps_per_d == 0:
            with self.autocast():
                d = self.objective.discriminator_phase(batch["image"], g.noisy)
            logged = mean_over_workers({**d.terms, "total": d.total})
            check_finite(logged, "discriminator", step + 1)
            self.opt_d.zero_grad(set_to_none=True)
            d.total.backward()
            self._update(self.opt_d, self.D)
            self.last_d = {"train/d/adversarial": logged["adversarial"].item(), "train/d/total": logged["total"].item()}
        metrics.update(self.last_d)
        metrics["train/lr_g"] = self.opt_g.param_groups[0]["lr"]
        if self.opt_d is not None:
            metrics["train/lr_d"] = self.opt_d.param_groups[0]["lr"]
        return metrics

    def _update(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """An optimiser step on the workers' mean gradient, clipped to ``train.grad_clip``."""
        average_gradients(model.parameters())
        if self.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.train.grad_clip)
        optimizer.step()

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict() if self.D is not None else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
                "last_d": self.last_d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        if self.D is not None:
            self.D.load_state_dict(state["D"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.last_d = state.get("last_d", {})


def check_finite(losses: dict[str, torch.Tensor], phase: str, step: int) -> None:
    """``losses``: a phase's terms and its ``total``; raises NonFiniteLoss naming the terms that are not finite."""
    if not torch.isfinite(losses["total"]):
        bad = [k for k, v in losses.items() if k != "total" and not torch.isfinite(v)] or ["total"]
        raise NonFiniteLoss(f"non-finite {phase} loss at step {step}: "
                            f"{', '.join(bad)} = {[float(losses[k]) for k in bad]}")
