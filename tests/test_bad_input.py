"""Each bad input gets one clear error that names the problem, before any training."""

import dataclasses

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
    ds = data.load("digits", binarize="none")
    with pytest.raises(ValueError, match="Binarize"):
        _fit(ds)
    assert _fit(ds, likelihood="continuous_bernoulli")["train_loss"].notna().all()


def test_unknown_guide_lists_the_registry():
    with pytest.raises(ValueError, match="meanfield.*mvn.*normal"):
        guides.make("flow", x_dim=4, z_dim=2)


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


def test_model_with_idx_needs_num_data():
    vae = models.VAE(4, 2)
    with pytest.raises(ValueError, match="num_data"):
        vae.model(torch.zeros(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        vae.model(torch.zeros(3, 5))
