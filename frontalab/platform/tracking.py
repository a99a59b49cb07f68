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

import importlib
import json
import logging
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

import numpy as np

from frontalab.config import TrackingConfig
from frontalab.paths import REPO_ROOT

log = logging.getLogger(__name__)

# Our own loop retries forever in the background; the client's per-request retries
# (7, with minutes of backoff by default) would only delay noticing the outage.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")  # land on the training-runs view
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
# Files from 5 MB (S3's smallest part) go straight to the bucket, through multipart URLs the
# tracking server presigns; proxied, each checkpoint's bytes would cost the server as much
# CPU again as the store. A server that cannot presign answers so, and MLflow proxies instead.
DIRECT_UPLOAD_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
                     "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(5 * 2**20)}
SENDER_START_TIMEOUT = 120  # seconds for the sender process to import MLflow and connect
_DEFAULTS = TrackingConfig()  # `Tracker.open`'s defaults are the config's


_IMAGE_FILE = re.compile(r"^(?P<key>.+)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%]")


def image_key_step(filename: str) -> tuple[str, int] | None:
    """(key, step) of an image logged by ``log_image(key=, step=)``, from its artifact file name."""
    m = _IMAGE_FILE.match(filename)
    return (m["key"], int(m["step"])) if m else None


UPLOADING = ".uploading"  # beside a logged file: links to the files the sender has yet to upload


def hold_for_upload(path: Path, artifact_path: str | None) -> Path:
    """A hard link to ``path`` (a copy where the file system has none) that the sender deletes once
    uploaded. So the owner may delete ``path`` meanwhile (the trainer prunes old checkpoints), and a
    file never sent (trial killed, server down at the end) stays on disk for a resumed run to send."""
    folder = path.parent / UPLOADING
    folder.mkdir(exist_ok=True)
    held = Path(tempfile.mkdtemp(dir=folder)) / (artifact_path or "") / path.name
    held.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, held)
    except OSError:
        shutil.copy2(path, held)
    return held


def held_uploads(folder: Path) -> list[tuple[Path, str | None]]:
    """The files `hold_for_upload` holds beside ``folder``'s files, with their artifact paths."""
    found = []
    for each in sorted((folder / UPLOADING).glob("*")):
        for file in sorted(f for f in each.rglob("*") if f.is_file()):
            artifact_path = file.parent.relative_to(each).as_posix()
            found.append((file, None if artifact_path == "." else artifact_path))
    return found


def release_upload(held: Path) -> None:
    """Delete an uploaded file held by `hold_for_upload`, and the folders made for it."""
    held.unlink(missing_ok=True)
    for folder in held.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty: other files are still held
            return
        if folder.name == UPLOADING:
            return


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


def _start_sender() -> tuple[subprocess.Popen, Connection]:
    """The sender process and our end of its socket; it waits for its settings."""
    ours, theirs = socket.socketpair()
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**DIRECT_UPLOAD_ENV, **os.environ,  # the user's settings win
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # A session of its own: Ctrl-C in the terminal interrupts the trial, which then finishes
    # its run through the sender; the sender must not die of the same SIGINT. Its output
    # (MLflow prints run links) goes to stderr: the trial's stdout may be a JSON result.
    process = subprocess.Popen([sys.executable, "-m", "frontalab.platform.tracking", str(theirs.fileno())],
                               pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2, env=env,
                               start_new_session=True)
    theirs.close()
    return process, Connection(ours.detach())


class Tracker:
    """The MLflow run of one trial, seen from the training loop. Create with `Tracker.open`;
    end with `finish`. Every ``log_*`` call returns at once: a feeder thread hands the item to
    the sender process over a socket."""

    def __init__(self, client, run_id: str, done_steps: dict[str, set[int]], process: subprocess.Popen,
                 conn: Connection):
        self.client, self.run_id = client, run_id
        self._done = done_steps  # (key -> steps) already in the run: a resumed run skips them
        self._journal = None  # local append-only copy of every metric point (see `_open_journal`)
        self._process, self._conn = process, conn
        if self._receive("ready", SENDER_START_TIMEOUT) is None:
            raise RuntimeError(f"the MLflow sender process did not start (exit code {process.poll()}); "
                               "its error is printed above")
        self._outbox: queue.Queue = queue.Queue()
        self._last_flush = 0  # token of the latest flush request
        self._feeder = threading.Thread(target=self._feed, name="mlflow-tracker-feed", daemon=True)
        self._feeder.start()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, *, experiment: str, run_name: str = "", params: dict[str, Any] | None = None,
             tags: dict[str, str] | None = None, resume_run_id: str | None = None,
             parent_run_id: str | None = None, system_metrics: bool = _DEFAULTS.system_metrics,
             buffer_limit: int = _DEFAULTS.buffer_limit, send_interval: float = _DEFAULTS.send_interval,
             journal: Path | None = None, resume_step: int = 0) -> "Tracker":
        import mlflow
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        process, conn = _start_sender()  # it imports MLflow while we open the run
        try:
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
            conn.send({"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri(), "buffer_limit": buffer_limit,
                       "send_interval": send_interval, "system_metrics": system_metrics})
            tracker = cls(client, run_id, done, process, conn)
        except BaseException:  # the run could not be opened: no sender without a run
            process.kill()
            conn.close()
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
            for line in path.read_text().splitlines():
                try:
                    key, value, timestamp, step = json.loads(line)
                except ValueError:  # the line the kill cut short
                    continue
                if step <= resume_step:
                    kept.append(line + "\n")
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
        """Pickle and write each item to the sender; the write waits on the socket without the GIL."""
        sender_alive = True
        while (item := self._outbox.get()) is not None:
            if not sender_alive:
                continue  # dropped, so that memory stays bounded; the journal keeps the metrics
            try:
                self._conn.send(item)
            except OSError:
                sender_alive = False
                log.error("the MLflow sender process died (exit code %s): run %s misses what was logged after; "
                          "the metrics are still in the journal beside the checkpoints",
                          self._process.poll(), self.run_id)

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
            except (EOFError, OSError):
                return None
            if self._process.poll() is not None:
                return None
        return None

    # ------------------------------------------------------------------ ending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far is in MLflow; False if ``timeout`` passed first."""
        self._last_flush += 1
        self._outbox.put(("flush", self._last_flush))
        return self._receive("flushed", timeout, self._last_flush) is not None

    def finish(self, status: str = "FINISHED", reason: Optional[str] = None, timeout: float | None = 600) -> bool:
        """Send everything, then mark the run FINISHED, FAILED or KILLED (with ``reason`` as a tag).
        False if the server stayed unreachable for ``timeout`` seconds or the sender died."""
        if reason:
            self.set_tags({"frontalab.status_reason": reason[:5000]})
        self._outbox.put(("finish", status, timeout))
        # The sender gives up sending at ``timeout``; then one more request marks the run.
        reply = self._receive("finished", None if timeout is None else timeout + 30)
        self._outbox.put(None)
        self._feeder.join(timeout=5)
        if self._journal is not None:
            self._journal.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._conn.close()
        if reply is None:  # the sender died (or timed out): mark the run from here, and say so
            log.error("run %s: the MLflow sender ended without finishing the run", self.run_id)
            try:
                self.client.set_tag(self.run_id, "frontalab.tracking_incomplete",
                                    "the MLflow sender process ended before the run did: points logged after are "
                                    "missing here (every metric point is in metrics.jsonl beside the checkpoints)")
                self.client.set_terminated(self.run_id, status=status)
            except Exception as err:
                log.error("could not mark run %s %s: %s", self.run_id, status, err)
            return False
        return reply[1]


class NullTracker:
    """Tracking off: the same calls, nothing sent (the logging-overhead baseline)."""

    run_id = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: return True
    def finish(self, status: str = "FINISHED", reason: Optional[str] = None, timeout: float | None = 600) -> bool: return True


# ---------------------------------------------------------------------- the sender process

class Sender:
    """Sends one run's points to MLflow in batches and retries through outages. It reads
    items from the trial over ``conn``; ``flush`` and ``finish`` items are answered once
    everything before them is sent."""

    def __init__(self, conn: Connection, run_id: str, tracking_uri: str, buffer_limit: int,
                 send_interval: float, system_metrics: bool):
        from mlflow import MlflowClient

        self.conn, self.run_id = conn, run_id
        self.client = MlflowClient(tracking_uri)
        self._buffer_limit = buffer_limit
        self._send_interval = send_interval
        self._spool = Path(tempfile.mkdtemp(prefix=f"mlflow-{run_id[:8]}-"))
        self._inbox: queue.Queue = queue.Queue()  # filled from the socket by `_read`, so it never backs up
        self._metrics: deque = deque()  # Metric entities waiting to be sent
        self._spilled = 0  # metric points waiting in the spool file
        self._files: deque = deque()  # ("image" | "artifact" | "tags", args) waiting to be sent
        self._flushes: list[int] = []  # flush tokens to answer once nothing is pending
        self._finish: tuple[str, float] | None = None  # (status, deadline) once the trial finished
        self._monitor = self._start_system_metrics(tracking_uri) if system_metrics else None
        threading.Thread(target=self._read, name="read-trial", daemon=True).start()

    def _start_system_metrics(self, tracking_uri: str):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1,
                                           tracking_uri=tracking_uri)
            monitor.start()
            return monitor
        except Exception as err:  # psutil missing or an unsupported platform: track on
            log.warning("system metrics off: %s", err)
            return None

    def _read(self) -> None:
        while True:
            try:
                self._inbox.put(self.conn.recv())
            except (EOFError, OSError):
                # The trial process is gone without finishing: it was killed. Send nothing more:
                # its journal holds every point, and a resumed run sends those that never
                # arrived, while anything sent from here after that could duplicate a step.
                # Nothing reads the spool after this process: it goes too.
                shutil.rmtree(self._spool, ignore_errors=True)
                os._exit(0)

    # ------------------------------------------------------------------ taking items in

    def _take(self, item: tuple) -> None:
        from mlflow.entities import Metric

        kind = item[0]
        if kind == "metrics":
            _, values, step, ts = item
            self._metrics.extend(Metric(k, v, ts, step) for k, v in values.items())
        elif kind == "flush":
            self._flushes.append(item[1])
        elif kind == "finish":
            _, status, timeout = item
            self._finish = (status, float("inf") if timeout is None else time.monotonic() + timeout)
            if self._monitor is not None:  # its last samples go out before the run ends
                self._monitor.finish()
                self._monitor = None
        else:
            self._files.append(item)

    def _take_waiting(self) -> None:
        while True:
            try:
                self._take(self._inbox.get_nowait())
            except queue.Empty:
                break
        # Bound memory: the oldest points go to the spool file, in order.
        if len(self._metrics) > self._buffer_limit:
            with open(self._spool / "metrics.jsonl", "a") as f:
                while len(self._metrics) > self._buffer_limit // 2:
                    m = self._metrics.popleft()
                    f.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")
                    self._spilled += 1

    def _take_for(self, seconds: float) -> None:
        """Take items for ``seconds``, or until one asks for an answer (flush, finish)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._inbox.get(timeout=left)
            except queue.Empty:
                return
            self._take(item)
            if item[0] in ("flush", "finish"):
                return

    def _pending(self) -> bool:
        return bool(self._metrics or self._spilled or self._files)

    # ------------------------------------------------------------------ sending

    def _send_metrics(self) -> None:
        """One log_batch of the oldest pending points (spooled ones first)."""
        from mlflow.entities import Metric

        spool = self._spool / "metrics.jsonl"
        if self._spilled:
            lines = spool.read_text().splitlines()
            self.client.log_batch(self.run_id, metrics=[Metric(*json.loads(line)) for line in lines[:MAX_BATCH]])
            rest = lines[MAX_BATCH:]
            spool.write_text("".join(line + "\n" for line in rest))
            self._spilled = len(rest)
            return
        batch = [self._metrics.popleft() for _ in range(min(MAX_BATCH, len(self._metrics)))]
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception:
            self._metrics.extendleft(reversed(batch))
            raise

    def _send_file(self, item: tuple) -> None:
        from mlflow.entities import RunTag

        if item[0] == "image":
            self.client.log_image(self.run_id, item[1], key=item[2], step=item[3])
        elif item[0] == "artifact":
            try:
                self.client.log_artifact(self.run_id, item[1], item[2])
            except Exception as err:
                if os.environ.get("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD") != "true" or not self._server_up():
                    raise  # retried by `run`
                # The presigned URLs name the bucket's endpoint as the server sees it, which
                # this node may not reach: through the server, now and from now on.
                log.warning("run %s: direct upload to the bucket failed (%s); uploading through the "
                            "tracking server instead", self.run_id, str(err)[:200])
                os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] = "false"
                self.client.log_artifact(self.run_id, item[1], item[2])
            release_upload(Path(item[1]))
        else:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in item[1].items()])

    def _server_up(self) -> bool:
        try:
            self.client.get_run(self.run_id)
            return True
        except Exception:
            return False

    def _send_pending(self) -> None:
        """Send everything taken in so far, oldest first; raises if the server fails (nothing is lost)."""
        self._take_waiting()
        while self._spilled or self._metrics:
            self._send_metrics()
        while self._files:
            self._send_file(self._files[0])
            self._files.popleft()

    def run(self) -> None:
        self.conn.send(("ready",))
        backoff, down_since = 0.2, None
        while True:
            try:
                self._send_pending()
            except Exception as err:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("run %s: tracking server unreachable (%s); buffering and retrying", self.run_id, err)
                if self._finish is not None and time.monotonic() > self._finish[1]:
                    return self._end(flushed=False)
                self._take_for(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if down_since is not None:
                log.warning("run %s: tracking server back after %.0f s; everything buffered is sent",
                            self.run_id, time.monotonic() - down_since)
                backoff, down_since = 0.2, None
            if self._pending():
                continue
            for token in self._flushes:
                self.conn.send(("flushed", token))
            self._flushes.clear()
            if self._finish is not None:
                return self._end(flushed=True)
            # Sleep until the trial logs something, then gather for a moment: a log point's
            # metrics, validation and grid become one round of requests instead of several.
            self._take(self._inbox.get())
            if not self._flushes and self._finish is None:
                self._take_for(self._send_interval)

    def _end(self, flushed: bool) -> None:
        try:
            self.client.set_terminated(self.run_id, status=self._finish[0])
        except Exception as err:
            log.error("could not mark run %s %s: %s", self.run_id, self._finish[0], err)
            flushed = False
        if flushed:
            shutil.rmtree(self._spool, ignore_errors=True)
        self.conn.send(("finished", flushed))


def _sender_main(fd: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s frontalab tracking sender: %(message)s")
    importlib.import_module("mlflow.system_metrics.system_metrics_monitor")  # while the trial opens its run

    conn = Connection(fd)
    Sender(conn, **conn.recv()).run()
    # Everything is sent and the run is marked: skip the half second of interpreter teardown
    # (MLflow's modules) that the trial would otherwise wait for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _sender_main(int(sys.argv[1]))
