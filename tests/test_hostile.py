"""Hostile inputs: crafted image bytes, bad request cells and pickles that would run code.

Every case is real bytes through the real decoder, the real pyfunc and the real loader; a documented reject
(`Skip`, `UntrustedPickle`) is the only thing allowed out.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import png_header, run_cli
from frontalab.cli import output_names
from frontalab.data.decode import MAX_BYTES, MAX_SIDE, Skip, decode
from frontalab.models.encoders import build_encoder, encoder_bundle, encoder_from_bundle
from frontalab.serving.pyfunc import TRUST_PICKLES_ENV, UntrustedPickle, load_encoder_artifact, load_predictor


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n"


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def face_photo(lfw_photos) -> Path:
    """One LFW photo of the last person (no champion trained on LFW)."""
    return lfw_photos[-1]


# ---------------------------------------------------------------- the decoder


@pytest.mark.parametrize("data, reason", [
    (png_header(20000, 20000), "too_large"),  # 400 MP claimed in 60 bytes
    (EPS, "not_an_image"),  # Ghostscript is never asked, whatever the file's name
    (b"", "empty_file"),
    (b"\xff\xd8\xff" + b"\x00" * 64, "not_an_image"),
])
def test_crafted_bytes_are_named_rejects(data, reason):
    with pytest.raises(Skip) as skip:
        decode(data)
    assert skip.value.reason == reason


def test_a_file_over_the_byte_cap_is_refused_unread():
    with pytest.raises(Skip) as skip:
        decode(b"\xff" * (MAX_BYTES + 1))
    assert skip.value.reason == "too_large" and str(MAX_BYTES) in str(skip.value)


def test_a_large_photo_comes_back_at_the_decoders_side():
    big = Image.new("RGB", (9000, 6000), (90, 120, 150))
    rgb, _ = decode(jpeg(big, quality=80))
    assert max(rgb.shape[:2]) <= MAX_SIDE and rgb.shape[2] == 3
    assert abs(rgb.shape[1] / rgb.shape[0] - 1.5) < 0.01  # the aspect ratio is kept
    assert np.abs(rgb.reshape(-1, 3).mean(0) - (90, 120, 150)).max() < 3


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


SEEDS = [jpeg(Image.new("RGB", (48, 40), (200, 30, 60)), quality=90), png(Image.new("LA", (40, 48), (90, 128)))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=12),
              st.integers(0, 4096)),
))
def test_random_and_mutated_bytes_decode_or_are_rejected(case):
    if isinstance(case, tuple):  # a valid photo with bytes flipped and its tail cut
        seed, flips, cut = case
        data = bytearray(seed)
        for at, value in flips:
            data[at % len(data)] = value
        case = bytes(data[: max(1, len(data) - cut)])
    try:
        rgb, _ = decode(case, min_side=1)
    except Skip:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


# ---------------------------------------------------------------- the pyfunc's cells


@pytest.fixture(scope="module")
def predict():
    return load_predictor("pretrained:thesis")  # the same FrontalizerModel.predict that `mlflow models serve` runs


def test_each_bad_cell_is_answered_in_its_row(predict, face_photo):
    cells = [4_000_000_000, "not base64 at all!", None, 1.5, np.zeros((64, 64, 4), np.uint8),
             png_header(20000, 20000), base64.b64encode(face_photo.read_bytes()).decode()]
    result = predict(pd.DataFrame({"image": cells}))
    assert list(result["face_found"]) == [False] * 6 + [True]
    assert [e.split(":")[0] for e in result["error"][:6]] == ["not_an_image"] * 5 + ["too_large"]
    assert result["error"][6] == "" and Image.open(io.BytesIO(base64.b64decode(result["image"][6]))).size == (128, 128)


def test_a_request_over_the_limits_is_refused_whole(face_photo):
    from frontalab.serving.pyfunc import FrontalizerModel, RequestTooLarge, serving_limits

    model = FrontalizerModel()
    model.limits = serving_limits(max_batch=2, max_request_mb=0.5)
    cell = base64.b64encode(face_photo.read_bytes()).decode()
    with pytest.raises(RequestTooLarge, match="3 photos in one request, over this model's limit of 2"):
        model.predict(None, pd.DataFrame({"image": [cell] * 3}))
    with pytest.raises(RequestTooLarge, match="limit of 0.5 MB"):
        model.predict(None, pd.DataFrame({"image": [np.zeros((600, 600, 3), np.uint8)]}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=512), st.text(max_size=64), st.integers(), st.none(), st.floats()))
def test_random_cells_never_fail_the_batch(predict, cell):
    result = predict(pd.DataFrame({"image": [cell]}))
    assert len(result) == 1 and (result["face_found"][0] or result["error"][0])


# ---------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this creates a file: what a forged model or checkpoint would do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_encoder_is_refused_and_its_code_never_runs(tmp_path, monkeypatch):
    marker, forged = tmp_path / "pwned", tmp_path / "encoder.pt"
    torch.save({"name": "dlib-resnet", "state_dict": _Payload(marker)}, forged)
    monkeypatch.delenv(TRUST_PICKLES_ENV, raising=False)
    with pytest.raises(UntrustedPickle, match=TRUST_PICKLES_ENV):
        load_encoder_artifact(forged)
    assert not marker.exists()


def test_an_encoder_travels_as_its_name_and_weights(tmp_path):
    encoder = build_encoder("facenet-vggface2", random_weights=True).eval()
    torch.save(encoder_bundle(encoder), tmp_path / "encoder.pt")
    restored = load_encoder_artifact(tmp_path / "encoder.pt")
    x = torch.rand(2, 3, 160, 160)
    assert restored.name == encoder.name and torch.equal(restored.features(x), encoder.features(x))
    with pytest.raises(ValueError, match="not an encoder bundle"):
        encoder_from_bundle({"name": "something-else", "state_dict": {}})


@pytest.fixture(scope="module")
def thesis_parts(tmp_path_factory) -> dict[str, Path]:
    """pretrained:thesis's checkpoint with its encoder beside it, as a bundle and as a pickled module."""
    from frontalab.models import pretrained
    from frontalab.serving.frontalizer import Frontalizer

    folder, checkpoint = tmp_path_factory.mktemp("thesis_parts"), pretrained.checkpoint_path("pretrained:thesis")
    encoder = Frontalizer(checkpoint).encoder
    torch.save(encoder_bundle(encoder), folder / "bundle.pt")
    torch.save(encoder, folder / "module.pt")
    return {"checkpoint": checkpoint, "bundle": folder / "bundle.pt", "module": folder / "module.pt"}


@pytest.mark.parametrize("module, encoder", [
    ("frontalab.serving.pyfunc", "bundle"),  # registered before versions were logged as code
    ("frontalab.platform.inference", "module"),  # registered before the package had layers
])
def test_a_version_registered_as_a_pickle_still_loads(module, encoder, thesis_parts, face_photo, tmp_path,
                                                     monkeypatch):
    """A version whose MLmodel holds the cloudpickled `FrontalizerModel` (by reference, under the module name of
    its day) loads in a process that has imported frontalab, as `frontalize` loads it: the oldest through the
    `frontalab.platform.inference` alias, and, their encoder being pickled too, only with FRONTALAB_TRUST_PICKLES=1."""
    import cloudpickle
    import mlflow.pyfunc

    import frontalab.platform.inference  # noqa: F401  cloudpickle pickles by reference a class it finds there
    from frontalab.serving.pyfunc import FrontalizerModel

    folder = tmp_path / "model"
    with monkeypatch.context() as m:
        m.setattr(FrontalizerModel, "__module__", module)
        mlflow.pyfunc.save_model(str(folder), python_model=FrontalizerModel(), pip_requirements=["torch"],
                                 artifacts={"checkpoint": str(thesis_parts["checkpoint"]),
                                            "encoder": str(thesis_parts[encoder])})
    assert module.encode() in (folder / "python_model.pkl").read_bytes()
    assert cloudpickle.loads((folder / "python_model.pkl").read_bytes()).__class__ is FrontalizerModel
    monkeypatch.delenv(TRUST_PICKLES_ENV, raising=False)
    if encoder == "module":
        with pytest.raises(UntrustedPickle, match=TRUST_PICKLES_ENV):
            load_predictor(str(folder))
        monkeypatch.setenv(TRUST_PICKLES_ENV, "1")
    result = load_predictor(str(folder))(pd.DataFrame({"image": [face_photo.read_bytes()]}))
    assert list(result["face_found"]) == [True] and list(result["error"]) == [""]


# ---------------------------------------------------------------- frontalize's outputs


def test_frontalize_gives_every_input_its_own_output():
    photos = [Path("a/1.jpg"), Path("b/1.jpg"), Path("c/1-1.jpg"), Path("d/x.png")]
    names = output_names(photos)
    assert len(set(names.values())) == len(photos) and names[Path("d/x.png")] == "x.png"


def test_frontalize_refuses_an_out_that_is_a_file(face_photo, tmp_path):
    """Forgetting OUT makes the last photo OUT: refused, the photo untouched."""
    other = tmp_path / "other.jpg"
    other.write_bytes(face_photo.read_bytes())
    out = run_cli("frontalize", "--model", "pretrained:thesis", str(face_photo), str(other), check=False)
    assert out.returncode == 2 and "is a file" in out.stderr and "Traceback" not in out.stderr
    assert other.read_bytes() == face_photo.read_bytes()


def forged_checkpoint(folder: Path) -> tuple[Path, Path]:
    """(a checkpoint whose unpickling would create a marker file, the marker)."""
    marker, forged = folder / "pwned", folder / "step-000100.pt"
    torch.save({"step": 100, "G": _Payload(marker), "config": {}, "dataset_hash": ""}, forged)
    return forged, marker


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_a_forged_checkpoint_is_refused_by_the_cli(command, small_dataset, tmp_path):
    forged, marker = forged_checkpoint(tmp_path)
    args = (["evaluate", "--model", str(forged), "--out", str(tmp_path / "report"), "evaluate.track=false"]
            if command == "evaluate" else
            ["train", "--resume", str(forged), f"data.path={small_dataset}", "tracking.enabled=false",
             "model.out_size=64", "train.steps=1"])
    out = run_cli(*args, check=False, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert out.returncode == 10 and "unpickle code" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not marker.exists()


def test_resume_passes_over_an_unreadable_newest_checkpoint(tmp_path, capsys):
    from frontalab.training.checkpoints import newest_readable_checkpoint, save_atomic

    save_atomic({"step": 100}, tmp_path / "step-000100.pt")
    save_atomic({"step": 200}, tmp_path / "step-000200.pt")
    whole = (tmp_path / "step-000200.pt").read_bytes()
    (tmp_path / "step-000300.pt").write_bytes(whole[: len(whole) // 2])  # cut short, as by a full disk
    assert newest_readable_checkpoint(tmp_path) == tmp_path / "step-000200.pt"
    assert "step-000300.pt is cut short or corrupt" in capsys.readouterr().err
    assert (tmp_path / "step-000300.pt").exists()  # passed over, kept for whoever wants to look


def test_a_checkpoint_folder_serves_one_run_at_a_time(small_dataset, tmp_path):
    """A live run holds its folder (a second is refused, naming the holder); a fresh run refuses a folder that
    holds an earlier run's checkpoints instead of overwriting them and their journal."""
    from frontalab.training.checkpoints import claim_folder, save_atomic

    folder = tmp_path / "ckpt"
    args = ["train", f"data.path={small_dataset}", "tracking.enabled=false", "model.out_size=64", "train.steps=1",
            f"train.checkpoint_dir={folder}"]
    with claim_folder(folder):  # this test process is the live run
        out = run_cli(*args, check=False)
    assert out.returncode == 2 and f"is in use by pid {os.getpid()}" in out.stderr and "Traceback" not in out.stderr
    save_atomic({"step": 10}, folder / "step-000010.pt")
    journal = folder / "metrics.jsonl"
    journal.write_text('{"step": 10}\n')
    out = run_cli(*args, check=False)
    assert out.returncode == 2 and "--resume" in out.stderr and "Traceback" not in out.stderr
    assert journal.read_text() == '{"step": 10}\n' and (folder / "step-000010.pt").exists()
