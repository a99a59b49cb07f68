"""MLflow tracking of one trial: batched, asynchronous, and lossless through server outages.

The training loop only enqueues; a background thread sends. When the tracking server is
unreachable, points stay buffered (in memory up to a bound, then on disk) and are retried
until it is back; the loop never waits for the network. Each metric point gets its
timestamp when it is enqueued, so a retried batch is an exact duplicate, which MLflow's
store drops: every (key, step) lands once. A resumed run skips the steps it already has,
and sends those that a killed process had journalled (beside its checkpoints) but not sent.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import numpy as np

from frontalab.paths import REPO_ROOT

log = logging.getLogger(__name__)

# Our own loop retries forever in the background; the client's per-request retries
# (7, with minutes of backoff by default) would only delay noticing the outage.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")  # land on the training-runs view
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


_IMAGE_FILE = re.compile(r"^(?P<key>.+)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%]")


def image_key_step(filename: str) -> tuple[str, int] | None:
    """(key, step) of an image logged by ``log_image(key=, step=)``, from its artifact file name."""
    m = _IMAGE_FILE.match(filename)
    return (m["key"], int(m["step"])) if m else None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> str:
    return socket.gethostname()


def command_line() -> str:
    """This process's command as typed (``frontalab sweep …``), for the runs it creates. Credentials
    travel in the environment, never in argv; user:password in a URL is masked all the same."""
    import shlex
    import sys

    prog = Path(sys.argv[0]).name
    # A URL override may carry user:password@ (services.mlflow_uri=https://u:token@host): mask it.
    args = [re.sub(r"://[^/@\s]+@", "://***@", a) for a in sys.argv[1:]]
    return shlex.join(["frontalab" if prog in ("frontalab", "__main__.py", "cli.py") else prog, *args])


def experiment_id(client, name: str) -> str:
    """Get or create the experiment, tagged so the UI opens on training runs."""
    exp = client.get_experiment_by_name(name)
    eid = exp.experiment_id if exp else client.create_experiment(name)
    client.set_experiment_tag(eid, *EXPERIMENT_KIND_TAG)
    return eid


class Tracker:
    """The MLflow run of one trial. Create with `Tracker.open`; end with `finish`."""

    def __init__(self, client, run_id: str, buffer_limit: int, spool: Path, done_steps: dict[str, set[int]],
                 send_interval: float = 2.0):
        self.client, self.run_id = client, run_id
        self._buffer_limit = buffer_limit
        self._send_interval = send_interval
        self._spool = spool
        self._done = done_steps  # (key -> steps) already in the run: a resumed run skips them
        self._queue: queue.Queue = queue.Queue()
        self._metrics: deque = deque()  # Metric entities waiting to be sent
        self._spilled = 0  # metric points waiting in the spool file
        self._files: deque = deque()  # ("image" | "artifact", args) waiting to be sent
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._wake = threading.Event()  # set on every enqueue: the sender sleeps until there is work
        self._hurry = threading.Event()  # set by flush: send now, without gathering more
        self.outage_seconds = 0.0
        self._journal = None  # local append-only copy of every metric point (see `_open_journal`)
        self._thread = threading.Thread(target=self._run, name="mlflow-tracker", daemon=True)
        self._thread.start()
        self._monitor = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, *, experiment: str, run_name: str = "", params: dict[str, Any] | None = None,
             tags: dict[str, str] | None = None, resume_run_id: str | None = None,
             parent_run_id: str | None = None, system_metrics: bool = True,
             buffer_limit: int = 100000, send_interval: float = 2.0,
             journal: Path | None = None, resume_step: int = 0) -> "Tracker":
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        client = MlflowClient()
        done: dict[str, set[int]] = {}
        if resume_run_id:
            run = client.get_run(resume_run_id)
            run_id = run.info.run_id
            for key in run.data.metrics:
                done[key] = {m.step for m in client.get_metric_history(run_id, key)}
            for f in client.list_artifacts(run_id, "images"):
                found = image_key_step(Path(f.path).name)
                if found:
                    done.setdefault(f"image:{found[0]}", set()).add(found[1])
            client.update_run(run_id, status="RUNNING")
        else:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(experiment_id(client, experiment), run_name=run_name or None, tags=all_tags)
            run_id = run.info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i:i + 100])
        if resume_run_id and tags:
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        spool = Path(tempfile.mkdtemp(prefix=f"mlflow-{run_id[:8]}-"))
        tracker = cls(client, run_id, buffer_limit, spool, done, send_interval)
        if journal is not None:
            tracker._open_journal(Path(journal), resume_step if resume_run_id else None)
        if system_metrics:
            tracker._start_system_metrics()
        return tracker

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1)
            self._monitor.start()
        except Exception as err:  # psutil missing or an unsupported platform: train on
            log.warning("system metrics off: %s", err)

    def _open_journal(self, path: Path, resume_step: int | None) -> None:
        """Every metric point the loop logs is appended to ``path`` (beside the checkpoints) before it
        is sent, so a process killed outright loses none: when its run resumes from the checkpoint at
        ``resume_step``, the journal's points up to that step that never reached the server are sent
        now. Later points are dropped: the resumed loop logs those steps again."""
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    key, value, timestamp, step = json.loads(line)
                except ValueError:  # the line the kill cut short
                    continue
                if step <= resume_step:
                    kept.append(line + "\n")
                    if step not in self._done.get(key, ()):
                        self._enqueue(("metrics", {key: value}, step, timestamp))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(kept))
        self._journal = open(path, "a")

    # ------------------------------------------------------------------ the loop's side (never blocks)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = {k: float(v) for k, v in metrics.items() if step not in self._done.get(k, ())}
        if fresh:
            if self._journal is not None:
                self._journal.write("".join(json.dumps([k, v, now, step]) + "\n" for k, v in fresh.items()))
                self._journal.flush()  # into the OS: it survives the process
            self._enqueue(("metrics", fresh, step, now))

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        if step in self._done.get(f"image:{key}", ()):
            return
        self._enqueue(("image", np.asarray(image).copy(), key, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._enqueue(("artifact", str(path), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._enqueue(("tags", {k: str(v) for k, v in tags.items()}))

    def _enqueue(self, item: tuple) -> None:
        self._queue.put(item)
        self._wake.set()

    # ------------------------------------------------------------------ the sender thread

    def _drain_queue(self) -> None:
        from mlflow.entities import Metric

        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            kind = item[0]
            if kind == "metrics":
                _, values, step, ts = item
                self._metrics.extend(Metric(k, v, ts, step) for k, v in values.items())
            else:
                self._files.append(item)
        # Bound memory: the oldest points go to the spool file, in order.
        if len(self._metrics) > self._buffer_limit:
            with open(self._spool / "metrics.jsonl", "a") as f:
                while len(self._metrics) > self._buffer_limit // 2:
                    m = self._metrics.popleft()
                    f.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")
                    self._spilled += 1

    def _send_metrics(self) -> bool:
        """One log_batch of the oldest pending points (spooled ones first); False if it failed."""
        from mlflow.entities import Metric

        spool = self._spool / "metrics.jsonl"
        if self._spilled:
            lines = spool.read_text().splitlines()
            batch = [Metric(*json.loads(line)) for line in lines[:MAX_BATCH]]
        else:
            batch = [self._metrics.popleft() for _ in range(min(MAX_BATCH, len(self._metrics)))]
        if not batch:
            return True
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:
            if not self._spilled:
                self._metrics.extendleft(reversed(batch))
            log.debug("metrics not sent yet: %s", err)
            return False
        if self._spilled:
            rest = lines[MAX_BATCH:]
            spool.write_text("".join(line + "\n" for line in rest))
            self._spilled = len(rest)
        return True

    def _send_once(self) -> bool:
        """Send what is pending; False when the server failed (the pending items are kept)."""
        from mlflow.entities import RunTag

        self._drain_queue()
        while self._spilled or self._metrics:
            if not self._send_metrics():
                return False
        while self._files:
            item = self._files[0]
            try:
                if item[0] == "image":
                    self.client.log_image(self.run_id, item[1], key=item[2], step=item[3])
                elif item[0] == "artifact":
                    self.client.log_artifact(self.run_id, item[1], item[2])
                else:
                    self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in item[1].items()])
            except Exception as err:
                log.debug("file not sent yet: %s", err)
                return False
            self._files.popleft()
        return True

    def pending(self) -> int:
        return self._queue.qsize() + len(self._metrics) + self._spilled + len(self._files)

    def _run(self) -> None:
        backoff, down_since = 0.2, None
        while True:
            ok = self._send_once()
            if ok:
                if down_since is not None:
                    self.outage_seconds += time.monotonic() - down_since
                    down_since = None
                backoff = 0.2
                if not self.pending():
                    self._idle.set()
                    if self._stop.is_set():
                        return
                    # Sleep until something is enqueued (or stop): no polling while the loop trains.
                    self._wake.wait(1.0)
                    self._wake.clear()
                    # Then gather for a moment: a log point's metrics, validation and grid become one
                    # round of requests instead of several.
                    if self.pending():
                        self._hurry.wait(self._send_interval)
                    continue
            else:
                down_since = down_since or time.monotonic()
                backoff = min(backoff * 2, 5.0)
                time.sleep(backoff)
            self._idle.clear()

    # ------------------------------------------------------------------ ending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued so far is sent; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._hurry.set()
        try:
            while self.pending():
                self._idle.clear()
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self._idle.wait(0.2)
            return True
        finally:
            self._hurry.clear()

    def finish(self, status: str = "FINISHED", reason: Optional[str] = None, timeout: float | None = 600) -> bool:
        """Flush, then mark the run FINISHED, FAILED or KILLED (with ``reason`` as a tag)."""
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as err:
                log.warning("system metrics: %s", err)
        if reason:
            self.set_tags({"frontalab.status_reason": reason[:5000]})
        flushed = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._journal is not None:
            self._journal.close()
        self._thread.join(timeout=5)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.error("could not mark run %s %s: %s", self.run_id, status, err)
            return False
        return flushed


class NullTracker:
    """Tracking off: the same calls, nothing sent (the logging-overhead baseline)."""

    run_id = None
    outage_seconds = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: return True
    def finish(self, status: str = "FINISHED", reason: Optional[str] = None, timeout: float | None = 600) -> bool: return True
