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


class _Fixed:
    """An amortized guide whose q(z | x_i) is the i-th of a given distribution (batch (n,)) over the rows of
    ``points``: it finds each x among them, as an encoder's q depends on x alone."""

    amortized, family = True, "mvn"

    def __init__(self, q, points):
        self.q, self.points = q, points

    def distribution(self, x, idx=None):
        rows = (x[:, None, :] == self.points[None]).all(-1).float().argmax(1)
        return torch.distributions.MultivariateNormal(self.q.loc[rows], scale_tril=self.q.scale_tril[rows])


def _per_datapoint(q):
    """A LocalMVN guide whose row i is ``q``'s i-th distribution: its q depends on idx alone, as a mean-field guide's."""
    guide = guides.make("local_mvn", z_dim=q.event_shape[0], num_data=q.batch_shape[0])
    with torch.no_grad():
        guide.init_from(q)
    return guide


@pytest.mark.parametrize("blocks", ["one block", "row blocks"])
def test_one_importance_pass_gives_log_px_and_the_elbo(oracle, monkeypatch, blocks):
    """The log weights of one pass hold both estimates. From the exact posterior every weight is log p(x): both equal
    it to float precision, row by row, whatever the blocks (a row scored with another row's q, or a block's sums
    carried into the next, would miss by nats). From the best diagonal Gaussian the ELBO is log p(x) minus the
    closed-form diagonal gap and log p(x) is the exact one, within their standard errors; exactly num_samples
    draws reach each row."""
    lg, x = oracle
    if blocks == "row blocks":  # 7 rows and 32 draws per block: rows in 15 blocks, draws in 7 chunks per block
        monkeypatch.setitem(estimators.BLOCK_ELEMENTS, "cpu", 32 * 7 * estimators.widest(lg.model, x))
        assert estimators.block_shape(200, len(x), estimators.widest(lg.model, x), "cpu") == (7, 32)
    post = lg.posterior(x)
    exact = lg.log_marginal(x).detach()
    rows = torch.arange(len(x))
    guide = _per_datapoint(torch.distributions.MultivariateNormal(post.mean, scale_tril=post.scale_tril))
    log_px, elbo = estimators.importance(lg.model, guide, x, rows.flip(0)[torch.argsort(rows.flip(0))], 200)
    assert torch.allclose(log_px.value, exact, atol=1e-3) and torch.allclose(elbo.value, exact, atol=1e-3)
    drawn = []
    real = estimators.draw
    monkeypatch.setattr(estimators, "draw", lambda q, n: drawn.append((q.batch_shape[0], n)) or real(q, n))
    best = gaps.best_diagonal(post)
    pyro.set_rng_seed(0)
    log_px, elbo = estimators.importance(lg.model, _Fixed(best, x), x, None, 200)
    per_row = {}
    for b, n in drawn:
        per_row[b] = per_row.get(b, 0) + n
    assert sum(b * n for b, n in drawn) == 200 * len(x) and all(n <= 200 for _, n in drawn)
    gap = gaps.diagonal_gap(post).detach()
    assert abs(float((elbo.value - (exact - gap)).mean())) < se_tolerance(elbo.stderr) / len(x)
    # log mean exp of the same weights: above their mean on every row, and short of log p(x) by less than the gap
    # (200 draws of a proposal 0.585 nats from the posterior: the estimate is biased low by about 0.1 nats)
    assert (log_px.value > elbo.value).all()
    assert -float(gap.mean()) < float((log_px.value - exact).mean()) < se_tolerance(log_px.stderr) / len(x)
    assert float(elbo.stderr.mean()) > 0.01  # the diagonal q's weights vary: the check above is not vacuous
    pyro.set_rng_seed(0)
    assert torch.equal(estimators.elbo(lg.model, _Fixed(best, x), x, None, 200).value, elbo.value)
    pyro.set_rng_seed(0)
    assert torch.equal(estimators.log_likelihood(lg.model, _Fixed(best, x), x, None, 200).value, log_px.value)


def test_draw_scores_a_gaussian_as_its_log_prob():
    """z = m + L eps scored from eps is the same log q(z) as log_prob, and the draws have q's moments."""
    torch.manual_seed(0)
    a = torch.randn(4, 3, 3)
    tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(3))
    for q in (torch.distributions.MultivariateNormal(torch.randn(4, 3), scale_tril=tril),
              torch.distributions.Independent(torch.distributions.Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.1), 1)):
        z, log_q = estimators.draw(q, 50_000)
        assert z.shape == (50_000, 4, 3) and log_q.shape == (50_000, 4)
        assert torch.allclose(log_q, q.log_prob(z), atol=1e-4)
        centred = z - q.mean
        cov = torch.einsum("sbi,sbj->bij", centred, centred) / len(z)
        truth = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)
        se = (truth.diagonal(dim1=-2, dim2=-1)[..., :, None] * truth.diagonal(dim1=-2, dim2=-1)[..., None, :]
              + truth ** 2).sqrt() / math.sqrt(len(z))  # the standard error of a sample covariance entry
        assert ((cov - truth).abs() < 5 * se).all()
        assert ((z.mean(0) - q.mean).abs() < 5 * q.variance.sqrt() / math.sqrt(len(z))).all()


def test_decompose_takes_the_largest_familys_elbo_from_the_importance_pass(oracle):
    """The full-covariance q* is the exact posterior on the oracle: its L[q*], from the ll_samples log weights of the
    importance-weighted pass, is log p(x) with a standard error near 0; the diagonal family's, from elbo_samples
    draws of its own, is log p(x) minus the closed-form diagonal gap within its error. The columns keep the order
    asked, and with starts each Gaussian family reports the spread of its starts (Monte Carlo noise here: every start
    reaches the closed form)."""
    lg, x = oracle
    x = x[:40]
    guide = guides.make("normal", x_dim=lg.x_dim, z_dim=lg.z_dim, hidden=(8,))
    exact = lg.log_marginal(x).detach().numpy()
    gap = gaps.diagonal_gap(lg.posterior(x)).detach().numpy()
    pyro.set_rng_seed(0)
    table = gaps.decompose(lg.model, guide, x, families=("normal", "mvn"), ll_samples=1000, elbo_samples=200,
                           starts=("encoder", "prior", "random", "long"))
    columns = [c for c in table if c.startswith("elbo_qstar")]
    assert columns == ["elbo_qstar_normal", "elbo_qstar_normal_se", "elbo_qstar_mvn", "elbo_qstar_mvn_se",
                       "elbo_qstar_mvn_spread", "elbo_qstar_normal_spread"]
    assert np.abs(table["elbo_qstar_mvn"] - exact).max() < 1e-3 and table["elbo_qstar_mvn_se"].max() < 1e-3
    err = (table["elbo_qstar_normal"] - (exact - gap)).mean()
    assert abs(err) < se_tolerance(torch.tensor(table["elbo_qstar_normal_se"].values)) / len(x)
    assert table["elbo_qstar_normal_se"].mean() > 0.01  # 200 draws of a diagonal q: not from the pass
    assert (table["elbo_qstar_normal_spread"] < 6 * table["elbo_qstar_normal_se"] + 1e-3).all()
    assert table["elbo_qstar_mvn_spread"].max() < 1e-3
    assert np.abs(table["log_px"] - exact).max() < 1e-3
