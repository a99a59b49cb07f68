"""`frontalab prepare` end to end on real faces: bad input tallies, S3 round trip, kill and resume, frontal filter."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from frontalab.paths import faces_dir

from conftest import png_header, service_overrides

FACES = faces_dir()
pytestmark = pytest.mark.skipif(not (FACES / "utkface").is_dir(), reason=f"no faces at {FACES}")


def run_prepare(*args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-m", "frontalab", "prepare", *args],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def utk(n: int, start: int = 0) -> list[Path]:
    return sorted((FACES / "utkface").glob("*.jpg"))[start:start + n]


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_input_folder(tmp_path_factory) -> tuple[Path, dict]:
    """Every bad-input case of the issue beside plain good faces, with the expected tallies."""
    root = tmp_path_factory.mktemp("bad_inputs")
    faces = [Image.open(p).convert("RGB") for p in utk(12, start=40)]
    for i, im in enumerate(faces[:5]):
        (root / f"good_{i}.jpg").write_bytes(encode(im, "JPEG", quality=95))
    good = encode(faces[5], "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is a text file, not a picture\n" * 20)
    (root / "cmyk.jpg").write_bytes(encode(faces[6].convert("CMYK"), "JPEG", quality=95))
    ok, png16 = cv2.imencode(".png", np.asarray(faces[7])[..., ::-1].astype(np.uint16) * 257)
    (root / "deep16.png").write_bytes(png16.tobytes())
    (root / "alpha.png").write_bytes(encode(faces[8].convert("RGBA"), "PNG"))
    (root / "grey.jpg").write_bytes(encode(faces[9].convert("L"), "JPEG", quality=95))
    (root / "palette.png").write_bytes(encode(faces[10].convert("P"), "PNG"))
    (root / "tiny.png").write_bytes(encode(faces[11].resize((8, 8)), "PNG"))
    (root / "noface.jpg").write_bytes(encode(Image.new("RGB", (200, 200), (120, 160, 200)), "JPEG"))
    pair = Image.new("RGB", (400, 200))
    pair.paste(faces[0], (0, 0))
    pair.paste(faces[1], (200, 0))
    (root / "two_faces.jpg").write_bytes(encode(pair, "JPEG", quality=95))
    # Hostile files: a 60-byte PNG header claiming 20000 x 20000 pixels, PostScript named .jpg (Ghostscript must
    # never see it), and a good face at 100 MP (kept: decoded at a reduced scale, never shipped at full size).
    (root / "bomb.png").write_bytes(png_header(20000, 20000))
    (root / "postscript.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")
    (root / "huge.jpg").write_bytes(encode(faces[2].resize((10000, 10000), Image.Resampling.BILINEAR), "JPEG",
                                           quality=70))
    expected = {
        "input_count": 19, "kept": 12,
        "skipped": {"empty_file": 1, "no_face": 1, "not_an_image": 2, "too_large": 1, "too_small": 1,
                    "truncated": 1},
        "handled": {"16bit": 1, "cmyk": 1, "grayscale": 1, "palette": 1, "rgba": 1, "multiple_faces_central": 1},
    }
    return root, expected


def test_bad_inputs_are_tallied_and_no_good_face_is_lost(bad_input_folder, embedded_services, tmp_path, monkeypatch):
    """Local source -> S3 dataset; then the reader streams it back from SeaweedFS."""
    src, expected = bad_input_folder
    cfg, _ = embedded_services
    out = f"s3://{cfg.bucket}/datasets/bad-inputs"
    summary = run_prepare("--source", str(src), "--out", out, "prepare.shard_size=4", *service_overrides(cfg))
    for key, value in expected.items():
        assert summary[key] == value, (key, summary[key])
    assert summary["kept"] + sum(summary["skipped"].values()) == summary["input_count"]

    # --- the reader, from S3 through the local cache, in this process
    import torch

    from frontalab import services
    from frontalab.data.dataset import FaceDataset

    for key, value in services.client_env(cfg).items():  # this test only: later ones start commands of their own
        monkeypatch.setenv(key, value)
    ds = FaceDataset(out, split=None, image_size=64)
    assert len(ds) == expected["kept"]
    assert ds.images.shape[1:] == (3, 64, 64) and ds.images.dtype == torch.uint8 and ds.images.float().std() > 10
    assert ds.features.shape[1:] == (256,) and ds.embeddings.shape[1:] == (128,)
    assert (ds.landmarks >= 0).all() and (ds.landmarks <= 1).all()
    # Landmarks are in the crop's frame: the face's centre is near the crop's centre.
    assert (ds.landmarks.mean(1) - 0.5).abs().max() < 0.15


def test_unreadable_s3_object_is_counted(services_env):
    import pandas as pd

    from frontalab.data.prepare import decode_stage

    cfg, _ = services_env
    batch = pd.DataFrame({"index": [0], "shard": [0], "uri": [f"s3://{cfg.bucket}/missing/photo.jpg"], "identity": [""]})
    out = decode_stage(batch, min_side=32)
    assert out.loc[0, "status"] == "unreadable" and out.loc[0, "rgb"] == b""


@pytest.mark.slow  # a killed prepare and its resume: ~85 s
def test_killed_prepare_resumes_without_duplicates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in utk(72, start=100):
        (src / p.name).symlink_to(p)
    args = ["--source", str(src), "prepare.shard_size=6", "prepare.batch_size=3"]
    reference = run_prepare(*args, "--out", str(tmp_path / "whole"))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "frontalab", "prepare", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob("shard-*.parquet")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-run
    proc.wait()
    written = len(list(out.glob("shard-*.parquet")))
    assert 1 <= written < 12, f"kill came too late to test resumption ({written} shards)"
    assert not (out / "manifest.json").exists()

    resumed = run_prepare(*args, "--out", str(out))
    for key in ("input_count", "kept", "skipped", "handled", "split", "dataset_hash"):
        assert resumed[key] == reference[key], key
    import pyarrow.parquet as pq

    hashes = [h for f in sorted(out.glob("shard-*.parquet")) for h in pq.read_table(f, columns=["sha256"]).column("sha256").to_pylist()]
    assert len(hashes) == len(set(hashes)) == 72

    # The same photos from a moved folder are the same listing; a grown source into the same --out would reuse
    # shards of other photos: refused, the dataset untouched.
    moved = tmp_path / "moved"
    shutil.copytree(src, moved, symlinks=True)
    again = run_prepare("--source", str(moved), *args[2:], "--out", str(out))
    assert again["dataset_hash"] == reference["dataset_hash"]
    manifest = (out / "manifest.json").read_bytes()
    extra = utk(1, start=400)[0]
    (src / extra.name).symlink_to(extra)
    grown = subprocess.run([sys.executable, "-m", "frontalab", "prepare", *args, "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert grown.returncode == 2 and "another listing of photos (72 then, 73 now" in grown.stderr, grown.stderr[-2000:]
    assert (out / "manifest.json").read_bytes() == manifest


def test_frontal_only_keeps_frontal_faces(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in utk(40, start=300):
        (src / p.name).symlink_to(p)
    summary = run_prepare("--source", str(src), "--out", str(tmp_path / "frontal"), "--frontal-only")
    assert summary["skipped"].get("not_frontal", 0) > 0 and summary["kept"] > 0
    import pyarrow.parquet as pq

    import pandas as pd

    t = pd.concat(pq.read_table(f, columns=["status", "yaw", "pitch"]).to_pandas()
                  for f in (tmp_path / "frontal").glob("shard-*.parquet"))
    kept = t[t.status == "kept"]
    assert (kept.yaw.abs() <= 5).all() and kept.pitch.between(-60, 0).all()


def test_grey_share_turns_a_fixed_share_of_photos_grey_by_content():
    import pandas as pd

    from frontalab.data.prepare import decode_stage

    batch = pd.DataFrame({"uri": [str(p) for p in utk(40)]})
    colour = decode_stage(batch, min_side=32)
    grey = decode_stage(batch, min_side=32, grey_share=0.5, seed=0)

    def is_grey(row) -> bool:
        rgb = np.frombuffer(row["rgb"], np.uint8).reshape(row["height"], row["width"], 3)
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())

    assert not any(is_grey(r) for _, r in colour.iterrows())
    turned = [is_grey(r) for _, r in grey.iterrows()]
    assert 10 <= sum(turned) <= 30  # about half of 40
    assert all(("grey" in c) == t for c, t in zip(grey["conversion"], turned))
    again = decode_stage(batch, min_side=32, grey_share=0.5, seed=0)
    assert [is_grey(r) for _, r in again.iterrows()] == turned  # the same photos every time
    assert all(is_grey(r) for _, r in decode_stage(batch[:5], min_side=32, grey_share=1.0).iterrows())


# ---------------------------------------------------------------- the split with few people


def listing(people: dict[str, int]) -> list[dict]:
    return [{"uri": f"/photos/{p}/{p}_{i:04d}.jpg", "identity": p} for p, n in people.items() for i in range(n)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 30])
def test_every_seed_gives_both_splits_from_two_photos_on(count):
    from frontalab.data.prepare import identity_splits

    people = {f"person{i}": 10 for i in range(count)}
    for seed in range(50):
        rule, splits = identity_splits(listing(people), seed, 0.1)
        assert set(splits.values()) == {"train", "val"}, (seed, rule)
        by_person = {p: {splits[r["uri"]] for r in listing({p: n})} for p, n in people.items()}
        if count * 0.1 >= 0.5:  # by person: no one in both
            assert rule == "identity" and all(len(s) == 1 for s in by_person.values())
        else:  # a share of each person's photos
            assert rule == "photos of each identity"
            assert all(sum(splits[r["uri"]] == "val" for r in listing({p: n})) == 1 for p, n in people.items())
    assert set(identity_splits(listing(people), 0, 0.0)[1].values()) == {"train"}  # no validation asked


def test_many_people_keep_the_hash_rule():
    """Where the hash already gives both splits, the rule is the one every prepared dataset was split by."""
    from frontalab.data.prepare import identity_splits, split_of

    people = {f"person{i}": 3 for i in range(200)}
    _, splits = identity_splits(listing(people), 0, 0.1)
    assert all(splits[r["uri"]] == split_of(r["identity"], "", 0, 0.1) for r in listing(people))


def test_two_people_of_ten_photos_prepare_a_validation_split(tmp_path):
    """Two LFW folders of ten photos: validation holds a photo of each, and the training data loads both splits."""
    from frontalab.data.dataset import FaceDataset

    src = tmp_path / "src"
    for person in ("Adrien_Brody", "Andy_Roddick"):
        (src / person).mkdir(parents=True)
        for photo in sorted((FACES / "lfw-gray" / person).glob("*.jpg"))[:10]:
            (src / person / photo.name).symlink_to(photo)
    if len(list(src.rglob("*.jpg"))) < 20:
        pytest.skip(f"LFW photos not found under {FACES}")
    out = tmp_path / "faces"
    summary = run_prepare("--source", str(src), "--out", str(out))
    assert summary["split"]["rule"] == "photos of each identity"
    assert summary["split"]["val"] >= 1 and summary["split"]["train"] >= 10
    assert len(FaceDataset(str(out), split="val")) == summary["split"]["val"]
