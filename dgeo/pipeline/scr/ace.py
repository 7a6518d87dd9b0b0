"""ACE fast mapping on dgeo features (ALGORITHMS 2.11): buffer, loss, mapping loop, evaluation.

ACE maps a scene in minutes by training only a small head (:class:`dgeo.models.ace.ACEHead`)
on features that a frozen encoder computed once:

1. :func:`build_buffer`: every mapping frame goes through the frozen extractor once per pass
   (optionally augmented: rotation about the optical axis, zoom, brightness / contrast, with
   the pose and the camera changed to match, exactly, distortion included); up to
   ``samples_per_image`` valid stride-8 cells of each view are drawn at random and stored with
   their target ray and their view's pose and focal length (:class:`ACEBuffer`; features fp16 on
   CUDA, fp32 on CPU).
2. :func:`ace_loss`: the reprojection error ``e = ||f (pi(R y + t) - ray)||_1`` (pixels, L1),
   robustified by ``tau tanh(e / tau)`` with the threshold of :func:`soft_clamp_schedule`
   (``tau(t) = 50 (1 - s) + 1``, ``s = 1 - sqrt(1 - (t / T)^2)``: 51 px down to 1 px, slowly at
   first); predictions behind ``depth_min`` or beyond ``depth_max`` or more than ``max_error``
   pixels off are pulled (L1, metres) to the point ``depth_target`` metres deep on their pixel's
   ray; the sum is divided by the batch size.
3. :func:`map_scene`: shuffled batches over the buffer (5120), AdamW with the one-cycle schedule
   of the generic trainer (:func:`dgeo.pipeline.recipes.trainer.lr_factor`), fp16 autocast on
   CUDA, a few epochs; returns the :class:`~dgeo.models.ace.ACEModel`.
4. :func:`localize_frames` / :func:`evaluate_frames`: poses by RANSAC on the predicted maps
   (:func:`dgeo.pipeline.scr.pose.poses_from_coords`, every cell, 10 px) and the share of frames
   within 5 cm / 5 degrees.

Targets are rays, not pixels: ``ray = Camera.unproject(pixel)`` (undistorted, ``z = 1``), so the
error is the pixel error of the pinhole part of any COLMAP camera (exact for pinhole cameras,
first order under distortion).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose, cell_pixels, sample
from dgeo.models.ace import ACEModel, check_cell_image

__all__ = [
    "ACEAugment",
    "ACEBuffer",
    "FrameSource",
    "ace_loss",
    "augment_views",
    "build_buffer",
    "evaluate_frames",
    "localize_frames",
    "map_scene",
    "soft_clamp_schedule",
]

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------- loss
def soft_clamp_schedule(
    step: int, total: int, soft_clamp: float = 50.0, soft_clamp_min: float = 1.0
) -> float:
    """ACE's threshold ``tau(t) = soft_clamp (1 - s) + soft_clamp_min`` in pixels, with the
    circular schedule ``s = 1 - sqrt(1 - (t / T)^2)`` (``t`` clipped to ``[0, T]``): 51 at the
    start, ~44.3 half way, 1 at the end."""
    t = min(max(float(step) / max(int(total), 1), 0.0), 1.0)
    s = 1.0 - math.sqrt(1.0 - t * t)
    return soft_clamp * (1.0 - s) + soft_clamp_min


def ace_loss(
    world: torch.Tensor,
    cam_from_world: Pose,
    rays: torch.Tensor,
    focal: torch.Tensor,
    tau: float,
    depth_min: float = 0.1,
    depth_max: float = 1000.0,
    max_error: float = 1000.0,
    depth_target: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ACE's mapping loss of a batch of predicted scene coordinates.

    Args:
        world: ``(N, 3)`` predicted world points (metres); the loss is computed in float32
            (float64 for float64 input).
        cam_from_world: :class:`Pose` ``(N,)``, the pose of each sample's view.
        rays: ``(N, 2)`` undistorted normalised coordinates ``(x / z, y / z)`` of each sample's
            pixel (``Camera.unproject(pixel)[..., :2]``).
        focal: ``(N, 2)`` focal lengths ``(fx, fy)`` of each sample's view, pixels.
        tau: the robust threshold in pixels (:func:`soft_clamp_schedule`).
        depth_min, depth_max: valid depth range of the prediction in the camera (metres).
        max_error: reprojection errors above this (pixels) are invalid.
        depth_target: depth of the proxy target of invalid predictions (ACE: 10 m; use about
            the scene's size for small scenes).
    Returns:
        ``(loss, stats)``: ``(sum_valid tau tanh(e / tau) + sum_invalid ||p_cam - d ray||_1) /
        N`` where ``e = ||f (p_xy / max(p_z, depth_min) - ray)||_1`` and ``p_cam = R y + t``;
        stats ``valid`` (share of valid predictions), ``error_px`` (median ``e`` of the valid
        ones), ``tau``.
    """
    n = world.shape[0]
    if world.dim() != 2 or world.shape[1] != 3:
        raise ShapeError(f"world must be (N, 3), got {tuple(world.shape)}.")
    if tuple(rays.shape) != (n, 2) or tuple(focal.shape) != (n, 2):
        raise ShapeError(
            f"rays and focal must be ({n}, 2) like world, got {tuple(rays.shape)} and "
            f"{tuple(focal.shape)}."
        )
    if tuple(cam_from_world.shape) != (n,):
        raise ShapeError(
            f"cam_from_world must be a Pose ({n},), got {tuple(cam_from_world.shape)}."
        )
    dtype = torch.promote_types(world.dtype, torch.float32)  # fp16 predictions: fp32 loss
    world, rays, focal = world.to(dtype), rays.to(dtype), focal.to(dtype)
    p_cam = cam_from_world.to(dtype=dtype).transform(world[:, None, :])[:, 0]  # (N, 3)
    z = p_cam[:, 2]
    proj = p_cam[:, :2] / z.clamp(min=depth_min)[:, None]
    err = (focal * (proj - rays)).abs().sum(-1)
    valid = (z >= depth_min) & (z <= depth_max) & (err <= max_error)
    e_valid = err[valid]
    loss_valid = tau * torch.tanh(e_valid / tau).sum()
    inv = ~valid
    target = depth_target * torch.cat([rays[inv], rays.new_ones(int(inv.sum()), 1)], -1)
    loss_invalid = (target - p_cam[inv]).abs().sum()
    loss = (loss_valid + loss_invalid) / max(n, 1)
    stats = {
        "valid": float(valid.float().mean()) if n else 0.0,
        "error_px": float(e_valid.detach().median()) if e_valid.numel() else math.nan,
        "tau": float(tau),
    }
    return loss, stats


# ---------------------------------------------------------------------------------- frames
class FrameSource:
    """Mapping frames with poses and a camera, from tensors or a sequence folder.

    Args:
        frames: images ``(N, 3, H, W)`` in [0, 1]; or a
            :class:`~dgeo.data.sequences.SequenceFolder` (or any object with ``load_image(i)``
            and ``__len__``, and ``poses`` / ``camera`` attributes used when the arguments
            below are None); or a list of such folders, concatenated in order (images of one
            size; each folder's poses and camera).
        poses: :class:`Pose` ``(N,)`` ``cam_from_world``.
        camera: :class:`Camera` of batch shape ``()`` or ``(N,)`` (full images).
        indices: the frames to use (default all), e.g. ``range(0, N, 2)``.
    Raises:
        InputError: missing poses or camera, lengths that differ, poses not finite.
    """

    def __init__(
        self,
        frames: Any,
        poses: Pose | None = None,
        camera: Camera | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        if isinstance(frames, list | tuple):
            frames = _ConcatFolders(frames)
        self.frames = frames
        if isinstance(frames, torch.Tensor):
            check_cell_image(frames, 1, "frames")
        elif not hasattr(frames, "load_image"):
            raise InputError(
                "frames must be an (N, 3, H, W) image tensor or a SequenceFolder (an object "
                f"with load_image(i)), got {type(frames).__name__}."
            )
        poses = poses if poses is not None else getattr(frames, "poses", None)
        camera = camera if camera is not None else getattr(frames, "camera", None)
        if poses is None:
            raise InputError(
                "mapping needs the frames' ground-truth poses: pass poses (a Pose (N,)) or a "
                "sequence folder with poses.txt / *.pose.txt."
            )
        if not isinstance(camera, Camera):
            raise InputError("mapping needs a Camera: pass camera= or a folder with camera.txt.")
        n = len(frames)
        if tuple(poses.shape) != (n,):
            raise InputError(f"got {n} frames but poses of shape {tuple(poses.shape)}.")
        if camera.shape not in ((), (n,)):
            raise InputError(f"camera must have batch shape () or ({n},), got {camera.shape}.")
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if not self.indices or any(not 0 <= i < n for i in self.indices):
            raise InputError(f"indices must pick frames in 0..{n - 1}, got {indices!r}.")
        sel = torch.tensor(self.indices)
        self.poses = poses[sel]
        if not bool(torch.isfinite(self.poses.data).all()):
            raise InputError("some mapping poses are NaN/inf; map only frames with known poses.")
        self.camera = camera if camera.shape == () else camera[sel]

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, rows: Sequence[int]) -> torch.Tensor:
        """Images ``(k, 3, H, W)`` of rows ``rows`` of this source (positions in ``indices``)."""
        ids = [self.indices[r] for r in rows]
        if isinstance(self.frames, torch.Tensor):
            return self.frames[torch.tensor(ids, device=self.frames.device)]
        return torch.stack([self.frames.load_image(i) for i in ids])

    def cameras(self, rows: Sequence[int]) -> Camera:
        """Cameras of batch shape ``(k,)`` of rows ``rows``."""
        if self.camera.shape == ():
            return Camera.stack([self.camera] * len(rows))
        return self.camera[torch.tensor(list(rows))]


class _ConcatFolders:
    """Several sequence folders as one: ``load_image``, ``poses (N,)``, ``camera (N,)``."""

    def __init__(self, folders: Sequence[Any]) -> None:
        if not folders:
            raise InputError("no mapping folder given.")
        self.folders = list(folders)
        self.starts = [0]
        for f in self.folders:
            self.starts.append(self.starts[-1] + len(f))
        poses = [getattr(f, "poses", None) for f in self.folders]
        missing = [str(getattr(f, "root", f)) for f, p in zip(self.folders, poses, strict=True)]
        missing = [m for m, p in zip(missing, poses, strict=True) if p is None]
        if missing:
            raise InputError(f"mapping folders without poses: {', '.join(missing)}.")
        self.poses = Pose.cat([p.to(torch.float64) for p in poses])
        cams = []
        for f in self.folders:
            cam = f.camera
            cams.append(Camera.stack([cam] * len(f)) if cam.shape == () else cam)
        self.camera = Camera.cat(cams)

    def __len__(self) -> int:
        return self.starts[-1]

    def load_image(self, i: int) -> torch.Tensor:
        k = max(j for j in range(len(self.folders)) if self.starts[j] <= i)
        return self.folders[k].load_image(i - self.starts[k])


# ---------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class ACEAugment:
    """ACE's mapping augmentation (ALGORITHMS 2.11), drawn uniformly per view.

    Attributes:
        rotation_deg: rotation about the optical axis in ``[-r, r]`` degrees (ACE: 15).
        zoom: focal-length factor in ``[1 / zoom, zoom]`` about the principal point (ACE
            rescales by ``[1 / 1.5, 1.5]``).
        brightness: intensity factor in ``[1 - b, 1 + b]`` (ACE: 0.1).
        contrast: contrast factor about the image mean in ``[1 - c, 1 + c]`` (ACE: 0.1).
    """

    rotation_deg: float = 15.0
    zoom: float = 1.5
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.rotation_deg <= 180 and self.zoom >= 1):
            raise InputError(f"bad augmentation {self}: need rotation_deg in [0, 180], zoom >= 1.")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise InputError(f"bad augmentation {self}: brightness and contrast in [0, 1).")


def _rz(angle: torch.Tensor) -> torch.Tensor:
    """Rotations ``(B, 3, 3)`` about the z (optical) axis by ``angle (B,)`` radians."""
    c, s = torch.cos(angle), torch.sin(angle)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(-1, 3, 3)


def augment_views(
    images: torch.Tensor,
    poses: Pose,
    camera: Camera,
    options: ACEAugment,
    generator: torch.Generator,
) -> tuple[torch.Tensor, Pose, Camera, torch.Tensor]:
    """Rotate (about the optical axis), zoom and re-light a batch of views, consistently.

    The new camera has focal lengths ``f * zoom`` (same principal point, distortion and size);
    the new pose is ``Rz(angle) @ cam_from_world``. Output pixel ``p'`` shows the input pixel
    ``camera.project(Rz(angle)^T camera'.unproject(p'))`` (bilinear; black where that falls
    outside the input), exact for every camera model.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        poses: :class:`Pose` ``(B,)``.
        camera: :class:`Camera` ``(B,)``.
        options: the ranges.
        generator: CPU generator the parameters are drawn from.
    Returns:
        ``(images, poses, camera, valid (B, H, W) bool)``: ``valid`` marks output pixels whose
        source lies inside the input image.
    """
    B, _, H, W = images.shape
    dev, dt = images.device, images.dtype
    u = torch.rand(B, 4, generator=generator, dtype=torch.float64)
    angle = math.radians(options.rotation_deg) * (2 * u[:, 0] - 1)
    zoom = torch.exp(math.log(options.zoom) * (2 * u[:, 1] - 1))
    bright = 1 + options.brightness * (2 * u[:, 2] - 1)
    contrast = 1 + options.contrast * (2 * u[:, 3] - 1)

    nf = 1 if Camera.PARAM_NAMES[camera.model][0] == "f" else 2
    params = camera.params.clone()
    params[..., :nf] = params[..., :nf] * zoom.to(params)[:, None]
    new_cam = Camera(camera.model, camera.width, camera.height, params)
    Rz = _rz(angle)
    new_poses = (
        Pose.from_Rt(Rz.to(poses.dtype), torch.zeros(B, 3, dtype=poses.dtype)).to(poses.device)
        @ poses
    )

    cam64 = new_cam.to(device=dev, dtype=torch.float64)
    old64 = camera.to(device=dev, dtype=torch.float64)
    uv = cell_pixels(H, W, 1, device=dev, dtype=torch.float64).reshape(1, -1, 2).expand(B, -1, 2)
    rays = cam64.unproject(uv)  # (B, HW, 3), z = 1
    rays = rays @ Rz.to(dev)  # Rz^T applied to row vectors
    src, ok = old64.project(rays, check_bounds=False)
    values, inside = sample(images, src.to(dt))
    inside = inside & ok
    out = torch.where(inside[..., None], values, 0.0).transpose(1, 2).reshape(B, 3, H, W)
    m = out.mean(dim=(1, 2, 3), keepdim=True)
    b = bright.to(device=dev, dtype=dt).view(B, 1, 1, 1)
    c = contrast.to(device=dev, dtype=dt).view(B, 1, 1, 1)
    out = ((out * b - m * b) * c + m * b).clamp(0, 1)
    return out, new_poses, new_cam, inside.reshape(B, H, W)


# ---------------------------------------------------------------------------------- buffer
class ACEBuffer(Dataset):
    """The training buffer of ACE: encoded cells with their targets.

    Attributes:
        features: ``(S, C)`` cell features (float16 on CUDA, float32 on CPU by default).
        pixels: ``(S, 2)`` float32, the cell's pixel in its (augmented) view.
        rays: ``(S, 2)`` float32, the pixel's undistorted normalised coordinates.
        view: ``(S,)`` int64, index of the sample's view.
        poses: ``(V, 12)`` float32 packed ``cam_from_world`` of each view
            (:class:`Pose` data).
        focal: ``(V, 2)`` float32 focal lengths of each view.
        frame: ``(V,)`` int64, the source frame of each view (position in the mapping frames).

    As a :class:`~torch.utils.data.Dataset`, item ``i`` is one sample and
    :meth:`__getitems__` gathers a whole batch at once (``features (n, C)``, ``rays (n, 2)``,
    ``pose (n, 12)``, ``focal (n, 2)``, ``pixels (n, 2)``).
    """

    def __init__(
        self,
        features: torch.Tensor,
        pixels: torch.Tensor,
        rays: torch.Tensor,
        view: torch.Tensor,
        poses: torch.Tensor,
        focal: torch.Tensor,
        frame: torch.Tensor,
    ) -> None:
        self.features, self.pixels, self.rays, self.view = features, pixels, rays, view
        self.poses, self.focal, self.frame = poses, focal, frame

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def num_views(self) -> int:
        return int(self.poses.shape[0])

    def nbytes(self) -> int:
        """Memory held by the buffer's tensors."""
        ts = (self.features, self.pixels, self.rays, self.view, self.poses, self.focal, self.frame)
        return sum(t.numel() * t.element_size() for t in ts)

    def to(self, device: torch.device | str) -> ACEBuffer:
        """The buffer on ``device``."""
        ts = (self.features, self.pixels, self.rays, self.view, self.poses, self.focal, self.frame)
        return ACEBuffer(*(t.to(device) for t in ts))

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of samples ``index (n,)`` (int64 on the buffer's device)."""
        v = self.view[index]
        return {
            "features": self.features[index],
            "rays": self.rays[index],
            "pixels": self.pixels[index],
            "pose": self.poses[v],
            "focal": self.focal[v],
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.gather(torch.as_tensor(indices, dtype=torch.int64, device=self.device))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}


def build_buffer(
    model: ACEModel,
    frames: Any,
    poses: Pose | None = None,
    camera: Camera | None = None,
    *,
    indices: Sequence[int] | None = None,
    samples_per_image: int = 1024,
    passes: int = 1,
    augment: ACEAugment | bool = False,
    max_samples: int = 8_000_000,
    chunk: int = 8,
    seed: int = 0,
    storage_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> ACEBuffer:
    """Encode the mapping frames once per pass and fill an :class:`ACEBuffer`.

    Args:
        model: the :class:`ACEModel` whose frozen extractor encodes (on its device).
        frames, poses, camera, indices: the mapping frames (:class:`FrameSource`).
        samples_per_image: cells drawn per view (uniformly among its valid cells, without
            replacement; all of them when it has fewer). ACE: 1024.
        passes: times every frame is encoded (each pass draws new augmentations).
        augment: :class:`ACEAugment` (``True``: ACE's ranges); ``False``: the frames as they are.
        max_samples: stop filling when the buffer holds this many samples (ACE: 8 M).
        chunk: frames per extractor call.
        seed: seeds the augmentation, the cell draws and the frame order.
        storage_dtype: dtype of the stored features (default float16 on CUDA, float32 on CPU).
        progress: ``progress("encoding", done, total)`` over the views.
    Returns:
        the buffer, on the model's device.
    Raises:
        InputError: bad frames / poses / camera, or options out of range.
    """
    src = frames if isinstance(frames, FrameSource) else FrameSource(frames, poses, camera, indices)
    if samples_per_image < 1 or passes < 1 or chunk < 1 or max_samples < 1:
        raise InputError("samples_per_image, passes, chunk and max_samples must be >= 1.")
    aug = ACEAugment() if augment is True else (augment or None)
    device = model.head.mean.device
    if storage_dtype is None:
        storage_dtype = torch.float16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(int(seed))
    stride = model.stride
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("f", "px", "ray", "view")}
    view_poses, view_focal, view_frame = [], [], []
    total_views, done, stored = passes * len(src), 0, 0
    for _ in range(passes):
        order = torch.randperm(len(src), generator=gen).tolist()
        for start in range(0, len(order), chunk):
            if stored >= max_samples:
                break
            rows = order[start : start + chunk]
            images = src.images(rows).to(device)
            h, w = check_cell_image(images, stride, "mapping images")
            cams = src.cameras(rows)
            pz = src.poses[torch.tensor(rows)]
            B = len(rows)
            if aug is not None:
                images, pz, cams, px_valid = augment_views(images, pz, cams, aug, gen)
                c = stride // 2
                cell_valid = px_valid[:, c::stride, c::stride][:, :h, :w]
            else:
                cell_valid = torch.ones(B, h, w, dtype=torch.bool, device=device)
            images = images.to(_extractor_dtype(model))
            feats = model.encode(images).flatten(2).transpose(1, 2)  # (B, hw, C)
            k = min(samples_per_image, h * w)
            scores = torch.rand(B, h * w, generator=gen).to(device)
            scores = torch.where(cell_valid.reshape(B, -1), scores, -1.0)
            top = scores.topk(k, dim=1)
            keep = top.values >= 0  # (B, k)
            idx = top.indices
            grid = cell_pixels(h, w, stride, device=device).reshape(1, h * w, 2).expand(B, -1, -1)
            px = torch.gather(grid, 1, idx[..., None].expand(-1, -1, 2))  # (B, k, 2)
            cam_dev = cams.to(device=device, dtype=torch.float64)
            rays = cam_dev.unproject(px.to(torch.float64))[..., :2].float()
            f = torch.gather(feats, 1, idx[..., None].expand(-1, -1, feats.shape[-1]))
            view_ids = (torch.arange(B, device=device) + len(view_poses))[:, None].expand(B, k)
            parts["f"].append(f[keep].to(storage_dtype))
            parts["px"].append(px[keep].float())
            parts["ray"].append(rays[keep])
            parts["view"].append(view_ids[keep])
            view_poses += list(pz.data.to(device=device, dtype=torch.float32).unbind(0))
            view_focal += list(cams.f.to(device=device, dtype=torch.float32).unbind(0))
            view_frame += rows
            stored += int(keep.sum())
            done += B
            if progress is not None:
                progress("encoding", done, total_views)
    if stored == 0:
        raise InputError("no valid cell in the mapping frames; the buffer is empty.")
    buf = ACEBuffer(
        torch.cat(parts["f"])[:max_samples],
        torch.cat(parts["px"])[:max_samples],
        torch.cat(parts["ray"])[:max_samples],
        torch.cat(parts["view"])[:max_samples],
        torch.stack(view_poses),
        torch.stack(view_focal),
        torch.tensor(view_frame, dtype=torch.int64, device=device),
    )
    return buf


def _extractor_dtype(model: ACEModel) -> torch.dtype:
    p = next(model.extractor.parameters(), None)
    return p.dtype if p is not None else torch.float32


# ---------------------------------------------------------------------------------- mapping
def train_head(
    model: ACEModel,
    buffer: ACEBuffer,
    *,
    epochs: int = 16,
    steps: int | None = None,
    batch_size: int = 5120,
    lr: float = 5e-3,
    weight_decay: float = 0.01,
    depth_target: float = 10.0,
    soft_clamp: float = 50.0,
    soft_clamp_min: float = 1.0,
    amp: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Train ``model.head`` on ``buffer`` (the loop of :func:`map_scene`); returns statistics
    (``steps``, ``loss`` and ``valid`` of the last 10 steps, ``seconds``)."""
    from dgeo.pipeline.recipes.trainer import lr_factor

    if batch_size < 1 or epochs < 1 or (steps is not None and steps < 1):
        raise InputError("batch_size, epochs and steps must be >= 1.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}.")
    device = buffer.device
    n = len(buffer)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = int(steps) if steps is not None else epochs * per_epoch
    head = model.head
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, "onecycle"))
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    t0 = time.perf_counter()
    step, last_loss, last_valid = 0, [], []
    while step < total:
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(per_epoch):
            if step >= total:
                break
            batch = buffer.gather(perm[b * batch_size : (b + 1) * batch_size])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                pred = head(batch["features"])
            tau = soft_clamp_schedule(step, total, soft_clamp, soft_clamp_min)
            loss, stats = ace_loss(
                pred.float(), Pose(batch["pose"]), batch["rays"], batch["focal"], tau,
                depth_target=depth_target,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            last_loss = [*last_loss[-9:], float(loss.detach())]
            last_valid = [*last_valid[-9:], stats["valid"]]
            if progress is not None:
                progress("mapping", step, total)
    head.eval()
    return {
        "steps": float(total),
        "loss": sum(last_loss) / max(len(last_loss), 1),
        "valid": sum(last_valid) / max(len(last_valid), 1),
        "seconds": time.perf_counter() - t0,
    }


def map_scene(
    frames: Any,
    poses: Pose | None = None,
    camera: Camera | None = None,
    *,
    indices: Sequence[int] | None = None,
    model: ACEModel | None = None,
    extractor: str = "default",
    extractor_config: dict[str, Any] | None = None,
    levels: Sequence[int] | None = None,
    head: dict[str, Any] | None = None,
    samples_per_image: int = 1024,
    passes: int = 1,
    augment: ACEAugment | bool = False,
    epochs: int = 16,
    steps: int | None = None,
    batch_size: int = 5120,
    lr: float = 5e-3,
    weight_decay: float = 0.01,
    depth_target: float = 10.0,
    soft_clamp: float = 50.0,
    soft_clamp_min: float = 1.0,
    amp: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    info: dict[str, float] | None = None,
) -> ACEModel:
    """Map a scene ACE-style: encode the frames once, then train the head on the buffer.

    Args:
        frames, poses, camera, indices: the mapping frames (:class:`FrameSource`: an image
            tensor with poses and camera, or a sequence folder).
        model: an :class:`ACEModel` to train (its head is re-fitted); None: a new one from
            ``extractor``, ``extractor_config``, ``levels`` and ``head`` (:class:`ACEModel`).
        samples_per_image, passes, augment: the buffer (:func:`build_buffer`).
        epochs, steps, batch_size, lr, weight_decay: the optimisation (AdamW, one-cycle to
            ``lr``, ``epochs`` passes over the buffer unless ``steps`` is given).
        depth_target, soft_clamp, soft_clamp_min: the loss (:func:`ace_loss`,
            :func:`soft_clamp_schedule`).
        amp: fp16 autocast on CUDA.
        seed: seeds the new head, the buffer and the batch order.
        device: where to map (default: CUDA when available).
        progress: ``progress(stage, done, total)`` for ``"encoding"`` and ``"mapping"``.
        info: if given, filled with ``encode_seconds``, ``train_seconds``, ``seconds``,
            ``samples``, ``steps``, ``loss``, ``valid``.
    Returns:
        the trained :class:`ACEModel` in eval mode, on ``device``; its head's ``mean`` is the
        mean of the mapping cameras' centres.
    """
    t0 = time.perf_counter()
    src = FrameSource(frames, poses, camera, indices)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = ACEModel(extractor, extractor_config, levels, head=head)
    model = model.to(device).eval()
    model.head.set_mean(src.poses.center().float().mean(0))
    buffer = build_buffer(
        model, src, samples_per_image=samples_per_image, passes=passes, augment=augment,
        seed=seed, progress=progress,
    )  # fmt: skip
    t1 = time.perf_counter()
    stats = train_head(
        model, buffer, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, depth_target=depth_target, soft_clamp=soft_clamp,
        soft_clamp_min=soft_clamp_min, amp=amp, seed=seed, progress=progress,
    )  # fmt: skip
    model.eval()
    if info is not None:
        info.update(
            encode_seconds=t1 - t0,
            train_seconds=stats["seconds"],
            seconds=time.perf_counter() - t0,
            samples=float(len(buffer)),
            steps=stats["steps"],
            loss=stats["loss"],
            valid=stats["valid"],
        )
    return model


# ---------------------------------------------------------------------------------- evaluation
def localize_frames(
    model: ACEModel,
    images: torch.Tensor,
    camera: Camera,
    *,
    threshold_px: float = 10.0,
    batch_size: int = 16,
    **ransac: Any,
):
    """Poses of ``images (B, 3, H, W)`` from the model's scene coordinates by RANSAC.

    Every cell takes part (ACE has no confidence), with :func:`poses_from_coords`'s defaults
    otherwise (LO-RANSAC P3P, ``threshold_px`` inlier threshold, robust refinement).

    Returns:
        :class:`~dgeo.ransac.PnPResult` of batch ``B`` (concatenated over chunks of
        ``batch_size`` frames).
    """
    from dgeo.pipeline.scr.pose import poses_from_coords
    from dgeo.ransac import PnPResult

    results = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        world, _ = model.predict_world(x)
        cam = camera if camera.shape == () else camera[start : start + batch_size]
        res = poses_from_coords(
            world, None, cam, model.stride, top_fraction=1.0, threshold_px=threshold_px, **ransac
        )
        results.append(res)
    if len(results) == 1:
        return results[0]
    fields = {
        name: (Pose.cat if name == "pose" else torch.cat)([getattr(r, name) for r in results])
        for name in results[0].__dataclass_fields__
    }
    return PnPResult(**fields)


def evaluate_frames(
    model: ACEModel,
    frames: Any,
    poses: Pose | None = None,
    camera: Camera | None = None,
    *,
    indices: Sequence[int] | None = None,
    threshold_px: float = 10.0,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Localize frames with known poses and score them (ACE / DSAC* metrics, ALGORITHMS 3.4).

    Args:
        model: the map.
        frames, poses, camera, indices: the test frames (:class:`FrameSource`).
        threshold_px, batch_size: :func:`localize_frames`.
        seed: RANSAC seed.
    Returns:
        ``{"pct_5cm_5deg", "pct_10cm_5deg", "pct_2cm_2deg", "median_cm", "median_deg",
        "frames", "seconds_per_frame"}`` (percentages; a failed frame counts as a miss with
        infinite errors) and ``"e_t"`` / ``"e_R"`` per-frame tensors (metres, degrees).
    """
    from dgeo.eval.metrics import median, pose_errors

    src = FrameSource(frames, poses, camera, indices)
    device = model.head.mean.device
    est = []
    t0 = time.perf_counter()
    for start in range(0, len(src), batch_size):
        rows = list(range(start, min(start + batch_size, len(src))))
        images = src.images(rows).to(device, _extractor_dtype(model))
        cams = src.camera if src.camera.shape == () else src.cameras(rows)
        res = localize_frames(
            model, images, cams, threshold_px=threshold_px, batch_size=batch_size, seed=seed
        )
        pose = Pose(torch.where(res.success[:, None], res.pose.data, math.nan))
        est.append(pose.to(device="cpu", dtype=torch.float64))
    seconds = time.perf_counter() - t0
    est_all = Pose.cat(est)
    e_t, e_R, _ = pose_errors(est_all, src.poses.to(device="cpu", dtype=torch.float64))
    e_deg = torch.rad2deg(e_R)

    def pct(t: float, r: float) -> float:
        return 100.0 * float(((e_t <= t) & (e_deg <= r)).double().mean())

    return {
        "pct_5cm_5deg": pct(0.05, 5.0),
        "pct_10cm_5deg": pct(0.10, 5.0),
        "pct_2cm_2deg": pct(0.02, 2.0),
        "median_cm": 100.0 * float(median(e_t)),
        "median_deg": float(median(e_deg)),
        "frames": float(len(src)),
        "seconds_per_frame": seconds / max(len(src), 1),
        "e_t": e_t,
        "e_R": e_deg,
    }
