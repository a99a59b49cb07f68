"""The default photo collection: $FRONTALAB_FACES (or ../shared/faces), else LFW downloaded once."""

from __future__ import annotations

import sys
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from frontalab.paths import cache_dir, faces_dir

LFW_URL = "https://vis-www.cs.umass.edu/lfw/lfw.tgz"


def download_lfw(url: str = LFW_URL) -> Path:
    """LFW (folder per person) in the user cache, downloaded with a progress bar on first use."""
    target = cache_dir() / "lfw"
    if (target / ".complete").exists():
        return target / "lfw"
    archive = cache_dir() / "lfw.tgz.part"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(archive, "wb") as out, \
                tqdm(total=int(resp.headers.get("Content-Length", 0)) or None, unit="B", unit_scale=True,
                     desc="downloading LFW", file=sys.stderr) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    except OSError as err:
        raise RuntimeError(f"cannot download LFW from {url} ({err}); set FRONTALAB_FACES to a folder of face photos") from err
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    (target / ".complete").touch()
    return target / "lfw"


def demo_source() -> Path:
    """Photos for the demo: UTKFace from the configured collection when present, else LFW."""
    local = faces_dir()
    for name in ("utkface", "lfw-gray", "lfw"):
        if (local / name).is_dir():
            return local / name
    if local.is_dir() and any(local.iterdir()):
        return local
    return download_lfw()


def identity_source() -> Path:
    """Folder-per-person photos for evaluation: LFW from the configured collection, else downloaded."""
    local = faces_dir()
    for name in ("lfw-gray", "lfw"):
        if (local / name).is_dir():
            return local / name
    return download_lfw()
