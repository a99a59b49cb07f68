"""Connect to Ray: embedded in this process by default, any cluster with ``--address``/``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once; returns a description of where it runs.

    Embedded Ray binds to 127.0.0.1 and starts no dashboard. Workers inherit this process's
    environment (S3 endpoint and credentials); on an external cluster they must have their
    own, since passing secrets through ``runtime_env`` would store them in Ray's GCS.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return "already connected"
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return f"cluster at {address}"
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1", configure_logging=True)
    return "embedded"


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))
