"""The one registry of guides: :func:`register` a class by name, :func:`make` one by name."""

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
