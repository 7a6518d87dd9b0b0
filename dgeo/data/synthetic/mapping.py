"""A COLMAP model of rendered reference views: detected keypoints lifted with exact depth.

Keypoints come from a real detector (OpenCV SIFT) on the rendered images, so the model's points
sit where features are, like an SfM model's. Each keypoint is lifted to 3D with the rendered
depth (inverse depth interpolated bilinearly, exact on planar surfaces, rejected across depth
edges), and checked across views: a point observes another view where it projects inside the
image and agrees with that view's depth (not occluded). Detections of the same surface point in
several views are merged (a projection within ``merge_radius`` of a detected keypoint), and each
merged point is observed at its exact projections, so tracks reproject with zero error.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from dgeo.data.synthetic.correspondences import pixel_neighbours, visible_at
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose, sample
from dgeo.io.colmap import ReferenceMap


def detect_keypoints(images: torch.Tensor, max_keypoints: int = 1024) -> list[torch.Tensor]:
    """SIFT keypoints of ``(N, H, W, 3)`` uint8 RGB images: ``N`` tensors ``(K_i, 2)`` float64
    in dgeo's pixel convention (OpenCV's: top-left pixel centre at (0, 0))."""
    sift = cv2.SIFT_create(nfeatures=max_keypoints)
    out = []
    for img in images.cpu().numpy():
        kps = sift.detect(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), None)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        out.append(torch.from_numpy(np.unique(xy, axis=0))[:max_keypoints])
    return out


def sample_depth(depth: torch.Tensor, uv: torch.Tensor, surface: torch.Tensor):
    """Depth at sub-pixel points on one planar surface: exact on planes, refused across edges.

    Inverse depth is affine in the pixel coordinates of a plane (pinhole), so its bilinear
    interpolation is exact where the four neighbouring pixels see the same quad.

    Args:
        depth: ``(B, 1, H, W)`` z-depth, 0 where invalid.
        uv: ``(B, N, 2)`` pixels.
        surface: ``(B, 1, H, W)`` int64 quad id of every pixel (-1: none).
    Returns:
        depth ``(B, N)`` (0 where refused), validity ``(B, N)`` and the quad id ``(B, N)``.
    """
    inv = torch.where(depth > 0, 1 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    ids, on_grid = pixel_neighbours(surface, uv)
    ids = ids[..., 0, :]
    inv_s, _ = sample(inv, uv)
    inv_s = inv_s[..., 0]
    ok = on_grid & (ids[..., 0] >= 0) & (ids == ids[..., :1]).all(-1) & (inv_s > 0)
    z = torch.where(ok, 1 / inv_s.clamp_min(1e-12), torch.zeros_like(inv_s))
    return z, ok, torch.where(ok, ids[..., 0], -1)


def _project_all(points: torch.Tensor, camera: Camera, poses: Pose):
    """Project ``(P, 3)`` world points into ``N`` views: uv ``(N, P, 2)``, z ``(N, P)``, valid."""
    p = poses.transform(points.expand(poses.shape[0], -1, -1))
    uv, valid = camera.project(p)
    return uv, p[..., 2], valid


def _nearest_detections(
    puv: torch.Tensor, vis: torch.Tensor, kuv: torch.Tensor, kvalid: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (view j, point i, keypoint k) where point i projects within ``radius`` of keypoint k.

    Args:
        puv: ``(N, P, 2)`` projections; vis: ``(N, P)`` which of them count.
        kuv: ``(N, K, 2)`` keypoints; kvalid: ``(N, K)`` which of them count.
    """
    out = []
    for j in range(puv.shape[0]):  # one view at a time, points in blocks: bounded memory
        kj = kvalid[j].nonzero()[:, 0]
        for block in vis[j].nonzero()[:, 0].split(8192):
            if len(kj) == 0 or len(block) == 0:
                continue
            d, k = torch.cdist(puv[j, block].float(), kuv[j, kj].float()).min(-1)
            hit = d <= radius
            out.append(torch.stack([torch.full_like(block[hit], j), block[hit], kj[k[hit]]]))
    if not out:
        return (torch.zeros(0, dtype=torch.int64),) * 3
    return tuple(torch.cat(out, 1))


def _union_find(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Connected-component labels ``(n,)`` (smallest member) of the graph with edges (a, b)."""
    label = torch.arange(n)
    while True:
        m = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, m, "amin").scatter_reduce(0, b, m, "amin")
        new = new[new]  # pointer jumping
        if torch.equal(new, label):
            return label
        label = new


def build_reference_map(
    names: Sequence[str],
    images: torch.Tensor,
    depth: torch.Tensor,
    surface: torch.Tensor,
    camera: Camera,
    cam_from_world: Pose,
    max_keypoints: int = 1024,
    merge_radius: float = 1.5,
    depth_tol: float = 0.01,
    min_track_length: int = 2,
) -> ReferenceMap:
    """A :class:`ReferenceMap` of rendered views with multi-view tracks.

    Args:
        names: ``N`` image names.
        images: ``(N, H, W, 3)`` uint8 RGB renderings.
        depth: ``(N, 1, H, W)`` their exact z-depth (0 = sky).
        surface: ``(N, 1, H, W)`` int64 quad id seen by each pixel (-1 = sky).
        camera: :class:`Camera` of batch shape ``()`` (shared) or ``(N,)``.
        cam_from_world: :class:`Pose` ``(N,)``.
        max_keypoints: SIFT keypoints per image.
        merge_radius: pixels within which a projection and a detection are the same point.
        depth_tol: relative depth tolerance of the occlusion check.
        min_track_length: fewest views a point needs to be kept.
    Returns:
        the map; every observation is the exact projection of its point.

    Every lifted point is projected into every view at once: memory grows with
    ``N * N * max_keypoints`` (about 1 GB at 200 views of 1024 keypoints).
    """
    n = len(names)
    if images.shape[0] != n or depth.shape[0] != n or tuple(cam_from_world.shape) != (n,):
        raise InputError(f"names, images, depth and cam_from_world must all hold {n} views.")
    cams = camera if camera.shape == (n,) else Camera.stack([camera] * n)
    poses = cam_from_world.to(torch.float64)
    depth = depth.to(torch.float64)
    cams64 = cams.to(torch.float64)

    # detect and lift
    kps = detect_keypoints(images, max_keypoints)
    counts = torch.tensor([len(k) for k in kps])
    uv = torch.nn.utils.rnn.pad_sequence(list(kps), batch_first=True)  # (N, K, 2)
    real = torch.arange(uv.shape[1])[None] < counts[:, None]
    z, ok, quad = sample_depth(depth, uv, surface)
    ok &= real
    rays = cams64.unproject(uv)
    X = poses.inv().transform(rays * z[..., None])  # (N, K, 3) world
    src_img, src_kp = ok.nonzero(as_tuple=True)
    pts, pts_quad = X[src_img, src_kp], quad[src_img, src_kp]  # (P, 3), (P,)
    P = pts.shape[0]
    if P == 0:
        raise InputError("no keypoint could be lifted: the references see no textured surface.")

    # visibility of every lifted point in every view (in the image, in front, not occluded)
    puv, pz, pvalid = _project_all(pts, cams64, poses)
    near = puv.round().long()
    w = depth.shape[-1]
    near_idx = near[..., 1].clamp(0, depth.shape[-2] - 1) * w + near[..., 0].clamp(0, w - 1)
    seen_quad = surface.flatten(1).gather(1, near_idx)  # the quad the nearest pixel sees
    vis = pvalid & (seen_quad == pts_quad[None]) & visible_at(depth, puv, pz, depth_tol)
    vis[src_img, torch.arange(P)] = True

    # merge: a point projecting within merge_radius of a lifted detection in another view
    kp_point = torch.full(uv.shape[:2], -1, dtype=torch.int64)
    kp_point[src_img, src_kp] = torch.arange(P)
    img_j, p_i, p_k = _nearest_detections(puv, vis, uv, kp_point >= 0, merge_radius)
    label = _union_find(P, p_i, kp_point[img_j, p_k])
    reps = torch.unique(label)

    # tracks of the representatives, observed at their exact projections
    vis = vis[:, reps]
    keep = vis.sum(0) >= min_track_length
    reps, vis = reps[keep], vis[:, keep]
    xyz, puv = pts[reps], puv[:, reps]
    p_of, j_of = vis.T.nonzero(as_tuple=True)  # sorted by point, then image
    kp_rank = vis.long().cumsum(1) - 1  # index of each (view, point) among the view's keypoints
    keypoints = [puv[j, vis[j]] for j in range(n)]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), vis.sum(0).cumsum(0)])
    src = src_img[reps]
    colour_uv = puv[src, torch.arange(len(reps))].round().long()
    rgb = images[
        src,
        colour_uv[:, 1].clamp(0, images.shape[1] - 1),
        colour_uv[:, 0].clamp(0, images.shape[2] - 1),
    ]
    return ReferenceMap.from_arrays(
        list(names),
        cams64,
        poses,
        keypoints,
        xyz,
        j_of,
        kp_rank[j_of, p_of],
        offsets,
        rgb=rgb,
        point_errors=torch.zeros(len(reps), dtype=torch.float64),
    )


def visible_points(
    ref: ReferenceMap, camera: Camera, cam_from_world: Pose, depth: torch.Tensor, tol: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """The map points a view truly sees, and where: exact 2D-3D matches for one query.

    Args:
        ref: the map.
        camera: :class:`Camera` of batch shape ``()``.
        cam_from_world: :class:`Pose` of batch shape ``()``.
        depth: ``(1, H, W)`` the view's rendered depth.
    Returns:
        pixels ``(M, 2)`` and world points ``(M, 3)`` (float64).
    """
    xyz = ref.xyz.to(torch.float64)
    p = cam_from_world.to(torch.float64).transform(xyz)
    uv, valid = camera.to(torch.float64).project(p)
    seen = valid & visible_at(depth[None].to(torch.float64), uv[None], p[None, :, 2], tol)[0]
    return uv[seen], xyz[seen]
