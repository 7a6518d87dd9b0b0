"""Shared helpers of the texture generators: seeded randomness, colours and blending."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from dgeo.errors import InputError

RGB = tuple[float, float, float]
_VIVID: tuple[RGB, ...] = (
    (0.80, 0.10, 0.10), (0.10, 0.35, 0.75), (0.10, 0.55, 0.20), (0.95, 0.75, 0.10),
    (0.95, 0.45, 0.05), (0.45, 0.15, 0.55), (0.05, 0.05, 0.08), (0.95, 0.95, 0.92),
    (0.10, 0.55, 0.60), (0.85, 0.25, 0.45),
)  # fmt: skip


# ----------------------------------------------------------------------------------- randomness
def generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (a generator passes through)."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}.")
    return torch.Generator().manual_seed(int(seed) % (1 << 63))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive; ``lo`` if the range is empty)."""
    return int(torch.randint(lo, max(lo, hi) + 1, (), generator=g))


def _choice(g: torch.Generator, seq: Sequence):
    return seq[_randint(g, 0, len(seq) - 1)]


def _jitter(g: torch.Generator, rgb: Sequence[float], amount: float) -> RGB:
    """``rgb`` with brightness and per-channel jitter of relative size ``amount``."""
    b = 1 + amount * (2 * _uniform(g) - 1)
    return tuple(
        min(1.0, max(0.0, c * b * (1 + 0.5 * amount * (2 * _uniform(g) - 1)))) for c in rgb
    )


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored afterwards).

    Texture synthesis is thousands of small (``T x T``) operations, for which intra-op threads
    add only synchronisation; on a loaded machine (data-loader workers, other jobs) that costs
    10-20 times the single-threaded time. Note that the setting is process-wide while active.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# -------------------------------------------------------------------------------- image helpers
def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _rgb(c: Sequence[float]) -> torch.Tensor:
    return torch.tensor(c, dtype=torch.float32).view(3, 1, 1)


def _mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


def _done(img: torch.Tensor) -> torch.Tensor:
    return img.clamp(0, 1).to(torch.float32).contiguous()
