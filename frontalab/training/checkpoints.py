"""A trial's checkpoints: where they go, how they are written (atomically) and read (tensors only),
and the random generators' state they carry so a resumed run continues bit for bit."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import random
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from frontalab.config import ConfigError, config_hash
from frontalab.paths import state_dir
from frontalab.storage import replace_durably


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


class UntrustedPickle(ConfigError):
    """Refused: a file that only unpickling as code could read (the CLI exits 2 with this message)."""


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's tensors and numbers; nothing in it is unpickled as code (``weights_only``)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedPickle(f"{path} holds more than tensors and numbers: reading it would unpickle code, which "
                              f"frontalab never does ({str(err).strip().splitlines()[0]})") from None


class CheckpointNotWritten(OSError):
    """A checkpoint could not be written whole, most often for a full disk. The run ends FAILED with this
    one line; the checkpoints before it stay, so ``--resume`` continues once there is room."""


def save_atomic(obj: Any, path: Path) -> None:
    """Whole or absent, also across a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        replace_durably(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)  # the part written must not hold the room the next try needs
        free = shutil.disk_usage(path.parent).free / 2**20
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointNotWritten(f"could not write checkpoint {path} ({cause}); {free:.1f} MB free there: "
                                   f"make room, then rerun with --resume") from None


def newest_readable_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint in ``folder`` that loads; each newer one that does not (cut short by a full disk, a
    crash mid-copy) is named on stderr and passed over, never deleted."""
    for path in sorted(folder.glob("step-*.pt"), reverse=True):
        try:
            load_checkpoint(path)
            return path
        except Exception as err:  # a corrupt file raises whatever torch's zip or pickle reader meets first
            print(f"frontalab: checkpoint {path} is unreadable ({type(err).__name__}: {str(err).strip()[:200]}); "
                  f"trying the one before it", file=sys.stderr)
    return None


@contextlib.contextmanager
def claim_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs; another live run that asks is refused, naming the
    holder. An advisory lock on ``.lock``: the kernel drops it when its holder dies, so a kill leaves none behind."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{folder} is in use by {holder}: wait for that run, or give this one its own "
                              f"train.checkpoint_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

