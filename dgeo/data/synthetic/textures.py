"""Procedural, tileable albedo textures of the synthetic world, and folders of user images.

Every generator takes a ``torch.Generator`` (all its randomness comes from it, never from global
state, so one seed gives identical tensors bit for bit) and a size ``T`` and returns a ``(3, T, T)``
float32 albedo in ``[0, 1]``. Column ``i`` covers texture coordinates ``u`` in ``[i, i + 1) / T``
(along a quad's ``edge_u``), row ``j`` covers ``v`` in ``[j, j + 1) / T`` (along ``edge_v``), so
row 0 is at ``v = 0``. The renderer wraps ``(u, v)``, so every texture is periodic: its last
column continues into its first and its last row into its first. Noise-based textures are
periodic by construction (integer lattice frequencies); drawn panels (signs, posters, vehicles,
shop fronts) get a thin uniform frame.

Textures carry structure at several scales (mortar lines and per-brick colours, grain and stains,
text and shapes) because feature learning and feature-metric alignment need gradients at every
level of an image pyramid. :data:`TEXTURE_SIZES_M` gives the physical extent in metres
``(along u, along v)`` each generator is designed for (``None``: stretched once over its quad).

This module holds the registry (:data:`TEXTURES`, :func:`make_texture`) and user image folders,
and re-exports the generators: :mod:`~dgeo.data.synthetic.noise` (periodic noise),
:mod:`~dgeo.data.synthetic.surfaces` (tileable surfaces and facades) and
:mod:`~dgeo.data.synthetic.panels` (panels drawn with OpenCV).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from dgeo.data.synthetic._texture_util import RGB, _done, _smoothstep, generator, single_threaded
from dgeo.data.synthetic.noise import fbm, gradient_noise, value_noise
from dgeo.data.synthetic.panels import (
    books,
    cabinet,
    car_color,
    cardboard,
    lamp_panel,
    picture,
    screen,
    shopfront,
    sign,
    vehicle_end,
    vehicle_roof,
    vehicle_side,
    window_view,
)
from dgeo.data.synthetic.surfaces import (
    asphalt,
    bark,
    bricks,
    ceiling_tiles,
    concrete,
    fabric,
    facade,
    foliage,
    metal,
    noise_texture,
    paving,
    plaster,
    road,
    tiles,
    wallpaper,
    wood,
)
from dgeo.errors import DataFileNotFoundError, InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "RGB",
    "TEXTURES",
    "TEXTURE_SIZES_M",
    "TextureFn",
    "asphalt",
    "bark",
    "books",
    "bricks",
    "cabinet",
    "car_color",
    "cardboard",
    "ceiling_tiles",
    "concrete",
    "fabric",
    "facade",
    "fbm",
    "foliage",
    "generator",
    "gradient_noise",
    "lamp_panel",
    "load_texture_folder",
    "make_texture",
    "make_tileable",
    "metal",
    "noise_texture",
    "paving",
    "picture",
    "plaster",
    "road",
    "screen",
    "shopfront",
    "sign",
    "single_threaded",
    "tiles",
    "value_noise",
    "vehicle_end",
    "vehicle_roof",
    "vehicle_side",
    "wallpaper",
    "window_view",
    "wood",
]

#: Image file extensions :func:`load_texture_folder` reads.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp",
)  # fmt: skip


# ------------------------------------------------------------------------------------ registry
TextureFn = Callable[..., torch.Tensor]

#: Every procedural generator by name: ``fn(generator, size, **params) -> (3, T, T)``.
TEXTURES: dict[str, TextureFn] = {
    "noise": noise_texture,
    "plaster": plaster,
    "concrete": concrete,
    "asphalt": asphalt,
    "road": road,
    "paving": paving,
    "bricks": bricks,
    "tiles": tiles,
    "wood": wood,
    "foliage": foliage,
    "bark": bark,
    "metal": metal,
    "wallpaper": wallpaper,
    "ceiling_tiles": ceiling_tiles,
    "fabric": fabric,
    "facade": facade,
    "shopfront": shopfront,
    "sign": sign,
    "vehicle_side": vehicle_side,
    "vehicle_end": vehicle_end,
    "vehicle_roof": vehicle_roof,
    "picture": picture,
    "window_view": window_view,
    "books": books,
    "cabinet": cabinet,
    "cardboard": cardboard,
    "screen": screen,
    "lamp_panel": lamp_panel,
}

#: Physical extent ``(along u, along v)`` in metres each generator is designed for, at its
#: default parameters; ``None``: a panel stretched once over its quad.
TEXTURE_SIZES_M: dict[str, tuple[float, float] | None] = {
    "noise": (2.0, 2.0),
    "plaster": (2.0, 2.0),
    "concrete": (2.0, 2.0),
    "asphalt": (4.0, 4.0),
    "road": (8.0, 4.0),
    "paving": (2.4, 2.4),
    "bricks": (0.9, 0.9),
    "tiles": (1.2, 1.2),
    "wood": (2.0, 2.0),
    "foliage": (2.0, 2.0),
    "bark": (1.0, 1.0),
    "metal": (1.0, 1.0),
    "wallpaper": (0.6, 0.6),
    "ceiling_tiles": (1.2, 1.2),
    "fabric": (0.5, 0.5),
    "facade": (6.0, 6.0),
    "shopfront": (6.0, 4.0),
    "sign": None,
    "vehicle_side": None,
    "vehicle_end": None,
    "vehicle_roof": None,
    "picture": None,
    "window_view": None,
    "books": None,
    "cabinet": None,
    "cardboard": None,
    "screen": None,
    "lamp_panel": None,
}


def make_texture(
    name: str, seed: int | torch.Generator = 0, size: int = 256, **params
) -> torch.Tensor:
    """The procedural texture ``name`` (a key of :data:`TEXTURES`).

    Args:
        name: generator name.
        seed: an int seed or a ``torch.Generator`` (consumed).
        size: texture size ``T`` (at least 16).
        params: generator-specific keyword arguments.
    Returns:
        ``(3, T, T)`` float32 albedo in ``[0, 1]``, periodic in both directions.
    """
    if name not in TEXTURES:
        raise InputError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise InputError(f"texture size must be an int >= 16, got {size!r}.")
    with single_threaded():
        return TEXTURES[name](generator(seed), size, **params)


# ---------------------------------------------------------------------------------- user images
def make_tileable(image: torch.Tensor, band: float = 0.125) -> torch.Tensor:
    """Make ``image`` ``(3, T, T)`` periodic by mirror-blending its borders.

    Within ``band`` (a fraction of ``T``) of each edge, a texel is blended with its mirror image
    across the texture's centre line, with weight 1/2 at the edge falling smoothly to 0 at the
    band's inner end; so the first and last columns (rows) become equal and the interior keeps
    the original picture.
    """
    size = image.shape[-1]
    width = max(1.0, band * size)
    d = torch.arange(size, dtype=torch.float32)
    d = torch.minimum(d, size - 1 - d)
    w = 0.5 * (1 - _smoothstep(0.0, width, d))
    out = image * (1 - w.view(1, 1, -1)) + image.flip(-1) * w.view(1, 1, -1)
    out = out * (1 - w.view(1, -1, 1)) + out.flip(-2) * w.view(1, -1, 1)
    return _done(out)


def _read_image(path: Path, size: int) -> torch.Tensor | None:
    """One image file, centre-cropped to a square and resized to ``(3, T, T)``; ``None`` if
    OpenCV cannot read it."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        return None
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_CUBIC
    img = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_texture_folder(path: str | Path, size: int = 256) -> torch.Tensor:
    """Textures from the images in a folder (not recursive), in file-name order.

    Each image is read with OpenCV (colour; grey images are replicated), centre-cropped to a
    square, resized to ``T`` and made tileable with :func:`make_tileable`. Files that are not
    images of an accepted extension (:data:`IMAGE_EXTENSIONS`), or that OpenCV cannot decode,
    are skipped.

    Args:
        path: the folder.
        size: texture size ``T``.
    Returns:
        ``(N, 3, T, T)`` float32 in ``[0, 1]``, ``N >= 1``.
    Raises:
        DataFileNotFoundError: the folder does not exist.
        InputError: ``path`` is not a folder, or holds no readable image.
    """
    folder = Path(path)
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not folder.exists():
        raise DataFileNotFoundError(
            f"texture folder {folder} does not exist; pass a folder of images ({accepted})."
        )
    if not folder.is_dir():
        raise InputError(f"texture folder {folder} is not a folder; pass a folder of images.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise InputError(f"texture size must be an int >= 16, got {size!r}.")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    with single_threaded():
        images = [img for img in (_read_image(p, size) for p in files) if img is not None]
    if not images:
        raise InputError(
            f"texture folder {folder} holds no readable image ({len(files)} candidate file(s)); "
            f"accepted extensions: {accepted}."
        )
    with single_threaded():
        return torch.stack([make_tileable(img) for img in images])
