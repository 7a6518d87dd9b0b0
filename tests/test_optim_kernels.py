"""Robust kernels: derivatives vs autograd, closed forms, Barron's limits, the name lookup."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dgeo.errors import InputError
from dgeo.optim import (
    KERNEL_NAMES,
    Barron,
    Cauchy,
    Huber,
    RobustKernel,
    TrivialKernel,
    Tukey,
    get_kernel,
)

INF = math.inf
ALPHAS = [-INF, -1e3, -2.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 1.5, 1.999, 2.0, 2.001, 3.0, INF]
KERNELS = [TrivialKernel(), Huber(0.7), Cauchy(1.3), Tukey(2.0)] + [
    Barron(0.8, alpha=a) for a in ALPHAS
]


def _autograd_derivatives(kernel: RobustKernel, s: torch.Tensor):
    s = s.clone().requires_grad_(True)
    rho, d1, _ = kernel(s)
    (g1,) = torch.autograd.grad(rho.sum(), s, create_graph=True)
    if not d1.requires_grad:  # a constant weight
        return g1.detach(), torch.zeros_like(s)
    (g2,) = torch.autograd.grad(d1.sum(), s, allow_unused=True, materialize_grads=True)
    return g1.detach(), g2


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
@settings(max_examples=30, deadline=None)
@given(u=st.lists(st.floats(0.0, 30.0), min_size=1, max_size=8))
def test_derivatives_match_autograd(kernel: RobustKernel, u: list[float]):
    c2 = kernel.scale**2
    for x in u:  # the kinks of Huber and Tukey at s = c^2 have no unique derivative
        assume(abs(x - 1.0) > 1e-6)
    if isinstance(kernel, Barron) and kernel.alpha > 2:  # exponential growth: keep s moderate
        u = [min(x, 5.0) for x in u]
    s = torch.tensor(u, dtype=torch.float64) * c2
    rho, d1, d2 = kernel(s)
    g1, g2 = _autograd_derivatives(kernel, s)
    torch.testing.assert_close(d1, g1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d2, g2, rtol=1e-10, atol=1e-14)
    assert bool((rho >= 0).all()) and bool((d1 >= 0).all())


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_ceres_normalisation_at_zero(kernel: RobustKernel):
    for dtype in (torch.float32, torch.float64):
        rho, d1, _ = kernel(torch.zeros(3, dtype=dtype))
        assert rho.abs().max() == 0
        torch.testing.assert_close(d1, torch.ones_like(d1), rtol=0, atol=0)
    s = torch.tensor([1e-9], dtype=torch.float64)  # rho(s) ~ s for small s
    torch.testing.assert_close(kernel(s)[0], s, rtol=1e-8, atol=0)


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_finite_values_and_gradients(kernel: RobustKernel):
    hi = 20.0 if isinstance(kernel, Barron) and kernel.alpha > 2 else 1e6
    for dtype in (torch.float32, torch.float64):
        s = torch.cat([torch.zeros(1), torch.logspace(-8, math.log10(hi), 50)]).to(dtype)
        s.requires_grad_(True)
        rho, d1, d2 = kernel(s)
        (g,) = torch.autograd.grad((rho + d1 + d2 + 0 * s).sum(), s)
        for v in (rho, d1, d2, g):
            assert bool(torch.isfinite(v).all())


def test_closed_form_values():
    s = torch.tensor([0.25, 4.0, 9.0], dtype=torch.float64)
    close = torch.testing.assert_close
    close(Huber(1.0)(s)[0], torch.tensor([0.25, 3.0, 5.0], dtype=torch.float64))
    close(Huber(1.0)(s)[1], torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64))
    close(Cauchy(2.0)(s)[0], 4 * torch.log(torch.tensor([1.0625, 2.0, 3.25], dtype=torch.float64)))
    close(Cauchy(2.0)(s)[1], torch.tensor([1 / 1.0625, 0.5, 1 / 3.25], dtype=torch.float64))
    tukey = Tukey(2.0)(s)
    close(tukey[0], torch.tensor([4 / 3 * (1 - (15 / 16) ** 3), 4 / 3, 4 / 3], dtype=torch.float64))
    close(tukey[1], torch.tensor([(15 / 16) ** 2, 0.0, 0.0], dtype=torch.float64))
    c, q = 0.5, s / 0.25
    barron = {  # Barron (2019), eq. 2 and its special cases, times 2c^2
        2.0: s,
        1.0: 2 * c**2 * (torch.sqrt(q + 1) - 1),
        0.0: 2 * c**2 * torch.log(q / 2 + 1),
        -2.0: 2 * c**2 * 2 * q / (q + 4),
        -INF: 2 * c**2 * (1 - torch.exp(-q / 2)),
        INF: 2 * c**2 * (torch.exp(q / 2) - 1),
    }
    for alpha, want in barron.items():
        close(Barron(c, alpha=alpha)(s)[0], want, rtol=1e-12, atol=1e-12)


def test_barron_zero_is_pixloc_scaled_barron():
    c, s = 0.1, torch.linspace(0, 4, 41, dtype=torch.float64)
    rho, d1, _ = Barron(c, alpha=0.0)(s)
    torch.testing.assert_close(rho, 2 * c**2 * torch.log1p(s / (2 * c**2)))
    torch.testing.assert_close(d1, 1 / (1 + s / (2 * c**2)))
    torch.testing.assert_close(get_kernel("barron", c)(s)[0], rho)  # alpha 0 is the default


@pytest.mark.parametrize("alpha", [0.0, 2.0, 1.0, -2.0])
@pytest.mark.parametrize("eps", [1e-5, -1e-5])
def test_barron_continuous_in_alpha(alpha: float, eps: float):
    s = torch.logspace(-6, 2, 30, dtype=torch.float64)
    at, near = Barron(0.5, alpha=alpha)(s), Barron(0.5, alpha=alpha + eps)(s)
    for k in range(2):
        torch.testing.assert_close(near[k], at[k], rtol=1e-4, atol=1e-6)
    # rho'' moves by O(eps), except next to alpha = 2 where it is ~ eps / s: the limit is not
    # uniform at s = 0 (rho''(0) = -1/(2c^2) for alpha < 2, 0 at 2, +1/(2c^2) above)
    keep = s > 0.1 if alpha == 2 else s >= 0
    torch.testing.assert_close(near[2][keep], at[2][keep], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("limit", [-INF, INF])
def test_barron_infinite_limits(limit: float):
    s = torch.logspace(-6, 0.5, 30, dtype=torch.float64)
    at, near = Barron(0.5, alpha=limit)(s), Barron(0.5, alpha=math.copysign(1e7, limit))(s)
    for k in range(3):
        torch.testing.assert_close(near[k], at[k], rtol=1e-5, atol=1e-8)


def test_tensor_scale_is_differentiable():
    c = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.5, 3.0, 10.0], dtype=torch.float64)
    for name in ("huber", "cauchy", "tukey", "barron"):
        (g,) = torch.autograd.grad(get_kernel(name, c)(s)[0].sum(), c)
        assert torch.isfinite(g)
    # d/dc of c^2 log(1 + s/c^2), by central differences
    f = lambda cc: Cauchy(cc)(s)[0].sum()  # noqa: E731
    (g,) = torch.autograd.grad(f(c), c)
    torch.testing.assert_close(g, (f(1.5 + 1e-6) - f(1.5 - 1e-6)) / 2e-6, rtol=1e-7, atol=0)


def test_get_kernel_lookup():
    assert isinstance(get_kernel("Cauchy", 2.0), Cauchy)
    assert get_kernel("barron", 0.1, alpha=1.0) == Barron(0.1, alpha=1.0)
    assert isinstance(get_kernel(None), TrivialKernel)
    k = Huber(3.0)
    assert get_kernel(k) is k
    assert set(KERNEL_NAMES) >= {"trivial", "huber", "cauchy", "barron", "tukey"}
    with pytest.raises(InputError, match=r"cauchy.*tukey"):
        get_kernel("cauch")
    with pytest.raises(InputError, match="alpha"):
        get_kernel("huber", 1.0, alpha=1.0)
    with pytest.raises(InputError, match="scale"):
        Huber(-1.0)
    with pytest.raises(InputError, match="alpha"):
        Barron(1.0, alpha=math.nan)
