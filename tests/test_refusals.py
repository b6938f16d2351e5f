"""Bad input, at the command line and at the API, as a careless or hostile user gives it: each case is refused in
one line that names the problem and the fix (its first words are checked), exit status 2, before any work, and
changes no file. Cases of issue 26; a failure says which way a case went wrong (TRACEBACK, ACCEPTED: the command
ran, MISLEADING: another message, CHANGED: a refused command touched a file)."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import guides
import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import cli, data, estimators, fit, folders, gaps, models, runs
from pyro_vae.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, save_weights

SMALL = ["--z-dim", "2", "--hidden", "8", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs of 2 epochs: ``normal`` (amortized) and ``meanfield`` with its rows on disk in ``rows``."""
    root = tmp_path_factory.mktemp("trained")
    small = {"z_dim": 2, "hidden": [8], "epochs": 2, "no_progress": True}
    runs.train({**small, "out": str(root / "normal")})
    runs.train({**small, "guide": "meanfield", "out": str(root / "meanfield"),
                "rows_on_disk": str(root / "meanfield" / "rows")})
    return root


def edit_json(path, **changes):
    cfg = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps({**cfg, **changes}))


def edit_checkpoint(run, change, name=CHECKPOINT):
    state = torch.load(run / name, weights_only=True)
    change(state)
    torch.save(state, run / name)


def only_latest(run):
    (run / PREVIOUS_CHECKPOINT).unlink()
    return run


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in folders.LOCKS}  # lock files: not outputs (made on first use)


def case_guide_changed(r, t):
    edit_json(r["normal"] / "config.json", guide="mvn")
    return ["train", "--resume", "--epochs", "4", "--out", r["normal"]]


def case_sizes_changed(what, value):
    def setup(r, t):
        edit_json(r["normal"] / "config.json", **{what: value})
        return ["train", "--resume", "--epochs", "4", "--out", r["normal"]]
    return setup


def case_list_config(command):
    def setup(r, t):
        (r["normal"] / "config.json").write_text("[1, 2, 3]")
        return [*command, r["normal"]] if command[0] != "train" else [*command, "--out", r["normal"]]
    return setup


def case_tampered(change):
    def setup(r, t):
        edit_checkpoint(only_latest(r["normal"]), change)
        return ["train", "--resume", "--epochs", "4", "--out", r["normal"]]
    return setup


def case_corrupt(r, t):
    (only_latest(r["normal"]) / CHECKPOINT).write_bytes(os.urandom(3000))
    return ["sample", r["normal"]]


def case_config_file(text, suffix=".json"):
    def setup(r, t):
        (t / f"settings{suffix}").write_text(text)
        return ["train", "--config", t / f"settings{suffix}", "--out", t / "new"]
    return setup


def case_rows_outside(value, command):
    def setup(r, t):
        edit_json(r["meanfield"] / "config.json", rows_on_disk=value.format(t=t))
        edit_checkpoint(r["meanfield"], lambda s: s["config"].update(rows_on_disk=value.format(t=t)))
        return {"resume": ["train", "--resume", "--epochs", "4", "--out", r["meanfield"]],
                "sample": ["sample", r["meanfield"]], "evaluate": ["evaluate", r["meanfield"]]}[command]
    return setup


def case_root_elsewhere(command):
    def setup(r, t):
        moved = {"data": "mnist", "root": str(t / "elsewhere" / "deep")}
        edit_json(r["normal"] / "config.json", **moved)
        edit_checkpoint(only_latest(r["normal"]), lambda s: s["config"].update(moved))
        return {"sample": ["sample", r["normal"]], "evaluate": ["evaluate", r["normal"]],
                "resume": ["train", "--resume", "--epochs", "4", "--out", r["normal"]]}[command]
    return setup


def alias_bomb(levels=12):
    """A YAML file of a few hundred bytes whose one setting, ``hidden``, holds a list whose aliases expand to
    9**12 values (a message that quoted it whole would build that)."""
    nested = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    nested += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"hidden: [[{', '.join(nested)}]]\n"


def case_huge_run(r, t):
    edit_json(r["normal"] / "config.json", hidden=[10 ** 9])
    edit_checkpoint(only_latest(r["normal"]), lambda s: s["config"].update(hidden=[10 ** 9]))
    return ["sample", r["normal"]]


def case_busy(r, t):
    r["hold"] = folders.writer(r["normal"], "train")  # another writer holds the folder (released after the case)
    r["hold"].__enter__()
    return ["train", "--resume", "--epochs", "4", "--out", r["normal"]]


def case_read_only(r, t, monkeypatch):
    run = r["normal"]
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == run else real(p, mode))  # we run as root
    return ["train", "--resume", "--epochs", "4", "--out", run]


def case_foreign_file(r, t):
    (r["normal"] / "notes.txt").write_text("mine")
    return ["train", *SMALL, "--overwrite", "--out", r["normal"]]


def case_out_is_file(r, t):
    (t / "a_file").write_text("x")
    return ["train", *SMALL, "--out", t / "a_file"]


def planted(run, name, t, move=True, to=None):
    """``run/name`` made a symlink to ``t/outside/name`` (or ``to``): what was there is moved there first, or with
    ``move=False`` a new file is written there."""
    link, target = run / name, t / "outside" / (to or name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if move and link.exists():
        shutil.move(link, target)
    elif not move:
        target.write_text("outside")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return run


def case_row_files_planted(command):
    def setup(r, t):
        for f in sorted((r["meanfield"] / "rows").glob("*.f32")):
            planted(r["meanfield"], f"rows/{f.name}", t)
        return {"resume": ["train", "--resume", "--epochs", "4", "--out", r["meanfield"]],
                "sample": ["sample", r["meanfield"]]}[command]
    return setup


def case_rows_of_checkpoint_outside(r, t):
    shutil.copytree(r["meanfield"] / "rows", t / "outside" / "rows")
    edit_checkpoint(r["meanfield"], lambda s: s["rows_part"]["on_disk"].update(folder=str(t / "outside" / "rows")))
    return ["train", "--resume", "--epochs", "4", "--out", r["meanfield"]]


def case_shard_outside(r, t):
    (t / "outside").mkdir()
    torch.save({"version": 3, "epoch": 2, "rank": 0, "rows": {}, "optim": {}}, t / "outside" / "epoch2.rank0.pt")
    edit_checkpoint(only_latest(r["normal"]), lambda s: s.update(shards={"files": [str(t / "outside" /
                                                                                       "epoch2.rank0.pt")]}))
    return ["evaluate", r["normal"]]


def case_weights_planted(name, command):
    def setup(r, t):
        run = runs.load_run(r["normal"])
        (t / "outside").mkdir()
        save_weights(t / "outside" / "weights.pt", run.model, run.guide, 2, 1.0)
        (r["normal"] / name).parent.mkdir(exist_ok=True)
        (r["normal"] / name).symlink_to(t / "outside" / "weights.pt")
        return command(r["normal"])
    return setup


#: (id, setup(runs, tmp) -> argv, the message's first words: a regular expression matched at its start)
CLI_CASES = [
    ("train into a finished run", lambda r, t: ["train", *SMALL, "--out", r["normal"]],
     r"\S+ already holds a run of `pyro-vae train` .*: pass --resume to continue it, pass --overwrite"),
    ("compare into a run", lambda r, t: ["compare", "--quick", "--out", r["normal"]],
     r"\S+ already holds a run of `pyro-vae train`"),
    ("train into compare's output", lambda r, t: (shutil.copy(r["normal"] / "history.csv", t / "results.csv"),
                                                 ["train", *SMALL, "--out", t])[1],
     r"\S+ already holds the output of `pyro-vae compare`"),
    ("--overwrite of a folder with another file", case_foreign_file, r"--overwrite replaces only pyro-vae's own"),
    ("--resume and --overwrite", lambda r, t: ["train", "--resume", "--overwrite", "--out", r["normal"]],
     r"--resume continues what --out holds and --overwrite replaces it: give one of them to train"),
    ("a second writer", case_busy, r"\S+ is being written by process \d+ \(pyro-vae train\): wait"),
    ("--out is a file", case_out_is_file, r"\S+ is a file, not a folder"),
    ("--resume into a read-only run", case_read_only, r"\S+ is not writable"),
    ("--resume with fewer epochs than trained", lambda r, t: ["train", "--resume", "--epochs", "1", "--out",
                                                             r["normal"]],
     r"--resume: the run in \S+ has already trained 2 epochs: pass --epochs \(epochs=\) above 2 to continue it"),
    ("--resume after config.json names another guide", case_guide_changed,
     r"--resume: \S+config.json and its checkpoint disagree \(guide 'mvn' in config.json, 'normal'"),
    ("--resume after config.json's z_dim changed", case_sizes_changed("z_dim", 5), r"--resume: .* disagree \(z_dim"),
    ("--resume after config.json's hidden changed", case_sizes_changed("hidden", [16]),
     r"--resume: .* disagree \(hidden"),
    ("--resume after config.json's data changed", case_sizes_changed("data", "linear-gaussian"),
     r"--resume: .* disagree \(data"),
    ("sample after config.json changed", lambda r, t: (edit_json(r["normal"] / "config.json", z_dim=3),
                                                       ["sample", r["normal"]])[1], r"load_run: .* disagree \(z_dim"),
    ("--resume of a config.json that is a list", case_list_config(["train", "--resume"]),
     r"--resume: \S+config.json holds a JSON list"),
    ("evaluate a config.json that is a list", case_list_config(["evaluate"]), r"load_run: \S+ holds a JSON list"),
    ("a checkpoint whose epoch is a string", case_tampered(lambda s: s.update(epoch="2")),
     r"\S+checkpoint.pt is damaged \(its epoch is '2', not a count\)"),
    ("a checkpoint without RNG state", case_tampered(lambda s: s["rng"].pop("torch")),
     r"\S+checkpoint.pt is damaged \(its RNG state"),
    ("a checkpoint without optimizer state", case_tampered(lambda s: s.pop("optim")),
     r"\S+checkpoint.pt is not a pyro-vae checkpoint \(missing optim\)"),
    ("a checkpoint with a foreign optimizer key", case_tampered(lambda s: s["optim"].update({"model/x": {}})),
     r"the checkpoint holds optimizer state for model/x"),
    ("a checkpoint whose history was cut", case_tampered(lambda s: s["history"].pop()),
     r"\S+checkpoint.pt is damaged \(its history has 1 rows for 2 epochs\)"),
    ("a corrupt checkpoint", case_corrupt, r"\S+checkpoint.pt is damaged or not a checkpoint \(torch.load raised"),
    ("--z-dim 100000000", lambda r, t: ["train", "--z-dim", "100000000", "--out", t / "new"],
     r"the model and guide hold \S+ parameters"),
    ("--hidden 1000000000", lambda r, t: ["train", "--hidden", "1000000000", "--out", t / "new"],
     r"the model and guide hold \S+ parameters"),
    ("z_dim 1e23 in a config", case_config_file('{"z_dim": 100000000000000000000000}'),
     r"the model and guide of z_dim=100000000000000000000000, hidden=\[256\] cannot be built"),
    ("--device meta", lambda r, t: ["train", "--device", "meta", "--out", t / "new"],
     r"argument --device: 'meta' is a meta device"),
    ("--device mps", lambda r, t: ["train", "--device", "mps", "--out", t / "new"],
     r"argument --device: 'mps' names Apple's MPS device and this machine has none"),
    ("--lr -1e-3", lambda r, t: ["train", "--lr", "-1e-3", "--out", t / "new"],
     r"argument --lr: -0.001 is not a finite positive number"),
    ('"lr": "fast" in a config', case_config_file('{"lr": "fast"}'), r"lr in \S+ must be a number, got 'fast'"),
    ("lr: fast in a YAML config", case_config_file("lr: fast\n", ".yaml"), r"lr in \S+ must be a number"),
    ("sample --n beyond the test split", lambda r, t: ["sample", r["normal"], "--n", "100000"],
     r"sample --n 100000: .* the test split has 359: give --n 359 or fewer"),
    ("sample --out with another suffix", lambda r, t: ["sample", r["normal"], "--out", t / "samples.txt"],
     r"sample --out \S+: the samples of image data are written as .png"),
    ("compare --guides normal --families mvn", lambda r, t: ["compare", "--guides", "normal", "--families", "mvn",
                                                            "--out", t / "new"],
     r"compare: the normal guide's gaps are measured against q\* of its own family, 'normal'"),
    ("compare --budget-epochs not increasing", lambda r, t: ["compare", "--budget-epochs", "5", "3", "--out",
                                                             t / "new"],
     r"budget_epochs must be increasing, each value once, got \[5, 3\]"),
    ("compare --test-epochs not measured", lambda r, t: ["compare", "--epochs", "10", "--test-epochs", "20", "--out",
                                                         t / "new"],
     r"test_epochs \[20\] are not measured on validation"),
    ("compare --budget-seconds 0", lambda r, t: ["compare", "--budget-seconds", "0", "--out", t / "new"],
     r"argument --budget-seconds: 0.0 is not a finite positive number"),
    ("compare --budget-points beyond validation", lambda r, t: ["compare", "--budget-points", "100000", "--out",
                                                                t / "new"],
     r"budget_points 100000 is more than the validation split's 288 points"),
    ("compare --encoder-steps 2 2", lambda r, t: ["compare", "--encoder-steps", "2", "2", "--out", t / "new"],
     r"encoder_steps names 2 twice \(--encoder-steps takes each value once\): drop the repeat"),
    ("compare --guides normal normal", lambda r, t: ["compare", "--guides", "normal", "normal", "--out", t / "new"],
     r"guides names 'normal' twice"),
    ("compare --patience 0", lambda r, t: ["compare", "--patience", "0", "--out", t / "new"],
     r"argument --patience: 0 is not positive"),
    ("compare --resume of a run", lambda r, t: ["compare", "--resume", "--out", r["normal"]],
     r"compare --resume: \S+ holds no study to continue"),
    ("compare --resume with other settings", lambda r, t: (
        (t / "study").mkdir(), (t / "study" / "config.json").write_text(json.dumps({"guides": ["normal"], "epochs": 3})),
        ["compare", "--resume", "--epochs", "7", "--out", t / "study"])[2],
     r"compare --resume: the study in \S+ was declared with other settings, and --epochs 7 \(declared: 3\)"),
    ("train --out ''", lambda r, t: ["train", *SMALL, "--out", ""],
     r"out must name a folder \(an empty name would be the current folder\), got ''"),
    ("train --seed -1", lambda r, t: ["train", *SMALL, "--seed", "-1", "--out", t / "new"],
     r"argument --seed: -1 is negative: give an integer >= 0"),
    ("train --seed 2**70", lambda r, t: ["train", *SMALL, "--seed", str(2 ** 70), "--out", t / "new"],
     r"argument --seed: \d+ is not below 2\*\*32"),
    ("evaluate --seed 2**32", lambda r, t: ["evaluate", r["normal"], "--seed", str(2 ** 32)],
     r"argument --seed: 4294967296 is not below 2\*\*32"),
    ("sample --seed 2**40", lambda r, t: ["sample", r["normal"], "--seed", str(2 ** 40)],
     r"argument --seed: 1099511627776 is not below 2\*\*32"),
    ("a config file with data_seed -5", case_config_file('{"data_seed": -5}'),
     r"data_seed in \S+ must be an integer in \[0, 2\*\*32\)"),
    ("compare --seed 2**32-1 --seeds 2", lambda r, t: ["compare", "--seed", str(2 ** 32 - 1), "--seeds", "2",
                                                       "--out", t / "new"],
     r"seed 4294967295 with seeds 2 goes past 2\*\*32 - 1"),
    ("evaluate --ais-steps 0", lambda r, t: ["evaluate", r["normal"], "--ais-steps", "0"],
     r"argument --ais-steps: 0 is not positive"),
    ("compare --ais-steps 0", lambda r, t: ["compare", "--ais-steps", "0", "--out", t / "new"],
     r"argument --ais-steps: 0 is not positive"),
    ("evaluate --ais-leapfrog 0", lambda r, t: ["evaluate", r["normal"], "--ais-steps", "30", "--ais-leapfrog", "0"],
     r"argument --ais-leapfrog: 0 is not positive"),
    ("evaluate --qstar-starts nowhere", lambda r, t: ["evaluate", r["normal"], "--qstar-starts", "nowhere"],
     r"argument --qstar-starts: invalid choice: 'nowhere'"),
    ("evaluate --qstar-starts prior prior", lambda r, t: ["evaluate", r["normal"], "--qstar-starts", "prior", "prior"],
     r"qstar_starts names 'prior' twice"),
    ("evaluate A B --out FILE", lambda r, t: ((t / "f.csv").write_text("x"),
                                              ["evaluate", r["normal"], r["meanfield"], "--out", t / "f.csv"])[1],
     r"evaluate --out \S+ is a file"),
    ("evaluate A B --out a run", lambda r, t: ["evaluate", r["normal"], r["meanfield"], "--out", r["normal"]],
     r"evaluate --out \S+ holds a run"),
    ("--rows-on-disk outside --out", lambda r, t: ["train", *SMALL, "--guide", "meanfield", "--rows-on-disk",
                                                   t / "rows", "--out", t / "new"],
     r"rows_on_disk \S+ is outside the run folder"),
    ("--rows-on-disk the run folder itself", lambda r, t: ["train", *SMALL, "--guide", "meanfield", "--rows-on-disk",
                                                           t / "new", "--out", t / "new"],
     r"rows_on_disk \S+new is the run folder itself"),
    ("--resume of a config naming rows elsewhere", case_rows_outside("{t}/elsewhere", "resume"),
     r"rows_on_disk \S+elsewhere is outside the run folder"),
    ("--resume of a config naming rows by ../", case_rows_outside("../outside", "resume"),
     r"rows_on_disk \.\./outside is outside the run folder"),
    ("sample of a config naming rows elsewhere", case_rows_outside("{t}/elsewhere", "sample"),
     r"rows_on_disk \S+ is outside the run folder"),
    ("sample of a run whose data root is elsewhere", case_root_elsewhere("sample"),
     r"load_run: the data \S+ was trained on cannot be loaded \(mnist: not in \S+deep, and nothing is downloaded"),
    ("evaluate of a run whose data root is elsewhere", case_root_elsewhere("evaluate"),
     r"load_run: the data \S+ was trained on cannot be loaded"),
    ("--resume of a run whose data root is elsewhere", case_root_elsewhere("resume"),
     r"mnist: not in \S+deep, and nothing is downloaded"),
    # issue 38: planted paths (symlinks, rows and shards outside the run)
    ("--resume of a run whose row files are symlinks out of it", case_row_files_planted("resume"),
     r"rows_on_disk rows/loc\.0\.f32 leads outside the run folder \S+ \(the symlink rows/loc\.0\.f32 in it "
     r"leads to \S+outside/rows/loc\.0\.f32\): .*replace the link by what it leads to, or remove it\.$"),
    ("sample of a run whose row files are symlinks out of it", case_row_files_planted("sample"),
     r"rows_on_disk rows/loc\.0\.f32 leads outside the run folder"),
    ("--resume of a run whose rows folder is a symlink out of it",
     lambda r, t: (planted(r["meanfield"], "rows", t), ["train", "--resume", "--epochs", "4", "--out",
                                                        r["meanfield"]])[1],
     r"rows_on_disk rows leads outside the run folder \S+ \(the symlink rows in it leads to \S+outside/rows\)"),
    ("--rows-on-disk a symlink out of --out", lambda r, t: (
        (t / "outside").mkdir(), (t / "fresh").mkdir(), (t / "fresh" / "rows").symlink_to(t / "outside"),
        ["train", *SMALL, "--guide", "meanfield", "--rows-on-disk", t / "fresh" / "rows", "--out", t / "fresh"])[-1],
     r"rows_on_disk \S+fresh/rows leads outside the run folder \S+fresh \(the symlink rows in it leads to "
     r"\S+outside\): a run reads and writes only inside its own folder; replace the link by what it leads to"),
    ("--resume of a checkpoint naming its rows outside the run", case_rows_of_checkpoint_outside,
     r"the checkpoint's rows \S+outside/rows is outside the run folder \S+: .*the checkpoint was edited or belongs "
     r"to another run"),
    ("evaluate of a checkpoint naming a shard outside the run", case_shard_outside,
     r"the checkpoint's shard of rank 0 \S+outside/epoch2\.rank0\.pt is outside the run folder"),
    ("--resume of a checkpoint naming a shard outside the run",
     lambda r, t: (case_shard_outside(r, t), ["train", "--resume", "--epochs", "4", "--out", r["normal"]])[1],
     r"--resume: the checkpoint's shard of rank 0 \S+ is outside the run folder"),
    ("evaluate of a run whose shards folder is a symlink out of it",
     lambda r, t: (planted(r["normal"], "shards", t, move=False), ["evaluate", r["normal"]])[1],
     r"the run's shards leads outside the run folder \S+ \(the symlink shards in it"),
    ("sample --at selected of a selected.pt that is a symlink out of the run",
     case_weights_planted("selected.pt", lambda run: ["sample", run, "--at", "selected"]),
     r"the run's selected\.pt leads outside the run folder \S+ \(the symlink selected\.pt in it leads to "
     r"\S+outside/weights\.pt\)"),
    ("evaluate --at 2 of kept weights that are a symlink out of the run",
     case_weights_planted("kept/epoch-2.pt", lambda run: ["evaluate", run, "--at", "2"]),
     r"the run's kept/epoch-2\.pt leads outside the run folder \S+ \(the symlink kept/epoch-2\.pt in it"),
    ("sample of a run whose config.json is a symlink out of it",
     lambda r, t: (planted(r["normal"], "config.json", t), ["sample", r["normal"]])[1],
     r"the run's config\.json leads outside the run folder"),
    ("--resume of a run whose lock file is a symlink", lambda r, t: (
        planted(r["normal"], folders.LOCK, t, move=False, to="lock"), ["train", "--resume", "--epochs", "4", "--out",
                                                                        r["normal"]])[1],
     r"\S+/\.pyro-vae\.lock is a symlink \(to \S+outside/lock\), and pyro-vae's lock files are never one: "
     r"remove the link"),
    # issue 38: limits, config files and messages
    ("--epochs 1e23", lambda r, t: ["train", *SMALL, "--epochs", "9" * 23, "--out", t / "new"],
     r"epochs must be at most 1,000,000 \(a bound docs/cli.md lists, against runaways\), got 9{23} \(--epochs"),
    ("compare --encoder-steps 1e8", lambda r, t: ["compare", "--encoder-steps", "100000000", "--out", t / "new"],
     r"encoder_steps must be at most 1,000 "),
    ("train --local-steps 1e8", lambda r, t: ["train", *SMALL, "--guide", "meanfield", "--local-steps", "100000000",
                                              "--out", t / "new"], r"local_steps must be at most 1,000 "),
    ("3000 hidden layers", lambda r, t: ["train", "--hidden", *["8"] * 3000, "--out", t / "new"],
     r"hidden holds 3000 values, more than the 64 it may hold"),
    ("--threads 100000", lambda r, t: ["train", *SMALL, "--threads", "100000", "--out", t / "new"],
     r"threads must be at most \d+, the cores this process may use, got 100000"),
    ("compare --workers 100000", lambda r, t: ["compare", "--quick", "--workers", "100000", "--out", t / "new"],
     r"workers must be at most \d+, the cores this process may use"),
    ("tune --trials 1e9", lambda r, t: ["tune", *SMALL, "--trials", "1000000000", "--out", t / "new"],
     r"trials must be at most 10,000 "),
    ("evaluate --ll-samples 1e12", lambda r, t: ["evaluate", r["normal"], "--ll-samples", "1000000000000"],
     r"ll_samples must be at most 10,000,000 "),
    ("activations past the memory", lambda r, t: ["train", "--z-dim", "20000000", "--hidden", "8", "--out",
                                                  t / "new"],
     r"a mini-batch of 128 points takes about \S+ GiB of activations \(z_dim=20000000, hidden=\[8\], trace loss\)"),
    ("a seed of 5000 digits", lambda r, t: ["train", *SMALL, "--seed", "9" * 5000, "--out", t / "new"],
     r"argument --seed: '9{10,60}\.\.\.9*' is not an integer"),
    ("a YAML config of nested aliases", case_config_file(alias_bomb(), ".yaml"),
     r"--config \S+ expands to more than 10,000 values \(YAML aliases"),
    ("a JSON config nested 100 000 deep", case_config_file('{"hidden": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     r"--config \S+ nests its values too deeply"),
    ("a config file of 2 MiB", case_config_file('{"lr": 0.001, "pad": "' + "x" * 2 ** 21 + '"}'),
     r"--config \S+ is larger than 1024 KiB"),
    ("a bad value in a run's config.json", lambda r, t: (edit_json(r["normal"] / "config.json", lr="fast"),
                                                         ["train", "--resume", "--epochs", "4", "--out",
                                                          r["normal"]])[1],
     r"lr in \S+config.json must be a number, got 'fast'\.$"),
    ("train --resume --guide mvn --z-dim 7", lambda r, t: ["train", "--resume", "--epochs", "4", "--guide", "mvn",
                                                           "--z-dim", "7", "--out", r["normal"]],
     r"train --resume: the run in \S+ was trained with other settings, and --z-dim 7 \(trained: 2\), --guide 'mvn' "
     r"\(trained: 'normal'\) would change it"),
    ("train --resume with a config file that changes it", lambda r, t: (
        (t / "other.json").write_text('{"batch_size": 7}'),
        ["train", "--resume", "--epochs", "4", "--config", t / "other.json", "--out", r["normal"]])[1],
     r"train --resume: the run in \S+ was trained with other settings, and --batch-size 7 \(trained: 128\)"),
    ("evaluate --config of a run's config.json", lambda r, t: ["evaluate", r["normal"], "--config",
                                                               r["normal"] / "config.json"],
     r"'activation', 'batch_size', 'binarize', 'data' and \d+ more in \S+ are not settings of evaluate"),
    ("sample of a run whose config and checkpoint say hidden 1e9", case_huge_run,
     r"the model and guide hold \S+ parameters, \S+ GiB as weights"),
]


def refused(argv, expected: str, capsys) -> str:
    """``pyro-vae ARGV`` through ``cli.main``, asserted refused: exit status 2 and one line on stderr whose message
    starts as the regular expression ``expected``; a traceback fails the test. Returns the line."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    except Exception as e:  # noqa: BLE001: the case's point
        pytest.fail(f"TRACEBACK: {type(e).__name__}: {e}")
    err = capsys.readouterr().err.strip()
    assert code != 0, f"ACCEPTED: {argv} ran (exit 0)"
    message = err.split(": error: ", 1)[-1]
    assert code == 2 and len(err.splitlines()) == 1 and re.match(expected, message), f"MISLEADING: {err!r}"
    return err


@pytest.mark.parametrize("setup, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_command_line_refusals(trained, tmp_path, capsys, monkeypatch, setup, expected):
    r = {name: tmp_path / name for name in ("normal", "meanfield")}
    for name in r:
        shutil.copytree(trained / name, r[name])
        edit_json(r[name] / "config.json")  # as it was
    args = setup(r, tmp_path, monkeypatch) if setup is case_read_only else setup(r, tmp_path)
    argv = [str(a) for a in args]
    before = snapshot(tmp_path)
    try:
        refused(argv, expected, capsys)
    finally:
        if "hold" in r:
            r["hold"].__exit__(None, None, None)
    assert snapshot(tmp_path) == before, "CHANGED: a refused command changed a file"
    assert not (tmp_path / "new").exists() and not (tmp_path / "elsewhere").exists(), "CHANGED: it made a folder"


def _model_and_guide(ds, guide_z=2, guide_x=None):
    model = models.VAE(ds.x_dim, 2, (8,), num_data=len(ds.train))
    guide = guides.make("normal", x_dim=guide_x or ds.x_dim, z_dim=guide_z, hidden=(8,), num_data=len(ds.train))
    return model, guide


def _noise_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(os.urandom(500))
    return path


def _cut_idx(tmp_path):
    import gzip

    path = tmp_path / "cut-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0]))
    return path


#: (id, call(ds, tmp_path), the error's type, the message's first words)
API_CASES = [
    ("a guide of another z_dim", lambda ds, t: fit(*_model_and_guide(ds, guide_z=3), ds, epochs=1, progress=False),
     ValueError, r"the guide was built with z_dim=3 and the model with z_dim=2"),
    ("a guide of another x_dim", lambda ds, t: fit(*_model_and_guide(ds, guide_x=10), ds, epochs=1, progress=False),
     ValueError, r"the guide was built with x_dim=10 and the model with x_dim=64"),
    ("idx out of range", lambda ds, t: guides.make("meanfield", z_dim=2, num_data=10)(torch.zeros(10, 4),
                                                                                    torch.arange(1, 11)),
     ValueError, r"MeanField: idx must lie in \[0, num_data=10\), got values in \[1, 10\]"),
    ("idx of another shape", lambda ds, t: guides.make("meanfield", z_dim=2, num_data=10)(torch.zeros(10, 4),
                                                                                         torch.arange(5)),
     ValueError, r"MeanField: idx must be a 1-D tensor with one dataset index per row of x \(expected shape \(10,\), "
                 r"got \(5,\)\)"),
    ("elbo with num_samples=0", lambda ds, t: estimators.elbo(_model_and_guide(ds)[0].model, _model_and_guide(ds)[1],
                                                              ds.test[:5], num_samples=0),
     ValueError, r"num_samples must be a positive integer, got 0"),
    ("log_likelihood with num_samples=0",
     lambda ds, t: estimators.log_likelihood(_model_and_guide(ds)[0].model, _model_and_guide(ds)[1], ds.test[:5],
                                             num_samples=0), ValueError, r"num_samples must be a positive integer"),
    ("a float64 Dataset", lambda ds, t: data.Dataset("x", ds.train.double(), ds.test),
     TypeError, r"Dataset.train must be a float32 tensor \(n, x_dim\), got torch.float64: pass train.float\(\)"),
    ("an int Dataset", lambda ds, t: data.Dataset("x", ds.train, ds.test.long()),
     TypeError, r"Dataset.test must be a float32 tensor \(n, x_dim\), got torch.int64"),
    ("random bytes as an IDX .gz", lambda ds, t: data.read_idx(_noise_gz(t)),
     ValueError, r"\S+train-images-idx3-ubyte.gz cannot be read as a gzipped IDX file"),
    ("an IDX file cut inside its header", lambda ds, t: data.read_idx(_cut_idx(t)),
     ValueError, r"\S+cut-idx3-ubyte.gz is cut short or not an IDX file"),
    ("a second writer through the API", lambda ds, t: _second_writer(t),
     ValueError, r"\S+ is being written by process \d+ \(pyro-vae train\)"),
    # errors raised inside svi.step reach the user as one line, without Pyro's trace table
    ("svi.step: idx to a guide built without num_data",
     lambda ds, t: _step(guides.make("normal", x_dim=64, z_dim=2, hidden=(8,)), torch.arange(4)),
     ValueError, r"AmortizedNormal was built without num_data but called with idx"),
    ("svi.step: a per-datapoint guide with pyro.optim.Adam",
     lambda ds, t: _step(guides.make("meanfield", z_dim=2, num_data=10), torch.arange(4)),
     ValueError, r"Adam cannot step the sparse gradient of a per-datapoint guide's rows \(10, 2\): use "
                 r"pyro_vae.optim.LazyAdam"),
    ("svi.step: fractional idx", lambda ds, t: _step(guides.make("meanfield", z_dim=2, num_data=10),
                                                     torch.tensor([0.5, 1.5, 2.5, 3.5])),
     ValueError, r"MeanField: idx must hold integer dataset indices, got dtype torch.float32"),
    # the estimators check guide, model, x and idx before any work, as fit does
    ("elbo: a guide of another z_dim", lambda ds, t: _score(estimators.elbo, ds, z_dim=3),
     ValueError, r"the guide was built with z_dim=3 and the model with z_dim=2"),
    ("log_likelihood: a guide of another x_dim", lambda ds, t: _score(estimators.log_likelihood, ds, x_dim=10),
     ValueError, r"the guide was built with x_dim=10 and the model with x_dim=64"),
    ("decompose: a guide of another z_dim", lambda ds, t: _score(gaps.decompose, ds, z_dim=3),
     ValueError, r"the guide was built with z_dim=3 and the model with z_dim=2"),
    ("elbo: x of another width", lambda ds, t: _score(estimators.elbo, ds, x=torch.zeros(4, 10)),
     ValueError, r"x has 10 columns and the model was built with x_dim=64"),
    ("elbo: x with NaN", lambda ds, t: _score(estimators.elbo, ds, x=ds.test[:4].index_fill(0, torch.tensor([2]),
                                                                                           float("nan"))),
     ValueError, r"x holds NaN or infinite values in 1 of its 4 rows \(the first: row 2\)"),
    ("elbo: float64 x", lambda ds, t: _score(estimators.elbo, ds, x=ds.test[:4].double()),
     TypeError, r"x is torch.float64 and the model's parameters are torch.float32: pass x.to\(torch.float32\)"),
    ("log_likelihood: x with no rows", lambda ds, t: _score(estimators.log_likelihood, ds, x=ds.test[:0]),
     ValueError, r"x has no rows"),
    ("elbo: fractional idx to a per-datapoint guide",
     lambda ds, t: _score(estimators.elbo, ds, idx=torch.tensor([0.4, 1.6, 2.0, 3.0]), guide="meanfield"),
     ValueError, r"MeanField: idx must hold integer dataset indices, got dtype torch.float32 \(fractional"),
    ("decompose: a boolean mask as idx",
     lambda ds, t: _score(gaps.decompose, ds, idx=torch.tensor([True, False, True, True]), guide="meanfield"),
     ValueError, r"MeanField: idx must hold integer dataset indices, got dtype torch.bool \(a boolean mask"),
]


def _step(guide, idx, optim=None, num_data=10):
    """One svi.step of a small VAE with ``guide`` on 4 rows of digits-like data and dataset rows ``idx``."""
    model = models.VAE(64, 2, (8,), num_data=num_data)
    svi = SVI(model.model, guide, optim or pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(torch.rand(4, 64).round(), idx)


def _score(estimate, ds, x=None, idx=None, guide="normal", **sizes):
    """``estimate(model.model, guide, x, idx)`` for a small VAE and a guide of the given sizes."""
    model = models.VAE(ds.x_dim, 2, (8,), num_data=len(ds.train))
    kind = {"z_dim": 2, **sizes}
    g = guides.make("normal", x_dim=kind.pop("x_dim", ds.x_dim), hidden=(8,), num_data=len(ds.train), **kind) \
        if guide == "normal" else guides.make(guide, num_data=len(ds.train), **kind)
    return estimate(model.model, g, ds.test[:4] if x is None else x, idx)


def _second_writer(tmp_path):
    with folders.writer(tmp_path / "run", "train"):
        runs.train({"z_dim": 2, "hidden": [8], "epochs": 1, "no_progress": True, "out": str(tmp_path / "run")})


@pytest.mark.parametrize("call, kind, expected", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refusals(digits, tmp_path, call, kind, expected):
    try:
        call(digits, tmp_path)
    except kind as e:
        assert re.match(expected, str(e)) and "\n" not in str(e), f"MISLEADING: {e}"
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"TRACEBACK: {type(e).__name__}: {e}")
    else:
        pytest.fail("ACCEPTED: the call returned")
