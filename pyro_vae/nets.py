"""Small MLP blocks shared by decoders and encoders, and unique Pyro names.

Usage::

    net = mlp(64, (128,), 16)        # Linear(64,128) - ReLU - Linear(128,16)
    name = unique_name("vae")        # "vae", then "vae_1", "vae_2", ...
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Sequence

import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_

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
            raise ValueError(f"{owner}: {name} must be {'positive integers' if name == 'hidden' else 'a positive integer'}"
                             f", got {value!r}; pass e.g. {name}={'(128,)' if name == 'hidden' else 8}.")


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation=torch.nn.ReLU) -> PyroModule:
    """A PyroModule MLP ``in_dim -> hidden... -> out_dim`` with ``activation`` between layers.

    Input ``(..., in_dim)``, output ``(..., out_dim)``; the last layer is linear.
    """
    check_sizes("mlp", in_dim=in_dim, hidden=tuple(hidden), out_dim=out_dim)
    dims = [in_dim, *hidden, out_dim]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    net = torch.nn.Sequential(*layers)
    to_pyro_module_(net)
    return net
