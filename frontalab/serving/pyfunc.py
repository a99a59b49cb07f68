"""`FrontalizerModel`: a `Frontalizer` as an MLflow pyfunc, and the one loader of any model spec.

pyfunc input: a DataFrame with an ``image`` column of encoded photos (bytes, or base64 text
as JSON carries them) or a list of ``(H, W, 3)`` uint8 arrays. Output: a DataFrame with
``image`` (base64 PNG of the frontal face, empty when no face was found) and ``face_found``.

Models registered before the package had layers pickled this class as
``frontalab.platform.inference.FrontalizerModel``; that module stays as an alias of this one.
"""

from __future__ import annotations

import base64
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from frontalab.data.decode import Skip, decode
from frontalab.models import pretrained
from frontalab.serving.frontalizer import Frontalizer, to_png


def _photo(item: Any) -> np.ndarray:
    if isinstance(item, np.ndarray) and item.ndim == 3:
        return item.astype(np.uint8)
    if isinstance(item, str):
        item = base64.b64decode(item)
    rgb, _ = decode(bytes(item), min_side=16)
    return rgb


def load_predictor(spec: str):
    """``predict(DataFrame) -> DataFrame`` for a model spec: a packaged champion (pretrained:NAME) runs
    in-process, with no services; anything else (models:/…, runs:/…, a model folder) through MLflow's
    pyfunc loader, exactly as `mlflow models serve` runs it."""
    if pretrained.is_pretrained(spec):
        model = FrontalizerModel()
        model.frontalizer = Frontalizer(pretrained.checkpoint_path(spec))
        return lambda frame: model.predict(None, frame)
    return mlflow.pyfunc.load_model(spec).predict


class FrontalizerModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around `Frontalizer`; artifacts: ``checkpoint`` and ``encoder`` (a pickled module)."""

    def load_context(self, context) -> None:
        encoder = torch.load(context.artifacts["encoder"], map_location="cpu", weights_only=False)
        self.frontalizer = Frontalizer(context.artifacts["checkpoint"], encoder=encoder)

    def predict(self, context, model_input, params=None):
        items = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        images, found = [], []
        for item in items:
            try:
                face = self.frontalizer(_photo(item))
            except Skip:
                face = None
            found.append(face is not None)
            images.append(base64.b64encode(to_png(face)).decode() if face is not None else "")
        return pd.DataFrame({"image": images, "face_found": found})
