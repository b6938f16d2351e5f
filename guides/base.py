"""The base of every guide, and the lower-triangular scale both full-covariance guides use.

A guide is a :class:`~pyro.nn.PyroModule` called as ``guide(x, idx=None)``.
Subclasses implement one hook, :meth:`Guide.distribution`, which returns
q(z | x, idx) as a torch distribution with batch shape ``(batch,)`` and event
shape ``(z_dim,)``; the base class samples it at site ``"z"`` inside the plate
``"data"``. Estimators use the same hook outside SVI.
"""

from __future__ import annotations

from typing import Optional

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.contract import SITE, data_plate
from pyro_vae.nets import check_sizes


#: every guide's standard deviations (and Cholesky diagonals) stay in [MIN_SCALE, MAX_SCALE]
MIN_SCALE, MAX_SCALE = 1e-4, 1e4


class Guide(pyro.nn.PyroModule):
    """q(z | x, idx) at site ``"z"``: subclasses implement :meth:`distribution`.

    :param int z_dim: latent dimension K.
    :param num_data: size of the training set; needed when called with ``idx``.
    """

    #: True when q depends on x through shared weights (one pass infers a new point)
    amortized: bool = True
    #: the family of q: "normal" (diagonal Gaussian), "mvn" (full covariance) or "flow"
    family: str = ""
    #: True when the guide is built with the model (``make(name, model=vae.model, ...)``)
    needs_model: bool = False
    #: True when the test suite checks this guide under Pyro's JIT ELBOs (see pyro_vae.objectives)
    jit_safe: bool = False
    #: True when the guide reads its per-datapoint rows through :meth:`local_rows`, so that a data-parallel process
    #: can hold only its shard of them (:func:`pyro_vae.rows.keep_shard`)
    shardable: bool = False
    #: the rows this process holds (a :class:`pyro_vae.rows.Shard`); None: all ``num_data``
    shard = None

    def __init__(self, z_dim: int, num_data: Optional[int], name: str):
        check_sizes(type(self).__name__, z_dim=z_dim)
        if num_data is not None:
            check_sizes(type(self).__name__, num_data=num_data)
        super().__init__(name)
        self.z_dim, self.num_data = z_dim, num_data

    def distribution(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.distributions.Distribution:
        """q(z | x, idx) for ``x: (batch, x_dim)``: batch shape ``(batch,)``, event shape ``(z_dim,)``."""
        raise NotImplementedError

    def row_parameter_names(self) -> list:
        """Names of the per-datapoint parameters, ``(num_data, ...)`` tensors of which a step reads only the
        batch's rows (none for an amortized guide). Data-parallel training never all-reduces them: each row
        belongs to the process that holds its datapoint (:mod:`pyro_vae.distributed`)."""
        return []

    def local_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows of the per-datapoint parameters that hold dataset indices ``idx: (batch,)``: ``idx`` itself,
        or, in a process that holds one shard, their places in it (an error for rows of another shard)."""
        return idx if self.shard is None else self.shard.local(idx)

    def forward(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample ``z: (batch, z_dim)`` at site ``"z"`` inside the plate ``"data"``."""
        with data_plate(x, idx, self.num_data, owner=type(self).__name__):
            return pyro.sample(SITE, self.distribution(x, idx))


def positive(raw: torch.Tensor, min_scale: float) -> torch.Tensor:
    """softplus(raw) + min_scale, at most MAX_SCALE: positive and finite for every finite ``raw``."""
    return (F.softplus(raw) + min_scale).clamp(max=MAX_SCALE)


def inverse_positive(scale: torch.Tensor, min_scale: float) -> torch.Tensor:
    """The ``raw`` with ``positive(raw, min_scale) == scale`` (for ``scale > min_scale``)."""
    y = (scale - min_scale).clamp_min(1e-12)
    return y + torch.log(-torch.expm1(-y))


def scale_tril(diag_raw: torch.Tensor, off_diag: torch.Tensor, min_scale: float) -> torch.Tensor:
    """L = diag(s) T with T unit lower-triangular and s = softplus(diag_raw) + min_scale.

    ``diag_raw: (..., K)``, ``off_diag: (..., K(K-1)/2)`` (T's strict lower
    triangle, row-major) -> ``L: (..., K, K)`` with a positive diagonal. This is
    the parameterization Pyro's AutoMultivariateNormal uses and Pyro issue #2924
    recommends over a raw ``scale_tril``: the diagonal stays in
    [min_scale, MAX_SCALE] and T's entries in [-MAX_SCALE, MAX_SCALE], so ``L`` is
    always a finite, valid Cholesky factor.
    """
    K = diag_raw.shape[-1]
    rows, cols = torch.tril_indices(K, K, offset=-1)
    T = torch.zeros(*diag_raw.shape, K, dtype=diag_raw.dtype, device=diag_raw.device)
    T[..., rows, cols] = off_diag.clamp(-MAX_SCALE, MAX_SCALE)
    T = T + torch.eye(K, dtype=diag_raw.dtype, device=diag_raw.device)
    return positive(diag_raw, min_scale).unsqueeze(-1) * T


def split_scale_tril(L: torch.Tensor, min_scale: float):
    """The inverse of :func:`scale_tril`: ``(diag_raw, off_diag)`` for a Cholesky factor ``L``."""
    K = L.shape[-1]
    s = torch.diagonal(L, dim1=-2, dim2=-1)
    T = L / s.unsqueeze(-1)
    rows, cols = torch.tril_indices(K, K, offset=-1)
    return inverse_positive(s, min_scale), T[..., rows, cols]
