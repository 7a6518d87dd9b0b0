"""Dense correspondences from depth and poses, checked against closed forms on planar scenes.

Depth maps are computed in numpy by intersecting pixel rays with planes; warps are checked
against the plane-induced homography and OpenCV's projectPoints, independently of dgeo's camera
code.
"""

import math

import cv2
import numpy as np
import pytest
import torch

from dgeo.data.synthetic.correspondences import (
    correspondences,
    pixel_grid,
    sample_correspondences,
    warp_points,
)
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rot(axis, deg):
    """Rotation matrix about a coordinate axis (numpy)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def plane_depth(K, R, t, w, h, n, d):
    """z-depth ``(h, w)`` of the plane ``n . X = d`` (world) seen by a pinhole camera
    ``x = K (R X + t)``; 0 where the plane is behind the camera or parallel to the ray."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.linalg.solve(K, np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3).T)  # z = 1
    C = -R.T @ t
    denom = n @ (R.T @ rays)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (d - n @ C) / denom
    lam = np.where(np.isfinite(lam) & (lam > 0), lam, 0.0)
    return lam.reshape(h, w)


def homography(Ka, Ra, ta, Kb, Rb, tb, n, d):
    """Plane-induced homography from view a to view b for the world plane ``n . X = d``."""
    R_ba, t_ba = Rb @ Ra.T, tb - Rb @ Ra.T @ ta
    n_a = Ra @ n
    d_a = d + n_a @ ta
    return Kb @ (R_ba + np.outer(t_ba, n_a) / d_a) @ np.linalg.inv(Ka)


def apply_h(H, uv):
    x = np.concatenate([uv, np.ones_like(uv[..., :1])], -1) @ H.T
    return x[..., :2] / x[..., 2:]


Ka = np.array([[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]])
Kb = np.array([[60.0, 0, 35.0], [0, 60.0, 27.0], [0, 0, 1]])
WA, HA, WB, HB = 64, 48, 72, 54
CAM_A = Camera.from_K(torch.from_numpy(Ka), WA, HA)
CAM_B = Camera.from_K(torch.from_numpy(Kb), WB, HB)
RA, TA = rot(1, 4) @ rot(0, -3), np.array([0.1, -0.2, 0.3])
RB, TB = rot(1, -12) @ rot(2, 5), np.array([0.6, 0.1, -0.2])
PLANES = {  # world planes n . X = d
    "fronto-parallel": (np.array([0.0, 0.0, 1.0]), 4.0),
    "tilted": (np.array([0.4, -0.3, 1.0]) / np.linalg.norm([0.4, -0.3, 1.0]), 3.5),
}


def pose(R, t, dtype=torch.float64):
    return Pose.from_Rt(torch.from_numpy(R), torch.from_numpy(t)).to(dtype)


def depth_tensor(*maps, dtype=torch.float64):
    return torch.from_numpy(np.stack(maps)[:, None]).to(dtype)


@pytest.mark.parametrize("plane", list(PLANES))
def test_warp_matches_the_plane_homography(plane):
    n, d = PLANES[plane]
    depth_a = plane_depth(Ka, RA, TA, WA, HA, n, d)
    assert (depth_a > 0).all()
    uv_b, z_b, valid = warp_points(depth_tensor(depth_a), CAM_A, pose(RA, TA), CAM_B, pose(RB, TB))
    assert uv_b.shape == (1, HA, WA, 2) and z_b.shape == valid.shape == (1, HA, WA)
    ref = apply_h(homography(Ka, RA, TA, Kb, RB, TB, n, d), pixel_grid(HA, WA).double().numpy())
    assert np.abs(uv_b[0].numpy() - ref).max() < 1e-3
    inside = ((ref >= -0.5) & (ref <= np.array([WB, HB]) - 0.5)).all(-1)
    assert 0.2 < inside.mean() < 1.0  # the views overlap partly: both branches are tested
    np.testing.assert_array_equal(valid[0].numpy(), inside)
    # the depth in b is the plane's depth along b's ray through uv_b (b's closed form)
    Kb_rays = np.linalg.solve(Kb, np.concatenate([ref, np.ones_like(ref[..., :1])], -1)[..., None])
    Cb = -RB.T @ TB
    lam = (d - n @ Cb) / (n @ (RB.T @ Kb_rays[..., 0].reshape(-1, 3).T)).reshape(HA, WA)
    np.testing.assert_allclose(z_b[0].numpy(), lam, rtol=1e-9)


def test_warp_matches_opencv_with_distortion_and_batches():
    n, d = PLANES["tilted"]
    cam_b = Camera("OPENCV", WB, HB, [60.0, 61.0, 35.0, 27.0, -0.08, 0.01, 1e-3, -2e-3])
    cam_a = Camera("SIMPLE_RADIAL", WA, HA, [50.0, 31.5, 23.5, 0.05])
    # the distorted a needs its own depth: lift its undistorted rays in numpy via OpenCV
    xs, ys = np.meshgrid(np.arange(WA, dtype=np.float64), np.arange(HA, dtype=np.float64))
    pix = np.stack([xs, ys], -1).reshape(-1, 1, 2)
    Ka_s = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    dist_a = np.array([0.05, 0, 0, 0])
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
    xy = cv2.undistortPoints(pix, Ka_s, dist_a, None, None, None, crit).reshape(-1, 2)
    rays = np.concatenate([xy, np.ones_like(xy[:, :1])], -1)
    Ca = -RA.T @ TA
    lam = (d - n @ Ca) / (n @ (RA.T @ rays.T))
    X = Ca + (lam[:, None] * rays) @ RA  # world points of a's pixel centres
    depth_a = lam.reshape(HA, WA)
    ref, _ = cv2.projectPoints(
        X,
        cv2.Rodrigues(RB)[0],
        TB,
        np.array([[60.0, 0, 35], [0, 61, 27], [0, 0, 1]]),
        np.array([-0.08, 0.01, 1e-3, -2e-3]),
    )
    ref = ref.reshape(HA, WA, 2)
    # a batch of two: the same pair twice, the second with a shifted world (poses move along)
    shift = np.array([3.0, -1.0, 0.5])
    pa = Pose.from_Rt(
        torch.from_numpy(np.stack([RA, RA])), torch.from_numpy(np.stack([TA, TA - RA @ shift]))
    )
    pb = Pose.from_Rt(
        torch.from_numpy(np.stack([RB, RB])), torch.from_numpy(np.stack([TB, TB - RB @ shift]))
    )
    uv_b, _, valid = warp_points(depth_tensor(depth_a, depth_a), cam_a, pa, cam_b, pb)
    ok = valid[0].numpy()
    assert ok.mean() > 0.2
    assert np.abs(uv_b[0].numpy()[ok] - ref[ok]).max() < 1e-3
    assert np.abs(uv_b[1].numpy()[ok] - ref[ok]).max() < 1e-3


def test_round_trip_returns_to_the_pixel():
    n, d = PLANES["tilted"]
    cam_a = Camera("OPENCV", WA, HA, [50.0, 52.0, 31.5, 23.5, 0.03, -0.01, 5e-4, 1e-3])
    cam_b = Camera("SIMPLE_RADIAL", WB, HB, [60.0, 35.0, 27.0, -0.05])
    depth_a = depth_tensor(plane_depth(Ka, RA, TA, WA, HA, n, d))  # any positive depths do
    uv_b, z_b, valid = warp_points(depth_a, cam_a, pose(RA, TA), cam_b, pose(RB, TB))
    # back: each warped point as the single pixel (0, 0) of a 1x1 crop of b at uv_b, depth z_b
    ok = valid[0].reshape(-1)
    pts, zs = uv_b[0].reshape(-1, 2)[ok], z_b[0].reshape(-1)[ok]
    m = len(pts)
    crops = Camera(cam_b.model, WB, HB, cam_b.params.expand(m, -1)).crop(pts[:, 0], pts[:, 1], 1, 1)
    back, z_back, valid_back = warp_points(
        zs.reshape(m, 1, 1, 1), crops, pose(RB, TB), cam_a, pose(RA, TA)
    )
    assert valid_back.all()
    grid = pixel_grid(HA, WA, torch.float64).reshape(-1, 2)[ok]
    assert float((back.reshape(m, 2) - grid).abs().max()) < 1e-6
    torch.testing.assert_close(z_back.reshape(m), depth_a.reshape(-1)[ok], rtol=1e-9, atol=0)


def _visibility_setup(dtype=torch.float64):
    n, d = PLANES["tilted"]
    depth_a = plane_depth(Ka, RA, TA, WA, HA, n, d)
    depth_b = plane_depth(Kb, RB, TB, WB, HB, n, d)
    occluded = depth_b.copy()
    x0, x1, y0, y1 = 16, 33, 12, 26  # a small nearer plane in front of b only
    occluded[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    ref = apply_h(homography(Ka, RA, TA, Kb, RB, TB, n, d), pixel_grid(HA, WA).double().numpy())
    args = (depth_tensor(depth_a, depth_a, dtype=dtype), CAM_A, pose(RA, TA, dtype))
    depth_b = depth_tensor(depth_b, occluded, dtype=dtype)
    return args, depth_b, ref, (x0, x1, y0, y1)


def test_visibility_and_occlusion():
    args, depth_b, ref, (x0, x1, y0, y1) = _visibility_setup()
    uv_b, visible = correspondences(*args, depth_b, CAM_B, pose(RB, TB))
    inside = ((ref >= 0) & (ref <= np.array([WB, HB]) - 1)).all(-1)  # between pixel centres
    # unoccluded: every point inside b is visible (the plane is seen by both)
    np.testing.assert_array_equal(visible[0].numpy(), inside)
    # occluded: points on the near plane's pixels are hidden, those 1 px away from it are seen
    x, y = ref[..., 0], ref[..., 1]
    behind = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    clear = (x < x0 - 1) | (x > x1 + 1) | (y < y0 - 1) | (y > y1 + 1)
    assert behind.sum() > 40
    assert not visible[1].numpy()[behind].any()
    np.testing.assert_array_equal(visible[1].numpy()[clear], inside[clear])
    torch.testing.assert_close(uv_b[0], uv_b[1])


@pytest.mark.parametrize("cx_b", [0.31, -0.31])
def test_depth_edges_near_side_seen_far_side_exact(cx_b):
    # a near half-plane (x < 0, z = 2) in front of a far plane (z = 4); camera a at the origin,
    # camera b moved sideways by cx_b, both looking along +z. Depth maps in closed form.
    f, c, w, h = 50.0, 31.5, 64, 8
    cam = Camera("PINHOLE", w, h, [f, f, c, 3.5])

    def depth(center_x):
        x_n = (np.arange(w) - c) / f
        near = center_x + 2 * x_n < 0  # the ray reaches z = 2 at x < 0
        return np.broadcast_to(np.where(near, 2.0, 4.0), (h, w)).copy()

    pa = Pose.identity((), torch.float64)
    pb = Pose.from_Rt(torch.eye(3, dtype=torch.float64), torch.tensor([-cx_b, 0.0, 0.0]))
    d_a, d_b = depth_tensor(depth(0.0)), depth_tensor(depth(cx_b))
    uv_b, visible = correspondences(d_a, cam, pa, d_b, cam, pb)
    u = uv_b[0, ..., 0].numpy()
    on_grid = (u >= 0) & (u <= w - 1)
    near = depth(0.0) == 2.0
    X = depth(0.0) * (np.arange(w) - c) / f  # world x of a's points
    hidden = ~near & (X < -cx_b)  # the segment to b crosses z = 2 at x < 0
    vis = visible[0].numpy()
    assert not vis[~on_grid].any() and not vis[hidden].any()
    # every point of the near plane is seen, the edge pixels included (nothing is in front)
    np.testing.assert_array_equal(vis[near], on_grid[near])
    # the far plane is seen wherever b's four neighbours are on it too
    u_edge = c - f * cx_b / 2  # b's image x of the depth edge
    clear = ~near & ~hidden & on_grid & (u > u_edge + 1)
    assert clear.sum() > 50 and vis[clear].all()
    if cx_b < 0:
        assert hidden.sum() > 20


def test_sky_in_b_is_not_visible_and_depth_a_zero_is_invalid():
    args, depth_b, ref, _ = _visibility_setup()
    depth_b[:, :, :, : WB // 2] = 0.0  # nothing hit on b's left half
    depth_a = args[0].clone()
    depth_a[:, :, :5] = 0.0  # nothing known on a's top rows
    _, visible = correspondences(depth_a, *args[1:], depth_b, CAM_B, pose(RB, TB))
    assert not visible[:, :5].any()
    assert not visible[0].numpy()[ref[..., 0] <= WB // 2 - 0.5].any()
    right = (ref[..., 0] > WB // 2 + 1e-9) & (ref[..., 0] <= WB - 1)
    right &= (ref[..., 1] >= 0) & (ref[..., 1] <= HB - 1)
    right[:5] = False
    np.testing.assert_array_equal(visible[0].numpy()[right], True)


def test_grazing_ground_plane_is_exact_with_inverse_depth():
    # a camera 1.5 m above the ground looking 8 degrees down along it, and one 1 m ahead:
    # depth varies by metres between neighbouring pixels near the horizon, yet on a plane the
    # interpolated inverse depth is exact, so a tolerance of 1e-6 keeps every pixel.
    base = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)  # look along +x
    Ra = rot(0, -8) @ base
    Rb = rot(1, 3) @ rot(0, -8) @ base
    Ca, Cb = np.array([0.0, 0.0, 1.5]), np.array([1.0, 0.2, 1.5])
    ta, tb = -Ra @ Ca, -Rb @ Cb
    n, d = np.array([0.0, 0.0, 1.0]), 0.0
    depth_a = plane_depth(Ka, Ra, ta, WA, HA, n, d)
    depth_b = plane_depth(Kb, Rb, tb, WB, HB, n, d)
    assert depth_a.max() > 50  # close to the horizon
    uv_b, _, valid = warp_points(depth_tensor(depth_a), CAM_A, pose(Ra, ta), CAM_B, pose(Rb, tb))
    on_grid = ((uv_b[0] >= 0) & (uv_b[0] <= torch.tensor([WB - 1.0, HB - 1.0]))).all(-1)
    ok = (valid[0] & on_grid).numpy()
    assert ok.mean() > 0.2
    # the few points just below b's horizon have a sky pixel among their neighbours: refused
    x, y = uv_b[0].numpy()[ok].T
    sky = np.zeros_like(x, dtype=bool)
    for yy in (np.floor(y), np.ceil(y)):
        for xx in (np.floor(x), np.ceil(x)):
            sky |= depth_b[yy.astype(int), xx.astype(int)] == 0
    assert sky.mean() < 0.15
    ok[ok] = ~sky
    _, visible = correspondences(
        depth_tensor(depth_a),
        CAM_A,
        pose(Ra, ta),
        depth_tensor(depth_b),
        CAM_B,
        pose(Rb, tb),
        rel_tol=1e-6,
        abs_tol=0.0,
    )
    np.testing.assert_array_equal(visible[0].numpy(), ok)
    # in float32 with the default tolerances, too
    _, visible32 = correspondences(
        depth_tensor(depth_a, dtype=torch.float32),
        CAM_A,
        pose(Ra, ta, torch.float32),
        depth_tensor(depth_b, dtype=torch.float32),
        CAM_B,
        pose(Rb, tb, torch.float32),
    )
    np.testing.assert_array_equal(visible32[0].numpy(), ok)
    # depth (not inverse depth) interpolation would be off by far more than 1e-6 here
    col = depth_b[depth_b[:, WB // 2] > 0, WB // 2]
    mid = 0.5 * (col[:-1] + col[1:])
    exact = 2 / (1 / col[:-1] + 1 / col[1:])
    assert np.abs(mid / exact - 1).max() > 1e-2


def test_sample_correspondences_draws_visible_pairs():
    args, depth_b, _, _ = _visibility_setup()
    uv_b, visible = correspondences(*args, depth_b, CAM_B, pose(RB, TB))
    g = torch.Generator().manual_seed(0)
    uv_a, uv_bs, mask = sample_correspondences(uv_b, visible, 200, g)
    assert uv_a.shape == uv_bs.shape == (2, 200, 2) and mask.shape == (2, 200)
    assert mask.all()
    for i in range(2):
        xa, ya = uv_a[i].long().unbind(-1)
        assert visible[i, ya, xa].all()
        torch.testing.assert_close(uv_bs[i], uv_b[i, ya, xa])
        assert len(set((ya * WA + xa).tolist())) == 200  # without replacement
    again = sample_correspondences(uv_b, visible, 200, torch.Generator().manual_seed(0))
    other = sample_correspondences(uv_b, visible, 200, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(again, (uv_a, uv_bs, mask), strict=True))
    assert not torch.equal(other[0], uv_a)
    # the pixels drawn cover the visible region evenly (not the first rows only)
    ys = uv_a[0, :, 1]
    assert float(ys.min()) < HA / 4 and float(ys.max()) > HA / 2


def test_sample_correspondences_pads_with_mask():
    uv_b = torch.randn(2, 4, 5, 2)
    visible = torch.zeros(2, 4, 5, dtype=torch.bool)
    visible[0, 1, 2] = visible[0, 3, 4] = visible[0, 0, 0] = True
    uv_a, uv_bs, mask = sample_correspondences(uv_b, visible, 30, torch.Generator().manual_seed(3))
    assert uv_a.shape == (2, 30, 2)
    assert mask[0].tolist() == [True] * 3 + [False] * 27 and not mask[1].any()
    assert {tuple(p) for p in uv_a[0, :3].long().tolist()} == {(2, 1), (4, 3), (0, 0)}
    assert (uv_a[~mask] == 0).all() and (uv_bs[~mask] == 0).all()
    with pytest.raises(InputError):
        sample_correspondences(uv_b, visible[0], 3)


def test_input_errors():
    depth = torch.ones(2, 1, 4, 5)
    with pytest.raises(InputError, match="depth_a"):
        warp_points(torch.ones(2, 4, 5), CAM_A, pose(RA, TA), CAM_B, pose(RB, TB))
    with pytest.raises(InputError, match="batch shape"):
        warp_points(depth, CAM_A, Pose.identity((3,)), CAM_B, pose(RB, TB))
    with pytest.raises(InputError, match="depth_b"):
        correspondences(depth, CAM_A, pose(RA, TA), torch.ones(3, 1, 4, 5), CAM_B, pose(RB, TB))


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_input_device(device):
    args, depth_b, _, _ = _visibility_setup(torch.float32)
    dev = torch.device(device)
    depth_a, cam_a, pa = args
    uv_b, visible = correspondences(
        depth_a.to(dev),
        cam_a.to(dev),
        pa.to(dev),
        depth_b.to(dev),
        CAM_B.to(dev),
        pose(RB, TB, torch.float32).to(dev),
    )
    assert uv_b.device.type == dev.type and visible.device.type == dev.type
    ref_uv, ref_vis = correspondences(
        depth_a, cam_a, pa, depth_b, CAM_B, pose(RB, TB, torch.float32)
    )
    torch.testing.assert_close(uv_b.cpu(), ref_uv, atol=1e-4, rtol=1e-5)
    assert float((visible.cpu() != ref_vis).double().mean()) < 1e-3
    g = torch.Generator(device=dev).manual_seed(0)
    out = sample_correspondences(uv_b, visible, 50, g)
    assert all(t.device.type == dev.type for t in out) and out[2].all()


# ---------------------------------------------------------------------------------- integration
def test_street_correspondences_agree_with_rendered_points():
    from dgeo.data.synthetic.render import raycast
    from dgeo.data.synthetic.scenes import make_scene
    from dgeo.data.synthetic.trajectories import driving_trajectory

    scene = make_scene("street", 0, texture_size=16)
    cam = Camera("SIMPLE_RADIAL", 128, 96, [80.0, 63.5, 47.5, -0.02])
    # a car in one lane and one 4 m further in the other lane: parallax, occlusions
    a = driving_trajectory(scene, 1, seed=0, lane=0, start=20.0)
    b = driving_trajectory(scene, 1, seed=0, lane=1, start=24.0)
    gb = raycast(scene, cam, Pose.cat([a, b]))
    uv_b, visible = correspondences(gb.depth[:1], cam, a, gb.depth[1:], cam, b)
    _, _, valid = warp_points(gb.depth[:1], cam, a, cam, b)
    assert 0.2 < float(visible.double().mean()) < float(valid.double().mean())
    # b's rendered world point exactly at uv_b: ray-cast a 1x1 crop of b whose pixel centre is
    # uv_b, for a random subset of the pixels that land in b
    idx = valid[0].reshape(-1).nonzero()[:, 0]
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:800]]
    uv = uv_b[0].reshape(-1, 2)[idx]
    n = len(idx)
    crops = Camera(cam.model, 128, 96, cam.params.expand(n, -1)).crop(uv[:, 0], uv[:, 1], 1, 1)
    at_uv = raycast(scene, crops, Pose(b.data.expand(n, -1)))
    err = (at_uv.points.reshape(n, 3) - gb.points[0].reshape(3, -1)[:, idx].T).norm(dim=-1)
    vis = visible[0].reshape(-1)[idx]
    seen = err < 0.01  # b sees a's point there
    assert vis.sum() > 300
    # visible points are b's rendered points; the rare exception is an occluder thinner than a
    # pixel between b's pixel centres (a pole), which no depth map can show
    assert float((vis & ~seen).double().sum()) <= 0.01 * float(vis.sum())
    # and most points b sees are found visible (the rest lie next to depth edges)
    assert float((seen & ~vis).double().sum()) < 0.12 * float(seen.sum())
    assert float((~seen).sum()) > 20  # the pair does have occlusions to find
