import cv2
import numpy as np
import pytest
import torch

from dgeo.errors import InputError
from dgeo.geometry import sample, spatial_gradient


def test_integer_points_return_pixels_exactly():
    fmap = torch.randn(2, 3, 5, 7, dtype=torch.float64)  # asymmetric H != W
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    uv = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(2, -1, -1).double()
    values, valid = sample(fmap, uv)
    assert valid.all()
    np.testing.assert_allclose(values.numpy(), fmap.flatten(2).transpose(1, 2).numpy(), atol=1e-14)
    v, _ = sample(fmap, uv.reshape(2, 5, 7, 2))  # any number of point dimensions
    assert v.shape == (2, 5, 7, 3)


def test_known_bilinear_value_and_borders():
    # gn_net's swapped corner weights gave 7.5 here (ALGORITHMS 4); the correct value is 9.0
    g = (4 * torch.arange(4.0)[:, None] + torch.arange(4.0) + 1)[None, None].double()
    uv = torch.tensor([[[1.2, 1.7], [3.0, 3.0], [3.2, 1.0], [-0.1, 0.0], [0.0, 3.0]]]).double()
    values, valid = sample(g, uv)
    np.testing.assert_allclose(values[0, :, 0].numpy(), [9.0, 16.0, 8.0, 1.0, 13.0])
    assert valid[0].tolist() == [True, True, False, False, True]


@pytest.mark.parametrize(
    "mode, interp", [("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)]
)
def test_matches_opencv_remap(mode, interp):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (23, 31)).astype(np.float32)
    pts = np.stack([rng.uniform(2, 28, 500), rng.uniform(2, 20, 500)], -1).astype(np.float32)
    ref = cv2.remap(img, pts[:, None, 0], pts[:, None, 1], interp, borderMode=cv2.BORDER_REPLICATE)
    values, _ = sample(torch.from_numpy(img)[None, None], torch.from_numpy(pts)[None], mode=mode)
    np.testing.assert_allclose(
        values[0, :, 0].numpy(), ref[:, 0], atol=2e-3 if mode == "bicubic" else 1e-5
    )


def test_gradients_are_exact_on_quadratic_maps_and_extrapolate_at_borders():
    h, w = 6, 9
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    fmap = torch.stack([xs**2 + 3 * ys, 2 * xs - ys**2])[None]
    uv = torch.tensor([[[2.5, 1.5], [4.0, 3.0], [0.0, 0.0], [8.0, 5.0], [7.3, 2.6]]]).double()
    _values, _valid, grads = sample(fmap, uv, return_gradients=True)
    x, _y = uv[0].unbind(-1)
    np.testing.assert_allclose(grads[0, :2, 0, 0].numpy(), 2 * x[:2].numpy())  # d/dx x^2, interior
    np.testing.assert_allclose(grads[0, 2, 0, 0].numpy(), 1.0)  # first column: 1^2 - 0^2
    np.testing.assert_allclose(grads[0, :, 0, 1].numpy(), 3.0)
    np.testing.assert_allclose(grads[0, :, 1, 0].numpy(), 2.0)  # linear: exact, incl. borders
    np.testing.assert_allclose(grads[0, 1, 1, 1].numpy(), -2 * 3.0)
    # at the last column the one-sided difference (not half of it, as replicate padding gives)
    np.testing.assert_allclose(grads[0, 3, 0, 0].numpy(), 8**2 - 7**2)
    # precomputed gradient maps give the same answer
    gm = spatial_gradient(fmap)
    _, _, g2 = sample(fmap, uv, return_gradients=True, gradient_map=gm)
    np.testing.assert_allclose(g2.numpy(), grads.numpy())


def test_autograd_through_values_and_points():
    fmap = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    uv = torch.tensor([[[3.3, 4.6], [1.2, 6.1]]], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda f, p: sample(f, p, return_gradients=True)[::2], (fmap, uv))
    # inside a cell, the autograd derivative of bilinear values is the finite difference of the cell
    v, _ = sample(fmap, uv)
    (dv,) = torch.autograd.grad(v[0, 0, 0], uv)
    f = fmap.detach()[0, 0]
    x0, y0, ty = 3, 4, 0.6
    ddx = (1 - ty) * (f[y0, x0 + 1] - f[y0, x0]) + ty * (f[y0 + 1, x0 + 1] - f[y0 + 1, x0])
    np.testing.assert_allclose(dv[0, 0, 0].item(), ddx.item(), atol=1e-12)


def test_bad_input():
    with pytest.raises(InputError, match="B = 2"):
        sample(torch.zeros(2, 1, 4, 4), torch.zeros(3, 5, 2))
    with pytest.raises(InputError, match="mode"):
        sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 2), mode="area")
    with pytest.raises(InputError, match="shape"):
        sample(torch.zeros(1, 4, 4), torch.zeros(1, 5, 2))


# ---------------------------------------------------------------------------------- flow warps
def test_cell_pixels_follow_the_label_convention():
    from dgeo.geometry import cell_pixels

    g = cell_pixels(2, 3, 8, dtype=torch.float64)
    assert g.shape == (2, 3, 2)
    assert g[..., 0].tolist() == [[4, 12, 20], [4, 12, 20]]
    assert g[..., 1].tolist() == [[4, 4, 4], [12, 12, 12]]
    assert cell_pixels(2, 2, 1)[1, 1].tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="positive"):
        cell_pixels(0, 3)


def test_warp_by_flow_matches_a_direct_shift_and_flags_the_border():
    from dgeo.geometry import warp_by_flow

    src = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    flow = torch.zeros(2, 2, 5, 6, dtype=torch.float64)
    flow[:, 0] = 2.0  # each target pixel sees the source two columns to the right
    out, valid = warp_by_flow(src, flow)
    torch.testing.assert_close(out[..., :4], src[..., 2:])
    assert valid[..., :4].all() and not valid[..., 4:].any()
    # a half-pixel shift blends two neighbours linearly
    flow[:, 0], flow[:, 1] = 0.5, 0.0
    out, _ = warp_by_flow(src, flow)
    torch.testing.assert_close(out[..., :5], 0.5 * (src[..., :5] + src[..., 1:]))


def test_warp_by_flow_source_validity_covers_every_blended_neighbour():
    from dgeo.geometry import warp_by_flow

    src = torch.arange(20.0).reshape(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 1.5
    sv = torch.ones(1, 4, 5, dtype=torch.bool)
    sv[0, 1, 4] = False
    _, valid = warp_by_flow(src, flow, sv)
    expect = torch.zeros(4, 5, dtype=torch.bool)
    expect[:, :3] = True
    expect[1, 2] = False  # x = 3.5 blends columns 3 and 4; (1, 4) is invalid
    assert torch.equal(valid[0], expect)
    _, valid_n = warp_by_flow(src, torch.zeros_like(flow), sv, mode="nearest")
    assert torch.equal(valid_n, sv)
    with pytest.raises(InputError, match="flow must have shape"):
        warp_by_flow(src, flow[:, :1])


def test_warp_by_flow_gradients_match_finite_differences():
    from dgeo.geometry import warp_by_flow

    src = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    flow = (0.3 * torch.randn(1, 2, 4, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, f: warp_by_flow(s, f)[0], (src, flow))
