"""q*, the estimators and the gap decomposition, against the linear-Gaussian oracle."""

import math

import numpy as np
import pandas as pd
import pytest
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import kl_divergence

import guides
from pyro_vae import compare, data, estimators, gaps, models
from pyro_vae.optim import LazyAdam

from .conftest import se_tolerance


def test_log_likelihood_matches_exact_within_its_standard_error(oracle):
    """IWAE with the best q found (q* of the full-covariance family) as proposal, as decompose uses it."""
    lg, x = oracle
    qstar = gaps.fit_local(lg.model, x, "mvn")
    est = estimators.log_likelihood(lg.model, qstar, x, torch.arange(len(x)), num_samples=2000, chunk_size=300)
    err = (est.value - lg.log_marginal(x)).detach()
    assert abs(float(err.mean())) < se_tolerance(est.stderr) / len(x) + 1e-4
    assert (err.abs() < 4 * est.stderr + 1e-4).float().mean() > 0.95


def test_qstar_mvn_reaches_the_exact_posterior(oracle):
    lg, x = oracle
    qstar = gaps.fit_local(lg.model, x, "mvn")
    kl = kl_divergence(qstar.distribution(x, torch.arange(len(x))), lg.posterior(x))
    assert kl.mean() < 0.01


def test_the_closed_form_diagonal_gap():
    """1/2 (sum log Lambda_ii - log det Lambda) = KL(best diagonal || p) = -1/2 log(1 - rho^2) for K = 2,
    and no other diagonal Gaussian comes closer (the variances 1 / Lambda_ii, not Sigma_ii, are the optimum)."""
    rho = 0.8
    cov = torch.tensor([[1.0, rho], [rho, 1.0]]) * torch.tensor([[2.0], [0.5]]).sqrt() * torch.tensor([[2.0, 0.5]]).sqrt()
    post = torch.distributions.MultivariateNormal(torch.tensor([0.3, -1.0]), covariance_matrix=cov)
    gap = gaps.diagonal_gap(post)
    assert gap.item() == pytest.approx(-0.5 * math.log(1 - rho**2), rel=1e-5)  # 0.511, not 1.022
    best = gaps.best_diagonal(post)
    assert gap.item() == pytest.approx(kl_divergence(best, post).item(), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scale = best.scale_tril.diagonal() * torch.exp(0.3 * torch.randn(2, generator=g))
        other = torch.distributions.MultivariateNormal(best.mean + 0.1 * torch.randn(2, generator=g),
                                                       scale_tril=torch.diag(scale))
        assert kl_divergence(other, post) > gap
    marginal = torch.distributions.MultivariateNormal(post.mean, scale_tril=torch.diag(cov.diagonal().sqrt()))
    assert kl_divergence(marginal, post) > gap + 0.1  # the marginal variances are the wrong answer


def test_qstar_normal_has_the_closed_form_diagonal_gap(oracle):
    """The best diagonal Gaussian to N(m, S): mean m, variances 1 / diag(S^-1); its KL is the approximation gap."""
    lg, x = oracle
    post = lg.posterior(x)
    closed_form_gap = gaps.diagonal_gap(post).detach()
    qstar = gaps.fit_local(lg.model, x, "normal")
    est = estimators.elbo(lg.model, qstar, x, torch.arange(len(x)), num_samples=2000)
    gap = (lg.log_marginal(x) - est.value).detach()
    assert abs(float(gap.mean() - closed_form_gap.mean())) < se_tolerance(est.stderr) / len(x) + 0.01
    assert float(closed_form_gap.mean()) > 0.05  # the test can tell a diagonal from a full covariance


def test_decompose_on_the_oracle(oracle):
    lg, x = oracle
    guide = guides.make("normal", x_dim=10, z_dim=2, hidden=(32,), num_data=len(x))
    svi = SVI(pyro.poutine.block(lg.model, hide_types=["param"]), guide, LazyAdam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(300):
        svi.step(x)
    table = gaps.decompose(lg.model, guide, x, ll_samples=1000, elbo_samples=500, exact=lg.log_marginal)
    summary = gaps.summarize(table)
    assert abs(summary.loc["log_px", "mean"] - summary.loc["log_px_exact", "mean"]) < 0.02
    assert (summary.loc["amortization_gap", "mean"] > -4 * summary.loc["amortization_gap", "se"])
    assert summary.loc["elbo_qstar_mvn", "mean"] > summary.loc["elbo_qstar_normal", "mean"]


@pytest.fixture(scope="module")
def quick_digits_run(tmp_path_factory):
    pyro.set_rng_seed(0)
    ds = data.load("digits", binarize="static")
    settings = compare.Settings(guides=("normal", "meanfield"), local_steps=(1,), hidden=(64,), epochs=8, n_eval=30,
                                test_points=30, ll_samples=1000, elbo_samples=200, progress=False, budget_epochs=[8],
                                budget_points=30, budget_ll_samples=200)
    return ds, compare.compare(ds, settings, tmp_path_factory.mktemp("quick-digits"))


def test_gaps_are_ordered_within_monte_carlo_error(quick_digits_run):
    """log p(x) >= L[q*] >= L[q] per datapoint, up to 4 standard errors (and the IWAE bias, which is one-sided)."""
    _, result = quick_digits_run
    t = result.per_point
    amortized = t[t.guide == "normal"]
    tol_approx = 4 * (amortized.log_px_se**2 + amortized.elbo_qstar_normal_se**2) ** 0.5
    tol_amort = 4 * (amortized.elbo_qstar_normal_se**2 + amortized.elbo_q_se**2) ** 0.5
    assert (amortized.approximation_gap > -tol_approx).mean() > 0.95
    assert (amortized.amortization_gap > -tol_amort).mean() > 0.95
    assert result.table.loc[result.table.guide == "normal", "amortization_gap"].gt(0).all()


def test_per_datapoint_rows_have_an_optimization_gap_not_an_amortization_gap(quick_digits_run):
    """For a decoder trained with per-datapoint parameters, L[q*] - L[q] is not an amortization gap."""
    _, result = quick_digits_run
    t = result.table.set_index(["guide", "split"])
    assert t.loc[("normal", "train"), "amortization_gap"] > 0 and math.isnan(t.loc[("normal", "train"),
                                                                                    "optimization_gap"])
    assert math.isnan(t.loc[("meanfield", "train"), "amortization_gap"])
    assert t.loc[("meanfield", "train"), "optimization_gap"] > 0  # 8 epochs leave the rows far from q*
    assert math.isnan(t.loc[("meanfield", "test"), "optimization_gap"])  # no q for test points
    pp = result.per_point
    mf = pp[(pp.guide == "meanfield") & (pp.split == "train")]
    assert np.allclose(mf.optimization_gap, mf.elbo_qstar_normal - mf.elbo_q, atol=1e-5)  # float32, through a CSV


def test_decompose_refuses_to_measure_against_another_family(oracle):
    lg, x = oracle
    guide = guides.make("mvn", x_dim=10, z_dim=2, hidden=(8,), num_data=len(x))
    with pytest.raises(ValueError, match="family is 'mvn'.*families=\\['normal'\\]"):
        gaps.decompose(lg.model, guide, x, families=("normal",), ll_samples=10, elbo_samples=10)


def test_summarize_counts_monte_carlo_noise_once():
    """Values = truth + noise of known SE: the spread across datapoints already holds the noise.

    Adding the per-point SEs again (the old formula) would report sqrt(2) times the true SE.
    """
    rng = np.random.default_rng(0)
    n, noise = 4000, 0.5
    truth = rng.normal(-20.0, 0.1, n)
    table = pd.DataFrame({"log_px": truth + rng.normal(0, noise, n), "log_px_se": noise})
    row = gaps.summarize(table).loc["log_px"]
    true_se = math.sqrt(0.1**2 + noise**2) / math.sqrt(n)
    assert row["se"] == pytest.approx(true_se, rel=0.05)
    assert row["mc_se"] == pytest.approx(noise / math.sqrt(n), rel=1e-9)
    assert math.isnan(gaps.summarize(table.assign(log_px=math.nan)).loc["log_px", "mean"])


def test_fit_local_stops_rows_after_patience_and_freezes_them():
    """Adam with a stopping rule: a row stops after `patience` checks without improvement; from then on its
    parameters do not move.

    Two fits from the same seed, one run 100 steps longer: every row that had stopped in the
    shorter one has the same parameters and step count in the longer one.
    """
    vae = models.VAE(64, 4, (32,))
    x = data.load("digits", binarize="static").train[:40]
    fits = []
    for steps in (100, 200):
        pyro.set_rng_seed(3)
        fits.append(gaps.fit_local(vae.model, x, "normal", method="adam", steps=steps, lr=3e-2, check_every=10,
                                   patience=5, num_samples=8))
    short, long = fits
    stopped = short.steps_taken < 100
    assert 5 < int(stopped.sum()) < len(x) - 5  # some rows stopped, some did not: the test can tell
    assert (short.steps_taken % 10 == 0).all() and int(short.steps_taken.min()) >= (5 + 1) * 10
    assert torch.equal(short.steps_taken[stopped], long.steps_taken[stopped])
    for a, b in zip(short.parameters(), long.parameters()):
        assert torch.equal(a[stopped], b[stopped])
        assert not torch.equal(a[~stopped], b[~stopped])


def test_compare_reports_cost(quick_digits_run):
    ds, result = quick_digits_run
    cost = result.cost.set_index("guide")
    assert cost.loc["normal", "guide_params"] == cost.loc["normal", "guide_params_at_60000"]
    assert cost.loc["meanfield", "guide_params"] == 2 * 8 * len(ds.train)
    assert cost.loc["meanfield", "infer_ms_per_new_point"] > cost.loc["normal", "infer_ms_per_new_point"]
    assert set(result.table.columns) >= {"guide", "split", "log_px", "approximation_gap", "amortization_gap"}


@pytest.mark.parametrize("kind", ["linear-gaussian", "vae"])
def test_fit_local_leaves_a_learnable_decoder_as_it_was(oracle, kind):
    """A decoder that trains (requires_grad=True, registered in Pyro's param store, holding a .grad from
    an earlier step) is not moved by q*, and gets its requires_grad and .grad back."""
    _, x = oracle
    model = models.LinearGaussian.random(10, 2, num_data=len(x)) if kind == "linear-gaussian" else \
        models.VAE(10, 2, (16,), likelihood="gaussian", num_data=len(x))
    svi = SVI(model.model, guides.make("normal", x_dim=10, z_dim=2, hidden=(8,), num_data=len(x)),
              LazyAdam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)  # registers the parameters with Pyro and leaves gradients behind
    before = [(p.detach().clone(), p.requires_grad, p.grad) for p in model.parameters()]
    assert all(requires_grad and grad is not None for _, requires_grad, grad in before)
    gaps.fit_local(model.model, x[:10], "normal", steps=20)
    for p, (value, requires_grad, grad) in zip(model.parameters(), before):
        assert torch.equal(p.detach(), value) and p.requires_grad and p.grad is grad


@pytest.mark.parametrize("name", ["meanfield", "local_mvn"])
def test_out_of_batch_rows_do_not_move(name):
    """Subsample-aware: parameters and Adam moments of rows outside the batch stay exactly as they were."""
    lg = models.LinearGaussian.random(6, 3, num_data=20)
    guide = guides.make(name, z_dim=3, num_data=20)
    svi = SVI(lg.model, guide, LazyAdam({"lr": 0.1}), Trace_ELBO())
    x = torch.randn(20, 6)
    first = torch.tensor([1, 4, 7])
    svi.step(x[first], first)
    snapshot = {n: p.detach().clone() for n, p in guide.named_parameters()}
    moments = {n: {k: v.clone() for k, v in svi.optim.optim_objs[p].state[p].items() if torch.is_tensor(v) and v.dim()}
               for n, p in guide.named_parameters()}
    second = torch.tensor([2, 4, 9])
    for _ in range(3):
        svi.step(x[second], second)
    untouched = torch.tensor([i for i in range(20) if i not in second.tolist()])
    for n, p in guide.named_parameters():
        assert torch.equal(p.detach()[untouched], snapshot[n][untouched]), n
        assert not torch.equal(p.detach()[second], snapshot[n][second]), n
        state = svi.optim.optim_objs[p].state[p]
        for k, before in moments[n].items():
            assert torch.equal(state[k][untouched], before[untouched]), (n, k)
    # plain Adam on a dense (num_data, K) tensor would move them: the property is not vacuous
    dense = torch.nn.Parameter(torch.zeros(20, 3))
    adam = torch.optim.Adam([dense], lr=0.1)
    for rows in (first, second):
        adam.zero_grad()
        dense[rows].sum().backward()
        adam.step()
    assert not torch.equal(dense.detach()[1], torch.full((3,), -0.1))
