"""Run folders that cannot be lost or mixed: one writer at a time, nothing replaced unasked, nothing written outside,
and the previous checkpoint usable after a kill or a full disk in the middle of writing one."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pyro_vae import cli, folders, rows, runs
from pyro_vae.checkpoint import CHECKPOINT, load as load_checkpoint

SMALL = ["--z-dim", "2", "--hidden", "8", "--no-progress"]
ROWS = ["--guide", "meanfield", *SMALL]
HERE = Path(__file__).parent


def pyro_vae(*args, script=None, timeout=300):
    command = [sys.executable, *([str(HERE / script)] if script else ["-m", "pyro_vae.cli"]), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def history(run):
    return pd.read_csv(Path(run) / "history.csv").drop(columns="seconds")


def test_one_writer_per_folder_and_a_killed_writer_leaves_no_lock(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "train", *SMALL, "--epochs", "100000", "--out",
                              str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (run / CHECKPOINT).exists() and time.time() < deadline:
            time.sleep(0.2)
        assert folders.holder(run) == f"process {first.pid} (pyro-vae train)"
        for args in (["train", *SMALL, "--epochs", "3", "--out", run],
                     ["train", *SMALL, "--epochs", "3", "--overwrite", "--out", run],
                     ["train", "--resume", "--epochs", "200000", "--out", run],
                     ["compare", "--quick", "--overwrite", "--out", run]):
            assert cli.main([str(a) for a in args]) == 2  # in this process: the lock is the other one's
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{run} is being written by process {first.pid} (pyro-vae train): wait" \
                in err, err
        # a reader meanwhile gets the last complete checkpoint of this run, whose settings agree with config.json
        seen = runs.load_run(run)
        assert seen.epochs >= 1 and seen.config["epochs"] == 100000
    finally:
        first.kill()
        first.wait()
    assert folders.holder(run) is None  # the kernel released the lock of the killed process
    done = pyro_vae("train", "--resume", "--epochs", load_checkpoint(run / CHECKPOINT)["epoch"] + 1, "--out", run)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_ends_train_in_one_line_that_says_what_was_kept(tmp_path, stop):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM during training: one line naming the kept checkpoint's epoch and the
    command that continues, exit status 130, no lock and no temp file left; the command it names continues."""
    import signal

    run = tmp_path / "run"
    # as from a terminal: a suite started in the background (`cmd &`) ignores SIGINT, and so would the child
    first = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "train", *SMALL, "--epochs", "100000", "--out",
                              str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not (run / CHECKPOINT).exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        first.send_signal(getattr(signal, stop))
        err = first.communicate(timeout=60)[1]
    finally:
        first.kill()
    epoch = load_checkpoint(run / CHECKPOINT)["epoch"]
    assert first.returncode == 130 and err.count("\n") == 1, err
    assert err == (f"pyro-vae train: interrupted; the run in {run} keeps its checkpoint of epoch {epoch}: "
                   f"`pyro-vae train --resume --out {run}` continues it exactly.\n")
    assert folders.holder(run) is None and not list(run.glob("*.tmp"))
    done = pyro_vae("train", "--resume", "--epochs", epoch + 1, "--out", run)
    assert done.returncode == 0, done.stderr


def test_sigterm_stops_a_study_and_its_workers_at_once(tmp_path):
    """SIGTERM to `compare --workers 2`: the jobs not started are dropped and the running ones stopped (no runaway:
    nothing in the study changes after the command exits), every run folder's lock is free, one line says what was
    kept, exit status 130."""
    import signal

    out = tmp_path / "study"
    study = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "compare", "--quick", "--workers", "2",
                              "--no-progress", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob("runs/*/" + CHECKPOINT)) and time.time() < deadline:
            time.sleep(0.2)
        study.send_signal(signal.SIGTERM)
        err = study.communicate(timeout=60)[1]
    finally:
        study.kill()
    assert study.returncode == 130, err
    assert err.splitlines()[-1] == (f"pyro-vae compare: interrupted; {out} keeps every finished training (and each "
                                    f"one's last checkpoint): `pyro-vae compare --resume --out {out}` continues it.")
    assert "Traceback" not in err and "leaked" not in err, err
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before, "a worker kept training after the exit"
    assert all(folders.holder(run) is None for run in out.glob("runs/*"))


def test_sigterm_during_a_trial_marks_it_failed_in_one_line(tmp_path):
    """SIGTERM to `tune` in the middle of a trial: Optuna's traceback of the trial is not shown, the trial is marked
    failed, one line says what was kept and how to continue, exit status 130."""
    import optuna
    import signal

    out = tmp_path / "tune"
    tune = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "tune", "--guide", "normal", "--trials", "3",
                             "--epochs", "100000", *SMALL[:4], "--no-progress", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "optuna.db").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # inside trial 0's training
        tune.send_signal(signal.SIGTERM)
        err = tune.communicate(timeout=60)[1]
    finally:
        tune.kill()
    assert tune.returncode == 130 and err == (
        f"pyro-vae tune: interrupted; the study in {out} keeps its finished trials (the running one is marked "
        f"failed): `pyro-vae tune --resume --out {out}` continues it.\n"), err
    storage = f"sqlite:///{out / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_overwrite_replaces_a_run_and_keeps_nothing_of_it(tmp_path, capsys):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    assert cli.main(["train", *ROWS, "--epochs", "3", "--rows-on-disk", str(run / "rows"), "--out", str(run)]) == 0
    assert cli.main(["evaluate", str(run), "--n-eval", "5", "--ll-samples", "20", "--elbo-samples", "5",
                     "--qstar-steps", "2", "--no-progress"]) == 0
    assert cli.main(["sample", str(run), "--n", "4"]) == 0
    assert cli.main(["sample", str(run), "--n", "4", "--out", str(tmp_path)]) == 0  # a folder: samples.png in it
    assert f"wrote {tmp_path / 'samples.png'}" in capsys.readouterr().out and (tmp_path / "samples.png").is_file()
    written = folders.contents(run)
    assert {"rows", "evaluation.csv", "samples.png", "checkpoint.pt"} <= set(written)
    assert all(folders.owned(name) for name in written if name != "rows"), written  # the list --overwrite removes
    again = ["train", *SMALL, "--epochs", "2", "--seed", "5"]
    assert cli.main([*again, "--out", str(run)]) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert folders.contents(run) == written
    assert cli.main([*again, "--overwrite", "--out", str(run)]) == 0
    assert cli.main([*again, "--out", str(fresh)]) == 0
    assert folders.contents(run) == folders.contents(fresh) == ["checkpoint.prev.pt", "checkpoint.pt", "config.json",
                                                                "history.csv", "learning_curves.png"]
    pd.testing.assert_frame_equal(history(run), history(fresh), check_exact=True)
    assert runs.load_run(run).config["guide"] == "normal"


def test_a_run_folder_is_self_contained_and_can_be_moved(tmp_path, monkeypatch):
    """Rows given relative to the current folder are saved relative to the run; the moved run resumes with its
    rows inside it, from any current folder; a symlink planted in the run is replaced, never written through."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *ROWS, "--epochs", "2", "--rows-on-disk", "a/run/rows", "--out", "a/run"]) == 0
    assert json.loads(Path("a/run/config.json").read_text())["rows_on_disk"] == "rows"
    shutil.move("a/run", "moved")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    (tmp_path / "moved" / "history.csv").unlink()
    (tmp_path / "moved" / "history.csv").symlink_to(outside)
    monkeypatch.chdir(tmp_path / "moved" / "rows")
    assert cli.main(["train", "--resume", "--epochs", "3", "--out", str(tmp_path / "moved")]) == 0
    assert outside.read_text() == "not the run's" and not (tmp_path / "moved" / "history.csv").is_symlink()
    assert not (tmp_path / "a" / "run").exists()
    state = load_checkpoint(tmp_path / "moved" / CHECKPOINT)
    assert state["epoch"] == 3 and state["rows_part"]["on_disk"]["folder"] == "rows"  # relative: moved with it
    loc = runs.load_run(tmp_path / "moved").guide.loc.detach()
    on_disk = torch.from_file(str(rows.slot_file(tmp_path / "moved" / "rows", "loc", 3 % 3)), size=loc.numel())
    assert torch.equal(on_disk.view_as(loc), loc)


def _reference(tmp_path, epochs, *flags):
    ref = tmp_path / "reference"
    assert cli.main(["train", *ROWS, "--epochs", str(epochs), *flags, "--rows-on-disk", str(ref / "rows"),
                     "--out", str(ref)]) == 0
    return ref


def _same_run(a, b):
    pd.testing.assert_frame_equal(history(a), history(b), check_exact=True)
    sa, sb = (load_checkpoint(Path(d) / CHECKPOINT) for d in (a, b))
    assert all(torch.equal(sa["guide"][k], sb["guide"][k]) for k in sa["guide"])
    slot = sa["rows_part"]["on_disk"]["slot"]
    assert slot == sb["rows_part"]["on_disk"]["slot"] == sa["epoch"] % rows.SLOTS
    for key in ("loc", "scale_raw", "loc.adam.exp_avg", "scale_raw.adam.exp_avg_sq"):  # rows and moments, to the bit
        a_rows, b_rows = (rows.slot_file(Path(d) / "rows", key, slot).read_bytes() for d in (a, b))
        assert a_rows == b_rows, key


def test_a_kill_while_a_checkpoint_of_rows_on_disk_is_written_resumes_to_the_same_run(tmp_path):
    ref = _reference(tmp_path, 5)
    run = tmp_path / "killed"
    done = pyro_vae("kill", 3, "train", *ROWS, "--epochs", 5, "--rows-on-disk", run / "rows", "--out", run,
                    script="fault_run.py")
    assert done.returncode == -9, done.stderr  # SIGKILL in the middle of the third checkpoint
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2  # the last complete one is in place
    assert any(folders.is_temp(name) for name in folders.contents(run))  # the cut write, left beside it
    assert folders.holder(run) is None
    done = pyro_vae("train", "--resume", "--epochs", 5, "--out", run)
    assert done.returncode == 0, done.stderr
    _same_run(run, ref)


@pytest.mark.parametrize("step", [1, 3])
def test_a_kill_in_the_middle_of_an_epoch_of_rows_on_disk_resumes_to_the_same_run(tmp_path, step):
    """The checkpoint copies no row: the files of its epoch's copy are never written by the epoch that follows, so a
    SIGKILL after some of that epoch's steps (its copy half written) resumes to the uninterrupted run."""
    ref = _reference(tmp_path, 5)
    run = tmp_path / "killed"
    done = pyro_vae("kill-step", 3, "train", *ROWS, "--epochs", 5, "--rows-on-disk", run / "rows", "--out", run,
                    step, script="fault_run.py")
    assert done.returncode == -9, done.stderr  # SIGKILL after `step` steps of the third epoch
    state = load_checkpoint(run / CHECKPOINT)
    assert state["epoch"] == 2 and state["rows_part"]["on_disk"]["slot"] == 2
    part = state["rows_part"]  # no row inside: the rows and their moments are in the files, the step count here
    assert part["rows"] == {} and "loc" not in state["guide"]
    assert [set(s["state"][0]) for s in part["optim"].values()] == [{"step"}, {"step"}]
    done = pyro_vae("train", "--resume", "--epochs", 5, "--out", run)
    assert done.returncode == 0, done.stderr
    _same_run(run, ref)


def test_a_damaged_checkpoint_of_rows_on_disk_falls_back_on_the_previous_one_and_its_rows(tmp_path, capsys):
    """checkpoint.prev.pt's copy of the files (epoch - 1) is kept while an epoch trains: falling back on it (the
    latest checkpoint damaged) resumes to the uninterrupted run."""
    ref = _reference(tmp_path, 5)
    run = tmp_path / "damaged"
    assert cli.main(["train", *ROWS, "--epochs", "3", "--rows-on-disk", str(run / "rows"), "--out", str(run)]) == 0
    (run / CHECKPOINT).write_bytes(b"damaged")
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--epochs", "5", "--out", str(run)]) == 0
    assert "resuming from checkpoint.prev.pt (epoch 2)" in capsys.readouterr().err
    _same_run(run, ref)


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    """ENOSPC by injection: torch.save writes part of the file and raises, as a full disk makes it."""
    ref = _reference(tmp_path, 4)
    run = tmp_path / "full"
    real_save = torch.save

    def full_disk(state, f, *args, **kw):
        if isinstance(state, dict) and state.get("epoch") == 3:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, f, *args, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli.main(["train", *ROWS, "--epochs", "4", "--rows-on-disk", str(run / "rows"), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err and "--resume continues from it" in err
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
    assert not any(folders.is_temp(name) for name in folders.contents(run))  # the cut file was removed
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(run)]) == 0
    _same_run(run, ref)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs, where this machine lets us mount one (root in a container); else the test is skipped."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected ENOSPC test covers the same path)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path, small_filesystem, capsys):
    ref = tmp_path / "reference"
    assert cli.main(["train", *SMALL, "--epochs", "4", "--out", str(ref)]) == 0
    run = small_filesystem / "run"
    assert cli.main(["train", *SMALL, "--epochs", "2", "--out", str(run)]) == 0
    size = (run / CHECKPOINT).stat().st_size
    free = shutil.disk_usage(small_filesystem).free
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (free - size // 2))  # room for config.json, not for another checkpoint
    assert cli.main(["train", "--resume", "--epochs", "4", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err, err
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 2
    assert not any(folders.is_temp(name) for name in folders.contents(run))
    filler.unlink()
    assert cli.main(["train", "--resume", "--epochs", "4", "--no-progress", "--out", str(run)]) == 0
    pd.testing.assert_frame_equal(history(run), history(ref), check_exact=True)


# ---------------------------------------------------------------- readers and writers (issue 38)

TINY_EVAL = ["--n-eval", "5", "--ll-samples", "20", "--elbo-samples", "5", "--qstar-steps", "2", "--no-progress"]


def tiny_run(folder, epochs=2):
    runs.train({"z_dim": 2, "hidden": [8], "epochs": epochs, "no_progress": True, "out": str(folder)})
    return folder


def files(*roots):
    """Every file under ``roots`` but pyro-vae's lock files, with its bytes."""
    return {p: p.read_bytes() for root in roots for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.name not in folders.LOCKS}


def test_two_evaluates_of_the_same_runs_into_one_out_do_not_mix(tmp_path, monkeypatch, capsys):
    """A second evaluate (other runs' order, another seed) started while the first measures is refused in one line,
    and the first's tables agree: each run's evaluation.csv is the combined table's rows for it."""
    from pyro_vae import measure

    a, b, out = tiny_run(tmp_path / "a"), tiny_run(tmp_path / "b"), tmp_path / "both"
    real, calls, second = measure.evaluate, [], {}

    def evaluate(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the first evaluate has measured (and, unlocked, written) run a: a second one starts
            second["code"] = cli.main(["evaluate", str(b), str(a), "--out", str(out), "--seed", "1", *TINY_EVAL])
            second["err"] = capsys.readouterr().err
        return real(*args, **kw)

    monkeypatch.setattr(measure, "evaluate", evaluate)
    assert cli.main(["evaluate", str(a), str(b), "--out", str(out), *TINY_EVAL]) == 0
    assert second["code"] == 2 and second["err"].count("\n") == 1, second
    assert second["err"].startswith(f"pyro-vae evaluate: error: {a} is being written by process {os.getpid()} "
                                    f"(pyro-vae evaluate): wait for it to finish"), second["err"]
    combined = pd.read_csv(out / "evaluation.csv").set_index(["run", "split"])
    for run in (a, b):
        own = pd.read_csv(run / "evaluation.csv").set_index(["run", "split"])
        pd.testing.assert_frame_equal(own, combined.loc[own.index], check_exact=True)


def test_overwrite_is_refused_while_a_run_is_read(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    before = files(run)
    with folders.reader(run, "evaluate"):
        assert cli.main(["train", *SMALL, "--epochs", "2", "--overwrite", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"pyro-vae train: error: {run} is being read by process {os.getpid()}: wait for it to finish"), err
    assert files(run) == before  # nothing removed or written
    assert cli.main(["train", *SMALL, "--epochs", "2", "--overwrite", "--out", str(run)]) == 0  # free again


def test_evaluate_and_sample_are_refused_while_a_run_is_replaced(tmp_path, capsys):
    """`train --overwrite` holds the readers' lock from its claim to its end: evaluate and sample are refused in one
    line naming it, and write nothing."""
    run = tiny_run(tmp_path / "run")
    replace = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "train", *SMALL, "--epochs", "100000",
                                "--overwrite", "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        lock = run / folders.READERS
        while not (lock.exists() and "--overwrite" in lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        for command in (["evaluate", str(run), *TINY_EVAL], ["sample", str(run), "--n", "4"]):
            assert cli.main(command) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(
                f"pyro-vae {command[0]}: error: {run} is being replaced by process {replace.pid} (pyro-vae train "
                f"--overwrite): wait for it to finish"), err
        assert not {"evaluation.csv", "samples.png"} & set(folders.contents(run))
    finally:
        replace.kill()
        replace.wait()
    with folders.reader(run, "sample"):  # the kernel released it with the killed process
        pass


def test_evaluate_records_the_epoch_it_read(tmp_path):
    """A run still training (config.json says 100000 epochs) is read at its last complete checkpoint, and the
    evaluation says which epoch that was."""
    a, b = tiny_run(tmp_path / "a"), tiny_run(tmp_path / "b", epochs=3)
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "epochs": 100000}))
    assert runs.load_run(a).epoch == load_checkpoint(a / CHECKPOINT)["epoch"] == 2
    assert cli.main(["evaluate", str(a), str(b), "--out", str(tmp_path / "both"), *TINY_EVAL]) == 0
    for run, epoch in ((a, 2), (b, 3)):
        for name in ("evaluation.csv", "evaluation_per_point.csv"):
            assert set(pd.read_csv(run / name)["epoch"]) == {epoch}, (run, name)
    combined = pd.read_csv(tmp_path / "both" / "evaluation.csv")
    assert dict(zip(combined["run"], combined["epoch"])) == {"a": 2, "b": 3}


def full_disk_after(monkeypatch, writes):
    """The disk fills after ``writes`` files have been written: the next fsync raises ENOSPC."""
    real, count = os.fsync, []

    def fsync(fd):
        count.append(fd)
        if len(count) > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_in_sample_says_so_for_sample(tmp_path, monkeypatch, capsys):
    run = tiny_run(tmp_path / "run")
    full_disk_after(monkeypatch, 0)
    assert cli.main(["sample", str(run), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert err == (f"pyro-vae sample: error: no space left on the device ({run / 'samples.png'}): free some space; "
                   f"no samples were written (the file goes into place whole or not at all); run sample again.\n")
    assert "samples.png" not in folders.contents(run) and not any(map(folders.is_temp, folders.contents(run)))


def test_a_full_disk_part_way_through_evaluate_replaces_no_file(tmp_path, monkeypatch, capsys):
    """The disk fills after three of evaluate's eight files: each run and --out keep their earlier evaluation whole
    (none of the new files mixed in), no temp file is left, and the line speaks of evaluate."""
    a, b, out = tiny_run(tmp_path / "a"), tiny_run(tmp_path / "b"), tmp_path / "both"
    assert cli.main(["evaluate", str(a), str(b), "--out", str(out), *TINY_EVAL]) == 0
    before = files(a, b, out)
    capsys.readouterr()
    full_disk_after(monkeypatch, 3)
    assert cli.main(["evaluate", str(a), str(b), "--out", str(out), "--seed", "1", *TINY_EVAL]) == 2
    err = capsys.readouterr().err
    assert err == (f"pyro-vae evaluate: error: no space left on the device ({b / 'evaluation.csv'}): free some "
                   f"space; no file was replaced (each run and --out keep their earlier evaluation, whole); run "
                   f"evaluate again.\n"), err
    assert files(a, b, out) == before
    assert not any(folders.is_temp(p.name) for p in tmp_path.rglob("*"))


# issue 38: temp files a killed write left, the mode of outputs, a link planted at a temp file's name

def test_a_writer_removes_the_temp_files_that_killed_writes_left(tmp_path):
    """Taking the writer lock of a folder pyro-vae wrote before removes the temp files of its killed writes, and
    nothing else (another file, a subfolder's temp file: maybe another writer's); a folder pyro-vae never wrote
    keeps them (claim then refuses it, naming them); nor does it touch the temp files of what a reader of the run
    (evaluate, sample) may be writing into it at that moment."""
    run, other = tmp_path / "run", tmp_path / "other"
    with folders.writer(run, "train"):
        (run / "sub").mkdir()
    stale = [".checkpoint.pt.1a2b3c4d.tmp", "checkpoint.pt1a2b3c4d.tmp", "checkpoint.pt1a2b3c4d.prev.tmp",
             ".config.json.abcd1234.tmp", ".learning_curves.png.0f0f0f0f.tmp"]
    others = ["notes.tmp", "config.json", "sub/.history.csv.abcd1234.tmp", ".evaluation.csv.abcd1234.tmp",
              ".samples.png.abcd1234.tmp"]
    for name in stale + others:
        (run / name).write_text("x")
    other.mkdir()
    (other / stale[0]).write_text("x")
    with folders.writer(run, "train"), folders.writer(other, "train"):
        assert [name for name in stale + others if (run / name).exists()] == others
        assert (other / stale[0]).exists()


def test_outputs_have_the_mode_a_plain_open_gives(tmp_path):
    """config.json, the checkpoints, history.csv and the figure get 0o666 less the umask, as open() gives a file,
    not tempfile.mkstemp's 0o600."""
    import stat

    old = os.umask(0o027)
    try:
        assert cli.main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    outputs = ["config.json", CHECKPOINT, "checkpoint.prev.pt", "history.csv", "learning_curves.png"]
    modes = {name: stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) for name in outputs}
    assert modes == {name: stat.S_IMODE((tmp_path / "plain").stat().st_mode) for name in outputs}
    assert modes["config.json"] == 0o640


def test_a_row_file_replaces_a_link_planted_at_its_temp_name(tmp_path):
    """A symlink at a row file's temp name (``KEY.SLOT.f32.tmp``) is replaced, never written through: the file it
    leads to keeps its bytes, and the row file is a file of its own."""
    outside = tmp_path / "outside.f32"
    outside.write_bytes(b"keep")
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "loc.0.f32.tmp").symlink_to(outside)
    rows.mapped_zeros(folder / "loc.0.f32", (4, 2))
    assert outside.read_bytes() == b"keep"
    assert not (folder / "loc.0.f32").is_symlink() and (folder / "loc.0.f32").stat().st_size == 4 * 2 * 4
    assert sorted(p.name for p in folder.iterdir()) == ["loc.0.f32"]


def test_a_stop_signal_during_a_held_write_is_raised_after_it_from_any_thread():
    """SIGTERM sent while ``signals_held`` holds a write, from a thread started before it (which does not block the
    signal, as torch's threads do not): the write ends first, then the handler runs. A thread mask alone lets the
    kernel hand the signal to that thread, and Python runs the handler in the main thread mid-write."""
    import signal
    import threading

    go, done = threading.Event(), []
    killer = threading.Thread(target=lambda: (go.wait(), os.kill(os.getpid(), signal.SIGTERM)))
    killer.start()

    def stop(signum, frame):
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            with folders.signals_held():
                go.set()
                killer.join()
                for _ in range(10_000):  # bytecodes at which Python would run a pending handler
                    done.append(len(done))
                done.append("written")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert done[-1] == "written"
