"""LazyAdam: Adam that updates a per-datapoint parameter's rows only when they are in the batch.

Usage::

    from pyro_vae.optim import LazyAdam
    svi = SVI(vae.model, guides.make("meanfield", z_dim=8, num_data=N), LazyAdam({"lr": 1e-2}), Trace_ELBO())

A drop-in for ``pyro.optim.Adam``: parameters whose gradient is sparse (the
per-datapoint guides gather rows with ``embedding(..., sparse=True)``) get
``torch.optim.SparseAdam``, which updates only the rows present in the
gradient together with their moment estimates; every other parameter (decoder,
encoder) gets ``torch.optim.Adam``. SparseAdam's step count, and so its bias
correction, is shared by all rows of a tensor (the LazyAdam of TensorFlow
Addons behaves the same).
"""

from __future__ import annotations

import torch
from pyro.optim import PyroOptim


class LazyAdam(PyroOptim):
    """A Pyro optimizer: SparseAdam for sparse gradients, Adam otherwise.

    :param dict optim_args: ``lr``, ``betas``, ``eps`` (shared by both), and
        Adam-only arguments such as ``weight_decay``; or a callable
        ``(param_name, param) -> dict`` as for any PyroOptim.
    """

    _SPARSE_ARGS = ("lr", "betas", "eps", "maximize")

    def __init__(self, optim_args, clip_args=None):
        super().__init__(torch.optim.Adam, optim_args, clip_args)

    def _get_optim(self, param):
        if param.grad is not None and param.grad.is_sparse:
            args = {k: v for k, v in self._get_optim_args(param).items() if k in self._SPARSE_ARGS}
            return torch.optim.SparseAdam([param], **args)
        return super()._get_optim(param)
