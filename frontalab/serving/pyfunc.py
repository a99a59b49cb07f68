"""`FrontalizerModel`: a `Frontalizer` as an MLflow pyfunc, and the one loader of any model spec.

pyfunc input: a DataFrame with an ``image`` column of encoded photos (bytes, or base64 text) or a
list of ``(H, W, 3)`` uint8 arrays. Served, the registered `signature` makes MLflow decode the base64
of a JSON request before the model runs, and refuse a request whose cells are not base64 text. Output: a DataFrame with
``image`` (base64 PNG of the frontal face, empty when no face was found), ``face_found`` and ``error``
(empty, or why this row has no face: a bad cell is answered in its row, never by failing the batch).

A version is logged as code (`frontalab.serving.model_code`, MLflow's models from code): loading it runs
that file, which builds this class afresh; nothing is unpickled. Versions registered before that hold the
class cloudpickled by reference: loaded in a process that has imported frontalab (`frontalab frontalize`,
`evaluate`), the class is looked up in this package; in a fresh one (`mlflow models serve`), in the copy of
frontalab the version carries. The ones registered before the package had layers name it
``frontalab.platform.inference.FrontalizerModel``: that module stays, an alias of this one, for the former.
"""

from __future__ import annotations

import base64
import binascii
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
import pandas as pd
import torch

from frontalab.data.decode import MAX_PIXELS, NO_FACE, NOT_AN_IMAGE, TOO_LARGE, Skip, decode
from frontalab.models.encoders import FaceEncoder, encoder_from_bundle
from frontalab.sections import PromoteConfig
from frontalab.serving.frontalizer import Frontalizer, to_png
from frontalab.tracking import registry
from frontalab.training.checkpoints import UntrustedPickle
from frontalab.training.sources import checkpoint_file, model_folder_checkpoint


def _photo(item: Any) -> np.ndarray:
    """One request cell as an RGB photo: encoded bytes, base64 text or an (H, W, 3) uint8 array; `Skip` otherwise."""
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8 or min(item.shape[:2]) < 16:
            raise Skip(NOT_AN_IMAGE, f"an array must be (H, W, 3) uint8 with sides >= 16, got {item.shape} {item.dtype}")
        if item.size > MAX_PIXELS * 3:
            raise Skip(TOO_LARGE, f"{item.shape[1]}x{item.shape[0]} pixels, over {MAX_PIXELS}")
        return item
    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise Skip(NOT_AN_IMAGE, "a text cell must be base64 of an encoded photo") from None
    if not isinstance(item, (bytes, bytearray, memoryview)):
        raise Skip(NOT_AN_IMAGE, f"a cell must be photo bytes, base64 text or an array, not {type(item).__name__}")
    rgb, _ = decode(bytes(item), min_side=16)
    return rgb


# Set to 1 to load a model registered before encoders were bundled as weights: its encoder is a pickled
# module, and unpickling runs whatever code whoever wrote the file put in it.
TRUST_PICKLES_ENV = "FRONTALAB_TRUST_PICKLES"


def load_encoder_artifact(path: str | Path) -> FaceEncoder:
    """A registered model's encoder: a weights-only bundle; an older model's pickled module only when trusted."""
    try:
        return encoder_from_bundle(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError:
        if os.environ.get(TRUST_PICKLES_ENV) != "1":
            raise UntrustedPickle(
                f"{path}: this model's encoder is pickled code (registered by an older frontalab), and unpickling "
                f"runs whatever its author put in it; promote the trial again, or set {TRUST_PICKLES_ENV}=1 if "
                f"you trust where the file came from") from None
        return torch.load(path, map_location="cpu", weights_only=False)


def load_predictor(spec: str):
    """``predict(DataFrame) -> DataFrame`` for a model spec: a registered version (models:/…), a run's model
    (runs:/…) or a model folder through MLflow's pyfunc loader, exactly as `mlflow models serve` runs it; a
    packaged champion (pretrained:NAME), a run id or a checkpoint file in-process (`checkpoint_file`)."""
    if Path(spec).is_dir():
        model_folder_checkpoint(Path(spec), spec)  # a folder that holds no frontalab model, named as such
        return mlflow.pyfunc.load_model(spec).predict
    if spec.startswith(("models:/", "runs:/")):
        # Downloaded into a folder of our own: MLflow's default is a temporary folder it never removes (the
        # model's ~200 MB at every load), and the loaded model holds its weights in memory.
        with registry.finding_model(spec), tempfile.TemporaryDirectory() as tmp:
            return mlflow.pyfunc.load_model(spec, dst_path=tmp).predict
    model = FrontalizerModel()
    with tempfile.TemporaryDirectory() as tmp:
        model.frontalizer = Frontalizer(checkpoint_file(spec, Path(tmp)))
    return lambda frame: model.predict(None, frame)


def signature():
    """What the served model takes and gives: encoded photos (base64 in JSON, which MLflow decodes, so that
    a cell that is not base64 is refused before the model runs) -> a base64 PNG, face_found, error per row."""
    from mlflow.models import ModelSignature  # deferred: with the rest of MLflow's model code
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                          outputs=Schema([ColSpec("string", "image"), ColSpec("boolean", "face_found"),
                                          ColSpec("string", "error")]))


def serving_limits(max_batch: int = PromoteConfig.serve_max_batch,
                   max_request_mb: float = PromoteConfig.serve_max_request_mb) -> dict[str, float]:
    """The served model's request limits, as its MLflow ``model_config``; the defaults are config's
    promote.serve_*."""
    return {"max_batch": int(max_batch), "max_request_mb": float(max_request_mb)}


def _cell_bytes(item: Any) -> int:
    if isinstance(item, np.ndarray):
        return item.nbytes
    if isinstance(item, (str, bytes, bytearray, memoryview)):
        return len(item)
    return 0


class RequestTooLarge(MlflowException):
    """A request over the served model's limits: MLflow answers it 400 with this one-line message."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class FrontalizerModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around `Frontalizer`; artifacts: ``checkpoint`` and ``encoder`` (`encoder_bundle`: its
    name and weights), both read as tensors only; ``model_config``: its `serving_limits`."""

    limits = serving_limits()  # a version registered before the limits travelled with it

    def load_context(self, context) -> None:
        encoder = load_encoder_artifact(context.artifacts["encoder"])
        self.frontalizer = Frontalizer(context.artifacts["checkpoint"], encoder=encoder)
        self.limits = {**serving_limits(), **(context.model_config or {})}

    # Typed so that MLflow neither warns at import that `predict` has no type hints nor derives a signature
    # from them: a DataFrame hint leaves the input to the registered `signature` (and `predict` still takes
    # a list of photos in-process).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        items = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        if len(items) > self.limits["max_batch"]:
            raise RequestTooLarge(f"{len(items)} photos in one request, over this model's limit of "
                                  f"{self.limits['max_batch']:g}; send them in smaller batches")
        size_mb = sum(map(_cell_bytes, items)) / 2**20
        if size_mb > self.limits["max_request_mb"]:
            raise RequestTooLarge(f"{size_mb:.1f} MB of photos in one request, over this model's limit of "
                                  f"{self.limits['max_request_mb']:g} MB; send them in smaller batches")
        images, found, errors = [], [], []
        for item in items:
            try:
                face, error = self.frontalizer(_photo(item)), ""
            except Skip as skip:
                face, error = None, str(skip)
            found.append(face is not None)
            images.append(base64.b64encode(to_png(face)).decode() if face is not None else "")
            errors.append(error or ("" if face is not None else NO_FACE))
        return pd.DataFrame({"image": images, "face_found": found, "error": errors})
