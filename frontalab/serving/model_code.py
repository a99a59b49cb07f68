"""The registered model's code: `frontalab promote` logs this file as the pyfunc (MLflow's models from code).

MLflow copies it into the model folder, its MLmodel's python_function flavor names it, and loading the
version runs it: it builds a fresh `FrontalizerModel`, where a pickled model would be unpickled. The import
below finds the frontalab already imported (`frontalab frontalize`, `evaluate`), else the copy of the package
the version carries in its code/ folder (`mlflow models serve`), which MLflow puts first on sys.path. The file
runs at every load and once when logged: nothing else belongs here, and nothing imports it.
"""

import mlflow.models

from frontalab.serving.pyfunc import FrontalizerModel

mlflow.models.set_model(FrontalizerModel())
