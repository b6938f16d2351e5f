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
from .errors import InputError, InputTypeError

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
    _check_idx_form(idx, batch_size, owner)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_data):
        raise InputError(
            f"{owner}: idx must lie in [0, num_data={num_data}), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]."
        )


def _check_idx_form(idx, batch_size: int, owner: str) -> None:
    if not isinstance(idx, torch.Tensor):
        raise InputTypeError(f"{owner}: idx must be a tensor of dataset indices, got {type(idx).__name__}: pass "
                             f"torch.as_tensor(idx).")
    if idx.dim() != 1 or len(idx) != batch_size:
        raise InputError(
            f"{owner}: idx must be a 1-D tensor with one dataset index per row of x "
            f"(expected shape ({batch_size},), got {tuple(idx.shape)})."
        )
    if idx.dtype not in (torch.int64, torch.int32):
        hint = " (a boolean mask: pass mask.nonzero().squeeze(1))" if idx.dtype == torch.bool else \
            " (fractional indices are not rounded: pass idx.long() if they are whole)"
        raise InputError(f"{owner}: idx must hold integer dataset indices, got dtype {idx.dtype}{hint}.")


def check_sizes_agree(model, guide) -> None:
    """A one-line error when the guide's latent or data dimension is not the model's (``z_dim``, ``x_dim``).

    ``model``: the model module, or its ``model`` method (what the estimators take)."""
    model = getattr(model, "__self__", model)
    for size in ("z_dim", "x_dim"):
        ours, theirs = getattr(model, size, None), getattr(guide, size, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise InputError(f"the guide was built with {size}={theirs} and the model with {size}={ours}: build both "
                             f"with the same {size}.")


def check_batch(model, guide, x, idx: Optional[torch.Tensor] = None) -> None:
    """Everything an estimator needs of its arguments, checked before any work; one line naming the fix.

    ``model``: the model module or its ``model`` method; ``guide``: a guide with ``distribution(x, idx)`` (or None
    when the estimator has none); ``x: (batch, x_dim)``, finite, of the model's dtype; ``idx: (batch,)`` integer
    dataset rows, within the guide's ``num_data`` when it has one.
    """
    owner = getattr(model, "__self__", model)
    if guide is not None:
        if not callable(getattr(guide, "distribution", None)):
            raise InputTypeError(f"the guide must have distribution(x, idx), as every guide of guides.make does; got "
                                 f"{type(guide).__name__}.")
        check_sizes_agree(owner, guide)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputTypeError(f"x must be a (batch, x_dim) tensor, got {shape}.")
    if len(x) == 0:
        raise InputError("x has no rows: pass at least one datapoint.")
    x_dim = getattr(owner, "x_dim", None)
    if x_dim is not None and x.shape[1] != x_dim:
        raise InputError(f"x has {x.shape[1]} columns and the model was built with x_dim={x_dim}: pass data of the "
                         f"model's data set, or build the model with x_dim={x.shape[1]}.")
    dtype = next((p.dtype for p in owner.parameters()), None) if isinstance(owner, torch.nn.Module) else None
    if not x.is_floating_point() or (dtype is not None and x.dtype != dtype):
        want = dtype or torch.get_default_dtype()
        raise InputTypeError(f"x is {x.dtype} and the model's parameters are {want}: pass x.to({want}).")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().squeeze(1)
        raise InputError(f"x holds NaN or infinite values in {len(bad)} of its {len(x)} rows (the first: row "
                         f"{int(bad[0])}): drop or impute them first.")
    if idx is not None:
        num_data = getattr(guide, "num_data", None)
        owner_name = type(guide).__name__ if guide is not None else "idx"
        if num_data is not None:
            check_idx(idx, len(x), num_data, owner_name)
        else:
            _check_idx_form(idx, len(x), owner_name)


def data_plate(x: torch.Tensor, idx: Optional[torch.Tensor], num_data: Optional[int], owner: str):
    """The plate ``"data"`` over the rows of ``x: (batch, x_dim)``, scaled as the module docstring says."""
    if idx is None:
        return pyro.plate(PLATE, len(x))
    if not torch.jit.is_tracing():  # checked at the compiling call; a trace would freeze the values it reads
        check_idx(idx, len(x), num_data, owner)
    return pyro.plate(PLATE, num_data, subsample=idx.long())


def model_terms(model: Callable, x: torch.Tensor, z: torch.Tensor):
    """log p(z) and log p(x | z), each ``(S, B)`` for ``x: (B, D)``, ``z: (S, B, K)``, from the model's module itself
    when it offers them, else None (read them from a trace of the model).

    A model offers them when ``model`` is a module, or its ``model`` or ``forward`` method, with a method
    ``log_prior_likelihood(x, z)`` (:meth:`pyro_vae.models.LatentVariableModel.log_prior_likelihood`) that does not
    return ``NotImplemented``; it must give what the trace of the model would. The estimators evaluate these
    densities thousands of times per point (q* fits, AIS); without the trace the K = 5 000 pass and AIS on digits
    run 1.2x faster (benchmarks/ais_direct.md).
    """
    if isinstance(model, torch.nn.Module):
        module = model
    elif getattr(model, "__name__", None) in ("model", "forward"):
        module = getattr(model, "__self__", None)
    else:
        return None
    direct = getattr(module, "log_prior_likelihood", None)
    terms = direct(x, z) if callable(direct) else NotImplemented
    return None if terms is NotImplemented else terms


def log_joint(model: Callable, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) per datapoint for ``x: (B, D)``, ``z: (S, B, K)``: ``(S, B)``, nats.

    Runs ``model(x)`` with site ``"z"`` conditioned on ``z`` under a
    ``pyro.plate`` of S particles at dim -2 and sums every sample site's
    log-density. The model is called without ``idx``: these are per-datapoint
    densities, with no mini-batch scaling. A model that offers its densities
    (:func:`model_terms`) gives them without the trace.
    """
    terms = model_terms(model, x, z)
    if terms is not None:
        return (terms[0] + terms[1]).expand(z.shape[:2])
    with pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(model, data={SITE: z})).get_trace(x)
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["unscaled_log_prob"]
    return total.expand(z.shape[:2])
