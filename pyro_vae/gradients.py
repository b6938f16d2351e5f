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

References: Williams (1992), REINFORCE; Kingma & Welling (2014); Rezende et al. (2014).
"""

from __future__ import annotations

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


def _model():
    x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
    pyro.factor("f", x**2)


def _guide(reparameterized: bool):
    theta = pyro.param("theta")
    q = dist.Normal(theta, 1.0)
    if not reparameterized:
        q = q.has_rsample_(False)
    pyro.sample("x", q)


def gradient_draws(theta: float, reparameterized: bool, num_draws: int = 1000, num_samples: int = 1) -> torch.Tensor:
    """``num_draws`` independent estimates of d/dtheta E_{N(theta,1)}[x^2] (true value 2 theta): ``(num_draws,)``.

    Each draw averages ``num_samples`` samples (particles). Uses and then
    clears Pyro's param store entry ``"theta"``.
    """
    elbo = (Trace_ELBO if reparameterized else TraceGraph_ELBO)(num_particles=num_samples,
                                                                 vectorize_particles=False)
    out = torch.empty(num_draws)
    store = pyro.get_param_store()
    for i in range(num_draws):
        if "theta" in store:
            del store["theta"]
        pyro.param("theta", torch.tensor(float(theta)))
        elbo.loss_and_grads(_model, lambda: _guide(reparameterized))
        out[i] = -store.get_param("theta").unconstrained().grad  # loss = -ELBO
    del store["theta"]
    return out


def gradient_variance(thetas: Iterable[float], num_samples: Iterable[int] = (1,), num_draws: int = 500
                      ) -> pd.DataFrame:
    """Mean and variance of both estimators over a grid of theta and sample counts.

    Columns: theta, num_samples, estimator ("score function" | "reparameterized"),
    mean, variance, true (2 theta), stderr (of the mean).
    """
    rows = []
    for theta in thetas:
        for n in num_samples:
            for name, reparameterized in (("score function", False), ("reparameterized", True)):
                g = gradient_draws(theta, reparameterized, num_draws, n)
                rows.append({"theta": float(theta), "num_samples": int(n), "estimator": name,
                             "mean": float(g.mean()), "variance": float(g.var()), "true": 2.0 * theta,
                             "stderr": float(g.std() / num_draws**0.5)})
    return pd.DataFrame(rows)
