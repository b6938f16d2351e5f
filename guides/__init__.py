"""Swappable guides q(z | x, idx) for the site ``"z"``, in one registry.

Usage::

    import guides
    guides.names()   # ['flow', 'local_flow', 'local_mvn', 'meanfield', 'mvn', 'normal', 'semi_amortized']
    guide = guides.make("mvn", x_dim=64, z_dim=8, hidden=(128,), num_data=len(train))
    guide(x, idx)                    # a Pyro guide: SVI(model, guide, optim, Trace_ELBO())
    guide.distribution(x, idx)       # q as a torch distribution, batch (batch,), event (z_dim,)

Amortized guides (``normal``, ``mvn``, ``flow``) infer a new datapoint with one encoder
pass; ``semi_amortized`` refines the encoder's q with a few gradient steps per datapoint
(it is built with ``model=vae.model``); per-datapoint guides (``meanfield``, ``local_mvn``,
``local_flow``) hold parameters for each of ``num_data`` datapoints and need ``idx``.
"""

from __future__ import annotations

from .registry import get, make, names, register  # noqa: F401  (the registry the submodules fill)
from .amortized import AmortizedMVN, AmortizedNormal  # (importing fills the registry)
from .flow import AmortizedFlow, LocalFlow
from .base import Guide
from .local import LocalMVN, MeanField
from .semi_amortized import SemiAmortized

__all__ = ["Guide", "AmortizedNormal", "AmortizedMVN", "AmortizedFlow", "SemiAmortized", "MeanField", "LocalMVN",
           "LocalFlow", "make", "names", "get", "register"]
