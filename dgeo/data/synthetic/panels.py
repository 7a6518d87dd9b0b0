"""Panel textures drawn with OpenCV and stretched once over their quad: signs, shop fronts,
vehicles, pictures, window views, books, cabinets, cardboard boxes, screens and lamp panels.

Each is drawn at twice the texture size, area-resampled and given a thin uniform frame so it
tiles; see :mod:`dgeo.data.synthetic.textures` for the conventions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from dgeo.data.synthetic._texture_util import (
    _VIVID,
    RGB,
    _choice,
    _done,
    _jitter,
    _mix,
    _randint,
    _rgb,
    _smoothstep,
    _uniform,
)
from dgeo.data.synthetic.noise import _grain, _grid, fbm
from dgeo.data.synthetic.surfaces import _PLASTER, _WOOD, plaster, wood

_WORDS = (
    "CAFE", "BAR", "PHARMACY", "BAKERY", "BOOKS", "HOTEL", "BANK", "TAXI", "PIZZA", "MARKET",
    "SALON", "DELI", "FLOWERS", "KEBAB", "SUSHI", "OPTICS", "SHOES", "TOYS", "WINE", "POST",
    "RADIO", "BIKES", "NOODLE", "GRILL", "TEA", "DINER", "FASHION", "MUSIC", "LAUNDRY", "CINEMA",
)  # fmt: skip
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
)  # fmt: skip


# ------------------------------------------------------------------------------ drawing helpers
def _frame(img: torch.Tensor, color: Sequence[float], width: float = 0.02) -> torch.Tensor:
    """Paint a border of ``width`` (texture units, at least 2 texels) in ``color`` around
    ``img`` ``(3, T, T)``, keeping the texture's own shading there, so it tiles seamlessly."""
    size = img.shape[-1]
    u, v = _grid(size)
    px = max(2.0, width * size)
    d = torch.minimum(torch.minimum(u, 1 - 1 / size - u), torch.minimum(v, 1 - 1 / size - v))
    inside = _smoothstep(px - 1.0, px, d * size)
    return _mix(_rgb(color).expand_as(img), img, inside)


def _to_tensor(canvas: np.ndarray, size: int) -> torch.Tensor:
    """A uint8 RGB drawing ``(H, W, 3)`` (any size >= T) area-resampled to ``(3, T, T)``."""
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _canvas(size: int, aspect: float, color: Sequence[float]) -> np.ndarray:
    """A uint8 RGB canvas for a panel of ``aspect`` = width / height, drawn at twice ``T``."""
    h = 2 * size if aspect >= 1 else round(2 * size / aspect)
    w = round(2 * size * aspect) if aspect >= 1 else 2 * size
    return np.full((h, w, 3), _u8(color), dtype=np.uint8)


def _u8(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(round(255 * min(1.0, max(0.0, x))) for x in c)


def _text(
    img: np.ndarray,
    text: str,
    box: tuple[int, int, int, int],
    color: Sequence[float],
    font: int = cv2.FONT_HERSHEY_DUPLEX,
    bold: float = 0.12,
):
    """Draw ``text`` centred and scaled to fit ``box = (x0, y0, x1, y1)`` of ``img``."""
    x0, y0, x1, y1 = box
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 1)
    scale = max(0.1, min((x1 - x0) / max(tw, 1), (y1 - y0) / max(th + base, 1)))
    thick = max(1, round(bold * scale * 10))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    org = (x0 + (x1 - x0 - tw) // 2, y0 + (y1 - y0 + th) // 2)
    cv2.putText(img, text, org, font, scale, _u8(color), thick, cv2.LINE_AA)


def _contrast_color(rgb: Sequence[float]) -> RGB:
    lum = 0.3 * rgb[0] + 0.6 * rgb[1] + 0.1 * rgb[2]
    return (0.05, 0.05, 0.05) if lum > 0.5 else (0.97, 0.97, 0.95)


def _word(g: torch.Generator) -> str:
    return _choice(g, _WORDS)


# ------------------------------------------------------------------------ shop fronts and signs
def shopfront(
    g: torch.Generator, size: int = 256, aspect: float = 1.5, name: str | None = None
) -> torch.Tensor:
    """A shop's ground floor (designed for 6 m x 4 m, ``aspect`` = width / height): fascia sign
    with the shop's name, display windows with goods and posters, a door, a kick plate."""
    pier = _jitter(g, _choice(g, (*_PLASTER, (0.25, 0.25, 0.27))), 0.1)
    img = _canvas(size, aspect, pier)
    h, w = img.shape[:2]
    fascia = _jitter(g, _choice(g, _VIVID), 0.1)
    x0, x1 = round(0.04 * w), round(0.96 * w)
    cv2.rectangle(img, (x0, round(0.06 * h)), (x1, round(0.24 * h)), _u8(fascia), -1)
    _text(
        img,
        name or _word(g),
        (x0 + w // 10, round(0.08 * h), x1 - w // 10, round(0.22 * h)),
        _contrast_color(fascia),
        _choice(g, _FONTS),
    )
    y0, y1 = round(0.3 * h), round(0.88 * h)
    frame = _u8(_jitter(g, _choice(g, ((0.1, 0.1, 0.1), (0.9, 0.9, 0.88), (0.3, 0.2, 0.1))), 0.1))
    cv2.rectangle(img, (x0, y0), (x1, round(0.96 * h)), frame, -1)
    door_left = _uniform(g) < 0.5
    dw = round(0.17 * w)
    dx = x0 + round(0.03 * w) if door_left else x1 - round(0.03 * w) - dw
    m = max(2, w // 150)
    cv2.rectangle(img, (dx + m, y0 + m), (dx + dw - m, round(0.96 * h)), (40, 45, 50), -1)
    cv2.rectangle(img, (dx + 3 * m, y0 + 3 * m), (dx + dw - 3 * m, y1), (70, 85, 95), -1)
    cv2.line(img, (dx + dw - 6 * m, y0 + (y1 - y0) // 2), (dx + dw - 6 * m, y1 - 20 * m), frame, m)
    wx0, wx1 = (dx + dw + m, x1 - m) if door_left else (x0 + m, dx - m)
    panes = _randint(g, 1, 3)
    edges = np.linspace(wx0, wx1, panes + 1).round().astype(int)
    for a, b in itertools.pairwise(edges):
        a, b = int(a) + m, int(b) - m
        for k in range(y1 - y0 - 2 * m):
            t = k / max(1, y1 - y0 - 2 * m)
            c = (int(110 - 70 * t), int(125 - 75 * t), int(140 - 80 * t))
            cv2.line(img, (a, y0 + m + k), (b, y0 + m + k), c, 1)
        shelves = _randint(g, 1, 3)
        for s in range(shelves):
            ys = y1 - m - round((s + 0.05) * (y1 - y0) / (shelves + 0.6))
            cv2.line(img, (a, ys), (b, ys), (150, 150, 150), 2 * m)
            x = a + 4 * m
            while x < b - 8 * m:
                gw = _randint(g, 6 * m, 18 * m)
                gh = _randint(g, 8 * m, round(0.6 * (y1 - y0) / (shelves + 0.6)))
                cv2.rectangle(
                    img,
                    (x, ys - gh),
                    (min(x + gw, b - 2 * m), ys - m),
                    _u8(_jitter(g, _choice(g, _VIVID), 0.3)),
                    -1,
                )
                x += gw + _randint(g, 2 * m, 10 * m)
        if _uniform(g) < 0.6:  # a poster in the window
            pw, ph = (b - a) // 3, (y1 - y0) // 3
            px, py = a + _randint(g, 0, max(0, b - a - pw)), y0 + 4 * m
            col = _jitter(g, _choice(g, _VIVID), 0.1)
            cv2.rectangle(img, (px, py), (px + pw, py + ph), _u8(col), -1)
            label = _choice(g, ("SALE", "OPEN", "-50%", "NEW", "2 FOR 1"))
            _text(img, label, (px + m, py + m, px + pw - m, py + ph - m), _contrast_color(col))
    cv2.rectangle(img, (x0, y1), (x1, round(0.96 * h)), frame, -1)  # kick plate
    out = _to_tensor(img, size) * _grain(g, size, 0.04)
    return _done(_frame(out, pier, 0.02))


def sign(
    g: torch.Generator, size: int = 256, aspect: float = 2.0, text: str | None = None
) -> torch.Tensor:
    """A high-contrast sign panel (``aspect`` = width / height): coloured background, inner
    border, a pictogram and a word, in a grey metal frame."""
    bg = _jitter(g, _choice(g, _VIVID), 0.08)
    fg = _contrast_color(bg)
    img = _canvas(size, aspect, bg)
    h, w = img.shape[:2]
    m = max(2, min(h, w) // 30)
    cv2.rectangle(img, (3 * m, 3 * m), (w - 3 * m, h - 3 * m), _u8(fg), m)
    icon = _randint(g, 0, 4)
    r = round(0.3 * h)
    cx, cy = (round(0.22 * w), h // 2) if aspect > 1.3 else (w // 2, round(0.36 * h))
    if aspect <= 1.3:
        r = round(0.2 * h)
    accent = _u8(_jitter(g, _choice(g, _VIVID), 0.1))
    if icon == 0:  # cross
        cv2.rectangle(img, (cx - r, cy - r // 3), (cx + r, cy + r // 3), _u8(fg), -1)
        cv2.rectangle(img, (cx - r // 3, cy - r), (cx + r // 3, cy + r), _u8(fg), -1)
    elif icon == 1:  # arrow
        cv2.arrowedLine(
            img, (cx - r, cy), (cx + r, cy), _u8(fg), max(2, r // 4), cv2.LINE_AA, 0, 0.5
        )
    elif icon == 2:  # disc with a letter
        cv2.circle(img, (cx, cy), r, accent, -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), r, _u8(fg), max(2, r // 8), cv2.LINE_AA)
        _text(img, _choice(g, "PHMBTS"), (cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2), fg)
    elif icon == 3:  # triangle
        pts = np.array([[cx, cy - r], [cx - r, cy + r * 3 // 4], [cx + r, cy + r * 3 // 4]])
        cv2.fillPoly(img, [pts.astype(np.int32)], accent, cv2.LINE_AA)
        cv2.polylines(img, [pts.astype(np.int32)], True, _u8(fg), max(2, r // 8), cv2.LINE_AA)
    else:  # stripes
        for k in range(4):
            y = cy - r + k * r // 2
            cv2.rectangle(img, (cx - r, y), (cx + r, y + r // 4), _u8(fg), -1)
    box = (
        (round(0.42 * w), round(0.2 * h), w - 5 * m, round(0.8 * h))
        if aspect > 1.3
        else (5 * m, round(0.62 * h), w - 5 * m, h - 5 * m)
    )
    _text(img, text or _word(g), box, fg, _choice(g, _FONTS))
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, (0.45, 0.46, 0.48), 0.025))


# ------------------------------------------------------------------------------------ vehicles
_CAR: tuple[RGB, ...] = (
    (0.75, 0.05, 0.05), (0.05, 0.15, 0.45), (0.85, 0.85, 0.83), (0.08, 0.08, 0.09),
    (0.45, 0.46, 0.48), (0.10, 0.35, 0.20), (0.90, 0.70, 0.10), (0.55, 0.60, 0.65),
)  # fmt: skip


def car_color(g: torch.Generator) -> RGB:
    """A plausible random car paint colour."""
    return _jitter(g, _choice(g, _CAR), 0.08)


def _paint(g: torch.Generator, size: int, img: torch.Tensor) -> torch.Tensor:
    """Metallic shading: a highlight band along the body, flakes."""
    _, v = _grid(size)
    band = 1 + 0.25 * torch.exp(-(((v - 0.45) / 0.12) ** 2)) - 0.15 * v
    return img * band * _grain(g, size, 0.025, max(4, size // 4))


def vehicle_side(
    g: torch.Generator, size: int = 256, color: Sequence[float] | None = None, aspect: float = 3.0
) -> torch.Tensor:
    """Side of a car (designed for 4.5 m x 1.5 m): body, window band with pillars, door seams,
    handles, wheels with rims, lights at both ends."""
    color = color or car_color(g)
    img = _canvas(size, aspect, color)
    h, w = img.shape[:2]
    m = max(2, h // 80)
    glass = (35, 42, 50)
    top, low = round(0.1 * h), round(0.44 * h)
    pts = np.array([[0.3 * w, top], [0.7 * w, top], [0.8 * w, low], [0.17 * w, low]], np.int32)
    cv2.fillPoly(img, [pts], glass, cv2.LINE_AA)
    cv2.line(img, (round(0.5 * w), top), (round(0.5 * w), low), _u8(color), 3 * m)  # B pillar
    for x in (0.27, 0.5, 0.73):
        cv2.line(img, (round(x * w), low + 2 * m), (round(x * w), round(0.8 * h)), (25, 25, 25), m)
    for x in (0.42, 0.65):
        cv2.rectangle(
            img,
            (round(x * w), round(0.52 * h)),
            (round(x * w) + 10 * m, round(0.55 * h)),
            (30, 30, 30),
            -1,
        )
    cv2.line(img, (0, round(0.6 * h)), (w, round(0.6 * h)), _u8(_jitter(g, color, 0.3)), m)
    cv2.rectangle(img, (0, round(0.86 * h)), (w, h), (20, 20, 22), -1)  # sill and shadow
    r = round(0.22 * h)
    for x in (0.18, 0.82):
        c = (round(x * w), h - r - m)
        cv2.circle(img, c, r + 3 * m, (15, 15, 15), -1, cv2.LINE_AA)  # arch
        cv2.circle(img, c, r, (30, 30, 32), -1, cv2.LINE_AA)  # tyre
        cv2.circle(img, c, r * 3 // 5, (170, 172, 175), -1, cv2.LINE_AA)  # rim
        for k in range(5):
            a = 2 * math.pi * k / 5
            e = (c[0] + round(0.55 * r * math.cos(a)), c[1] + round(0.55 * r * math.sin(a)))
            cv2.line(img, c, e, (80, 80, 85), 2 * m, cv2.LINE_AA)
    cv2.rectangle(img, (0, round(0.45 * h)), (5 * m, round(0.56 * h)), (200, 20, 20), -1)
    cv2.rectangle(img, (w - 5 * m, round(0.45 * h)), (w, round(0.56 * h)), (240, 170, 40), -1)
    out = _paint(g, size, _to_tensor(img, size))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.012))


def vehicle_end(
    g: torch.Generator, size: int = 256, color: Sequence[float] | None = None, aspect: float = 1.2
) -> torch.Tensor:
    """Front/back of a car (designed for 1.8 m x 1.5 m): windscreen, lights, number plate with
    random characters, bumper."""
    color = color or car_color(g)
    img = _canvas(size, aspect, color)
    h, w = img.shape[:2]
    m = max(2, h // 80)
    pts = np.array(
        [[0.15 * w, 0.1 * h], [0.85 * w, 0.1 * h], [0.92 * w, 0.45 * h], [0.08 * w, 0.45 * h]],
        np.int32,
    )
    cv2.fillPoly(img, [pts], (35, 42, 50), cv2.LINE_AA)
    cv2.line(
        img,
        (round(0.2 * w), round(0.15 * h)),
        (round(0.4 * w), round(0.4 * h)),
        (90, 100, 110),
        2 * m,
        cv2.LINE_AA,
    )
    lamp = (200, 25, 25) if _uniform(g) < 0.5 else (235, 235, 220)
    for x0 in (0.05, 0.77):
        cv2.rectangle(
            img,
            (round(x0 * w), round(0.52 * h)),
            (round((x0 + 0.18) * w), round(0.64 * h)),
            lamp,
            -1,
        )
        cv2.rectangle(
            img,
            (round((x0 + 0.02) * w), round(0.54 * h)),
            (round((x0 + 0.07) * w), round(0.62 * h)),
            (240, 150, 30),
            -1,
        )
    px0, px1 = round(0.3 * w), round(0.7 * w)
    py0, py1 = round(0.62 * h), round(0.74 * h)
    cv2.rectangle(img, (px0, py0), (px1, py1), (235, 225, 90), -1)
    letters = "ABCDEFGHJKLMNPRSTVWXYZ"
    plate = "".join(_choice(g, letters) for _ in range(2)) + f"{_randint(g, 0, 99):02d} "
    plate += "".join(_choice(g, letters) for _ in range(3))
    _text(img, plate, (px0 + m, py0 + m, px1 - m, py1 - m), (0.05, 0.05, 0.05), bold=0.08)
    cv2.rectangle(img, (0, round(0.78 * h)), (w, round(0.88 * h)), (30, 30, 32), -1)
    cv2.rectangle(img, (0, round(0.9 * h)), (w, h), (15, 15, 15), -1)
    out = _paint(g, size, _to_tensor(img, size))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.015))


def vehicle_roof(g: torch.Generator, size: int = 256, color: Sequence[float] | None = None):
    """Roof of a car (4.5 m x 1.8 m): paint with a dark sunroof or roof rails, dust."""
    color = color or car_color(g)
    img = _canvas(size, 2.5, color)
    h, w = img.shape[:2]
    if _uniform(g) < 0.5:
        cv2.rectangle(
            img,
            (round(0.35 * w), round(0.25 * h)),
            (round(0.6 * w), round(0.75 * h)),
            (30, 35, 40),
            -1,
        )
    else:
        for y in (0.12, 0.85):
            cv2.rectangle(
                img,
                (round(0.2 * w), round(y * h)),
                (round(0.8 * w), round(y * h) + h // 20),
                (40, 40, 40),
                -1,
            )
    out = _to_tensor(img, size) * (1 + 0.06 * fbm(g, size, 4, 5))
    return _done(_frame(out, (0.08, 0.08, 0.08), 0.012))


# -------------------------------------------------------------------------------------- indoor
def picture(
    g: torch.Generator, size: int = 256, aspect: float = 1.3, style: str | None = None
) -> torch.Tensor:
    """A framed picture or poster (``aspect`` = width / height): ``"abstract"`` shapes,
    ``"landscape"`` (sky, mountain ridges, trees, water) or a ``"poster"`` with big type."""
    style = style or _choice(g, ("abstract", "landscape", "poster"))
    frame = _jitter(g, _choice(g, ((0.08, 0.08, 0.08), (0.45, 0.30, 0.15), (0.75, 0.6, 0.25))), 0.1)
    img = _canvas(size, aspect, (0.95, 0.95, 0.93))
    h, w = img.shape[:2]
    mat = round(0.06 * min(h, w)) if style != "poster" else 0
    ih, iw = h - 2 * mat, w - 2 * mat
    inner = np.zeros((ih, iw, 3), np.uint8)
    if style == "abstract":
        a, b = _jitter(g, _choice(g, _VIVID), 0.2), _jitter(g, _choice(g, _VIVID), 0.2)
        t = np.linspace(0, 1, ih, dtype=np.float32)[:, None, None]
        inner[:] = (255 * ((1 - t) * np.array(a) + t * np.array(b))).astype(np.uint8)
        for _ in range(_randint(g, 6, 14)):
            col = _u8(_jitter(g, _choice(g, _VIVID), 0.3))
            x, y = _randint(g, 0, iw), _randint(g, 0, ih)
            s = _randint(g, min(ih, iw) // 12, min(ih, iw) // 3)
            k = _randint(g, 0, 2)
            if k == 0:
                cv2.circle(inner, (x, y), s, col, -1, cv2.LINE_AA)
            elif k == 1:
                cv2.rectangle(inner, (x - s, y - s // 2), (x + s, y + s // 2), col, -1)
            else:
                x2, y2 = _randint(g, 0, iw), _randint(g, 0, ih)
                cv2.line(inner, (x, y), (x2, y2), col, max(2, s // 6), cv2.LINE_AA)
    elif style == "landscape":
        sky_top = np.array(_jitter(g, (0.35, 0.55, 0.85), 0.15))
        sky_low = np.array(_jitter(g, (0.85, 0.80, 0.70), 0.1))
        t = np.linspace(0, 1, ih, dtype=np.float32)[:, None, None]
        inner[:] = (255 * ((1 - t) * sky_top + t * sky_low)).astype(np.uint8)
        sx, sy = _randint(g, iw // 6, 5 * iw // 6), _randint(g, ih // 10, ih // 3)
        cv2.circle(inner, (sx, sy), max(3, ih // 14), (250, 235, 180), -1, cv2.LINE_AA)
        xs = np.arange(iw + 1)
        for layer in range(3):
            base = ih * (0.35 + 0.15 * layer)
            rough = torch.randn(16, generator=g).numpy().cumsum() * (0.06 - 0.015 * layer) * ih
            ridge = base + np.interp(xs, np.linspace(0, iw, 16), rough)
            pts = np.concatenate([np.stack([xs, ridge], 1), [[iw, ih], [0, ih]]]).astype(np.int32)
            shade = 0.55 - 0.15 * layer
            col = _jitter(g, (0.35 * shade, 0.5 * shade + 0.1, 0.35 * shade + 0.15), 0.15)
            cv2.fillPoly(inner, [pts], _u8(col), cv2.LINE_AA)
        if _uniform(g) < 0.5:
            cv2.rectangle(
                inner, (0, round(0.82 * ih)), (iw, ih), _u8(_jitter(g, (0.3, 0.45, 0.6), 0.1)), -1
            )
        for _ in range(_randint(g, 3, 8)):
            x, y = _randint(g, 0, iw), _randint(g, round(0.6 * ih), round(0.8 * ih))
            s = _randint(g, ih // 30, ih // 10)
            cv2.line(inner, (x, y), (x, y + s), (60, 40, 25), max(1, s // 6))
            cv2.circle(inner, (x, y), s // 2 + 1, _u8(_jitter(g, (0.1, 0.3, 0.1), 0.3)), -1)
    else:  # poster
        bg = _jitter(g, _choice(g, _VIVID), 0.1)
        fg = _contrast_color(bg)
        inner[:] = _u8(bg)
        s = min(ih, iw)
        col = _u8(_jitter(g, _choice(g, _VIVID), 0.2))
        cv2.circle(inner, (iw // 2, round(0.55 * ih)), s // 3, col, -1, cv2.LINE_AA)
        _text(inner, _word(g), (iw // 10, ih // 20, 9 * iw // 10, ih // 5), fg, _choice(g, _FONTS))
        for k in range(4):  # body text
            y = round((0.78 + 0.045 * k) * ih)
            words = " ".join(_word(g).lower() for _ in range(3))
            _text(inner, words, (iw // 8, y, 7 * iw // 8, y + ih // 30), fg, bold=0.06)
        _text(inner, str(_randint(g, 1950, 2030)), (iw // 3, round(0.94 * ih), 2 * iw // 3, ih), fg)
    img[mat : mat + ih, mat : mat + iw] = inner
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, frame, 0.035))


def window_view(g: torch.Generator, size: int = 256, aspect: float = 1.1) -> torch.Tensor:
    """A room's window: white frame and mullions around a view of sky, clouds, buildings and
    trees (designed for about 1.6 m x 1.4 m)."""
    u, v = _grid(size)
    sky = _mix(_rgb((0.45, 0.62, 0.88)), _rgb((0.85, 0.88, 0.90)), v.expand(1, size, size))
    cloud = _smoothstep(0.2, 1.2, fbm(g, size, (3, 2), 5))
    img = _mix(sky, _rgb((0.95, 0.95, 0.96)), cloud)
    canvas = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8).copy()
    x = 0
    while x < size:
        bw = _randint(g, size // 10, size // 4)
        bh = _randint(g, size // 5, size // 2)
        col = _u8(_jitter(g, _choice(g, _PLASTER), 0.2))
        cv2.rectangle(canvas, (x, size - bh), (x + bw, size), col, -1)
        for wy in range(size - bh + 4, size - 4, 8):
            for wx in range(x + 3, x + bw - 4, 7):
                cv2.rectangle(canvas, (wx, wy), (wx + 3, wy + 4), (60, 70, 80), -1)
        x += bw + _randint(g, 0, size // 12)
    for _ in range(_randint(g, 2, 5)):
        tx, r = _randint(g, 0, size), _randint(g, size // 14, size // 7)
        cv2.circle(canvas, (tx, size - r), r, _u8(_jitter(g, (0.15, 0.35, 0.12), 0.2)), -1)
    img = torch.from_numpy(canvas.astype(np.float32) / 255).permute(2, 0, 1)
    img = img * _grain(g, size, 0.03)
    frame = _rgb((0.94, 0.94, 0.92))
    fw = max(2, round(0.04 * size))
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, :, size // 2 - fw // 2 : size // 2 + fw // 2 + 1] = True
    mask[:, round(0.35 * size) - fw // 2 : round(0.35 * size) + fw // 2 + 1, :] = True
    img = torch.where(mask, frame.expand_as(img), img)
    reflection = 0.1 * _smoothstep(0.3, 0.9, (u + v).expand(1, size, size) / 2)
    return _done(_frame(img + reflection, (0.94, 0.94, 0.92), 0.05))


def books(g: torch.Generator, size: int = 256, aspect: float = 0.6, shelves: int = 4):
    """The back of a bookcase (``aspect`` = width / height): ``shelves`` rows of book spines of
    random widths, heights and colours with bands and labels, the odd gap or lying stack."""
    back = _jitter(g, (0.25, 0.18, 0.12), 0.2)
    img = _canvas(size, aspect, back)
    h, w = img.shape[:2]
    rh = h / shelves
    unit = h / 90  # ~2 cm per unit for a 1.8 m case
    for s in range(shelves):
        bottom = round((s + 1) * rh) - max(2, round(rh * 0.06))
        x = _randint(g, 0, round(3 * unit))
        while x < w - 2 * unit:
            if _uniform(g) < 0.07:  # gap
                x += round(_uniform(g, 3, 10) * unit)
                continue
            bw = round(_uniform(g, 1.2, 3.0) * unit)
            bh = round(_uniform(g, 0.55, 0.9) * rh)
            col = _jitter(g, _choice(g, _VIVID + _WOOD), 0.3)
            x1 = min(x + bw, w - 1)
            cv2.rectangle(img, (x, bottom - bh), (x1, bottom), _u8(col), -1)
            cv2.rectangle(img, (x, bottom - bh), (x1, bottom), (20, 20, 20), 1)
            band = _u8(_contrast_color(col))
            for yb in (bottom - bh + bh // 8, bottom - bh // 6):
                cv2.line(img, (x + 1, yb), (x1 - 1, yb), band, max(1, bw // 8))
            cv2.rectangle(
                img, (x + bw // 4, bottom - bh // 2), (x1 - bw // 4, bottom - bh // 3), band, -1
            )
            x = x1 + 1
        cv2.rectangle(img, (0, bottom), (w, round((s + 1) * rh)), _u8(_jitter(g, back, 0.3)), -1)
    out = _to_tensor(img, size) * _grain(g, size, 0.04)
    return _done(_frame(out, back, 0.02))


def cabinet(
    g: torch.Generator,
    size: int = 256,
    aspect: float = 1.0,
    doors: int = 2,
    drawers: int = 0,
    color: Sequence[float] | None = None,
) -> torch.Tensor:
    """A cabinet or door front (``aspect`` = width / height): ``drawers`` at the top, then
    ``doors`` side by side, each with an inset panel (shadow and highlight) and a handle."""
    color = color or _jitter(g, _choice(g, _PLASTER + _WOOD), 0.1)
    base = wood(g, size, 4, color, vertical=True) if _uniform(g) < 0.4 else plaster(g, size, color)
    img = (base.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = cv2.resize(img, (round(2 * size * max(1, aspect)), round(2 * size / min(1, aspect))))
    h, w = img.shape[:2]
    m = max(2, min(h, w) // 60)
    dark, light = (30, 28, 25), (235, 232, 225)
    handle = _u8(
        _jitter(g, _choice(g, ((0.75, 0.75, 0.75), (0.1, 0.1, 0.1), (0.7, 0.55, 0.2))), 0.1)
    )
    y = 2 * m
    dh = round(0.18 * h) if drawers else 0
    for _ in range(drawers):
        cv2.rectangle(img, (2 * m, y), (w - 2 * m, y + dh - m), dark, m)
        cv2.rectangle(
            img, (w // 2 - 8 * m, y + dh // 2 - m), (w // 2 + 8 * m, y + dh // 2 + m), handle, -1
        )
        y += dh
    if doors:
        edges = np.linspace(2 * m, w - 2 * m, doors + 1).round().astype(int)
        for k, (a, b) in enumerate(itertools.pairwise(edges)):
            a, b = int(a), int(b)
            cv2.rectangle(img, (a, y), (b - m, h - 2 * m), dark, m)
            cv2.rectangle(img, (a + 6 * m, y + 6 * m), (b - 7 * m, h - 8 * m), light, m)
            cv2.rectangle(img, (a + 7 * m, y + 7 * m), (b - 6 * m, h - 7 * m), dark, m)
            hx = b - 5 * m if k % 2 == 0 else a + 4 * m
            if doors == 1:
                hx = b - 6 * m
            hy = y + (h - y) // 2
            cv2.rectangle(img, (hx - m, hy - 10 * m), (hx + m, hy + 10 * m), handle, -1)
    out = _to_tensor(img, size) * _grain(g, size, 0.03)
    return _done(_frame(out, _jitter(g, color, 0.2), 0.01))


def cardboard(g: torch.Generator, size: int = 256) -> torch.Tensor:
    """A cardboard box face (designed for about 0.5 m): corrugation, tape, printed marks."""
    base = _jitter(g, (0.62, 0.46, 0.30), 0.08)
    img = _canvas(size, 1.0, base)
    h, w = img.shape[:2]
    ink = (35, 30, 28)
    cv2.rectangle(img, (0, round(0.44 * h)), (w, round(0.56 * h)), _u8(_jitter(g, base, 0.2)), -1)
    for k in range(_randint(g, 1, 3)):
        x = round(_uniform(g, 0.1, 0.6) * w)
        y = round(_uniform(g, 0.12, 0.3) * h) + k * h // 2
        y = min(y, h - h // 6)
        if _uniform(g) < 0.5:
            cv2.arrowedLine(
                img, (x, y + h // 8), (x, y - h // 12), ink, max(2, h // 60), cv2.LINE_AA, 0, 0.4
            )
            cv2.arrowedLine(
                img,
                (x + w // 10, y + h // 8),
                (x + w // 10, y - h // 12),
                ink,
                max(2, h // 60),
                cv2.LINE_AA,
                0,
                0.4,
            )
        else:
            label = _choice(g, ("FRAGILE", "THIS SIDE UP", "NO 42", "KEEP DRY", "HANDLE CARE"))
            _text(
                img, label, (x, y - h // 12, min(w - 4, x + w // 2), y + h // 12), (0.15, 0.1, 0.1)
            )
    out = _to_tensor(img, size)
    u, _ = _grid(size)
    flutes = 1 + 0.03 * torch.sin(2 * math.pi * max(8, size // 4) * u)
    out = out * flutes * _grain(g, size, 0.05) * (1 + 0.05 * fbm(g, size, 3, 4))
    return _done(_frame(out, base, 0.015))


def screen(g: torch.Generator, size: int = 256, aspect: float = 1.7) -> torch.Tensor:
    """A monitor front: black bezel around a desktop with windows, text lines and icons."""
    img = _canvas(size, aspect, (0.04, 0.04, 0.05))
    h, w = img.shape[:2]
    b = max(4, h // 20)
    bg = _u8(_jitter(g, (0.15, 0.3, 0.5), 0.3))
    cv2.rectangle(img, (b, b), (w - b, h - b), bg, -1)
    for _ in range(_randint(g, 2, 4)):
        x0, y0 = _randint(g, b, w // 2), _randint(g, b, h // 2)
        x1, y1 = (
            min(w - b, x0 + _randint(g, w // 5, w // 2)),
            min(h - b, y0 + _randint(g, h // 5, h // 2)),
        )
        cv2.rectangle(img, (x0, y0), (x1, y1), (235, 235, 235), -1)
        cv2.rectangle(
            img, (x0, y0), (x1, y0 + h // 25), _u8(_jitter(g, _choice(g, _VIVID), 0.2)), -1
        )
        for y in range(y0 + h // 15, y1 - h // 40, max(3, h // 30)):
            cv2.line(
                img,
                (x0 + w // 60, y),
                (x0 + round((x1 - x0) * _uniform(g, 0.3, 0.9)), y),
                (60, 60, 60),
                max(1, h // 120),
            )
    out = _to_tensor(img, size)
    return _done(_frame(out, (0.04, 0.04, 0.05), 0.02))


def lamp_panel(g: torch.Generator, size: int = 256, warm: bool = False) -> torch.Tensor:
    """A light fitting's diffuser: near-white with a prismatic grid and a metal rim (the
    appearance model makes ``"lamp"`` materials glow)."""
    color = (1.0, 0.9, 0.7) if warm else (0.97, 0.97, 0.95)
    u, v = _grid(size)
    k = max(4, size // 16)
    prism = 0.92 + 0.08 * (torch.cos(2 * math.pi * k * u) * torch.cos(2 * math.pi * k * v)).abs()
    img = _rgb(color) * prism * _grain(g, size, 0.02)
    return _done(_frame(img, (0.6, 0.6, 0.62), 0.05))
