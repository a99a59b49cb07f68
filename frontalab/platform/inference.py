"""Alias of `frontalab.serving.pyfunc`, for the models registered before the package had layers.

Their MLmodel pickles the python model by reference, as ``frontalab.platform.inference.FrontalizerModel``:
loading one into a process with this package imported finds the class here.
"""

from frontalab.models.images import to_tensor
from frontalab.serving.frontalizer import Frontalizer, to_png
from frontalab.serving.pyfunc import FrontalizerModel, load_predictor

__all__ = ["Frontalizer", "FrontalizerModel", "load_predictor", "to_png", "to_tensor"]
