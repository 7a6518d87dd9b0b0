"""The OFlowNet recipe: KFNet's flow / process-noise network, trained without flow labels.

Items are pairs of consecutive frames ``(t-1, t)`` of the training folders
(:class:`~dgeo.data.sequences.FrameGroupDataset`, ``group=2``) with a shared augmentation.
Each step computes the stride-8 features of the ``2B`` images once and the flow in both
directions (``t -> t-1`` on frame ``t`` and ``t-1 -> t`` on frame ``t-1``), and minimises the
mean of :func:`dgeo.losses.flow.oflownet_loss` over the two directions (ALGORITHMS 2.8): the
other frame's ground-truth coordinates warped by the flow, scored by the truncated NLL under the
prior variance ``sigma_prev^2 + sigma_w^2``, plus 2x photometric and 50x smoothness terms. No
flow labels are needed, only the scene-coordinate labels of both frames.

Validation (pairs of ``val_folder``, default: of the training folders, at most ``val_pairs``)
reports the same loss and ``median_error_cm`` / ``accuracy`` (share within 2 cm) of the warped
coordinates.

Options in ``config.loss``: ``augment`` (photometric, default false), ``rotation`` (shared
joint rotation, degrees, 30), ``rotation_prob`` (0.8), ``gt_noise`` (metres of Gaussian noise
added to the earlier frame's labels, which is then also their sigma; 0), ``truncate`` (-1),
``photometric_weight`` (2), ``smooth_weight`` (50), ``window_mask`` (KFNet's mask: every
candidate source cell valid; false). ``config.model_config``: OFlowNet options (e.g.
``widths = "small"``); ``init_weights`` / ``init_oflownet``: start from a model file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from dgeo.errors import InputError
from dgeo.pipeline.recipes.base import Batch, Task
from dgeo.pipeline.recipes.config import TrainConfig
from dgeo.pipeline.recipes.scoordnet import (
    STRIDE,
    Averager,
    evenly_spaced,
    load_network,
    sequence_folders,
    task_options,
    unwrap,
)


class FlowPairs(nn.Module):
    """Training wrapper: :class:`~dgeo.models.OFlowNet` on both directions of frame pairs in one
    forward pass (the trainer calls a model with one tensor).

    Attributes:
        net: the OFlowNet (what is saved).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.net.config)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, 2, 3, H, W)`` (earlier frame first) -> ``flow (2B, 2, h, w)`` and
        ``log_sigma_w (2B, 1, h, w)``: rows ``:B`` on frame 1 pointing into frame 0, rows
        ``B:`` on frame 0 pointing into frame 1."""
        b = images.shape[0]
        f = self.net.features(images.transpose(0, 1).reshape(2 * b, *images.shape[2:]))
        f0, f1 = f[:b], f[b:]
        return self.net.match(torch.cat([f1, f0]), torch.cat([f0, f1]))


class OflownetTask(Task):
    """Trains an :class:`~dgeo.models.OFlowNet` with the label-free loss (module docstring)."""

    name = "oflownet"
    best_metric: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "augment": False,
        "rotation": 30.0,
        "rotation_prob": 0.8,
        "gt_noise": 0.0,
        "truncate": -1.0,
        "photometric_weight": 2.0,
        "smooth_weight": 50.0,
        "window_mask": False,
    }

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.options = task_options(config, self.OPTIONS, self.name)
        if float(self.options["gt_noise"]) < 0:
            raise InputError(f"gt_noise must be >= 0 metres, got {self.options['gt_noise']}.")
        self._folders: list | None = None

    @property
    def folders(self) -> list:
        if self._folders is None:
            self._folders = sequence_folders(self.config, min_frames=2)
        return self._folders

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        from dgeo.data.sequences import FrameGroupDataset

        cfg, o = self.config, self.options
        train = FrameGroupDataset(
            self.folders, group=2, stride=STRIDE, augment=bool(o["augment"]),
            rotation=float(o["rotation"]), rotation_prob=float(o["rotation_prob"]), seed=cfg.seed,
        )  # fmt: skip
        val_folders = (
            sequence_folders(cfg, val=True, min_frames=2) if cfg.val_folder else self.folders
        )
        val = FrameGroupDataset(val_folders, group=2, stride=STRIDE)
        return train, evenly_spaced(val, cfg.val_pairs)

    def build_model(self) -> nn.Module:
        from dgeo.models.oflownet import OFlowNet

        cfg = self.config
        path = cfg.init_weights or cfg.init_oflownet
        if path:
            option = "--init-weights" if cfg.init_weights else "--oflownet"
            return FlowPairs(load_network(path, "OFlowNet", option))
        try:
            net = OFlowNet(**{"seed": cfg.seed, **cfg.model_config})
        except TypeError as exc:
            raise InputError(f"bad OFlowNet option in the config's [model] table: {exc}") from None
        return FlowPairs(net)

    def save_model(self, model: nn.Module, path: str | Path) -> Path:
        from dgeo.models import save

        net = unwrap(model)
        return save(net.net if isinstance(net, FlowPairs) else net, path)

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from dgeo.losses.flow import oflownet_loss

        o = self.options
        flow, log_sigma_w = model(batch["image"])
        flow, log_sigma_w = flow.float(), log_sigma_w.float()
        b = batch["image"].shape[0]
        images, coords, valid = batch["image"], batch["coords"].float(), batch["valid"]
        noise = float(o["gt_noise"])
        radius = unwrap(model).net.radius if o["window_mask"] else None
        total, stats = flow.new_zeros(()), Averager()
        for d, (t, s) in enumerate(((1, 0), (0, 1))):  # (frame of the flow, its source)
            source = coords[:, s]
            if noise > 0 and torch.is_grad_enabled():
                source = source + noise * torch.randn_like(source)
            rows = slice(d * b, (d + 1) * b)
            loss, st = oflownet_loss(
                flow[rows], log_sigma_w[rows], source, valid[:, s], coords[:, t], valid[:, t],
                noise, images[:, t], images[:, s], truncate=o["truncate"],
                photometric_weight=float(o["photometric_weight"]),
                smooth_weight=float(o["smooth_weight"]), window_radius=radius,
            )  # fmt: skip
            total = total + 0.5 * loss
            stats.add(st)
        out = stats.result()
        out.pop("loss", None)
        for k in ("median_error", "median_sigma"):
            if k in out:
                out[f"{k}_cm"] = 100.0 * out.pop(k)
        return total, out

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss(model, batch)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        avg = Averager()
        for batch in loader:
            loss, stats = self._loss(model, batch)
            avg.add({"loss": float(loss), **stats})
        return avg.result()
