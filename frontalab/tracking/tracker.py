"""MLflow tracking of one trial: batched, asynchronous, and lossless through server outages.

The training loop only enqueues. A separate *sender process* talks to MLflow: its HTTP and
protobuf work would otherwise hold the trial's GIL between the torch ops of the steps it
overlaps, and slow them by several times its own CPU. When the tracking server is
unreachable, points stay buffered in the sender (in memory up to a bound, then on disk) and
are retried until it is back; the loop never waits for the network. Each metric point gets
its timestamp when it is enqueued, so a retried batch is an exact duplicate, which MLflow's
store drops: every (key, step) lands once. The loop also appends every point to a journal
beside its checkpoints: if the trial process is killed, its sender stops at once, and the
resumed run sends the journalled steps that never arrived (and skips those that did).
Files to upload (checkpoints) are hard-linked for the sender, which deletes its link once the
upload succeeds: the loop may prune its own copies, and what was never sent is resent likewise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

import numpy as np

from frontalab import storage
from frontalab.naming import PARENT_RUN_TAG, TRACKING_INCOMPLETE_TAG
from frontalab.sections import TrackingConfig
from frontalab.tracking.outcome import FINISHED, RUNNING
from frontalab.tracking.store import client as store_client, create_run, experiment_id
from frontalab.tracking.uploads import held_uploads, hold_for_upload, image_key_step, release_upload

log = logging.getLogger(__name__)

SENDER_MODULE = "frontalab.tracking.sender"  # run as ``python -m`` in a process of its own

# Files from 5 MB (S3's smallest part) go straight to the bucket, through multipart URLs the
# tracking server presigns; proxied, each checkpoint's bytes would cost the server as much
# CPU again as the store. A server that cannot presign answers so, and MLflow proxies instead.
DIRECT_UPLOAD_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
                     "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(5 * 2**20)}


SENDER_START_TIMEOUT = 120  # seconds for the sender process to import MLflow and connect


_DEFAULTS = TrackingConfig()  # `Tracker.open`'s defaults are the config's


# Starts the sender in a session of its own and exits: the sender is the trial's grandchild. Ray kills a worker's
# direct children when the worker exits (RAY_kill_child_processes_on_worker_exit, on by default), and Tune lets a
# trial stopped by its scheduler exit without waiting for the trial's thread (FunctionTrainable.cleanup), so a
# child sender died in the middle of most such trials' `finish`. The sender ends by itself once the trial's socket
# closes, so nothing outlives its trial.
_LAUNCH = ("import subprocess, sys; fd, module, *rest = sys.argv[1:]; "
           "subprocess.Popen([sys.executable, '-m', module, fd, *rest], pass_fds=(int(fd),), "
           "stdin=subprocess.DEVNULL, stdout=2, start_new_session=True)")


def _start_sender() -> Connection:
    """Our end of the socket of a new sender process, which waits for its settings."""
    ours, theirs = socket.socketpair()
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**DIRECT_UPLOAD_ENV, **os.environ,  # the user's settings win
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # A session of its own: Ctrl-C in the terminal interrupts the trial, which then finishes
    # its run through the sender; the sender must not die of the same SIGINT. Its output
    # (MLflow prints run links) goes to stderr: the trial's stdout may be a JSON result.
    subprocess.run([sys.executable, "-c", _LAUNCH, str(theirs.fileno()), SENDER_MODULE, f"--trial={os.getpid()}"],
                   pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2, env=env, check=True)
    theirs.close()
    return Connection(ours.detach())


def _kill(pid: Optional[int]) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def read_journal(path: Path) -> list[tuple[str, float, int, int]]:
    """The (key, value, timestamp, step) points of a journal, less a last line a kill cut short."""
    points = []
    for line in path.read_text().splitlines():
        try:
            points.append(tuple(json.loads(line)))
        except ValueError:  # the line the kill cut short
            continue
    return points


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


class Tracker:
    """The MLflow run of one trial, seen from the training loop. Create with `Tracker.open`;
    end with `finish`. Every ``log_*`` call returns at once: a feeder thread hands the item to
    the sender process over a socket."""

    def __init__(self, client, run_id: str, done_steps: dict[str, set[int]], conn: Connection):
        self.client, self.run_id = client, run_id
        self._done = done_steps  # (key -> steps) already in the run: a resumed run skips them
        self._journal = None  # local append-only copy of every metric point (see `_open_journal`)
        self._conn = conn
        ready = self._receive("ready", SENDER_START_TIMEOUT)
        if ready is None:
            raise RuntimeError("the MLflow sender process did not start; its error is printed above")
        self.sender_pid: int = ready[1]
        self._outbox: queue.Queue = queue.Queue()
        self._undelivered: list[str] = []  # what could not be sent once the sender was gone
        self.delivered: Optional[bool] = None  # after `finish`: whether everything reached MLflow
        self._last_flush = 0  # token of the latest flush request
        self._feeder = threading.Thread(target=self._feed, name="mlflow-tracker-feed", daemon=True)
        self._feeder.start()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, *, experiment: str, run_name: str = "", params: dict[str, Any] | None = None,
             tags: dict[str, str] | None = None, resume_run_id: str | None = None,
             parent_run_id: str | None = None, system_metrics: bool = _DEFAULTS.system_metrics,
             buffer_limit: int = _DEFAULTS.buffer_limit, send_interval: float = _DEFAULTS.send_interval,
             journal: Path | None = None, resume_step: int = 0, source: str = "") -> "Tracker":
        # deferred: MLflow takes seconds to import; a trial without tracking never needs it
        import mlflow
        from mlflow.entities import Param, RunTag

        conn = _start_sender()  # it imports MLflow while we open the run
        try:
            client = store_client()
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
                client.update_run(run_id, status=RUNNING)
            else:
                all_tags = dict(tags or {})
                if parent_run_id:
                    all_tags[PARENT_RUN_TAG] = parent_run_id
                run = create_run(client, experiment_id(client, experiment), run_name, all_tags, source)
                run_id = run.info.run_id
                items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
                for i in range(0, len(items), 100):
                    client.log_batch(run_id, params=items[i:i + 100])
            if resume_run_id and tags:
                client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            conn.send({"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri(), "buffer_limit": buffer_limit,
                       "send_interval": send_interval, "system_metrics": system_metrics})
            tracker = cls(client, run_id, done, conn)
        except BaseException:  # the run could not be opened: no sender without a run
            conn.close()  # the sender ends when its socket closes
            raise
        if journal is not None:
            tracker._open_journal(Path(journal), resume_step if resume_run_id else None)
            if resume_run_id:  # files the killed run's sender never sent: send them now
                for held, artifact_path in held_uploads(Path(journal).parent):
                    tracker._outbox.put(("artifact", str(held), artifact_path))
        return tracker

    def _open_journal(self, path: Path, resume_step: int | None) -> None:
        """Every metric point the loop logs is appended to ``path`` (beside the checkpoints) before it
        is sent, so a process killed outright loses none: when its run resumes from the checkpoint at
        ``resume_step``, the journal's points up to that step that never reached the server are sent
        now. Later points are dropped: the resumed loop logs those steps again."""
        kept = []
        if resume_step is not None and path.exists():
            for key, value, timestamp, step in read_journal(path):
                if step <= resume_step:
                    kept.append(json.dumps([key, value, timestamp, step]) + "\n")
                    if step not in self._done.get(key, ()):
                        self._outbox.put(("metrics", {key: value}, step, timestamp))
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
            self._outbox.put(("metrics", fresh, step, now))

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        if step in self._done.get(f"image:{key}", ()):
            return
        self._outbox.put(("image", np.asarray(image).copy(), key, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload ``path`` later; the caller may delete or replace it at once (see `hold_for_upload`)."""
        self._outbox.put(("artifact", str(hold_for_upload(Path(path), artifact_path)), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._outbox.put(("tags", {k: str(v) for k, v in tags.items()}))

    def _feed(self) -> None:
        """Pickle and write each item to the sender; the write waits on the socket without the GIL. If the
        sender dies, this thread sends the items itself from then on (slower, but nothing is dropped)."""
        sender_alive = True
        while (item := self._outbox.get()) is not None:
            if sender_alive:
                try:
                    self._conn.send(item)
                    continue
                except OSError:
                    sender_alive = False
                    log.error("the MLflow sender process died: run %s is sent from the trial process from now on",
                              self.run_id)
            self._send_directly(item)

    def _send_directly(self, item: tuple) -> None:
        """Send one item with this process's client; what fails is counted as undelivered."""
        # deferred: MLflow's entities, imported already by `open`
        from mlflow.entities import Metric, RunTag

        kind = item[0]
        try:
            if kind == "metrics":
                _, values, step, timestamp = item
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, timestamp, step) for k, v in values.items()])
            elif kind == "image":
                self.client.log_image(self.run_id, item[1], key=item[2], step=item[3])
            elif kind == "artifact":
                self.client.log_artifact(self.run_id, item[1], item[2])
                release_upload(Path(item[1]))
            elif kind == "tags":
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in item[1].items()])
        except Exception as err:  # the server is down too: the journal and held files keep the record
            self._undelivered.append(f"{kind}: {first_line(err)}")

    def _receive(self, kind: str, timeout: float | None, token: int | None = None) -> tuple | None:
        """The sender's next reply of ``kind`` (and ``token``); None on timeout or if it died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                if self._conn.poll(0.2):
                    reply = self._conn.recv()
                    if reply[0] == kind and (token is None or reply[1] == token):
                        return reply
                    continue  # a reply to an earlier flush that timed out
            except (EOFError, OSError):  # the sender is gone: its end of the socket closed
                return None
        return None

    # ------------------------------------------------------------------ ending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far is in MLflow; False if ``timeout`` passed first."""
        self._last_flush += 1
        self._outbox.put(("flush", self._last_flush))
        return self._receive("flushed", timeout, self._last_flush) is not None

    def log_training_inputs(self, config_yaml: str, dataset_uri: str, dataset_hash: str) -> None:
        """A new trial run's full resolved config (``config.yaml``; its params hold only the keys that shape
        training) and its prepared dataset as MLflow's dataset input: the hash as digest, the URI as source."""
        from mlflow.entities import Dataset, DatasetInput, InputTag  # deferred: imported already by `open`

        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        dataset = Dataset(name=dataset_uri.rstrip("/").rsplit("/", 1)[-1], digest=dataset_hash,
                          source_type="s3" if storage.is_s3(dataset_uri) else "local",
                          source=json.dumps({"uri": dataset_uri}))
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                                             "training")])])

    def finish(self, status: str = FINISHED, timeout: float | None = 600) -> bool:
        """Send everything, then mark the run FINISHED, FAILED or KILLED (its reason is a tag set before:
        `frontalab.tracking.outcome`). False if the server stayed unreachable for ``timeout`` seconds or the
        sender died."""
        self._outbox.put(("finish", status, timeout))
        # The sender gives up sending at ``timeout``; then one more request marks the run.
        reply = self._receive("finished", None if timeout is None else timeout + 30)
        self._outbox.put(None)
        self._feeder.join(timeout=None if reply is None else 5)  # a dead sender's items go out from here
        if self._journal is not None:
            self._journal.close()
        if reply is None:  # dead, or stuck past its timeout: it must not send after the trial does
            _kill(self.sender_pid)
        self._conn.close()
        if reply is None:  # the sender died: deliver and mark the run from here
            log.error("run %s: the MLflow sender ended before the run; sending its record from the trial", self.run_id)
            self.delivered = self._deliver_record(status)
        else:
            self.delivered = reply[1]
        if not self.delivered and self._journal is not None:
            log.error("run %s: not every point reached MLflow; every metric point is in %s", self.run_id,
                      self._journal.name)
        return self.delivered

    def _deliver_record(self, status: str) -> bool:
        """After the sender: every journalled point again (MLflow drops the exact duplicates of those that
        arrived), every file still held for upload, then the end status. False, with a tag naming where the
        record is, if any of it could not be delivered."""
        from mlflow.entities import Metric  # deferred: imported already by `open`

        points = [Metric(*point) for point in read_journal(Path(self._journal.name))] if self._journal else []
        try:
            for i in range(0, len(points), 1000):  # MLflow's limit per log_batch
                self.client.log_batch(self.run_id, metrics=points[i:i + 1000])
            if self._journal is not None:
                for held, artifact_path in held_uploads(Path(self._journal.name).parent):
                    self.client.log_artifact(self.run_id, str(held), artifact_path)
                    release_upload(held)
        except Exception as err:
            self._undelivered.append(f"record: {first_line(err)}")
        if self._undelivered:
            where = f"{self._journal.name} on {socket.gethostname()}" if self._journal is not None else "nowhere"
            try:
                self.client.log_artifact(self.run_id, self._journal.name, "tracking")
                where = "this run's artifact tracking/metrics.jsonl"
            except Exception:
                pass
            reason = (f"{len(self._undelivered)} tracking calls failed after the MLflow sender ended "
                      f"({self._undelivered[0]}); every metric point is in {where}")
            log.error("run %s: %s", self.run_id, reason)
        try:
            if self._undelivered:
                self.client.set_tag(self.run_id, TRACKING_INCOMPLETE_TAG, reason)
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.error("could not mark run %s %s: %s", self.run_id, status, err)
            return False
        return not self._undelivered


class NullTracker:
    """Tracking off: the same calls, nothing sent (the logging-overhead baseline)."""

    run_id = None
    delivered = True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: return True
    def finish(self, status: str = FINISHED, timeout: float | None = 600) -> bool: return True
