"""Data-parallel training: 2 CPU processes on gloo (loopback only) against one process, resume, the CLI.

The processes are launched the standard way (``python -m torch.distributed.run --standalone``, which is
``torchrun``), each launch bounded in time. ``tests/ddp_run.py`` is the training script they run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyro
import pytest
import torch

from pyro_vae import checkpoint, data, distributed, folders, models
from pyro_vae.distributed import DistributedError, ShardSampler
from pyro_vae.train import fit

SCRIPT = Path(__file__).with_name("ddp_run.py")
#: one process per core, loopback only
ENV = {"OMP_NUM_THREADS": "1", **({"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {})}
TIMEOUT_S = 240


def _run(args, processes=None, cwd=None):
    """``args`` in one process, or under torchrun in ``processes``; fails the test with the output on error."""
    launcher = [sys.executable] if processes is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd,
                          env={**os.environ, **ENV})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _state(folder, r=0):
    return torch.load(Path(folder) / f"rows{r}.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_equal_one_process_with_the_same_global_batches(tmp_path):
    """A point-estimate guide (deterministic loss): 2 ranks equal 1 process over 2 shards up to float order.

    The guide has an encoder (all-reduced by DDP) and per-datapoint rows (not all-reduced; their gradient
    divided by P, which the rows' Adam eps = 1 makes visible: without the division the rows end 0.03 apart).
    """
    one, two = tmp_path / "one", tmp_path / "two"
    _run([str(SCRIPT), str(one), "--guide", "delta", "--epochs", "3", "--shards", "2"])
    _run([str(SCRIPT), str(two), "--guide", "delta", "--epochs", "3"], processes=2)
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert len(h1) == len(h2) == 3
    assert h1.train_loss.diff().dropna().lt(0).all()  # it trains
    pd.testing.assert_series_equal(h1.train_loss, h2.train_loss, rtol=1e-6, atol=0)
    pd.testing.assert_series_equal(h1.test_loss, h2.test_loss, rtol=1e-6, atol=0)
    s1, s2a, s2b = _state(one), _state(two, 0), _state(two, 1)
    assert _max_diff(s1["model"], s2a["model"]) < 1e-6  # decoder (and encoder, which moves the rows' loss)
    assert _max_diff(s2a["model"], s2b["model"]) == 0
    # each rank holds only its shard's rows (half of them), and they are the one process's rows of that shard
    held = [s2a["dataset_rows"], s2b["dataset_rows"]]
    assert [len(h) for h in held] == [48, 48] and torch.equal(torch.cat(held).sort().values, torch.arange(96))
    assert all(len(s["rows"]["offset"]) == 48 for s in (s2a, s2b))
    for s in (s2a, s2b):
        assert _max_diff({"offset": s1["rows"]["offset"][s["dataset_rows"]]}, s["rows"]) < 1e-6


@pytest.mark.parametrize("guide", ["normal", "meanfield"])
def test_distributed_resume_continues_exactly(tmp_path, guide):
    """2 processes, stochastic guides: 2 epochs, stop, resume to 4 == 4 epochs straight (each rank's RNG saved)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run([str(SCRIPT), str(straight), "--guide", guide, "--epochs", "4", "--checkpoint"], processes=2)
    _run([str(SCRIPT), str(resumed), "--guide", guide, "--epochs", "2", "--checkpoint"], processes=2)
    _run([str(SCRIPT), str(resumed), "--guide", guide, "--epochs", "4", "--resume"], processes=2)
    h1, h2 = pd.read_csv(straight / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_frame_equal(h1.drop(columns="seconds"), h2.drop(columns="seconds"), check_exact=True)
    a, b = (checkpoint.every_row(checkpoint.load(d / "checkpoint.pt"), d) for d in (straight, resumed))
    assert _max_diff(a["guide"], b["guide"]) == 0 and _max_diff(a["model"], b["model"]) == 0
    assert a["distributed"]["world_size"] == 2 and len(a["distributed"]["rng"]) == 2
    assert sorted(p.name for p in resumed.iterdir() if "checkpoint" in p.name) == ["checkpoint.prev.pt",
                                                                                  "checkpoint.pt"]
    if guide == "meanfield":  # a shard file per rank for this checkpoint and the one before, no older one
        assert a["shards"]["files"] == ["shards/epoch4.rank0.pt", "shards/epoch4.rank1.pt"]
        assert "loc" not in checkpoint.load(straight / "checkpoint.pt")["guide"]  # the rows are in the shards
        assert sorted(p.name for p in (resumed / "shards").iterdir()) == [
            "epoch3.rank0.pt", "epoch3.rank1.pt", "epoch4.rank0.pt", "epoch4.rank1.pt"]


def test_cli_distributed_train_writes_from_rank_0_and_refuses_a_single_process(tmp_path):
    out = tmp_path / "run"
    exe = shutil.which("pyro-vae") or str(Path(sys.executable).with_name("pyro-vae"))
    cli = ["--no-python", exe] if Path(exe).exists() else ["-m", "pyro_vae.cli"]
    flags = ["train", "--distributed", "--guide", "meanfield", "--epochs", "2", "--no-progress", "--out", str(out)]
    done = _run([*cli, *flags], processes=2)
    assert done.stdout.count("meanfield on digits: epoch 2") == 1  # rank 0 alone reports
    assert set(folders.contents(out)) == {"config.json", "history.csv", "checkpoint.pt", "checkpoint.prev.pt",
                                          "learning_curves.png", "shards"}
    assert len(pd.read_csv(out / "history.csv")) == 2
    # rows on disk, one folder per rank: the same run to the bit
    on_disk = tmp_path / "on_disk"
    _run([*cli, *flags[:-1], str(on_disk), "--rows-on-disk", str(on_disk / "rows")], processes=2)
    assert sorted(p.name for p in (on_disk / "rows").iterdir()) == ["rank0", "rank1"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(on_disk / "history.csv").drop(columns="seconds"), check_exact=True)
    a, b = (checkpoint.every_row(checkpoint.load(d / "checkpoint.pt"), d)["guide"] for d in (out, on_disk))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the run is an ordinary run for every other command
    from pyro_vae import runs

    run = runs.load_run(out)
    assert run.epochs == 2 and run.config["distributed"]
    assert run.guide.loc.shape[0] == len(run.data.train) and run.guide.shard is None  # the shards put together
    # evaluate reads both sharded runs (rows in memory, rows in files) as one run: the same L[q] on the train split
    quick = ["--split", "train", "--n-eval", "20", "--ll-samples", "50", "--elbo-samples", "10", "--qstar-steps",
             "20", "--families", "normal", "--no-progress"]
    tables = []
    for run_dir in (out, on_disk):  # (one run: its evaluation is written into its folder)
        assert subprocess.run([sys.executable, "-m", "pyro_vae.cli", "evaluate", str(run_dir), *quick],
                              capture_output=True, timeout=TIMEOUT_S).returncode == 0
        tables.append(pd.read_csv(run_dir / "evaluation.csv").drop(columns="run"))
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    # one process cannot continue it, and --distributed outside torchrun stops before any work
    for argv, message in ((["train", "--resume", "--epochs", "3", "--out", str(out)], "written by 2 processes"),
                          (flags[:-1] + [str(tmp_path / "new")], "launch with `torchrun")):
        done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", *argv], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "new").exists()


def _cli():
    exe = shutil.which("pyro-vae") or str(Path(sys.executable).with_name("pyro-vae"))
    return ["--no-python", exe] if Path(exe).exists() else ["-m", "pyro_vae.cli"]


def test_a_rank_killed_while_its_shard_is_written_resumes_to_the_same_run(tmp_path):
    """Rows on disk, 2 processes: rank 1 is killed in the middle of writing its shard of epoch 3 (rank 0's may be
    written). checkpoint.pt, the commit, still names epoch 2's shards and row files; the resumed run equals the
    uninterrupted one with its rows in memory, row for row."""
    flags = ["train", "--distributed", "--guide", "meanfield", "--z-dim", "2", "--hidden", "8", "--epochs", "4",
             "--no-progress"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run([*_cli(), *flags, "--out", str(straight)], processes=2)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(Path(__file__).with_name("fault_run.py")), "kill-shard", "3", *flags[:-1], "--no-progress",
              "--out", str(killed), "--rows-on-disk", str(killed / "rows")]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **ENV})
    assert done.returncode != 0 and "epoch 4" not in done.stdout, done.stderr[-2000:]
    state = checkpoint.load(killed / "checkpoint.pt")
    assert state["epoch"] == 2 and state["shards"]["files"] == ["shards/epoch2.rank0.pt", "shards/epoch2.rank1.pt"]
    assert any(f.name.endswith(".tmp") for f in (killed / "shards").iterdir())  # rank 1's cut write
    _run([*_cli(), "train", "--resume", "--distributed", "--epochs", "4", "--out", str(killed)], processes=2)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(killed / "history.csv").drop(columns="seconds"), check_exact=True)
    a, b = (checkpoint.every_row(checkpoint.load(d / "checkpoint.pt"), d)["guide"] for d in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(f.name.endswith(".tmp") for f in (killed / "shards").iterdir())  # cleared at the next commit
    # each rank's files hold its half of the rows, and the checkpoint and its shards hold none of them
    n, z = 1150, 2  # digits' training rows (after the validation split), z_dim
    sizes = sorted(p.stat().st_size for p in (killed / "rows").glob("rank*/loc.0.f32"))
    assert sizes == [(n // 2) * z * 4, (n - n // 2) * z * 4]
    part = torch.load(killed / "shards" / "epoch4.rank1.pt", weights_only=True)
    assert part["rows"] == {} and part["on_disk"]["slot"] == 4 % 3
    # another number of processes is refused in one line that says how many
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           *_cli(), "train", "--resume", "--distributed", "--epochs", "5", "--out", str(killed)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **ENV})
    assert done.returncode != 0 and "written by 2 processes and this run has 1: resume with as many" in done.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_on_the_loopback_interface_and_equal_one_process(tmp_path):
    """Two separate torchrun launches, one process each, as two machines would run them (c10d rendezvous at one
    endpoint, here 127.0.0.1): the same run as one process over 2 shards, to float order."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([str(SCRIPT), str(one), "--guide", "delta", "--epochs", "3", "--shards", "2"])
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=pyro-vae-test",
                               f"--node-rank={node}", str(SCRIPT), str(two), "--guide", "delta", "--epochs", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
             for node in (0, 1)]
    outs = [node.communicate(timeout=TIMEOUT_S) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(err[-2000:] for _, err in outs)
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    pd.testing.assert_series_equal(h1.train_loss, h2.train_loss, rtol=1e-6, atol=0)
    s1 = _state(one)
    for r in (0, 1):
        s = _state(two, r)
        assert _max_diff(s1["model"], s["model"]) < 1e-6 and len(s["dataset_rows"]) == 48
        assert _max_diff({"offset": s1["rows"]["offset"][s["dataset_rows"]]}, s["rows"]) < 1e-6


# ---------------------------------------------------------------- in one process


@pytest.mark.parametrize("n", [96, 97, 99])
def test_shard_sampler_keeps_rows_on_their_rank_and_reshuffles_them(n):
    world, batch = 2, 16
    s = ShardSampler(n, batch, world, seed=3)
    owned = [set(s.owned(r).tolist()) for r in range(world)]
    assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == set(range(n))
    for epoch in (0, 1):
        per_rank = [s.batches(epoch, r) for r in range(world)]
        assert len(per_rank[0]) == len(per_rank[1])  # same number of steps on every rank
        for batches, rows in zip(per_rank, owned):
            seen = torch.cat(batches).tolist()
            assert set(seen) == rows  # every owned row, nothing else
            assert len(seen) - len(rows) <= 1  # a short shard repeats one row
            assert all(len(b) == len(c) for b, c in zip(*per_rank))  # equal steps across ranks
    assert not torch.equal(torch.cat(s.batches(0, 0)), torch.cat(s.batches(1, 0)))  # a new order each epoch
    assert torch.equal(torch.cat(s.batches(1, 0)), torch.cat(ShardSampler(n, batch, world, seed=3).batches(1, 0)))
    # one process over 2 shards takes, step by step, what the 2 ranks take together
    single = ShardSampler(n, batch, 1, shards=2, seed=3)
    for t, b in enumerate(single.batches(0, 0)):
        assert torch.equal(b, torch.cat([s.batches(0, 0)[t], s.batches(0, 1)[t]]))


@pytest.mark.parametrize("n, world, shards", [(96, 2, 2), (97, 3, 3), (99, 2, 4)])
def test_a_rank_holds_its_shards_rows_and_finds_each_by_its_dataset_index(n, world, shards):
    import guides
    from pyro_vae import rows

    sampler = ShardSampler(n, 4 * shards, world, shards, seed=0)
    full = guides.make("meanfield", z_dim=2, num_data=n)
    with torch.no_grad():
        full.loc.copy_(torch.arange(2 * n, dtype=torch.float32).view(n, 2))  # every row its own values
    held = []
    for r in range(world):
        shard = sampler.shard_of(r)
        mine = shard.dataset_rows()
        held.append(mine)
        assert torch.equal(mine, sampler.owned(r)) and len(shard) == len(mine)
        assert torch.equal(shard.local(mine), torch.arange(len(mine)))
        guide = guides.make("meanfield", z_dim=2, num_data=n)
        guide.load_state_dict(full.state_dict())
        rows.keep_shard(guide, shard)
        assert guide.loc.shape == (len(mine), 2) and guide.row_parameter_names() == ["loc", "scale_raw"]
        batch = mine[torch.randperm(len(mine))[:7]]  # dataset indices, in any order: the rows the full guide has
        assert torch.equal(guide.distribution(torch.zeros(7, 1), batch).mean, full.loc[batch])
        others = torch.tensor(sorted(set(range(n)) - set(mine.tolist()))[:2])
        with pytest.raises(ValueError, match="not in this process's shards"):
            guide.distribution(torch.zeros(2, 1), others)
    assert torch.equal(torch.cat(held).sort().values, torch.arange(n))  # every row on exactly one rank


def _small():
    ds = data.from_tensors((torch.rand(40, 6) < 0.5).float(), (torch.rand(8, 6) < 0.5).float(), binarize="static")
    model = models.VAE(6, 2, (8,), likelihood="bernoulli", num_data=40)
    import guides

    return ds, model, guides.make("normal", x_dim=6, z_dim=2, hidden=(8,), num_data=40)


def test_distributed_fit_refuses_bad_settings_before_any_step():
    ds, model, guide = _small()
    with pytest.raises(DistributedError, match="module_local_params=True"):
        fit(model, guide, ds, epochs=1, distributed=True)
    with pytest.raises(ValueError, match="local_steps=1"):
        fit(model, guide, ds, epochs=1, distributed=True, local_steps=2)
    with pytest.raises(ValueError, match="distributed=True"):
        fit(model, guide, ds, epochs=1, shards=2)
    with pyro.settings.context(module_local_params=True):
        ds, model, guide = _small()
        before = {k: v.clone() for k, v in {**model.state_dict(), **guide.state_dict()}.items()}
        with pytest.raises(DistributedError, match="multiple of 3"):
            fit(model, guide, ds, epochs=1, batch_size=16, distributed=True, shards=3)
        with pytest.raises(DistributedError, match="LazyAdam"):
            fit(model, guide, ds, epochs=1, distributed=True, optim=pyro.optim.Adam({"lr": 1e-3}))
        after = {**model.state_dict(), **guide.state_dict()}
        assert all(torch.equal(before[k], after[k]) for k in before)
        history = fit(model, guide, ds, epochs=2, batch_size=8, distributed=True, shards=2, progress=False)
        assert len(history) == 2 and history.train_loss.notna().all()  # the same call, well set, trains


def test_init_outside_torchrun_names_the_launch(monkeypatch):
    for k in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(DistributedError, match="torchrun --standalone"):
        distributed.init()
