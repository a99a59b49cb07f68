"""A trial's training batches, streamed from a prepared dataset's shards in bounded memory.

Each epoch visits the shards in a seeded order, ``window`` shards at a time. A window's kept rows
are read through the bounded local cache, decoded into stacked tensors and shuffled with a seed of
their own; a batch is the next ``batch_size`` rows of that stream, across windows and epochs. So the
stream's position (epoch, window, offset) fixes every later batch, and a run resumed from a
checkpoint sees the batches the uninterrupted run would have seen.

In a data-parallel trial every worker follows the same stream and keeps its ``rank``'s part of each batch:
``batch_size`` is the whole batch, split in ``workers`` equal parts in rank order. So every epoch is dealt out
with no gaps and no repeats, and the stream's position, the same on every worker, still fixes every batch.

Why one process with threads, and not Ray Data's ``iter_torch_batches`` or a DataLoader's worker
processes: exact resume needs the batch sequence to be a pure function of (seed, position), and
both interleave their workers' output by timing. The only heavy work is decoding, and Pillow releases
the GIL for it, so threads decode in parallel. A background thread reads the next window while this
one is consumed, and assembles batches ahead, pinned for a GPU: memory holds at most two windows and
``prefetch`` batches, and start-up reads one window, whatever the dataset's size.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from frontalab.data.dataset import Rows, no_faces, read_manifest, read_rows, read_table, shards_of
from frontalab.sections import ConfigError


class Position(NamedTuple):
    epoch: int
    window: int
    offset: int  # rows of that window already handed out


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = value * 1_000_003 + part
    return value % (2**63)


class ShardStream:
    def __init__(self, uri: str, split: str, encoder: str, image_size: int, batch_size: int, seed: int,
                 window: int = 8, threads: int = 1, prefetch: int = 2, cache_bytes: int = 0,
                 pin: bool = False, rank: int = 0, workers: int = 1):
        self.uri, self.split, self.encoder, self.seed = uri, split, encoder, seed
        self.manifest = read_manifest(uri, encoder)
        self.prepared = self.manifest["image"]["size"]
        self.image_size = image_size or self.prepared
        self.shards = shards_of(self.manifest, split)
        if not self.manifest["split"][split]:
            raise no_faces(uri, split)
        morphs = self.manifest.get("morphs", {}).get("count", 0) if split == "train" else 0
        # A set smaller than a batch still trains, on fixed shapes.
        self.batch_size = min(batch_size, self.manifest["split"][split] + morphs)
        if self.batch_size % workers:
            raise ConfigError(f"train.batch_size={self.batch_size} (the whole batch) does not split evenly over "
                              f"resources.workers={workers}")
        share = self.batch_size // workers
        self.share = slice(rank * share, (rank + 1) * share)  # this worker's rows of every batch
        self.window = max(1, min(window, len(self.shards)))
        self.windows_per_epoch = -(-len(self.shards) // self.window)
        self.threads, self.prefetch, self.cache_bytes, self.pin = threads, prefetch, cache_bytes, pin
        self.position = Position(0, 0, 0)
        self._producer: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._batches: queue.Queue = queue.Queue(maxsize=prefetch)

    # -- the order --------------------------------------------------------------------------------
    def window_shards(self, epoch: int, window: int) -> list[str]:
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(_seed(self.seed, epoch)))
        return [self.shards[i] for i in order[window * self.window:(window + 1) * self.window]]

    def load_window(self, epoch: int, window: int, phase: int = 0) -> tuple[Rows, torch.Tensor]:
        """A window's rows in source order, and the shuffled order they are handed out in (batches gather
        by it, so no shuffled copy of the window is ever held).

        ``phase``: the place in its batch of the window's first row handed out. A worker decodes only the rows that
        fall in its share of their batches (a lone worker's share is the whole batch); the others' images stay zero,
        never handed out.
        """
        generator = torch.Generator().manual_seed(_seed(self.seed, epoch, window + 1))
        order: list[torch.Tensor] = []

        def own_rows(count: int) -> np.ndarray:
            order.append(torch.randperm(count, generator=generator))
            place = (phase + torch.arange(count)) % self.batch_size
            mine = np.zeros(count, bool)
            mine[order[0][(place >= self.share.start) & (place < self.share.stop)].numpy()] = True
            return mine

        rows = read_rows(self.uri, self.window_shards(epoch, window), self.split, self.encoder, self.image_size,
                         self.prepared, self.threads, cache_bytes=self.cache_bytes,
                         decoded=own_rows)
        return rows, order[0]

    def _following(self, epoch: int, window: int) -> tuple[int, int]:
        return (epoch, window + 1) if window + 1 < self.windows_per_epoch else (epoch + 1, 0)

    # -- the background producer ------------------------------------------------------------------
    def _produce(self, start: Position) -> None:
        reader = ThreadPoolExecutor(1)  # reads and decodes the next window meanwhile
        try:
            epoch, window, offset = start
            phase = -offset % self.batch_size  # of the window's first row: a position starts a batch
            rows, order = self.load_window(epoch, window, phase)
            phase = (phase + len(rows)) % self.batch_size  # of the next window's first row
            upcoming: Future = reader.submit(self.load_window, *self._following(epoch, window), phase)
            empty_windows = 0
            while not self._stop.is_set():
                parts, need, start = [], self.batch_size, 0
                while need:
                    if offset >= len(rows):
                        empty_windows = empty_windows + 1 if not len(rows) else 0
                        if empty_windows > self.windows_per_epoch:  # guards a manifest that lies
                            raise ValueError(f"{self.uri}: no {self.split!r} rows in any shard")
                        epoch, window = self._following(epoch, window)
                        (rows, order), offset = upcoming.result(), 0
                        phase = (phase + len(rows)) % self.batch_size
                        upcoming = reader.submit(self.load_window, *self._following(epoch, window), phase)
                        continue
                    take = min(need, len(rows) - offset)
                    lo, hi = max(self.share.start - start, 0), min(self.share.stop - start, take)
                    if lo < hi:  # a copy of this worker's rows: no view keeps a window alive
                        parts.append(rows.take(order[offset + lo:offset + hi]))
                    offset, need, start = offset + take, need - take, start + take
                batch = Rows.concat(parts)
                self._put((batch.pinned() if self.pin else batch, Position(epoch, window, offset)))
        except BaseException as err:  # handed to the consumer, which raises it in the training loop
            self._put((err, None))
        finally:
            reader.shutdown(wait=False, cancel_futures=True)  # `close` need not wait for a window's read

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The next training batch on ``device``; the stream's position moves past it."""
        if self._producer is None:
            self._stop.clear()
            self._producer = threading.Thread(target=self._produce, args=(self.position,), daemon=True,
                                              name=f"stream-{self.split}")
            self._producer.start()
        batch, position = self._batches.get()
        if isinstance(batch, BaseException):
            self.close()
            raise batch
        self.position = position
        return batch.to_batch(device)

    def close(self) -> None:
        """Stop the producer; the next `next` restarts it from the current position."""
        if self._producer is not None:
            self._stop.set()
            self._producer.join()
            self._producer = None
            self._batches = queue.Queue(maxsize=self.prefetch)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return self.position._asdict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.position = Position(state["epoch"], state["window"], state["offset"])


def feature_sample(uri: str, split: str, encoder: str, count: int) -> torch.Tensor:
    """The cached features of about ``count`` of ``split``'s kept rows, from shards spread evenly over the
    dataset (shards follow the source's sorted names, which may group like with like): enough to
    standardise them, at a cost that does not grow with the dataset (no images are read)."""
    manifest = read_manifest(uri, encoder)
    shards = shards_of(manifest, split)
    per_shard = max(1, manifest["split"][split] // max(1, len(manifest["shards"])))
    needed = min(len(shards), -(-count // per_shard))
    picked = sorted(set(np.linspace(0, len(shards) - 1, needed).round().astype(int).tolist()))
    picked += [i for i in range(len(shards)) if i not in picked]  # the rest, should those hold too few
    column, tables, found = f"features_{encoder}", [], 0
    for shard in [shards[i] for i in picked]:
        if found >= count:
            break
        tables.append(read_table(uri, shard, split, ["index", column]))
        found += len(tables[-1])
    vectors = [np.frombuffer(b, np.float32) for table in tables for b in table[column]][:count]
    if not vectors:
        raise no_faces(uri, split)
    return torch.from_numpy(np.stack(vectors))


def first_rows(uri: str, split: str, encoder: str, image_size: int, count: int) -> Rows:
    """The first ``count`` kept rows of ``split`` in source order, read from as few shards as hold them: a
    trial's fixed validation batch."""
    manifest = read_manifest(uri, encoder)
    rows = read_rows(uri, shards_of(manifest, split), split, encoder, image_size or manifest["image"]["size"],
                     manifest["image"]["size"], limit=count)
    if not len(rows):
        raise no_faces(uri, split)
    return rows
