"""Amortized guides: an encoder network maps x to the parameters of q(z | x).

Usage::

    guide = AmortizedNormal(x_dim=64, z_dim=8, hidden=(128,), num_data=len(train))
    q = guide.distribution(x)        # Normal(loc, scale).to_event(1), batch (batch,)
    guide = AmortizedMVN(x_dim=64, z_dim=8, hidden=(128,), num_data=len(train))
    q = guide.distribution(x)        # MultivariateNormal(loc, scale_tril=L)

References: Kingma & Welling (2014), Auto-Encoding Variational Bayes;
Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_vae.nets import check_sizes, mlp, unique_name
from pyro_vae.errors import InputError

from .registry import register
from .base import MAX_SCALE, MIN_SCALE, Guide, scale_tril

#: bounds on log(sigma) for the exp-based scales: sigma stays in [1e-4, 1e4]
LOG_SCALE_BOUNDS = (math.log(MIN_SCALE), math.log(MAX_SCALE))

#: encoder output -> sigma; each stays in [1e-4, 1e4] for any finite output
SCALE_FNS = {
    # sigma = softplus(h) + 1e-4: linear for large h, never 0, capped at 1e4
    "softplus": lambda h: (F.softplus(h) + MIN_SCALE).clamp(max=MAX_SCALE),
    # h = log sigma^2, sigma = exp(h / 2), clamped so exp neither overflows nor reaches 0
    "logvar": lambda h: torch.exp(0.5 * h.clamp(2 * LOG_SCALE_BOUNDS[0], 2 * LOG_SCALE_BOUNDS[1])),
    # h = log sigma, sigma = exp(h), clamped likewise
    "exp": lambda h: torch.exp(h.clamp(*LOG_SCALE_BOUNDS)),
}


@register("normal")
class AmortizedNormal(Guide):
    """q(z | x) = Normal(loc(x), scale(x)).to_event(1): a diagonal Gaussian from an MLP encoder.

    :param int x_dim: data dimension D.
    :param int z_dim: latent dimension K.
    :param hidden: widths of the encoder's hidden layers.
    :param str scale: how the encoder's output h becomes sigma: ``"softplus"``
        (softplus(h) + 1e-4), ``"logvar"`` (exp(h/2), h = log sigma^2) or ``"exp"`` (exp(h));
        each is held inside [1e-4, 1e4] so that no encoder output gives sigma = 0 or inf.
    :param num_data: size of the training set; needed when called with ``idx``.
    :param str activation: the encoder's nonlinearity, ``"relu"`` or ``"elu"``.
    """

    family = "normal"
    jit_safe = True

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,), scale: str = "softplus",
                 num_data: Optional[int] = None, name: Optional[str] = None, activation: str = "relu"):
        if scale not in SCALE_FNS:
            raise InputError(f"unknown scale {scale!r}; choose one of {sorted(SCALE_FNS)}.")
        check_sizes(type(self).__name__, x_dim=x_dim, hidden=tuple(hidden))
        super().__init__(z_dim, num_data, name or unique_name("normal_guide"))
        self.x_dim, self.scale = x_dim, scale
        self.encoder = mlp(x_dim, tuple(hidden), 2 * z_dim, activation)

    def distribution(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> dist.Distribution:
        return self.from_params(self.encoder(x))

    def from_params(self, params: torch.Tensor) -> dist.Distribution:
        """q from the encoder's output ``params: (..., 2K)`` (loc, then the raw scale)."""
        loc, h = params.split(self.z_dim, dim=-1)
        return dist.Normal(loc, SCALE_FNS[self.scale](h)).to_event(1)


@register("mvn")
class AmortizedMVN(Guide):
    """q(z | x) = MultivariateNormal(loc(x), scale_tril=L(x)): a full-covariance Gaussian.

    The encoder outputs K + K + K(K-1)/2 numbers per datapoint: the mean, the
    raw diagonal and the strict lower triangle of L = diag(s) T (see
    :func:`guides.base.scale_tril`; the diagonal is at least ``min_scale``).
    """

    family = "mvn"
    jit_safe = True

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,), num_data: Optional[int] = None,
                 min_scale: float = MIN_SCALE, name: Optional[str] = None, activation: str = "relu"):
        check_sizes(type(self).__name__, x_dim=x_dim, hidden=tuple(hidden))
        super().__init__(z_dim, num_data, name or unique_name("mvn_guide"))
        self.x_dim, self.min_scale = x_dim, min_scale
        self.encoder = mlp(x_dim, tuple(hidden), 2 * z_dim + z_dim * (z_dim - 1) // 2, activation)

    def distribution(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> dist.Distribution:
        return self.from_params(self.encoder(x))

    def from_params(self, params: torch.Tensor) -> dist.Distribution:
        """q from the encoder's output ``params: (..., 2K + K(K-1)/2)`` (loc, raw diagonal, strict lower triangle)."""
        K = self.z_dim
        loc, diag_raw, off_diag = params.split([K, K, K * (K - 1) // 2], dim=-1)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril(diag_raw, off_diag, self.min_scale))
