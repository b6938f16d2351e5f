"""The command line, run as a user would run it."""

import json
import subprocess
import sys

import pandas as pd
import pytest

import guides
from pyro_vae import cli
from pyro_vae.train import CHECKPOINT


def test_guides_lists_the_registry(capsys):
    assert cli.main(["guides"]) == 0
    assert capsys.readouterr().out.split() == guides.names()


def test_help_shows_every_flag_with_its_default():
    out = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--data", "--guide", "--z-dim", "--epochs", "--out", "--resume", "--binarize", "--lr"):
        assert flag in out
    assert "(default: digits)" in out and "(default: 300)" in out


def test_train_writes_its_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--guide", "mvn", "--z-dim", "4", "--hidden", "32", "--epochs", "2", "--out", str(out),
            "--no-progress"]
    assert cli.main(args) == 0
    for name in ("config.json", "history.csv", CHECKPOINT, "learning_curves.png"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["guide"] == "mvn"
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--resume", "--no-progress"]) == 0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert "test -ELBO" in capsys.readouterr().out


def test_errors_are_one_clear_line(tmp_path, capsys):
    code = cli.main(["train", "--data", "mnist", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_unknown_guide_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--guide", "flow"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["digits", "linear-gaussian"])
def test_compare_quick(tmp_path, capsys, dataset):
    out = tmp_path / "cmp"
    z = ["--z-dim", "2"] if dataset == "linear-gaussian" else []
    assert cli.main(["compare", "--quick", "--data", dataset, "--out", str(out), "--no-progress", *z]) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table["guide"]) == {"normal", "mvn", "meanfield"} and set(table["split"]) == {"train", "test"}
    for name in ("cost.csv", "per_point.csv", "history.csv", "learning_curves.png", "gaps.png", "latents.png"):
        assert (out / name).exists(), name
    assert (out / "images.png").exists() == (dataset == "digits")
    printed = capsys.readouterr().out
    assert "amortization_gap" in printed
    if dataset == "linear-gaussian":
        assert "log_px_exact" in printed
        assert (table["log_px"] - table["log_px_exact"]).abs().max() < 0.1
