"""LazyAdam: Adam that updates a per-datapoint parameter's rows only when they are in the batch.

Usage::

    from pyro_vae.optim import LazyAdam
    optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    svi = SVI(vae.model, guides.make("meanfield", z_dim=8, num_data=N), optim, Trace_ELBO())

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

    :param dict optim_args: ``lr``, ``betas``, ``eps`` and Adam-only arguments
        such as ``weight_decay``; or a callable ``param_name -> dict`` as for any
        PyroOptim.
    :param dict sparse_args: arguments of the per-datapoint parameters' SparseAdam
        (``lr``, ``betas``, ``eps``), default those of ``optim_args`` that apply.
        A datapoint's row moves only when it is in the batch, about
        ``epochs`` times in a run, so it usually wants a larger ``lr`` than the
        networks, which move every step.
    """

    _SPARSE_ARGS = ("lr", "betas", "eps", "maximize")

    def __init__(self, optim_args, clip_args=None, sparse_args=None):
        super().__init__(torch.optim.Adam, optim_args, clip_args)
        self.sparse_args = sparse_args

    def _get_optim(self, param):
        if param.grad is not None and param.grad.is_sparse:
            args = self.sparse_args if self.sparse_args is not None else self._get_optim_args(param)
            return torch.optim.SparseAdam([param], **{k: v for k, v in args.items() if k in self._SPARSE_ARGS})
        return super()._get_optim(param)
