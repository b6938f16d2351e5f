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

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import estimators, models
from pyro_vae.ais import ais, bdmc

from .conftest import se_tolerance

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


def test_decompose_puts_ais_beside_iwae_and_keeps_the_larger():
    """With ais_steps, decompose reports both estimates and uses the larger per point. On an oracle whose columns
    correlate at 0.98 the best proposal it finds is the diagonal q*, 1.3 nats short of the posterior (closed
    form), and the importance-weighted estimate falls short of the exact log p(x) by more than its own standard
    error says; AIS does not. (On the conftest oracle, correlation 0.8, the converged diagonal q* is 0.585 nats
    short and a good enough proposal: 2000 draws then land within their standard error, measured -0.045 nats.)"""
    import guides
    from pyro_vae import gaps

    lg = models.LinearGaussian.random(10, 2, noise_scale=0.5, seed=0, correlation=0.98)
    lg.requires_grad_(False)
    _, x = lg.sample(30, generator=torch.Generator().manual_seed(1))
    assert float(gaps.diagonal_gap(lg.posterior(x)).mean()) > 1.2
    guide = guides.make("normal", x_dim=lg.x_dim, z_dim=lg.z_dim, hidden=(8,))
    table = gaps.decompose(lg.model, guide, x, families=("normal",), ll_samples=2000, elbo_samples=50,
                           ais_steps=200, ais_chains=16)
    larger = table["log_px_ais"].where(table["log_px_ais"] > table["log_px_iwae"], table["log_px_iwae"])
    assert (table["log_px"] == larger).all()
    exact = lg.log_marginal(x).detach().numpy()
    error = {name: (table[name] - exact).mean() for name in ("log_px", "log_px_iwae", "log_px_ais")}
    tolerance = {name: se_tolerance(torch.tensor(table[f"{name}_se"].values)) / len(table)
                 for name in ("log_px_iwae", "log_px_ais")}
    assert abs(error["log_px_ais"]) < tolerance["log_px_ais"] + 0.05  # + the Jensen gap's allowance, as above
    assert error["log_px_iwae"] < -tolerance["log_px_iwae"]  # the diagonal proposal's bias, beyond its SE
    assert abs(error["log_px"]) < abs(error["log_px_iwae"])  # the larger of the two is the better estimate
