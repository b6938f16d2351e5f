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
                                         ("meanfield", "`meanfield`, T = 1"), ("meanfield T=20", "`meanfield`, T = 20")])
def test_labels(guide, text):
    assert report.label(guide) == text


def test_numbers_use_a_minus_sign_and_a_dash_for_missing():
    assert report.number(-0.5) == "−0.500" and report.number(float("nan")) == "—"
    assert report.cell(pd.Series([np.nan, np.nan]), True) == "—"
