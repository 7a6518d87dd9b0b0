"""KFNet-style image sequences: folders, camera files and the datasets of the SCR recipes.

A **sequence folder** (KFNet's layout, ALGORITHMS 3.1, as ``dgeo synth`` writes it under
``sequences/<condition>/``) holds:

- ``image_list.txt``: image paths in time order, relative to the folder or absolute;
- ``label_list.txt`` (optional for localization, required for training): one raw label file per
  image, float32, C order, ``H x W x 4`` (world xyz in metres + validity; xyz = -1 where
  invalid), no header, at full resolution or 1/8 (the size comes from the byte count);
- ``transform.txt`` (optional, identity when absent): the rigid 4x4 transform ``T`` (rotation +
  translation) into the decorrelated frame SCoordNet regresses in;
- ``camera.txt`` (optional): one line ``MODEL WIDTH HEIGHT PARAMS...`` in COLMAP's parameter
  order and pixel convention (as in hloc's ``queries_with_intrinsics.txt`` without the name);
- ground-truth poses (optional): ``poses.txt`` in the hloc results format (``name qw qx qy qz
  tx ty tz``, ``cam_from_world``), or 7-Scenes ``<frame>.pose.txt`` files (4x4 camera-to-world)
  next to the ``<frame>.color.png`` images.

Cameras (:func:`parse_camera`) come from a file, an inline ``"PINHOLE 640 480 525 525 320 240"``
string, the preset ``"7scenes"`` (that same string: f = 525, principal point (320, 240) in
COLMAP's convention, i.e. (319.5, 239.5) in dgeo's, where the top-left pixel centre is (0, 0)),
or the folder's ``camera.txt``.

Label cells follow the stride-8 convention of :func:`dgeo.geometry.cell_pixels`: cell ``(i, j)``
is pixel ``(8 j + 4, 8 i + 4)``; full-resolution labels are subsampled there (nearest).

Datasets: :class:`FrameDataset` (single frames, SCoordNet) and :class:`FrameGroupDataset`
(``G`` consecutive frames, OFlowNet pairs and KFNet groups), with seeded photometric and joint
image + label rotation augmentation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dgeo.errors import (
    DataFileNotFoundError,
    InputError,
    ParseError,
    ShapeError,
    require_file,
)
from dgeo.geometry import Camera, Pose, cell_pixels, sample
from dgeo.io.atomic import atomic_write_lines
from dgeo.io.colmap import params_from_colmap, params_to_colmap
from dgeo.io.formats import (
    read_hloc_results,
    read_kfnet_label,
    read_path_list,
    read_transform,
)
from dgeo.io.images import check_image_size, read_image

__all__ = [
    "CAMERA_FORMAT",
    "CAMERA_PRESETS",
    "FrameDataset",
    "FrameGroupDataset",
    "SequenceFolder",
    "open_folders",
    "parse_camera",
    "photometric",
    "read_camera_file",
    "read_sequence_poses",
    "resolve_input_folder",
    "rotate_frame",
    "write_camera_file",
]

CAMERA_FORMAT = (
    "one line 'MODEL WIDTH HEIGHT PARAMS...' (COLMAP model name, integer size, parameters in "
    "COLMAP order and pixel convention), e.g. 'PINHOLE 640 480 525 525 320 240'"
)
#: Named cameras for :func:`parse_camera` (COLMAP convention, like a camera file's line).
CAMERA_PRESETS: dict[str, str] = {"7scenes": "PINHOLE 640 480 525 525 320 240"}
#: The condition whose sequence ``dgeo synth`` renders first (mapping appearance).
_REFERENCE_CONDITION = "overcast-reference"
_FOLDER_HINT = (
    "expected a KFNet sequence folder (image_list.txt, label_list.txt, transform.txt) or a "
    "`dgeo synth` root with sequences/<condition>/ folders"
)


# ---------------------------------------------------------------------------------- cameras
class _CameraSpecError(Exception):
    """A malformed camera line (the caller adds where it came from)."""


def _camera_from_tokens(tokens: Sequence[str]) -> Camera:
    """A float64 :class:`Camera` (batch shape ``()``, dgeo convention) from ``MODEL W H
    PARAMS...`` tokens (COLMAP convention).

    Raises:
        _CameraSpecError: what is wrong, without the location.
    """
    if len(tokens) < 4:
        raise _CameraSpecError(f"{len(tokens)} field(s); expected {CAMERA_FORMAT}.")
    model = tokens[0].upper()
    if model not in Camera.PARAM_NAMES:
        raise _CameraSpecError(
            f"camera model {tokens[0]!r} is not supported; use one of "
            f"{', '.join(Camera.PARAM_NAMES)}. Expected {CAMERA_FORMAT}."
        )
    names = Camera.PARAM_NAMES[model]
    if len(tokens) - 3 != len(names):
        raise _CameraSpecError(
            f"{model} takes {len(names)} parameters ({' '.join(names)}), got "
            f"{len(tokens) - 3}. Expected {CAMERA_FORMAT}."
        )
    try:
        width, height = int(tokens[1]), int(tokens[2])
    except ValueError:
        raise _CameraSpecError(
            f"width and height must be integers, got {tokens[1]!r} {tokens[2]!r}; expected "
            f"{CAMERA_FORMAT}."
        ) from None
    if width <= 0 or height <= 0:
        raise _CameraSpecError(f"the size must be positive, got {width} x {height}.")
    try:
        params = [float(t) for t in tokens[3:]]
    except ValueError:
        raise _CameraSpecError(f"parameters {list(tokens[3:])} are not all numbers.") from None
    if not all(math.isfinite(p) for p in params):
        raise _CameraSpecError(f"parameters must be finite, got {list(tokens[3:])}.")
    for name, value in zip(names, params, strict=True):
        if name in ("f", "fx", "fy") and value <= 0:
            raise _CameraSpecError(f"focal length {name} must be positive, got {value}.")
    dgeo_params = params_from_colmap(model, torch.tensor(params, dtype=torch.float64))
    return Camera(model, width, height, dgeo_params)


def _inline_camera(text: str) -> Camera:
    try:
        return _camera_from_tokens(text.split())
    except _CameraSpecError as exc:
        raise InputError(f"camera {text!r}: {exc}") from None


def read_camera_file(path: str | os.PathLike) -> Camera:
    """Read a camera file: one line ``MODEL WIDTH HEIGHT PARAMS...`` (COLMAP order and pixel
    convention; blank lines and ``#`` comments are skipped; an hloc-style leading image name is
    tolerated).

    Returns:
        a float64 :class:`Camera` of batch shape ``()`` in dgeo's convention (``cx, cy -= 0.5``).
    Raises:
        DataFileNotFoundError: no such file. ParseError: not exactly one camera line, or a
            malformed one (the message names the file and line).
    """
    path = require_file(path, "camera file")
    if path.is_dir():
        raise InputError(f"camera file {path} is a folder; pass the file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParseError(path, None, f"not UTF-8 text; expected {CAMERA_FORMAT}.") from None
    lines = [
        (n, s.strip())
        for n, s in enumerate(text.splitlines(), 1)
        if s.strip() and not s.strip().startswith("#")
    ]
    if len(lines) != 1:
        raise ParseError(path, None, f"{len(lines)} camera lines; expected {CAMERA_FORMAT}.")
    n, line = lines[0]
    tokens = line.split()
    if len(tokens) > 1 and tokens[0].upper() not in Camera.PARAM_NAMES:
        if tokens[1].upper() in Camera.PARAM_NAMES:  # "name MODEL W H ..." (hloc query line)
            tokens = tokens[1:]
    try:
        return _camera_from_tokens(tokens)
    except _CameraSpecError as exc:
        raise ParseError(path, n, str(exc)) from None


def write_camera_file(path: str | os.PathLike, camera: Camera) -> Path:
    """Write ``camera`` (batch shape ``()``, integer size) as one line ``MODEL W H PARAMS...``
    in COLMAP's convention (``cx, cy += 0.5``), atomically; :func:`read_camera_file` reads it
    back to the same float64 values."""
    if not isinstance(camera, Camera) or camera.shape != ():
        raise ShapeError("write_camera_file expects one Camera of batch shape ().")
    w, h = float(camera.width), float(camera.height)
    if w != round(w) or h != round(h):
        raise InputError(f"camera size {w} x {h} is not integer.")
    params = params_to_colmap(camera.model, camera.params.detach().double().cpu()).tolist()
    line = " ".join([camera.model, str(round(w)), str(round(h)), *(repr(float(p)) for p in params)])
    return atomic_write_lines(path, [line])


def parse_camera(
    spec: str | os.PathLike | Camera | None, folder: str | os.PathLike | None = None
) -> Camera:
    """The camera of a sequence from a user's spec.

    Args:
        spec: a :class:`Camera` (batch shape ``()``); a preset name (``"7scenes"``: PINHOLE
            640x480, f = 525, c = (320, 240) in COLMAP's convention); an inline line
            ``"PINHOLE 640 480 525 525 320 240"`` (COLMAP convention); a camera file path; or
            None: ``folder/camera.txt``.
        folder: the sequence folder whose ``camera.txt`` is the default.
    Returns:
        a float64 :class:`Camera` of batch shape ``()`` in dgeo's pixel convention.
    Raises:
        InputError: no camera can be found (the message says how to give one), a bad inline
            spec; DataFileNotFoundError / ParseError for camera files.
    """
    if isinstance(spec, Camera):
        if spec.shape != ():
            raise ShapeError(f"the sequence camera must have batch shape (), got {spec.shape}.")
        return spec.double()
    if spec is None:
        if folder is not None and (Path(folder) / "camera.txt").is_file():
            return read_camera_file(Path(folder) / "camera.txt")
        where = f"{folder}/camera.txt does not exist" if folder is not None else "none given"
        raise InputError(
            f"no camera for the sequence ({where}); pass --camera 7scenes, an inline "
            f"'PINHOLE 640 480 525 525 320 240', or a camera file ({CAMERA_FORMAT})."
        )
    text = str(spec).strip()
    if text.lower() in CAMERA_PRESETS:
        return _inline_camera(CAMERA_PRESETS[text.lower()])
    tokens = text.split()
    if len(tokens) >= 4 and tokens[0].upper() in Camera.PARAM_NAMES:
        return _inline_camera(text)
    path = Path(text)
    if not path.exists():
        raise DataFileNotFoundError(
            f"camera {text!r} is neither a preset ({', '.join(CAMERA_PRESETS)}), an inline "
            f"'MODEL W H PARAMS...' nor an existing camera file; check the path."
        )
    return read_camera_file(path)


# ---------------------------------------------------------------------------------- folders
def _is_sequence_folder(path: Path) -> bool:
    return (path / "image_list.txt").is_file()


def resolve_input_folder(path: str | os.PathLike) -> list[Path]:
    """The sequence folders of an input: a KFNet sequence folder itself, a `dgeo synth` root
    (its ``sequences/<condition>/`` folders, the reference condition first, then by name), or a
    folder of sequence folders (by name).

    Raises:
        DataFileNotFoundError: ``path`` does not exist. InputError: no sequence folder in it.
    """
    root = Path(path)
    if not root.exists():
        raise DataFileNotFoundError(f"input folder {root} does not exist; check the path.")
    if not root.is_dir():
        raise InputError(f"input folder {root} is a file; {_FOLDER_HINT}.")
    if _is_sequence_folder(root):
        return [root]
    parent = root / "sequences" if (root / "sequences").is_dir() else root
    found = sorted(p for p in parent.iterdir() if p.is_dir() and _is_sequence_folder(p))
    found.sort(key=lambda p: p.name != _REFERENCE_CONDITION)  # stable: reference first
    if not found:
        raise InputError(f"{root} holds no image_list.txt; {_FOLDER_HINT}.")
    return found


def _check_rigid(T: torch.Tensor, path: Path, tol: float = 1e-4) -> None:
    R = T[:3, :3]
    err = float((R.T @ R - torch.eye(3, dtype=T.dtype)).abs().max())
    det = float(torch.linalg.det(R))
    if err > tol or abs(det - 1) > tol:
        raise ParseError(
            path,
            None,
            f"is not a rigid transform (|R^T R - I| = {err:.2e}, det R = {det:.4f}); expected "
            "a 4x4 [R t; 0 0 0 1] with R a rotation (KFNet's centring + PCA; flip one axis of "
            "a PCA basis with det -1), in metres.",
        )


def _rigid_from_matrix(M: np.ndarray, path: Path, tol: float = 1e-2) -> torch.Tensor:
    """``(4, 4)`` float64 rigid matrix from ``M``, re-orthonormalised (SVD) within ``tol``
    (7-Scenes' poses deviate from orthonormal by up to ~1e-3)."""
    if M.shape != (4, 4) or not np.isfinite(M).all():
        raise ParseError(path, None, f"holds {M.shape} values; expected a finite 4x4 matrix.")
    if np.abs(M[3] - [0, 0, 0, 1]).max() > tol:
        raise ParseError(path, None, f"last row {M[3].tolist()}; expected 0 0 0 1.")
    u, s, vt = np.linalg.svd(M[:3, :3])
    if np.abs(s - 1).max() > tol or np.linalg.det(u @ vt) < 0:
        raise ParseError(path, None, "the rotation part is not a rotation; expected a rigid 4x4.")
    out = torch.from_numpy(M.astype(np.float64)).clone()
    out[:3, :3] = torch.from_numpy(u @ vt)
    out[3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return out


def _read_poses(root: Path, names: list[str], image_paths: list[Path]) -> Pose | None:
    """``cam_from_world`` poses ``(N,)`` of a sequence's images from ``poses.txt`` or 7-Scenes
    ``*.pose.txt`` files (None when neither exists)."""
    poses_txt = root / "poses.txt"
    if poses_txt.is_file():
        listed, poses = read_hloc_results(poses_txt)
        index = {n: i for i, n in enumerate(listed)}
        base = {Path(n).name: i for i, n in enumerate(listed)}
        order = []
        for name, path in zip(names, image_paths, strict=True):
            i = index.get(name, base.get(path.name))
            if i is None:
                raise ParseError(
                    poses_txt, None, f"has no pose for image {name}; expected one line per "
                    "image of image_list.txt (name qw qx qy qz tx ty tz, world-to-camera).",
                )  # fmt: skip
            order.append(i)
        return poses[torch.tensor(order)]
    pose_files = [p.with_name(p.name.split(".")[0] + ".pose.txt") for p in image_paths]
    if not pose_files[0].is_file():
        return None
    mats = []
    for path in pose_files:  # 7-Scenes: camera-to-world 4x4
        if not path.is_file():
            raise DataFileNotFoundError(
                f"{path} does not exist, but {pose_files[0].name} does; give every frame "
                "a .pose.txt or none."
            )
        try:
            M = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise ParseError(path, None, f"not a 4x4 matrix of numbers ({exc}).") from None
        mats.append(_rigid_from_matrix(M, path))
    world_from_cam = Pose.from_matrix(torch.stack(mats))
    return world_from_cam.inv()


def read_sequence_poses(root: str | os.PathLike) -> tuple[list[str], Pose]:
    """The ground truth of a KFNet sequence folder without opening its images or camera:
    the names of ``image_list.txt`` and their ``cam_from_world`` poses ``(N,)`` float64, from
    ``poses.txt`` or 7-Scenes ``*.pose.txt`` files (what ``dgeo evaluate`` reads).

    Raises:
        DataFileNotFoundError, InputError, ParseError: as :class:`SequenceFolder`, or a folder
        without poses.
    """
    root = Path(root)
    image_list = root / "image_list.txt"
    if not image_list.is_file():
        raise InputError(f"{root} has no image_list.txt; {_FOLDER_HINT}.")
    entries = read_path_list(image_list)
    paths = [e if e.is_absolute() else root / e for e in entries]
    names = [e.as_posix() for e in entries]
    poses = _read_poses(root, names, paths)
    if poses is None:
        raise InputError(
            f"{root} holds no poses: give it poses.txt (name qw qx qy qz tx ty tz, "
            "world-to-camera) or a 7-Scenes .pose.txt per frame."
        )
    return names, poses


class SequenceFolder:
    """One KFNet sequence folder (see the module docstring), checked when opened.

    Args:
        root: the folder.
        camera: camera spec for :func:`parse_camera` (None: ``root/camera.txt``).
        min_frames: fewer frames raise :class:`ParseError` naming ``image_list.txt``.
        require_labels: raise if ``label_list.txt`` is missing (training); otherwise
            ``label_paths`` is None without it.

    Attributes:
        root: the folder. image_paths, label_paths: the ``N`` files (``label_paths`` None without
        a label list). names: the image list's entries, as written. transform: ``(4, 4)``
        float64 ``T`` (identity without ``transform.txt``). poses: :class:`Pose` ``(N,)``
        float64 ``cam_from_world``, or None. camera: :class:`Camera` of the full images, batch
        shape ``()``, dgeo convention. image_size: ``(H, W)``.

    Raises:
        DataFileNotFoundError: a listed image or label file is missing.
        ParseError: lists of different lengths, empty or too short lists, a transform that is
            not rigid, poses that do not cover every image, the first image not of the camera's
            size (InputError).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        camera: str | os.PathLike | Camera | None = None,
        min_frames: int = 2,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            if not root.exists():
                raise DataFileNotFoundError(f"sequence folder {root} does not exist.")
            raise InputError(f"sequence folder {root} is a file; {_FOLDER_HINT}.")
        image_list = root / "image_list.txt"
        if not image_list.is_file():
            raise InputError(f"{root} has no image_list.txt; {_FOLDER_HINT}.")
        self.root = root
        entries = read_path_list(image_list)
        self.names = [e.as_posix() for e in entries]
        self.image_paths = [self._resolve(e, image_list, n) for n, e in enumerate(entries, 1)]
        if len(self.image_paths) < max(1, min_frames):
            raise ParseError(
                image_list,
                None,
                f"lists {len(self.image_paths)} image(s); a sequence needs at least "
                f"{max(1, min_frames)} frames in time order.",
            )
        label_list = root / "label_list.txt"
        self.label_paths: list[Path] | None = None
        if label_list.is_file():
            labels = read_path_list(label_list)
            if len(labels) != len(entries):
                raise ParseError(
                    label_list,
                    None,
                    f"lists {len(labels)} label file(s) but image_list.txt lists "
                    f"{len(entries)} image(s); expected one label per image, in the same order.",
                )
            self.label_paths = [self._resolve(e, label_list, n) for n, e in enumerate(labels, 1)]
        elif require_labels:
            raise InputError(
                f"{root} has no label_list.txt; training needs one raw label file per image "
                "(float32 H x W x 4: world xyz + validity)."
            )
        transform = root / "transform.txt"
        if transform.is_file():
            self.transform = read_transform(transform)
            _check_rigid(self.transform, transform)
        else:
            self.transform = torch.eye(4, dtype=torch.float64)
        self.camera = parse_camera(camera, root)
        w, h = (int(v) for v in self.camera.size.tolist())
        self.image_size = (h, w)
        check_image_size(read_image(self.image_paths[0]), self.camera, str(self.image_paths[0]))
        if self.label_paths is not None:
            self._check_label_sizes()
        self.poses = self._read_poses()

    # ------------------------------------------------------------------------------ reading
    def label_sizes(self, stride: int = 8) -> list[tuple[int, int]]:
        """The accepted ``(H, W)`` of label files: full resolution and 1/``stride``."""
        h, w = self.image_size
        sizes = [(h, w)]
        if stride > 1 and h % stride == 0 and w % stride == 0:
            sizes.append((h // stride, w // stride))
        return sizes

    def _check_label_sizes(self) -> None:
        """Every label file's byte count must be ``16 H W`` of an accepted size (one stat per
        file, so a bad file fails when the folder is opened, not mid-training)."""
        sizes = self.label_sizes()
        ok = {16 * h * w for h, w in sizes}
        for path in self.label_paths or []:
            n = path.stat().st_size
            if n not in ok:
                accepted = ", ".join(f"{16 * h * w:,} ({h}x{w}x4)" for h, w in sizes)
                raise ParseError(
                    path,
                    None,
                    f"{n:,} bytes is not a KFNet label size for {self.image_size[1]}x"
                    f"{self.image_size[0]} images; expected raw float32 H x W x 4 without "
                    f"header at full or 1/8 resolution, i.e. one of {accepted} bytes.",
                )

    def _resolve(self, entry: Path, listing: Path, line: int) -> Path:
        path = entry if entry.is_absolute() else self.root / entry
        if not path.is_file():
            raise DataFileNotFoundError(
                f"{listing}: entry {line} ({entry}) does not exist (looked for {path})."
            )
        return path

    def _read_poses(self) -> Pose | None:
        return _read_poses(self.root, self.names, self.image_paths)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"SequenceFolder({self.root}, {len(self)} frames, {w}x{h})"

    def load_image(self, i: int) -> torch.Tensor:
        """Frame ``i``'s image ``(3, H, W)`` float32 RGB in [0, 1] (checked against the camera)."""
        image = read_image(self.image_paths[i])
        check_image_size(image, self.camera, str(self.image_paths[i]))
        return image

    def load_label_raw(self, i: int, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Frame ``i``'s label as stored: ``(coords (3, h', w') world, valid (h', w') bool,
        label stride)`` where the stride is 1 (full resolution) or ``stride`` (1/stride file).

        Raises:
            InputError: no label list; ParseError: a byte size that fits neither resolution.
        """
        if self.label_paths is None:
            raise InputError(f"{self.root} has no label_list.txt; labels are needed here.")
        h, _ = self.image_size
        label = read_kfnet_label(self.label_paths[i], self.label_sizes(stride))
        xyz = label[..., :3].permute(2, 0, 1).contiguous()
        valid = (label[..., 3] > 0.5) & torch.isfinite(xyz).all(0)
        xyz = torch.where(valid[None], xyz, torch.zeros((), dtype=xyz.dtype))
        return xyz, valid, 1 if label.shape[0] == h else stride

    def load_label(self, i: int, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame ``i``'s labels on the stride-``stride`` cell grid.

        Returns:
            ``coords (3, H / s, W / s)`` float32 world metres (0 where invalid) and
            ``valid (H / s, W / s)`` bool. Full-resolution labels are taken at the cell pixels
            ``(s j + s / 2, s i + s / 2)`` (nearest); 1/s labels are used as they are.
        Raises:
            InputError: ``H``, ``W`` not multiples of ``stride``.
        """
        h, w = self.image_size
        if h % stride or w % stride:
            raise InputError(
                f"{self.root}: images are {w}x{h}; stride-{stride} maps need a width and height "
                f"divisible by {stride}."
            )
        xyz, valid, got = self.load_label_raw(i, stride)
        if got == 1 and stride > 1:
            c = stride // 2
            xyz, valid = xyz[:, c::stride, c::stride], valid[c::stride, c::stride]
        return xyz.contiguous(), valid.contiguous()

    def pose_matrix(self, i: int) -> torch.Tensor:
        """``(4, 4)`` float64 ``cam_from_world`` of frame ``i`` (NaN without poses)."""
        if self.poses is None:
            return torch.full((4, 4), math.nan, dtype=torch.float64)
        return self.poses[i].matrix()

    def frame(self, i: int, stride: int = 8) -> dict[str, Any]:
        """Frame ``i`` as a dict: ``image (3, H, W)``, ``coords (3, h, w)``, ``valid (h, w)``
        (zeros / False without labels), ``pose (4, 4)`` float64 (NaN without poses), ``K (3, 3)``
        float64, ``index``, ``name``."""
        image = self.load_image(i)
        if self.label_paths is not None:
            coords, valid = self.load_label(i, stride)
        else:
            h, w = self.image_size
            coords = torch.zeros(3, h // stride, w // stride)
            valid = torch.zeros(h // stride, w // stride, dtype=torch.bool)
        return {
            "image": image,
            "coords": coords,
            "valid": valid,
            "pose": self.pose_matrix(i),
            "K": self.camera.K.clone(),
            "index": i,
            "name": self.names[i],
        }


def open_folders(
    paths: Sequence[str | os.PathLike],
    camera: str | os.PathLike | Camera | None = None,
    min_frames: int = 2,
    require_labels: bool = True,
) -> list[SequenceFolder]:
    """:class:`SequenceFolder` s of every input (each through :func:`resolve_input_folder`),
    checked to share one image size.

    Raises:
        InputError: no input, or folders of different image sizes.
    """
    if not paths:
        raise InputError("no input folder: give at least one --input-folder DIR.")
    folders = [
        SequenceFolder(p, camera, min_frames=min_frames, require_labels=require_labels)
        for path in paths
        for p in resolve_input_folder(path)
    ]
    sizes = {f.image_size for f in folders}
    if len(sizes) > 1:
        listed = ", ".join(f"{f.root} {f.image_size[1]}x{f.image_size[0]}" for f in folders)
        raise InputError(f"the sequence folders have different image sizes ({listed}).")
    return folders


# ---------------------------------------------------------------------------------- augmentation
def _item_generator(seed: int, index: int, epoch: int) -> torch.Generator:
    value = (int(seed) * 1_000_003 + int(index) * 7_919 + int(epoch) * 104_729 + 17) % (2**62)
    return torch.Generator().manual_seed(value)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def photometric(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """``clamp((image - m) * contrast + m + brightness, 0, 1)`` with ``m`` the image's mean
    intensity; ``image (..., 3, H, W)`` in [0, 1]."""
    m = image.mean(dim=(-3, -2, -1), keepdim=True)
    return ((image - m) * contrast + m + brightness).clamp(0, 1)


def similarity_about(
    c: torch.Tensor, angle: float, zoom: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (2, 2), b (2,))`` float64 of the image warp ``p' = c + zoom Rot(angle) (p - c)``."""
    ca, sa = math.cos(angle), math.sin(angle)
    A = zoom * torch.tensor([[ca, -sa], [sa, ca]], dtype=torch.float64)
    c = c.to(torch.float64)
    return A, c - A @ c


def rotate_frame(
    frame: dict[str, Any],
    label_raw: tuple[torch.Tensor, torch.Tensor, int] | None,
    angle: float,
    zoom: float,
    stride: int = 8,
) -> dict[str, Any]:
    """Rotate a frame's image and labels jointly about the principal point by ``angle``
    radians (counter-clockwise on screen: x right, y down) and scale by ``zoom``.

    Output pixel ``p'`` shows input pixel ``c + Rot(-angle) (p' - c) / zoom``: the image is
    sampled bilinearly (black outside), the labels with **nearest** sampling on the grid they
    are stored at (cells whose source falls outside become invalid). The camera's ``K``
    gets ``f * zoom``; the pose gets ``Rz(angle) @ cam_from_world`` when ``fx == fy`` (exact for
    distortion-free cameras; the image-label pairing is exact for every model), NaN otherwise.

    Args:
        frame: a :meth:`SequenceFolder.frame` dict.
        label_raw: :meth:`SequenceFolder.load_label_raw` output (None: no labels).
    Returns:
        a new dict with the same keys.
    """
    image = frame["image"]
    _, H, W = image.shape
    K = frame["K"].to(torch.float64)
    c = K[:2, 2]
    A, b = similarity_about(c, angle, zoom)
    Ainv = torch.linalg.inv(A)

    def source_of(uv: torch.Tensor) -> torch.Tensor:  # (..., 2) output pixels -> input pixels
        return (uv.to(torch.float64) - b) @ Ainv.T

    grid = cell_pixels(H, W, 1, dtype=torch.float64)
    src = source_of(grid).to(image.dtype)
    values, inside = sample(image[None], src[None], mode="bilinear")
    out_image = torch.where(inside[0, ..., None], values[0], 0.0).permute(2, 0, 1).contiguous()
    out = dict(frame)
    out["image"] = out_image
    if label_raw is not None:
        xyz, valid, got = label_raw
        cells = cell_pixels(H // stride, W // stride, stride, dtype=torch.float64)
        src = source_of(cells)  # in full-image pixels
        if got > 1:  # the stored grid's own pixel coordinates
            off = got // 2
            src = (src - off) / got
        src = torch.round(src)  # nearest
        maps = torch.cat([xyz, valid[None].to(xyz.dtype)], 0)
        vals, ok = sample(maps[None], src[None].to(xyz.dtype), mode="nearest")
        vals, ok = vals[0], ok[0]
        new_valid = ok & (vals[..., 3] > 0.5)
        out["coords"] = torch.where(new_valid[..., None], vals[..., :3], 0.0).permute(2, 0, 1)
        out["coords"] = out["coords"].contiguous()
        out["valid"] = new_valid
    K2 = K.clone()
    K2[0, 0] *= zoom
    K2[1, 1] *= zoom
    out["K"] = K2
    pose = frame["pose"]
    if torch.isfinite(pose).all() and abs(float(K[0, 0] - K[1, 1])) <= 1e-9 * float(K[0, 0]):
        Rz = torch.eye(4, dtype=torch.float64)
        Rz[:2, :2] = A / zoom
        out["pose"] = Rz @ pose
    else:
        out["pose"] = torch.full((4, 4), math.nan, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------- datasets
class FrameDataset(Dataset):
    """Single frames of one or more sequence folders (SCoordNet training and validation).

    Args:
        folders: :class:`SequenceFolder` s (or one).
        stride: the label / output cell stride (8).
        augment: photometric augmentation (brightness ``+-brightness``, contrast
            ``x[1 - contrast, 1 + contrast]``), seeded by ``(seed, index, epoch)``.
        rotation: maximum joint rotation in degrees (0: none), applied with probability
            ``rotation_prob`` together with a zoom drawn from ``zoom`` (see :func:`rotate_frame`).
        frames: optional ``(folder, frame)`` pairs to use (default: every frame, folder order).
        seed: seeds the augmentation.

    Items: ``image (3, H, W)`` float32 [0, 1], ``coords (3, h, w)`` world metres, ``valid (h, w)``
    bool, ``pose (4, 4)`` float64 ``cam_from_world`` (NaN if unknown), ``K (3, 3)`` float64,
    ``index`` (the item index), ``folder`` (its folder's index), ``name``.
    """

    def __init__(
        self,
        folders: SequenceFolder | Sequence[SequenceFolder],
        stride: int = 8,
        augment: bool = False,
        rotation: float = 0.0,
        rotation_prob: float = 1.0,
        zoom: tuple[float, float] = (1.0, 1.0),
        brightness: float = 20.0 / 255.0,
        contrast: float = 0.2,
        frames: Sequence[tuple[int, int]] | None = None,
        seed: int = 0,
    ) -> None:
        self.folders = [folders] if isinstance(folders, SequenceFolder) else list(folders)
        if not self.folders:
            raise InputError("FrameDataset needs at least one sequence folder.")
        self.stride = int(stride)
        self.augment = bool(augment)
        self.rotation = float(rotation)
        self.rotation_prob = float(rotation_prob)
        self.zoom = (float(zoom[0]), float(zoom[1]))
        if not 0 < self.zoom[0] <= self.zoom[1]:
            raise InputError(f"zoom must be a range 0 < lo <= hi, got {zoom}.")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.seed = int(seed)
        self.epoch = 0
        if frames is None:
            frames = [(f, i) for f, folder in enumerate(self.folders) for i in range(len(folder))]
        self.frames = [(int(f), int(i)) for f, i in frames]

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of epoch ``epoch`` (the trainer calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def draw(self, index: int) -> dict[str, float]:
        """The augmentation parameters of item ``index`` this epoch: ``brightness``,
        ``contrast``, ``angle`` (radians), ``zoom``."""
        gen = _item_generator(self.seed, index, self.epoch)
        params = {"brightness": 0.0, "contrast": 1.0, "angle": 0.0, "zoom": 1.0}
        rot, pho = _uniform(gen, 0, 1), [_uniform(gen, -1, 1) for _ in range(4)]
        if self.augment:
            params["brightness"] = self.brightness * pho[0]
            params["contrast"] = 1.0 + self.contrast * pho[1]
        if self.rotation > 0 and rot < self.rotation_prob:
            params["angle"] = math.radians(self.rotation) * pho[2]
            lo, hi = self.zoom
            params["zoom"] = lo + (hi - lo) * (pho[3] + 1) / 2
        return params

    def load(self, folder: int, frame: int, params: dict[str, float]) -> dict[str, Any]:
        """Frame ``frame`` of folder ``folder`` with augmentation ``params`` applied."""
        seq = self.folders[folder]
        item = seq.frame(frame, self.stride)
        if params["angle"] != 0.0 or params["zoom"] != 1.0:
            raw = seq.load_label_raw(frame, self.stride) if seq.label_paths is not None else None
            item = rotate_frame(item, raw, params["angle"], params["zoom"], self.stride)
        if params["brightness"] != 0.0 or params["contrast"] != 1.0:
            item["image"] = photometric(item["image"], params["brightness"], params["contrast"])
        item["folder"] = folder
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder, frame = self.frames[index]
        item = self.load(folder, frame, self.draw(index))
        item["index"] = index
        return item


class FrameGroupDataset(FrameDataset):
    """Groups of ``group`` consecutive frames of each folder (OFlowNet pairs: 2, KFNet: 4).

    Every window ``[s, s + group)`` (``s`` every ``step`` frames) of every folder is an item,
    followed by its time-reversed copy when ``reverse``. The augmentation (photometric and
    rotation, see :class:`FrameDataset`) is drawn once per group and shared by its frames.

    Items stack the :class:`FrameDataset` fields on a leading ``(G,)`` dimension: ``image
    (G, 3, H, W)``, ``coords (G, 3, h, w)``, ``valid (G, h, w)``, ``pose (G, 4, 4)``,
    ``K (G, 3, 3)``, ``frame (G,)`` frame indices; plus ``index``, ``folder``, ``reversed``
    (bool) and ``name`` (the frame names joined by ``|``).

    Raises:
        InputError: a folder shorter than ``group``.
    """

    def __init__(
        self,
        folders: SequenceFolder | Sequence[SequenceFolder],
        group: int = 2,
        reverse: bool = False,
        step: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(folders, **options)
        self.group = int(group)
        if self.group < 2 or step < 1:
            raise InputError(f"group must be >= 2 and step >= 1, got {group}, {step}.")
        short = [f for f in self.folders if len(f) < self.group]
        if short:
            raise InputError(
                f"{short[0].root} has {len(short[0])} frame(s); groups of {self.group} "
                "consecutive frames need at least that many."
            )
        self.reverse = bool(reverse)
        self.groups: list[tuple[int, list[int]]] = []
        for f, folder in enumerate(self.folders):
            for s in range(0, len(folder) - self.group + 1, int(step)):
                idx = list(range(s, s + self.group))
                self.groups.append((f, idx))
                if self.reverse:
                    self.groups.append((f, idx[::-1]))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder, idx = self.groups[index]
        params = self.draw(index)
        items = [self.load(folder, i, params) for i in idx]
        out: dict[str, Any] = {
            k: torch.stack([it[k] for it in items]) for k in ("image", "coords", "valid", "pose")
        }
        out["K"] = torch.stack([it["K"] for it in items])
        out["frame"] = torch.tensor(idx)
        out["index"] = index
        out["folder"] = folder
        out["reversed"] = idx[0] > idx[-1]
        out["name"] = "|".join(it["name"] for it in items)
        return out
