"""Global pooling of dense feature maps into one unit-norm image descriptor: GeM and NetVLAD.

Both take ``features (B, C, h, w)`` and an optional ``mask (B, 1, h, w)`` bool of the cells to
pool (e.g. the real image inside a padded canvas, see
:func:`dgeo.matching.retrieval.global_descriptors`), and return ``(B, D)`` L2-normalised
descriptors, so that retrieval scores are dot products.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, ShapeError, require_shape
from dgeo.matching.kmeans import kmeans


def _check_maps(
    features: torch.Tensor, mask: torch.Tensor | None, channels: int | None, who: str
) -> None:
    require_shape(features, "features", last=[None, None, None, None])
    if features.dim() != 4:
        raise ShapeError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}.")
    if channels is not None and features.shape[1] != channels:
        raise ShapeError(
            f"features have {features.shape[1]} channels but this {who} was built for {channels}; "
            f"build it with dim={features.shape[1]} or pool a level with {channels} channels."
        )
    if mask is not None:
        b, _, h, w = features.shape
        if (
            not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape) != (b, 1, h, w)
        ):
            got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else mask
            raise ShapeError(f"mask must be a {(b, 1, h, w)} bool tensor, got {got}.")


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): ``(mean_cells max(f, eps)^p)^(1/p)`` per
    channel, then L2 normalisation.

    ``p = 1`` is average pooling, ``p -> inf`` max pooling. Features are clamped at ``eps`` as in
    the GeM paper (negative values, e.g. of pre-ReLU maps, would make the power undefined). The
    power is taken relative to the per-channel maximum, ``m (mean (x/m)^p)^(1/p)``, which is the
    same value without overflow or underflow for large ``p``.

    Args:
        p: the exponent (> 0).
        eps: the clamp of the features (> 0).
        learn_p: make ``p`` a trainable parameter (otherwise a buffer).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__()
        if not (p > 0 and math.isfinite(p)) or not eps > 0:
            raise InputError(f"GeM needs a finite p > 0 and eps > 0, got p={p}, eps={eps}.")
        value = torch.tensor(float(p))
        if learn_p:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = float(eps)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool ``features (B, C, h, w)`` over the cells of ``mask (B, 1, h, w)`` (all if None).

        Returns:
            ``(B, C)`` unit-norm descriptors (zero for an image with no cell in ``mask``).
        """
        _check_maps(features, mask, None, "GeM")
        x = features.clamp_min(self.eps).flatten(2)  # (B, C, hw)
        p = self.p.to(x.dtype)
        if mask is None:
            m = x.amax(-1, keepdim=True).detach()
            pooled = (x / m).pow(p).mean(-1)
        else:
            keep = mask.flatten(2)  # (B, 1, hw)
            x = torch.where(keep, x, self.eps)  # masked cells never exceed the maximum
            m = x.amax(-1, keepdim=True).detach()
            pooled = ((x / m).pow(p) * keep).sum(-1) / keep.sum(-1).clamp_min(1)
        out = m[..., 0] * pooled.clamp_min(torch.finfo(x.dtype).tiny).pow(1 / p)
        if mask is not None:
            out = torch.where(mask.flatten(1).any(-1, keepdim=True), out, 0.0)
        return F.normalize(out, dim=-1)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}, eps={self.eps:g}"


class NetVLAD(nn.Module):
    """NetVLAD aggregation as in S2DHM (ALGORITHMS 2.1).

    Per-location L2 normalisation of the input; soft assignment by a 1x1 convolution **without
    bias** followed by a softmax over clusters; residuals to the centroids summed with the
    assignment weights; intra-normalisation (per cluster); flatten; L2 normalisation.

    The assignment weights follow the NetVLAD authors' released models and S2DHM's layer (the
    "non-v2" initialisation of the PyTorch ports): ``w_k = alpha * c_k / ||c_k||``, no bias,
    which for unit-norm inputs assigns by cosine similarity to the centroids. (The paper's
    ``w_k = 2 alpha c_k, b_k = -alpha ||c_k||^2`` form, "v2", needs a bias, which ALGORITHMS 2.1
    rules out.) The centroids and the weights are separate parameters, as in NetVLAD, so
    training can move them independently.

    Args:
        num_clusters: ``K``.
        dim: input channels ``C``; the output has ``K * C`` dimensions.
        alpha: assignment sharpness used to derive the weights from the centroids (kept in the
            buffer ``alpha``; :meth:`init_centroids` can estimate it from data instead).
    """

    def __init__(self, num_clusters: int = 64, dim: int = 512, alpha: float = 100.0) -> None:
        super().__init__()
        if num_clusters < 1 or dim < 1 or not alpha > 0:
            raise InputError(
                f"NetVLAD needs num_clusters >= 1, dim >= 1 and alpha > 0, got "
                f"{num_clusters}, {dim}, {alpha}."
            )
        self.num_clusters, self.dim = int(num_clusters), int(dim)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        g = torch.Generator().manual_seed(0)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim, generator=g))
        self._set_weights()

    @property
    def output_dim(self) -> int:
        """``K * C``."""
        return self.num_clusters * self.dim

    def _set_weights(self) -> None:
        with torch.no_grad():
            c = F.normalize(self.centroids, dim=1)
            self.conv.weight.copy_((self.alpha * c)[..., None, None])

    @torch.no_grad()
    def init_centroids(
        self,
        descriptors: torch.Tensor,
        seed: int = 0,
        iterations: int = 30,
        estimate_alpha: bool = False,
    ) -> NetVLAD:
        """Initialise the centroids by k-means on reference descriptors, and the assignment
        weights from them (``alpha * c / ||c||``).

        Args:
            descriptors: ``(M, C)`` descriptors sampled from reference feature maps (e.g. by
                :func:`dgeo.matching.retrieval.sample_descriptors`), ``M >= K``; they are
                L2-normalised first, as :meth:`forward` normalises its input.
            seed: seeds the k-means++ seeding (same seed, same centroids).
            iterations: maximum Lloyd iterations.
            estimate_alpha: set ``alpha = -log(0.01) / mean(s1 - s2)`` from the gap between the
                two best centroid similarities of the descriptors (the NetVLAD authors' choice:
                the nearest centroid gets 100x the weight of the second on average); otherwise
                keep the constructor's ``alpha``.
        Returns:
            ``self``.
        """
        require_shape(descriptors, "descriptors", last=[self.dim])
        if descriptors.dim() != 2:
            raise ShapeError(
                f"descriptors must be (M, {self.dim}), got shape {tuple(descriptors.shape)}."
            )
        x = F.normalize(descriptors.to(self.centroids.device, self.centroids.dtype), dim=1)
        centres, _ = kmeans(x, self.num_clusters, seed=seed, iterations=iterations)
        self.centroids.copy_(centres)
        if estimate_alpha and self.num_clusters > 1:
            dots = x @ F.normalize(centres, dim=1).T
            top = dots.topk(2, dim=1).values
            gap = float((top[:, 0] - top[:, 1]).mean())
            if gap > 0:
                self.alpha.fill_(-math.log(0.01) / gap)
        self._set_weights()
        return self

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregate ``features (B, C, h, w)`` over the cells of ``mask (B, 1, h, w)``.

        Returns:
            ``(B, K * C)`` unit-norm descriptors, cluster-major (``[k * C + c]``).
        """
        _check_maps(features, mask, self.dim, "NetVLAD")
        x = F.normalize(features, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # (B, K, hw)
        if mask is not None:
            assign = assign * mask.flatten(2).to(assign.dtype)
        x = x.flatten(2)  # (B, C, hw)
        vlad = assign @ x.transpose(1, 2) - assign.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, dim={self.dim}, alpha={float(self.alpha):.3g}"
