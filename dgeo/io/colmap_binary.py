"""Vectorised readers of COLMAP's binary model files (``images.bin``, ``points3D.bin``).

pycolmap has no bulk accessors: walking its objects costs seconds for millions of observations.
:class:`dgeo.io.colmap.ReferenceMap` therefore lets pycolmap write a binary copy of a model and
reads the 2D points and tracks back here with numpy, one Python step per image and none per
point or observation. The layouts are COLMAP's (``colmap/scene/reconstruction_io.cc``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgeo.errors import ParseError

POINT2D_DTYPE = np.dtype([("xy", "<f8", (2,)), ("point3D_id", "<i8")])
_POINT3D_HEAD = np.dtype(
    [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("length", "<u8")]
)  # packed, 51 bytes; then `length` track elements (image_id u32, point2D_idx u32)


def _ranges_mask(n: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean mask ``(n,)`` of the union of disjoint half-open ranges ``[starts, ends)``."""
    delta = np.zeros(n + 1, np.int8)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:n], dtype=np.int8).astype(bool)


def parse_images_bin(path: Path) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """``images.bin`` -> image ids ``(I,)``, names, per-image structured 2D points."""
    buf = path.read_bytes()
    try:
        n = int.from_bytes(buf[:8], "little")
        ids, names, points = [], [], []
        off = 8
        for _ in range(n):  # one iteration per image; the 2D points are read as one array
            ids.append(int.from_bytes(buf[off : off + 4], "little"))
            off += 4 + 7 * 8 + 4  # image_id, qvec, tvec, camera_id
            end = buf.index(b"\0", off)
            names.append(buf[off:end].decode("utf-8"))
            k = int.from_bytes(buf[end + 1 : end + 9], "little")
            points.append(np.frombuffer(buf, POINT2D_DTYPE, count=k, offset=end + 9))
            off = end + 9 + k * POINT2D_DTYPE.itemsize
    except ValueError as e:
        raise ParseError(path, None, f"truncated or malformed COLMAP images.bin: {e}") from e
    if off != len(buf):
        raise ParseError(path, None, f"{len(buf) - off} unexpected trailing bytes in images.bin")
    return np.asarray(ids, np.int64), names, points


def parse_points3D_bin(path: Path, ids_hint: np.ndarray, lengths_hint: np.ndarray) -> tuple:
    """``points3D.bin`` -> heads ``(P,)`` (structured) and track elements ``(T, 2)`` uint32.

    The records have variable length. COLMAP writes them sorted by id, and each track length
    equals the number of 2D points that refer to the point, so the offsets follow from
    ``ids_hint`` / ``lengths_hint`` (from images.bin) by a cumulative sum; they are verified
    against the file, and a sequential scan over the records is the fallback.
    """
    buf = path.read_bytes()
    raw = np.frombuffer(buf, np.uint8)
    n = int.from_bytes(buf[:8], "little") if len(buf) >= 8 else -1
    head = _POINT3D_HEAD.itemsize
    offsets = None
    if n == len(ids_hint):
        sizes = head + 8 * lengths_hint.astype(np.int64)
        ends = 8 + np.cumsum(sizes, dtype=np.int64)
        cand = ends - sizes
        if (ends[-1] if n else 8) == len(buf):
            heads = raw[_ranges_mask(len(buf), cand, cand + head)].view(_POINT3D_HEAD)
            if np.array_equal(heads["id"], ids_hint) and np.array_equal(
                heads["length"], lengths_hint
            ):
                offsets = cand
    if offsets is None:  # fallback: walk the records one by one
        if n < 0 or n > (len(buf) - 8) // head:
            raise ParseError(
                path,
                None,
                f"malformed COLMAP points3D.bin: header says {n} points in {len(buf)} bytes",
            )
        offsets = np.empty(n, np.int64)
        off = 8
        for k in range(n):
            offsets[k] = off
            off += head + 8 * int.from_bytes(buf[off + head - 8 : off + head], "little")
        if off != len(buf):
            raise ParseError(path, None, "truncated or malformed COLMAP points3D.bin")
        heads = raw[_ranges_mask(len(buf), offsets, offsets + head)].view(_POINT3D_HEAD)
    lengths = heads["length"].astype(np.int64)
    starts = offsets + head
    elems = raw[_ranges_mask(len(buf), starts, starts + 8 * lengths)].view("<u4").reshape(-1, 2)
    return heads, elems


def csr_gather(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat element indices of the CSR rows ``rows`` ``(R,)``, and the row of each element.

    Args:
        offsets: ``(N + 1,)`` CSR offsets.
        rows: ``(R,)`` row indices, in the order wanted.
    Returns:
        ``flat`` and ``row_of`` (position in ``rows``), both ``(sum of the row lengths,)``.
    """
    lengths = offsets[rows + 1] - offsets[rows]
    row_of = np.repeat(np.arange(len(rows)), lengths)
    first = np.cumsum(lengths) - lengths
    flat = offsets[rows][row_of] + np.arange(int(lengths.sum())) - first[row_of]
    return flat, row_of
