"""Images on disk to tensors, resized to a working resolution with their intrinsics.

Localization works at a configurable longest side (the fox frames are 1080x1920; S2DHM used 512
or 1024): :func:`load_image` reads an image, checks it against the size its intrinsics claim, and
:func:`resize_max` shrinks it (never enlarges) with area averaging, returning the camera of the
resized image through :meth:`Camera.scale`, so that poses computed at the working resolution are
poses of the original camera.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dgeo.errors import InputError, ParseError, ShapeError, require_file
from dgeo.geometry import Camera


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as ``(3, H, W)`` float32 RGB in [0, 1] (8- or 16-bit, gray or colour).

    Raises:
        DataFileNotFoundError: no such file. ParseError: not an image OpenCV can decode.
    """
    path = require_file(path, "image")
    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode: paths with any characters
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ParseError(path, None, "not an image OpenCV can read (corrupt or unknown format).")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / scale
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def check_image_size(image: torch.Tensor, camera: Camera, name: str) -> None:
    """Raise :class:`InputError` if ``image`` ``(3, H, W)`` is not the size of ``camera`` (batch
    shape ``()``)."""
    h, w = image.shape[-2:]
    cw, ch = (int(v) for v in camera.size.reshape(-1, 2)[0].tolist())
    if (w, h) != (cw, ch):
        hint = " (width and height swapped?)" if (h, w) == (cw, ch) else ""
        raise InputError(
            f"image {name} is {w}x{h} but its intrinsics say {cw}x{ch}{hint}; fix the "
            "intrinsics or pass the image they were calibrated for."
        )


def resize_max(
    image: torch.Tensor, camera: Camera, max_size: int | None
) -> tuple[torch.Tensor, Camera]:
    """Shrink ``image`` ``(C, H, W)`` or ``(B, C, H, W)`` so that its longest side is at most
    ``max_size`` (``None``: unchanged), with area averaging, and scale ``camera`` to match.

    The factors per axis are ``W' / W`` and ``H' / H`` of the rounded new size (equal up to
    rounding; single-focal camera models take their mean), and the principal point follows the
    pixel-centre convention of :meth:`Camera.scale`.

    Returns:
        The image and the :class:`Camera` of the resized image.
    """
    if image.dim() not in (3, 4):
        raise ShapeError(f"image must be (C, H, W) or (B, C, H, W), got {tuple(image.shape)}.")
    h, w = image.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return image, camera
    if max_size < 1:
        raise InputError(f"max_size must be a positive number of pixels, got {max_size}.")
    s = max_size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch, size=(nh, nw), mode="area")
    out = out if image.dim() == 4 else out[0]
    sx, sy = nw / w, nh / h
    if camera.model.startswith("SIMPLE") or camera.model == "RADIAL":
        sx = sy = (sx + sy) / 2
    scaled = camera.scale(torch.tensor([sx, sy], dtype=camera.dtype))
    # Camera.scale rounds size * s; make the size exactly the image's
    fixed = Camera(scaled.model, nw, nh, scaled.params)
    return out, fixed


def load_image(
    path: str | Path, camera: Camera, max_size: int | None = None
) -> tuple[torch.Tensor, Camera]:
    """Read an image, check it against ``camera`` and resize it: ``(3, H', W')`` and the
    :class:`Camera` of the resized image (see :func:`read_image`, :func:`resize_max`)."""
    image = read_image(path)
    check_image_size(image, camera, str(path))
    return resize_max(image, camera, max_size)
