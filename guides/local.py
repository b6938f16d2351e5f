"""Per-datapoint (non-amortized) guides: free variational parameters for every datapoint.

Usage::

    guide = MeanField(z_dim=8, num_data=len(train))
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x, idx)                 # idx is required: it picks the rows of the parameters

Parameters are ``(num_data, ...)`` tensors gathered with
``torch.nn.functional.embedding(idx, ..., sparse=True)``, and constraints are
applied to the gathered rows only. A step therefore costs O(batch), and the
gradient is sparse: with :class:`pyro_vae.optim.LazyAdam` (SparseAdam for these
parameters) a datapoint's parameters and Adam moments move only when it is in
the batch. Plain Adam on a dense (num_data, K) tensor moves every row every
step through its momentum (Pyro issue #2386); torch's Adam refuses the sparse
gradient outright, so use LazyAdam.
"""

from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pyro_vae.contract import check_idx
from pyro_vae.nets import unique_name
from pyro_vae.errors import InputError

from .registry import register
from .base import MIN_SCALE, Guide, inverse_positive, positive, scale_tril, split_scale_tril


#: torch's optimizers that step a sparse gradient (the list in ``torch.nn.Embedding``'s documentation)
SPARSE_OPTIMIZERS = (torch.optim.SparseAdam, torch.optim.SGD, torch.optim.Adagrad)
_dense_step_hook = None


def _refuse_dense_step(optimizer, args, kwargs) -> None:
    """Before any torch optimizer's step: a one-line error naming LazyAdam when one that cannot step a sparse
    gradient (``pyro.optim.Adam``'s torch Adam, ...) is given the rows' sparse gradient, where torch would raise
    its own "does not support sparse gradients". Registered once, when the first per-datapoint guide is built."""
    if isinstance(optimizer, SPARSE_OPTIMIZERS):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise InputError(
                    f"{type(optimizer).__name__} cannot step the sparse gradient of a per-datapoint guide's rows "
                    f"{tuple(p.shape)}: use pyro_vae.optim.LazyAdam({{'lr': 1e-3}}, sparse_args={{'lr': 1e-2}}) "
                    f"in place of pyro.optim.{type(optimizer).__name__}.")


class LocalGuide(Guide):
    """Shared machinery: ``idx`` checks and sparse row gathering of ``(num_data, ...)`` parameters."""

    amortized = False
    jit_safe = True
    shardable = True
    #: True when every datapoint's parameters start at the same values (:meth:`initial_row`), so that
    #: :func:`pyro_vae.rows.memory_map` can write a guide built on the meta device straight into files
    constant_init = True
    #: gather rows with sparse gradients (for SparseAdam, O(batch) a step); a fit in which every row takes
    #: every step (:func:`pyro_vae.qstar.adam_fit`) turns it off and steps one dense Adam
    sparse_grad = True

    def __init__(self, z_dim: int, num_data: int, name: str, min_scale: float = MIN_SCALE):
        if not isinstance(num_data, int) or num_data < 1:
            raise InputError(f"{type(self).__name__} needs num_data >= 1 (one set of parameters per datapoint), "
                             f"got {num_data!r}.")
        super().__init__(z_dim, num_data, name)
        global _dense_step_hook
        if _dense_step_hook is None:
            _dense_step_hook = register_optimizer_step_pre_hook(_refuse_dense_step)
        #: the rows this process holds: ``num_data``, or its shard's (:func:`pyro_vae.rows.keep_shard`)
        self.num_rows = num_data
        self.min_scale = min_scale
        self.loc = self._rows("loc")
        self.scale_raw = self._rows("scale_raw")

    def initial_row(self, name: str) -> torch.Tensor:
        """The starting values of one datapoint's parameter ``name`` (a row of ``(num_data, ...)``): every
        datapoint starts from the same q, N(0, I)."""
        K = self.z_dim
        rows = {"loc": torch.zeros(K), "scale_raw": inverse_positive(torch.ones(K), self.min_scale),
                "off_diag": torch.zeros(K * (K - 1) // 2)}
        if name not in rows:
            raise KeyError(f"{type(self).__name__} has no constant starting row for {name!r}.")
        return rows[name]

    def _rows(self, name: str) -> torch.nn.Parameter:
        """The ``(num_data, ...)`` parameter ``name``, every row :meth:`initial_row`."""
        row = self.initial_row(name)
        with torch.no_grad():  # torch.empty follows a torch.device(...) context: rows on "meta" hold no memory
            return torch.nn.Parameter(torch.empty(self.num_data, *row.shape).copy_(row))

    def gather(self, x: torch.Tensor, idx: Optional[torch.Tensor], *params: torch.Tensor):
        """``param[idx]`` for each param, with sparse gradients; a clear error for a missing or bad ``idx``."""
        if idx is None:
            raise InputError(
                f"{type(self).__name__} is a per-datapoint guide: call it with idx, the dataset row of "
                f"each row of x (data.loader yields (x, idx)). It has no parameters for unseen data; "
                f"fit q* for new points with pyro_vae.gaps.fit_local."
            )
        if not torch.jit.is_tracing():  # checked at the compiling call; a trace would freeze the values it reads
            check_idx(idx, len(x), self.num_data, type(self).__name__)
        idx = self.local_rows(idx.long())
        return tuple(F.embedding(idx, param, sparse=self.sparse_grad) for param in params)

    def row_parameter_names(self) -> list:
        return [name for name, p in self.named_parameters() if p.dim() and p.shape[0] == self.num_rows]

    def init_from(self, q: torch.distributions.Distribution) -> "LocalGuide":
        """Set every datapoint's parameters from ``q`` (batch ``(num_data,)``, event ``(z_dim,)``)."""
        raise NotImplementedError


@register("meanfield")
class MeanField(LocalGuide):
    """q_i(z) = Normal(loc_i, scale_i).to_event(1): a diagonal Gaussian per datapoint.

    :param int z_dim: latent dimension K.
    :param int num_data: number of datapoints N; parameters are ``(N, K)``.
    :param float min_scale: floor of sigma (sigma = softplus(raw) + min_scale).
    :param x_dim: ignored (accepted so one set of arguments builds any guide).
    :param hidden: ignored, likewise; and ``activation``.
    """

    family = "normal"

    def __init__(self, z_dim: int, num_data: int, min_scale: float = MIN_SCALE, name: Optional[str] = None,
                 x_dim: Optional[int] = None, hidden=None, activation=None):
        super().__init__(z_dim, num_data, name or unique_name("meanfield_guide"), min_scale)

    def distribution(self, x, idx=None):
        loc, scale_raw = self.gather(x, idx, self.loc, self.scale_raw)
        return dist.Normal(loc, positive(scale_raw, self.min_scale)).to_event(1)

    @torch.no_grad()
    def init_from(self, q):
        self.loc.copy_(q.mean)
        self.scale_raw.copy_(inverse_positive(q.variance.sqrt().clamp_min(2 * self.min_scale), self.min_scale))
        return self


@register("local_mvn")
class LocalMVN(LocalGuide):
    """q_i(z) = MultivariateNormal(loc_i, scale_tril=L_i): a full covariance per datapoint.

    L_i = diag(s_i) T_i as in :func:`guides.base.scale_tril`; parameters are
    ``loc (N, K)``, ``scale_raw (N, K)`` and ``off_diag (N, K(K-1)/2)``.
    """

    family = "mvn"

    def __init__(self, z_dim: int, num_data: int, min_scale: float = MIN_SCALE, name: Optional[str] = None,
                 x_dim: Optional[int] = None, hidden=None, activation=None):
        super().__init__(z_dim, num_data, name or unique_name("local_mvn_guide"), min_scale)
        self.off_diag = self._rows("off_diag")

    def distribution(self, x, idx=None):
        loc, scale_raw, off_diag = self.gather(x, idx, self.loc, self.scale_raw, self.off_diag)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril(scale_raw, off_diag, self.min_scale))

    @torch.no_grad()
    def init_from(self, q):
        cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)
        L = torch.linalg.cholesky(cov)
        diag = torch.diagonal(L, dim1=-2, dim2=-1)
        L = L + torch.diag_embed((2 * self.min_scale - diag).clamp_min(0))  # keep s above the floor
        diag_raw, off_diag = split_scale_tril(L, self.min_scale)
        self.loc.copy_(q.mean)
        self.scale_raw.copy_(diag_raw)
        self.off_diag.copy_(off_diag)
        return self
