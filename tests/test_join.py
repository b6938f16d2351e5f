"""pyro_vae.join: arms tuned apart read as one comparison, checked on hand-made study folders whose paired
differences are known by hand (no training)."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pyro_vae import budgets, join, report
from pyro_vae.errors import InputError
from pyro_vae.settings import CompareSettings

SEEDS = (100, 101, 102)
#: test log p(x) per seed: (importance-weighted, AIS); the AIS values differ so that a join pairing the wrong column fails
TEST = {"normal": [(-23.0, -23.1), (-23.2, -23.25), (-23.1, -23.3)],
        "meanfield": [(-22.9, -23.3), (-23.0, -23.0), (-23.3, -23.35)],
        "mvn": [(-22.8, -22.9), (-23.1, -23.0), (-23.0, -23.2)]}


def _study(root, arm, guide, lr, **changed):
    """A finished compare study of one arm in ``root/compare-ARM``: config.json and the five tables join reads."""
    folder = root / f"compare-{arm}"
    (folder / "runs").mkdir(parents=True)
    settings = CompareSettings(guides=[guide], lr=lr, seeds=3, seed=100, epochs=30, budget_epochs=[10, 30],
                               test_epochs=[30], budget_seconds=[1.0], ais_steps=10).to_dict()
    settings.update(changed)
    (folder / "config.json").write_text(json.dumps(settings))
    tests, curve, results, cost, selection = [], [], [], [], []
    for seed, (iwae, ais) in zip(SEEDS, TEST[guide]):
        for epoch, seconds, value in ((0, 0.0, -40.0), (10, 0.5, iwae - 0.5), (30, 1.5, iwae)):
            curve.append({"guide": guide, "seed": seed, "epoch": epoch, "seconds": seconds, "log_px": value})
        for budget, value, epoch in (("epochs", 30, 30), ("seconds", 1.0, 10), ("selected", np.nan, 30)):
            shift = 0.0 if epoch == 30 else -0.5
            tests.append({"guide": guide, "seed": seed, "budget": budget, "value": value, "epoch": epoch,
                          "log_px": iwae + shift, "log_px_ais": ais + shift})
        results.append({"guide": guide, "seed": seed, "split": "test", "log_px": iwae})
        cost.append({"guide": guide, "seed": seed, "train_seconds": 1.5})
        selection.append({"guide": guide, "seed": seed, "selected_epoch": 30})
    for name, rows in (("test_at_budgets.csv", tests), ("budget.csv", curve), ("results.csv", results),
                       ("cost.csv", cost), ("selection.csv", selection)):
        pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder


@pytest.fixture
def two(tmp_path):
    return _study(tmp_path, "normal", "normal", 1e-3), _study(tmp_path, "meanfield", "meanfield", 6e-3, local_lr=0.2)


def _row(d, split, estimator, budget, value=None):
    rows = d[(d["split"] == split) & (d["estimator"] == estimator) & (d["budget"] == budget)]
    if value is not None:
        rows = rows[np.isclose(rows["value"], value)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_a_join_pairs_each_estimator_with_itself_over_the_shared_seeds(two, tmp_path):
    joined = join.join(two, out=tmp_path / "answer")
    d = joined.differences
    for estimator, column in (("iwae", 0), ("ais", 1)):
        per_seed = np.array([m[column] - n[column] for m, n in zip(TEST["meanfield"], TEST["normal"])])
        half = 4.302653 * per_seed.std(ddof=1) / np.sqrt(3)  # t quantile 0.975, 2 degrees of freedom
        for budget, value in (("selected", None), ("epochs", 30)):
            row = _row(d, "test", estimator, budget, value)
            assert row["guide"] == "meanfield" and row["seeds"] == 3
            assert row["mean"] == pytest.approx(per_seed.mean(), abs=1e-9)
            assert (row["low"], row["high"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half),
                                                              abs=1e-6)
    # validation: best-so-far of the curves at 1 s of training is the epoch-10 measurement (0.5 s)
    row = _row(d, "validation", "iwae", "seconds", 1.0)
    assert row["mean"] == pytest.approx(np.mean([m[0] - n[0] for m, n in zip(TEST["meanfield"], TEST["normal"])]))
    assert set(d["estimator"]) == {"iwae", "ais"} and set(d.loc[d["split"] == "validation", "estimator"]) == {"iwae"}
    # what was written is what was returned, and the arms' own settings are kept
    written = pd.read_csv(tmp_path / "answer" / "differences.csv")
    assert np.allclose(written["mean"], d["mean"])
    config = json.loads((tmp_path / "answer" / "config.json").read_text())
    assert config["arms"]["compare-meanfield"]["lr"] == 6e-3 and config["arms"]["compare-normal"]["lr"] == 1e-3
    assert {p.name for p in (tmp_path / "answer").iterdir()} >= {"differences.png", "differences_ais.png",
                                                                 "budget.png", "test_at_budgets.csv"}
    assert set(joined.tests["arm"]) == {"compare-normal", "compare-meanfield"}
    # the report renders either estimator
    ais_table = report.difference_table(d, estimator="ais")
    assert report.interval(_row(d, "test", "ais", "selected")) in ais_table
    assert report.interval(_row(d, "test", "iwae", "selected")) not in ais_table


def test_named_arms_pair_two_studies_of_the_same_guide(tmp_path):
    """A tuned T that came out 1 leaves two arms of the plain guide: named, each study's rows take its arm's name."""
    normal = _study(tmp_path, "normal", "normal", 1e-3)
    other = _study(tmp_path, "normal-T", "mvn", 2e-3, encoder_steps=[1])  # (its values: TEST["mvn"])
    for name in ("test_at_budgets.csv", "budget.csv", "results.csv", "cost.csv", "selection.csv"):
        table = pd.read_csv(other / name)
        table.assign(guide="normal").to_csv(other / name, index=False)
    with pytest.raises(InputError, match="the training 'normal' is in"):
        join.join([normal, other])
    joined = join.join({"normal": normal, "normal-T": other})
    d = joined.differences
    assert joined.settings["arms"]["normal-T"]["lr"] == 2e-3 and joined.settings["arms"]["normal"]["lr"] == 1e-3
    row = _row(d, "test", "iwae", "selected")
    assert row["guide"] == "normal-T"
    assert row["mean"] == pytest.approx(np.mean([m[0] - n[0] for m, n in zip(TEST["mvn"], TEST["normal"])]))
    assert "`normal` encoder, T tuned" in report.difference_table(d)


def test_a_table_from_before_the_estimator_column_reads_as_importance_weighted():
    old = pd.DataFrame([{"guide": "mvn", "split": "test", "budget": "selected", "value": np.nan, "mean": 0.1,
                         "sd": 0.1, "low": 0.0, "high": 0.2, "seeds": 3, "resolved": False}])
    assert len(budgets.of_estimator(old, "iwae")) == 1 and len(budgets.of_estimator(old, "ais")) == 0
    assert "+0.10" in report.difference_table(old)


@pytest.mark.parametrize("case, expected", [
    ("one study", r"join: give two or more"),
    ("measured differently", r"join: .* were measured differently \(ll_samples 5000 there, 100 here\)"),
    ("other seeds", r"join: .* were measured differently \(seed 100 there, 200 here\)"),
    ("label twice", r"join: the training 'normal' is in"),
    ("no baseline", r"join: no study has the baseline arm 'normal'"),
    ("not finished", r"join: the study in .* has no selection.csv"),
    ("not a study", r"join: .* holds no compare study"),
    ("out inside", r"join: --out .* is inside the study"),
    ("named arm of two trainings", r"join: the arm 'mvn' names .*, which holds 2 trainings"),
])
def test_a_join_that_cannot_pair_is_refused_in_one_line_before_anything_is_written(tmp_path, case, expected):
    normal = _study(tmp_path, "normal", "normal", 1e-3)
    studies, out = [normal], tmp_path / "answer"
    if case == "measured differently":
        studies.append(_study(tmp_path, "mvn", "mvn", 2e-3, ll_samples=100))
    elif case == "other seeds":
        studies.append(_study(tmp_path, "mvn", "mvn", 2e-3, seed=200))
    elif case == "label twice":
        studies.append(_study(tmp_path, "normal-lr", "normal", 2e-3))
    elif case == "no baseline":
        studies = [_study(tmp_path, "mvn", "mvn", 2e-3), _study(tmp_path, "meanfield", "meanfield", 6e-3)]
    elif case == "not finished":
        mvn = _study(tmp_path, "mvn", "mvn", 2e-3)
        (mvn / "selection.csv").unlink()
        studies.append(mvn)
    elif case == "not a study":
        (tmp_path / "empty").mkdir()
        studies.append(tmp_path / "empty")
    elif case == "out inside":
        studies.append(_study(tmp_path, "mvn", "mvn", 2e-3))
        out = normal / "answer"
    elif case == "named arm of two trainings":
        mvn = _study(tmp_path, "mvn", "mvn", 2e-3)
        selection = pd.read_csv(mvn / "selection.csv")
        pd.concat([selection, selection.assign(guide="mvn T=2")]).to_csv(mvn / "selection.csv", index=False)
        studies = {"normal": normal, "mvn": mvn}
    with pytest.raises(InputError, match=expected) as e:
        join.join(studies, out=out)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_the_command_line_joins_named_arms_and_writes_the_pairs(two, tmp_path, capsys):
    from pyro_vae import cli

    normal, meanfield = two
    out = tmp_path / "answer"
    assert cli.main(["join", f"normal={normal}", f"meanfield={meanfield}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(out / "differences.csv")
    row = _row(written, "test", "ais", "selected")
    assert row["guide"] == "meanfield" and f"{row['mean']:+.3f}" in printed and "(ais)" in printed
    assert json.loads((out / "config.json").read_text())["arms"]["meanfield"]["local_lr"] == 0.2
    # a second join into the same folder needs --overwrite, and then replaces it
    assert cli.main(["join", str(normal), str(meanfield), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["join", str(normal), str(meanfield), "--out", str(out), "--overwrite"]) == 0
    assert set(json.loads((out / "config.json").read_text())["arms"]) == {"compare-normal", "compare-meanfield"}


@pytest.mark.parametrize("given, expected", [
    (["normal={normal}", "{meanfield}"], r"has no arm name where the others have one"),
    (["normal={normal}", "normal={meanfield}"], r"the arm 'normal' is named twice"),
    (["={normal}", "meanfield={meanfield}"], r"is not ARM=FOLDER"),
    (["{normal}", "{normal}/nothing"], r"holds no compare study"),
])
def test_the_command_line_refuses_a_bad_join_in_one_line(two, tmp_path, capsys, given, expected):
    from pyro_vae import cli

    normal, meanfield = two
    args = [g.format(normal=normal, meanfield=meanfield) for g in given]
    assert cli.main(["join", *args, "--out", str(tmp_path / "answer")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(expected, err), err
    assert not (tmp_path / "answer").exists()


def test_printed_differences_name_their_estimator_when_a_study_has_two():
    from pyro_vae import cli

    d = pd.DataFrame({"guide": "mvn", "split": "test", "budget": "selected", "value": np.nan, "mean": [0.07, 0.06],
                      "low": 0.04, "high": 0.1, "seeds": 10, "resolved": True, "estimator": ["iwae", "ais"]})
    lines = cli.format_differences(d).splitlines()
    assert lines[0].split()[:3] == ["guide", "estimator", "at"]
    assert "iwae" in lines[1] and "+0.070" in lines[1] and "ais" in lines[2] and "+0.060" in lines[2]
    assert "estimator" not in cli.format_differences(d.iloc[:1])  # one estimator: no column to tell them apart
