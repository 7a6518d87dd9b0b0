"""The PixLoc recipe: dense features trained through unrolled feature-metric pose refinement.

For a pair batch with geometry (``points_a``, ``K_b``, ``b_from_a``; ALGORITHMS 2.6): image a is
the reference with 3D points ``points_a`` ``(B, N, 3)`` in camera-a coordinates (the "world"),
image b the query; the pose to find is ``b_from_a``. The reference descriptors are the features
of a's pyramid at ``uv_a`` on every level (with their confidences), so gradients reach the
network through both images. Starting from the identity (``init = "identity"``, PixLoc on CMU)
or from the true pose with its rotation vector and translation scaled by ``a ~ U[lo, hi]``
(``init = "perturbed"``, PixLoc on MegaDepth), :func:`dgeo.pnp.refine_featuremetric` runs
``iterations`` unrolled LM iterations per level, coarse to fine, each level starting from the
previous level's pose detached. The loss is :func:`dgeo.losses.unrolled_pose_loss` of the poses
after each level.

Validation reports the same loss, the nearest-neighbour PCK of the features and the pose recall
of a full (not unrolled, early-stopped) refinement of ``val_iterations`` per level at
``pose_thresholds`` (metres, degrees), with median errors.

Options in ``config.loss`` (defaults in :attr:`PixLocTask.OPTIONS`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from dgeo.errors import InputError
from dgeo.geometry import Camera, FeaturePyramid, Pose
from dgeo.pipeline.recipes.base import Batch, Task, build_extractor, pair_pyramids
from dgeo.pipeline.recipes.gnnet import PCKAccumulator, split_options

INITS = ("identity", "perturbed")


def _has_geometry(dataset: Dataset) -> bool:
    while hasattr(dataset, "dataset") and not hasattr(dataset, "has_geometry"):
        dataset = dataset.dataset  # a Subset
    return bool(getattr(dataset, "has_geometry", False))


class PixLocTask(Task):
    """Trains a dense extractor with PixLoc's unrolled pose loss (see the module docstring).

    Options (``config.loss``):
        iterations: unrolled LM iterations per level in training (15).
        val_iterations: LM iterations per level of the validation refinement (50).
        init: ``"identity"`` or ``"perturbed"`` starting pose.
        init_range: ``[lo, hi]`` of the perturbation factor ``a`` (``[0.75, 1.0]``).
        scale: scale of the robust kernel in feature units (0.1).
        success_thresh, clamp, min_points: of :func:`dgeo.losses.unrolled_pose_loss`.
        pose_thresholds: ``[[metres, degrees], ...]`` of the validation recall.
        pck_level, pck_thresholds: of the validation PCK.
    """

    name = "pixloc"
    best_metric: ClassVar[str] = "loss"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "iterations": 15,
        "val_iterations": 50,
        "init": "identity",
        "init_range": [0.75, 1.0],
        "scale": 0.1,
        "success_thresh": 3.0,
        "clamp": 50.0,
        "min_points": 10,
        "pose_thresholds": [[0.05, 1.0], [0.25, 2.0], [1.0, 5.0]],
        "pck_level": 0,
        "pck_thresholds": [1.0, 3.0, 5.0],
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.options, rest = split_options(config.loss, self.OPTIONS)
        if rest:
            raise InputError(
                f"unknown pixloc option(s) {sorted(rest)} in the config's [loss] table; the "
                f"options are {', '.join(self.OPTIONS)}."
            )
        if self.options["init"] not in INITS:
            raise InputError(
                f"pixloc init must be one of {', '.join(INITS)}, got {self.options['init']!r}."
            )
        if int(self.options["iterations"]) < 1 or int(self.options["val_iterations"]) < 1:
            raise InputError("pixloc iterations and val_iterations must be >= 1.")

    def build_model(self) -> nn.Module:
        return build_extractor(self.config)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        train, val = super().build_datasets()
        for ds, specs in ((train, self.config.data), (val, self.config.val_data)):
            if ds is not None and not _has_geometry(ds):
                specs = specs or self.config.data
                raise InputError(
                    f"dgeo train pixloc needs pairs with geometry (3D points, intrinsics, relative "
                    f"pose), but {', '.join(specs)} has none; use synthetic:street / "
                    "synthetic:room or colmap:MODEL:IMAGES with pinhole cameras."
                )
        return train, val

    # ------------------------------------------------------------------------------ geometry
    def problem(
        self, pyr_a: FeaturePyramid, batch: Batch
    ) -> tuple[torch.Tensor, list, list, torch.Tensor, Camera, Pose]:
        """The refinement problem of a pair batch.

        Returns:
            points ``(B, N, 3)`` (camera-a frame), reference features per level ``(B, N, C_l)``,
            reference confidences per level ``(B, N)`` (or None), mask ``(B, N)`` (real
            correspondences with valid reference descriptors), the query camera ``(B,)`` and the
            true pose ``b_from_a`` ``(B,)``.
        """
        points = batch["points_a"].float()
        uv_a = batch["uv_a"].float()
        mask = batch["mask"].bool() & (points[..., 2] > 1e-3)
        refs, confs = [], []
        for level in range(len(pyr_a)):
            out = pyr_a.sample(uv_a, level)
            refs.append(out[0])
            mask = mask & out[1]
            confs.append(out[2] if len(out) > 2 else None)
        H, W = pyr_a.image_size
        camera = Camera.from_K(batch["K_b"].float(), W, H)
        gt = Pose.from_matrix(batch["b_from_a"].float(), check=False)
        if all(c is None for c in confs):
            confs = None
        return points, refs, confs, mask, camera, gt

    def initial_pose(self, gt: Pose) -> Pose:
        """The starting pose ``(B,)``: identity, or ``gt`` with its rotation vector and
        translation scaled by ``a ~ U[lo, hi]`` (global torch RNG)."""
        B = gt.shape[0]
        if self.options["init"] == "identity":
            return Pose.identity((B,), dtype=gt.dtype, device=gt.device)
        lo, hi = (float(v) for v in self.options["init_range"])
        a = lo + (hi - lo) * torch.rand(B, 1, dtype=gt.dtype, device=gt.device)
        return Pose.from_axis_angle(gt.axis_angle() * a, gt.t * a)

    def refine(
        self,
        pyr_b: FeaturePyramid,
        points: torch.Tensor,
        refs: list,
        confs: list | None,
        mask: torch.Tensor,
        camera: Camera,
        init: Pose,
        iterations: int,
        unroll: bool,
    ) -> tuple[list[Pose], list[float]]:
        """Coarse-to-fine refinement, one :func:`refine_featuremetric` call per level, each
        starting from the previous pose detached.

        Returns:
            the pose after each level ``(B,)`` (coarse to fine) and the levels' strides.
        """
        from dgeo.pnp import refine_featuremetric

        order = sorted(range(len(pyr_b)), key=lambda i: -pyr_b[i].stride)
        poses, strides = [], []
        pose = init
        for level in order:
            res = refine_featuremetric(
                pyr_b, points, refs, camera, pose.detach(), mask,
                ref_confidence=confs, levels=[level], max_iterations=int(iterations),
                unroll=unroll, scale=float(self.options["scale"]),
                min_points=int(self.options["min_points"]),
            )  # fmt: skip
            pose = res.pose
            poses.append(pose)
            strides.append(float(pyr_b[level].stride))
        return poses, strides

    def _loss(self, model: nn.Module, batch: Batch, iterations: int, unroll: bool):
        from dgeo.losses import unrolled_pose_loss

        pyr_a, pyr_b = pair_pyramids(model, batch)
        points, refs, confs, mask, camera, gt = self.problem(pyr_a, batch)
        init = self.initial_pose(gt)
        poses, strides = self.refine(
            pyr_b, points, refs, confs, mask, camera, init, iterations, unroll
        )
        loss, stats = unrolled_pose_loss(
            points, camera, poses, gt, mask, strides,
            success_thresh=float(self.options["success_thresh"]),
            clamp=float(self.options["clamp"]), min_points=int(self.options["min_points"]),
            pose_init=init,
        )  # fmt: skip
        return loss, stats, (pyr_a, pyr_b, points, refs, confs, mask, camera, gt, init)

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats, _ = self._loss(model, batch, int(self.options["iterations"]), True)
        return loss, stats

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        from dgeo.eval import pose_errors, recall

        sums: dict[str, float] = defaultdict(float)
        batches = 0
        acc = PCKAccumulator(self.options["pck_level"], self.options["pck_thresholds"])
        e_ts, e_Rs, e_t0s, e_R0s = [], [], [], []
        for batch in loader:
            _, stats, problem = self._loss(model, batch, int(self.options["iterations"]), True)
            pyr_a, pyr_b, points, refs, confs, mask, camera, gt, init = problem
            for k in ("loss", "reprojection_error", "reprojection_error/init"):
                if k in stats:
                    sums[k] += stats[k]
            batches += 1
            acc.add(pyr_a, pyr_b, batch)
            poses, _ = self.refine(
                pyr_b, points, refs, confs, mask, camera, init,
                int(self.options["val_iterations"]), unroll=False,
            )  # fmt: skip
            e_t, e_R, _ = pose_errors(poses[-1], gt)
            e_t0, e_R0, _ = pose_errors(init, gt)
            e_ts.append(e_t)
            e_Rs.append(e_R)
            e_t0s.append(e_t0)
            e_R0s.append(e_R0)
        out = {k: v / max(batches, 1) for k, v in sums.items()}
        out.update(acc.result())
        if e_ts:
            e_t, e_R = torch.cat(e_ts), torch.cat(e_Rs)
            ths = [(float(t), float(r)) for t, r in self.options["pose_thresholds"]]
            rec = recall(e_t.double(), e_R.double(), ths).tolist()
            rec0 = recall(torch.cat(e_t0s).double(), torch.cat(e_R0s).double(), ths).tolist()
            for (t, r), v, v0 in zip(ths, rec, rec0, strict=True):
                out[f"recall@{t:g}m/{r:g}deg"] = 100.0 * v
                out[f"recall_init@{t:g}m/{r:g}deg"] = 100.0 * v0
            out["median_t_m"] = float(e_t.median())
            out["median_R_deg"] = math.degrees(float(e_R.median()))
        return out
