"""pyro-vae tune: Optuna studies of one arm, scored on the validation split only, stored in SQLite, resumable."""

import json
import math
import re
import shutil
import socket
import time

import pandas as pd
import pytest
import torch

from pyro_vae import cli, compare, objectives, settings, storage, tune
from pyro_vae.errors import InputError
from pyro_vae.optim import LazyAdam
from pyro_vae.train import fit

TINY = dict(z_dim=2, hidden=[8], epochs=1, budget_points=5, budget_ll_samples=20, elbo_samples=5, qstar_steps=2,
            progress=False, rescore_top=0)


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
    c = settings.CompareSettings(**{k: v for k, v in TINY.items() if k not in ("progress", "rescore_top")}, lr=3e-3, local_lr=0.05)
    model, guide = compare.build_training(digits, c, "meanfield", 0)
    fit(model, guide, digits, epochs=1, progress=False, local_steps=2, seed=0,
        optim=LazyAdam({"lr": 3e-3}, sparse_args={"lr": 0.05}), loss=objectives.for_training("trace", model, guide))
    assert value == real(model, guide, digits.validation[:5], c)["log_px"]
    assert value != tune.score(digits, s, {**params, "local_lr": 0.2})


def test_by_default_a_trial_is_scored_on_the_whole_validation_split(digits, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tune, "budget_row", lambda model, guide, x, c: seen.append(x) or {"log_px": -1.0})
    tune.score(digits, _settings(tmp_path, budget_points=None), {"lr": 1e-3, "local_lr": 1e-2})
    assert settings.TuneSettings().budget_points is None and torch.equal(seen[0], digits.validation)


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


def test_a_trial_whose_loss_diverges_is_pruned_and_counted_so_the_study_runs_all_its_trials(digits, tmp_path,
                                                                                            monkeypatch):
    """A rate that sends the loss to NaN (fit raises FloatingPointError) is a result about the space: the trial is
    pruned, marked diverged in trials.csv, and counts among the trials, so a study asked for 6 runs 6. (Counted as
    failed, such trials used up the mnist-5k mvn tuning's 10: it stopped with 3 complete.)"""
    def score(ds, s, params, trial):
        if params["lr"] > 1e-3:
            raise FloatingPointError("svi.step returned nan at epoch 1: lower the learning rate")
        return -params["lr"]
    monkeypatch.setattr(tune, "score", score)
    s = _settings(tmp_path, trials=6, tune_steps=False, guide="normal")
    study = tune.tune(digits, s)
    table = tune.trials_table(study)
    assert len(tune.finished(study)) == len(table) == 6 and "FAIL" not in set(table["state"])
    high = table["lr"] > 1e-3
    assert high.any() and (~high).any()  # both kinds drawn (the space is [1e-4, 3e-2], log-uniform)
    assert table["diverged"].tolist() == high.tolist()
    assert set(table.loc[high, "state"]) == {"PRUNED"} and set(table.loc[~high, "state"]) == {"COMPLETE"}


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


def test_the_best_trials_are_rescored_on_more_seeds_and_the_best_mean_is_chosen(digits, tmp_path, monkeypatch):
    """On the study's seed a larger lr scores higher, on every other seed lower: of the 3 best trials on seed 0 the
    one with the smallest lr has the best mean over 3 seeds, and is chosen (Optuna's best on seed 0 alone is not).
    Each re-score is kept in the study: the tuning run again scores nothing again."""
    calls = []

    def fake(ds, s, params, trial=None):
        calls.append((s.seed, params["lr"]))
        return params["lr"] if s.seed == 0 else -params["lr"]
    monkeypatch.setattr(tune, "score", fake)
    s = _settings(tmp_path, trials=6, tune_steps=False, rescore_top=3, rescore_seeds=2)
    study = tune.tune(digits, s)
    top = sorted(study.trials, key=lambda t: -t.value)[:3]
    assert sorted(calls[6:]) == sorted((seed, t.params["lr"]) for t in top for seed in (1, 2))
    table = tune.rescored(study, s)
    assert table["trial"].tolist() == [top[2].number, top[1].number, top[0].number]
    assert table["seeds"].tolist() == [3, 3, 3]
    lr = top[2].params["lr"]
    assert table["mean"].iloc[0] == pytest.approx((lr - 2 * lr) / 3) and table["seed_1"].iloc[0] == -lr
    best = tune.best(study, s)
    assert best["trial"] == top[2].number and best["params"] == top[2].params and best["value"] == table["mean"][0]
    assert best["single_seed_best"] == {"trial": top[0].number, "value": top[0].value}
    assert len(best["rescored"]) == 3
    tune.tune(digits, s)
    assert len(calls) == 12  # nothing scored again
    assert tune.best(study, s.replace(rescore_top=0))["trial"] == top[0].number


def test_a_seconds_cap_stops_a_trial_inside_it_and_measures_it_there(digits, tmp_path, monkeypatch):
    """Epochs of 0.2, 0.5 and 0.2 s against a cap of 1 s: training stops after epoch 3 (a fourth as short as the
    shortest would pass the cap; after epoch 2 one as long as the last would have, but not the shortest), which is
    measured although --budget-epochs does not name it; a first epoch longer than the cap prunes the trial; an
    epoch longer than the shortest that passes the cap stops the trial there, scored by what was measured inside."""
    measured, stopped = [], []

    def fake_fit(model, guide, ds, epochs, on_epoch, **kw):
        for epoch in range(1, epochs + 1):
            if on_epoch(epoch, {"seconds": seconds[min(epoch, len(seconds)) - 1]}):
                stopped.append(epoch)
                return

    def validation(model, guide, x, c):
        measured.append(len(measured) + 1)
        return {"log_px": -len(measured)}
    monkeypatch.setattr(tune, "fit", fake_fit)
    monkeypatch.setattr(tune, "budget_row", validation)
    seconds = [0.2, 0.5, 0.2]
    s = _settings(tmp_path, trials=1, epochs=50, budget_epochs=[2, 10], seconds_cap=1.0, tune_steps=False)
    study = tune.tune(digits, s)
    trial = study.trials[0]
    assert stopped == [3] and sorted(trial.intermediate_values) == [2, 3]
    assert trial.user_attrs["seconds_trained"] == pytest.approx(0.9) and trial.user_attrs["selected_epoch"] == 2
    seconds = [2.0]  # a first epoch past the cap: nothing inside it
    study = tune.tune(digits, s.replace(trials=2))
    assert study.trials[1].state.name == "PRUNED" and study.trials[1].user_attrs["over_cap_at_epoch"] == 1
    seconds = [0.2, 0.2, 0.2, 0.2, 0.5]  # epoch 5, longer than the shortest, passes the cap: stopped, unmeasured
    stopped.clear()
    study = tune.tune(digits, s.replace(trials=3))
    third = study.trials[2]
    assert stopped == [5] and third.state.name == "COMPLETE" and sorted(third.intermediate_values) == [2]
    assert third.value == third.intermediate_values[2] and third.user_attrs["seconds_trained"] == pytest.approx(1.3)
    seconds = [2.0]
    assert tune.score(digits, s, {"lr": 1e-3, "local_lr": 1e-2}) == -math.inf  # without a trial: nothing to prune


def test_processes_share_a_study_through_a_storage_url(digits, tmp_path):
    """Processes with the same settings share a study; one with settings that change what a trial measures (here
    the training seed) is refused under the same name, and by default gets a study of its own."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    tune.tune(digits, _settings(tmp_path, "a", trials=2, storage=url, study="shared"))
    study = tune.tune(digits, _settings(tmp_path, "b", trials=4, storage=url, study="shared", sampler_seed=3))
    assert len(study.trials) == 4 and not (tmp_path / "a" / "optuna.db").exists()
    assert study.user_attrs[tune.SETTINGS_ATTR] == tune.measured_settings(_settings(tmp_path, "c"))
    with pytest.raises(InputError, match=r"the study shared in \S+ was made with other settings \(seed 0, not 1\)"):
        tune.tune(digits, _settings(tmp_path, "c", trials=4, storage=url, study="shared", seed=1))
    names = {tune.study_name(_settings(tmp_path, "d", storage=url, **kw)) for kw in ({}, {"seed": 1}, {"z_dim": 3})}
    assert len(names) == 3 and all(n.startswith("meanfield-T-digits-1ep-") for n in names)


def test_the_command_line_tunes_resumes_and_refuses(tmp_path, capsys):
    flags = ["--z-dim", "2", "--hidden", "8", "--epochs", "1", "--budget-points", "5", "--budget-ll-samples", "20",
             "--elbo-samples", "5", "--qstar-steps", "2", "--no-progress"]
    out = tmp_path / "study"
    assert cli.main(["tune", "--guide", "normal", "--tune-steps", "--trials", "2", *flags, "--out", str(out)]) == 0
    assert re.match(r"normal-T-digits-1ep-[0-9a-f]{8}: best of 2 trials, validation log p\(x\)",
                    capsys.readouterr().out)
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


# issue 38: a tuning's storage and study, as a careless or hostile user gives them

TUNE = ["--z-dim", "2", "--hidden", "8", "--epochs", "1", "--budget-points", "5", "--budget-ll-samples", "20",
        "--elbo-samples", "5", "--qstar-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Two tiny studies of one trial: ``study`` in its own optuna.db, and ``shared-study`` as study ``s`` in
    ``shared.db`` beside it."""
    root = tmp_path_factory.mktemp("tuned")
    assert cli.main(["tune", "--guide", "normal", "--trials", "1", *TUNE, "--out", str(root / "study")]) == 0
    assert cli.main(["tune", "--guide", "normal", "--trials", "1", *TUNE, "--storage", f"sqlite:///{root}/shared.db",
                     "--study", "s", "--out", str(root / "shared-study")]) == 0
    return root


def _plant_link(t):
    db = t / "study" / "optuna.db"
    db.rename(t / "outside.db")
    db.symlink_to(t / "outside.db")
    return ["tune", "--resume", "--trials", "2", "--out", t / "study"]


def _cut(t, keep):
    db = t / "study" / "optuna.db"
    data = db.read_bytes()
    db.write_bytes(keep(data))
    return ["tune", "--resume", "--trials", "2", "--out", t / "study"]


def _config(t, **values):
    (t / "c.json").write_text(json.dumps(values))
    return ["tune", "--resume", "--config", t / "c.json", "--out", t / "study"]


TUNE_CASES = [
    # 1: a database planted outside the folder
    ("optuna.db a symlink out of the folder", _plant_link, r"tune: \S+optuna\.db is a symbolic link \(to \S+outside"),
    ("optuna.db-journal a symlink out of the folder",
     lambda t: ((t / "study" / "optuna.db-journal").symlink_to(t / "outside.db"),
                ["tune", "--resume", "--trials", "2", "--out", t / "study"])[1],
     r"tune: \S+optuna\.db-journal is a symbolic link"),
    # 2: one name, other settings
    ("--study-name of a study with other settings",
     lambda t: ["tune", "--guide", "normal", "--trials", "1", *TUNE, "--z-dim", "3", "--storage",
                f"sqlite:///{t}/shared.db", "--study-name", "s", "--out", t / "new"],
     r"tune: the study s in \S+shared\.db was made with other settings \(z_dim 2, not 3\)"),
    ("--study of a study with other settings (the old flag)",
     lambda t: ["tune", "--guide", "normal", "--trials", "1", *TUNE, "--seed", "1", "--storage",
                f"sqlite:///{t}/shared.db", "--study", "s", "--out", t / "new"],
     r"tune: the study s in \S+ was made with other settings \(seed 0, not 1\)"),
    # 3: --resume never makes a database or a study
    ("--resume --storage of a database that does not exist",
     lambda t: ["tune", "--resume", "--storage", f"sqlite:///{t}/missing.db", "--out", t / "study"],
     r"tune --resume: there is no database at \S+missing\.db"),
    ("--resume --storage relative: the folder's, and not there",
     lambda t: ["tune", "--resume", "--storage", "sqlite:///shared.db", "--out", t / "study"],
     r"tune --resume: there is no database at \S+study/shared\.db"),
    ("--resume --storage of a database without the study",
     lambda t: ["tune", "--resume", "--storage", f"sqlite:///{t}/shared.db", "--out", t / "study"],
     r"tune --resume: sqlite:///\S+shared\.db holds no study normal-digits-1ep-[0-9a-f]{8} \(--resume never makes"),
    ("--resume of a folder whose optuna.db is gone",
     lambda t: ((t / "study" / "optuna.db").unlink(), ["tune", "--resume", "--out", t / "study"])[1],
     r"tune --resume: there is no database at \S+optuna\.db \(the folder's own"),
    ("--resume --study-name of another study",
     lambda t: ["tune", "--resume", "--study-name", "other", "--out", t / "study"],
     r"tune --resume: the study in \S+ was made with other settings, and --study 'other' \(made: None\)"),
    # 4: a storage URL checked before anything is written, its password never shown
    ("--storage not a URL", lambda t: ["tune", *TUNE, "--storage", "not a url", "--out", t / "new"],
     r"tune --storage 'not a url' is not a database URL"),
    ("--storage of an unknown database", lambda t: ["tune", *TUNE, "--storage", "nodb://x/y", "--out", t / "new"],
     r"tune --storage nodb://x/y: no database 'nodb' is known"),
    ("--storage in a folder that does not exist",
     lambda t: ["tune", *TUNE, "--storage", f"sqlite:///{t}/nowhere/x.db", "--out", t / "new"],
     r"tune --storage \S+: the folder \S+nowhere does not exist"),
    ("--storage relative, in a folder that does not exist",
     lambda t: ["tune", *TUNE, "--storage", "sqlite:///nowhere/x.db", "--out", t / "new"],
     r"tune --storage sqlite:///nowhere/x\.db: the folder \S+new/nowhere does not exist: .*relative to --out"),
    ("--storage in memory", lambda t: ["tune", *TUNE, "--storage", "sqlite://", "--out", t / "new"],
     r"tune --storage sqlite://: give an SQLite file"),
    ("--storage whose driver is not installed (password hidden)",
     lambda t: ["tune", *TUNE, "--storage", "postgresql+pg8000://me:s3cret@localhost/db", "--out", t / "new"],
     r"tune --storage postgresql\+pg8000://me:\*\*\*@localhost/db needs the database driver pg8000"),
    ("--storage not a URL, a password in it",
     lambda t: ["tune", *TUNE, "--storage", "pg//me:s3cret@host/db", "--out", t / "new"],
     r"tune --storage 'pg//me:\*\*\*@host/db' is not a database URL"),
    ("--storage of a file that is not a database",
     lambda t: ((t / "junk.db").write_bytes(b"not sqlite" * 100),
                ["tune", *TUNE, "--storage", f"sqlite:///{t}/junk.db", "--out", t / "new"])[1],
     r"tune: the study's database \S+junk\.db is damaged \(file is not a database\)"),
    # 5: a damaged database, with nothing rewritten
    ("--resume of a truncated optuna.db", lambda t: _cut(t, lambda d: d[:len(d) // 2]),
     r"tune: the study's database \S+optuna\.db is damaged \(database disk image is malformed\)"),
    ("--resume of an optuna.db of noise", lambda t: _cut(t, lambda d: bytes(range(256)) * 20),
     r"tune: the study's database \S+optuna\.db is damaged \(file is not a database\)"),
    ("--resume of an empty optuna.db", lambda t: _cut(t, lambda d: b""),
     r"tune --resume: \S+optuna\.db holds no Optuna study that can be read"),
    # 7: flags --resume would ignore
    ("--resume --z-dim 5 --guide mvn",
     lambda t: ["tune", "--resume", "--z-dim", "5", "--guide", "mvn", "--out", t / "study"],
     r"tune --resume: the study in \S+ was made with other settings, and --z-dim 5 \(made: 2\), --guide 'mvn' "
     r"\(made: 'normal'\) would change it"),
    ("--resume --tune-steps", lambda t: ["tune", "--resume", "--tune-steps", "--out", t / "study"],
     r"tune --resume: the study in \S+ was made with other settings, and --tune-steps True \(made: False\)"),
    ("--resume --config of other settings", lambda t: _config(t, epochs=3, trials=2),
     r"tune --resume: the study in \S+ was made with other settings, and --epochs 3 \(made: 1\)"),
]


@pytest.mark.parametrize("setup, expected", [c[1:] for c in TUNE_CASES], ids=[c[0] for c in TUNE_CASES])
def test_tune_refusals(tuned, tmp_path, capsys, setup, expected):
    """Each case: exit status 2, one line naming the problem and the fix (its first words checked), no traceback,
    no file under tmp_path changed (an outside database included) and no folder made."""
    from tests.test_refusals import refused, snapshot

    for name in ("study", "shared-study", "shared.db"):
        (shutil.copytree if (tuned / name).is_dir() else shutil.copy)(tuned / name, tmp_path / name)
    argv = [str(a) for a in setup(tmp_path)]
    before = snapshot(tmp_path)
    err = refused(argv, expected, capsys)
    assert "s3cret" not in err and "Traceback" not in err
    assert snapshot(tmp_path) == before, "CHANGED: a refused command changed a file"
    assert not (tmp_path / "new").exists(), "CHANGED: it made a folder"


def test_a_relative_sqlite_url_is_the_study_folders_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """`--storage sqlite:///rel.db` names DIR/rel.db, so that the URL config.json keeps, given again to --resume from
    another folder, finds the study: no new database, no trial 0 trained again."""
    out, here, there = tmp_path / "study", tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    monkeypatch.chdir(here)
    argv = ["tune", "--guide", "normal", "--trials", "1", *TUNE, "--storage", "sqlite:///rel.db", "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "rel.db").is_file() and not (here / "rel.db").exists()
    capsys.readouterr()
    monkeypatch.chdir(there)
    assert cli.main(["tune", "--resume", "--trials", "2", "--no-progress", "--storage", "sqlite:///rel.db",
                     "--out", str(out)]) == 0
    assert "best of 2 trials" in capsys.readouterr().out and not (there / "rel.db").exists()
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == [0, 1] and (trials["state"] == "COMPLETE").all()
    assert json.loads((out / "best.json").read_text())["trials"] == 2


def test_a_trial_left_running_by_a_dead_process_is_failed_and_not_counted(tmp_path, capsys, monkeypatch):
    """A trial whose process was SIGKILLed stays RUNNING in the storage. `--resume` of its folder (whose writer lock
    says no process of the folder runs) marks it FAIL, and so does any process once its heartbeat is older than the
    grace period (a study shared with other folders); neither is counted in "best of N trials"."""
    import optuna

    out = tmp_path / "study"
    assert cli.main(["tune", "--guide", "normal", "--trials", "1", *TUNE, "--out", str(out)]) == 0
    capsys.readouterr()
    db = optuna.storages.RDBStorage(f"sqlite:///{out}/optuna.db")
    study = optuna.load_study(study_name=optuna.get_all_study_names(db)[0], storage=db)
    dead = study.ask()  # as a killed process leaves it: RUNNING, with its folder
    dead.set_user_attr(tune.PROCESS_ATTR, {"host": socket.gethostname(), "pid": 1, "folder": str(out.resolve())})
    assert cli.main(["tune", "--resume", "--trials", "1", "--no-progress", "--out", str(out)]) == 0
    assert "best of 1 trials" in capsys.readouterr().out
    assert study.trials[dead.number].state.name == "FAIL"
    assert json.loads((out / "best.json").read_text())["trials"] == 1
    # a shared storage: a trial of another folder (or machine) whose heartbeat stopped
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setattr(storage, "GRACE", 1)
    assert cli.main(["tune", "--guide", "normal", "--trials", "1", *TUNE, "--storage", url,
                     "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    shared = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    elsewhere = shared.ask()
    elsewhere.set_user_attr(tune.PROCESS_ATTR, {"host": "another", "pid": 1, "folder": "/elsewhere"})
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.RDBStorage(url, heartbeat_interval=1).record_heartbeat(elsewhere._trial_id)
    assert shared.trials[elsewhere.number].state.name == "RUNNING"
    time.sleep(2.5)
    assert cli.main(["tune", "--resume", "--trials", "1", "--no-progress", "--storage", url,
                     "--out", str(tmp_path / "a")]) == 0
    assert "best of 1 trials" in capsys.readouterr().out
    assert shared.trials[elsewhere.number].state.name == "FAIL"


def test_a_study_of_an_older_pyro_vae_is_resumed_under_its_name_and_gets_its_settings(tmp_path, capsys):
    """Before its settings named a study, its default name was GUIDE[-T]-DATA-Eep, and it kept no settings: --resume
    of its folder finds it by that name, records its settings, and adds trials to it (not to a new study)."""
    import optuna

    out = tmp_path / "old"
    old = settings.TuneSettings(guide="normal", z_dim=2, hidden=[8], epochs=1, budget_points=5, budget_ll_samples=20,
                                elbo_samples=5, qstar_steps=2, trials=1, progress=False, out=str(out))
    out.mkdir()
    (out / "config.json").write_text(json.dumps(old.to_dict()))
    study = optuna.create_study(study_name="normal-digits-1ep", storage=tune.storage_url(old), direction="maximize")
    study.enqueue_trial({"lr": 1e-3})
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 3e-2, log=True) and -50.0, n_trials=1)
    assert cli.main(["tune", "--resume", "--trials", "2", "--no-progress", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("normal-digits-1ep: best of 2 trials")
    assert optuna.get_all_study_names(tune.storage_url(old)) == ["normal-digits-1ep"]
    assert study.user_attrs[tune.SETTINGS_ATTR] == tune.measured_settings(old)


def test_tunings_with_other_settings_sharing_a_storage_are_other_studies(tmp_path, capsys):
    """Two `tune` commands sharing --storage, with other settings and no --study-name: each its own study, each
    best.json its own best trial (the second once reported the first's)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for out, z in (("a", "2"), ("b", "3")):
        assert cli.main(["tune", "--guide", "normal", "--trials", "1", *TUNE, "--z-dim", z, "--storage", url,
                         "--out", str(tmp_path / out)]) == 0
    a, b = (json.loads((tmp_path / out / "best.json").read_text()) for out in ("a", "b"))
    assert a["study"] != b["study"] and a["trials"] == b["trials"] == 1 and a["value"] != b["value"]
    assert "best of 1 trials" in capsys.readouterr().out.splitlines()[-1]
