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
from .ais import ais as ais_estimate
from .qstar import FAMILIES, as_gaussian, fit_local  # noqa: F401  (q* lives in pyro_vae.qstar; these are its names here)


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
              chunk_size: int = 250, exact: Optional[Callable] = None, ais_steps: int = 0, ais_chains: int = 16,
              progress: bool = False, **fit_kwargs) -> pd.DataFrame:
    """The gap decomposition for ``guide`` on ``x: (n, D)``: one row per datapoint, in nats.

    Columns, each estimate with a ``_se`` Monte Carlo standard error column:

    - ``log_px``: importance-weighted log p(x), ``ll_samples`` samples, proposal the best q found;
      ``log_px_exact`` when ``exact`` (a function x -> exact log p(x)) is given. With ``ais_steps > 0``
      also ``log_px_iwae`` (that estimate) and ``log_px_ais`` (:func:`pyro_vae.ais.ais`,
      ``ais_chains`` chains of ``ais_steps`` steps), and ``log_px`` is, per datapoint, the larger of
      the two (both are stochastic lower bounds; Cremer, Li & Duvenaud 2018 used the larger too);
    - ``elbo_q``: L[q] of ``guide`` (NaN when a per-datapoint guide has no parameters for
      these rows, i.e. ``idx`` is None);
    - ``elbo_qstar_<family>`` for each family: L[q*], the per-datapoint optimum, decoder frozen
      (``"flow"``'s q* starts at a full-covariance q*, see :func:`pyro_vae.qstar.fit_local`);
    - ``approximation_gap`` = log_px - L[q*] with q* in the guide's own family;
    - ``approximation_gap_flow`` = log_px - L[q*_flow], when ``"flow"`` is among ``families``: the part
      of the approximation gap that a flow family does not remove (Cremer et al.'s L[q*_AF]);
    - ``amortization_gap`` = L[q*] - L[q] for an amortized guide (an encoder), else NaN;
    - ``optimization_gap`` = L[q*] - L[q] for a per-datapoint guide: there is no encoder, so
      this is how far training left the datapoint's own parameters from their optimum
      for the final decoder; NaN for amortized guides.

    ``fit_kwargs`` go to :func:`pyro_vae.qstar.fit_local` (``steps``, ``lr``, ``num_samples``, ...).

    :raises ValueError: when the guide's own family is not among ``families`` (its gaps
        would be measured against the wrong q*).
    """
    if guide.family not in families:
        raise InputError(
            f"decompose: the {type(guide).__name__} guide's family is {guide.family!r}, which is not among "
            f"families={list(families)}; add it, since its gaps are measured against q* of its own family."
        )
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
    best_guide, best_elbo = (guide, out["elbo_q"].mean()) if has_q else (None, -math.inf)
    for family in families:
        qstar = fit_local(model, x, family, init=init, progress=progress, **fit_kwargs)
        put(f"elbo_qstar_{family}", estimators.elbo(model, qstar, x, rows, elbo_samples))
        if out[f"elbo_qstar_{family}"].mean() > best_elbo:
            best_guide, best_elbo = qstar, out[f"elbo_qstar_{family}"].mean()
    proposal_idx = rows if best_guide is not guide else idx
    iwae = estimators.log_likelihood(model, best_guide, x, proposal_idx, ll_samples, chunk_size)
    if ais_steps > 0:
        annealed = ais_estimate(model, x, num_chains=ais_chains, num_steps=ais_steps, progress=progress)
        put("log_px_iwae", iwae)
        put("log_px_ais", annealed)
        larger = annealed.value > iwae.value
        iwae = estimators.Estimate(torch.where(larger, annealed.value, iwae.value),
                                   torch.where(larger, annealed.stderr, iwae.stderr))
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
