"""Text and array formats of hloc and KFNet, read strictly and written atomically.

Readers skip blank lines and lines starting with ``#``. Every malformed line raises
:class:`ParseError` (or :class:`CameraModelError` for camera models), naming the file, the line
number and the expected format, instead of being skipped. Writers go through
:mod:`dgeo.io.atomic`: the old file stays intact if anything fails.

Formats (ALGORITHMS.md 3.1, 3.3):

- hloc ``queries_with_intrinsics.txt``: ``name MODEL width height params...``, COLMAP parameter
  order *and COLMAP pixel convention*; converted to dgeo cameras (``cx, cy -= 0.5``).
- hloc results: ``name qw qx qy qz tx ty tz``, world-to-camera (``cam_from_world``), w-first.
- KFNet inputs: ``image_list.txt`` / ``label_list.txt`` (one path a line, time order), raw label
  files (float32, C order, ``H x W x 4``: world xyz + validity, no header; the size is inferred
  from the byte count), ``transform.txt`` (4x4).
- KFNet outputs: ``coord_<idx>.npy`` (``(H/8) x (W/8) x 4``: world xyz + 1/sigma) and
  ``<i>_<j>_flow.npy`` (``(H/8) x (W/8) x 3``: u, v in 1/8 pixels + 1/sigma).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dgeo.errors import (
    CameraModelError,
    DataFileNotFoundError,
    InputError,
    ParseError,
    ShapeError,
    require_file,
)
from dgeo.geometry.camera import PARAM_NAMES, Camera, common_model
from dgeo.geometry.pose import ArrayLike, Pose, as_tensor
from dgeo.io.atomic import atomic_open, atomic_write_bytes, atomic_write_lines
from dgeo.io.colmap import SUPPORTED_MODELS, params_from_colmap, params_to_colmap

__all__ = [
    "KFNET_LABEL_SIZES",
    "QUERIES_FORMAT",
    "RESULTS_FORMAT",
    "kfnet_coord_path",
    "kfnet_flow_path",
    "read_hloc_results",
    "read_image_list",
    "read_kfnet_coords",
    "read_kfnet_flow",
    "read_kfnet_label",
    "read_label_list",
    "read_path_list",
    "read_queries_with_intrinsics",
    "read_transform",
    "write_hloc_results",
    "write_kfnet_coords",
    "write_kfnet_flow",
    "write_kfnet_label",
    "write_path_list",
    "write_queries_with_intrinsics",
    "write_transform",
]

QUERIES_FORMAT = (
    "'name MODEL width height params...' (COLMAP model name, integer size, parameters in "
    "COLMAP order and pixel convention)"
)
RESULTS_FORMAT = "'name qw qx qy qz tx ty tz' (world-to-camera, unit quaternion w first)"
TRANSFORM_FORMAT = "4 lines of 4 numbers (a 4x4 matrix whose last row is 0 0 0 1)"
#: Accepted ``(H, W)`` of KFNet label files: 7-Scenes full resolution and 1/8 of it.
KFNET_LABEL_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (60, 80))


# ---------------------------------------------------------------------------------- helpers
def _lines(path: str | os.PathLike, what: str) -> Iterator[tuple[Path, int, str]]:
    """``(path, line number, stripped line)`` of the non-blank, non-comment lines."""
    path = require_file(path, what)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; pass the file.")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                s = line.strip()
                if s and not s.startswith("#"):
                    yield path, n, s
    except UnicodeDecodeError as e:
        raise ParseError(path, None, f"not UTF-8 text ({e}); expected a {what}.") from e


def _float(path: Path, n: int, token: str, field: str, fmt: str) -> float:
    try:
        x = float(token)
    except ValueError:
        raise ParseError(path, n, f"{field} {token!r} is not a number; expected {fmt}.") from None
    if not math.isfinite(x):
        raise ParseError(path, n, f"{field} is {token}; expected finite numbers in {fmt}.")
    return x


def _int(path: Path, n: int, token: str, field: str, fmt: str) -> int:
    try:
        x = int(token)
    except ValueError:
        raise ParseError(path, n, f"{field} {token!r} is not an integer; expected {fmt}.") from None
    if x <= 0:
        raise ParseError(path, n, f"{field} must be positive, got {x}; expected {fmt}.")
    return x


def _check_name(
    path: Path, n: int, name: str, seen: dict[str, int], fmt: str, kind: str = "name"
) -> None:
    if name in seen:
        raise ParseError(
            path,
            n,
            f"duplicate {kind} {name!r} (first on line {seen[name]}); expected {fmt} "
            f"with unique {kind}s.",
        )
    seen[name] = n


def _check_writable_names(names: Sequence[str]) -> None:
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise InputError(
                f"name {name!r} is empty or holds whitespace; these formats split fields on "
                "whitespace, so it could not be read back."
            )


def _fmt(x: float) -> str:
    """Shortest text that reads back to the same float64."""
    return repr(float(x))


# ---------------------------------------------------------------------------------- hloc
def read_queries_with_intrinsics(path: str | os.PathLike) -> tuple[list[str], Camera]:
    """Read an hloc query list with intrinsics.

    Args:
        path: lines ``name MODEL width height params...`` in COLMAP's pixel convention.
    Returns:
        the ``N`` names in file order and one float64 :class:`Camera` batch ``(N,)`` in dgeo's
        pixel convention (``cx, cy -= 0.5``). If the file mixes models, every camera is promoted
        losslessly to the simplest model that holds them all
        (:func:`dgeo.geometry.camera.common_model`), e.g. ``PINHOLE`` + ``SIMPLE_RADIAL`` ->
        ``OPENCV``.
    Raises:
        ParseError: wrong field count, non-numbers, NaN/inf, non-positive size or focal length,
            duplicate names.
        CameraModelError: unknown model, or the wrong number of parameters for it.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    rows: list[tuple[str, int, int, list[float]]] = []
    for p, n, line in _lines(path, "query list"):
        fields = line.split()
        if len(fields) < 4:
            raise ParseError(p, n, f"{len(fields)} fields; expected {QUERIES_FORMAT}.")
        name, model = fields[0], fields[1]
        if model not in PARAM_NAMES:
            raise CameraModelError(
                f"{p}, line {n}: camera model {model!r} is not supported; dgeo supports "
                f"{', '.join(SUPPORTED_MODELS)}. Expected {QUERIES_FORMAT}."
            )
        want = PARAM_NAMES[model]
        if len(fields) - 4 != len(want):
            raise CameraModelError(
                f"{p}, line {n}: {model} takes {len(want)} parameters ({' '.join(want)}), got "
                f"{len(fields) - 4}. Expected {QUERIES_FORMAT}."
            )
        w = _int(p, n, fields[2], "width", QUERIES_FORMAT)
        h = _int(p, n, fields[3], "height", QUERIES_FORMAT)
        params = [_float(p, n, t, k, QUERIES_FORMAT) for t, k in zip(fields[4:], want, strict=True)]
        for k, v in zip(want, params, strict=True):
            if k in ("f", "fx", "fy") and v <= 0:
                raise ParseError(
                    p, n, f"focal length {k} must be positive, got {v}; expected {QUERIES_FORMAT}."
                )
        _check_name(p, n, name, seen, QUERIES_FORMAT)
        names.append(name)
        rows.append((model, w, h, params))
    if not rows:
        return names, Camera("PINHOLE", torch.zeros(0), torch.zeros(0), torch.zeros(0, 4))
    target = common_model({r[0] for r in rows})
    out = torch.empty(len(rows), len(PARAM_NAMES[target]), dtype=torch.float64)
    sizes = torch.tensor([[r[1], r[2]] for r in rows], dtype=torch.float64)
    for model in {r[0] for r in rows}:  # one batched conversion per model
        idx = [i for i, r in enumerate(rows) if r[0] == model]
        params = params_from_colmap(
            model, torch.tensor([rows[i][3] for i in idx], dtype=torch.float64)
        )
        cams = Camera(model, sizes[idx, 0], sizes[idx, 1], params).to_model(target)
        out[idx] = cams.params
    return names, Camera(target, sizes[:, 0], sizes[:, 1], out)


def write_queries_with_intrinsics(
    path: str | os.PathLike, names: Sequence[str], cameras: Camera | Sequence[Camera]
) -> Path:
    """Write an hloc query list (COLMAP convention: ``cx, cy += 0.5``), atomically.

    Args:
        names: ``N`` names without whitespace.
        cameras: a :class:`Camera` batch ``(N,)`` or ``N`` unbatched cameras (models may mix);
            sizes must be integers.
    """
    _check_writable_names(names)
    cams = [cameras[i] for i in range(len(cameras))] if isinstance(cameras, Camera) else cameras
    if len(cams) != len(names):
        raise ShapeError(f"{len(names)} names but {len(cams)} cameras.")

    def lines():
        for name, cam in zip(names, cams, strict=True):
            if cam.shape != ():
                raise ShapeError(f"camera of {name!r} has batch shape {tuple(cam.shape)}, not ().")
            w, h = float(cam.width), float(cam.height)
            if w != round(w) or h != round(h):
                raise InputError(f"camera of {name!r} has a non-integer size {w} x {h}.")
            params = params_to_colmap(cam.model, cam.params.detach().double().cpu()).tolist()
            yield " ".join([name, cam.model, str(round(w)), str(round(h)), *map(_fmt, params)])

    return atomic_write_lines(path, lines())


def read_hloc_results(path: str | os.PathLike, unit_tol: float = 1e-3) -> tuple[list[str], Pose]:
    """Read an hloc / visuallocalization.net results file.

    Args:
        path: lines ``name qw qx qy qz tx ty tz``, world-to-camera.
        unit_tol: quaternions whose norm is farther than this from 1 are rejected (a common
            symptom of another column order); the others are normalised.
    Returns:
        the ``N`` names in file order and a float64 :class:`Pose` ``(N,)`` (``cam_from_world``).
    Raises:
        ParseError: not 8 fields, non-numbers, NaN/inf, a zero or non-unit quaternion, duplicate
            names.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    values: list[list[float]] = []
    for p, n, line in _lines(path, "results file"):
        fields = line.split()
        if len(fields) != 8:
            raise ParseError(p, n, f"{len(fields)} fields; expected {RESULTS_FORMAT}.")
        keys = ("qw", "qx", "qy", "qz", "tx", "ty", "tz")
        v = [_float(p, n, t, k, RESULTS_FORMAT) for t, k in zip(fields[1:], keys, strict=True)]
        norm = math.sqrt(sum(x * x for x in v[:4]))
        if norm == 0:
            raise ParseError(p, n, f"zero quaternion; expected {RESULTS_FORMAT}.")
        if abs(norm - 1) > unit_tol:
            raise ParseError(
                p,
                n,
                f"quaternion norm {norm:.6g} is not 1 (columns swapped?); expected "
                f"{RESULTS_FORMAT}.",
            )
        _check_name(p, n, fields[0], seen, RESULTS_FORMAT)
        names.append(fields[0])
        values.append(v)
    arr = torch.tensor(values, dtype=torch.float64).reshape(-1, 7)
    if len(values) == 0:
        return names, Pose.identity((0,), torch.float64)
    return names, Pose.from_quat_t(arr[:, :4], arr[:, 4:])


def write_hloc_results(path: str | os.PathLike, names: Sequence[str], poses: Pose) -> Path:
    """Write poses as an hloc results file (``name qw qx qy qz tx ty tz``, w >= 0), atomically.

    Args:
        names: ``N`` names without whitespace (hloc: basename or ``camera/basename``).
        poses: :class:`Pose` ``(N,)``, ``cam_from_world``.
    """
    if len(poses.shape) != 1 or len(names) != poses.shape[0]:
        raise ShapeError(
            f"{len(names)} names need poses of batch shape ({len(names)},), got "
            f"{tuple(poses.shape)}."
        )
    poses = poses.detach().double().to("cpu")
    q, t = poses.quat().tolist(), poses.t.tolist()

    def lines():
        for i, name in enumerate(names):
            _check_writable_names([name])
            yield " ".join([name, *map(_fmt, q[i]), *map(_fmt, t[i])])

    return atomic_write_lines(path, lines())


# ---------------------------------------------------------------------------------- KFNet lists
def read_path_list(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    check_exists: bool = False,
) -> list[Path]:
    """Read a list of file paths, one a line (KFNet ``image_list.txt`` / ``label_list.txt``).

    Args:
        path: the list; the whole stripped line is the path (spaces allowed).
        root: folder that relative entries are resolved against; kept relative if ``None``.
        check_exists: raise :class:`DataFileNotFoundError` naming the line for missing files.
    Returns:
        the paths in file order (time order for KFNet).
    Raises:
        ParseError: a path listed twice.
    """
    out: list[Path] = []
    seen: dict[str, int] = {}
    for p, n, line in _lines(path, "path list"):
        _check_name(p, n, line, seen, "one file path a line", "path")
        entry = Path(line)
        if root is not None and not entry.is_absolute():
            entry = Path(root) / entry
        if check_exists and not entry.exists():
            raise DataFileNotFoundError(f"{p}, line {n}: {entry} does not exist.")
        out.append(entry)
    return out


def read_image_list(
    path: str | os.PathLike, root: str | os.PathLike | None = None, check_exists: bool = False
) -> list[Path]:
    """Read KFNet's ``image_list.txt`` (image paths in time order); see :func:`read_path_list`."""
    return read_path_list(path, root, check_exists)


def read_label_list(
    path: str | os.PathLike, root: str | os.PathLike | None = None, check_exists: bool = False
) -> list[Path]:
    """Read KFNet's ``label_list.txt`` (label file paths); see :func:`read_path_list`."""
    return read_path_list(path, root, check_exists)


def write_path_list(path: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> Path:
    """Write one path a line, atomically. ``paths`` may be lazy: it is consumed while writing."""

    def lines():
        for entry in paths:
            s = str(entry)
            if not s.strip() or s != s.strip() or "\n" in s:
                raise InputError(f"path {s!r} is empty or has surrounding whitespace/newlines.")
            yield s

    return atomic_write_lines(path, lines())


# ---------------------------------------------------------------------------------- KFNet arrays
def read_kfnet_label(
    path: str | os.PathLike, sizes: Sequence[tuple[int, int]] = KFNET_LABEL_SIZES
) -> torch.Tensor:
    """Read a raw KFNet label file: float32, C order, ``H x W x 4``, no header.

    Channels are world xyz (metres) and validity; invalid pixels have xyz = -1. The size is
    inferred from the byte count, ``16 H W``.

    Args:
        sizes: the accepted ``(H, W)``; KFNet's loaders read 480x640, its README says 1/8 (60x80).
    Returns:
        ``(H, W, 4)`` float32 tensor.
    Raises:
        ParseError: the byte count matches none of ``sizes`` (the message lists them).
    """
    path = require_file(path, "KFNet label file")
    n = path.stat().st_size
    for h, w in sizes:
        if n == h * w * 16:
            data = np.fromfile(path, dtype="<f4")
            return torch.from_numpy(data.reshape(h, w, 4).astype(np.float32, copy=False))
    accepted = ", ".join(f"{h * w * 16:,} ({h}x{w}x4)" for h, w in sizes)
    raise ParseError(
        path,
        None,
        f"{n:,} bytes is not a KFNet label size; expected raw float32 H x W x 4 "
        f"without header, i.e. one of {accepted} bytes.",
    )


def write_kfnet_label(path: str | os.PathLike, label: ArrayLike) -> Path:
    """Write a KFNet label ``(H, W, 4)`` as raw little-endian float32 (C order), atomically."""
    arr = _as_hw_array(label, 4, "KFNet label")
    return atomic_write_bytes(path, np.ascontiguousarray(arr, dtype="<f4").tobytes())


def read_transform(path: str | os.PathLike, tol: float = 1e-6) -> torch.Tensor:
    """Read KFNet's ``transform.txt``: world -> decorrelated scene frame, ``(4, 4)`` float64.

    Raises:
        ParseError: not 4 rows of 4 finite numbers, or a last row other than ``0 0 0 1``.
    """
    rows: list[list[float]] = []
    p = Path(path)
    for p, n, line in _lines(path, "transform file"):
        fields = line.split()
        if len(fields) != 4:
            raise ParseError(p, n, f"{len(fields)} numbers; expected {TRANSFORM_FORMAT}.")
        if len(rows) == 4:
            raise ParseError(p, n, f"a fifth row; expected {TRANSFORM_FORMAT}.")
        rows.append(
            [_float(p, n, t, f"entry {j + 1}", TRANSFORM_FORMAT) for j, t in enumerate(fields)]
        )
    if len(rows) != 4:
        raise ParseError(p, None, f"{len(rows)} rows; expected {TRANSFORM_FORMAT}.")
    T = torch.tensor(rows, dtype=torch.float64)
    if bool((T[3] - T.new_tensor([0, 0, 0, 1])).abs().max() > tol):
        raise ParseError(p, None, f"last row is {rows[3]}; expected {TRANSFORM_FORMAT}.")
    return T


def write_transform(path: str | os.PathLike, T: ArrayLike) -> Path:
    """Write a ``(4, 4)`` matrix as 4 lines of 4 numbers (full float64 precision), atomically."""
    T = as_tensor(T, torch.float64).detach().cpu()
    if tuple(T.shape) != (4, 4):
        raise ShapeError(f"transform must have shape (4, 4), got {tuple(T.shape)}.")
    return atomic_write_lines(path, (" ".join(map(_fmt, row)) for row in T.tolist()))


def kfnet_coord_path(folder: str | os.PathLike, index: int) -> Path:
    """KFNet's name for the coordinate map of frame ``index``: ``folder/coord_<index>.npy``."""
    return Path(folder) / f"coord_{int(index)}.npy"


def kfnet_flow_path(folder: str | os.PathLike, i: int, j: int | None = None) -> Path:
    """KFNet's name for the flow from frame ``i`` to ``j`` (default ``i + 1``).

    Returns ``folder/<i>_<j>_flow.npy``.
    """
    return Path(folder) / f"{int(i)}_{int(i) + 1 if j is None else int(j)}_flow.npy"


def _as_hw_array(x: ArrayLike, channels: int, what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 3 or arr.shape[-1] != channels:
        raise ShapeError(f"{what} must have shape (H, W, {channels}), got {tuple(arr.shape)}.")
    return arr


def _save_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return Path(path)


def _load_npy(path: str | os.PathLike, channels: int, what: str) -> torch.Tensor:
    path = require_file(path, what)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ParseError(path, None, f"not a valid .npy file ({e}); expected a {what}.") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.shape[-1] != channels:
        raise ParseError(
            path,
            None,
            f"array of shape {tuple(getattr(arr, 'shape', ()))}; expected a {what} "
            f"of shape (H, W, {channels}).",
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ParseError(path, None, f"dtype {arr.dtype}; expected floating point.")
    return torch.from_numpy(arr.astype(np.float32, copy=False))


def write_kfnet_coords(path: str | os.PathLike, coords: ArrayLike) -> Path:
    """Write a KFNet coordinate map ``(h, w, 4)`` (world xyz + 1/sigma) as float32 ``.npy``."""
    return _save_npy(path, _as_hw_array(coords, 4, "KFNet coordinate map"))


def read_kfnet_coords(path: str | os.PathLike) -> torch.Tensor:
    """Read a KFNet ``coord_<idx>.npy``: ``(h, w, 4)`` float32, world xyz + 1/sigma."""
    return _load_npy(path, 4, "KFNet coordinate map (world xyz + 1/sigma)")


def write_kfnet_flow(path: str | os.PathLike, flow: ArrayLike) -> Path:
    """Write a KFNet flow map ``(h, w, 3)`` (u, v in 1/8 pixels + 1/sigma) as float32 ``.npy``."""
    return _save_npy(path, _as_hw_array(flow, 3, "KFNet flow map"))


def read_kfnet_flow(path: str | os.PathLike) -> torch.Tensor:
    """Read a KFNet ``<i>_<j>_flow.npy``: ``(h, w, 3)`` float32, u, v (1/8 px) + 1/sigma."""
    return _load_npy(path, 3, "KFNet flow map (u, v, 1/sigma)")
