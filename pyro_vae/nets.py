"""Small MLP blocks shared by decoders and encoders, unique Pyro names, and holding a module fixed.

Usage::

    net = mlp(64, (128,), 16)        # Linear(64,128) - ReLU - Linear(128,16)
    name = unique_name("vae")        # "vae", then "vae_1", "vae_2", ...
    with frozen(vae.model):          # no gradient for the decoder's weights inside
        ...
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from typing import Sequence

import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from .errors import InputError

_counters: dict = defaultdict(itertools.count)


def unique_name(prefix: str) -> str:
    """A process-unique name for a PyroModule's parameters in Pyro's global param store.

    Two models (or guides) built in one process must not share parameters
    through the param store; each root module gets its own prefix.
    """
    n = next(_counters[prefix])
    return prefix if n == 0 else f"{prefix}_{n}"


def check_sizes(owner: str, **sizes) -> None:
    """Raise a ValueError naming the fix unless every size is a positive integer (``hidden`` may be a list).

    Usage: ``check_sizes("VAE", x_dim=64, z_dim=8, hidden=(128,))``.
    """
    for name, value in sizes.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if name == "hidden" and not values:
            continue  # no hidden layer: a linear map
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise InputError(f"{owner}: {name} must be {'positive integers' if name == 'hidden' else 'a positive integer'}"
                             f", got {value!r}; pass e.g. {name}={'(128,)' if name == 'hidden' else 8}.")


#: the nonlinearities a network may use between its layers, by name
ACTIVATIONS = {"relu": torch.nn.ReLU, "elu": torch.nn.ELU}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation="relu") -> PyroModule:
    """A PyroModule MLP ``in_dim -> hidden... -> out_dim`` with ``activation`` between layers.

    Input ``(..., in_dim)``, output ``(..., out_dim)``; the last layer is linear. ``activation``: a name of
    :data:`ACTIVATIONS` (``"relu"``, ``"elu"``) or a module class.
    """
    check_sizes("mlp", in_dim=in_dim, hidden=tuple(hidden), out_dim=out_dim)
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        activation = ACTIVATIONS[activation]
    dims = [in_dim, *hidden, out_dim]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    net = torch.nn.Sequential(*layers)
    to_pyro_module_(net)
    return net


@contextlib.contextmanager
def frozen(model):
    """Hold the module behind ``model`` (a module or a bound method) fixed for the block.

    Inside, no parameter requires a gradient or holds one (``.grad`` is None), so autograd computes none for
    them and an optimizer handed them (``svi.step`` collects every parameter it sees) leaves them where they
    are, Adam's momentum included. On exit each parameter's ``requires_grad`` and ``.grad`` are put back as
    they were (Pyro's param store may have turned ``requires_grad`` on when it first registered one): nothing
    leaks into a later ``svi.step``.
    """
    module = getattr(model, "__self__", model)
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    saved = [(p.requires_grad, p.grad) for p in params]
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    try:
        yield
    finally:
        for p, (requires_grad, grad) in zip(params, saved):
            p.requires_grad_(requires_grad)
            p.grad = grad
