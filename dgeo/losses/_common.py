"""Shared input checks and reductions of the losses (private)."""

from __future__ import annotations

import torch

from dgeo.errors import InputError, ShapeError, require_floating


def require_dims(x: object, name: str, expected: tuple[int | None, ...], layout: str) -> None:
    """Raise :class:`ShapeError` unless ``x`` is a tensor of exactly ``len(expected)`` dims whose
    sizes match ``expected`` (``None`` accepts any size); ``layout`` names the dims, e.g.
    ``"(B, N, C)"``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}."
        )
    if x.dim() != len(expected) or any(
        e is not None and s != e for s, e in zip(x.shape, expected, strict=True)
    ):
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ShapeError(f"{name} must have shape {layout} = ({want}), got {tuple(x.shape)}.")


def check_mask(
    mask: torch.Tensor | None, name: str, shape: tuple[int, ...], device
) -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape`` on ``device`` (all true when ``None``)."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    layout = "(B, N)" if len(shape) == 2 else str(shape)
    require_dims(mask, name, shape, layout)
    if mask.dtype != torch.bool:
        raise InputError(f"{name} must be a bool tensor, got dtype {mask.dtype}.")
    return mask.to(device)


def check_correspondence_inputs(
    desc_a: torch.Tensor, fmap_b: torch.Tensor, uv_b: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Validate ``desc_a (B, N, C)``, ``fmap_b (B, C, h, w)``, ``uv_b (B, N, 2)``, ``mask (B, N)``
    and return the mask (all true when ``None``)."""
    require_dims(desc_a, "desc_a", (None, None, None), "(B, N, C)")
    b, n, c = desc_a.shape
    require_dims(fmap_b, "fmap_b", (b, c, None, None), "(B, C, h, w) with B, C of desc_a")
    require_dims(uv_b, "uv_b", (b, n, 2), "(B, N, 2) with B, N of desc_a")
    for x, name in ((desc_a, "desc_a"), (fmap_b, "fmap_b"), (uv_b, "uv_b")):
        require_floating(x, name)
    if desc_a.device != fmap_b.device or uv_b.device != fmap_b.device:
        raise InputError(
            f"desc_a ({desc_a.device}), fmap_b ({fmap_b.device}) and uv_b ({uv_b.device}) must be "
            "on one device."
        )
    if fmap_b.shape[-1] < 1 or fmap_b.shape[-2] < 1:
        raise ShapeError(f"fmap_b must be a non-empty map, got {tuple(fmap_b.shape)}.")
    return check_mask(mask, "mask", (b, n), fmap_b.device)


def level_bounds(fmap: torch.Tensor, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """The valid region ``[0, x_max] x [0, y_max]`` in level pixels: the pixel-centre grid of
    ``fmap`` ``(..., h, w)``, optionally shrunk to ``bounds = (x_max, y_max)``."""
    h, w = fmap.shape[-2:]
    if bounds is None:
        return float(w - 1), float(h - 1)
    if len(bounds) != 2:
        raise InputError(f"bounds must be (x_max, y_max) in level pixels, got {bounds!r}.")
    return min(float(bounds[0]), float(w - 1)), min(float(bounds[1]), float(h - 1))


def inside(uv: torch.Tensor, xy_max: tuple[float, float]) -> torch.Tensor:
    """``(...)`` whether points ``(..., 2)`` lie in ``[0, x_max] x [0, y_max]`` (false for NaN)."""
    x, y = uv.unbind(-1)
    return (x >= 0) & (x <= xy_max[0]) & (y >= 0) & (y <= xy_max[1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (0, still in the graph, when the mask is empty); entries
    outside the mask never reach the value or the gradient, even if they are not finite."""
    x = torch.where(mask, x, torch.zeros_like(x))
    return x.sum() / mask.sum().clamp(min=1).to(x.dtype)


def uniform(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``U[0, 1)`` samples drawn from ``generator`` (on its own device) or the global RNG."""
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    out = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device)
    return out.to(device)


def to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Turn scalar tensors into Python floats with one device synchronisation."""
    if not stats:
        return {}
    values = torch.stack([v.detach().reshape(()).double() for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
