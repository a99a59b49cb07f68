"""Where dlib's pretrained model files live: the ``face_recognition_models`` package.

That package (CC0 models, installed from PyPI) ships
``models/dlib_face_recognition_resnet_model_v1.dat``,
``shape_predictor_5_face_landmarks.dat``, ``shape_predictor_68_face_landmarks.dat`` and
``mmod_human_face_detector.dat``. Its ``__init__`` imports ``pkg_resources``, which current
setuptools no longer ships, so we locate its folder with ``importlib`` and never import it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "face_recognition_models"

FACE_RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"


def models_dir() -> Path:
    """The package's ``models/`` folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package '{PACKAGE}' is not installed; it carries dlib's pretrained "
            f"models: pip install {PACKAGE}  (do not install 'face_recognition', it builds dlib from source)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(filename: str) -> Path:
    """Path of one model file in ``face_recognition_models/models``; a clear error if missing."""
    path = models_dir() / filename
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.dat")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"dlib model file '{filename}' not found at {path}; files present: {present or 'none'}. "
            f"Reinstall the package: pip install --force-reinstall {PACKAGE}"
        )
    return path
