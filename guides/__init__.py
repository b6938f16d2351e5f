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

from typing import Dict, List, Type

from pyro_vae.errors import InputError

_REGISTRY: Dict[str, type] = {}


def register(name: str):
    """Class decorator: add a guide class to the registry under ``name``."""
    def deco(cls):
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls
    return deco


def names() -> List[str]:
    """The names :func:`make` accepts."""
    return sorted(_REGISTRY)


def get(name: str) -> Type:
    """The guide class registered under ``name``."""
    if name not in _REGISTRY:
        raise InputError(f"unknown guide {name!r}; choose one of {names()}.")
    return _REGISTRY[name]


def make(name: str, **kwargs):
    """Build the guide registered under ``name`` with ``kwargs`` (see each class for its arguments).

    Per-datapoint guides ignore ``x_dim`` and ``hidden``, so one set of keyword
    arguments builds any guide; guides whose class has ``needs_model`` also take ``model``.
    """
    return get(name)(**kwargs)



from .amortized import AmortizedMVN, AmortizedNormal  # noqa: E402  (fills the registry)
from .flow import AmortizedFlow, LocalFlow  # noqa: E402
from .base import Guide  # noqa: E402
from .local import LocalMVN, MeanField  # noqa: E402
from .semi_amortized import SemiAmortized  # noqa: E402

__all__ = ["Guide", "AmortizedNormal", "AmortizedMVN", "AmortizedFlow", "SemiAmortized", "MeanField", "LocalMVN",
           "LocalFlow", "make", "names", "get", "register"]
