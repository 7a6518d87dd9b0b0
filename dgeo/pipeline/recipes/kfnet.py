"""The KFNet recipe: joint fine-tuning of SCoordNet and OFlowNet through the per-pixel Kalman
filter (ALGORITHMS 2.9).

Items are groups of 4 consecutive frames and their time-reversed copies
(:class:`~dgeo.data.sequences.FrameGroupDataset`). Each step runs SCoordNet on the ``4B`` frames
and OFlowNet on the 3 consecutive pairs of every group (one forward pass, :class:`KFNetGroups`),
then filters every group with :mod:`dgeo.temporal` in the decorrelated frame, differentiably
through the gain: frame 1's state is its measurement (:func:`~dgeo.temporal.initial_state`);
frame ``k > 1`` predicts with the flow and process noise
(:func:`~dgeo.temporal.kalman_predict`) and fuses its measurement
(:func:`~dgeo.temporal.kalman_update`). The loss (:func:`dgeo.losses.flow.kfnet_loss`) is
``0.2 L_meas + 0.2 L_prior + 0.6 L_post`` per frame (NLL truncated at -2 plus 50x smoothness),
averaged over the frames; frame 1, which has no prior and whose posterior is its measurement,
contributes ``0.2 L_meas`` only.

The model is a :class:`~dgeo.models.KFNet`: ``init_scoordnet`` and ``init_oflownet`` give the
trained stages (a KFNet file may stand for either), ``init_weights`` a whole KFNet; parts not
given are built from ``config.model_config`` (``{"scoordnet": {...}, "oflownet": {...}}``, or
flat options such as ``widths = "small"`` applied to both). A fresh SCoordNet takes the first
training folder's ``transform.txt``.

Validation (non-overlapping forward groups of ``val_folder``, default the training folders, at
most ``val_pairs``) reports the loss and the RANSAC poses of the last frame of each group from
the filtered output (``pose_*``) and from SCoordNet alone (``meas_*``): median cm / deg and the
share under 5 cm / 5 deg.

Options in ``config.loss``: ``fix_flownet`` (freeze OFlowNet, false), ``group`` (4),
``reverse`` (true), ``augment`` (photometric, false: KFNet's last stage runs without),
``rotation`` (0 degrees), ``truncate`` (-2), ``smooth_weight`` (50), ``weights``
(``[0.2, 0.2, 0.6]``), ``gate`` (chi-square gate of the validation filter output, 7.815),
``threshold_px`` (10), ``max_iterations`` (1000).
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
    PoseAccumulator,
    cameras_of,
    evenly_spaced,
    load_network,
    sequence_folders,
    task_options,
    unwrap,
)


class KFNetGroups(nn.Module):
    """Training wrapper: a :class:`~dgeo.models.KFNet` on groups of consecutive frames in one
    forward pass (the trainer calls a model with one tensor).

    Attributes:
        net: the KFNet (what is saved).
        fix_flownet: run OFlowNet without gradients (its weights frozen).
    """

    def __init__(self, net: nn.Module, fix_flownet: bool = False) -> None:
        super().__init__()
        self.net = net
        self.fix_flownet = bool(fix_flownet)
        if self.fix_flownet:
            self.net.oflownet.requires_grad_(False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.net.config)

    def forward(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Measurements of every frame and flows between consecutive frames.

        Args:
            images: ``(B, G, 3, H, W)`` in time order (``G >= 2``).
        Returns:
            ``xyz (B, G, 3, h, w)`` (decorrelated frame), ``log_sigma (B, G, 1, h, w)``,
            ``flow (B, G-1, 2, h, w)`` (frame ``k`` into ``k-1``, entry ``k-1``) and
            ``log_sigma_w (B, G-1, 1, h, w)``.
        """
        b, g = images.shape[:2]
        flat = images.reshape(b * g, *images.shape[2:])
        xyz, log_sigma = self.net.scoordnet(flat)
        flownet = self.net.oflownet
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fix_flownet):
            f = flownet.features(flat).reshape(b, g, -1, *xyz.shape[-2:])
            f_t = f[:, 1:].reshape(b * (g - 1), *f.shape[2:])
            f_prev = f[:, :-1].reshape(b * (g - 1), *f.shape[2:])
            flow, log_sigma_w = flownet.match(f_t, f_prev)
        h, w = xyz.shape[-2:]
        return (
            xyz.reshape(b, g, 3, h, w),
            log_sigma.reshape(b, g, 1, h, w),
            flow.reshape(b, g - 1, 2, h, w),
            log_sigma_w.reshape(b, g - 1, 1, h, w),
        )


def _config_for(model_config: dict[str, Any], part: str) -> dict[str, Any]:
    """The options of ``part`` (``scoordnet`` / ``oflownet``) in ``model_config``: its own
    table, over the flat options shared by both."""
    shared = {k: v for k, v in model_config.items() if k not in ("scoordnet", "oflownet")}
    own = model_config.get(part) or {}
    if not isinstance(own, dict):
        raise InputError(f"model_config.{part} must be a table of options, got {own!r}.")
    return {**shared, **own}


class KfnetTask(Task):
    """Fine-tunes a :class:`~dgeo.models.KFNet` through the Kalman filter (module docstring)."""

    name = "kfnet"
    best_metric: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "fix_flownet": False,
        "group": 4,
        "reverse": True,
        "augment": False,
        "rotation": 0.0,
        "truncate": -2.0,
        "smooth_weight": 50.0,
        "weights": [0.2, 0.2, 0.6],
        "gate": 7.815,
        "threshold_px": 10.0,
        "max_iterations": 1000,
    }

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.options = task_options(config, self.OPTIONS, self.name)
        group = self.options["group"]
        if isinstance(group, bool) or not isinstance(group, int) or group < 2:
            raise InputError(f"group must be an integer >= 2, got {group!r}.")
        self._folders: list | None = None
        self._val_folders: list | None = None

    @property
    def folders(self) -> list:
        if self._folders is None:
            self._folders = sequence_folders(self.config, min_frames=self.options["group"])
        return self._folders

    @property
    def val_folders(self) -> list:
        if self._val_folders is None:
            cfg = self.config
            self._val_folders = (
                sequence_folders(cfg, val=True, min_frames=self.options["group"])
                if cfg.val_folder
                else self.folders
            )
        return self._val_folders

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        from dgeo.data.sequences import FrameGroupDataset

        cfg, o = self.config, self.options
        g = int(o["group"])
        train = FrameGroupDataset(
            self.folders, group=g, reverse=bool(o["reverse"]), stride=STRIDE,
            augment=bool(o["augment"]), rotation=float(o["rotation"]), seed=cfg.seed,
        )  # fmt: skip
        val = FrameGroupDataset(self.val_folders, group=g, step=g, stride=STRIDE)
        return train, evenly_spaced(val, cfg.val_pairs)

    def build_model(self) -> nn.Module:
        from dgeo.models.kfnet import KFNet
        from dgeo.models.oflownet import OFlowNet
        from dgeo.models.scoordnet import SCoordNet

        cfg = self.config
        if cfg.init_weights:
            net = load_network(cfg.init_weights, "KFNet", "--init-weights")
        else:
            parts: dict[str, nn.Module] = {}
            for part, cls, path, option in (
                ("scoordnet", SCoordNet, cfg.init_scoordnet, "--scoordnet"),
                ("oflownet", OFlowNet, cfg.init_oflownet, "--oflownet"),
            ):
                if path:
                    parts[part] = load_network(path, cls.__name__, option)
                    continue
                try:
                    parts[part] = cls(**{"seed": cfg.seed, **_config_for(cfg.model_config, part)})
                except TypeError as exc:
                    raise InputError(
                        f"bad {cls.__name__} option in the config's [model] table: {exc}"
                    ) from None
                if part == "scoordnet":
                    parts[part].set_transform(self.folders[0].transform)
            net = KFNet(parts["scoordnet"], parts["oflownet"])
        return KFNetGroups(net, fix_flownet=bool(self.options["fix_flownet"]))

    def save_model(self, model: nn.Module, path: str | Path) -> Path:
        from dgeo.models import save

        net = unwrap(model)
        return save(net.net if isinstance(net, KFNetGroups) else net, path)

    # ------------------------------------------------------------------------------ loss
    def _filter(
        self, model: nn.Module, batch: Batch, gate: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float], list, torch.Tensor, torch.Tensor]:
        """Run the networks and the filter over the groups of ``batch``.

        Returns:
            ``(loss, stats, steps, xyz, log_sigma)``: the :class:`~dgeo.temporal.KalmanStep`
            of every frame (decorrelated frame), and the measurements.
        """
        from dgeo.losses.flow import kfnet_loss
        from dgeo.temporal import initial_state, kalman_predict, kalman_update

        o = self.options
        kf = unwrap(model).net
        xyz, log_sigma, flow, log_sigma_w = (t.float() for t in model(batch["image"]))
        g = xyz.shape[1]
        coords, valid, images = batch["coords"].float(), batch["valid"], batch["image"]
        var_z = torch.exp(2.0 * log_sigma)
        weights = [float(w) for w in o["weights"]]
        trunc, smooth = o["truncate"], float(o["smooth_weight"])
        total = xyz.new_zeros(())
        avg = Averager()
        steps = []
        state = None
        for k in range(g):
            target = kf.scoordnet.to_decorrelated(coords[:, k])
            meas = (xyz[:, k], var_z[:, k])
            if k == 0:
                state = initial_state(xyz[:, 0], var_z[:, 0])
                prior = None
                loss, st = kfnet_loss(
                    meas, None, None, target, valid[:, 0], images[:, 0],
                    weights=weights, truncate=trunc, smooth_weight=smooth,
                )  # fmt: skip
            else:
                prior = kalman_predict(
                    state.mean, state.var, state.valid, flow[:, k - 1],
                    torch.exp(2.0 * log_sigma_w[:, k - 1]),
                )  # fmt: skip
                state = kalman_update(prior, xyz[:, k], var_z[:, k], gate=gate)
                loss, st = kfnet_loss(
                    meas, prior, state, target, valid[:, k], images[:, k],
                    weights=weights, truncate=trunc, smooth_weight=smooth,
                )  # fmt: skip
            steps.append(state)
            total = total + loss / g
            st.pop("loss", None)
            avg.add(st)
        stats = {}
        for key, value in avg.result().items():  # median errors in centimetres
            if key.startswith("median_error_"):
                stats[f"{key}_cm"] = 100.0 * value
            else:
                stats[key] = value
        return total, stats, steps, xyz, log_sigma

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats, _, _, _ = self._filter(model, batch)
        return loss, stats

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        from dgeo.models.scoordnet import SIGMA_MIN

        o = self.options
        kf = unwrap(model).net
        avg = Averager()
        ransac = {
            "threshold_px": float(o["threshold_px"]),
            "max_iterations": int(o["max_iterations"]),
        }
        filtered = PoseAccumulator("pose_", **ransac)
        measured = PoseAccumulator("meas_", **ransac)
        gate = None if o["gate"] is None else float(o["gate"])
        for batch in loader:
            loss, stats, steps, xyz, log_sigma = self._filter(model, batch, gate)
            avg.add({"loss": float(loss), **stats})
            last = steps[-1]
            cams = cameras_of(self.val_folders, batch)
            pose_gt = batch["pose"][:, -1]
            world = kf.scoordnet.to_world(last.output)
            sigma = last.output_var.clamp_min(SIGMA_MIN**2).sqrt()
            filtered.add(world, sigma, cams, pose_gt, valid=last.valid)
            world_z = kf.scoordnet.to_world(xyz[:, -1])
            sigma_z = log_sigma[:, -1].exp().clamp_min(SIGMA_MIN)
            measured.add(world_z, sigma_z, cams, pose_gt)
        return {**avg.result(), **filtered.result(), **measured.result()}
