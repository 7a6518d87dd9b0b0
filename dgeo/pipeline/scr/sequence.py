"""Localize the frames of an image sequence with a scene-coordinate network.

:class:`SequenceLocalizer` runs one of three methods over frames in time order:

- ``"scoordnet"``: per frame, ``SCoordNet.predict_world`` -> :func:`poses_from_coords`;
  frames are independent and go through the network and RANSAC ``batch_size`` at a time.
- ``"kfnet"``: KFNet (ALGORITHMS 2.8, 2.9). Per frame, the SCoordNet measurement ``z, sigma_z``,
  the OFlowNet flow from this frame into the previous one with its process noise ``sigma_w``,
  and one step of :class:`dgeo.temporal.PixelKalmanFilter`; the pose comes from the filter's
  output and its variance (``sigma = sqrt(output_var)`` orders the cells). The filter restarts
  from the measurement (a *reset*, logged with its cause) at the first frame, after a frame
  that could not be read or whose network output is not finite, when the flow is not finite,
  after a ``resume`` gap, and whenever the filter resets itself (its chi-square gate rejected
  too many cells).
- ``"ace"``: per frame, ``ACEModel.predict_world`` -> :func:`poses_from_coords`, batched like
  ``"scoordnet"``.

Every frame gives a :class:`FrameResult` (pose, success, reason, inliers, timings); a frame that
cannot be read, has the wrong size or a non-finite network output fails alone with its reason,
and nothing raises for it. With ``coords_dir`` the localizer writes KFNet's test outputs
(ALGORITHMS 3.1): ``coord_<i>.npy`` ``(h, w, 4)``, world xyz + 1/sigma of the map the pose was
computed from, and for ``"kfnet"`` ``<i-1>_<i>_flow.npy`` ``(h, w, 3)``, the flow of frame ``i``
into frame ``i - 1`` (cells) + ``1/sigma_w``.

The pose of a failed frame (written by the CLI as its fallback) is the last successful pose of
the sequence, else the identity: for a moving camera the previous pose is the best guess.

:func:`localize_sequence` is the job behind ``dgeo localize-sequence``: it opens a KFNet
sequence folder (:class:`dgeo.data.sequences.SequenceFolder`), loads the network
(:func:`load_sequence_model`), writes the hloc results and the JSON-lines log through
:class:`dgeo.pipeline.run_files.ResultsWriter` (crash-safe, ``resume``), and evaluates the
results against the folder's ground truth when it has one.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from dgeo.errors import DgeoError, InputError
from dgeo.geometry import Camera, Pose
from dgeo.io.formats import (
    kfnet_coord_path,
    kfnet_flow_path,
    write_kfnet_coords,
    write_kfnet_flow,
)
from dgeo.io.images import read_image
from dgeo.pipeline.scr.pose import (
    DEFAULT_MIN_CELLS,
    DEFAULT_THRESHOLD_PX,
    DEFAULT_TOP_FRACTION,
    poses_from_coords,
)
from dgeo.ransac import PnPReason
from dgeo.temporal import PixelKalmanFilter

__all__ = [
    "METHODS",
    "FrameResult",
    "PoseOptions",
    "SequenceLocalizer",
    "SequenceSummary",
    "load_sequence_model",
    "localize_sequence",
    "open_sequence",
    "reason_name",
]

log = logging.getLogger(__name__)

#: The methods of :class:`SequenceLocalizer`.
METHODS = ("scoordnet", "kfnet", "ace")
#: Timing stages of a frame's record, in order.
STAGES = ("read", "network", "flow", "filter", "ransac", "write")

ProgressFn = Callable[[str, int, int], None]


class SequenceSource(Protocol):
    """What :meth:`SequenceLocalizer.run` reads frames from (e.g.
    :class:`dgeo.data.sequences.SequenceFolder`)."""

    names: Sequence[str]

    def __len__(self) -> int: ...

    def load_image(self, i: int) -> torch.Tensor: ...


def reason_name(reason: PnPReason | int) -> str:
    """The log reason of a RANSAC outcome: ``"ok"``, ``"too-few-inliers"``, ..."""
    return PnPReason(int(reason)).name.lower().replace("_", "-")


def _error_reason(exc: BaseException) -> str:
    """``"error: <Type>: <first line of the message>"``, like the ``dgeo localize`` log."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first}"


@dataclass
class PoseOptions:
    """Options of :func:`~dgeo.pipeline.scr.pose.poses_from_coords` for every frame.

    Attributes:
        top_fraction: share of the valid cells, most confident first, given to RANSAC.
        max_sigma: drop cells less certain than this (metres); None: no limit.
        threshold_px: inlier threshold in pixels of the full image.
        min_cells: the confidence selection keeps at least this many cells.
        ransac: further :func:`dgeo.ransac.pnp_ransac` options (``seed``, ``min_inliers``...).
    """

    top_fraction: float = DEFAULT_TOP_FRACTION
    max_sigma: float | None = None
    threshold_px: float = DEFAULT_THRESHOLD_PX
    min_cells: int = DEFAULT_MIN_CELLS
    ransac: dict[str, Any] = field(default_factory=dict)

    def check(self) -> PoseOptions:
        """Raise :class:`InputError` on an option out of range; return ``self``."""
        if not 0 < self.top_fraction <= 1:
            raise InputError(f"top_fraction must be in (0, 1], got {self.top_fraction}.")
        if self.max_sigma is not None and not self.max_sigma > 0:
            raise InputError(f"max_sigma must be positive (metres) or None, got {self.max_sigma}.")
        if not self.threshold_px > 0:
            raise InputError(f"threshold_px must be positive, got {self.threshold_px}.")
        if self.min_cells < 0:
            raise InputError(f"min_cells must be >= 0, got {self.min_cells}.")
        return self

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`poses_from_coords`."""
        return {
            "top_fraction": self.top_fraction, "max_sigma": self.max_sigma,
            "threshold_px": self.threshold_px, "min_cells": self.min_cells, **self.ransac,
        }  # fmt: skip


@dataclass
class FrameResult:
    """The outcome for one frame.

    Attributes:
        index: position of the frame in the sequence (0-based; names the ``.npy`` outputs).
        name: the frame's name (the ``image_list.txt`` entry for a KFNet folder).
        pose: ``cam_from_world`` :class:`Pose` ``()`` float64 on the CPU; for a failed frame the
            last successful pose of the sequence (identity if none).
        success: RANSAC found a pose with enough inliers.
        reason: ``"ok"``, a RANSAC failure (``"too-few-inliers"``, ``"too-few-matches"``...),
            ``"non-finite-output"`` or ``"error: <Type>: <message>"``.
        num_cells: cells given to RANSAC; num_inliers: its inliers among them.
        inliers: ``(h, w)`` bool inlier map (None when the frame never reached RANSAC).
        timings: seconds per stage (:data:`STAGES`; batched stages divided by the batch size).
        filter_reset: for ``"kfnet"``, why the filter restarted at this frame (``"start"``: frame
            0; ``"resume"``: the first frame after a gap in the frames run, or a run that starts
            after frame 0; ``"missing frame"``: after a frame that failed before the filter;
            ``"non-finite"``: non-finite flow; ``"gate"``: the filter's own reset), else None.
        covariance: ``(6, 6)`` pose covariance (tangent order ``(dt, dw)``) or None.
    """

    index: int
    name: str
    pose: Pose
    success: bool
    reason: str
    num_cells: int = 0
    num_inliers: int = 0
    inliers: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    filter_reset: str | None = None
    covariance: torch.Tensor | None = None

    def record(self) -> dict:
        """A JSON-friendly summary (one line of the run log)."""
        rec: dict[str, Any] = {
            "name": self.name, "index": self.index, "success": self.success,
            "reason": self.reason, "num_cells": self.num_cells,
            "num_inliers": self.num_inliers, "timings": dict(self.timings),
        }  # fmt: skip
        if self.filter_reset is not None:
            rec["filter_reset"] = self.filter_reset
        return rec


def _as_model_output(out: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(world (B,3,h,w), sigma (B,1,h,w) | None)`` from a ``predict_world`` return value."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and len(out) == 2:
        world, sigma = out
        if sigma is not None and not isinstance(sigma, torch.Tensor):
            sigma = torch.as_tensor(sigma, dtype=world.dtype, device=world.device)
        if sigma is not None and sigma.dim() == 0:
            sigma = sigma.expand(world.shape[0], 1, *world.shape[2:])
        return world, sigma
    raise InputError(f"{what}.predict_world returned a {type(out).__name__}, not (world, sigma).")


class SequenceLocalizer:
    """Poses of the frames of a sequence from a scene-coordinate network (see the module doc).

    Args:
        method: ``"scoordnet"``, ``"kfnet"`` or ``"ace"``.
        model: for ``"scoordnet"`` and ``"ace"`` a module with ``predict_world(image (B,3,H,W)
            in [0, 1]) -> (world (B,3,h,w), sigma (B,1,h,w))`` (``SCoordNet``, ``ACEModel``; a
            ``KFNet`` is used through its ``scoordnet``); for ``"kfnet"`` an object with
            ``scoordnet`` (as above) and ``oflownet`` (``forward(image_t, image_prev) ->
            (flow (B,2,h,w) cells, log_sigma_w (B,1,h,w))``), e.g. ``KFNet``.
        camera: the camera of the full images (batch shape ``()``, dgeo pixel convention);
            its width and height must be multiples of ``stride``.
        stride: pixels per cell of the networks' maps.
        device: where the networks run (None: the model's device).
        pose_options: :class:`PoseOptions` (or a dict of its fields).
        coords_dir: write ``coord_<i>.npy`` (and the flow files for ``"kfnet"``) there.
        batch_size: frames per network/RANSAC call for ``"scoordnet"`` and ``"ace"`` (KFNet
            runs frame by frame).
        kalman: the ``PixelKalmanFilter`` of ``"kfnet"``, or a dict of its constructor
            options (None: defaults).
        seed: the RANSAC seed of every call (None: random). The frames of a RANSAC batch never
            interact, so with a seed a frame's pose is the same in any batch, run or resumed run.

    The networks are moved to ``device`` and put in eval mode.
    Raises:
        InputError: unknown method, a model without the needed methods, a camera of the wrong
            shape or size.
    """

    def __init__(
        self,
        method: str,
        model: Any,
        camera: Camera,
        *,
        stride: int = 8,
        device: str | torch.device | None = None,
        pose_options: PoseOptions | dict | None = None,
        coords_dir: str | os.PathLike | None = None,
        batch_size: int = 1,
        kalman: Any = None,
        seed: int | None = 0,
    ):
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        if not isinstance(camera, Camera) or camera.shape != ():
            got = tuple(camera.shape) if isinstance(camera, Camera) else type(camera).__name__
            raise InputError(f"camera must be one dgeo Camera of batch shape (), got {got}.")
        W, H = (round(v) for v in camera.size.tolist())
        if stride < 1 or W % stride or H % stride:
            raise InputError(
                f"the images are {W}x{H}, but the networks need sides that are multiples of "
                f"{stride}; crop or resize the images (and the camera) to a multiple of {stride}."
            )
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}.")
        self.method = method
        self.stride = stride
        self.camera = camera.double()
        self.image_size = (H, W)
        self.map_size = (H // stride, W // stride)
        if isinstance(pose_options, dict):
            pose_options = PoseOptions(**pose_options)
        self.pose_options = (pose_options or PoseOptions()).check()
        self.coords_dir = None if coords_dir is None else Path(coords_dir)
        self.batch_size = 1 if method == "kfnet" else batch_size
        self.seed = seed
        self._net, self._flow = self._networks(method, model)
        if device is None:
            device = next((p.device for p in self._net.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        for net in (self._net, self._flow):
            if isinstance(net, torch.nn.Module):
                net.to(self.device).eval()
        self.kalman: Any = None
        #: ``(frame index, cause)`` of every filter restart of ``"kfnet"``.
        self.resets: list[tuple[int, str]] = []
        self._prev_image: torch.Tensor | None = None
        self._prev_index: int | None = None
        self._prev_features: torch.Tensor | None = None
        self._last_pose = Pose.identity((), torch.float64)
        self._started = False
        if method == "kfnet":
            self.kalman = self._make_filter(kalman)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _networks(method: str, model: Any) -> tuple[Any, Any]:
        """``(coordinate network, flow network | None)`` of ``model`` for ``method``."""
        if method == "kfnet":
            net, flow = getattr(model, "scoordnet", None), getattr(model, "oflownet", None)
            if net is None or flow is None:
                raise InputError(
                    f"method kfnet needs a KFNet (scoordnet + oflownet), got "
                    f"{type(model).__name__}; train one with dgeo train kfnet."
                )
        else:
            net, flow = model, None
            if not hasattr(net, "predict_world") and hasattr(net, "scoordnet"):
                net = net.scoordnet  # a KFNet used frame by frame
        if not callable(getattr(net, "predict_world", None)):
            raise InputError(
                f"method {method} needs a model with predict_world(image), got "
                f"{type(net).__name__}."
            )
        if not isinstance(net, torch.nn.Module):
            raise InputError(f"the {method} model must be a torch.nn.Module.")
        return net, flow

    @staticmethod
    def _make_filter(kalman: Any) -> Any:
        """The per-pixel Kalman filter: ``kalman`` itself, or built from a dict of options."""
        if kalman is not None and not isinstance(kalman, dict):
            return kalman
        return PixelKalmanFilter(**(kalman or {}))

    def reset(self) -> None:
        """Forget the sequence: the filter, the previous frame and the last pose."""
        if self.kalman is not None:
            self.kalman.reset()
        self._forget_previous()
        self._last_pose = Pose.identity((), torch.float64)
        self._started = False
        self.resets = []

    # ------------------------------------------------------------------ running
    def run(
        self,
        frames: SequenceSource | Sequence[torch.Tensor] | Sequence[tuple[str, Any]],
        indices: Iterable[int] | None = None,
        progress: ProgressFn | None = None,
    ) -> list[FrameResult]:
        """Localize frames (see :meth:`iter_run`) and return their results in order."""
        return list(self.iter_run(frames, indices, progress))

    def iter_run(
        self,
        frames: SequenceSource | Sequence[torch.Tensor] | Sequence[tuple[str, Any]],
        indices: Iterable[int] | None = None,
        progress: ProgressFn | None = None,
    ) -> Iterator[FrameResult]:
        """Localize frames in time order, yielding each :class:`FrameResult` when it is done.

        Args:
            frames: a :class:`SequenceSource` (e.g. ``SequenceFolder``: its ``names`` and
                ``load_image``), a list of ``(3, H, W)`` images in [0, 1] (named ``"0"``,
                ``"1"``, ...), or a list of ``(name, image tensor or image path)``.
            indices: the frames to run, increasing (default all). A gap between two of them
                restarts the KFNet filter (cause ``"resume"``).
            progress: ``progress(stage, done, total)``.
        """
        names, load = self._source(frames)
        todo = list(range(len(names))) if indices is None else [int(i) for i in indices]
        if any(b <= a for a, b in itertools.pairwise(todo)):
            raise InputError("indices must be increasing frame positions.")
        if todo and not (0 <= todo[0] and todo[-1] < len(names)):
            raise InputError(f"indices must lie in [0, {len(names)}), got {todo[0]}..{todo[-1]}.")
        report = progress or (lambda *_: None)
        report(f"localizing ({self.method})", 0, len(todo))
        done = 0
        for k in range(0, len(todo), self.batch_size):
            batch = todo[k : k + self.batch_size]
            for result in self._run_batch([(i, names[i]) for i in batch], load):
                yield result
                done += 1
                report(f"localizing ({self.method})", done, len(todo))

    def _source(self, frames: Any) -> tuple[list[str], Callable[[int], torch.Tensor]]:
        """Names and a loader ``i -> (3, H, W)`` image of any accepted frame source."""
        if hasattr(frames, "load_image") and hasattr(frames, "names"):
            return [str(n) for n in frames.names], frames.load_image
        items = list(frames)
        if all(isinstance(x, torch.Tensor) for x in items):
            return [str(i) for i in range(len(items))], lambda i: items[i]
        if all(isinstance(x, (tuple, list)) and len(x) == 2 for x in items):
            names = [str(x[0]) for x in items]

            def load(i: int) -> torch.Tensor:
                image = items[i][1]
                return image if isinstance(image, torch.Tensor) else read_image(image)

            return names, load
        raise InputError(
            "frames must be a SequenceFolder, a list of (3, H, W) images or a list of "
            "(name, image or path) pairs."
        )

    def _read(self, i: int, name: str, load: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Frame ``i`` as ``(3, H, W)`` float on the device, checked against the camera."""
        image = load(i)
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputError(f"frame {name} must be a (3, H, W) RGB image, got {got}.")
        H, W = self.image_size
        if tuple(image.shape[1:]) != (H, W):
            raise InputError(
                f"frame {name} is {image.shape[2]}x{image.shape[1]} but the camera is {W}x{H}; "
                "every frame of a sequence needs the camera's size."
            )
        return image.to(self.device, torch.float32)

    def _failure(self, i: int, name: str, reason: str, timings: dict, **extra) -> FrameResult:
        return FrameResult(
            index=i, name=name, pose=self._last_pose, success=False, reason=reason,
            timings=timings, **extra,
        )  # fmt: skip

    def _run_batch(
        self, batch: list[tuple[int, str]], load: Callable[[int], torch.Tensor]
    ) -> list[FrameResult]:
        """Read, predict and solve a batch of frames (one frame for KFNet)."""
        images: list[torch.Tensor] = []
        ok: list[tuple[int, str]] = []
        read: list[float] = []
        out: dict[int, FrameResult] = {}
        for i, name in batch:
            t = time.perf_counter()
            try:
                images.append(self._read(i, name, load))
                ok.append((i, name))
                read.append(time.perf_counter() - t)
            except (DgeoError, OSError, ValueError, RuntimeError) as e:
                out[i] = self._failure(i, name, _error_reason(e), {"read": time.perf_counter() - t})
                self._forget_previous()  # KFNet: the chain of frames is broken
        if ok:
            solve = self._solve_kfnet if self.method == "kfnet" else self._solve_frames
            for r in solve(ok, torch.stack(images), read):
                out[r.index] = r
        results = [out[i] for i, _ in batch]
        for r in results:  # in time order: a failed frame gets the last good pose before it
            if r.success:
                self._last_pose = r.pose
            else:
                r.pose = self._last_pose
        return results

    def _poses(
        self,
        frames: list[tuple[int, str]],
        world: torch.Tensor,
        sigma: torch.Tensor | None,
        valid: torch.Tensor | None,
        timings: list[dict[str, float]],
        resets: list[str | None],
    ) -> list[FrameResult]:
        """RANSAC on the maps ``(B, ., h, w)`` of ``frames`` in one batched call, then the
        results and the ``.npy`` outputs. With a fixed seed a frame's pose does not depend on
        the batch it is in (:func:`dgeo.ransac.pnp_ransac` queries never interact)."""
        t = time.perf_counter()
        options = self.pose_options.kwargs()
        if self.seed is not None:
            options.setdefault("seed", self.seed)
        res = poses_from_coords(world, sigma, self.camera, self.stride, valid, **options)
        ransac = (time.perf_counter() - t) / len(frames)
        h, w = self.map_size
        results = []
        for b, (i, name) in enumerate(frames):
            success = bool(res.success[b])
            pose = res.pose[b].detach().to("cpu", torch.float64)
            if not success or not bool(torch.isfinite(pose.data).all()):
                pose, success = self._last_pose, False
            result = FrameResult(
                index=i, name=name, pose=pose, success=success,
                reason=reason_name(int(res.reason[b])), num_cells=int(res.num_matches[b]),
                num_inliers=int(res.num_inliers[b]), inliers=res.inliers[b].reshape(h, w).cpu(),
                timings={**timings[b], "ransac": ransac}, filter_reset=resets[b],
                covariance=res.covariance[b].detach().cpu() if success else None,
            )  # fmt: skip
            if self.coords_dir is not None:
                t = time.perf_counter()
                self._write_coords(i, world[b], None if sigma is None else sigma[b])
                result.timings["write"] = time.perf_counter() - t
            results.append(result)
        return results

    def _write_coords(self, i: int, world: torch.Tensor, sigma: torch.Tensor | None) -> None:
        """``coord_<i>.npy``: ``(h, w, 4)`` world xyz + 1/sigma (0 where sigma is unknown)."""
        assert self.coords_dir is not None
        self.coords_dir.mkdir(parents=True, exist_ok=True)
        conf = torch.zeros_like(world[:1]) if sigma is None else 1.0 / sigma.clamp_min(1e-12)
        arr = torch.cat([world, conf], 0).permute(1, 2, 0).detach().float().cpu()
        write_kfnet_coords(kfnet_coord_path(self.coords_dir, i), arr)

    @torch.inference_mode()
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Network maps of images ``(B, 3, H, W)``, checked against the map size."""
        world, sigma = _as_model_output(self._net.predict_world(images), type(self._net).__name__)
        B, (h, w) = images.shape[0], self.map_size
        if tuple(world.shape) != (B, 3, h, w) or (
            sigma is not None and tuple(sigma.shape) != (B, 1, h, w)
        ):
            raise InputError(
                f"{type(self._net).__name__}.predict_world gave maps {tuple(world.shape)} / "
                f"{None if sigma is None else tuple(sigma.shape)}; expected {(B, 3, h, w)} and "
                f"{(B, 1, h, w)} at stride {self.stride}."
            )
        return world, sigma

    def _solve_frames(
        self, frames: list[tuple[int, str]], images: torch.Tensor, read: list[float]
    ) -> list[FrameResult]:
        """SCoordNet / ACE: one network call for the batch, then the poses."""
        t = time.perf_counter()
        world, sigma = self._predict(images)
        net = (time.perf_counter() - t) / len(frames)
        timings = [{"read": r, "network": net} for r in read]
        bad = ~torch.isfinite(world).all(1).flatten(1).any(-1)  # no finite cell at all
        if sigma is not None:
            bad = bad | ~torch.isfinite(sigma).flatten(1).any(-1)
        results = self._poses(frames, world, sigma, None, timings, [None] * len(frames))
        for b, r in enumerate(results):
            if bool(bad[b]):
                r.reason = "non-finite-output"
        return results

    # ------------------------------------------------------------------ KFNet
    def _forget_previous(self) -> None:
        """Drop the previous frame: the next KFNet frame restarts the filter."""
        self._prev_image, self._prev_index, self._prev_features = None, None, None

    def _flow_into_previous(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """OFlowNet flow of ``image`` into the previous frame, its ``log_sigma_w``, and the
        features of ``image`` to reuse as the previous frame's in the next step (with
        ``features``/``match``, as :class:`dgeo.models.OFlowNet` has; else None)."""
        net = self._flow
        if callable(getattr(net, "features", None)) and callable(getattr(net, "match", None)):
            if self._prev_features is None:
                self._prev_features = net.features(self._prev_image)
            f_t = net.features(image)
            flow, log_sigma_w = net.match(f_t, self._prev_features)
            return flow, log_sigma_w, f_t
        flow, log_sigma_w = net(image, self._prev_image)
        return flow, log_sigma_w, None

    def _restart(self, i: int, cause: str) -> str:
        """Restart the filter before frame ``i``; log and remember why."""
        self.kalman.reset()
        self.resets.append((i, cause))
        if cause != "start":
            log.warning("frame %d: the Kalman filter restarts (%s).", i, cause)
        return cause

    def _write_flow(self, i: int, flow: torch.Tensor, log_sigma_w: torch.Tensor) -> None:
        """``<i-1>_<i>_flow.npy``: ``(h, w, 3)`` flow of frame ``i`` into ``i - 1`` (cells) +
        ``1/sigma_w``."""
        assert self.coords_dir is not None
        self.coords_dir.mkdir(parents=True, exist_ok=True)
        inv = 1.0 / torch.exp(log_sigma_w[0]).clamp_min(1e-12)
        arr = torch.cat([flow[0], inv], 0).permute(1, 2, 0).float().cpu()
        write_kfnet_flow(kfnet_flow_path(self.coords_dir, i - 1, i), arr)

    @torch.inference_mode()
    def _solve_kfnet(
        self, frames: list[tuple[int, str]], images: torch.Tensor, read: list[float]
    ) -> list[FrameResult]:
        """One KFNet step: measurement, flow into the previous frame, Kalman update, pose."""
        (i, name), image = frames[0], images
        timing: dict[str, float] = {"read": read[0]}
        t = time.perf_counter()
        z, sigma_z = self._predict(image)
        timing["network"] = time.perf_counter() - t
        if sigma_z is None:
            sigma_z = torch.ones_like(z[:, :1])
        z_valid = torch.isfinite(z).all(1) & torch.isfinite(sigma_z[:, 0]) & (sigma_z[:, 0] > 0)
        if not bool(z_valid.any()):  # nothing to measure: the chain breaks here
            self._forget_previous()
            return [self._failure(i, name, "non-finite-output", timing)]
        z = torch.where(z_valid[:, None], z, 0.0)
        var_z = torch.where(z_valid[:, None], sigma_z.clamp_min(1e-5).square(), 1.0)

        cause: str | None = None
        flow = process_var = features = None
        if self._prev_image is None:
            first = "start" if i == 0 else "resume"  # a run that starts mid-sequence
            cause = self._restart(i, "missing frame" if self._started else first)
        elif self._prev_index != i - 1:
            cause = self._restart(i, "resume")
        else:
            t = time.perf_counter()
            flow, log_sigma_w, features = self._flow_into_previous(image)
            timing["flow"] = time.perf_counter() - t
            process_var = torch.exp(2.0 * log_sigma_w)
            if not (bool(torch.isfinite(flow).all()) and bool(torch.isfinite(process_var).all())):
                flow = process_var = None
                cause = self._restart(i, "non-finite")
            elif self.coords_dir is not None:
                self._write_flow(i, flow, log_sigma_w)
        t = time.perf_counter()
        before = len(getattr(self.kalman, "resets", []))
        step = self.kalman.step(z, var_z, z_valid, flow=flow, process_var=process_var)
        if len(getattr(self.kalman, "resets", [])) > before and cause is None:
            why = getattr(self.kalman, "reset_log", None)  # the filter logged its own warning
            cause = "gate" if not why or "gate" in str(why[-1][-1]) else str(why[-1][-1])
            self.resets.append((i, cause))
        timing["filter"] = time.perf_counter() - t
        self._prev_image, self._prev_index, self._started = image, i, True
        self._prev_features = features

        valid = getattr(step, "valid", None)
        valid = z_valid if valid is None else (valid | z_valid)
        sigma = step.output_var.clamp_min(0).sqrt().clamp_min(1e-5)
        return self._poses([(i, name)], step.output, sigma, valid, [timing], [cause])


# ---------------------------------------------------------------------------------- folders
#: The classes a weights file may hold for each method (by class name).
MODEL_CLASSES = {
    "scoordnet": ("SCoordNet", "KFNet"),
    "kfnet": ("KFNet",),
    "ace": ("ACEModel",),
}
_TRAIN_HINT = {
    "scoordnet": "dgeo train scoordnet (or a KFNet from dgeo train kfnet)",
    "kfnet": "dgeo train kfnet",
    "ace": "dgeo train ace (the ACEModel map, not a bare ACEHead)",
}


def load_sequence_model(
    method: str, weights: str | os.PathLike, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The network of ``method`` from a dgeo model file (:func:`dgeo.models.load`), in eval mode.

    Raises:
        InputError: unknown method, or a file that holds another kind of model (the message
            says which command makes the right one); DataFileNotFoundError / ParseError for
            missing or malformed files.
    """
    from dgeo.models import load

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    model = load(weights, map_location=device)
    name = type(model).__name__
    if name not in MODEL_CLASSES[method]:
        raise InputError(
            f"{weights} holds a {name}, but --method {method} needs a "
            f"{' or '.join(MODEL_CLASSES[method])}; make one with {_TRAIN_HINT[method]}."
        )
    return model.eval()


def open_sequence(
    input_folder: str | os.PathLike, camera: str | os.PathLike | Camera | None = None
) -> Any:
    """The one :class:`~dgeo.data.sequences.SequenceFolder` of ``input_folder``.

    Raises:
        InputError: the folder holds several sequences (e.g. a ``dgeo synth`` root); the
            message lists them. DataFileNotFoundError / ParseError: see ``SequenceFolder``.
    """
    from dgeo.data.sequences import SequenceFolder, resolve_input_folder

    folders = resolve_input_folder(input_folder)
    if len(folders) > 1:
        listed = ", ".join(str(f) for f in folders[:4]) + (", ..." if len(folders) > 4 else "")
        raise InputError(
            f"{input_folder} holds {len(folders)} sequences ({listed}); pass one sequence "
            "folder as --input-folder (one results file per sequence)."
        )
    return SequenceFolder(folders[0], camera=camera, min_frames=1)


@dataclass
class SequenceSummary:
    """What :func:`localize_sequence` did, and the state of the whole results file.

    Attributes:
        folder: the sequence folder. method: the method. total: frames of the sequence.
        done_before: frames already in the results (``resume``). processed: frames run now.
        localized: frames whose latest record succeeded; failures: ``name -> reason`` of the
            others (this run's and earlier runs').
        resets: ``(frame index, cause)`` of this run's KFNet filter restarts ("start" first).
        stage_seconds: median seconds per stage over the latest records (``total``: of sums).
        seconds: wall-clock time of this run. device: where the networks ran.
        errors: with ground truth (``poses.txt`` or 7-Scenes pose files), the
            :class:`dgeo.eval.EvalResult` of the results file against it (ACE thresholds);
            else None.
        results_path, log_path: the files written.
    """

    folder: Path
    method: str
    total: int
    done_before: int
    processed: int
    localized: int
    failures: dict[str, str]
    resets: list[tuple[int, str]]
    stage_seconds: dict[str, float]
    seconds: float
    device: str
    errors: Any
    results_path: Path
    log_path: Path

    @property
    def all_localized(self) -> bool:
        """Every frame of the sequence has a successful pose."""
        return not self.failures and self.localized == self.total


def localize_sequence(
    input_folder: str | os.PathLike,
    method: str,
    weights: str | os.PathLike | torch.nn.Module,
    results_path: str | os.PathLike,
    *,
    camera: str | os.PathLike | Camera | None = None,
    coords_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    resume: bool = False,
    batch_size: int = 4,
    pose_options: PoseOptions | dict | None = None,
    kalman: Any = None,
    seed: int | None = 0,
    flush_every: int = 10,
    progress: ProgressFn | None = None,
) -> SequenceSummary:
    """Localize every frame of a KFNet sequence folder into an hloc results file and its log.

    Args:
        input_folder: a sequence folder (``image_list.txt`` ...; see
            :mod:`dgeo.data.sequences`), or a folder holding exactly one.
        method: ``"scoordnet"``, ``"kfnet"`` or ``"ace"``.
        weights: a dgeo model file (:func:`load_sequence_model`) or the model itself.
        results_path: hloc results (``name qw qx qy qz tx ty tz``, ``cam_from_world``; names =
            the ``image_list.txt`` entries), rewritten atomically every ``flush_every`` frames
            and at the end; its log ``RESULTS.log.jsonl`` gets one JSON record per frame
            (:meth:`FrameResult.record`). Failed frames are written with their fallback pose.
        camera: camera spec (:func:`dgeo.data.sequences.parse_camera`; None: the folder's
            ``camera.txt``).
        coords_dir: also write ``coord_<i>.npy`` (and KFNet's flow files) there.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        resume: keep the frames already in ``results_path`` and run the others (KFNet restarts
            its filter at the first frame after a gap, cause ``"resume"``).
        batch_size, pose_options, kalman, seed: see :class:`SequenceLocalizer`.
        progress: ``progress(stage, done, total)``.
    Returns:
        :class:`SequenceSummary`.
    Raises:
        DgeoError: bad input found before any frame runs (folder, camera, weights, options).
    """
    from dgeo.eval.metrics import evaluate
    from dgeo.pipeline.localize import log_state, resolve_device
    from dgeo.pipeline.run_files import ResultsWriter, completed_queries, log_path_for

    start = time.perf_counter()
    seq = open_sequence(input_folder, camera)
    dev = resolve_device(device)
    if isinstance(weights, torch.nn.Module):
        model = weights.to(dev).eval()
    else:
        model = load_sequence_model(method, weights, dev)
    localizer = SequenceLocalizer(
        method, model, seq.camera, device=dev, pose_options=pose_options, coords_dir=coords_dir,
        batch_size=batch_size, kalman=kalman, seed=seed,
    )  # fmt: skip
    results_path = Path(results_path)
    log_path = log_path_for(results_path)
    names = list(seq.names)
    done = set(completed_queries(results_path)) & set(names) if resume else set()
    todo = [i for i, n in enumerate(names) if n not in done]
    with ResultsWriter(results_path, log_path, resume, flush_every) as writer:
        for result in localizer.iter_run(seq, todo, progress):
            writer.add(result.name, result.pose, result.record())
    failures, _, medians = log_state(log_path, names)
    written = completed_queries(results_path)
    # a frame in the results without a log record (an edited log) counts as localized
    localized = sum(n in written and n not in failures for n in names)
    order = [k for k in (*STAGES, "total") if k in medians]
    medians = {k: medians[k] for k in order + [k for k in medians if k not in order]}
    errors = None
    if seq.poses is not None:
        est = {n: written.get(n) for n in names}
        errors = evaluate(est, (names, seq.poses), "ace", match="exact")
    return SequenceSummary(
        folder=Path(seq.root), method=method, total=len(names), done_before=len(done),
        processed=len(todo), localized=localized, failures=failures,
        resets=list(localizer.resets), stage_seconds=medians,
        seconds=time.perf_counter() - start, device=str(dev), errors=errors,
        results_path=results_path, log_path=log_path,
    )  # fmt: skip
