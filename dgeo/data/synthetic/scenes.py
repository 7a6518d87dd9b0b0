"""Procedural scenes of the synthetic world: a street canyon and an indoor room.

:func:`make_scene` builds a :class:`~dgeo.data.synthetic.scene.Scene` of textured quads from a
seed; the same seed (and parameters) gives identical tensors bit for bit, since all randomness
comes from explicitly seeded ``torch.Generator`` objects (one for the layout, one per material).

Conventions (world ``z`` up, metres):

* Vertical quads have their origin at the top-left corner as seen from the side a viewer is
  meant to see, ``edge_u`` pointing right and ``edge_v`` down, so texture row 0 is the top and
  drawn text and pictures read correctly (the renderer maps ``(a, b)`` to (column, row)). Their
  ``edge_u x edge_v`` normal therefore points away from that viewer; quads are two-sided.
* Horizontal quads seen from above run ``edge_u`` along ``+x`` and ``edge_v`` along ``-y``.
* ``tex_repeat`` is the quad's edge lengths over the texture's physical size
  (:data:`~dgeo.data.synthetic.textures.TEXTURE_SIZES_M`), so texels have a plausible size in
  metres (bricks ~0.22 m); panels (signs, pictures, vehicles, furniture fronts) are stretched
  once over their quad and drawn for its aspect ratio.
* ``meta["obstacles"]`` lists the solid boxes (vehicles, poles, trees, furniture) as
  ``[[x0, y0, z0], [x1, y1, z1]]``; ``walkable`` avoids all of them.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from dgeo.data.synthetic.scene import Scene
from dgeo.data.synthetic.textures import (
    TEXTURE_SIZES_M,
    TEXTURES,
    car_color,
    generator,
    load_texture_folder,
    single_threaded,
)
from dgeo.errors import InputError

#: The scene kinds :func:`make_scene` builds.
SCENE_KINDS = ("street", "room")

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


# ------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class StreetParams:
    """Parameters of the street canyon (metres).

    Attributes:
        length: length of the built-up street along ``+x`` (buildings span ``[0, length]``).
        road_width: kerb to kerb; a 2 m parking lane lies along each kerb.
        sidewalk_width: kerb to the facade line.
        buildings_per_side: ``(min, max)`` number of building segments on each side.
        height_range: ``(min, max)`` building height.
        max_setback: largest set-back of a facade behind the facade line.
        shop_height: height of the shop fronts on ground floors.
        cars_per_side, lamps_per_side, trees_per_side, signs_per_side: street furniture counts.
        lamp_color: linear RGB intensity of each street lamp (``1/d^2`` falloff).
        margin: distance kept between the walkable box and the street's ends.
    """

    length: float = 120.0
    road_width: float = 8.0
    sidewalk_width: float = 3.0
    buildings_per_side: tuple[int, int] = (10, 14)
    height_range: tuple[float, float] = (8.0, 25.0)
    max_setback: float = 2.5
    shop_height: float = 4.0
    cars_per_side: int = 3
    lamps_per_side: int = 3
    trees_per_side: int = 2
    signs_per_side: int = 4
    lamp_color: Vec3 = (14.0, 10.5, 6.0)
    margin: float = 10.0

    def __post_init__(self):
        _positive(self, "length", "road_width", "sidewalk_width", "shop_height", "margin")
        _nonneg(self, "max_setback")
        _counts(self, "cars_per_side", "lamps_per_side", "trees_per_side", "signs_per_side")
        _range(self, "buildings_per_side", integer=True, low=1)
        _range(self, "height_range", low=self.shop_height + 1.0)
        _color(self, "lamp_color")
        if self.road_width < 6.0:
            raise InputError(
                f"road_width must be at least 6 m (two 2 m parking lanes and a driving lane), "
                f"got {self.road_width}."
            )
        if self.sidewalk_width < 2.0:
            raise InputError(f"sidewalk_width must be at least 2 m, got {self.sidewalk_width}.")
        if self.length < 2 * self.margin + 10 or self.length / self.buildings_per_side[1] < 3.0:
            raise InputError(
                f"length {self.length} m is too short: it must exceed 2 * margin + 10 m "
                f"({2 * self.margin + 10} m) and give buildings at least 3 m of frontage."
            )


@dataclass(frozen=True)
class RoomParams:
    """Parameters of the indoor room (metres); ``None`` draws a size from the seed.

    Attributes:
        width, depth, height: room extent along ``x``, ``y``, ``z`` (default about 6 x 5 x 3).
        pictures: pictures and posters on the walls (as many as fit).
        boxes: cardboard boxes on the floor.
        lights: ceiling lights (``None``: 2 or 4).
        light_color: linear RGB intensity of each ceiling light.
        margin: distance of the walkable box from the walls (beyond the furniture).
    """

    width: float | None = None
    depth: float | None = None
    height: float | None = None
    pictures: int = 6
    boxes: int = 3
    lights: int | None = None
    light_color: Vec3 = (3.0, 2.9, 2.6)
    margin: float = 1.0

    def __post_init__(self):
        for name, lo in (("width", 3.0), ("depth", 3.0), ("height", 2.4)):
            v = getattr(self, name)
            if v is not None and (not _finite(v) or v < lo or v > 30.0):
                raise InputError(f"room {name} must lie in [{lo}, 30] m, got {v!r}.")
        _counts(self, "pictures", "boxes")
        if self.lights is not None:
            _counts(self, "lights")
        _color(self, "light_color")
        if not _finite(self.margin) or not 0.8 <= self.margin <= 1.4:
            raise InputError(
                f"room margin must lie in [0.8, 1.4] m (furniture stands up to 0.75 m from the "
                f"walls), got {self.margin!r}."
            )


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(p, *names: str):
    for n in names:
        v = getattr(p, n)
        if not _finite(v) or v <= 0:
            raise InputError(f"{n} must be a positive number, got {v!r}.")


def _nonneg(p, *names: str):
    for n in names:
        v = getattr(p, n)
        if not _finite(v) or v < 0:
            raise InputError(f"{n} must be a non-negative number, got {v!r}.")


def _counts(p, *names: str):
    for n in names:
        v = getattr(p, n)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 50:
            raise InputError(f"{n} must be an integer in [0, 50], got {v!r}.")


def _range(p, name: str, integer: bool = False, low: float = 0.0):
    v = getattr(p, name)
    ok = isinstance(v, (tuple, list)) and len(v) == 2
    ok = ok and all((isinstance(x, int) and not isinstance(x, bool)) or not integer for x in v)
    ok = ok and all(_finite(x) for x in v) and low <= v[0] <= v[1]
    if not ok:
        kind = "integers" if integer else "numbers"
        raise InputError(
            f"{name} must be a (min, max) pair of {kind} with {low} <= min <= max, got {v!r}."
        )


def _color(p, name: str):
    v = getattr(p, name)
    if not (isinstance(v, (tuple, list)) and len(v) == 3 and all(_finite(x) and x >= 0 for x in v)):
        raise InputError(f"{name} must be three non-negative numbers, got {v!r}.")


def _parse(cls, kind: str, params: dict):
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(
            f"unknown {kind} scene parameter(s) {unknown}; accepted: {', '.join(names)}."
        )
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(**params)


# --------------------------------------------------------------------------------------- builder
def _mix_seed(seed: int, stream: int) -> int:
    """A well-mixed 63-bit seed for ``stream`` of ``seed`` (SplitMix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + (stream + 1) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) >> 1


class _Builder:
    """Collects materials and quads, then packs them into a :class:`Scene`."""

    def __init__(self, seed: int, size: int, user: torch.Tensor | None):
        self.seed, self.size = seed, size
        self.layout = generator(_mix_seed(seed, 0))
        self.user = user
        self.user_order = (
            torch.randperm(len(user), generator=generator(_mix_seed(seed, 1))).tolist()
            if user is not None
            else []
        )
        self.user_used = 0
        self.textures: list[torch.Tensor] = []
        self.kinds: list[str] = []
        self.sizes: list[Vec2 | None] = []
        self.keys: dict[str, int] = {}
        self.quads: list[list[float]] = []
        self.obstacles: list[list[list[float]]] = []

    # ---- random draws from the layout generator
    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.layout))

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in ``[lo, hi]`` (``lo`` if the range is empty)."""
        return int(torch.randint(lo, max(lo, hi) + 1, (), generator=self.layout))

    def choice(self, seq: Sequence):
        return seq[self.randint(0, len(seq) - 1)]

    # ---- materials
    def material(
        self,
        key: str,
        kind: str,
        name: str,
        size_m: Vec2 | str | None = "default",
        replaceable: bool = False,
        **params,
    ) -> int:
        """Index of material ``key``, generating texture ``name`` with ``params`` on first use
        (from its own seeded generator; or a user image if ``replaceable`` and some are left)."""
        if key in self.keys:
            return self.keys[key]
        k = len(self.textures)
        if replaceable and self.user is not None and self.user_used < len(self.user):
            tex = self.user[self.user_order[self.user_used]]
            self.user_used += 1
        else:
            tex = TEXTURES[name](generator(_mix_seed(self.seed, 1000 + k)), self.size, **params)
        self.textures.append(tex)
        self.kinds.append(kind)
        self.sizes.append(TEXTURE_SIZES_M[name] if size_m == "default" else size_m)
        self.keys[key] = k
        return k

    # ---- geometry
    def quad(self, origin: Vec3, eu: Vec3, ev: Vec3, mat: int, repeat: Vec2 | None = None):
        """Add the quad ``origin + a eu + b ev``; ``repeat`` defaults to the edge lengths over
        the material's physical size (1 for panels)."""
        if repeat is None:
            size = self.sizes[mat]
            lu, lv = math.hypot(*eu), math.hypot(*ev)
            repeat = (1.0, 1.0) if size is None else (lu / size[0], lv / size[1])
        self.quads.append([*origin, *eu, *ev, float(mat), *repeat])

    def wall(self, p0: Vec2, p1: Vec2, z0: float, z1: float, mat: int, repeat=None):
        """A vertical rectangle over the ground segment ``p0 -> p1`` (``p0`` on the viewer's
        left) between heights ``z0 < z1``."""
        eu = (p1[0] - p0[0], p1[1] - p0[1], 0.0)
        self.quad((p0[0], p0[1], z1), eu, (0.0, 0.0, z0 - z1), mat, repeat)

    def xwall(self, x: float, ya: float, yb: float, z0: float, z1: float, facing: int, mat: int):
        """A vertical rectangle in the plane ``x``, seen from its ``facing`` (+1 or -1) side."""
        lo, hi = min(ya, yb), max(ya, yb)
        p0, p1 = ((x, lo), (x, hi)) if facing > 0 else ((x, hi), (x, lo))
        self.wall(p0, p1, z0, z1, mat)

    def ground(self, x0: float, x1: float, y0: float, y1: float, z: float, mat: int, repeat=None):
        """A horizontal rectangle seen from above (``edge_u`` along +x, ``edge_v`` along -y)."""
        self.quad((x0, y1, z), (x1 - x0, 0.0, 0.0), (0.0, y0 - y1, 0.0), mat, repeat)

    def ceiling(self, x0: float, x1: float, y0: float, y1: float, z: float, mat: int):
        """A horizontal rectangle seen from below."""
        self.quad((x0, y0, z), (x1 - x0, 0.0, 0.0), (0.0, y1 - y0, 0.0), mat)

    def box(
        self,
        lo: Vec3,
        hi: Vec3,
        mat: int | dict[str, int],
        faces: Sequence[str] = ("-x", "+x", "-y", "+y", "+z"),
        solid: bool = True,
    ):
        """An axis-aligned box ``lo..hi`` with the given faces (``"-x"`` ... ``"+z"``), each seen
        from outside; ``mat`` is one material or one per face name. ``solid`` boxes are recorded
        as obstacles."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        for f in faces:
            m = mat[f] if isinstance(mat, dict) else mat
            if f == "-y":
                self.wall((x0, y0), (x1, y0), z0, z1, m)
            elif f == "+y":
                self.wall((x1, y1), (x0, y1), z0, z1, m)
            elif f == "-x":
                self.wall((x0, y1), (x0, y0), z0, z1, m)
            elif f == "+x":
                self.wall((x1, y0), (x1, y1), z0, z1, m)
            elif f == "+z":
                self.ground(x0, x1, y0, y1, z1, m)
            elif f == "-z":
                self.ceiling(x0, x1, y0, y1, z0, m)
            else:
                raise ValueError(f"unknown box face {f!r}")
        if solid:
            self.obstacles.append([[x0, y0, z0], [x1, y1, z1]])

    def build(
        self,
        kind: str,
        lights: list[Vec3],
        light_colors: list[Vec3],
        outdoor: bool,
        walkable: tuple[Vec3, Vec3],
        meta: dict,
    ) -> Scene:
        q = torch.tensor(self.quads, dtype=torch.float64).reshape(-1, 12)
        used = sorted({int(m) for m in q[:, 9].tolist()})  # drop materials no quad uses
        remap = torch.full((len(self.textures),), -1, dtype=torch.long)
        remap[used] = torch.arange(len(used))
        material = remap[q[:, 9].long()]
        meta = {**meta, "obstacles": self.obstacles}
        return Scene(
            kind=kind,
            seed=self.seed,
            origin=q[:, 0:3].float().contiguous(),
            edge_u=q[:, 3:6].float().contiguous(),
            edge_v=q[:, 6:9].float().contiguous(),
            material=material.contiguous(),
            tex_repeat=q[:, 10:12].float().contiguous(),
            textures=torch.stack([self.textures[k] for k in used]),
            material_kind=[self.kinds[k] for k in used],
            light_pos=torch.tensor(lights, dtype=torch.float32).reshape(-1, 3),
            light_color=torch.tensor(light_colors, dtype=torch.float32).reshape(-1, 3),
            outdoor=outdoor,
            walkable=torch.tensor(walkable, dtype=torch.float32),
            meta=meta,
        )


# ---------------------------------------------------------------------------------------- street
_FACADE_STYLES = ("bricks", "plaster", "stone", "panels", "bricks")
_BUILDING_DEPTH = 12.0
_SIDEWALK_Z = 0.15
_PARKING = 2.0  # width of the parking lanes along the kerbs


@dataclass
class _Building:
    x0: float
    x1: float
    d: float  # distance of the front from the centre line
    h: float
    mat: int


def street_scene(
    seed: int = 0, *, texture_size: int = 256, user_textures: torch.Tensor | None = None, **params
) -> Scene:
    """A RobotCar-like street canyon along ``+x``; see :class:`StreetParams` for ``params``.

    A two-way road with parking lanes and lane markings, raised sidewalks with kerbs, facades of
    10-14 buildings per side (varied heights, set-backs and wall styles, shop fronts on ground
    floors), blade and flat signs, parked cars, street lamps (the scene's lights, warm) and
    trees and hedges (material kind ``"vegetation"``). Buildings close the view at both ends.

    Args:
        seed: the seed.
        texture_size: texture size ``T``.
        user_textures: optional ``(N, 3, T, T)`` images that replace the signs and every other
            facade style, in an order drawn from the seed.
    Returns:
        the :class:`Scene` (``outdoor=True``; ``walkable`` over the driving lanes, camera height
        1.2-2.5 m; ``meta``: ``direction``, ``lanes_y``, ``length``, ``ground_z``, ...).
    """
    p = _parse(StreetParams, "street", params)
    b = _Builder(seed, texture_size, user_textures)
    L, R, F = p.length, p.road_width / 2, p.road_width / 2 + p.sidewalk_width
    ext = 25.0  # road and sidewalks continue past the buildings to a closing facade
    x_lo, x_hi = -ext, L + ext

    # ---- ground
    park_v = (R - _PARKING) / R
    road = b.material("road", "road", "road", (8.0, R), lines_v=(park_v,))
    side = b.material("sidewalk", "sidewalk", "paving")
    kerb = b.material("kerb", "sidewalk", "concrete")
    reach = F + p.max_setback + 1.0
    for s in (1, -1):  # road halves: v = 0 on the centre line (dashed), 1 at the kerb
        b.quad((x_lo, 0.0, 0.0), (x_hi - x_lo, 0.0, 0.0), (0.0, s * R, 0.0), road)
    b.ground(x_lo, x_hi, R, reach, _SIDEWALK_Z, side)
    b.ground(x_lo, x_hi, -reach, -R, _SIDEWALK_Z, side)
    b.wall((x_lo, R), (x_hi, R), 0.0, _SIDEWALK_Z, kerb)  # kerb faces, seen from the road
    b.wall((x_hi, -R), (x_lo, -R), 0.0, _SIDEWALK_Z, kerb)

    # ---- materials of the buildings
    facades = [
        b.material(f"facade{k}", "facade", "facade", replaceable=k % 2 == 1, style=st)
        for k, st in enumerate(_FACADE_STYLES)
    ]
    shops = [b.material(f"shop{k}", "window", "shopfront") for k in range(8)]

    # ---- buildings on both sides
    buildings: dict[int, list[_Building]] = {}
    for s in (1, -1):
        n = b.randint(*p.buildings_per_side)
        w = torch.rand(n, generator=b.layout) * 0.8 + 0.6
        edges = [0.0, *(torch.cumsum(w / w.sum(), 0) * L).tolist()]
        edges[-1] = L
        row = []
        for i in range(n):
            shop = b.uniform() < 0.7
            base = p.shop_height if shop else 0.0
            h_lo, h_hi = p.height_range
            floors_lo = max(1, math.ceil((h_lo - base) / 3.0 - 1e-9))
            floors_hi = max(floors_lo, math.floor((h_hi - base) / 3.0 + 1e-9))
            h = base + 3.0 * b.randint(floors_lo, floors_hi)
            r, top = b.uniform(), p.max_setback
            setback = (
                0.0
                if r < 0.6
                else b.uniform(min(0.3, top), min(1.0, top))
                if r < 0.85
                else b.uniform(min(1.5, top), top)
            )
            bld = _Building(edges[i], edges[i + 1], F + setback, h, b.choice(facades))
            row.append(bld)
            _front(b, bld, s, b.choice(shops) if shop else None, p.shop_height)
        buildings[s] = row
        _sides(b, row, s)

    for x, face in ((x_lo, 1), (x_hi, -1)):  # closing buildings across both ends
        h = 3.0 * b.randint(5, 7)
        b.xwall(x, -reach - 10.0, reach + 10.0, 0.0, h, face, b.choice(facades))

    # ---- street furniture, kept apart along each side
    lights: list[Vec3] = []
    busy: dict[int, list[tuple[float, float]]] = {1: [], -1: []}  # x intervals on the sidewalk
    pole = b.material("pole", "pole", "metal")
    lamp = b.material("lamp", "lamp", "lamp_panel", warm=True)
    for s in (1, -1):
        n = p.lamps_per_side
        for k in range(n):
            x = (k + 0.5 + (0.25 if s < 0 else -0.25)) * L / n + b.uniform(-2.0, 2.0)
            x = min(max(x, 1.0), L - 1.0)
            h = b.uniform(6.0, 7.5)
            y = s * (R + 0.35)
            b.box(
                (x - 0.08, y - 0.08, 0.0),
                (x + 0.08, y + 0.08, h + 0.1),
                pole,
                ("-x", "+x", "-y", "+y"),
            )
            y_end = s * (R - 1.3)
            b.ground(x - 0.18, x + 0.18, min(y, y_end), max(y, y_end), h, lamp)  # head, glows
            lights.append((x, s * (R - 0.9), h - 0.15))
            busy[s].append((x - 1.5, x + 1.5))
    for s in (1, -1):
        _signs(b, buildings[s], s, p, busy[s])
        _trees(b, s, p, R, busy[s])
        _hedges(b, buildings[s], s, F)
        _cars(b, s, p, R)

    lanes = [-(R - _PARKING) / 2, (R - _PARKING) / 2]
    y_half = R - _PARKING - 0.3
    walkable = ((p.margin, -y_half, 1.2), (L - p.margin, y_half, 2.5))
    meta = {
        "direction": (1.0, 0.0, 0.0),
        "lanes_y": lanes,
        "length": L,
        "ground_z": 0.0,
        "road_width": p.road_width,
        "sidewalk_width": p.sidewalk_width,
        "sidewalk_z": _SIDEWALK_Z,
        "facade_y": F,
    }
    colors = [tuple(p.lamp_color)] * len(lights)
    return b.build("street", lights, colors, True, walkable, meta)


def _front(b: _Builder, bld: _Building, s: int, shop: int | None, shop_height: float):
    """Facade (and shop front) of a building on side ``s``, seen from the street."""
    y = s * bld.d
    p0, p1 = ((bld.x0, y), (bld.x1, y)) if s > 0 else ((bld.x1, y), (bld.x0, y))
    if shop is None:
        b.wall(p0, p1, 0.0, bld.h, bld.mat)
        return
    b.wall(p0, p1, shop_height, bld.h, bld.mat)
    units = max(1, round((bld.x1 - bld.x0) / 6.0))
    b.wall(p0, p1, 0.0, shop_height, shop, repeat=(float(units), 1.0))


def _sides(b: _Builder, row: list[_Building], s: int):
    """Exposed side walls where neighbours differ in set-back or height, and at both ends."""
    depth = _BUILDING_DEPTH
    first, last = row[0], row[-1]
    b.xwall(first.x0, s * first.d, s * (first.d + depth), 0.0, first.h, -1, first.mat)
    b.xwall(last.x1, s * last.d, s * (last.d + depth), 0.0, last.h, 1, last.mat)
    for a, c in itertools.pairwise(row):
        x = a.x1
        near, n_face = (a, 1) if a.d < c.d else (c, -1)
        tall, t_face = (a, 1) if a.h > c.h else (c, -1)
        if a.d != c.d and a.h != c.h and near is tall:  # one wall: the rest hides behind
            b.xwall(x, s * near.d, s * (near.d + depth), 0.0, near.h, n_face, near.mat)
            continue
        if a.d != c.d:  # the nearer building's side shows between the two fronts
            b.xwall(x, s * near.d, s * max(a.d, c.d), 0.0, near.h, n_face, near.mat)
        if a.h != c.h:  # the taller building's side shows above the shorter one
            lo = max(a.d, c.d)
            b.xwall(x, s * lo, s * (tall.d + depth), min(a.h, c.h), tall.h, t_face, tall.mat)


def _free(busy: list[tuple[float, float]], x0: float, x1: float) -> bool:
    return all(x1 <= a or x0 >= c for a, c in busy)


def _signs(b: _Builder, row: list[_Building], s: int, p: StreetParams, busy: list):
    """Blade signs over the sidewalk and flat signs above the shop fronts."""
    placed = 0
    order = torch.randperm(len(row), generator=b.layout).tolist()
    for i in order:
        if placed >= p.signs_per_side:
            break
        bld = row[i]
        if bld.x1 - bld.x0 < 4.0:
            continue
        k = len(b.textures)
        if b.uniform() < 0.5:  # blade sign perpendicular to the facade, over the sidewalk
            x = bld.x0 + 0.8 if b.uniform() < 0.5 else bld.x1 - 0.8
            if not _free(busy, x - 2.0, x + 2.0):
                continue
            size = b.uniform(0.6, 0.9)
            mat = b.material(f"sign{k}", "sign", "sign", replaceable=True, aspect=1.0)
            y_in, y_out = s * (bld.d - 0.1), s * (bld.d - 0.1 - size)
            z0 = p.shop_height - 0.3 - size
            b.xwall(x, y_in, y_out, z0, z0 + size, 1, mat)
            busy.append((x - 2.0, x + 2.0))
        else:  # flat sign on the facade above the shop front
            w = min(bld.x1 - bld.x0 - 1.0, b.uniform(2.0, 4.0))
            hgt = b.uniform(0.5, 0.9)
            xc = b.uniform(bld.x0 + 0.5 + w / 2, bld.x1 - 0.5 - w / 2)
            mat = b.material(f"sign{k}", "sign", "sign", replaceable=True, aspect=w / hgt)
            y = s * (bld.d - 0.05)
            x0, x1 = (xc - w / 2, xc + w / 2) if s > 0 else (xc + w / 2, xc - w / 2)
            z0 = p.shop_height + 0.3
            b.wall((x0, y), (x1, y), z0, z0 + hgt, mat)
        placed += 1


def _trees(b: _Builder, s: int, p: StreetParams, R: float, busy: list):
    """Trees on the sidewalk: a bark trunk and a foliage crown (boxes)."""
    bark = b.material("bark", "vegetation", "bark")
    crown = b.material("foliage", "vegetation", "foliage")
    yc = s * (R + 1.5)
    for _ in range(p.trees_per_side):
        for _try in range(20):
            x = b.uniform(3.0, p.length - 3.0)
            if _free(busy, x - 1.6, x + 1.6):
                break
        else:
            continue
        r, h = b.uniform(1.0, 1.3), b.uniform(2.4, 3.0)
        top = h + b.uniform(2.2, 3.2)
        trunk = ((x - 0.15, yc - 0.15, _SIDEWALK_Z), (x + 0.15, yc + 0.15, h + 0.1))
        b.box(*trunk, bark, ("-x", "+x", "-y", "+y"))
        b.box((x - r, yc - r, h), (x + r, yc + r, top), crown, ("-x", "+x", "-y", "+y", "-z"))
        busy.append((x - 1.6, x + 1.6))


def _hedges(b: _Builder, row: list[_Building], s: int, F: float):
    """Hedges in front of deeply set-back buildings."""
    mat = b.material("hedge", "vegetation", "foliage")
    for bld in row:
        if bld.d - F < 1.2 or bld.x1 - bld.x0 < 3.0:
            continue
        h = _SIDEWALK_Z + b.uniform(0.8, 1.2)
        y0, y1 = sorted((s * (F + 0.1), s * (F + 0.7)))
        faces = ("-x", "+x", "-y" if s > 0 else "+y", "+z")
        b.box((bld.x0 + 0.4, y0, _SIDEWALK_Z), (bld.x1 - 0.4, y1, h), mat, faces)


def _cars(b: _Builder, s: int, p: StreetParams, R: float):
    """Parked cars in the parking lane along the kerb."""
    placed: list[tuple[float, float]] = []
    yc = s * (R - _PARKING / 2)
    for _ in range(p.cars_per_side):
        length = b.uniform(4.1, 4.8)
        for _try in range(20):
            x = b.uniform(1.0, p.length - 1.0 - length)
            if _free(placed, x - 1.0, x + length + 1.0):
                break
        else:
            continue
        placed.append((x, x + length))
        c = b.randint(0, 2)
        color = car_color(generator(_mix_seed(b.seed, 500 + c)))
        mats = {
            "side": b.material(f"car{c}s", "vehicle", "vehicle_side", color=color),
            "end": b.material(f"car{c}e", "vehicle", "vehicle_end", color=color),
            "roof": b.material(f"car{c}r", "vehicle", "vehicle_roof", color=color),
        }
        w, h = b.uniform(1.72, 1.85), b.uniform(1.4, 1.6)
        faces = {"-y": mats["side"], "+y": mats["side"], "-x": mats["end"], "+x": mats["end"]}
        faces["+z"] = mats["roof"]
        b.box((x, yc - w / 2, 0.0), (x + length, yc + w / 2, h), faces, tuple(faces))


# ------------------------------------------------------------------------------------------ room
@dataclass
class _Wall:
    p0: Vec2  # left end seen from inside
    p1: Vec2
    inward: Vec2
    busy: list[tuple[float, float, float, float]]  # (s0, s1, z0, z1) of items on the wall

    @property
    def length(self) -> float:
        return math.hypot(self.p1[0] - self.p0[0], self.p1[1] - self.p0[1])

    def at(self, s: float, t: float = 0.0) -> Vec2:
        """The point ``s`` metres along the wall and ``t`` metres into the room."""
        dx, dy = (self.p1[0] - self.p0[0]) / self.length, (self.p1[1] - self.p0[1]) / self.length
        return (self.p0[0] + s * dx + t * self.inward[0], self.p0[1] + s * dy + t * self.inward[1])

    def front_face(self) -> str:
        """The box face (``"+y"``, ...) that looks into the room."""
        nx, ny = self.inward
        return ("+x" if nx > 0 else "-x") if nx else ("+y" if ny > 0 else "-y")

    def back_face(self) -> str:
        f = self.front_face()
        return ("-" if f[0] == "+" else "+") + f[1]


def _place(b: _Builder, wall: _Wall, width: float, top: float, z_min: float = 0.0) -> float | None:
    """Start ``s`` of a free stretch of ``width`` on ``wall`` for an item reaching from ``z_min``
    to ``top`` (recorded as taken); items clash unless one lies wholly above the other."""
    if width > wall.length - 0.3:
        return None
    for _ in range(30):
        s = b.uniform(0.15, wall.length - 0.15 - width)
        if all(
            s + width + 0.1 <= a or s >= c + 0.1 or z_min >= z1 + 0.15 or z0 >= top + 0.15
            for a, c, z0, z1 in wall.busy
        ):
            wall.busy.append((s, s + width, z_min, top))
            return s
    return None


def _footprint(
    wall: _Wall, s: float, width: float, depth: float, z0: float, z1: float, t0: float = 0.01
) -> tuple[Vec3, Vec3]:
    """Box corners of an item ``s..s+width`` along ``wall``, ``t0..depth`` into the room."""
    a, c = wall.at(s, t0), wall.at(s + width, depth)
    return (min(a[0], c[0]), min(a[1], c[1]), z0), (max(a[0], c[0]), max(a[1], c[1]), z1)


def room_scene(
    seed: int = 0, *, texture_size: int = 256, user_textures: torch.Tensor | None = None, **params
) -> Scene:
    """A 7-Scenes-like office/living room; see :class:`RoomParams` for ``params``.

    Tiled or wooden floor, plaster walls (one an accent wall), a ceiling of acoustic tiles with
    light panels (the scene's lights), a window, a door, pictures and posters, and furniture as
    boxes along the walls (bookcases with shelves and books, cabinets, a desk with a monitor)
    plus a low coffee table, stools and cardboard boxes in the middle.

    Args:
        seed: the seed.
        texture_size: texture size ``T``.
        user_textures: optional ``(N, 3, T, T)`` images that replace the pictures.
    Returns:
        the :class:`Scene` (``outdoor=False``; ``walkable`` the interior minus ``margin``,
        ``z`` in ``[0.8, 2.0]``; ``meta["size"] = (width, depth, height)``).
    """
    p = _parse(RoomParams, "room", params)
    b = _Builder(seed, texture_size, user_textures)
    W = p.width if p.width is not None else round(b.uniform(5.5, 6.5), 2)
    D = p.depth if p.depth is not None else round(b.uniform(4.5, 5.5), 2)
    H = p.height if p.height is not None else round(b.uniform(2.7, 3.2), 2)

    wood_floor = b.uniform() < 0.5
    floor = (
        b.material("floor", "floor", "wood")
        if wood_floor
        else b.material("floor", "floor", "tiles", n=4)
    )
    wall_mat = b.material("wall", "wall", "plaster")
    accent = (
        b.material("accent", "wall", "wallpaper")
        if b.uniform() < 0.5
        else b.material("accent", "wall", "bricks")
    )
    ceil = b.material("ceiling", "ceiling", "ceiling_tiles")
    b.ground(0.0, W, 0.0, D, 0.0, floor)
    b.ceiling(0.0, W, 0.0, D, H, ceil)
    walls = [
        _Wall((W, 0.0), (0.0, 0.0), (0.0, 1.0), []),
        _Wall((0.0, 0.0), (0.0, D), (1.0, 0.0), []),
        _Wall((0.0, D), (W, D), (0.0, -1.0), []),
        _Wall((W, D), (W, 0.0), (-1.0, 0.0), []),
    ]
    accent_wall = b.randint(0, 3)
    for i, w in enumerate(walls):
        b.wall(w.p0, w.p1, 0.0, H, accent if i == accent_wall else wall_mat)

    # ---- window on a long wall, door on another
    long_walls = [0, 2] if W >= D else [1, 3]
    wi = b.choice(long_walls)
    win = walls[wi]
    ww = b.uniform(1.2, min(2.2, win.length - 1.0))
    z_top = min(H - 0.3, 2.3)
    s = _place(b, win, ww, z_top)
    if s is not None:
        mat = b.material("window", "window", "window_view", aspect=ww / (z_top - 0.9))
        b.wall(win.at(s, 0.01), win.at(s + ww, 0.01), 0.9, z_top, mat)
    door_wall = walls[b.choice([i for i in range(4) if i != wi])]
    s = _place(b, door_wall, 0.9, 2.05)
    door = None if s is None else (s, s + 0.9)
    if door is not None:
        mat = b.material("door", "furniture", "cabinet", aspect=0.9 / 2.05, doors=1)
        b.wall(door_wall.at(door[0], 0.01), door_wall.at(door[1], 0.01), 0.0, 2.05, mat)

    wood = b.material("wood", "furniture", "wood")
    for w in walls:  # skirting boards, interrupted by the door
        spans = [(0.0, w.length)]
        if w is door_wall and door is not None:
            spans = [(0.0, door[0]), (door[1], w.length)]
        for a, c in spans:
            if c - a > 0.05:
                b.wall(w.at(a, 0.012), w.at(c, 0.012), 0.0, 0.09, wood)
    dark = b.material("dark", "furniture", "metal", color=(0.12, 0.12, 0.13))
    # ---- furniture along the walls
    for k in range(b.randint(1, 2)):
        _bookcase(b, walls[b.randint(0, 3)], k, wood, H)
    for k in range(b.randint(1, 2)):
        _cabinet(b, walls[b.randint(0, 3)], k, wood, H)
    _desk(b, walls[b.randint(0, 3)], wood, dark)

    # ---- pictures
    for k in range(p.pictures):
        pw = b.uniform(0.4, 1.2)
        ph = pw / b.uniform(0.7, 1.6)
        z0 = b.uniform(1.2, 1.6)
        z1 = min(z0 + ph, H - 0.2)
        for i in torch.randperm(4, generator=b.layout).tolist():
            wall = walls[i]
            s = _place(b, wall, pw, z1, z0)
            if s is not None:
                break
        else:
            continue
        mat = b.material(
            f"picture{k}", "picture", "picture", replaceable=True, aspect=pw / (z1 - z0)
        )
        b.wall(wall.at(s, 0.02), wall.at(s + pw, 0.02), z0, z1, mat)

    # ---- the middle: a low table, stools, boxes
    m = p.margin
    footprints: list[tuple[float, float, float, float]] = []
    rug = b.material("rug", "floor", "wallpaper" if b.uniform() < 0.5 else "fabric")
    rw, rd = b.uniform(0.5, 0.9) * (W - 2 * m), b.uniform(0.5, 0.9) * (D - 2 * m)
    rx, ry = b.uniform(m, W - m - rw), b.uniform(m, D - m - rd)
    b.ground(rx, rx + rw, ry, ry + rd, 0.004, rug)
    _coffee_table(b, W, D, m, wood, footprints)
    fab = b.material("fabric", "furniture", "fabric")
    for _ in range(2):
        _floor_item(b, W, D, (0.35, 0.45), 0.45, fab, footprints)
    card = b.material("cardboard", "furniture", "cardboard", size_m=(0.5, 0.5))
    for _ in range(p.boxes):
        _floor_item(b, W, D, (0.3, 0.6), b.uniform(0.25, 0.6), card, footprints)

    # ---- ceiling lights
    n = p.lights if p.lights is not None else b.choice((2, 4))
    lamp = b.material("lamp", "lamp", "lamp_panel")
    lights: list[Vec3] = []
    nx = 2 if n >= 2 else 1
    ny = max(1, math.ceil(n / nx))
    for k in range(n):
        x = W * ((k % nx) + 0.5) / nx
        y = D * ((k // nx) + 0.5) / ny
        b.ceiling(x - 0.3, x + 0.3, y - 0.3, y + 0.3, H - 0.01, lamp)
        lights.append((x, y, H - 0.25))

    walkable = ((m, m, 0.8), (W - m, D - m, 2.0))
    meta = {"size": (W, D, H), "ground_z": 0.0, "wood_floor": wood_floor}
    colors = [tuple(p.light_color)] * len(lights)
    return b.build("room", lights, colors, False, walkable, meta)


def _bookcase(b: _Builder, wall: _Wall, k: int, wood: int, H: float):
    """An open bookcase: a back panel of books, two side panels, shelf boards and a top."""
    w, depth = b.uniform(0.8, 1.6), 0.35
    h = min(H - 0.4, b.uniform(1.8, 2.2))
    shelves = 4 if h < 2.0 else 5
    s = _place(b, wall, w, h)
    if s is None:
        return
    books = b.material(f"books{k}", "furniture", "books", aspect=w / h, shelves=shelves)
    b.wall(wall.at(s, 0.02), wall.at(s + w, 0.02), 0.0, h, books)
    for e in (s, s + w):  # side panels
        b.wall(wall.at(e, 0.01), wall.at(e, depth), 0.0, h, wood)
    lo, hi = _footprint(wall, s, w, depth, 0.0, h)
    for j in range(shelves + 1):  # the top, and shelf boards at the bottoms of the book rows
        b.ground(lo[0], hi[0], lo[1], hi[1], max(h - j * h / shelves, 0.02), wood)
    b.obstacles.append([list(lo), list(hi)])


def _cabinet(b: _Builder, wall: _Wall, k: int, wood: int, H: float):
    """A sideboard or wardrobe: a box with a cabinet front."""
    tall = b.uniform() < 0.4
    w = b.uniform(0.8, 1.4) if tall else b.uniform(1.0, 2.0)
    h = min(H - 0.3, b.uniform(1.9, 2.1)) if tall else b.uniform(0.75, 1.0)
    depth = 0.6 if tall else 0.45
    s = _place(b, wall, w, h)
    if s is None:
        return
    doors = 2 if w > 0.9 else 1
    drawers = 0 if tall else b.randint(0, 1)
    front = b.material(
        f"cabinet{k}", "furniture", "cabinet", aspect=w / h, doors=doors, drawers=drawers
    )
    lo, hi = _footprint(wall, s, w, depth, 0.0, h)
    faces = [f for f in ("-x", "+x", "-y", "+y", "+z") if f != wall.back_face()]
    mats = {f: wood for f in faces}
    mats[wall.front_face()] = front
    b.box(lo, hi, mats, faces)


def _desk(b: _Builder, wall: _Wall, wood: int, dark: int):
    """A desk against a wall with a monitor and a box on it."""
    w, depth = b.uniform(1.2, 1.8), 0.75
    s = _place(b, wall, w, 1.3)
    if s is None:
        return
    lo, hi = _footprint(wall, s, w, depth, 0.72, 0.76)
    _table(b, lo, hi, wood, dark)
    screen = b.material("screen", "furniture", "screen")
    ms = s + b.uniform(0.1, w - 0.7)
    mlo, mhi = _footprint(wall, ms, 0.6, 0.24, 0.80, 1.16, t0=0.2)
    faces = ("-x", "+x", "-y", "+y", "+z")
    mats = {f: dark for f in faces}
    mats[wall.front_face()] = screen
    b.box(mlo, mhi, mats, faces)
    slo, shi = _footprint(wall, ms + 0.27, 0.06, 0.24, 0.76, 0.80, t0=0.2)
    b.box(slo, shi, dark, ("-x", "+x", "-y", "+y"))  # monitor stand
    card = b.material("cardboard", "furniture", "cardboard", size_m=(0.5, 0.5))
    bs = s + w - 0.45 if ms < s + w / 2 else s + 0.1
    bl, bh = _footprint(wall, bs, 0.35, 0.35, 0.76, 0.76 + b.uniform(0.15, 0.3))
    b.box(bl, bh, card)


def _table(b: _Builder, lo: Vec3, hi: Vec3, top: int, legs: int):
    """A table top ``lo..hi`` (a thin box) on four legs down to the floor."""
    b.box(lo, hi, top)
    t = 0.05
    for x in (lo[0] + 0.04, hi[0] - 0.04 - t):
        for y in (lo[1] + 0.04, hi[1] - 0.04 - t):
            b.box((x, y, 0.0), (x + t, y + t, lo[2]), legs, ("-x", "+x", "-y", "+y"))


def _overlaps(fp: tuple[float, float, float, float], others: list) -> bool:
    x0, y0, x1, y1 = fp
    return any(
        not (x1 + 0.2 <= a or x0 >= c + 0.2 or y1 + 0.2 <= bb or y0 >= d + 0.2)
        for a, bb, c, d in others
    )


def _coffee_table(b: _Builder, W: float, D: float, m: float, wood: int, fps: list):
    """A low table near the middle with a cardboard box on it."""
    tw, td = b.uniform(0.8, 1.2), b.uniform(0.5, 0.7)
    x0 = b.uniform(m, max(m, W - m - tw))
    y0 = b.uniform(m, max(m, D - m - td))
    _table(b, (x0, y0, 0.42), (x0 + tw, y0 + td, 0.46), wood, wood)
    fps.append((x0, y0, x0 + tw, y0 + td))
    card = b.material("cardboard", "furniture", "cardboard", size_m=(0.5, 0.5))
    s = b.uniform(0.2, 0.35)
    bx, by = x0 + b.uniform(0.05, tw - s - 0.05), y0 + b.uniform(0.05, td - s - 0.05)
    b.box((bx, by, 0.46), (bx + s, by + s, 0.46 + b.uniform(0.1, 0.25)), card)


def _floor_item(b: _Builder, W: float, D: float, size: Vec2, h: float, mat: int, fps: list):
    """A box (stool, carton) lower than the walkable box, standing on the floor clear of the
    furniture and the other floor items."""
    for _ in range(30):
        s = b.uniform(*size)
        x0, y0 = b.uniform(0.3, W - 0.3 - s), b.uniform(0.3, D - 0.3 - s)
        fp = (x0, y0, x0 + s, y0 + s)
        if not _overlaps(fp, fps) and not _hits(b, fp):
            fps.append(fp)
            b.box((x0, y0, 0.0), (x0 + s, y0 + s, h), mat)
            return


def _hits(b: _Builder, fp: tuple[float, float, float, float]) -> bool:
    """Whether a floor footprint meets any recorded obstacle."""
    x0, y0, x1, y1 = fp
    return any(
        not (x1 + 0.1 <= lo[0] or x0 >= hi[0] + 0.1 or y1 + 0.1 <= lo[1] or y0 >= hi[1] + 0.1)
        for lo, hi in b.obstacles
    )


# ------------------------------------------------------------------------------------------ entry
def make_scene(
    kind: str,
    seed: int = 0,
    texture_dir: str | Path | None = None,
    texture_size: int = 256,
    **params,
) -> Scene:
    """Build a procedural scene of the synthetic world.

    Args:
        kind: ``"street"`` (:func:`street_scene`, :class:`StreetParams`) or ``"room"``
            (:func:`room_scene`, :class:`RoomParams`).
        seed: the seed; the same seed and parameters give identical tensors.
        texture_dir: optional folder of images (see
            :func:`~dgeo.data.synthetic.textures.load_texture_folder`) that replace some
            materials (street: signs and every other facade style; room: pictures).
        texture_size: texture size ``T`` (16 to 2048).
        params: parameters of the scene kind.
    Returns:
        the :class:`Scene`, textures ``(M, 3, T, T)``.
    """
    if kind not in SCENE_KINDS:
        raise InputError(f"unknown scene kind {kind!r}; choose one of {', '.join(SCENE_KINDS)}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an int, got {type(seed).__name__}.")
    seed = int(seed)
    if isinstance(texture_size, bool) or not isinstance(texture_size, int):
        raise InputError(f"texture_size must be an int, got {type(texture_size).__name__}.")
    if not 16 <= texture_size <= 2048:
        raise InputError(f"texture_size must lie in [16, 2048], got {texture_size}.")
    user = load_texture_folder(texture_dir, texture_size) if texture_dir is not None else None
    build = street_scene if kind == "street" else room_scene
    with single_threaded():
        return build(seed, texture_size=texture_size, user_textures=user, **params)
