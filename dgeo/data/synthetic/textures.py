"""Procedural, tileable albedo textures of the synthetic world, and folders of user images.

Every generator takes a ``torch.Generator`` (all its randomness comes from it, never from global
state, so one seed gives identical tensors bit for bit) and a size ``T`` and returns a ``(3, T, T)``
float32 albedo in ``[0, 1]``. Column ``i`` covers texture coordinates ``u`` in ``[i, i + 1) / T``
(along a quad's ``edge_u``), row ``j`` covers ``v`` in ``[j, j + 1) / T`` (along ``edge_v``), so
row 0 is at ``v = 0``. The renderer wraps ``(u, v)``, so every texture is periodic: its last
column continues into its first and its last row into its first. Noise-based textures are
periodic by construction (integer lattice frequencies); drawn panels (signs, posters, vehicles,
shop fronts) get a thin uniform frame.

Textures carry structure at several scales (mortar lines and per-brick colours, grain and stains,
text and shapes) because feature learning and feature-metric alignment need gradients at every
level of an image pyramid. :data:`TEXTURE_SIZES_M` gives the physical extent in metres
``(along u, along v)`` each generator is designed for (``None``: stretched once over its quad).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from dgeo.errors import DataFileNotFoundError, InputError

RGB = tuple[float, float, float]
#: Image file extensions :func:`load_texture_folder` reads.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp",
)  # fmt: skip

_WORDS = (
    "CAFE", "BAR", "PHARMACY", "BAKERY", "BOOKS", "HOTEL", "BANK", "TAXI", "PIZZA", "MARKET",
    "SALON", "DELI", "FLOWERS", "KEBAB", "SUSHI", "OPTICS", "SHOES", "TOYS", "WINE", "POST",
    "RADIO", "BIKES", "NOODLE", "GRILL", "TEA", "DINER", "FASHION", "MUSIC", "LAUNDRY", "CINEMA",
)  # fmt: skip
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
)  # fmt: skip
_VIVID: tuple[RGB, ...] = (
    (0.80, 0.10, 0.10), (0.10, 0.35, 0.75), (0.10, 0.55, 0.20), (0.95, 0.75, 0.10),
    (0.95, 0.45, 0.05), (0.45, 0.15, 0.55), (0.05, 0.05, 0.08), (0.95, 0.95, 0.92),
    (0.10, 0.55, 0.60), (0.85, 0.25, 0.45),
)  # fmt: skip


# ----------------------------------------------------------------------------------- randomness
def generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (a generator passes through)."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}.")
    return torch.Generator().manual_seed(int(seed) % (1 << 63))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive; ``lo`` if the range is empty)."""
    return int(torch.randint(lo, max(lo, hi) + 1, (), generator=g))


def _choice(g: torch.Generator, seq: Sequence):
    return seq[_randint(g, 0, len(seq) - 1)]


def _jitter(g: torch.Generator, rgb: Sequence[float], amount: float) -> RGB:
    """``rgb`` with brightness and per-channel jitter of relative size ``amount``."""
    b = 1 + amount * (2 * _uniform(g) - 1)
    return tuple(
        min(1.0, max(0.0, c * b * (1 + 0.5 * amount * (2 * _uniform(g) - 1)))) for c in rgb
    )


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored afterwards).

    Texture synthesis is thousands of small (``T x T``) operations, for which intra-op threads
    add only synchronisation; on a loaded machine (data-loader workers, other jobs) that costs
    10-20 times the single-threaded time. Note that the setting is process-wide while active.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------- noise
def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _grid(size: int, centred: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Texture coordinates of the texels: ``u`` ``(1, 1, T)`` (columns), ``v`` ``(1, T, 1)``;
    ``i / T``, or ``(i + 0.5) / T`` if ``centred`` (symmetric about the wrap-around seam, for
    patterns with lines on cell borders)."""
    t = (torch.arange(size, dtype=torch.float32) + (0.5 if centred else 0.0)) / size
    return t.view(1, 1, size), t.view(1, size, 1)


def _freq(freq: int | tuple[int, int]) -> tuple[int, int]:
    fu, fv = (freq, freq) if isinstance(freq, int) else freq
    if fu < 1 or fv < 1:
        raise InputError(f"noise frequencies must be positive integers, got {freq}.")
    return int(fu), int(fv)


def _cells(c: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Periodic lattice cells of coordinates ``c`` (texture units): ``i0, i1`` and fraction."""
    s = c * f
    i = torch.floor(s)
    i0 = i.long() % f
    return i0, (i0 + 1) % f, s - i


def _gather(lattice: torch.Tensor, iv: torch.Tensor, iu: torch.Tensor) -> torch.Tensor:
    """``lattice`` ``(B, fv, fu)`` at integer cells ``(iv, iu)`` broadcast to ``(B|1, H, W)``."""
    b, _, fu = lattice.shape
    idx = iv * fu + iu
    flat = lattice.reshape(b, -1)
    if idx.shape[0] == 1:
        return flat[:, idx[0]]
    return flat.gather(1, idx.expand(b, -1, -1).reshape(b, -1)).view(b, *idx.shape[1:])


def _axis(f: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Periodic interpolation along one axis of ``size`` texels over ``f`` lattice cells: the two
    lattice indices around each texel ``(T,)``, the quintic weight of the second and the
    texel's offset ``t`` in ``[0, 1)`` from the first."""
    s = torch.arange(size, dtype=torch.float32) * (f / size)
    i0 = torch.floor(s)
    t = s - i0
    i0 = i0.long() % f
    return i0, (i0 + 1) % f, _fade(t), t


def _interp(x: torch.Tensor, dim: int, ax, w0=None, w1=None) -> torch.Tensor:
    """Interpolate ``x`` along ``dim`` at the texels of axis ``ax`` (see :func:`_axis`), with
    per-texel weights ``w0, w1`` of the two lattice points (default: the quintic lerp)."""
    i0, i1, s, _ = ax
    shape = [1] * x.dim()
    shape[dim] = -1
    a, b = x.index_select(dim, i0), x.index_select(dim, i1)
    if w0 is None:
        return torch.lerp(a, b, s.view(shape))
    return a * w0.view(shape) + b * w1.view(shape)


def value_noise(
    g: torch.Generator,
    size: int,
    freq: int | tuple[int, int],
    batch: int = 1,
    u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Periodic value noise: random values on an ``fv x fu`` lattice, quintic interpolation.

    Args:
        g: the random generator.
        size: texture size ``T``.
        freq: lattice cells per texture, ``f`` or ``(f_u, f_v)``.
        batch: independent noise fields ``B``.
        u, v: optional (warped) texture coordinates broadcastable to ``(B, T, T)``; the result
            is periodic as long as ``u - u_texel`` and ``v - v_texel`` are.
    Returns:
        ``(B, T, T)`` float32 in ``[-1, 1]``.
    """
    fu, fv = _freq(freq)
    lat = torch.rand(batch, fv, fu, generator=g) * 2 - 1
    if u is None and v is None:  # separable: along u on the lattice, then whole rows along v
        return _interp(_interp(lat, 2, _axis(fu, size)), 1, _axis(fv, size))
    u0, v0 = _grid(size)
    u, v = (u0 if u is None else u), (v0 if v is None else v)
    iu0, iu1, tu = _cells(u, fu)
    iv0, iv1, tv = _cells(v, fv)
    su, sv = _fade(tu), _fade(tv)
    top = torch.lerp(_gather(lat, iv0, iu0), _gather(lat, iv0, iu1), su)
    bottom = torch.lerp(_gather(lat, iv1, iu0), _gather(lat, iv1, iu1), su)
    return torch.lerp(top, bottom, sv)


def gradient_noise(
    g: torch.Generator,
    size: int,
    freq: int | tuple[int, int],
    batch: int = 1,
    u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Periodic gradient (Perlin) noise; arguments as :func:`value_noise`.

    Returns:
        ``(B, T, T)`` float32, roughly in ``[-1, 1]``.
    """
    fu, fv = _freq(freq)
    angle = torch.rand(batch, fv, fu, generator=g) * (2 * math.pi)
    gx, gy = torch.cos(angle), torch.sin(angle)
    if u is None and v is None:  # separable: sum_ij w_j(v) w_i(u) (gx_ji du_i + gy_ji dv_j)
        au, av = _axis(fu, size), _axis(fv, size)
        (_, _, su, tu), (_, _, sv, tv) = au, av
        gx = _interp(gx, 2, au, (1 - su) * tu, su * (tu - 1))
        gy = _interp(gy, 2, au)
        n = _interp(gx, 1, av) + _interp(gy, 1, av, (1 - sv) * tv, sv * (tv - 1))
        return n * math.sqrt(2)
    u0, v0 = _grid(size)
    u, v = (u0 if u is None else u), (v0 if v is None else v)
    iu0, iu1, tu = _cells(u, fu)
    iv0, iv1, tv = _cells(v, fv)

    def corner(iv, iu, du, dv):
        return _gather(gx, iv, iu) * du + _gather(gy, iv, iu) * dv

    su, sv = _fade(tu), _fade(tv)
    top = torch.lerp(corner(iv0, iu0, tu, tv), corner(iv0, iu1, tu - 1, tv), su)
    bottom = torch.lerp(corner(iv1, iu0, tu, tv - 1), corner(iv1, iu1, tu - 1, tv - 1), su)
    return torch.lerp(top, bottom, sv) * math.sqrt(2)


def fbm(
    g: torch.Generator,
    size: int,
    freq: int | tuple[int, int] = 4,
    octaves: int = 5,
    persistence: float = 0.5,
    batch: int = 1,
    kind: str = "gradient",
    u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fractal Brownian motion: octaves of periodic noise at doubling frequencies.

    Octaves whose lattice would be finer than 2 texels per cell are skipped.

    Args:
        g: the random generator.
        size: texture size ``T``.
        freq: lattice cells of the first octave, ``f`` or ``(f_u, f_v)``.
        octaves: number of octaves.
        persistence: amplitude ratio between successive octaves.
        batch: independent fields ``B``.
        kind: ``"gradient"`` (Perlin) or ``"value"`` noise.
        u, v: optional warped coordinates, as in :func:`value_noise`.
    Returns:
        ``(B, T, T)`` float32 standardised to zero mean and unit standard deviation per field.
    """
    if kind not in ("gradient", "value"):
        raise InputError(f"noise kind must be 'gradient' or 'value', got {kind!r}.")
    noise = gradient_noise if kind == "gradient" else value_noise
    fu, fv = _freq(freq)
    total = torch.zeros(batch, size, size)
    amp = 1.0
    for o in range(max(1, octaves)):
        mu, mv = fu << o, fv << o
        if o and max(mu, mv) > size // 2:
            break
        total = total + amp * noise(g, size, (mu, mv), batch, u, v)
        amp *= persistence
    total = total - total.mean((-2, -1), keepdim=True)
    return total / total.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)


# ------------------------------------------------------------------------------ image helpers
def _rgb(c: Sequence[float]) -> torch.Tensor:
    return torch.tensor(c, dtype=torch.float32).view(3, 1, 1)


def _mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


def _done(img: torch.Tensor) -> torch.Tensor:
    return img.clamp(0, 1).to(torch.float32).contiguous()


def _frame(img: torch.Tensor, color: Sequence[float], width: float = 0.02) -> torch.Tensor:
    """Paint a border of ``width`` (texture units, at least 2 texels) in ``color`` around
    ``img`` ``(3, T, T)``, keeping the texture's own shading there, so it tiles seamlessly."""
    size = img.shape[-1]
    u, v = _grid(size)
    px = max(2.0, width * size)
    d = torch.minimum(torch.minimum(u, 1 - 1 / size - u), torch.minimum(v, 1 - 1 / size - v))
    inside = _smoothstep(px - 1.0, px, d * size)
    return _mix(_rgb(color).expand_as(img), img, inside)


def _to_tensor(canvas: np.ndarray, size: int) -> torch.Tensor:
    """A uint8 RGB drawing ``(H, W, 3)`` (any size >= T) area-resampled to ``(3, T, T)``."""
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _canvas(size: int, aspect: float, color: Sequence[float]) -> np.ndarray:
    """A uint8 RGB canvas for a panel of ``aspect`` = width / height, drawn at twice ``T``."""
    h = 2 * size if aspect >= 1 else round(2 * size / aspect)
    w = round(2 * size * aspect) if aspect >= 1 else 2 * size
    return np.full((h, w, 3), _u8(color), dtype=np.uint8)


def _u8(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(round(255 * min(1.0, max(0.0, x))) for x in c)


def _text(
    img: np.ndarray,
    text: str,
    box: tuple[int, int, int, int],
    color: Sequence[float],
    font: int = cv2.FONT_HERSHEY_DUPLEX,
    bold: float = 0.12,
):
    """Draw ``text`` centred and scaled to fit ``box = (x0, y0, x1, y1)`` of ``img``."""
    x0, y0, x1, y1 = box
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 1)
    scale = max(0.1, min((x1 - x0) / max(tw, 1), (y1 - y0) / max(th + base, 1)))
    thick = max(1, round(bold * scale * 10))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    org = (x0 + (x1 - x0 - tw) // 2, y0 + (y1 - y0 + th) // 2)
    cv2.putText(img, text, org, font, scale, _u8(color), thick, cv2.LINE_AA)


def _grain(g: torch.Generator, size: int, amp: float, freq: int | None = None) -> torch.Tensor:
    """Multiplicative fine grain ``(1, T, T)`` around 1 with standard deviation ``amp``."""
    return 1 + amp * fbm(g, size, freq or max(4, size // 16), octaves=3, kind="value")


def _contrast_color(rgb: Sequence[float]) -> RGB:
    lum = 0.3 * rgb[0] + 0.6 * rgb[1] + 0.1 * rgb[2]
    return (0.05, 0.05, 0.05) if lum > 0.5 else (0.97, 0.97, 0.95)


def _word(g: torch.Generator) -> str:
    return _choice(g, _WORDS)


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


def shopfront(
    g: torch.Generator, size: int = 256, aspect: float = 1.5, name: str | None = None
) -> torch.Tensor:
    """A shop's ground floor (designed for 6 m x 4 m, ``aspect`` = width / height): fascia sign
    with the shop's name, display windows with goods and posters, a door, a kick plate."""
    pier = _jitter(g, _choice(g, (*_PLASTER, (0.25, 0.25, 0.27))), 0.1)
    img = _canvas(size, aspect, pier)
    h, w = img.shape[:2]
    fascia = _jitter(g, _choice(g, _VIVID), 0.1)
    x0, x1 = round(0.04 * w), round(0.96 * w)
    cv2.rectangle(img, (x0, round(0.06 * h)), (x1, round(0.24 * h)), _u8(fascia), -1)
    _text(
        img,
        name or _word(g),
        (x0 + w // 10, round(0.08 * h), x1 - w // 10, round(0.22 * h)),
        _contrast_color(fascia),
        _choice(g, _FONTS),
    )
    y0, y1 = round(0.3 * h), round(0.88 * h)
    frame = _u8(_jitter(g, _choice(g, ((0.1, 0.1, 0.1), (0.9, 0.9, 0.88), (0.3, 0.2, 0.1))), 0.1))
    cv2.rectangle(img, (x0, y0), (x1, round(0.96 * h)), frame, -1)
    door_left = _uniform(g) < 0.5
    dw = round(0.17 * w)
    dx = x0 + round(0.03 * w) if door_left else x1 - round(0.03 * w) - dw
    m = max(2, w // 150)
    cv2.rectangle(img, (dx + m, y0 + m), (dx + dw - m, round(0.96 * h)), (40, 45, 50), -1)
    cv2.rectangle(img, (dx + 3 * m, y0 + 3 * m), (dx + dw - 3 * m, y1), (70, 85, 95), -1)
    cv2.line(img, (dx + dw - 6 * m, y0 + (y1 - y0) // 2), (dx + dw - 6 * m, y1 - 20 * m), frame, m)
    wx0, wx1 = (dx + dw + m, x1 - m) if door_left else (x0 + m, dx - m)
    panes = _randint(g, 1, 3)
    edges = np.linspace(wx0, wx1, panes + 1).round().astype(int)
    for a, b in itertools.pairwise(edges):
        a, b = int(a) + m, int(b) - m
        for k in range(y1 - y0 - 2 * m):
            t = k / max(1, y1 - y0 - 2 * m)
            c = (int(110 - 70 * t), int(125 - 75 * t), int(140 - 80 * t))
            cv2.line(img, (a, y0 + m + k), (b, y0 + m + k), c, 1)
        shelves = _randint(g, 1, 3)
        for s in range(shelves):
            ys = y1 - m - round((s + 0.05) * (y1 - y0) / (shelves + 0.6))
            cv2.line(img, (a, ys), (b, ys), (150, 150, 150), 2 * m)
            x = a + 4 * m
            while x < b - 8 * m:
                gw = _randint(g, 6 * m, 18 * m)
                gh = _randint(g, 8 * m, round(0.6 * (y1 - y0) / (shelves + 0.6)))
                cv2.rectangle(
                    img,
                    (x, ys - gh),
                    (min(x + gw, b - 2 * m), ys - m),
                    _u8(_jitter(g, _choice(g, _VIVID), 0.3)),
                    -1,
                )
                x += gw + _randint(g, 2 * m, 10 * m)
        if _uniform(g) < 0.6:  # a poster in the window
            pw, ph = (b - a) // 3, (y1 - y0) // 3
            px, py = a + _randint(g, 0, max(0, b - a - pw)), y0 + 4 * m
            col = _jitter(g, _choice(g, _VIVID), 0.1)
            cv2.rectangle(img, (px, py), (px + pw, py + ph), _u8(col), -1)
            label = _choice(g, ("SALE", "OPEN", "-50%", "NEW", "2 FOR 1"))
            _text(img, label, (px + m, py + m, px + pw - m, py + ph - m), _contrast_color(col))
    cv2.rectangle(img, (x0, y1), (x1, round(0.96 * h)), frame, -1)  # kick plate
    out = _to_tensor(img, size) * _grain(g, size, 0.04)
    return _done(_frame(out, pier, 0.02))


def sign(
    g: torch.Generator, size: int = 256, aspect: float = 2.0, text: str | None = None
) -> torch.Tensor:
    """A high-contrast sign panel (``aspect`` = width / height): coloured background, inner
    border, a pictogram and a word, in a grey metal frame."""
    bg = _jitter(g, _choice(g, _VIVID), 0.08)
    fg = _contrast_color(bg)
    img = _canvas(size, aspect, bg)
    h, w = img.shape[:2]
    m = max(2, min(h, w) // 30)
    cv2.rectangle(img, (3 * m, 3 * m), (w - 3 * m, h - 3 * m), _u8(fg), m)
    icon = _randint(g, 0, 4)
    r = round(0.3 * h)
    cx, cy = (round(0.22 * w), h // 2) if aspect > 1.3 else (w // 2, round(0.36 * h))
    if aspect <= 1.3:
        r = round(0.2 * h)
    accent = _u8(_jitter(g, _choice(g, _VIVID), 0.1))
    if icon == 0:  # cross
        cv2.rectangle(img, (cx - r, cy - r // 3), (cx + r, cy + r // 3), _u8(fg), -1)
        cv2.rectangle(img, (cx - r // 3, cy - r), (cx + r // 3, cy + r), _u8(fg), -1)
    elif icon == 1:  # arrow
        cv2.arrowedLine(
            img, (cx - r, cy), (cx + r, cy), _u8(fg), max(2, r // 4), cv2.LINE_AA, 0, 0.5
        )
    elif icon == 2:  # disc with a letter
        cv2.circle(img, (cx, cy), r, accent, -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), r, _u8(fg), max(2, r // 8), cv2.LINE_AA)
        _text(img, _choice(g, "PHMBTS"), (cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2), fg)
    elif icon == 3:  # triangle
        pts = np.array([[cx, cy - r], [cx - r, cy + r * 3 // 4], [cx + r, cy + r * 3 // 4]])
        cv2.fillPoly(img, [pts.astype(np.int32)], accent, cv2.LINE_AA)
        cv2.polylines(img, [pts.astype(np.int32)], True, _u8(fg), max(2, r // 8), cv2.LINE_AA)
    else:  # stripes
        for k in range(4):
            y = cy - r + k * r // 2
            cv2.rectangle(img, (cx - r, y), (cx + r, y + r // 4), _u8(fg), -1)
    box = (
        (round(0.42 * w), round(0.2 * h), w - 5 * m, round(0.8 * h))
        if aspect > 1.3
        else (5 * m, round(0.62 * h), w - 5 * m, h - 5 * m)
    )
    _text(img, text or _word(g), box, fg, _choice(g, _FONTS))
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, (0.45, 0.46, 0.48), 0.025))


# ------------------------------------------------------------------------------------ vehicles
_CAR: tuple[RGB, ...] = (
    (0.75, 0.05, 0.05), (0.05, 0.15, 0.45), (0.85, 0.85, 0.83), (0.08, 0.08, 0.09),
    (0.45, 0.46, 0.48), (0.10, 0.35, 0.20), (0.90, 0.70, 0.10), (0.55, 0.60, 0.65),
)  # fmt: skip


def car_color(g: torch.Generator) -> RGB:
    """A plausible random car paint colour."""
    return _jitter(g, _choice(g, _CAR), 0.08)


def _paint(g: torch.Generator, size: int, img: torch.Tensor) -> torch.Tensor:
    """Metallic shading: a highlight band along the body, flakes."""
    _, v = _grid(size)
    band = 1 + 0.25 * torch.exp(-(((v - 0.45) / 0.12) ** 2)) - 0.15 * v
    return img * band * _grain(g, size, 0.025, max(4, size // 4))


def vehicle_side(
    g: torch.Generator, size: int = 256, color: Sequence[float] | None = None, aspect: float = 3.0
) -> torch.Tensor:
    """Side of a car (designed for 4.5 m x 1.5 m): body, window band with pillars, door seams,
    handles, wheels with rims, lights at both ends."""
    color = color or car_color(g)
    img = _canvas(size, aspect, color)
    h, w = img.shape[:2]
    m = max(2, h // 80)
    glass = (35, 42, 50)
    top, low = round(0.1 * h), round(0.44 * h)
    pts = np.array([[0.3 * w, top], [0.7 * w, top], [0.8 * w, low], [0.17 * w, low]], np.int32)
    cv2.fillPoly(img, [pts], glass, cv2.LINE_AA)
    cv2.line(img, (round(0.5 * w), top), (round(0.5 * w), low), _u8(color), 3 * m)  # B pillar
    for x in (0.27, 0.5, 0.73):
        cv2.line(img, (round(x * w), low + 2 * m), (round(x * w), round(0.8 * h)), (25, 25, 25), m)
    for x in (0.42, 0.65):
        cv2.rectangle(
            img,
            (round(x * w), round(0.52 * h)),
            (round(x * w) + 10 * m, round(0.55 * h)),
            (30, 30, 30),
            -1,
        )
    cv2.line(img, (0, round(0.6 * h)), (w, round(0.6 * h)), _u8(_jitter(g, color, 0.3)), m)
    cv2.rectangle(img, (0, round(0.86 * h)), (w, h), (20, 20, 22), -1)  # sill and shadow
    r = round(0.22 * h)
    for x in (0.18, 0.82):
        c = (round(x * w), h - r - m)
        cv2.circle(img, c, r + 3 * m, (15, 15, 15), -1, cv2.LINE_AA)  # arch
        cv2.circle(img, c, r, (30, 30, 32), -1, cv2.LINE_AA)  # tyre
        cv2.circle(img, c, r * 3 // 5, (170, 172, 175), -1, cv2.LINE_AA)  # rim
        for k in range(5):
            a = 2 * math.pi * k / 5
            e = (c[0] + round(0.55 * r * math.cos(a)), c[1] + round(0.55 * r * math.sin(a)))
            cv2.line(img, c, e, (80, 80, 85), 2 * m, cv2.LINE_AA)
    cv2.rectangle(img, (0, round(0.45 * h)), (5 * m, round(0.56 * h)), (200, 20, 20), -1)
    cv2.rectangle(img, (w - 5 * m, round(0.45 * h)), (w, round(0.56 * h)), (240, 170, 40), -1)
    out = _paint(g, size, _to_tensor(img, size))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.012))


def vehicle_end(
    g: torch.Generator, size: int = 256, color: Sequence[float] | None = None, aspect: float = 1.2
) -> torch.Tensor:
    """Front/back of a car (designed for 1.8 m x 1.5 m): windscreen, lights, number plate with
    random characters, bumper."""
    color = color or car_color(g)
    img = _canvas(size, aspect, color)
    h, w = img.shape[:2]
    m = max(2, h // 80)
    pts = np.array(
        [[0.15 * w, 0.1 * h], [0.85 * w, 0.1 * h], [0.92 * w, 0.45 * h], [0.08 * w, 0.45 * h]],
        np.int32,
    )
    cv2.fillPoly(img, [pts], (35, 42, 50), cv2.LINE_AA)
    cv2.line(
        img,
        (round(0.2 * w), round(0.15 * h)),
        (round(0.4 * w), round(0.4 * h)),
        (90, 100, 110),
        2 * m,
        cv2.LINE_AA,
    )
    lamp = (200, 25, 25) if _uniform(g) < 0.5 else (235, 235, 220)
    for x0 in (0.05, 0.77):
        cv2.rectangle(
            img,
            (round(x0 * w), round(0.52 * h)),
            (round((x0 + 0.18) * w), round(0.64 * h)),
            lamp,
            -1,
        )
        cv2.rectangle(
            img,
            (round((x0 + 0.02) * w), round(0.54 * h)),
            (round((x0 + 0.07) * w), round(0.62 * h)),
            (240, 150, 30),
            -1,
        )
    px0, px1 = round(0.3 * w), round(0.7 * w)
    py0, py1 = round(0.62 * h), round(0.74 * h)
    cv2.rectangle(img, (px0, py0), (px1, py1), (235, 225, 90), -1)
    letters = "ABCDEFGHJKLMNPRSTVWXYZ"
    plate = "".join(_choice(g, letters) for _ in range(2)) + f"{_randint(g, 0, 99):02d} "
    plate += "".join(_choice(g, letters) for _ in range(3))
    _text(img, plate, (px0 + m, py0 + m, px1 - m, py1 - m), (0.05, 0.05, 0.05), bold=0.08)
    cv2.rectangle(img, (0, round(0.78 * h)), (w, round(0.88 * h)), (30, 30, 32), -1)
    cv2.rectangle(img, (0, round(0.9 * h)), (w, h), (15, 15, 15), -1)
    out = _paint(g, size, _to_tensor(img, size))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.015))


def vehicle_roof(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Roof of a car (4.5 m x 1.8 m): paint with a dark sunroof or roof rails, dust."""
    color = color or car_color(g)
    img = _canvas(size, 2.5, color)
    h, w = img.shape[:2]
    if _uniform(g) < 0.5:
        cv2.rectangle(
            img,
            (round(0.35 * w), round(0.25 * h)),
            (round(0.6 * w), round(0.75 * h)),
            (30, 35, 40),
            -1,
        )
    else:
        for y in (0.12, 0.85):
            cv2.rectangle(
                img,
                (round(0.2 * w), round(y * h)),
                (round(0.8 * w), round(y * h) + h // 20),
                (40, 40, 40),
                -1,
            )
    out = _to_tensor(img, size) * (1 + 0.06 * fbm(g, size, 4, 5))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.012))


# -------------------------------------------------------------------------------------- indoor
def picture(
    g: torch.Generator, size: int = 256, aspect: float = 1.3, style: str | None = None
) -> torch.Tensor:
    """A framed picture or poster (``aspect`` = width / height): ``"abstract"`` shapes,
    ``"landscape"`` (sky, mountain ridges, trees, water) or a ``"poster"`` with big type."""
    style = style or _choice(g, ("abstract", "landscape", "poster"))
    frame = _jitter(g, _choice(g, ((0.08, 0.08, 0.08), (0.45, 0.30, 0.15), (0.75, 0.6, 0.25))), 0.1)
    img = _canvas(size, aspect, (0.95, 0.95, 0.93))
    h, w = img.shape[:2]
    mat = round(0.06 * min(h, w)) if style != "poster" else 0
    ih, iw = h - 2 * mat, w - 2 * mat
    inner = np.zeros((ih, iw, 3), np.uint8)
    if style == "abstract":
        a, b = _jitter(g, _choice(g, _VIVID), 0.2), _jitter(g, _choice(g, _VIVID), 0.2)
        t = np.linspace(0, 1, ih, dtype=np.float32)[:, None, None]
        inner[:] = (255 * ((1 - t) * np.array(a) + t * np.array(b))).astype(np.uint8)
        for _ in range(_randint(g, 6, 14)):
            col = _u8(_jitter(g, _choice(g, _VIVID), 0.3))
            x, y = _randint(g, 0, iw), _randint(g, 0, ih)
            s = _randint(g, min(ih, iw) // 12, min(ih, iw) // 3)
            k = _randint(g, 0, 2)
            if k == 0:
                cv2.circle(inner, (x, y), s, col, -1, cv2.LINE_AA)
            elif k == 1:
                cv2.rectangle(inner, (x - s, y - s // 2), (x + s, y + s // 2), col, -1)
            else:
                x2, y2 = _randint(g, 0, iw), _randint(g, 0, ih)
                cv2.line(inner, (x, y), (x2, y2), col, max(2, s // 6), cv2.LINE_AA)
    elif style == "landscape":
        sky_top = np.array(_jitter(g, (0.35, 0.55, 0.85), 0.15))
        sky_low = np.array(_jitter(g, (0.85, 0.80, 0.70), 0.1))
        t = np.linspace(0, 1, ih, dtype=np.float32)[:, None, None]
        inner[:] = (255 * ((1 - t) * sky_top + t * sky_low)).astype(np.uint8)
        sx, sy = _randint(g, iw // 6, 5 * iw // 6), _randint(g, ih // 10, ih // 3)
        cv2.circle(inner, (sx, sy), max(3, ih // 14), (250, 235, 180), -1, cv2.LINE_AA)
        xs = np.arange(iw + 1)
        for layer in range(3):
            base = ih * (0.35 + 0.15 * layer)
            rough = torch.randn(16, generator=g).numpy().cumsum() * (0.06 - 0.015 * layer) * ih
            ridge = base + np.interp(xs, np.linspace(0, iw, 16), rough)
            pts = np.concatenate([np.stack([xs, ridge], 1), [[iw, ih], [0, ih]]]).astype(np.int32)
            shade = 0.55 - 0.15 * layer
            col = _jitter(g, (0.35 * shade, 0.5 * shade + 0.1, 0.35 * shade + 0.15), 0.15)
            cv2.fillPoly(inner, [pts], _u8(col), cv2.LINE_AA)
        if _uniform(g) < 0.5:
            cv2.rectangle(
                inner, (0, round(0.82 * ih)), (iw, ih), _u8(_jitter(g, (0.3, 0.45, 0.6), 0.1)), -1
            )
        for _ in range(_randint(g, 3, 8)):
            x, y = _randint(g, 0, iw), _randint(g, round(0.6 * ih), round(0.8 * ih))
            s = _randint(g, ih // 30, ih // 10)
            cv2.line(inner, (x, y), (x, y + s), (60, 40, 25), max(1, s // 6))
            cv2.circle(inner, (x, y), s // 2 + 1, _u8(_jitter(g, (0.1, 0.3, 0.1), 0.3)), -1)
    else:  # poster
        bg = _jitter(g, _choice(g, _VIVID), 0.1)
        fg = _contrast_color(bg)
        inner[:] = _u8(bg)
        s = min(ih, iw)
        col = _u8(_jitter(g, _choice(g, _VIVID), 0.2))
        cv2.circle(inner, (iw // 2, round(0.55 * ih)), s // 3, col, -1, cv2.LINE_AA)
        _text(inner, _word(g), (iw // 10, ih // 20, 9 * iw // 10, ih // 5), fg, _choice(g, _FONTS))
        for k in range(4):  # body text
            y = round((0.78 + 0.045 * k) * ih)
            words = " ".join(_word(g).lower() for _ in range(3))
            _text(inner, words, (iw // 8, y, 7 * iw // 8, y + ih // 30), fg, bold=0.06)
        _text(inner, str(_randint(g, 1950, 2030)), (iw // 3, round(0.94 * ih), 2 * iw // 3, ih), fg)
    img[mat : mat + ih, mat : mat + iw] = inner
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, frame, 0.035))


def window_view(g: torch.Generator, size: int = 256, aspect: float = 1.1) -> torch.Tensor:
    """A room's window: white frame and mullions around a view of sky, clouds, buildings and
    trees (designed for about 1.6 m x 1.4 m)."""
    u, v = _grid(size)
    sky = _mix(_rgb((0.45, 0.62, 0.88)), _rgb((0.85, 0.88, 0.90)), v.expand(1, size, size))
    cloud = _smoothstep(0.2, 1.2, fbm(g, size, (3, 2), 5))
    img = _mix(sky, _rgb((0.95, 0.95, 0.96)), cloud)
    canvas = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8).copy()
    x = 0
    while x < size:
        bw = _randint(g, size // 10, size // 4)
        bh = _randint(g, size // 5, size // 2)
        col = _u8(_jitter(g, _choice(g, _PLASTER), 0.2))
        cv2.rectangle(canvas, (x, size - bh), (x + bw, size), col, -1)
        for wy in range(size - bh + 4, size - 4, 8):
            for wx in range(x + 3, x + bw - 4, 7):
                cv2.rectangle(canvas, (wx, wy), (wx + 3, wy + 4), (60, 70, 80), -1)
        x += bw + _randint(g, 0, size // 12)
    for _ in range(_randint(g, 2, 5)):
        tx, r = _randint(g, 0, size), _randint(g, size // 14, size // 7)
        cv2.circle(canvas, (tx, size - r), r, _u8(_jitter(g, (0.15, 0.35, 0.12), 0.2)), -1)
    img = torch.from_numpy(canvas.astype(np.float32) / 255).permute(2, 0, 1)
    img = img * _grain(g, size, 0.03)
    frame = _rgb((0.94, 0.94, 0.92))
    fw = max(2, round(0.04 * size))
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, :, size // 2 - fw // 2 : size // 2 + fw // 2 + 1] = True
    mask[:, round(0.35 * size) - fw // 2 : round(0.35 * size) + fw // 2 + 1, :] = True
    img = torch.where(mask, frame.expand_as(img), img)
    reflection = 0.1 * _smoothstep(0.3, 0.9, (u + v).expand(1, size, size) / 2)
    return _done(_frame(img + reflection, (0.94, 0.94, 0.92), 0.05))


def books(g: torch.Generator, size: int = 256, aspect: float = 0.6, shelves: int = 4):
    """The back of a bookcase (``aspect`` = width / height): ``shelves`` rows of book spines of
    random widths, heights and colours with bands and labels, the odd gap or lying stack."""
    back = _jitter(g, (0.25, 0.18, 0.12), 0.2)
    img = _canvas(size, aspect, back)
    h, w = img.shape[:2]
    rh = h / shelves
    unit = h / 90  # ~2 cm per unit for a 1.8 m case
    for s in range(shelves):
        bottom = round((s + 1) * rh) - max(2, round(rh * 0.06))
        x = _randint(g, 0, round(3 * unit))
        while x < w - 2 * unit:
            if _uniform(g) < 0.07:  # gap
                x += round(_uniform(g, 3, 10) * unit)
                continue
            bw = round(_uniform(g, 1.2, 3.0) * unit)
            bh = round(_uniform(g, 0.55, 0.9) * rh)
            col = _jitter(g, _choice(g, _VIVID + _WOOD), 0.3)
            x1 = min(x + bw, w - 1)
            cv2.rectangle(img, (x, bottom - bh), (x1, bottom), _u8(col), -1)
            cv2.rectangle(img, (x, bottom - bh), (x1, bottom), (20, 20, 20), 1)
            band = _u8(_contrast_color(col))
            for yb in (bottom - bh + bh // 8, bottom - bh // 6):
                cv2.line(img, (x + 1, yb), (x1 - 1, yb), band, max(1, bw // 8))
            cv2.rectangle(
                img, (x + bw // 4, bottom - bh // 2), (x1 - bw // 4, bottom - bh // 3), band, -1
            )
            x = x1 + 1
        cv2.rectangle(img, (0, bottom), (w, round((s + 1) * rh)), _u8(_jitter(g, back, 0.3)), -1)
    out = _to_tensor(img, size) * _grain(g, size, 0.04)
    return _done(_frame(out, back, 0.02))


def cabinet(
    g: torch.Generator,
    size: int = 256,
    aspect: float = 1.0,
    doors: int = 2,
    drawers: int = 0,
    color: Sequence[float] | None = None,
) -> torch.Tensor:
    """A cabinet or door front (``aspect`` = width / height): ``drawers`` at the top, then
    ``doors`` side by side, each with an inset panel (shadow and highlight) and a handle."""
    color = color or _jitter(g, _choice(g, _PLASTER + _WOOD), 0.1)
    base = wood(g, size, 4, color, vertical=True) if _uniform(g) < 0.4 else plaster(g, size, color)
    img = (base.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = cv2.resize(img, (round(2 * size * max(1, aspect)), round(2 * size / min(1, aspect))))
    h, w = img.shape[:2]
    m = max(2, min(h, w) // 60)
    dark, light = (30, 28, 25), (235, 232, 225)
    handle = _u8(
        _jitter(g, _choice(g, ((0.75, 0.75, 0.75), (0.1, 0.1, 0.1), (0.7, 0.55, 0.2))), 0.1)
    )
    y = 2 * m
    dh = round(0.18 * h) if drawers else 0
    for _ in range(drawers):
        cv2.rectangle(img, (2 * m, y), (w - 2 * m, y + dh - m), dark, m)
        cv2.rectangle(
            img, (w // 2 - 8 * m, y + dh // 2 - m), (w // 2 + 8 * m, y + dh // 2 + m), handle, -1
        )
        y += dh
    if doors:
        edges = np.linspace(2 * m, w - 2 * m, doors + 1).round().astype(int)
        for k, (a, b) in enumerate(itertools.pairwise(edges)):
            a, b = int(a), int(b)
            cv2.rectangle(img, (a, y), (b - m, h - 2 * m), dark, m)
            cv2.rectangle(img, (a + 6 * m, y + 6 * m), (b - 7 * m, h - 8 * m), light, m)
            cv2.rectangle(img, (a + 7 * m, y + 7 * m), (b - 6 * m, h - 7 * m), dark, m)
            hx = b - 5 * m if k % 2 == 0 else a + 4 * m
            if doors == 1:
                hx = b - 6 * m
            hy = y + (h - y) // 2
            cv2.rectangle(img, (hx - m, hy - 10 * m), (hx + m, hy + 10 * m), handle, -1)
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, _jitter(g, color, 0.2), 0.01))


def cardboard(g: torch.Generator, size: int = 256) -> torch.Tensor:
    """A cardboard box face (designed for about 0.5 m): corrugation, tape, printed marks."""
    base = _jitter(g, (0.62, 0.46, 0.30), 0.08)
    img = _canvas(size, 1.0, base)
    h, w = img.shape[:2]
    ink = (35, 30, 28)
    cv2.rectangle(img, (0, round(0.44 * h)), (w, round(0.56 * h)), _u8(_jitter(g, base, 0.2)), -1)
    for k in range(_randint(g, 1, 3)):
        x = round(_uniform(g, 0.1, 0.6) * w)
        y = round(_uniform(g, 0.12, 0.3) * h) + k * h // 2
        y = min(y, h - h // 6)
        if _uniform(g) < 0.5:
            cv2.arrowedLine(
                img, (x, y + h // 8), (x, y - h // 12), ink, max(2, h // 60), cv2.LINE_AA, 0, 0.4
            )
            cv2.arrowedLine(
                img,
                (x + w // 10, y + h // 8),
                (x + w // 10, y - h // 12),
                ink,
                max(2, h // 60),
                cv2.LINE_AA,
                0,
                0.4,
            )
        else:
            label = _choice(g, ("FRAGILE", "THIS SIDE UP", "NO 42", "KEEP DRY", "HANDLE CARE"))
            _text(
                img, label, (x, y - h // 12, min(w - 4, x + w // 2), y + h // 12), (0.15, 0.1, 0.1)
            )
    out = _to_tensor(img, size)
    u, _ = _grid(size)
    flutes = 1 + 0.03 * torch.sin(2 * math.pi * max(8, size // 4) * u)
    out = out * flutes * _grain(g, size, 0.05) * (1 + 0.05 * fbm(g, size, 3, 4))
    return _done(_frame(out, base, 0.015))


def screen(g: torch.Generator, size: int = 256, aspect: float = 1.7) -> torch.Tensor:
    """A monitor front: black bezel around a desktop with windows, text lines and icons."""
    img = _canvas(size, aspect, (0.04, 0.04, 0.05))
    h, w = img.shape[:2]
    b = max(4, h // 20)
    bg = _u8(_jitter(g, (0.15, 0.3, 0.5), 0.3))
    cv2.rectangle(img, (b, b), (w - b, h - b), bg, -1)
    for _ in range(_randint(g, 2, 4)):
        x0, y0 = _randint(g, b, w // 2), _randint(g, b, h // 2)
        x1, y1 = (
            min(w - b, x0 + _randint(g, w // 5, w // 2)),
            min(h - b, y0 + _randint(g, h // 5, h // 2)),
        )
        cv2.rectangle(img, (x0, y0), (x1, y1), (235, 235, 235), -1)
        cv2.rectangle(
            img, (x0, y0), (x1, y0 + h // 25), _u8(_jitter(g, _choice(g, _VIVID), 0.2)), -1
        )
        for y in range(y0 + h // 15, y1 - h // 40, max(3, h // 30)):
            cv2.line(
                img,
                (x0 + w // 60, y),
                (x0 + round((x1 - x0) * _uniform(g, 0.3, 0.9)), y),
                (60, 60, 60),
                max(1, h // 120),
            )
    out = _to_tensor(img, size)
    return _done(_frame(out, (0.04, 0.04, 0.05), 0.02))


def lamp_panel(g: torch.Generator, size: int = 256, warm: bool = False) -> torch.Tensor:
    """A light fitting's diffuser: near-white with a prismatic grid and a metal rim (the
    appearance model makes ``"lamp"`` materials glow)."""
    color = (1.0, 0.9, 0.7) if warm else (0.97, 0.97, 0.95)
    u, v = _grid(size)
    k = max(4, size // 16)
    prism = 0.92 + 0.08 * (torch.cos(2 * math.pi * k * u) * torch.cos(2 * math.pi * k * v)).abs()
    img = _rgb(color) * prism * _grain(g, size, 0.02)
    return _done(_frame(img, (0.6, 0.6, 0.62), 0.05))


# ------------------------------------------------------------------------------------ registry
TextureFn = Callable[..., torch.Tensor]

#: Every procedural generator by name: ``fn(generator, size, **params) -> (3, T, T)``.
TEXTURES: dict[str, TextureFn] = {
    "noise": noise_texture,
    "plaster": plaster,
    "concrete": concrete,
    "asphalt": asphalt,
    "road": road,
    "paving": paving,
    "bricks": bricks,
    "tiles": tiles,
    "wood": wood,
    "foliage": foliage,
    "bark": bark,
    "metal": metal,
    "wallpaper": wallpaper,
    "ceiling_tiles": ceiling_tiles,
    "fabric": fabric,
    "facade": facade,
    "shopfront": shopfront,
    "sign": sign,
    "vehicle_side": vehicle_side,
    "vehicle_end": vehicle_end,
    "vehicle_roof": vehicle_roof,
    "picture": picture,
    "window_view": window_view,
    "books": books,
    "cabinet": cabinet,
    "cardboard": cardboard,
    "screen": screen,
    "lamp_panel": lamp_panel,
}

#: Physical extent ``(along u, along v)`` in metres each generator is designed for, at its
#: default parameters; ``None``: a panel stretched once over its quad.
TEXTURE_SIZES_M: dict[str, tuple[float, float] | None] = {
    "noise": (2.0, 2.0),
    "plaster": (2.0, 2.0),
    "concrete": (2.0, 2.0),
    "asphalt": (4.0, 4.0),
    "road": (8.0, 4.0),
    "paving": (2.4, 2.4),
    "bricks": (0.9, 0.9),
    "tiles": (1.2, 1.2),
    "wood": (2.0, 2.0),
    "foliage": (2.0, 2.0),
    "bark": (1.0, 1.0),
    "metal": (1.0, 1.0),
    "wallpaper": (0.6, 0.6),
    "ceiling_tiles": (1.2, 1.2),
    "fabric": (0.5, 0.5),
    "facade": (6.0, 6.0),
    "shopfront": (6.0, 4.0),
    "sign": None,
    "vehicle_side": None,
    "vehicle_end": None,
    "vehicle_roof": None,
    "picture": None,
    "window_view": None,
    "books": None,
    "cabinet": None,
    "cardboard": None,
    "screen": None,
    "lamp_panel": None,
}


def make_texture(
    name: str, seed: int | torch.Generator = 0, size: int = 256, **params
) -> torch.Tensor:
    """The procedural texture ``name`` (a key of :data:`TEXTURES`).

    Args:
        name: generator name.
        seed: an int seed or a ``torch.Generator`` (consumed).
        size: texture size ``T`` (at least 16).
        params: generator-specific keyword arguments.
    Returns:
        ``(3, T, T)`` float32 albedo in ``[0, 1]``, periodic in both directions.
    """
    if name not in TEXTURES:
        raise InputError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise InputError(f"texture size must be an int >= 16, got {size!r}.")
    with single_threaded():
        return TEXTURES[name](generator(seed), size, **params)


# ---------------------------------------------------------------------------------- user images
def make_tileable(image: torch.Tensor, band: float = 0.125) -> torch.Tensor:
    """Make ``image`` ``(3, T, T)`` periodic by mirror-blending its borders.

    Within ``band`` (a fraction of ``T``) of each edge, a texel is blended with its mirror image
    across the texture's centre line, with weight 1/2 at the edge falling smoothly to 0 at the
    band's inner end; so the first and last columns (rows) become equal and the interior keeps
    the original picture.
    """
    size = image.shape[-1]
    width = max(1.0, band * size)
    d = torch.arange(size, dtype=torch.float32)
    d = torch.minimum(d, size - 1 - d)
    w = 0.5 * (1 - _smoothstep(0.0, width, d))
    out = image * (1 - w.view(1, 1, -1)) + image.flip(-1) * w.view(1, 1, -1)
    out = out * (1 - w.view(1, -1, 1)) + out.flip(-2) * w.view(1, -1, 1)
    return _done(out)


def _read_image(path: Path, size: int) -> torch.Tensor | None:
    """One image file, centre-cropped to a square and resized to ``(3, T, T)``; ``None`` if
    OpenCV cannot read it."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        return None
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_CUBIC
    img = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_texture_folder(path: str | Path, size: int = 256) -> torch.Tensor:
    """Textures from the images in a folder (not recursive), in file-name order.

    Each image is read with OpenCV (colour; grey images are replicated), centre-cropped to a
    square, resized to ``T`` and made tileable with :func:`make_tileable`. Files that are not
    images of an accepted extension (:data:`IMAGE_EXTENSIONS`), or that OpenCV cannot decode,
    are skipped.

    Args:
        path: the folder.
        size: texture size ``T``.
    Returns:
        ``(N, 3, T, T)`` float32 in ``[0, 1]``, ``N >= 1``.
    Raises:
        DataFileNotFoundError: the folder does not exist.
        InputError: ``path`` is not a folder, or holds no readable image.
    """
    folder = Path(path)
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not folder.exists():
        raise DataFileNotFoundError(
            f"texture folder {folder} does not exist; pass a folder of images ({accepted})."
        )
    if not folder.is_dir():
        raise InputError(f"texture folder {folder} is not a folder; pass a folder of images.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise InputError(f"texture size must be an int >= 16, got {size!r}.")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    with single_threaded():
        images = [img for img in (_read_image(p, size) for p in files) if img is not None]
    if not images:
        raise InputError(
            f"texture folder {folder} holds no readable image ({len(files)} candidate file(s)); "
            f"accepted extensions: {accepted}."
        )
    with single_threaded():
        return torch.stack([make_tileable(img) for img in images])
