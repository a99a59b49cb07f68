"""Known-answer tests of the polyharmonic spline and sparse_image_warp (Cole Algorithm 1)."""

import pytest
import torch

from frontalab.models.warp import interpolate_spline, sparse_image_warp


def _points(n, p, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, p, 2, generator=g, dtype=torch.float64) * (size - 1)


@pytest.mark.parametrize("order", [1, 2])
def test_interpolant_hits_control_points(order):
    pts = _points(3, 14, 64, 0)
    vals = torch.randn(3, 14, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    out = interpolate_spline(pts, vals, pts, order)
    assert (out - vals).abs().max() <= 1e-4


# float32 evaluates sums of weighted terms larger than their result: its error at the points is
# 1e-5 to 1e-4 of the values, depending on the CPU's summation order; a thousandth of a pixel.
FLOAT32_TOLERANCE = 1e-3


def test_interpolant_float32_hits_control_points():
    pts = _points(2, 20, 128, 2).float()
    vals = torch.randn(2, 20, 3, generator=torch.Generator().manual_seed(3)) * 10
    assert (interpolate_spline(pts, vals, pts, 1) - vals).abs().max() <= FLOAT32_TOLERANCE


def test_float32_warp_of_a_face_has_no_stripes():
    """The thesis' texture target: a face's 14 texture points (the inner lips nearly coincide) moved to the
    mean face's. In float32 the spline's large, opposite weights once cancelled into per-pixel noise that
    drew vertical stripes on every warped texture; now float32 and float64 warps agree."""
    from frontalab.models import landmarks as lm

    size = 128
    mean = lm.to_pixels(lm.mean_face()[list(lm.TEXTURE_POINTS)].double(), size)[None]
    g = torch.Generator().manual_seed(4)
    moved = mean + torch.randn(mean.shape, generator=g, dtype=torch.float64) * 3
    y, x = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                          torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    image = torch.stack([x, y, x * y])[None]  # smooth: no column differs from its neighbours' mean
    exact = sparse_image_warp(image, moved, mean)
    single = sparse_image_warp(image.float(), moved.float(), mean.float())
    assert (single.double() - exact).abs().max() < 1e-4
    across = (single[..., 1:-1] - (single[..., :-2] + single[..., 2:]) / 2).abs().mean()
    assert across < 1e-3


def test_coincident_control_points_are_interpolated_exactly():
    # A closed mouth's inner lips: in the mean face points 62 and 66 coincide, 61/67 and 63/65 lie
    # 0.04 px apart. Exact duplicates make the plain system singular; near ones cost float32 pixels.
    from frontalab.models import landmarks as lm

    face = lm.to_pixels(lm.mean_face(), 64)[None]
    assert torch.equal(face[0, 62], face[0, 66])
    x, y = face[..., 0], face[..., 1]
    shift = torch.stack([2 * torch.sin(x / 9) + 3, 1.5 * torch.cos(y / 7) - 2], -1)  # smooth, as faces move
    for dtype, tolerance in ((torch.float32, FLOAT32_TOLERANCE), (torch.float64, 1e-9)):
        for order in (1, 2):
            out = interpolate_spline(face.to(dtype), shift.to(dtype), face.to(dtype), order)
            assert (out - shift.to(dtype)).abs().max() <= tolerance


def test_affine_data_is_reproduced_exactly_everywhere():
    # The polynomial part of the interpolant is linear: affine data needs no radial term.
    pts = _points(1, 10, 32, 4)
    f = lambda q: 0.3 * q[..., :1] - 1.2 * q[..., 1:] + 7.0
    query = _points(1, 50, 32, 5)
    assert (interpolate_spline(pts, f(pts), query, 1) - f(query)).abs().max() < 1e-8


def test_zero_displacement_is_identity():
    img = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    pts = torch.stack([_points(1, 9, 24, 6)[0], _points(1, 9, 24, 7)[0]]).float()
    out = sparse_image_warp(img, pts, pts)
    assert (out - img).abs().max() < 1e-5


def test_translation_moves_interior():
    img = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    src = _points(1, 8, 40, 8).float()
    dst = src + torch.tensor([3.0, -2.0])  # content moves right 3, up 2
    out = sparse_image_warp(img, src, dst, boundary_points_per_edge=0)
    # out(x, y) = img(x - 3, y + 2) wherever both are inside
    assert (out[0, 0, 0:38, 3:40] - img[0, 0, 2:40, 0:37]).abs().max() < 1e-4


def test_each_batch_item_uses_its_own_points():
    img = torch.rand(1, 1, 30, 30, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    src = _points(1, 6, 30, 9).float().expand(2, -1, -1)
    dst = torch.stack([src[0], src[0] + torch.tensor([2.0, 0.0])])
    both = sparse_image_warp(img, src, dst, boundary_points_per_edge=0)
    alone = sparse_image_warp(img[1:], src[1:], dst[1:], boundary_points_per_edge=0)
    assert (both[1:] - alone).abs().max() < 1e-5
    assert (both[0] - img[0]).abs().max() < 1e-5


def test_dest_samples_source():
    img = torch.rand(1, 1, 50, 50, generator=torch.Generator().manual_seed(3))
    src = torch.tensor([[[10.0, 12.0], [30.0, 20.0], [22.0, 38.0], [40.0, 40.0]]])
    dst = torch.tensor([[[14.0, 15.0], [28.0, 18.0], [25.0, 35.0], [37.0, 42.0]]])
    out = sparse_image_warp(img, src, dst)
    for (sx, sy), (dx, dy) in zip(src[0].long().tolist(), dst[0].long().tolist()):
        assert out[0, 0, dy, dx].item() == pytest.approx(img[0, 0, sy, sx].item(), abs=1e-4)


def test_gradcheck_float64():
    img = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([[[2.0, 2.0], [4.1, 3.0], [3.0, 4.2]]], dtype=torch.float64, requires_grad=True)
    dst = torch.tensor([[[2.3, 2.2], [4.0, 3.3], [2.8, 4.0]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, s, d: sparse_image_warp(i, s, d), (img, src, dst), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("order,kernel", [(1, "linear"), (2, "thin_plate_spline")])
def test_spline_matches_scipy_rbf_interpolator(order, kernel):
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    g = torch.Generator().manual_seed(11)
    pts = torch.rand(1, 12, 2, generator=g, dtype=torch.float64) * 63
    vals = torch.randn(1, 12, 2, generator=g, dtype=torch.float64) * 4
    query = torch.rand(1, 200, 2, generator=g, dtype=torch.float64) * 63
    ref = scipy_interpolate.RBFInterpolator(pts[0].numpy(), vals[0].numpy(), kernel=kernel, degree=1)(query[0].numpy())
    assert (interpolate_spline(pts, vals, query, order)[0] - torch.from_numpy(ref)).abs().max() < 1e-8


def test_order2_warp_agrees_with_kornia_thin_plate_spline():
    """kornia centres its kernels on the target points rather than the fitted ones, so the two
    thin-plate splines coincide only as the displacements shrink; compare there, on images."""
    from kornia.geometry.transform import get_tps_transform, warp_image_tps

    size = 48
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([torch.sin(6 * xs) * torch.cos(4 * ys), xs * ys, torch.cos(5 * xs + 3 * ys)])[None].double()
    g = torch.Generator().manual_seed(1)
    src = (torch.rand(1, 14, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2) * (size - 1)
    dst = src + 0.01 * torch.randn(1, 14, 2, generator=g, dtype=torch.float64)
    ours = sparse_image_warp(img, src, dst, order=2, boundary_points_per_edge=0)
    unit = lambda p: p / (size - 1) * 2 - 1  # kornia works in [-1, 1]
    kernel, affine = get_tps_transform(unit(dst), unit(src))
    theirs = warp_image_tps(img, unit(src), kernel, affine, align_corners=True, padding_mode="border")
    assert (ours - theirs).abs().max() < 1e-3
    assert (ours - img).abs().max() > 1e-3  # the warp did move the image
