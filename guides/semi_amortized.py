"""The semi-amortized guide: an encoder proposes q, then K gradient steps on each datapoint's ELBO refine it.

Usage::

    guide = guides.make("semi_amortized", model=vae.model, base="normal", steps=5,
                        x_dim=64, z_dim=8, hidden=(256,), num_data=N)
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}), Trace_ELBO())   # trains like every guide
    q = guide.distribution(x)        # the refined q, also under torch.no_grad() (estimators, decompose)

For each row of x, the encoder's output lambda_0 (the parameters of the base guide's q, the
``normal`` or ``mvn`` family) is refined by ``steps`` steps of SGD with momentum on that
datapoint's reparameterized ELBO (``refine_samples`` draws, the gradient norm clipped to
``clip`` per datapoint, the decoder held as it is), and q is the base family at lambda_K.
``steps=0`` is the plain encoder.

How each part learns (``encoder_gradient``):

- ``"through"`` (semi-amortized VAE, Kim et al. 2018): the encoder's gradient flows back
  through the K unrolled steps (exact Hessian-vector products by autograd, where Kim et al.
  used finite differences). The decoder is trained at lambda_K held fixed, as in their
  Algorithm 1: no gradient reaches the decoder through the refinement;
- ``"stop"`` (Krishnan et al. 2018; Kim et al.'s "VAE + SVI"): the gradient stops at the
  refinement's start. The decoder is trained at lambda_K, the encoder on its own ELBO at
  lambda_0, through a ``pyro.factor`` in the guide whose value is 0 (``svi.step`` still
  returns the -ELBO of the refined q) and whose gradient is -dELBO/dlambda_0 (the first
  refinement step's gradient, so it costs nothing extra).

The refinement is stochastic (its gradients use fresh draws), so two calls give slightly
different q's; the estimators are unbiased for each.

References: Kim, Wiseman, Miller, Sontag & Rush (2018), Semi-Amortized Variational
Autoencoders (SGD, momentum 0.5, learning rate 1, 20 steps, gradient norm clipped at 5);
Krishnan, Liang & Hoffman (2018), On the challenges of learning with inference networks on
sparse, high-dimensional data.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import pyro
import torch
from pyro import poutine

from pyro_vae.contract import SITE, data_plate
from pyro_vae.contract import log_joint
from pyro_vae.nets import unique_name
from pyro_vae.errors import InputError

from .registry import make, register
from .base import Guide

ENCODER_GRADIENTS = ("through", "stop")


class _ThroughRefinement(torch.autograd.Function):
    """lambda_K's value; backward sends the gradient at lambda_K through the unrolled steps to lambda_0 only.

    ``unrolled = (leaf, final)``: the refinement ran from ``leaf`` (a detached copy of
    lambda_0) with ``create_graph=True`` to ``final``. Routing the gradient through this
    function rather than through ``final``'s graph keeps it off the decoder's weights.
    """

    @staticmethod
    def forward(ctx, start, unrolled):
        ctx.unrolled = unrolled
        return unrolled[1].detach().clone()

    @staticmethod
    def backward(ctx, grad):
        leaf, final = ctx.unrolled
        del ctx.unrolled
        with torch.enable_grad():
            (grad_start,) = torch.autograd.grad(final, leaf, grad)
        return grad_start, None


@register("semi_amortized")
class SemiAmortized(Guide):
    """q(z | x) = the base family at lambda_K, lambda_0 = encoder(x), refined by ``steps`` SGD steps on the ELBO.

    :param model: the model whose ELBO the refinement climbs (``vae.model``); required.
    :param str base: the encoder and family: ``"normal"`` (diagonal) or ``"mvn"`` (full covariance).
    :param int steps: refinement steps K (0: the plain encoder).
    :param float lr: the refinement's learning rate (Kim et al.: 1).
    :param float momentum: its momentum (Kim et al.: 0.5).
    :param clip: each datapoint's gradient norm is clipped to this (Kim et al.: 5); None: no clipping.
    :param int refine_samples: draws per refinement step's ELBO gradient.
    :param str encoder_gradient: ``"through"`` or ``"stop"`` (see the module docstring).
    Other keyword arguments (``scale``, ``min_scale``) go to the base guide.
    """

    amortized = True
    jit_safe = False  # the refinement's inner loop cannot be replayed by a trace
    #: built with the model it refines against (``guides.make(..., model=vae.model)``)
    needs_model = True
    #: the family of the default base, the normal encoder (an instance takes its base's)
    family = "normal"

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,), num_data: Optional[int] = None,
                 model: Optional[Callable] = None, base: str = "normal", steps: int = 5, lr: float = 0.03,
                 momentum: float = 0.5, clip: Optional[float] = 5.0, refine_samples: int = 10,
                 encoder_gradient: str = "through", name: Optional[str] = None, **base_kwargs):
        owner = type(self).__name__
        if model is None or not callable(model):
            raise InputError(f"{owner} refines q on the model's ELBO: build it with model=vae.model "
                             f"(guides.make('semi_amortized', model=vae.model, ...)).")
        if base not in ("normal", "mvn"):
            raise InputError(f"{owner}: base must be 'normal' or 'mvn' (the encoder's family), got {base!r}.")
        if encoder_gradient not in ENCODER_GRADIENTS:
            raise InputError(f"{owner}: encoder_gradient must be one of {ENCODER_GRADIENTS}, got {encoder_gradient!r}.")
        for key, value, low in (("steps", steps, 0), ("refine_samples", refine_samples, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{owner}: {key} must be an integer >= {low}, got {value!r}.")
        if not (isinstance(lr, numbers.Real) and lr > 0 and isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
            raise InputError(f"{owner}: need lr > 0 and 0 <= momentum < 1, got lr={lr!r}, momentum={momentum!r}.")
        if clip is not None and not (isinstance(clip, numbers.Real) and clip > 0):
            raise InputError(f"{owner}: clip must be a positive number or None, got {clip!r}.")
        super().__init__(z_dim, num_data, name or unique_name("semi_amortized_guide"))
        self.base = make(base, x_dim=x_dim, z_dim=z_dim, hidden=hidden, num_data=num_data, **base_kwargs)
        self.family, self.x_dim = self.base.family, x_dim
        self.steps, self.lr, self.momentum, self.clip = steps, float(lr), float(momentum), clip
        self.refine_samples, self.encoder_gradient = refine_samples, encoder_gradient
        self.__dict__["model"] = model  # a plain attribute: the model's weights are not the guide's

    def refine(self, x: torch.Tensor, start: torch.Tensor, create_graph: bool = False):
        """``steps`` SGD-with-momentum steps on each row's ELBO from ``start: (B, P)`` (base parameters).

        Returns ``(final, first_grad)``: lambda_K ``(B, P)`` and dELBO/dlambda at lambda_0 (unclipped),
        both detached unless ``create_graph`` (then ``final`` is differentiable in ``start``, which
        must require grad). Runs with gradients on (also under ``torch.no_grad()``) and hidden
        from any Pyro handler (the model's sites are not the guide's).
        """
        lam, velocity, first_grad = start, torch.zeros_like(start), None
        with torch.enable_grad(), poutine.block():
            for _ in range(self.steps):
                if not lam.requires_grad:
                    lam = lam.detach().requires_grad_()
                q = self.base.from_params(lam)
                z = q.rsample((self.refine_samples,))
                elbo = (log_joint(self.model, x, z) - q.log_prob(z)).mean(0)
                (grad,) = torch.autograd.grad(elbo.sum(), lam, create_graph=create_graph)
                if first_grad is None:
                    first_grad = grad.detach()
                if self.clip is not None:
                    norm = grad.norm(dim=-1, keepdim=True)
                    grad = grad * (self.clip / norm.clamp_min(1e-12)).clamp(max=1.0)
                velocity = self.momentum * velocity + grad
                lam = lam + self.lr * velocity
                if not create_graph:
                    lam, velocity = lam.detach(), velocity.detach()
        return lam, first_grad

    def _refined(self, x: torch.Tensor):
        """``(lambda used by q, lambda_0, dELBO/dlambda_0)`` with the gradient paths ``encoder_gradient`` names."""
        start = self.base.encoder(x)
        if self.steps == 0:
            return start, start, None
        if torch.is_grad_enabled() and self.encoder_gradient == "through":
            leaf = start.detach().requires_grad_()
            final, first_grad = self.refine(x, leaf, create_graph=True)
            return _ThroughRefinement.apply(start, (leaf, final)), start, first_grad
        final, first_grad = self.refine(x, start.detach())
        return final, start, first_grad

    def distribution(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.distributions.Distribution:
        return self.base.from_params(self._refined(x)[0])

    def forward(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        params, start, first_grad = self._refined(x)  # outside the plate: the refinement runs the model
        with data_plate(x, idx, self.num_data, owner=type(self).__name__):
            if self.encoder_gradient == "stop" and first_grad is not None and torch.is_grad_enabled():
                surrogate = -(start * first_grad).sum(-1)  # its gradient: -dELBO(lambda_0)/dlambda_0
                pyro.factor("encoder_elbo", surrogate - surrogate.detach(), has_rsample=True)
            return pyro.sample(SITE, self.base.from_params(params))
