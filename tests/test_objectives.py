"""The IWAE objective under mini-batches, against the per-datapoint estimator, Trace_ELBO and the oracle."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

import guides
from pyro_vae import cli, estimators, models, objectives

N, B, K = 1000, 10, 5  # N/B = 100, as in the measurement


@pytest.fixture(scope="module")
def setting():
    """A correlated linear-Gaussian model of N rows and an untrained (poor) `normal` guide: a batch of B rows."""
    lg = models.LinearGaussian.random(x_dim=6, z_dim=2, correlation=0.8, seed=0, num_data=N)
    lg.requires_grad_(False)
    x = lg.sample(B, generator=torch.Generator().manual_seed(1))[1]
    idx = torch.arange(B) * 7
    pyro.set_rng_seed(0)
    guide = guides.make("normal", x_dim=6, z_dim=2, hidden=(8,), num_data=N)
    return lg, guide, x, idx


def _mean_loss(elbo, lg, guide, x, idx, calls=400):
    values = torch.tensor([elbo.loss(lg.model, guide, x, idx) for _ in range(calls)], dtype=torch.float64)
    return values.mean().item(), (values.std() / math.sqrt(calls)).item()


def test_the_iwae_loss_is_n_over_b_times_the_per_datapoint_bound(setting):
    """E[loss] = -(N/B) sum_i E[IWAE_K(x_i)], the latter from estimators.log_likelihood with K samples;
    Pyro's RenyiELBO(alpha=0) puts N/B inside the log-sum-exp and misses it by 8.5 standard errors."""
    lg, guide, x, idx = setting
    pyro.set_rng_seed(2)
    ours, ours_se = _mean_loss(objectives.iwae(num_particles=K), lg, guide, x, idx)
    with torch.no_grad():
        per_point = torch.stack([estimators.log_likelihood(lg.model, guide, x, idx, num_samples=K).value
                                 for _ in range(2000)]).double()  # (2000, B)
    totals = -(N / B) * per_point.sum(1)
    target, target_se = totals.mean().item(), (totals.std() / math.sqrt(len(totals))).item()
    se = math.hypot(ours_se, target_se)
    print(f"iwae {ours:.0f} +- {ours_se:.0f}, per-datapoint {target:.0f} +- {target_se:.0f}")
    assert abs(ours - target) < 4 * se
    renyi, renyi_se = _mean_loss(RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True,
                                           max_plate_nesting=1), lg, guide, x, idx)
    assert abs(renyi - target) > 6 * math.hypot(renyi_se, target_se)  # measured: 8.5 standard errors


def test_with_one_particle_it_is_trace_elbo_value_and_gradient(setting):
    """K = 1: the same draws give the same loss and the same gradients as Trace_ELBO."""
    lg, guide, x, idx = setting
    results = []
    for elbo in (objectives.iwae(num_particles=1, max_plate_nesting=1), Trace_ELBO(max_plate_nesting=1)):
        pyro.set_rng_seed(4)
        guide.zero_grad()
        loss = elbo.differentiable_loss(lg.model, guide, x, idx)
        grads = torch.autograd.grad(loss, list(guide.parameters()))
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_at_the_exact_posterior_every_weight_is_p_of_x(setting):
    """With q = p(z | x) each weight is p(x): the loss is exactly -(N/B) sum_i log p(x_i) for any K."""
    lg, _, x, idx = setting
    exact = guides.make("local_mvn", z_dim=2, num_data=N)
    post = lg.posterior(x)
    mean, tril = torch.zeros(N, 2), torch.eye(2).repeat(N, 1, 1)
    mean[idx], tril[idx] = post.mean, post.scale_tril
    with torch.no_grad():
        exact.init_from(torch.distributions.MultivariateNormal(mean, scale_tril=tril))
    loss = objectives.iwae(num_particles=7).loss(lg.model, exact, x, idx)
    assert loss == pytest.approx(-(N / B) * lg.marginal().log_prob(x).sum().item(), rel=1e-5)


def test_svi_step_trains_with_it(setting):
    lg, guide, x, idx = setting
    svi = SVI(lg.model, guide, pyro.optim.Adam({"lr": 1e-2}), objectives.iwae(num_particles=K))
    assert math.isfinite(svi.step(x, idx))


def test_it_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="positive integer"):
        objectives.iwae(num_particles=0)

    def model(x):
        w = pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))  # a global latent: no per-datapoint bound
        with pyro.plate("data", len(x)):
            pyro.sample("x", pyro.distributions.Normal(w, 1.0), obs=x)

    def guide(x):
        pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="outside the data plate"):
        objectives.iwae().loss(model, guide, torch.zeros(3))


def test_the_cli_trains_with_it(tmp_path):
    out = tmp_path / "iwae"
    assert cli.main(["train", "--loss", "iwae", "--particles", "3", "--epochs", "2", "--z-dim", "4", "--hidden", "32",
                     "--out", str(out), "--no-progress"]) == 0
    assert '"elbo": "iwae"' in (out / "config.json").read_text()
