"""The fast paths compute what the plain ones do: the JIT ELBOs, LazyAdam's one multi-tensor step, validation off.

Speed itself is measured in benchmarks/, never asserted here.
"""

import warnings

import pandas as pd
import pytest
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import guides
from pyro_vae import compare, fit, models, objectives
from pyro_vae.optim import LazyAdam

JIT_SAFE = [name for name in guides.names() if guides.get(name).jit_safe]
COMPILED = [name for name in objectives.names() if objectives.compiles(name)]  # iwae has no JIT version


def test_every_registered_guide_and_model_is_marked():
    assert set(JIT_SAFE) >= {"normal", "mvn", "meanfield", "local_mvn"} and set(COMPILED) == {"trace", "meanfield"}
    assert models.VAE.jit_safe and models.LinearGaussian.jit_safe


@pytest.mark.parametrize("elbo", COMPILED)
@pytest.mark.parametrize("name", JIT_SAFE)
def test_jit_training_equals_plain_training(digits, name, elbo):
    """Two epochs (12 full batches and a last one of 30 rows each) give the same losses compiled or not."""
    histories = []
    for jit in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        model = compare.build_model(digits, 4, (32,))
        guide = compare.build_guide(name, digits, 4, (32,))
        histories.append(fit(model, guide, digits, epochs=2, loss=objectives.make(elbo, jit=jit), progress=False,
                             seed=3)[["train_loss", "test_loss"]])
    pd.testing.assert_frame_equal(histories[0], histories[1], rtol=1e-5)


@pytest.mark.parametrize("elbo", COMPILED)
def test_each_compiled_objective_compiles_once(monkeypatch, elbo):
    """Pyro 1.9.2's JitTraceMeanField_ELBO re-traced on every call; ours traces once per (model, guide)."""
    traces = []
    real = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traces.append(1) or real(*a, **k))
    vae = models.VAE(6, 3, (16,), num_data=40)
    guide = guides.make("mvn", x_dim=6, z_dim=3, hidden=(16,), num_data=40)
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-2}), objectives.make(elbo, jit=True))
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    with objectives.quiet_jit():
        for step in range(5):
            idx = torch.arange(step * 8, step * 8 + 8 - (step == 4))  # the last batch is smaller
            svi.step(x[idx], idx)
    assert len(traces) == 1


def test_a_guide_not_marked_safe_trains_without_the_jit(digits, monkeypatch):
    guide = compare.build_guide("normal", digits, 4, (32,))
    monkeypatch.setattr(type(guide), "jit_safe", False)
    assert not objectives.jit_safe(compare.build_model(digits, 4, (32,)), guide)
    assert objectives.jit_safe(compare.build_model(digits, 4, (32,)), compare.build_guide("mvn", digits, 4, (32,)))


def test_compiling_prints_no_deprecation_notice(digits):
    model, guide = compare.build_model(digits, 4, (32,)), compare.build_guide("normal", digits, 4, (32,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, guide, digits, epochs=1, jit=True, progress=False)
    assert not [w for w in caught if "deprecated" in str(w.message)]


@pytest.mark.parametrize("name", ["normal", "meanfield"])
def test_lazy_adam_moves_parameters_as_pyro_adam_does(name):
    """One multi-tensor (fused) Adam for the networks is Adam: the same parameters after ten steps as
    pyro.optim.Adam's one optimizer per tensor (SparseAdam rows are compared with pyro's SparseAdam)."""
    results = []
    for optim in (LazyAdam({"lr": 1e-2}), None):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        vae = models.VAE(6, 3, (16,), num_data=40)
        guide = guides.make(name, x_dim=6, z_dim=3, hidden=(16,), num_data=40)
        if optim is None:  # Pyro's own optimizers, one per tensor
            optim = pyro.optim.Adam({"lr": 1e-2}) if name == "normal" else pyro.optim.PyroOptim(
                lambda params, **kw: (torch.optim.SparseAdam if params[0].grad.is_sparse else torch.optim.Adam)(
                    params, **kw), {"lr": 1e-2})
        svi = SVI(vae.model, guide, optim, Trace_ELBO())
        x = torch.bernoulli(torch.full((40, 6), 0.4))
        for step in range(10):
            idx = torch.arange(step % 4 * 10, step % 4 * 10 + 10)
            svi.step(x[idx], idx)
        results.append([p.detach().clone() for p in [*vae.parameters(), *guide.parameters()]])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
