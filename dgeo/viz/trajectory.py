"""Top-down plot of a camera trajectory: estimated against ground-truth camera centres.

Drawn with OpenCV like :mod:`dgeo.viz.plots` (no plotting library needed). The view looks along
one world axis: ``"auto"`` drops the axis along which the ground-truth centres (else the
estimates) spread least, which is the vertical for hand-held and driving sequences.
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
from dgeo.viz.plots import BG, fit_canvas, nice_length

__all__ = ["AXES", "plot_trajectory", "view_axes"]

#: Accepted ``axes`` of :func:`plot_trajectory`.
AXES = ("auto", "xy", "xz", "yz")
# BGR colours
_TRUE = (60, 160, 40)
_EST = (40, 40, 220)
_LINK = (0, 170, 240)
_TEXT = (40, 40, 40)
_GRID = (228, 228, 224)


def view_axes(centres: np.ndarray, axes: str = "auto") -> tuple[int, int]:
    """The two world axes ``(i, j)`` drawn as the plot's x and y (see the module doc)."""
    if axes not in AXES:
        raise InputError(f"axes must be one of {', '.join(AXES)}, got {axes!r}.")
    if axes != "auto":
        return "xyz".index(axes[0]), "xyz".index(axes[1])
    spread = np.nanvar(centres, axis=0) if len(centres) else np.ones(3)
    drop = int(np.nanargmin(spread)) if np.isfinite(spread).any() else 2
    keep = [k for k in range(3) if k != drop]
    return keep[0], keep[1]


def plot_trajectory(
    estimated: Pose,
    ground_truth: Pose | None = None,
    *,
    success: Sequence[bool] | torch.Tensor | None = None,
    axes: str = "auto",
    title: str | None = None,
    size: int = 900,
    path: str | Path | None = None,
) -> np.ndarray:
    """Draw the camera centres of a sequence seen from above.

    The ground-truth path is a green line, the estimated one red (through the successful
    frames; failed ones are red crosses), and thin orange lines join each estimate to its
    ground truth. A circle marks the first frame; a scale bar gives metres.

    Args:
        estimated: ``cam_from_world`` :class:`Pose` ``(N,)`` in time order.
        ground_truth: optional :class:`Pose` ``(N,)`` of the same frames.
        success: ``N`` flags (default all True); failed estimates are drawn as crosses.
        axes: ``"auto"``, ``"xy"``, ``"xz"`` or ``"yz"``: the world axes of the plot's x, y.
        title: text at the top.
        size: the longer side of the drawing area in pixels.
        path: if given, write the image there (PNG).
    Returns:
        The image, ``(H, W, 3)`` uint8 BGR.
    Raises:
        InputError: different numbers of estimates and ground-truth poses, nothing finite
            to draw.
    """
    est = estimated.reshape(-1).detach().to("cpu", torch.float64).center().numpy()
    n = len(est)
    gt = None
    if ground_truth is not None:
        gt = ground_truth.reshape(-1).detach().to("cpu", torch.float64).center().numpy()
        if len(gt) != n:
            raise InputError(f"{n} estimated poses but {len(gt)} ground-truth poses.")
    ok = np.ones(n, bool) if success is None else np.asarray(success, bool).reshape(-1)
    if len(ok) != n:
        raise InputError(f"{len(ok)} success flags for {n} poses.")
    finite = np.isfinite(est).all(1)
    i, j = view_axes(gt if gt is not None else est[finite], axes)
    e2 = est[:, [i, j]]
    g2 = None if gt is None else gt[:, [i, j]]
    # the extent: the ground truth and the successful estimates (a wild estimate is clipped)
    parts = [g2] if g2 is not None else []
    good = e2[finite & ok] if (finite & ok).any() else e2[finite]
    if len(good):
        if g2 is None:
            parts.append(good)
        else:  # estimates far off the ground truth should not squash the plot
            span_gt = np.ptp(g2, axis=0).max() if len(g2) else 0.0
            lo_gt, hi_gt = g2.min(0), g2.max(0)
            near = ((good >= lo_gt - span_gt) & (good <= hi_gt + span_gt)).all(1)
            parts.append(good[near])
    allp = np.concatenate([p for p in parts if len(p)]) if parts else np.zeros((0, 2))
    if not len(allp):
        raise InputError("no finite camera centre to plot.")
    lo, hi, scale, W, H, off = fit_canvas(allp, size, 0.08, 1e-3)
    top = 48
    img = np.full((H + top, W, 3), BG, np.uint8)
    aa = cv2.LINE_AA

    def px(p: np.ndarray) -> np.ndarray:
        q = (p - lo) * scale + off
        uv = np.stack([q[..., 0], H - 1 - q[..., 1] + top], -1)
        return np.clip(uv, [4, top + 4], [W - 5, H + top - 5])

    def pt(p: np.ndarray) -> tuple[int, int]:
        u, v = px(p).round().astype(int)
        return int(u), int(v)

    # grid at the scale bar's spacing
    bar = nice_length(0.2 * (hi - lo).max())
    x0, x1 = math.floor(float(lo[0]) / bar), math.ceil(float(hi[0]) / bar)
    for k in range(x0, x1 + 1):
        u = round(float((k * bar - lo[0]) * scale + off[0]))
        cv2.line(img, (u, top), (u, H + top - 1), _GRID, 1)
    y0, y1 = math.floor(float(lo[1]) / bar), math.ceil(float(hi[1]) / bar)
    for k in range(y0, y1 + 1):
        v = round(float(H - 1 - ((k * bar - lo[1]) * scale + off[1]) + top))
        cv2.line(img, (0, v), (W - 1, v), _GRID, 1)
    if g2 is not None:
        for a in range(n):
            if finite[a]:
                cv2.line(img, pt(g2[a]), pt(e2[a]), _LINK, 1, aa)
        poly = px(g2).round().astype(np.int32)
        cv2.polylines(img, [poly.reshape(-1, 1, 2)], False, _TRUE, 2, aa)
        cv2.circle(img, pt(g2[0]), 6, _TRUE, 2, aa)
    sel = np.flatnonzero(finite & ok)
    if len(sel):
        poly = px(e2[sel]).round().astype(np.int32)
        cv2.polylines(img, [poly.reshape(-1, 1, 2)], False, _EST, 1, aa)
        for a in sel:
            cv2.circle(img, pt(e2[a]), 2, _EST, -1, aa)
        cv2.circle(img, pt(e2[sel[0]]), 5, _EST, 1, aa)
    for a in np.flatnonzero(finite & ~ok):
        cv2.drawMarker(img, pt(e2[a]), _EST, cv2.MARKER_TILTED_CROSS, 10, 2, aa)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if title:
        cv2.putText(img, title, (10, 18), font, 0.5, _TEXT, 1, aa)
    x = 10
    legend = [("estimated", _EST)]
    if g2 is not None:
        legend = [("ground truth", _TRUE), *legend, ("error", _LINK)]
    legend.append((f"view: {'xyz'[i]} right, {'xyz'[j]} up", BG))
    for label, color in legend:
        cv2.circle(img, (x + 5, 34), 5, color, -1, aa)
        cv2.putText(img, label, (x + 14, 38), font, 0.42, _TEXT, 1, aa)
        x += 26 + 8 * len(label)
    y0, x0 = H + top - 14, W - 14 - int(bar * scale)
    cv2.line(img, (x0, y0), (x0 + int(bar * scale), y0), _TEXT, 2, aa)
    cv2.putText(img, f"{bar:g} m", (x0, y0 - 6), font, 0.42, _TEXT, 1, aa)
    if path is not None:
        ok_png, buf = cv2.imencode(".png", img)
        if not ok_png:
            raise OSError(f"could not encode the plot for {path}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(Path(path), "wb") as f:
            f.write(buf.tobytes())
    return img
