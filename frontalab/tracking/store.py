"""The one door to MLflow's store: the client every frontalab MLflow call goes through (besides a trial's own
tracker and its sender, `frontalab.tracking.tracker`), its outage retry, experiments, new runs, ending another
process's run, and the UI's addresses. What the platform keeps in MLflow has its own modules beside this one (a
sweep's runs: `sweep_runs`; models and assets: `registry`) or lives with its caller (an evaluation's run); names
(experiments, tags, aliases) come from `frontalab.naming`. MLflow itself is imported inside the functions: it
takes seconds, and commands that never touch MLflow must not pay it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional
from urllib.parse import quote

from frontalab.config import mask_userinfo
from frontalab.naming import EXPERIMENT_KIND_TAG
from frontalab.tracking.outcome import Outcome
from frontalab.tracking.provenance import command_line, standard_tags

# Our own loop retries forever in the background; the client's per-request retries
# (7, with minutes of backoff by default) would only delay noticing the outage.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


_reconnect_s = 0.0  # see `ride_out_outages`


def ride_out_outages(seconds: float) -> None:
    """From now on, in this process, a client call whose request cannot connect to the tracking server is
    retried for up to ``seconds``: a sweep's driver and trials outlive a server restart. A request that never
    connected never reached the server, so retrying it cannot apply it twice."""
    global _reconnect_s
    _reconnect_s = float(seconds)


def _could_not_connect(err: Exception) -> bool:
    text = str(err)
    return "NewConnectionError" in text or "Connection refused" in text


class _Client:
    """`MlflowClient`, its calls retried while the server cannot be reached (`ride_out_outages`)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            deadline = time.monotonic() + _reconnect_s
            delay, told = 1.0, False
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as err:
                    if not _could_not_connect(err) or time.monotonic() + delay > deadline:
                        raise
                    if not told:
                        print(f"MLflow unreachable ({name}); retrying for up to {deadline - time.monotonic():.0f} s",
                              file=sys.stderr, flush=True)
                        told = True
                    time.sleep(delay)
                    delay = min(2 * delay, 10.0)

        return call


def client():
    """An MLflow client for ``$MLFLOW_TRACKING_URI``: every frontalab call to MLflow goes through one."""
    from mlflow import MlflowClient  # deferred: MLflow takes seconds to import

    return _Client(MlflowClient())


def runs_table_url(experiment_id: str, metric: str | None = None, mode: str = "max") -> str:
    """The MLflow UI's training-runs table of an experiment (a bare #/experiments/N opens the GenAI overview);
    printed, so a user:password@ in the tracking URI is masked. Sorted by ``metric``, best first: the UI then
    lists the trials flat (it nests children under the parent only when sorted by date)."""
    url = f"{mask_userinfo(os.environ.get('MLFLOW_TRACKING_URI', ''))}/#/experiments/{experiment_id}/runs" \
          "?workflowType=machine_learning"
    if metric:
        url += f"&orderByKey={quote(f'metrics.`{metric}`', safe='')}&orderByAsc={str(mode == 'min').lower()}"
    return url


def experiment_id(client, name: str) -> str:
    """Get or create the experiment, tagged so the UI opens on training runs."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        eid = exp.experiment_id
    else:
        try:
            eid = client.create_experiment(name)
        except Exception as err:  # created meanwhile by another trial
            if "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
            eid = client.get_experiment_by_name(name).experiment_id
    client.set_experiment_tag(eid, *EXPERIMENT_KIND_TAG)
    return eid


def create_run(client, experiment_id: str, run_name: str, tags: dict[str, str], source: str = ""):
    """A new run with MLflow's User, Source and git commit tags (``source``: the command that made it; default:
    this process's), which `MlflowClient.create_run` alone leaves empty."""
    return client.create_run(experiment_id, run_name=run_name or None,
                             tags={**standard_tags(source or command_line()), **tags})


def run_url(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (printed: user:password in the tracking URI is masked)."""
    return f"{mask_userinfo(os.environ.get('MLFLOW_TRACKING_URI', ''))}/#/experiments/{experiment_id}/runs/{run_id}"


def end_run(client, run_id: str, outcome: Outcome, step: Optional[int] = None) -> None:
    """Mark a run that is not this process's own with ``outcome``'s status and tags (`frontalab.tracking.outcome`)."""
    for key, value in outcome.tags(step).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=outcome.status)
