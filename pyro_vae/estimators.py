"""Per-datapoint estimators, in nats, for any model and any registered guide.

Usage::

    est = elbo(vae.model, guide, x, idx, num_samples=100)
    est.value, est.stderr            # (batch,) ELBO and its Monte Carlo standard error at each point
    est.mean()                       # (mean over the batch, the Monte Carlo SE of that mean)
    est = log_likelihood(vae.model, guide, x, idx, num_samples=5000, chunk_size=500)
    kl_to_prior(guide.distribution(x))   # (batch,) closed-form KL(q || N(0, I))

Every estimator draws z from ``guide.distribution(x, idx)`` (batch ``(B,)``,
event ``(K,)``) and scores it under the model with ``z`` conditioned, through
Pyro's own trace, so it works for any model that keeps the contract in
:mod:`pyro_vae.contract`. Log-densities are the per-datapoint, unscaled ones.

Annealed importance sampling and its BDMC sandwich, a second estimator of log p(x), are in
:mod:`pyro_vae.ais` (``from pyro_vae.ais import ais, bdmc``).

Importing this module registers the closed-form KL between a
MultivariateNormal and a diagonal Normal with torch's KL registry, so
``TraceMeanField_ELBO`` uses it for the full-covariance guides.

References: Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import pyro
import pyro.poutine.util
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl

from .errors import InputError, InputTypeError
from .contract import check_batch, log_joint


class Estimate(NamedTuple):
    """A per-datapoint Monte Carlo estimate in nats: ``value`` and ``stderr``, each ``(batch,)``.

    ``stderr[i]`` is the Monte Carlo standard error of ``value[i]``: the noise of the draws at point i, which more
    draws shrink. It says nothing of how points differ: that spread, and the standard error of a comparison of two
    methods on the same points (of their paired differences), come from ``value`` across points.
    """

    value: torch.Tensor
    stderr: torch.Tensor

    def mean(self) -> Tuple[float, float]:
        """The mean over the batch and its Monte Carlo standard error sqrt(sum_i stderr_i^2) / B, as floats: the
        draws' noise in the mean of these points (not the standard error across points, ``value.std() / sqrt(B)``)."""
        n = self.value.numel()
        return float(self.value.mean()), float(self.stderr.pow(2).sum().sqrt() / n)


def check_count(name: str, value) -> None:
    """A one-line :class:`InputError` unless ``value`` is a positive integer (a sample count, a chunk size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")


def log_weights(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
                num_samples: int = 1, sticking_the_landing: bool = False) -> torch.Tensor:
    """log p(x, z_s) - log q(z_s | x, idx) for z_s ~ q, s = 1..S: ``(S, B)``, differentiable (reparameterized).

    ``idx`` reaches only the guide (per-datapoint guides pick their rows with it).
    With ``sticking_the_landing`` the value is the same but log q is scored
    with q's parameters detached, so the gradient drops the score term, whose
    expectation is zero: its variance vanishes as q reaches the exact
    posterior (Roeder, Wu & Duvenaud 2017, "Sticking the Landing").
    """
    check_count("num_samples", num_samples)
    q = guide.distribution(x, idx)
    z = q.rsample((num_samples,))
    if sticking_the_landing:
        with torch.no_grad():
            q = guide.distribution(x, idx)
    return log_joint(model, x, z) - q.log_prob(z)


#: floats one block of draws may hold per activation (draws x rows x the widest layer), by device type: on the CPU a
#: block that stays in the caches. On digits (8-256-64), 250 draws of all 359 test points at once (23 M floats) made
#: a hand-written K = 5 000 importance-weighted pass 3.4x slower than blocks of 64 points (benchmarks/evaluate.md).
BLOCK_ELEMENTS = {"cpu": 2 ** 21}
#: the block of a device type not in :data:`BLOCK_ELEMENTS` (an accelerator: large blocks, fewer kernels)
LARGE_BLOCK_ELEMENTS = 2 ** 24
#: the fewest draws per block when rows are split into blocks (fewer would cost more in Pyro's tracing than they save)
MIN_DRAWS = 32


def block_elements(device) -> int:
    """The floats one block of draws may hold per activation on ``device`` (:data:`BLOCK_ELEMENTS`)."""
    return BLOCK_ELEMENTS.get(torch.device(device).type, LARGE_BLOCK_ELEMENTS)


def widest(model: Callable, x: torch.Tensor) -> int:
    """The widest activation per draw of ``model`` on ``x: (B, D)``: max(D, K, hidden widths), floats."""
    module = getattr(model, "__self__", model)
    return max([x.shape[-1], getattr(module, "z_dim", 1), *getattr(module, "hidden", ())])


def block_shape(num_samples: int, num_rows: int, width: int, device) -> Tuple[int, int]:
    """``(rows, draws)`` per block of an estimator: ``draws * rows * width`` floats within the device's
    :func:`block_elements`, every row in one block when that leaves at least :data:`MIN_DRAWS` draws."""
    budget = block_elements(device) // max(1, width)
    draws = min(num_samples, max(MIN_DRAWS, budget // max(1, num_rows)))
    return min(num_rows, max(1, budget // draws)), draws


class _Moments:
    """Per-row running sums of the log weights w ``(S, B)`` of one block: for log mean exp(w) and mean w."""

    def __init__(self):
        self.count, self.max = 0, None

    def add(self, w: torch.Tensor) -> None:
        if self.max is None:
            self.max = self.shift = w.max(0).values
            self.sum1 = self.sum2 = self.total = self.squares = torch.zeros_like(self.max)
        m = torch.maximum(self.max, w.max(0).values)
        self.sum1 = self.sum1 * torch.exp(self.max - m) + torch.exp(w - m).sum(0)
        self.sum2 = self.sum2 * torch.exp(2 * (self.max - m)) + torch.exp(2 * (w - m)).sum(0)
        self.max = m
        centred = w - self.shift  # sums of w - shift: no cancellation between a large mean and a small spread
        self.total, self.squares = self.total + centred.sum(0), self.squares + centred.pow(2).sum(0)
        self.count += len(w)

    def estimates(self) -> Tuple[Estimate, Estimate]:
        s = self.count
        log_px = Estimate(self.max + torch.log(self.sum1) - math.log(s),
                          ((self.sum2 / self.sum1 ** 2) - 1.0 / s).clamp_min(0).sqrt())
        mean = self.total / s
        if s > 1:
            stderr = ((self.squares - s * mean.pow(2)).clamp_min(0) / (s - 1) / s).sqrt()
        else:
            stderr = torch.full_like(mean, float("nan"))
        return log_px, Estimate(self.shift + mean, stderr)


def draw(q: torch.distributions.Distribution, num_samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws z ~ q and their log q(z): ``(S, B, K)`` and ``(S, B)``, without gradient.

    A Gaussian q (a MultivariateNormal, or a Normal(...).to_event(1)) is drawn as z = m + L eps and scored
    from eps, log q(z) = -|eps|^2 / 2 - log det L - K/2 log 2 pi, which spares the triangular solve of
    ``log_prob``; any other q by its own ``sample`` and ``log_prob``.
    """
    with torch.no_grad():
        if isinstance(q, MultivariateNormal):
            loc, scale_tril = q.loc.expand(q.batch_shape + q.event_shape), q.scale_tril
            eps = torch.randn((num_samples, *loc.shape), dtype=loc.dtype, device=loc.device)
            z = loc + torch.einsum("...ij,s...j->s...i", scale_tril, eps)
            log_det = torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        elif isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
            loc, scale = q.base_dist.loc, q.base_dist.scale
            eps = torch.randn((num_samples, *q.batch_shape, *q.event_shape), dtype=loc.dtype, device=loc.device)
            z = loc + scale * eps
            log_det = scale.log().expand(q.batch_shape + q.event_shape).sum(-1)
        else:
            z = q.sample((num_samples,))
            return z, q.log_prob(z)
        k = z.shape[-1]
        return z, -0.5 * eps.pow(2).sum(-1) - log_det - 0.5 * k * math.log(2 * math.pi)


def importance(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
               num_samples: int = 5000, chunk_size: Optional[int] = None) -> Tuple[Estimate, Estimate]:
    """One pass of ``num_samples`` draws z ~ q per datapoint of ``x: (B, D)``, giving both estimates that its log
    weights w = log p(x, z) - log q(z | x, idx) hold: ``(log_px, elbo)``, each an :class:`Estimate` of ``(B,)`` nats.

    - ``log_px`` = log (1/S) sum_s exp(w_s), importance-weighted log p(x), with the delta-method standard error
      sqrt(1/ESS - 1/S) (see :func:`log_likelihood`);
    - ``elbo`` = (1/S) sum_s w_s, the ELBO of q, with the standard error std(w) / sqrt(S).

    Draws come in blocks of :func:`block_shape` (a block of rows at a time, ``draws`` draws of each), so memory
    is bounded whatever ``num_samples``; with ``chunk_size`` given, every row at once, ``chunk_size`` draws at a
    time (memory O(chunk_size * B * D)). Rows are independent: the blocks change which random numbers a row
    gets, not what its estimates estimate.
    """
    check_count("num_samples", num_samples)
    check_batch(model, guide, x, idx)
    if chunk_size is not None:
        check_count("chunk_size", chunk_size)
        rows, draws = len(x), chunk_size
    else:
        rows, draws = block_shape(num_samples, len(x), widest(model, x), x.device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), rows):
            xb = x[start:start + rows]
            q = guide.distribution(xb, None if idx is None else idx[start:start + rows])
            moments = _Moments()
            for drawn in range(0, num_samples, draws):
                # the model is validated on a first block; the rest run without Pyro's checks, which repeat them
                with pyro.validation_enabled(pyro.poutine.util.is_validation_enabled() and start == drawn == 0):
                    z, log_q = draw(q, min(draws, num_samples - drawn))
                    moments.add(log_joint(model, xb, z) - log_q)
            parts.append(moments.estimates())
    return tuple(Estimate(torch.cat([p[i].value for p in parts]), torch.cat([p[i].stderr for p in parts]))
                 for i in range(2))


def elbo(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
         num_samples: int = 100, chunk_size: Optional[int] = None) -> Estimate:
    """The ELBO E_q[log p(x, z) - log q(z | x)] per datapoint, with its standard error (no gradient).

    ``num_samples`` draws per datapoint, in the blocks of :func:`importance`; the standard error is
    std(w) / sqrt(S) (NaN for one draw).
    """
    return importance(model, guide, x, idx, num_samples, chunk_size)[1]


def log_likelihood(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
                   num_samples: int = 5000, chunk_size: Optional[int] = None) -> Estimate:
    """Importance-weighted log p(x) = log (1/S) sum_s p(x, z_s) / q(z_s | x) per datapoint.

    Samples are drawn in blocks (:func:`importance`), so memory is bounded whatever
    ``num_samples``. The standard error is the delta-method one,
    sqrt((1/ESS - 1/S)) with ESS = (sum w)^2 / sum w^2 the effective sample
    size; it is honest when the weights have finite variance and
    optimistic when they are heavy-tailed. The estimate is biased low by
    about var(w) / (2 S mean(w)^2) nats and converges to log p(x) as S grows.
    """
    return importance(model, guide, x, idx, num_samples, chunk_size)[0]


def kl_to_prior(q: torch.distributions.Distribution) -> torch.Tensor:
    """Closed-form KL(q || N(0, I)) for a diagonal or full-covariance Gaussian q: ``(batch,)``, nats.

    KL(N(mu, S S^T) || N(0, I)) = 1/2 (tr(S S^T) + mu^T mu - K - log det S S^T); a diagonal q
    is the case S = diag(sigma). Computed by the registered MultivariateNormal-to-diagonal KL below.
    """
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        q = MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale))
    elif not isinstance(q, MultivariateNormal):
        raise InputTypeError(f"kl_to_prior needs a Normal(...).to_event(1) or a MultivariateNormal, got {type(q).__name__}.")
    prior = Independent(Normal(torch.zeros_like(q.loc), torch.ones_like(q.loc)), 1)
    return _kl_mvn_diagonal_normal(q, prior)


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal_normal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    """KL(N(mu, L L^T) || N(m, diag(s^2))) = 1/2 (sum_i (L L^T)_ii / s_i^2 + sum_i (m_i - mu_i)^2 / s_i^2
    - K + sum_i log s_i^2 - log det L L^T)."""
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    s = p.base_dist.scale
    L = q.scale_tril
    trace = (L.pow(2).sum(-1) / s.pow(2)).sum(-1)
    maha = ((p.base_dist.loc - q.loc) / s).pow(2).sum(-1)
    logdet_q = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    logdet_p = 2 * s.log().sum(-1)
    return 0.5 * (trace + maha - q.loc.shape[-1] + logdet_p - logdet_q)

