"""The sender process of one trial's run: batches the points the training loop enqueues, sends them to
MLflow, and retries through outages (see `frontalab.tracking.tracker`). Started by the tracker as
``python -m frontalab.tracking.sender FD``."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from frontalab.storage import write_bytes_atomic
from frontalab.tracking.uploads import release_upload
from frontalab.verbosity import quiet_libraries

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


def spill_oldest(metrics: deque, count: int, spool: Path) -> None:
    """Append the ``count`` oldest points of ``metrics`` to ``spool``, then drop them from memory: they leave
    only once the file holds them. A failed write (a full disk) raises OSError with both as they were."""
    size = spool.stat().st_size if spool.exists() else 0
    lines = "".join(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n" for m in itertools.islice(metrics, count))
    try:
        with open(spool, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):  # a torn last line would garble the next append
            os.truncate(spool, size)
        raise
    for _ in range(count):
        metrics.popleft()


class Sender:
    """Sends one run's points to MLflow in batches and retries through outages. It reads
    items from the trial over ``conn``; ``flush`` and ``finish`` items are answered once
    everything before them is sent."""

    def __init__(self, conn: Connection, run_id: str, tracking_uri: str, buffer_limit: int,
                 send_interval: float, system_metrics: bool):
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
            # deferred: inside the try, since it fails without psutil (the run is then tracked without)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1,
                                           tracking_uri=tracking_uri)
            monitor.start()
            return monitor
        except Exception as err:  # psutil missing or an unsupported platform: track on
            log.warning("system metrics off: %s", err)
            return None

    def _read(self) -> None:
        finishing = False
        while True:
            try:
                item = self.conn.recv()
                finishing = finishing or item[0] == "finish"
                self._inbox.put(item)
            except (EOFError, OSError):
                if finishing:  # the trial asked to finish, then went: finish its run, as it asked
                    return
                # The trial process is gone without finishing: it was killed. Send nothing more:
                # its journal holds every point, and a resumed run sends those that never
                # arrived, while anything sent from here after that could duplicate a step.
                # Nothing reads the spool after this process: it goes too.
                shutil.rmtree(self._spool, ignore_errors=True)
                os._exit(0)

    # ------------------------------------------------------------------ taking items in

    def _take(self, item: tuple) -> None:
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
            count = len(self._metrics) - self._buffer_limit // 2
            try:
                spill_oldest(self._metrics, count, self._spool / "metrics.jsonl")
                self._spilled += count
            except OSError as err:
                log.error("run %s: could not spill %d points to %s (%s); they stay in memory", self.run_id, count,
                          self._spool, err)

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
        spool = self._spool / "metrics.jsonl"
        if self._spilled:
            lines = spool.read_text().splitlines()
            self.client.log_batch(self.run_id, metrics=[Metric(*json.loads(line)) for line in lines[:MAX_BATCH]])
            rest = lines[MAX_BATCH:]
            # Sent: the spool loses those lines (by a whole new file: a failed write leaves the old one, whose
            # first lines MLflow then drops as duplicates).
            write_bytes_atomic(str(spool), "".join(line + "\n" for line in rest).encode())
            self._spilled = len(rest)
            return
        batch = [self._metrics.popleft() for _ in range(min(MAX_BATCH, len(self._metrics)))]
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception:
            self._metrics.extendleft(reversed(batch))
            raise

    def _send_file(self, item: tuple) -> None:
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
        self.conn.send(("ready", os.getpid()))
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
        with contextlib.suppress(OSError):  # a trial that went after asking to finish hears nothing
            self.conn.send(("finished", flushed))


def _sender_main(fd: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s frontalab tracking sender: %(message)s")
    quiet_libraries()
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
