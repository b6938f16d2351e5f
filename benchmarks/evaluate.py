"""What an evaluation costs, and what the encoder buys: the gap decomposition against one plain importance-weighted
pass, AIS from the best q* with its BDMC bracket, q* from several starts, and inference throughput.

    python benchmarks/evaluate.py                          # every part; writes benchmarks/evaluate.csv and evaluate.md
    python benchmarks/evaluate.py --parts digits --rounds 1 --out /tmp/ev      # one part, a smoke run

A run of some parts keeps the rows of the others that ``--out`` already holds (``--parts mnist`` re-measures only
the mnist rows of benchmarks/evaluate.csv); a part run again replaces its rows, those of another thread count kept
(``--parts throughput`` and then ``--parts throughput --threads 2`` re-measure both).

Two decoders are trained first, each with the ``normal`` encoder: digits (``pyro-vae train --guide normal --epochs
100``, 8-256-64) and mnist-5k (``--config docs/mnist-5k/cremer.yaml --epochs 200``, 784-200-200-50 ELU). Every timing
runs on one thread pinned to one core (``--threads 2``: two on two), its variants in interleaved rounds in this one
process, medians over ``--rounds``.

Parts (``--parts``):

- ``digits``: ``measure.evaluate`` of 359 training + 359 test points, families normal and mvn, K = 5 000 (what
  ``pyro-vae evaluate --n-eval 359`` and a study's test reading do) against a hand-written torch loop of one K = 5 000
  importance-weighted pass over the same points with the encoder as proposal, drawing 250 samples of every point at
  a time (``plain-250``) and in its fastest blocks (``plain-blocked``); and the same evaluation by the code before
  this change (``--before REV``, run from a git worktree in a subprocess), whose numbers ours must match within
  their Monte Carlo standard errors.
- ``mnist``: the same on all 1 000 mnist-5k test points (the code before: on 200, once).
- ``ais``: AIS from the best q* (``gaps.decompose(..., ais_steps=T)``) against the K = 5 000 pass on the same
  points, and the BDMC bracket on 100 points simulated from each decoder (forward AIS from q* against reverse AIS
  from the simulated z).
- ``starts``: q* of each family from the encoder, the prior, a random start and with 4x the iterations
  (``qstar.fit_from_starts``) on 200 test points: each start's L[q*] and the spread.
- ``throughput``: inference for new points, points per second: one encoder pass over a batch of 1 000 against
  batched q* fits of the same 1 000 (each family), and one point's latency; rows' memory at N = 60 000 and 10^8
  (the rows and their two Adam moments, float32, counted from the guide's parameters at N = 60 000).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

import guides
from pyro_vae import ais as ais_module, estimators, gaps, measure, qstar, runs
from pyro_vae.report import markdown
from pyro_vae.settings import CompareSettings, load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "2f223a6"  # the last commit before issue 34's estimators
ROWS = []
OUT = HERE  # where write() puts the tables (--out)


def kept_rows(out: Path, parts, threads: int = 1) -> list:
    """The rows of ``out/evaluate.csv`` that the ``parts`` being run on ``threads`` threads do not measure again
    (row parts are a part's name, or ``ais-``, ``starts-`` or ``throughput-`` and a decoder's; a row whose name
    says "N thread(s)" is measured again only by a run on N threads)."""
    path = out / "evaluate.csv"
    if not path.exists():
        return []
    table = pd.read_csv(path)
    counts = table["name"].str.extract(r"(\d+) thread\(s\)", expand=False).astype(float)
    rerun = table["part"].map(lambda part: part in parts or part.split("-")[0] in parts)
    rerun &= counts.isna() | (counts == threads)
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in table[~rerun].to_dict("records")]


def row(part: str, name: str, seconds: float, **extra) -> None:
    """One result, printed and written at once (a stopped run keeps the rows it finished)."""
    ROWS.append({"part": part, "name": name, "seconds": seconds, **extra})
    print(f"{part:10s} {name:40s} {seconds:9.3f} s  {json.dumps(extra, default=str)}", flush=True)
    write(OUT)


def pin(threads: int) -> None:
    """``threads`` intra-op threads on the first ``threads`` cores this process may use."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads)


def decoder(folder: Path, name: str, cfg: dict):
    path = folder / name
    if not (path / "checkpoint.pt").exists():
        runs.train({**cfg, "out": str(path), "no_progress": True, "threads": 1})
    return runs.load_run(path)


@torch.no_grad()
def plain_iwae(model, encoder, x: torch.Tensor, samples: int = 5000, draws: int = 250, rows: int = None) -> torch.Tensor:
    """A hand-written importance-weighted log p(x) per point: the encoder's diagonal Gaussian as proposal, a
    Bernoulli decoder; ``draws`` samples of ``rows`` points at a time (all points when None)."""
    rows = rows or len(x)
    out = []
    for start in range(0, len(x), rows):
        xb = x[start:start + rows]
        q = encoder.distribution(xb)
        loc, scale = q.base_dist.loc, q.base_dist.scale
        weights = []
        for _ in range(0, samples, draws):
            eps = torch.randn(draws, *loc.shape)
            z = loc + scale * eps
            logits = model.decoder(z)
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = -0.5 * z.pow(2).sum(-1)
            log_q = -0.5 * eps.pow(2).sum(-1) - scale.log().sum(-1)
            weights.append(log_px_z + log_pz - log_q)  # the 2 pi terms of p(z) and q(z) cancel
        out.append(torch.logsumexp(torch.cat(weights), 0) - math.log(samples))
    return torch.cat(out)


def timed(f):
    t0 = time.perf_counter()
    value = f()
    return time.perf_counter() - t0, value


def settings(**kw) -> CompareSettings:
    return CompareSettings(progress=False, **kw)


def evaluate_ours(run, sizes: dict, seed: int = 0):
    pyro.set_rng_seed(seed)
    return measure.evaluate(run.model, run.guide, run.data, settings(), tuple(sizes), sizes=sizes)[0]


BEFORE_SCRIPT = """
import json, sys, time, torch, pyro
torch.set_num_threads(1)
from pyro_vae import runs, measure
from pyro_vae.settings import CompareSettings
run = runs.load_run(sys.argv[1]); sizes = json.loads(sys.argv[2])
pyro.set_rng_seed(0)
t0 = time.perf_counter()
summary = measure.evaluate(run.model, run.guide, run.data, CompareSettings(progress=False), tuple(sizes), sizes=sizes)[0]
print(json.dumps({"seconds": time.perf_counter() - t0, "summary": summary.to_dict("records")}))
"""


def evaluate_before(worktree: Path, run_path: Path, sizes: dict):
    """``measure.evaluate`` by the code at ``--before``, in a subprocess on the same core."""
    env = {**os.environ, "PYTHONPATH": str(worktree), "OMP_NUM_THREADS": "1"}
    core = str(sorted(os.sched_getaffinity(0))[0])
    out = subprocess.run(["taskset", "-c", core, sys.executable, "-c", BEFORE_SCRIPT, str(run_path), json.dumps(sizes)],
                         env=env, capture_output=True, text=True, check=True, cwd=worktree)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], pd.DataFrame(result["summary"])


COMPARED = ["log_px", "elbo_q", "elbo_qstar_normal", "elbo_qstar_mvn", "amortization_gap", "approximation_gap"]


def agreement(ours: pd.DataFrame, before: pd.DataFrame) -> dict:
    """Ours minus before per split and quantity, in units of their combined Monte Carlo standard error."""
    out = {}
    for (_, a), (_, b) in zip(ours.iterrows(), before.iterrows()):
        for c in COMPARED:
            se = math.hypot(a.get(f"{c}_mc_se", 0.0) or 0.0, b.get(f"{c}_mc_se", 0.0) or 0.0)
            out[f"{a['split']}:{c}"] = (round(a[c] - b[c], 4), round((a[c] - b[c]) / se, 2) if se > 0 else None)
    return out


def part_evaluate(part: str, run, sizes: dict, args, before_sizes: dict = None) -> None:
    """Ours, the plain loops and the code before, on the same points."""
    x = torch.cat([run.data.split(s)[:n] for s, n in sizes.items()])
    model, encoder = run.model, run.guide
    # the hand-written loop's fastest blocks, 2^19 floats (64 digits or 20 mnist points of 32 draws; at the estimators'
    # 2^21 its digits pass took 4.3 s against 3.1)
    best_rows = max(1, 2 ** 19 // (32 * estimators.widest(model.model, x)))
    variants = {"evaluate (ours)": lambda: evaluate_ours(run, sizes),
                # 250 draws of every point at once; on mnist of 40 points at once (all 1 000: 0.8 GB per tensor)
                "plain-250 K=5000 pass": lambda: plain_iwae(model, encoder, x, draws=250,
                                                            rows=None if part == "digits" else 40),
                "plain-blocked K=5000 pass": lambda: plain_iwae(model, encoder, x, draws=32, rows=best_rows)}
    times = {name: [] for name in variants}
    values = {}
    for _ in range(args.rounds if part == "digits" else 1):
        for name, f in variants.items():
            seconds, values[name] = timed(f)
            times[name].append(seconds)
    median = {name: float(pd.Series(t).median()) for name, t in times.items()}
    ours = values["evaluate (ours)"]
    for name in variants:
        row(part, name, median[name], rounds=len(times[name]), points=len(x),
            ratio_to_plain_250=median[name] / median["plain-250 K=5000 pass"],
            ratio_to_plain_blocked=median[name] / median["plain-blocked K=5000 pass"])
    plain = values["plain-blocked K=5000 pass"]
    ours_mean = sum(float(ours.set_index("split").loc[s, "log_px"]) * n for s, n in sizes.items()) / len(x)
    row(part, "log_px: ours (best q* proposal) - plain pass (encoder proposal)", 0.0,
        mean=round(ours_mean - float(plain.mean()), 4))
    if args.worktree is not None:
        before_sizes = before_sizes or sizes
        seconds, before = evaluate_before(args.worktree, run.path, before_sizes)
        same = ours if before_sizes == sizes else evaluate_ours(run, before_sizes)
        row(part, f"evaluate (before, {args.before})", seconds, points=sum(before_sizes.values()),
            ratio_to_ours=seconds / median["evaluate (ours)"] * (sum(sizes.values()) / sum(before_sizes.values())),
            **{"ours - before (nats, /SE)": agreement(same, before)})


def simulate(run, n: int, seed: int = 1):
    """``n`` latents z ~ p(z) and images x ~ p(x | z) from the decoder (exact posterior samples for BDMC)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, run.model.z_dim, generator=g)
    with torch.no_grad():
        x = torch.bernoulli(torch.sigmoid(run.model.decoder(z)), generator=g)
    return z, x


def part_ais(name: str, run, args) -> None:
    """AIS from the best q* against the K = 5 000 pass on the same points, and the BDMC bracket."""
    model, encoder = run.model, run.guide
    z_true, x = simulate(run, args.ais_points)
    rows = torch.arange(len(x))
    pyro.set_rng_seed(0)
    fit_seconds, best = timed(lambda: gaps.fit_local(model.model, x, "mvn", init=encoder))
    start = best.distribution(x, rows)
    iwae_seconds, iwae = timed(lambda: estimators.log_likelihood(model.model, best, x, rows, 5000))
    row(f"ais-{name}", "K=5000 pass, mvn q* proposal", iwae_seconds, points=len(x), log_px=round(iwae.mean()[0], 4))
    for steps in args.ais_steps:
        pyro.set_rng_seed(0)
        # forward and reverse as bdmc runs them, the forward run timed on its own: it is what an evaluation pays
        seconds, lower = timed(lambda: ais_module.ais(model.model, x, init=start, num_steps=steps,
                                                      num_chains=args.ais_chains, leapfrog_steps=args.leapfrog))
        upper = ais_module.ais(model.model, x, init=start, z_init=z_true, num_steps=steps,
                               num_chains=args.ais_chains, leapfrog_steps=args.leapfrog)
        width = upper.value - lower.value
        row(f"ais-{name}", f"AIS {steps} steps x {args.ais_chains} chains x {args.leapfrog} leapfrog", seconds,
            points=len(x), ratio_to_iwae=seconds / iwae_seconds, log_px_ais=round(lower.mean()[0], 4),
            ais_minus_iwae=round(float((lower.value - iwae.value).mean()), 4),
            ais_minus_iwae_se=round(float((lower.value - iwae.value).std() / math.sqrt(len(x))), 4),
            bracket=round(float(width.mean()), 4), bracket_se=round(float(width.std() / math.sqrt(len(x))), 4))


def part_starts(name: str, run, args) -> None:
    x = run.data.test[:args.starts_points]
    for family in ("normal", "mvn"):
        pyro.set_rng_seed(0)
        seconds, (_, table) = timed(lambda: qstar.fit_from_starts(run.model.model, x, family, init=run.guide,
                                                                  elbo_samples=1000))
        means = {c.removeprefix("elbo_"): round(float(table[c].mean()), 4) for c in table
                 if c.startswith("elbo_") and not c.endswith("_se")}
        row(f"starts-{name}", f"q* {family} from each start", seconds, points=len(x), **means,
            spread_mean=round(float(table["spread"].mean()), 4), spread_max=round(float(table["spread"].max()), 4),
            best_start=table["best_start"].value_counts().to_dict())


def part_throughput(name: str, run, args) -> None:
    model, encoder = run.model, run.guide
    x = torch.cat([run.data.test, run.data.validation, run.data.train])[:1000]
    threads = torch.get_num_threads()
    with torch.no_grad():
        seconds = min(timed(lambda: encoder.distribution(x))[0] for _ in range(args.rounds))
        latency = min(timed(lambda: encoder.distribution(x[:1]))[0] for _ in range(50))
    row(f"throughput-{name}", f"encoder, {threads} thread(s)", seconds, points=len(x),
        points_per_second=len(x) / seconds, one_point_ms=1e3 * latency)
    for family in ("normal", "mvn"):
        seconds = timed(lambda: gaps.fit_local(model.model, x, family))[0]  # once: a minute on mnist
        latency = min(timed(lambda: gaps.fit_local(model.model, x[:1], family))[0] for _ in range(5))
        row(f"throughput-{name}", f"q* {family} fit, {threads} thread(s)", seconds, points=len(x),
            points_per_second=len(x) / seconds, one_point_ms=1e3 * latency)
    for family, guide_name in qstar.FAMILIES.items():
        if family == "flow":
            continue
        rows_guide = guides.make(guide_name, z_dim=model.z_dim, num_data=60_000)
        floats = sum(p.numel() for p in rows_guide.parameters()) / 60_000
        per_row = 3 * 4 * floats  # the row and its two Adam moments, float32
        row(f"throughput-{name}", f"{guide_name} rows in memory", 0.0, floats_per_row=floats,
            bytes_at_60000=per_row * 60_000, bytes_at_1e8=per_row * 1e8,
            encoder_bytes=4 * sum(p.numel() for p in encoder.parameters()))


#: the row parts in the order main() measures them (and evaluate.md shows them)
PART_ORDER = ["digits", "ais-digits", "starts-digits", "throughput-digits", "ais-mnist", "starts-mnist",
              "throughput-mnist", "mnist"]


def cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write(out: Path) -> None:
    table = pd.DataFrame(ROWS)
    table.to_csv(out / "evaluate.csv", index=False)
    lines = ["# What an evaluation costs, and what the encoder buys", "",
             f"`python benchmarks/evaluate.py` on {platform.processor() or platform.machine()}, torch "
             f"{torch.__version__}, one thread pinned to one core unless a row says two; nats per datapoint.", ""]
    order = {part: i for i, part in enumerate(PART_ORDER)}  # the order main runs them, whichever ran last
    for part, rows in sorted(table.groupby("part", sort=False), key=lambda item: order.get(item[0], len(order))):
        shown = rows.dropna(axis=1, how="all").drop(columns="part")
        lines += [f"## {part}", "", markdown(shown.apply(lambda c: c.map(cell))), ""]
    (out / "evaluate.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["digits", "mnist", "ais", "starts", "throughput"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, on as many cores, for every timing: run "
                   "--parts throughput --threads 2 --out DIR for the two-thread rows (a process's threads keep the cores "
                   "they started on, so one process cannot time both)")
    p.add_argument("--before", default=BEFORE, help="the commit whose evaluation ours is timed and checked against")
    p.add_argument("--no-before", action="store_true", help="skip the code before")
    p.add_argument("--ais-steps", type=int, nargs="+", default=[10, 30, 100])
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--ais-points", type=int, default=100)
    p.add_argument("--starts-points", type=int, default=200)
    p.add_argument("--decoders", default=None, help="folder of the two trained decoders (trained there if absent)")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    global OUT
    out = OUT = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ROWS[:] = kept_rows(out, args.parts, args.threads)
    pin(args.threads)
    folder = Path(args.decoders or tempfile.mkdtemp(prefix="pyro-vae-evaluate-"))
    digits = decoder(folder, "digits", {"guide": "normal", "epochs": 100})
    mnist = decoder(folder, "mnist", {**load_config(ROOT / "docs/mnist-5k/cremer.yaml"), "epochs": 200}) \
        if {"mnist", "ais", "starts", "throughput"} & set(args.parts) else None
    args.worktree = None
    if not args.no_before and {"digits", "mnist"} & set(args.parts):
        args.worktree = folder / f"before-{args.before}"
        if not args.worktree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(args.worktree), args.before],
                           check=True, capture_output=True)
    try:
        if "digits" in args.parts:
            part_evaluate("digits", digits, {"train": 359, "test": 359}, args)
        for name, run in (("digits", digits), ("mnist", mnist)):
            if run is None:
                continue
            if "ais" in args.parts:
                part_ais(name, run, args)
            if "starts" in args.parts:
                part_starts(name, run, args)
            if "throughput" in args.parts:
                part_throughput(name, run, args)
        if "mnist" in args.parts:  # last: the longest part
            part_evaluate("mnist", mnist, {"test": 1000}, args, before_sizes={"test": 200})
    finally:
        if args.worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(args.worktree)],
                           capture_output=True)


if __name__ == "__main__":
    main()
