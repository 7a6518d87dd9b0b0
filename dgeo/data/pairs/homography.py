"""Pairs made from single images by a random homography and photometric changes.

Image ``a`` is a photo fitted into ``height x width`` (:func:`~dgeo.data.pairs.base.fit_image`);
image ``b`` is ``a`` warped by a random homography ``H`` (rotation, scale, perspective,
translation about the centre of the photo) and, with ``photometric``, changed like another time
of day: a gain and gamma curve (dark and contrasty "night" with probability
``night_probability``, mild otherwise), a colour cast, sometimes a Gaussian blur, and sensor
noise. Correspondences are the pixel centres of ``a``'s photo that ``H`` maps inside ``b``
(``uv_b = H uv_a`` in dgeo's pixel convention, top-left pixel centre at (0, 0)), ``N`` of them
drawn per ``(seed, index, epoch)``; the homography and the changes are drawn per
``(seed, index, epoch)`` too, so every epoch sees new pairs. :meth:`HomographyPairs.homography`
returns the ``H`` of an item.
"""

from __future__ import annotations

import math
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F

from dgeo.data.pairs.base import (
    Fit,
    PairDataset,
    _finite_float,
    check_common,
    check_split,
    fit_image,
    fit_size,
    pack_correspondences,
    split_of,
)
from dgeo.data.synthetic.correspondences import pixel_grid
from dgeo.data.synthetic.textures import IMAGE_EXTENSIONS
from dgeo.errors import DataFileNotFoundError, InputError
from dgeo.geometry.sampling import pixel_to_grid

__all__ = ["HomographyPairs", "apply_homography", "random_homography", "warp_image"]


def apply_homography(H: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map pixels ``(..., 2)`` by ``H`` ``(3, 3)``: ``(..., 2)`` and validity ``(...)`` (positive
    homogeneous scale, i.e. not mapped through infinity). Computed in ``H``'s dtype."""
    p = torch.cat([uv.to(H.dtype), torch.ones_like(uv[..., :1], dtype=H.dtype)], -1) @ H.T
    w = p[..., 2:]
    ok = w[..., 0] > 1e-9
    return p[..., :2] / torch.where(ok[..., None], w, torch.ones_like(w)), ok


def warp_image(image: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Warp ``image`` ``(C, h, w)`` by ``H`` (a -> b): ``b(p) = a(H^-1 p)`` for every pixel
    centre ``p``, bilinear, zero outside ``a``. Returns ``(C, h, w)``."""
    h, w = image.shape[-2:]
    src, ok = apply_homography(torch.linalg.inv(H), pixel_grid(h, w, H.dtype))
    src = torch.where(ok[..., None], src, torch.full_like(src, -1e4))
    grid = pixel_to_grid(src.to(image.dtype), (h, w))[None]
    out = F.grid_sample(
        image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0]


def random_homography(
    size: tuple[int, int],
    generator: torch.Generator,
    max_angle_deg: float = 25.0,
    scale: tuple[float, float] = (0.75, 1.25),
    perspective: float = 0.2,
    translation: float = 0.1,
) -> torch.Tensor:
    """A random homography ``(3, 3)`` float64 about the centre of a ``size = (w, h)`` image.

    ``H = T(c + t) [s R] P T(-c)``: centre ``c``; perspective ``P`` with last row
    ``(px, py, 1)``, ``|px|, |py| <= perspective / max(w, h)`` (the horizon effect reaches
    ``perspective / 2`` at the border); rotation within ``max_angle_deg``; scale log-uniform in
    ``scale``; translation ``t`` within ``translation`` times the size.
    """
    w, h = size
    r = torch.rand(6, generator=generator, dtype=torch.float64)
    angle = math.radians(max_angle_deg) * (2 * r[0] - 1)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    s = torch.exp(lo + (hi - lo) * r[1])
    px, py = (2 * r[2:4] - 1) * perspective / max(w, h)
    tx, ty = (2 * r[4] - 1) * translation * w, (2 * r[5] - 1) * translation * h
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ca, sa = torch.cos(angle) * s, torch.sin(angle) * s
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    A = torch.stack([ca, -sa, zero, sa, ca, zero, zero, zero, one]).reshape(3, 3)
    P = torch.stack([one, zero, zero, zero, one, zero, px, py, one]).reshape(3, 3)
    T_in = torch.tensor([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T_out = torch.stack([one, zero, cx + tx, zero, one, cy + ty, zero, zero, one]).reshape(3, 3)
    return T_out @ A @ P @ T_in


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


class HomographyPairs(PairDataset):
    """Random homographies and photometric changes of the photos of a folder (module docstring).

    Args:
        image_dir: folder searched recursively for images (:data:`IMAGE_EXTENSIONS`).
        split: ``"all"``, or ``"train"`` / ``"val"`` (photos whose relative path hashes outside
            / inside ``val_fraction``, :func:`~dgeo.data.pairs.base.split_of`).
        val_fraction: share of the photos held out for ``"val"``.
        repeats: items per photo (each draws its own homography).
        max_angle_deg, scale, perspective, translation: see :func:`random_homography`.
        photometric: apply the photometric changes to ``b`` (off: ``b`` is exactly ``a``
            warped).
        night_probability: share of dark "night" changes.
        max_noise: largest standard deviation of the sensor noise (in [0, 1] intensity).
        max_blur: largest blur sigma in pixels (blur applied to half of the pairs).
        min_overlap: share of ``a``'s photo that must land inside ``b``; the homography is
            re-drawn (10 times at most, then the best is kept).
        height, width, num_points, seed: see :class:`PairDataset`.
    Raises:
        DataFileNotFoundError: ``image_dir`` does not exist.
        InputError: no image in it (or in the split).
    """

    def __init__(
        self,
        image_dir: str | Path,
        *,
        split: str = "all",
        val_fraction: float = 0.1,
        repeats: int = 1,
        max_angle_deg: float = 25.0,
        scale: tuple[float, float] = (0.75, 1.25),
        perspective: float = 0.2,
        translation: float = 0.1,
        photometric: bool = True,
        night_probability: float = 0.5,
        max_noise: float = 0.03,
        max_blur: float = 1.5,
        min_overlap: float = 0.3,
        height: int = 240,
        width: int = 320,
        num_points: int = 512,
        seed: int = 0,
    ):
        check_common(height, width, num_points, seed)
        val_fraction = check_split(split, val_fraction)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DataFileNotFoundError(
                f"image folder {self.image_dir} does not exist; pass a folder of photos."
            )
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise InputError(f"repeats must be a positive integer, got {repeats!r}.")
        self.max_angle_deg = _finite_float(max_angle_deg, "max_angle_deg", 0.0, 180.0)
        lo, hi = (_finite_float(s, "scale", 1e-3, 1e3) for s in scale)
        if lo > hi:
            raise InputError(f"scale must be (low, high) with low <= high, got {scale}.")
        self.scale = (lo, hi)
        self.perspective = _finite_float(perspective, "perspective", 0.0, 1.0)
        self.translation = _finite_float(translation, "translation", 0.0, 1.0)
        self.night_probability = _finite_float(night_probability, "night_probability", 0.0, 1.0)
        self.max_noise = _finite_float(max_noise, "max_noise", 0.0, 1.0)
        self.max_blur = _finite_float(max_blur, "max_blur", 0.0, 20.0)
        self.min_overlap = _finite_float(min_overlap, "min_overlap", 0.0, 1.0)
        self.photometric = bool(photometric)
        files = _list_images(self.image_dir)
        if not files:
            raise InputError(
                f"image folder {self.image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add photos or pass another folder."
            )
        rel = [p.relative_to(self.image_dir).as_posix() for p in files]
        if split != "all":
            keep = [split_of(r, val_fraction) == split for r in rel]
            files = [f for f, k in zip(files, keep, strict=True) if k]
            rel = [r for r, k in zip(rel, keep, strict=True) if k]
            if not files:
                raise InputError(
                    f"image folder {self.image_dir}: no image falls in the {split!r} split "
                    f"(val_fraction {val_fraction}); add images or change val_fraction."
                )
        self.files, self.relative, self.repeats = files, rel, repeats
        super().__init__(
            height=height,
            width=width,
            num_points=num_points,
            seed=seed,
            length=len(files) * repeats,
            source=f"homography:{self.image_dir}",
        )

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    # ------------------------------------------------------------------ homographies
    def _draw(self, fit: Fit, index: int) -> torch.Tensor:
        g = self.generator(index, stream=1)
        w, h = fit.size
        uv = pixel_grid(h, w, torch.float64).reshape(-1, 2)
        best = None
        for _ in range(10):
            H = random_homography(
                fit.size, g, self.max_angle_deg, self.scale, self.perspective, self.translation
            )
            inside = self._inside(H, uv).double().mean()
            if best is None or inside > best[0]:
                best = (inside, H)
            if inside >= self.min_overlap:
                break
        return best[1]

    def _inside(self, H: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        uv_b, ok = apply_homography(H, uv)
        hi = uv_b.new_tensor([self.width - 1.0, self.height - 1.0])
        return ok & ((uv_b >= 0) & (uv_b <= hi)).all(-1)

    def homography(self, index: int) -> torch.Tensor:
        """``H`` ``(3, 3)`` float64 (pixels of ``a`` -> pixels of ``b``) of item ``index`` at
        the current epoch."""
        image = self.read_image(self.files[index % len(self.files)])
        fit = fit_size((image.shape[-1], image.shape[-2]), self.height, self.width)
        return self._draw(fit, index)

    # ------------------------------------------------------------------ photometric
    def _photometric(self, image: torch.Tensor, index: int) -> torch.Tensor:
        g = self.generator(index, stream=2)
        r = torch.rand(9, generator=g)
        if float(r[0]) < self.night_probability:
            gain, gamma = 0.15 + 0.35 * r[1], 1.4 + 0.8 * r[2]
        else:
            gain, gamma = 0.75 + 0.5 * r[1], 0.8 + 0.45 * r[2]
        cast = torch.exp(0.1 * (2 * r[3:6] - 1))[:, None, None]
        out = (gain * cast * image.clamp(0, 1) ** gamma).clamp(0, 1)
        sigma = float(r[7]) * self.max_blur
        if float(r[6]) < 0.5 and sigma > 0.1:
            k = 2 * math.ceil(3 * sigma) + 1
            out = kornia.filters.gaussian_blur2d(out[None], (k, k), torch.tensor([[sigma, sigma]]))[
                0
            ]
        std = float(r[8]) * self.max_noise
        noise = torch.randn(out.shape, generator=g)
        return (out + std * noise).clamp(0, 1)

    # ------------------------------------------------------------------ items
    def load_item(self, index: int, generator: torch.Generator) -> dict:
        k = index % len(self.files)
        image_a, fit = fit_image(self.read_image(self.files[k]), self.height, self.width)
        H = self._draw(fit, index)
        w, h = fit.size
        uv_a = pixel_grid(h, w, torch.float64).reshape(-1, 2)
        inside = self._inside(H, uv_a)
        uv_b, _ = apply_homography(H, uv_a[inside])
        image_b = warp_image(image_a, H)
        if self.photometric:
            image_b = self._photometric(image_b, index)
        item = pack_correspondences(uv_a[inside], uv_b, self.num_points, generator)
        rel = self.relative[k]
        return {
            "image_a": image_a,
            "image_b": image_b.contiguous(),
            **item,
            "name": f"{rel}|{rel}#H{index // len(self.files)}",
        }
