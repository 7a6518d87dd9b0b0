"""The ray caster against closed forms and an independent float64 brute-force reference."""

import numpy as np
import pytest
import torch

from dgeo.data.synthetic.render import make_rays, raycast, texture_lookup
from dgeo.data.synthetic.scene import Scene
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PINHOLE = Camera("PINHOLE", 64, 48, [40.0, 42.0, 31.2, 23.9])
OPENCV = Camera("OPENCV", 64, 48, [40.0, 42.0, 31.2, 23.9, -0.25, 0.06, 2e-3, -1e-3])


# ------------------------------------------------------------------------------- scene helpers
def rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def box(center, size, R=np.eye(3)) -> list[tuple]:
    """The six faces of a box as (origin, edge_u, edge_v)."""
    ex, ey, ez = (R[:, i] * size[i] for i in range(3))
    lo = np.asarray(center, float) - (ex + ey + ez) / 2
    return [
        (lo, ex, ey),
        (lo + ez, ey, ex),
        (lo, ez, ex),
        (lo + ey, ex, ez),
        (lo, ey, ez),
        (lo + ex, ez, ey),
    ]


def make_scene(quads, materials=None, textures=None, repeats=None, seed=0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    q = len(quads)
    o, u, v = (
        torch.tensor(np.array([x[i] for x in quads]).reshape(q, 3)).float() for i in range(3)
    )
    if textures is None:
        textures = torch.rand(3, 3, 8, 8, generator=g)
    m = len(textures)
    if materials is None:
        materials = torch.randint(0, m, (q,), generator=g)
    if repeats is None:
        repeats = 0.5 + 3 * torch.rand(q, 2, generator=g)
    return Scene(
        kind="street",
        seed=seed,
        origin=o,
        edge_u=u,
        edge_v=v,
        material=torch.as_tensor(materials, dtype=torch.int64),
        tex_repeat=torch.as_tensor(repeats, dtype=torch.float32),
        textures=textures,
        material_kind=["facade"] * m,
        light_pos=torch.zeros(0, 3),
        light_color=torch.zeros(0, 3),
        outdoor=True,
        walkable=torch.tensor([[-1.0, -1, 0], [1, 1, 2]]),
    )


def look_at(eye, target) -> Pose:
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-6 else np.array([1.0, 0, 0])
    R = np.stack([x, np.cross(z, x), z])
    return Pose.from_Rt(torch.tensor(R).float(), torch.tensor(-R @ eye).float())


def random_scene(seed: int):
    """Ground, random boxes, loose quads (some behind the camera) and a pose: from outside, from
    inside a box, grazing the ground, or looking down on it."""
    rng = np.random.default_rng(seed)
    quads = [(np.array([-30.0, -30, 0]), np.array([60.0, 0, 0]), np.array([0.0, 60, 0]))]
    centers = []
    for _ in range(6):
        c = rng.uniform([-6, -6, 0.5], [6, 6, 3])
        centers.append(c)
        quads += box(c, rng.uniform(0.4, 3, 3), rotation(rng))
    for _ in range(8):
        quads.append((rng.uniform(-8, 8, 3), rng.normal(size=3) * 2, rng.normal(size=3) * 2))
    mode = seed % 4
    if mode == 0:  # inside a box
        eye = centers[0] + rng.uniform(-0.1, 0.1, 3)
    elif mode == 1:  # grazing the ground
        eye = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), 0.01])
    else:
        eye = rng.uniform([-10, -10, 1], [10, 10, 6])
    target = eye + np.append(rng.normal(size=2), -0.02 if mode == 1 else rng.uniform(-1, 0.2))
    return make_scene(quads, seed=seed), look_at(eye, target)


def reference(scene: Scene, camera: Camera, pose: Pose):
    """Brute force in float64 with numpy: every ray against every quad by solving
    ``C + t d = o + a u + b v``. Returns per pixel the depth, hit quad, ``(a, b)`` and
    ``ambiguous`` (the winner changes if the quads grow or shrink by 1e-4, or two hits tie) and
    the cosine between the ray and the hit quad's normal (depth is ill-conditioned at grazing)."""
    h, w = int(camera.height), int(camera.width)
    ys, xs = np.mgrid[0:h, 0:w]
    uv = torch.tensor(np.stack([xs, ys], -1).reshape(-1, 2), dtype=torch.float64)
    rays = camera.double().unproject(uv).numpy()  # (N, 3), z = 1
    R, C = pose.R.double().numpy(), pose.center().double().numpy()
    d = rays @ R  # world directions R^T r
    o, u, v = (getattr(scene, k).double().numpy() for k in ("origin", "edge_u", "edge_v"))
    shape = (len(d), len(o), 3)
    A = np.stack(
        [
            np.broadcast_to(d[:, None], shape),
            -np.broadcast_to(u, shape),
            -np.broadcast_to(v, shape),
        ],
        -1,
    )  # (N, Q, 3, 3) columns d, -u, -v
    rhs = np.broadcast_to(o - C, A.shape[:-1])
    det = np.linalg.det(A)
    ok = np.abs(det) > 1e-12
    sol = np.full(A.shape[:-1], np.nan)
    sol[ok] = np.linalg.solve(A[ok], rhs[ok][..., None])[..., 0]
    t, a, b = sol[..., 0], sol[..., 1], sol[..., 2]

    def nearest(eps):
        hit = (t > 0) & (a >= -eps) & (a <= 1 + eps) & (b >= -eps) & (b <= 1 + eps)
        tt = np.where(hit, t, np.inf)
        return np.where(hit.any(1), tt.argmin(1), -1), np.sort(tt, 1)

    q, ts = nearest(0.0)
    q_in, _ = nearest(-1e-4)
    q_out, _ = nearest(1e-4)
    with np.errstate(invalid="ignore"):  # inf - inf where nothing is hit
        tie = (ts[:, 1] - ts[:, 0]) < 1e-4 * np.abs(ts[:, 0]) if len(o) > 1 else False
    ambiguous = (q_in != q) | (q_out != q) | tie
    pick = lambda x: np.take_along_axis(x, np.maximum(q, 0)[:, None], 1)[:, 0]  # noqa: E731
    depth = np.where(q >= 0, pick(t), 0.0)
    n = np.cross(u, v)[np.maximum(q, 0)]
    cos = np.abs((n * d).sum(-1)) / np.linalg.norm(n, axis=-1) / np.linalg.norm(d, axis=-1)
    shape = (h, w)
    return (
        depth.reshape(shape),
        q.reshape(shape),
        np.stack([pick(a), pick(b)], -1).reshape(*shape, 2),
        ambiguous.reshape(shape),
        cos.reshape(shape),
    )


# ------------------------------------------------------------------------------- tests
def test_ground_plane_depth_matches_closed_form():
    scene = make_scene(
        [(np.array([-50.0, -50, 0]), np.array([100.0, 0, 0]), np.array([0, 100.0, 0]))]
    )
    pose = look_at([0.3, -0.2, 1.7], [10.0, 2.0, 0.5])
    g = raycast(scene, PINHOLE, pose.reshape(1))
    _, dirs = make_rays(PINHOLE, pose.reshape(1))
    dz = dirs[0, ..., 2].double()
    t = -1.7 / dz  # z-depth: dirs have camera-frame z = 1
    hits = pose.center().double() + t[..., None] * dirs[0].double()
    expected = (t > 0) & (hits[..., :2].abs() <= 50).all(-1)
    assert 0.2 < expected.float().mean() < 0.9  # the horizon crosses the image
    assert torch.equal(g.valid[0, 0], expected)
    torch.testing.assert_close(g.depth[0, 0][expected].double(), t[expected], rtol=1e-5, atol=0)
    assert (g.depth[0, 0][~expected] == 0).all() and (g.quad[0, 0][~expected] == -1).all()
    assert (g.material[0, 0][~expected] == -1).all()
    for name in ("points", "normal", "albedo"):  # zero where nothing is hit
        assert (getattr(g, name)[0][:, ~expected] == 0).all(), name
    torch.testing.assert_close(
        g.points[0].permute(1, 2, 0)[expected].double(), hits[expected], atol=1e-4, rtol=1e-5
    )


def test_depth_inside_a_box_matches_closed_form():
    size = np.array([4.0, 3.0, 2.5])
    scene = make_scene(box(size / 2, size))
    eye = np.array([1.1, 0.7, 1.3])
    pose = look_at(eye, eye + np.array([1.0, 0.4, 0.2])).reshape(1)
    g = raycast(scene, OPENCV, pose)
    _, dirs, ok = make_rays(OPENCV, pose, return_valid=True)
    d = dirs[0].double().numpy()
    with np.errstate(divide="ignore"):
        t_axes = np.where(d > 0, (size - eye) / d, -eye / d)  # distance to the walls per axis
    t = t_axes.min(-1)
    assert ok.all() and g.valid.all()
    np.testing.assert_allclose(g.depth[0, 0].numpy(), t, rtol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_matches_float64_brute_force(seed):
    scene, pose = random_scene(seed)
    camera = OPENCV if seed % 2 else PINHOLE
    depth, quad, ab, ambiguous, cos = reference(scene, camera, pose)
    assert ambiguous.mean() < 0.03
    for kw in ({"tile": 8}, {"tile": 16}, {"cull": False}):
        g = raycast(scene, camera, pose.reshape(1), **kw)
        clear = torch.from_numpy(~ambiguous)
        got = g.quad[0, 0]
        assert torch.equal(got[clear], torch.from_numpy(quad)[clear]), (
            kw,
            (got != quad)[clear].sum(),
        )
        both = clear & (got >= 0)
        err = np.abs(g.depth[0, 0][both].numpy() - depth[both.numpy()]) / depth[both.numpy()]
        assert (err < 1e-5 + 1e-6 / cos[both.numpy()]).all(), err.max()
        assert torch.equal(g.valid[0, 0], got >= 0)
        # the hit's texture coordinates: albedo is the texture at (a, b) * repeat
        qi = got[both]
        uv = torch.from_numpy(ab[both.numpy()]).float() * scene.tex_repeat[qi]
        expected = texture_lookup(scene.textures, scene.material[qi], uv)
        albedo = g.albedo[0].permute(1, 2, 0)[both]
        torch.testing.assert_close(albedo, expected, atol=2e-3, rtol=0)


def test_culling_changes_nothing_on_a_street_like_scene():
    rng = np.random.default_rng(5)
    quads = [(np.array([-60.0, -30, 0]), np.array([120.0, 0, 0]), np.array([0.0, 60, 0]))]
    for side in (-1, 1):
        for i in range(10):
            quads.append(
                (
                    np.array([-50 + 10 * i, 7 * side, 0]),
                    np.array([10.0, 0, 0]),
                    np.array([0, 0, 12.0]),
                )
            )
    for _ in range(8):
        quads += box(rng.uniform([-40, -4, 0.8], [40, 4, 0.8]), [4, 1.8, 1.6], np.eye(3))
    scene = make_scene(quads)
    poses = Pose.stack([look_at([x, 0.5, 1.6], [x + 10, -1.0, 1.2]) for x in (-30.0, 0.0, 25.0)])
    poses = Pose.cat([poses, look_at([0, 0, 1.6], [-10.0, 2.0, 1.0]).reshape(1)])
    cam = OPENCV.scale(2)
    culled, brute = raycast(scene, cam, poses, tile=8), raycast(scene, cam, poses, cull=False)
    assert 0.6 < culled.valid.float().mean() < 0.95  # street and sky
    assert (culled.quad != brute.quad).float().mean() < 1e-4
    torch.testing.assert_close(culled.depth, brute.depth, rtol=1e-5, atol=0)


def test_normals_face_the_camera_and_ids_agree():
    scene, pose = random_scene(2)
    g = raycast(scene, OPENCV, pose.reshape(1))
    ok = g.valid[0, 0]
    n = g.normal[0].permute(1, 2, 0)[ok]
    p = g.points[0].permute(1, 2, 0)[ok]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)))
    assert ((pose.center() - p) * n).sum(-1).min() > 0
    q = g.quad[0, 0][ok]
    assert (n * scene.normal[q]).sum(-1).abs().min() > 0.9999  # +- the quad's normal
    assert torch.equal(g.material[0, 0][ok], scene.material[q])
    assert (g.material[0, 0][~ok] == -1).all() and (g.normal[0].permute(1, 2, 0)[~ok] == 0).all()
    torch.testing.assert_close(g.ray_dir.norm(dim=1), torch.ones(1, 48, 64))


@pytest.mark.parametrize("camera", [PINHOLE, OPENCV], ids=["pinhole", "opencv"])
def test_points_project_back_to_the_pixel_centres(camera):
    scene, pose = random_scene(3)
    g = raycast(scene, camera, pose.reshape(1))
    ok = g.valid[0, 0]
    p = g.points[0].permute(1, 2, 0)[ok].double()
    uv, _ = camera.double().project(pose.double().transform(p[None])[0], check_bounds=False)
    ys, xs = torch.nonzero(ok, as_tuple=True)
    err = (uv - torch.stack([xs, ys], -1).double()).norm(dim=-1)
    assert ok.float().mean() > 0.3 and err.max() < 1e-3


def test_texture_lookup_reads_texels_and_wraps():
    tex = torch.rand(2, 3, 4, 5)  # T_h = 4, T_w = 5
    m = torch.tensor([1, 1, 0, 1, 1, 1])
    # texel (column i, row j) sits at (i / T_w, j / T_h); whole repeats wrap to the same texel
    uv = torch.tensor(
        [
            [2 / 5, 3 / 4],
            [2 / 5 + 3, 3 / 4 - 2],
            [0.0, 0.0],
            [1 - 1e-7, 0.5],
            [0.9, 0.5],
            [0.4, 0.875],
        ]
    )
    out = texture_lookup(tex, m, uv)
    torch.testing.assert_close(out[0], tex[1, :, 3, 2])
    torch.testing.assert_close(out[1], tex[1, :, 3, 2])
    torch.testing.assert_close(out[2], tex[0, :, 0, 0])
    torch.testing.assert_close(out[3], tex[1, :, 2, 0], atol=1e-5, rtol=0)  # wrapped onto 0
    torch.testing.assert_close(out[4], (tex[1, :, 2, 4] + tex[1, :, 2, 0]) / 2)  # seam: no bleed
    torch.testing.assert_close(out[5], (tex[1, :, 3, 2] + tex[1, :, 0, 2]) / 2)  # along v too


def test_albedo_of_a_fronto_parallel_quad_is_the_texel():
    """Pixel centres land exactly on texels: quad 8 x 8 m at 4 m, f = 4 px/m * 4 m = 16."""
    T = 8
    tex = torch.rand(2, 3, T, T)
    quad = (np.array([-4.0, -4.0, 4.0]), np.array([8.0, 0, 0]), np.array([0, 8.0, 0]))
    scene = make_scene([quad], materials=[1], textures=tex, repeats=[[2.0, 2.0]])
    cam = Camera("PINHOLE", 32, 32, [16.0, 16.0, 16.0, 16.0])
    g = raycast(scene, cam, Pose.identity((1,)))
    # pixel x -> world (x - 16) / 4 -> a = x / 32 -> u = 2 a (wraps) -> column (x % 16) / 2
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ok = (xs % 2 == 0) & (ys % 2 == 0)  # on a texel, not between two
    expected = tex[1][:, (ys[ok] % 16) // 2, (xs[ok] % 16) // 2]
    torch.testing.assert_close(g.albedo[0][:, ok], expected, atol=1e-5, rtol=0)
    between = g.albedo[0][:, 4, 3]  # row 2, column 3: halfway between texels 1 and 2
    torch.testing.assert_close(between, tex[1][:, 2, 1:3].mean(-1), atol=1e-5, rtol=0)


def test_batch_equals_one_by_one_and_per_view_cameras():
    scene, _ = random_scene(6)
    poses = Pose.stack([random_scene(s)[1] for s in (4, 5, 6)])
    cams = Camera.stack([OPENCV, OPENCV.to_model("OPENCV"), PINHOLE.to_model("OPENCV")])
    for cam in (OPENCV, cams):
        g = raycast(scene, cam, poses, tile=8)
        for b in range(3):
            one = raycast(scene, cam[b] if cam.shape else cam, poses[b : b + 1], tile=16)
            assert (g.quad[b] != one.quad[0]).float().mean() < 1e-3
            same = g.quad[b] == one.quad[0]
            for name in ("depth", "points", "normal", "albedo", "ray_dir"):
                a, c = getattr(g, name)[b], getattr(one, name)[0]
                torch.testing.assert_close(a * same, c * same, atol=1e-4, rtol=1e-5)


def test_empty_scene_and_everything_behind_is_invalid():
    empty = make_scene([])
    g = raycast(empty, PINHOLE, Pose.identity((2,)))
    assert g.depth.shape == (2, 1, 48, 64) and g.albedo.shape == (2, 3, 48, 64)
    assert not g.valid.any() and (g.quad == -1).all() and (g.material == -1).all()
    assert (g.depth == 0).all() and (g.points == 0).all()
    behind = make_scene(box([0.0, 0.0, -3.0], [2.0, 2.0, 2.0]))
    assert not raycast(behind, OPENCV, Pose.identity((1,))).valid.any()


def test_make_rays_are_unit_depth_and_reach_the_points():
    scene, pose = random_scene(7)
    poses = Pose.stack([pose, pose])
    origins, dirs = make_rays(OPENCV, poses)
    assert origins.shape == (2, 3) and dirs.shape == (2, 48, 64, 3)
    z = (dirs @ poses.R.transpose(-1, -2)[:, None])[..., 2]  # camera-frame z
    torch.testing.assert_close(z, torch.ones_like(z))
    g = raycast(scene, OPENCV, poses)
    p = origins[:, None, None] + g.depth.permute(0, 2, 3, 1) * dirs
    ok = g.valid[:, 0]
    torch.testing.assert_close(p[ok], g.points.permute(0, 2, 3, 1)[ok], atol=1e-4, rtol=1e-5)


def test_bad_inputs_name_the_input():
    scene, pose = random_scene(0)
    two = Pose.stack([pose, pose])
    with pytest.raises(ShapeError, match="cam_from_world"):
        raycast(scene, PINHOLE, two.reshape(1, 2))
    with pytest.raises(ShapeError, match="camera"):
        raycast(scene, Camera.stack([PINHOLE] * 3), two)
    with pytest.raises(InputError, match="width/height"):
        raycast(scene, Camera.stack([PINHOLE, PINHOLE.scale(2)]), two)
    with pytest.raises(InputError, match="scene"):
        raycast("street", PINHOLE, two)
    with pytest.raises(InputError, match="cam_from_world"):
        raycast(scene, PINHOLE, torch.eye(4))


@pytest.mark.parametrize("device", DEVICES)
def test_follows_the_scene_device_and_ignores_tf32(device):
    scene, pose = random_scene(1)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # TF32 / bf16 matmuls, as in training scripts
    try:
        g = raycast(scene.to(device), OPENCV, pose.reshape(1).to(device))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    ref = raycast(scene, OPENCV, pose.reshape(1))
    assert g.depth.device.type == device and g.depth.dtype == torch.float32
    assert (g.quad.cpu() != ref.quad).float().mean() < 1e-3
    same = (g.quad.cpu() == ref.quad).expand(-1, 3, -1, -1)
    torch.testing.assert_close(g.points.cpu()[same], ref.points[same], atol=1e-4, rtol=1e-5)


def test_rays_beyond_the_distortion_fold_are_invalid_and_finite():
    scene, pose = random_scene(3)
    cam = Camera("OPENCV", 64, 48, [30.0, 30.0, 31.5, 23.5, -0.6, 0.0, 0.0, 0.0])
    _, _, ok = make_rays(cam, pose.reshape(1), return_valid=True)
    assert 0.1 < ok.float().mean() < 0.9  # the corners lie beyond the fold
    g = raycast(scene, cam, pose.reshape(1))
    assert not (g.valid[0, 0] & ~ok[0]).any() and g.valid[0, 0][ok[0]].float().mean() > 0.5
    for name in ("depth", "points", "normal", "albedo", "ray_dir"):
        assert torch.isfinite(getattr(g, name)).all(), name
    assert (g.ray_dir[0][:, ~ok[0]] == 0).all()
    torch.testing.assert_close(g.ray_dir[0].norm(dim=0)[ok[0]], torch.ones(int(ok.sum())))
