"""COLMAP models in and out of dgeo: the only module that imports pycolmap for models.

Conversions happen here and nowhere else (DESIGN.md, "decide once, convert at the boundary"):

- pixels: COLMAP puts the centre of the top-left pixel at (0.5, 0.5), dgeo at (0, 0). Keypoints
  and principal points are shifted by ``-0.5`` on the way in and ``+0.5`` on the way out; focal
  lengths and distortion coefficients are unchanged.
- rotations: pycolmap quaternions are x-first; dgeo never touches them, poses cross the boundary
  as rotation matrices (:func:`pose_from_colmap`, :func:`pose_to_colmap`).
- poses are ``cam_from_world`` on both sides.

:class:`ReferenceMap` holds a whole model as flat tensors. It is built from the model's binary
files with numpy (one pass per image, none per point or observation), so maps of 100k points and
millions of observations load in about a second. It is written back through pycolmap's own
builders (``add_camera_with_trivial_rig``, ``add_image_with_trivial_frame``, ``add_point3D``), so
what dgeo writes is a real COLMAP 4 model, rigs and frames included.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pycolmap
import torch

from dgeo.errors import (
    CameraModelError,
    DataFileNotFoundError,
    DgeoError,
    InputError,
    ParseError,
    ShapeError,
)
from dgeo.geometry.camera import PARAM_NAMES, Camera
from dgeo.geometry.pose import ArrayLike, Pose, as_tensor
from dgeo.io.atomic import atomic_directory
from dgeo.io.colmap_binary import (
    POINT2D_DTYPE,
    csr_gather,
    parse_images_bin,
    parse_points3D_bin,
)

__all__ = [
    "SUPPORTED_MODELS",
    "ReferenceMap",
    "camera_from_colmap",
    "camera_to_colmap",
    "find_model",
    "load_reference_map",
    "params_from_colmap",
    "params_to_colmap",
    "pose_from_colmap",
    "pose_to_colmap",
    "poses_from_colmap",
    "read_reconstruction",
    "synthesize_reference_map",
    "write_reconstruction",
]

#: COLMAP camera models that dgeo's :class:`~dgeo.geometry.Camera` implements.
SUPPORTED_MODELS: tuple[str, ...] = tuple(PARAM_NAMES)

#: The files of a COLMAP model (without extension); rigs and frames are optional (COLMAP < 3.12).
MODEL_FILES = ("cameras", "images", "points3D")
_ALL_MODEL_FILES = (*MODEL_FILES, "rigs", "frames")


# ---------------------------------------------------------------------------------- cameras
def _check_model(model: str, where: str = "") -> tuple[str, ...]:
    """Parameter names of ``model``; :class:`CameraModelError` if dgeo does not support it."""
    if model not in PARAM_NAMES:
        raise CameraModelError(
            f"{where}camera model {model!r} is not supported by dgeo; supported models: "
            f"{', '.join(SUPPORTED_MODELS)}."
        )
    return PARAM_NAMES[model]


def _shift_principal_point(model: str, params: ArrayLike, delta: float) -> torch.Tensor:
    names = _check_model(model)
    params = as_tensor(params)
    if not params.is_floating_point():
        params = params.double()
    if params.dim() == 0 or params.shape[-1] != len(names):
        raise CameraModelError(
            f"camera model {model} takes {len(names)} parameters ({', '.join(names)}), got "
            f"params of shape {tuple(params.shape)}."
        )
    idx = [names.index("cx"), names.index("cy")]
    out = params.clone()
    out[..., idx] = out[..., idx] + delta
    return out


def params_from_colmap(model: str, params: ArrayLike) -> torch.Tensor:
    """COLMAP camera parameters ``(..., P)`` to dgeo's pixel convention (``cx, cy -= 0.5``).

    Args:
        model: a COLMAP model name in :data:`SUPPORTED_MODELS`.
        params: ``(..., P)`` parameters in COLMAP order, top-left pixel centre at (0.5, 0.5).
    Returns:
        a new ``(..., P)`` tensor with the top-left pixel centre at (0, 0).
    """
    return _shift_principal_point(model, params, -0.5)


def params_to_colmap(model: str, params: ArrayLike) -> torch.Tensor:
    """dgeo camera parameters ``(..., P)`` to COLMAP's pixel convention (``cx, cy += 0.5``)."""
    return _shift_principal_point(model, params, 0.5)


def camera_from_colmap(cam: pycolmap.Camera, dtype: torch.dtype = torch.float64) -> Camera:
    """A dgeo :class:`Camera` (batch shape ``()``) from a ``pycolmap.Camera``.

    The principal point moves by ``-0.5`` px; focal lengths and distortion are copied.

    Raises:
        CameraModelError: the model is not in :data:`SUPPORTED_MODELS` (e.g. a fisheye model),
            or the parameter count does not match it.
    """
    model = cam.model.name
    where = (
        f"COLMAP camera {cam.camera_id}: " if cam.camera_id != pycolmap.INVALID_CAMERA_ID else ""
    )
    _check_model(model, where)
    params = np.array(cam.params, dtype=np.float64)
    return Camera(
        model, int(cam.width), int(cam.height), params_from_colmap(model, params).to(dtype)
    )


def camera_to_colmap(camera: Camera, camera_id: int | None = None) -> pycolmap.Camera:
    """A ``pycolmap.Camera`` from one dgeo camera (batch shape ``()``); ``cx, cy += 0.5``.

    Args:
        camera: an unbatched :class:`Camera` with integer width and height.
        camera_id: the COLMAP id to give it; left invalid if ``None``.
    """
    if camera.shape != ():
        raise ShapeError(
            f"camera_to_colmap takes one camera (batch shape ()), got batch shape "
            f"{tuple(camera.shape)}; index the batch first."
        )
    w, h = float(camera.width), float(camera.height)
    if w != round(w) or h != round(h):
        raise InputError(f"COLMAP cameras need integer sizes, got width {w} and height {h}.")
    params = params_to_colmap(camera.model, camera.params.detach().double().cpu())
    kwargs = {
        "model": camera.model,
        "width": round(w),
        "height": round(h),
        "params": params.numpy(),
    }
    if camera_id is not None:
        kwargs["camera_id"] = int(camera_id)
    return pycolmap.Camera(**kwargs)


# ---------------------------------------------------------------------------------- poses
def pose_from_colmap(rigid3d: pycolmap.Rigid3d) -> Pose:
    """A float64 :class:`Pose` (batch shape ``()``) from a ``pycolmap.Rigid3d``.

    The rotation goes through pycolmap's own rotation matrix, so there is no quaternion order
    to get wrong; a ``cam_from_world`` stays ``cam_from_world``.
    """
    M = np.array(rigid3d.matrix(), dtype=np.float64)
    return Pose.from_Rt(torch.from_numpy(M[:, :3].copy()), torch.from_numpy(M[:, 3].copy()))


def poses_from_colmap(rigid3ds: Sequence[pycolmap.Rigid3d]) -> Pose:
    """A float64 :class:`Pose` of batch shape ``(N,)`` from ``N`` ``pycolmap.Rigid3d``."""
    M = np.stack([np.asarray(r.matrix(), dtype=np.float64) for r in rigid3ds]).reshape(-1, 3, 4)
    return Pose.from_Rt(torch.from_numpy(M[:, :, :3].copy()), torch.from_numpy(M[:, :, 3].copy()))


def pose_to_colmap(pose: Pose) -> pycolmap.Rigid3d:
    """A ``pycolmap.Rigid3d`` from one dgeo pose (batch shape ``()``), through its matrix."""
    if pose.shape != ():
        raise ShapeError(
            f"pose_to_colmap takes one pose (batch shape ()), got batch shape "
            f"{tuple(pose.shape)}; index the batch first."
        )
    R = pose.R.detach().double().cpu().numpy()
    t = pose.t.detach().double().cpu().numpy()
    return pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)


# ---------------------------------------------------------------------------------- model files
def find_model(path: str | os.PathLike) -> str | None:
    """``"bin"`` or ``"txt"`` if ``path`` holds a COLMAP model (binary preferred), else ``None``."""
    path = Path(path)
    for ext in ("bin", "txt"):
        if all((path / f"{name}.{ext}").is_file() for name in MODEL_FILES):
            return ext
    return None


def read_reconstruction(path: str | os.PathLike) -> pycolmap.Reconstruction:
    """Read a binary or text COLMAP model folder with pycolmap, with dgeo's errors.

    Raises:
        DataFileNotFoundError: the folder does not exist, or holds no model (the message lists
            sub-folders that do, e.g. ``sparse/0``).
        ParseError: pycolmap could not read the files.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"COLMAP model folder {path} does not exist; check the path.")
    if not path.is_dir():
        raise InputError(f"{path} is a file; pass the folder that holds the COLMAP model.")
    fmt = find_model(path)
    if fmt is None:
        found = sorted(p.name for p in path.iterdir() if p.stem in _ALL_MODEL_FILES)
        subs = sorted(str(p) for p in path.iterdir() if p.is_dir() and find_model(p))
        msg = (
            f"{path} holds no COLMAP model: expected cameras, images and points3D files, all "
            f".bin or all .txt"
        )
        msg += f" (found only {', '.join(found)})" if found else ""
        msg += f"; these sub-folders hold one: {', '.join(subs)}." if subs else "."
        raise DataFileNotFoundError(msg)
    try:
        return pycolmap.Reconstruction(str(path))
    except (ValueError, RuntimeError, OSError) as e:
        raise ParseError(path, None, f"pycolmap could not read this {fmt} model: {e}") from e


# ---------------------------------------------------------------------------------- the map
@dataclass(eq=False)
class ReferenceMap:
    """A COLMAP model as flat tensors: I posed images, P 3D points, T track elements.

    Images are the *registered* ones (those with a pose), sorted by COLMAP image id; images
    without a pose are left out, as COLMAP's own writer leaves them out of a model. Points are
    sorted by COLMAP point id. Indices (``track_image_index``, ``keypoint_point_index``, ...)
    point into these arrays, never at COLMAP ids.

    Cameras: ``cameras`` is one :class:`Camera` batch ``(I,)``, one entry per image. If the
    images use several models, all are promoted (losslessly, with ``Camera.to_model``) to the
    simplest model that represents every one (:func:`dgeo.geometry.camera.common_model`), and
    ``camera_models`` keeps each image's own model so that writing restores it exactly.

    Attributes:
        names: ``I`` image names (unique).
        image_ids: ``(I,)`` int64 COLMAP image ids.
        camera_ids: ``(I,)`` int64 COLMAP camera ids (images may share a camera).
        cameras: :class:`Camera` ``(I,)`` in dgeo's pixel convention.
        camera_models: ``I`` original COLMAP model names.
        cam_from_world: :class:`Pose` ``(I,)`` float64.
        keypoints: ``I`` tensors ``(K_i, 2)`` float64, dgeo convention (COLMAP xy - 0.5).
        keypoint_point_index: ``I`` tensors ``(K_i,)`` int64: index into ``xyz`` or -1.
        xyz: ``(P, 3)`` float64 world points.
        rgb: ``(P, 3)`` uint8 colours.
        point_ids: ``(P,)`` int64 COLMAP point ids.
        point_errors: ``(P,)`` float64 mean reprojection errors (-1: unknown).
        track_offsets: ``(P + 1,)`` int64; point ``p`` owns elements
            ``track_offsets[p]:track_offsets[p + 1]`` of the two arrays below.
        track_image_index: ``(T,)`` int64 image index of each observation.
        track_keypoint_index: ``(T,)`` int64 keypoint index in that image.
    """

    names: list[str]
    image_ids: torch.Tensor
    camera_ids: torch.Tensor
    cameras: Camera
    camera_models: list[str]
    cam_from_world: Pose
    keypoints: list[torch.Tensor]
    keypoint_point_index: list[torch.Tensor]
    xyz: torch.Tensor
    rgb: torch.Tensor
    point_ids: torch.Tensor
    point_errors: torch.Tensor
    track_offsets: torch.Tensor
    track_image_index: torch.Tensor
    track_keypoint_index: torch.Tensor

    def __post_init__(self):
        n_i, n_p = len(self.names), self.xyz.shape[0] if self.xyz.dim() == 2 else -1
        checks = {
            "image_ids": (tuple(self.image_ids.shape), (n_i,)),
            "camera_ids": (tuple(self.camera_ids.shape), (n_i,)),
            "cameras": (tuple(self.cameras.shape), (n_i,)),
            "camera_models": ((len(self.camera_models),), (n_i,)),
            "cam_from_world": (tuple(self.cam_from_world.shape), (n_i,)),
            "keypoints": ((len(self.keypoints),), (n_i,)),
            "keypoint_point_index": ((len(self.keypoint_point_index),), (n_i,)),
            "xyz": (tuple(self.xyz.shape), (n_p, 3)),
            "rgb": (tuple(self.rgb.shape), (n_p, 3)),
            "point_ids": (tuple(self.point_ids.shape), (n_p,)),
            "point_errors": (tuple(self.point_errors.shape), (n_p,)),
            "track_offsets": (tuple(self.track_offsets.shape), (n_p + 1,)),
            "track_keypoint_index": (
                tuple(self.track_keypoint_index.shape),
                tuple(self.track_image_index.shape),
            ),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ShapeError(f"ReferenceMap.{name} has shape {got}, expected {want}.")

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def num_images(self) -> int:
        """Number of (posed) images I."""
        return len(self.names)

    @property
    def num_points(self) -> int:
        """Number of 3D points P."""
        return self.xyz.shape[0]

    @property
    def num_observations(self) -> int:
        """Number of track elements T."""
        return self.track_image_index.shape[0]

    @cached_property
    def _name_to_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def image_index(self, name: str) -> int:
        """Index of the image called ``name``; :class:`KeyError` naming it if absent."""
        try:
            return self._name_to_index[name]
        except KeyError:
            raise KeyError(
                f"image {name!r} is not in this map ({self.num_images} images)"
            ) from None

    def track(self, point_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations of one point: image indices ``(L,)`` and keypoint indices ``(L,)``."""
        a, b = int(self.track_offsets[point_index]), int(self.track_offsets[point_index + 1])
        return self.track_image_index[a:b], self.track_keypoint_index[a:b]

    def observations(self, image_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The keypoints of one image that have a 3D point, and those points.

        Returns:
            keypoints ``(M, 2)`` (dgeo convention), world points ``(M, 3)`` and point indices
            ``(M,)``, in keypoint order.
        """
        idx = self.keypoint_point_index[image_index]
        mask = idx >= 0
        return self.keypoints[image_index][mask], self.xyz[idx[mask]], idx[mask]

    def covisible(self, image_index: int, min_shared: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Images that see 3D points of ``image_index``, most shared points first.

        Returns:
            image indices ``(J,)`` (``image_index`` itself excluded) and the number of distinct
            3D points each shares with it ``(J,)``, sorted by decreasing count (ties by index).
        """
        idx = self.keypoint_point_index[image_index]
        points = torch.unique(idx[idx >= 0]).numpy()
        flat, row = csr_gather(self.track_offsets.numpy(), points)
        n = self.num_images
        pairs = np.unique(points[row] * n + self.track_image_index.numpy()[flat])
        counts = torch.from_numpy(np.bincount(pairs % n, minlength=n))
        counts[image_index] = 0
        order = torch.sort(-counts, stable=True).indices
        order = order[counts[order] >= max(min_shared, 1)]
        return order, counts[order]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_colmap(cls, reconstruction: pycolmap.Reconstruction) -> ReferenceMap:
        """Convert an in-memory ``pycolmap.Reconstruction`` (registered images only).

        The bulk arrays are read back from a temporary binary copy of the model with numpy.

        Raises:
            CameraModelError: an image uses a camera model dgeo does not support.
        """
        rec = reconstruction
        reg = sorted(rec.reg_image_ids())
        images = [rec.image(i) for i in reg]
        cam_ids = sorted({im.camera_id for im in images})
        cams = {c: camera_from_colmap(rec.camera(c)) for c in cam_ids}
        poses = poses_from_colmap([im.cam_from_world() for im in images]) if images else None
        with tempfile.TemporaryDirectory(prefix="dgeo-colmap-") as tmp:
            rec.write_binary(tmp)
            ids, names, points2D = parse_images_bin(Path(tmp, "images.bin"))
            if not np.array_equal(ids, np.asarray(reg, np.int64)) or names != [
                im.name for im in images
            ]:
                raise DgeoError(
                    f"pycolmap {pycolmap.__version__} wrote images.bin with other images than its "
                    "registered ones; dgeo.io.colmap needs updating for this version."
                )
            all_p2d = np.concatenate(points2D) if points2D else np.zeros(0, POINT2D_DTYPE)
            pids = all_p2d["point3D_id"]
            ref_ids, ref_len = np.unique(pids[pids >= 0].astype(np.uint64), return_counts=True)
            heads, elems = parse_points3D_bin(Path(tmp, "points3D.bin"), ref_ids, ref_len)
        return cls._from_arrays_colmap(images, cams, poses, ids, names, points2D, heads, elems)

    @classmethod
    def _from_arrays_colmap(cls, images, cams, poses, ids, names, points2D, heads, elems):
        """Assemble a map from parsed COLMAP arrays (ids and conventions converted here)."""
        n_img = len(ids)
        lengths = heads["length"].astype(np.int64)
        order = np.argsort(heads["id"], kind="stable")
        if not np.array_equal(order, np.arange(len(order))):  # sort points (and tracks) by id
            flat, _ = csr_gather(np.concatenate([[0], np.cumsum(lengths)]), order)
            heads, elems, lengths = heads[order], elems[flat], lengths[order]
        point_ids = heads["id"].astype(np.int64)
        elems = elems.astype(np.int64).reshape(-1, 2)
        point_of_elem = np.repeat(np.arange(len(point_ids)), lengths)
        # track elements in images that are not in the map (unregistered) are dropped
        img_idx = np.minimum(np.searchsorted(ids, elems[:, 0]), max(n_img - 1, 0))
        keep = ids[img_idx] == elems[:, 0] if n_img else np.zeros(len(elems), bool)
        counts = np.bincount(point_of_elem[keep], minlength=len(point_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        keypoints, kp_index = [], []
        for p2d in points2D:
            keypoints.append(torch.from_numpy(p2d["xy"] - 0.5))
            pid = p2d["point3D_id"]
            j = np.minimum(np.searchsorted(point_ids, pid), max(len(point_ids) - 1, 0))
            hit = (pid >= 0) & (point_ids[j] == pid) if len(point_ids) else pid < -1
            kp_index.append(torch.from_numpy(np.where(hit, j, -1).astype(np.int64)))

        cam_ids = np.asarray([im.camera_id for im in images], np.int64)
        models = [cams[int(c)].model for c in cam_ids]
        uniq = sorted(cams)
        cam_batch = Camera.stack([cams[c] for c in uniq]) if uniq else _empty_camera()
        cameras = cam_batch[torch.from_numpy(np.searchsorted(uniq, cam_ids))]
        return cls(
            names=list(names),
            image_ids=torch.from_numpy(ids.copy()),
            camera_ids=torch.from_numpy(cam_ids),
            cameras=cameras,
            camera_models=models,
            cam_from_world=poses if poses is not None else Pose.identity((0,), torch.float64),
            keypoints=keypoints,
            keypoint_point_index=kp_index,
            xyz=torch.from_numpy(heads["xyz"].copy()),
            rgb=torch.from_numpy(heads["rgb"].copy()),
            point_ids=torch.from_numpy(point_ids),
            point_errors=torch.from_numpy(heads["error"].copy()),
            track_offsets=torch.from_numpy(offsets),
            track_image_index=torch.from_numpy(img_idx[keep].astype(np.int64)),
            track_keypoint_index=torch.from_numpy(elems[keep, 1].astype(np.int64)),
        )

    @classmethod
    def from_arrays(
        cls,
        names: Sequence[str],
        cameras: Camera | Sequence[Camera],
        cam_from_world: Pose,
        keypoints: Sequence[ArrayLike],
        xyz: ArrayLike,
        track_image_index: ArrayLike,
        track_keypoint_index: ArrayLike,
        track_offsets: ArrayLike,
        *,
        rgb: ArrayLike | None = None,
        point_errors: ArrayLike | None = None,
        image_ids: ArrayLike | None = None,
        camera_ids: ArrayLike | None = None,
        point_ids: ArrayLike | None = None,
    ) -> ReferenceMap:
        """Build a map from dgeo arrays (synthetic scenes, triangulation results).

        Args:
            names: ``I`` unique image names without whitespace at the ends.
            cameras: one :class:`Camera` batch ``(I,)``, or ``I`` unbatched cameras (mixed
                models are promoted, their own models kept for writing).
            cam_from_world: :class:`Pose` ``(I,)``.
            keypoints: ``I`` arrays ``(K_i, 2)`` in dgeo's pixel convention.
            xyz: ``(P, 3)`` world points.
            track_image_index: ``(T,)`` image index of each observation.
            track_keypoint_index: ``(T,)`` keypoint index of each observation in its image.
            track_offsets: ``(P + 1,)`` CSR offsets of the tracks, ``track_offsets[0] == 0``.
            rgb: ``(P, 3)`` uint8 colours; black if ``None``.
            point_errors: ``(P,)`` reprojection errors; -1 (unknown) if ``None``.
            image_ids, point_ids: ``(I,)`` / ``(P,)`` positive COLMAP ids; ``1..N`` if ``None``.
            camera_ids: ``(I,)`` positive COLMAP camera ids; if ``None``, images with identical
                model, size and parameters share one id, numbered by first appearance.
        Raises:
            InputError: inconsistent sizes, indices out of range, a keypoint in two tracks,
                duplicate names or ids.
        """
        names = [str(n) for n in names]
        n_img = len(names)
        if len(set(names)) != n_img:
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(f"image name {dup!r} appears more than once; names must be unique.")
        if isinstance(cameras, Camera):
            models = [cameras.model] * n_img
            cams = cameras.double()
        else:
            models = [c.model for c in cameras]
            cams = Camera.stack([c.double() for c in cameras]) if cameras else _empty_camera()
        if tuple(cams.shape) != (n_img,) or tuple(cam_from_world.shape) != (n_img,):
            raise ShapeError(
                f"{n_img} names need cameras and cam_from_world of batch shape ({n_img},), got "
                f"{tuple(cams.shape)} and {tuple(cam_from_world.shape)}."
            )
        if len(keypoints) != n_img:
            raise ShapeError(f"{n_img} names but {len(keypoints)} keypoint arrays.")
        kps = [as_tensor(k, torch.float64).cpu().reshape(-1, 2) for k in keypoints]
        xyz = as_tensor(xyz, torch.float64).cpu()
        if xyz.dim() != 2 or xyz.shape[1] != 3:
            raise ShapeError(f"xyz must have shape (P, 3), got {tuple(xyz.shape)}.")
        n_pts = xyz.shape[0]
        tii = as_tensor(track_image_index, torch.int64).cpu().reshape(-1)
        tki = as_tensor(track_keypoint_index, torch.int64).cpu().reshape(-1)
        off = as_tensor(track_offsets, torch.int64).cpu().reshape(-1)
        if off.shape != (n_pts + 1,) or int(off[0]) != 0 or int(off[-1]) != len(tii):
            raise InputError(
                f"track_offsets must have shape ({n_pts + 1},), start at 0, end at the number of "
                f"observations {len(tii)} and not decrease; got shape {tuple(off.shape)}."
            )
        if bool((off[1:] < off[:-1]).any()) or tki.shape != tii.shape:
            raise InputError("track_offsets must not decrease; track index arrays must match.")
        if len(tii) and (int(tii.min()) < 0 or int(tii.max()) >= n_img):
            raise InputError(f"track_image_index must lie in [0, {n_img}).")
        n_kp = torch.tensor([len(k) for k in kps], dtype=torch.int64)
        if len(tii) and bool(((tki < 0) | (tki >= n_kp[tii])).any()):
            bad = int(torch.nonzero((tki < 0) | (tki >= n_kp[tii]))[0, 0])
            raise InputError(
                f"track element {bad} refers to keypoint {int(tki[bad])} of image "
                f"{int(tii[bad])}, which has {int(n_kp[tii[bad]])} keypoints."
            )
        kp_start = torch.cumsum(n_kp, 0) - n_kp
        flat = kp_start[tii] + tki if n_img else tii
        total = int(n_kp.sum())
        if len(flat) and int(torch.bincount(flat, minlength=total).max()) > 1:
            raise InputError(
                "a keypoint belongs to more than one track; each keypoint may observe one point."
            )
        point_of = torch.repeat_interleave(torch.arange(n_pts), off[1:] - off[:-1])
        kp_flat = torch.full((total,), -1, dtype=torch.int64)
        kp_flat[flat] = point_of
        kp_index = list(torch.split(kp_flat, n_kp.tolist())) if n_img else []

        def ids_or_default(ids, n, what):
            if ids is None:
                return torch.arange(1, n + 1, dtype=torch.int64)
            ids = as_tensor(ids, torch.int64).cpu().reshape(-1)
            if ids.shape != (n,) or (n and int(ids.min()) < 1) or len(torch.unique(ids)) != n:
                raise InputError(f"{what} must be {n} distinct positive integers.")
            return ids

        image_ids_t = ids_or_default(image_ids, n_img, "image_ids")
        point_ids_t = ids_or_default(point_ids, n_pts, "point_ids")
        if camera_ids is None:
            camera_ids_t = _dedupe_cameras(cams, models)
        else:
            camera_ids_t = as_tensor(camera_ids, torch.int64).cpu().reshape(-1)
            if camera_ids_t.shape != (n_img,) or (n_img and int(camera_ids_t.min()) < 1):
                raise InputError(f"camera_ids must be {n_img} positive integers.")
        rgb_t = (
            torch.zeros(n_pts, 3, dtype=torch.uint8)
            if rgb is None
            else as_tensor(rgb, torch.uint8).cpu().reshape(n_pts, 3)
        )
        err_t = (
            torch.full((n_pts,), -1.0, dtype=torch.float64)
            if point_errors is None
            else as_tensor(point_errors, torch.float64).cpu().reshape(n_pts)
        )
        return cls(
            names=names,
            image_ids=image_ids_t,
            camera_ids=camera_ids_t,
            cameras=cams,
            camera_models=models,
            cam_from_world=cam_from_world.detach().double().to("cpu"),
            keypoints=kps,
            keypoint_point_index=kp_index,
            xyz=xyz,
            rgb=rgb_t,
            point_ids=point_ids_t,
            point_errors=err_t,
            track_offsets=off,
            track_image_index=tii,
            track_keypoint_index=tki,
        )

    # ------------------------------------------------------------------ output
    def to_colmap(self) -> pycolmap.Reconstruction:
        """Build a ``pycolmap.Reconstruction`` (trivial rigs and frames, one per camera/image).

        Cameras are written in each image's original model (``camera_models``), keypoints and
        principal points shifted by ``+0.5``. The loop over points is pycolmap's API (one
        ``add_point3D_with_id`` per point), about 1 s per million observations.

        Raises:
            InputError: images that share a camera id have different intrinsics or models.
        """
        rec = pycolmap.Reconstruction()
        cam_ids = self.camera_ids.numpy()
        uniq, first, inverse = np.unique(cam_ids, return_index=True, return_inverse=True)
        ref = torch.from_numpy(first[inverse])
        same = torch.equal(self.cameras.params[ref], self.cameras.params) and torch.equal(
            self.cameras.size[ref], self.cameras.size
        )
        same = same and all(
            self.camera_models[int(f)] == m for f, m in zip(ref, self.camera_models, strict=True)
        )
        if not same:
            raise InputError(
                "images that share a COLMAP camera id have different camera models, sizes or "
                "parameters; give them distinct camera_ids."
            )
        for cid, i in zip(uniq.tolist(), first.tolist(), strict=True):
            cam = self.cameras[i].to_model(self.camera_models[i])
            rec.add_camera_with_trivial_rig(camera_to_colmap(cam, camera_id=cid))
        for i, name in enumerate(self.names):
            image = pycolmap.Image(
                name=name,
                keypoints=(self.keypoints[i] + 0.5).numpy(),
                camera_id=int(cam_ids[i]),
                image_id=int(self.image_ids[i]),
            )
            rec.add_image_with_trivial_frame(image, pose_to_colmap(self.cam_from_world[i]))
        elems = list(
            map(
                pycolmap.TrackElement,
                self.image_ids[self.track_image_index].tolist(),
                self.track_keypoint_index.tolist(),
            )
        )
        off = self.track_offsets.tolist()
        xyz, rgb, err = self.xyz.numpy(), self.rgb.numpy(), self.point_errors.tolist()
        for p, pid in enumerate(self.point_ids.tolist()):  # pycolmap has no bulk point API
            point = pycolmap.Point3D()
            point.xyz, point.color, point.error = xyz[p], rgb[p], err[p]
            point.track = pycolmap.Track(elems[off[p] : off[p + 1]])
            rec.add_point3D_with_id(pid, point)
        return rec

    def write(self, path: str | os.PathLike, text: bool = False) -> Path:
        """Write the map as a COLMAP model folder, atomically; returns the folder.

        Args:
            path: the model folder; created if missing. Other files in it are kept, model files
                of the other format (``.txt`` vs ``.bin``) are removed so that readers cannot
                pick up a stale model.
            text: write ``.txt`` files instead of ``.bin``.
        """
        rec = self.to_colmap()
        stale = [f"{n}.{e}" for n in _ALL_MODEL_FILES for e in ("bin", "txt")]
        with atomic_directory(path, replace_names=stale) as tmp:
            (rec.write_text if text else rec.write_binary)(str(tmp))
        return Path(path)

    def __repr__(self) -> str:
        return (
            f"ReferenceMap({self.num_images} images, {self.num_points} points, "
            f"{self.num_observations} observations, cameras {self.cameras.model})"
        )


def _empty_camera() -> Camera:
    return Camera("PINHOLE", torch.zeros(0), torch.zeros(0), torch.zeros(0, 4, dtype=torch.float64))


def _dedupe_cameras(cams: Camera, models: Sequence[str]) -> torch.Tensor:
    """COLMAP camera ids ``(I,)``: equal model, size and params share an id (first-seen order)."""
    n = cams.shape[0] if cams.shape else 0
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    model_idx = torch.tensor([SUPPORTED_MODELS.index(m) for m in models], dtype=torch.float64)
    key = torch.cat([model_idx[:, None], cams.size.double(), cams.params.double()], -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, torch.arange(n), reduce="amin")
    rank = torch.argsort(torch.argsort(first))
    return rank[inverse] + 1


def load_reference_map(path: str | os.PathLike) -> ReferenceMap:
    """Load a COLMAP model folder (binary or text) as a :class:`ReferenceMap`.

    Raises:
        DataFileNotFoundError: missing folder, or a folder without a model.
        ParseError: pycolmap could not read the files.
        CameraModelError: a camera model dgeo does not support.
    """
    return ReferenceMap.from_colmap(read_reconstruction(path))


def _default_colmap_params(model: str, width: int, height: int) -> list[float]:
    """Plausible COLMAP-convention parameters: f = 1.25 w, centred c, mild distortion."""
    f, cx, cy = 1.25 * width, width / 2, height / 2
    return {
        "SIMPLE_PINHOLE": [f, cx, cy],
        "PINHOLE": [f, 0.99 * f, cx, cy],
        "SIMPLE_RADIAL": [f, cx, cy, 0.05],
        "RADIAL": [f, cx, cy, 0.05, -0.01],
        "OPENCV": [f, 0.99 * f, cx, cy, 0.05, -0.01, 0.001, -0.001],
        "FULL_OPENCV": [f, 0.99 * f, cx, cy, 0.05, -0.01, 0.001, -0.001, 0.001, 0.0, 0.0, 0.0],
    }[model]


def synthesize_reference_map(
    num_images: int,
    num_points: int,
    *,
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: ArrayLike | None = None,
    width: int = 1024,
    height: int = 768,
    num_cameras: int = 1,
    track_length: int | None = None,
    num_unmatched_keypoints: int = 10,
    seed: int = 0,
) -> ReferenceMap:
    """A noise-free synthetic scene from ``pycolmap.synthesize_dataset``, as a map.

    Cameras look at points scattered around the origin; every keypoint with a 3D point is its
    exact projection (reprojection error ~1e-13 px), so PnP on it recovers the poses exactly.

    Args:
        num_images: number of images, split evenly over ``num_cameras`` cameras.
        num_points: number of 3D points.
        camera_model: a model in :data:`SUPPORTED_MODELS`.
        camera_params: ``(P,)`` parameters in COLMAP order and *dgeo's* pixel convention;
            ``f = 1.25 width``, centred principal point and mild distortion if ``None``.
        width, height: image size in pixels.
        num_cameras: number of cameras (one trivial rig each).
        track_length: images observing each point (at least 2); every image if ``None``.
        num_unmatched_keypoints: extra keypoints per image without a 3D point.
        seed: pycolmap's random seed; equal seeds give equal maps.
    Returns:
        a :class:`ReferenceMap` of ``num_images`` images and ``num_points`` points.
    """
    _check_model(camera_model)
    if num_images < 1 or num_cameras < 1 or num_images % num_cameras:
        raise InputError(
            f"num_images ({num_images}) must be a positive multiple of num_cameras ({num_cameras})."
        )
    if track_length is not None and not 2 <= track_length <= num_images:
        raise InputError(
            f"track_length must be in [2, num_images={num_images}], got {track_length}."
        )
    if camera_params is None:
        params = _default_colmap_params(camera_model, width, height)
    else:
        params = params_to_colmap(camera_model, as_tensor(camera_params, torch.float64)).tolist()
    pycolmap.set_random_seed(int(seed))
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=num_cameras,
        num_cameras_per_rig=1,
        num_frames_per_rig=num_images // num_cameras,
        num_points3D=num_points,
        track_length=-1 if track_length is None else int(track_length),
        num_points2D_without_point3D=num_unmatched_keypoints,
        camera_width=width,
        camera_height=height,
        camera_model_id=getattr(pycolmap.CameraModelId, camera_model),
        camera_params=params,
    )
    return ReferenceMap.from_colmap(pycolmap.synthesize_dataset(options))


def write_reconstruction(
    path: str | os.PathLike,
    names: Sequence[str],
    cameras: Camera | Sequence[Camera],
    cam_from_world: Pose,
    keypoints: Sequence[ArrayLike],
    xyz: ArrayLike,
    track_image_index: ArrayLike,
    track_keypoint_index: ArrayLike,
    track_offsets: ArrayLike,
    *,
    rgb: ArrayLike | None = None,
    point_errors: ArrayLike | None = None,
    image_ids: ArrayLike | None = None,
    camera_ids: ArrayLike | None = None,
    point_ids: ArrayLike | None = None,
    text: bool = False,
) -> ReferenceMap:
    """Write dgeo arrays as a COLMAP model folder (atomically) and return the map.

    The arguments are those of :meth:`ReferenceMap.from_arrays` (shapes there); keypoints and
    principal points are in dgeo's pixel convention and shifted by ``+0.5`` on the way out.
    """
    rmap = ReferenceMap.from_arrays(
        names,
        cameras,
        cam_from_world,
        keypoints,
        xyz,
        track_image_index,
        track_keypoint_index,
        track_offsets,
        rgb=rgb,
        point_errors=point_errors,
        image_ids=image_ids,
        camera_ids=camera_ids,
        point_ids=point_ids,
    )
    rmap.write(path, text=text)
    return rmap
