"""Periodic lattice noise for the procedural textures: value and gradient (Perlin) noise, fBm.

Lattice frequencies are integers per texture, so every field tiles seamlessly. All randomness
comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math

import torch

from dgeo.errors import InputError


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


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


def _grain(g: torch.Generator, size: int, amp: float, freq: int | None = None) -> torch.Tensor:
    """Multiplicative fine grain ``(1, T, T)`` around 1 with standard deviation ``amp``."""
    return 1 + amp * fbm(g, size, freq or max(4, size // 16), octaves=3, kind="value")
