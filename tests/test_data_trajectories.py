"""Camera trajectories of the synthetic world: look_at, driving, handheld, random viewpoints.

The scenes here are built by hand (a straight street between two facades, an empty box room), so
the tests depend only on the :class:`Scene` container, not on the scene generators.
"""

import math

import numpy as np
import pytest
import torch

from dgeo.data.synthetic.scene import Scene
from dgeo.data.synthetic.trajectories import (
    driving_trajectory,
    handheld_trajectory,
    look_at,
    nearby_viewpoints,
    random_viewpoints,
)
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose

DEG = math.pi / 180


def _scene(kind, quads, kinds, walkable, meta):
    o, u, v, m = (torch.tensor(x, dtype=torch.float32) for x in zip(*quads, strict=True))
    return Scene(
        kind=kind,
        seed=0,
        origin=o,
        edge_u=u,
        edge_v=v,
        material=m.long(),
        tex_repeat=torch.ones(len(m), 2),
        textures=torch.rand(len(kinds), 3, 4, 4),
        material_kind=kinds,
        light_pos=torch.zeros(0, 3),
        light_color=torch.zeros(0, 3),
        outdoor=kind == "street",
        walkable=torch.tensor(walkable, dtype=torch.float32),
        meta=meta,
    )


def street_scene(length=100.0):
    quads = [
        ((-10, -12, 0), (length + 20, 0, 0), (0, 24, 0), 0),  # road
        ((-10, 7, 0), (length + 20, 0, 0), (0, 0, 12), 1),  # facades on both sides
        ((-10, -7, 0), (length + 20, 0, 0), (0, 0, 12), 1),
    ]
    meta = {"direction": (1.0, 0.0, 0.0), "lanes_y": [-1.75, 1.75], "length": length}
    meta["ground_z"] = 0.0
    return _scene("street", quads, ["road", "facade"], [[0, -4, 0], [length, 4, 3]], meta)


ROOM = (6.0, 5.0, 3.0)


def room_scene():
    w, d, h = ROOM
    quads = [
        ((0, 0, 0), (w, 0, 0), (0, d, 0), 0),
        ((0, 0, h), (w, 0, 0), (0, d, 0), 1),
        ((0, 0, 0), (w, 0, 0), (0, 0, h), 2),
        ((0, d, 0), (w, 0, 0), (0, 0, h), 2),
        ((0, 0, 0), (0, d, 0), (0, 0, h), 2),
        ((w, 0, 0), (0, d, 0), (0, 0, h), 2),
    ]
    walk = [[0.8, 0.8, 0.0], [w - 0.8, d - 0.8, 2.2]]
    return _scene("room", quads, ["floor", "ceiling", "wall"], walk, {"size": ROOM})


def inside(centers, scene, eps=1e-5):
    lo, hi = scene.walkable.double()
    return bool(((centers >= lo - eps) & (centers <= hi + eps)).all())


def rotation_is_valid(pose):
    R = pose.R.double()
    eye = torch.eye(3, dtype=R.dtype)
    return bool(
        torch.allclose(R.transpose(-1, -2) @ R, eye.expand_as(R), atol=1e-5)
        and torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype), atol=1e-5)
    )


def angular_steps(pose):
    """Rotation vectors ``(L-1, 3)`` between consecutive frames, from scipy (independent)."""
    from scipy.spatial.transform import Rotation

    R = pose.R.double().numpy()
    rel = Rotation.from_matrix(R[1:] @ R[:-1].transpose(0, 2, 1))
    return rel.as_rotvec()


# ---------------------------------------------------------------------------------- look_at
def test_look_at_centre_and_optical_axis():
    g = torch.Generator().manual_seed(0)
    eye = torch.randn(50, 3, generator=g, dtype=torch.float64) * 5
    target = eye + torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    pose = look_at(eye, target)
    assert pose.shape == (50,) and rotation_is_valid(pose)
    torch.testing.assert_close(pose.center(), eye, atol=1e-10, rtol=0)
    cam = Camera("PINHOLE", 640, 480, [500.0, 510.0, 319.5, 239.5])
    uv, valid = cam.project(_tx(pose, target))
    assert valid.all()
    torch.testing.assert_close(uv[:, 0], cam.c.expand(50, 2), atol=1e-8, rtol=0)
    # a point above the target is imaged above the principal point (image y points down)
    above = target + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    uv_up, _ = cam.project(_tx(pose, above))
    horizontal = (target - eye)[:, :2].norm(dim=-1) > 0.3
    assert (uv_up[horizontal, 0, 1] < 239.5).all()


def _tx(pose, points):
    """``(B, 3)`` world points into ``(B, 1, 3)`` camera points of the matching poses."""
    return pose.transform(points[:, None])


def test_look_at_known_rotation_and_errors():
    # from the origin looking along +x with z up: right is -y, down is -z
    pose = look_at([0.0, 0.0, 0.0], [2.0, 0.0, 0.0])
    np.testing.assert_allclose(pose.R.numpy(), [[0, -1, 0], [0, 0, -1], [1, 0, 0]], atol=1e-12)
    with pytest.raises(InputError, match="target equals eye"):
        look_at([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="parallel to up"):
        look_at([0.0, 0.0, 0.0], [0.0, 0.0, 5.0])
    with pytest.raises(InputError):
        look_at([0.0, 0.0], [1.0, 0.0])


# ---------------------------------------------------------------------------------- driving
@pytest.mark.parametrize("speed, fps", [(8.0, 10.0), (3.0, 25.0)])
def test_driving_speed_smoothness_and_walkable(speed, fps):
    scene = street_scene()
    pose = driving_trajectory(scene, 60, fps=fps, speed=speed, seed=3)
    assert pose.shape == (60,) and pose.dtype == torch.float32 and rotation_is_valid(pose)
    c = pose.center().double()
    steps = c.diff(dim=0).norm(dim=-1)
    assert abs(float(steps.mean()) / (speed / fps) - 1) < 0.1
    assert inside(c, scene)
    assert float(c.diff(dim=0).diff(dim=0).norm(dim=-1).max()) < 0.03  # m per frame^2
    assert float((c[:, 2] - 1.5).min()) > -1e-4 and float(c[:, 2].max()) < 2.0 + 1e-4
    # forward along +x, smooth rotation: small frame-to-frame angular change of the rate
    w = angular_steps(pose)
    assert np.abs(np.diff(w, axis=0)).max() < 0.6 * DEG
    assert np.linalg.norm(w, axis=-1).max() < 2 * DEG
    # image y (down) is world -z within a few degrees; the optical axis looks along the street
    assert float((pose.R[:, 1] @ torch.tensor([0.0, 0, -1])).min()) > math.cos(4 * DEG)
    assert float((pose.R[:, 2] @ torch.tensor([1.0, 0, 0])).min()) > math.cos(6 * DEG)
    # and it does sway (neither a straight line nor a fixed heading)
    assert float(c[:, 1].std()) > 0.005 and np.linalg.norm(w, axis=-1).max() > 0.01 * DEG


def test_driving_shuffled_frames_fail_the_smoothness_check():
    # the smoothness measure above can fail: reversed halves of a trajectory are not smooth
    pose = driving_trajectory(street_scene(), 40, seed=1)
    order = torch.cat([torch.arange(20), torch.arange(39, 19, -1)])
    c = pose.center()[order].double()
    assert float(c.diff(dim=0).diff(dim=0).norm(dim=-1).max()) > 0.03


def test_driving_is_deterministic_lane_and_start():
    scene = street_scene()
    a = driving_trajectory(scene, 30, seed=5)
    b = driving_trajectory(scene, 30, seed=5)
    c = driving_trajectory(scene, 30, seed=6)
    assert torch.equal(a.data, b.data)
    assert not torch.allclose(a.data, c.data, atol=1e-3)
    for lane, y in enumerate([-1.75, 1.75]):
        p = driving_trajectory(scene, 30, seed=2, lane=lane, start=10.0).center()
        assert abs(float(p[0, 0]) - 10.0) < 1e-4
        assert float((p[:, 1] - y).abs().max()) <= 0.3 + 1e-5
    with pytest.raises(InputError, match="lane"):
        driving_trajectory(scene, 30, lane=2)
    with pytest.raises(InputError, match="start"):
        driving_trajectory(scene, 30, start=90.0)  # 23.2 m of driving from x = 90 leaves 100 m
    with pytest.raises(InputError, match="street"):
        driving_trajectory(room_scene(), 10)


def test_driving_too_long_names_the_maximum():
    scene = street_scene(length=40.0)
    # 40 m at 0.8 m per frame: 51 frames fit exactly
    pose = driving_trajectory(scene, 51, seed=0)
    assert inside(pose.center().double(), scene)
    with pytest.raises(InputError, match="at most 51 frames"):
        driving_trajectory(scene, 52)


# ---------------------------------------------------------------------------------- handheld
def test_handheld_speed_smoothness_and_limits():
    scene = room_scene()
    fps, speed = 30.0, 0.5
    pose = handheld_trajectory(scene, 900, fps=fps, speed=speed, seed=4)  # 30 s, several loops
    assert pose.shape == (900,) and rotation_is_valid(pose)
    c = pose.center().double()
    assert inside(c, scene)
    steps = c.diff(dim=0).norm(dim=-1)
    assert abs(float(steps.mean()) / (speed / fps) - 1) < 0.1
    assert float(steps.max()) < 1.2 * speed / fps  # roughly constant velocity
    assert float(c.diff(dim=0).diff(dim=0).norm(dim=-1).max()) < 2e-3
    w = angular_steps(pose)
    assert np.linalg.norm(w, axis=-1).max() < 90 * DEG / fps  # below 90 deg/s
    assert np.abs(np.diff(w, axis=0)).max() < 0.2 * DEG
    forward, right = pose.R[:, 2].double(), pose.R[:, 0].double()
    pitch = torch.asin(forward[:, 2])
    assert float(pitch.abs().max()) <= 25 * DEG + 1e-5
    assert float(right[:, 2].abs().max()) <= math.sin(3 * DEG) + 1e-5  # roll
    # it wanders in 6 DoF: spans the room and turns around
    assert float((c.amax(0) - c.amin(0))[:2].min()) > 1.0
    heading = torch.atan2(forward[:, 1], forward[:, 0])
    assert float(torch.cos(heading[:, None] - heading[None, ::50]).min()) < -0.5
    assert float(pitch.std()) > 1 * DEG


def test_handheld_is_deterministic():
    scene = room_scene()
    a, b = handheld_trajectory(scene, 50, seed=1), handheld_trajectory(scene, 50, seed=1)
    assert torch.equal(a.data, b.data)
    assert not torch.allclose(a.data, handheld_trajectory(scene, 50, seed=2).data, atol=1e-3)
    with pytest.raises(InputError, match="room"):
        handheld_trajectory(street_scene(), 10)
    with pytest.raises(InputError, match="num_frames"):
        handheld_trajectory(scene, 0)


# ---------------------------------------------------------------------------------- viewpoints
def test_street_viewpoints_spread_and_headings():
    scene = street_scene()
    pose = random_viewpoints(scene, 60, seed=0)
    assert pose.shape == (60,) and rotation_is_valid(pose)
    c = pose.center().double()
    assert inside(c, scene)
    # stratified along the street: one camera per 100/60 m slice
    slices = torch.floor(c[:, 0] / (100 / 60)).long()
    assert torch.equal(slices.sort().values, torch.arange(60))
    fwd = pose.R[:, 2].double()
    along = fwd[:, 0].abs()
    assert float((along >= math.cos(30 * DEG + 1e-3)).double().mean()) > 0.5
    assert float((fwd[:, 0] > 0.8).sum()) > 5 and float((fwd[:, 0] < -0.8).sum()) > 5
    assert float((fwd[:, 1].abs() > math.cos(20 * DEG + 1e-3)).sum()) >= 5  # facades
    assert float(torch.asin(fwd[:, 2]).abs().max()) <= 5 * DEG + 1e-5
    assert float((pose.R[:, 1, 2]).max()) < -math.cos(6 * DEG)  # image y down
    assert torch.equal(pose.data, random_viewpoints(scene, 60, seed=0).data)
    assert not torch.allclose(pose.data, random_viewpoints(scene, 60, seed=1).data, atol=1e-3)


def test_room_viewpoints_look_at_walls():
    scene = room_scene()
    pose = random_viewpoints(scene, 100, seed=0)
    assert pose.shape == (100,) and rotation_is_valid(pose)
    c = pose.center().double()
    assert inside(c, scene)
    assert float(c[:, 2].min()) >= 1.2 - 1e-5 and float(c[:, 2].max()) <= 1.8 + 1e-5
    fwd = pose.R[:, 2].double()
    assert float(torch.asin(fwd[:, 2]).abs().max()) <= 30 * DEG + 1e-5
    # the optical axis reaches a wall before the floor or ceiling (independent box clipping)
    room = torch.tensor(ROOM, dtype=torch.float64)
    with torch.no_grad():
        t_box = torch.where(fwd > 0, (room - c) / fwd, -c / fwd).clamp_min(0)
        t_box = torch.where(fwd.abs() < 1e-12, torch.inf, t_box)
    hits_wall = t_box[:, :2].amin(-1) < t_box[:, 2]
    assert float(hits_wall.double().mean()) > 0.9
    heading = torch.atan2(fwd[:, 1], fwd[:, 0])
    assert float(torch.histc(heading, 4, -math.pi, math.pi).min()) > 10  # all directions
    assert torch.equal(pose.data, random_viewpoints(scene, 100, seed=0).data)


def test_poses_follow_the_scene_dtype_and_are_cam_from_world():
    scene = street_scene()
    pose = random_viewpoints(scene, 4, seed=0)
    assert isinstance(pose, Pose) and pose.dtype == torch.float32
    # cam_from_world: the camera centre maps to the origin of the camera frame
    origin = pose.transform(pose.center()[:, None])[:, 0]
    assert float(origin.abs().max()) < 1e-4


# ---------------------------------------------------------------------------------- integration
def test_trajectories_see_the_scene_from_outside_the_geometry():
    from dgeo.data.synthetic.render import raycast
    from dgeo.data.synthetic.scenes import make_scene

    cam = Camera("PINHOLE", 48, 36, [30.0, 30.0, 23.5, 17.5])
    street, room = make_scene("street", 1, texture_size=16), make_scene("room", 1, texture_size=16)
    cases = [
        (street, driving_trajectory(street, 100, seed=1)[::20], 0.6),
        (street, random_viewpoints(street, 6, seed=1), 0.6),
        (room, handheld_trajectory(room, 300, seed=1)[::60], 0.99),
        (room, random_viewpoints(room, 6, seed=1), 0.99),
    ]
    for scene, poses, min_valid in cases:
        # no camera inside a solid box (vehicle, tree, furniture) of the generated scene
        boxes = torch.tensor(scene.meta["obstacles"], dtype=torch.float64).reshape(-1, 2, 3)
        c = poses.center().double()[:, None]
        assert not ((c >= boxes[:, 0]) & (c <= boxes[:, 1])).all(-1).any()
        gb = raycast(scene, cam, poses)
        assert float(gb.valid.double().mean((1, 2, 3)).min()) >= min_valid
        assert float(gb.depth[gb.valid].min()) > 0.3  # not inside or against a surface
        # nothing is seen below the ground: the cameras stand above it
        assert float(gb.points[:, 2][gb.valid[:, 0]].min()) > -1e-3


def test_nearby_viewpoints_stay_near_their_bases():
    scene = street_scene()
    refs = random_viewpoints(scene, 6, seed=1).double()
    near = nearby_viewpoints(scene, refs, 40, seed=2, max_shift=1.5, max_yaw_deg=20).double()
    lo, hi = scene.walkable.double()
    c = near.center()
    assert bool(((c >= lo - 1e-6) & (c <= hi + 1e-6)).all())
    # each view: some base within the shift whose rotation differs by a yaw about world z only
    dist = (c[:, None] - refs.center()[None]).norm(dim=-1)
    rel = refs.R[None] @ near.R[:, None].transpose(-1, -2)  # base_cw @ near_wc
    angle = torch.rad2deg(
        torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    )
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    up_b = refs.R @ world_up  # world up seen by each base camera
    up_n = near.R @ world_up
    same_up = (up_b[None] - up_n[:, None]).norm(dim=-1) < 1e-9
    ok = (dist <= 1.5 * math.sqrt(2) + 1e-9) & (angle <= 20 + 1e-6) & same_up
    assert bool(ok.any(1).all())
    assert torch.equal(near.data, nearby_viewpoints(scene, refs, 40, seed=2).double().data)
    with pytest.raises(InputError):
        nearby_viewpoints(scene, refs[:0], 3)
