"""LazyAdam: Adam for the networks in one multi-tensor step, SparseAdam for per-datapoint rows.

Usage::

    from pyro_vae.optim import LazyAdam
    optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    svi = SVI(vae.model, guides.make("meanfield", z_dim=8, num_data=N), optim, Trace_ELBO())

A drop-in for ``pyro.optim.Adam`` (a :class:`pyro.optim.PyroOptim`), with two differences:

- every dense parameter (decoder, encoder) is stepped by **one** ``torch.optim.Adam``
  over all of them, fused into one kernel where torch has one for the device (CPU and
  CUDA), where ``pyro.optim.Adam`` builds one optimizer per tensor and steps them in a
  Python loop. The update is Adam's, parameter by parameter; only the number of calls
  changes;
- only the parameters a step is given move: a network held fixed for a step (``fit``'s
  ``local_steps`` hide the decoder from the guide-only steps) keeps its place, where a
  shared torch Adam would move it by momentum with the zero gradient Pyro leaves on it;
- parameters whose gradient is sparse (the per-datapoint guides gather rows with
  ``embedding(..., sparse=True)``) get ``torch.optim.SparseAdam``, which updates only the
  rows present in the gradient together with their moment estimates. SparseAdam's step
  count, and so its bias correction, is shared by all rows of a tensor (the LazyAdam of
  TensorFlow Addons behaves the same).

``get_state`` / ``set_state`` use Pyro's format (parameter name -> a one-parameter
``state_dict``), so checkpoints do not depend on how the step is batched.
"""

from __future__ import annotations

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.optim import _load_state_dict

from .errors import InputTypeError


def _fused_supported(param: torch.Tensor) -> bool:
    """Whether torch's fused Adam kernel runs for this tensor (floating point, on CPU or CUDA)."""
    return param.is_floating_point() and param.device.type in ("cpu", "cuda")


class LazyAdam(PyroOptim):
    """A Pyro optimizer: one multi-tensor Adam for every dense parameter, SparseAdam for sparse ones.

    :param dict optim_args: ``lr``, ``betas``, ``eps`` and Adam-only arguments such as
        ``weight_decay``, shared by every dense parameter.
    :param clip_args: as for any PyroOptim (``{"clip_norm": c}`` or ``{"clip_value": c}``),
        applied per parameter before the step.
    :param dict sparse_args: arguments of the per-datapoint parameters' SparseAdam
        (``lr``, ``betas``, ``eps``), default those of ``optim_args`` that apply.
        A datapoint's row moves only when it is in the batch, about ``epochs`` times
        in a run, so it usually wants a larger ``lr`` than the networks, which move
        every step.
    """

    _SPARSE_ARGS = ("lr", "betas", "eps", "maximize")

    def __init__(self, optim_args, clip_args=None, sparse_args=None):
        if callable(optim_args):
            raise InputTypeError("LazyAdam takes one dict of Adam arguments for every dense parameter (they share one "
                            "multi-tensor step); for per-parameter arguments use pyro.optim.Adam(callable).")
        super().__init__(torch.optim.Adam, optim_args, clip_args)
        self.sparse_args = sparse_args
        #: the one torch Adam that steps every dense parameter seen so far (None before the first step)
        self.dense = None
        #: per-datapoint parameter -> its SparseAdam moments, tensors memory-mapped from files
        #: (:meth:`keep_moments_in`, which :mod:`pyro_vae.rows` calls)
        self.mapped_moments = {}
        #: parameter -> name for parameters outside Pyro's param store (``module_local_params=True``, as in
        #: data-parallel training); the others are named by the param store
        self.names = {}

    def keep_moments_in(self, param: torch.Tensor, moments: dict) -> None:
        """Keep the SparseAdam moments of the per-datapoint ``param`` in ``moments`` (``{"exp_avg": t, "exp_avg_sq":
        t}``, tensors of ``param``'s shape memory-mapped from files), not in RAM: from its first step on, or from now
        on when it has stepped (the values are then the caller's: :class:`pyro_vae.rows.Slots` copies them)."""
        self.mapped_moments[param] = dict(moments)
        optimizer = self.optim_objs.get(param)
        if optimizer is not None and param in optimizer.state:
            optimizer.state[param].update(moments)

    def settle(self, param: torch.Tensor) -> None:
        """Put the per-datapoint ``param``'s state waiting since :meth:`set_state` in place now (its moments into
        :meth:`keep_moments_in`'s tensors), not at its first step."""
        if param not in self.optim_objs and self.param_name(param) in self._state_waiting_to_be_consumed:
            self._add_sparse(param)

    def moments_of(self, param: torch.Tensor) -> dict:
        """The memory-mapped moments of ``param`` (:meth:`keep_moments_in`)."""
        return self.mapped_moments[param]

    def param_name(self, p: torch.Tensor) -> str:
        """The name ``get_state`` / ``set_state`` use for ``p``: from :attr:`names`, else from Pyro's param store."""
        return self.names.get(p) or pyro.get_param_store().param_name(p)

    def __call__(self, params, *args, **kwargs) -> None:
        """One optimization step for ``params`` (what ``SVI.step`` collected): dense ones together."""
        dense, sparse = [], []
        for p in params:
            if p.grad is None:
                continue
            (sparse if p.grad.is_sparse else dense).append(p)
        new = [p for p in dense if p not in self.optim_objs]
        if new:
            self._add_dense(new)
        for p in dense:
            if self.grad_clip[p] is not None:
                self.grad_clip[p](p)
        if dense:
            stepped = set(dense)
            for group in self.dense.param_groups:  # one torch Adam holds them all: step only this call's
                for q in group["params"]:  # (a parameter left out, e.g. a decoder held fixed, would
                    if q not in stepped:  # still move by Adam's momentum with a zero gradient)
                        q.grad = None
            self.dense.step()
        for p in sparse:
            if p not in self.optim_objs:
                self._add_sparse(p)
            self.optim_objs[p].step()

    def _add_dense(self, new) -> None:
        """Put never-seen dense parameters in the shared Adam, with any state waiting for them."""
        args = dict(self._get_optim_args(new[0]))
        if "fused" not in args and "foreach" not in args:  # the user's choice of kernel wins
            same_device = len({p.device for p in new}) == 1
            args["fused"] = True if same_device and all(_fused_supported(p) for p in new) else None
        if self.dense is None:
            self.dense = torch.optim.Adam(new, **args)
        else:
            self.dense.add_param_group({"params": new, **args})
        for p in new:
            self.optim_objs[p] = self.dense
            self.grad_clip[p] = self._get_grad_clip(p)
            state = self._state_waiting_to_be_consumed.pop(self.param_name(p), None)
            if state is not None and state.get("state"):
                self.dense.state[p] = self._placed(state["state"][0], p, args.get("fused"))

    @staticmethod
    def _placed(state: dict, p: torch.Tensor, fused) -> dict:
        """A saved one-parameter Adam state moved where torch's Adam keeps it for ``p``.

        Moments go to ``p``'s device and dtype; ``step`` to ``p``'s device as float32 for the
        fused kernel, else to the CPU (what ``torch.optim.Optimizer.load_state_dict`` does). Always
        copies: the saved tensors may be memory-mapped from a checkpoint file, which must not stay mapped.
        """
        out = {}
        for k, v in state.items():
            if not torch.is_tensor(v):
                out[k] = v
            elif k == "step":
                out[k] = v.to(p.device if fused else "cpu", torch.float32, copy=True)
            else:
                out[k] = v.to(device=p.device, dtype=p.dtype, copy=True)
        return out

    def _add_sparse(self, p) -> None:
        args = self.sparse_args if self.sparse_args is not None else self._get_optim_args(p)
        optimizer = self.optim_objs[p] = torch.optim.SparseAdam(
            [p], **{k: v for k, v in args.items() if k in self._SPARSE_ARGS})
        self.grad_clip[p] = self._get_grad_clip(p)
        state = self._state_waiting_to_be_consumed.pop(self.param_name(p), None)
        if state is not None:
            _load_state_dict(optimizer, state)
        loaded = optimizer.state.get(p, {})
        if p in self.mapped_moments:  # the moments in files, with any state just loaded copied in
            moments = self.mapped_moments[p]
            for k, t in moments.items():
                if k in loaded:
                    t.copy_(loaded[k])
            optimizer.state[p] = {"step": loaded.get("step", 0), **moments}
        elif loaded:  # own copies: the loaded ones may be memory-mapped from a checkpoint file
            optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in loaded.items()}

    def get_state(self) -> dict:
        """Parameter name -> a one-parameter optimizer ``state_dict``, as every PyroOptim returns it."""
        out = {}
        for p, optimizer in self.optim_objs.items():
            if optimizer is self.dense:
                group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
                state = {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state.get(p, {}).items()}
                out[self.param_name(p)] = {"state": {0: state} if state else {},
                                            "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                                              "params": [0]}]}
            else:
                out[self.param_name(p)] = optimizer.state_dict()
        return out

    def set_state(self, state_dict: dict) -> None:
        """Hold the state of each parameter until the parameter is first stepped (Pyro's lazy convention)."""
        self._state_waiting_to_be_consumed.update(state_dict)
