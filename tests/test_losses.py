"""Known-answer tests of the thesis and Cole loss terms."""

import pytest
import torch

from frontalab.losses.adversarial import discriminator_adversarial_loss, generator_adversarial_loss
from frontalab.losses.composite import weighted_sum
from frontalab.losses.identity import identity_cosine_loss, identity_l2_loss, identity_relation_loss
from frontalab.losses.landmark import expression_loss, geometry_loss, symmetry_loss, tilt_loss
from frontalab.losses.mask import mask_loss, total_variation
from frontalab.losses.perceptual import perceptual_loss
from frontalab.losses.texture import canonical_inputs, texture_loss
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


def test_identity_relation_keeps_people_apart():
    # Three people at the corners of a right triangle (3-4-5): their pairwise distances are 3, 4 and 5.
    people = torch.zeros(3, 128)
    people[1, 0], people[2, 1] = 3.0, 4.0
    shifted = people + 7.0  # a translation keeps every distance: nothing to pay
    assert identity_relation_loss(people, shifted).item() == pytest.approx(0, abs=1e-5)
    alike = torch.ones(3, 128)  # one face for everyone: the inputs' mean distance
    assert identity_relation_loss(people, alike).item() == pytest.approx(4, abs=1e-4)
    halved = people / 2  # outputs half as far apart: half that
    assert identity_relation_loss(people, halved).item() == pytest.approx(2, abs=1e-5)
    assert identity_relation_loss(people[:1], alike[:1]).item() == 0  # one face has no pairs
    out = alike.clone().requires_grad_()
    identity_relation_loss(people, out).backward()  # zero distances: no NaN in the gradient
    assert torch.isfinite(out.grad).all()


def test_texture_loss_is_zero_for_identical_faces_and_masked():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 32, 32, generator=g)
    pts = random_face(7)
    canonical = random_face(8, n=1)[0]
    target = canonical_inputs(img, pts, canonical, 32)
    assert texture_loss(target, img, pts, canonical).item() == pytest.approx(0, abs=1e-5)
    other = torch.rand(2, 3, 32, 32, generator=g)
    assert texture_loss(target, other, pts, canonical).item() > 0.1
    zero_mask = torch.zeros(2, 1, 32, 32)
    assert texture_loss(target, other, pts, canonical, mask=zero_mask).item() == 0
    # Inputs of another size are compared at the output's size.
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xs), torch.cos(2 * ys), xs * ys])[None].expand(2, -1, -1, -1)
    small = torch.nn.functional.interpolate(smooth, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert texture_loss(canonical_inputs(smooth, pts, canonical, 32), small, pts, canonical).item() < 0.01


def test_texture_over_a_region_is_the_mean_error_inside_it_whatever_the_mask():
    target = torch.zeros(2, 3, 8, 8)
    output = torch.zeros(2, 3, 8, 8)
    output[..., :4] = 1.0  # wrong by 1 on the left half, right on the right half
    region = torch.zeros(8, 8)
    region[:, :4] = 1.0
    canonical = random_face(8, n=1)[0]
    assert texture_loss(target, output, None, canonical, region=region).item() == pytest.approx(1.0)
    region = torch.zeros(8, 8)
    region[:, 4:] = 1.0
    assert texture_loss(target, output, None, canonical, region=region).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        texture_loss(target, output, None, canonical, mask=torch.ones(2, 1, 8, 8), region=region)


def test_mask_term_towards_the_face_region_is_zero_at_the_region_and_eq_3_8_without_it():
    region = lm.face_region(lm.mean_face(), 32)
    assert mask_loss(region[None, None], p=1, target=region).item() == pytest.approx(
        total_variation(region[None, None]).item(), abs=1e-6)
    zero = torch.zeros(1, 1, 32, 32)
    # Pulled to the region, an empty mask costs the region's area; pulled to zero (eq. 3.8) it is free.
    assert mask_loss(zero, p=1, target=region).item() == pytest.approx(region.mean().item(), abs=1e-6)
    assert mask_loss(zero, p=1).item() == 0


def test_face_region_covers_the_landmarks_and_a_forehead_and_nothing_else():
    face = lm.mean_face()
    region = lm.face_region(face, 64)
    px = lm.to_pixels(face, 64).round().long()
    inner = [30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 62]  # nose, eyes, mouth
    assert all(region[y, x] == 1 for x, y in px[inner].tolist())
    brow_y = int(px[[19, 24], 1].min())
    assert region[brow_y - 3, 32] == 1  # the forehead above the brows
    assert region[0, 32] == 0 and region[32, 0] == 0 and region[63, 32] == 0  # hair, ears' side, below the chin
    assert 0.2 < region.mean() < 0.5


def test_a_wider_face_region_holds_the_face_region_and_the_jaw_and_hair_around_it():
    face = lm.mean_face()
    region, wide = lm.face_region(face, 64), lm.face_region(face, 64, scale=1.25)
    assert torch.all(wide >= region - 1e-6)  # widened about its centre, it keeps every pixel of the face
    px = lm.to_pixels(face, 64).round().long()
    chin_x, chin_y = px[8].tolist()
    assert region[chin_y + 3, chin_x] == 0 and wide[chin_y + 3, chin_x] == 1  # below the chin: the jaw's line
    assert region[5, 32] == 0 and wide[5, 32] == 1  # above the forehead: hair
    assert region.mean() < wide.mean() < 0.75


def test_the_encoders_blur_removes_stripes_and_keeps_smooth_faces():
    """Encoder gradients printed 2-px stripes on 64 px outputs; the blur (its own adjoint) low-passes them."""
    from frontalab.losses.objectives import seen_by_encoder

    x = torch.arange(32.0)
    stripes = ((-1.0) ** x).expand(1, 3, 32, 32)  # columns alternate +1 / -1
    smooth = torch.sin(x / 5).expand(1, 3, 32, 32)
    assert torch.equal(seen_by_encoder(stripes, 0.0), stripes)
    assert seen_by_encoder(stripes, 1.0)[..., 8:24].abs().max() < 0.02
    assert (seen_by_encoder(smooth, 1.0) - smooth)[..., 8:24].abs().max() < 0.02
    assert seen_by_encoder(torch.full((1, 3, 16, 16), 0.3), 1.0).sub(0.3).abs().max() < 1e-6


def test_perceptual_loss_is_zero_for_equal_maps_and_scale_free_per_layer():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 4, 8, 8, generator=g), 100 * torch.rand(2, 8, 4, 4, generator=g)]
    assert perceptual_loss(maps, maps).item() == 0
    # Each layer is measured relative to its target's magnitude: a 10% error counts 0.1 at any scale.
    assert perceptual_loss([1.1 * m for m in maps], maps).item() == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError):
        perceptual_loss(maps, maps[:1])


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


def test_cole_terms_have_their_known_values():
    from frontalab.losses.cole import COLE_SIDE, cole_identity_loss, cole_landmark_loss, cole_texture_loss

    face = random_face(3)
    # One pixel of Cole's 224 px images on every coordinate: an MSE of exactly 1.
    assert cole_landmark_loss(face + 1 / COLE_SIDE, face).item() == pytest.approx(1.0, rel=1e-4)
    assert cole_landmark_loss(face, face).item() == 0
    a = torch.zeros(2, 3, 4, 4)
    assert cole_texture_loss(a + 0.5, a).item() == pytest.approx(0.5)
    e = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    assert cole_identity_loss(e, 3 * e).item() == pytest.approx(-1.0, abs=1e-6)
    assert cole_identity_loss(e, -e).item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- the objectives, driven directly


@pytest.fixture(scope="module")
def frozen():
    """The frozen networks every objective reads: dlib's encoder and the landmark student."""
    from frontalab.config import load_config
    from frontalab.models.build import encoder_from_config
    from frontalab.models.landmark_net import load_landmark_net

    return encoder_from_config(load_config(None, [])).eval(), load_landmark_net(None).eval()


def generator_terms(frozen, *overrides: str) -> dict[str, float]:
    """One generator phase's unweighted terms, for a seeded 64-px decoder on a seeded batch of three faces."""
    from frontalab.config import load_config
    from frontalab.losses.papers import paper
    from frontalab.models.thesis import Discriminator

    encoder, landmark_net = frozen
    cfg = load_config(None, ["model.out_size=64", *overrides])
    system = paper(cfg.model.decoder)
    torch.manual_seed(1)
    G = system.build_generator(cfg, encoder.feature_dim)
    D = Discriminator() if system.has_discriminator(cfg) else None
    objective = system.objective(cfg, G, D, encoder, landmark_net, lm.mean_face())
    g = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(3, encoder.feature_dim, generator=g),
             "image": torch.rand(3, 3, 64, 64, generator=g) * 2 - 1,
             "landmarks": lm.mean_face()[None].expand(3, -1, -1) + 0.01 * torch.randn(3, 68, 2, generator=g),
             "embedding": torch.nn.functional.normalize(torch.randn(3, 128, generator=g), dim=1)}
    return {k: v.item() for k, v in objective.generator_phase(batch).loss.terms.items()}


THESIS_WEIGHTS = ("loss.perceptual=1", "loss.identity_relation=1", "loss.identity_l2=1", "model.input_texture=true")


@pytest.mark.parametrize("option, changes", [
    ("loss.texture_frame=canonical", {"texture"}),
    ("loss.texture_region=face", {"texture"}),
    ("loss.mask_target=face", {"mask"}),
    ("loss.identity_chip=canonical", {"identity", "identity_l2", "identity_relation"}),
    ("loss.encoder_blur=1.5", {"identity", "identity_l2", "identity_relation", "perceptual"}),
])
def test_each_thesis_option_changes_the_terms_it_should_and_no_other(frozen, option, changes):
    base = generator_terms(frozen, *THESIS_WEIGHTS)
    other = generator_terms(frozen, *THESIS_WEIGHTS, option)
    assert set(base) == set(other) == {"texture", "alpha_geo", "sym", "tilt", "expr", "mask", "identity", "identity_l2",
                                       "identity_relation", "perceptual", "adversarial"}
    assert {k for k in base if base[k] != other[k]} == changes, (base, other)


def test_region_scale_moves_the_face_region_of_the_terms_that_use_it(frozen):
    """The wider region reaches the texture, mask and perceptual terms only where they read the region. (The
    input-texture decoder's mask starts at the region too, so the papers' decoder is compared here.)"""
    on_region = (*THESIS_WEIGHTS[:-1], "loss.texture_region=face", "loss.mask_target=face")
    base, wider = generator_terms(frozen, *on_region), generator_terms(frozen, *on_region, "loss.region_scale=1.4")
    assert {k for k in base if base[k] != wider[k]} == {"texture", "mask", "perceptual"}
    # Where no term reads it (the thesis' mask-weighted texture, the mask pulled to zero), nothing moves.
    assert generator_terms(frozen) == generator_terms(frozen, "loss.region_scale=1.4")


def test_pixel_symmetry_is_zero_for_a_mirror_image_and_a_thesis_term_off_by_default(frozen):
    from frontalab.config import load_config
    from frontalab.losses.texture import pixel_symmetry_loss

    mirrored = torch.linspace(-1, 1, 8).abs().expand(2, 3, 8, 8)  # every row reads the same both ways
    assert pixel_symmetry_loss(mirrored).item() == 0
    halves = torch.ones(1, 3, 8, 8)
    halves[..., 4:] = -1  # +1 on the left, -1 on the right: every pixel 2 from its mirror
    assert pixel_symmetry_loss(halves).item() == pytest.approx(2.0)
    assert load_config(None, []).loss.pixel_symmetry == 0  # ours: the thesis is the default
    base, on = generator_terms(frozen), generator_terms(frozen, "loss.pixel_symmetry=0.5")
    assert "pixel_symmetry" not in base and on.pop("pixel_symmetry") > 0 and on == base


def test_cole_objective_has_its_terms_and_the_blur_reaches_only_the_encoders(frozen):
    cole = ("model.decoder=cole", "model.cole_hidden=16", "model.cole_channels=16", "loss.cole.perceptual=1")
    base, blurred = generator_terms(frozen, *cole), generator_terms(frozen, *cole, "loss.encoder_blur=1.5")
    assert set(base) == {"cole.texture", "cole.landmark", "cole.identity", "cole.perceptual"}
    assert {k for k in base if base[k] != blurred[k]} == {"cole.identity", "cole.perceptual"}
    assert "cole.perceptual" not in generator_terms(frozen, *cole[:-1])  # weight 0: never computed


def test_the_loss_section_is_made_from_the_term_table_and_the_decoder_is_one_of_the_papers():
    from dataclasses import fields

    from frontalab.config import LossOptions, load_config
    from frontalab.losses.papers import paper
    from frontalab.losses.terms import TERMS, weight
    from frontalab.sections import ConfigError

    loss = load_config(None, []).loss
    weights = {t.key: t.default for t in TERMS if t.phase == "G"}
    options = {f.name for f in fields(LossOptions)}

    def keys(node, prefix=""):
        return {k for name, v in node.items()
                for k in (keys(v, f"{prefix}{name}.") if hasattr(v, "items") else {prefix + name})}

    # Every key of the section is a term's weight, at the row's default, or an option: none is a silent no-op.
    assert keys(loss) == set(weights) | options and not set(weights) & options
    assert {key: weight(loss, key) for key in weights} == weights
    assert weights["alpha_geo"] == 160 and weights["cole.texture"] == 100  # the papers' values
    with pytest.raises(ConfigError, match="unknown config key 'loss.cole.sharpness'"):
        load_config(None, ["loss.cole.sharpness=2"])
    with pytest.raises(ConfigError, match="'loss.identity_relation'.*outside the valid range"):
        load_config(None, ["loss.identity_relation=-1"])
    with pytest.raises(ConfigError, match="'model.decoder': 'pix2pix'; choose one of: thesis, cole"):
        load_config(None, ["model.decoder=pix2pix"])
    with pytest.raises(ValueError, match="model.decoder='pix2pix' is none of thesis, cole"):
        paper("pix2pix")
    # What a paper's system cannot train with is its registry entry's to say: the thesis' mask term needs a mask.
    with pytest.raises(ConfigError, match="'loss.mask' must be 0 when model.mask=false"):
        load_config(None, ["model.mask=false"])
    assert load_config(None, ["model.mask=false", "loss.mask=0"]).loss.mask == 0
    assert load_config(None, ["model.decoder=cole", "model.mask=false"]).loss.mask == 1  # Cole reads no loss.mask
