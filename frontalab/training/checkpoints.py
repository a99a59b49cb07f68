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
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from frontalab.config import ModelConfig, config_hash, validate
from frontalab.naming import ENCODER_NAMES
from frontalab.paths import state_dir
from frontalab.sections import ConfigError
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


class UnreadableModel(Exception):
    """A model file, folder or run that is not a checkpoint this frontalab can use: one line naming the file and
    what is wrong with it (the CLI's exit status 10)."""


class UntrustedPickle(UnreadableModel):
    """Refused: a file that only unpickling as code could read."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6; frontalab never wrote another kind
MODEL_KEYS = ("G", "config", "step")  # what every checkpoint holds, packaged champions included


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", needs: tuple[str, ...] = MODEL_KEYS
                    ) -> dict[str, Any]:
    """A checkpoint's tensors and numbers, holding at least ``needs``; nothing in it is unpickled as code
    (``weights_only``). Anything else is refused with `UnreadableModel`, saying what the file is instead."""
    path = Path(path)
    if path.is_dir():
        raise UnreadableModel(f"{path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise UnreadableModel(f"{path} cannot be read ({err.strerror or err})") from None
    if not head:
        raise UnreadableModel(f"{path} is empty (0 bytes), not a checkpoint")
    if not head.startswith(ZIP_MAGIC):
        raise UnreadableModel(f"{path} is not a checkpoint: {_looks_like(head)}, where a checkpoint is a torch zip "
                              f"archive")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:  # a version byte flipped
        raise UnreadableModel(f"{path} is cut short or corrupt (its zip directory: {err})") from None
    if not any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        raise UnreadableModel(f"{path} is a zip archive but not a torch checkpoint (no data.pkl among its "
                              f"{len(members)} members)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "Unsupported global" in str(err):  # a class or function to import: code, not tensors and numbers
            raise UntrustedPickle(f"{path} holds more than tensors and numbers: reading it would unpickle code, "
                                  f"which frontalab never does ({first})") from None
        raise UnreadableModel(f"{path} is corrupt: its record of tensors cannot be read ({first[:160]})") from None
    except Exception as err:  # noqa: BLE001 - torch's zip and pickle readers raise whatever a damaged byte meets first
        cause = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UnreadableModel(f"{path} is cut short or corrupt ({cause})") from None
    missing = [k for k in needs if k not in ckpt] if isinstance(ckpt, dict) else list(needs)
    if missing:
        raise UnreadableModel(f"{path} is a torch file but not a frontalab checkpoint: it lacks {', '.join(missing)}")
    return ckpt


def _looks_like(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data that is not a zip archive"
    return "a text file" if all(c.isprintable() or c.isspace() for c in text) else "data that is not a zip archive"


def checkpoint_config(ckpt: dict[str, Any], path: str | Path) -> DictConfig:
    """The config a checkpoint was trained with, its ``model`` section checked against the choices and ranges
    `frontalab.config` declares (a damaged size or decoder name is named, not built)."""
    try:
        cfg = OmegaConf.create(ckpt["config"])
        validate(cfg.model, ModelConfig, "model.")
        if cfg.encoder.name not in ENCODER_NAMES:
            raise ConfigError(f"encoder.name {cfg.encoder.name!r} is none of {', '.join(ENCODER_NAMES)}")
    except (ConfigError, OmegaConfBaseException, ValueError, TypeError, AttributeError) as err:
        raise UnreadableModel(f"{path}: its config does not describe a model ({str(err).splitlines()[0][:200]})") from None
    return cfg


def architecture_differences(source: DictConfig, cfg: DictConfig, ignore: tuple[str, ...] = ()) -> str:
    """How another run's model and encoder (its `checkpoint_config`) differ from ``cfg``'s, '' when they do not;
    keys the other run predates count as their defaults, and keys in ``ignore`` (``model.width``) are not compared."""
    model = OmegaConf.merge(OmegaConf.structured(ModelConfig), source.model)
    differs = [f"model.{k}: {model[k]} there, {cfg.model[k]} here" for k in cfg.model
               if model[k] != cfg.model[k] and k != "test_views" and f"model.{k}" not in ignore]  # views: inference
    if source.encoder.name != cfg.encoder.name and "encoder.name" not in ignore:
        differs.append(f"encoder.name: {source.encoder.name} there, {cfg.encoder.name} here")
    return "; ".join(differs)


def check_fits(module: torch.nn.Module, weights: Any, path: str | Path, optional: tuple[str, ...] = ()) -> None:
    """Refuse (`UnreadableModel`) a checkpoint's ``weights`` that ``module.load_state_dict`` would not take: a name
    missing (other than those starting with ``optional``) or left over, or a tensor of another shape. ``module`` may
    live on the meta device, so that a damaged size is found before anything of that size is made."""
    own = module.state_dict()
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UnreadableModel(f"{path}: its weights are not a table of tensors")
    missing = [k for k in own if k not in weights and not k.startswith(optional)]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} for {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        wrong = "; ".join(filter(None, [missing and f"missing {', '.join(missing[:3])}",
                                        unexpected and f"unexpected {', '.join(unexpected[:3])}",
                                        shapes and f"shaped {', '.join(shapes[:3])}"]))
        raise UnreadableModel(f"{path} does not fit the {type(module).__name__} its config describes ({wrong})")


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
    # Also a data-parallel run's, which Ray Train keeps in a folder per checkpoint (`frontalab.training.workers`).
    for path in sorted(folder.rglob("step-*.pt"), key=lambda p: p.name, reverse=True):
        try:
            load_checkpoint(path, needs=("step",))
            return path
        except UnreadableModel as err:
            print(f"frontalab: {err}; trying the checkpoint before it", file=sys.stderr)
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

