"""Past one process: data-parallel throughput, and per-datapoint rows at N = 10^5..10^8, side by side.

    python benchmarks/scale.py                    # both parts; writes benchmarks/scale_*.csv and scale.md
    python benchmarks/scale.py --part ddp         # only the data-parallel rows
    python benchmarks/scale.py --part rows --sizes 100000 1000000
    python benchmarks/scale.py --part shards      # per-rank memory and step time, before and after shard-local rows
    python benchmarks/scale.py --part checkpoint  # a checkpoint of rows on disk at N = 10^7, 10^8, before and after

``ddp``: ``pyro-vae train`` on digits, one process against ``torchrun --nproc_per_node=2 ...
--distributed``, each from a fresh launch, the same global batch (128) and epochs; the figure is
the median seconds of an epoch's training steps (epochs after the first), as ``history.csv``
records them, and each speed-up is another launch's time / the 2-process time (above 1: the 2
processes are faster). One process runs as ``pyro-vae train`` does (compiled ELBO, 1 thread and
2), without the JIT, and under torchrun as 1 ``--distributed`` process (DDP's own overhead);
each of the 2 processes has 1 thread.

``rows``: one ``svi.step`` of a digits-sized VAE (64-256-z) with a ``meanfield`` guide over N
datapoints, batch 128 drawn uniformly from N (the worst case for the page cache), rows in
memory against rows memory-mapped (:func:`pyro_vae.rows.memory_map`, the guide built on the
meta device). Each case runs in a fresh process: building the guide, median step seconds over
200 steps after 20, writing the checkpoint, and resuming from it into a fresh guide; for each
phase its seconds and the peak of the process's anonymous memory (RssAnon, sampled every 5 ms:
what the rows cost that the kernel cannot drop; memory-mapped pages are file cache, counted in
the final peak resident memory, VmHWM, while resident).

``shards`` and ``checkpoint`` measure this tree against the one *before* shard-local rows and row files that a
checkpoint does not copy (``--before REV``, a git revision checked out into a temporary worktree and put first on
``PYTHONPATH``): the same case code, run on either package.

``shards``: ``fit(..., distributed=True)`` of a 64-256-8 VAE and a ``meanfield`` guide over N rows (every row the
same 64 pixels: the data cost nothing), rows in memory, P = 1 and 2 processes under torchrun (gloo, one thread
each), the first 200 steps of an epoch per rank (batch 128 in all), no checkpoint. Per rank: the peak anonymous
memory over the whole fit (building the guide included; it also holds ``fit``'s checks of the N x 64 data, which
materialize temporaries of N x 64 bytes and more), the anonymous memory each rank holds once trained (rows, moments,
networks), and the mean seconds of a step; two rounds, interleaved, the trees' order swapped. Before, every rank
builds all N rows and Adam moments and all-reduces them at the end; after, rank r builds only its shard's.

``checkpoint``: one process, rows on disk (the guide built on the meta device, ``rows.memory_map``), 200 steps,
then a checkpoint as ``fit`` writes it at an epoch's end, after ``os.sync()`` has written back what the steps
dirtied (as the kernel does during an epoch of minutes): before, ``checkpoint.save`` streams every row and moment
into ``checkpoint.pt``; after, the rows the 200 steps did not visit are counted as visited (a real epoch's steps
copy them into the epoch's copy of the files; only the checkpoint is timed here), and the checkpoint fsyncs that
copy and writes ``checkpoint.pt`` without rows. The
figures: its seconds and the bytes of the files it writes, and the median step (after: with the copy-on-visit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------- data-parallel


def _train(out: Path, processes: int, threads: int, epochs: int, extra) -> float:
    """Median seconds of an epoch's training steps of one launch (epochs after the first).

    ``processes=0``: ``pyro-vae train`` itself; otherwise torchrun with that many ``--distributed`` processes.
    """
    exe = str(Path(sys.executable).with_name("pyro-vae"))
    flags = ["train", "--epochs", str(epochs), "--no-progress", "--out", str(out), *extra]
    if processes == 0:
        cmd = [exe, *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "--no-python", exe, *flags, "--distributed"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=1800)
    seconds = pd.read_csv(out / "history.csv").seconds.iloc[1:]
    return float(statistics.median(seconds))


#: (label, processes (0: no torchrun), threads per process, extra flags)
LAUNCHES = [("1 process, JIT", 0, 1, []), ("1 process, JIT, 2 threads", 0, 2, []),
            ("1 process, no JIT", 0, 1, ["--no-jit"]), ("torchrun, 1 process", 1, 1, []),
            ("torchrun, 2 processes", 2, 1, [])]


def ddp_rows(args) -> pd.DataFrame:
    """Seconds per epoch of each launch in :data:`LAUNCHES`, and each against the 2-process one."""
    cases = {"digits 64-256-8, normal guide": ["--guide", "normal"],
             "digits 64-1024-1024-32, normal guide": ["--guide", "normal", "--hidden", "1024", "1024", "--z-dim", "32"],
             "digits 64-256-8, meanfield guide": ["--guide", "meanfield"]}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, extra in cases.items():
            times = {label: _train(Path(tmp) / f"{len(out)}-{i}", processes, threads, args.epochs, extra + more)
                     for i, (label, processes, threads, more) in enumerate(LAUNCHES)}
            two = times["torchrun, 2 processes"]
            out.append({"case": what, **{f"{k} (s/epoch)": v for k, v in times.items()},
                        **{f"speed-up of 2 processes vs {k}": v / two for k, v in times.items() if v is not two}})
            print(out[-1], flush=True)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- rows


class PeakAnon:
    """The peak of this process's anonymous memory (RssAnon, MB) while the ``with`` block runs, sampled every 5 ms:
    what the rows cost in RAM, where VmHWM also counts the mapped files' pages the kernel may drop."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _status_mb("RssAnon"), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _status_mb("RssAnon"))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("RssAnon"))


def rows_case(n: int, z: int, mapped: bool, steps: int = 200, warmup: int = 20) -> dict:
    """One case, in this process: build, step, checkpoint and resume of a meanfield guide over ``n`` rows.

    Memory-mapped rows are built on the meta device and written into their files (:func:`pyro_vae.rows.memory_map`).
    After the steps, the run is checkpointed as ``fit`` does it and resumed into a second guide (rows in new files,
    or in memory), up to its first step, which loads the Adam moments.
    """
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO

    import guides
    from pyro_vae import checkpoint, models, rows
    from pyro_vae.optim import LazyAdam

    torch.set_num_threads(1)

    def build(folder):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = models.VAE(64, z, (256,), likelihood="bernoulli", num_data=n)
        with torch.device("meta" if mapped else "cpu"):
            guide = guides.make("meanfield", z_dim=z, num_data=n)
        optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
        if mapped:
            rows.memory_map(guide, optim, folder)
        return model, guide, optim, SVI(model.model, guide, optim, Trace_ELBO())

    x = (torch.rand(128, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with tempfile.TemporaryDirectory(dir=os.environ.get("ROWS_DIR")) as tmp:
        t0 = time.perf_counter()
        with PeakAnon() as build_mem:
            model, guide, optim, svi = build(Path(tmp) / "rows")
        build_s = time.perf_counter() - t0
        times = []
        with PeakAnon() as step_mem:
            for i in range(warmup + steps):
                idx = torch.randint(n, (128,))
                t = time.perf_counter()
                svi.step(x, idx)
                times.append(time.perf_counter() - t)
        path = Path(tmp) / checkpoint.CHECKPOINT
        with PeakAnon() as save_mem:
            t = time.perf_counter()
            checkpoint.save(path, model, guide, optim, [], {})
            save_s = time.perf_counter() - t
        del model, guide, optim, svi
        with PeakAnon() as resume_mem:
            t = time.perf_counter()
            model, guide, optim, svi = build(Path(tmp) / "resumed")
            checkpoint.restore(checkpoint.read_run(path, mmap=True), model, guide, optim)
            svi.step(x, torch.randint(n, (128,)))  # the first step puts the saved Adam moments in place
            resume_s = time.perf_counter() - t
        result = {"n": n, "z": z, "rows": "memory-mapped" if mapped else "in memory",
                  "row_floats": 2 * n * z, "rows_and_moments_gb": 6 * n * z * 4 / 1e9,
                  "step_ms": 1000 * statistics.median(times[warmup:]), "build_s": build_s,
                  "build_peak_anon_mb": build_mem.peak, "step_peak_anon_mb": step_mem.peak,
                  "checkpoint_s": save_s, "checkpoint_peak_anon_mb": save_mem.peak,
                  "resume_s": resume_s, "resume_peak_anon_mb": resume_mem.peak,
                  "peak_rss_mb": _status_mb("VmHWM")}
    return result


def rows_rows(args) -> pd.DataFrame:
    out = []
    for z in args.zs:
        for n in args.sizes:
            for mapped in (False, True):
                gb = 6 * n * z * 4 / 1e9
                # on disk: the files, the checkpoint and the resumed run's files
                if not mapped and gb > args.max_ram_gb or mapped and 3 * gb > args.max_disk_gb:
                    out.append({"n": n, "z": z, "rows": "memory-mapped" if mapped else "in memory",
                                "row_floats": 2 * n * z, "rows_and_moments_gb": gb,
                                "note": f"not run: {(3 if mapped else 1) * gb:.0f} GB > the "
                                        f"{'disk' if mapped else 'RAM'} limit"})
                    continue
                done = subprocess.run([sys.executable, __file__, "--case", str(n), str(z), str(int(mapped))],
                                      capture_output=True, text=True, timeout=3600)
                if done.returncode == 0:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    why = done.stderr.strip().splitlines()[-1][:100] if done.stderr.strip() else done.returncode
                    row = {"n": n, "z": z, "rows": "memory-mapped" if mapped else "in memory", "note": f"failed: {why}"}
                out.append(row)
                print(row, flush=True)
    table = pd.DataFrame(out)
    mem = table[table.rows == "in memory"].set_index(["n", "z"]).step_ms
    mapped = table[table.rows == "memory-mapped"].set_index(["n", "z"]).step_ms
    table["step_ratio_mapped_vs_memory"] = [mapped.get((r.n, r.z), float("nan")) / mem.get((r.n, r.z), float("nan"))
                                            if r.rows == "memory-mapped" else float("nan") for r in table.itertuples()]
    return table


# ---------------------------------------------------------------- before / after shard-local rows


def _worktree(rev: str) -> Path:
    """A checkout of ``rev`` in a temporary folder (``git worktree``), for the package as it was."""
    root = HERE.parent
    folder = Path(tempfile.mkdtemp(prefix="pyro-vae-before-"))
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)
    return folder


def _case(tree: Path, args, processes: int = 0) -> list:
    """This file's ``--CASE ...`` run with ``tree`` first on PYTHONPATH (under torchrun with ``processes``); the JSON
    line each process prints."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launch = [sys.executable] if not processes else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run([*launch, __file__, *map(str, args)], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _digits_sized(n: int, z: int):
    """A 64-256-z VAE, N identical 64-pixel training rows (an expanded view: no memory) and 16 test rows."""
    import pyro
    import torch

    from pyro_vae import data, models

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = (torch.rand(1, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    ds = data.from_tensors(x.expand(n, 64), x.expand(16, 64), binarize="static")
    return ds, models.VAE(64, z, (256,), likelihood="bernoulli", num_data=n)


def shard_case(n: int, steps: int) -> dict:
    """One rank of a data-parallel fit over ``n`` rows (module docstring, ``shards``), in whichever package."""
    import pyro
    import torch

    import guides
    import pyro_vae
    from pyro_vae import distributed, rows
    from pyro_vae.optim import LazyAdam
    from pyro_vae.train import fit

    torch.set_num_threads(1)
    full_batches, ran = distributed.ShardSampler.batches, []

    def first_batches(self, epoch, r):
        batches = full_batches(self, epoch, r)[:steps]
        ran.append(len(batches))
        return batches

    distributed.ShardSampler.batches = first_batches
    pyro.settings.set(module_local_params=True)
    distributed.init()
    with PeakAnon() as mem:
        ds, model = _digits_sized(n, 8)
        optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
        after = hasattr(rows, "keep_shard")
        with torch.device("meta" if after else "cpu"):  # after: only this rank's shard is ever filled
            guide = guides.make("meanfield", z_dim=8, num_data=n)
        if after:
            distributed.prepare(guide, optim, n, 128, None, 0)
            rows.in_memory(guide)
        t = time.perf_counter()
        history = fit(model, guide, ds, epochs=1, batch_size=128, distributed=True, optim=optim, progress=False)
        fit_s = time.perf_counter() - t
    held, rank = guide.loc.shape[0], distributed.rank()
    end = _status_mb("RssAnon")  # what the rank holds once trained: rows, their moments, the networks
    torch.distributed.destroy_process_group()
    return {"rank": rank, "rows_held": held, "held_anon_mb": end, "step_ms": 1000 * float(history.seconds.iloc[0]) / ran[-1], "fit_s": fit_s,
            "peak_anon_mb": mem.peak, "package": str(Path(pyro_vae.__file__).parent.parent)}


def shards_rows(args) -> pd.DataFrame:
    """Per-rank memory and step time at each N and P, before and after (module docstring)."""
    before = _worktree(args.before)
    trees = {f"all rows in every rank ({args.before})": before, "shard-local rows (this tree)": HERE.parent}
    out = []
    try:
        for round_ in range(args.rounds):  # interleaved, the order of the two trees swapped every round
            for n in args.shard_sizes:
                for processes in (1, 2):
                    for layout, tree in (list if round_ % 2 == 0 else reversed)(list(trees.items())):
                        for r in _case(tree, ["--shard-case", n, 200], processes):
                            out.append({"round": round_, "n": n, "processes": processes, "layout": layout, **r})
                            print(out[-1], flush=True)
    finally:
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(before)],
                       capture_output=True)
    return pd.DataFrame(out)


def checkpoint_case(n: int, z: int, steps: int = 200) -> dict:
    """A checkpoint of rows on disk after ``steps`` steps, in whichever package (module docstring)."""
    import torch
    from pyro.infer import SVI, Trace_ELBO

    import guides
    import pyro_vae
    from pyro_vae import checkpoint, rows
    from pyro_vae.optim import LazyAdam

    torch.set_num_threads(1)
    after = hasattr(rows, "Slots")
    _, model = _digits_sized(n, z)
    x = (torch.rand(128, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with tempfile.TemporaryDirectory(dir=os.environ.get("ROWS_DIR")) as tmp:
        with torch.device("meta"):
            guide = guides.make("meanfield", z_dim=z, num_data=n)
        optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
        rows.memory_map(guide, optim, Path(tmp) / "rows")
        svi = SVI(model.model, guide, optim, Trace_ELBO())
        slots = rows.Slots.of(guide, optim) if after else None
        if after:
            slots.begin(1)
        times = []
        for _ in range(steps):
            idx = torch.randint(n, (128,))
            t = time.perf_counter()
            if after:
                slots.visit(idx)
            svi.step(x, idx)
            times.append(time.perf_counter() - t)
        path = Path(tmp) / checkpoint.CHECKPOINT
        if after:  # the epoch's end: every row counted as visited (a real epoch's steps copy them; only the
            slots.visited.fill_(True)  # checkpoint is timed here), what the steps wrote written back, as the kernel
        os.sync()  # does during an epoch of minutes
        t = time.perf_counter()
        if after:
            part = checkpoint.rows_part(model, guide, optim, tmp, slots.finish())
            checkpoint.save(path, model, guide, optim, [], {}, extra={"rows_part": part}, rows_apart=True)
        else:
            checkpoint.save(path, model, guide, optim, [], {})
        save_s = time.perf_counter() - t
        written = sum(f.stat().st_size for f in Path(tmp).glob("checkpoint*.pt"))
    return {"n": n, "z": z, "step_ms": 1000 * statistics.median(times[20:]), "checkpoint_s": save_s,
            "checkpoint_bytes": written, "rows_and_moments_gb": 6 * n * z * 4 / 1e9,
            "package": str(Path(pyro_vae.__file__).parent.parent)}


def checkpoint_rows(args) -> pd.DataFrame:
    before = _worktree(args.before)
    trees = {f"rows copied into checkpoint.pt ({args.before})": before, "rows named, not copied (this tree)": HERE.parent}
    out = []
    try:
        for n in args.checkpoint_sizes:
            for layout, tree in trees.items():
                out.append({"layout": layout, **_case(tree, ["--checkpoint-case", n, 8])[0]})
                print(out[-1], flush=True)
    finally:
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(before)],
                       capture_output=True)
    return pd.DataFrame(out)


def _n(n) -> str:
    """10⁶ for 1000000."""
    e = len(str(int(n))) - 1
    return f"10{''.join('⁰¹²³⁴⁵⁶⁷⁸⁹'[int(d)] for d in str(e))}" if int(n) == 10 ** e else str(n)


def shards_table(table: pd.DataFrame) -> str:
    """docs/scaling.md's table of the shards part: medians over rounds and ranks, before against after."""
    rows = []
    for (n, processes), g in table.groupby(["n", "processes"]):
        before, after = (g[g.layout.str.startswith(k)] for k in ("all rows", "shard-local"))
        cell = lambda col, fmt: f"{before[col].median():{fmt}} → {after[col].median():{fmt}}"  # noqa: E731
        rows.append(f"| {_n(n)} | {processes} | {int(before.rows_held.iloc[0]):,} → {int(after.rows_held.iloc[0]):,} "
                    f"| {cell('held_anon_mb', '.0f')} | {cell('peak_anon_mb', '.0f')} | {cell('step_ms', '.1f')} "
                    f"| {cell('fit_s', '.1f')} |")
    head = ["| N | processes | rows per rank | held per rank (MB) | peak per rank (MB) | step (ms) | fit, 200 steps (s) |",
            "|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def checkpoint_table(table: pd.DataFrame) -> str:
    """docs/scaling.md's table of the checkpoint part, before against after."""
    rows = []
    for n, g in table.groupby("n"):
        before, after = (g[g.layout.str.startswith(k)].iloc[0] for k in ("rows copied", "rows named"))
        mb = lambda r: f"{r.checkpoint_bytes / 1e6:,.2f} MB"  # noqa: E731
        rows.append(f"| {_n(n)} | {before.rows_and_moments_gb:.3g} GB | {before.checkpoint_s:.2f} s → "
                    f"{after.checkpoint_s:.2f} s | {mb(before)} → {mb(after)} | {before.step_ms:.1f} → "
                    f"{after.step_ms:.1f} ms |")
    head = ["| N | rows + moments | checkpoint | bytes it writes | step (median of 180) |", "|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub table, numbers to 4 significant digits, blanks for NaN."""
    cell = lambda v: "" if isinstance(v, float) and v != v else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["ddp", "rows", "shards", "checkpoint", "all"], default="all")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each data-parallel launch")
    p.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7, 10**8])
    p.add_argument("--zs", type=int, nargs="+", default=[8, 50])
    p.add_argument("--max-ram-gb", type=float, default=14.0, help="skip in-memory cases whose rows and moments exceed")
    p.add_argument("--max-disk-gb", type=float, default=60.0,
                   help="skip memory-mapped cases whose files, checkpoint and resumed files exceed")
    p.add_argument("--before", default="28d01a7", help="the revision before shard-local rows (shards, checkpoint)")
    p.add_argument("--shard-sizes", type=int, nargs="+", default=[10**6, 10**7])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the shards part")
    p.add_argument("--checkpoint-sizes", type=int, nargs="+", default=[10**7, 10**8])
    p.add_argument("--case", nargs=3, type=int, help=argparse.SUPPRESS)
    p.add_argument("--shard-case", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-case", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        n, z, mapped = args.case
        print(json.dumps(rows_case(n, z, bool(mapped))))
        return 0
    if args.shard_case:
        print(json.dumps(shard_case(*args.shard_case)), flush=True)
        return 0
    if args.checkpoint_case:
        print(json.dumps(checkpoint_case(*args.checkpoint_case)))
        return 0
    import platform

    import torch

    header = (f"Measured by `python benchmarks/scale.py` on {platform.system()} {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}.\n")
    parts = {"ddp": ddp_rows, "rows": rows_rows, "shards": shards_rows, "checkpoint": checkpoint_rows}
    for part in list(parts) if args.part == "all" else [args.part]:
        parts[part](args).to_csv(HERE / f"scale_{part}.csv", index=False)
    md = [header]  # both parts, the one not re-run from its last CSV
    for part in parts:
        if (HERE / f"scale_{part}.csv").exists():
            md += [f"\n## {part}\n", _markdown(pd.read_csv(HERE / f"scale_{part}.csv"))]
    (HERE / "scale.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
