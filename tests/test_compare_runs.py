"""The study of compare: one run folder per training, budgets measured on validation, test read once at the
checkpoints validation chose (a scrambled test split changes no choice), seeds, processes, resume and sharing."""

import json
import math
import threading
import time

import pandas as pd
import pytest
import torch

from pyro_vae import budgets, compare, data, folders, load_run, measure

TINY = dict(data="linear-gaussian", guides=("normal", "meanfield"), local_steps=(1,), families=("normal",), z_dim=2,
            hidden=(16,), epochs=4, n_eval=10, ll_samples=50, elbo_samples=10, qstar_steps=20, progress=False,
            budget_epochs=[1, 2, 3], test_epochs=[2, 4], budget_seconds=[1e-9, 1e9], budget_points=20, budget_ll_samples=50)
#: the columns that hold wall-clock time (they differ between any two runs)
CLOCK = {"seconds", "selected_seconds", "train_seconds", "budget_seconds", "evaluate_seconds", "sweep_seconds",
         "infer_ms_per_new_point", "run"}


def _no_clock(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame if c in CLOCK]).reset_index(drop=True)


@pytest.fixture(scope="module")
def lg():
    return data.load("linear-gaussian")


@pytest.fixture(scope="module")
def study(lg, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, compare.compare(lg, compare.Settings(**TINY, seeds=2), out)


def test_every_training_is_a_run_folder_that_load_run_reads(study, lg):
    out, result = study
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["meanfield-seed0", "meanfield-seed1", "normal-seed0",
                                                                "normal-seed1"]
    run = load_run(out / "runs" / "normal-seed0", at="selected")
    assert run.config["guide"] == "normal" and run.epochs == 4 and run.config["seed"] == 0
    selected = result.table.query("guide == 'normal' and seed == 0")["epoch"].iloc[0]
    kept = torch.load(out / "runs" / "normal-seed0" / "selected.pt", weights_only=True)
    assert kept["epoch"] == selected
    for name, value in run.model.state_dict().items():  # the selected weights, not the last epoch's
        assert torch.equal(value, kept["model"][name])
    # the first seed's modules of the result are the selected ones too
    for a, b in zip(result.models["normal"].state_dict().values(), run.model.state_dict().values()):
        assert torch.equal(a, b)
    # exactly the chosen checkpoints are kept
    chosen = set(result.tests.query("guide == 'normal' and seed == 0")["epoch"])
    assert {int(p.stem.split("-")[1]) for p in (out / "runs" / "normal-seed0" / "kept").iterdir()} == chosen
    for name in ("config.json", "results.csv", "test_at_budgets.csv", "cost.csv", "budget.csv", "differences.csv",
                 "selection.csv", "differences.png", "budget.png"):
        assert (out / name).exists(), name
    assert set(pd.read_csv(out / "results.csv")["run"]) == {f"runs/{p.name}" for p in result.runs.values()}
    assert all((out / run).is_dir() for run in pd.read_csv(out / "results.csv")["run"])  # relative to the study


def test_the_curves_are_measured_on_validation_at_the_declared_epochs(study, lg):
    out, result = study
    curve = result.budget.query("guide == 'normal' and seed == 0")
    assert curve["epoch"].tolist() == [0, 1, 2, 3, 4]  # epoch 0, the schedule up to --epochs, and --epochs
    history = result.histories.query("guide == 'normal' and seed == 0").set_index("epoch")["seconds"].cumsum()
    # bookkeeping, not timing: each point's seconds are the running sum of fit's own recorded epoch seconds
    assert curve["seconds"].tolist() == pytest.approx([0.0, *history.loc[[1, 2, 3, 4]].tolist()])
    batches = math.ceil(len(lg.train) / 128)
    assert curve["decoder_gradients"].tolist() == [e * batches for e in range(5)]
    # the measurement at the selected epoch is of validation points: measured again by hand, it is the same value
    run = load_run(out / "runs" / "normal-seed0", at=int(result.tests.query(
        "guide == 'normal' and seed == 0 and budget == 'selected'")["epoch"].iloc[0]))
    s = compare.Settings(**TINY)
    torch.manual_seed(0)
    again = measure.budget_row(run.model, run.guide, lg.validation[:20], s)["log_px"]
    row = curve[curve["epoch"] == run_epoch(result, "normal", 0)].iloc[0]
    assert abs(again - row["log_px"]) < 5 * row["log_px_mc_se"] + 0.05


def run_epoch(result, guide, seed, budget="selected"):
    return int(result.tests.query(f"guide == '{guide}' and seed == {seed} and budget == '{budget}'")["epoch"].iloc[0])


def test_budgets_read_best_so_far_and_test_is_read_at_the_chosen_checkpoints(study):
    out, result = study
    for (guide, seed), curve in result.budget.groupby(["guide", "seed"]):
        tests = result.tests.query(f"guide == '{guide}' and seed == {seed}").set_index(["budget", "value"])
        at2 = curve[curve["epoch"] <= 2]
        assert tests.loc[("epochs", 2.0), "epoch"] == at2.loc[at2["log_px"].idxmax(), "epoch"]
        assert tests.loc[("seconds", 1e-9), "epoch"] == 0  # no trained epoch is quicker than a nanosecond
        best = curve.loc[curve["log_px"].idxmax(), "epoch"]
        assert tests.loc[("seconds", 1e9), "epoch"] == best and not tests.loc[("seconds", 1e9), "reached"]
        assert tests.xs("selected", level="budget")["epoch"].iloc[0] == best
        table = result.table.query(f"guide == '{guide}' and seed == {seed} and split == 'test'").iloc[0]
        selected = tests.xs("selected", level="budget").iloc[0]
        assert table["epoch"] == best and table["log_px"] == selected["log_px"]
    # the test reads are of the whole test split, with the exact log p(x) of the oracle beside them
    points = result.per_point.query("guide == 'normal' and seed == 0 and split == 'test'")
    assert len(points) == len(data.load("linear-gaussian").test)


def test_differences_are_paired_over_seeds_against_the_normal_encoder(study):
    _, result = study
    d = result.differences.query("split == 'test' and budget == 'selected'").iloc[0]
    tests = result.tests.query("budget == 'selected'").pivot(index="seed", columns="guide", values="log_px")
    paired = tests["meanfield"] - tests["normal"]
    assert d["guide"] == "meanfield" and d["seeds"] == 2 and math.isclose(d["mean"], paired.mean())
    half = 12.706204736174707 * paired.std(ddof=1) / math.sqrt(2)  # Student-t, 1 degree of freedom
    assert math.isclose(d["high"] - d["mean"], half, rel_tol=1e-6)
    assert set(result.differences["budget"]) == {"epochs", "seconds", "selected"}


def test_a_scrambled_test_split_changes_no_choice_only_test_columns(lg, study, tmp_path):
    """The protocol's proof: with other values in ds.test (same shape), every validation curve, selected epoch and
    budget choice is identical; only the columns read from test change."""
    out, result = study
    scrambled = data.Dataset(**{**vars(lg), "test": torch.randn_like(lg.test) * 3 + 1})
    other = compare.compare(scrambled, compare.Settings(**TINY, seeds=2), tmp_path / "s")
    pd.testing.assert_frame_equal(_no_clock(result.budget), _no_clock(other.budget))
    choice = ["guide", "seed", "budget", "value", "epoch", "validation_log_px", "reached"]
    pd.testing.assert_frame_equal(result.tests[choice], other.tests[choice])
    pd.testing.assert_frame_equal(result.histories.drop(columns=["test_loss", "seconds"]),
                                  other.histories.drop(columns=["test_loss", "seconds"]))
    assert not result.tests["log_px"].equals(other.tests["log_px"])  # the test reads did change
    assert not result.histories["test_loss"].equals(other.histories["test_loss"])
    train = result.table.query("split == 'train'").drop(columns="seconds").reset_index(drop=True)
    pd.testing.assert_frame_equal(train, other.table.query("split == 'train'").drop(columns="seconds")
                                  .reset_index(drop=True))


def test_each_seed_is_the_study_with_that_seed_alone_and_workers_change_nothing(lg, study, tmp_path):
    _, both = study
    alone = compare.compare(lg, compare.Settings(**TINY, seed=1), tmp_path / "one")
    pd.testing.assert_frame_equal(_no_clock(both.tests.query("seed == 1")), _no_clock(alone.tests))
    two = compare.compare(lg, compare.Settings(**TINY, seeds=2, workers=2), tmp_path / "two")
    pd.testing.assert_frame_equal(_no_clock(both.tests), _no_clock(two.tests))
    pd.testing.assert_frame_equal(_no_clock(both.budget), _no_clock(two.budget))


def test_the_measurements_and_test_reads_take_the_trainings_threads(lg, tmp_path, monkeypatch):
    """Beside another process of a shared study, torch's default threads (every core) stall the reads about 4x, and a
    one-point q* fit's timing 3-20x."""
    seen, measured, inferred = [], [], []
    budget_row, read_test_as_is = compare.budget_row, compare.read_test

    def read_test(*args):
        seen.append(torch.get_num_threads())
        return read_test_as_is(*args)

    def inference_seconds(*args):
        inferred.append(torch.get_num_threads())
        raise KeyboardInterrupt  # the point is made: stop the run here

    def recorded(*args):
        measured.append(torch.get_num_threads())
        return budget_row(*args)

    monkeypatch.setattr(compare, "read_test", read_test)
    monkeypatch.setattr(compare, "budget_row", recorded)
    monkeypatch.setattr(compare, "inference_seconds", inference_seconds)
    monkeypatch.setattr(compare, "training_threads", lambda *a: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            compare.compare(lg, compare.Settings(**{**TINY, "guides": ("normal",)}), tmp_path / "t")
    finally:
        after = torch.get_num_threads()
        torch.set_num_threads(before)
    assert seen == [1] and inferred == [1] and set(measured) == {1} and len(measured) == 5 and after == 2  # epochs 0-4


def test_early_stopping_after_patience_measurements_without_a_new_best(lg, tmp_path):
    s = compare.Settings(**{**TINY, "guides": ("normal",), "epochs": 30, "budget_epochs": list(range(1, 31)),
                            "test_epochs": [30], "lr": 0.3}, patience=2)
    result = compare.compare(lg, s, tmp_path / "p")
    curve = result.budget
    best = int(curve["log_px"].values.argmax())
    assert len(curve) - 1 - best == 2  # stopped two measurements after its best
    assert int(result.cost["epochs_trained"].iloc[0]) == curve["epoch"].max() < 30
    epochs30 = result.tests.query("budget == 'epochs'").iloc[0]
    assert not epochs30["reached"] and epochs30["epoch"] == curve["epoch"].iloc[best]


def test_a_killed_study_resumes_to_the_uninterrupted_result(lg, study, tmp_path, monkeypatch):
    out, whole = study
    s = compare.Settings(**TINY, seeds=2)
    calls, real = [], compare.budget_row

    def dies_at_the_ninth(*args, **kw):
        calls.append(1)
        if len(calls) == 9:  # the second training's epoch-3 measurement: its checkpoint is of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(compare, "budget_row", dies_at_the_ninth)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(lg, s, tmp_path / "k")
    monkeypatch.setattr(compare, "budget_row", real)
    runs = tmp_path / "k" / "runs"
    assert compare.finished(runs / "normal-seed0") and not compare.finished(runs / "normal-seed1")
    with pytest.raises(folders.FolderError, match="pass --resume to continue it"):
        compare.compare(lg, s, tmp_path / "k")
    resumed = compare.compare(lg, s, tmp_path / "k", resume=True)
    for name in ("tests", "budget", "table", "cost"):
        pd.testing.assert_frame_equal(_no_clock(getattr(whole, name)), _no_clock(getattr(resumed, name)))
    pd.testing.assert_frame_equal(whole.histories.drop(columns="seconds"), resumed.histories.drop(columns="seconds"))
    with pytest.raises(ValueError, match="has other settings"):
        compare.compare(lg, compare.Settings(**{**TINY, "n_eval": 11}, seeds=2), tmp_path / "k", resume=True)


def test_a_run_held_by_another_process_is_waited_for_and_not_trained_twice(lg, study, tmp_path):
    """Two processes share a study by run-folder locks: a run another holds is skipped, then waited for; when its
    holder lets go unfinished (it died), it is trained here."""
    out, whole = study
    s = compare.Settings(**TINY, seeds=2)
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "config.json").write_text(json.dumps(s.to_dict()))  # the study another process started
    folder = compare.run_folder(tmp_path / "h", "meanfield", 1)
    others = [compare.run_folder(tmp_path / "h", label, seed) for label in ("normal", "meanfield") for seed in (0, 1)
              if (label, seed) != ("meanfield", 1)]
    held, seen = threading.Event(), {}

    def other_process():
        """Holds the run until this process has finished every other one (so it must have skipped this one), then
        lets go unfinished, as a holder that died would."""
        with folders.writer(folder, "compare"):
            held.set()
            for _ in range(600):
                if all(compare.finished(f) for f in others):
                    break
                time.sleep(0.1)
            seen["others finished"] = all(compare.finished(f) for f in others)
            seen["trained while held"] = (folder / "checkpoint.pt").exists() or compare.finished(folder)

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(10)
    result = compare.compare(lg, s, tmp_path / "h", resume=True)  # joins it
    thread.join()
    assert seen == {"others finished": True, "trained while held": False}  # skipped while held, then waited for
    assert compare.finished(folder)  # and trained here once its holder let go
    pd.testing.assert_frame_equal(_no_clock(whole.tests), _no_clock(result.tests))


def test_the_result_files_alone_let_a_study_continue_elsewhere(lg, study, tmp_path, monkeypatch):
    """What a study commits (each run's small result files, no checkpoint) is taken as done by --resume."""
    import shutil

    out, whole = study
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "config.json", copy / "config.json")
    for run in (out / "runs").iterdir():
        (copy / "runs" / run.name).mkdir(parents=True)
        for name in compare.RUN_FILES.values():
            shutil.copy(run / name, copy / "runs" / run.name / name)
    def trains(*args, **kw):
        raise AssertionError("a run with its result files was trained again")

    monkeypatch.setattr(compare, "train_and_measure", trains)
    again = compare.compare(lg, compare.Settings(**TINY, seeds=2), copy, resume=True)
    pd.testing.assert_frame_equal(whole.tests.drop(columns="run", errors="ignore"),
                                  again.tests.drop(columns="run", errors="ignore"))
    assert not any((copy / "runs" / r.name / "checkpoint.pt").exists() for r in (out / "runs").iterdir())


@pytest.mark.parametrize("change, message", [
    ({"budget_epochs": [1, 3, 2]}, "budget_epochs must be increasing"),
    ({"test_epochs": [3, 5]}, "test_epochs .5. are not measured on validation"),
    ({"budget_seconds": [10.0, 1.0]}, "budget_seconds must be increasing"),
    ({"budget_points": 10 ** 6}, "is more than the validation split's"),
    ({"local_steps": (1, 1)}, "local_steps names 1 twice"),
])
def test_bad_budgets_are_refused_before_any_work(lg, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        compare.compare(lg, compare.Settings(**{**TINY, **change}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_selection_and_flattening_read_known_curves():
    """Made-up validation curves (no clock is read): the arithmetic of best-so-far, reached and flattened."""
    curve = pd.DataFrame({"epoch": [0, 1, 2, 4, 6], "seconds": [0.0, 1.0, 2.0, 4.0, 6.0],
                          "log_px": [-10.0, -5.0, -4.5, -4.0, -3.99]})
    chosen = budgets.choose(curve, test_epochs=[3, 6], budget_seconds=[2.5, 100.0]).set_index(["budget", "value"])
    assert chosen.loc[("epochs", 3.0), "epoch"] == 2 and chosen.loc[("epochs", 6.0), "epoch"] == 6
    assert chosen.loc[("seconds", 2.5), "epoch"] == 2 and not chosen.loc[("seconds", 100.0), "reached"]
    assert chosen.loc[("epochs", 3.0), "reached"] and chosen.xs("selected", level="budget")["epoch"].iloc[0] == 6
    assert budgets.flattened(curve) == {"rise_last_third": pytest.approx(0.01), "flattened": True}
    assert not budgets.flattened(curve.iloc[:4])["flattened"]  # from -5 at epoch 1... to -4.0 at epoch 4: rising
    falling = pd.DataFrame({"epoch": [0, 1, 2, 3], "log_px": [-9.0, -4.0, -4.2, -4.1]})
    assert budgets.stopped(falling, patience=2) and not budgets.stopped(falling, patience=3)
    assert not budgets.stopped(falling, patience=None)


def test_evaluate_at_the_selected_checkpoint_reads_what_the_study_read(study, lg, tmp_path):
    """The study's test read is measure.evaluate of the selected weights, seeded by the run's seed: done again from the
    run folder it gives the same numbers; `pyro-vae evaluate RUN --at selected` reads the same weights (other draws:
    within the Monte Carlo error)."""
    import shutil

    import pyro

    from pyro_vae import cli

    out, result = study
    theirs = result.tests.query("guide == 'normal' and seed == 0 and budget == 'selected'").iloc[0]
    run = load_run(out / "runs" / "normal-seed0", at="selected")
    pyro.set_rng_seed(0)
    summary, _ = measure.evaluate(run.model, run.guide, run.data, compare.Settings(**TINY), ("train", "test"),
                                  sizes={"train": TINY["n_eval"], "test": None})
    again = summary.set_index("split").loc["test"]
    for column in ("log_px", "elbo_q", "elbo_qstar_normal", "amortization_gap"):
        assert again[column] == pytest.approx(theirs[column], abs=1e-6), column
    copy = tmp_path / "normal-seed0"
    shutil.copytree(out / "runs" / "normal-seed0", copy)
    flags = ["--split", "test", "--n-eval", str(len(lg.test)), "--ll-samples", "50", "--elbo-samples", "10",
             "--qstar-steps", "20", "--families", "normal", "--no-progress"]
    assert cli.main(["evaluate", str(copy), "--at", "selected", *flags]) == 0
    mine = pd.read_csv(copy / "evaluation.csv").iloc[0]
    assert abs(mine["log_px"] - theirs["log_px"]) < 4 * math.hypot(mine["log_px_mc_se"], theirs["log_px_mc_se"]) + 0.01
