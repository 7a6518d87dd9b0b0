"""Appearance conditions: shading and camera finishing on hand-made GBuffers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dgeo.data.synthetic.appearance import (
    CONDITION_NAMES,
    CONDITIONS,
    Condition,
    condition_grid,
    finish,
    get_condition,
    shade,
    to_uint8,
)
from dgeo.data.synthetic.scene import GBuffer, Scene
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Pose

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KINDS = ["road", "vegetation", "facade", "lamp", "window"]
ALBEDO = [
    (0.35, 0.35, 0.37),
    (0.25, 0.5, 0.18),
    (0.6, 0.55, 0.5),
    (0.9, 0.9, 0.8),
    (0.3, 0.35, 0.4),
]
LAMP = (0.0, 8.0, 5.0)  # a street lamp 5 m above the road, 8 m ahead of the camera
LAMP_COLOR = (12.0, 9.0, 5.0)


def make_scene(lights=(LAMP,), outdoor: bool = True) -> Scene:
    """A one-quad scene whose materials, lights and ``outdoor`` flag feed :func:`shade`."""
    tex = torch.tensor(ALBEDO).view(-1, 3, 1, 1).expand(-1, 3, 4, 4).clone()
    pos = torch.tensor(lights, dtype=torch.float32).view(-1, 3)
    return Scene(
        kind="street" if outdoor else "room",
        seed=3,
        origin=torch.zeros(1, 3),
        edge_u=torch.tensor([[1.0, 0, 0]]),
        edge_v=torch.tensor([[0.0, 1, 0]]),
        material=torch.zeros(1, dtype=torch.int64),
        tex_repeat=torch.ones(1, 2),
        textures=tex,
        material_kind=KINDS,
        light_pos=pos,
        light_color=torch.tensor(LAMP_COLOR).expand(pos.shape[0], 3).clone(),
        outdoor=outdoor,
        walkable=torch.zeros(2, 3),
    )


def ground_view(batch: int = 1, h: int = 48, w: int = 64, pitch: float = 0.25, height=1.6):
    """A camera ``height`` m above the ground plane ``z = 0`` looking along ``+y``, pitched down.

    Returns the GBuffer (road in the middle, vegetation right of x = 2, facade colour left of
    x = -2, sky above the horizon) and the ``(B,)`` poses.
    """
    f = 0.8 * w
    c, s = math.cos(pitch), math.sin(pitch)
    R = torch.tensor([[1.0, 0, 0], [0, -s, -c], [0, c, -s]])
    centre = torch.tensor([0.0, 0.0, height])
    pose = Pose.from_Rt(R.expand(batch, 3, 3), (-(R @ centre)).expand(batch, 3))
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    d_cam = torch.stack([(u - (w - 1) / 2) / f, (v - (h - 1) / 2) / f, torch.ones_like(u)])
    d = torch.einsum("ji,jhw->ihw", R, d_cam)
    d = d / d.norm(dim=0, keepdim=True)
    t = -height / d[2].clamp(max=-1e-6)
    valid = (d[2] < -1e-3) & (t < 200)
    pts = torch.where(valid, centre.view(3, 1, 1) + d * t, 0)
    depth = torch.where(valid, t * d_cam[2] / d_cam.norm(dim=0), 0)
    material = torch.where(pts[0] > 2, 1, torch.where(pts[0] < -2, 2, 0))
    material = torch.where(valid, material, -1)
    normal = torch.where(valid, torch.tensor([0.0, 0, 1]).view(3, 1, 1), 0)
    albedo = torch.where(valid, torch.tensor(ALBEDO)[material.clamp(min=0)].permute(2, 0, 1), 0)

    def rep(x):
        return x.expand(batch, *x.shape).clone()

    gbuf = GBuffer(
        depth=rep(depth[None]),
        valid=rep(valid[None]),
        points=rep(pts),
        normal=rep(normal),
        albedo=rep(albedo),
        material=rep(material[None]),
        quad=rep(torch.where(valid, 0, -1)[None]),
        ray_dir=rep(d),
    )
    return gbuf, pose


def flat_view(normals, kinds, h: int = 8, w: int = 8):
    """One view split into vertical stripes, stripe ``i`` with normal ``normals[i]`` and material
    index ``kinds[i]``, seen from 5 m along ``-normal`` direction (no sky)."""
    n = len(normals)
    normal = torch.zeros(1, 3, h, w * n)
    material = torch.zeros(1, 1, h, w * n, dtype=torch.int64)
    for i, (nv, k) in enumerate(zip(normals, kinds, strict=True)):
        normal[:, :, :, i * w : (i + 1) * w] = torch.tensor(nv).view(1, 3, 1, 1)
        material[:, :, :, i * w : (i + 1) * w] = k
    albedo = torch.tensor(ALBEDO)[material[:, 0]].permute(0, 3, 1, 2).contiguous()
    points = torch.randn(1, 3, h, w * n, generator=torch.Generator().manual_seed(1))
    gbuf = GBuffer(
        depth=torch.full((1, 1, h, w * n), 5.0),
        valid=torch.ones(1, 1, h, w * n, dtype=torch.bool),
        points=points,
        normal=normal,
        albedo=albedo,
        material=material,
        quad=torch.zeros(1, 1, h, w * n, dtype=torch.int64),
        ray_dir=-normal,
    )
    return gbuf, Pose.identity((1,))


def render(name, gbuf, pose, scene, seeds=(0,), **overrides):
    cond = dataclasses.replace(get_condition(name), **overrides)
    return finish(shade(gbuf, scene, cond, pose), cond, list(seeds), outdoor=scene.outdoor)


def test_every_condition_changes_the_image_but_never_the_geometry():
    gbuf, pose = ground_view()
    scene = make_scene()
    before = {k: v.clone() for k, v in vars(gbuf).items()}
    ref = render("overcast-reference", gbuf, pose, scene)
    assert CONDITION_NAMES[0] == "overcast-reference" and len(CONDITIONS) == 10
    for name in CONDITION_NAMES[1:]:
        img = render(name, gbuf, pose, scene)
        assert (img - ref).abs().mean() > 0.02, name
    for k, v in vars(gbuf).items():
        assert torch.equal(v, before[k]), k


def test_night_is_much_darker_than_day():
    gbuf, pose = ground_view(h=60, w=80)
    scene = make_scene()
    day = [render(n, gbuf, pose, scene).mean() for n in ("overcast-reference", "sun", "snow")]
    night = render("night", gbuf, pose, scene).mean()
    assert night < 0.6 * min(day)


def test_street_lamps_light_a_pool_under_them_at_night():
    gbuf, pose = ground_view(h=60, w=80)
    lit = shade(gbuf, make_scene(), "night", pose)
    dark = shade(gbuf, make_scene(lights=()), "night", pose)
    foot = torch.tensor(LAMP[:2]).view(1, 2, 1, 1)
    dist = (gbuf.points[:, :2] - foot).norm(dim=1, keepdim=True)
    near = gbuf.valid & (dist < 3)
    far = gbuf.valid & (dist > 40)
    assert near.sum() > 10 and far.sum() > 10
    assert (lit.mean(1, keepdim=True)[near] > 3 * dark.mean(1, keepdim=True)[near]).all()
    # the 1/d^2 falloff: the lamp barely changes far pixels
    assert (lit - dark).mean(1, keepdim=True)[far].max() < 0.1 * (lit - dark)[
        near.expand_as(lit)
    ].min()
    # lamps are off by day
    day = get_condition("overcast-reference")
    on = shade(gbuf, make_scene(), day, pose)
    assert torch.equal(on, shade(gbuf, make_scene(lights=()), day, pose))


def test_headlights_light_the_image_centre_at_night():
    gbuf, pose = ground_view(h=60, w=80)
    scene = make_scene(lights=())
    night = get_condition("night")
    on = shade(gbuf, scene, night, pose).mean(1)[0]
    off = shade(gbuf, scene, dataclasses.replace(night, headlights=False), pose).mean(1)[0]
    rows = slice(27, 33)  # the image centre, and the same rows at the image's sides
    assert (on[rows, 36:44] / off[rows, 36:44]).mean() > 3.0
    gain = on - off
    assert gain[rows, 36:44].mean() > 3 * gain[rows][:, [0, 1, 2, 3, 76, 77, 78, 79]].mean()
    sky = ~gbuf.valid[0, 0]
    assert torch.equal(on[sky], off[sky])


def test_sun_shading_follows_lambert():
    # stripes: facing up, facing +x, facing the sun, facing away from the sun
    cond = dataclasses.replace(get_condition("sun"), fog_density=0.0)
    s = torch.tensor(cond.sun_direction)
    normals = [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), tuple(s.tolist()), tuple((-s).tolist())]
    gbuf, pose = flat_view(normals, [2, 2, 2, 2])
    scene = make_scene(lights=())
    with_sun = shade(gbuf, scene, cond, pose)
    without = shade(gbuf, scene, dataclasses.replace(cond, sun_intensity=0.0), pose)
    n = torch.tensor(normals)
    expected = (n @ s).clamp(min=0).view(-1, 1) * cond.sun_intensity * torch.tensor(cond.sun_color)
    expected = expected * torch.tensor(ALBEDO[2])  # (4, 3) per stripe
    got = (with_sun - without)[0, :, 0, ::8].T  # one pixel per stripe
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vegetation_changes_with_the_season_and_nothing_else_does():
    side = (0.0, -1.0, 0.0)  # vertical surfaces: no snow, no puddles
    gbuf, pose = flat_view([side, side], [1, 2])  # vegetation, facade
    scene = make_scene(lights=())
    summer = get_condition("overcast-summer")
    a = shade(gbuf, scene, summer, pose)
    b = shade(gbuf, scene, dataclasses.replace(summer, season="winter"), pose)
    veg, facade = (slice(0, 8), slice(8, 16))
    assert torch.equal(a[..., facade], b[..., facade])
    assert (a[..., veg] - b[..., veg]).abs().amax() > 0.05

    def greenness(img, cols):
        c = img[0, :, :, cols].mean((1, 2))
        return float(c[1] / c.sum())

    # between the real conditions, relative to a neutral material under the same light
    rel = {}
    for name in ("overcast-summer", "overcast-winter"):
        img = shade(gbuf, scene, name, pose)
        rel[name] = greenness(img, veg) - greenness(img, facade)
    assert rel["overcast-summer"] > rel["overcast-winter"] + 0.1


@pytest.mark.parametrize("name", ["rain", "snow"])
def test_precipitation_draws_occluders(name):
    rgb = torch.full((1, 3, 96, 128), 0.05)
    cond = dataclasses.replace(get_condition(name), read_noise=0.0, shot_noise=0.0)
    clear = dataclasses.replace(cond, precipitation="none")
    wet = finish(rgb, cond, [4])
    dry = finish(rgb, clear, [4])
    changed = ((wet - dry).abs().amax(1) > 0.02).float().mean()
    assert 0.003 < changed < 0.3
    assert (wet - dry).mean() > 0  # occluders are brighter than this dark background
    assert torch.equal(finish(rgb, cond, [4], outdoor=False), dry)  # no rain in rooms


def test_same_seed_same_bytes_and_batch_independence():
    gbuf, pose = ground_view(batch=3, h=40, w=56)
    scene = make_scene()
    for name in ("night-rain", "snow"):
        radiance = shade(gbuf, scene, name, pose)
        a = finish(radiance, name, [5, 6, 7])
        assert torch.equal(to_uint8(a), to_uint8(finish(radiance, name, torch.tensor([5, 6, 7]))))
        assert not torch.equal(a[0], a[1])  # same radiance, different seeds
        for i, seed in enumerate((5, 6, 7)):
            one = shade(_slice(gbuf, i), scene, name, pose[i : i + 1])
            assert torch.equal(one, radiance[i : i + 1])
            assert torch.equal(finish(one, name, seed), a[i : i + 1])
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        b = finish(radiance, name, gens)
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        assert torch.equal(b, finish(radiance, name, gens))


def _slice(gbuf: GBuffer, i: int) -> GBuffer:
    return GBuffer(**{k: v[i : i + 1] for k, v in vars(gbuf).items()})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_in_range_on_every_device(device, dtype):
    gbuf, pose = ground_view(batch=2, h=24, w=32)
    gbuf = GBuffer(
        **{
            k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
            for k, v in vars(gbuf).items()
        }
    )
    scene = make_scene().to(device)
    for name in CONDITION_NAMES:
        rad = shade(gbuf, scene, name, pose.to(device))
        assert rad.device.type == device and rad.dtype == dtype
        assert torch.isfinite(rad).all() and (rad >= 0).all()
        img = finish(rad, name, [0, 1])
        assert img.shape == (2, 3, 24, 32) and img.dtype == dtype
        assert img.min() >= 0 and img.max() <= 1
    extreme = torch.tensor([0.0, 1e-6, 1e4], dtype=dtype, device=device).view(1, 3, 1, 1)
    img = finish(extreme.expand(1, 3, 8, 8), "night", 0)
    assert img.min() >= 0 and img.max() <= 1


def test_indoor_views_have_no_sky_but_are_lit_by_their_lights():
    gbuf, pose = ground_view(h=30, w=40)
    room = make_scene(outdoor=False)
    rad = shade(gbuf, room, "night", pose)
    assert (rad[:, :, ~gbuf.valid[0, 0]] == 0).all()
    dark = shade(gbuf, make_scene(lights=(), outdoor=False), "night", pose)
    assert rad.mean() > 2 * dark.mean()  # indoor lights are on whatever the condition


def test_errors_name_the_bad_input():
    with pytest.raises(InputError, match="overcast-reference"):
        get_condition("foggy")
    gbuf, pose = ground_view()
    with pytest.raises(InputError, match="night-rain"):
        shade(gbuf, make_scene(), "midnight", pose)
    with pytest.raises(InputError, match="unknown appearance condition"):
        finish(torch.zeros(1, 3, 4, 4), "midnight", [0])
    with pytest.raises(InputError, match="one seed"):
        finish(torch.zeros(2, 3, 4, 4), "sun", [0])
    with pytest.raises(ShapeError):
        finish(torch.zeros(1, 4, 4), "sun", [0])
    with pytest.raises(ShapeError):
        shade(gbuf, make_scene(), "sun", Pose.identity((2,)))
    with pytest.raises(InputError, match="precipitation"):
        dataclasses.replace(get_condition("rain"), precipitation="hail")
    assert isinstance(get_condition(CONDITIONS["dusk"]), Condition)


def test_to_uint8_and_condition_grid():
    img = torch.rand(2, 3, 10, 12)
    u8 = to_uint8(img)
    assert u8.shape == (2, 10, 12, 3) and u8.dtype == torch.uint8
    assert torch.equal(u8[1, 3, 4], (img[1, :, 3, 4] * 255).round().to(torch.uint8))
    grid = condition_grid({"sun": img[0], "night": img[1], "dusk": img[0]}, columns=2)
    band = 14
    assert grid.shape == (3, 2 * (10 + band) + 2, 2 * 12 + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid[:, band : band + 10, :12], img[0])
    assert grid[:, :band, :12].max() > 0.5  # the label is drawn


def test_generated_street_and_room_under_every_condition():
    scenes = pytest.importorskip("dgeo.data.synthetic.scenes")
    render = pytest.importorskip("dgeo.data.synthetic.render")
    trajectories = pytest.importorskip("dgeo.data.synthetic.trajectories")
    from dgeo.geometry import Camera

    cam = Camera("PINHOLE", 64, 48, [52.0, 52.0, 31.5, 23.5])
    views = {
        "street": ((30.0, -1.0, 1.6), (60.0, 1.0, 1.8)),
        "room": ((1.2, 1.2, 1.5), (5.0, 4.0, 1.0)),
    }
    for kind, (eye, target) in views.items():
        scene = scenes.make_scene(kind, 0)
        pose = trajectories.look_at(torch.tensor([eye]), torch.tensor([target])).float()
        gbuf = render.raycast(scene, cam, pose)
        images = {}
        for name in CONDITION_NAMES:
            rad = shade(gbuf, scene, name, pose)
            assert torch.isfinite(rad).all(), (kind, name)
            images[name] = finish(rad, name, [0], outdoor=scene.outdoor)
            assert images[name].min() >= 0 and images[name].max() <= 1
        assert images["night"].mean() < 0.6 * images["overcast-reference"].mean(), kind
        if kind == "room":  # indoors only the daylight through the windows changes
            for name in CONDITION_NAMES[1:]:
                diff = (images[name] - images["overcast-reference"]).abs().mean()
                assert diff > 0.004, name
            continue
        for i, a in enumerate(CONDITION_NAMES):  # outdoors every pair of conditions differs
            for b in CONDITION_NAMES[i + 1 :]:
                assert (images[a] - images[b]).abs().mean() > 0.02, (a, b)
