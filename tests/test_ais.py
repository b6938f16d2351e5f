"""AIS and BDMC (pyro_vae.ais) against closed forms: the linear-Gaussian oracle's exact log p(x) and posterior.

Every Monte Carlo comparison allows k = 4 combined standard errors (``conftest.se_tolerance``) of the
quantity compared, plus, where the quantity is a log of an average of importance weights, its Jensen
gap: E[log mean_c w_c] = log E[w] - var/2 to second order, var the variance of the estimate. So forward
AIS is expected about var/2 below log p(x), and reverse AIS about var/2 above it. On the oracle, where
log p(x) is exact, var is bounded by the mean squared error over the points (var <= E[error^2]) rather
than taken from the stderr, which is optimistic for the reverse runs (their z-scores have an RMS of
about 1.4).

The oracle runs use 200 annealing steps (not the default 500) to keep the file fast. At 200 steps the
tolerance on the mean error over the oracle's 100 points is about 0.1 nats. Bugs injected into a copy of
the estimator while writing these tests (3 seeds each) moved that mean by 0.13 to 0.39 nats and failed
the tests below: the log-weight increment taken at z_t instead of z_{t-1}; the HMC transition targeting
beta_{t-1} instead of beta_t; a full final leapfrog kick instead of a half; no kinetic energy in the
proposal's Hamiltonian; no Metropolis rejection; the step-size adaptation going the wrong way (caught by
the reverse run and the guard below). ``test_oracle_tolerances_stay_below_a_bugs_bias`` keeps the
tolerances under the smallest of those shifts, so the tests cannot go vacuous by loosening.
"""

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import estimators, models
from pyro_vae.ais import ais, bdmc
from pyro_vae.contract import model_terms

from .conftest import se_tolerance

ROOT = Path(__file__).resolve().parent.parent

#: annealing steps of the oracle runs
STEPS = 200
#: the smallest bias of the mean error over the oracle's points that an injected bug caused (module docstring)
BUG_BIAS = 0.13


def mean_error_tolerances(est, exact):
    """(mean error, k = 4 standard errors of the mean, the Jensen gap mean(error^2) / 2), in nats."""
    err = est.value - exact
    return float(err.mean()), se_tolerance(est.stderr) / len(err), float(err.pow(2).mean() / 2)


@pytest.fixture(scope="module")
def oracle_runs(oracle):
    """Forward AIS and reverse AIS from exact posterior samples on the oracle's 100 points, with exact log p(x)."""
    lg, x = oracle
    pyro.set_rng_seed(0)  # a module fixture runs before the autouse per-test seed
    forward = ais(lg.model, x, num_steps=STEPS)
    z = lg.posterior(x).sample((16,))  # (16, 100, 2) independent exact posterior samples, one per chain
    reverse = ais(lg.model, x, num_steps=STEPS, num_chains=16, z_init=z)
    return forward, reverse, lg.log_marginal(x)


def test_forward_ais_is_a_lower_bound_within_error_on_the_oracle(oracle_runs):
    forward, _, exact = oracle_runs
    mean_err, tol, gap = mean_error_tolerances(forward, exact)
    assert mean_err <= tol  # a lower bound in expectation: not above log p(x) beyond the Monte Carlo error
    assert mean_err >= -(gap + tol)
    # per point: within 5 of its own standard errors (the largest of 100 |z|-scores was 2.4 to 4.0 over seeds)
    err = forward.value - exact
    assert (err.abs() <= 5 * forward.stderr).all(), float((err.abs() / forward.stderr).max())


def test_reverse_ais_from_exact_posterior_samples_is_an_upper_bound_within_error(oracle_runs):
    _, reverse, exact = oracle_runs
    mean_err, tol, gap = mean_error_tolerances(reverse, exact)
    assert mean_err >= -tol  # an upper bound in expectation: not below log p(x) beyond the Monte Carlo error
    assert mean_err <= gap + tol
    err = reverse.value - exact
    assert (err >= -5 * reverse.stderr).all(), float((err / reverse.stderr).min())


def test_oracle_tolerances_stay_below_a_bugs_bias(oracle_runs):
    """The two tests above are tight enough: a bug that shifts the mean error by BUG_BIAS nats would fail them.

    Also checks that the standard errors are honest: the root mean square of the z-scores
    (estimate - exact) / stderr over the 100 points is near 1 (not a stderr inflated to pass).
    """
    forward, reverse, exact = oracle_runs
    for est in (forward, reverse):
        _, tol, gap = mean_error_tolerances(est, exact)
        assert gap + tol < BUG_BIAS
        rms_z = float(((est.value - exact) / est.stderr).pow(2).mean().sqrt())
        assert 0.5 < rms_z < 2.0


class PriorGuide:
    """q(z | x) = p(z) = N(0, I): importance sampling from the prior."""

    def __init__(self, z_dim):
        self.z_dim = z_dim

    def distribution(self, x, idx=None):
        return dist.Normal(x.new_zeros(len(x), self.z_dim), 1.0).to_event(1)


def test_bdmc_brackets_log_px_and_narrows_with_more_steps():
    """Data simulated from a small random Bernoulli VAE (decoder weights x3, so the posterior is narrow).

    z_dim = 2 makes importance sampling from the prior accurate with 5000 samples: its
    log p(x) must lie between the BDMC bounds. Per-point standard errors of the reverse runs are
    optimistic here (its chains all start from the one z_true of each point), so the means over points
    are compared with the larger of the delta-method and the across-point (empirical) standard error.
    """
    vae = models.VAE(x_dim=16, z_dim=2, hidden=(32,), likelihood="bernoulli")
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(3.0)
        z_true = torch.randn(200, 2)
        x = torch.bernoulli(torch.sigmoid(vae.decoder(z_true)))
    iwae = estimators.log_likelihood(vae.model, PriorGuide(2), x, num_samples=5000, chunk_size=5000)
    tables = {steps: bdmc(vae.model, x, z_true, num_steps=steps, leapfrog_steps=5) for steps in (10, 100)}

    def col(table, name):
        return torch.tensor(table[name].to_numpy(), dtype=torch.float64)

    def four_se(diff, *ses):
        """4 standard errors of mean(diff): the larger of the delta-method and the across-point one."""
        n = len(diff)
        return max(se_tolerance(*ses) / n, 4 * float(diff.std()) / math.sqrt(n))

    for steps, t in tables.items():
        width, lower, upper = col(t, "width"), col(t, "lower"), col(t, "upper")
        lower_se, upper_se = col(t, "lower_se"), col(t, "upper_se")
        iw, iw_se = iwae.value.double(), iwae.stderr.double()
        assert float(width.mean()) >= -four_se(width, lower_se, upper_se), steps
        assert float((lower - iw).mean()) <= four_se(lower - iw, lower_se, iw_se), steps
        assert float((upper - iw).mean()) >= -four_se(upper - iw, upper_se, iw_se), steps
    narrowing = col(tables[10], "width") - col(tables[100], "width")
    se_10, se_100 = (col(tables[s], "width_se") for s in (10, 100))
    assert float(narrowing.mean()) > four_se(narrowing, se_10, se_100)
    assert list(tables[100].columns) == ["lower", "lower_se", "upper", "upper_se", "width", "width_se"]


def test_ais_under_no_grad_leaves_the_model_parameters_alone():
    vae = models.VAE(x_dim=16, z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 16), 0.5))
    with torch.no_grad():
        est = ais(vae.model, x, num_chains=3, num_steps=4, leapfrog_steps=2, progress=True)
        rev = ais(vae.model, x, num_chains=3, num_steps=4, leapfrog_steps=2, z_init=torch.randn(5, 2))
    for e in (est, rev):
        assert e.value.shape == e.stderr.shape == (5,)
        assert torch.isfinite(e.value).all() and not e.value.requires_grad
    params = list(vae.parameters())
    assert params and all(p.grad is None and p.requires_grad for p in params)
    one = ais(vae.model, x, num_chains=1, num_steps=2)
    assert torch.isfinite(one.value).all() and torch.isnan(one.stderr).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_chains=0), "num_chains"),
    (dict(num_steps=0), "num_steps"),
    (dict(leapfrog_steps=0), "leapfrog_steps"),
    (dict(step_size=-0.1), "step_size"),
    (dict(target_accept=1.0), "target_accept"),
    (dict(z_init=torch.zeros(4, 3)), "z_init"),        # wrong K
    (dict(z_init=torch.zeros(5, 2)), "z_init"),        # wrong B
    (dict(z_init=torch.zeros(2, 4, 2)), "z_init"),     # wrong number of chains
])
def test_bad_arguments_raise_one_line_value_errors(kwargs, match):
    vae = models.VAE(x_dim=6, z_dim=2, hidden=(4,))
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=match) as info:
        ais(vae.model, x, **{"num_chains": 3, "num_steps": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_a_second_latent_site_raises():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + w.unsqueeze(-1), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="'w'"):
        ais(model, torch.zeros(3, 1), num_chains=2, num_steps=2)


def test_decompose_puts_ais_from_the_best_q_beside_iwae():
    """With ais_steps, decompose reports AIS beside the importance-weighted log p(x), each on its own: log_px stays
    the importance-weighted estimate (the per-point larger of two noisy lower bounds would be biased upwards). On an
    oracle whose columns correlate at 0.98 the best proposal found is the diagonal q*, 1.3 nats short of the
    posterior (closed form): importance weighting falls short of the exact log p(x) by more than its own standard
    error says, and AIS annealed from that same q* does not. (On the conftest oracle, correlation 0.8, the converged
    diagonal q* is 0.585 nats short and a good enough proposal: 2000 draws land within their standard error.)"""
    import guides
    from pyro_vae import gaps

    lg = models.LinearGaussian.random(10, 2, noise_scale=0.5, seed=0, correlation=0.98)
    lg.requires_grad_(False)
    _, x = lg.sample(30, generator=torch.Generator().manual_seed(1))
    assert float(gaps.diagonal_gap(lg.posterior(x)).mean()) > 1.2
    guide = guides.make("normal", x_dim=lg.x_dim, z_dim=lg.z_dim, hidden=(8,))
    pyro.set_rng_seed(0)
    table = gaps.decompose(lg.model, guide, x, families=("normal",), ll_samples=2000, elbo_samples=50,
                           ais_steps=200, ais_chains=16)
    assert "log_px_iwae" not in table and {"log_px_ais", "log_px_ais_se"} <= set(table)
    pyro.set_rng_seed(0)
    without = gaps.decompose(lg.model, guide, x, families=("normal",), ll_samples=2000, elbo_samples=50)
    assert (table["log_px"] == without["log_px"]).all()  # AIS is drawn after every other estimate: log_px is its own
    exact = lg.log_marginal(x).detach().numpy()
    error = {name: (table[name] - exact).mean() for name in ("log_px", "log_px_ais")}
    tolerance = {name: se_tolerance(torch.tensor(table[f"{name}_se"].values)) / len(table)
                 for name in ("log_px", "log_px_ais")}
    assert abs(error["log_px_ais"]) < tolerance["log_px_ais"] + 0.05  # + the Jensen gap's allowance, as above
    assert error["log_px"] < -tolerance["log_px"]  # the diagonal proposal's bias, beyond its SE
    assert error["log_px_ais"] > error["log_px"] + 0.2  # AIS from q* removes most of it


def test_the_ais_settings_of_an_evaluation_reach_ais(monkeypatch):
    """--ais-steps, --ais-leapfrog (default 10: what the digits study ran) and the 16 chains reach pyro_vae.ais.ais
    from a comparison's settings, and AIS anneals from the best q found (here the mvn q*, the largest family)."""
    import guides
    from pyro_vae import data, gaps, measure
    from pyro_vae.estimators import Estimate
    from pyro_vae.settings import CompareSettings

    seen = []

    def spy(model, x, **kwargs):
        seen.append(kwargs)
        return Estimate(torch.zeros(len(x)), torch.zeros(len(x)))

    monkeypatch.setattr(gaps, "ais_estimate", spy)
    lg = models.LinearGaussian.random(4, 2, seed=0, correlation=0.98)  # the mvn q* is the best q
    ds = data.Dataset("oracle", *(lg.sample(6, generator=torch.Generator().manual_seed(i))[1] for i in range(2)))
    guide = guides.make("normal", x_dim=4, z_dim=2, hidden=(8,))
    for given, leapfrog in (({}, 10), ({"ais_leapfrog": 3}, 3)):
        s = CompareSettings(ais_steps=7, ll_samples=50, elbo_samples=20, families=["normal", "mvn"], progress=False,
                            **given)
        measure.evaluate(lg, guide, ds, s, ("test",))
        assert {k: seen[-1][k] for k in ("num_steps", "leapfrog_steps", "num_chains")} == \
            {"num_steps": 7, "leapfrog_steps": leapfrog, "num_chains": 16}
        assert isinstance(seen[-1]["init"], torch.distributions.MultivariateNormal), type(seen[-1]["init"])


def test_decompose_refuses_bad_ais_settings_before_any_work(monkeypatch):
    """ais_steps 0, a model AIS cannot anneal (a latent site besides z): one line, before any q* is fitted."""
    import guides
    from pyro_vae import gaps

    monkeypatch.setattr(gaps, "fit_local", lambda *a, **k: pytest.fail("fitted before the settings were checked"))
    lg = models.LinearGaussian.random(4, 2, seed=0)
    guide = guides.make("normal", x_dim=4, z_dim=2, hidden=(8,))
    x = torch.zeros(3, 4)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="ais_steps") as e:
            gaps.decompose(lg.model, guide, x, ais_steps=steps)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="ais_leapfrog") as e:
            gaps.decompose(lg.model, guide, x, ais_steps=10, ais_leapfrog=steps)
        assert "\n" not in str(e.value)

    def two_latents(x, idx=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + w.unsqueeze(-1), 1.0).to_event(1), obs=x)

    guide = guides.make("normal", x_dim=1, z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="'w'"):
        gaps.decompose(two_latents, guide, torch.zeros(3, 1), ais_steps=10)

def shifted(post, shift_sd=0.0, widen=1.0, diagonal=False):
    """N(mean + shift_sd * sd, (widen L)(widen L)^T) from the posterior N(mean, L L^T); with ``diagonal`` its
    diagonal-covariance version as a Normal(...).to_event(1)."""
    sd = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    loc = post.loc + shift_sd * sd
    if diagonal:
        return dist.Normal(loc, widen * sd).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=widen * post.scale_tril)


def column(table, name):
    return torch.tensor(table[name].to_numpy(), dtype=torch.float64)


class FixedGuide:
    """The guide whose q(z | x) is the given q: importance sampling with q as proposal."""

    def __init__(self, q):
        self.q = q

    def distribution(self, x, idx=None):
        assert len(x) == self.q.batch_shape[0]
        return self.q


@pytest.mark.parametrize("num_steps", [1, 7, 50])
def test_ais_from_the_exact_posterior_is_exact(oracle, num_steps):
    """init = p(z | x): p(z) p(x | z) / q(z) = p(x) at every z, so every weight increment is (beta_t - beta_{t-1})
    log p(x), every chain's log w is log p(x) and the estimate is exact (float32 rounding) for any number of
    steps, forward and reverse, with a standard error of 0. (An increment without -log q, or the prior's base
    log p(z) at z ~ q, leaves log w varying over the chains and the z's, by nats.)"""
    lg, x = oracle
    post, exact = lg.posterior(x), lg.log_marginal(x)
    forward = ais(lg.model, x, init=post, num_chains=8, num_steps=num_steps, leapfrog_steps=3)
    reverse = ais(lg.model, x, init=post, num_chains=8, num_steps=num_steps, leapfrog_steps=3,
                  z_init=post.sample((8,)))
    for est in (forward, reverse):
        torch.testing.assert_close(est.value, exact, rtol=0, atol=1e-4)
        assert float(est.stderr.max()) < 1e-3
    # bdmc hands init to both runs (a reverse run back to the prior instead would not be exact)
    table = bdmc(lg.model, x, post.sample((8,)), init=post, num_chains=8, num_steps=num_steps, leapfrog_steps=3)
    for name in ("lower", "upper"):
        torch.testing.assert_close(column(table, name), exact.double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("diagonal", [False, True])
def test_one_step_from_init_is_importance_sampling_with_q(oracle, diagonal):
    """num_steps=1 is importance sampling with q as proposal: on the same seed it draws the same z as
    ``estimators.log_likelihood`` with a guide whose q(z | x) is q (both draw by ``estimators.draw``, all draws in
    one block with chunk_size = S) and gives the same estimate and standard error; and, q being a wider and
    shifted Gaussian (full or diagonal covariance), it is within the Monte Carlo error of the exact log p(x)."""
    lg, x = oracle
    post, exact = lg.posterior(x), lg.log_marginal(x)
    q = shifted(post, shift_sd=0.5, widen=1.5, diagonal=diagonal)
    pyro.set_rng_seed(3)
    est = ais(lg.model, x, init=q, num_chains=500, num_steps=1)
    pyro.set_rng_seed(3)
    iw = estimators.log_likelihood(lg.model, FixedGuide(q), x, num_samples=500, chunk_size=500)
    torch.testing.assert_close(est.value, iw.value, rtol=0, atol=1e-4)
    torch.testing.assert_close(est.stderr, iw.stderr, rtol=0, atol=1e-4)
    mean_err, tol, gap = mean_error_tolerances(est, exact)
    assert -(gap + tol) <= mean_err <= tol
    assert float(est.stderr.mean()) > 1e-3  # a proposal other than the posterior: the weights do vary


@pytest.fixture(scope="module")
def poor_init_runs(oracle):
    """From q = the posterior shifted by 2 sd in each coordinate (against the posterior's -0.83 correlation, a
    Mahalanobis distance of about 7): forward AIS at 1 step, and BDMC (forward, and reverse from 16 independent
    exact posterior samples per point back to q) at 10 and 200 steps; 16 chains, 2 leapfrog steps."""
    lg, x = oracle
    pyro.set_rng_seed(0)
    post = lg.posterior(x)
    q = shifted(post, shift_sd=2.0)
    kwargs = dict(num_chains=16, leapfrog_steps=2)
    one = ais(lg.model, x, init=q, num_steps=1, **kwargs)
    tables = {steps: bdmc(lg.model, x, post.sample((16,)), init=q, num_steps=steps, **kwargs) for steps in (10, 200)}
    return one, tables, lg.log_marginal(x)


def test_ais_from_a_poor_init_converges_to_log_px(poor_init_runs):
    """One step from the shifted q is importance sampling with a poor proposal: more than 4 standard errors below
    log p(x) (measured -14 nats). 200 steps along the path from q are within the Monte Carlo error of log p(x),
    forward (below it) and reverse (above it), measured within 0.03 nats. (HMC transitions targeting the prior's
    path instead of q's, or a reverse run back to the prior, miss by nats.)"""
    one, tables, exact = poor_init_runs
    exact = exact.double()
    err_one, tol_one, _ = mean_error_tolerances(one, exact)
    assert err_one < -tol_one
    t = tables[200]
    for name, sign in (("lower", 1), ("upper", -1)):
        est = estimators.Estimate(column(t, name), column(t, f"{name}_se"))
        mean_err, tol, gap = mean_error_tolerances(est, exact)
        assert -(gap + tol) <= sign * mean_err <= tol, name
        assert abs(mean_err) < abs(err_one) / 10, name


def test_bdmc_from_init_brackets_and_narrows(poor_init_runs):
    """Forward <= reverse on the path from q (the mean width is not below 0 beyond 4 of its standard errors), at
    10 and at 200 steps, and the width shrinks from 10 to 200 steps by more than 4 of its standard errors
    (measured: 5.5 nats to 0.03)."""
    _, tables, _ = poor_init_runs

    def four_se(diff, *ses):
        n = len(diff)
        return max(se_tolerance(*ses) / n, 4 * float(diff.std()) / math.sqrt(n))

    for steps, t in tables.items():
        width = column(t, "width")
        assert float(width.mean()) >= -four_se(width, column(t, "width_se")), steps
    narrowing = column(tables[10], "width") - column(tables[200], "width")
    assert float(narrowing.mean()) > four_se(narrowing, column(tables[10], "width_se"),
                                             column(tables[200], "width_se"))
    assert float(column(tables[200], "width").mean()) < 0.2


def test_ais_without_init_is_unchanged():
    """Without init, ais draws the same random numbers and gives the same values as before init existed: the
    numbers below were printed by the code of commit 89e7083 (before init was added) for these calls and
    seeds, and so was the next torch.rand() after each block (the random numbers consumed). On the oracle
    (forward, and reverse from exact posterior samples) and on a nonlinear Bernoulli model defined here."""
    from pyro_vae import data

    ds = data.load("linear-gaussian")
    lg = models.LinearGaussian(ds.params["W"], ds.params["b"], float(ds.params["noise_scale"]))
    lg.requires_grad_(False)
    x = ds.test[:4]

    def check(est, value, stderr):
        torch.testing.assert_close(est.value, torch.tensor(value), rtol=0, atol=1e-4)
        torch.testing.assert_close(est.stderr, torch.tensor(stderr), rtol=0, atol=1e-4)

    pyro.set_rng_seed(0)
    forward = ais(lg.model, x, num_chains=4, num_steps=10, leapfrog_steps=3)
    z = lg.posterior(x).sample((4,))
    reverse = ais(lg.model, x, num_chains=4, num_steps=10, leapfrog_steps=3, z_init=z)
    check(forward, [-10.414998054504395, -5.78877592086792, -15.770718574523926, -22.751094818115234],
          [0.8660253882408142, 0.7531447410583496, 0.8660174608230591, 0.848208487033844])
    check(reverse, [-5.6017632484436035, -5.506897449493408, -8.381957054138184, -9.740982055664062],
          [0.15126782655715942, 0.33715108036994934, 0.48474130034446716, 0.35922831296920776])
    assert float(torch.rand(())) == pytest.approx(0.9137692451477051, abs=1e-7)

    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(2, 8, generator=g), torch.randn(8, 6, generator=g)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=torch.tanh(z @ w1) @ w2).to_event(1), obs=x)

    xb = torch.tensor([[1., 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1], [1, 1, 1, 0, 0, 0]])
    pyro.set_rng_seed(1)
    check(ais(model, xb, num_chains=3, num_steps=8, leapfrog_steps=2),
          [-5.632485866546631, -4.2508039474487305, -2.9495363235473633],
          [0.46630051732063293, 0.46965768933296204, 0.4206785559654236])
    assert float(torch.rand(())) == pytest.approx(0.948178231716156, abs=1e-7)


@pytest.mark.parametrize("make_init, kwargs, match", [
    (lambda: dist.Normal(torch.zeros(5, 2), 1.0).to_event(1), {}, r"batch shape \(B,\) = \(4,\).*got batch \(5,\)"),
    (lambda: dist.Normal(torch.zeros(4, 3), 1.0).to_event(1), {}, r"event shape \(2,\).*event \(3,\)"),
    (lambda: dist.Normal(torch.zeros(4, 2), 1.0), {}, r"event shape \(2,\).*event \(\)"),  # no to_event
    (lambda: dist.Normal(torch.zeros(4, 2, dtype=torch.float64), 1.0).to_event(1), {}, "float64"),
    (lambda: torch.zeros(4, 2), {}, "torch distribution"),
    (lambda: dist.Normal(torch.zeros(4, 2), 1.0).to_event(1), dict(z_init=torch.zeros(5, 2)), "z_init"),
])
def test_bad_init_raises_one_line_before_any_model_evaluation(make_init, kwargs, match):
    """A wrong init fails at once with a one-line InputError naming the shapes, before the likelihood is ever
    evaluated (only the model's run up to its "z" site, which gives K); a good one runs, and neither its
    parameters nor the model's get a .grad."""
    from pyro_vae.errors import InputError

    likelihood_calls = []

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            likelihood_calls.append(len(x))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    x = torch.zeros(4, 1)
    with pytest.raises(InputError, match=match) as info:
        ais(model, x, num_chains=3, num_steps=3, leapfrog_steps=2, init=make_init(), **kwargs)
    assert "\n" not in str(info.value)
    assert likelihood_calls == []
    loc = torch.zeros(4, 2, requires_grad=True)
    with torch.no_grad():  # as gaps.decompose may call it
        est = ais(model, x, num_chains=3, num_steps=3, leapfrog_steps=2, init=dist.Normal(loc, 1.0).to_event(1))
    assert likelihood_calls and torch.isfinite(est.value).all() and loc.grad is None


def _traced(model):
    """The same model as a plain function, so that ais reads its densities from Pyro's trace."""
    return lambda x, idx=None: model(x, idx)


@pytest.mark.parametrize("likelihood, hidden, activation", [
    ("bernoulli", (5,), "relu"), ("bernoulli", (5, 4), "elu"), ("continuous_bernoulli", (5,), "relu"),
    ("gaussian", (5,), "relu")])
def test_a_vaes_own_densities_are_its_traces(likelihood, hidden, activation):
    """The direct log p(z) and log p(x | z) that AIS takes from the model equal those of its trace, values and
    gradients in z (a decoder with random weights, so that a wrong term cannot hide behind a small one); for the
    Bernoulli likelihood the sum over pixels is folded through the last layer (VAE.log_likelihood)."""
    from pyro_vae.ais import log_prior_likelihood

    pyro.set_rng_seed(0)
    vae = models.VAE(x_dim=6, z_dim=3, hidden=hidden, likelihood=likelihood, activation=activation)
    x = torch.rand(4, 6).round() if likelihood == "bernoulli" else torch.rand(4, 6)
    z = torch.randn(7, 4, 3, requires_grad=True)
    for model in (vae.model, vae):
        assert model_terms(model, x, z) is not None
    direct = log_prior_likelihood(vae.model, x, z)
    traced = log_prior_likelihood(_traced(vae.model), x, z)
    assert model_terms(_traced(vae.model), x, z) is None
    pyro.clear_param_store()  # the direct densities put the model's parameters in Pyro's store under their own names
    vae.log_prior_likelihood(x, z)
    assert set(pyro.get_param_store().keys()) <= {f"{vae._pyro_name}.{name}" for name, _ in vae.named_parameters()}
    from pyro_vae.contract import log_joint  # the estimators' log p(x, z) takes the same path
    torch.testing.assert_close(log_joint(vae.model, x, z), log_joint(_traced(vae.model), x, z))
    for a, b in zip(direct, traced):
        assert a.shape == (7, 4)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a.sum(), z, retain_graph=True)[0],
                                   torch.autograd.grad(b.sum(), z, retain_graph=True)[0])


def test_a_vae_whose_likelihood_is_overridden_is_not_folded():
    """The Bernoulli fold assumes the parent's likelihood_dist: a subclass with its own (here: the logits shifted)
    gets log p(x | z) from that one, as its trace does."""
    from pyro_vae.ais import log_prior_likelihood

    class Shifted(models.VAE):
        def likelihood_dist(self, z):
            return dist.Bernoulli(logits=self.decoder(z) + 1.0).to_event(1)

    pyro.set_rng_seed(2)
    vae = Shifted(x_dim=6, z_dim=3, hidden=(5,))
    x, z = torch.rand(4, 6).round(), torch.randn(2, 4, 3)
    torch.testing.assert_close(vae.log_likelihood(x, z), vae.likelihood_dist(z).log_prob(x))
    torch.testing.assert_close(log_prior_likelihood(vae.model, x, z)[1],
                               log_prior_likelihood(_traced(vae.model), x, z)[1])


def test_a_model_that_overrides_forward_keeps_its_traced_densities():
    """A subclass with another observed site: its own forward's densities, read from the trace, not the parent's."""
    from pyro_vae.ais import log_prior_likelihood

    class TwoViews(models.VAE):
        def forward(self, x, idx=None):
            z = super().forward(x, idx)
            with pyro.plate("data2", len(x)):
                pyro.sample("y", dist.Normal(z.sum(-1), 1.0), obs=x.sum(-1))
            return z

    pyro.set_rng_seed(1)
    vae = TwoViews(x_dim=6, z_dim=3, hidden=(5,))
    x, z = torch.rand(4, 6).round(), torch.randn(2, 4, 3)
    assert vae.log_prior_likelihood(x, z) is NotImplemented
    prior, likelihood = log_prior_likelihood(vae.model, x, z)
    vae_terms = models.VAE(x_dim=6, z_dim=3, hidden=(5,))
    vae_terms.load_state_dict(vae.state_dict())
    _, without_y = vae_terms.log_prior_likelihood(x, z)
    extra = dist.Normal(z.sum(-1), 1.0).log_prob(x.sum(-1))
    torch.testing.assert_close(likelihood, without_y + extra)


def test_ais_is_the_same_with_the_direct_densities_as_with_the_trace():
    """Same seed, same draws: the direct path changes the speed of AIS, not its numbers."""
    pyro.set_rng_seed(0)
    vae = models.VAE(x_dim=6, z_dim=3, hidden=(5,))
    x = torch.rand(5, 6).round()
    results = []
    for model in (vae.model, _traced(vae.model)):
        pyro.set_rng_seed(3)
        est = ais(model, x, num_chains=4, num_steps=8, leapfrog_steps=3)
        results.append((est.value, est.stderr, float(torch.rand(()))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-5)
    assert results[0][2] == results[1][2]  # the same random numbers consumed


def test_the_bdmc_benchmark_brackets_a_trained_runs_decoder_from_its_qstar(tmp_path, monkeypatch):
    """``benchmarks/bdmc.py --run DIR --from-qstar``, the study's BDMC bracket: the run's own decoder simulates the
    images and is annealed from q* with the leapfrog steps asked: the mean bracket is narrow and holds the
    importance-weighted estimate (within 4 SE). Annealed from the prior instead, the bracket was 2.1 nats wide here
    and the importance-weighted estimate 0.8 above its lower end: this test failed."""
    import importlib
    import pandas as pd
    from pyro_vae import runs

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("bdmc")
    run = tmp_path / "run"
    runs.train({"guide": "normal", "epochs": 40, "out": str(run), "no_progress": True, "seed": 3})
    out = tmp_path / "out"
    assert bench.main(["--run", str(run), "--from-qstar", "--steps", "50", "--points", "20", "--leapfrog", "2",
                       "--ll-samples", "500", "--out", str(out)]) == 0
    row = pd.read_csv(out / "bdmc.csv").iloc[0]
    assert (row["start"], row["leapfrog"], row["points"]) == ("q*", 2, 20)
    tol = se_tolerance(row["iwae_minus_lower_se"], row["width_se"])  # paired over the same images
    assert -tol <= row["iwae_minus_lower"] <= row["width"] + tol
    assert -se_tolerance(row["width_se"]) <= row["width"] < 1.0
    assert f"the run {run} at epoch 40" in (out / "bdmc.md").read_text()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--run", str(run), "--at", "selected", "--out", str(out)])  # a train run keeps no selected.pt
    assert stop.value.code == 2
