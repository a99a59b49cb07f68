"""Streamed training batches: every face once per epoch, batches mixed across shards, exact resume from a
position, a validation batch that is the dataset's first faces, and a local cache that keeps to its bound."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch


def reshard(dataset: Path, out: Path, rows_per_shard: int) -> Path:
    """``dataset`` rewritten as shards of ``rows_per_shard`` rows (same rows, same manifest otherwise)."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    table = pq.read_table(dataset / manifest["shards"][0])
    out.mkdir()
    names = []
    for i, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        names.append(f"shard-{i:05d}.parquet")
        pq.write_table(table.slice(start, rows_per_shard), out / names[-1])
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": names}))
    return out


@pytest.fixture(scope="module")
def sharded(small_dataset, tmp_path_factory) -> Path:
    return reshard(small_dataset, tmp_path_factory.mktemp("sharded") / "faces", 8)


def stream(dataset: Path, **kw):
    from frontalab.data.stream import ShardStream

    args = dict(split="train", encoder="dlib-resnet", image_size=32, batch_size=5, seed=3, window=2)
    return ShardStream(str(dataset), **{**args, **kw})


def indices(s, batches: int) -> list[list[int]]:
    return [s.next(torch.device("cpu"))["index"].tolist() for _ in range(batches)]


def test_every_training_face_comes_once_per_epoch_mixed_across_shards(sharded):
    s = stream(sharded, batch_size=1)
    train = s.manifest["split"]["train"]
    first_epoch = [i for [i] in indices(s, train)]
    assert len(set(first_epoch)) == train  # each once: a permutation of the split
    assert first_epoch != sorted(first_epoch)
    second_epoch = [i for [i] in indices(s, train)]
    assert set(second_epoch) == set(first_epoch) and second_epoch != first_epoch  # reshuffled
    s.close()
    # A window is 2 shards of 8 photos: a run of 8 faces from one shard would mean no shuffle.
    shard_of = {i: i // 8 for i in first_epoch}
    assert any(len({shard_of[i] for i in first_epoch[k:k + 8]}) > 1 for k in range(0, train - 8, 8))


def test_a_stream_resumed_from_its_state_gives_the_same_batches(sharded):
    whole = stream(sharded)
    expected = indices(whole, 12)  # crosses windows and an epoch (about 60 training faces)
    whole.close()
    first = stream(sharded)
    got = indices(first, 5)
    state = first.state_dict()
    first.close()
    resumed = stream(sharded)
    resumed.load_state_dict(state)
    assert got + indices(resumed, 7) == expected
    resumed.close()


def test_batches_are_tensors_in_the_decoders_range(sharded):
    s = stream(sharded, threads=2)
    batch = s.next(torch.device("cpu"))
    s.close()
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1 <= batch["image"].min() < batch["image"].max() <= 1
    assert batch["landmarks"].shape == (5, 68, 2) and batch["features"].shape[0] == 5


def test_validation_rows_are_the_first_faces_and_the_feature_sample_spreads_over_the_shards(sharded, small_dataset):
    from frontalab.data.dataset import FaceDataset
    from frontalab.data.stream import feature_sample, first_rows

    whole = FaceDataset(str(small_dataset), "val", image_size=32)
    first = first_rows(str(sharded), "val", "dlib-resnet", 32, 4)
    assert torch.equal(first.index, whole.index[:4]) and torch.equal(first.image, whole.images[:4])
    train = FaceDataset(str(small_dataset), "train")
    assert torch.equal(feature_sample(str(sharded), "train", "dlib-resnet", 6), train.features[:6])
    # A larger sample comes from shards spread over the dataset: shard 0, then every third one.
    spread = feature_sample(str(sharded), "train", "dlib-resnet", 18)
    assert len(spread) == 18 and not torch.equal(spread, train.features[:18])


def test_a_split_without_faces_is_refused_at_once(sharded, tmp_path):
    manifest = json.loads((sharded / "manifest.json").read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in manifest["shards"]:
        (empty / name).symlink_to(sharded / name)
    (empty / "manifest.json").write_text(json.dumps({**manifest, "split": {**manifest["split"], "val": 0}}))
    with pytest.raises(ValueError, match="no kept faces in split 'val'"):
        stream(empty, split="val")


def test_the_cache_deletes_least_recently_used_copies_down_to_its_bound(tmp_path, monkeypatch):
    from frontalab import storage

    monkeypatch.setenv("FRONTALAB_CACHE", str(tmp_path))
    copies = []
    for i in range(5):
        f = tmp_path / "s3" / f"key{i}" / "shard.parquet"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x" * 1000)
        os.utime(f, (time.time() - 100 + i, time.time() - 100 + i))
        copies.append(f)
    os.utime(copies[0])  # used just now: the oldest by age, the newest by use
    storage.trim_cache(2500, keep=copies[1])
    assert [f.exists() for f in copies] == [True, True, False, False, False]


def test_data_parallel_workers_each_stream_their_part_of_every_batch_and_resume_it(sharded):
    """Two workers' parts of each batch, in rank order, are the one-worker batch (across windows and epochs):
    every epoch dealt out with no gap and no repeat; a worker resumed from the shared position goes on alike.
    Each worker decodes only its own rows: the images it hands out are the one-worker stream's, none left blank."""
    from frontalab.sections import ConfigError

    def batches(s, count: int) -> list[dict]:
        return [s.next(torch.device("cpu")) for _ in range(count)]

    one_worker = stream(sharded, batch_size=6)
    ranks = [stream(sharded, batch_size=6, rank=r, workers=2) for r in (0, 1)]
    for one, a, b in zip(batches(one_worker, 30), *[batches(s, 30) for s in ranks]):
        assert a["index"].tolist() + b["index"].tolist() == one["index"].tolist()
        assert len(a["index"]) == len(b["index"]) == 3
        assert torch.equal(torch.cat([a["image"], b["image"]]), one["image"])
    resumed = stream(sharded, batch_size=6, rank=1, workers=2)
    resumed.load_state_dict(ranks[1].state_dict())
    assert resumed.position.offset % 6  # mid-window, where its first row was not a batch's first: a phase to get right
    for one, going_on, own in zip(batches(one_worker, 4), batches(ranks[1], 4), batches(resumed, 4)):
        assert own["index"].tolist() == going_on["index"].tolist()
        assert torch.equal(own["image"], one["image"][3:])
    one_worker.close()
    for s in (*ranks, resumed):
        s.close()
    with pytest.raises(ConfigError, match="resources.workers=4"):
        stream(sharded, batch_size=6, rank=0, workers=4)
