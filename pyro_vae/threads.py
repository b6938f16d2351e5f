"""How many intra-op threads a training uses: one for small models, torch's default for large ones.

Usage::

    with intra_op_threads(training_threads(model, guide, batch_size=128)):
        ...                          # torch.get_num_threads() is 1 for a digits-sized VAE

Small models stall with two threads when another process holds a core: every operation waits for its
slowest thread. Measured on 2 cores (``benchmarks/results.md``, the ``threads_*`` rows): an epoch of
the 64-256-8 digits VAE took 27 ms with one thread beside a busy process and 99 ms with two (idle:
32 and 27 ms); a 784-200-200-50 one 0.18 s and 0.58 s (idle: 0.22 and 0.19 s); even a 64-1024-1024-32
one 0.36 s and 0.82-0.94 s (idle: 0.36 and 0.26 s). One thread loses at most 1.4x on an idle machine
and wins 2-3.6x on a shared one, so below :data:`SMALL` multiply-adds per forward pass
(batch x parameters) a training takes one thread.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

#: batch x parameters below which a training runs on one intra-op thread (a 784-200-200-50 VAE at batch 128
#: is 5.6e7; a 64-1024-1024-32 one is 5.6e8)
SMALL = 1e8


def training_threads(model, guide, batch_size: int) -> Optional[int]:
    """1 when a forward pass over a batch is under :data:`SMALL` multiply-adds (batch x the model's and the guide's
    network parameters; per-datapoint rows are gathered, not multiplied), else None: torch's default."""
    rows = set(guide.row_parameter_names()) if hasattr(guide, "row_parameter_names") else set()
    params = sum(p.numel() for p in model.parameters())
    params += sum(p.numel() for name, p in guide.named_parameters() if name not in rows)
    return 1 if batch_size * params < SMALL else None


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]):
    """``torch.set_num_threads(threads)`` for the block (None: leave it), and the previous count back after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
