"""Flow guides: a Gaussian pushed through affine autoregressive (IAF) transforms.

Usage::

    guide = AmortizedFlow(x_dim=64, z_dim=8, hidden=(256,), num_data=N, num_flows=2)
    q = guide.distribution(x)        # TransformedDistribution, batch (batch,), event (z_dim,)
    z = q.rsample((S,))              # (S, batch, z_dim), reparameterized
    q.log_prob(z)                    # (S, batch), nats; exact (the transforms are inverted when needed)
    guide = LocalFlow(z_dim=8, num_data=N, num_flows=2)   # one flow per datapoint (q* of the "flow" family)

z_0 ~ Normal(loc, scale) and z_k = mu_k(z_{k-1}) + sigma_k(z_{k-1}) * z_{k-1}, with mu_k and
sigma_k autoregressive in z_{k-1} (each output dimension depends on the dimensions before it
in the layer's order); the order is reversed from one transform to the next. Both guides use
Pyro's :class:`~pyro.distributions.transforms.AffineAutoregressive` (log sigma clamped to
[-5, 3]; it caches each draw, so scoring a draw costs nothing and scoring any other z
inverts the transform, one pass per dimension).

Why Pyro's transforms and not Zuko. Pyro's documentation points new flow work to Zuko
(``pyro.contrib.zuko``), the better-maintained library. We use Pyro's own
``ConditionalAffineAutoregressive``, which Pyro 1.9 ships and tests, because (1) it is in the
dependency we already have, (2) its transforms cache the draw, so ``Trace_ELBO``'s
``rsample`` then ``log_prob`` is one forward pass each (a Zuko flow scores a draw it made
through the ``ZukoToPyro`` wrapper's cache, but our estimators re-score draws and the
sticking-the-landing gradient scores them under a detached copy, which needs the inverse
either way), and (3) its ``AffineAutoregressive`` accepts any autoregressive callable, which
is what the per-datapoint flow needs: neither library has a flow with separate weights for
each datapoint, so :class:`BatchedMADE` (MADE with one set of weights per row, masks from
Pyro's ``create_mask``) is the one piece written here.

References: Kingma et al. (2016), Improved Variational Inference with Inverse Autoregressive
Flow; Germain et al. (2015), MADE; Cremer, Li & Duvenaud (2018) (q* of a flow family).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from pyro.nn.auto_reg_nn import create_mask
from pyro.nn.module import to_pyro_module_

from pyro_vae.nets import check_sizes, mlp, unique_name
from pyro_vae.errors import InputError

from .registry import register
from .base import MIN_SCALE, Guide, inverse_positive, positive
from .local import LocalGuide


def orders(z_dim: int, num_flows: int):
    """The variable order of each transform: 0, 1, ..., K-1 for the first, reversed for the next, and so on."""
    forward = torch.arange(z_dim)
    return [forward if k % 2 == 0 else forward.flip(0) for k in range(num_flows)]


def default_flow_hidden(z_dim: int, flow_hidden: Optional[Sequence[int]]) -> tuple:
    """The autoregressive networks' hidden widths: ``flow_hidden``, or one layer of 4 K units."""
    flow_hidden = tuple(flow_hidden) if flow_hidden is not None else (4 * z_dim,)
    check_sizes("flow", flow_hidden=flow_hidden)
    return flow_hidden


@register("flow")
class AmortizedFlow(Guide):
    """q(z | x): an encoder's Normal(loc(x), scale(x)) followed by ``num_flows`` IAF transforms conditioned on x.

    The encoder outputs 2K numbers for the base Gaussian and a context h(x) of ``context_dim``
    numbers; each transform is Pyro's ``ConditionalAffineAutoregressive`` whose MADE
    (``flow_hidden`` widths, with linear skip connections) sees z and h(x), as in Kingma et al.
    (2016). There is no closed-form KL to the prior: ``TraceMeanField_ELBO`` falls back to the
    Monte Carlo estimate of the entropy term for it.

    :param int num_flows: the number of transforms K (0 gives the plain ``normal`` guide).
    :param flow_hidden: hidden widths of each transform's MADE (default ``(4 * z_dim,)``).
    :param context_dim: size of h(x) (default the encoder's last hidden width).
    """

    family = "flow"
    #: the transforms cache each draw, and a trace replays the cache hit: tested compiled against plain
    jit_safe = True

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,), num_data: Optional[int] = None,
                 num_flows: int = 2, flow_hidden: Optional[Sequence[int]] = None, context_dim: Optional[int] = None,
                 name: Optional[str] = None, activation: str = "relu"):
        check_sizes(type(self).__name__, x_dim=x_dim, hidden=tuple(hidden))
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 0:
            raise InputError(f"{type(self).__name__}: num_flows must be an integer >= 0, got {num_flows!r}.")
        super().__init__(z_dim, num_data, name or unique_name("flow_guide"))
        flow_hidden = default_flow_hidden(z_dim, flow_hidden)
        self.context_dim = context_dim or (tuple(hidden)[-1] if len(hidden) else 2 * z_dim)
        self.x_dim, self.num_flows = x_dim, num_flows
        self.encoder = mlp(x_dim, tuple(hidden), 2 * z_dim + self.context_dim, activation)
        nets = torch.nn.ModuleList(
            ConditionalAutoRegressiveNN(z_dim, self.context_dim, list(flow_hidden), permutation=order,
                                        skip_connections=True)
            for order in orders(z_dim, num_flows))
        to_pyro_module_(nets)  # the weights become Pyro parameters, which svi.step optimizes
        self.nets = nets

    def distribution(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> dist.Distribution:
        K = self.z_dim
        loc, scale_raw, context = self.encoder(x).split([K, K, self.context_dim], dim=-1)
        base = dist.Normal(loc, positive(scale_raw, MIN_SCALE)).to_event(1)
        context = torch.tanh(context)
        return dist.TransformedDistribution(base, [ConditionalAffineAutoregressive(net).condition(context)
                                                   for net in self.nets])


class BatchedMADE:
    """A MADE with its own weights for each datapoint: the autoregressive network of :class:`LocalFlow`.

    ``weights``: ``W1 (B, H, K)``, ``b1 (B, H)``, ``W2 (B, 2K, H)``, ``b2 (B, 2K)``, ``V (B, 2K, K)``
    (the linear skip), already masked. Called on ``z: (..., B, K)`` it returns ``(mean,
    log_scale)``, each ``(..., B, K)``, where output dimension d depends only on the
    dimensions before d in ``permutation`` (the attribute Pyro's transform reads to invert).
    """

    def __init__(self, weights, permutation: torch.Tensor):
        self.W1, self.b1, self.W2, self.b2, self.V = weights
        self.permutation = permutation

    def __call__(self, z: torch.Tensor):
        h = F.relu(torch.einsum("bhk,...bk->...bh", self.W1, z) + self.b1)
        out = torch.einsum("boh,...bh->...bo", self.W2, h) + self.b2 + torch.einsum("bok,...bk->...bo", self.V, z)
        return out.chunk(2, dim=-1)


@register("local_flow")
class LocalFlow(LocalGuide):
    """q_i(z): a flow per datapoint, Normal(loc_i, scale_i) then ``num_flows`` affine autoregressive transforms.

    Each datapoint has its own base Gaussian and its own MADE weights (``flow_hidden`` widths,
    one hidden layer, plus a linear skip connection), stored as ``(num_data, P)`` rows and
    gathered by ``idx`` with sparse gradients like the other per-datapoint guides. This is the
    flow family of q* (:func:`pyro_vae.gaps.fit_local` with ``family="flow"``). With the skip
    connection one transform represents any full-covariance Gaussian exactly
    (:meth:`init_from`), so the flow family contains the ``mvn`` family.

    The transforms start at the identity (output weights 0) with their first-layer weights
    drawn from a generator seeded by ``init_seed``, so building the guide does not move the
    global random state.

    :param int num_flows: the number of transforms (at least 1).
    :param flow_hidden: the hidden width of each MADE, one layer (default ``(4 * z_dim,)``).
    """

    family = "flow"
    jit_safe = False
    constant_init = False  # the first-layer weights start at random

    def __init__(self, z_dim: int, num_data: int, num_flows: int = 2, flow_hidden: Optional[Sequence[int]] = None,
                 min_scale: float = MIN_SCALE, init_seed: int = 0, name: Optional[str] = None,
                 x_dim: Optional[int] = None, hidden=None, activation=None):
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise InputError(f"LocalFlow: num_flows must be an integer >= 1, got {num_flows!r}.")
        super().__init__(z_dim, num_data, name or unique_name("local_flow_guide"), min_scale)
        flow_hidden = default_flow_hidden(z_dim, flow_hidden)
        if len(flow_hidden) != 1:
            raise InputError(f"LocalFlow: flow_hidden must be one width (one hidden layer), got {flow_hidden!r}.")
        K, H = z_dim, flow_hidden[0]
        self.num_flows, self.flow_hidden = num_flows, H
        self.shapes = [(H, K), (H,), (2 * K, H), (2 * K,), (2 * K, K)]
        self.sizes = [math.prod(s) for s in self.shapes]
        for k, order in enumerate(orders(K, num_flows)):
            (m1, m2), skip = create_mask(K, 0, [H], order, 2)
            self.register_buffer(f"order_{k}", order)
            self.register_buffer(f"masks_{k}", torch.cat([m1.flatten(), torch.ones(H), m2.flatten(),
                                                          torch.ones(2 * K), skip.flatten()]))
        g = torch.Generator().manual_seed(init_seed)
        flat = torch.zeros(num_data, num_flows, sum(self.sizes))
        flat[..., :self.sizes[0]] = torch.randn(num_data, num_flows, self.sizes[0], generator=g) / math.sqrt(K)
        self.flow = torch.nn.Parameter(flat.reshape(num_data, -1))

    def transforms(self, flat: torch.Tensor):
        """The ``num_flows`` transforms for gathered rows ``flat: (B, num_flows * P)``."""
        out = []
        for k, layer in enumerate(flat.chunk(self.num_flows, dim=-1)):
            layer = layer * getattr(self, f"masks_{k}")
            weights = [w.reshape(len(flat), *shape) for w, shape in zip(layer.split(self.sizes, dim=-1), self.shapes)]
            out.append(AffineAutoregressive(BatchedMADE(weights, getattr(self, f"order_{k}"))))
        return out

    def distribution(self, x, idx=None):
        loc, scale_raw, flat = self.gather(x, idx, self.loc, self.scale_raw, self.flow)
        base = dist.Normal(loc, positive(scale_raw, self.min_scale)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms(flat))

    @torch.no_grad()
    def init_from(self, q):
        """Represent the Gaussian ``q`` exactly (a MultivariateNormal or Normal(...).to_event(1), batch (num_data,)).

        For q = N(m, L L^T): base N(m, diag(L_jj)^2), then the first transform (identity order)
        maps z_0 to z_0 + A (z_0 - m) with A_dj = L_dj / L_jj below the diagonal (its skip
        weights and mean bias) and log sigma = 0; the others stay the identity.
        """
        L = q.scale_tril if hasattr(q, "scale_tril") else torch.diag_embed(q.stddev)
        s = torch.diagonal(L, dim1=-2, dim2=-1).clamp_min(2 * self.min_scale)
        A = torch.tril(L / s.unsqueeze(-2), diagonal=-1)  # A_dj = L_dj / L_jj
        self.loc.copy_(q.mean)
        self.scale_raw.copy_(inverse_positive(s, self.min_scale))
        K, n = self.z_dim, len(q.mean)
        layers = self.flow.view(n, self.num_flows, -1)
        layers[..., self.sizes[0]:].zero_()
        b2 = torch.zeros(n, 2 * K, device=L.device)
        b2[:, :K] = -(A @ q.mean.unsqueeze(-1)).squeeze(-1)
        V = torch.zeros(n, 2 * K, K, device=L.device)
        V[:, :K] = A
        offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        layers[:, 0, offsets[3]:offsets[4]] = b2
        layers[:, 0, offsets[4]:offsets[5]] = V.flatten(1)
        return self
