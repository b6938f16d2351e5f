"""q*: the best member of a family for each datapoint, with the decoder frozen.

Usage::

    qstar = fit_local(vae.model, x, family="normal", init=guide)   # a MeanField over the rows of x
    qstar.distribution(x, torch.arange(len(x)))                      # q*_i, batch (n,), event (K,)

Two optimizers, one per kind of family:

- **Gaussian families** (``"normal"``: diagonal, ``"mvn"``: full covariance) are fitted by the
  natural-gradient fixed point of Gaussian variational inference (:func:`natural_gradient_fit`).
  At the optimum of the ELBO over q = N(m, S), the precision equals the expected negative Hessian
  of log p(x, z) under q and the expected gradient is zero (Opper & Archambeau 2009), so each
  iteration sets ``P <- -E_q[H]`` and takes the Newton step ``m <- m + P^-1 E_q[g]``: a natural
  gradient step of size one (Khan & Rue's Bayesian learning rule). ``E_q[H]`` comes from
  gradients alone, by Stein's lemma ``E_q[H] L = E_q[g eps^T]`` for z = m + L eps, so the
  kinks of a ReLU decoder (where the Hessian is a sum of delta functions) are counted as the
  ELBO counts them. The expectations use antithetic draws whitened to sample mean 0 and sample
  covariance I: exact when log p(x, z) is quadratic in z, so on the linear-Gaussian oracle one
  iteration lands on the exact posterior (or on the best diagonal Gaussian to it). A row whose
  step does not raise its ELBO (on the same draws) halves its step size; the iterates after the first
  third are averaged. About 30 decoder gradients per datapoint per iteration, 12 iterations.
- **the flow family** (``"flow"``, a :class:`guides.LocalFlow` per datapoint) by Adam on the
  reparameterized ELBO with the sticking-the-landing gradient (Roeder, Wu & Duvenaud 2017),
  learning rate decaying linearly to 0 over a fixed number of steps (:func:`adam_fit`), started
  at the full-covariance q* (fitted first, from ``init``), which one transform represents exactly.

``method="adam"`` fits a Gaussian family by Adam too (with ``patience``, the stopping rule of
pyro-vae 0.1, kept for comparison: ``benchmarks/run.py`` times both).

References: Opper & Archambeau (2009), The variational Gaussian approximation revisited; Khan &
Rue (2023), The Bayesian learning rule; Lin, Khan & Schmidt (2019), Stein's lemma for the
reparameterization trick with exponential family mixtures; Roeder, Wu & Duvenaud (2017),
Sticking the landing; Cremer, Li & Duvenaud (2018), Inference suboptimality in VAEs.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import pyro
import pyro.poutine.util
import torch

import guides

from .errors import InputError
from . import estimators
from .contract import check_batch
from .nets import frozen
from .progress import progress_bar

#: family of q -> the per-datapoint guide that represents it
FAMILIES = {"normal": "meanfield", "mvn": "local_mvn", "flow": "local_flow"}
#: the optimizer each family is fitted with by default
METHODS = {"normal": "natural", "mvn": "natural", "flow": "adam"}
#: the defaults of each optimizer: steps (natural-gradient iterations or Adam steps), lr (the largest
#: natural-gradient step, or Adam's initial learning rate) and draws per datapoint per step (None: max(32, 2 K + 2),
#: the fewest whose sample covariance is invertible, for z = 50 half the 4 K of before at an L[q*] within 0.0011 nats)
DEFAULTS = {"natural": {"steps": 12, "lr": 1.0, "num_samples": None},
            "adam": {"steps": 200, "lr": 1e-2, "num_samples": 16}}


def fit_local(model: Callable, x: torch.Tensor, family: str = "normal", init=None, *, method: Optional[str] = None,
              steps: Optional[int] = None, lr: Optional[float] = None, num_samples: Optional[int] = None,
              patience: Optional[int] = None, check_every: int = 10, z_dim: Optional[int] = None,
              progress: bool = False):
    """Fit q*_i, the best member of ``family`` for each row of ``x: (n, D)``, with the decoder frozen.

    :param family: ``"normal"`` (diagonal, a :class:`guides.MeanField`), ``"mvn"`` (full covariance, a
        :class:`guides.LocalMVN`) or ``"flow"`` (a Gaussian and two affine autoregressive transforms per
        row, a :class:`guides.LocalFlow`).
    :param init: None (start at the prior N(0, I)), a guide (its ``distribution(x)``), or a distribution
        with batch shape ``(n,)``; a q that is not Gaussian starts q* at the Gaussian with its mean and
        covariance (:func:`as_gaussian`). The flow family starts at the ``"mvn"`` q* fitted from there.
    :param method: ``"natural"`` (Gaussian families only; their default) or ``"adam"`` (the flow's).
    :param steps: natural-gradient iterations (default 12) or Adam steps (default 200).
    :param lr: the largest natural-gradient step (default 1: the fixed point) or Adam's learning rate
        (default 1e-2, decaying linearly to 0 unless ``patience`` is given).
    :param num_samples: draws per datapoint and step (natural: default max(32, 2 K + 2), antithetic
        pairs; Adam: default 16).
    :param patience: Adam only: every ``check_every`` steps each row's mean ELBO over those steps is
        compared with its best; a row that has not improved for ``patience`` checks stops (its
        parameters and moments no longer move). The learning rate then stays constant. None: a
        fixed schedule, every row takes every step.
    :returns: the fitted per-datapoint guide over rows ``0..n-1`` of ``x``; ``guide.steps_taken``
        (``(n,)``) counts each row's steps.
    """
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}.")
    check_batch(model, None, x)
    method = method or METHODS[family]
    if method not in DEFAULTS:
        raise InputError(f"unknown method {method!r}; choose one of {sorted(DEFAULTS)}.")
    if method == "natural" and family == "flow":
        raise InputError("the natural-gradient fit is for the Gaussian families (normal, mvn): fit the flow family "
                         "with method='adam'.")
    if patience is not None and method != "adam":
        raise InputError("patience is the stopping rule of method='adam'; the natural-gradient fit takes a fixed "
                         "number of steps.")
    defaults = DEFAULTS[method]
    steps = defaults["steps"] if steps is None else steps
    lr = defaults["lr"] if lr is None else lr
    module = getattr(model, "__self__", model)
    z_dim = z_dim or module.z_dim
    num_samples = num_samples or defaults["num_samples"] or max(32, 2 * z_dim + 2)
    for name, value in (("steps", steps), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"fit_local: {name} must be a positive integer, got {value!r}.")
    if not lr > 0:
        raise InputError(f"fit_local: lr must be positive, got {lr!r}.")
    n = len(x)
    guide = guides.make(FAMILIES[family], z_dim=z_dim, num_data=n).to(x.device)
    start = None
    if init is not None:
        with torch.no_grad():
            start = as_gaussian(init.distribution(x) if hasattr(init, "distribution") else init)
    if family == "flow":  # one transform represents any full-covariance Gaussian: start the flow at the mvn q*
        with torch.no_grad():
            start = fit_local(model, x, "mvn", init=start, z_dim=z_dim).distribution(x, torch.arange(n, device=x.device))
    if start is not None:
        with torch.no_grad():
            guide.init_from(start)
    with frozen(model):
        if method == "natural":
            loc, scale_tril = _gaussian_start(start, n, z_dim, x.device)
            # rows in blocks whose draws stay in the caches (estimators.block_elements); the model is validated on
            # the first block, and the others run without Pyro's checks, which would repeat them
            block = max(1, estimators.block_elements(x.device) // (num_samples * estimators.widest(model, x)))
            bar = progress_bar(range(0, n, block), f"q* {family}", progress and n > block, leave=False)
            fitted = []
            validate = pyro.poutine.util.is_validation_enabled()
            for i in bar:
                rows = slice(i, i + block)
                with pyro.validation_enabled(validate and i == 0):
                    fitted.append(natural_gradient_fit(_log_joint(model, x[rows]), loc[rows], scale_tril[rows],
                                                       diagonal=family == "normal", steps=steps,
                                                       num_samples=num_samples, max_step=lr,
                                                       progress=progress and n <= block, desc=f"q* {family}"))
            loc, scale_tril = (torch.cat(parts) for parts in zip(*fitted))
            guide.steps_taken = torch.full((n,), steps, dtype=torch.long, device=x.device)
            with torch.no_grad():
                guide.init_from(torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril))
        else:
            guide.steps_taken = adam_fit(model, guide, x, steps=steps, lr=lr, num_samples=num_samples,
                                         patience=patience, check_every=check_every,
                                         progress=progress, desc=f"q* {family}")
    return guide


@torch.no_grad()
def as_gaussian(q: torch.distributions.Distribution, num_samples: int = 4096) -> torch.distributions.Distribution:
    """``q`` itself when it is Gaussian (a MultivariateNormal or a Normal(...).to_event(1)), else the
    full-covariance Gaussian with q's mean and covariance, estimated from ``num_samples`` draws
    (how a flow q starts the Gaussian q*s). Batch shape as ``q``'s."""
    if isinstance(q, torch.distributions.MultivariateNormal) or (
            isinstance(q, torch.distributions.Independent) and isinstance(q.base_dist, torch.distributions.Normal)):
        return q
    z = q.sample((num_samples,))
    mean = z.mean(0)
    centred = z - mean
    cov = torch.einsum("sbi,sbj->bij", centred, centred) / (num_samples - 1)
    cov = cov + 1e-6 * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def _gaussian_start(q: Optional[torch.distributions.Distribution], n: int, z_dim: int, device):
    """``(loc (n, K), scale_tril (n, K, K))`` of a Gaussian ``q`` (batch (n,)), or of N(0, I) when None."""
    if q is None:
        return torch.zeros(n, z_dim, device=device), torch.eye(z_dim, device=device).expand(n, z_dim, z_dim)
    if isinstance(q, torch.distributions.MultivariateNormal):
        return q.mean, q.scale_tril
    return q.mean, torch.diag_embed(q.stddev)


def _log_joint(model: Callable, x: torch.Tensor) -> Callable:
    """z: (S, n, K) -> log p(x, z): (S, n), through the model's own trace (any model keeping the contract)."""
    return lambda z: estimators.log_joint(model, x, z)


def matched_draws(num_samples: int, n: int, k: int, device=None, dtype=None) -> torch.Tensor:
    """``(num_samples, n, k)`` standard normal draws per row, antithetic (eps and -eps) and whitened, so that
    each row's draws have sample mean 0 and sample covariance I exactly (``num_samples`` even, >= 2 k + 2).

    Expectations of a quadratic under N(m, L L^T) computed on m + L eps are then exact.
    """
    half = torch.randn(num_samples // 2, n, k, device=device, dtype=dtype)
    cov = torch.einsum("sni,snj->nij", half, half) / len(half)
    chol, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():  # a degenerate draw (probability zero): leave such rows unwhitened
        chol = torch.where((info != 0)[:, None, None], torch.eye(k, device=device, dtype=dtype), chol)
    white = torch.linalg.solve_triangular(chol, half.permute(1, 2, 0), upper=False).permute(2, 0, 1)
    return torch.cat([white, -white])


def _elbo_on(log_joint: Callable, loc, scale_tril, eps, with_grad: bool):
    """The ELBO of N(loc, L L^T) on the draws ``eps: (S, n, K)``, up to a constant: mean log p(x, z) + log det L,
    ``(n,)``; and, when ``with_grad``, g = d log p(x, z) / dz at each draw, ``(S, n, K)``."""
    z = loc + torch.einsum("nij,snj->sni", scale_tril, eps)
    logdet = torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    if not with_grad:
        with torch.no_grad():
            return log_joint(z).mean(0) + logdet, None
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        value = log_joint(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach().mean(0) + logdet, grad


#: the fewest draws on which natural_gradient_fit chooses between its averaged and its last iterate
CHOICE_DRAWS = 128


def natural_gradient_fit(log_joint: Callable, loc: torch.Tensor, scale_tril: torch.Tensor, *,
                         diagonal: bool, steps: int = 12, num_samples: int = 32, max_step: float = 1.0,
                         progress: bool = False, desc: str = "q*") -> Tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian q = N(m, L L^T) of highest ELBO for each of n independent rows (see the module docstring).

    :param log_joint: ``z: (S, n, K) -> log p(x, z): (S, n)``, differentiable in z (rows independent).
    :param loc: ``(n, K)`` starting means; ``scale_tril``: ``(n, K, K)`` their Cholesky factors.
    :param diagonal: fit the diagonal family (mean-field): the precision is kept diagonal,
        P_kk = -E_q[H_kk], which is the optimum of the ELBO over diagonal Gaussians.
    :param max_step: the largest step size rho of ``P <- (1 - rho) P + rho (-E_q[H])``; each row's rho
        halves when a step lowers its ELBO on that iteration's draws, and doubles (up to ``max_step``)
        when one raises it.
    :returns: ``(loc (n, K), scale_tril (n, K, K))``: the average of the iterates after the first third (in
        natural parameters P and P m), or the last iterate where that has the higher ELBO on the same fresh
        draws, max(``CHOICE_DRAWS``, 2 ``num_samples``) of them (as many as the 4 ``num_samples`` of before for K <=
        15; for z = 50, 204 rather than 408: 9% fewer decoder passes per fit, for 0.00005 nats of mean L[q*] on the
        mnist-5k decoder of ``benchmarks/evaluate.py``; 64 draws left one row of the Student-t test 0.003 short). The
        average is what makes the fit precise: each iterate jitters with its draws' estimate of E_q[H], while the
        fixed point is reached in a few Newton steps (on digits, 12 iterations averaged from the fifth end within
        0.0002 nats of 20 averaged from the eleventh, and 0.0008 of 80). A start far from the optimum needs the
        third: on the Student-t target of the tests, averaged from the first quarter, rows ended 0.003 nats short.
    """
    n, k = loc.shape
    if num_samples % 2 or num_samples < 2 * k + 2:
        raise InputError(f"natural_gradient_fit needs an even num_samples >= 2 K + 2 = {2 * k + 2} (antithetic "
                         f"pairs whose sample covariance is invertible), got {num_samples}.")
    device, dtype = loc.device, loc.dtype
    loc, scale_tril = loc.detach().clone(), scale_tril.detach().clone()
    precision = torch.cholesky_inverse(scale_tril)
    if diagonal:  # a correlated start (an mvn or flow encoder's q) enters the family at its best diagonal member,
        # N(m, diag(1 / P_kk)): a step of rho < 1 would otherwise carry its off-diagonal precision along
        precision = torch.diag_embed(torch.diagonal(precision, dim1=-2, dim2=-1))
        scale_tril = torch.diag_embed(torch.diagonal(precision, dim1=-2, dim2=-1).rsqrt())
    rho = torch.full((n,), float(max_step), device=device, dtype=dtype)
    eye = torch.eye(k, device=device, dtype=dtype)
    sum_precision = torch.zeros_like(precision)
    sum_shift = torch.zeros_like(loc)  # sum of P m
    averaged = 0
    for step in progress_bar(range(steps), desc, progress, leave=False):
        loc, scale_tril, precision, rho = _natural_step(log_joint, loc, scale_tril, precision, rho, diagonal,
                                                        num_samples, max_step, eye)
        if step >= steps // 3:
            sum_precision += precision
            sum_shift += (precision @ loc.unsqueeze(-1)).squeeze(-1)
            averaged += 1
    mean_precision = sum_precision / averaged
    chol = torch.linalg.cholesky(mean_precision)
    mean_loc = torch.cholesky_solve((sum_shift / averaged).unsqueeze(-1), chol).squeeze(-1)
    mean_scale = _scale_tril_of(chol)
    eps = matched_draws(max(CHOICE_DRAWS, 2 * num_samples), n, k, device, dtype)
    last, _ = _elbo_on(log_joint, loc, scale_tril, eps, with_grad=False)
    mean, _ = _elbo_on(log_joint, mean_loc, mean_scale, eps, with_grad=False)
    use_mean = mean >= last
    return (torch.where(use_mean[:, None], mean_loc, loc),
            torch.where(use_mean[:, None, None], mean_scale, scale_tril))


def _natural_step(log_joint: Callable, loc, scale_tril, precision, rho, diagonal: bool, num_samples: int,
                  max_step: float, eye):
    """One iteration of :func:`natural_gradient_fit`: the new ``(loc, scale_tril, precision, rho)`` of the n rows."""
    n, k = loc.shape
    eps = matched_draws(num_samples, n, k, loc.device, loc.dtype)
    current, grad = _elbo_on(log_joint, loc, scale_tril, eps, with_grad=True)
    mean_grad = grad.mean(0)
    stein = torch.einsum("sni,snj->nij", grad, eps) / num_samples  # E[g eps^T] = E[H] L
    hessian = torch.linalg.solve_triangular(scale_tril, stein, upper=False, left=False)
    target = -0.5 * (hessian + hessian.transpose(-1, -2))  # -E_q[H], symmetrized
    target_q = torch.diag_embed(torch.diagonal(target, dim1=-2, dim2=-1)) if diagonal else target
    r = rho
    for _ in range(20):  # shrink rho where the new precision (or the mean's curvature) is not positive definite
        w = r[:, None, None]
        new_precision = (1 - w) * precision + w * target_q
        curvature = (1 - w) * precision + w * target
        chol_c, bad_c = torch.linalg.cholesky_ex(curvature)
        chol_p, bad_p = torch.linalg.cholesky_ex(new_precision)
        bad = (bad_c != 0) | (bad_p != 0)
        if not bad.any():
            break
        r = torch.where(bad, r / 2, r)
    usable = ~bad
    chol_c = torch.where(usable[:, None, None], chol_c, eye)
    chol_p = torch.where(usable[:, None, None], chol_p, torch.linalg.cholesky(precision))
    new_loc = loc + (r * usable)[:, None] * torch.cholesky_solve(mean_grad.unsqueeze(-1), chol_c).squeeze(-1)
    new_scale = _scale_tril_of(chol_p)
    proposed, _ = _elbo_on(log_joint, new_loc, new_scale, eps, with_grad=False)
    accept = usable & (proposed >= current)
    loc = torch.where(accept[:, None], new_loc, loc)
    scale_tril = torch.where(accept[:, None, None], new_scale, scale_tril)
    precision = torch.where(accept[:, None, None], new_precision, precision)
    rho = torch.where(accept, (r * 2).clamp(max=max_step), r / 2)
    return loc, scale_tril, precision, rho


def _scale_tril_of(chol_precision: torch.Tensor) -> torch.Tensor:
    """L with L L^T = P^-1, from the Cholesky factor C of P (P = C C^T)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(chol_precision))


def adam_fit(model: Callable, guide, x: torch.Tensor, *, steps: int = 200, lr: float = 1e-2, num_samples: int = 16,
             patience: Optional[int] = None, check_every: int = 10, progress: bool = False,
             desc: str = "q*") -> torch.Tensor:
    """Adam on the ``num_samples``-draw ELBO of every row of the per-datapoint ``guide`` (over rows
    ``0..n-1`` of ``x: (n, D)``) at once, with the sticking-the-landing gradient; returns each row's steps ``(n,)``.

    With ``patience`` None every row takes ``steps`` steps while the learning rate decays linearly from
    ``lr`` to 0 (one dense, fused Adam over all rows). With ``patience``, the learning rate stays at ``lr``
    and a row stops after ``patience`` checks (every ``check_every`` steps) in which its mean ELBO over the
    last ``check_every`` steps did not improve on its best; its parameters and SparseAdam moments then stay
    as they are, and it leaves the batch.

    The gradient is taken with ``torch.autograd.grad``, not ``.backward()``: no gradient is computed for the
    frozen decoder's weights (which Pyro's param store may have set to require one).
    """
    n, device = len(x), x.device
    params = list(guide.parameters())
    stopping = patience is not None
    guide.sparse_grad = stopping  # every row is in every step of a fixed schedule: dense gradients, fused Adam
    if stopping:
        optimizer = torch.optim.SparseAdam(params, lr=lr)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"))
    rows = torch.arange(n, device=device)
    best = torch.full((n,), -math.inf, device=device)
    stale = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    running = torch.zeros(n, device=device)
    steps_taken = torch.zeros(n, dtype=torch.long, device=device)
    bar = progress_bar(range(steps), desc, progress, leave=False)
    try:
        for step in bar:
            idx = rows[active] if stopping else rows
            if not stopping:
                for group in optimizer.param_groups:
                    group["lr"] = lr * (1 - step / steps)
            elbo = estimators.log_weights(model, guide, x[idx], idx, num_samples, sticking_the_landing=True).mean(0)
            for p, g in zip(params, torch.autograd.grad(-elbo.sum(), params)):
                p.grad = g
            optimizer.step()
            steps_taken[idx] += 1
            if not stopping:
                continue
            running[idx] += elbo.detach()
            if (step + 1) % check_every == 0:
                current = running[idx] / check_every
                improved = current > best[idx]
                best[idx] = torch.where(improved, current, best[idx])
                stale[idx] = torch.where(improved, 0, stale[idx] + 1)
                active[idx] = stale[idx] < patience
                running.zero_()
                bar.set_postfix(active=f"{int(active.sum())}/{n}", refresh=False)
                if not active.any():
                    break
    finally:
        guide.sparse_grad = True
        for p in params:
            p.grad = None
    return steps_taken


#: the starts of a q* fit that fit_from_starts compares: the guide's q (an encoder's), the prior N(0, I), a random
#: Gaussian, and the guide's q again with LONG_FACTOR times the iterations
STARTS = ("encoder", "prior", "random", "long")
LONG_FACTOR = 4


def check_starts(starts) -> tuple:
    """``starts`` as a tuple of names of :data:`STARTS`, each once; else a one-line :class:`InputError`."""
    if isinstance(starts, str):
        raise InputError(f"fit_from_starts: starts must be a sequence of start names, got the string {starts!r}; "
                         f"pass e.g. starts=({starts!r},).")
    starts = tuple(starts)
    unknown = [s for s in starts if s not in STARTS]
    if unknown:
        raise InputError(f"fit_from_starts: unknown start(s) {unknown}; choose from {list(STARTS)}.")
    repeated = sorted({s for s in starts if starts.count(s) > 1})
    if not starts or repeated:
        raise InputError(f"fit_from_starts: starts must name each start once, at least one, got {list(starts)}; "
                         f"choose from {list(STARTS)}.")
    return starts


def fit_from_starts(model: Callable, x: torch.Tensor, family: str = "normal", init=None, *,
                    starts=STARTS, steps: Optional[int] = None, lr: Optional[float] = None,
                    num_samples: Optional[int] = None, elbo_samples: int = 100, z_dim: Optional[int] = None,
                    progress: bool = False):
    """Fit the Gaussian q*_i of each row of ``x: (n, D)`` from several starts, and keep each row's best.

    Starts (``starts``, any of :data:`STARTS`, each fitted by :func:`fit_local` with ``steps``, ``lr``,
    ``num_samples``): ``"encoder"``, from ``init`` (a guide or a distribution, as in :func:`fit_local`);
    ``"prior"``, from N(0, I); ``"random"``, from N(m_i, diag(s_i^2)) with m_i ~ N(0, I) and
    log s_i ~ Uniform(-1, 1) (torch's global RNG: ``pyro.set_rng_seed`` fixes it); ``"long"``, from ``init``
    (the prior when None) with ``LONG_FACTOR`` times the iterations. With ``init`` None there is no encoder
    q: ``"encoder"`` would repeat ``"prior"`` and is skipped (no column).

    :param family: ``"normal"`` (diagonal) or ``"mvn"`` (full covariance).
    :param elbo_samples: draws per row of each start's ELBO estimate (:func:`estimators.elbo`).
    :returns: ``(guide, table)``. ``guide``: a per-datapoint guide of ``family`` over rows ``0..n-1`` of
        ``x`` whose row i is the fit of the start with the highest ELBO estimate at row i (ties: the first in
        ``starts``), ``guide.steps_taken`` ``(n,)`` that start's iterations. ``table``: one row per datapoint
        (index ``row``), nats per datapoint: ``elbo_<start>`` and ``elbo_<start>_se`` per start fitted,
        ``best_start`` and ``spread`` (max - min of the starts' ELBO estimates). The choice is made on these
        draws, so the kept start's estimate is biased up: re-estimate the guide's ELBO on fresh draws
        (:func:`pyro_vae.gaps.decompose` does).
    :raises InputError: for a family other than normal or mvn, an empty ``starts``, an unknown or repeated
        start, or nothing left to fit; before any fit.
    """
    import pandas as pd

    if family not in ("normal", "mvn"):
        raise InputError(f"fit_from_starts compares starts of the Gaussian families' natural-gradient fit, got "
                         f"family={family!r}: choose 'normal' or 'mvn' (fit the flow's q* with fit_local).")
    starts = check_starts(starts)
    if init is None:
        starts = tuple(s for s in starts if s != "encoder")
        if not starts:
            raise InputError("fit_from_starts: the 'encoder' start needs init (the encoder's q) and is skipped "
                             "without it, leaving nothing to fit: pass init, or add 'prior' to starts.")
    steps = DEFAULTS["natural"]["steps"] if steps is None else steps
    estimators.check_count("fit_from_starts: steps", steps)
    estimators.check_count("fit_from_starts: elbo_samples", elbo_samples)
    n = len(x)
    z_dim = z_dim or getattr(model, "__self__", model).z_dim
    rows = torch.arange(n, device=x.device)
    fits, elbos = [], []
    for name in starts:
        start, iterations = init, steps
        if name == "prior":
            start = None
        elif name == "random":  # drawn on the CPU and moved: one seed gives the same start on every device
            m, s = torch.randn(n, z_dim), torch.empty(n, z_dim).uniform_(-1, 1).exp()
            start = torch.distributions.Independent(torch.distributions.Normal(m.to(x.device), s.to(x.device)), 1)
        elif name == "long":
            iterations = LONG_FACTOR * steps
        fitted = fit_local(model, x, family, init=start, steps=iterations, lr=lr, num_samples=num_samples,
                           z_dim=z_dim, progress=progress)
        fits.append(fitted)
        elbos.append(estimators.elbo(model, fitted, x, rows, elbo_samples))
    value = torch.stack([e.value for e in elbos])  # (starts, n)
    best = value.argmax(0)
    with torch.no_grad():
        qs = [f.distribution(x, rows) for f in fits]
        loc = torch.stack([q.mean for q in qs])[best, rows]
        scale_tril = torch.stack([q.scale_tril if isinstance(q, torch.distributions.MultivariateNormal)
                                  else torch.diag_embed(q.stddev) for q in qs])[best, rows]
        guide = guides.make(FAMILIES[family], z_dim=z_dim, num_data=n).to(x.device)
        guide.init_from(torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril))
    guide.steps_taken = torch.stack([f.steps_taken for f in fits])[best, rows]
    table = pd.DataFrame(index=pd.RangeIndex(n, name="row"))
    for name, est in zip(starts, elbos):
        table[f"elbo_{name}"] = est.value.detach().cpu().numpy()
        table[f"elbo_{name}_se"] = est.stderr.detach().cpu().numpy()
    table["best_start"] = [starts[i] for i in best.tolist()]
    table["spread"] = (value.max(0).values - value.min(0).values).detach().cpu().numpy()
    return guide, table
