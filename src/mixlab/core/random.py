"""Random draws that go through an explicit ``torch.Generator``.

``torch.distributions.Beta`` cannot take a generator, so a Beta draw is built here from two Gamma
draws (Marsaglia & Tsang 2000, "A simple method for generating gamma variables"), vectorised
rejection sampling driven only by ``torch.randn``/``torch.rand`` with the given generator. The
ratio is formed in log space, so tiny concentrations (α = 0.05) never produce 0/0.

Convention: small parameter tensors (λ, box corners, pair indices) are drawn on the generator's
device (the CPU when ``generator`` is ``None``, using the global torch seed) and then moved to the
images' device. Results are thus identical on CPU and GPU for the same seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["generator_device", "rand", "randn", "randint", "randperm", "log_gamma_sample", "beta_sample"]


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on: the generator's, or the CPU."""
    return generator.device if generator is not None else torch.device("cpu")


def rand(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
    """U[0, 1) float32 draws made on the generator's device, returned on ``device``."""
    out = torch.rand(shape, generator=generator, device=generator_device(generator))
    return out if device is None else out.to(device, non_blocking=True)


def randn(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
    """N(0, 1) float32 draws made on the generator's device, returned on ``device``."""
    out = torch.randn(shape, generator=generator, device=generator_device(generator))
    return out if device is None else out.to(device, non_blocking=True)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
    """Integers uniform in [0, high), returned on ``device``."""
    out = torch.randint(high, shape, generator=generator, device=generator_device(generator))
    return out if device is None else out.to(device, non_blocking=True)


def randperm(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """A random permutation of range(n), returned on ``device``."""
    out = torch.randperm(n, generator=generator, device=generator_device(generator))
    return out if device is None else out.to(device, non_blocking=True)


def log_gamma_sample(shape_param: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of log(G), G ~ Gamma(shape_param, 1), float64, on the generator's device.

    Marsaglia-Tsang for shape >= 1; for shape < 1, G = G' * U^(1/shape) with G' ~ Gamma(shape + 1),
    i.e. log G = log G' + log(U) / shape.
    """
    a = float(shape_param)
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    dev = generator_device(generator)
    parts, have = [], 0
    while have < n:  # acceptance rate > 95 %: one round in practice (the draw is oversized)
        m = (n - have) + (n - have) // 8 + 8
        x = torch.randn(m, generator=generator, device=dev, dtype=torch.float64)
        u = torch.rand(m, generator=generator, device=dev, dtype=torch.float64)
        log_v = 3.0 * torch.log1p(c * x)  # NaN where 1 + c x <= 0: rejected below
        ok = torch.log(u) < 0.5 * x * x + d - d * torch.exp(log_v) + d * log_v
        accepted = log_v[ok]
        parts.append(accepted)
        have += accepted.numel()
    out = (parts[0] if len(parts) == 1 else torch.cat(parts))[:n] + math.log(d)
    if boost:
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64).clamp_min(1e-300)
        out = out + torch.log(u) / a
    return out


def beta_sample(
    alpha: float,
    beta: float,
    n: int,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` draws of Beta(alpha, beta) on ``device``: G1 / (G1 + G2), computed in log space.

    Beta(1, 1) is drawn directly as U(0, 1), and a symmetric Beta draws its two Gamma samples in
    one batch (the common cases, and the cheap ones). In float32, draws within ~6e-8 of 1 round to
    exactly 1.0 (for α = 0.1 that is ~8 % of them); ask for ``dtype=torch.float64`` where it matters.
    """
    if alpha == 1.0 and beta == 1.0:
        lam = torch.rand(n, generator=generator, device=generator_device(generator), dtype=torch.float64)
    else:
        if alpha == beta:
            log_g1, log_g2 = log_gamma_sample(alpha, 2 * n, generator).view(2, n)
        else:
            log_g1, log_g2 = log_gamma_sample(alpha, n, generator), log_gamma_sample(beta, n, generator)
        lam = torch.sigmoid(log_g1 - log_g2)
    lam = lam.to(dtype)
    return lam if device is None else lam.to(device, non_blocking=True)
