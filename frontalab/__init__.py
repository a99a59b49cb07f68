"""frontalab: face-frontalization research at scale.

Layers, low to high (each imports only from those below; pyproject.toml's import-linter contracts
enforce it): the base (`config`, `paths`, `storage`, `naming`, `metrics`, `compute`); the shared
library `models` and `losses` (pure torch); `data` (prepare, morphs, the dataset); `tracking`
(MLflow) and `training` (the trial loop); `serving`, then `sweep` and `evaluation`; `services`
(embedded S3 and MLflow) and `testing` (a local Ray cluster); the `cli`.
"""

__version__ = "0.1.0"
