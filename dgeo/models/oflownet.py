"""OFlowNet: KFNet's flow network for the process model of the per-pixel Kalman filter
(ALGORITHMS.md 2.8).

1. A tower of 3x3 convolutions (16, 32 s2, 32, 64 s2, 64, 128 s2, then ``feature_dim`` linear)
   maps each image to unit ``feature_dim``-D features at stride 8 (cell ``(i, j)`` centred on
   pixel ``(8j + 4, 8i + 4)``, as in :mod:`dgeo.models.scoordnet`).
2. A cost volume of feature *differences* ``D_d(p) = f_t(p) - f_prev(p + d)`` over the
   ``(2r)^2`` offsets ``d = (dx, dy)``, ``dx, dy in {-r, ..., r - 1}`` (nearest shift, zero
   fill outside the map; :func:`cost_volume` also returns which offsets land inside).
3. Every cell's ``(C, 2r, 2r)`` patch goes through a small U-Net (run batched as
   ``(B * h * w, C, 2r, 2r)`` convolutions, down to ``1 x 1`` and back), giving one logit per
   offset; the flow is the soft-argmax ``u(p) = sum_d softmax(logits)_d * d`` in cells.
4. The U-Net bottleneck feeds fully connected layers (64, 32, 1 for KFNet) whose output ``o``
   gives the process noise ``sigma_w = 0.01 * exp(o)`` metres.

The flow lives on the later frame ``t`` and points into the earlier frame: cell ``p`` of frame
``t`` sees what frame ``t - 1`` saw at ``p + flow(p)``, so
``dgeo.geometry.warp_by_flow(prev_map, flow, prev_valid)`` gives the prior on frame ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, ShapeError
from dgeo.models.base import as_int_list, l2_normalize
from dgeo.models.scoordnet import (
    check_cell_images,
    normalize_images,
    seeded_he_init_,
    stride8_stack,
)

#: ``log(0.01)``: ``sigma_w = 0.01 * exp(o)``.
LOG_SIGMA_W_SCALE = math.log(0.01)
#: Tower layout: (kernel, stride) of the 6 ReLU layers before the linear feature layer.
_TOWER_LAYOUT = ((3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 2))
#: Presets: tower widths, U-Net first width ``c0``, U-Net level base width, FC widths. U-Net
#: widths are ``[c0] + [base * 2**(k - 1) for k = 1..L]`` and decoder widths
#: ``[unet[L - 1], ..., unet[1], c0 // 2]`` with ``L = log2(2r)`` levels.
OFLOWNET_PRESETS: dict[str, dict[str, Any]] = {
    "kfnet": {"tower": (16, 32, 32, 64, 64, 128), "c0": 32, "base": 32, "fc": (64, 32)},
    "small": {"tower": (8, 16, 16, 32, 32, 32), "c0": 16, "base": 16, "fc": (32, 16)},
}


def window_offsets(
    radius: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``(2r)^2`` offsets ``(dx, dy)`` of the cost volume, ``((2r)^2, 2)``, row-major over
    the ``(2r, 2r)`` patch: index ``a * 2r + b`` is ``(b - r, a - r)``."""
    ar = torch.arange(-radius, radius, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(ar, ar, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], -1)


def cost_volume(
    f_t: torch.Tensor, f_prev: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference cost volume ``D_d(p) = f_t(p) - f_prev(p + d)``.

    Args:
        f_t, f_prev: ``(B, C, h, w)`` feature maps of the later and the earlier frame.
        radius: ``r``; offsets ``dx, dy in {-r, ..., r - 1}``.
    Returns:
        ``volume (B, h, w, C, 2r, 2r)`` with ``volume[b, i, j, :, a, c] = f_t(i, j) -
        f_prev(i + a - r, j + c - r)`` (``f_prev`` is zero outside the map: KFNet's nearest
        shift with zero fill), and ``valid (h, w, 2r, 2r)`` bool: the source cell is inside
        the map.
    """
    if f_t.dim() != 4 or f_t.shape != f_prev.shape:
        raise ShapeError(
            f"f_t and f_prev must be (B, C, h, w) maps of one shape, got {tuple(f_t.shape)} "
            f"and {tuple(f_prev.shape)}."
        )
    r = int(radius)
    if r < 1:
        raise InputError(f"radius must be >= 1, got {radius}.")
    b, c, h, w = f_t.shape
    p = 2 * r
    padded = F.pad(f_prev, (r, r - 1, r, r - 1))  # window of (i, j): padded rows i .. i + 2r - 1
    win = F.unfold(padded, kernel_size=p)  # (B, C * p * p, h * w), channel-major
    win = win.reshape(b, c, p, p, h, w).permute(0, 4, 5, 1, 2, 3)  # (B, h, w, C, p, p)
    volume = f_t.permute(0, 2, 3, 1)[..., None, None] - win
    ones = F.pad(f_t.new_ones(1, 1, h, w), (r, r - 1, r, r - 1))
    valid = F.unfold(ones, kernel_size=p).reshape(p, p, h, w).permute(2, 3, 0, 1) > 0.5
    return volume, valid


def soft_argmax_flow(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """Flow ``(B, 2, h, w)`` (cells, ``(dx, dy)``) from offset logits ``(B, h, w, (2r)^2)``
    (ordered as :func:`window_offsets`): ``sum_d softmax(logits)_d * d``."""
    prob = torch.softmax(logits, dim=-1)
    offsets = window_offsets(radius, logits.device, logits.dtype)
    return (prob @ offsets).permute(0, 3, 1, 2)


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(inplace=True),
    ]


def resolve_oflownet_widths(widths: str | Mapping[str, Any], radius: int) -> dict[str, list[int]]:
    """Tower, U-Net, decoder and FC widths of a preset or an explicit dict
    ``{"tower": 6 ints, "unet": L + 1 ints, "decoder": L ints, "fc": ints}``,
    ``L = log2(2 * radius)``."""
    levels = round(math.log2(2 * radius))
    if isinstance(widths, str):
        if widths not in OFLOWNET_PRESETS:
            raise InputError(
                f"unknown OFlowNet widths {widths!r}; choose one of "
                f"{', '.join(OFLOWNET_PRESETS)} or pass a dict with tower, unet, decoder, fc."
            )
        pre = OFLOWNET_PRESETS[widths]
        unet = [pre["c0"]] + [pre["base"] * 2 ** (k - 1) for k in range(1, levels + 1)]
        decoder = [unet[k] for k in range(levels - 1, 0, -1)] + [max(pre["c0"] // 2, 1)]
        return {
            "tower": list(pre["tower"]),
            "unet": unet,
            "decoder": decoder,
            "fc": list(pre["fc"]),
        }
    if not isinstance(widths, Mapping) or set(widths) != {"tower", "unet", "decoder", "fc"}:
        raise InputError(
            "OFlowNet widths must be 'kfnet', 'small' or a dict with exactly the keys tower, "
            f"unet, decoder, fc; got {widths!r}."
        )
    out = {k: as_int_list(widths[k], f"widths[{k!r}]") for k in ("tower", "unet", "decoder")}
    fc = widths["fc"]
    out["fc"] = as_int_list(fc, "widths['fc']") if len(fc) else []
    want = {"tower": len(_TOWER_LAYOUT), "unet": levels + 1, "decoder": levels}
    for k, n in want.items():
        if len(out[k]) != n:
            raise InputError(
                f"widths[{k!r}] needs {n} integers for radius {radius} ({levels} U-Net levels), "
                f"got {out[k]}."
            )
    return out


class OFlowNet(nn.Module):
    """KFNet's flow network: stride-8 features, difference cost volume, per-cell U-Net,
    soft-argmax flow and process noise.

    Args:
        feature_dim: channels of the unit features at stride 8 (32 in KFNet).
        radius: ``r``; ``(2r)^2`` candidate offsets in ``{-r, ..., r - 1}^2`` cells (4 in KFNet:
            64 offsets, +-32 px). ``2r`` must be a power of two (the U-Net halves it down to
            ``1 x 1``).
        widths: ``"kfnet"``, ``"small"`` (CPU-sized) or an explicit dict (see
            :func:`resolve_oflownet_widths`).
        mask_out_of_frame: give offsets whose source cell lies outside the map a logit of
            ``-inf`` (dgeo option). ``False`` is KFNet: the zero-filled differences enter the
            U-Net like any other and the flow may point out of the map.
        seed: deterministic He initialisation; None keeps torch's default.
    """

    def __init__(
        self,
        feature_dim: int = 32,
        radius: int = 4,
        widths: str | Mapping[str, Any] = "kfnet",
        mask_out_of_frame: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        feature_dim, radius = int(feature_dim), int(radius)
        if feature_dim < 1:
            raise InputError(f"feature_dim must be >= 1, got {feature_dim}.")
        if radius < 1 or (2 * radius) & (2 * radius - 1):
            raise InputError(
                f"radius must make 2 * radius a power of two (1, 2, 4, 8, ...), got {radius}."
            )
        res = resolve_oflownet_widths(widths, radius)
        self.feature_dim, self.radius = feature_dim, radius
        self.mask_out_of_frame = bool(mask_out_of_frame)
        self.seed = None if seed is None else int(seed)
        self._widths_arg: Any = (
            widths if isinstance(widths, str) else {k: list(v) for k, v in res.items()}
        )
        self.levels = len(res["decoder"])

        tower = stride8_stack(3, res["tower"], _TOWER_LAYOUT)
        tower.append(nn.Conv2d(res["tower"][-1], feature_dim, 3, padding=1))  # linear
        self.tower = nn.Sequential(*tower)

        unet, dec = res["unet"], res["decoder"]
        self.enc0 = nn.Sequential(*_conv(feature_dim, unet[0]))
        self.down = nn.ModuleList(
            nn.Sequential(*_conv(unet[k - 1], unet[k], 2), *_conv(unet[k], unet[k]))
            for k in range(1, self.levels + 1)
        )
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        cin = unet[-1]
        for i in range(self.levels):  # from level L to level L - 1 - i
            skip = unet[self.levels - 1 - i]
            self.up.append(nn.Sequential(*_up(cin, dec[i])))
            self.fuse.append(nn.Sequential(*_conv(dec[i] + skip, dec[i])))
            cin = dec[i]
        self.prediction = nn.Conv2d(cin, 1, 3, padding=1)
        fc: list[nn.Module] = []
        cin = unet[-1]
        for cout in res["fc"]:
            fc += [nn.Linear(cin, cout), nn.ReLU(inplace=True)]
            cin = cout
        fc.append(nn.Linear(cin, 1))
        self.noise_head = nn.Sequential(*fc)
        if self.seed is not None:
            seeded_he_init_(self, self.seed)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON types): ``OFlowNet(**model.config)``."""
        return {
            "feature_dim": self.feature_dim,
            "radius": self.radius,
            "widths": self._widths_arg,
            "mask_out_of_frame": self.mask_out_of_frame,
            "seed": self.seed,
        }

    @property
    def window(self) -> int:
        """Side ``2r`` of the cost-volume patch."""
        return 2 * self.radius

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit features ``(B, feature_dim, H/8, W/8)`` of ``images (B, 3, H, W)`` in [0, 1]
        (compute once per frame and reuse across pairs with :meth:`match`)."""
        check_cell_images(images, self)
        return l2_normalize(self.tower(normalize_images(images)))

    def patch_logits(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-cell U-Net: ``patches (N, C, 2r, 2r)`` -> offset logits ``(N, (2r)^2)``
        (row-major as :func:`window_offsets`) and the bottleneck ``(N, unet[-1])``."""
        x = self.enc0(patches)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        bottleneck = x.flatten(1)  # (N, unet[-1] * 1 * 1)
        for i, (up, fuse) in enumerate(zip(self.up, self.fuse, strict=True)):
            x = fuse(torch.cat([up(x), skips[self.levels - 1 - i]], 1))
        return self.prediction(x).flatten(1), bottleneck

    def match(self, f_t: torch.Tensor, f_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow and process noise from the features of frame ``t`` and of the earlier frame.

        Args:
            f_t, f_prev: ``(B, feature_dim, h, w)`` from :meth:`features`.
        Returns:
            ``flow (B, 2, h, w)`` in cells ``(dx, dy)``, t -> t-1, and
            ``log_sigma_w (B, 1, h, w) = log(0.01) + o`` (natural log of metres).
        """
        volume, valid = cost_volume(f_t, f_prev, self.radius)
        b, h, w = volume.shape[:3]
        p = self.window
        logits, bottleneck = self.patch_logits(volume.reshape(b * h * w, -1, p, p))
        logits = logits.reshape(b, h, w, p * p)
        if self.mask_out_of_frame:
            logits = logits.masked_fill(~valid.reshape(1, h, w, p * p), float("-inf"))
        flow = soft_argmax_flow(logits, self.radius)
        out = self.noise_head(bottleneck).reshape(b, h, w, 1).permute(0, 3, 1, 2)
        return flow, out + LOG_SIGMA_W_SCALE

    def forward(
        self, image_t: torch.Tensor, image_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow from frame ``t`` into the earlier frame, and the process noise.

        Args:
            image_t, image_prev: ``(B, 3, H, W)`` float RGB in [0, 1], ``H``, ``W`` multiples
                of 8.
        Returns:
            ``flow (B, 2, H/8, W/8)`` (cells, points into ``image_prev``) and
            ``log_sigma_w (B, 1, H/8, W/8)`` with ``sigma_w = 0.01 * exp(o)`` metres.
        """
        check_cell_images(image_t, self, "image_t")
        check_cell_images(image_prev, self, "image_prev")
        if image_t.shape != image_prev.shape:
            raise ShapeError(
                f"image_t {tuple(image_t.shape)} and image_prev {tuple(image_prev.shape)} must "
                "have the same shape."
            )
        f = self.features(torch.cat([image_t, image_prev], 0))
        f_t, f_prev = f.chunk(2, 0)
        return self.match(f_t, f_prev)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
