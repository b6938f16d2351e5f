"""``pyro-vae`` with a fault injected into one epoch (run by tests/test_run_folders.py and test_distributed.py).

Usage: ``python tests/fault_run.py MODE EPOCH pyro-vae-arguments... [STEP]`` (or under torchrun). When the checkpoint
of epoch EPOCH is being written, ``kill`` writes part of it and then sends this process SIGKILL (nothing of Python's
runs after it), and ``enospc`` writes part of it and raises ``OSError(ENOSPC)``, as a full disk does.
``kill-shard`` does what ``kill`` does to rank 1's shard of that checkpoint (the other ranks are still writing or
waiting). ``kill-step`` sends SIGKILL after STEP steps of epoch EPOCH of a run with rows on disk (the last
argument), with that epoch's copy of the row files part written.
"""

import errno
import os
import signal
import sys

import torch

from pyro_vae import cli, rows

real_save = torch.save


def faulty_save(state, f, *args, **kw):
    shard = isinstance(state, dict) and "rank" in state
    if isinstance(state, dict) and state.get("epoch") == int(sys.argv[2]) and \
            (sys.argv[1] != "kill-shard" or shard and state["rank"] == 1):
        f.write(b"\0" * 4096)  # part of a checkpoint, as a write cut short leaves it
        f.flush()
        if sys.argv[1] in ("kill", "kill-shard"):
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(state, f, *args, **kw)


def kill_after_steps(epoch: int, steps: int):
    begin, visit = rows.Slots.begin, rows.Slots.visit
    seen = {"epoch": 0, "visits": 0}

    def counting_begin(self, e):
        seen["epoch"], seen["visits"] = e, 0
        return begin(self, e)

    def counting_visit(self, idx):
        if seen["epoch"] == epoch:
            if seen["visits"] == steps:  # `steps` steps of this epoch done, their rows written into its copy
                os.kill(os.getpid(), signal.SIGKILL)
            seen["visits"] += 1
        return visit(self, idx)

    rows.Slots.begin, rows.Slots.visit = counting_begin, counting_visit


if __name__ == "__main__":
    if sys.argv[1] == "kill-step":
        kill_after_steps(int(sys.argv[2]), int(sys.argv[-1]))
        sys.exit(cli.main(sys.argv[3:-1]))
    torch.save = faulty_save  # pyro_vae.checkpoint calls torch.save
    sys.exit(cli.main(sys.argv[3:]))
