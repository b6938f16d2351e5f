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
  step does not raise its ELBO (on the same draws) halves its step size; the second half of the
  iterations is averaged. About 30 decoder gradients per datapoint per iteration, 20 iterations.
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

import torch

import guides

from .errors import InputError
from . import estimators
from .nets import frozen
from .progress import progress_bar

#: family of q -> the per-datapoint guide that represents it
FAMILIES = {"normal": "meanfield", "mvn": "local_mvn", "flow": "local_flow"}
#: the optimizer each family is fitted with by default
METHODS = {"normal": "natural", "mvn": "natural", "flow": "adam"}
#: the defaults of each optimizer: steps (natural-gradient iterations or Adam steps), lr (the largest
#: natural-gradient step, or Adam's initial learning rate) and draws per datapoint per step (None: max(32, 4 K))
DEFAULTS = {"natural": {"steps": 20, "lr": 1.0, "num_samples": None},
            "adam": {"steps": 200, "lr": 1e-2, "num_samples": 16}}
#: floats a block of rows may hold per tensor (draws x rows x data dimension): rows are fitted in blocks
BLOCK_ELEMENTS = 2 ** 24


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
    :param steps: natural-gradient iterations (default 20) or Adam steps (default 200).
    :param lr: the largest natural-gradient step (default 1: the fixed point) or Adam's learning rate
        (default 1e-2, decaying linearly to 0 unless ``patience`` is given).
    :param num_samples: draws per datapoint and step (natural: default max(32, 4 K), antithetic
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
    num_samples = num_samples or defaults["num_samples"] or max(32, 4 * z_dim)
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
            block = max(1, BLOCK_ELEMENTS // (num_samples * max(x.shape[1], z_dim)))
            bar = progress_bar(range(0, n, block), f"q* {family}", progress and n > block, leave=False)
            fitted = []
            for i in bar:
                rows = slice(i, i + block)
                fitted.append(natural_gradient_fit(_log_joint(model, x[rows]), loc[rows], scale_tril[rows],
                                                   diagonal=family == "normal", steps=steps, num_samples=num_samples,
                                                   max_step=lr, progress=progress and n <= block, desc=f"q* {family}"))
            loc, scale_tril = (torch.cat(parts) for parts in zip(*fitted))
            with torch.no_grad():
                guide.init_from(torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril))
            guide.steps_taken = torch.full((n,), steps, dtype=torch.long, device=x.device)
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


def natural_gradient_fit(log_joint: Callable, loc: torch.Tensor, scale_tril: torch.Tensor, *,
                         diagonal: bool, steps: int = 20, num_samples: int = 32, max_step: float = 1.0,
                         progress: bool = False, desc: str = "q*") -> Tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian q = N(m, L L^T) of highest ELBO for each of n independent rows (see the module docstring).

    :param log_joint: ``z: (S, n, K) -> log p(x, z): (S, n)``, differentiable in z (rows independent).
    :param loc: ``(n, K)`` starting means; ``scale_tril``: ``(n, K, K)`` their Cholesky factors.
    :param diagonal: fit the diagonal family (mean-field): the precision is kept diagonal,
        P_kk = -E_q[H_kk], which is the optimum of the ELBO over diagonal Gaussians.
    :param max_step: the largest step size rho of ``P <- (1 - rho) P + rho (-E_q[H])``; each row's rho
        halves when a step lowers its ELBO on that iteration's draws, and doubles (up to ``max_step``)
        when one raises it.
    :returns: ``(loc (n, K), scale_tril (n, K, K))``: the average of the second half of the iterates (in
        natural parameters P and P m), or the last iterate where that has the higher ELBO on fresh draws.
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
        eps = matched_draws(num_samples, n, k, device, dtype)
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
        if step >= steps // 2:
            sum_precision += precision
            sum_shift += (precision @ loc.unsqueeze(-1)).squeeze(-1)
            averaged += 1
    mean_precision = sum_precision / averaged
    chol = torch.linalg.cholesky(mean_precision)
    mean_loc = torch.cholesky_solve((sum_shift / averaged).unsqueeze(-1), chol).squeeze(-1)
    mean_scale = _scale_tril_of(chol)
    eps = matched_draws(4 * num_samples, n, k, device, dtype)
    last, _ = _elbo_on(log_joint, loc, scale_tril, eps, with_grad=False)
    mean, _ = _elbo_on(log_joint, mean_loc, mean_scale, eps, with_grad=False)
    use_mean = mean >= last
    return (torch.where(use_mean[:, None], mean_loc, loc),
            torch.where(use_mean[:, None, None], mean_scale, scale_tril))


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
