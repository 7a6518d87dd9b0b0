"""Image pairs rendered from the synthetic world, with exact dense correspondences and geometry.

Item ``i`` of :class:`SyntheticPairs` lives in scene ``i // pairs_per_scene`` of its split:

* **scene seeds**: the ``k``-th scene of the *train* split has seed ``2k + 1`` (odd), of the
  *val* split ``2k + 2`` (even, from 2): the splits never share a scene, and neither uses seed 0,
  the scene the demo and ``benchmarks/localize.py`` localize in.
* **views**: ``a`` is a random viewpoint of the scene (:func:`random_viewpoints`) rendered under
  ``overcast-reference``; ``b`` is a viewpoint near it (:func:`nearby_viewpoints`: up to
  ``max_shift`` metres and ``max_yaw_deg`` away) under a condition drawn from ``conditions``
  (by default every condition, ``overcast-reference`` included, so some pairs share the
  condition). Both use one PINHOLE camera of horizontal field of view ``fov_deg``.
* **correspondences**: every pixel centre of ``a`` that ``b`` sees
  (:func:`dgeo.data.synthetic.correspondences.correspondences`, computed in float64); a pair
  where fewer than ``min_overlap`` of ``a``'s pixels are seen in ``b`` is re-drawn (new
  viewpoints, deterministically), up to ``max_attempts`` times, after which the best drawn pair
  is kept.

Everything rendered depends on the settings and the index only (not on the epoch): renders are
expensive, so only the choice of the ``N`` correspondences changes with :meth:`set_epoch`.
Rendered pairs are kept in memory (``memory_cache`` items, LRU) and, with ``cache_dir``, on disk
as one ``.pt`` file per item (written atomically) in a folder keyed by a hash of every setting
that changes the render, so later epochs, workers and runs never render an item twice. Images are
stored and returned quantised to 8 bits, as a camera would deliver them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from dgeo.data.pairs.base import (
    PairDataset,
    _finite_float,
    check_common,
    mix_seed,
    subsample,
    take_rows,
)
from dgeo.data.synthetic.conditions import CONDITION_NAMES, CONDITIONS
from dgeo.data.synthetic.correspondences import correspondences
from dgeo.data.synthetic.render import raycast
from dgeo.data.synthetic.scene import Scene
from dgeo.data.synthetic.scenes import SCENE_KINDS, make_scene
from dgeo.data.synthetic.trajectories import nearby_viewpoints, random_viewpoints
from dgeo.data.synthetic.views import render_views
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose
from dgeo.io.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["REFERENCE_CONDITION", "SyntheticPairs", "scene_seed"]

log = logging.getLogger("dgeo.data.pairs")

#: The condition of view ``a``.
REFERENCE_CONDITION = "overcast-reference"
#: Bumped whenever the rendering of a pair changes, so stale disk caches are not reused.
CACHE_VERSION = 1
_SPLITS = ("train", "val")


def scene_seed(split: str, k: int) -> int:
    """Seed of the ``k``-th scene of a split: ``2k + 1`` for train, ``2k + 2`` for val."""
    if split not in _SPLITS:
        raise InputError(f"split must be 'train' or 'val' for synthetic pairs, got {split!r}.")
    return 2 * int(k) + (1 if split == "train" else 2)


def _check_int(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {v!r}.")
    return v


class SyntheticPairs(PairDataset):
    """Rendered pairs of the synthetic street or room (see the module docstring).

    Args:
        scene: ``"street"`` or ``"room"``.
        split: ``"train"`` or ``"val"`` (disjoint scenes).
        num_pairs: number of items.
        conditions: conditions of view ``b`` (names of
            :data:`dgeo.data.synthetic.conditions.CONDITIONS`); all of them if ``None``.
        cache_dir: optional folder for the on-disk cache.
        height, width: image size (default 240 x 320).
        num_points: ``N`` correspondences per item.
        seed: seeds viewpoints, conditions and appearance (not the scenes, which the split
            fixes) and the choice of the ``N`` correspondences.
        pairs_per_scene: consecutive items sharing one scene (building one takes ~0.2-0.9 s).
        fov_deg: horizontal field of view of the PINHOLE camera.
        supersample: anti-aliasing sub-pixels per pixel side.
        texture_size: texture resolution of the scenes (16-2048; 256 builds a street in
            ~0.9 s, 64 in ~0.1 s).
        max_shift, max_yaw_deg: how far ``b`` may be from ``a`` (metres, degrees).
        min_overlap: fraction of ``a``'s pixels that must be seen in ``b``.
        max_attempts: viewpoint draws per item before keeping the best.
        memory_cache: items kept in memory (LRU), 0 for none; ``None``: all of them without
            ``cache_dir``, 64 with it (a 320 x 240 pair takes ~1.3 MB, so 1000 pairs ~1.3 GB
            per ``DataLoader`` worker; a cached file loads in ~1 ms).
        scene_cache: scenes kept in memory (LRU).
    """

    has_geometry = True

    def __init__(
        self,
        scene: str = "street",
        split: str = "train",
        num_pairs: int = 1000,
        conditions: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        *,
        height: int = 240,
        width: int = 320,
        num_points: int = 512,
        seed: int = 0,
        pairs_per_scene: int = 50,
        fov_deg: float = 70.0,
        supersample: int = 2,
        texture_size: int = 256,
        max_shift: float = 1.5,
        max_yaw_deg: float = 20.0,
        min_overlap: float = 0.2,
        max_attempts: int = 10,
        memory_cache: int | None = None,
        scene_cache: int = 2,
    ):
        check_common(height, width, num_points, seed)
        if scene not in SCENE_KINDS:
            raise InputError(
                f"unknown synthetic scene {scene!r}; choose one of {', '.join(SCENE_KINDS)}."
            )
        if split not in _SPLITS:
            raise InputError(f"split must be 'train' or 'val' for synthetic pairs, got {split!r}.")
        conditions = tuple(CONDITION_NAMES if conditions is None else conditions)
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or not conditions or len(set(conditions)) != len(conditions):
            raise InputError(
                f"conditions must name distinct conditions out of {', '.join(CONDITIONS)}; got "
                f"{list(conditions)}."
            )
        self.scene_kind, self.split, self.conditions = scene, split, conditions
        self.num_pairs = _check_int(num_pairs, "num_pairs", 1)
        self.pairs_per_scene = _check_int(pairs_per_scene, "pairs_per_scene", 1)
        self.supersample = _check_int(supersample, "supersample", 1)
        self.texture_size = _check_int(texture_size, "texture_size", 16)
        self.max_attempts = _check_int(max_attempts, "max_attempts", 1)
        self.scene_cache = _check_int(scene_cache, "scene_cache", 1)
        if memory_cache is not None:
            _check_int(memory_cache, "memory_cache", 0)
        elif cache_dir is not None:
            memory_cache = 64
        self.memory_cache = memory_cache
        self.fov_deg = _finite_float(fov_deg, "fov_deg", 10.0, 150.0)
        self.max_shift = _finite_float(max_shift, "max_shift", 0.0)
        self.max_yaw_deg = _finite_float(max_yaw_deg, "max_yaw_deg", 0.0, 180.0)
        self.min_overlap = _finite_float(min_overlap, "min_overlap", 0.0, 1.0)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None and self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise InputError(f"cache_dir {self.cache_dir} is not a folder; pass a folder path.")
        super().__init__(
            height=height,
            width=width,
            num_points=num_points,
            seed=seed,
            length=self.num_pairs,
            source=f"synthetic:{scene} ({split})",
        )
        f = width / 2 / math.tan(math.radians(self.fov_deg) / 2)
        self.camera = Camera("PINHOLE", width, height, [f, f, (width - 1) / 2, (height - 1) / 2])
        self._records: OrderedDict[int, dict] = OrderedDict()
        self._scenes: OrderedDict[int, Scene] = OrderedDict()
        #: seconds spent building scenes and rendering pairs in this process
        self.timings = {"scene": 0.0, "render": 0.0, "renders": 0, "disk_hits": 0}

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict:
        """Every setting that changes the rendered pairs (the disk cache key)."""
        return {
            "version": CACHE_VERSION,
            "scene": self.scene_kind,
            "split": self.split,
            "seed": self.seed,
            "height": self.height,
            "width": self.width,
            "pairs_per_scene": self.pairs_per_scene,
            "conditions": list(self.conditions),
            "fov_deg": self.fov_deg,
            "supersample": self.supersample,
            "texture_size": self.texture_size,
            "max_shift": self.max_shift,
            "max_yaw_deg": self.max_yaw_deg,
            "min_overlap": self.min_overlap,
            "max_attempts": self.max_attempts,
        }

    @property
    def cache_folder(self) -> Path | None:
        """The folder of this dataset's cached items inside ``cache_dir`` (``None`` without)."""
        if self.cache_dir is None:
            return None
        text = json.dumps(self.settings(), sort_keys=True)
        key = hashlib.sha1(text.encode()).hexdigest()[:16]
        return self.cache_dir / f"synthetic-{self.scene_kind}-{self.split}-{key}"

    def scene_seed_of(self, index: int) -> int:
        """Seed of the scene of item ``index``."""
        return scene_seed(self.split, index // self.pairs_per_scene)

    def __len__(self) -> int:
        return self.num_pairs

    def __getstate__(self) -> dict:
        # scenes are rebuilt on demand: do not ship ~20 MB of textures to each spawned worker
        state = self.__dict__.copy()
        state["_scenes"] = OrderedDict()
        return state

    # ------------------------------------------------------------------ rendering
    def _scene(self, seed: int) -> Scene:
        if seed in self._scenes:
            self._scenes.move_to_end(seed)
            return self._scenes[seed]
        t = time.perf_counter()
        scene = make_scene(self.scene_kind, seed, texture_size=self.texture_size)
        self.timings["scene"] += time.perf_counter() - t
        self._scenes[seed] = scene
        while len(self._scenes) > self.scene_cache:
            self._scenes.popitem(last=False)
        return scene

    def _draw_views(
        self, scene: Scene, index: int
    ) -> tuple[Pose, Pose, torch.Tensor, torch.Tensor]:
        """Viewpoints ``a``, ``b`` (each ``(1,)``) whose overlap passes ``min_overlap`` (or the
        best of ``max_attempts`` draws), with the dense ``uv_b`` ``(H, W, 2)`` float64 and
        ``visible`` ``(H, W)`` of ``a``'s pixels."""
        cam = self.camera.double()
        need = self.min_overlap * self.height * self.width
        best = None
        for attempt in range(self.max_attempts):
            s = mix_seed("synthetic-views", self.seed, self.scene_kind, self.split, index, attempt)
            pose_a = random_viewpoints(scene, 1, seed=s % 2**62)
            pose_b = nearby_viewpoints(
                scene, pose_a, 1, (s + 1) % 2**62, self.max_shift, self.max_yaw_deg
            )
            gbuf = raycast(scene, self.camera, Pose.cat([pose_a, pose_b]))
            depth = gbuf.depth.double()
            pa, pb = pose_a.double(), pose_b.double()
            uv_b, visible = correspondences(depth[:1], cam, pa, depth[1:], cam, pb)
            count = int(visible.sum())
            if best is None or count > best[0]:
                best = (count, pose_a, pose_b, uv_b[0], visible[0])
            if count >= max(need, 1):
                break
        _, pose_a, pose_b, uv_b, visible = best
        return pose_a, pose_b, uv_b, visible

    def render_record(self, index: int) -> dict:
        """Render item ``index`` (no caches): the stored record, a dict of

        ``rgb_a``, ``rgb_b`` ``(3, H, W)`` uint8; ``index_a`` ``(M,)`` int32 flat pixel indices
        (``y * W + x``) of ``a``'s pixels seen in ``b``; ``uv_b`` ``(M, 2)`` float32 where they
        appear in ``b``; ``depth_a`` ``(M,)`` float32 their z-depth in ``a``; ``K`` ``(3, 3)``
        float32 (both views); ``b_from_a`` ``(4, 4)`` float32; ``condition`` (of ``b``);
        ``scene_seed``.
        """
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.num_pairs} synthetic pairs.")
        sseed = self.scene_seed_of(index)
        scene = self._scene(sseed)
        t = time.perf_counter()
        pose_a, pose_b, uv_b, visible = self._draw_views(scene, index)
        s = mix_seed("synthetic-appearance", self.seed, self.scene_kind, self.split, index)
        g = torch.Generator().manual_seed(s)
        condition = self.conditions[int(torch.randint(len(self.conditions), (), generator=g))]
        seeds = torch.randint(0, 2**31 - 1, (2,), generator=g)
        view_a = render_views(
            scene, self.camera, pose_a, REFERENCE_CONDITION, seeds[:1], self.supersample
        )
        view_b = render_views(scene, self.camera, pose_b, condition, seeds[1:], self.supersample)
        flat = visible.reshape(-1).nonzero()[:, 0]
        depth_a = view_a.depth.reshape(-1)[flat]
        b_from_a = (pose_b.double() @ pose_a.double().inv()).matrix()[0]
        self.timings["render"] += time.perf_counter() - t
        self.timings["renders"] += 1
        return {
            "rgb_a": view_a.uint8()[0].permute(2, 0, 1).contiguous(),
            "rgb_b": view_b.uint8()[0].permute(2, 0, 1).contiguous(),
            "index_a": flat.to(torch.int32),
            "uv_b": uv_b.reshape(-1, 2)[flat].float(),
            "depth_a": depth_a.float(),
            "K": self.camera.K.float(),
            "b_from_a": b_from_a.float(),
            "condition": condition,
            "scene_seed": sseed,
        }

    # ------------------------------------------------------------------ caches
    def _cache_path(self, index: int) -> Path | None:
        folder = self.cache_folder
        return None if folder is None else folder / f"{index:07d}.pt"

    def _load_cached(self, path: Path) -> dict | None:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as e:  # a truncated or foreign file: render again and overwrite it
            log.warning("re-rendering %s: unreadable cache file (%s)", path, e)
            return None
        if not isinstance(record, dict) or "rgb_a" not in record:
            return None
        return record

    def _store(self, path: Path, record: dict) -> None:
        folder = path.parent
        settings = folder / "settings.json"
        if not settings.exists():
            atomic_write_text(settings, json.dumps(self.settings(), indent=1, sort_keys=True))
        buffer = io.BytesIO()
        torch.save(record, buffer)
        atomic_write_bytes(path, buffer.getbuffer())

    def record(self, index: int) -> dict:
        """The rendered record of item ``index`` (see :meth:`render_record`), from the memory
        cache, the disk cache, or rendered (and then cached)."""
        if index in self._records:
            self._records.move_to_end(index)
            return self._records[index]
        path = self._cache_path(index)
        record = self._load_cached(path) if path is not None else None
        if record is not None:
            self.timings["disk_hits"] += 1
        else:
            record = self.render_record(index)
            if path is not None:
                self._store(path, record)
        if self.memory_cache is None or self.memory_cache > 0:
            self._records[index] = record
            if self.memory_cache is not None:
                while len(self._records) > self.memory_cache:
                    self._records.popitem(last=False)
        return record

    def prerender(
        self,
        indices: Iterable[int] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Render (or load) items in scene order so every scene is built once, filling the
        caches; call it before training with shuffled access (and ``cache_dir``).

        Args:
            indices: the items (all if ``None``).
            progress: ``progress("render", done, total)`` after each item.
        """
        todo = sorted(set(range(self.num_pairs) if indices is None else indices))
        for k, i in enumerate(todo):
            self.record(i)
            if progress is not None:
                progress("render", k + 1, len(todo))

    # ------------------------------------------------------------------ items
    def load_item(self, index: int, generator: torch.Generator) -> dict:
        """Item ``index``: the cached record with ``N`` correspondences drawn by ``generator``."""
        rec = self.record(index)
        idx, mask = subsample(rec["index_a"].shape[0], self.num_points, generator)
        flat = take_rows(rec["index_a"], idx, mask).long()
        uv_a = torch.stack([flat % self.width, flat // self.width], -1).float()
        K = rec["K"]
        rays = torch.cat([(uv_a - K[:2, 2]) / K.diagonal()[:2], torch.ones_like(uv_a[:, :1])], -1)
        points_a = rays * take_rows(rec["depth_a"], idx, mask)[:, None]
        prefix = f"{self.scene_kind}/{self.split}/{index:06d}"
        return {
            "image_a": rec["rgb_a"].float() / 255,
            "image_b": rec["rgb_b"].float() / 255,
            "uv_a": uv_a,
            "uv_b": take_rows(rec["uv_b"], idx, mask),
            "mask": mask,
            "name": f"{prefix}/a:{REFERENCE_CONDITION}|{prefix}/b:{rec['condition']}",
            "points_a": points_a,
            "K_a": K.clone(),
            "K_b": K.clone(),
            "b_from_a": rec["b_from_a"].clone(),
        }
