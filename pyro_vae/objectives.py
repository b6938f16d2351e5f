"""The training objectives, by name: Pyro's ELBOs, and whether to run them compiled.

Usage::

    loss = objectives.make("trace")                  # pyro.infer.Trace_ELBO()
    loss = objectives.make("meanfield", jit=True)    # pyro.infer.JitTraceMeanField_ELBO()
    svi = SVI(vae.model, guide, optim, loss)
    objectives.jit_safe(vae, guide)                  # True when both are tested under the JIT

``jit=True`` picks Pyro's ``JitTrace*_ELBO``: the same estimator, traced once by
``torch.jit.trace`` and replayed without Python (see the README for the trade-off).
The JIT traces one call and replays it: a model or guide whose Python control flow
depends on tensor values, that creates parameters after the first step, or that
refines q with an inner optimization loop is not safe under it. Models and guides
declare ``jit_safe = True`` when the test suite checks them under the JIT
(``tests/test_speed.py``); anything else trains with the plain ELBO.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Dict, Tuple

import pyro.infer
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """Pyro's ``JitTraceMeanField_ELBO``, compiled once.

    In Pyro 1.9.2 its ``differentiable_loss`` tests ``_loss_and_surrogate_loss`` but stores
    the compiled function as ``_differentiable_loss``, so it traces the model and guide
    anew on every call: slower than the plain ELBO, and each trace draws extra random
    numbers, so a run no longer matches the uncompiled one. This reuses the compiled
    function from the second call on.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, _pyro_model_id=id(model), _pyro_guide_id=id(guide), **kwargs)


#: name -> (plain ELBO class, compiled ELBO class)
ELBOS: Dict[str, Tuple[type, type]] = {
    "trace": (Trace_ELBO, JitTrace_ELBO),
    "meanfield": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
}


def names() -> list:
    """The objective names :func:`make` accepts."""
    return sorted(ELBOS)


def make(name: str = "trace", jit: bool = False, **kwargs) -> ELBO:
    """The ELBO registered as ``name``, compiled when ``jit``; ``kwargs`` go to its constructor."""
    if name not in ELBOS:
        raise ValueError(f"unknown objective {name!r}; choose one of {names()}.")
    plain, compiled = ELBOS[name]
    if jit and compiled is None:
        raise ValueError(f"the {name!r} objective has no compiled version: use jit=False.")
    if jit:
        kwargs.setdefault("ignore_jit_warnings", True)
    return (compiled if jit else plain)(**kwargs)


def is_jit(loss: ELBO) -> bool:
    """Whether ``loss`` is one of Pyro's compiled ELBOs."""
    return type(loss).__name__.startswith("Jit")


def jit_safe(*modules) -> bool:
    """True when every module declares ``jit_safe = True`` (ours do when the suite tests them compiled)."""
    return all(getattr(getattr(m, "__self__", m), "jit_safe", False) for m in modules)


@contextlib.contextmanager
def quiet_jit():
    """Hide torch's deprecation notice for ``torch.jit.trace``, which Pyro's JIT ELBOs call when they compile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        yield
