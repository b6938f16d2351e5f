"""Per-datapoint rows in memory-mapped files (pyro_vae.rows): the same training as rows in memory."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyro
import pytest
import torch

import guides
from guides.base import MIN_SCALE, inverse_positive
from pyro_vae import data, models, rows
from pyro_vae.optim import LazyAdam
from pyro_vae.train import fit


def _setup(name="meanfield", n=60, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n + 20, 10, generator=g) < torch.linspace(0.1, 0.9, 10)).float()
    ds = data.from_tensors(x[:n], x[n:], binarize="static")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = models.VAE(10, 3, (16,), likelihood="bernoulli", num_data=n)
    with torch.device(device):
        guide = guides.make(name, z_dim=3, num_data=n)
    return ds, model, guide, LazyAdam({"lr": 1e-2}, sparse_args={"lr": 5e-2})


def _train(tmp_path, mapped, epochs, resume=False, name="meanfield", folder="run"):
    """``mapped``: False (rows in memory), "memory" (built in memory, then mapped) or "meta" (built as shapes,
    the files written from the starting row)."""
    ds, model, guide, optim = _setup(name, device="meta" if mapped == "meta" else "cpu")
    if mapped and not resume:  # a resume maps the copy of the files its checkpoint names
        rows.memory_map(guide, optim, tmp_path / folder / "rows")
    history = fit(model, guide, ds, epochs=epochs, batch_size=16, optim=optim, progress=False, seed=1,
                  checkpoint_dir=str(tmp_path / folder), resume=resume)
    return history, model, guide, optim


@pytest.mark.parametrize("built", ["memory", "meta"])
@pytest.mark.parametrize("name", ["meanfield", "local_mvn"])
def test_memory_mapped_rows_train_exactly_as_rows_in_memory(tmp_path, name, built):
    h_mem, m_mem, g_mem, _ = _train(tmp_path, False, 4, name=name, folder="mem")
    h_map, m_map, g_map, optim = _train(tmp_path, built, 4, name=name, folder="map")
    pd.testing.assert_frame_equal(h_mem.drop(columns="seconds"), h_map.drop(columns="seconds"), check_exact=True)
    for (k, a), b in zip(sorted(g_mem.state_dict().items()), [v for _, v in sorted(g_map.state_dict().items())]):
        assert torch.equal(a, b), k
    # the rows, and their Adam moments, really are the files: read back from disk they are the trained values,
    # in copy 4 % 3 = 1 of the files, which the checkpoint names (and holds no row of)
    state = torch.load(tmp_path / "map" / "checkpoint.pt", weights_only=True)
    assert state["rows_part"]["on_disk"]["slot"] == 1 and state["rows_part"]["on_disk"]["folder"] == "rows"
    assert not set(g_map.row_parameter_names()) & set(state["guide"])
    for n in g_map.row_parameter_names():
        p = dict(g_map.named_parameters())[n]
        assert rows.is_mapped(p)
        on_disk = torch.from_file(str(rows.slot_file(tmp_path / "map" / "rows", n, 1)), size=p.numel()).view(p.shape)
        assert torch.equal(on_disk, p.detach())
        state = optim.optim_objs[p].state[p]
        assert rows.is_mapped(state["exp_avg"]) and rows.is_mapped(state["exp_avg_sq"])
        assert state["exp_avg_sq"].abs().sum() > 0  # stepped, in the file


def test_memory_mapped_rows_resume_exactly(tmp_path):
    straight, *_ = _train(tmp_path, "meta", 4, folder="straight")
    _train(tmp_path, "meta", 2, folder="resumed")
    resumed, _, guide, _ = _train(tmp_path, "meta", 4, resume=True, folder="resumed")
    pd.testing.assert_frame_equal(straight.drop(columns="seconds"), resumed.drop(columns="seconds"), check_exact=True)
    assert all(rows.is_mapped(p) for p in guide.parameters())  # resume mapped the checkpoint's copy of the files


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_checkpoint_holding_its_rows_resumes_into_row_files(tmp_path, epochs):
    """A checkpoint with the rows inside it (rows in memory, or format 2 of rows on disk) resumed with the rows
    memory-mapped: the rows and their Adam moments go into the files, and the run equals the uninterrupted one
    (after 2 epochs the next, 3, trains in copy 0, the one the rows were copied into: they move first)."""
    straight, *_ = _train(tmp_path, False, 4, folder="straight")
    _train(tmp_path, False, epochs, folder="resumed")
    ds, model, guide, optim = _setup()
    rows.memory_map(guide, optim, tmp_path / "resumed" / "rows")
    resumed = fit(model, guide, ds, epochs=4, batch_size=16, optim=optim, progress=False, seed=1,
                  checkpoint_dir=str(tmp_path / "resumed"), resume=True)
    pd.testing.assert_frame_equal(straight.drop(columns="seconds"), resumed.drop(columns="seconds"), check_exact=True)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["rows_part"]["on_disk"]["slot"] == 1


def _mapped_files():
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("name, mapped, optim", [("normal", False, "lazy"), ("normal", False, "pyro"),
                                                 ("meanfield", False, "lazy"), ("meanfield", "meta", "lazy")])
def test_resume_keeps_no_checkpoint_mapped(tmp_path, name, mapped, optim):
    """Resume reads the checkpoint memory-mapped: every tensor must be copied out of it (moments included),
    else the file, unlinked two checkpoints later, stays mapped and on disk for the rest of the process."""
    def run(epochs, **kw):  # fresh modules and optimizer each time, as in a new process
        if name == "normal":
            ds, model, _, lazy = _setup()
            guide = guides.make("normal", x_dim=10, z_dim=3, hidden=(8,), num_data=60)
        else:
            ds, model, guide, lazy = _setup(name, device="meta" if mapped else "cpu")
        opt = lazy if optim == "lazy" else pyro.optim.Adam({"lr": 1e-2})
        if mapped and not kw.get("resume"):
            rows.memory_map(guide, opt, tmp_path / "rows")
        fit(model, guide, ds, epochs=epochs, batch_size=16, optim=opt, progress=False, seed=1,
            checkpoint_dir=str(tmp_path), **kw)

    run(1)
    seen = []
    run(3, resume=True, on_epoch=lambda epoch, row: seen.append(_mapped_files()))
    assert len(seen) == 2
    assert all(str(tmp_path / "checkpoint") not in maps for maps in seen)  # during the run, after each epoch


def test_files_written_from_the_starting_row_hold_it_in_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "BLOCK_BYTES", 3 * 4 * 4)  # blocks of 3 rows of 4 floats: 10 rows end in a part block
    row = torch.tensor([0.5, -1.0, 2.0, 0.0])
    t = rows.mapped_rows(tmp_path / "r.f32", 10, row)
    assert (tmp_path / "r.f32").stat().st_size == 10 * 4 * 4
    assert torch.equal(t, row.expand(10, 4))
    assert torch.equal(rows.mapped_rows(tmp_path / "z.f32", 7, torch.zeros(2)), torch.zeros(7, 2))


@pytest.mark.parametrize("name", ["meanfield", "local_mvn"])
def test_a_guide_mapped_from_the_meta_device_starts_at_the_standard_normal(tmp_path, name):
    with torch.device("meta"):
        guide = guides.make(name, z_dim=3, num_data=7)
    rows.memory_map(guide, LazyAdam({"lr": 1e-2}), tmp_path)
    assert all(rows.is_mapped(p) for p in guide.parameters())
    in_memory = guides.make(name, z_dim=3, num_data=7)  # bit for bit what the guides were built with before
    assert torch.equal(in_memory.scale_raw, inverse_positive(torch.ones(7, 3), MIN_SCALE))
    assert torch.equal(in_memory.loc, torch.zeros(7, 3))
    q = guide.distribution(torch.zeros(7, 10), torch.arange(7))
    assert torch.equal(q.mean, torch.zeros(7, 3))
    cov = q.covariance_matrix if name == "local_mvn" else torch.diag_embed(q.variance)
    torch.testing.assert_close(cov, torch.eye(3).expand(7, 3, 3), rtol=1e-6, atol=1e-6)


def test_memory_map_refuses_what_it_cannot_hold(tmp_path):
    ds, model, guide, optim = _setup()
    amortized = guides.make("normal", x_dim=10, z_dim=3, hidden=(8,), num_data=60)
    with pytest.raises(ValueError, match="no per-datapoint rows"):
        rows.memory_map(amortized, optim, tmp_path)
    with pytest.raises(ValueError, match="LazyAdam"):
        rows.memory_map(guide, pyro.optim.Adam({"lr": 1e-3}), tmp_path)
    with torch.device("meta"):  # a flow's rows start at random: they cannot be written from one row
        flow = guides.make("local_flow", z_dim=3, num_data=60)
    with pytest.raises(ValueError, match="build the guide in memory"):
        rows.memory_map(flow, optim, tmp_path / "flow")
    assert not (tmp_path / "flow").exists()
    with torch.device("meta"):  # and fit says what a guide of shapes only still needs
        shapes = guides.make("meanfield", z_dim=3, num_data=60)
    with pytest.raises(ValueError, match="meta device.*rows.memory_map"):
        fit(model, shapes, ds, epochs=1, optim=optim, progress=False)
    done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--guide", "normal", "--rows-on-disk",
                           str(tmp_path / "r"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "has none" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_train_rows_on_disk_from_the_command_line_continues_as_rows_in_memory(tmp_path, capsys, monkeypatch):
    from pyro_vae import cli
    from pyro_vae.train import CHECKPOINT, load_checkpoint

    small = ["--guide", "meanfield", "--z-dim", "4", "--hidden", "32", "--no-progress"]
    mapped = tmp_path / "mapped"
    folder = mapped / "rows"  # inside the run, and kept in config.json relative to it

    def files_hold_the_checkpoint():
        """The checkpoint holds no row: it names the copy of the files that holds its epoch's, e % 3."""
        assert json.loads((mapped / "config.json").read_text())["rows_on_disk"] == "rows"
        state = load_checkpoint(mapped / CHECKPOINT)
        assert "loc" not in state["guide"] and state["rows_part"]["on_disk"]["slot"] == state["epoch"] % 3
        assert {f"loc.{i}{rows.SUFFIX}" for i in range(3)} <= {p.name for p in folder.iterdir()}

    assert cli.main(["train", "--epochs", "4", "--out", str(tmp_path / "memory"), *small]) == 0
    assert cli.main(["train", "--epochs", "2", "--out", str(mapped), "--rows-on-disk", str(folder), *small]) == 0
    files_hold_the_checkpoint()
    # --resume keeps the run's rows on disk without being told again
    assert cli.main(["train", "--epochs", "3", "--out", str(mapped), "--resume", "--no-progress"]) == 0
    files_hold_the_checkpoint()
    # and told again, it checks the run's guide (meanfield), not the flag's default (normal, which has no rows)
    assert cli.main(["train", "--epochs", "4", "--out", str(mapped), "--resume", "--no-progress",
                     "--rows-on-disk", str(folder)]) == 0
    files_hold_the_checkpoint()
    # it stays on disk, on the CPU: resuming it on a GPU is refused before any work
    before = (mapped / "config.json").read_text()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the refusal comes before any CUDA call
    assert cli.main(["train", "--epochs", "5", "--out", str(mapped), "--resume", "--device", "cuda"]) == 2
    assert "drop --device cuda" in capsys.readouterr().err
    assert (mapped / "config.json").read_text() == before
    a, b = (pd.read_csv(tmp_path / run / "history.csv") for run in ("memory", "mapped"))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    # the rows in the copy the last checkpoint names are the in-memory run's, bit for bit, and so are load_run's
    from pyro_vae import runs

    memory = load_checkpoint(tmp_path / "memory" / CHECKPOINT)["guide"]
    loaded = runs.load_run(mapped).guide
    for name in ("loc", "scale_raw"):
        saved = memory[name]
        on_disk = torch.from_file(str(rows.slot_file(folder, name, 4 % 3)), size=saved.numel()).view(saved.shape)
        assert torch.equal(on_disk, saved) and torch.equal(getattr(loaded, name).detach(), saved), name
        # read through a private mapping of that file: load_run copies no row, and writes none
        assert str(rows.slot_file(folder, name, 4 % 3)) in Path("/proc/self/maps").read_text()
