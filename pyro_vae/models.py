"""Generative models p(z) p(x | z) as Pyro programs.

Both models keep the contract of :mod:`pyro_vae.contract`: the latent site
``"z" ~ Normal(0, I)`` inside ``pyro.plate("data", num_data, subsample=idx)``.

Usage::

    vae = VAE(x_dim=64, z_dim=8, hidden=(128,), num_data=len(train))
    svi = SVI(vae.model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x, idx)                 # x: (batch, 64), idx: (batch,)

    lg = LinearGaussian(W, b, noise_scale=0.5)   # the exact oracle
    lg.log_marginal(x)               # (batch,) nats, closed form
    lg.posterior(x)                  # MultivariateNormal p(z | x), batch (batch,)
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from .errors import InputError
from .contract import SITE, data_plate
from .nets import check_sizes, mlp, unique_name

#: likelihood name -> (support description, check of the support on a tensor)
LIKELIHOODS = {
    "bernoulli": ("{0, 1}", lambda x: ((x == 0) | (x == 1)).all()),
    "continuous_bernoulli": ("[0, 1]", lambda x: ((x >= 0) & (x <= 1)).all()),
    "gaussian": ("the real line", lambda x: torch.tensor(True)),
}


def check_data(x: torch.Tensor, x_dim: int, likelihood: str, what: str = "x") -> None:
    """Raise a ValueError that names the problem and the fix when ``x`` cannot be modelled.

    Checks, in order: a 2-D float tensor ``(n, x_dim)``, at least one row, no
    NaN or inf, and values inside the likelihood's support.
    """
    if not torch.is_tensor(x) or x.dim() != 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise InputError(f"{what} must be a 2-D tensor of shape (n, x_dim={x_dim}), got {shape}.")
    if x.shape[1] != x_dim:
        raise InputError(
            f"{what} has {x.shape[1]} features per row but the model expects x_dim={x_dim}: "
            f"build the model with x_dim={x.shape[1]} or flatten/resize the data."
        )
    if len(x) == 0:
        raise InputError(f"{what} is empty (0 rows): there is nothing to train or evaluate on.")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise InputError(f"{what} holds NaN or inf in {bad} rows: clean or drop them first.")
    support, inside = LIKELIHOODS[likelihood]
    if not bool(inside(x)):
        hint = (
            " Binarize it (data.load(..., binarize='static' | 'dynamic' | 'threshold')) or use "
            "likelihood='continuous_bernoulli' or 'gaussian'."
            if likelihood == "bernoulli"
            else ""
        )
        raise InputError(
            f"{what} has values in [{float(x.min()):g}, {float(x.max()):g}], outside the support "
            f"{support} of the {likelihood} likelihood.{hint}"
        )


def _randn(*shape: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal draws on ``generator``'s device (the CPU when None)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, device=device)


class LatentVariableModel(PyroModule):
    """z ~ N(0, I_K), x | z ~ ``likelihood_dist(z)``, one pair per datapoint in the plate ``"data"``.

    Subclasses set ``x_dim``, ``z_dim``, ``num_data`` and ``likelihood`` and implement
    :meth:`likelihood_dist`.
    """

    x_dim: int
    z_dim: int
    num_data: Optional[int]
    likelihood: str
    #: True when the test suite checks this model under Pyro's JIT ELBOs (see pyro_vae.objectives)
    jit_safe: bool = False

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) for ``z: (..., K)``: batch shape ``(...)``, event shape ``(D,)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model p(z) p(x | z) over ``x: (batch, D)``; returns ``z: (batch, K)``."""
        owner = type(self).__name__
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise InputError(f"{owner} expects x of shape (batch, {self.x_dim}), got {tuple(x.shape)}.")
        prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)
        with data_plate(x, idx, self.num_data, owner=owner):
            z = pyro.sample(SITE, prior)
            pyro.sample("x", self.likelihood_dist(z), obs=x)
        return z

    def model(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model as a plain callable for ``SVI(model.model, guide, ...)``."""
        return self(x, idx)

    def log_prior_likelihood(self, x: torch.Tensor, z: torch.Tensor):
        """log p(z) and log p(x | z) for ``x: (B, D)`` and ``z: (..., B, K)``: each ``(..., B)``, nats, computed
        directly rather than read from a Pyro trace of :meth:`forward`, as :func:`pyro_vae.contract.model_terms`
        takes them for the estimators (a trace is what they read for any other model).

        Returns ``NotImplemented`` for a subclass that overrides :meth:`forward` or :meth:`model` (it may have other
        sites): their densities are then read from the trace.
        """
        if type(self).forward is not LatentVariableModel.forward or type(self).model is not LatentVariableModel.model:
            return NotImplemented
        prior = dist.Normal(z.new_zeros(()), 1.0).log_prob(z).sum(-1)
        return prior, self.log_likelihood(x, z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for ``x: (B, D)`` and ``z: (..., B, K)``: ``(..., B)``, nats (``likelihood_dist(z)``'s)."""
        return self.likelihood_dist(z).log_prob(x)

    def check_data(self, x: torch.Tensor, what: str = "x") -> None:
        """Raise a clear ValueError if ``x`` does not fit this model (see :func:`check_data`)."""
        check_data(x, self.x_dim, self.likelihood, what)

    @torch.no_grad()
    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] for ``z: (..., K)``, shape ``(..., D)``: the image a latent code decodes to."""
        return self.likelihood_dist(z).mean

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (the CPU for a model without any)."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    @torch.no_grad()
    def sample_mean(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """E[x | z] for ``n`` draws z ~ p(z): ``(n, D)``, on the model's device.

        z is drawn on ``generator``'s device (the CPU by default) and then moved, so one seed
        gives the same draws on every device.
        """
        return self.mean(_randn(n, self.z_dim, generator=generator).to(self.device))


class VAE(LatentVariableModel):
    """The VAE's generative model: z ~ N(0, I_z_dim), x | z ~ likelihood(decoder(z)).

    :param int x_dim: data dimension D.
    :param int z_dim: latent dimension K.
    :param hidden: widths of the decoder's hidden layers.
    :param str likelihood: ``"bernoulli"`` (logits), ``"continuous_bernoulli"`` (logits)
        or ``"gaussian"`` (mean from the decoder, a learned per-feature scale kept
        above ``min_scale``).
    :param num_data: size of the training set; needed when called with ``idx``.
    :param float min_scale: floor of the Gaussian likelihood's scale.
    :param str activation: the decoder's nonlinearity, ``"relu"`` or ``"elu"`` (Cremer, Li & Duvenaud's).
    """

    jit_safe = True

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (256,),
        likelihood: str = "bernoulli",
        num_data: Optional[int] = None,
        min_scale: float = 1e-2,
        name: Optional[str] = None,
        activation: str = "relu",
    ):
        if likelihood not in LIKELIHOODS:
            raise InputError(f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}.")
        check_sizes("VAE", x_dim=x_dim, z_dim=z_dim, hidden=tuple(hidden))
        super().__init__(name or unique_name("vae"))
        self.x_dim, self.z_dim, self.hidden = x_dim, z_dim, tuple(hidden)
        self.likelihood, self.num_data = likelihood, num_data
        self.activation = activation
        self.decoder = mlp(z_dim, self.hidden, x_dim, activation)
        if likelihood == "gaussian":
            self.scale = PyroParam(torch.ones(x_dim), constraints.greater_than(min_scale))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for ``x: (B, D)`` and ``z: (..., B, K)``: ``(..., B)``, nats.

        For the Bernoulli likelihood with the decoder :func:`pyro_vae.nets.mlp` built (its last layer linear, logits
        l = W h + b), the sum over pixels is folded: sum_d x_d l_d - softplus(l_d) with sum_d x_d l_d = h . (W^T x)
        + b . x, a product over the last hidden layer's width rather than over the D pixels, so of the D-wide
        elementwise work only softplus(l) is left: 0.73x the time of ``likelihood_dist(z).log_prob(x)`` without a
        gradient and 0.81x with one in z, on mnist-5k's 200-784 layer beside two busy processes (the same numbers to
        float rounding; tested against the trace). See docs/decisions.md, "What an evaluation costs".
        Any other likelihood, decoder or subclass overriding :meth:`likelihood_dist`: ``likelihood_dist``'s.
        """
        last = self.decoder[-1] if isinstance(self.decoder, torch.nn.Sequential) else None
        if (self.likelihood != "bernoulli" or not isinstance(last, torch.nn.Linear)
                or type(self).likelihood_dist is not VAE.likelihood_dist):
            return super().log_likelihood(x, z)
        h = z
        for layer in list(self.decoder)[:-1]:  # each layer itself: a slice would be a new PyroModule, whose
            h = layer(h)                       # parameters Pyro's param store would take under other names
        logits = torch.nn.functional.linear(h, last.weight, last.bias)
        return (h * (x @ last.weight)).sum(-1) + x @ last.bias - torch.nn.functional.softplus(logits).sum(-1)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) for ``z: (..., K)``: batch shape ``(...)``, event shape ``(D,)``."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        if self.likelihood == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.scale).to_event(1)


class LinearGaussian(LatentVariableModel):
    """Probabilistic PCA: z ~ N(0, I_K), x | z ~ N(W z + b, s^2 I_D). The exact oracle.

    p(x) = N(b, W W^T + s^2 I) and p(z | x) = N(m, S) with
    S = (I + W^T W / s^2)^-1 and m = S W^T (x - b) / s^2, both closed form.
    ``W``, ``b`` and ``noise_scale`` are learnable parameters (call
    ``requires_grad_(False)`` to freeze them at the true values).

    :param W: ``(D, K)`` loading matrix.
    :param b: ``(D,)`` offset.
    :param float noise_scale: observation noise standard deviation s > 0.
    """

    likelihood = "gaussian"
    jit_safe = True

    def __init__(self, W: torch.Tensor, b: torch.Tensor, noise_scale: float, num_data: Optional[int] = None,
                 name: Optional[str] = None):
        super().__init__(name or unique_name("linear_gaussian"))
        self.x_dim, self.z_dim = W.shape
        self.num_data = num_data
        self.W = torch.nn.Parameter(torch.as_tensor(W, dtype=torch.float32).clone())
        self.b = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float32).clone())
        self.noise_scale = PyroParam(torch.tensor(float(noise_scale)), constraints.positive)

    @classmethod
    def random(cls, x_dim: int, z_dim: int, noise_scale: float = 0.5, seed: int = 0, correlation: float = 0.0,
               **kw) -> "LinearGaussian":
        """A LinearGaussian with standard normal b and columns of W, drawn from ``seed``.

        Columns 2..K of W are mixed with column 1 so that each has ``correlation``
        with it: the larger, the more correlated the posterior p(z | x) and the
        larger the gap of the best diagonal Gaussian.
        """
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(x_dim, z_dim, generator=g)
        W[:, 1:] = correlation * W[:, :1] + (1 - correlation**2) ** 0.5 * W[:, 1:]
        return cls(W, torch.randn(x_dim, generator=g), noise_scale, **kw)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) for ``z: (..., K)``: batch shape ``(...)``, event shape ``(D,)``."""
        return dist.Normal(z @ self.W.T + self.b, self.noise_scale).to_event(1)

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I), event shape ``(D,)``."""
        W, b, s = self.W, self.b, self.noise_scale
        cov = W @ W.T + s**2 * torch.eye(self.x_dim, dtype=W.dtype, device=W.device)
        return dist.MultivariateNormal(b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for ``x: (batch, D)``: ``(batch,)``, nats per datapoint."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """Exact p(z | x) for ``x: (batch, D)``: batch shape ``(batch,)``, event ``(K,)``."""
        W, b, s = self.W, self.b, self.noise_scale
        precision = torch.eye(self.z_dim, dtype=W.dtype, device=W.device) + W.T @ W / s**2
        cov = torch.linalg.inv(precision)
        cov = (cov + cov.T) / 2
        loc = (x - b) @ W @ cov.T / s**2
        return dist.MultivariateNormal(loc, covariance_matrix=cov.expand(len(x), -1, -1))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        """Draw ``n`` pairs: returns ``(z: (n, K), x: (n, D))`` on the model's device.

        The noise is drawn on ``generator``'s device (the CPU by default) and moved, so one
        seed gives the same data on every device.
        """
        z = _randn(n, self.z_dim, generator=generator).to(self.device)
        eps = _randn(n, self.x_dim, generator=generator).to(self.device)
        return z, self.mean(z) + self.noise_scale * eps
