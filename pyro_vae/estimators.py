"""Per-datapoint estimators, in nats, for any model and any registered guide.

Usage::

    est = elbo(vae.model, guide, x, idx, num_samples=100)
    est.value, est.stderr            # (batch,) ELBO and its Monte Carlo standard error
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

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, register_kl

from .errors import InputError, InputTypeError
from .contract import log_joint


class Estimate(NamedTuple):
    """A per-datapoint Monte Carlo estimate in nats: ``value`` and ``stderr``, each ``(batch,)``."""

    value: torch.Tensor
    stderr: torch.Tensor

    def mean(self) -> Tuple[float, float]:
        """The batch mean and its Monte Carlo standard error, as floats."""
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


def elbo(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
         num_samples: int = 100) -> Estimate:
    """The ELBO E_q[log p(x, z) - log q(z | x)] per datapoint, with its standard error (no gradient)."""
    with torch.no_grad():
        w = log_weights(model, guide, x, idx, num_samples)  # checks num_samples
    stderr = w.std(0) / math.sqrt(num_samples) if num_samples > 1 else torch.full_like(w[0], float("nan"))
    return Estimate(w.mean(0), stderr)


def log_likelihood(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None,
                   num_samples: int = 5000, chunk_size: int = 500) -> Estimate:
    """Importance-weighted log p(x) = log (1/S) sum_s p(x, z_s) / q(z_s | x) per datapoint.

    Samples are drawn ``chunk_size`` at a time, so memory is O(chunk_size * B * D)
    whatever ``num_samples``. The standard error is the delta-method one,
    sqrt((1/ESS - 1/S)) with ESS = (sum w)^2 / sum w^2 the effective sample
    size; it is honest when the weights have finite variance and
    optimistic when they are heavy-tailed. The estimate is biased low by
    about var(w) / (2 S mean(w)^2) nats and converges to log p(x) as S grows.
    """
    check_count("num_samples", num_samples)
    check_count("chunk_size", chunk_size)
    running_max = sum1 = sum2 = None  # sum of exp(w - max) and of exp(2 (w - max))
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            w = log_weights(model, guide, x, idx, min(chunk_size, num_samples - start))
            m = w.max(0).values if running_max is None else torch.maximum(running_max, w.max(0).values)
            if running_max is not None:
                sum1, sum2 = sum1 * torch.exp(running_max - m), sum2 * torch.exp(2 * (running_max - m))
            else:
                sum1, sum2 = torch.zeros_like(m), torch.zeros_like(m)
            sum1 = sum1 + torch.exp(w - m).sum(0)
            sum2 = sum2 + torch.exp(2 * (w - m)).sum(0)
            running_max = m
    value = running_max + torch.log(sum1) - math.log(num_samples)
    stderr = ((sum2 / sum1**2) - 1.0 / num_samples).clamp_min(0).sqrt()
    return Estimate(value, stderr)


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

