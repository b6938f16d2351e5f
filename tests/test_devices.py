"""Everything runs where its data and modules are: on the CPU here, and on CUDA where a GPU is present.

Each test runs on every device in ``DEVICES`` (the CPU, plus CUDA when ``torch.cuda.is_available()``);
the CUDA cases are skipped cleanly on a machine without one.
"""

import pandas as pd
import pyro
import pytest
import torch

from pyro_vae import cli, compare, estimators, fit, gaps, models
from pyro_vae.optim import LazyAdam

from .conftest import DEVICES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_gaussian_oracle_on_the_device(device):
    lg = models.LinearGaussian.random(6, 2, correlation=0.5).to(device)
    z, x = lg.sample(50, generator=torch.Generator().manual_seed(0))
    assert z.device.type == x.device.type == torch.device(device).type
    assert lg.log_marginal(x).device.type == lg.posterior(x).mean.device.type == torch.device(device).type
    assert lg.sample_mean(3).device.type == torch.device(device).type
    # one seed, the same data on every device
    _, x_cpu = models.LinearGaussian.random(6, 2, correlation=0.5).sample(50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.cpu(), x_cpu, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["normal", "meanfield"])
def test_fit_estimators_and_decompose_on_the_device(digits, tmp_path, device, name):
    pyro.set_rng_seed(0)
    model = compare.build_model(digits, 4, (32,))
    guide = compare.build_guide(name, digits, 4, (32,))
    history = fit(model, guide, digits, epochs=2, optim=LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2}),
                  device=device, progress=False, checkpoint_dir=str(tmp_path))
    assert len(history) == 2
    assert all(p.device.type == torch.device(device).type for p in [*model.parameters(), *guide.parameters()])
    x, idx = digits.train[:20].to(device), torch.arange(20, device=device)
    for est in (estimators.elbo(model.model, guide, x, idx, 10),
                estimators.log_likelihood(model.model, guide, x, idx, 30, chunk_size=7)):
        assert est.value.device.type == torch.device(device).type and torch.isfinite(est.value).all()
    table = gaps.decompose(model.model, guide, x, idx, ll_samples=30, elbo_samples=10, steps=20)
    assert table[["log_px", "elbo_qstar_normal", "elbo_qstar_mvn", "approximation_gap"]].notna().all().all()
    qstar = gaps.fit_local(model.model, x, "mvn", steps=10)
    assert qstar.steps_taken.device.type == torch.device(device).type


@needs_cuda
def test_resume_on_cuda_continues_exactly(digits, tmp_path):
    """The CUDA RNG state travels in the checkpoint: a resumed CUDA run equals the uninterrupted one."""
    def run(epochs, **kw):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        model = compare.build_model(digits, 4, (32,))
        guide = compare.build_guide("mvn", digits, 4, (32,))
        return fit(model, guide, digits, epochs=epochs, device="cuda", progress=False, seed=1, **kw)

    straight = run(3)
    run(2, checkpoint_dir=str(tmp_path))
    torch.cuda.manual_seed_all(12345)
    resumed = run(3, checkpoint_dir=str(tmp_path), resume=True)
    pd.testing.assert_frame_equal(straight[["train_loss", "test_loss"]], resumed[["train_loss", "test_loss"]])


@needs_cuda
@pytest.mark.parametrize("command", [["train", "--epochs", "2"], ["compare", "--quick"]])
def test_cli_on_cuda(tmp_path, command):
    assert cli.main([*command, "--device", "cuda", "--z-dim", "4", "--hidden", "32", "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--device", "cuda", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "names a CUDA device and this machine has none (use cpu)" in err
    assert len(err.strip().splitlines()) == 1
