"""The study's tables as Markdown, from the CSVs that ``compare`` writes: what ``docs/results.md`` shows, generated
so that a page quoting a study can be checked against the study's files (``tests/test_readme.py``).

Every value is in nats per datapoint. Across seeds a cell shows ``mean ± sd`` (the sample standard deviation of the
per-seed values, ddof = 1); with one seed, the mean alone.
"""

import numpy as np
import pandas as pd

from . import budgets

#: the quantities of the gap table: (column of results.csv, heading, with its spread across seeds)
GAP_COLUMNS = [
    ("log_px", "log p(x)", True),
    ("log_px_ais", "log p(x), AIS", True),
    ("elbo_qstar_normal", "L[q\\*] diagonal", False),
    ("elbo_qstar_mvn", "L[q\\*] full", False),
    ("elbo_qstar_flow", "L[q\\*] flow", False),
    ("elbo_q", "L[q]", False),
    ("approximation_gap", "approximation gap", True),
    ("approximation_gap_flow", "left by a flow", True),
    ("amortization_gap", "amortization gap", True),
    ("optimization_gap", "optimization gap", True),
]


def label(guide: str) -> str:
    """The row label of a decoder: ``normal`` → "`normal` encoder", ``meanfield T=5`` → "`meanfield`, T = 5"; a
    study's arm whose T was tuned, ``meanfield-T`` → "`meanfield`, T tuned"."""
    if guide.endswith("-T"):
        base = guide[:-2]
        return (f"`{base}`" if base.startswith("meanfield") else label(base)) + ", T tuned"
    if guide.startswith("meanfield"):
        steps = guide.partition("T=")[2] or "1"
        return f"`meanfield`, T = {steps}"
    if " T=" in guide:  # an aggressive encoder arm (compare --encoder-steps)
        name, _, steps = guide.partition(" T=")
        return f"`{name}` encoder, T = {steps}"
    return f"`{guide}`" if guide == "semi_amortized" else f"`{guide}` encoder"


def number(value: float, digits: int = 3) -> str:
    """``value`` with a typographic minus sign, and "—" for a missing value."""
    if value is None or not np.isfinite(value):
        return "—"
    text = f"{value:.{digits}f}"
    if float(text) == 0:  # -0.0004 shown at 3 digits is 0.000, not −0.000
        text = text.lstrip("-")
    return text.replace("-", "−")


def cell(values: pd.Series, spread: bool, digits: int = 3) -> str:
    """The mean of ``values`` (one per seed), with ``± sd`` when ``spread`` and there are several."""
    values = values.dropna()
    if values.empty:
        return "—"
    text = number(values.mean(), digits)
    if spread and len(values) > 1:
        text += f" ± {values.std(ddof=1):.{digits}f}"
    return text


def markdown(table: pd.DataFrame) -> str:
    """A DataFrame of strings as a Markdown table (its index is not shown)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table.astype(str).itertuples(index=False)]
    return "\n".join(lines)


def gap_table(results: pd.DataFrame, digits: int = 3) -> str:
    """The gap table of a study from its ``results.csv``: one row per decoder and split, in the study's order.

    Columns whose quantity the study did not measure (the flow family when it was not fitted, the optimization gap
    of a study without per-datapoint guides) are left out.
    """
    columns = [c for c in GAP_COLUMNS if c[0] in results and results[c[0]].notna().any()]
    rows = []
    for (guide, split), group in results.groupby(["guide", "split"], sort=False):
        rows.append([label(guide), split] + [cell(group[c], spread, digits) for c, _, spread in columns])
    return markdown(pd.DataFrame(rows, columns=["decoder trained with", "split"] + [h for _, h, _ in columns]))


def paired_differences(results: pd.DataFrame, baseline: str = "normal", split: str = "test",
                       column: str = "log_px") -> pd.DataFrame:
    """Per decoder, ``column`` minus the baseline decoder's on the same seed and the same points, over seeds.

    ``results`` has columns ``guide``, ``seed``, ``column`` and, unless ``split`` is None, ``split`` (a
    ``results.csv`` or a ``test_at_budgets.csv`` part).

    Within a seed both decoders are measured on the same datapoints, so the difference of their means is the mean of
    the per-datapoint differences. Returns one row per other decoder with ``mean``, ``sd`` (across seeds),
    ``low`` and ``high`` (the 95% Student-t interval of the mean over seeds; NaN with one seed) and ``seeds``.
    """
    from scipy import stats

    if split is not None:
        results = results[results["split"] == split]
    part = results.pivot_table(index="seed", columns="guide", values=column, sort=False)
    rows = {}
    for guide in part.columns.drop(baseline):
        d = (part[guide] - part[baseline]).dropna()
        n = len(d)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        rows[guide] = {"mean": d.mean(), "sd": d.std(ddof=1) if n > 1 else np.nan, "low": d.mean() - half,
                       "high": d.mean() + half, "seeds": n}
    return pd.DataFrame.from_dict(rows, orient="index")


def paired_table(results: pd.DataFrame, baseline: str = "normal", split: str = "test", digits: int = 2) -> str:
    """Per decoder of ``results`` (a ``results.csv``, or several concatenated that share seeds): test log p(x) as
    the mean ± sd over seeds, and its paired difference against ``baseline``'s decoder with the 95% interval, and
    whether that interval excludes 0 ("resolved")."""
    part = results[results["split"] == split]
    differences = paired_differences(results, baseline, split)
    rows = []
    for guide, group in part.groupby("guide", sort=False):
        row = [label(guide), str(group["seed"].nunique()), cell(group["log_px"], True, digits)]
        if guide == baseline:
            row += ["(the baseline)", "—"]
        else:
            d = differences.loc[guide]
            resolved = np.isfinite(d["low"]) and (d["low"] > 0 or d["high"] < 0)
            row += [interval(d, digits), ("yes: " + ("higher" if d["mean"] > 0 else "lower")) if resolved else "no"]
        rows.append(row)
    return markdown(pd.DataFrame(rows, columns=["decoder trained with", "seeds", f"{split} log p(x)",
                                                f"difference from the `{baseline}` encoder's [95%]", "resolved"]))


def tuning_table(bests: dict, digits: int = 3) -> str:
    """The tuned settings of each arm: ``bests`` maps the arm's decoder label to its ``best.json``
    (:func:`pyro_vae.tune.best`); a setting the arm did not tune is "—"."""
    rows = []
    for guide, best in bests.items():
        p = best["params"]
        rows.append([label(guide), f"{p['lr']:.3g}", f"{p['local_lr']:.3g}" if "local_lr" in p else "—",
                     str(p.get("local_steps", "—")), number(best["value"], digits), str(best["trials"]),
                     str(best["epochs"])])
    return markdown(pd.DataFrame(rows, columns=["arm", "lr", "local_lr", "T", "validation log p(x)", "trials",
                                                "epochs per trial"]))


def _signed(value: float, digits: int = 2) -> str:
    """A difference with its sign, kept where it rounds to zero: "+0.04", "−0.08", "−0.00"."""
    if value is None or not np.isfinite(value):
        return "—"
    return ("+" if value >= 0 else "−") + number(abs(value), digits)


def interval(row, digits: int = 2) -> str:
    """A paired difference as "+0.04 [−0.08, +0.16]" (mean and 95% interval)."""
    if not np.isfinite(row["low"]):
        return _signed(row["mean"], digits)
    return f"{_signed(row['mean'], digits)} [{_signed(row['low'], digits)}, {_signed(row['high'], digits)}]"


def cost_table(cost: pd.DataFrame, num_data: int) -> str:
    """What each decoder's training cost (``cost.csv``): guide parameters at the study's N and at N = 60 000, the time
    to infer q for one new point (ms: an encoder pass, or a q* fit for a per-datapoint guide), and the training,
    budget-curve and evaluation seconds, means over seeds."""
    rows = []
    for guide, g in cost.groupby("guide", sort=False):
        rows.append([label(guide), f"{g['guide_params'].iloc[0]:,}".replace(",", " "),
                     f"{g['guide_params_at_60000'].iloc[0]:,}".replace(",", " "),
                     _ms(g["infer_ms_per_new_point"].mean()), f"{g['train_seconds'].mean():.1f}",
                     f"{g['budget_seconds'].mean():.1f}", f"{g['evaluate_seconds'].mean():.1f}"])
    columns = [f"guide parameters at N = {num_data}", "at N = 60 000", "ms to infer q for a new point",
               "training (s)", "budget curves (s)", "evaluation (s)"]
    return markdown(pd.DataFrame(rows, columns=["decoder trained with"] + columns))


def _ms(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ") if value >= 100 else f"{value:.2g}" if value < 1 else f"{value:.1f}"


def budget_name(budget: str, value: float) -> str:
    """A budget of :func:`pyro_vae.budgets.differences` as a heading: "100 epochs", "10 s", "selected checkpoint"."""
    if budget == "selected":
        return "selected checkpoint"
    return f"{value:g} epochs" if budget == "epochs" else f"{value:g} s"


def difference_table(differences: pd.DataFrame, split: str = "test", digits: int = 2, estimator: str = "iwae") -> str:
    """A study's paired differences (``differences.csv``) on ``split``, log p(x) read by ``estimator`` (``"iwae"``
    or ``"ais"``): one row per arm, one column per pre-registered budget and the selected checkpoint, each cell the
    mean difference from the ``normal`` encoder's decoder with its 95% interval over seeds (nats per datapoint;
    positive: the arm's decoder is better), in bold where the interval excludes 0."""
    part = budgets.of_estimator(differences, estimator)
    part = part[part["split"] == split]
    columns = list(dict.fromkeys(budget_name(b, v) for b, v in zip(part["budget"], part["value"])))
    rows = []
    for guide, g in part.groupby("guide", sort=False):
        cells = {budget_name(r["budget"], r["value"]): (f"**{interval(r, digits)}**" if r["resolved"] else
                                                         interval(r, digits)) for _, r in g.iterrows()}
        rows.append([label(guide)] + [cells.get(c, "—") for c in columns])
    return markdown(pd.DataFrame(rows, columns=["decoder trained with"] + columns))


def answer_table(studies: dict, arm: str = "meanfield", split: str = "test", estimator: str = "iwae",
                 digits: int = 2) -> str:
    """The question in its own words, per budget: can the ``normal`` encoder's decoder outperform the one trained
    with the per-datapoint ``arm``? ``studies`` maps a data set's name to its joined study's ``differences.csv``
    (each arm minus ``normal``, as :func:`pyro_vae.budgets.differences` writes it); each cell is the encoder's
    decoder minus the arm's, mean [95% interval] over seeds in nats per datapoint, after a verdict: "yes" where the
    interval is above 0, "no (behind)" where it is below, "level" where it holds 0 (not resolved). One row per data
    set, one column per budget any study measured ("—" where a study did not).

    :raises ValueError: when a study holds no such differences of ``arm``."""
    parts = {}
    for name, differences in studies.items():
        part = budgets.of_estimator(differences, estimator)
        parts[name] = part[(part["split"] == split) & (part["guide"] == arm)]
        if parts[name].empty:
            raise ValueError(f"answer_table: the {name} study holds no {split} {estimator} differences of {arm!r}")
    every = pd.concat(parts.values())
    order = every.assign(kind=every["budget"].map({"epochs": 0, "seconds": 1, "selected": 2}))
    order = order.sort_values(["kind", "value"]).drop_duplicates(["budget", "value"])
    columns = [budget_name(b, v) for b, v in zip(order["budget"], order["value"])]
    rows = []
    for name, part in parts.items():
        cells = {}
        for _, r in part.iterrows():
            flipped = {"mean": -r["mean"], "low": -r["high"], "high": -r["low"]}  # the encoder's decoder minus the arm's
            verdict = "level" if not r["resolved"] else "yes" if flipped["mean"] > 0 else "no (behind)"
            cells[budget_name(r["budget"], r["value"])] = f"{verdict}, {interval(flipped, digits)}"
        rows.append([name, f"{part['seeds'].min()}"] + [cells.get(c, "—") for c in columns])
    return markdown(pd.DataFrame(rows, columns=["data", "seeds"] + columns))


def selection_table(selection: pd.DataFrame, tests: pd.DataFrame, digits: int = 2) -> str:
    """Where validation chose each arm's checkpoint (``selection.csv``) and what test read there
    (``test_at_budgets.csv``): the selected epoch and training seconds (mean ± sd over seeds), the validation
    log p(x) there, how many seeds' validation curves flattened, and the test log p(x) at the selected checkpoint."""
    rows = []
    selected = tests[tests["budget"] == "selected"]
    for guide, g in selection.groupby("guide", sort=False):
        test = selected[selected["guide"] == guide]["log_px"]
        epoch = f"{g['selected_epoch'].mean():.0f}"
        if len(g) > 1:
            epoch += f" ± {g['selected_epoch'].std(ddof=1):.0f}"
        rows.append([label(guide), epoch, cell(g["selected_seconds"], True, 1),
                     cell(g["validation_log_px"], True, digits), f"{int(g['flattened'].sum())} of {len(g)}",
                     cell(test, True, digits)])
    return markdown(pd.DataFrame(rows, columns=["decoder trained with", "selected epoch", "its training seconds",
                                                "validation log p(x)", "curves flattened", "test log p(x) there"]))


def sign_changes(differences: pd.DataFrame, split: str = "validation", estimator: str = "iwae") -> pd.DataFrame:
    """Where a paired difference's mean changes sign along a budget axis (``differences.csv`` rows of ``split``
    read by ``estimator``):
    one row per change with the arm, the axis (``epochs`` or ``seconds``), the last budget before and the first
    after it, and the means there."""
    rows = []
    part = budgets.of_estimator(differences, estimator)
    part = part[(part["split"] == split) & (part["budget"] != "selected")]
    for (guide, budget), g in part.groupby(["guide", "budget"], sort=False):
        g = g.sort_values("value")
        signs = np.sign(g["mean"].to_numpy())
        for i in range(1, len(g)):
            if signs[i] != signs[i - 1] and signs[i] != 0 and signs[i - 1] != 0:
                rows.append({"guide": guide, "budget": budget, "before": g["value"].iloc[i - 1],
                             "after": g["value"].iloc[i], "mean_before": g["mean"].iloc[i - 1],
                             "mean_after": g["mean"].iloc[i]})
    return pd.DataFrame(rows, columns=["guide", "budget", "before", "after", "mean_before", "mean_after"])


def sign_change_table(differences: pd.DataFrame, split: str = "test", estimator: str = "iwae") -> str:
    """:func:`sign_changes` on ``split`` as a Markdown table: one row per arm and budget axis whose paired mean
    difference turns sign between two neighbouring budgets (the selected checkpoint is no budget), with the means
    on either side; "none" when no difference turns."""
    changes = sign_changes(differences, split, estimator)
    if changes.empty:
        return "none"
    rows = [[label(r["guide"]), r["budget"], budget_name(r["budget"], r["before"]), _signed(r["mean_before"]),
             budget_name(r["budget"], r["after"]), _signed(r["mean_after"])] for _, r in changes.iterrows()]
    return markdown(pd.DataFrame(rows, columns=["decoder trained with", "axis", "last budget before",
                                                "difference there", "first budget after", "difference after"]))


#: the q* family each guide's gaps are measured in, where it is not the diagonal one (``normal``, ``meanfield`` and
#: ``semi_amortized`` refine a diagonal Gaussian); an arm's name is its guide's, with ``-T`` for a tuned T
OWN_FAMILY = {"mvn": "mvn", "local_mvn": "mvn", "flow": "flow", "local_flow": "flow"}


def qstar_starts_table(evaluations: pd.DataFrame, results: pd.DataFrame, digits: int = 3) -> str:
    """q*'s sensitivity to its start at the selected decoders: ``evaluations`` are ``pyro-vae evaluate --at selected
    --qstar-starts ...`` rows (one per run and split), ``results`` the study's ``results.csv`` (q* from the encoder's
    q alone, or the prior for per-datapoint guides), both with a ``guide`` column naming the arm and a ``run``.

    Per arm and split, means over seeds (nats per datapoint): L[q*] in the arm's own family with each point's best
    start, how much that is above the study's L[q*] (paired by run), the mean per-point spread of the starts'
    L[q*] (max − min; it includes the Monte Carlo noise of each start's estimate), for the diagonal and the full
    family, and the approximation and amortization gaps from the best starts. Rows in the order of ``results``' arms."""
    rows = []
    order = {guide: i for i, guide in enumerate(dict.fromkeys([*results["guide"], *evaluations["guide"]]))}
    groups = sorted(evaluations.groupby(["guide", "split"], sort=False), key=lambda item: order[item[0][0]])
    for (guide, split), g in groups:  # in the study's order of arms
        family = OWN_FAMILY.get(guide.split(" ")[0].removesuffix("-T"), "normal")
        column = f"elbo_qstar_{family}"
        base = results[(results["guide"] == guide) & (results["split"] == split)]
        base = base.set_index(base["run"].map(_run_name))[column]
        mine = g.set_index(g["run"].map(_run_name))[column]
        moved = (mine - base.reindex(mine.index)).dropna()
        rows.append([label(guide), split, cell(g[column], True, digits), cell(moved, True, digits),
                     cell(g["elbo_qstar_normal_spread"], True, digits), cell(g["elbo_qstar_mvn_spread"], True, digits),
                     cell(g["approximation_gap"], True, digits), cell(g["amortization_gap"], True, digits)])
    return markdown(pd.DataFrame(rows, columns=[
        "decoder trained with", "split", "L[q\\*] own family, best start", "above one start",
        "spread of starts, diagonal", "spread, full", "approximation gap", "amortization gap"]))


def _run_name(run: str) -> str:
    """A run's folder name, however a table wrote its path ("runs/normal-seed100" or "normal-seed100")."""
    return str(run).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
