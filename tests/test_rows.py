"""Per-datapoint rows in memory-mapped files (pyro_vae.rows): the same training as rows in memory."""

import subprocess
import sys

import pandas as pd
import pyro
import pytest
import torch

import guides
from pyro_vae import data, models, rows
from pyro_vae.optim import LazyAdam
from pyro_vae.train import fit


def _setup(name="meanfield", n=60):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n + 20, 10, generator=g) < torch.linspace(0.1, 0.9, 10)).float()
    ds = data.from_tensors(x[:n], x[n:], binarize="static")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = models.VAE(10, 3, (16,), likelihood="bernoulli", num_data=n)
    guide = guides.make(name, z_dim=3, num_data=n)
    return ds, model, guide, LazyAdam({"lr": 1e-2}, sparse_args={"lr": 5e-2})


def _train(tmp_path, mapped, epochs, resume=False, name="meanfield", folder="run"):
    ds, model, guide, optim = _setup(name)
    if mapped:
        rows.memory_map(guide, optim, tmp_path / folder / "rows")
    history = fit(model, guide, ds, epochs=epochs, batch_size=16, optim=optim, progress=False, seed=1,
                  checkpoint_dir=str(tmp_path / folder), resume=resume)
    return history, model, guide, optim


@pytest.mark.parametrize("name", ["meanfield", "local_mvn"])
def test_memory_mapped_rows_train_exactly_as_rows_in_memory(tmp_path, name):
    h_mem, m_mem, g_mem, _ = _train(tmp_path, False, 4, name=name, folder="mem")
    h_map, m_map, g_map, optim = _train(tmp_path, True, 4, name=name, folder="map")
    pd.testing.assert_frame_equal(h_mem.drop(columns="seconds"), h_map.drop(columns="seconds"), check_exact=True)
    for (k, a), b in zip(sorted(g_mem.state_dict().items()), [v for _, v in sorted(g_map.state_dict().items())]):
        assert torch.equal(a, b), k
    # the rows, and their Adam moments, really are the files: read back from disk they are the trained values
    for n in g_map.row_parameter_names():
        p = dict(g_map.named_parameters())[n]
        assert rows.is_mapped(p)
        on_disk = torch.from_file(str(tmp_path / "map" / "rows" / f"{n}.f32"), size=p.numel()).view(p.shape)
        assert torch.equal(on_disk, p.detach())
        state = optim.optim_objs[p].state[p]
        assert rows.is_mapped(state["exp_avg"]) and rows.is_mapped(state["exp_avg_sq"])
        assert state["exp_avg_sq"].abs().sum() > 0  # stepped, in the file


def test_memory_mapped_rows_resume_exactly(tmp_path):
    straight, *_ = _train(tmp_path, True, 4, folder="straight")
    _train(tmp_path, True, 2, folder="resumed")
    resumed, *_ = _train(tmp_path, True, 4, resume=True, folder="resumed")
    pd.testing.assert_frame_equal(straight.drop(columns="seconds"), resumed.drop(columns="seconds"), check_exact=True)


def test_memory_map_refuses_what_it_cannot_hold(tmp_path):
    ds, model, guide, optim = _setup()
    amortized = guides.make("normal", x_dim=10, z_dim=3, hidden=(8,), num_data=60)
    with pytest.raises(ValueError, match="no per-datapoint rows"):
        rows.memory_map(amortized, optim, tmp_path)
    with pytest.raises(ValueError, match="LazyAdam"):
        rows.memory_map(guide, pyro.optim.Adam({"lr": 1e-3}), tmp_path)
    done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--guide", "normal", "--rows-on-disk",
                           str(tmp_path / "r"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "has none" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
