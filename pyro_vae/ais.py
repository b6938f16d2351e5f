"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo (BDMC).

A second estimator of log p(x) for a frozen decoder, besides importance weighting
(:func:`pyro_vae.estimators.log_likelihood`). Usage::

    est = ais(vae.model, x)                      # Estimate: (B,) stochastic lower bounds of log p(x), nats
    est = ais(vae.model, x, z_init=z_post)       # reverse AIS from exact posterior samples: upper bounds
    est = ais(vae.model, x, init=q_star)         # forward AIS from a fitted q(z) (batch (B,), event (K,))
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

With ``init = q`` (a proposal q(z) per datapoint, in practice the fitted q*), the path starts at
q instead of the prior: f_t(z) = q(z)^{1 - beta_t} (p(z) p(x | z))^{beta_t}, Z_0 = 1, and

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) [log p(z_{t-1}) + log p(x | z_{t-1}) - log q(z_{t-1})],

z_0 ~ q; the reverse run uses the same path. Both are the prior case with the "base" log p(z)
replaced by log q(z) and the "increment" log p(x | z) by log p(z) + log p(x | z) - log q(z):
log f_t = base + beta_t * increment. One step is importance sampling with q as proposal; for
q = p(z | x) every increment is log p(x), and the estimate is exact.

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
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample

from .errors import InputError, InputTypeError
from .contract import SITE, check_batch, model_terms
from .estimators import Estimate, draw
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
    likelihood. Differentiable in ``z``. A model whose module offers ``log_prior_likelihood(x, z)``
    (:meth:`pyro_vae.models.LatentVariableModel.log_prior_likelihood`) gives them without the trace.

    :raises ValueError: when the model has no ``"z"`` site, or a latent site besides it
        (AIS anneals over ``"z"`` alone, so every other site must be observed).
    """
    terms = model_terms(model, x, z)
    if terms is not None:
        return terms
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
    """z ``(C, B, K)`` with log f_beta(z) = base + beta * delta, base and delta ``(C, B)``, and their gradients
    ``(C, B, K)``, all detached.

    Without ``init``: base = log p(z), delta = log p(x | z), the path from the prior. With ``init = q``:
    base = log q(z), delta = log p(z) + log p(x | z) - log q(z), the path from q.
    """

    def __init__(self, model: Callable, x: torch.Tensor, z: torch.Tensor,
                 init: Optional[torch.distributions.Distribution] = None):
        z = z.detach().requires_grad_(True)
        prior, likelihood = log_prior_likelihood(model, x, z)
        if init is None:
            # two graphs that share only the leaf z: the prior's is tiny, so keeping it costs nothing
            base, grad_base = prior, torch.autograd.grad(prior.sum(), z, retain_graph=True)[0]
            delta = likelihood
            grad_delta, = torch.autograd.grad(likelihood.sum(), z) if likelihood.requires_grad else \
                (torch.zeros_like(z),)
        else:
            joint = prior + likelihood
            # a diverged leapfrog proposal (inf or NaN in z) is scored at 0 and given log q = -inf, so that it is
            # rejected (its H is not finite) rather than failing q's own argument validation
            finite = torch.isfinite(z).all(-1)  # (C, B)
            base = init.log_prob(torch.where(finite.unsqueeze(-1), z, torch.zeros_like(z)))  # (C, B)
            base = torch.where(finite, base, torch.full_like(base, -math.inf))  # only z's gradient is taken, not q's
            grad_base, = torch.autograd.grad(base.sum(), z)
            grad_joint, = torch.autograd.grad(joint.sum(), z)
            delta, grad_delta = joint - base, grad_joint - grad_base
        self.grad_base, self.grad_delta = grad_base, grad_delta
        self.z, self.base, self.delta = z.detach(), base.detach(), delta.detach()

    def log_f(self, beta: float) -> torch.Tensor:
        """log f_beta(z) = base + beta delta: ``(C, B)``."""
        return self.base + beta * self.delta

    def grad_log_f(self, beta: float) -> torch.Tensor:
        return self.grad_base + beta * self.grad_delta

    def where(self, accept: torch.Tensor, other: "_State") -> "_State":
        """``other`` where ``accept: (C, B)`` is True, else self (in place)."""
        a = accept.unsqueeze(-1)
        self.z = torch.where(a, other.z, self.z)
        self.grad_base = torch.where(a, other.grad_base, self.grad_base)
        self.grad_delta = torch.where(a, other.grad_delta, self.grad_delta)
        self.base = torch.where(accept, other.base, self.base)
        self.delta = torch.where(accept, other.delta, self.delta)
        return self


def _hmc(model: Callable, x: torch.Tensor, state: _State, beta: float, step_size: torch.Tensor,
         leapfrog_steps: int, init: Optional[torch.distributions.Distribution] = None) -> Tuple[_State, torch.Tensor]:
    """One HMC transition leaving f_beta invariant (on the path from ``init``, else from the prior), for every
    chain at once.

    ``step_size: (B,)`` is the adapted step size of each datapoint; every chain uses it times its
    own uniform draw from [1 - STEP_SIZE_JITTER, 1 + STEP_SIZE_JITTER], independent of the state, so
    the transition is a mixture of HMC kernels that each leave f_beta invariant. The jitter breaks
    the periodicity of a fixed trajectory length (a direction whose period is close to it barely
    moves; Neal 2011, section 5.4.2.2). Momentum v ~ N(0, I); ``leapfrog_steps`` leapfrog steps;
    Metropolis accept/reject on the Hamiltonian H = -log f_beta(z) + |v|^2 / 2 (a proposal whose H
    is not finite is rejected).
    Returns the new state and the acceptance probabilities ``(C, B)``.
    """
    jitter = 1.0 + STEP_SIZE_JITTER * (2.0 * torch.rand_like(state.base) - 1.0)  # (C, B)
    eps = (step_size * jitter).unsqueeze(-1)  # (C, B, 1), broadcasts against z: (C, B, K)
    v0 = torch.randn_like(state.z)
    v = v0 + 0.5 * eps * state.grad_log_f(beta)
    proposal = state
    for step in range(leapfrog_steps):
        proposal = _State(model, x, proposal.z + eps * v, init)
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


def check_model(model: Callable, x: torch.Tensor) -> None:
    """A one-line :class:`InputError` now, from one model evaluation on ``x[:1]``, when AIS cannot anneal ``model``:
    it has no ``"z"`` site, or a latent site besides it (see :func:`log_prior_likelihood`), or ``x`` cannot be
    scored (:func:`pyro_vae.contract.check_batch`)."""
    check_batch(model, None, x)
    _z_event_shape(model, x[:1])  # the model has a "z" site
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        trace = _trace(model, x[:1], 1)  # its draw leaves the random numbers of the estimates that follow as they were
        log_prior_likelihood(model, x[:1], trace.nodes[SITE]["value"].detach())


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"ais: {name} must be an integer >= 1, got {value!r}.")


def _z_event_shape(model: Callable, x: torch.Tensor) -> torch.Size:
    """The event shape of the model's ``"z"`` site on ``x``, running the model only up to that site (no draw,
    nothing after it: no likelihood is evaluated)."""
    try:
        with torch.no_grad():
            poutine.escape(model, escape_fn=lambda msg: msg["name"] == SITE)(x)
    except NonlocalExit as stop:
        return stop.site["fn"].event_shape
    raise InputError(f"ais: the model has no sample site {SITE!r} (see pyro_vae.contract).")


def _check_init(model: Callable, x: torch.Tensor, init) -> int:
    """K, once ``init`` is a distribution of batch ``(B,)`` and event ``(K,)`` matching the model's ``"z"``."""
    if not isinstance(init, torch.distributions.Distribution):
        raise InputTypeError(f"ais: init must be a torch distribution q(z) with batch shape (B,) and event shape (K,) "
                             f"(e.g. a MultivariateNormal), got {type(init).__name__}.")
    b = len(x)
    event = tuple(_z_event_shape(model, x))
    shapes = f"batch {tuple(init.batch_shape)}, event {tuple(init.event_shape)}"
    if tuple(init.batch_shape) != (b,) or tuple(init.event_shape) != event:
        raise InputError(f"ais: init must have batch shape (B,) = {(b,)} (one q per row of x) and event shape "
                         f"{event} (the model's {SITE!r} site), got {shapes}; build it from the rows of x it scores.")
    try:
        mean = init.mean
    except NotImplementedError:
        mean = None
    if torch.is_tensor(mean) and (mean.dtype != x.dtype or mean.device != x.device):
        raise InputError(f"ais: init is {mean.dtype} on {mean.device} but x is {x.dtype} on {x.device}; "
                         f"build init with x's dtype and device.")
    return event[-1]


def ais(model: Callable, x: torch.Tensor, *, num_chains: int = 16, num_steps: int = 500, leapfrog_steps: int = 10,
        step_size: float = 0.05, target_accept: float = 0.65, z_init: Optional[torch.Tensor] = None,
        init: Optional[torch.distributions.Distribution] = None, progress: bool = False) -> Estimate:
    """log p(x) per datapoint by annealed importance sampling with HMC: an ``Estimate`` of ``(B,)``, nats.

    :param model: a model callable keeping :mod:`pyro_vae.contract`, e.g. ``vae.model``; its
        parameters are held fixed (no gradient reaches them; their ``.grad`` is left as it was).
    :param x: ``(B, D)`` data.
    :param num_chains: C, AIS chains per datapoint (independent but for the step size they share).
    :param num_steps: T, the number of annealing steps: temperatures beta_0..beta_T on the
        sigmoid schedule of Grosse et al. (2015) (:func:`sigmoid_schedule`, delta = 4).
        One HMC transition per intermediate distribution f_1..f_{T-1} (the transitions at the
        two ends would not change the weight), so ``num_steps=1`` is plain importance sampling
        with the prior (or ``init``) as proposal (forward) or the harmonic-mean estimator (reverse).
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
    :param z_init: None for forward AIS from z_0 ~ f_0 (the model's own prior, or ``init``). Otherwise
        exact posterior samples z ~ p(z | x), ``(num_chains, B, K)`` or ``(B, K)`` (the same
        start for every chain), and AIS runs in reverse, beta from 1 to 0 (to the prior, or to ``init``).
    :param init: None to anneal from the prior. Otherwise a proposal q(z), a torch distribution with batch
        shape ``(B,)`` (one per row of ``x``) and event shape ``(K,)``, e.g. the fitted per-datapoint q*
        (a ``MultivariateNormal`` or a ``Normal(...).to_event(1)``; any distribution whose ``log_prob`` is
        differentiable in z, with ``sample`` for a forward run), on x's dtype and device. The path is then
        f_beta(z) = q(z)^(1 - beta) (p(z) p(x | z))^beta, forward runs start at z_0 ~ q (drawn by
        :func:`pyro_vae.estimators.draw`), and the weight increments are
        (beta_t - beta_{t-1}) [log p(z) + log p(x | z) - log q(z)]: the bounds below hold for any q, and the
        closer q is to p(z | x), the fewer steps they need (for q = p(z | x) one step is exact). Only the
        gradient of log q wrt z is taken; q's own parameters get none. Checked before any model evaluation
        but the run up to the ``"z"`` site that gives K (a one-line ``InputError`` naming the shapes).
    :param progress: a progress bar over the annealing steps.
    :returns: forward: ``value`` = log mean_c w_c, a stochastic lower bound of log p(x)
        (E[w] = p(x), so E[value] <= log p(x)). Reverse: ``value`` = -log mean_c w_rev_c, a
        stochastic upper bound (E[w_rev] = 1 / p(x), so E[value] >= log p(x)). ``stderr`` is the
        delta-method sqrt(1/ESS - 1/C) of :func:`pyro_vae.estimators.log_likelihood` (NaN for one
        chain); it assumes independent chains, so it is optimistic for a reverse run whose chains
        all start from the same ``(B, K)`` sample.

    Cost: (num_steps - 1) * leapfrog_steps model evaluations with a gradient wrt z, each over C * B
    rows at once (about 5 s for the defaults on 100 points of a small model, one CPU thread), plus as
    many evaluations of ``init.log_prob`` with its gradient when ``init`` is given.
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
    check_batch(model, None, x)

    forward = z_init is None
    c, b = num_chains, len(x)
    k = None if init is None else _check_init(model, x, init)
    betas = sigmoid_schedule(num_steps).tolist()
    with torch.enable_grad(), frozen(model):
        if init is None:
            z = _trace(model, x, c).nodes[SITE]["value"].detach()  # z_0 ~ p(z): (C, B, K)
            k = z.shape[-1]
        elif forward:
            z = draw(init, c)[0].detach()  # z_0 ~ q: (C, B, K)
        if not forward:
            z = torch.as_tensor(z_init, dtype=x.dtype, device=x.device).detach()
            if z.shape == (b, k):
                z = z.expand(c, b, k)
            if z.shape != (c, b, k):
                raise InputError(f"ais: z_init must have shape (num_chains, B, K) = {(c, b, k)} or (B, K) = {(b, k)}, "
                                 f"got {tuple(z.shape)}.")
        state = _State(model, x, z, init)  # validated like any model call
        log_w = torch.zeros(c, b, dtype=x.dtype, device=x.device)
        eps = torch.full((b,), float(step_size), dtype=x.dtype, device=x.device)
        # (beta_prev, beta): the chains are at f_beta_prev; forward beta = beta_1..beta_T, reverse beta_{T-1}..beta_0
        path = list(zip(betas[:-1], betas[1:])) if forward else list(zip(betas[:0:-1], betas[-2::-1]))
        with pyro.validation_enabled(False):
            for step in progress_bar(range(num_steps), "ais" if forward else "ais reverse", progress):
                beta_prev, beta = path[step]
                log_w = log_w + (beta - beta_prev) * state.delta  # f_beta / f_beta_prev at the current z
                if step < num_steps - 1:  # a transition targeting f_T (or f_0) would leave the weight as it is
                    state, accept_prob = _hmc(model, x, state, beta, eps, leapfrog_steps, init)
                    rate = accept_prob.mean(0)  # (B,): the mean acceptance probability of each datapoint's chains
                    eps = torch.where(rate > target_accept, eps * ADAPT_FACTOR, eps / ADAPT_FACTOR)
                    eps = eps.clamp(*STEP_SIZE_RANGE)
    value, stderr = _log_mean_exp(log_w)
    return Estimate(value if forward else -value, stderr)


def bdmc(model: Callable, x: torch.Tensor, z_true: torch.Tensor, *,
         init: Optional[torch.distributions.Distribution] = None, **ais_kwargs) -> pd.DataFrame:
    """Bidirectional Monte Carlo: log p(x) sandwiched between forward and reverse AIS, one row per datapoint.

    For ``x: (B, D)`` simulated from the model and ``z_true: (B, K)`` (or ``(C, B, K)``) the
    latents it was simulated from, which are exact posterior samples: forward AIS from the prior
    (or from ``init``) gives ``lower`` and reverse AIS from ``z_true`` back to it gives ``upper``,
    stochastic lower and upper bounds of log p(x) in nats; ``width = upper - lower`` bounds the error
    of either (up to Monte Carlo noise) and shrinks to 0 as ``num_steps`` grows. Columns ``lower``,
    ``lower_se``, ``upper``, ``upper_se``, ``width``, ``width_se`` (the two standard errors combined),
    index ``row``. ``init`` (a proposal q(z), batch ``(B,)``, event ``(K,)``: see :func:`ais`) and
    ``ais_kwargs`` go to both runs of :func:`ais`; both run on the same path, from q to p(z) p(x | z).
    """
    if "z_init" in ais_kwargs:
        raise InputError("bdmc: pass the exact posterior samples as z_true, not z_init.")
    lower = ais(model, x, init=init, **ais_kwargs)
    upper = ais(model, x, z_init=z_true, init=init, **ais_kwargs)
    out = pd.DataFrame(index=pd.RangeIndex(len(x), name="row"))
    for name, est in (("lower", lower), ("upper", upper)):
        out[name], out[f"{name}_se"] = est.value.detach().cpu().numpy(), est.stderr.detach().cpu().numpy()
    out["width"] = out["upper"] - out["lower"]
    out["width_se"] = (out["lower_se"] ** 2 + out["upper_se"] ** 2) ** 0.5
    return out
