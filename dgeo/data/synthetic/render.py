"""A batched torch ray caster for scenes of textured quads: exact, tiled, CPU or CUDA.

Every pixel centre ``(x, y)`` (dgeo convention, top-left pixel centre at (0, 0)) is unprojected
through the camera, distortion included, to a ray ``r = (x_n, y_n, 1)`` in the camera frame. A ray
hits quad ``q`` at depth ``t`` (the camera-frame ``z``, as ``r_z = 1``) and quad coordinates
``(a, b)``; solving ``t r = o + a u + b v`` (quad in the camera frame) by Cramer's rule gives,
with ``n = u x v`` and ``N = o . n``::

    w = 1 / t = r . n / N,     a w = r . (v x o) / N,     b w = r . (o x u) / N

all *linear* in ``r``. The ray hits iff ``0 <= a w <= w`` and ``0 <= b w <= w`` (which implies
``w > 0``, i.e. in front), the homogeneous edge functions of a rasteriser. Per view and quad the
three forms ``h = w / 2``, ``c_a = a w - h``, ``c_b = b w - h`` are set up once in float64; a hit
is ``max(|c_a|, |c_b|) <= h`` and the nearest hit has the largest ``h``. No division, no special
case for quads behind or straddling the camera.

Culling is conservative, so the result is that of testing every ray against every quad
(``cull=False``, up to float32 rounding of the batched products near edges and ties):

* the image is cut into ``tile x tile`` pixel tiles; each tile bounds the normalised coordinates
  of its actual (undistorted) rays by a box, so any distortion is handled exactly;
* a (tile, quad) pair survives if every edge form and ``h`` can be > 0 somewhere in the box and,
  for quads wholly in front of the camera, the quad's projected bounding box meets the box (for
  those quads this is the separating-axis test: exact up to the margins);
* a quad that covers a whole tile occludes every quad whose largest ``w`` over the box is below
  its smallest;

each bound widened by a relative margin far above float32 rounding. Tiles are sorted by their
candidate count (one or two per tile in a street) and processed in chunks padded to the chunk's
largest count, one batched matrix product per chunk. Undistorted rays and their tiling are
cached per camera (exact undistortion costs ~1 us a pixel; a trajectory reuses one camera).

Textures follow :mod:`dgeo.data.synthetic.textures`: texel (column ``i``, row ``j``) holds
``(u, v) = (i / T, j / T)``, with ``(u, v) = (a * repeat_u, b * repeat_v)`` wrapped into
``[0, 1)``. The winner's albedo is read with :func:`dgeo.geometry.sample` (the one place that
meets ``grid_sample``) from an atlas of all textures, each extended by its own first row and
column, so bilinear filtering wraps across seams and never bleeds between materials.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dgeo.data.synthetic.scene import GBuffer, Scene
from dgeo.errors import InputError, ShapeError, require_finite
from dgeo.geometry import Camera, Pose, sample

#: relative widening of every culling bound (float32 rounding is ~6e-8)
_MARGIN = 1e-5
_NEVER = [[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # forms of no hit
_RAY_CACHE: OrderedDict[tuple, _Rays] = OrderedDict()
_RAY_CACHE_SIZE = 4
TILE = 32  #: default tile size in pixels


def make_rays(
    camera: Camera, cam_from_world: Pose, return_valid: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres of ``B`` views in the world frame.

    Args:
        camera: batch shape ``()`` or ``(B,)``, one image size ``W x H`` for all.
        cam_from_world: poses of batch shape ``(B,)``.
        return_valid: also return where unprojection succeeded.
    Returns:
        origins ``(B, 3)`` (camera centres), directions ``(B, H, W, 3)`` float32 scaled to unit
        camera-frame depth (``origin + t * dir`` lies at z-depth ``t``) [, valid ``(B, H, W)``].
    """
    camera, pose, (h, w) = _check_views(camera, cam_from_world)
    rays = _camera_rays(camera, h, w, TILE, pose.device)
    dirs = pose.R.float().transpose(-1, -2) @ rays.r  # (B, 3, H*W): R^T r
    dirs = dirs.transpose(1, 2).reshape(len(pose), h, w, 3)
    valid = rays.ok.expand(len(pose), -1, -1)
    return (pose.center().float(), dirs, valid) if return_valid else (pose.center().float(), dirs)


def raycast(
    scene: Scene,
    camera: Camera,
    cam_from_world: Pose,
    *,
    tile: int = TILE,
    chunk_size: int = 1 << 20,
    cull: bool = True,
) -> GBuffer:
    """Ray-cast ``B`` views of a scene of quads (not differentiable).

    Args:
        scene: the quads and textures; its device sets the device of the result.
        camera: batch shape ``()`` or ``(B,)``, one image size ``W x H`` for all views, any
            model (distortion included); a shared camera is unprojected once, and cached.
        cam_from_world: poses of batch shape ``(B,)`` (or ``()`` for one view), on the scene's
            device.
        tile: tile size in pixels for culling.
        chunk_size: ray-quad tests per batched step (bounds memory: ~20 bytes each).
        cull: ``False`` tests every ray against every quad (the brute-force reference).
    Returns:
        a :class:`GBuffer` of ``B`` views of ``H x W`` pixels, float32, on the scene's device;
        pixels whose ray could not be unprojected (beyond the fold of strong distortion) are
        invalid with a zero ``ray_dir``.
    Raises:
        InputError / ShapeError: naming ``scene``, ``camera`` or ``cam_from_world``.
    """
    if not isinstance(scene, Scene):
        raise InputError(f"scene must be a dgeo Scene, got {type(scene).__name__}.")
    if tile < 1 or chunk_size < 1:
        raise InputError(f"tile ({tile}) and chunk_size ({chunk_size}) must be positive.")
    device = scene.origin.device
    camera, pose, (h, w) = _check_views(camera, cam_from_world)
    if pose.device != device:
        raise InputError(f"cam_from_world is on {pose.device} but the scene on {device}; move one.")
    with _ieee_matmul():  # TF32/bf16 matmuls would break the culling margins and the edges
        return _raycast(scene, camera, pose, h, w, tile, chunk_size, cull)


@contextmanager
def _ieee_matmul():
    """Full float32 precision for matrix products inside, whatever the global setting."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _raycast(
    scene: Scene, camera: Camera, pose: Pose, h: int, w: int, tile: int, chunk: int, cull: bool
) -> GBuffer:
    """:func:`raycast` after the input checks."""
    device = scene.origin.device
    B, Q = len(pose), scene.num_quads
    rays = _camera_rays(camera, h, w, tile, device)
    forms, face_normal, qbox = _quad_forms(scene, pose)  # (B, Q, 3, 3), (B, Q, 3), (B, Q, 4)
    Bc, nt = rays.box.shape[:2]
    if cull and Q:
        keep = torch.stack([_cull(forms[b], qbox[b], rays.box[b % Bc]) for b in range(B)])
    else:
        keep = torch.ones(B, nt, Q, dtype=torch.bool, device=device)
    keep &= rays.tile_ok.expand(B, -1)[..., None]  # (B, NT, Q)
    quad, vals = _trace(forms.flatten(0, 1), rays.tiles, keep.flatten(0, 1), Bc, chunk)
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile
    quad = _from_tiles(quad.view(B, nt, -1, 1), tile, hp, wp)[:, 0, :h, :w]  # (B, H, W)
    quad = torch.where(rays.ok, quad, -1)
    vals = _from_tiles(vals.view(B, nt, -1, 3), tile, hp, wp)[..., :h, :w]  # (B, 3, H, W)
    return _shade(scene, pose, rays.r, rays.ok, quad, vals, face_normal)


# ---------------------------------------------------------------------------- inputs and rays
def _check_views(camera: Camera, pose: Pose) -> tuple[Camera, Pose, tuple[int, int]]:
    """Validate the view batch; returns the camera, poses ``(B,)`` and the image size."""
    if not isinstance(pose, Pose):
        raise InputError(f"cam_from_world must be a dgeo Pose, got {type(pose).__name__}.")
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a dgeo Camera, got {type(camera).__name__}.")
    if len(pose.shape) > 1:
        raise ShapeError(f"cam_from_world must have batch shape (B,), got {tuple(pose.shape)}.")
    pose = pose.reshape(1) if len(pose.shape) == 0 else pose
    require_finite(pose.data, "cam_from_world")
    if len(camera.shape) > 1 or (len(camera.shape) == 1 and camera.shape[0] != len(pose)):
        raise ShapeError(
            f"camera must have batch shape () or ({len(pose)},) to match cam_from_world, got "
            f"{tuple(camera.shape)}."
        )
    size = camera.size.reshape(-1, 2)
    if bool((size != size[:1]).any()) or bool((size != size.round()).any()):
        raise InputError(
            f"camera width/height must be whole numbers equal for the whole batch, got "
            f"{size.unique(dim=0).tolist()}; render different sizes in separate calls."
        )
    return camera, pose, (int(size[0, 1]), int(size[0, 0]))


class _Rays(NamedTuple):
    """Camera rays of ``Bc`` cameras (1 when shared by all views), and their tiling."""

    r: torch.Tensor  # (Bc, 3, H*W) float32 (x_n, y_n, 1)
    ok: torch.Tensor  # (Bc, H, W) bool, unprojection converged (else r = (0, 0, 1))
    tiles: torch.Tensor  # (Bc*NT, P, 3) tile rays, padded by repeating the last row/column
    box: torch.Tensor  # (Bc, NT, 4) centre x, y and half-widths of each tile's good rays
    tile_ok: torch.Tensor  # (Bc, NT) tile has a good ray


def _camera_rays(camera: Camera, h: int, w: int, tile: int, device: torch.device) -> _Rays:
    """Unproject all pixel centres in float64 and tile them; cached per camera and tile size,
    since exact undistortion costs ~1 us a pixel and a trajectory reuses one camera."""
    camera = camera.to(device=device, dtype=torch.float64)
    key = (camera.model, str(device), h, w, tile, tuple(camera.params.flatten().tolist()))
    if key in _RAY_CACHE:
        _RAY_CACHE.move_to_end(key)
        return _RAY_CACHE[key]
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float64),
        torch.arange(w, device=device, dtype=torch.float64),
        indexing="ij",
    )
    uv = (
        torch.stack([xs, ys], -1)
        .reshape(1, h * w, 2)
        .expand(camera.shape[0] if camera.shape else 1, -1, -1)
    )
    rays, ok = camera.unproject(uv, return_valid=True)
    ok = (ok & torch.isfinite(rays).all(-1)).reshape(-1, h, w)
    xy = torch.where(ok[..., None], rays[..., :2].float().reshape(-1, h, w, 2), 0.0)
    # tiles of (Bc, NT, P): clamped padding repeats the last row and column
    rows = torch.arange(-(-h // tile) * tile, device=device).clamp(max=h - 1)
    cols = torch.arange(-(-w // tile) * tile, device=device).clamp(max=w - 1)
    txy, tok = (_to_tiles(m[:, rows][:, :, cols], tile) for m in (xy, ok))
    inf = torch.tensor(torch.inf, device=device)
    lo = torch.where(tok[..., None], txy, inf).amin(2)
    hi = torch.where(tok[..., None], txy, -inf).amax(2)
    tile_ok = tok.any(-1)
    lo, hi = torch.where(tile_ok[..., None], lo, 0.0), torch.where(tile_ok[..., None], hi, 0.0)
    box = torch.cat([(lo + hi) / 2, (hi - lo) / 2], -1)
    one = torch.ones_like(txy[..., :1])
    out = _Rays(
        r=torch.cat([xy, torch.ones_like(xy[..., :1])], -1).flatten(1, 2).transpose(1, 2),
        ok=ok,
        tiles=torch.cat([txy, one], -1).flatten(0, 1),
        box=box,
        tile_ok=tile_ok,
    )
    _RAY_CACHE[key] = out
    while len(_RAY_CACHE) > _RAY_CACHE_SIZE:
        _RAY_CACHE.popitem(last=False)
    return out


def _quad_forms(scene: Scene, pose: Pose) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per view and quad: the forms ``(B, Q, 3, 3)`` (rows ``h, c_a, c_b``; columns the
    coefficients of ``x_n, y_n, 1``), camera-facing world normals ``(B, Q, 3)`` and the projected
    bounding boxes ``(B, Q, 4)`` ``(x_min, y_min, x_max, y_max)`` (infinite unless the quad lies
    wholly in front). Quads that no ray can hit get forms that never hit."""
    R, t = pose.R.double(), pose.t.double()
    o = torch.einsum("bij,qj->bqi", R, scene.origin.double()) + t[:, None]
    u = torch.einsum("bij,qj->bqi", R, scene.edge_u.double())
    v = torch.einsum("bij,qj->bqi", R, scene.edge_v.double())
    n = torch.linalg.cross(u, v)
    N = (o * n).sum(-1, keepdim=True)
    corners = torch.stack([o, o + u, o + v, o + u + v], -2)  # (B, Q, 4, 3)
    z = corners[..., 2]
    ok = (N.abs() > 1e-6 * n.norm(dim=-1, keepdim=True)) & (z.amax(-1, keepdim=True) > 0)
    N = torch.where(ok, N, 1.0)
    hw = n / (2 * N)
    forms = torch.stack(
        [hw, torch.linalg.cross(v, o) / N - hw, torch.linalg.cross(o, u) / N - hw], -2
    )
    forms = torch.where(ok[..., None], forms, forms.new_tensor(_NEVER))
    front = z.amin(-1, keepdim=True) > 1e-9
    proj = corners[..., :2] / torch.where(front, z, 1.0)[..., None]
    inf = torch.full_like(proj[..., 0, :], torch.inf)
    qbox = torch.cat(
        [torch.where(front, proj.amin(-2), -inf), torch.where(front, proj.amax(-2), inf)], -1
    )
    normal = F.normalize(torch.linalg.cross(scene.edge_u, scene.edge_v).double(), dim=-1)
    face = -torch.sign(N) * normal  # N > 0: the normal points away from the camera
    return forms.float(), face.float(), qbox.float()


def _to_tiles(m: torch.Tensor, s: int) -> torch.Tensor:
    """``(Bc, Hp, Wp, *C)`` -> ``(Bc, NT, s*s, *C)`` tiles in row-major tile order."""
    b, hp, wp = m.shape[:3]
    c = m.shape[3:]
    m = m.reshape(b, hp // s, s, wp // s, s, *c).transpose(2, 3)
    return m.reshape(b, (hp // s) * (wp // s), s * s, *c)


def _from_tiles(m: torch.Tensor, s: int, hp: int, wp: int) -> torch.Tensor:
    """Inverse of :func:`_to_tiles` to channel-first: ``(B, NT, s*s, C)`` -> ``(B, C, Hp, Wp)``."""
    b, c = m.shape[0], m.shape[-1]
    m = m.reshape(b, hp // s, wp // s, s, s, c).permute(0, 5, 1, 3, 2, 4)
    return m.reshape(b, c, hp, wp)


def _cull(forms: torch.Tensor, qbox: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Conservative candidate mask ``(NT, Q)`` of one view: forms ``(Q, 3, 3)``, projected quad
    boxes ``(Q, 4)``, tile boxes ``(NT, 4)``."""
    h, ca, cb = forms.unbind(-2)
    g = torch.stack([h, h - ca, h + ca, h - cb, h + cb], 0)  # (5, Q, 3): h and the 4 edges
    g = g.flatten(0, 1).T  # (3, 5Q)
    c, half = box[:, :2], box[:, 2:]
    mid = c @ g[:2] + g[2]  # (NT, 5Q) value at the box centre
    spread = half @ g[:2].abs()
    margin = _MARGIN * ((c.abs() + half) @ g[:2].abs() + g[2].abs())
    lo = (mid - spread - margin).view(-1, 5, forms.shape[0])
    hi = (mid + spread + margin).view(-1, 5, forms.shape[0])
    keep = (hi > 0).all(1)
    lo_xy, hi_xy = c - half, c + half
    pad = _MARGIN * (1 + c.abs() + half)
    keep &= ((qbox[:, :2] <= (hi_xy + pad)[:, None]) & (qbox[:, 2:] >= (lo_xy - pad)[:, None])).all(
        -1
    )
    covers = (lo > 0).all(1)  # every ray of the tile hits, at w/2 >= lo[h]
    occluder = torch.where(covers, lo[:, 0], 0.0).amax(-1, keepdim=True)
    return keep & (hi[:, 0] >= occluder)


def _trace(
    forms: torch.Tensor, rays: torch.Tensor, keep: torch.Tensor, Bc: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hits of tiles of rays among their candidate quads.

    Args:
        forms: ``(B*Q, 3, 3)`` per view and quad; rays ``(Bc*NT, P, 3)`` tile rays; keep
            ``(B*NT, Q)`` candidate mask; ``Bc`` cameras (1 if shared); chunk: tests per step.
    Returns:
        hit quad ``(B*NT, P)`` int64 (-1 for none) and the hit's forms ``(B*NT, P, 3)``
        ``(h, c_a, c_b)`` (``h = 0`` for none).
    """
    n_tiles, Q = keep.shape
    nt, P = rays.shape[0] // Bc, rays.shape[1]
    device = forms.device
    best = torch.full((n_tiles, P), -1, dtype=torch.int64, device=device)
    vals = torch.zeros(n_tiles, P, 3, device=device)
    count, order = torch.sort(keep.sum(-1), descending=True, stable=True)
    counts = count.tolist()
    if not counts or counts[0] == 0:
        return best, vals
    forms = torch.cat([forms, forms.new_tensor(_NEVER)[None]])  # last row: padding, never hits
    pairs = keep[order].nonzero()[:, 1]  # candidate quads, tile by tile in sorted order
    start = torch.cumsum(count, 0) - count
    i = 0
    while i < n_tiles and counts[i] > 0:
        k = counts[i]
        n = min(max(1, chunk // (k * P)), n_tiles - i)
        sel = order[i : i + n]
        slot = torch.arange(k, device=device)
        has = slot < count[i : i + n, None]
        cand = pairs[(start[i : i + n, None] + slot).clamp(max=len(pairs) - 1)]  # (n, k)
        row = torch.where(has, torch.div(sel, nt, rounding_mode="floor")[:, None] * Q + cand, -1)
        m = forms[row].permute(0, 3, 2, 1).reshape(n, 3, 3 * k)  # (n, xyz, form * k)
        out = torch.bmm(rays[sel % (nt * Bc)], m)  # (n, P, 3k)
        h, ca, cb = out.split(k, -1)
        edge = ca.abs()
        torch.maximum(edge, cb.abs(), out=edge)
        h = h.masked_fill(edge > h, 0.0)  # h > 0 where hit: max(|c_a|, |c_b|) <= h
        h_best, arg = h.max(-1, keepdim=True)  # (n, P, 1)
        best[sel] = torch.where(h_best[..., 0] > 0, cand.gather(1, arg[..., 0]), -1)
        vals[sel] = torch.cat([h_best, ca.gather(-1, arg), cb.gather(-1, arg)], -1)
        i += n
    return best, vals


# ---------------------------------------------------------------------------- shading
def _shade(
    scene: Scene,
    pose: Pose,
    r: torch.Tensor,
    ray_ok: torch.Tensor,
    quad: torch.Tensor,
    vals: torch.Tensor,
    face_normal: torch.Tensor,
) -> GBuffer:
    """Fill the G-buffer view by view in channel-first planes.

    Args:
        r: ``(Bc, 3, H*W)`` camera-frame rays ``(x_n, y_n, 1)``; ray_ok: ``(Bc, H, W)`` where
            they are defined; quad: ``(B, H, W)`` hit quads
            (-1 for none); vals: ``(B, 3, H, W)`` the hit's ``(h, c_a, c_b)``; face_normal:
            ``(B, Q, 3)`` camera-facing world normals.
    """
    B, h, w = quad.shape
    Q, dev = scene.num_quads, quad.device
    valid = quad >= 0
    g = GBuffer(
        depth=torch.empty(B, 1, h, w, device=dev),
        valid=valid[:, None],
        points=torch.empty(B, 3, h, w, device=dev),
        normal=torch.empty(B, 3, h, w, device=dev),
        albedo=torch.empty(B, 3, h, w, device=dev),
        material=torch.empty(B, 1, h, w, dtype=torch.int64, device=dev),
        quad=quad[:, None],
        ray_dir=torch.empty(B, 3, h, w, device=dev),
    )
    # per view and quad: camera-facing normal, texture repeats and material; a last row of
    # zeros, material -1 and a black texture for the pixels that hit nothing
    attrs = torch.cat([face_normal, scene.tex_repeat.expand(B, -1, -1)], -1).flatten(0, 1)
    attrs = torch.cat([attrs, attrs.new_zeros(1, 5)])
    material = torch.cat([scene.material, scene.material.new_tensor([-1])])
    textures = scene.textures
    atlas = _atlas(textures, black=True)
    zero = torch.zeros((), device=dev)
    for b in range(B):
        ok = valid[b].flatten()
        q = torch.where(ok, quad[b].flatten(), Q)
        hw, ca, cb = vals[b].flatten(1)
        d = pose.R[b].float().T @ r[b % len(r)]  # (3, HW) world directions, camera z = 1
        ray_dir = g.ray_dir[b].view(3, -1)
        torch.mul(d, d.square().sum(0).rsqrt() * ray_ok[b % len(r)].flatten(), out=ray_dir)
        depth = g.depth[b].view(-1)
        torch.where(ok, 0.5 / hw, zero, out=depth)
        points = torch.addcmul(pose.center()[b].float()[:, None], depth, d)
        torch.where(ok, points, zero, out=g.points[b].view(3, -1))
        at = attrs[torch.where(ok, b * Q + q, len(attrs) - 1)]  # (HW, 5)
        g.normal[b] = at[:, :3].T.view(3, h, w)
        m = material[q]
        g.material[b] = m.view(1, h, w)
        ab = torch.stack([ca * depth, cb * depth], -1).add_(0.5).clamp_(0, 1)  # a = c_a t + 1/2
        texcoord = ab * at[:, 3:]
        albedo = _lookup(atlas, textures.shape[-2:], torch.where(ok, m, len(textures)), texcoord)
        g.albedo[b] = albedo.T.view(3, h, w)
    return g


def texture_lookup(
    textures: torch.Tensor, material: torch.Tensor, uv: torch.Tensor
) -> torch.Tensor:
    """Bilinear, periodic lookup of material textures.

    Args:
        textures: ``(M, C, T_h, T_w)``; texel (column ``i``, row ``j``) holds the texture at
            ``(u, v) = (i / T_w, j / T_h)``, as :mod:`dgeo.data.synthetic.textures` draws them.
        material: ``(...)`` int64 texture index per lookup.
        uv: ``(..., 2)`` texture coordinates; wrapped into ``[0, 1)``, and the filter wraps
            across the texture's borders (last column into the first, last row into the first).
    Returns:
        ``(..., C)`` values.
    """
    return _lookup(_atlas(textures), textures.shape[-2:], material, uv)


def _atlas(textures: torch.Tensor, black: bool = False) -> torch.Tensor:
    """``(1, C, M' * (T_h + 1), T_w + 1)``: the textures stacked, each extended by its first row
    and column, so bilinear taps never leave a texture and wrap around its borders; with
    ``black``, one more texture of zeros (``M' = M + 1``)."""
    m, c, th, tw = textures.shape
    atlas = textures.new_zeros(c, m + black, th + 1, tw + 1)
    tex = textures.transpose(0, 1)
    atlas[:, :m, :th, :tw] = tex
    atlas[:, :m, th, :tw] = tex[:, :, 0]
    atlas[:, :m, :, tw] = atlas[:, :m, :, 0]
    return atlas.reshape(1, c, (m + black) * (th + 1), tw + 1)


def _lookup(
    atlas: torch.Tensor, size: tuple[int, int], material: torch.Tensor, uv: torch.Tensor
) -> torch.Tensor:
    """Bilinear lookup in an :func:`_atlas` through :func:`dgeo.geometry.sample` (the one place
    that meets ``grid_sample``): atlas pixel ``(u T_w, m (T_h + 1) + v T_h)``."""
    th, tw = size
    uv = torch.remainder(uv.float(), 1.0)
    x = uv[..., 0] * tw
    y = material * (th + 1) + uv[..., 1] * th
    values, _ = sample(atlas, torch.stack([x, y], -1).reshape(1, -1, 2))
    return values.reshape(*uv.shape[:-1], atlas.shape[1])
