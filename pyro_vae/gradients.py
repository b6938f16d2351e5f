"""The reparameterization trick, and score-function vs reparameterized gradients, computed through Pyro.

Usage::

    z = reparameterize(loc, scale_matrix, eps)        # z = mu + S eps
    draws = gradient_draws(theta=1.0, reparameterized=True, num_draws=1000)
    table = gradient_variance(thetas=[0.5, 1, 2], num_samples=[1, 10])   # DataFrame

The test problem is d/dtheta E_{x ~ N(theta, 1)}[x^2] = 2 theta. It is posed
as an ELBO: the guide samples x ~ N(theta, 1); the model scores x with a flat
(improper) density plus ``pyro.factor(x^2)``. Then
ELBO(theta) = E[x^2] + H[N(theta, 1)] and the entropy does not depend on
theta, so the gradient of the ELBO is exactly 2 theta. The reparameterized
estimator is Pyro's ``Trace_ELBO`` on a Normal with ``rsample``; the
score-function estimator is ``TraceGraph_ELBO`` on the same Normal with
``has_rsample_(False)``.

What each one computes per sample x = theta + eps (see :func:`score_function_estimate`):

- reparameterized: 2 x (the path derivative of x^2; that of -log q(x) is 0);
- score function: f(x) (x - theta) with f(x) = x^2 - log q(x), Pyro's reward,
  which holds every cost downstream of the sample, -log q included; (x - theta)
  is d/dtheta log q(x). (The direct derivative of -log q(x) in theta, -(x - theta),
  has mean 0 and Pyro leaves it out.)

Both have mean 2 theta; their variances are closed form
(:func:`estimator_variance`).

References: Williams (1992), REINFORCE; Kingma & Welling (2014); Rezende et al. (2014).
"""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceGraph_ELBO


def reparameterize(loc: torch.Tensor, scale_matrix: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + S eps for ``loc: (K,)``, ``scale_matrix: (K, K)`` (any S) and ``eps: (n, K)`` -> ``(n, K)``.

    z ~ N(mu, S S^T) whatever S is: diagonal, lower-triangular (a Cholesky
    factor) or a general matrix; only S S^T is identifiable.
    """
    return loc + eps @ scale_matrix.T


def _model(num_draws: int):
    with pyro.plate("draws", num_draws):
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
        pyro.factor("f", x**2)


def _guide(num_draws: int, reparameterized: bool):
    theta = pyro.param("theta")  # (num_draws,): one copy of theta per independent draw
    with pyro.plate("draws", num_draws):
        q = dist.Normal(theta, 1.0)
        if not reparameterized:
            q = q.has_rsample_(False)
        return pyro.sample("x", q)


def gradient_draws(theta: float, reparameterized: bool, num_draws: int = 1000, num_samples: int = 1,
                   return_samples: bool = False):
    """``num_draws`` independent estimates of d/dtheta E_{N(theta,1)}[x^2] (true value 2 theta): ``(num_draws,)``.

    Each draw averages ``num_samples`` samples (particles). All draws are computed in one call of the ELBO:
    theta is a ``(num_draws,)`` parameter whose copies are sampled in a plate ``"draws"``, so draw i's
    gradient is the gradient with respect to copy i (the draws are independent terms of one loss), and the
    particles are vectorized. Uses and then clears Pyro's param store entry ``"theta"``. With
    ``return_samples``, also returns the x each estimate used: ``(num_draws, num_samples)``.
    """
    elbo = (Trace_ELBO if reparameterized else TraceGraph_ELBO)(num_particles=num_samples, vectorize_particles=True,
                                                                 max_plate_nesting=1)
    store = pyro.get_param_store()
    if "theta" in store:
        del store["theta"]
    pyro.param("theta", torch.full((num_draws,), float(theta)))
    seen = []
    elbo.loss_and_grads(lambda: _model(num_draws), lambda: seen.append(_guide(num_draws, reparameterized)))
    out = -store.get_param("theta").unconstrained().grad.clone()  # loss = -ELBO
    del store["theta"]
    samples = seen[0].detach().reshape(num_samples, num_draws).T
    return (out, samples) if return_samples else out


def score_function_estimate(theta: float, x: torch.Tensor) -> torch.Tensor:
    """The score-function estimate ``TraceGraph_ELBO`` forms from one sample x ~ N(theta, 1).

    f(x) (x - theta), f(x) = x^2 - log q(x) = x^2 + (x - theta)^2 / 2 + log(2 pi) / 2.
    """
    f = x**2 - torch.distributions.Normal(float(theta), 1.0).log_prob(x)
    return f * (x - theta)


def estimator_variance(theta: float, reparameterized: bool, num_samples: int = 1) -> float:
    """Closed-form variance of one gradient draw averaging ``num_samples`` samples.

    Reparameterized: Var[2 x] = 4. Score function, with eps = x - theta:
    f eps = a eps + b eps^2 + d eps^3, a = theta^2 + log(2 pi)/2, b = 2 theta, d = 3/2,
    so its variance is a^2 + 2 b^2 + 15 d^2 + 6 a d (from E eps^2 = 1, E eps^4 = 3,
    E eps^6 = 15 and the odd moments 0).
    """
    if reparameterized:
        return 4.0 / num_samples
    a, b, d = theta**2 + 0.5 * math.log(2 * math.pi), 2.0 * theta, 1.5
    return (a**2 + 2 * b**2 + 15 * d**2 + 6 * a * d) / num_samples


def gradient_variance(thetas: Iterable[float], num_samples: Iterable[int] = (1,), num_draws: int = 500
                      ) -> pd.DataFrame:
    """Mean and variance of both estimators over a grid of theta and sample counts.

    Columns: theta, num_samples, estimator ("score function" | "reparameterized"),
    mean, variance, true (2 theta), stderr (of the mean), exact_variance (closed form).
    """
    rows = []
    for theta in thetas:
        for n in num_samples:
            for name, reparameterized in (("score function", False), ("reparameterized", True)):
                g = gradient_draws(theta, reparameterized, num_draws, n)
                rows.append({"theta": float(theta), "num_samples": int(n), "estimator": name,
                             "mean": float(g.mean()), "variance": float(g.var()), "true": 2.0 * theta,
                             "stderr": float(g.std() / num_draws**0.5),
                             "exact_variance": estimator_variance(theta, reparameterized, n)})
    return pd.DataFrame(rows)
