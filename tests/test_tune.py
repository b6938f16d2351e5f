"""pyro-vae tune: Optuna studies of one arm, scored on the validation split only, stored in SQLite, resumable."""

import json
import math

import pandas as pd
import pytest
import torch

from pyro_vae import cli, compare, objectives, settings, tune
from pyro_vae.optim import LazyAdam
from pyro_vae.train import fit

TINY = dict(z_dim=2, hidden=[8], epochs=1, budget_points=5, budget_ll_samples=20, elbo_samples=5, qstar_steps=2,
            progress=False)


def _settings(tmp_path, name="study", **kw):
    return settings.TuneSettings(**{**TINY, "guide": "meanfield", "tune_steps": True, "trials": 3,
                                    "out": str(tmp_path / name), **kw})


def test_a_trial_is_scored_by_validation_log_px_of_the_decoder_its_settings_train(digits, tmp_path, monkeypatch):
    s = _settings(tmp_path)
    seen = []
    real = tune.budget_row
    monkeypatch.setattr(tune, "budget_row", lambda model, guide, x, c: seen.append(x) or real(model, guide, x, c))
    params = {"lr": 3e-3, "local_lr": 0.05, "local_steps": 2}
    value = tune.score(digits, s, params)
    assert torch.equal(seen[0], digits.validation[:5])  # validation points, never test ones
    # the same training and measurement by hand: the trial's settings are the ones applied
    c = settings.CompareSettings(**{k: v for k, v in TINY.items() if k != "progress"}, lr=3e-3, local_lr=0.05)
    model, guide = compare.build_training(digits, c, "meanfield", 0)
    fit(model, guide, digits, epochs=1, progress=False, local_steps=2, seed=0,
        optim=LazyAdam({"lr": 3e-3}, sparse_args={"lr": 0.05}), loss=objectives.for_training("trace", model, guide))
    assert value == real(model, guide, digits.validation[:5], c)["log_px"]
    assert value != tune.score(digits, s, {**params, "local_lr": 0.2})


def test_a_study_is_stored_reproducible_and_resumable(digits, tmp_path):
    s = _settings(tmp_path)
    study = tune.tune(digits, s)
    out = tmp_path / "study"
    assert (out / "optuna.db").is_file() and tune.storage_url(s) == f"sqlite:///{out.resolve() / 'optuna.db'}"
    first = tune.trials_table(study)
    assert len(first) == 3 and (first["state"] == "COMPLETE").all()
    assert set(first.columns) >= {"number", "value", "lr", "local_lr", "local_steps", "best_so_far"}
    assert first["local_steps"].isin(tune.SPACE["local_steps"]).all() and first["lr"].between(1e-4, 3e-2).all()
    again = tune.trials_table(tune.tune(digits, _settings(tmp_path, "again")))  # same seed, another folder
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))
    more = tune.trials_table(tune.tune(digits, s.replace(trials=5)))  # resumed: two more, the first kept
    assert len(more) == 5
    pd.testing.assert_frame_equal(more.iloc[:3].drop(columns=["seconds", "best_so_far"]),
                                  first.drop(columns=["seconds", "best_so_far"]))
    assert not more.iloc[3:][["lr"]].isin(first["lr"].tolist()).any().any()  # new draws, not the first ones again
    written = tune.write(tune.tune(digits, s.replace(trials=5)), s, out)  # nothing left to run
    best = json.loads((out / "best.json").read_text())
    row = more.loc[more["value"].idxmax()]
    assert best["value"] == row["value"] and best["params"]["lr"] == row["lr"] and best["split"] == "validation"
    assert written == ["trials.csv", "best.json", "trials.png"]


def test_each_study_draws_its_own_trials_and_a_training_seed_changes_none(digits, tmp_path, monkeypatch):
    """The sampler is seeded apart from training: studies of other arms (names) draw other points, two training
    seeds of one study the same points; TPE models the results after a third of the trials, not after Optuna's 10."""
    monkeypatch.setattr(tune, "score", lambda ds, s, params, trial: -params["lr"])  # the draws, not the training
    lrs = {}
    for name, kw in {"meanfield": {}, "normal": {"guide": "normal"}, "seed 1": {"seed": 1}}.items():
        s = _settings(tmp_path, name.replace(" ", ""), trials=6, tune_steps=False, **kw)
        study = tune.tune(digits, s)
        lrs[name] = [t.params["lr"] for t in study.trials]
        assert study.sampler._n_startup_trials == tune.startup_trials(s) == 2
    assert lrs["meanfield"] == lrs["seed 1"]  # training seed 1, the same study: the same trial points
    assert lrs["meanfield"][0] != lrs["normal"][0]  # another arm, another study name: its own draws
    assert tune.sampler_seed(_settings(tmp_path)) != _settings(tmp_path).seed
    assert tune.sampler_seed(_settings(tmp_path, sampler_seed=7)) == 7


def test_a_trial_below_the_median_is_pruned_and_the_score_is_the_best_measurement(digits, tmp_path, monkeypatch):
    """Each measurement is reported to the pruner; a trial below the earlier trials' median at a measured epoch stops
    there (and counts among the trials), and a trial's score is its best measurement, not its last."""
    def validation(model, guide, x, c):  # a known curve: best near lr = 10**-2.5, falling after epoch 2
        epoch = len(seen.setdefault(c.lr, [])) + 1
        seen[c.lr].append(epoch)
        return {"log_px": -abs(math.log10(c.lr) + 2.5) - 0.1 * abs(epoch - 2)}
    seen = {}
    monkeypatch.setattr(tune, "budget_row", validation)
    s = _settings(tmp_path, trials=8, epochs=4, budget_epochs=[1, 2, 3], startup_trials=2, tune_steps=False)
    study = tune.tune(digits, s)
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and "PRUNED" in states and states[:2] == ["COMPLETE", "COMPLETE"], states
    for t in study.trials:
        lr = t.params["lr"]
        if t.state.name == "PRUNED":  # stopped where it fell below the median of the trials before it
            assert seen[lr] == list(range(1, t.user_attrs["pruned_at_epoch"] + 1)) and len(seen[lr]) < 4
        else:  # measured at 1, 2, 3 and the last epoch 4; scored at its best, epoch 2
            assert seen[lr] == [1, 2, 3, 4] and t.user_attrs["selected_epoch"] == 2
            assert t.value == pytest.approx(-abs(math.log10(lr) + 2.5))
            assert sorted(t.intermediate_values) == [1, 2, 3, 4]


def test_processes_share_a_study_through_a_storage_url(digits, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    tune.tune(digits, _settings(tmp_path, "a", trials=2, storage=url, study="shared"))
    study = tune.tune(digits, _settings(tmp_path, "b", trials=4, storage=url, study="shared", seed=1))
    assert len(study.trials) == 4 and not (tmp_path / "a" / "optuna.db").exists()


def test_the_command_line_tunes_resumes_and_refuses(tmp_path, capsys):
    flags = ["--z-dim", "2", "--hidden", "8", "--epochs", "1", "--budget-points", "5", "--budget-ll-samples", "20",
             "--elbo-samples", "5", "--qstar-steps", "2", "--no-progress"]
    out = tmp_path / "study"
    assert cli.main(["tune", "--guide", "normal", "--tune-steps", "--trials", "2", *flags, "--out", str(out)]) == 0
    assert "normal-T-digits-1ep: best of 2 trials, validation log p(x)" in capsys.readouterr().out
    assert cli.main(["tune", "--trials", "2", *flags, "--out", str(out)]) == 2
    assert "holds a study of `pyro-vae tune`" in capsys.readouterr().err
    assert cli.main(["tune", "--trials", "3", "--no-progress", "--resume", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 3
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "storage": f"sqlite:///{tmp_path / 'elsewhere.db'}"}))
    assert cli.main(["tune", "--trials", "4", "--resume", "--out", str(out)]) == 2
    assert "outside its folder: give --storage" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere.db").exists()
    assert cli.main(["tune", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "holds no study to continue" in capsys.readouterr().err
    assert cli.main(["tune", *flags, "--budget-points", "1000", "--out", str(tmp_path / "big")]) == 2
    assert "the validation split has 288" in capsys.readouterr().err and not (tmp_path / "big").exists()
