"""Random draws that go through an explicit ``torch.Generator``.

``torch.distributions.Beta`` cannot take a generator, so a Beta draw is built here from two Gamma
draws (Marsaglia & Tsang 2000, "A simple method for generating gamma variables"), vectorised
rejection sampling driven only by ``torch.randn``/``torch.rand`` with the given generator. The
ratio is formed in log space, so tiny concentrations (α = 0.05) never produce 0/0. The rejection
step has a fixed size (no loop, no data-dependent shape), so it runs unchanged inside
``torch.compile(fullgraph=True)``.

Convention: small parameter tensors (λ, box corners, pair indices) are drawn on the generator's
device (the CPU when ``generator`` is ``None``, using the global torch seed) and then moved to the
images' device with ``non_blocking=True``. Results are thus identical on CPU and GPU for the same
seed, and no draw waits for the device.

Under ``torch.compile`` every draw goes through one opaque custom op, ``mixlab::draw``, that
calls the same ``torch.rand``/``randn``/``randint``/``randperm`` on the same generator at run
time (dynamo cannot put a ``torch.Generator`` into a graph). So a compiled mixer is one graph and
makes exactly the draws the eager one makes: same generator state in, same output out. The op
threads a token tensor, which keeps the draws in program order and stops the compiler from
merging two draws that look alike.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

__all__ = ["generator_device", "rand", "randn", "randint", "randperm", "log_gamma_sample", "beta_sample"]


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on: the generator's, or the CPU."""
    return generator.device if generator is not None else torch.device("cpu")


# ----------------------------------------------------------------------------- draws under compile
_GENERATORS: dict[int, weakref.ref] = {}  # handle -> generator, for the compiled graphs' draws
_TOKEN = torch.zeros(1)  # orders the draws inside a compiled graph (declared mutated by each draw)


def _generator_of(handle: int) -> torch.Generator:
    if handle == 0:
        return torch.default_generator
    generator = _GENERATORS[handle]()
    if generator is None:
        raise RuntimeError("the torch.Generator of this compiled mixer was garbage-collected")
    return generator


def _handle_of(generator: torch.Generator | None) -> int:
    """An int naming ``generator`` (0: the global CPU generator), fixed into the compiled graph;
    dynamo guards on the generator object, so another generator recompiles."""
    if generator is None:
        return 0
    _GENERATORS[id(generator)] = weakref.ref(generator)
    return id(generator)


# = torch.compiler.assume_constant_result(_handle_of): dynamo calls it at trace time and keeps the
# int. The decorator only sets this attribute, but imports torch._dynamo (and numpy, sympy) to do
# so, which `import mixlab` must not; tests/test_core.py checks the two stay the same.
_handle_of._dynamo_marked_constant = True  # type: ignore[attr-defined]


@torch.library.custom_op("mixlab::draw", mutates_args=("token",))
def _draw_op(token: Tensor, handle: int, kind: str, shape: list[int], dtype: torch.dtype, high: int) -> Tensor:
    return _eager_draw(kind, shape, _generator_of(handle), dtype, high)


@_draw_op.register_fake
def _draw_fake(token: Tensor, handle: int, kind: str, shape: list[int], dtype: torch.dtype, high: int) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=generator_device(_generator_of(handle) if handle else None))


def _eager_draw(kind: str, shape, generator: torch.Generator | None, dtype: torch.dtype, high: int = 0) -> Tensor:
    device = generator.device if generator is not None else None  # None: the CPU
    if kind == "rand":
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    if kind == "randn":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if kind == "randint":
        return torch.randint(high, shape, generator=generator, device=device, dtype=dtype)
    return torch.randperm(high, generator=generator, device=device, dtype=dtype)


def _draw(kind: str, shape, generator: torch.Generator | None, dtype: torch.dtype, high: int = 0) -> Tensor:
    if torch.compiler.is_compiling():
        return _draw_op(_TOKEN, _handle_of(generator), kind, list(shape), dtype, high)
    return _eager_draw(kind, shape, generator, dtype, high)


# ----------------------------------------------------------------------------- public draws
def rand(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None,
         dtype: torch.dtype = torch.float32) -> Tensor:
    """U[0, 1) draws made on the generator's device, returned on ``device``."""
    if torch.compiler.is_compiling():
        out = _draw_op(_TOKEN, _handle_of(generator), "rand", list(shape), dtype, 0)
    else:  # the hot path, inlined
        out = torch.rand(shape, generator=generator, device=generator.device if generator is not None else None, dtype=dtype)
    return out if device is None else out.to(device, non_blocking=True)


def randn(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, 1) draws made on the generator's device, returned on ``device``."""
    out = _draw("randn", shape, generator, dtype)
    return out if device is None else out.to(device, non_blocking=True)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
    """Integers uniform in [0, high), returned on ``device``."""
    out = _draw("randint", shape, generator, torch.int64, high)
    return out if device is None else out.to(device, non_blocking=True)


def randperm(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """A random permutation of range(n), returned on ``device``."""
    out = _draw("randperm", (n,), generator, torch.int64, n)
    return out if device is None else out.to(device, non_blocking=True)


def log_gamma_sample(shape_param: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of log(G), G ~ Gamma(shape_param, 1), float64, on the generator's device.

    Marsaglia-Tsang for shape >= 1; for shape < 1, G = G' * U^(1/shape) with G' ~ Gamma(shape + 1),
    i.e. log G = log G' + log(U) / shape.

    One round of m = n + n//8 + 8 candidates, of which the first n accepted are kept, in draw
    order (acceptance is above 95 %, so a round holds fewer than n acceptances with probability
    below 1e-9 for any n; a missing draw then takes G' = d, the proposal's centre). Fixed
    shapes: no loop, no host read.
    """
    a = float(shape_param)
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    m = n + n // 8 + 8
    x = randn((m,), generator, dtype=torch.float64)
    u = rand((m,), generator, dtype=torch.float64)
    log_v = 3.0 * torch.log1p(c * x)  # NaN where 1 + c x <= 0: rejected below
    ok = torch.log(u) < 0.5 * x * x + d - d * torch.exp(log_v) + d * log_v
    first = torch.argsort(~ok, stable=True)[:n]  # the accepted candidates first, in draw order
    out = torch.where(ok[first], log_v[first], 0.0) + math.log(d)
    if boost:
        u = rand((n,), generator, dtype=torch.float64).clamp_min(1e-300)
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
        lam = rand((n,), generator, dtype=torch.float64)
    else:
        if alpha == beta:
            log_g1, log_g2 = log_gamma_sample(alpha, 2 * n, generator).view(2, n)
        else:
            log_g1, log_g2 = log_gamma_sample(alpha, n, generator), log_gamma_sample(beta, n, generator)
        lam = torch.sigmoid(log_g1 - log_g2)
    lam = lam.to(dtype)
    return lam if device is None else lam.to(device, non_blocking=True)
