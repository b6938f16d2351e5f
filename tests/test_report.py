"""pyro_vae.report: the tables of docs/results.md, checked on small frames whose answers are known by hand."""

import numpy as np
import pandas as pd
import pytest

from pyro_vae import report


def _results():
    rows = []
    for seed, (a, b) in enumerate([(-22.0, -21.9), (-22.2, -22.0), (-22.1, -22.3)]):
        for guide, value in (("normal", a), ("meanfield T=5", b)):
            rows.append({"guide": guide, "seed": seed, "split": "test", "log_px": value})
            rows.append({"guide": guide, "seed": seed, "split": "train", "log_px": value + 5})
    return pd.DataFrame(rows)


def test_paired_differences_are_per_seed_differences_with_a_student_t_interval():
    d = report.paired_differences(_results()).loc["meanfield T=5"]
    per_seed = np.array([0.1, 0.2, -0.2])                   # meanfield T=5 minus normal, seeds 0-2 (test split)
    half = 4.302653 * per_seed.std(ddof=1) / np.sqrt(3)     # t quantile 0.975 with 2 degrees of freedom
    assert d["mean"] == pytest.approx(per_seed.mean(), abs=1e-12)
    assert d["sd"] == pytest.approx(per_seed.std(ddof=1), abs=1e-12)
    assert (d["low"], d["high"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half), abs=1e-6)
    assert d["seeds"] == 3
    assert report.interval(d) == "+0.03 [−0.48, +0.55]"  # 0.033 ± 4.303 × 0.208 / √3


def test_one_seed_gives_a_difference_without_an_interval():
    one = report.paired_differences(_results().query("seed == 0")).loc["meanfield T=5"]
    assert one["mean"] == pytest.approx(0.1) and np.isnan(one["low"])
    assert report.interval(one) == "+0.10"


def test_the_gap_table_shows_means_and_sds_over_seeds_in_the_studys_order():
    table = report.gap_table(_results()).splitlines()
    assert table[0] == "| decoder trained with | split | log p(x) |"
    assert table[2] == "| `normal` encoder | test | −22.100 ± 0.100 |"
    assert table[4] == "| `meanfield`, T = 5 | test | −22.067 ± 0.208 |"
    assert len(table) == 2 + 4


@pytest.mark.parametrize("guide, text", [("normal", "`normal` encoder"), ("semi_amortized", "`semi_amortized`"),
                                         ("meanfield", "`meanfield`, T = 1"), ("meanfield T=20", "`meanfield`, T = 20"),
                                         ("normal T=5", "`normal` encoder, T = 5"),
                                         # a study's arms whose T was tuned (docs/digits-study/tune-ARM)
                                         ("normal-T", "`normal` encoder, T tuned"),
                                         ("meanfield-T", "`meanfield`, T tuned")])
def test_labels(guide, text):
    assert report.label(guide) == text


def test_numbers_use_a_minus_sign_and_a_dash_for_missing():
    assert report.number(-0.5) == "−0.500" and report.number(float("nan")) == "—"
    assert report.number(-0.0004) == "0.000" and report.number(-0.0006) == "−0.001"  # no negative zero
    assert report.cell(pd.Series([np.nan, np.nan]), True) == "—"


def test_the_paired_table_says_which_differences_are_resolved():
    results = _results()
    shifted = results[results["guide"] == "normal"].assign(guide="normal T=5")
    shifted["log_px"] += np.array([0.5, 0.7, 0.6, 0.6, 0.4, 0.4])  # test rows of seeds 0-2: +0.5, +0.6, +0.4
    table = report.paired_table(pd.concat([results, shifted]))
    lines = table.splitlines()
    assert lines[0] == ("| decoder trained with | seeds | test log p(x) | difference from the `normal` encoder's "
                        "[95%] | resolved |")
    assert lines[2] == "| `normal` encoder | 3 | −22.10 ± 0.10 | (the baseline) | — |"
    assert lines[3] == "| `meanfield`, T = 5 | 3 | −22.07 ± 0.21 | +0.03 [−0.48, +0.55] | no |"
    # +0.5 ± 4.303 × 0.1 / √3 = [+0.25, +0.75]: the interval excludes 0
    assert lines[4] == "| `normal` encoder, T = 5 | 3 | −21.60 ± 0.10 | +0.50 [+0.25, +0.75] | yes: higher |"


def test_the_tuning_table_shows_what_each_arm_tuned():
    bests = {"normal": {"params": {"lr": 0.0039812}, "value": -22.9363, "trials": 10, "epochs": 100},
             "meanfield T=5": {"params": {"lr": 0.00846, "local_lr": 0.1431, "local_steps": 5}, "value": -23.3,
                               "trials": 10, "epochs": 100}}
    lines = report.tuning_table(bests).splitlines()
    assert lines[2] == "| `normal` encoder | 0.00398 | — | — | −22.936 | 10 | 100 |"
    assert lines[3] == "| `meanfield`, T = 5 | 0.00846 | 0.143 | 5 | −23.300 | 10 | 100 |"


def _differences():
    """Two arms against the normal encoder at two test budgets and the selected checkpoint, known by hand."""
    from pyro_vae import budgets

    rows = []
    for seed, (base, mf, mvn) in enumerate([(-22.0, -22.5, -21.9), (-22.2, -22.6, -22.0), (-22.1, -22.7, -22.3)]):
        for budget, value, shift in (("epochs", 100.0, 0.0), ("seconds", 3.0, -1.0), ("selected", np.nan, 0.0)):
            for guide, v in (("normal", base), ("meanfield", mf + shift), ("mvn", mvn)):
                rows.append({"guide": guide, "seed": seed, "budget": budget, "value": value, "log_px": v})
    tests = pd.DataFrame(rows)
    curves = pd.DataFrame([{"guide": g, "seed": s, "epoch": e, "seconds": float(e), "log_px": v}
                           for s in range(3) for g, v in (("normal", -22.0), ("meanfield", -22.4), ("mvn", -21.0))
                           for e in (0, 1)])
    return budgets.differences(curves, tests)


def test_the_difference_table_marks_resolved_intervals_in_bold():
    text = report.difference_table(_differences())
    lines = text.splitlines()
    assert lines[0] == "| decoder trained with | 100 epochs | 3 s | selected checkpoint |"
    # meanfield minus normal: -0.5, -0.4, -0.6 at 100 epochs (resolved), -1.5, -1.4, -1.6 at 3 s
    assert lines[2].startswith("| `meanfield`, T = 1 | **−0.50 [−0.75, −0.25]** | **−1.50 [−1.75, −1.25]** |")
    # mvn minus normal: +0.1, +0.2, -0.2: not resolved, not bold
    assert lines[3].startswith("| `mvn` encoder | +0.03 [−0.48, +0.55] |")


def test_the_answer_table_says_yes_no_or_level_for_the_encoder_against_the_mean_field_arm_per_budget():
    digits = _differences()
    # the same study with mean-field ahead at 100 epochs and level at 3 s, and a budget digits did not measure
    other = digits.copy()
    mf = other["guide"] == "meanfield"
    other.loc[mf, ["mean", "low", "high"]] = -other.loc[mf, ["mean", "high", "low"]].values
    other.loc[mf & (other["budget"] == "seconds"), ["low", "resolved"]] = [-0.2, False]
    other.loc[other["budget"] == "seconds", "value"] = 30.0
    lines = report.answer_table({"digits": digits, "other": other}).splitlines()
    assert lines[0] == "| data | seeds | 100 epochs | 3 s | 30 s | selected checkpoint |"
    # normal minus meanfield: +0.5, +0.4, +0.6 at 100 epochs (resolved), +1.5, +1.4, +1.6 at 3 s
    assert lines[2] == ("| digits | 3 | yes, +0.50 [+0.25, +0.75] | yes, +1.50 [+1.25, +1.75] | — | "
                        "yes, +0.50 [+0.25, +0.75] |")
    assert lines[3] == ("| other | 3 | no (behind), −0.50 [−0.75, −0.25] | — | level, −1.50 [−1.75, +0.20] | "
                        "no (behind), −0.50 [−0.75, −0.25] |")
    with pytest.raises(ValueError, match="holds no test iwae differences of 'flow'"):
        report.answer_table({"digits": digits}, arm="flow")


def test_sign_changes_name_the_budgets_between_which_the_order_turns():
    d = pd.DataFrame({"guide": "meanfield", "split": "validation", "budget": "epochs",
                      "value": [1.0, 10.0, 100.0, 300.0], "mean": [-1.0, -0.2, 0.1, 0.3], "low": np.nan,
                      "high": np.nan, "seeds": 3, "resolved": False})
    changes = report.sign_changes(d)
    assert changes[["before", "after"]].values.tolist() == [[10.0, 100.0]]


def test_the_sign_change_table_names_the_test_budgets_where_an_arm_turns():
    d = pd.DataFrame({"guide": ["mvn"] * 4 + ["meanfield"] * 3, "split": "test",
                      "budget": ["epochs", "epochs", "seconds", "selected", "epochs", "epochs", "selected"],
                      "value": [100.0, 300.0, 3.0, np.nan, 100.0, 300.0, np.nan],
                      "mean": [-0.02, 0.07, -0.07, 0.07, -0.15, -0.03, 0.03], "low": np.nan, "high": np.nan,
                      "seeds": 10, "resolved": False})
    lines = report.sign_change_table(d).splitlines()
    # mvn turns between 100 and 300 epochs; meanfield never turns across budgets (the selected checkpoint is no budget)
    assert lines[2:] == ["| `mvn` encoder | epochs | 100 epochs | −0.02 | 300 epochs | +0.07 |"]
    assert report.sign_change_table(d[d["guide"] == "meanfield"]) == "none"


def test_the_qstar_starts_table_pairs_each_run_with_its_own_single_start_qstar():
    """Rows in another order in the two tables: a table that paired by position, not by run, would be off."""
    runs = ["runs/normal-seed100", "runs/normal-seed101", "runs/normal-seed102"]
    results = pd.DataFrame({"guide": "normal", "split": "test", "run": runs,
                            "elbo_qstar_normal": [-23.3, -23.1, -23.2], "elbo_qstar_mvn": -23.0})
    evaluations = pd.DataFrame({"guide": "normal", "split": "test",
                                "run": ["normal-seed102", "normal-seed100", "normal-seed101"],
                                "elbo_qstar_normal": [-23.19, -23.28, -23.09], "elbo_qstar_mvn": -22.99,
                                "elbo_qstar_normal_spread": [0.05, 0.07, 0.06], "elbo_qstar_mvn_spread": 0.02,
                                "approximation_gap": 0.25, "amortization_gap": 0.45})
    line = report.qstar_starts_table(evaluations, results).splitlines()[2]
    # the best starts are 0.01, 0.02 and 0.01 above the one start: mean 0.013, sd 0.006; spreads 0.06 +- 0.01
    assert line == ("| `normal` encoder | test | −23.187 ± 0.095 | 0.013 ± 0.006 | 0.060 ± 0.010 | 0.020 ± 0.000 | "
                    "0.250 ± 0.000 | 0.450 ± 0.000 |")
    # an mvn arm is measured in its own (full) family
    mvn = report.qstar_starts_table(evaluations.assign(guide="mvn"), results.assign(guide="mvn"))
    assert "| `mvn` encoder | test | −22.990 ± 0.000 | 0.010 ± 0.000 |" in mvn
