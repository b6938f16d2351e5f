"""The command line, run as a user would run it."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import guides
from pyro_vae import cli
from pyro_vae.train import CHECKPOINT, PREVIOUS_CHECKPOINT, load_checkpoint

SMALL = ["--z-dim", "4", "--hidden", "32", "--no-progress"]


def _run(*args):
    """``pyro-vae ARGS`` in a fresh process: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_guides_lists_the_registry(capsys):
    assert cli.main(["guides"]) == 0
    assert capsys.readouterr().out.split() == guides.names()


def test_help_shows_every_flag_with_its_default_and_what_each_seed_drives():
    code, out, _ = _run("train", "--help")
    assert code == 0
    for flag in ("--data", "--guide", "--z-dim", "--epochs", "--out", "--resume", "--binarize", "--lr", "--device",
                 "--data-seed", "--no-download"):
        assert flag in out
    assert "(default: digits)" in out and "(default: 300)" in out
    flat = " ".join(out.split())
    for role in ("initial weights", "order of the mini-batches", "dynamic binarization", "train/test split",
                 "static binarization"):
        assert role in flat, role


def test_the_same_seed_gives_the_same_history_in_two_processes(tmp_path):
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        code, _, err = _run("train", "--epochs", "2", "--seed", seed, "--out", str(tmp_path / name), *SMALL)
        assert code == 0, err
        runs[name] = pd.read_csv(tmp_path / name / "history.csv")
    losses = ["epoch", "train_loss", "test_loss"]  # "seconds" is wall time
    pd.testing.assert_frame_equal(runs["a"][losses], runs["b"][losses], check_exact=True)
    assert not runs["a"]["train_loss"].equals(runs["c"]["train_loss"])
    weights = [load_checkpoint(tmp_path / name / CHECKPOINT)["model"] for name in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_writes_its_outputs_and_resume_continues_the_run(tmp_path, capsys):
    out, straight = tmp_path / "run", tmp_path / "straight"
    args = ["train", "--guide", "mvn", "--epochs", "2", "--out", str(out), *SMALL]
    assert cli.main(args) == 0
    for name in ("config.json", "history.csv", CHECKPOINT, "learning_curves.png"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["guide"] == "mvn"
    first = pd.read_csv(out / "history.csv")
    # the saved settings are kept on resume: flags that would change them are refused, not ignored
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--resume", "--no-progress", "--z-dim", "6",
                     "--guide", "normal"]) == 2
    assert "--z-dim 6 (trained: 4), --guide 'normal' (trained: 'mvn') would change it" in capsys.readouterr().err
    assert pd.read_csv(out / "history.csv").equals(first)
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--resume", "--no-progress", "--z-dim", "4"]) == 0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    # epochs 1-2 were restored, not trained again: even their wall-clock seconds are the first run's
    pd.testing.assert_frame_equal(history.iloc[:2], first, check_exact=True)
    assert "test -ELBO" in capsys.readouterr().out
    # and the weights continue exactly: the same as three epochs straight
    assert cli.main(["train", "--guide", "mvn", "--epochs", "3", "--out", str(straight), *SMALL]) == 0
    a, b = (load_checkpoint(d / CHECKPOINT) for d in (out, straight))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["guide"][k], b["guide"][k]) for k in b["guide"])
    pd.testing.assert_frame_equal(history[["train_loss", "test_loss"]],
                                  pd.read_csv(straight / "history.csv")[["train_loss", "test_loss"]], check_exact=True)


def test_missing_mnist_is_one_clear_line_and_offline(tmp_path, capsys):
    code = cli.main(["train", "--data", "mnist", "--root", str(tmp_path / "none"), "--no-download",
                     "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and "download=False" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "argument --epochs: -1 is not positive"),
    (["--z-dim", "0"], "argument --z-dim: 0 is not positive"),
    (["--hidden", "64", "0"], "argument --hidden: 0 is not positive"),
    (["--lr", "nan"], "argument --lr: nan is not a finite positive number"),
    (["--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
])
def test_bad_flags_are_one_line_and_status_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "--help" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before any work


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds no run to continue" in err and "without --resume" in err and len(err.strip().splitlines()) == 1


def test_a_truncated_checkpoint_in_a_fresh_process(tmp_path):
    """Latest truncated, previous good: warn in one line and continue. Both bad: one line, status 2, no traceback."""
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    latest = out / CHECKPOINT
    latest.write_bytes(latest.read_bytes()[: len(latest.read_bytes()) // 2])
    code, stdout, err = _run("train", "--resume", "--epochs", "3", "--out", str(out), "--no-progress")
    assert code == 0, err
    assert err.count("\n") == 1 and "warning" in err and "checkpoint.prev.pt (epoch 1)" in err
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2, 3]
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).write_bytes(b"\0" * 100)
    code, _, err = _run("train", "--resume", "--epochs", "4", "--out", str(out), "--no-progress")
    assert code == 2 and "neither checkpoint can be read" in err and "Traceback" not in err and err.count("\n") == 1


def test_sample_of_a_run_whose_latest_checkpoint_is_a_foreign_pickle_reads_the_previous_in_one_line(tmp_path):
    """A protocol-5 pickle in checkpoint.pt: torch's two-line notice about the protocol is not shown, and the one
    warning speaks of reading (sample draws from the previous epoch), not of training epochs again."""
    import pickle

    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    (out / CHECKPOINT).write_bytes(pickle.dumps({"epoch": 2}, protocol=5))
    code, _, err = _run("sample", str(out), "--out", str(tmp_path / "s.png"))
    assert code == 0 and (tmp_path / "s.png").is_file(), err
    assert err.count("\n") == 1, err
    assert "reading checkpoint.prev.pt (epoch 1), the last complete one, instead" in err and "trained again" not in err


@pytest.mark.parametrize("raised, shown", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 17592186044416 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory: an allocation of 1.64e+04 GiB failed; give smaller sizes"),
    (MemoryError(), "out of memory: an allocation failed; give smaller sizes"),
])
def test_an_allocation_that_fails_is_one_line_with_the_size_asked_for(monkeypatch, capsys, tmp_path, raised, shown):
    def allocate(*args, **kw):
        raise raised
    monkeypatch.setattr(cli, "cmd_train", allocate)
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"pyro-vae train: error: {shown} (--batch-size, --z-dim, --hidden, --ll-samples), or run it where " \
                  f"there is more memory.\n"


def test_a_runtime_error_that_is_not_about_memory_keeps_its_traceback(monkeypatch, tmp_path):
    """Only allocation failures become one line: another RuntimeError is a bug, and shows as one."""
    def broken(*args, **kw):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(cli, "cmd_train", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        cli.main(["train", "--out", str(tmp_path / "run")])


def test_an_encoder_width_sweep_without_the_normal_guide_is_refused_before_any_work(tmp_path):
    code, _, err = _run("compare", "--guides", "mvn", "--encoder-widths", "64", "--out", str(tmp_path / "c"),
                        "--no-progress")
    assert code == 2 and "add normal to guides" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_unknown_guide_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--guide", "no_such_guide"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["digits", "linear-gaussian"])
def test_compare_quick(tmp_path, capsys, dataset):
    out = tmp_path / "cmp"
    more = ["--z-dim", "2", "--seeds", "2", "--encoder-widths", "4", "32", "--workers", "2", "--local-steps", "1"] \
        if dataset == "linear-gaussian" else ["--local-steps", "1", "3"]
    every = ["--guides", "normal", "mvn", "flow", "semi_amortized", "meanfield", "--families", "normal", "mvn", "flow"]
    assert cli.main(["compare", "--quick", "--data", dataset, "--out", str(out), "--no-progress", *every, *more]) == 0
    table = pd.read_csv(out / "results.csv")
    iterated = dataset == "digits"
    trained = ["normal", "mvn", "flow", "semi_amortized", "meanfield", *(["meanfield T=3"] if iterated else [])]
    assert table["guide"].unique().tolist() == trained
    seeds = 1 if iterated else 2
    assert pd.read_csv(out / "cost.csv")["local_steps"].tolist() == [1] * 5 * seeds + ([3] if iterated else [])
    assert set(table["split"]) == {"train", "test"} and "approximation_gap_flow" in table
    for name in ("cost.csv", "per_point.csv", "history.csv", "budget.csv", "test_at_budgets.csv", "differences.csv",
                 "selection.csv", "learning_curves.png", "gaps.png", "latents.png", "budget.png",
                 "gaps_during_training.png", "differences.png"):
        assert (out / name).exists(), name
    assert (out / "images.png").exists() == (dataset == "digits")
    for name in ("encoder_widths.csv", "encoder_widths.png"):
        assert (out / name).exists() == (dataset == "linear-gaussian"), name
    printed = capsys.readouterr().out
    assert "amortization_gap" in printed
    if dataset == "linear-gaussian":
        assert table["seed"].value_counts().to_dict() == {0: 10, 1: 10}
        assert "means over 2 seeds" in printed and "standard deviations across the 2 seeds" in printed
        assert "log_px_exact" in printed
        assert (table["log_px"] - table["log_px_exact"]).abs().max() < 0.1
        widths = pd.read_csv(out / "encoder_widths.csv")
        assert widths[["seed", "width"]].drop_duplicates().values.tolist() == [[0, 256], [0, 4], [0, 32], [1, 256],
                                                                               [1, 4], [1, 32]]
        assert "encoder widths on the normal guide's decoder" in printed
