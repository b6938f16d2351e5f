"""The one registry of guides: :func:`register` a class by name, :func:`make` one by name.

A pip-installed package adds its guides through the entry-point group ``pyro_vae.guides`` (``name = module:Class``
in its metadata): they are loaded the first time the registry is read, and one that fails to load is left out and
named by :func:`broken`, the others working as before.
"""

from __future__ import annotations

from typing import Dict, List, Type

from pyro_vae.errors import InputError

_REGISTRY: Dict[str, type] = {}
#: the entry-point group a package's guides are found in
ENTRY_POINTS = "pyro_vae.guides"
_BROKEN: Dict[str, str] = {}
_SCANNED = {"path": None}


def _load_entry_points() -> None:
    """Register the guides of the installed packages' ``pyro_vae.guides`` entry points (again when ``sys.path``
    changed since the last look); a guide that fails to load goes into :func:`broken` with the reason."""
    import sys
    from importlib.metadata import entry_points

    if _SCANNED["path"] == tuple(sys.path):
        return
    _SCANNED["path"] = tuple(sys.path)
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name in _REGISTRY or ep.name in _BROKEN:
            continue
        try:
            cls = ep.load()
            if _REGISTRY.get(ep.name) is not cls:
                register(ep.name)(cls)
        except Exception as e:  # the package's code, whatever it raises: named, never fatal to the others
            first = str(e).splitlines()[0] if str(e) else ""
            _BROKEN[ep.name] = f"{ep.value}: {type(e).__name__}: {first[:160]}"


def broken() -> Dict[str, str]:
    """The entry-point guides that failed to load: name -> why."""
    _load_entry_points()
    return dict(_BROKEN)


def _same(a: type, b: type) -> bool:
    """Whether two classes are one class defined again (a module re-run, a notebook cell executed twice)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register(name: str, replace: bool = False):
    """Class decorator: add a guide class to the registry under ``name``.

    A name another class holds (a built-in one included) is refused unless ``replace``; the same class defined again
    (its module re-imported, a notebook cell run twice) takes its name back. The class must implement the one hook,
    ``distribution(x, idx)``.

    :raises InputError: when ``name`` is taken, or the class has no ``distribution``.
    """
    def deco(cls):
        owner = next((k for k in cls.__mro__ if "distribution" in vars(k)), None)
        if owner is None or (owner.__module__, owner.__qualname__) == ("guides.base", "Guide"):
            raise InputError(f"register({name!r}): {cls.__qualname__} has no distribution(x, idx), the hook every "
                             f"guide implements: define it to return q(z | x, idx) as a torch distribution.")
        held = _REGISTRY.get(name)
        if held is not None and not replace and not _same(held, cls):
            raise InputError(f"register({name!r}): the name is taken by {held.__module__}.{held.__qualname__}: "
                             f"choose another name, or pass replace=True to replace it.")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls
    return deco


def names() -> List[str]:
    """The names :func:`make` accepts."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get(name: str) -> Type:
    """The guide class registered under ``name``."""
    if name not in _REGISTRY:
        _load_entry_points()
    if name in _BROKEN:
        raise InputError(f"the {name} guide's package failed to load it ({_BROKEN[name]}): fix or reinstall the "
                         f"package, or choose one of {names()}.")
    if name not in _REGISTRY:
        raise InputError(f"unknown guide {name!r}; choose one of {names()} (a guide of your own: import its module "
                         f"first, --import MODULE on the command line).")
    return _REGISTRY[name]


def make(name: str, **kwargs):
    """Build the guide registered under ``name`` with ``kwargs`` (see each class for its arguments).

    Per-datapoint guides ignore ``x_dim`` and ``hidden``, so one set of keyword
    arguments builds any guide; guides whose class has ``needs_model`` also take ``model``.
    """
    return get(name)(**kwargs)
