"""q*, the estimators and the gap decomposition, against the linear-Gaussian oracle."""

import pytest
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import kl_divergence

import guides
from pyro_vae import compare, data, estimators, gaps, models
from pyro_vae.optim import LazyAdam

from .conftest import se_tolerance


@pytest.fixture(scope="module")
def oracle():
    ds = data.load("linear-gaussian")
    lg = models.LinearGaussian(ds.params["W"], ds.params["b"], float(ds.params["noise_scale"]))
    lg.requires_grad_(False)
    return lg, ds.test[:100]


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


def test_qstar_normal_has_the_closed_form_diagonal_gap(oracle):
    """The best diagonal Gaussian to N(m, S): mean m, variances 1 / diag(S^-1); its KL is the approximation gap."""
    lg, x = oracle
    post = lg.posterior(x)
    precision = torch.linalg.inv(post.covariance_matrix)
    best_scale = torch.diagonal(precision, dim1=-2, dim2=-1).rsqrt()
    best = torch.distributions.MultivariateNormal(post.mean, scale_tril=torch.diag_embed(best_scale))
    closed_form_gap = kl_divergence(best, post).detach()
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
def quick_digits_run():
    pyro.set_rng_seed(0)
    ds = data.load("digits", binarize="static")
    settings = compare.Settings(guides=("normal", "meanfield"), hidden=(64,), epochs=8, n_eval=30,
                                ll_samples=1000, elbo_samples=200, qstar_steps=300, progress=False)
    return ds, compare.compare(ds, settings)


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


def test_compare_reports_cost(quick_digits_run):
    ds, result = quick_digits_run
    cost = result.cost.set_index("guide")
    assert cost.loc["normal", "guide_params"] == cost.loc["normal", "guide_params_at_60000"]
    assert cost.loc["meanfield", "guide_params"] == 2 * 8 * len(ds.train)
    assert cost.loc["meanfield", "infer_ms_per_new_point"] > cost.loc["normal", "infer_ms_per_new_point"]
    assert set(result.table.columns) >= {"guide", "split", "log_px", "approximation_gap", "amortization_gap"}


def test_fit_local_leaves_the_decoder_as_it_was(oracle):
    lg, x = oracle
    before = [(p.detach().clone(), p.requires_grad, p.grad) for p in lg.parameters()]
    gaps.fit_local(lg.model, x[:10], "normal", steps=20)
    for p, (value, requires_grad, grad) in zip(lg.parameters(), before):
        assert torch.equal(p.detach(), value) and p.requires_grad == requires_grad and p.grad is grad


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
