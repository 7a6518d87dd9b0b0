"""The SCoordNet recipe: scene-coordinate regression with uncertainty on KFNet sequence folders.

Each step runs :class:`~dgeo.models.SCoordNet` on a batch of frames ``(B, 3, H, W)`` of the
training folders (``config.input_folder``, :mod:`dgeo.data.sequences`) and minimises the
Gaussian NLL (:func:`dgeo.losses.uncertainty.gaussian_nll`, ALGORITHMS 2.7) of its cell map
against the labels mapped into the decorrelated frame of the model's ``transform``. A fresh
model takes the ``transform.txt`` of the first training folder; a model loaded from a file
(``init_weights`` / ``init_scoordnet``) keeps its own, since that is the frame it regresses in.

Validation (``val_folder``, default: evenly spaced frames of the training folders, at most
``val_pairs``) reports the loss, the median coordinate error and the poses of the predicted
maps by confidence-weighted RANSAC (:func:`dgeo.pipeline.scr.poses_from_coords`) against the
ground truth (``poses.txt`` or 7-Scenes ``.pose.txt``): median position (cm) and rotation (deg)
errors and the share of frames under 5 cm / 5 deg (failures count as misses).

Options in ``config.loss`` (``[loss]`` table): ``augment`` (photometric, default true),
``rotation`` (max joint rotation, degrees, default 30), ``rotation_prob`` (0.5), ``zoom``
(``[0.8, 1.0]``), ``truncate`` (NLL cap, default none), ``threshold_px`` (RANSAC, 10),
``max_iterations`` (RANSAC, 1000). ``config.model_config`` holds SCoordNet options (e.g.
``widths = "small"``). Images are used at their stored size (multiples of 8).

The helpers here (:func:`unwrap`, :func:`sequence_folders`, :class:`PoseAccumulator`, ...) are
shared with the OFlowNet and KFNet recipes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dgeo.errors import InputError
from dgeo.pipeline.recipes.base import Batch, ModelForward, Task
from dgeo.pipeline.recipes.config import TrainConfig

#: Cell stride of every scene-coordinate network.
STRIDE = 8


# ---------------------------------------------------------------------------------- helpers
def unwrap(model: nn.Module) -> nn.Module:
    """The network inside the trainer's wrappers (DDP, :class:`ModelForward`)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, ModelForward):
            model = model.model
        else:
            return model


def task_options(config: TrainConfig, defaults: dict[str, Any], recipe: str) -> dict[str, Any]:
    """``config.loss`` over ``defaults``; unknown keys raise :class:`InputError`."""
    unknown = sorted(set(config.loss) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown {recipe} option(s) {unknown} in the config's [loss] table; the options are "
            f"{', '.join(sorted(defaults))}."
        )
    return {**defaults, **config.loss}


def sequence_folders(config: TrainConfig, val: bool = False, min_frames: int = 1) -> list:
    """The :class:`~dgeo.data.sequences.SequenceFolder` s of ``config.input_folder`` (or of
    ``config.val_folder`` with ``val``), labels required, one image size.

    Raises:
        InputError: no input folder (the message names the option), bad folders (see
            :class:`~dgeo.data.sequences.SequenceFolder`).
    """
    from dgeo.data.sequences import open_folders

    paths = config.val_folder if val else config.input_folder
    if not paths:
        raise InputError(
            "no training sequences: give at least one --input-folder DIR (a KFNet folder with "
            "image_list.txt, label_list.txt and transform.txt, or a `dgeo synth` root)."
        )
    folders = open_folders(paths, config.camera, min_frames=min_frames, require_labels=True)
    h, w = folders[0].image_size
    if h % STRIDE or w % STRIDE:
        raise InputError(
            f"{folders[0].root}: images are {w}x{h}; the scene-coordinate networks need a width "
            f"and height divisible by {STRIDE}."
        )
    return folders


def evenly_spaced(dataset: Dataset, count: int) -> Dataset:
    """At most ``count`` items of ``dataset``, evenly spaced (all when ``count`` is 0)."""
    n = len(dataset)
    if count <= 0 or n <= count:
        return dataset
    return Subset(dataset, torch.linspace(0, n - 1, count).round().long().tolist())


def load_network(path: str, cls_name: str, option: str) -> nn.Module:
    """A network of class ``cls_name`` from a dgeo model file; a KFNet file gives its
    ``scoordnet`` / ``oflownet`` part when that is what is asked for.

    Raises:
        InputError: the file holds another class.
    """
    from dgeo.models import load

    model = load(path)
    name = type(model).__name__
    if name == "KFNet" and cls_name in ("SCoordNet", "OFlowNet"):
        model = getattr(model, cls_name.lower())
    elif name != cls_name:
        raise InputError(
            f"{option} {path} holds a {name}, not a {cls_name}; pass a model.pt written by "
            f"`dgeo train {cls_name.lower()}`."
        )
    return model


def cameras_of(folders: Sequence, batch: Batch):
    """The :class:`~dgeo.geometry.Camera` ``(B,)`` of a batch's frames (``batch["folder"]``)."""
    from dgeo.geometry import Camera

    index = batch["folder"]
    index = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    return Camera.stack([folders[i].camera for i in index])


class PoseAccumulator:
    """Pose errors of predicted scene-coordinate maps over validation batches.

    :meth:`add` runs :func:`dgeo.pipeline.scr.poses_from_coords` on world maps and compares with
    the ground truth; :meth:`result` gives ``<prefix>median_cm``, ``<prefix>median_deg``,
    ``<prefix>5cm5deg`` (percent of frames) and ``<prefix>failed`` (percent) over every frame
    with a known pose.
    """

    def __init__(self, prefix: str = "pose_", **ransac: Any) -> None:
        self.prefix = prefix
        self.ransac = ransac
        self.t: list[torch.Tensor] = []
        self.r: list[torch.Tensor] = []
        self.failed: list[torch.Tensor] = []

    def add(
        self,
        world: torch.Tensor,
        sigma: torch.Tensor | None,
        camera: Any,
        pose_gt: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """``world (B, 3, h, w)``, ``sigma (B, 1, h, w)``, camera ``(B,)`` of the full images,
        ``pose_gt (B, 4, 4)`` float64 ``cam_from_world`` (NaN rows: unknown, skipped)."""
        from dgeo.eval.metrics import pose_errors
        from dgeo.geometry import Pose
        from dgeo.pipeline.scr import poses_from_coords

        known = torch.isfinite(pose_gt.reshape(pose_gt.shape[0], -1)).all(-1)
        if not bool(known.any()):
            return
        idx = known.nonzero()[:, 0]
        res = poses_from_coords(
            world[idx].float(),
            None if sigma is None else sigma[idx].float(),
            camera[idx.cpu()],
            STRIDE,
            valid=None if valid is None else valid[idx],
            **self.ransac,
        )
        gt = Pose.from_matrix(pose_gt[idx].to(res.pose.device, torch.float64), check=False)
        est = res.pose.double()
        nan = torch.full_like(est.data, math.nan)
        est = Pose(torch.where(res.success[:, None], est.data, nan))
        e_t, e_r, failed = pose_errors(est, gt)
        self.t.append(e_t.cpu())
        self.r.append(e_r.cpu())
        self.failed.append(failed.cpu())

    def result(self) -> dict[str, float]:
        if not self.t:
            return {}
        e_t, e_r = torch.cat(self.t), torch.cat(self.r)
        hit = (e_t < 0.05) & (e_r < math.radians(5.0))
        p = self.prefix
        return {
            f"{p}median_cm": 100.0 * float(e_t.median()),
            f"{p}median_deg": math.degrees(float(e_r.median())),
            f"{p}5cm5deg": 100.0 * float(hit.double().mean()),
            f"{p}failed": 100.0 * float(torch.cat(self.failed).double().mean()),
        }


class Averager:
    """Means of float statistics over validation batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            if math.isfinite(v):
                self.sums[k] += v
                self.counts[k] += 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def coordinate_stats(
    pred: torch.Tensor, target: torch.Tensor, log_sigma: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """``median_error_cm``, ``accuracy_5cm`` (percent) and ``median_sigma_cm`` of a coordinate
    map ``(B, 3, h, w)`` against ``target`` over ``mask (B, h, w)``."""
    with torch.no_grad():
        if not bool(mask.any()):
            return {}
        err = (pred.detach() - target).norm(dim=1)[mask]
        sig = log_sigma.detach()[:, 0][mask].exp()
        return {
            "median_error_cm": 100.0 * float(err.median()),
            "accuracy_5cm": 100.0 * float((err < 0.05).float().mean()),
            "median_sigma_cm": 100.0 * float(sig.median()),
        }


# ---------------------------------------------------------------------------------- the task
class ScoordnetTask(Task):
    """Trains a :class:`~dgeo.models.SCoordNet` with the Gaussian NLL (module docstring)."""

    name = "scoordnet"
    best_metric: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "augment": True,
        "rotation": 30.0,
        "rotation_prob": 0.5,
        "zoom": [0.8, 1.0],
        "truncate": None,
        "threshold_px": 10.0,
        "max_iterations": 1000,
    }

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.options = task_options(config, self.OPTIONS, self.name)
        self._folders: list | None = None
        self._val_folders: list | None = None

    # ------------------------------------------------------------------------------ data
    @property
    def folders(self) -> list:
        """The training :class:`~dgeo.data.sequences.SequenceFolder` s (opened once)."""
        if self._folders is None:
            self._folders = sequence_folders(self.config, min_frames=1)
        return self._folders

    @property
    def val_folders(self) -> list:
        """The validation folders (the training folders without ``val_folder``)."""
        if self._val_folders is None:
            if self.config.val_folder:
                self._val_folders = sequence_folders(self.config, val=True, min_frames=1)
                if self._val_folders[0].image_size != self.folders[0].image_size:
                    raise InputError(
                        "the --val-folder images are not the size of the --input-folder ones."
                    )
            else:
                self._val_folders = self.folders
        return self._val_folders

    def augmentation(self) -> dict[str, Any]:
        """FrameDataset options of the training set."""
        o = self.options
        zoom = o["zoom"]
        if not isinstance(zoom, (list, tuple)) or len(zoom) != 2:
            raise InputError(f"zoom must be [low, high], got {zoom!r}.")
        return {
            "augment": bool(o["augment"]),
            "rotation": float(o["rotation"]),
            "rotation_prob": float(o["rotation_prob"]),
            "zoom": (float(zoom[0]), float(zoom[1])),
        }

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        from dgeo.data.sequences import FrameDataset

        cfg = self.config
        train = FrameDataset(self.folders, STRIDE, seed=cfg.seed, **self.augmentation())
        val = evenly_spaced(FrameDataset(self.val_folders, STRIDE), cfg.val_pairs)
        return train, val

    # ------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        from dgeo.models.scoordnet import SCoordNet

        cfg = self.config
        path = cfg.init_weights or cfg.init_scoordnet
        if path:
            option = "--init-weights" if cfg.init_weights else "--scoordnet"
            return load_network(path, "SCoordNet", option)
        try:
            model = SCoordNet(**{"seed": cfg.seed, **cfg.model_config})
        except TypeError as exc:
            raise InputError(f"bad SCoordNet option in the config's [model] table: {exc}") from None
        model.set_transform(self.folders[0].transform)
        return model

    def save_model(self, model: nn.Module, path: str | Path) -> Path:
        from dgeo.models import save

        return save(unwrap(model), path)

    # ------------------------------------------------------------------------------ loss
    def _loss(
        self, model: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
        from dgeo.losses.uncertainty import gaussian_nll

        net = unwrap(model)
        xyz, log_sigma = model(batch["image"])
        xyz, log_sigma = xyz.float(), log_sigma.float()
        target = net.to_decorrelated(batch["coords"].float())
        valid = batch["valid"]
        loss = gaussian_nll(xyz, target, log_sigma, valid, truncate=self.options["truncate"])
        stats = {"nll": float(loss.detach()), **coordinate_stats(xyz, target, log_sigma, valid)}
        return loss, stats, xyz, log_sigma

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats, _, _ = self._loss(model, batch)
        return loss, stats

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        from dgeo.models.scoordnet import SIGMA_MIN

        net = unwrap(model)
        avg = Averager()
        poses = PoseAccumulator(
            threshold_px=float(self.options["threshold_px"]),
            max_iterations=int(self.options["max_iterations"]),
        )
        for batch in loader:
            loss, stats, xyz, log_sigma = self._loss(model, batch)
            avg.add({"loss": float(loss), **stats})
            world = net.to_world(xyz)
            sigma = log_sigma.exp().clamp_min(SIGMA_MIN)
            poses.add(world, sigma, cameras_of(self.val_folders, batch), batch["pose"])
        return {**avg.result(), **poses.result()}
