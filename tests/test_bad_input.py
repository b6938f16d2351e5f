"""Each bad input gets one clear error that names the problem, before any training."""

import dataclasses

import pyro
import pytest
import torch

import guides
from pyro_vae import compare, data, fit, models
from pyro_vae.optim import LazyAdam


def _fit(ds, name="normal", **model_kw):
    model = models.VAE(ds.x_dim, 4, (32,), num_data=len(ds.train), **model_kw)
    guide = guides.make(name, x_dim=ds.x_dim, z_dim=4, hidden=(32,), num_data=len(ds.train))
    return fit(model, guide, ds, epochs=1, optim=LazyAdam({"lr": 1e-3}), progress=False)


@pytest.mark.parametrize("change, message", [
    (lambda t: t[:, :10], "x_dim=64"),
    (lambda t: t.index_put((torch.tensor([3]), torch.tensor([5])), torch.tensor(float("nan"))), "NaN or inf"),
    (lambda t: t.index_put((torch.tensor([3]), torch.tensor([5])), torch.tensor(float("inf"))), "NaN or inf"),
    (lambda t: t * 0.5, "outside the support"),
    (lambda t: t[:0], "empty"),
    (lambda t: t[0], "2-D"),
])
def test_bad_data_is_refused_before_training(digits, change, message):
    model = models.VAE(64, 4, (32,), num_data=len(digits.train))
    guide = guides.make("normal", x_dim=64, z_dim=4, hidden=(32,), num_data=len(digits.train))
    bad = dataclasses.replace(digits, train=change(digits.train))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        fit(model, guide, bad, epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_grey_levels_need_binarizing_for_bernoulli():
    """Grey levels are refused by the Bernoulli likelihood; the fix the message names works."""
    ds = data.load("digits", binarize="none")
    with pytest.raises(ValueError, match="Binarize.*continuous_bernoulli"):
        _fit(ds)
    model = models.VAE(ds.x_dim, 4, (32,), num_data=len(ds.train), likelihood="continuous_bernoulli")
    guide = guides.make("normal", x_dim=ds.x_dim, z_dim=4, hidden=(32,), num_data=len(ds.train))
    history = fit(model, guide, ds, epochs=2, optim=LazyAdam({"lr": 1e-3}), progress=False)
    assert history["epoch"].tolist() == [1, 2]
    x = ds.train[:5]
    trace = pyro.poutine.trace(model.model).get_trace(x)
    site = trace.nodes["x"]
    assert isinstance(site["fn"].base_dist, pyro.distributions.ContinuousBernoulli)
    assert torch.equal(site["value"], x) and len(x.unique()) > 2  # the grey levels themselves are scored


def test_unknown_guide_lists_the_registry():
    with pytest.raises(ValueError, match="meanfield.*mvn.*normal"):
        guides.make("no_such_guide", x_dim=4, z_dim=2)


def test_unknown_likelihood_and_scale():
    with pytest.raises(ValueError, match="bernoulli"):
        models.VAE(4, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="softplus"):
        guides.make("normal", x_dim=4, z_dim=2, scale="relu")


@pytest.mark.parametrize("name", ["meanfield", "local_mvn"])
def test_per_datapoint_guide_without_idx(name):
    guide = guides.make(name, z_dim=2, num_data=10)
    with pytest.raises(ValueError, match="call it with idx"):
        guide(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[0, (num_data=)?10\)"):
        guide(torch.zeros(2, 4), torch.tensor([3, 10]))


def test_model_and_guide_must_agree_on_num_data(digits):
    model = compare.build_model(digits, 4, (32,))
    guide = guides.make("normal", x_dim=64, z_dim=4, hidden=(32,), num_data=100)
    with pytest.raises(ValueError, match="num_data=100"):
        fit(model, guide, digits, epochs=1, progress=False)


@pytest.mark.parametrize("kw, message", [
    (dict(z_dim=0), "z_dim must be a positive integer, got 0"),
    (dict(hidden=(64, 0)), "hidden must be positive integers"),
    (dict(x_dim=-3), "x_dim must be a positive integer"),
])
def test_sizes_are_checked_at_the_api(kw, message):
    args = {"x_dim": 8, "z_dim": 2, "hidden": (16,), **kw}
    with pytest.raises(ValueError, match=message):
        models.VAE(**args)
    if "hidden" not in kw:
        with pytest.raises(ValueError, match=message.split(" must")[0]):
            guides.make("normal", **args)


def test_model_with_idx_needs_num_data():
    vae = models.VAE(4, 2)
    with pytest.raises(ValueError, match="num_data"):
        vae.model(torch.zeros(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        vae.model(torch.zeros(3, 5))
