"""Procedural textures and scenes of the synthetic world (dgeo.data.synthetic.textures/scenes)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgeo.data.synthetic.scene import MATERIAL_KINDS, Scene
from dgeo.data.synthetic.scenes import SCENE_KINDS, make_scene
from dgeo.data.synthetic.textures import (
    IMAGE_EXTENSIONS,
    TEXTURE_SIZES_M,
    TEXTURES,
    fbm,
    gradient_noise,
    load_texture_folder,
    make_texture,
    make_tileable,
    value_noise,
)
from dgeo.errors import DataFileNotFoundError, InputError

T = 128  # texture size of the texture tests
TS = 32  # texture size of the scene tests (layout does not depend on it)


@pytest.fixture(scope="module")
def scenes() -> dict[tuple[str, int], Scene]:
    return {(k, s): make_scene(k, s, texture_size=TS) for k in SCENE_KINDS for s in (0, 1, 2)}


@pytest.fixture(scope="module")
def textures() -> dict[str, torch.Tensor]:
    return {name: make_texture(name, 7, T) for name in TEXTURES}


# ------------------------------------------------------------------------------------ textures
def test_registry_sizes_cover_every_texture():
    assert set(TEXTURE_SIZES_M) == set(TEXTURES)


def test_textures_shape_range_and_determinism(textures):
    for name, x in textures.items():
        assert x.shape == (3, T, T) and x.dtype == torch.float32, name
        assert bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1, name
        assert torch.equal(make_texture(name, 7, T), x), name
        assert not torch.equal(make_texture(name, 8, T), x), name
        g = torch.Generator().manual_seed(7)  # a generator gives the same as its seed
        assert torch.equal(make_texture(name, g, T), x), name


def test_textures_do_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_texture("facade", 1, 64)
    make_texture("sign", 1, 64)
    assert torch.equal(torch.rand(3), expected)


def test_textures_are_periodic(textures):
    """The seam (last -> first column/row) looks like any pair of neighbours."""
    for name, x in textures.items():
        for dim in (-1, -2):
            inner = (x - x.roll(1, dim)).abs().narrow(dim, 1, T - 1).mean()
            seam = (x.select(dim, 0) - x.select(dim, T - 1)).abs().mean()
            assert seam <= 2.0 * inner + 1e-3, (name, dim, float(seam), float(inner))


def test_textures_have_gradients_at_several_scales(textures):
    for name, x in textures.items():
        lum = x.mean(0)[None, None]
        for s in (1, 2, 4):
            y = F.avg_pool2d(lum, s) if s > 1 else lum
            grad = (y - y.roll(1, -1)).abs().mean() + (y - y.roll(1, -2)).abs().mean()
            assert grad > 0.005, (name, s, float(grad))


def test_textures_vary_in_colour():
    """Per-brick colours, leaves, book spines and shop goods are not greyscale."""
    for name in ("bricks", "foliage", "books", "shopfront"):
        x = make_texture(name, 3, 64)
        assert (x - x.mean(0, keepdim=True)).abs().mean() > 0.02, name


def test_noise_is_periodic_standardised_and_separable_path_exact():
    g = torch.Generator().manual_seed(0)
    n = fbm(g, 64, 4, 5, batch=3)
    assert n.shape == (3, 64, 64)
    assert torch.allclose(n.mean((-2, -1)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(n.std(dim=(-2, -1)), torch.ones(3), atol=1e-4)
    u = torch.arange(64.0).view(1, 1, -1) / 64
    v = torch.arange(64.0).view(1, -1, 1) / 64
    for fn in (value_noise, gradient_noise):
        for freq in (1, (3, 5), 16):
            fast = fn(torch.Generator().manual_seed(1), 64, freq, 2)
            slow = fn(torch.Generator().manual_seed(1), 64, freq, 2, u=u, v=v)
            assert torch.allclose(fast, slow, atol=1e-5), (fn.__name__, freq)
            # one period further along u lands on the same value
            shifted = fn(torch.Generator().manual_seed(1), 64, freq, 2, u=u + 1.0, v=v)
            assert torch.allclose(shifted, slow, atol=1e-4)


def test_make_texture_errors():
    with pytest.raises(InputError, match="facade"):
        make_texture("marble", 0)
    with pytest.raises(InputError, match="size"):
        make_texture("bricks", 0, 8)
    with pytest.raises(InputError, match="seed"):
        make_texture("bricks", 1.5)
    with pytest.raises(InputError, match="style"):
        make_texture("facade", 0, 64, style="glass")


# -------------------------------------------------------------------------------- user images
def _write_images(folder, rng):
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "b_wide.png"), rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "a_photo.JPG"), rng.integers(0, 255, (200, 150, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "c_grey.pgm"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    cv2.imwrite(str(folder / "d_small.ppm"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "e_broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "sub").mkdir(exist_ok=True)


def test_load_texture_folder(tmp_path):
    folder = tmp_path / "tex"
    _write_images(folder, np.random.default_rng(0))
    tex = load_texture_folder(folder, 48)
    assert tex.shape == (4, 3, 48, 48) and tex.dtype == torch.float32
    assert tex.min() >= 0 and tex.max() <= 1
    # mirror-blended borders: first and last column (row) coincide
    assert torch.allclose(tex[..., 0], tex[..., -1], atol=1e-6)
    assert torch.allclose(tex[..., 0, :], tex[..., -1, :], atol=1e-6)
    # file-name order (case-insensitive extension), the grey image replicated to 3 channels
    grey = tex[2]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    # the interior keeps the picture: compare with a plain centre crop of the first file
    img = cv2.cvtColor(cv2.imread(str(folder / "a_photo.JPG")), cv2.COLOR_BGR2RGB)
    crop = cv2.resize(img[25:175], (48, 48), interpolation=cv2.INTER_AREA) / 255.0
    ref = torch.from_numpy(crop).float().permute(2, 0, 1)
    assert torch.allclose(tex[0, :, 12:36, 12:36], ref[:, 12:36, 12:36], atol=1e-5)
    assert torch.equal(load_texture_folder(str(folder), 48), tex)


def test_load_texture_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataFileNotFoundError, match="nowhere"):
        load_texture_folder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("hi")
    (empty / "fake.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="empty") as err:
        load_texture_folder(empty)
    assert ".png" in str(err.value) and ".jpg" in str(err.value)
    with pytest.raises(InputError, match="not a folder"):
        load_texture_folder(empty / "readme.md")
    assert ".ppm" in IMAGE_EXTENSIONS


def test_make_tileable_keeps_interior():
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = make_tileable(x)
    assert torch.equal(y[:, 8:56, 8:56], x[:, 8:56, 8:56])
    assert torch.allclose(y[..., 0], y[..., -1]) and torch.allclose(y[..., 0, :], y[..., -1, :])


# -------------------------------------------------------------------------------------- scenes
def _tensors(scene: Scene) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(scene).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_scene_determinism(kind, scenes):
    a, b = scenes[(kind, 0)], make_scene(kind, 0, texture_size=TS)
    for name, t in _tensors(a).items():
        assert torch.equal(t, getattr(b, name)), name
    assert a.material_kind == b.material_kind and a.meta == b.meta
    c = scenes[(kind, 1)]
    assert c.num_quads != a.num_quads or not torch.equal(c.origin, a.origin)
    assert not torch.equal(c.textures[0], a.textures[0])


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_scene_validity(kind, scenes):
    for seed in (0, 1, 2):
        s = scenes[(kind, seed)]
        assert s.kind == kind and s.seed == seed
        assert 80 <= s.num_quads <= 220, s.num_quads
        for t in (s.origin, s.edge_u, s.edge_v, s.tex_repeat, s.light_pos, s.light_color):
            assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
        assert s.material.dtype == torch.int64
        lu, lv = s.edge_u.norm(dim=-1), s.edge_v.norm(dim=-1)
        assert lu.min() > 0.01 and lv.min() > 0.01
        area = torch.linalg.cross(s.edge_u, s.edge_v).norm(dim=-1)
        assert (area / (lu * lv)).min() > 0.99  # rectangles (edges orthogonal)
        assert torch.allclose(s.normal.norm(dim=-1), torch.ones(s.num_quads), atol=1e-5)
        assert (s.tex_repeat > 0).all() and (s.tex_repeat < 200).all()
        assert set(s.material_kind) <= set(MATERIAL_KINDS)
        assert s.textures.shape[1:] == (3, TS, TS)
        assert s.textures.min() >= 0 and s.textures.max() <= 1
        used = set(s.material.tolist())
        assert used == set(range(len(s.material_kind)))  # no unused texture
        assert s.light_pos.shape[0] >= 2 and (s.light_color > 0).all()
        lo, hi = s.walkable
        assert (hi > lo).all()
        assert s.meta["ground_z"] == 0.0
        vertical = s.edge_v[:, 2].abs() > 0
        # vertical quads are upright: edge_v straight down, edge_u horizontal
        assert (s.edge_v[vertical, :2].abs() < 1e-6).all() and (s.edge_v[vertical, 2] < 0).all()
        assert (s.edge_u[vertical, 2].abs() < 1e-6).all()


def _inside(points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float = 1e-4):
    return ((points > lo + eps) & (points < hi - eps)).all(-1)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_walkable_box_is_free(kind, scenes):
    """No surface passes through the walkable box, and it avoids every obstacle box."""
    a = torch.linspace(0, 1, 13)
    ab = torch.stack(torch.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)
    for seed in (0, 1, 2):
        s = scenes[(kind, seed)]
        lo, hi = s.walkable
        pts = s.origin[:, None] + ab[:, :1] * s.edge_u[:, None] + ab[:, 1:] * s.edge_v[:, None]
        assert not _inside(pts, lo, hi).any(), (kind, seed)
        for olo, ohi in s.meta["obstacles"]:
            olo, ohi = torch.tensor(olo), torch.tensor(ohi)
            assert ((ohi <= lo) | (olo >= hi)).any(), (kind, seed, olo, ohi)


def test_street_layout(scenes):
    for seed in (0, 1, 2):
        s = scenes[("street", seed)]
        m = s.meta
        L, R = m["length"], m["road_width"] / 2
        assert s.outdoor and m["direction"] == (1.0, 0.0, 0.0)
        lo, hi = s.walkable
        assert lo[0] >= 0 and hi[0] <= L and -R < lo[1] and hi[1] < R
        assert float(lo[2]) == pytest.approx(1.2) and float(hi[2]) == pytest.approx(2.5)
        assert all(float(lo[1]) <= y <= float(hi[1]) for y in m["lanes_y"])
        kinds = [s.material_kind[i] for i in s.material.tolist()]
        n = s.normal
        facade = torch.tensor([k == "facade" for k in kinds])
        # facades are vertical and axis-aligned; fronts (normal along y) are parallel to x
        assert (n[facade, 2].abs() < 1e-6).all()
        assert ((n[facade, 0].abs() > 0.999) | (n[facade, 1].abs() > 0.999)).all()
        fronts = facade & (n[:, 1].abs() > 0.999)
        y = s.origin[fronts, 1]
        assert (y.abs() >= m["facade_y"] - 1e-4).all()
        assert (y > 0).sum() >= 10 and (y < 0).sum() >= 10  # both sides, 10+ buildings each
        heights = s.origin[fronts, 2]
        assert heights.max() - heights.min() > 3.0  # varied heights
        counts = {k: kinds.count(k) for k in set(kinds)}
        for k in ("road", "sidewalk", "facade", "window", "sign", "vehicle", "pole", "lamp"):
            assert counts.get(k, 0) > 0, k
        assert counts["vegetation"] > 0
        # lights hang at the lamp heads, over the road edges, warm
        assert (s.light_pos[:, 2] > 5).all() and (s.light_pos[:, 1].abs() < R).all()
        assert (s.light_color[:, 0] > s.light_color[:, 2]).all()


def test_street_texels_have_physical_size(scenes):
    """Repeats are edge length over the texture's size in metres."""
    s = scenes[("street", 0)]
    kinds = [s.material_kind[i] for i in s.material.tolist()]
    lu, flat = s.edge_u.norm(dim=-1), s.normal[:, 2].abs() > 0.999
    for kind, size, orient in (("sidewalk", 2.4, flat), ("facade", 6.0, ~flat)):
        sel = torch.tensor([k == kind for k in kinds]) & (lu > 3) & orient
        assert sel.any()
        metres = lu[sel] / s.tex_repeat[sel, 0]
        assert torch.allclose(metres, torch.full_like(metres, size), rtol=1e-4), kind


def test_room_layout(scenes):
    for seed in (0, 1, 2):
        s = scenes[("room", seed)]
        W, D, H = s.meta["size"]
        assert not s.outdoor and 5 <= W <= 7 and 4 <= D <= 6 and 2.6 <= H <= 3.3
        ends = torch.cat([s.origin, s.origin + s.edge_u + s.edge_v])
        bound = torch.tensor([W, D, H])
        assert (ends >= -1e-4).all() and (ends <= bound + 1e-4).all()
        lo, hi = s.walkable
        assert (lo >= 0).all() and (hi <= bound).all()
        assert float(lo[2]) == pytest.approx(0.8) and float(hi[2]) == pytest.approx(2.0)
        kinds = set(s.material_kind)
        assert {"floor", "wall", "ceiling", "furniture", "lamp", "picture"} <= kinds
        assert (s.light_pos[:, 2] < H).all() and (s.light_pos[:, 2] > H - 0.5).all()


def test_room_params():
    s = make_scene("room", 3, texture_size=16, width=4.0, depth=3.5, height=2.5, lights=1)
    assert s.meta["size"] == (4.0, 3.5, 2.5) and s.light_pos.shape == (1, 3)
    street = make_scene("street", 3, texture_size=16, length=60.0, road_width=10.0)
    assert street.meta["length"] == 60.0
    assert float(street.walkable[1, 0]) == pytest.approx(50.0)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_texture_dir_replaces_some_materials(kind, tmp_path):
    folder = tmp_path / "imgs"
    _write_images(folder, np.random.default_rng(1))
    user = load_texture_folder(folder, TS)
    a = make_scene(kind, 0, texture_dir=folder, texture_size=TS)
    b = make_scene(kind, 0, texture_dir=str(folder), texture_size=TS)
    assert torch.equal(a.textures, b.textures)
    used = [k for k in range(len(a.textures)) if any(torch.equal(a.textures[k], u) for u in user)]
    assert len(used) >= 2
    assert {a.material_kind[k] for k in used} <= {"facade", "sign", "picture"}
    plain = make_scene(kind, 0, texture_size=TS)
    assert torch.equal(a.origin, plain.origin)  # the layout does not change
    with pytest.raises(DataFileNotFoundError, match="missing"):
        make_scene(kind, 0, texture_dir=tmp_path / "missing")


def test_make_scene_errors():
    with pytest.raises(InputError, match=r"street.*room"):
        make_scene("forest")
    with pytest.raises(InputError, match=r"accepted: .*length"):
        make_scene("street", lenght=50.0)
    with pytest.raises(InputError, match="width"):
        make_scene("room", width=1.0)
    bad = [
        ("street", {"length": -5.0}),
        ("street", {"length": float("nan")}),
        ("street", {"road_width": 3.0}),
        ("street", {"buildings_per_side": (8, 4)}),
        ("street", {"buildings_per_side": (2.5, 4)}),
        ("street", {"height_range": (2.0, 10.0)}),
        ("street", {"cars_per_side": -1}),
        ("street", {"lamp_color": (1.0, -1.0, 0.0)}),
        ("street", {"length": 20.0}),
        ("room", {"pictures": 1.5}),
        ("room", {"margin": 0.2}),
    ]
    for kind, params in bad:
        with pytest.raises(InputError):
            make_scene(kind, 0, texture_size=16, **params)
    with pytest.raises(InputError, match="texture_size"):
        make_scene("room", 0, texture_size=8)
    with pytest.raises(InputError, match="seed"):
        make_scene("room", "0")


def test_generation_keeps_thread_count_and_accepts_numpy_seeds():
    n = torch.get_num_threads()
    a = make_scene("room", np.int64(4), texture_size=16)
    assert torch.get_num_threads() == n
    assert a.seed == 4 and torch.equal(a.origin, make_scene("room", 4, texture_size=16).origin)


def test_views_from_walkable_box_see_rich_surfaces(scenes):
    """Ray-cast a view along each scene: most pixels hit textured quads of several materials."""
    from dgeo.data.synthetic.render import raycast
    from dgeo.data.synthetic.trajectories import look_at
    from dgeo.geometry import Camera

    cam = Camera("PINHOLE", 64, 48, [40.0, 40.0, 31.5, 23.5])
    for kind in SCENE_KINDS:
        s = scenes[(kind, 0)]
        lo, hi = s.walkable
        eye = (lo + hi) / 2
        target = eye + torch.tensor([5.0, 0.3, -0.5])
        g = raycast(s, cam, look_at(eye, target).reshape(1))
        assert g.valid.float().mean() > 0.6, kind
        assert len(g.material[g.valid].unique()) >= 5, kind
        assert g.albedo[g.valid.expand_as(g.albedo)].std() > 0.05, kind
