"""The amortization question: q* per datapoint with the decoder frozen, and the gap decomposition.

For a trained decoder p and data x (Cremer, Li & Duvenaud 2018)::

    log p(x) - L[q] = (log p(x) - L[q*])  +  (L[q*] - L[q])
                       approximation gap     amortization gap

where q is the guide being judged and q* the best member of its family
(diagonal Gaussian, full-covariance Gaussian or flow) for each datapoint. Usage::

    qstar = fit_local(vae.model, x, family="normal", init=guide)   # a MeanField over the rows of x
    table = decompose(vae.model, guide, x)        # one row per datapoint, nats
    summarize(table)                               # means and standard errors

References: Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import pandas as pd
import torch

from .errors import InputError
from . import estimators
from .contract import check_batch
from .ais import ais as ais_estimate, check_model as check_annealable
from .qstar import FAMILIES, as_gaussian, check_starts, fit_from_starts, fit_local  # noqa: F401  (q* lives in pyro_vae.qstar)

#: AIS chains per datapoint when decompose runs AIS
AIS_CHAINS = 16
#: leapfrog steps per HMC transition when decompose runs AIS (what every committed study ran; ``ais_leapfrog``)
AIS_LEAPFROG = 10
#: the families whose q* can be fitted from several starts (:func:`pyro_vae.qstar.fit_from_starts`)
STARTS_FAMILIES = ("normal", "mvn")

#: the families of q*, each containing the one before it: the last fitted is the likely proposal of log p(x)
LARGEST = ("normal", "mvn", "flow")


def best_diagonal(posterior: torch.distributions.MultivariateNormal) -> torch.distributions.MultivariateNormal:
    """The diagonal Gaussian closest to ``posterior`` = N(m, Sigma) in KL(q || p): N(m, diag(1 / Lambda_ii)).

    Lambda = Sigma^-1 is the posterior precision: the best mean-field variances are the
    inverse diagonal of the precision, not the diagonal of Sigma (which would be
    the best q under the other KL, KL(p || q)). Batch shape as ``posterior``'s.
    """
    precision = torch.linalg.inv(posterior.covariance_matrix)
    scale = torch.diagonal(precision, dim1=-2, dim2=-1).rsqrt()
    return torch.distributions.MultivariateNormal(posterior.mean, scale_tril=torch.diag_embed(scale))


def diagonal_gap(posterior: torch.distributions.MultivariateNormal) -> torch.Tensor:
    """The approximation gap of the best diagonal Gaussian to a Gaussian posterior, in nats: ``(batch,)``.

    KL(q_diag || p) = 1/2 (sum_i log Lambda_ii - log det Lambda), Lambda = Sigma^-1.
    It is 0 exactly when Lambda is diagonal; for K = 2 with correlation rho it is
    -1/2 log(1 - rho^2).
    """
    precision = torch.linalg.inv(posterior.covariance_matrix)
    diag = torch.diagonal(precision, dim1=-2, dim2=-1)
    return 0.5 * (diag.log().sum(-1) - torch.logdet(precision))


def decompose(model: Callable, guide, x: torch.Tensor, idx: Optional[torch.Tensor] = None, *,
              families: Sequence[str] = ("normal", "mvn"), ll_samples: int = 5000, elbo_samples: int = 500,
              chunk_size: Optional[int] = None, exact: Optional[Callable] = None, ais_steps: Optional[int] = None,
              ais_chains: int = AIS_CHAINS, ais_leapfrog: int = AIS_LEAPFROG, starts: Optional[Sequence[str]] = None,
              progress: bool = False, **fit_kwargs) -> pd.DataFrame:
    """The gap decomposition for ``guide`` on ``x: (n, D)``: one row per datapoint, in nats.

    Columns, each estimate with a ``_se`` Monte Carlo standard error column:

    - ``log_px``: importance-weighted log p(x), ``ll_samples`` samples, proposal the best q found (the highest
      mean ELBO among the guide's q and the q*s); ``log_px_exact`` when ``exact`` (a function x -> exact
      log p(x)) is given;
    - ``log_px_ais``, with ``ais_steps``: log p(x) by AIS (:func:`pyro_vae.ais.ais`, ``ais_chains`` chains of
      ``ais_steps`` steps, ``ais_leapfrog`` leapfrog steps per transition) annealed from the same best q, beside
      ``log_px``. Each is a stochastic lower bound; the gaps use ``log_px``. Choose between the two estimators for
      a whole study (the higher mean over its points), never per point: the per-point larger of two noisy lower
      bounds is biased upwards;
    - ``elbo_q``: L[q] of ``guide`` (NaN when a per-datapoint guide has no parameters for
      these rows, i.e. ``idx`` is None);
    - ``elbo_qstar_<family>`` for each family: L[q*], the per-datapoint optimum, decoder frozen; for the largest
      family, from the ``ll_samples`` draws of the importance-weighted pass, else from ``elbo_samples``
      (``"flow"``'s q* starts at a full-covariance q*, see :func:`pyro_vae.qstar.fit_local`);
    - ``elbo_qstar_<family>_spread``, with ``starts`` (names of :data:`pyro_vae.qstar.STARTS`): each Gaussian
      family's q* is fitted from every start (:func:`pyro_vae.qstar.fit_from_starts`) and each point keeps the best;
      the column is the spread of the starts' L[q*] estimates at that point (max - min, ``elbo_samples`` draws each);
    - ``approximation_gap`` = log_px - L[q*] with q* in the guide's own family;
    - ``approximation_gap_flow`` = log_px - L[q*_flow], when ``"flow"`` is among ``families``: the part
      of the approximation gap that a flow family does not remove (Cremer et al.'s L[q*_AF]);
    - ``amortization_gap`` = L[q*] - L[q] for an amortized guide (an encoder), else NaN;
    - ``optimization_gap`` = L[q*] - L[q] for a per-datapoint guide: there is no encoder, so
      this is how far training left the datapoint's own parameters from their optimum
      for the final decoder; NaN for amortized guides.

    ``fit_kwargs`` go to :func:`pyro_vae.qstar.fit_local` (``steps``, ``lr``, ``num_samples``, ...).

    :raises InputError: when the guide's own family is not among ``families`` (its gaps would be measured against
        the wrong q*), a family or start is unknown, or ``ais_steps`` is not a positive integer; before any work.
    """
    check_batch(model, guide, x, idx)
    if guide.family not in families:
        raise InputError(
            f"decompose: the {type(guide).__name__} guide's family is {guide.family!r}, which is not among "
            f"families={list(families)}; add it, since its gaps are measured against q* of its own family."
        )
    unknown = [f for f in families if f not in LARGEST]
    if unknown or not families:
        raise InputError(f"decompose: families={list(families)} must name one or more of {list(LARGEST)}.")
    if ais_steps is not None:
        estimators.check_count("decompose: ais_steps (annealing steps; None for no AIS)", ais_steps)
        estimators.check_count("decompose: ais_chains", ais_chains)
        estimators.check_count("decompose: ais_leapfrog", ais_leapfrog)
        check_annealable(model, x)
    if starts is not None:
        check_starts(starts)
    has_q = guide.amortized or idx is not None
    with torch.no_grad():
        init = guide.distribution(x, idx) if has_q else None
    out = pd.DataFrame(index=pd.RangeIndex(len(x), name="row"))
    rows = torch.arange(len(x), device=x.device)

    def put(name, est):
        out[name], out[f"{name}_se"] = est.value.detach().cpu().numpy(), est.stderr.detach().cpu().numpy()

    if has_q:
        put("elbo_q", estimators.elbo(model, guide, x, idx, elbo_samples))
    else:
        out["elbo_q"] = out["elbo_q_se"] = math.nan
    # the proposal of log p(x) is the best q found. The q* of the largest family fitted (flow, else mvn) is best
    # in all but rare cases: its ELBO comes from the log weights of the importance-weighted pass itself (ll_samples
    # draws), and that pass is repeated with another q only where another has the higher mean ELBO.
    candidates = {"q": (guide, idx, out["elbo_q"].mean())} if has_q else {}
    for family in families:  # the columns in the order asked
        out[f"elbo_qstar_{family}"] = out[f"elbo_qstar_{family}_se"] = math.nan
    largest = max(families, key=LARGEST.index)
    for family in sorted(families, key=LARGEST.index, reverse=True):
        if starts is not None and family in STARTS_FAMILIES:
            qstar, from_starts = fit_from_starts(model, x, family, init=init, starts=starts, progress=progress,
                                                 elbo_samples=elbo_samples, **fit_kwargs)
            out[f"elbo_qstar_{family}_spread"] = from_starts["spread"]
        else:
            qstar = fit_local(model, x, family, init=init, progress=progress, **fit_kwargs)
        if family == largest:
            iwae, largest_elbo = estimators.importance(model, qstar, x, rows, ll_samples, chunk_size)
            put(f"elbo_qstar_{family}", largest_elbo)
        else:
            put(f"elbo_qstar_{family}", estimators.elbo(model, qstar, x, rows, elbo_samples))
        candidates[family] = (qstar, rows, out[f"elbo_qstar_{family}"].mean())
    best = max(candidates, key=lambda name: candidates[name][2])
    proposal, proposal_idx = candidates[best][:2]
    if best != largest:
        iwae = estimators.log_likelihood(model, proposal, x, proposal_idx, ll_samples, chunk_size)
    if ais_steps is not None:
        with torch.no_grad():
            start = proposal.distribution(x, proposal_idx)
        put("log_px_ais", ais_estimate(model, x, init=start, num_chains=ais_chains, num_steps=ais_steps,
                                       leapfrog_steps=ais_leapfrog, progress=progress))
    put("log_px", iwae)
    if exact is not None:
        out["log_px_exact"] = exact(x).detach().cpu().numpy()
    own = f"elbo_qstar_{guide.family}"
    out["approximation_gap"] = out["log_px"] - out[own]
    out["approximation_gap_se"] = (out["log_px_se"] ** 2 + out[f"{own}_se"] ** 2) ** 0.5
    if "flow" in families:
        out["approximation_gap_flow"] = out["log_px"] - out["elbo_qstar_flow"]
        out["approximation_gap_flow_se"] = (out["log_px_se"] ** 2 + out["elbo_qstar_flow_se"] ** 2) ** 0.5
    gap = out[own] - out["elbo_q"]
    gap_se = (out[f"{own}_se"] ** 2 + out["elbo_q_se"] ** 2) ** 0.5
    kept, empty = ("amortization_gap", "optimization_gap") if guide.amortized else \
        ("optimization_gap", "amortization_gap")
    out[kept], out[f"{kept}_se"] = gap, gap_se
    out[empty] = out[f"{empty}_se"] = math.nan
    return out


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Means over datapoints of every estimate column of :func:`decompose`, with two standard errors.

    Returns one row per quantity with columns

    - ``mean``: the mean over the n datapoints (NaN where the column is empty);
    - ``se``: std / sqrt(n) across datapoints, the standard error of the mean as an estimate
      of the mean over the data distribution. Each per-datapoint value already carries its own
      Monte Carlo noise, so this spread includes it: it is not added a second time;
    - ``mc_se``: sqrt(sum of squared ``_se``) / n, the Monte Carlo error alone: the standard
      error of the mean over *these* datapoints, which is what a rerun with another seed
      would move (0 for a column without ``_se``).
    """
    names = [c for c in table.columns if not c.endswith("_se")]
    n = len(table)
    rows = {}
    for c in names:
        values = table[c]
        spread = values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
        mc = math.sqrt((table[f"{c}_se"] ** 2).sum(min_count=1)) / n if f"{c}_se" in table else 0.0
        rows[c] = {"mean": values.mean(), "se": spread, "mc_se": mc}
    return pd.DataFrame.from_dict(rows, orient="index")
