"""Localize the same queries with dgeo and with an hloc-style SIFT baseline; recall, errors, time.

Methods, all on the same queries:

- ``dgeo unet-small``: :class:`dgeo.pipeline.localizer.Localizer` with its defaults (the U-Net
  shipped in the package, GeM retrieval of the top 10 references, sparse-to-dense matching,
  LO-RANSAC, feature-metric refinement; skipped with ``--no-shipped``); ``dgeo dense-sift``
  likewise with the weight-free :class:`dgeo.models.DenseSIFT`; ``dgeo unet`` / ``dgeo vgg`` with
  the trained models of ``--unet-weights`` / ``--vgg-weights``.
- ``... no refine``: the same run stopped after RANSAC (``refine=False``). Extraction, retrieval
  and matching are shared with the refined run (the Localizer's stages are called one by one), so
  its time is that run's minus the refinement.
- ``sift``: the hloc pipeline with SIFT. RootSIFT keypoints and descriptors of the kind the
  model was built with: on the synthetic street OpenCV's (the model's keypoints are OpenCV SIFT
  detections; reference descriptors are computed at the model's keypoints that have a 3D point
  with ``sift.compute`` and the size and orientation of the detection they come from; queries are
  detected with ``contrastThreshold=0.02``, COLMAP's peak threshold, instead of OpenCV's 0.04,
  which finds almost nothing in dark images), on fox pycolmap's (hloc's extractor); mutual
  nearest neighbours with
  Lowe's ratio test (0.8) against the **same** retrieved references as the first dgeo row (the
  default, its ``LocalizationResult.retrieved``); the 2D-3D matches of all of them pooled into one
  ``pycolmap.estimate_and_refine_absolute_pose`` (12 px, keypoints and principal point shifted by
  +0.5 into COLMAP's pixel convention). A failure falls back to the top retrieved reference's
  pose, as hloc and dgeo do.

Data:

- ``synthetic``: the built-in street (``dgeo synth``: ``write_dataset``), references under
  ``overcast-reference`` and queries under ``--conditions``, rendered once into ``--out``.
  Thresholds: RobotCar's (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°).
- ``fox``: the 67 real frames of ``--fox`` (``shared/data/fox_instant_ngp``; skipped if absent).
  The 50 frames of instant-ngp's current repository are the references and the 17 frames it
  deleted are the queries (its ``SOURCE.md``). The map: pycolmap SIFT on the references
  (longest side ``--fox-sift-size``, 4000 features), RootSIFT mutual-NN + ratio matches between
  each reference and its 10 nearest references by viewing direction, kept when they satisfy
  the epipolar geometry of the given poses (Sampson error < 4 px), tracks by union-find,
  multi-view DLT with the given poses, observations reprojecting within 4 px and triangulation
  angles above 1.5°; written as a COLMAP model with
  :func:`dgeo.io.colmap.write_reconstruction` and cached in ``--out`` (about 1.5 min the first
  time). dgeo works at a longest side of ``--fox-size`` (360) px. Queries are localized as they
  are (``day``) and with a synthetic ``night`` look (25 % brightness, gamma
  1.5, read and shot noise, 8-bit), applied to the query images only. Poses are instant-ngp's
  normalised COLMAP frame (arbitrary units): the thresholds are fractions of ``s``, the median
  distance from a reference camera to its nearest other reference camera: (5 % s, 2°),
  (10 % s, 5°), (100 % s, 10°); position errors are printed in units of ``s``.

Columns: recall (%) at each threshold, median position (m, or ``s`` for fox) and rotation (°)
errors, failures (no pose), and wall time per query (ms) per stage: dgeo's ``extract``,
``retrieve``, ``match``, ``ransac``, ``refine`` from ``LocalizationResult.timings`` (batched
stages divided by the batch); SIFT's ``extract`` (detection + description), ``match`` and
``pnp`` (shown under ``ransac``); its retrieval is dgeo's and not counted. The reference side
(index, model, descriptors) is built once and not counted per query. torch and OpenCV use
``--threads`` threads. A last table checks the targets: dgeo's finest recall and median
rotation error against SIFT's, its time per query against SIFT's plus the same retrieval, and
its finest recall against RANSAC alone.

A default run (synthetic: 24 references, 12 queries under each of 4 conditions at 320x240;
fox: 17 queries by day and by night) takes about 5 minutes on a 2-core CPU once the fox map is
cached in ``--out``, most of it dense SIFT; ``--quick`` (4 queries under night and snow; 9 fox
queries at 320 px) about 2.

    python benchmarks/localize.py [--quick] [--conditions overcast-reference,night,snow,dusk]
        [--size 320x240] [--references 24] [--queries 12] [--fox PATH | --no-fox]
        [--fox-size 360] [--ratio 0.9] [--unet-weights PATH] [--vgg-weights PATH]
        [--out DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import torch
from rich.console import Console
from rich.table import Table

from dgeo.data.synthetic.conditions import CONDITIONS
from dgeo.data.synthetic.dataset import SynthConfig, parse_size, write_dataset
from dgeo.eval import Threshold, evaluate, get_thresholds
from dgeo.geometry import Camera, Pose
from dgeo.io.colmap import ReferenceMap, camera_to_colmap, load_reference_map, write_reconstruction
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics
from dgeo.io.images import read_image
from dgeo.models import DEFAULT_WEIGHTS
from dgeo.pipeline.localizer import Localizer, LocalizerConfig

DEFAULT_CONDITIONS = ("overcast-reference", "night", "snow", "dusk")
BEAT_CONDITIONS = ("night", "snow")  # synthetic conditions where dgeo must beat SIFT
FOX_QUERIES = tuple(
    f"{i:04d}.jpg" for i in (5, 16, 17, 24, 32, 51, 68, 71, 75, 83, 87, 88, 93, 99, 104, 106, 113)
)
FOX_FRACTIONS = ((0.05, 2.0), (0.10, 5.0), (1.0, 10.0))
STAGES = ("extract", "retrieve", "match", "ransac", "refine")
RATIO = 0.8
SIFT = "sift (hloc-style)"
QUERY_CONTRAST = 0.02  # OpenCV SIFT on queries: COLMAP's (hloc's) detection threshold
PNP_THRESHOLD_PX = 12.0


# ------------------------------------------------------------------------------------- data
@dataclass
class Dataset:
    """One map and its query sets; every image in memory as ``(3, H, W)`` float in [0, 1]."""

    name: str
    reference: ReferenceMap
    images_dir: Path
    queries: dict[str, tuple[list[str], list[torch.Tensor], list[Camera]]]  # condition -> ...
    gt: dict[str, Pose]
    thresholds: tuple[Threshold, ...]
    unit: str  # name of the position unit in the tables
    unit_scale: float  # map units per table unit
    max_size: int | None  # dgeo's working size (None: LocalizerConfig's default)
    sift_max_side: int | None  # SIFT's working size (references and queries)
    sift_features: int  # SIFT features per reference image (as the model was built)
    query_features: int  # SIFT features per query image
    sift_kind: str = "opencv"  # the SIFT of the model's keypoints: "opencv" or "colmap"
    ref_sift: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # see reference_sift
    notes: list[str] = field(default_factory=list)


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def synthetic_dataset(args, console: Console) -> Dataset:
    """Render (or reuse) the synthetic street and read it back like real data."""
    w, h = parse_size(args.size)
    cfg = SynthConfig(
        scene="street", seed=args.seed, references=args.references, queries=args.queries,
        conditions=tuple(args.conditions), width=w, height=h,
    )  # fmt: skip
    folder = args.out / f"synthetic-{_hash(dataclasses.asdict(cfg))}"
    if not (folder / "queries_gt.txt").exists():
        t = time.perf_counter()
        s = write_dataset(folder, cfg, overwrite=True)
        console.print(
            f"synthetic: rendered {cfg.references} references and {sum(s.queries.values())} "
            f"queries at {w}x{h}, {s.points3D} points, in {time.perf_counter() - t:.0f} s"
        )
    ref = load_reference_map(folder / "sfm")
    names, cams = read_queries_with_intrinsics(folder / "queries_with_intrinsics.txt")
    gt_names, gt_poses = read_hloc_results(folder / "queries_gt.txt")
    gt = {n: gt_poses[i] for i, n in enumerate(gt_names)}
    queries: dict[str, tuple[list, list, list]] = {}
    for i, name in enumerate(names):
        cond = name.split("/")[1]
        entry = queries.setdefault(cond, ([], [], []))
        entry[0].append(name)
        entry[1].append(read_image(folder / "images" / name))
        entry[2].append(cams[i])
    return Dataset(
        name="synthetic", reference=ref, images_dir=folder / "images", queries=queries, gt=gt,
        thresholds=get_thresholds("robotcar"), unit="m", unit_scale=1.0, max_size=None,
        sift_max_side=None, sift_features=cfg.max_keypoints, query_features=args.query_features,
        notes=[f"{ref.num_images} references, {ref.num_points} points, {w}x{h}"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------- SIFT
def sift_detector(nfeatures: int, contrast: float = 0.04) -> cv2.SIFT:
    """OpenCV SIFT; ``contrast`` 0.04 is OpenCV's default (the synthetic model's keypoints),
    0.02 equals COLMAP's peak threshold (0.02 / 3 per octave layer), which hloc's SIFT uses."""
    return cv2.SIFT_create(nfeatures=nfeatures, contrastThreshold=contrast)


def rootsift(desc: np.ndarray | None) -> np.ndarray:
    """RootSIFT (L1 normalisation, square root): unit-norm float32 rows."""
    if desc is None or len(desc) == 0:
        return np.zeros((0, 128), np.float32)
    d = desc.astype(np.float32)
    d /= d.sum(1, keepdims=True) + 1e-8
    return np.sqrt(d)


def gray_at(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """A uint8 RGB image ``(H, W, 3)`` as gray, shrunk so its longest side is ``max_side``;
    the scale factor."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    if max_side is None or max(h, w) <= max_side:
        return g, 1.0
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA), s


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def detect_sift(image: np.ndarray, max_side: int | None, nfeatures: int, kind: str = "opencv"):
    """SIFT keypoints (original pixels, dgeo/OpenCV convention) and unit RootSIFT descriptors.

    ``kind``: ``"opencv"`` (``cv2.SIFT``) or ``"colmap"`` (pycolmap's SIFT, hloc's extractor:
    a lower peak threshold than OpenCV's contrast threshold, so far more keypoints in dark
    images; L1-root descriptors).
    """
    g, s = gray_at(image, max_side)
    if kind == "opencv":
        kps, desc = sift_detector(nfeatures, QUERY_CONTRAST).detectAndCompute(g, None)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        return (xy + 0.5) / s - 0.5, rootsift(desc)
    kps, desc = colmap_sift(nfeatures).extract_from_uint8_array(g)
    xy = np.array([(k.x, k.y) for k in kps], np.float64).reshape(-1, 2)  # corner origin
    d = np.asarray(desc.data, np.float32).reshape(-1, 128)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-8
    return xy / s - 0.5, d


_COLMAP_SIFT: dict[int, object] = {}


def colmap_sift(nfeatures: int):
    """pycolmap's CPU SIFT extractor (cached per feature count)."""
    if nfeatures not in _COLMAP_SIFT:
        opts = pycolmap.FeatureExtractionOptions()
        opts.sift.max_num_features = nfeatures
        opts.num_threads = torch.get_num_threads()
        _COLMAP_SIFT[nfeatures] = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
    return _COLMAP_SIFT[nfeatures]


def mutual_ratio_matches(dq: torch.Tensor, dr: torch.Tensor, ratio: float = RATIO):
    """Mutual nearest neighbours passing Lowe's ratio test on unit descriptors: index pairs."""
    if len(dq) < 2 or len(dr) < 2:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    sim = dq @ dr.T
    top = sim.topk(2, dim=1)
    dist = (2 - 2 * top.values).clamp(min=0)  # squared distances of unit vectors
    nn = top.indices[:, 0]
    ok = dist[:, 0] <= ratio**2 * dist[:, 1]
    ok &= sim.argmax(0)[nn] == torch.arange(len(dq))
    q = torch.nonzero(ok)[:, 0]
    return q, nn[q]


def reference_sift(data: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per reference image: RootSIFT descriptors ``(K, 128)`` at the model's keypoints that have
    a 3D point and come from a SIFT detection (within 1.5 px), and those points' indices.

    Maps built here (fox) keep the descriptors of their detections (``data.ref_sift``); for the
    synthetic model the OpenCV detections are repeated on the reference images and described
    at the model's keypoints with ``sift.compute``."""
    if data.ref_sift is not None:
        return data.ref_sift
    ref = data.reference
    out = []
    for i, name in enumerate(ref.names):
        img = to_uint8(read_image(data.images_dir / name))
        g, s = gray_at(img, data.sift_max_side)
        sift = sift_detector(data.sift_features)
        dets = sift.detect(g, None)
        kp, _, pidx = ref.observations(i)
        if not dets or len(kp) == 0:
            out.append((torch.zeros(0, 128), torch.zeros(0, dtype=torch.int64)))
            continue
        det_xy = np.array([k.pt for k in dets], np.float64)
        xy = (kp.numpy() + 0.5) * s - 0.5  # model keypoints at the detection scale
        d2 = ((xy[:, None] - det_xy[None]) ** 2).sum(-1)
        near = d2.argmin(1)
        keep = np.nonzero(d2[np.arange(len(xy)), near] <= 1.5**2)[0]
        cv_kps = [
            cv2.KeyPoint(float(xy[j, 0]), float(xy[j, 1]), dets[near[j]].size,
                         dets[near[j]].angle, dets[near[j]].response, dets[near[j]].octave)
            for j in keep
        ]  # fmt: skip
        cv_kps, desc = sift.compute(g, cv_kps)
        # compute() may drop keypoints too close to the border: re-associate by position
        got = np.array([k.pt for k in cv_kps], np.float64).reshape(-1, 2)
        back = ((got[:, None] - xy[keep][None]) ** 2).sum(-1).argmin(1) if len(got) else []
        out.append((torch.from_numpy(rootsift(desc)), pidx[keep[back]]))
    return out


def sift_localize(data: Dataset, images, cameras, retrieved, ref_sift):
    """The hloc-style SIFT baseline for one query set: poses, success flags and timings."""
    ref = data.reference
    index = {n: i for i, n in enumerate(ref.names)}
    poses, success, timings = [], [], []
    pycolmap.set_random_seed(0)
    for image, cam, cands in zip(images, cameras, retrieved, strict=True):
        t0 = time.perf_counter()
        xy, desc = detect_sift(
            to_uint8(image), data.sift_max_side, data.query_features, data.sift_kind
        )
        dq = torch.from_numpy(desc)
        t1 = time.perf_counter()
        pairs = set()
        for c in cands:
            dr, pidx = ref_sift[index[c]]
            qi, ri = mutual_ratio_matches(dq, dr)
            pairs.update(zip(qi.tolist(), pidx[ri].tolist(), strict=True))
        t2 = time.perf_counter()
        pose, ok = ref.cam_from_world[index[cands[0]]], False
        if len(pairs) >= 4:
            qi, pi = (np.array(v) for v in zip(*sorted(pairs), strict=True))
            res = pycolmap.estimate_and_refine_absolute_pose(
                xy[qi] + 0.5, ref.xyz[pi].numpy(), camera_to_colmap(cam.double()),
                {"ransac": {"max_error": PNP_THRESHOLD_PX}}, {},
            )  # fmt: skip
            if res is not None:
                pose = Pose.from_matrix(torch.from_numpy(res["cam_from_world"].matrix()))
                ok = True
        t3 = time.perf_counter()
        poses.append(pose.double())
        success.append(ok)
        timings.append({"extract": t1 - t0, "match": t2 - t1, "ransac": t3 - t2})
    return poses, success, timings


# ------------------------------------------------------------------------------------- fox
def fox_cameras(root: Path):
    """The shared camera (dgeo convention) and every frame's ``cam_from_world`` (OpenCV axes)."""
    meta = json.loads((root / "transforms.json").read_text())
    w, h = int(meta["w"]), int(meta["h"])
    params = [meta["fl_x"], meta["fl_y"], meta["cx"] - 0.5, meta["cy"] - 0.5,
              meta["k1"], meta["k2"], meta["p1"], meta["p2"]]  # fmt: skip
    camera = Camera("OPENCV", w, h, torch.tensor(params, dtype=torch.float64))
    poses = {}
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # NeRF/OpenGL camera axes -> OpenCV's
    for frame in meta["frames"]:
        c2w = np.array(frame["transform_matrix"], np.float64) @ flip
        poses[Path(frame["file_path"]).name] = Pose.from_matrix(
            torch.from_numpy(np.linalg.inv(c2w))
        )
    return camera, poses


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _triangulate(rays: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Multi-view DLT of one track: normalised rays ``(n, 2)``, poses ``(n, 3, 4)``."""
    A = np.concatenate([rays[:, :1] * P[:, 2] - P[:, 0], rays[:, 1:2] * P[:, 2] - P[:, 1]])
    X = np.linalg.svd(A)[2][-1]
    return X[:3] / X[3] if abs(X[3]) > 1e-12 else np.full(3, np.nan)


def build_fox_map(
    root: Path,
    names: list[str],
    camera: Camera,
    poses: dict[str, Pose],
    max_side: int,
    nfeatures: int,
    out: Path,
    console: Console,
) -> ReferenceMap:
    """Triangulate SIFT matches of the references with their given poses (module docstring)."""
    t0 = time.perf_counter()
    kps, descs = [], []
    for name in names:
        img = cv2.cvtColor(cv2.imread(str(root / "images" / name)), cv2.COLOR_BGR2RGB)
        xy, d = detect_sift(img, max_side, nfeatures, "colmap")
        kps.append(xy)
        descs.append(torch.from_numpy(d))
    n_img = len(names)
    T = Pose.stack([poses[n] for n in names]).double()
    Rs, ts = T.R.numpy(), T.t.numpy()
    f = float(camera.f.mean())
    rays = [camera.unproject(torch.from_numpy(k)).numpy()[:, :2] for k in kps]
    # pairs: each reference with its 10 nearest by viewing direction
    z = Rs[:, 2, :]
    angle = np.arccos(np.clip(z @ z.T, -1, 1))
    np.fill_diagonal(angle, np.inf)
    pairs = {(min(i, j), max(i, j)) for i in range(n_img) for j in np.argsort(angle[i])[:10]}
    offsets = np.cumsum([0] + [len(k) for k in kps])
    parent = np.arange(offsets[-1])
    n_matches = 0
    for i, j in sorted(pairs):
        a, b = mutual_ratio_matches(descs[i], descs[j])
        if len(a) == 0:
            continue
        a, b = a.numpy(), b.numpy()
        R = Rs[j] @ Rs[i].T
        t = ts[j] - R @ ts[i]
        E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
        x1 = np.concatenate([rays[i][a], np.ones((len(a), 1))], 1)
        x2 = np.concatenate([rays[j][b], np.ones((len(b), 1))], 1)
        Ex1, Etx2 = x1 @ E.T, x2 @ E
        num = (x2 * Ex1).sum(1) ** 2
        den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
        ok = np.sqrt(num / np.maximum(den, 1e-30)) * f < 4.0
        for u, v in zip(offsets[i] + a[ok], offsets[j] + b[ok], strict=True):
            ru, rv = _find(parent, int(u)), _find(parent, int(v))
            if ru != rv:
                parent[ru] = rv
        n_matches += int(ok.sum())
    roots = np.array([_find(parent, k) for k in range(offsets[-1])])
    image_of = np.repeat(np.arange(n_img), np.diff(offsets))
    order = np.argsort(roots, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(roots[order]))[0] + 1)
    P = np.concatenate([Rs, ts[..., None]], -1)
    centers = T.center().numpy()
    xyz, t_img, t_kp, lengths = [], [], [], []
    for g in groups:
        if len(g) < 2 or len(np.unique(image_of[g])) < len(g):
            continue  # singletons, and tracks that see one image twice (ambiguous)
        imgs, kpi = image_of[g], g - offsets[image_of[g]]
        r = np.stack([rays[m][k] for m, k in zip(imgs, kpi, strict=True)])
        for _ in range(2):  # triangulate, drop observations beyond 4 px, once more
            X = _triangulate(r, P[imgs])
            if not np.isfinite(X).all():
                break
            pc = np.einsum("nij,j->ni", Rs[imgs], X) + ts[imgs]
            err = np.linalg.norm(pc[:, :2] / np.maximum(pc[:, 2:], 1e-9) - r, axis=1) * f
            good = (pc[:, 2] > 0) & (err < 4.0)
            if good.all() or good.sum() < 2:
                break
            imgs, kpi, r = imgs[good], kpi[good], r[good]
        if not np.isfinite(X).all() or not good.all() or len(imgs) < 2:
            continue
        d = X - centers[imgs]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        if np.degrees(np.arccos(np.clip((d @ d.T).min(), -1, 1))) < 1.5:
            continue
        xyz.append(X)
        t_img.append(imgs)
        t_kp.append(kpi)
        lengths.append(len(imgs))
    rmap = write_reconstruction(
        out, names, Camera.stack([camera] * n_img), T, [torch.from_numpy(k) for k in kps],
        np.array(xyz), np.concatenate(t_img), np.concatenate(t_kp),
        np.concatenate([[0], np.cumsum(lengths)]),
    )  # fmt: skip
    np.savez(out.parent / "sift.npz", *[d.numpy().astype(np.float16) for d in descs])
    console.print(
        f"fox: mapped {n_img} references in {time.perf_counter() - t0:.0f} s: {len(pairs)} pairs, "
        f"{n_matches} verified matches, {rmap.num_points} points, mean track length "
        f"{np.mean(lengths):.1f}"
    )
    return rmap


def night_look(image: np.ndarray, seed: int) -> np.ndarray:
    """A synthetic night photo of a uint8 RGB image: 25 % brightness, gamma 1.5 (darker
    shadows), read and shot noise, 8-bit quantisation."""
    x = 0.25 * (image.astype(np.float32) / 255) ** 1.5
    rng = np.random.default_rng(seed)
    x = x + rng.standard_normal(x.shape).astype(np.float32) * np.sqrt(0.008**2 + 0.002 * x)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def fox_dataset(args, console: Console) -> Dataset | None:
    root = args.fox
    if root is None or not (root / "transforms.json").exists():
        console.print(f"[yellow]fox: {root} holds no transforms.json; skipped.[/]")
        return None
    camera, poses = fox_cameras(root)
    refs = sorted(n for n in poses if n not in FOX_QUERIES)
    missing = [n for n in (*refs, *FOX_QUERIES) if not (root / "images" / n).exists()]
    if missing:
        console.print(
            f"[yellow]fox: {len(missing)} images missing (e.g. {missing[0]}); skipped.[/]"
        )
        return None
    settings = {"refs": refs, "side": args.fox_sift_size, "features": args.fox_features, "v": 2}
    folder = args.out / f"fox-{_hash(settings)}"
    if (folder / "sfm" / "points3D.bin").exists() and (folder / "sift.npz").exists():
        ref = load_reference_map(folder / "sfm")
    else:
        ref = build_fox_map(root, refs, camera, poses, args.fox_sift_size, args.fox_features,
                            folder / "sfm", console)  # fmt: skip
    with np.load(folder / "sift.npz") as f:
        descs = [torch.from_numpy(f[f"arr_{i}"].astype(np.float32)) for i in range(len(refs))]
    ref_sift = []
    for i, d in enumerate(descs):
        idx = ref.keypoint_point_index[i]
        ref_sift.append((d[idx >= 0], idx[idx >= 0]))
    centers = ref.cam_from_world.center()
    d = torch.cdist(centers, centers)
    d.fill_diagonal_(math.inf)
    spacing = float(d.min(1).values.median())
    queries: dict[str, tuple[list, list, list]] = {"day": ([], [], []), "night": ([], [], [])}
    step = max(1, math.ceil(len(FOX_QUERIES) / args.fox_queries))
    chosen = FOX_QUERIES[::step]
    for k, name in enumerate(FOX_QUERIES):
        if name not in chosen:
            continue
        img = cv2.cvtColor(cv2.imread(str(root / "images" / name)), cv2.COLOR_BGR2RGB)
        for cond, im in (("day", img), ("night", night_look(img, k))):
            queries[cond][0].append(f"{cond}/{name}")
            queries[cond][1].append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
            queries[cond][2].append(camera)
    gt = {f"{c}/{n}": poses[n] for c in ("day", "night") for n in chosen}
    return Dataset(
        name="fox", reference=ref, images_dir=root / "images", queries=queries, gt=gt,
        thresholds=get_thresholds([(a * spacing, r) for a, r in FOX_FRACTIONS]), unit="s",
        unit_scale=spacing, max_size=args.fox_size, sift_max_side=args.fox_sift_size,
        sift_features=args.fox_features, query_features=args.fox_features, sift_kind="colmap",
        ref_sift=ref_sift,
        notes=[f"{ref.num_images} references, {ref.num_points} points, s = {spacing:.4f} "
               f"(median nearest-reference spacing, map units)"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------- methods
@dataclass
class Run:
    """One method on one query set: poses by name, success flags and per-query timings."""

    method: str
    condition: str
    names: list[str]
    poses: list[Pose]
    success: list[bool]
    timings: list[dict[str, float]]
    retrieved: list[list[str]] | None = None


def dgeo_runs(loc: Localizer, label: str, condition: str, names, images, cameras, chunk: int):
    """The Localizer's stages once, RANSAC alone and with refinement: two :class:`Run`.

    Calls the stages of :meth:`Localizer.localize_many` one by one so that extraction, retrieval
    and matching are shared by the two solves (RANSAC is seeded: both see the same poses).
    """
    base = loc.config
    runs = {r: Run(f"{label}{'' if r else ' no refine'}", condition, [], [], [], [], [])
            for r in (False, True)}  # fmt: skip
    for s in range(0, len(names), chunk):
        sl = slice(s, s + chunk)
        queries = [
            loc._prepare(*a)
            for a in zip(names[sl], images[sl], cameras[sl], [None] * len(names[sl]), strict=True)
        ]
        cands = loc._retrieve(queries)
        matches = loc._match(queries, cands)
        for refine in (False, True):
            loc.config = dataclasses.replace(base, refine=refine)
            try:
                results = loc._solve(queries, cands, matches)
            finally:
                loc.config = base
            run = runs[refine]
            for r in results:
                run.names.append(r.name)
                run.poses.append(r.pose)
                run.success.append(r.success)
                run.timings.append({k: v for k, v in r.timings.items() if refine or k != "refine"})
                run.retrieved.append(list(r.retrieved))
            for q in queries:
                q.timings.pop("refine", None)
    return [runs[True], runs[False]]


def summarize(data: Dataset, run: Run) -> dict:
    """Recalls, medians (in the dataset's unit) and mean stage times (ms) of a run."""
    gt_names = run.names
    gt = Pose.stack([data.gt[n] for n in gt_names])
    ev = evaluate((run.names, Pose.stack(run.poses)), (gt_names, gt), data.thresholds)
    s = ev.summary()
    times = {k: 1e3 * float(np.mean([t.get(k, 0.0) for t in run.timings])) for k in STAGES}
    times = {k: v for k, v in times.items() if any(k in t for t in run.timings)}
    return {
        "dataset": data.name, "condition": run.condition, "method": run.method,
        "num_queries": s.num_queries, "num_failed": int(len(run.success) - sum(run.success)),
        "recall": list(s.recall),
        "median_position": s.median_translation / data.unit_scale,
        "median_rotation_deg": s.median_rotation_deg,
        "ms": times, "ms_total": sum(times.values()),
        "position_errors": (ev.translation_error / data.unit_scale).tolist(),
        "rotation_errors_deg": ev.rotation_error_deg.tolist(),
    }  # fmt: skip


def run_dataset(data: Dataset, args, console: Console) -> list[dict]:
    """Every method on every query set of ``data``; rows of :func:`summarize`."""
    base = LocalizerConfig()
    if data.max_size is not None:
        base = dataclasses.replace(base, max_size=data.max_size)
    if args.ratio is not None:
        base = dataclasses.replace(base, ratio=args.ratio)
    extractors = []  # the default first: SIFT gets its retrieval
    if base.features == "unet" and not args.no_shipped and DEFAULT_WEIGHTS.is_file():
        extractors.append(("unet-small", base))
    extractors.append(("dense-sift", dataclasses.replace(base, features="dense-sift")))
    for kind, weights in (("unet", args.unet_weights), ("vgg", args.vgg_weights)):
        if weights:
            cfg = dataclasses.replace(base, features=kind, weights=str(weights))
            extractors.append((kind, cfg))
    runs: list[Run] = []
    retrieved: dict[str, list[list[str]]] = {}
    for label, cfg in extractors:
        t = time.perf_counter()
        loc = Localizer(data.reference, data.images_dir, cfg, device=args.device,
                        cache_dir=args.out / "cache")  # fmt: skip
        how = "loaded" if loc.from_cache else "built"
        console.print(f"{data.name}: dgeo {label} reference index {how} in "
                      f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        for cond, (names, images, cams) in data.queries.items():
            t = time.perf_counter()
            pair = dgeo_runs(loc, f"dgeo {label}", cond, names, images, cams, args.chunk)
            runs += pair
            retrieved.setdefault(cond, pair[0].retrieved)
            print(f"  {data.name} {cond:<20} dgeo {label:<12} {time.perf_counter() - t:6.1f} s",
                  file=sys.stderr)  # fmt: skip
        del loc
    t = time.perf_counter()
    ref_sift = reference_sift(data)
    console.print(f"{data.name}: SIFT reference descriptors in {time.perf_counter() - t:.1f} s")
    for cond, (names, images, cams) in data.queries.items():
        t = time.perf_counter()
        poses, ok, timings = sift_localize(data, images, cams, retrieved[cond], ref_sift)
        runs.append(Run(SIFT, cond, list(names), poses, ok, timings))
        print(f"  {data.name} {cond:<20} sift {time.perf_counter() - t:6.1f} s", file=sys.stderr)
    order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in runs))}
    conds = list(data.queries)
    runs.sort(key=lambda r: (conds.index(r.condition), order[r.method]))
    return [summarize(data, r) for r in runs]


# ------------------------------------------------------------------------------------ report
def table(data: Dataset, rows: list[dict]) -> Table:
    th = data.thresholds
    if data.unit == "m":
        labels = [f"{x.translation_m:g}m\n{x.rotation_deg:g}°" for x in th]
    else:
        labels = [f"{a:g}s\n{r:g}°" for a, r in FOX_FRACTIONS]
    t = Table(title=f"{data.name}: recall (%), median errors, ms per query ({data.notes[0]})")
    for c in ("condition", "method", "N", "fail", *labels, f"med\n{data.unit}", "med\n°",
              *STAGES, "total"):  # fmt: skip
        t.add_column(c, justify="left" if c in ("condition", "method") else "right")
    prev = None
    for r in rows:
        if prev is not None and r["condition"] != prev:
            t.add_section()
        prev = r["condition"]
        t.add_row(
            r["condition"], r["method"], str(r["num_queries"]), str(r["num_failed"]),
            *(f"{100 * x:.1f}" for x in r["recall"]),
            f"{r['median_position']:.3f}", f"{r['median_rotation_deg']:.2f}",
            *(f"{r['ms'][k]:.0f}" if k in r["ms"] else "-" for k in STAGES),
            f"{r['ms_total']:.0f}",
        )  # fmt: skip
    return t


def targets(rows: list[dict]) -> Table:
    """The comparisons the team reports: fine recall and rotation medians against SIFT, the
    refinement against RANSAC alone, and time per query against SIFT."""
    by = {(r["dataset"], r["condition"], r["method"]): r for r in rows}
    t = Table(title="targets: each dgeo model against the SIFT baseline and against RANSAC alone")
    left = ("dataset", "condition", "method", "measure")
    for c in (*left, "dgeo", "reference", "met"):
        t.add_column(c, justify="left" if c in left else "right")
    for (ds, cond, method), r in by.items():
        if not method.startswith("dgeo ") or method.endswith(" no refine"):
            continue
        sift, raw = by.get((ds, cond, SIFT)), by.get((ds, cond, f"{method} no refine"))
        name = method.removeprefix("dgeo ")
        fine = f"recall {r['recall'][0] * 100:.1f}%"
        if sift:
            beat = ds == "synthetic" and cond in BEAT_CONDITIONS  # the issue: beat, not equal
            ok = r["recall"][0] > sift["recall"][0] if beat else r["recall"][0] >= sift["recall"][0]
            t.add_row(ds, cond, name, f"finest recall {'beats' if beat else 'vs'} SIFT", fine,
                      f"{sift['recall'][0] * 100:.1f}%", "yes" if ok else "no")  # fmt: skip
            ratio = r["median_rotation_deg"] / max(sift["median_rotation_deg"], 1e-9)
            t.add_row(ds, cond, name, "median rotation vs SIFT (within 2x)",
                      f"{r['median_rotation_deg']:.3f}°", f"{sift['median_rotation_deg']:.3f}°",
                      f"{ratio:.1f}x {'yes' if ratio <= 2 else 'no'}")  # fmt: skip
            dg = r["ms_total"]
            sf = sift["ms_total"] + r["ms"].get("retrieve", 0.0)
            verdict = f"{dg / max(sf, 1e-9):.1f}x {'yes' if dg < sf else 'no'}"
            t.add_row(ds, cond, name, "ms per query vs SIFT (+ same retrieval)", f"{dg:.0f}",
                      f"{sf:.0f}", verdict)  # fmt: skip
        if raw:
            ok = r["recall"][0] > raw["recall"][0] or (r["recall"][0] == raw["recall"][0] == 1)
            t.add_row(ds, cond, name, "finest recall vs RANSAC alone", fine,
                      f"{raw['recall'][0] * 100:.1f}%", "yes" if ok else "no")  # fmt: skip
        t.add_section()
    return t


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller run: 4 queries per condition, night and snow; "
                        "9 fox queries, dgeo at 320 px")  # fmt: skip
    p.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                   help="synthetic query conditions, comma-separated, or 'all': "
                        f"{', '.join(CONDITIONS)}")  # fmt: skip
    p.add_argument("--size", default="320x240", help="synthetic image size")
    p.add_argument("--references", type=int, default=24, help="synthetic references")
    p.add_argument("--queries", type=int, default=12, help="synthetic queries per condition")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--query-features", type=int, default=2048, help="SIFT features per query")
    p.add_argument("--fox", type=Path, default=Path("/work/shared/data/fox_instant_ngp"),
                   help="the fox_instant_ngp folder")  # fmt: skip
    p.add_argument("--no-fox", action="store_true", help="skip the fox data")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic street")
    p.add_argument("--fox-size", type=int, default=360, help="dgeo's longest side on fox")
    p.add_argument("--fox-queries", type=int, default=17, help="fox queries (every k-th of 17)")
    p.add_argument("--fox-sift-size", type=int, default=960, help="SIFT's longest side on fox")
    p.add_argument("--fox-features", type=int, default=4000, help="SIFT features per fox image")
    p.add_argument("--unet-weights", type=Path, help="a trained U-Net (dgeo.models.save file)")
    p.add_argument("--no-shipped", action="store_true",
                   help="skip the shipped U-Net (dgeo.models.DEFAULT_WEIGHTS)")  # fmt: skip
    p.add_argument("--vgg-weights", type=Path, help="a VGG-16 checkpoint (S2DHM hypercolumns)")
    p.add_argument("--ratio", type=float, help="dgeo's ratio test (default: LocalizerConfig's)")
    p.add_argument("--device", default="cpu", help="torch device of dgeo")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    p.add_argument("--chunk", type=int, default=8, help="dgeo queries per batch")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dgeo-bench-localize",
                   help="cache of rendered data, the fox map and reference indices")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the rows (and per-query errors) here")
    args = p.parse_args(argv)
    if args.conditions.strip().lower() == "all":
        args.conditions = ",".join(CONDITIONS)
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if args.quick:
        args.queries = 4
        if args.conditions == list(DEFAULT_CONDITIONS):
            args.conditions = ["night", "snow"]
        args.fox_size, args.fox_queries = 320, 9
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    start = time.perf_counter()
    datasets, rows = [], []
    loaders = []
    if not args.no_synthetic:
        loaders.append(synthetic_dataset)
    if not args.no_fox:
        loaders.append(fox_dataset)
    for load in loaders:
        data = load(args, console)
        if data is None:
            continue
        r = run_dataset(data, args, console)
        rows += r
        datasets.append(data)
        console.print(table(data, r))
    if rows:
        console.print(targets(rows))
    console.print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        meta = {d.name: {"thresholds": [[x.translation_m, x.rotation_deg] for x in d.thresholds],
                         "unit": d.unit, "unit_scale": d.unit_scale, "notes": d.notes}
                for d in datasets}  # fmt: skip
        args.json.write_text(json.dumps({"datasets": meta, "rows": rows, "args": vars(args)},
                                        indent=1, default=str) + "\n")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
