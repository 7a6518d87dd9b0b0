"""What the localizer needs of every reference image, computed once and cached on disk.

For each reference image of a :class:`~dgeo.io.colmap.ReferenceMap`, at the working resolution
(longest side ``max_size``): its global descriptor, and the descriptors of its keypoints that
have a 3D point, sampled bilinearly at the exact keypoints on every pyramid level (S2DHM took the
nearest cell of one level). That is all that retrieval, sparse-to-dense matching and
feature-metric refinement read, so the dense maps of the references are never kept: a reference
costs ``K (sum C_l)`` half floats instead of its full pyramid.

The cache file is keyed by the model (names, ids, points), the extractor (class, config, a digest
of its weights), the working size and the pooling; a second run over new queries loads it instead
of re-extracting, and any change of those inputs makes a new file. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dgeo.errors import InputError, ParseError
from dgeo.io.colmap import ReferenceMap
from dgeo.io.images import load_image
from dgeo.matching import GeM, NetVLAD, global_descriptors, sample_descriptors
from dgeo.models import DenseExtractor

_VERSION = 1


@dataclass
class ReferenceIndex:
    """Per-reference data at the working resolution.

    Attributes:
        names: ``I`` reference image names.
        global_desc: ``(I, D)`` unit global descriptors.
        keypoints: ``I`` tensors ``(K_i, 2)`` keypoints with a 3D point, working-resolution pixels.
        point_index: ``I`` tensors ``(K_i,)`` int64 indices into the map's ``xyz``.
        descriptors: ``I`` lists (one per pyramid level) of ``(K_i, C_l)`` float16 descriptors.
        pooling: state dict of the global pooling (NetVLAD centroids), to pool queries alike.
    """

    names: list[str]
    global_desc: torch.Tensor
    keypoints: list[torch.Tensor]
    point_index: list[torch.Tensor]
    descriptors: list[list[torch.Tensor]]
    pooling: dict


def make_pooling(kind: str, dim: int) -> torch.nn.Module:
    """``"gem"`` or ``"netvlad"`` pooling of ``dim``-channel maps."""
    if kind == "gem":
        return GeM()
    if kind == "netvlad":
        return NetVLAD(num_clusters=32, dim=dim)
    raise InputError(f"pooling must be 'gem' or 'netvlad', got {kind!r}.")


def cache_key(ref: ReferenceMap, extractor: DenseExtractor, settings: dict) -> str:
    """A digest of everything the reference data depend on."""
    h = hashlib.sha1()
    h.update(json.dumps([_VERSION, ref.names, settings, type(extractor).__name__]).encode())
    h.update(json.dumps(getattr(extractor, "config", {}), sort_keys=True, default=str).encode())
    for t in (ref.image_ids, ref.xyz, ref.cam_from_world.data, ref.cameras.params):
        h.update(t.detach().double().cpu().numpy().tobytes())
    for value in extractor.state_dict().values():
        h.update(value.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def build_reference_index(
    ref: ReferenceMap,
    images_dir: Path,
    extractor: DenseExtractor,
    *,
    max_size: int | None,
    pooling: str,
    retrieval_level: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> ReferenceIndex:
    """Extract every reference image once (one at a time: memory stays one pyramid)."""
    keypoints, point_index, descriptors, pooled_maps = [], [], [], []
    for i, name in enumerate(ref.names):
        image, cam = load_image(Path(images_dir) / name, ref.cameras[i], max_size)
        with torch.no_grad():
            pyr = extractor(image[None].to(device))
        kp, _, pidx = ref.observations(i)
        s = (cam.size / ref.cameras[i].size).to(kp)
        uv = ((kp + 0.5) * s - 0.5).to(device=device, dtype=pyr[0].features.dtype)
        descriptors.append(
            [
                pyr.sample(uv[None], level)[0][0].to("cpu", torch.float16)
                for level in range(len(pyr))
            ]
        )
        keypoints.append(uv.cpu().double())
        point_index.append(pidx)
        pooled_maps.append(pyr.select([0]).map(lambda x: x.cpu()))
        if progress is not None:
            progress(i + 1)
    level = retrieval_level % len(pooled_maps[0])
    pool = make_pooling(pooling, pooled_maps[0].channels[level])
    if isinstance(pool, NetVLAD):
        samples = torch.cat([sample_descriptors(p, level, num=2000, seed=i)
                             for i, p in enumerate(pooled_maps)])  # fmt: skip
        pool.init_centroids(samples, seed=0)
    with torch.no_grad():
        desc = torch.cat([global_descriptors(p, pool, level) for p in pooled_maps])
    return ReferenceIndex(
        names=list(ref.names), global_desc=desc, keypoints=keypoints, point_index=point_index,
        descriptors=descriptors, pooling=pool.state_dict(),
    )  # fmt: skip


def save_index(index: ReferenceIndex, path: Path) -> None:
    """Write the index atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": "dgeo-reference-index", "version": _VERSION, **vars(index)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_index(path: Path) -> ReferenceIndex:
    """Read an index written by :func:`save_index`."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and how to recover
        raise ParseError(path, None, f"unreadable reference cache ({err}); delete it.") from err
    if not isinstance(data, dict) or data.get("format") != "dgeo-reference-index":
        raise ParseError(path, None, "not a dgeo reference cache; delete it or pick another.")
    fields = {k: v for k, v in data.items() if k not in ("format", "version")}
    return ReferenceIndex(**fields)


def reference_index(
    ref: ReferenceMap,
    images_dir: Path,
    extractor: DenseExtractor,
    *,
    max_size: int | None,
    pooling: str,
    retrieval_level: int,
    device: torch.device,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReferenceIndex, Path | None, bool]:
    """The reference index from the cache, or built (and cached when ``cache_dir`` is given).

    Returns:
        the index, the cache path (or None) and whether it was loaded from the cache.
    """
    settings = {"max_size": max_size, "pooling": pooling, "level": retrieval_level}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"references-{cache_key(ref, extractor, settings)}.pt"
        if path.exists():
            return load_index(path), path, True
    index = build_reference_index(
        ref, images_dir, extractor, max_size=max_size, pooling=pooling,
        retrieval_level=retrieval_level, device=device, progress=progress,
    )  # fmt: skip
    if path is not None:
        save_index(index, path)
    return index, path, False
