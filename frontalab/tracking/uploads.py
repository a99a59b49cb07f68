"""Files a trial hands to its sender for upload, held by hard links until they are sent, and the
image artifacts' names (how a resumed run knows which images it already has)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_IMAGE_FILE = re.compile(r"^(?P<key>.+)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%]")


def image_key_step(filename: str) -> tuple[str, int] | None:
    """(key, step) of an image logged by ``log_image(key=, step=)``, from its artifact file name."""
    m = _IMAGE_FILE.match(filename)
    return (m["key"], int(m["step"])) if m else None


UPLOADING = ".uploading"  # beside a logged file: links to the files the sender has yet to upload


def hold_for_upload(path: Path, artifact_path: str | None) -> Path:
    """A hard link to ``path`` (a copy where the file system has none) that the sender deletes once
    uploaded. So the owner may delete ``path`` meanwhile (the trainer prunes old checkpoints), and a
    file never sent (trial killed, server down at the end) stays on disk for a resumed run to send."""
    folder = path.parent / UPLOADING
    folder.mkdir(exist_ok=True)
    held = Path(tempfile.mkdtemp(dir=folder)) / (artifact_path or "") / path.name
    held.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, held)
    except OSError:
        shutil.copy2(path, held)
    return held


def held_uploads(folder: Path) -> list[tuple[Path, str | None]]:
    """The files `hold_for_upload` holds beside ``folder``'s files, with their artifact paths."""
    found = []
    for each in sorted((folder / UPLOADING).glob("*")):
        for file in sorted(f for f in each.rglob("*") if f.is_file()):
            artifact_path = file.parent.relative_to(each).as_posix()
            found.append((file, None if artifact_path == "." else artifact_path))
    return found


def release_upload(held: Path) -> None:
    """Delete an uploaded file held by `hold_for_upload`, and the folders made for it."""
    held.unlink(missing_ok=True)
    for folder in held.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty: other files are still held
            return
        if folder.name == UPLOADING:
            return
