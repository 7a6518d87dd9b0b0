"""``dgeo synth``: a complete dataset folder rendered from the synthetic world.

Layout of the folder (also written to its ``README.txt``)::

    images/references/ref_0000.png            mapping images, condition overcast-reference
    images/queries/<condition>/q_0000.png     query images, one folder per condition
    depth/<same paths>.npy                    float32 (H, W) z-depth in metres, 0 = sky
    sfm/                                      COLMAP model of the references (pycolmap)
    queries_with_intrinsics.txt               hloc query list (COLMAP camera convention)
    queries_gt.txt                            ground truth, hloc results format (world-to-camera)
    sequences/<condition>/                    KFNet inputs: image_list.txt, label_list.txt,
                                              images/, labels/ (float32 H x W x 4), transform.txt,
                                              poses.txt (ground truth, hloc results format),
                                              camera.txt (MODEL W H params, COLMAP convention);
                                              the reference condition among the query
                                              conditions adds overcast-reference-test/, a
                                              second, held-out path under the mapping condition

Everything is rendered into a temporary sibling folder that is renamed into place at the end, so
an interrupted run never leaves a half-written dataset.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from dgeo.data.sequences import write_camera_file
from dgeo.data.synthetic.conditions import CONDITIONS
from dgeo.data.synthetic.mapping import build_reference_map
from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import (
    driving_trajectory,
    handheld_trajectory,
    nearby_viewpoints,
    random_viewpoints,
)
from dgeo.data.synthetic.views import Views, render_views
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose
from dgeo.io.atomic import atomic_write_text
from dgeo.io.formats import (
    write_hloc_results,
    write_kfnet_label,
    write_path_list,
    write_queries_with_intrinsics,
    write_transform,
)

SCENES = ("street", "room")
REFERENCE_CONDITION = "overcast-reference"
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`write_dataset` renders.

    Attributes:
        scene: ``"street"`` or ``"room"``.
        seed: seed of the scene, the viewpoints and the appearance.
        references: mapping images (condition ``overcast-reference``).
        queries: query images per condition.
        conditions: query conditions (names of ``dgeo.data.synthetic.appearance.CONDITIONS``).
        sequence_length: frames of the temporal sequence rendered per condition (0: none).
        shared_path: every sequence follows the mapping sequence's camera path (each under its
            own condition and noise), so held-out frames of one revisit the viewpoints of
            another; False: one path per sequence.
        sequence_fps: frame rate of the sequences (None: the trajectory's default, 30 for the
            room's hand-held walk at 0.5 m/s, 10 for the street's drive at 8 m/s); lower rates
            cover more of the scene in the same number of frames, with larger motion between
            frames.
        width, height: image size in pixels.
        camera_model: ``"SIMPLE_RADIAL"`` (mild distortion) or ``"PINHOLE"``.
        fov_deg: horizontal field of view.
        supersample: anti-aliasing sub-pixels per side.
        texture_dir: optional folder of images wrapped onto surfaces.
        max_keypoints: SIFT keypoints per reference for the COLMAP model.
        label_stride: KFNet labels at full resolution (1) or 1/8 (8).
        batch: views rendered at once.
    """

    scene: str = "street"
    seed: int = 0
    references: int = 40
    queries: int = 10
    conditions: tuple[str, ...] = ("night", "snow")
    sequence_length: int = 0
    sequence_fps: float | None = None
    shared_path: bool = False
    width: int = 640
    height: int = 480
    camera_model: str = "SIMPLE_RADIAL"
    fov_deg: float = 70.0
    supersample: int = 2
    texture_dir: Path | None = None
    max_keypoints: int = 1024
    label_stride: int = 1
    batch: int = 1

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad setting."""
        if self.scene not in SCENES:
            raise InputError(f"unknown scene {self.scene!r}; choose one of {', '.join(SCENES)}.")
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise InputError(
                f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}."
            )
        if len(set(self.conditions)) != len(self.conditions):
            raise InputError("conditions are listed twice; name each once.")
        if not self.conditions:
            raise InputError("name at least one query condition, e.g. night,snow.")
        if self.references < 2:
            raise InputError(f"references must be at least 2, got {self.references}.")
        if self.queries < 1:
            raise InputError(f"queries (per condition) must be at least 1, got {self.queries}.")
        if self.sequence_length < 0:
            raise InputError(f"sequence_length must be >= 0 (0: none), got {self.sequence_length}.")
        if self.sequence_fps is not None and not self.sequence_fps > 0:
            raise InputError(f"sequence_fps must be positive, got {self.sequence_fps}.")
        if self.width < 16 or self.height < 16:
            raise InputError(f"size must be at least 16x16, got {self.width}x{self.height}.")
        if self.camera_model not in ("SIMPLE_RADIAL", "PINHOLE"):
            raise InputError("camera_model must be SIMPLE_RADIAL or PINHOLE.")
        if not 10 <= self.fov_deg <= 150:
            raise InputError(f"fov_deg must be in [10, 150], got {self.fov_deg}.")
        if self.label_stride not in (1, 8):
            raise InputError(f"label_stride must be 1 or 8, got {self.label_stride}.")
        if self.label_stride == 8 and (self.width % 8 or self.height % 8):
            raise InputError("1/8 labels need a width and height divisible by 8.")
        if self.supersample < 1 or self.batch < 1 or self.max_keypoints < 16:
            raise InputError("supersample and batch must be >= 1, max_keypoints >= 16.")

    def camera(self) -> Camera:
        """The camera of every view (dgeo pixel convention)."""
        f = self.width / 2 / math.tan(math.radians(self.fov_deg) / 2)
        cx, cy = (self.width - 1) / 2, (self.height - 1) / 2
        params = [f, cx, cy, -0.02] if self.camera_model == "SIMPLE_RADIAL" else [f, f, cx, cy]
        return Camera(self.camera_model, self.width, self.height, params)


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``; :class:`InputError` otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"size must be WIDTHxHEIGHT, e.g. 640x480; got {text!r}.")
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise InputError(f"size must be positive, got {text!r}.")
    return w, h


@dataclass
class SynthSummary:
    """What :func:`write_dataset` wrote."""

    path: Path
    references: int
    queries: dict[str, int]
    sequences: dict[str, int]
    points3D: int
    mean_track_length: float
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def _seeds(base: int, group: int, n: int) -> torch.Tensor:
    """Per-view appearance seeds, distinct across groups (references, each condition, ...)."""
    return torch.arange(n, dtype=torch.int64) + (base * 1_000_003 + group * 100_003)


def _render_set(
    scene, camera, poses: Pose, condition: str, seeds: torch.Tensor, cfg: SynthConfig, tick
) -> Views:
    """Render ``poses`` in batches of ``cfg.batch``; concatenated :class:`Views`."""
    parts = []
    for start in range(0, poses.shape[0], cfg.batch):
        sl = slice(start, start + cfg.batch)
        parts.append(render_views(scene, camera, poses[sl], condition, seeds[sl], cfg.supersample))
        tick(len(parts[-1].rgb))
    return Views(*(torch.cat([getattr(p, k) for p in parts]) for k in vars(parts[0])))


def _write_views(root: Path, names: Sequence[str], views: Views, depth: bool = True) -> None:
    """PNG images under ``root/images`` and, with ``depth``, float32 depth under ``root/depth``."""
    depths = views.depth[:, 0].numpy()
    for name, img, d in zip(names, views.uint8().numpy(), depths, strict=True):
        image_path = root / "images" / name
        image_path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(image_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {image_path}")
        if not depth:
            continue
        depth_path = (root / "depth" / name).with_suffix(".npy")
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(depth_path, d.astype(np.float32))


def kfnet_transform(points: torch.Tensor) -> torch.Tensor:
    """KFNet's ``transform.txt`` of scene points ``(P, 3)``: centring and PCA, ``(4, 4)``."""
    pts = points.to(torch.float64)
    mean = pts.mean(0)
    _, vecs = torch.linalg.eigh(torch.cov((pts - mean).T))
    R = vecs.flip(-1).T  # principal axes first
    if torch.det(R) < 0:
        R[2] = -R[2]
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, -R @ mean
    return T


def _write_sequence(
    folder: Path, views: Views, poses: Pose, stride: int, camera: Camera | None = None
) -> None:
    """One KFNet sequence: images, scene-coordinate labels, lists, transform, poses and (with
    ``camera``) ``camera.txt`` (:func:`dgeo.data.sequences.write_camera_file`)."""

    names = [f"frame_{i:05d}.png" for i in range(poses.shape[0])]
    _write_views(folder, names, views, depth=False)  # sequences carry labels, not depth
    labels = []
    pts = views.points.permute(0, 2, 3, 1)
    valid = views.valid[:, 0]
    if stride > 1:  # the pixel at the centre of each 8x8 cell (DSAC*/ACE convention)
        c = stride // 2
        pts, valid = pts[:, c::stride, c::stride], valid[:, c::stride, c::stride]
    label = torch.cat([pts, valid[..., None].float()], -1)
    label[..., :3] = torch.where(valid[..., None], label[..., :3], -1.0)
    (folder / "labels").mkdir()
    for name, lab in zip(names, label.numpy(), strict=True):
        path = folder / "labels" / name.replace(".png", ".label")
        write_kfnet_label(path, lab)
        labels.append(f"labels/{path.name}")
    write_path_list(folder / "image_list.txt", [f"images/{n}" for n in names])
    write_path_list(folder / "label_list.txt", labels)
    every10 = views.points[::10].permute(0, 2, 3, 1)[views.valid[::10, 0]]
    write_transform(folder / "transform.txt", kfnet_transform(every10))
    write_hloc_results(folder / "poses.txt", [f"images/{n}" for n in names], poses)
    if camera is not None:
        write_camera_file(folder / "camera.txt", camera)


README = """dgeo synthetic dataset
scene: {scene}, seed {seed}, {width}x{height} {model} camera, rendered by dgeo {version}

images/references/      {refs} mapping images (condition overcast-reference)
images/queries/<cond>/  query images per condition: {queries}
depth/                  float32 .npy z-depth (metres, 0 = sky) for every image above
sfm/                    COLMAP model of the references: SIFT keypoints lifted with exact depth,
                        {points} points, mean track length {track:.1f}
queries_with_intrinsics.txt   hloc query list (COLMAP camera convention, name MODEL W H params)
queries_gt.txt          ground-truth query poses, hloc results format (name qw qx qy qz tx ty tz,
                        world-to-camera)
sequences/<cond>/       KFNet sequences ({sequences}): image_list.txt, label_list.txt
                        (raw float32 HxWx4: world xyz + validity, xyz = -1 where invalid, at
                        1/{stride} resolution), transform.txt, poses.txt (ground truth),
                        camera.txt (one line MODEL W H params, COLMAP convention);
                        overcast-reference/ is the mapping sequence, overcast-reference-test/
                        (when listed among the conditions) a held-out one

World: metres, z up. Every pose is cam_from_world (x_cam = R x_world + t).
Regenerate: dgeo synth OUT --scene {scene} --seed {seed} --references {refs} ...
"""


def write_dataset(
    out: str | os.PathLike,
    config: SynthConfig | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SynthSummary:
    """Render a dataset folder (see the module docstring for its layout).

    Args:
        out: the folder to create.
        config: :class:`SynthConfig`.
        overwrite: replace an existing non-empty ``out`` (only once the new one is complete).
        progress: ``progress(stage, done, total)`` callback.
    Raises:
        InputError: bad settings, or ``out`` exists, is not empty and ``overwrite`` is False.
    """
    from dgeo import __version__

    cfg = config or SynthConfig()
    cfg.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pick a new folder or pass --overwrite.")
    report = progress or (lambda *_: None)
    start_time = time.perf_counter()
    scene = make_scene(cfg.scene, cfg.seed, texture_dir=cfg.texture_dir)
    camera = cfg.camera()
    total = cfg.references + cfg.queries * len(cfg.conditions)
    total += cfg.sequence_length * (len(cfg.conditions) + 1)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        report("rendering", done, total)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # references and their COLMAP model
        ref_poses = random_viewpoints(scene, cfg.references, seed=cfg.seed)
        ref_names = [f"references/ref_{i:04d}.png" for i in range(cfg.references)]
        refs = _render_set(
            scene,
            camera,
            ref_poses,
            REFERENCE_CONDITION,
            _seeds(cfg.seed, 0, cfg.references),
            cfg,
            tick,
        )
        _write_views(tmp, ref_names, refs)
        report("mapping", 0, 1)
        ref_map = build_reference_map(
            ref_names, refs.uint8(), refs.depth, refs.surface, camera, ref_poses, cfg.max_keypoints
        )
        ref_map.write(tmp / "sfm")
        del refs

        # queries, one folder per condition
        q_names: list[str] = []
        q_poses: list[Pose] = []
        for k, cond in enumerate(cfg.conditions, start=1):
            poses = nearby_viewpoints(scene, ref_poses, cfg.queries, seed=cfg.seed + 7919 * k)
            names = [f"queries/{cond}/q_{i:04d}.png" for i in range(cfg.queries)]
            views = _render_set(
                scene, camera, poses, cond, _seeds(cfg.seed, k, cfg.queries), cfg, tick
            )
            _write_views(tmp, names, views)
            q_names += names
            q_poses.append(poses)
        write_queries_with_intrinsics(
            tmp / "queries_with_intrinsics.txt", q_names, Camera.stack([camera] * len(q_names))
        )
        write_hloc_results(tmp / "queries_gt.txt", q_names, Pose.cat(q_poses))

        # temporal sequences in KFNet's format
        sequences = {}
        if cfg.sequence_length:
            traj = driving_trajectory if cfg.scene == "street" else handheld_trajectory
            for k, cond in enumerate((REFERENCE_CONDITION, *cfg.conditions)):
                rate = {} if cfg.sequence_fps is None else {"fps": cfg.sequence_fps}
                path_seed = cfg.seed + 104729 * (1 if cfg.shared_path else k + 1)
                poses = traj(scene, cfg.sequence_length, seed=path_seed, **rate)
                seeds = _seeds(cfg.seed, 1000 + k, cfg.sequence_length)
                views = _render_set(scene, camera, poses, cond, seeds, cfg, tick)
                # the reference condition among the query conditions: a second, held-out
                # same-condition sequence (another path through the scene)
                folder = f"{cond}-test" if k and cond == REFERENCE_CONDITION else cond
                _write_sequence(tmp / "sequences" / folder, views, poses, cfg.label_stride, camera)
                sequences[folder] = cfg.sequence_length

        lengths = (ref_map.track_offsets[1:] - ref_map.track_offsets[:-1]).double()
        summary = SynthSummary(
            path=out,
            references=cfg.references,
            queries={c: cfg.queries for c in cfg.conditions},
            sequences=sequences,
            points3D=ref_map.num_points,
            mean_track_length=float(lengths.mean()) if len(lengths) else 0.0,
            seconds=0.0,
        )
        atomic_write_text(
            tmp / "README.txt",
            README.format(
                scene=cfg.scene,
                seed=cfg.seed,
                width=cfg.width,
                height=cfg.height,
                model=cfg.camera_model,
                version=__version__,
                refs=cfg.references,
                queries=", ".join(f"{c} {n}" for c, n in summary.queries.items()) or "none",
                points=summary.points3D,
                track=summary.mean_track_length,
                sequences=", ".join(f"{c} {n} frames" for c, n in sequences.items()) or "none",
                stride=cfg.label_stride,
            ),
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - start_time
    return summary


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing it only now if it exists."""
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
