"""``pyro-vae`` with a fault injected into the checkpoint write of one epoch (run by tests/test_run_folders.py).

Usage: ``python tests/fault_run.py kill|enospc EPOCH pyro-vae-arguments...``. When the checkpoint of epoch EPOCH
is being written, ``kill`` writes part of it and then sends this process SIGKILL (nothing of Python's runs after
it), and ``enospc`` writes part of it and raises ``OSError(ENOSPC)``, as a full disk does.
"""

import errno
import os
import signal
import sys

import torch

from pyro_vae import cli

real_save = torch.save


def faulty_save(state, f, *args, **kw):
    if isinstance(state, dict) and state.get("epoch") == int(sys.argv[2]):
        f.write(b"\0" * 4096)  # part of a checkpoint, as a write cut short leaves it
        f.flush()
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(state, f, *args, **kw)


if __name__ == "__main__":
    torch.save = faulty_save  # pyro_vae.checkpoint calls torch.save
    sys.exit(cli.main(sys.argv[3:]))
