"""A top-down map of a localization run: 3D points, reference cameras, true and estimated queries.

World ``z`` is up (the synthetic world's convention; for other maps the view is along the
world ``z`` axis all the same). Drawn with OpenCV into a uint8 BGR image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dgeo.errors import InputError
from dgeo.geometry import Pose
from dgeo.io.atomic import atomic_open

# BGR colours
BG = (250, 250, 248)
_POINT = (175, 175, 175)
_REF = (200, 140, 60)
_TRUE = (60, 160, 40)
_EST = (40, 40, 220)
_LINK = (0, 170, 240)
_TEXT = (40, 40, 40)


def _centres_dirs(poses: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres ``(N, 2)`` and unit viewing directions ``(N, 2)`` in the x-y plane."""
    p = poses.reshape(-1).to("cpu", torch.float64)
    c = p.center().numpy()[:, :2]
    d = p.R[:, 2, :2].numpy()  # optical axis in the world
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return c, np.where(n > 1e-9, d / np.maximum(n, 1e-9), 0.0)


def nice_length(x: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above ``x``."""
    k = 10 ** math.floor(math.log10(x))
    return max(m * k for m in (1, 2, 5) if m * k <= x)


def fit_canvas(
    points: np.ndarray, size: int, margin: float, min_span: float
) -> tuple[np.ndarray, np.ndarray, float, int, int, np.ndarray]:
    """A top-down canvas around ``points (N, 2)``: the longest side ``size`` px, a ``margin``
    (fraction of the longest span) on every side, content centred.

    Returns:
        ``(lo, hi, scale, W, H, off)``: the plotted box, pixels per unit, canvas size and the
        offset that centres the content (a point ``p`` lands at ``(p - lo) * scale + off``).
    """
    lo, hi = points.min(0), points.max(0)
    span = np.maximum(hi - lo, min_span)
    lo, hi = lo - margin * span.max(), hi + margin * span.max()
    span = hi - lo
    scale = (size - 1) / span.max()
    W = max(int(span[0] * scale) + 1, size // 2)
    H = max(int(span[1] * scale) + 1, size // 3)
    off = (np.array([W, H]) - 1 - span * scale) / 2
    return lo, hi, scale, W, H, off


def plot_localization(
    points: torch.Tensor,
    true_poses: Pose,
    estimated_poses: Pose,
    *,
    reference_poses: Pose | None = None,
    success: Sequence[bool] | torch.Tensor | None = None,
    title: str | None = None,
    size: int = 1000,
    path: str | Path | None = None,
) -> np.ndarray:
    """Draw the map seen from above and the query poses.

    Points are grey dots; reference cameras blue; each query's true pose green and its estimate
    red (a circle at the camera centre and a tick along its viewing direction), joined by an
    orange line; an estimate that is a fallback (``success`` False) is a red cross.

    Args:
        points: ``(P, 3)`` world points of the map.
        true_poses, estimated_poses: ``cam_from_world`` :class:`Pose` ``(Q,)``.
        reference_poses: optional :class:`Pose` ``(R,)`` of the reference images.
        success: ``Q`` flags (default all True).
        title: text at the top.
        size: the longer side of the image in pixels.
        path: if given, write the image there (PNG).
    Returns:
        The image, ``(H, W, 3)`` uint8 BGR.
    """
    t_c, t_d = _centres_dirs(true_poses)
    e_c, e_d = _centres_dirs(estimated_poses)
    if len(t_c) != len(e_c):
        raise InputError(f"{len(t_c)} true poses but {len(e_c)} estimates; give one each.")
    ok = np.ones(len(t_c), bool) if success is None else np.asarray(success, bool).reshape(-1)
    r_c, r_d = _centres_dirs(reference_poses) if reference_poses is not None else (None, None)
    xy = points.detach().to("cpu", torch.float64).reshape(-1, 3).numpy()[:, :2]
    # the extent: cameras, and the bulk of the points (robust to far outliers)
    cams = [c for c in (t_c, r_c) if c is not None and len(c)]
    parts = list(cams)
    if len(xy):
        parts.append(np.percentile(xy, [1, 99], axis=0))
    if not parts:
        raise InputError("nothing to plot: no points and no poses.")
    allp = np.concatenate(parts)
    lo, hi, scale, W, H, off = fit_canvas(allp, size, 0.06, 1e-6)
    top = 44  # room for the title and legend
    img = np.full((H + top, W, 3), BG, np.uint8)

    def px(p: np.ndarray) -> np.ndarray:
        q = (p - lo) * scale + off
        return np.stack([q[..., 0], H - 1 - q[..., 1] + top], -1)

    def clip(p: np.ndarray) -> np.ndarray:
        """Far-off estimates sit on the border of the image."""
        return np.clip(p, [4, top + 4], [W - 5, H + top - 5])

    inside = ((xy >= lo) & (xy <= hi)).all(1)
    uv = px(xy[inside]).round().astype(int)
    for du in (0, 1):  # 2x2 dots
        for dv in (0, 1):
            img[np.clip(uv[:, 1] + dv, 0, H + top - 1), np.clip(uv[:, 0] + du, 0, W - 1)] = _POINT
    tick = max(8.0, 0.016 * size)
    aa = cv2.LINE_AA

    def camera(c, d, color, radius=4, thickness=2):
        p = clip(px(c))
        q = p + tick * np.array([d[0], -d[1]])
        a, b = tuple(p.round().astype(int)), tuple(q.round().astype(int))
        cv2.line(img, a, b, color, thickness, aa)
        cv2.circle(img, a, radius, color, -1, aa)

    if r_c is not None:
        for c, d in zip(r_c, r_d, strict=True):
            camera(c, d, _REF, radius=3, thickness=1)
    for i in range(len(t_c)):
        a = tuple(px(t_c[i]).round().astype(int))
        b = tuple(clip(px(e_c[i])).round().astype(int))
        cv2.line(img, a, b, _LINK, 1, aa)
    for i in range(len(t_c)):
        camera(t_c[i], t_d[i], _TRUE)
        if ok[i]:
            camera(e_c[i], e_d[i], _EST, radius=3)
        else:
            u, v = clip(px(e_c[i])).round().astype(int)
            cv2.drawMarker(img, (int(u), int(v)), _EST, cv2.MARKER_TILTED_CROSS, 12, 2, aa)
    # title, legend and scale bar
    font = cv2.FONT_HERSHEY_SIMPLEX
    if title:
        cv2.putText(img, title, (10, 18), font, 0.5, _TEXT, 1, aa)
    x = 10
    for label, color in (("map points", _POINT), ("references", _REF), ("true", _TRUE),
                         ("estimated", _EST), ("error", _LINK)):  # fmt: skip
        cv2.circle(img, (x + 5, 31), 5, color, -1, aa)
        cv2.putText(img, label, (x + 14, 35), font, 0.42, _TEXT, 1, aa)
        x += 26 + 8 * len(label)
    bar = nice_length(0.2 * (hi - lo).max())
    y0, x0 = H + top - 14, W - 14 - int(bar * scale)
    cv2.line(img, (x0, y0), (x0 + int(bar * scale), y0), _TEXT, 2, aa)
    cv2.putText(img, f"{bar:g} m", (x0, y0 - 6), font, 0.42, _TEXT, 1, aa)
    if path is not None:
        ok_png, buf = cv2.imencode(".png", img)
        if not ok_png:
            raise OSError(f"could not encode the plot for {path}")
        with atomic_open(Path(path), "wb") as f:
            f.write(buf.tobytes())
    return img
