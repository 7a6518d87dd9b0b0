"""Point clouds and flow pictures of scene-coordinate outputs (KFNet ``coord_<i>.npy`` and
``<i>_<j>_flow.npy``, ALGORITHMS 3.1).

- :func:`write_ply`: a PLY point cloud (binary little-endian or ASCII) with ``x y z`` floats,
  ``red green blue`` uchars and optional float scalars (e.g. ``confidence``), the layout
  MeshLab, Open3D, CloudCompare and Blender read.
- :func:`coords_to_cloud`: the points of a coordinate map kept by confidence (KFNet's viewers
  keep ``1/sigma > 20``, i.e. sigma < 5 cm), coloured by the image the map was predicted from
  or by confidence (a colour map).
- :func:`flow_to_color`: the standard optical-flow colour wheel of Baker et al. (Middlebury):
  hue = direction, saturation = length relative to the longest flow, white = no motion.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.io.atomic import atomic_open

__all__ = [
    "coords_to_cloud",
    "flow_color_wheel",
    "flow_to_color",
    "read_ply",
    "scalar_colors",
    "write_ply",
    "write_png",
]

#: KFNet's viewers keep cells with confidence 1/sigma above this (sigma < 5 cm).
DEFAULT_MIN_CONFIDENCE = 20.0


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------- PLY
def write_ply(
    path: str | os.PathLike,
    points: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor | None = None,
    scalars: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    *,
    binary: bool = True,
) -> Path:
    """Write a point cloud as PLY, atomically.

    Args:
        path: the ``.ply`` file.
        points: ``(N, 3)`` finite coordinates (stored as float32).
        colors: ``(N, 3)`` RGB, uint8 (0..255) or floats in [0, 1]; None: no colour.
        scalars: extra per-point float32 properties, ``name -> (N,)`` (e.g. ``confidence``).
        binary: ``binary_little_endian`` (compact, fast) or ``ascii``.
    Returns:
        ``path``.
    Raises:
        ShapeError, InputError: wrong shapes, non-finite points, bad property names.
    """
    pts = _numpy(points).astype(np.float32, copy=False)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeError(f"points must have shape (N, 3), got {tuple(pts.shape)}.")
    if not np.isfinite(pts).all():
        raise InputError("points hold NaN/inf; drop them before writing a PLY file.")
    n = pts.shape[0]
    fields: list[tuple[str, np.ndarray]] = [(k, pts[:, j]) for j, k in enumerate("xyz")]
    if colors is not None:
        col = _numpy(colors)
        if col.shape != (n, 3):
            raise ShapeError(f"colors must have shape ({n}, 3) like points, got {col.shape}.")
        if np.issubdtype(col.dtype, np.floating):
            col = np.clip(np.round(np.nan_to_num(col) * 255), 0, 255)
        col = col.astype(np.uint8)
        fields += [(k, col[:, j]) for j, k in enumerate(("red", "green", "blue"))]
    for name, values in (scalars or {}).items():
        v = _numpy(values).astype(np.float32).reshape(-1)
        if not name.isidentifier() or name in {f for f, _ in fields}:
            raise InputError(f"PLY property name {name!r} is not an identifier or is taken.")
        if v.shape[0] != n:
            raise ShapeError(f"scalar {name!r} has {v.shape[0]} values for {n} points.")
        fields.append((name, v))
    types = {np.dtype(np.float32): "float", np.dtype(np.uint8): "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    header += ["comment written by dgeo", f"element vertex {n}"]
    header += [f"property {types[v.dtype]} {k}" for k, v in fields]
    header.append("end_header")
    head = ("\n".join(header) + "\n").encode("ascii")
    if binary:
        dtype = np.dtype([(k, v.dtype.newbyteorder("<")) for k, v in fields])
        rec = np.empty(n, dtype)
        for k, v in fields:
            rec[k] = v
        body = rec.tobytes()
    else:
        cols = [np.char.mod("%.9g" if v.dtype == np.float32 else "%d", v) for _, v in fields]
        rows = [" ".join(r) for r in zip(*cols, strict=True)] if cols and n else []
        body = ("\n".join(rows) + ("\n" if rows else "")).encode("ascii")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(head + body)
    return path


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the vertices of a PLY file written by :func:`write_ply` (or any PLY whose only
    element is ``vertex`` with scalar properties): ``property name -> (N,)`` array.

    Raises:
        InputError: not a PLY file of that kind.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise InputError(f"{path} is not a PLY file (no 'ply' / 'end_header').")
    lines = data[:end].decode("ascii").splitlines()
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ")), None)
    n, props = 0, []
    kinds = {"float": "f4", "float32": "f4", "double": "f8", "uchar": "u1", "uint8": "u1",
             "int": "i4", "int32": "i4", "uint": "u4", "short": "i2", "ushort": "u2"}  # fmt: skip
    for ln in lines:
        parts = ln.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["element"]:
            raise InputError(f"{path}: only a vertex element is supported, found {ln!r}.")
        elif parts[:1] == ["property"]:
            if parts[1] not in kinds:
                raise InputError(f"{path}: unsupported property {ln!r}.")
            props.append((parts[2], kinds[parts[1]]))
    body = data[end + len(b"end_header\n") :]
    if fmt == "binary_little_endian":
        rec = np.frombuffer(body, np.dtype([(k, "<" + t) for k, t in props]), count=n)
        return {k: rec[k].copy() for k, _ in props}
    if fmt == "ascii":
        table = np.array(body.decode("ascii").split(), dtype=np.float64).reshape(n, len(props))
        return {k: table[:, j].astype(t) for j, (k, t) in enumerate(props)}
    raise InputError(f"{path}: unsupported PLY format {fmt!r}.")


# ---------------------------------------------------------------------------------- colours
def scalar_colors(
    values: np.ndarray | torch.Tensor,
    lo: float | None = None,
    hi: float | None = None,
    colormap: int = cv2.COLORMAP_TURBO,
) -> np.ndarray:
    """RGB uint8 ``(N, 3)`` of scalars ``(N,)`` through an OpenCV colour map (default turbo:
    blue = low, red = high), scaled from ``lo`` to ``hi`` (default: the 2nd and 98th
    percentiles)."""
    v = _numpy(values).astype(np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros((0, 3), np.uint8)
    lo = float(np.percentile(v, 2)) if lo is None else lo
    hi = float(np.percentile(v, 98)) if hi is None else hi
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap(np.round(t * 255).astype(np.uint8)[:, None], colormap)[:, 0]
    return bgr[:, ::-1].copy()


def coords_to_cloud(
    coords: np.ndarray | torch.Tensor,
    image: np.ndarray | torch.Tensor | None = None,
    min_confidence: float | None = DEFAULT_MIN_CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points of a KFNet coordinate map, with colours.

    Args:
        coords: ``(h, w, 4)`` world xyz + confidence ``1/sigma`` (``coord_<i>.npy``).
        image: optional ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8 RGB image the map
            was predicted from; ``H / h == W / w`` must be a whole stride ``s``, and each cell
            takes the colour of its pixel ``(s j + s/2, s i + s/2)``. None: colour by
            confidence (turbo colour map).
        min_confidence: keep cells with ``1/sigma`` above this (None: all finite cells).
    Returns:
        ``(points (N, 3) float32, colors (N, 3) uint8, confidence (N,) float32)``.
    Raises:
        ShapeError, InputError: wrong shapes, or an image whose size is not a whole multiple of
            the map's.
    """
    c = _numpy(coords).astype(np.float32, copy=False)
    if c.ndim != 3 or c.shape[-1] != 4:
        raise ShapeError(f"coords must have shape (h, w, 4) (xyz + 1/sigma), got {c.shape}.")
    h, w = c.shape[:2]
    keep = np.isfinite(c).all(-1)
    if min_confidence is not None:
        keep &= c[..., 3] > min_confidence
    if image is not None:
        img = _numpy(image)
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = np.moveaxis(img, 0, -1)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ShapeError(f"image must be (3, H, W) or (H, W, 3) RGB, got {img.shape}.")
        if np.issubdtype(img.dtype, np.floating):
            img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        H, W = img.shape[:2]
        s = H // h
        if s < 1 or H != s * h or W != s * w:
            raise InputError(
                f"the image is {W}x{H} but the map is {w}x{h}; pass the image the map was "
                "predicted from (its sides a whole multiple of the map's)."
            )
        off = s // 2 if s > 1 else 0
        colors = img[off::s, off::s][:h, :w][keep]
    else:
        colors = scalar_colors(c[..., 3][keep])
    return c[..., :3][keep], np.ascontiguousarray(colors, np.uint8), c[..., 3][keep]


def flow_color_wheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al. 2007), ``(55, 3)`` float RGB in 0..255:
    red -> yellow -> green -> cyan -> blue -> magenta -> red, with 15, 6, 4, 11, 13, 6 steps."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]  # fmt: skip
    parts = []
    for n, a, b in segments:  # a + floor(255 k / n) towards b, as the reference code rounds
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        step = np.floor(255 * np.arange(n, dtype=np.float64) / n)[:, None]
        parts.append(a + np.sign(b - a) * step)
    return np.concatenate(parts)


def flow_to_color(
    flow: np.ndarray | torch.Tensor,
    max_radius: float | None = None,
    valid: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Colour-code a flow field with the Middlebury wheel (as ``flow_vis`` / RAFT draw it).

    The hue encodes the direction: in image coordinates (x right, y down) a flow towards +x is
    red, towards +y (down) orange-yellow, towards -x cyan-blue, towards -y (up) violet; the
    saturation encodes the length ``/ max_radius`` (white: no motion; lengths above
    ``max_radius`` are darkened, as in the reference code).

    Args:
        flow: ``(h, w, 2)`` or ``(2, h, w)`` ``(u, v)`` in any unit.
        max_radius: the length drawn at full saturation (None: the longest valid flow).
        valid: optional ``(h, w)`` bool; invalid and non-finite cells are black.
    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    f = _numpy(flow).astype(np.float64)
    if f.ndim == 3 and f.shape[0] == 2 and f.shape[-1] != 2:
        f = np.moveaxis(f, 0, -1)
    if f.ndim != 3 or f.shape[-1] != 2:
        raise ShapeError(f"flow must have shape (h, w, 2) or (2, h, w), got {f.shape}.")
    ok = np.isfinite(f).all(-1)
    if valid is not None:
        ok &= _numpy(valid).astype(bool).reshape(ok.shape)
    u, v = np.where(ok, f[..., 0], 0.0), np.where(ok, f[..., 1], 0.0)
    rad = np.hypot(u, v)
    if max_radius is None:
        max_radius = float(rad[ok].max()) if ok.any() else 0.0
    scale = max(max_radius, 1e-12)
    u, v, rad = u / scale, v / scale, rad / scale
    wheel = flow_color_wheel()
    ncols = wheel.shape[0]
    a = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % ncols
    t = (fk - k0)[..., None]
    col = ((1 - t) * wheel[k0] + t * wheel[k1]) / 255.0
    r = rad[..., None]
    col = np.where(r <= 1, 1 - r * (1 - col), col * 0.75)
    out = np.round(255 * col).astype(np.uint8)
    out[~ok] = 0
    return out


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB image as PNG, atomically."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ShapeError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}.")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode the PNG image {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())
    return path
