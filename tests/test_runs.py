"""A trained run is something you can come back to: load_run, pyro-vae evaluate, pyro-vae sample."""

import hashlib
import json
import subprocess
import sys

import pandas as pd
import pyro
import pytest
import torch

from pyro_vae import cli, estimators, load_run, runs
from pyro_vae.train import CHECKPOINT, load_checkpoint

SMALL = {"z_dim": 4, "hidden": [32], "no_progress": True}
EVAL = ["--n-eval", "20", "--ll-samples", "100", "--elbo-samples", "50", "--qstar-steps", "40", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A `normal` run and a `meanfield` run, three epochs each, as `pyro-vae train` writes them."""
    root = tmp_path_factory.mktemp("runs")
    for guide in ("normal", "meanfield"):
        runs.train({**SMALL, "guide": guide, "epochs": 3, "out": str(root / guide)})
    return root


def _elbo_code(path):
    return ("import pyro, torch; from pyro_vae import estimators, load_run\n"
            f"run = load_run({str(path)!r})\n"
            "pyro.set_rng_seed(5)\n"
            "print(float(estimators.elbo(run.model.model, run.guide, run.data.test[:50], num_samples=20).value.sum()))")


def test_a_run_loaded_in_a_fresh_process_gives_the_same_elbo(tmp_path):
    run = runs.train({**SMALL, "guide": "mvn", "epochs": 3, "out": str(tmp_path / "mvn")})
    pyro.set_rng_seed(5)
    before = float(estimators.elbo(run.model.model, run.guide, run.data.test[:50], num_samples=20).value.sum())
    done = subprocess.run([sys.executable, "-c", _elbo_code(tmp_path / "mvn")], capture_output=True, text=True,
                          check=True)
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(before, rel=1e-6)
    loaded = load_run(tmp_path / "mvn")
    assert loaded.epochs == 3 and loaded.config["guide"] == "mvn" and loaded.history["epoch"].tolist() == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(run.guide.parameters(), loaded.guide.parameters()))


def test_a_loaded_run_is_ready_for_svi_step(two_runs):
    from pyro.infer import SVI, Trace_ELBO

    from pyro_vae.optim import LazyAdam

    run = load_run(two_runs / "meanfield")
    svi = SVI(run.model.model, run.guide, LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2}), Trace_ELBO())
    x, idx = next(run.data.loader("train", 32))
    assert torch.isfinite(torch.tensor(svi.step(x, idx)))


@pytest.mark.parametrize("problem, message", [
    ("not a run", "holds no run"),
    ("compare output", "output of `pyro-vae compare`"),
    ("another version", "checkpoint format 99"),
    ("data gone", "cannot be loaded"),
    ("edited config", r"config.json and its checkpoint disagree \(z_dim 6 in config.json, 4 in the checkpoint\)"),
])
def test_load_run_refuses_with_one_clear_line(tmp_path, two_runs, problem, message):
    from pyro_vae.train import CheckpointError

    path = tmp_path / "run"
    if problem == "not a run":
        path.mkdir()
    else:
        import shutil

        shutil.copytree(two_runs / "normal", path)
        cfg = json.loads((path / "config.json").read_text())
        if problem == "compare output":
            cfg["guides"] = ["normal"]
        elif problem == "data gone":  # config.json and the checkpoint agree, and the files are not there
            gone = dict(data="mnist", root=str(tmp_path / "nowhere"), no_download=True)
            cfg.update(gone)
            state = load_checkpoint(path / CHECKPOINT)
            torch.save({**state, "config": {**state["config"], **gone}}, path / CHECKPOINT)
        elif problem == "edited config":
            cfg["z_dim"] = 6
        elif problem == "another version":
            torch.save({**load_checkpoint(path / CHECKPOINT), "version": 99}, path / CHECKPOINT)
        (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((runs.RunError, CheckpointError), match=message):
        load_run(path)
    assert cli.main(["evaluate", str(path), *EVAL]) == 2


def test_evaluate_puts_two_runs_side_by_side(two_runs, tmp_path, capsys):
    training = {name: hashlib.sha256((two_runs / "normal" / name).read_bytes()).hexdigest()
                for name in ("config.json", "history.csv", CHECKPOINT)}
    out = tmp_path / "both"
    assert cli.main(["evaluate", str(two_runs / "normal"), str(two_runs / "meanfield"), "--out", str(out),
                     *EVAL]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "evaluation.csv")
    assert table[["run", "split"]].values.tolist() == [["normal", "train"], ["normal", "test"],
                                                       ["meanfield", "train"], ["meanfield", "test"]]
    assert (out / "evaluation_gaps.png").exists()
    t = table.set_index(["run", "split"])
    assert t.loc[("normal", "test"), "amortization_gap"] == t.loc[("normal", "test"), "amortization_gap"]  # not NaN
    assert pd.isna(t.loc[("meanfield", "train"), "amortization_gap"])
    assert pd.notna(t.loc[("meanfield", "train"), "optimization_gap"])
    assert "normal" in printed and "meanfield" in printed and "optimization_gap" in printed
    for run in ("normal", "meanfield"):
        for name in ("evaluation.csv", "evaluation_per_point.csv", "evaluation_gaps.png"):
            assert (two_runs / run / name).exists()
    after = {name: hashlib.sha256((two_runs / "normal" / name).read_bytes()).hexdigest() for name in training}
    assert after == training  # the training files are untouched


def test_evaluate_is_reproducible_by_seed(two_runs, tmp_path):
    tables = []
    for _ in range(2):
        assert cli.main(["evaluate", str(two_runs / "normal"), "--split", "test", *EVAL]) == 0
        tables.append(pd.read_csv(two_runs / "normal" / "evaluation.csv"))
    pd.testing.assert_frame_equal(*tables)


def test_evaluate_needs_the_runs_own_family(two_runs, capsys):
    assert cli.main(["evaluate", str(two_runs / "normal"), "--families", "mvn", *EVAL]) == 2
    err = capsys.readouterr().err
    assert "add it to --families" in err and len(err.strip().splitlines()) == 1


def test_evaluate_puts_ais_beside_iwae(two_runs, capsys):
    """--ais-steps adds log_px_ais and its standard error beside log_px, which stays the importance-weighted estimate
    (the same numbers as without AIS: AIS draws after every other estimate)."""
    assert cli.main(["evaluate", str(two_runs / "normal"), "--split", "test", *EVAL]) == 0
    without = pd.read_csv(two_runs / "normal" / "evaluation_per_point.csv")
    assert cli.main(["evaluate", str(two_runs / "normal"), "--split", "test", "--ais-steps", "5", *EVAL]) == 0
    points = pd.read_csv(two_runs / "normal" / "evaluation_per_point.csv")
    assert points[["log_px_ais", "log_px_ais_se"]].notna().all(axis=None) and "log_px_iwae" not in points
    assert (points["log_px"] == without["log_px"]).all()
    assert "log_px_ais" in capsys.readouterr().out


def test_evaluate_adds_the_flow_family_for_a_flow_run(tmp_path):
    runs.train({**SMALL, "guide": "flow", "num_flows": 1, "epochs": 1, "out": str(tmp_path / "flow")})
    assert cli.main(["evaluate", str(tmp_path / "flow"), "--split", "test", *EVAL]) == 0
    table = pd.read_csv(tmp_path / "flow" / "evaluation.csv")
    assert table[["approximation_gap", "approximation_gap_flow", "elbo_qstar_mvn"]].notna().all(axis=None)


def test_sample_writes_a_grid_for_images(two_runs, capsys):
    assert cli.main(["sample", str(two_runs / "meanfield"), "--n", "16"]) == 0
    assert (two_runs / "meanfield" / "samples.png").exists()


def test_sample_writes_a_csv_for_other_data(tmp_path):
    runs.train({**SMALL, "z_dim": 2, "data": "linear-gaussian", "guide": "mvn", "epochs": 2,
                "out": str(tmp_path / "lg")})
    assert cli.main(["sample", str(tmp_path / "lg"), "--n", "30", "--seed", "1"]) == 0
    frame = pd.read_csv(tmp_path / "lg" / "samples.csv")
    assert frame.shape == (30, 2 + 10) and list(frame.columns[:3]) == ["z0", "z1", "x0"]


def test_bad_run_arguments_are_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:
        cli.main(["sample", str(tmp_path), "--n", "0"])
    assert info.value.code == 2 and "--n: 0 is not positive" in capsys.readouterr().err


def test_progress_in_a_log_is_a_few_whole_lines(tmp_path):
    """Not a terminal: a 30-epoch run writes its bar as whole lines, not thousands of carriage returns."""
    done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--epochs", "30", "--z-dim", "4",
                           "--hidden", "32", "--out", str(tmp_path / "log")], capture_output=True, text=True,
                          check=True)
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and "30/30" in lines[-1]


def test_resume_never_passes_over_a_checkpoint_of_another_version(tmp_path, two_runs):
    """A newer pyro-vae's checkpoint is intact work: resuming from the previous one would overwrite it."""
    import shutil

    path = tmp_path / "newer"
    shutil.copytree(two_runs / "normal", path)
    torch.save({**load_checkpoint(path / CHECKPOINT), "version": 99}, path / CHECKPOINT)
    written = (path / CHECKPOINT).read_bytes()
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(path), "--no-progress"]) == 2
    assert (path / CHECKPOINT).read_bytes() == written
