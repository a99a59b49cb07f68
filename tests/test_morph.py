"""Cole §5.1 random morphs: neighbours under λ|ΔL| + |ΔT|, the morph itself, and `prepare --morphs`."""

from __future__ import annotations

import json
import shutil

import torch

from conftest import SMALL_DATASET_SETTINGS, run_cli
from frontalab.data import morph


def test_neighbours_weigh_landmarks_by_lambda():
    # Face 0; face 1 differs by 0.1 in one landmark coordinate; face 2 by 0.5 in one texture value.
    landmarks = torch.zeros(3, 68, 2)
    landmarks[1, 0, 0] = 0.1
    textures = torch.zeros(3, 16)
    textures[2, 0] = 0.5
    assert morph.nearest_neighbours(landmarks, textures, k=1, lam=10.0)[0].tolist() == [2]  # 10 * 0.1 > 0.5
    assert morph.nearest_neighbours(landmarks, textures, k=1, lam=1.0)[0].tolist() == [1]  # 1 * 0.1 < 0.5
    both = morph.nearest_neighbours(landmarks, textures, k=5, lam=10.0)
    assert both.shape == (3, 2) and all(i not in row for i, row in enumerate(both.tolist()))  # k capped, never self


def test_neighbours_on_a_line_and_in_chunks():
    landmarks = torch.zeros(50, 68, 2)
    landmarks[:, 0, 0] = torch.arange(50, dtype=torch.float32)
    nn = morph.nearest_neighbours(landmarks, torch.zeros(50, 4), k=2, lam=10.0, chunk=7)
    assert nn[0].tolist() == [1, 2] and nn[49].tolist() == [48, 47] and sorted(nn[20].tolist()) == [19, 21]


def test_texture_puts_each_landmark_on_the_mean_and_the_morph_puts_it_back():
    # A dot under landmark 30 of a face lands under mean point 30 in its texture, and a morph
    # with weights 0 puts it back under the face's own landmark: both warp directions.
    from frontalab.models import landmarks as lm

    size = 64
    mean = lm.to_pixels(lm.mean_face(), size)
    face = mean + torch.tensor([3.0, -2.0])  # the same face, shifted
    image = torch.zeros(1, 1, size, size)
    x, y = face[30].round().long().tolist()
    image[0, 0, y, x] = 1.0
    texture = morph.to_mean_geometry(image, face[None], mean)
    peak = divmod(int(texture.argmax()), size)
    assert abs(peak[0] - mean[30, 1]) <= 1 and abs(peak[1] - mean[30, 0]) <= 1
    zero = torch.zeros(1)
    pixels, points = morph.morph(image, face[None], mean, torch.tensor([0]), torch.tensor([0]), zero, zero)
    assert torch.equal(points[0], face) and divmod(int(pixels.argmax()), size) == (y, x)


def test_plan_draws_partners_among_the_neighbours():
    neighbours = torch.tensor([[1, 2], [0, 2], [0, 1], [2, 1]])
    planned = morph.plan(4, neighbours, count=200, seed=3)
    assert all(b in neighbours[a].tolist() for a, b in zip(planned["a"], planned["b"]))
    assert planned[["alpha_l", "alpha_t"]].stack().between(0, 1).all()
    assert planned.equals(morph.plan(4, neighbours, count=200, seed=3))


def _faces(dataset, n=4):
    from frontalab.data.dataset import FaceDataset

    ds = FaceDataset(str(dataset), "train")
    images = (ds.images[:n].float() / 255)
    points = ds.landmarks[:n] * ds.image_size - 0.5
    return images, points


def test_morph_ends_are_the_faces_themselves(small_dataset):
    images, points = _faces(small_dataset)
    mean = points.mean(0)
    a, b = torch.tensor([0, 1]), torch.tensor([2, 3])
    for alpha, ends in ((0.0, a), (1.0, b)):
        w = torch.full((2,), alpha)
        pixels, pts = morph.morph(images, points, mean, a, b, w, w)
        assert torch.equal(pts, points[ends])  # landmarks interpolate exactly
        # Warping to the mean geometry and back is the identity up to resampling, inside the face.
        lo, hi = points[ends].amin(1).long().clamp(min=0), points[ends].amax(1).long()
        for i in range(2):
            (x0, y0), (x1, y1) = lo[i].tolist(), hi[i].tolist()
            diff = (pixels[i, :, y0:y1, x0:x1] - images[ends[i], :, y0:y1, x0:x1]).abs().mean()
            assert diff < 0.04, f"alpha={alpha}: mean abs difference {diff:.3f} inside the face"
    half = torch.full((2,), 0.5)
    _, mid = morph.morph(images, points, mean, a, b, half, half)
    assert torch.allclose(mid, (points[a] + points[b]) / 2)


def test_prepare_with_morphs_adds_training_rows_only(small_dataset, small_source, tmp_path):
    from frontalab.data.dataset import FaceDataset

    out = tmp_path / "faces"
    shutil.copytree(small_dataset, out)
    before = json.loads((out / "manifest.json").read_text())
    run_cli("prepare", "--source", str(small_source), "--out", str(out), "--morphs", "10",
            "prepare.morph_neighbours=5", *SMALL_DATASET_SETTINGS)
    after = json.loads((out / "manifest.json").read_text())
    # The photos' counts and split are untouched; morphs are extra training rows.
    for key in ("input_count", "kept", "skipped", "split", "shards"):
        assert after[key] == before[key], key
    assert after["morphs"]["count"] == 10 and len(after["morphs"]["shards"]) == 1
    assert after["dataset_hash"] != before["dataset_hash"]
    train, val = FaceDataset(str(out), "train"), FaceDataset(str(out), "val")
    assert len(train) == before["split"]["train"] + 10 and len(val) == before["split"]["val"]
    extra = train.index >= before["input_count"]
    assert extra.sum() == 10
    assert ((train.landmarks[extra] > 0) & (train.landmarks[extra] < 1)).all()  # inside the crop
    assert torch.isfinite(train.features[extra]).all() and torch.isfinite(train.yaw[extra]).all()
    # A rerun finds everything written and rewrites nothing.
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("morphs-*.parquet")}
    run_cli("prepare", "--source", str(small_source), "--out", str(out), "--morphs", "10",
            "prepare.morph_neighbours=5", *SMALL_DATASET_SETTINGS)
    assert json.loads((out / "manifest.json").read_text())["dataset_hash"] == after["dataset_hash"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("morphs-*.parquet")} == written
