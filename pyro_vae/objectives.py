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
import copy
import math
import warnings
from typing import Dict, Optional, Tuple

import pyro.infer
import torch
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import torch_item
from .errors import InputError


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


_PARTICLES = "num_particles_vectorized"  # the name of the plate Pyro's ELBOs vectorize particles with


class IWAE_ELBO(Trace_ELBO):
    """The importance-weighted bound of Burda et al. (2016), right under mini-batches.

    For a batch of B rows of a data set of N (``pyro.plate("data", N, subsample=idx)``) the
    loss is ``-(N/B) sum_i log (1/K) sum_k p(x_i, z_ik) / q(z_ik | x_i)``, with the K particles
    vectorized (a plate at the dimension left of the model's plates) and reparameterized.
    Pyro's ``RenyiELBO(alpha=0)`` computes the same thing only when N = B: it sums each site's
    *scaled* log-density, so the N/B factor multiplies the log-weights inside the log-sum-exp
    (``log (1/K) sum_k exp((N/B) w_ik)``), a different and looser objective once N/B > 1
    (``tests/test_objectives.py`` measures both against the per-datapoint estimator).

    With K = 1 it is the ELBO: the same value and gradient as ``Trace_ELBO`` under the same seed.
    Every sample site must lie in the data plate (the bound is per datapoint) and the guide's
    sites must be reparameterizable; otherwise it raises.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: float = float("inf"), **kwargs):
        if int(num_particles) != num_particles or num_particles < 1:
            raise InputError(f"num_particles must be a positive integer, got {num_particles!r}.")
        super().__init__(num_particles=int(num_particles), vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting, **kwargs)

    def _log_weights(self, model, guide, args, kwargs) -> Tuple[torch.Tensor, float]:
        """log w: ``(K, B)`` per particle and row, unscaled; and the data plate's scale N/B."""
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        log_w, scales, dim = 0.0, set(), None
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if sign < 0 and not site["fn"].has_rsample:
                    raise InputError(f"the IWAE objective needs a reparameterizable guide; site {name!r} is not.")
                frames = site["cond_indep_stack"]
                dim = next((f.dim for f in frames if f.name == _PARTICLES), None)  # None when K = 1
                data_plates = [f for f in frames if f.vectorized and f.name != _PARTICLES]
                if not data_plates:
                    raise InputError(f"the IWAE objective is per datapoint: site {name!r} is outside the data "
                                     f"plate; use Trace_ELBO for models with global latent variables.")
                scales.add(float(site["scale"]))
                log_w = log_w + sign * site["unscaled_log_prob"]
        if len(scales) != 1:
            raise InputError(f"the sites of one datapoint carry different scales {sorted(scales)}; the IWAE "
                             f"objective needs one subsampling scale N/B.")
        log_w = log_w.unsqueeze(0) if dim is None else log_w.movedim(dim, 0)
        log_w = log_w.reshape(self.num_particles, -1)  # (K, rows of the plates)
        return log_w, scales.pop()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-(N/B) sum_i IWAE_K(x_i), nats for the whole data set, differentiable."""
        log_w, scale = self._log_weights(model, guide, args, kwargs)
        iwae = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -scale * iwae.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return torch_item(loss)


def iwae(num_particles: int = 5, **kwargs) -> IWAE_ELBO:
    """The IWAE objective with K = ``num_particles``, for ``SVI(..., loss=...)`` or ``fit(loss=...)``."""
    return IWAE_ELBO(num_particles=num_particles, **kwargs)


#: name -> (plain ELBO class, compiled ELBO class or None)
ELBOS: Dict[str, Tuple[type, Optional[type]]] = {
    "trace": (Trace_ELBO, JitTrace_ELBO),
    "meanfield": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
    "iwae": (IWAE_ELBO, None),
}


def names() -> list:
    """The objective names :func:`make` accepts."""
    return sorted(ELBOS)


def make(name: str = "trace", jit: bool = False, **kwargs) -> ELBO:
    """The ELBO registered as ``name``, compiled when ``jit``; ``kwargs`` go to its constructor."""
    if name not in ELBOS:
        raise InputError(f"unknown objective {name!r}; choose one of {names()}.")
    plain, compiled = ELBOS[name]
    if jit and compiled is None:
        raise InputError(f"the {name!r} objective has no compiled version: use jit=False.")
    if jit:
        kwargs.setdefault("ignore_jit_warnings", True)
    return (compiled if jit else plain)(**kwargs)


def compiles(name: str) -> bool:
    """Whether the objective ``name`` has a compiled (JIT) version."""
    return ELBOS[name][1] is not None


def for_training(name: str, model, guide, jit: bool = True, particles: int = 5) -> ELBO:
    """The objective ``name`` to train ``model`` and ``guide`` with, as ``fit`` runs from settings.

    Compiled when ``jit``, the objective has a compiled version and both modules are marked
    :func:`jit_safe`; ``particles`` is K of ``iwae`` (the other objectives take one sample).
    """
    kwargs = {"num_particles": particles} if name == "iwae" else {}
    return make(name, jit=jit and compiles(name) and jit_safe(model, guide), **kwargs)


def is_jit(loss: ELBO) -> bool:
    """Whether ``loss`` is one of Pyro's compiled ELBOs."""
    return type(loss).__name__.startswith("Jit")


def uncompiled(loss: ELBO) -> ELBO:
    """A plain ELBO of the same estimator as ``loss`` (a fresh one when ``loss`` is compiled, else a copy).

    For programs the JIT cannot trace, such as a model whose parameters ``poutine.block`` hides
    (the JIT passes parameters in as inputs; hidden ones would become constants that need a gradient).
    """
    if not is_jit(loss):
        return copy.deepcopy(loss)
    plain = next(c for c in type(loss).__mro__ if not c.__name__.startswith("Jit"))
    return plain(num_particles=loss.num_particles, max_plate_nesting=loss.max_plate_nesting,
                 vectorize_particles=loss.vectorize_particles)


def jit_safe(*modules) -> bool:
    """True when every module declares ``jit_safe = True`` (ours do when the suite tests them compiled)."""
    return all(getattr(getattr(m, "__self__", m), "jit_safe", False) for m in modules)


@contextlib.contextmanager
def quiet_jit():
    """Hide torch's deprecation notice for ``torch.jit.trace``, which Pyro's JIT ELBOs call when they compile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        yield
