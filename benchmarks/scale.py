"""Past one process: data-parallel throughput, and per-datapoint rows at N = 10^5..10^8, side by side.

    python benchmarks/scale.py                    # both parts; writes benchmarks/scale_*.csv and scale.md
    python benchmarks/scale.py --part ddp         # only the data-parallel rows
    python benchmarks/scale.py --part rows --sizes 100000 1000000

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


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub table, numbers to 4 significant digits, blanks for NaN."""
    cell = lambda v: "" if isinstance(v, float) and v != v else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["ddp", "rows", "all"], default="all")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each data-parallel launch")
    p.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7, 10**8])
    p.add_argument("--zs", type=int, nargs="+", default=[8, 50])
    p.add_argument("--max-ram-gb", type=float, default=14.0, help="skip in-memory cases whose rows and moments exceed")
    p.add_argument("--max-disk-gb", type=float, default=60.0,
                   help="skip memory-mapped cases whose files, checkpoint and resumed files exceed")
    p.add_argument("--case", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        n, z, mapped = args.case
        print(json.dumps(rows_case(n, z, bool(mapped))))
        return 0
    import platform

    import torch

    header = (f"Measured by `python benchmarks/scale.py` on {platform.system()} {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}.\n")
    parts = {"ddp": ddp_rows, "rows": rows_rows}
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
