"""Known-answer tests of the thesis and Cole loss terms."""

import pytest
import torch

from frontalab.losses.adversarial import discriminator_adversarial_loss, generator_adversarial_loss
from frontalab.losses.composite import weighted_sum
from frontalab.losses.identity import identity_cosine_loss, identity_l2_loss
from frontalab.losses.landmark import expression_loss, geometry_loss, symmetry_loss, tilt_loss
from frontalab.losses.mask import mask_loss, total_variation
from frontalab.losses.texture import texture_loss
from frontalab.models import landmarks as lm


def random_face(seed=0, n=2):
    return torch.rand(n, 68, 2, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def symmetric_level_face(n=1):
    """A mirror-symmetric, level face: pairs share a height and straddle x = 0.5."""
    pts = torch.zeros(n, 68, 2)
    g = torch.Generator().manual_seed(5)
    for a, b in lm.LEFT_RIGHT_PAIRS:
        dx, y = torch.rand(2, generator=g) * 0.4
        pts[:, a] = torch.tensor([0.5 - dx - 0.01, 0.3 + y])
        pts[:, b] = torch.tensor([0.5 + dx + 0.01, 0.3 + y])
    for i in lm.MIDLINE:
        pts[:, i] = torch.tensor([0.5, torch.rand(1, generator=g).item()])
    return pts


def test_geometry_loss_is_zero_for_same_face_and_invariant_to_translation_and_scale():
    a, b = random_face(1), random_face(2)
    assert geometry_loss(a, a).item() == pytest.approx(0, abs=1e-6)
    base = geometry_loss(a, b)
    moved = b * 1.7 + torch.tensor([0.3, -0.2])
    assert geometry_loss(a, moved).item() == pytest.approx(base.item(), abs=1e-6)
    assert geometry_loss(a * 0.5 - 0.1, b).item() == pytest.approx(base.item(), abs=1e-6)
    assert base.item() > 1e-3


def test_symmetry_and_tilt_are_zero_for_a_mirror_symmetric_level_face():
    face = symmetric_level_face()
    assert symmetry_loss(face).item() == pytest.approx(0, abs=1e-7)
    assert tilt_loss(face).item() == pytest.approx(0, abs=1e-7)
    assert torch.allclose(lm.mirror(face), face)


def test_symmetry_and_tilt_known_values():
    face = symmetric_level_face()
    shifted = face + torch.tensor([0.1, 0.0])
    assert symmetry_loss(shifted).item() == pytest.approx(0.1, abs=1e-6)
    tilted = face.clone()
    tilted[:, [b for _, b in lm.LEFT_RIGHT_PAIRS], 1] += 0.05
    assert tilt_loss(tilted).item() == pytest.approx(0.05, abs=1e-6)


def test_expression_is_zero_for_closed_lips_and_sums_the_gaps():
    face = random_face(3, n=1)
    for a, b in lm.INNER_LIP_PAIRS:
        face[:, b, 1] = face[:, a, 1]
    assert expression_loss(face).item() == pytest.approx(0, abs=1e-7)
    face[:, 66, 1] += 0.02
    face[:, 67, 1] -= 0.01
    assert expression_loss(face).item() == pytest.approx(0.03, abs=1e-6)


def test_mask_loss_by_hand_on_3x3():
    m = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2], [1.0, 0.0, 0.5]]).view(1, 1, 3, 3)
    # p = 2: mean of squares
    penalty = (0 + .25 + 1 + .04 * 3 + 1 + 0 + .25) / 9
    vertical = ((.2 - 0) ** 2 + (.2 - .5) ** 2 + (.2 - 1) ** 2 + (1 - .2) ** 2 + (0 - .2) ** 2 + (.5 - .2) ** 2) / 6
    horizontal = ((.5 - 0) ** 2 + (1 - .5) ** 2 + 0 + 0 + (0 - 1) ** 2 + (.5 - 0) ** 2) / 6
    assert total_variation(m).item() == pytest.approx(vertical + horizontal, abs=1e-6)
    assert mask_loss(m, p=2).item() == pytest.approx(penalty + vertical + horizontal, abs=1e-6)
    assert mask_loss(m, p=1).item() == pytest.approx(m.mean().item() + vertical + horizontal, abs=1e-6)


def test_lsgan_losses():
    assert discriminator_adversarial_loss(torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)).item() == 0
    assert discriminator_adversarial_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 2
    assert generator_adversarial_loss(torch.ones(1, 1, 2, 2)).item() == 0
    assert generator_adversarial_loss(-torch.ones(1, 1, 2, 2)).item() == 4


def test_identity_losses():
    e = torch.randn(4, 128)
    assert identity_cosine_loss(e, e).item() == pytest.approx(0, abs=1e-6)
    assert identity_cosine_loss(e, -e).item() == pytest.approx(2, abs=1e-6)
    assert identity_l2_loss(e, e + torch.tensor([3.0] + [0.0] * 127)).item() == pytest.approx(3, abs=1e-5)


def test_texture_loss_is_zero_for_identical_faces_and_masked():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 32, 32, generator=g)
    pts = random_face(7)
    canonical = random_face(8, n=1)[0]
    assert texture_loss(img, pts, img, pts, canonical).item() == pytest.approx(0, abs=1e-5)
    other = torch.rand(2, 3, 32, 32, generator=g)
    assert texture_loss(img, pts, other, pts, canonical).item() > 0.1
    zero_mask = torch.zeros(2, 1, 32, 32)
    assert texture_loss(img, pts, other, pts, canonical, mask=zero_mask).item() == 0
    # Inputs of another size are compared at the output's size.
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xs), torch.cos(2 * ys), xs * ys])[None].expand(2, -1, -1, -1)
    small = torch.nn.functional.interpolate(smooth, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert texture_loss(smooth, pts, small, pts, canonical).item() < 0.01


def test_weighted_sum_skips_zero_weight_terms():
    calls = []

    def term(name, value):
        def f():
            calls.append(name)
            return torch.tensor(value)
        return f

    out = weighted_sum({"a": 2.0, "b": 0.0, "c": 0.5}, {"a": term("a", 1.0), "b": term("b", 9.0), "c": term("c", 4.0)})
    assert calls == ["a", "c"]
    assert out.total.item() == 4.0 and set(out.terms) == {"a", "c"}
    with pytest.raises(ValueError):
        weighted_sum({"a": 0.0}, {"a": term("a", 1.0)})


def test_packaged_mean_face_is_symmetric_level_and_neutral():
    face = lm.mean_face()[None]
    assert face.shape == (1, 68, 2) and 0.1 < face.min() and face.max() < 0.9
    assert symmetry_loss(face).item() < 1e-6 and tilt_loss(face).item() < 1e-6
    assert expression_loss(face).item() < 1e-6
    assert torch.allclose(lm.mirror(face), face, atol=1e-6)
