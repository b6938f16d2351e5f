"""What every training loop does around its steps: the checks before the first, the first batch's preflight,
the test -ELBO after each epoch, and the history's columns.

Shared by the one-process loop (:func:`pyro_vae.train.fit`) and the data-parallel one
(:func:`pyro_vae.distributed.fit`). Usage::

    check_setup(model, guide, ds, epochs=300, batch_size=128)     # one-line ValueErrors before any work
    preflight(svi.model, svi.guide, loss, model, guide, ds, 128)   # Pyro's checks and the JIT's compilation
    test_elbo_loss(model, guide, ds.test)                          # nats per datapoint (NaN: no q for test points)
"""

from __future__ import annotations

from typing import Optional

import pyro
import torch
from pyro.infer import Trace_ELBO

from .errors import InputError, InputTypeError
from . import estimators, objectives
from .contract import check_sizes_agree

#: the columns of a training history, one row per epoch (nats per datapoint, seconds of training)
COLUMNS = ["epoch", "train_loss", "test_loss", "seconds"]


def preflight(model_fn, guide_fn, loss, model, guide, data, batch_size, idx: Optional[torch.Tensor] = None) -> None:
    """One batch through Pyro's checks, and through the JIT's compilation; leaves no gradient behind.

    ``idx``: the batch's dataset rows (default the first ``batch_size``; a data-parallel rank checks its own).

    Validation is on for this one loss: it checks every site's shape, support and
    model/guide match with Pyro's own messages. A compiled loss is traced here, on the
    same callables ``svi.step`` uses (``model_fn``, ``guide_fn``), so the first training
    step does not draw extra random numbers for its compilation.
    """
    if idx is None:
        idx = torch.arange(min(batch_size, len(data.train)), device=data.train.device)
    x = data.train[idx]
    with pyro.validation_enabled(True):
        Trace_ELBO().loss(model_fn, guide_fn, x, idx)
    if objectives.is_jit(loss):
        with objectives.quiet_jit():
            loss.loss_and_grads(model_fn, guide_fn, x, idx)
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None


@torch.no_grad()
def test_elbo_loss(model, guide, x: torch.Tensor, chunk_size: int = 1024) -> float:
    """-ELBO of ``x: (n, D)`` under an amortized guide, one sample per point, in nats per datapoint.

    NaN for a per-datapoint guide, which has no q for points outside its training set.
    """
    if not getattr(guide, "amortized", True):
        return float("nan")
    total = sum(float(estimators.elbo(model.model, guide, x[i:i + chunk_size], None, num_samples=1).value.sum())
                for i in range(0, len(x), chunk_size))
    return -total / len(x)


def check_values(model, guide) -> None:
    """A clear error for parameters that are still shapes only (built on the meta device) when training starts."""
    for who, obj in (("model", model), ("guide", guide)):
        meta = [n for n, p in obj.named_parameters() if p.device.type == "meta"]
        if meta:
            raise InputError(f"the {who}'s {', '.join(meta[:3])} are shapes only (built on the meta device): "
                             f"give them values first, rows.memory_map(guide, optim, folder) for a per-datapoint "
                             f"guide's rows (a resumed run maps the row files its checkpoint names).")


def check_setup(model, guide, data, epochs, batch_size, local_steps=1) -> None:
    """Clear errors before any step: a Dataset that fits the model, model and guide agree on N, sane sizes."""
    from .data import Dataset

    if not isinstance(data, Dataset):
        raise InputTypeError(
            f"fit needs a pyro_vae.data.Dataset (a train and a test split), got {type(data).__name__}: "
            f"wrap tensors with data.from_tensors(train, test), or load one with data.load(name)."
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("local_steps", local_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    model.check_data(data.train, "data.train")
    model.check_data(data.test, "data.test")
    if data.validation is not None:
        model.check_data(data.validation, "data.validation")
    check_sizes_agree(model, guide)
    n = len(data.train)
    for who, obj in (("model", model), ("guide", guide)):
        if getattr(obj, "num_data", None) != n:
            raise InputError(
                f"the {who} was built with num_data={getattr(obj, 'num_data', None)} but the training set has "
                f"{n} rows: build both with num_data=len(data.train) so mini-batches scale to the full data."
            )
