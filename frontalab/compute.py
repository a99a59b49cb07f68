"""Connect to Ray: embedded in this process by default, any cluster with ``--address``/``RAY_ADDRESS``.

A local test cluster (`frontalab.testing.LocalCluster`, `frontalab cluster up`) records its
address and token file under the state directory; `connect` reads that record to authenticate
to it, so a driver on this machine needs no variables.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from frontalab.paths import state_dir
from frontalab.verbosity import verbose

RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: a cluster to join instead of embedding Ray
STATE_FILE = "cluster.json"  # a local cluster's record (address, ports, PIDs; no secrets)
TOKEN_FILE = "auth_token"  # beside it: the cluster's Ray token (0600)


def local_cluster_dir() -> Path:
    """Where `frontalab cluster up` keeps its record by default: ``$FRONTALAB_HOME/ray-cluster``."""
    return state_dir() / "ray-cluster"


def token_auth_env(folder: Path) -> dict[str, str]:
    """What a driver needs besides the address to join the local cluster recorded in ``folder``: Ray's
    token authentication, with that cluster's own token (a file, never in the environment)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(folder / TOKEN_FILE)}


def recorded_address(folder: Optional[Path] = None) -> Optional[str]:
    """The address of the local cluster recorded in ``folder`` (default `local_cluster_dir`), or None."""
    try:
        return json.loads(((folder or local_cluster_dir()) / STATE_FILE).read_text())["address"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once; returns a description of where it runs.

    Embedded Ray binds to 127.0.0.1 and starts no dashboard. Workers inherit this process's
    environment (S3 endpoint and credentials); on an external cluster they must have their
    own, since passing secrets through ``runtime_env`` would store them in Ray's GCS.
    """
    import ray  # deferred: Ray takes seconds to import; only commands that run on it pay

    address = address or os.environ.get(RAY_ADDRESS_ENV) or None
    if ray.is_initialized():
        return "already connected"
    if address and "RAY_AUTH_MODE" not in os.environ:
        if recorded_address() == address:  # `frontalab cluster up` on this machine: use its token
            os.environ.update(token_auth_env(local_cluster_dir()))
    # Without a dashboard there is no state API, and Ray Train's placement-group cleaner warns that it cannot
    # ask it, every few seconds of every data-parallel trial: the job's workers log errors only (--verbose: all).
    quiet = {} if verbose() else {"logging_config": ray.LoggingConfig(log_level="ERROR")}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, **quiet)
        return f"cluster at {address}"
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1", configure_logging=True, **quiet)
    return "embedded"


def cluster_cpus() -> int:
    import ray  # deferred: Ray takes seconds to import

    return int(ray.cluster_resources().get("CPU", 1))
