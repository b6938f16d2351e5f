"""compare across seeds, processes and during training: one row per seed, the same numbers in parallel, budget
curves that leave training as it was, and the encoder-width sweep."""

import math

import pandas as pd
import pytest
import torch

from pyro_vae import compare, data

TINY = dict(guides=("normal", "meanfield"), local_steps=(1,), families=("normal",), z_dim=2, hidden=(16,), epochs=3, n_eval=10,
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
    assert budget[["epoch"]].values.ravel().tolist() == [0, 2, 4]  # epoch 0: the untrained decoder
    history = result.histories.set_index("epoch")["seconds"].cumsum()
    # bookkeeping, not timing: each point's seconds are the running sum of fit's own recorded epoch seconds
    assert budget["seconds"].tolist() == [0.0, *history.loc[[2, 4]].tolist()]
    # the last measurement is of the trained decoder: it agrees with its exact log p(x) on those points
    exact = result.per_point.query("split == 'test'")["log_px_exact"].mean()
    last = budget.iloc[-1]
    assert abs(last["log_px"] - exact) < 4 * last["log_px_mc_se"] + 0.01
    # and the measurements do not change training: the same losses as a run without them
    unmeasured = compare.compare(ds, compare.Settings(**{**TINY, "guides": ("normal",), "epochs": 4}, budget_every=0))
    pd.testing.assert_frame_equal(result.histories.drop(columns="seconds"),
                                  unmeasured.histories.drop(columns="seconds"))
    assert unmeasured.budget.empty


def test_workers_give_the_same_numbers_as_one_process():
    """Each training is seeded by its own seed alone: two processes reproduce one process's tables exactly."""
    ds = data.load("linear-gaussian")
    settings = compare.Settings(**TINY, seeds=2, budget_every=3, budget_points=5, budget_ll_samples=20)
    one = compare.compare(ds, settings)
    two = compare.compare(ds, compare.Settings(**{**vars(settings), "workers": 2}))
    pd.testing.assert_frame_equal(one.table, two.table)
    pd.testing.assert_frame_equal(one.budget.drop(columns="seconds"), two.budget.drop(columns="seconds"))
    assert list(two.models) == ["normal", "meanfield"]
    for label in one.models:  # the first seed's modules come back with their trained weights
        for a, b in zip(one.models[label].state_dict().values(), two.models[label].state_dict().values()):
            assert torch.equal(a, b)


def test_workers_refuse_a_gpu_before_any_work():
    with pytest.raises(ValueError, match="use workers=1"):
        compare.compare(data.load("linear-gaussian"), compare.Settings(**TINY, workers=2, device="cuda"))


def test_budget_comparisons_on_curves_with_known_answers():
    """A: fast, still rising over its last third; B: slow, flat. Equal seconds is A's total time, 2 s.
    The seconds are made-up inputs (no clock is read): this checks the arithmetic of the comparisons."""
    rows = [("A", 0, 0, -10.0), ("A", 15, 1, -5.0), ("A", 30, 2, -4.0),
            ("B", 0, 0, -10.0), ("B", 15, 3, -4.0), ("B", 30, 6, -3.99)]
    budget = pd.DataFrame([{"guide": g, "seed": 7, "epoch": e, "seconds": t, "log_px": v} for g, e, t, v in rows])
    out = compare.budget_comparisons(budget).set_index("guide")
    assert out.loc["A", "log_px_equal_epochs"] == -4.0 and out.loc["B", "log_px_equal_epochs"] == -3.99
    assert out["equal_seconds"].tolist() == [2, 2]
    assert out.loc["A", "log_px_equal_seconds"] == -4.0
    assert math.isclose(out.loc["B", "log_px_equal_seconds"], -10.0 + 6.0 * 2 / 3)  # between (0 s, -10), (3 s, -4)
    assert out["best_epoch"].tolist() == [30, 30]
    assert math.isclose(out.loc["A", "rise_last_third"], 1.0) and not out.loc["A", "flattened"]
    assert math.isclose(out.loc["B", "rise_last_third"], 0.01, abs_tol=1e-9) and out.loc["B", "flattened"]


def test_encoder_width_sweep_trains_encoders_on_the_fixed_decoder():
    """New encoders on the normal guide's decoder: the decoder and every other number stay as without the sweep;
    log p(x) and L[q*] are the decoder's, each row's gap is L[q*] - L[q], and no encoder beats q* (its family's
    optimum for each point) by more than the Monte Carlo error."""
    ds = data.load("linear-gaussian")
    settings = compare.Settings(**{**TINY, "guides": ("normal",), "epochs": 20, "n_eval": 50, "elbo_samples": 200,
                                   "qstar_steps": 500}, budget_every=0)
    plain = compare.compare(ds, settings)
    swept = compare.compare(ds, compare.Settings(**{**vars(settings), "encoder_widths": (4, 64)}))
    pd.testing.assert_frame_equal(plain.table, swept.table)
    for a, b in zip(plain.models["normal"].state_dict().values(), swept.models["normal"].state_dict().values()):
        assert torch.equal(a, b)
    widths = swept.encoder_widths
    assert widths[["split", "width", "retrained"]].values.tolist() == [
        ["train", 16, False], ["test", 16, False], ["train", 4, True], ["test", 4, True], ["train", 64, True],
        ["test", 64, True]]
    means = plain.per_point.groupby("split")[["log_px", "elbo_qstar_normal"]].mean()
    for _, row in widths.iterrows():
        assert math.isclose(row["log_px"], means.loc[row["split"], "log_px"], abs_tol=1e-4)  # float32 sums
        assert math.isclose(row["elbo_qstar"], means.loc[row["split"], "elbo_qstar_normal"], abs_tol=1e-4)
        assert math.isclose(row["amortization_gap"], row["elbo_qstar"] - row["elbo_q"], abs_tol=1e-5)
        assert row["amortization_gap"] > -4 * row["amortization_gap_se"] - 0.01
    sizes = {w: (ds.x_dim + 1) * w + (w + 1) * 2 * settings.z_dim for w in (16, 4, 64)}  # x -> w -> (loc, scale)
    assert widths["encoder_params"].tolist() == [sizes[w] for w in widths["width"]]


def test_an_aggressive_encoder_arm_is_fit_with_encoder_steps():
    """encoder_steps=(1, 3): a normal decoder per T, the T = 3 one trained as fit(local_steps=3) trains it."""
    from pyro_vae import objectives
    from pyro_vae.optim import LazyAdam
    from pyro_vae.train import fit

    ds = data.load("linear-gaussian")
    s = compare.Settings(**{**TINY, "guides": ("normal",)}, encoder_steps=(1, 3), budget_every=0)
    result = compare.compare(ds, s)
    assert result.table["guide"].unique().tolist() == ["normal", "normal T=3"]
    assert result.cost.set_index("guide")["local_steps"].to_dict() == {"normal": 1, "normal T=3": 3}
    model, guide = compare.build_training(ds, s, "normal", s.seed)
    by_hand = fit(model, guide, ds, epochs=s.epochs, local_steps=3, progress=False, seed=s.seed,
                  optim=LazyAdam({"lr": s.lr}, sparse_args={"lr": s.local_lr}),
                  loss=objectives.for_training(s.elbo, model, guide, jit=s.jit))
    arm = result.histories[result.histories["guide"] == "normal T=3"].reset_index(drop=True)
    pd.testing.assert_series_equal(arm["train_loss"], by_hand["train_loss"])
    plain = result.histories[result.histories["guide"] == "normal"].reset_index(drop=True)
    assert not plain["train_loss"].equals(arm["train_loss"])
