"""Dense correspondences between views with known depth and poses, with an occlusion check.

Every pixel centre of view ``a`` is lifted with its depth, moved into view ``b`` and projected
(:func:`warp_points`). It is *visible* in ``b`` (:func:`correspondences`) when ``b``'s own depth
around the projection confirms it: the point lies on the surface ``b`` sees there, or in front
of everything ``b`` sees around it. A point behind a nearer surface of ``b`` (occluded), or next
to a pixel of ``b`` where nothing was hit (sky), is not visible.

``b``'s depth is interpolated as *inverse* depth, bilinearly between the four neighbouring pixel
centres: inverse depth is affine in pixel coordinates on any plane, so on the planar surfaces of
the synthetic world the interpolation is exact and the check can be tight however slanted the
surface. Across a depth edge the four neighbours mix two surfaces: a point on the near side is
still accepted (nothing in front of it), one on the far side is conservatively rejected rather
than possibly matched through an occluder.
"""

from __future__ import annotations

import torch

from dgeo.errors import InputError, require_shape
from dgeo.geometry import Camera, Pose, sample

_GRID_SLACK = 1e-4  # pixels beyond b's outermost pixel centres still counted on them


def pixel_grid(
    height: int, width: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """Pixel centres ``(H, W, 2)`` as ``(x, y)``, top-left pixel centre at (0, 0)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys], -1)


def _check_depth(depth: torch.Tensor, name: str) -> None:
    require_shape(depth, name, last=[1, None, None], min_dim=4)
    if depth.dim() != 4:
        raise InputError(f"{name} must have shape (B, 1, H, W), got {tuple(depth.shape)}.")
    if not depth.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {depth.dtype}.")


def _check_view(camera: Camera, pose: Pose, b: int, which: str) -> None:
    if not isinstance(camera, Camera) or not isinstance(pose, Pose):
        raise InputError(f"camera_{which} must be a dgeo Camera and pose_{which} a dgeo Pose.")
    for what, shape in (("camera", camera.shape), ("pose", pose.shape)):
        if tuple(shape) not in ((), (b,), (1,)):
            raise InputError(
                f"{what}_{which} must have batch shape () or ({b},) to match the depth maps, "
                f"got {tuple(shape)}."
            )


def warp_points(
    depth_a: torch.Tensor,
    camera_a: Camera,
    pose_a: Pose,
    camera_b: Camera,
    pose_b: Pose,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp every pixel centre of view ``a`` into view ``b`` with ``a``'s depth.

    Args:
        depth_a: ``(B, 1, H, W)`` z-depth of view ``a`` (0 or negative where unknown).
        camera_a, camera_b: :class:`Camera` of batch shape ``()`` or ``(B,)``.
        pose_a, pose_b: ``cam_from_world`` :class:`Pose` of batch shape ``()`` or ``(B,)``.
    Returns:
        ``uv_b`` ``(B, H, W, 2)`` pixels in ``b``; ``z_b`` ``(B, H, W)`` depth of the points in
        ``b``'s frame; ``valid`` ``(B, H, W)``: ``depth_a`` positive and finite, the point in
        front of ``b`` (inside its distortion domain) and inside ``b``'s image
        (:meth:`Camera.in_image`). Computed in ``depth_a``'s dtype on its device; ``uv_b`` and
        ``z_b`` are finite but meaningless where not valid.
    """
    _check_depth(depth_a, "depth_a")
    b, _, h, w = depth_a.shape
    _check_view(camera_a, pose_a, b, "a")
    _check_view(camera_b, pose_b, b, "b")
    dtype, device = depth_a.dtype, depth_a.device
    uv_a = pixel_grid(h, w, dtype, device).reshape(1, h * w, 2).expand(b, -1, -1)
    rays, ok_rays = camera_a.to(device, dtype).unproject(uv_a, return_valid=True)
    z_a = depth_a.reshape(b, h * w, 1)
    ok_depth = torch.isfinite(z_a[..., 0]) & (z_a[..., 0] > 0)
    p_a = rays * torch.where(ok_depth[..., None], z_a, torch.ones_like(z_a))
    b_from_a = pose_b.to(device) @ pose_a.to(device).inv()
    p_b = b_from_a.transform(p_a)
    uv_b, ok_proj = camera_b.to(device, dtype).project(p_b)
    valid = ok_depth & ok_rays & ok_proj
    return uv_b.reshape(b, h, w, 2), p_b[..., 2].reshape(b, h, w), valid.reshape(b, h, w)


def correspondences(
    depth_a: torch.Tensor,
    camera_a: Camera,
    pose_a: Pose,
    depth_b: torch.Tensor,
    camera_b: Camera,
    pose_b: Pose,
    rel_tol: float = 0.01,
    abs_tol: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of view ``a`` appears in view ``b``, and whether it is seen there.

    A warped point (:func:`warp_points`) with depth ``z_b`` lands between four pixel centres of
    ``b``, all of which must have a known (positive) depth. It is visible when either

    * the bilinearly interpolated inverse depth of the four agrees with ``z_b`` within
      ``tol = abs_tol + rel_tol * z_b`` (the point lies on the surface that ``b`` sees there;
      exact on planes, however slanted), or
    * ``z_b`` is at most the nearest of the four depths plus ``tol`` (the point is in front of
      everything ``b`` sees around it: the near side of a depth edge).

    A point behind one of the four (the far side of a depth edge, or occluded) is not visible.
    Occluders thinner than a pixel that fall between ``b``'s pixel centres cannot be seen in a
    depth map and are missed. Points in the half-pixel ring between ``b``'s outermost pixel
    centres and its image border are not visible (``b``'s depth cannot be interpolated there).

    Args:
        depth_a: ``(B, 1, H, W)`` z-depth of view ``a``, 0 where unknown.
        camera_a, pose_a: view ``a`` (batch shape ``()`` or ``(B,)``; ``cam_from_world``).
        depth_b: ``(B, 1, H', W')`` z-depth of view ``b`` (the size of ``camera_b``), 0 where
            unknown (nothing hit).
        camera_b, pose_b: view ``b``.
        rel_tol, abs_tol: depth agreement tolerance, relative and in metres.
    Returns:
        ``uv_b`` ``(B, H, W, 2)`` and ``visible`` ``(B, H, W)`` bool.
    """
    _check_depth(depth_b, "depth_b")
    uv_b, z_b, valid = warp_points(depth_a, camera_a, pose_a, camera_b, pose_b)
    b, h, w = valid.shape
    if depth_b.shape[0] != b:
        raise InputError(
            f"depth_b has batch size {depth_b.shape[0]}, depth_a {b}; pass one b per a."
        )
    visible = visible_at(depth_b, uv_b.reshape(b, h * w, 2), z_b.reshape(b, -1), rel_tol, abs_tol)
    return uv_b, valid & visible.reshape(b, h, w)


def pixel_neighbours(maps: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of the four pixels around sub-pixel points (clamped to the map).

    Args:
        maps: ``(B, C, H, W)``.
        uv: ``(B, N, 2)`` pixels.
    Returns:
        ``(B, N, C, 4)`` values at ``(x0, y0)``, ``(x0 + 1, y0)``, ``(x0, y0 + 1)``,
        ``(x0 + 1, y0 + 1)`` with ``x0 = floor(x)``, and ``(B, N)``: whether the point lies on the
        pixel-centre grid ``[0, W - 1] x [0, H - 1]`` (up to rounding).
    """
    b, c, h, w = maps.shape
    hi = uv.new_tensor([w - 1.0, h - 1.0])
    finite = torch.isfinite(uv).all(-1, keepdim=True)
    uv = torch.where(finite, uv.detach(), -1.0)  # off the grid, but safe to index
    clamped = torch.minimum(torch.maximum(uv, torch.zeros_like(hi)), hi)
    on_grid = ((clamped - uv).abs() <= _GRID_SLACK).all(-1)
    x0, y0 = clamped[..., 0].floor().long(), clamped[..., 1].floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], -1).reshape(b, 1, -1)
    values = maps.flatten(2).gather(2, idx.expand(b, c, -1))
    return values.reshape(b, c, *uv.shape[1:-1], 4).movedim(1, -2), on_grid


def visible_at(
    depth: torch.Tensor,
    uv: torch.Tensor,
    z: torch.Tensor,
    rel_tol: float = 0.01,
    abs_tol: float = 0.02,
) -> torch.Tensor:
    """Whether points at depth ``z`` projecting to ``uv`` are seen in a depth map.

    The point lands between four pixel centres, all of which must have a known (positive)
    depth. It is visible when either the bilinearly interpolated inverse depth of the four
    agrees with ``z`` within ``tol = abs_tol + rel_tol * z`` (the point lies on the surface seen
    there; exact on planes, however slanted), or ``z`` is at most the nearest of the four depths
    plus ``tol`` (the near side of a depth edge). A point behind one of the four (the far side of
    an edge, or occluded) is not visible. Occluders thinner than a pixel that fall between pixel
    centres cannot be seen in a depth map and are missed.

    Args:
        depth: ``(B, 1, H, W)`` z-depth, 0 (or non-finite) where unknown.
        uv: ``(B, N, 2)`` pixels.
        z: ``(B, N)`` the points' depths in that view.
        rel_tol, abs_tol: depth agreement tolerance, relative and in metres.
    Returns:
        ``(B, N)`` bool.
    """
    _check_depth(depth, "depth")
    depth = depth.to(uv.device, uv.dtype)
    known = torch.isfinite(depth) & (depth > 0)
    inv = torch.where(known, 1 / torch.where(known, depth, torch.ones_like(depth)), 0)
    values, _ = sample(inv, uv)
    z_s = 1 / values[..., 0].clamp_min(torch.finfo(inv.dtype).tiny)
    corners, on_grid = pixel_neighbours(torch.cat([depth, known.to(depth.dtype)], 1), uv)
    near = torch.where(corners[..., 1, :] > 0, corners[..., 0, :], torch.inf).amin(-1)
    tol = abs_tol + rel_tol * z.abs()
    on_surface = (z_s - z).abs() <= tol
    in_front = z <= near + tol
    return on_grid & (corners[..., 1, :] > 0).all(-1) & (on_surface | in_front)


def sample_correspondences(
    uv_b: torch.Tensor,
    visible: torch.Tensor,
    num: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num`` visible correspondences per view, uniformly without replacement.

    Views with fewer than ``num`` visible pixels return all of them, then padding (zeros) with
    ``mask`` false. The draw depends only on ``generator`` (on any device; the random keys are
    drawn there and moved to ``visible``'s device).

    Args:
        uv_b: ``(B, H, W, 2)`` from :func:`correspondences`.
        visible: ``(B, H, W)`` bool.
        num: ``N`` correspondences per view.
        generator: the source of randomness (torch's global one if ``None``).
    Returns:
        ``uv_a`` ``(B, N, 2)`` pixel centres in ``a``, ``uv_b`` ``(B, N, 2)``, ``mask``
        ``(B, N)`` bool (true for real correspondences, which come first).
    """
    require_shape(uv_b, "uv_b", last=[None, None, None, 2], min_dim=4)
    if uv_b.dim() != 4 or tuple(visible.shape) != tuple(uv_b.shape[:3]):
        raise InputError(
            f"uv_b must be (B, H, W, 2) and visible (B, H, W); got {tuple(uv_b.shape)} and "
            f"{tuple(visible.shape)}."
        )
    if not isinstance(num, int) or num < 0:
        raise InputError(f"num must be a non-negative integer, got {num!r}.")
    b, h, w, _ = uv_b.shape
    device = generator.device if generator is not None else visible.device
    keys = torch.rand(b, h * w, generator=generator, device=device).to(visible.device)
    vis = visible.reshape(b, h * w).bool()
    keys = torch.where(vis, keys, torch.full_like(keys, 2.0))  # invisible pixels sort last
    k = min(num, h * w)
    idx = keys.topk(k, dim=-1, largest=False).indices  # (B, k), visible ones first
    mask = vis.gather(1, idx)
    uv_a = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).to(uv_b.dtype)
    uv_bs = uv_b.reshape(b, h * w, 2).gather(1, idx[..., None].expand(-1, -1, 2))
    uv_a = torch.where(mask[..., None], uv_a, 0)
    uv_bs = torch.where(mask[..., None], uv_bs, 0)
    if num > k:
        pad = num - k
        uv_a = torch.cat([uv_a, uv_a.new_zeros(b, pad, 2)], 1)
        uv_bs = torch.cat([uv_bs, uv_bs.new_zeros(b, pad, 2)], 1)
        mask = torch.cat([mask, mask.new_zeros(b, pad)], 1)
    return uv_a, uv_bs, mask
