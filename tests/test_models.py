"""Shapes of the thesis decoder/discriminator (Tables 3.1, 3.2) and the Cole decoder."""

import pytest
import torch

from frontalab.models.cole import ColeDecoder
from frontalab.models.thesis import Discriminator, ThesisDecoder, decoder_geometry


def _stage_shapes(decoder, features):
    shapes, mask_input = [], []
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for s in decoder.stages]
    if decoder.mask_stages is not None:
        hooks.append(decoder.mask_stages.register_forward_hook(lambda m, i, o: mask_input.append(tuple(i[0].shape[1:]))))
    out = decoder(features)
    for h in hooks:
        h.remove()
    return shapes, mask_input, out


def test_thesis_decoder_matches_table_3_1_at_320():
    dec = ThesisDecoder(in_features=256, out_size=320).eval()
    assert [l.out_features for l in dec.fc if isinstance(l, torch.nn.Linear)] == [4800, 4800]
    assert (dec.side, dec.channels) == (5, 192)
    with torch.no_grad():
        shapes, mask_input, out = _stage_shapes(dec, torch.randn(1, 256))
    # Table 3.1 is (H, W, C); torch shapes are (C, H, W).
    assert shapes == [(96, 10, 10), (48, 20, 20), (24, 40, 40), (12, 80, 80), (6, 160, 160), (3, 320, 320)]
    assert mask_input == [(12, 80, 80)]
    assert out.noisy.shape == (1, 3, 320, 320) and out.mask.shape == (1, 1, 320, 320)
    assert out.noisy.abs().max() <= 1 and 0 <= out.mask.min() and out.mask.max() <= 1
    # F_O = M * F_N + (1 - M) * 1
    assert torch.allclose(out.composite, out.mask * out.noisy + 1 - out.mask)


@pytest.mark.parametrize("size,geometry", [(64, (4, 4)), (128, (4, 5)), (160, (5, 5)), (320, (5, 6))])
def test_decoder_geometry(size, geometry):
    assert decoder_geometry(size) == geometry
    dec = ThesisDecoder(in_features=32, out_size=size).eval()
    with torch.no_grad():
        out = dec(torch.randn(2, 32))
    assert out.composite.shape == (2, 3, size, size)


def test_decoder_without_mask_returns_noisy_face():
    dec = ThesisDecoder(in_features=16, out_size=64, mask=False).eval()
    out = dec(torch.randn(2, 16))
    assert out.mask is None and out.composite is out.noisy
    assert not any("mask" in name for name, _ in dec.named_parameters())


def test_discriminator_matches_table_3_2():
    d = Discriminator()
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    acts = [m for m in d.net if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 8 and all(a.negative_slope == 0.2 for a in acts)
    with torch.no_grad():
        assert d(torch.randn(1, 3, 320, 320)).shape == (1, 1, 20, 20)
        assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 4, 4)


def test_cole_decoder_shapes_and_warp_at_init():
    mean = torch.rand(68, 2) * 0.6 + 0.2
    dec = ColeDecoder(in_features=64, mean_landmarks=mean, out_size=64, hidden=32).eval()
    with torch.no_grad():
        out = dec(torch.randn(3, 64))
    assert out.texture.shape == (3, 3, 64, 64) and out.composite.shape == (3, 3, 64, 64)
    assert out.landmarks.shape == (3, 68, 2)
    # At initialisation the landmarks are the mean face, so the warp is the identity.
    assert torch.allclose(out.landmarks, mean.expand(3, -1, -1))
    assert (out.composite - out.texture).abs().max() < 1e-4


def test_cole_decoder_paper_sizes_at_224():
    dec = ColeDecoder(in_features=8, mean_landmarks=torch.full((68, 2), 0.5), out_size=224, hidden=8)
    assert dec.texture_fc[0].out_features == 56 * 56 * 256
    sizes = []
    for m in dec.texture_cnn:
        if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            sizes.append(m.out_channels)
    assert sizes == [128, 64, 32, 3]


def test_generator_backward_reaches_every_parameter():
    dec = ThesisDecoder(in_features=16, out_size=64)
    out = dec(torch.randn(4, 16))
    (out.composite.mean() + out.noisy.mean()).backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_feature_standardizer_centres_and_scales_and_travels_in_the_state_dict():
    from frontalab.models.features import FeatureStandardizer

    torch.manual_seed(0)
    feats = torch.randn(500, 6) * torch.tensor([1, 2, 3, 4, 5, 6.0]) + 10
    feats[:, 5] = 7.0  # a constant dimension stays finite
    s = FeatureStandardizer(6).fit(feats)
    z = s(feats)
    assert torch.allclose(z[:, :5].mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(z[:, :5].std(0), torch.ones(5), atol=1e-4) and torch.all(z[:, 5] == 0)
    copy = FeatureStandardizer(6)
    copy.load_state_dict(s.state_dict())
    assert torch.equal(copy(feats), z)


def test_checkpoints_from_before_standardisation_still_load(tmp_path):
    from omegaconf import OmegaConf

    from frontalab.config import load_config
    from frontalab.serving.frontalizer import Frontalizer
    from frontalab.losses.papers import build_generator
    from frontalab.training.checkpoints import UnreadableModel

    cfg = load_config(None, ["model.out_size=64"])
    state = {k: v for k, v in build_generator(cfg, 256).state_dict().items() if not k.startswith("standardize.")}
    torch.save({"G": state, "config": OmegaConf.to_container(cfg), "step": 1}, tmp_path / "old.pt")
    f = Frontalizer(tmp_path / "old.pt")
    assert torch.all(f.G.standardize.mean == 0) and torch.all(f.G.standardize.std == 1)  # the identity
    del state["fc.0.weight"]
    torch.save({"G": state, "config": OmegaConf.to_container(cfg), "step": 1}, tmp_path / "bad.pt")
    with pytest.raises(UnreadableModel, match="bad.pt does not fit the ThesisDecoder"):
        Frontalizer(tmp_path / "bad.pt")


def test_input_texture_decoder_starts_as_the_input_on_its_face_region_and_learns_from_there():
    """model.input_texture: at initialisation F_N is I* and the mask is the canonical face region, so the
    composite is the input's own face on white; every parameter then gets a gradient."""
    from frontalab.models import landmarks as lm

    region = lm.face_region(lm.mean_face(), 64, scale=1.4)
    G = ThesisDecoder(32, 64, width=1, input_texture=True, mask_prior=region)
    texture = torch.rand(3, 3, 64, 64) * 1.8 - 0.9
    out = G(torch.randn(3, 32), texture)
    assert torch.allclose(out.noisy, texture, atol=1e-5)
    assert torch.allclose(out.mask[:, 0], region.clamp(0.02, 0.98).expand(3, -1, -1), atol=1e-5)
    assert torch.allclose(out.composite, out.mask * texture + 1 - out.mask, atol=1e-5)
    out.composite.mean().backward()
    assert all(p.grad is not None for p in G.parameters())
    with pytest.raises(ValueError, match="needs the input's canonical texture"):
        G(torch.randn(3, 32))
    with pytest.raises(ValueError, match="takes no input texture"):
        ThesisDecoder(32, 64)(torch.randn(3, 32), texture)


def test_cole_input_texture_decoder_starts_as_the_input_warped_to_the_mean_face():
    from frontalab.models import landmarks as lm

    G = ColeDecoder(32, lm.mean_face(), out_size=64, hidden=32, channels=32, input_texture=True)
    texture = torch.rand(2, 3, 64, 64) * 1.8 - 0.9
    out = G(torch.randn(2, 32), texture)
    assert torch.allclose(out.texture, texture, atol=1e-5)
    assert torch.allclose(out.landmarks, lm.mean_face().expand(2, -1, -1))  # the mean face: no warp yet
    assert torch.allclose(out.composite, texture, atol=1e-4)
    out.composite.mean().backward()
    assert all(p.grad is not None for p in G.parameters())
    with pytest.raises(ValueError, match="needs the input's canonical texture"):
        G(torch.randn(2, 32))
