"""Tileable surface textures: plaster, concrete, asphalt, road, paving, bricks, tiles, wood,
foliage, bark, metal, wallpaper, ceiling tiles, fabric, and building facades.

Built from periodic noise (:mod:`dgeo.data.synthetic.noise`) and cell patterns with torch ops;
see :mod:`dgeo.data.synthetic.textures` for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dgeo.data.synthetic._texture_util import (
    _VIVID,
    RGB,
    _choice,
    _done,
    _jitter,
    _mix,
    _randint,
    _rgb,
    _smoothstep,
    _uniform,
)
from dgeo.data.synthetic.noise import _grain, _grid, fbm
from dgeo.errors import InputError


# ------------------------------------------------------------------------------ generic surfaces
def noise_texture(
    g: torch.Generator,
    size: int = 256,
    color_a: Sequence[float] = (0.3, 0.3, 0.3),
    color_b: Sequence[float] = (0.7, 0.7, 0.7),
    freq: int | tuple[int, int] = 4,
    octaves: int = 6,
    contrast: float = 1.5,
) -> torch.Tensor:
    """fBm blend of two colours: ``(3, T, T)``."""
    n = torch.sigmoid(contrast * fbm(g, size, freq, octaves))
    return _done(_mix(_rgb(color_a), _rgb(color_b), n))


def plaster(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Painted render: tone variation, trowel marks, fine grain, stains and hairline cracks."""
    base = _rgb(color or _jitter(g, _choice(g, _PLASTER), 0.08))
    n = fbm(g, size, 2, 4, batch=3)
    tone = 1 + 0.06 * n[0] + 0.05 * fbm(g, size, 8, 4, kind="value")[0]
    grain = _grain(g, size, 0.05, max(4, size // 4))
    stain = _smoothstep(0.9, 2.2, n[1]) * 0.18
    crack = (1 - _smoothstep(0.0, 0.05, fbm(g, size, 6, 4)[0].abs())) * _smoothstep(0.6, 1.4, n[2])
    img = base * tone * grain * (1 - stain * _rgb((0.9, 1.0, 1.2))) * (1 - 0.45 * crack)
    return _done(img)


_PLASTER: tuple[RGB, ...] = (
    (0.86, 0.82, 0.72), (0.80, 0.70, 0.58), (0.72, 0.76, 0.78), (0.88, 0.86, 0.82),
    (0.78, 0.60, 0.50), (0.70, 0.72, 0.62), (0.90, 0.80, 0.62),
)  # fmt: skip


def concrete(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Cast concrete: mottled tone at several scales, pores and aggregate."""
    base = _rgb(color or _jitter(g, (0.56, 0.55, 0.52), 0.1))
    tone = 1 + 0.1 * fbm(g, size, 3, 6)
    pores = _smoothstep(1.6, 2.4, fbm(g, size, max(4, size // 4), 2, kind="value"))
    stones = _smoothstep(1.4, 2.2, fbm(g, size, max(4, size // 8), 2, kind="value"))
    img = base * tone * (1 - 0.45 * pores) * (1 + 0.25 * stones) * _grain(g, size, 0.04)
    return _done(img)


def asphalt(g: torch.Generator, size: int = 256) -> torch.Tensor:
    """Asphalt: dark aggregate speckle, patches and oil stains."""
    base = _rgb(_jitter(g, (0.24, 0.24, 0.25), 0.1))
    speck = fbm(g, size, max(4, size // 4), 2, kind="value")
    light = _smoothstep(1.2, 2.2, fbm(g, size, max(4, size // 8), 2, kind="value"))
    patch = _smoothstep(0.8, 1.1, fbm(g, size, 2, 3))
    stain = _smoothstep(0.7, 1.8, fbm(g, size, 3, 5))
    tone = 1 + 0.12 * speck + 0.35 * light + 0.08 * fbm(g, size, 6, 4)
    img = base * tone * (1 - 0.15 * patch) * (1 - 0.3 * stain)
    return _done(img)


def road(
    g: torch.Generator,
    size: int = 256,
    lines_v: Sequence[float] = (0.5,),
    dash_fraction: float = 0.375,
    line_width: float = 0.03,
) -> torch.Tensor:
    """Asphalt with lane markings: solid lines along ``u`` at rows ``lines_v`` and a dashed line
    straddling the ``v = 0`` / ``v = 1`` edge (one dash of ``dash_fraction`` per texture).

    A road half of width ``w`` mapped with ``v`` across it (``v = 0`` at the centre line) and one
    texture along ``u`` every ``8`` metres gives 3 m dashes with 5 m gaps.
    """
    img = asphalt(g, size)
    u, v = _grid(size, centred=True)
    half = line_width / 2
    px = 1.0 / size
    mask = torch.zeros(1, size, size)
    for lv in lines_v:
        d = (v - lv).abs()
        mask = torch.maximum(mask, 1 - _smoothstep(half - px, half + px, d))
    edge = torch.minimum(v, 1 - v)
    dash = (1 - _smoothstep(half - px, half + px, edge)) * (
        1 - _smoothstep(dash_fraction - px, dash_fraction + px, (u - 0.3) % 1)
    )
    mask = torch.maximum(mask, dash.expand_as(mask))
    wear = 1 - 0.5 * _smoothstep(0.3, 1.5, fbm(g, size, 8, 4))
    paint = _rgb((0.86, 0.86, 0.82)) * _grain(g, size, 0.05)
    return _done(_mix(img, paint, mask * wear))


def _grid_cells(
    size: int, cols: int, rows: int, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running-bond cells: per texel the row and column index ``(1, T, T)`` int64, the distance
    to the cell edge in texels, and the local coordinates ``fu, fv`` in ``[0, 1)``."""
    u, v = _grid(size, centred=True)
    sv = v * rows
    r = torch.floor(sv)
    su = u * cols + offset * (r.long() % 2)
    c = torch.floor(su)
    fu, fv = su - c, sv - r
    du = torch.minimum(fu, 1 - fu) * (size / cols)
    dv = torch.minimum(fv, 1 - fv) * (size / rows)
    dist = torch.minimum(du, dv)
    return (r.long() % rows).expand(1, size, size), c.long() % cols, dist, fu, fv


def _cell_colors(
    g: torch.Generator, rows: int, cols: int, palette: Sequence[RGB], amount: float
) -> torch.Tensor:
    """Per-cell colours ``(rows, cols, 3)`` drawn from ``palette`` with jitter."""
    pal = torch.tensor(palette, dtype=torch.float32)
    pick = torch.randint(0, len(palette), (rows, cols), generator=g)
    scale = 1 + amount * (2 * torch.rand(rows, cols, 1, generator=g) - 1)
    tint = 1 + 0.4 * amount * (2 * torch.rand(rows, cols, 3, generator=g) - 1)
    return (pal[pick] * scale * tint).clamp(0, 1)


def _lookup(table: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``table`` ``(R, C, 3)`` at per-texel cells -> ``(3, T, T)``."""
    return table[r[0], c[0]].permute(2, 0, 1)


_BRICK: tuple[RGB, ...] = ((0.55, 0.24, 0.16), (0.62, 0.30, 0.20), (0.48, 0.20, 0.14))
_BRICK_ALT: tuple[RGB, ...] = ((0.70, 0.55, 0.38), (0.62, 0.48, 0.34), (0.74, 0.62, 0.45))


def bricks(
    g: torch.Generator,
    size: int = 256,
    cols: int = 4,
    rows: int = 12,
    palette: Sequence[RGB] | None = None,
    mortar: Sequence[float] | None = None,
    mortar_width: float = 0.12,
) -> torch.Tensor:
    """Running-bond brickwork: ``cols`` bricks per row, ``rows`` courses (``rows`` even).

    Per-brick colour, bevelled edges, surface pits and noise; ``mortar_width`` is the joint
    thickness as a fraction of a course. Designed for 4 x 12 bricks over 0.9 m.
    """
    rows += rows % 2
    palette = palette or (_BRICK if _uniform(g) < 0.7 else _BRICK_ALT)
    mortar = mortar or _jitter(g, (0.72, 0.70, 0.66), 0.1)
    r, c, dist, _, _ = _grid_cells(size, cols, rows, 0.5)
    color = _lookup(_cell_colors(g, rows, cols, palette, 0.15), r, c)
    course = size / rows
    mw = max(0.6, mortar_width * course / 2)
    joint = 1 - _smoothstep(mw - 0.5, mw + 0.5, dist)
    bevel = 0.82 + 0.18 * _smoothstep(mw, mw + max(1.0, 0.25 * course), dist)
    surface = 1 + 0.1 * fbm(g, size, max(4, size // 16), 4) + 0.05 * fbm(g, size, 4, 3)
    pits = _smoothstep(1.7, 2.5, fbm(g, size, max(4, size // 4), 2, kind="value"))
    brick = color * bevel * surface * (1 - 0.3 * pits)
    mortar_img = _rgb(mortar) * _grain(g, size, 0.08, max(4, size // 4))
    soot = 1 - 0.15 * _smoothstep(0.5, 2.0, fbm(g, size, 2, 4))
    return _done(_mix(brick, mortar_img, joint) * soot)


def tiles(
    g: torch.Generator,
    size: int = 256,
    n: int = 4,
    palette: Sequence[RGB] | None = None,
    grout: Sequence[float] | None = None,
    marble: bool | None = None,
) -> torch.Tensor:
    """Square tiles, ``n x n`` per texture, with grout, per-tile colour and optional marble veins
    (designed for 0.3 m tiles, i.e. 1.2 m per texture at ``n = 4``)."""
    if palette is None:
        a = _jitter(g, _choice(g, _TILE), 0.1)
        b = _jitter(g, _choice(g, _TILE), 0.1) if _uniform(g) < 0.4 else a
        palette = (a, b)
    grout = grout or _jitter(g, (0.45, 0.43, 0.40), 0.2)
    marble = _uniform(g) < 0.5 if marble is None else marble
    r, c, dist, fu, fv = _grid_cells(size, n, n)
    table = _cell_colors(g, n, n, palette[:1], 0.06)
    if len(palette) > 1:  # checkerboard of two colours
        alt = _cell_colors(g, n, n, palette[1:2], 0.06)
        checker = ((torch.arange(n)[:, None] + torch.arange(n)) % 2 == 1)[..., None]
        table = torch.where(checker, alt, table)
    color = _lookup(table, r, c)
    gw = max(0.7, 0.02 * size / n)
    joint = 1 - _smoothstep(gw - 0.5, gw + 0.5, dist)
    sheen = 1 + 0.06 * (fu - fv)  # a glaze gradient per tile
    body = color * sheen * (1 + 0.04 * fbm(g, size, max(4, size // 8), 3))
    if marble:
        u, v = _grid(size)
        warp = fbm(g, size, 3, 4, batch=2) * 0.06
        vein = fbm(g, size, 4, 5, u=u + warp[:1], v=v + warp[1:])
        body = body * (1 - 0.25 * (1 - _smoothstep(0.0, 0.12, vein.abs())))
    return _done(_mix(body, _rgb(grout) * _grain(g, size, 0.06), joint))


_TILE: tuple[RGB, ...] = (
    (0.85, 0.84, 0.80), (0.55, 0.55, 0.57), (0.72, 0.62, 0.50), (0.30, 0.30, 0.33),
    (0.62, 0.68, 0.70), (0.80, 0.74, 0.62),
)  # fmt: skip


def paving(g: torch.Generator, size: int = 256, n: int = 4) -> torch.Tensor:
    """Concrete paving slabs, ``n x n`` per texture (0.6 m slabs: 2.4 m at ``n = 4``), with
    per-slab tone, dark joints, wear and chewing-gum spots."""
    base = _jitter(g, (0.62, 0.60, 0.56), 0.08)
    r, c, dist, _, _ = _grid_cells(size, n, n, 0.5 if _uniform(g) < 0.5 else 0.0)
    color = _lookup(_cell_colors(g, n, n, (base, _jitter(g, base, 0.15)), 0.1), r, c)
    joint = 1 - _smoothstep(0.5, 1.5, dist)
    edge = 0.9 + 0.1 * _smoothstep(1.0, 0.06 * size / n, dist)
    speck = _smoothstep(1.8, 2.6, fbm(g, size, max(4, size // 4), 2, kind="value"))
    dirt = 1 - 0.2 * _smoothstep(0.3, 2.0, fbm(g, size, 4, 5))
    body = color * edge * dirt * (1 + 0.08 * fbm(g, size, max(4, size // 8), 4))
    body = body * (1 - 0.5 * speck)
    return _done(_mix(body, _rgb((0.2, 0.2, 0.19)), joint))


def wood(
    g: torch.Generator,
    size: int = 256,
    planks: int = 10,
    color: Sequence[float] | None = None,
    vertical: bool = False,
) -> torch.Tensor:
    """Wooden planks along ``u`` (``planks`` per texture, two boards per row with staggered end
    joints), growth rings, fibres and per-board colour; ``vertical`` runs the planks along ``v``.
    Designed for 2 m per texture (1 m x 0.2 m boards)."""
    color = color or _jitter(g, _choice(g, _WOOD), 0.1)
    u, v = _grid(size, centred=True)
    if vertical:
        u, v = v, u
    rows = v * planks
    row = torch.floor(rows)
    fv = rows - row
    ri = row.long() % planks
    offs = torch.rand(planks, generator=g)
    su = (u - offs[ri]) * 2
    seg = torch.floor(su)
    fu = su - seg
    board = ri * 2 + seg.long() % 2  # (.., T, T) board id
    tint = 1 + 0.15 * (2 * torch.rand(2 * planks, 1, generator=g) - 1)
    tint = tint * (1 + 0.04 * (2 * torch.rand(2 * planks, 3, generator=g) - 1))
    phase = torch.rand(2 * planks, generator=g) * 10
    warp = 0.12 * fbm(g, size, (2, 4), 4, u=u, v=v)
    rings = torch.sin(2 * math.pi * (6 * fv + phase[board] + 3 * warp + 0.4 * fu))
    fibre = fbm(g, size, (4, max(4, size // 8)), 3, u=u, v=v)
    board_col = tint[board[0]].permute(2, 0, 1) * _rgb(color)
    shade = (1 + 0.12 * rings) * (1 + 0.06 * fibre)
    gap_v = torch.minimum(fv, 1 - fv) * size / planks
    gap_u = torch.minimum(fu, 1 - fu) * size / 2
    gap = 1 - _smoothstep(0.4, 1.2, torch.minimum(gap_v, gap_u))
    knots = _smoothstep(1.9, 2.6, fbm(g, size, 6, 2, kind="value")) * 0.5
    img = board_col * shade * (1 - knots) * (1 - 0.6 * gap)
    return _done(img)


_WOOD: tuple[RGB, ...] = (
    (0.55, 0.36, 0.20), (0.68, 0.50, 0.32), (0.42, 0.26, 0.15), (0.75, 0.60, 0.42),
)  # fmt: skip


def foliage(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Dense leaves: layers of thresholded high-frequency noise in varied greens over dark
    shadow gaps, with highlights (designed for 2 m per texture)."""
    green = color or _jitter(g, (0.20, 0.38, 0.10), 0.15)
    img = _rgb((0.03, 0.07, 0.02)) * (1 + 0.3 * fbm(g, size, 8, 3))
    light = fbm(g, size, 3, 3)
    for k in range(4):
        leaves = fbm(g, size, max(4, size // (16 >> min(k, 2))), 3, kind="value")
        mask = _smoothstep(0.2 + 0.15 * k, 0.5 + 0.15 * k, leaves)
        shade = (0.55 + 0.15 * k) * (1 + 0.25 * light)
        tint = _rgb(_jitter(g, green, 0.25)) * _rgb((1 + 0.1 * k, 1 + 0.05 * k, 1))
        img = _mix(img, tint * shade * _grain(g, size, 0.1, max(4, size // 4)), mask)
    sparkle = _smoothstep(1.8, 2.6, fbm(g, size, max(4, size // 4), 2, kind="value"))
    return _done(img * (1 + 0.5 * sparkle))


def bark(g: torch.Generator, size: int = 256) -> torch.Tensor:
    """Tree bark: vertical furrows (along ``v``), lichen and grain (1 m per texture)."""
    base = _rgb(_jitter(g, (0.32, 0.25, 0.18), 0.1))
    furrow = fbm(g, size, (max(4, size // 16), 2), 4)
    ridges = 1 - 0.55 * _smoothstep(-0.2, -1.2, furrow)
    lichen = _smoothstep(0.9, 1.6, fbm(g, size, 6, 4))
    img = base * ridges * _grain(g, size, 0.12, max(4, size // 8))
    return _done(_mix(img, _rgb((0.45, 0.50, 0.35)), 0.6 * lichen))


def metal(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Painted metal (poles, frames): brushed along ``v``, scratches, rust spots (1 m)."""
    base = _rgb(color or _jitter(g, _choice(g, _METAL), 0.1))
    brushed = fbm(g, size, (max(4, size // 8), 2), 3)
    scratch = 1 - _smoothstep(0.0, 0.04, fbm(g, size, (3, 12), 3).abs())
    rust = _smoothstep(1.2, 2.0, fbm(g, size, 5, 5))
    img = base * (1 + 0.07 * brushed) * (1 + 0.5 * scratch * _smoothstep(0.5, 1.0, brushed))
    return _done(_mix(img, _rgb((0.45, 0.22, 0.10)) * _grain(g, size, 0.2), rust))


_METAL: tuple[RGB, ...] = ((0.22, 0.24, 0.22), (0.35, 0.36, 0.38), (0.12, 0.20, 0.15))


def wallpaper(g: torch.Generator, size: int = 256) -> torch.Tensor:
    """Striped wallpaper with a repeating motif (0.6 m per texture)."""
    a = _jitter(g, _choice(g, _PLASTER), 0.1)
    b = _jitter(g, a, 0.25)
    u, v = _grid(size)
    stripes = _randint(g, 3, 6)
    s = 0.5 + 0.5 * torch.cos(2 * math.pi * stripes * u)
    img = _mix(_rgb(a), _rgb(b), _smoothstep(0.4, 0.6, s).expand(1, size, size))
    motif = stripes * 2
    du = (u * motif) % 1 - 0.5
    dv = (v * motif + 0.5 * (torch.floor(u * motif) % 2)) % 1 - 0.5
    dot = 1 - _smoothstep(0.12, 0.17, torch.sqrt(du * du + dv * dv))
    img = _mix(img, _rgb(_jitter(g, _choice(g, _VIVID), 0.1)) * 0.8, 0.7 * dot)
    return _done(img * _grain(g, size, 0.03) * (1 + 0.04 * fbm(g, size, 2, 3)))


def ceiling_tiles(g: torch.Generator, size: int = 256, n: int = 2) -> torch.Tensor:
    """Acoustic ceiling tiles in a metal grid, ``n x n`` per texture (0.6 m tiles: 1.2 m)."""
    r, c, dist, _, _ = _grid_cells(size, n, n)
    table = _cell_colors(g, n, n, (_jitter(g, (0.86, 0.86, 0.83), 0.04),), 0.04)
    color = _lookup(table, r, c)
    fissure = _smoothstep(1.0, 2.2, fbm(g, size, max(4, size // 4), 2, kind="value"))
    worm = 1 - _smoothstep(0.0, 0.08, fbm(g, size, 12, 3).abs())
    body = color * (1 - 0.35 * fissure) * (1 - 0.12 * worm) * (1 + 0.03 * fbm(g, size, 3, 3))
    bar = 1 - _smoothstep(0.8, 1.8, dist)
    shadow = 1 - 0.15 * (1 - _smoothstep(1.5, 4.0, dist))
    return _done(_mix(body * shadow, _rgb((0.93, 0.93, 0.92)), bar))


def fabric(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Woven upholstery: a fine twill weave with fibre noise (0.5 m per texture)."""
    base = _rgb(color or _jitter(g, _choice(g, _VIVID[:6]), 0.2))
    u, v = _grid(size)
    k = max(8, size // 6)
    weave = torch.sin(2 * math.pi * k * (u + v)) * torch.sin(2 * math.pi * k * u)
    img = base * (0.85 + 0.1 * weave) * _grain(g, size, 0.08, max(4, size // 4))
    return _done(img * (1 + 0.1 * fbm(g, size, 2, 4)))


# --------------------------------------------------------------------------------- facades
_FACADE_STYLES = ("bricks", "plaster", "stone", "panels")


def facade(
    g: torch.Generator,
    size: int = 256,
    style: str | None = None,
    bays: int = 2,
    floors: int = 2,
) -> torch.Tensor:
    """A building facade of ``bays x floors`` window cells (3 m each: 6 m x 6 m by default).

    The wall is brick, plaster, stone blocks or cladding panels; each cell holds one window with a
    frame, mullions, sill and lintel, and glass that varies per window (sky reflection, blinds,
    curtains); a string course marks each floor. Row 0 is the top of a floor, so a facade quad
    whose ``edge_v`` points down from the roof line gets whole storeys.
    """
    style = style or _choice(g, _FACADE_STYLES)
    if style not in _FACADE_STYLES:
        raise InputError(f"unknown facade style {style!r}; choose one of {_FACADE_STYLES}.")
    if style == "bricks":
        wall = bricks(g, size, cols=12 * bays, rows=30 * floors, mortar_width=0.2)
    elif style == "plaster":
        wall = plaster(g, size)
    elif style == "stone":
        wall = bricks(g, size, 5 * bays, 8 * floors, ((0.76, 0.72, 0.64), (0.70, 0.66, 0.58)), None)
    else:
        wall = tiles(g, size, 2 * bays, ((0.50, 0.52, 0.55),), (0.25, 0.25, 0.27), False)
    img = wall.clone()
    cw, ch = size / bays, size / floors
    ww = _uniform(g, 0.36, 0.5)
    top, bottom = _uniform(g, 0.15, 0.22), _uniform(g, 0.7, 0.78)
    frame = _jitter(
        g, _choice(g, ((0.92, 0.92, 0.9), (0.15, 0.15, 0.15), (0.35, 0.22, 0.12))), 0.05
    )
    trim = _jitter(g, (0.80, 0.77, 0.70), 0.08)
    # string course straddling the floor line (periodic across the top/bottom edge)
    _, v = _grid(size, centred=True)
    fv = (v * floors) % 1
    course = 1 - _smoothstep(0.025, 0.035, torch.minimum(fv, 1 - fv))
    img = _mix(img, _rgb(trim) * _grain(g, size, 0.05), course.expand(1, size, size))
    glass_noise = fbm(g, size, 6, 4)
    for f in range(floors):
        for b in range(bays):
            x0 = round(b * cw + cw * (0.5 - ww / 2))
            x1 = round(b * cw + cw * (0.5 + ww / 2))
            y0, y1 = round(f * ch + top * ch), round(f * ch + bottom * ch)
            fw = max(1, round(0.018 * ch))
            img[:, y0 - 2 * fw : y0, x0 - fw : x1 + fw] = _rgb(trim) * 0.9  # lintel
            img[:, y1 : y1 + 2 * fw, x0 - 2 * fw : x1 + 2 * fw] = _rgb(trim)  # sill
            img[:, y1 + 2 * fw : y1 + 3 * fw, x0 - 2 * fw : x1 + 2 * fw] *= 0.6  # sill shadow
            img[:, y0:y1, x0:x1] = _rgb(frame)
            gy = torch.linspace(0, 1, y1 - y0 - 2 * fw).view(1, -1, 1)
            sky = _rgb(_jitter(g, (0.45, 0.55, 0.65), 0.2))
            glass = _mix(sky, _rgb((0.08, 0.09, 0.11)), _smoothstep(0.0, 0.9, gy) * 0.8)
            glass = glass * (1 + 0.15 * glass_noise[:, y0 + fw : y1 - fw, x0 + fw : x1 - fw])
            blind = _uniform(g)
            if blind < 0.35:  # blinds pulled down part way: horizontal slats
                depth = _uniform(g, 0.2, 0.7)
                slats = 0.8 + 0.2 * torch.sin(gy * (y1 - y0) * 1.6)
                color = _rgb(_jitter(g, (0.85, 0.83, 0.78), 0.1)) * slats
                glass = torch.where(gy < depth, color.expand_as(glass), glass)
            elif blind < 0.65:  # curtains at the sides
                gx = torch.linspace(0, 1, x1 - x0 - 2 * fw).view(1, 1, -1)
                width = _uniform(g, 0.15, 0.35)
                folds = 0.75 + 0.25 * torch.sin(gx * 40)
                color = _rgb(_jitter(g, _choice(g, _VIVID), 0.2)) * folds
                side = (gx < width) | (gx > 1 - width)
                glass = torch.where(side, color.expand_as(glass), glass)
            img[:, y0 + fw : y1 - fw, x0 + fw : x1 - fw] = glass
            xm = (x0 + x1) // 2
            img[:, y0:y1, xm - fw // 2 - 1 : xm + fw // 2] = _rgb(frame)  # mullion
            yt = y0 + round(0.3 * (y1 - y0))
            img[:, yt - fw // 2 - 1 : yt + fw // 2, x0:x1] = _rgb(frame)  # transom
    soot = 1 - 0.12 * _smoothstep(0.0, 2.0, fbm(g, size, (2, 3), 4))
    return _done(img * soot)
