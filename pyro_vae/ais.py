"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo (BDMC).

A second estimator of log p(x) for a frozen decoder, besides importance weighting
(:func:`pyro_vae.estimators.log_likelihood`). Usage::

    est = ais(vae.model, x)                      # Estimate: (B,) stochastic lower bounds of log p(x), nats
    est = ais(vae.model, x, z_init=z_post)       # reverse AIS from exact posterior samples: upper bounds
    table = bdmc(vae.model, x, z_true)           # one row per datapoint: lower, upper, width (+ _se)

Forward AIS (Neal 2001) anneals from the prior p(z) = f_0 to the unnormalized posterior
f_T(z) = p(z) p(x | z) along the geometric path f_t(z) = p(z) p(x | z)^{beta_t},
0 = beta_0 < ... < beta_T = 1. With z_0 ~ p(z) and z_t drawn by a transition that
leaves f_t invariant, the weight

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) log p(x | z_{t-1})

has E[w] = Z_T / Z_0 = p(x), so log mean_c w_c is a stochastic lower bound of log p(x)
(Jensen: its expectation is at most log p(x)). Reverse AIS runs the same path backwards
from an exact posterior sample z_T ~ p(z | x): its weight

    log w_rev = sum_{t=T..1} (beta_{t-1} - beta_t) log p(x | z_t)      (z_t: the state while at f_t)

has E[w_rev] = Z_0 / Z_T = 1 / p(x), so log mean_c w_rev_c is a stochastic lower bound of
-log p(x), and -log mean_c w_rev_c a stochastic UPPER bound of log p(x). For data
simulated from the model, the latent it was simulated from is an exact posterior
sample, and the two runs sandwich log p(x) (Grosse, Ghahramani & Adams 2015, Sandwiching
the marginal likelihood using bidirectional Monte Carlo; Wu, Burda, Salakhutdinov & Grosse
2017, On the quantitative analysis of decoder-based generative models).

Densities come from the model itself, run under Pyro's trace with ``"z"`` conditioned, so
any model keeping :mod:`pyro_vae.contract` works: the ``"z"`` site's unscaled log-density
is log p(z), every other sample site's is part of log p(x | z).

References: Neal (2001), Annealed importance sampling; Neal (2011), MCMC using Hamiltonian dynamics.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .errors import InputError
from .contract import SITE
from .estimators import Estimate
from .nets import frozen
from .progress import progress_bar

#: multiplicative step-size update per annealing step (Wu et al.'s code uses 1.02)
ADAPT_FACTOR = 1.02
#: the range the adapted step size is kept in (as in Wu et al.'s code)
STEP_SIZE_RANGE = (1e-4, 0.5)
#: each chain's step size in a transition is the adapted one times a uniform draw from 1 -+ this (Neal 2011, 5.4.2.2)
STEP_SIZE_JITTER = 0.5
#: steepness delta of the sigmoid schedule (Grosse et al. 2015 use 4)
SIGMOID_DELTA = 4.0


def sigmoid_schedule(num_steps: int, delta: float = SIGMOID_DELTA, dtype=torch.float64, device=None) -> torch.Tensor:
    """The annealing temperatures beta_0 = 0 < ... < beta_T = 1, ``(num_steps + 1,)``.

    Grosse, Ghahramani & Adams (2015): beta~_t = sigmoid(delta (2 t / T - 1)), rescaled so that
    the first is 0 and the last 1. Its steps in beta are smallest near 0, where log p(x | z) varies
    most under f_beta (so the weight increments would vary most), and near 1; largest in between.
    ``num_steps = 1`` gives (0, 1).
    """
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    s = torch.sigmoid(delta * torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64))
    return ((s - s[0]) / (s[-1] - s[0])).to(dtype=dtype, device=device)


def _trace(model: Callable, x: torch.Tensor, num_particles: int, z: Optional[torch.Tensor] = None):
    """The model's trace on ``x`` under a plate of ``num_particles`` at dim -2, with ``"z"`` conditioned on ``z``."""
    program = model if z is None else poutine.condition(model, data={SITE: z})
    with pyro.plate("particles", num_particles, dim=-2):
        return poutine.trace(program).get_trace(x)


def log_prior_likelihood(model: Callable, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """log p(z) and log p(x | z) for ``x: (B, D)`` and ``z: (C, B, K)``: each ``(C, B)``, nats.

    ``model(x)`` runs with ``"z"`` conditioned on ``z`` under a plate of C particles at dim -2
    (the model is called without ``idx``: unscaled, per-datapoint densities). The ``"z"``
    site's log-density is the prior term; the sum over every other sample site is the
    likelihood. Differentiable in ``z``.

    :raises ValueError: when the model has no ``"z"`` site, or a latent site besides it
        (AIS anneals over ``"z"`` alone, so every other site must be observed).
    """
    trace = _trace(model, x, z.shape[0], z)
    trace.compute_log_prob()
    prior, likelihood = None, 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if name == SITE:
            prior = site["unscaled_log_prob"]
        elif not site["is_observed"]:
            raise InputError(f"ais: the model has a latent sample site {name!r} besides {SITE!r}; "
                             f"AIS anneals over {SITE!r} alone, so every other site must be observed.")
        else:
            likelihood = likelihood + site["unscaled_log_prob"]
    if prior is None:
        raise InputError(f"ais: the model has no sample site {SITE!r} (see pyro_vae.contract).")
    shape = z.shape[:2]
    return prior.expand(shape), torch.as_tensor(likelihood, dtype=z.dtype, device=z.device).expand(shape)


class _State:
    """z ``(C, B, K)`` with its log p(z), log p(x | z) ``(C, B)`` and their gradients ``(C, B, K)``, all detached."""

    def __init__(self, model: Callable, x: torch.Tensor, z: torch.Tensor):
        z = z.detach().requires_grad_(True)
        prior, likelihood = log_prior_likelihood(model, x, z)
        # two graphs that share only the leaf z: the prior's is tiny, so keeping it costs nothing
        self.grad_prior, = torch.autograd.grad(prior.sum(), z, retain_graph=True)
        self.grad_likelihood, = torch.autograd.grad(likelihood.sum(), z) if likelihood.requires_grad else \
            (torch.zeros_like(z),)
        self.z, self.prior, self.likelihood = z.detach(), prior.detach(), likelihood.detach()

    def log_f(self, beta: float) -> torch.Tensor:
        """log f_beta(z) = log p(z) + beta log p(x | z): ``(C, B)``."""
        return self.prior + beta * self.likelihood

    def grad_log_f(self, beta: float) -> torch.Tensor:
        return self.grad_prior + beta * self.grad_likelihood

    def where(self, accept: torch.Tensor, other: "_State") -> "_State":
        """``other`` where ``accept: (C, B)`` is True, else self (in place)."""
        a = accept.unsqueeze(-1)
        self.z = torch.where(a, other.z, self.z)
        self.grad_prior = torch.where(a, other.grad_prior, self.grad_prior)
        self.grad_likelihood = torch.where(a, other.grad_likelihood, self.grad_likelihood)
        self.prior = torch.where(accept, other.prior, self.prior)
        self.likelihood = torch.where(accept, other.likelihood, self.likelihood)
        return self


def _hmc(model: Callable, x: torch.Tensor, state: _State, beta: float, step_size: torch.Tensor,
         leapfrog_steps: int) -> Tuple[_State, torch.Tensor]:
    """One HMC transition leaving f_beta invariant, for every chain at once.

    ``step_size: (B,)`` is the adapted step size of each datapoint; every chain uses it times its
    own uniform draw from [1 - STEP_SIZE_JITTER, 1 + STEP_SIZE_JITTER], independent of the state, so
    the transition is a mixture of HMC kernels that each leave f_beta invariant. The jitter breaks
    the periodicity of a fixed trajectory length (a direction whose period is close to it barely
    moves; Neal 2011, section 5.4.2.2). Momentum v ~ N(0, I); ``leapfrog_steps`` leapfrog steps;
    Metropolis accept/reject on the Hamiltonian H = -log f_beta(z) + |v|^2 / 2 (a proposal whose H
    is not finite is rejected).
    Returns the new state and the acceptance probabilities ``(C, B)``.
    """
    jitter = 1.0 + STEP_SIZE_JITTER * (2.0 * torch.rand_like(state.prior) - 1.0)  # (C, B)
    eps = (step_size * jitter).unsqueeze(-1)  # (C, B, 1), broadcasts against z: (C, B, K)
    v0 = torch.randn_like(state.z)
    v = v0 + 0.5 * eps * state.grad_log_f(beta)
    proposal = state
    for step in range(leapfrog_steps):
        proposal = _State(model, x, proposal.z + eps * v)
        v = v + (0.5 if step == leapfrog_steps - 1 else 1.0) * eps * proposal.grad_log_f(beta)
    h0 = -state.log_f(beta) + 0.5 * v0.pow(2).sum(-1)
    h1 = -proposal.log_f(beta) + 0.5 * v.pow(2).sum(-1)
    log_accept = (h0 - h1).clamp(max=0.0)
    log_accept = torch.where(torch.isfinite(h1), log_accept, torch.full_like(log_accept, -math.inf))
    accept = torch.rand_like(log_accept).log() < log_accept
    return state.where(accept, proposal), log_accept.exp()


def _log_mean_exp(log_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """log mean_c exp(log_w_c) over dim 0 of ``(C, B)`` and its delta-method standard error sqrt(1/ESS - 1/C)."""
    c = log_w.shape[0]
    m = log_w.max(0).values
    w = torch.exp(log_w - m)
    sum1, sum2 = w.sum(0), w.pow(2).sum(0)
    value = m + sum1.log() - math.log(c)
    stderr = (sum2 / sum1**2 - 1.0 / c).clamp_min(0).sqrt() if c > 1 else torch.full_like(value, math.nan)
    return value, stderr


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"ais: {name} must be an integer >= 1, got {value!r}.")


def ais(model: Callable, x: torch.Tensor, *, num_chains: int = 16, num_steps: int = 500, leapfrog_steps: int = 10,
        step_size: float = 0.05, target_accept: float = 0.65, z_init: Optional[torch.Tensor] = None,
        progress: bool = False) -> Estimate:
    """log p(x) per datapoint by annealed importance sampling with HMC: an ``Estimate`` of ``(B,)``, nats.

    :param model: a model callable keeping :mod:`pyro_vae.contract`, e.g. ``vae.model``; its
        parameters are held fixed (no gradient reaches them; their ``.grad`` is left as it was).
    :param x: ``(B, D)`` data.
    :param num_chains: C, AIS chains per datapoint (independent but for the step size they share).
    :param num_steps: T, the number of annealing steps: temperatures beta_0..beta_T on the
        sigmoid schedule of Grosse et al. (2015) (:func:`sigmoid_schedule`, delta = 4).
        One HMC transition per intermediate distribution f_1..f_{T-1} (the transitions at the
        two ends would not change the weight), so ``num_steps=1`` is plain importance sampling
        with the prior as proposal (forward) or the harmonic-mean estimator (reverse).
    :param leapfrog_steps: leapfrog steps per HMC transition.
    :param step_size: the initial leapfrog step size. It is adapted during annealing, as in
        Wu et al.'s code, one step size per datapoint: after each transition it is multiplied by
        1.02 when the mean Metropolis acceptance probability over the datapoint's C chains
        exceeds ``target_accept``, else divided by 1.02, and kept in [1e-4, 0.5]. Per datapoint,
        not per chain: the C chains of a datapoint share one target, and pooling them gives a
        C-fold less noisy acceptance signal; not global, since posteriors differ in width. In each
        transition every chain scales it by its own uniform draw from [0.5, 1.5]
        (``STEP_SIZE_JITTER``), which breaks the periodicity of a fixed trajectory length (see
        ``_hmc``). (An adapted step size depends on the chains' past, so the weights are exactly
        unbiased only without adaptation; its effect is far below the Monte Carlo error in the tests.)
    :param target_accept: the acceptance rate the adaptation aims at, in (0, 1).
    :param z_init: None for forward AIS from z_0 ~ p(z) (the model's own prior). Otherwise
        exact posterior samples z ~ p(z | x), ``(num_chains, B, K)`` or ``(B, K)`` (the same
        start for every chain), and AIS runs in reverse, beta from 1 to 0.
    :param progress: a progress bar over the annealing steps.
    :returns: forward: ``value`` = log mean_c w_c, a stochastic lower bound of log p(x)
        (E[w] = p(x), so E[value] <= log p(x)). Reverse: ``value`` = -log mean_c w_rev_c, a
        stochastic upper bound (E[w_rev] = 1 / p(x), so E[value] >= log p(x)). ``stderr`` is the
        delta-method sqrt(1/ESS - 1/C) of :func:`pyro_vae.estimators.log_likelihood` (NaN for one
        chain); it assumes independent chains, so it is optimistic for a reverse run whose chains
        all start from the same ``(B, K)`` sample.

    Cost: (num_steps - 1) * leapfrog_steps model evaluations with a gradient wrt z, each over C * B
    rows at once (about 5 s for the defaults on 100 points of a small model, one CPU thread).
    Works inside ``torch.no_grad()`` (gradients wrt z are taken under ``torch.enable_grad()``).
    The model is validated (``pyro.enable_validation``) at the first evaluation only; the
    annealing loop then runs without validation, so that a diverging leapfrog proposal is
    rejected rather than raising, and faster.
    """
    _check_positive_int("num_chains", num_chains)
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("leapfrog_steps", leapfrog_steps)
    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise InputError(f"ais: step_size must be a positive number, got {step_size!r}.")
    if not (isinstance(target_accept, (int, float)) and 0 < target_accept < 1):
        raise InputError(f"ais: target_accept must lie in (0, 1), got {target_accept!r}.")
    if not torch.is_tensor(x) or x.dim() != 2:
        raise InputError(f"ais: x must be a 2-D tensor (B, D), got {tuple(x.shape) if torch.is_tensor(x) else x!r}.")

    forward = z_init is None
    c, b = num_chains, len(x)
    betas = sigmoid_schedule(num_steps).tolist()
    with torch.enable_grad(), frozen(model):
        z = _trace(model, x, c).nodes[SITE]["value"].detach()  # z_0 ~ p(z): (C, B, K)
        if not forward:
            k = z.shape[-1]
            z = torch.as_tensor(z_init, dtype=x.dtype, device=x.device).detach()
            if z.shape == (b, k):
                z = z.expand(c, b, k)
            if z.shape != (c, b, k):
                raise InputError(f"ais: z_init must have shape (num_chains, B, K) = {(c, b, k)} or (B, K) = {(b, k)}, "
                                 f"got {tuple(z.shape)}.")
        state = _State(model, x, z)  # validated like any model call
        log_w = torch.zeros(c, b, dtype=x.dtype, device=x.device)
        eps = torch.full((b,), float(step_size), dtype=x.dtype, device=x.device)
        # (beta_prev, beta): the chains are at f_beta_prev; forward beta = beta_1..beta_T, reverse beta_{T-1}..beta_0
        path = list(zip(betas[:-1], betas[1:])) if forward else list(zip(betas[:0:-1], betas[-2::-1]))
        with pyro.validation_enabled(False):
            for step in progress_bar(range(num_steps), "ais" if forward else "ais reverse", progress):
                beta_prev, beta = path[step]
                log_w = log_w + (beta - beta_prev) * state.likelihood  # f_beta / f_beta_prev at the current z
                if step < num_steps - 1:  # a transition targeting f_T (or f_0) would leave the weight as it is
                    state, accept_prob = _hmc(model, x, state, beta, eps, leapfrog_steps)
                    rate = accept_prob.mean(0)  # (B,): the mean acceptance probability of each datapoint's chains
                    eps = torch.where(rate > target_accept, eps * ADAPT_FACTOR, eps / ADAPT_FACTOR)
                    eps = eps.clamp(*STEP_SIZE_RANGE)
    value, stderr = _log_mean_exp(log_w)
    return Estimate(value if forward else -value, stderr)


def bdmc(model: Callable, x: torch.Tensor, z_true: torch.Tensor, **ais_kwargs) -> pd.DataFrame:
    """Bidirectional Monte Carlo: log p(x) sandwiched between forward and reverse AIS, one row per datapoint.

    For ``x: (B, D)`` simulated from the model and ``z_true: (B, K)`` (or ``(C, B, K)``) the
    latents it was simulated from, which are exact posterior samples: forward AIS from the prior
    gives ``lower`` and reverse AIS from ``z_true`` gives ``upper``, stochastic lower and upper
    bounds of log p(x) in nats; ``width = upper - lower`` bounds the error of either (up to
    Monte Carlo noise) and shrinks to 0 as ``num_steps`` grows. Columns ``lower``, ``lower_se``,
    ``upper``, ``upper_se``, ``width``, ``width_se`` (the two standard errors combined), index
    ``row``. ``ais_kwargs`` go to both runs of :func:`ais`.
    """
    if "z_init" in ais_kwargs:
        raise InputError("bdmc: pass the exact posterior samples as z_true, not z_init.")
    lower = ais(model, x, **ais_kwargs)
    upper = ais(model, x, z_init=z_true, **ais_kwargs)
    out = pd.DataFrame(index=pd.RangeIndex(len(x), name="row"))
    for name, est in (("lower", lower), ("upper", upper)):
        out[name], out[f"{name}_se"] = est.value.detach().cpu().numpy(), est.stderr.detach().cpu().numpy()
    out["width"] = out["upper"] - out["lower"]
    out["width_se"] = (out["lower_se"] ** 2 + out["upper_se"] ** 2) ** 0.5
    return out
