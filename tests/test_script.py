"""The README's script, run as a user would write it."""

import math

import pytest
import pyro
from pyro.infer import SVI, Trace_ELBO

import guides
from pyro_vae import data, models
from pyro_vae.optim import LazyAdam


@pytest.mark.parametrize("name", ["mvn", "normal", "meanfield"])
def test_readme_script_trains(name):
    ds = data.load("digits", binarize="static")
    vae = models.VAE(x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=len(ds.train))
    guide = guides.make(name, x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=len(ds.train))
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2}), Trace_ELBO())
    epoch_losses = []
    for epoch in range(4):
        total = 0.0
        for x, idx in data.loader(ds.train, batch_size=128, shuffle=True):
            loss = svi.step(x, idx)
            assert math.isfinite(loss)
            total += loss * len(x) / len(ds.train) ** 2
        epoch_losses.append(total)
    assert epoch_losses[-1] < epoch_losses[0] - 1.0  # nats per datapoint


def test_guide_without_num_data_is_refused_with_idx():
    """A guide that does not know N would scale its log q unlike the model's mini-batch-scaled terms."""
    ds = data.load("digits", binarize="static")
    vae = models.VAE(x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=len(ds.train))
    guide = guides.make("mvn", x_dim=ds.x_dim, z_dim=8, hidden=(128,))
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x, idx = next(data.loader(ds.train, batch_size=16))
    with pytest.raises(ValueError, match="num_data"):
        svi.step(x, idx)
    assert math.isfinite(svi.step(x))  # without idx the batch is the whole data set
