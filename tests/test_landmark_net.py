"""The landmark student with its packaged weights, against the dlib teacher on held-out LFW identities.

The held-out faces are rebuilt here exactly as `frontalab prepare` builds them (detector, 68
points, loose crop at 160 px, JPEG), from identities the packaged weights never trained on:
``split_of(identity, "", seed=0, val_fraction=0.1) == "val"``, the dataset's own rule.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frontalab.models import landmarks as lm
from frontalab.models.landmark_net import LandmarkNet, load_landmark_net, nme, soft_argmax
from frontalab.paths import faces_dir

LFW = faces_dir() / "lfw-gray"
needs_faces = pytest.mark.skipif(not LFW.is_dir(), reason=f"no LFW photos at {LFW}")

CROP = 160
MAX_FACES = 180
PER_IDENTITY = 2  # spread the sample over many people


def split_photos(split: str, per_identity: int, limit: int) -> list[tuple[str, Path]]:
    """(identity, photo) of LFW identities in ``split`` under the dataset's rule, sorted."""
    from frontalab.data.prepare import split_of

    out = []
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        if split_of(person.name, "", seed=0, val_fraction=0.1) == split:
            out += [(person.name, f) for f in sorted(person.glob("*.jpg"))[:per_identity]]
        if len(out) >= limit:
            break
    return out[:limit]


def teacher_crop(teacher, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """prepare's AlignStage: central face, 68 points, loose crop, JPEG 95; points normalised."""
    from frontalab.data.crop import crop, loose_crop_box, points_to_crop

    boxes = teacher.detect(rgb)
    if not boxes:
        return None
    h, w = rgb.shape[:2]
    box = min(boxes, key=lambda b: (b.centre[0] - w / 2) ** 2 + (b.centre[1] - h / 2) ** 2)
    points = teacher.landmarks68(rgb, box)
    face, scale, shift = crop(rgb, loose_crop_box(points, 0.625), CROP)
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=95)
    face = np.asarray(Image.open(buf).convert("RGB"))
    return face, lm.to_normalised(points_to_crop(points, scale, shift), CROP)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 160, 160) crops in [-1, 1] and (N, 68, 2) teacher points of held-out LFW identities."""
    if not LFW.is_dir():
        pytest.skip(f"no LFW photos at {LFW}")
    from frontalab.data.decode import decode
    from frontalab.data.teacher import LandmarkTeacher

    teacher = LandmarkTeacher()
    faces, points = [], []
    for _, path in split_photos("val", PER_IDENTITY, MAX_FACES):
        got = teacher_crop(teacher, decode(path.read_bytes())[0])
        if got is not None:
            faces.append(got[0])
            points.append(got[1])
    assert len(faces) >= 150, f"only {len(faces)} held-out faces found"
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(np.stack(points)).float()


@pytest.fixture(scope="module")
def net() -> LandmarkNet:
    return load_landmark_net().frozen()


# ---------------------------------------------------------------- accuracy of the packaged weights


@needs_faces
def test_packaged_weights_match_the_teacher_on_held_out_identities(net, held_out):
    x, teacher = held_out
    with torch.no_grad():
        err = nme(net(x), teacher)
    print(f"\nheld-out LFW: {len(x)} faces, NME {100 * err.mean():.2f}% (median {100 * err.median():.2f}%)")
    assert err.mean() <= 0.05


@needs_faces
def test_mirrored_faces_give_mirrored_landmarks(net, held_out):
    x, teacher = held_out
    with torch.no_grad():
        pred = net(x)
        back = lm.mirror(net(x.flip(-1)))
    mirror_nme, consistency = nme(back, teacher).mean(), nme(back, pred).mean()
    print(f"\nmirror NME {100 * mirror_nme:.2f}%, mirror consistency {100 * consistency:.2f}%")
    assert mirror_nme <= 0.05
    assert consistency <= 0.05


@needs_faces
@pytest.mark.parametrize("size", [64, 128, 160, 320])
def test_any_input_size(net, held_out, size):
    """Generators output 64..320 px: every size gives (N, 68, 2), and the same face the same points."""
    x, teacher = held_out
    x = x[:48]
    resized = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
    with torch.no_grad():
        pred = net(resized)
    assert pred.shape == (len(x), 68, 2)
    assert nme(pred, teacher[:48]).mean() <= 0.06


@needs_faces
def test_points_of_real_faces_lie_inside_the_image(net, held_out):
    x, _ = held_out
    with torch.no_grad():
        pred = net(x)
    assert torch.isfinite(pred).all()
    assert (pred >= 0).all() and (pred <= 1).all()


@needs_faces
def test_gradients_flow_from_points_to_pixels(net, held_out):
    x = held_out[0][:4].clone().requires_grad_(True)
    pred = net(x)
    # A landmark-loss-like scalar: distance to a template.
    loss = (pred - lm.mean_face()).abs().sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert x.grad.abs().sum((1, 2, 3)).min() > 0  # every face gets a signal
    assert all(p.grad is None for p in net.parameters())  # frozen: nothing else accumulates


# ---------------------------------------------------------------- no faces needed


def test_soft_argmax_puts_a_peak_at_its_cell_centre():
    h = torch.full((1, 2, 16, 16), -1e4)
    h[0, 0, 3, 10] = 0.0  # row 3, column 10
    h[0, 1, 15, 0] = 0.0
    pts = soft_argmax(h)
    assert torch.allclose(pts[0, 0], torch.tensor([10.5 / 16, 3.5 / 16]))
    assert torch.allclose(pts[0, 1], torch.tensor([0.5 / 16, 15.5 / 16]))


def test_untrained_net_shapes_and_errors():
    net = LandmarkNet(input_size=64).eval()
    for size in (48, 64, 100):
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 68, 2)
    with pytest.raises(ValueError):
        net(torch.zeros(2, 3, 64, 32))
    with pytest.raises(ValueError):
        LandmarkNet(input_size=40)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="frontalab train-landmarks"):
        load_landmark_net(tmp_path / "nothing.pt")


def test_packaged_weights_have_a_sidecar():
    from frontalab.models.landmark_net import default_weights_path

    path = default_weights_path()
    assert path.is_file(), "run `frontalab train-landmarks` to make the packaged weights"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["metrics"]["val_lfw"]["nme"] <= 0.05
    assert side["dataset"]["dataset_hash"] and side["model"] == load_landmark_net().config()


# ---------------------------------------------------------------- the command, end to end


@needs_faces
@pytest.mark.slow
def test_train_landmarks_command_end_to_end(tmp_path):
    """`frontalab prepare` 60 LFW photos (some from held-out identities), then a few training steps."""
    src = tmp_path / "src"
    for identity, photo in split_photos("train", 1, 45) + split_photos("val", 1, 15):
        (src / identity).mkdir(parents=True, exist_ok=True)
        (src / identity / photo.name).symlink_to(photo)
    data, out = tmp_path / "prepared", tmp_path / "weights" / "student.pt"
    prep = subprocess.run([sys.executable, "-m", "frontalab", "prepare", "--source", str(src), "--out", str(data),
                           "prepare.shard_size=32"], capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    run = subprocess.run([sys.executable, "-m", "frontalab", "train-landmarks", f"landmarks.data={data}",
                          f"landmarks.out={out}", "landmarks.steps=8", "landmarks.batch_size=16"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["weights"] == str(out) and summary["steps"] == 8 and summary["val_faces"] > 0
    assert "it/s" in run.stderr and "ETA" in run.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["dataset"]["dataset_hash"] == json.loads((data / "manifest.json").read_text())["dataset_hash"]
    assert np.isfinite(side["metrics"]["val_lfw"]["nme"]) and side["config"]["steps"] == 8
    net = load_landmark_net(out)
    assert net(torch.zeros(1, 3, 160, 160)).shape == (1, 68, 2)
