"""compare with several seeds: one row per seed, each the same as a run with that seed alone."""

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
