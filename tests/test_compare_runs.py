"""compare across seeds and during training: one row per seed, and budget curves that leave training as it was."""

import pandas as pd

from pyro_vae import compare, data

TINY = dict(guides=("normal", "meanfield"), families=("normal",), z_dim=2, hidden=(16,), epochs=3, n_eval=10,
            ll_samples=50, elbo_samples=10, qstar_steps=20, progress=False)


def test_each_seed_of_a_multi_seed_run_is_the_run_with_that_seed():
    ds = data.load("linear-gaussian")
    both = compare.compare(ds, compare.Settings(**TINY, seed=4, seeds=2)).table
    alone = compare.compare(ds, compare.Settings(**TINY, seed=5)).table
    assert both["seed"].tolist() == [4, 4, 5, 5, 4, 4, 5, 5]
    pd.testing.assert_frame_equal(both[both["seed"] == 5].reset_index(drop=True), alone)
    assert not both[both["seed"] == 4]["log_px"].equals(both[both["seed"] == 5]["log_px"])  # the seeds differ

    summary = compare.across_seeds(both)
    assert summary[["guide", "split"]].values.tolist() == [["normal", "train"], ["normal", "test"],
                                                          ["meanfield", "train"], ["meanfield", "test"]]
    pair = both[(both["guide"] == "normal") & (both["split"] == "test")]["log_px"]
    row = summary.iloc[1]
    assert row["log_px"] == pair.mean() and row["log_px_seed_sd"] == pair.std(ddof=1)


def test_budget_curves_measure_the_decoder_in_training():
    ds = data.load("linear-gaussian")
    settings = compare.Settings(**{**TINY, "guides": ("normal",), "epochs": 4, "ll_samples": 500}, budget_every=2,
                                budget_points=10, budget_ll_samples=500)
    result = compare.compare(ds, settings)
    budget = result.budget
    assert budget[["epoch"]].values.ravel().tolist() == [2, 4]
    history = result.histories.set_index("epoch")["seconds"].cumsum()
    assert budget["seconds"].tolist() == history.loc[[2, 4]].tolist()  # training seconds so far, from fit's history
    # the last measurement is of the trained decoder: it agrees with its exact log p(x) on those points
    exact = result.per_point.query("split == 'test'")["log_px_exact"].mean()
    last = budget.iloc[-1]
    assert abs(last["log_px"] - exact) < 4 * last["log_px_mc_se"] + 0.01
    # and the measurements do not change training: the same losses as a run without them
    unmeasured = compare.compare(ds, compare.Settings(**{**TINY, "guides": ("normal",), "epochs": 4}, budget_every=0))
    pd.testing.assert_frame_equal(result.histories.drop(columns="seconds"),
                                  unmeasured.histories.drop(columns="seconds"))
    assert unmeasured.budget.empty
