"""Appearance conditions of the synthetic world, named like RobotCar Seasons' conditions.

Geometry never changes between conditions, only appearance. Rendering an image is two stages:

1. :func:`shade` turns a ray-cast :class:`~dgeo.data.synthetic.scene.GBuffer` into *linear
   radiance* ``(B, 3, H, W)``: albedo (with seasonal vegetation colours, snow cover on upward
   surfaces, darkened wet ground) times the irradiance of an ambient sky term, the sun
   (Lambert ``N.L``), the scene's point lights (street or ceiling lamps, ``1/d^2`` with ``N.L``)
   and the car's headlights (a cone in the camera frame), plus emission (lamp heads, lit
   windows at night), wet reflections (the sky and lamp highlights), distance fog and the sky
   gradient (with the sun's disc) where nothing was hit. It is a deterministic function of the
   world and the condition: the same world point looks the same in every view of a condition
   (puddles and snow patches are anchored to world coordinates), which keeps correspondences
   photometrically consistent. Run it at the supersampled resolution.
2. :func:`finish` turns radiance, downsampled to the final resolution, into a camera image in
   ``[0, 1]``: random per-image exposure (auto exposure limited by a maximum gain, plus a random
   offset from the condition's range), white balance, precipitation occluders (rain streaks,
   snow flakes) drawn as image-space overlays, a slight blur for rain, sensor noise (shot +
   read noise, much stronger at night), filmic tone mapping and sRGB gamma.

All per-view randomness lives in :func:`finish` and is drawn from one seed (or one
``torch.Generator``) per view, so a view's image never depends on the batch it is rendered in.
:func:`to_uint8` converts for saving; :func:`condition_grid` tiles labelled images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dgeo.data.synthetic.conditions import (
    CONDITION_NAMES,
    CONDITIONS,
    Condition,
    get_condition,
)
from dgeo.data.synthetic.scene import GBuffer, Scene
from dgeo.errors import InputError, ShapeError
from dgeo.geometry.pose import Pose

Seeds = int | Sequence[int] | torch.Tensor | torch.Generator | Sequence[torch.Generator]

__all__ = [
    "CONDITIONS",
    "CONDITION_NAMES",
    "Condition",
    "condition_grid",
    "finish",
    "get_condition",
    "shade",
    "to_uint8",
]

# Fixed appearance constants shared by every condition.
_LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance weights of linear RGB
_INDOOR_DAYLIGHT = 0.3  # fraction of the outdoor ambient light that reaches indoor surfaces
_LAMP_NEAR = 0.25  # m^2 added to d^2 in the lamp falloff (finite irradiance at the bulb)
_HEADLIGHT_OFFSET = (0.0, 0.5, 0.0)  # headlights sit 0.5 m below the camera (camera frame)
_HEADLIGHT_TILT = 0.08  # rad, headlights point slightly downwards
_HEADLIGHT_COLOR = (1.0, 0.97, 0.9)
_LAMP_RADIANCE = 30.0  # radiance of a glowing lamp head (times the condition's lamp_intensity)
_LAMP_HEAD_RADIUS = 0.4  # m, for the brightness of lamps mirrored in wet ground
_WET_ROUGHNESS = 0.0008  # width of the glossy lobe of wet ground, 1 - cos(half-vector angle)
_LIT_WINDOW_FRACTION = 0.4  # share of window quads lit from inside at night
_SNOW_ALBEDO = (0.88, 0.9, 0.95)
_SLUSH_ALBEDO = (0.42, 0.42, 0.45)


# ---------------------------------------------------------------------------------------- helpers
def _vec(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A ``(1, C, 1, 1)`` tensor on ``like``'s device and dtype."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channel dot product ``(B, 3, H, W) x (B|1, 3, H|1, W|1) -> (B, 1, H, W)``."""
    return (a * b).sum(1, keepdim=True)


def _smoothstep(
    e0: float | torch.Tensor, e1: float | torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (edges broadcast with ``x``)."""
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Luminance ``(B, 1, H, W)`` of linear RGB ``(B, 3, H, W)``."""
    return _dot(x, _vec(_LUMA, x))


def _hash(i: torch.Tensor, seed: int) -> torch.Tensor:
    """Integer hash of int64 tensors to floats in ``[0, 1)`` (same on every device)."""
    h = i * 0x9E3779B1 + (seed * 0x85EBCA77 + 0x165667B1)
    h = h ^ (h >> 15)
    h = h * 0x2C1B3C6D
    h = h ^ (h >> 12)
    h = h * 0x297A2D39
    h = h ^ (h >> 15)
    return (h & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def _value_noise(xy: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """Smooth value noise in ``[0, 1]`` of world points ``xy`` ``(N, 2)`` (metres) -> ``(N,)``,
    on a lattice of ``scale`` metres."""
    p = xy / scale
    cell = torch.floor(p)
    f = p - cell
    f = f * f * (3 - 2 * f)
    i, j = cell.to(torch.int64).unbind(-1)

    def corner(dx: int, dy: int) -> torch.Tensor:
        return _hash((i + dx) * 73856093 ^ (j + dy) * 19349663, seed).to(xy.dtype)

    top = torch.lerp(corner(0, 0), corner(1, 0), f[:, 0])
    bottom = torch.lerp(corner(0, 1), corner(1, 1), f[:, 0])
    return torch.lerp(top, bottom, f[:, 1])


def _world_noise(
    points: torch.Tensor, mask: torch.Tensor, octaves: Sequence[tuple[float, float, int]]
) -> torch.Tensor:
    """Value noise anchored to the world ``x, y`` of ``points`` ``(B, 3, H, W)``, evaluated only
    where ``mask`` ``(B, 1, H, W)`` holds (0 elsewhere); ``octaves`` lists
    ``(scale_m, weight, seed)``. Returns ``(B, 1, H, W)``."""
    out = torch.zeros_like(points[:, :1])
    sel = mask[:, 0]
    if bool(sel.any()):
        xy = points[:, :2].permute(0, 2, 3, 1)[sel]
        out[:, 0][sel] = sum(w * _value_noise(xy, s, seed) for s, w, seed in octaves)
    return out


def _sky(direction: torch.Tensor, cond: Condition) -> torch.Tensor:
    """Sky radiance ``(B, 3, H, W)`` for unit world directions ``(B, 3, H, W)``.

    A zenith/horizon gradient by the direction's ``z`` (darker below the horizon), plus the sun's
    disc and glow when ``sun_disc > 0``.
    """
    z = direction[:, 2:3]
    up = z.clamp(0, 1).pow(0.6)
    sky = torch.lerp(_vec(cond.sky_horizon, z), _vec(cond.sky_zenith, z), up)
    below = _smoothstep(0.0, -0.25, z)  # under the horizon: fade to a dim ground
    sky = sky * (1 - 0.6 * below)
    if cond.sun_disc > 0:
        cos = _dot(direction, _vec(cond.sun_direction, direction))
        sun = _vec(cond.sun_color, direction)
        disc = _smoothstep(math.cos(math.radians(0.9)), math.cos(math.radians(0.6)), cos)
        halo = 0.03 * torch.exp((cos - 1) / 0.004) + 0.008 * torch.exp((cos - 1) / 0.1)
        # low sun: a broad glow along the horizon on the sun's side of the sky
        band = torch.exp(-z.clamp(min=0) / 0.25) * ((1 + cos) / 2) ** 3
        afterglow = 0.012 * band * max(0.0, math.cos(cond.sun_elevation) ** 8)
        sky = sky + cond.sun_disc * sun * (disc + halo + afterglow) * (1 - below)
    return sky


def _kind_mask(scene: Scene, kinds: Sequence[str], material: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` bool: the pixel's material kind is one of ``kinds``."""
    flags = torch.tensor([k in kinds for k in scene.material_kind], device=material.device)
    if flags.numel() == 0:
        return torch.zeros_like(material, dtype=torch.bool)
    return flags[material.clamp(min=0)] & (material >= 0)


def _season_albedo(albedo: torch.Tensor, season: str) -> torch.Tensor:
    """Vegetation albedo ``(B, 3, H, W)`` recoloured for ``season``.

    Only foliage changes: the shift is weighted by how green the texel is, so bark and other
    brown vegetation texels keep their colour.
    """
    r, g, b = albedo.unbind(1)
    leafy = _smoothstep(0.0, 0.08, (g - 0.5 * (r + b))[:, None])
    lum = _luma(albedo)
    if season == "summer":  # lush, saturated green
        sat = (lum + 1.35 * (albedo - lum)).clamp(min=0)
        shifted = sat * _vec((0.8, 1.12, 0.65), albedo)
    elif season == "spring":  # fresh light green
        shifted = albedo * _vec((0.95, 1.12, 0.8), albedo) + 0.02
    elif season == "autumn":  # yellow-orange foliage
        shifted = torch.lerp(albedo, lum * _vec((1.7, 1.05, 0.35), albedo), 0.6)
    else:  # winter: bare branches, brown-grey
        shifted = torch.lerp(albedo, lum * _vec((1.05, 0.88, 0.72), albedo), 0.9)
    return torch.lerp(albedo, shifted.clamp(0, 1), leafy)


def _check_gbuffer(gbuf: GBuffer) -> tuple[int, int, int]:
    if not isinstance(gbuf, GBuffer):
        raise InputError(f"gbuf must be a GBuffer, got {type(gbuf).__name__}.")
    a = gbuf.albedo
    if a.dim() != 4 or a.shape[1] != 3:
        raise ShapeError(f"gbuf.albedo must have shape (B, 3, H, W), got {tuple(a.shape)}.")
    b, _, h, w = a.shape
    for name, c in (
        ("valid", 1),
        ("points", 3),
        ("normal", 3),
        ("material", 1),
        ("quad", 1),
        ("ray_dir", 3),
        ("depth", 1),
    ):
        t = getattr(gbuf, name)
        if tuple(t.shape) != (b, c, h, w):
            raise ShapeError(f"gbuf.{name} must have shape {(b, c, h, w)}, got {tuple(t.shape)}.")
    if not a.is_floating_point():
        raise InputError(f"gbuf.albedo must be floating point, got {a.dtype}.")
    return b, h, w


def _camera_rig(
    cam_from_world: Pose, batch: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera centres, headlight positions and headlight axes in the world, each ``(B, 3)``."""
    if not isinstance(cam_from_world, Pose):
        raise InputError(f"cam_from_world must be a Pose, got {type(cam_from_world).__name__}.")
    pose = cam_from_world.reshape(-1) if cam_from_world.shape == () else cam_from_world
    if tuple(pose.shape) != (batch,):
        raise ShapeError(
            f"cam_from_world must have batch shape ({batch},) like the GBuffer, "
            f"got {tuple(cam_from_world.shape)}."
        )
    pose = pose.to(device=like.device, dtype=like.dtype)
    Rt = pose.R.transpose(-1, -2)  # world_from_cam rotation
    centre = pose.center()
    offset = torch.tensor(_HEADLIGHT_OFFSET, dtype=like.dtype, device=like.device)
    axis = torch.tensor(
        (0.0, math.sin(_HEADLIGHT_TILT), math.cos(_HEADLIGHT_TILT)),
        dtype=like.dtype,
        device=like.device,
    )
    return centre, centre + Rt @ offset, Rt @ axis


# ------------------------------------------------------------------------------------------ shade
def shade(
    gbuf: GBuffer,
    scene: Scene,
    condition: str | Condition,
    cam_from_world: Pose,
    seeds: Seeds | None = None,
) -> torch.Tensor:
    """Linear radiance of ray-cast views under an appearance condition.

    Reads the GBuffer and never modifies it. Deterministic: the result depends on the world, the
    condition and the camera only (procedural puddles, snow patches and lit windows are anchored
    to world coordinates and quads, seeded by ``scene.seed``).

    Args:
        gbuf: ``B`` views of ``H x W`` pixels (see :class:`GBuffer`), usually supersampled.
        scene: the scene the views were cast in (material kinds, lights, ``outdoor``).
        condition: a :class:`Condition` or its name.
        cam_from_world: ``(B,)`` poses of the views (headlights, fog distance).
        seeds: accepted for symmetry with :func:`finish` (checked to hold one per view) but
            unused: shading draws no random numbers, all per-view randomness is in
            :func:`finish`.
    Returns:
        ``(B, 3, H, W)`` non-negative linear radiance in ``gbuf.albedo``'s dtype and device.
    """
    cond = get_condition(condition)
    batch, _, _ = _check_gbuffer(gbuf)
    if seeds is not None:
        _seed_list(seeds, batch)
    albedo0 = gbuf.albedo
    like = albedo0
    dev, dtype = like.device, like.dtype
    valid = gbuf.valid.to(torch.bool)
    vf = valid.to(dtype)
    normal = gbuf.normal.to(dtype)
    points = gbuf.points.to(dtype)
    ray = gbuf.ray_dir.to(dtype)
    material = gbuf.material.to(torch.int64)
    outdoor = bool(scene.outdoor)
    centre, head_pos, head_axis = _camera_rig(cam_from_world, batch, like)
    nz = normal[:, 2:3]
    up = _smoothstep(0.55, 0.9, nz) * vf  # upward-facing surfaces (snow, puddles)
    to_cam = points - centre.view(batch, 3, 1, 1)
    dist = torch.sqrt(_dot(to_cam, to_cam))  # (B, 1, H, W) distance to the camera

    # ---- albedo: season, wetness, snow
    albedo = albedo0.to(dtype)
    veg = _kind_mask(scene, ("vegetation",), material)
    albedo = torch.where(veg, _season_albedo(albedo, cond.season), albedo)
    wet = torch.zeros_like(vf)
    if outdoor and cond.wetness > 0:
        puddle = _smoothstep(0.5, 0.75, _world_noise(points, up > 0, [(1.7, 1.0, scene.seed)]))
        wet = cond.wetness * up * (0.55 + 0.45 * puddle)
        damp = 1 - 0.5 * wet - 0.15 * cond.wetness * (1 - up) * vf
        albedo = albedo * damp
    if outdoor and cond.snow_cover > 0:
        patches = _world_noise(
            points, up > 0, [(0.8, 0.5, scene.seed + 1), (3.0, 1.0, scene.seed + 2)]
        )
        road = _kind_mask(scene, ("road",), material).to(dtype)
        cover = cond.snow_cover * up * _smoothstep(0.15, 0.6, patches - 0.45 * road)
        snow = torch.lerp(_vec(_SNOW_ALBEDO, like), _vec(_SLUSH_ALBEDO, like), road)
        albedo = torch.lerp(albedo, snow, cover)

    # ---- irradiance
    ambient = _vec(cond.ambient_color, like) * cond.ambient_intensity
    if outdoor:
        irradiance = ambient * (0.3 + 0.35 * (1 + nz))
    else:
        irradiance = ambient * (_INDOOR_DAYLIGHT * (0.85 + 0.15 * nz.abs()))
    if outdoor and cond.sun_intensity > 0:
        sun_dir = _vec(cond.sun_direction, like)
        sun = _vec(cond.sun_color, like) * cond.sun_intensity
        irradiance = irradiance + sun * _dot(normal, sun_dir).clamp(min=0)

    view = -ray
    n_dot_v = _dot(normal, view)
    wet_any = outdoor and cond.wetness > 0
    reflections = torch.zeros_like(albedo)
    lamp_scale = 1.0 if not outdoor else (cond.lamp_intensity if cond.lamps_on else 0.0)
    n_lights = scene.light_pos.shape[0] if lamp_scale > 0 else 0
    light_pos = scene.light_pos.to(device=dev, dtype=dtype)
    light_col = scene.light_color.to(device=dev, dtype=dtype) * lamp_scale
    # the radiance of a glowing lamp head: its light's colour, normalised
    glow_col = light_col / light_col.amax(-1, keepdim=True).clamp(min=1e-12) * lamp_scale
    for i in range(n_lights):  # a loop over lights, vectorised over pixels
        d = light_pos[i].view(1, 3, 1, 1) - points
        d2 = _dot(d, d)
        inv_d = torch.rsqrt(d2 + 1e-12)
        n_dot_l = _dot(normal, d) * inv_d
        # lamps shine mostly downwards: pools of light under them
        downward = 0.08 + 0.92 * (d[:, 2:3] * inv_d).clamp(min=0).square()
        weight = downward * n_dot_l.clamp(min=0) / (d2 + _LAMP_NEAR)
        irradiance = irradiance + light_col[i].view(1, 3, 1, 1) * weight
        if wet_any:  # the lamp head mirrored by rough wet ground: a blurred image of it
            # an exponential lobe of the half vector stretches the reflection into the streaks
            # seen on wet roads (long in the plane of incidence, narrow across it);
            # n.h = (n.l + n.v) / |l + v|
            l_dot_v = _dot(view, d) * inv_d
            n_dot_h = (n_dot_l + n_dot_v) * torch.rsqrt((2 + 2 * l_dot_v).clamp(min=1e-12))
            lobe = torch.exp((n_dot_h.clamp(max=1) - 1) / _WET_ROUGHNESS)
            path2 = (dist + d2.sqrt()).square()
            size = (_LAMP_HEAD_RADIUS**2 / (8 * _WET_ROUGHNESS * path2)).clamp(max=1)
            reflections = reflections + glow_col[i].view(1, 3, 1, 1) * (lobe * size)
    if outdoor and cond.headlights and cond.headlight_intensity > 0:
        d = head_pos.view(batch, 3, 1, 1) - points
        d2 = _dot(d, d)
        ldir = d * torch.rsqrt(d2 + 1e-12)
        angle = torch.acos((-_dot(ldir, head_axis.view(batch, 3, 1, 1))).clamp(-1, 1))
        beam = cond.headlight_intensity * torch.exp(-((angle / cond.headlight_angle) ** 2))
        beam = beam * _dot(normal, ldir).clamp(min=0) / (d2 + 1.0)
        irradiance = irradiance + _vec(_HEADLIGHT_COLOR, like) * beam
    radiance = albedo * irradiance * vf
    window = _kind_mask(scene, ("window",), material)
    if not outdoor:  # windows of a room show the outside: daylight, dark at night
        radiance = torch.where(window, albedo * ambient * 1.2, radiance)

    # ---- emission
    if n_lights:
        lamp = _kind_mask(scene, ("lamp",), material).to(dtype)
        radiance = radiance + lamp * glow_col.mean(0).view(1, 3, 1, 1) * _LAMP_RADIANCE
    if outdoor and cond.window_light > 0:
        lit = _hash(gbuf.quad.to(torch.int64).clamp(min=0), scene.seed + 5) < _LIT_WINDOW_FRACTION
        glow = (window & lit & valid).to(dtype) * cond.window_light
        # warm light from inside, through the window's texture (shop displays stay readable)
        radiance = radiance + glow * (0.15 + albedo) * _vec((1.0, 0.78, 0.5), like)
    if not outdoor:
        return torch.where(valid, radiance, 0).clamp(min=0)

    # ---- outdoors: reflections of the sky and the lamps, fog, the sky itself
    fresnel = 0.04 + 0.96 * (1 - n_dot_v.clamp(0, 1)) ** 5  # Schlick, n = 1.5
    gloss = (wet * 0.9 + window.to(dtype) * 0.5) * fresnel * vf
    if bool((gloss > 0).any()):
        reflected = ray - 2 * _dot(ray, normal) * normal
        radiance = radiance + gloss * (_sky(reflected, cond) + _LAMP_RADIANCE * reflections)
    if cond.fog_density > 0:
        haze = (1 - torch.exp(-cond.fog_density * dist)) * vf
        radiance = torch.lerp(radiance, _vec(cond.sky_horizon, like).expand_as(radiance), haze)
    return torch.where(valid, radiance, _sky(ray, cond)).clamp(min=0)


# ----------------------------------------------------------------------------------- randomness
def _mix_seed(seed: int, stream: int) -> int:
    """SplitMix64 of ``(seed, stream)`` to a 63-bit seed: well separated per-view streams."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) >> 1


def _seed_list(seeds: Seeds, batch: int) -> list:
    """Check ``seeds`` and return one int or ``torch.Generator`` per view."""
    if isinstance(seeds, (int, np.integer, torch.Generator)):
        seeds = [seeds]
    elif isinstance(seeds, torch.Tensor):
        if seeds.dim() > 1 or seeds.is_floating_point() or seeds.dtype == torch.bool:
            raise InputError(
                f"seeds must be a (B,) integer tensor, got {seeds.dtype} {tuple(seeds.shape)}."
            )
        seeds = seeds.reshape(-1).tolist()
    seeds = list(seeds)
    if len(seeds) != batch:
        raise InputError(
            f"pass one seed or generator per view: got {len(seeds)} for {batch} view(s)."
        )
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer, torch.Generator)):
            raise InputError(f"seeds must be ints or torch.Generators, got {type(s).__name__}.")
    return seeds


def _generators(seeds: Seeds, batch: int, device: torch.device, stream: int) -> list:
    """One ``torch.Generator`` per view: made on ``device`` from integer seeds, or as given."""
    return [
        s
        if isinstance(s, torch.Generator)
        else torch.Generator(device=device).manual_seed(_mix_seed(int(s), stream))
        for s in _seed_list(seeds, batch)
    ]


def _rand(g: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)


def _randn(g: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)


# --------------------------------------------------------------------------------- precipitation
def _splat_max(alpha: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor):
    """Bilinearly splat values ``v`` at sub-pixel points ``(x, y)`` into ``alpha`` ``(H, W)``
    in place, keeping the maximum per pixel (order-independent, hence deterministic)."""
    h, w = alpha.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    idx, val = [], []
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0.long() + dx, y0.long() + dy
        wgt = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx.append((yi * w + xi)[inside])
        val.append((v * wgt)[inside])
    alpha.view(-1).scatter_reduce_(0, torch.cat(idx), torch.cat(val), reduce="amax")


def _rain_alpha(g: torch.Generator, density: float, h: int, w: int, like: torch.Tensor):
    """Coverage ``(H, W)`` of rain streaks: thin slanted lines of random length and opacity."""
    alpha = like.new_zeros(h, w)
    n = max(1, round(density * 260 * h * w / (480 * 640)))
    slant = 0.25 * (_rand(g, 1, like=like) - 0.5)  # wind: common slant of this image (rad)
    u = _rand(g, n, 6, like=like)
    length = h * (0.03 + 0.14 * u[:, 0] ** 2)
    theta = slant + 0.05 * (u[:, 1] - 0.5)
    dx, dy = torch.sin(theta), torch.cos(theta)
    x0 = u[:, 2] * (w + 2 * h * 0.25) - h * 0.25
    y0 = u[:, 3] * (h + length) - length
    opacity = 0.18 + 0.4 * u[:, 4]
    thick = u[:, 5] < 0.3  # near drops: two pixels wide
    k = int(2 * float(length.max()) + 2)
    t = torch.linspace(0, 1, k, dtype=like.dtype, device=like.device)
    taper = torch.sin(math.pi * t).clamp(min=0).sqrt()  # (K,)
    xs = x0[:, None] + t * length[:, None] * dx[:, None]
    ys = y0[:, None] + t * length[:, None] * dy[:, None]
    v = opacity[:, None] * taper
    _splat_max(alpha, xs.flatten(), ys.flatten(), v.flatten())
    if bool(thick.any()):
        _splat_max(alpha, (xs[thick] + 0.8).flatten(), ys[thick].flatten(), v[thick].flatten())
    return alpha.clamp(0, 1)


def _snow_alpha(g: torch.Generator, density: float, h: int, w: int, like: torch.Tensor):
    """Coverage ``(H, W)`` of snow flakes: soft discs, many small sharp and few large blurred."""
    alpha = like.new_zeros(h, w)
    n = max(1, round(density * 420 * h * w / (480 * 640)))
    scale = max(h, w) / 640
    r_min, r_max = 0.7 * max(scale, 0.5), 6.0 * max(scale, 0.5)
    u = _rand(g, n, 4, like=like)
    cx, cy = u[:, 0] * w, u[:, 1] * h
    radius = r_min * (r_max / r_min) ** (u[:, 2] ** 2.5)
    near = (radius - r_min) / (r_max - r_min)  # large flakes are near and out of focus
    soft = 0.5 + 0.6 * radius * near
    opacity = (0.95 - 0.45 * near) * (0.75 + 0.25 * u[:, 3])
    reach = math.ceil(r_max + 0.5 + 0.6 * r_max) + 1
    offs = torch.arange(-reach, reach + 1, device=like.device)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    px = torch.floor(cx)[:, None] + ox.flatten().to(like.dtype)  # (N, P) pixel centres
    py = torch.floor(cy)[:, None] + oy.flatten().to(like.dtype)
    dist = torch.hypot(px - cx[:, None], py - cy[:, None])
    r, s = radius[:, None], soft[:, None]
    val = opacity[:, None] * (1 - _smoothstep(r - s, r + s, dist))
    xi, yi = px.long(), py.long()
    keep = (val > 1e-3) & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    alpha.view(-1).scatter_reduce_(0, (yi * w + xi)[keep], val[keep], reduce="amax")
    return alpha.clamp(0, 1)


# ----------------------------------------------------------------------------------------- finish
def _kelvin_rgb(kelvin: float) -> np.ndarray:
    """Approximate linear RGB of a black body (Tanner Helland's fit), unit luminance."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = (
        99.4708025861 * math.log(t) - 161.1195681661
        if t <= 66
        else 288.1221695283 * (t - 60) ** -0.0755148492
    )
    if t >= 66:
        b = 255.0
    elif t <= 19:
        b = 0.0
    else:
        b = 138.5177312231 * math.log(t - 10) - 305.0447927307
    rgb = (np.clip([r, g, b], 1.0, 255.0) / 255.0) ** 2.2
    return rgb / float(np.dot(rgb, _LUMA))


def _white_balance(kelvin: float) -> tuple[float, float, float]:
    """Per-channel gains that grade an image towards ``kelvin`` (6500 K: identity)."""
    gains = (_kelvin_rgb(kelvin) / _kelvin_rgb(6500.0)) ** 0.5
    gains = gains / float(np.dot(gains, _LUMA))
    return tuple(float(v) for v in gains)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)``, borders replicated."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    _c, h, w = img.shape
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    out = img[:, None]
    if pad_w > 0:
        out = F.pad(out, (pad_w, pad_w, 0, 0), mode="replicate")
        out = F.conv2d(out, k[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1))
    if pad_h > 0:
        out = F.pad(out, (0, 0, pad_h, pad_h), mode="replicate")
        out = F.conv2d(out, k[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1))
    return out[:, 0]


def _tonemap(x: torch.Tensor) -> torch.Tensor:
    """ACES filmic curve (Narkowicz' fit) then the sRGB transfer function; output in [0, 1]."""
    x = x.clamp(min=0)
    y = (x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)
    y = y.clamp(0, 1)
    return torch.where(y <= 0.0031308, 12.92 * y, 1.055 * y.clamp(min=1e-12) ** (1 / 2.4) - 0.055)


def _finish_one(
    rgb: torch.Tensor, cond: Condition, g: torch.Generator, outdoor: bool
) -> torch.Tensor:
    """Camera model of one view ``(3, H, W)`` -> ``(3, H, W)`` in ``[0, 1]``."""
    _, h, w = rgb.shape
    # exposure: auto exposure limited by the maximum gain, plus a random offset
    u = _rand(g, 1, like=rgb)
    lo, hi = cond.exposure_ev
    ev = lo + (hi - lo) * u
    lum = (rgb * _vec(_LUMA, rgb)[0]).sum(0)
    log_avg = torch.exp(torch.log(lum.clamp(min=0) + 1e-4).mean())
    gain = (cond.exposure_key / log_avg).clamp(max=cond.max_gain) * torch.exp2(ev)
    x = rgb * gain * _vec(_white_balance(cond.color_temperature), rgb)[0]
    # precipitation occluders, seen through the same optics as the scene
    if outdoor and cond.precipitation != "none" and cond.precipitation_density > 0:
        draw = _rain_alpha if cond.precipitation == "rain" else _snow_alpha
        alpha = draw(g, cond.precipitation_density, h, w, rgb)
        tint = (1.0, 1.0, 1.0) if cond.precipitation == "snow" else (0.92, 0.95, 1.0)
        level = cond.precipitation_brightness * _vec(tint, rgb)[0]
        x = torch.lerp(x, level.expand_as(x), alpha[None])
    if cond.blur_sigma > 0:
        x = _gaussian_blur(x, cond.blur_sigma)
    # sensor noise: shot noise grows with the signal, read noise does not
    sigma = torch.sqrt(cond.read_noise**2 + cond.shot_noise * x.clamp(min=0))
    x = x + sigma * _randn(g, 3, h, w, like=rgb)
    return _tonemap(x)


def finish(
    rgb: torch.Tensor, condition: str | Condition, seeds: Seeds, *, outdoor: bool = True
) -> torch.Tensor:
    """Camera images in ``[0, 1]`` from linear radiance at the final resolution.

    Per view: exposure (auto exposure to ``condition.exposure_key`` capped at ``max_gain``, and a
    random offset from ``exposure_ev``), white balance (``color_temperature``), precipitation
    occluders (outdoors), blur, shot and read noise, ACES tone mapping and sRGB gamma.

    Args:
        rgb: ``(B, 3, H, W)`` linear radiance, e.g. :func:`shade` area-downsampled.
        condition: a :class:`Condition` or its name.
        seeds: one integer per view (a ``(B,)`` tensor or sequence; a bare int for ``B == 1``),
            or one ``torch.Generator`` per view (used as given, and advanced). A view's image
            depends only on its own seed and radiance, never on the rest of the batch.
        outdoor: draw precipitation (rooms have none).
    Returns:
        ``(B, 3, H, W)`` display-referred sRGB in ``[0, 1]``, ``rgb``'s dtype and device.
    """
    cond = get_condition(condition)
    if not isinstance(rgb, torch.Tensor) or rgb.dim() != 4 or rgb.shape[1] != 3:
        shape = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise ShapeError(f"rgb must have shape (B, 3, H, W), got {shape}.")
    if not rgb.is_floating_point():
        raise InputError(f"rgb must be floating point linear radiance, got {rgb.dtype}.")
    gens = _generators(seeds, rgb.shape[0], rgb.device, stream=1)
    if rgb.shape[0] == 0:
        return rgb.clone()
    return torch.stack([_finish_one(rgb[b], cond, g, outdoor) for b, g in enumerate(gens)])


# ---------------------------------------------------------------------------------------- output
def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` (or ``(3, H, W)``) images in ``[0, 1]`` -> ``(B, H, W, 3)`` (or
    ``(H, W, 3)``) uint8 on the same device, rounded to nearest."""
    if not isinstance(rgb, torch.Tensor) or rgb.dim() not in (3, 4) or rgb.shape[-3] != 3:
        shape = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise ShapeError(f"rgb must have shape (B, 3, H, W) or (3, H, W), got {shape}.")
    out = (rgb.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
    return out.movedim(-3, -1).contiguous()


def condition_grid(
    images: Mapping[str, torch.Tensor], columns: int = 5, *, label_height: int | None = None
) -> torch.Tensor:
    """Tile labelled images, e.g. one view under every condition, for documentation.

    Args:
        images: name -> ``(3, H, W)`` image in ``[0, 1]``, all the same size; tiles follow the
            mapping's order, row by row.
        columns: tiles per row.
        label_height: height of the label band above each tile (default ``max(14, H // 12)``).
    Returns:
        ``(3, H', W')`` float image in ``[0, 1]`` on the first image's device; tiles are
        separated by 2-pixel gaps and captioned with their names (``cv2.putText``).
    """
    if not images:
        raise InputError("condition_grid needs at least one image.")
    if columns < 1:
        raise InputError(f"columns must be >= 1, got {columns}.")
    first = next(iter(images.values()))
    for name, im in images.items():
        if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
            raise ShapeError(f"image {name!r} must have shape (3, H, W).")
        if im.shape != first.shape:
            raise ShapeError(
                f"image {name!r} has shape {tuple(im.shape)}, expected {tuple(first.shape)}."
            )
    _, h, w = first.shape
    band = label_height or max(14, h // 12)
    gap = 2
    rows = math.ceil(len(images) / columns)
    cols = min(columns, len(images))
    tile_h, tile_w = h + band, w
    canvas = np.zeros((rows * tile_h + (rows - 1) * gap, cols * tile_w + (cols - 1) * gap, 3))
    scale = band / 30.0
    thickness = max(1, round(band / 16))
    for i, (name, im) in enumerate(images.items()):
        r, c = divmod(i, columns)
        y, x = r * (tile_h + gap), c * (tile_w + gap)
        canvas[y + band : y + tile_h, x : x + tile_w] = (
            im.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        )
        label = np.zeros((band, tile_w, 3), dtype=np.uint8)
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        fit = min(1.0, (tile_w - 4) / max(tw, 1))
        cv2.putText(
            label,
            name,
            (2, int(band / 2 + th * fit / 2)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale * fit,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
        canvas[y : y + band, x : x + tile_w] = label / 255.0
    return torch.from_numpy(canvas).permute(2, 0, 1).to(device=first.device, dtype=first.dtype)
