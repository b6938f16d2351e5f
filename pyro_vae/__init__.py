"""pyro-vae: variational autoencoders in Pyro, and what amortized inference costs.

Usage::

    import pyro
    from pyro.infer import SVI, Trace_ELBO
    import guides
    from pyro_vae import data, models
    from pyro_vae.optim import LazyAdam

    ds = data.load("digits", binarize="static")
    vae = models.VAE(x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=len(ds.train))
    guide = guides.make("mvn", x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=len(ds.train))
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}), Trace_ELBO())
    for x, idx in ds.loader("train", batch_size=128, shuffle=True):
        svi.step(x, idx)

    run = load_run("runs/mvn")       # a run written by `pyro-vae train`: model, guide, data, config

Modules: ``data`` (data sets, loaders), ``models`` (VAE, LinearGaussian),
``estimators`` (ELBO, importance-weighted log p(x), KL), ``objectives`` (the ELBOs by
name, compiled or not), ``train`` (fit), ``runs`` (train, load_run), ``gaps`` (q*, the gap
decomposition), ``compare``, ``optim`` (LazyAdam), ``plots``, ``cli``. Guides live in the
top-level package ``guides``.
"""

from . import contract, data, estimators, models, nets, objectives, optim  # noqa: F401  (estimators registers a KL)
from .runs import load_run  # noqa: F401
from .train import fit  # noqa: F401

__version__ = "0.1.0"
