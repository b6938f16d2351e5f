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


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation=torch.nn.ReLU) -> PyroModule:
    """A PyroModule MLP ``in_dim -> hidden... -> out_dim`` with ``activation`` between layers.

    Input ``(..., in_dim)``, output ``(..., out_dim)``; the last layer is linear.
    """
    dims = [in_dim, *hidden, out_dim]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    net = torch.nn.Sequential(*layers)
    to_pyro_module_(net)
    return net
