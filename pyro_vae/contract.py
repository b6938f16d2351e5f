"""The contract every model and guide keeps, as code.

A model p(z) p(x | z) and a guide q(z | x, idx) meet only here: one sample
site named ``"z"`` inside one ``pyro.plate("data", ...)``. Both programs open
that plate with :func:`data_plate`, so their log-densities are scaled alike:

- ``idx`` given (the dataset row of each row of ``x``): the plate is
  ``pyro.plate("data", num_data, subsample=idx)``, and Pyro scales every
  site by ``num_data / len(idx)``: the ELBO of a mini-batch is an unbiased
  estimate of the full-data bound;
- ``idx`` None: the batch is the whole data set, ``pyro.plate("data", len(x))``.

Usage::

    with data_plate(x, idx, num_data, owner="VAE"):
        pyro.sample(SITE, ...)
    log_joint(vae.model, x, z)       # log p(x, z) per datapoint, (S, B), for z: (S, B, K)
"""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from .errors import InputError

#: the name of the latent sample site shared by models and guides
SITE = "z"
#: the name of the data plate shared by models and guides
PLATE = "data"


def check_idx(idx: torch.Tensor, batch_size: int, num_data: Optional[int], owner: str) -> None:
    """Raise a ValueError naming the fix when ``idx`` cannot index the data set."""
    if num_data is None:
        raise InputError(
            f"{owner} was built without num_data but called with idx: the plate 'data' must "
            f"know the data set size to scale a mini-batch to the full-data ELBO. Pass "
            f"num_data=len(train) to every model and guide used together (or call without idx "
            f"to treat the batch as the whole data set)."
        )
    if idx.dim() != 1 or len(idx) != batch_size:
        raise InputError(
            f"{owner}: idx must be a 1-D tensor with one dataset index per row of x "
            f"(expected shape ({batch_size},), got {tuple(idx.shape)})."
        )
    if idx.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{owner}: idx must hold integer dataset indices, got dtype {idx.dtype}.")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_data):
        raise InputError(
            f"{owner}: idx must lie in [0, num_data={num_data}), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]."
        )


def data_plate(x: torch.Tensor, idx: Optional[torch.Tensor], num_data: Optional[int], owner: str):
    """The plate ``"data"`` over the rows of ``x: (batch, x_dim)``, scaled as the module docstring says."""
    if idx is None:
        return pyro.plate(PLATE, len(x))
    if not torch.jit.is_tracing():  # checked at the compiling call; a trace would freeze the values it reads
        check_idx(idx, len(x), num_data, owner)
    return pyro.plate(PLATE, num_data, subsample=idx.long())


def log_joint(model: Callable, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) per datapoint for ``x: (B, D)``, ``z: (S, B, K)``: ``(S, B)``, nats.

    Runs ``model(x)`` with site ``"z"`` conditioned on ``z`` under a
    ``pyro.plate`` of S particles at dim -2 and sums every sample site's
    log-density. The model is called without ``idx``: these are per-datapoint
    densities, with no mini-batch scaling.
    """
    with pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(model, data={SITE: z})).get_trace(x)
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["unscaled_log_prob"]
    return total.expand(z.shape[:2])
