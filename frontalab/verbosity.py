"""What the libraries under frontalab print by default: only what a user can act on.

MLflow prints a run's links whenever a run ends (in every trial and in the tracking sender), logs each model
version's wait and its system-metrics monitor at INFO, and draws a progress bar per artifact download; Ray
warns on every start that the embedded cluster uses token authentication, and Ray Train logs each checkpoint
it stores. A frontalab command says itself what matters (progress, the result, the links). ``frontalab
--verbose`` (``FRONTALAB_VERBOSE=1``, which trials and the sender inherit) leaves the libraries as they are.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "FRONTALAB_VERBOSE"

# The libraries' own settings, inherited by every process this one starts (Ray workers, the sender).
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
QUIET_LOGGERS = {"ray._private.authentication.authentication_token_setup": logging.ERROR,
                 "ray.train": logging.WARNING}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    """Unless verbose: the libraries' settings above, where the user has not set them already."""
    if verbose():
        return
    loggers = dict(QUIET_LOGGERS)
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # MLflow reads it on import: where it is imported already too
        loggers["mlflow"] = logging.WARNING
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
