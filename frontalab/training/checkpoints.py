"""A trial's checkpoints: where they go, how they are written (atomically) and read (tensors only),
and the random generators' state they carry so a resumed run continues bit for bit."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from frontalab.config import config_hash
from frontalab.paths import state_dir


def default_checkpoint_dir(cfg: DictConfig) -> Path:
    """Deterministic per config (seed included), so `--resume` finds the interrupted run."""
    return state_dir(cfg.services.state_dir) / "checkpoints" / config_hash(cfg)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and numbers, so a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's tensors and numbers; nothing in it is unpickled as code (``weights_only``)."""
    return torch.load(path, map_location=device, weights_only=True)


def save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = sorted(folder.glob("step-*.pt"))
    return found[-1] if found else None
