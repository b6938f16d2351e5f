"""Runs: a trained model and guide in a folder, that you can come back to.

Usage::

    run = train({"guide": "mvn", "epochs": 50, "out": "runs/mvn"})   # what `pyro-vae train` does
    run = load_run("runs/mvn")                                        # later, in another process
    run.model, run.guide, run.data, run.config, run.history
    svi = SVI(run.model.model, run.guide, LazyAdam({"lr": 1e-3}), Trace_ELBO())   # ready for svi.step
    estimators.elbo(run.model.model, run.guide, run.data.test)
    gaps.decompose(run.model.model, run.guide, run.data.test[:200])

A run folder holds ``config.json`` (the settings; one source of truth for rebuilding the
model, the guide and the data) and ``checkpoint.pt`` (weights, optimizer and RNG state,
history; read with ``torch.load(..., weights_only=True)``), plus ``history.csv`` and
figures. :func:`load_run` rebuilds everything from the first two.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pandas as pd
import pyro
import torch

import guides

from .errors import InputError
from .settings import TrainSettings
from . import data, distributed, models, objectives, rows
from .optim import LazyAdam
from .checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT
from .checkpoint import read_run as read_run_checkpoint
from .loop import COLUMNS
from .train import fit

CONFIG = "config.json"
HISTORY = "history.csv"
#: the settings of a run and their defaults (a config.json from an older version lacks the newer ones): the fields
#: of :class:`pyro_vae.settings.TrainSettings`, their one source
DEFAULTS = TrainSettings.defaults()


class RunError(InputError):
    """A folder that is not a run, or a run that cannot be rebuilt here."""


@dataclass
class Run:
    """A trained run: ``model`` and ``guide`` (modules, weights loaded), its ``data`` set, ``config``,
    ``history`` (one row per epoch, nats per datapoint) and the folder ``path``."""

    path: Path
    model: models.LatentVariableModel
    guide: guides.Guide
    data: data.Dataset
    config: dict
    history: pd.DataFrame

    @property
    def name(self) -> str:
        """The run's folder name, which tables and figures use as its label."""
        return self.path.name

    @property
    def epochs(self) -> int:
        """Epochs trained."""
        return len(self.history)


# ---------------------------------------------------------------- building from settings

def load_data(cfg: dict) -> data.Dataset:
    """The data set a run's settings name (the same split and draws as at training time)."""
    cfg = {**DEFAULTS, **cfg}
    binarize = "none" if cfg["data"] == "linear-gaussian" else cfg["binarize"]
    return data.load(cfg["data"], binarize=binarize, seed=cfg.get("data_seed", cfg["seed"]), root=cfg["root"],
                     download=not cfg["no_download"])


def build_model(ds: data.Dataset, z_dim: int, hidden: Sequence[int], likelihood: Optional[str] = None, seed: int = 0,
                activation: str = "relu"):
    """A learnable LinearGaussian (pPCA) for linear-gaussian data, else a VAE; ``num_data = len(ds.train)``."""
    n = len(ds.train)
    if ds.name == "linear-gaussian":
        return models.LinearGaussian.random(ds.x_dim, z_dim, noise_scale=1.0, seed=seed + 10, num_data=n)
    likelihood = likelihood or ("bernoulli" if ds.binarize != "none" else "continuous_bernoulli")
    return models.VAE(ds.x_dim, z_dim, hidden, likelihood=likelihood, num_data=n, activation=activation)


def build_guide(name: str, ds: data.Dataset, z_dim: int, hidden: Sequence[int], model=None, **kw):
    """Guide ``name`` from the registry, sized for ``ds`` (``num_data = len(ds.train)``).

    ``model`` (the model module) is handed to guides that refine q against it (``semi_amortized``).
    """
    if guides.get(name).needs_model:
        if model is None:
            raise InputError(f"the {name} guide refines q on the model's ELBO: pass model= to build_guide.")
        kw["model"] = model.model
    return guides.make(name, x_dim=ds.x_dim, z_dim=z_dim, hidden=tuple(hidden), num_data=len(ds.train), **kw)


def guide_options(name: str, cfg: dict) -> dict:
    """The settings in ``cfg`` that guide ``name`` takes: ``scale`` (normal), ``num_flows`` (flow, local_flow),
    ``refine_steps`` and ``refine_lr`` (semi_amortized's ``steps`` and ``lr``)."""
    cfg = {**DEFAULTS, **cfg}
    options = {"normal": {"scale": cfg["scale"]}, "flow": {"num_flows": cfg["num_flows"]},
               "local_flow": {"num_flows": cfg["num_flows"]},
               "semi_amortized": {"steps": cfg["refine_steps"], "lr": cfg["refine_lr"]}}
    return options.get(name, {})


def build(cfg: dict, ds: data.Dataset, guide_device: Optional[str] = None
          ) -> Tuple[models.LatentVariableModel, guides.Guide]:
    """The model and guide a run's settings describe, freshly initialized from ``cfg["seed"]``.

    ``guide_device="meta"`` builds the guide as shapes only, for :func:`pyro_vae.rows.memory_map` to write
    its rows straight into files.
    """
    cfg = {**DEFAULTS, **cfg}
    pyro.set_rng_seed(cfg["seed"])  # the initial weights are drawn from the seed, as the rest of the run
    model = build_model(ds, cfg["z_dim"], cfg["hidden"], cfg["likelihood"], cfg["seed"], cfg["activation"])
    with torch.device(guide_device) if guide_device else contextlib.nullcontext():
        return model, build_guide(cfg["guide"], ds, cfg["z_dim"], cfg["hidden"], model=model,
                                  activation=cfg["activation"],
                                  **guide_options(cfg["guide"], cfg))


# ---------------------------------------------------------------- train, load

def train(cfg: dict, resume: bool = False) -> Run:
    """Train (or, with ``resume``, continue) the run ``cfg["out"]``: what ``pyro-vae train`` does.

    Writes ``config.json`` first, then ``checkpoint.pt`` every epoch and ``history.csv``
    at the end. With ``resume`` the saved settings are kept, except ``epochs`` (the total to
    reach), ``device``, ``no_jit``, ``validate_every_step``, ``no_progress``, ``distributed`` and
    ``rows_on_disk`` (when not None: a run with rows on disk stays on disk), taken from ``cfg``. With
    ``cfg["rows_on_disk"]`` a per-datapoint guide's rows and their Adam moments live in memory-mapped files in
    that folder (:mod:`pyro_vae.rows`). With ``cfg["distributed"]``
    it runs in every process torchrun started (data-parallel training, :mod:`pyro_vae.distributed`): rank 0
    alone writes the files, and every rank returns the same history.
    """
    out = Path(cfg["out"])
    if resume:
        keep = ("epochs", "device", "no_jit", "validate_every_step", "no_progress", "distributed", "rows_on_disk",
                "threads")
        given = {k: cfg[k] for k in keep if k in cfg and not (k == "rows_on_disk" and cfg[k] is None)}
        cfg = {**saved_config(out, "--resume"), **given}
    cfg = {k: v for k, v in cfg.items() if k not in ("resume", "command", "config")}
    cfg = TrainSettings.from_dict({**cfg, "out": str(out)}).to_dict()  # every value checked, defaults filled in
    ds = load_data(cfg)
    pyro.clear_param_store()
    device, main = cfg["device"], True
    if cfg["distributed"]:  # every process torchrun started builds the same modules; rank 0 writes the files
        pyro.settings.set(module_local_params=True)  # before the modules are built, as Pyro requires
        device, main = distributed.init(cfg["device"]), distributed.is_main()
    # rows on disk that start from one constant row are written straight into their files, never built in RAM
    on_meta = cfg["rows_on_disk"] and getattr(guides.get(cfg["guide"]), "constant_init", False)
    model, guide = build(cfg, ds, guide_device="meta" if on_meta else None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(cfg, indent=2))
    loss = objectives.for_training(cfg["elbo"], model, guide, jit=not cfg["no_jit"], particles=cfg["particles"])
    optim = LazyAdam({"lr": cfg["lr"]}, sparse_args={"lr": cfg["local_lr"]})
    if cfg["rows_on_disk"]:  # one folder per process in a data-parallel run
        folder = Path(cfg["rows_on_disk"]) / (f"rank{distributed.rank()}" if cfg["distributed"] else "")
        rows.memory_map(guide, optim, folder)
    history = fit(model, guide, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], optim=optim, loss=loss,
                  checkpoint_dir=str(out), device=device,
                  validate_every_step=cfg["validate_every_step"], resume=resume, progress=not cfg["no_progress"],
                  seed=cfg["seed"], config=cfg, local_steps=cfg["local_steps"], distributed=cfg["distributed"],
                  threads=cfg["threads"])
    if main:
        history.to_csv(out / HISTORY, index=False)
    return Run(out, model, guide, ds, cfg, history)


def saved_config(path, what: str = "load_run") -> dict:
    """The settings of the run in ``path``; a one-line :class:`RunError` naming the fix when it is not a run."""
    path = Path(path)
    config = path / CONFIG
    has_checkpoint = (path / CHECKPOINT).exists() or (path / PREVIOUS_CHECKPOINT).exists()
    if not config.is_file() or not has_checkpoint:
        fix = ("train one first without --resume, or pass --out of an existing run" if what == "--resume" else
               "train one first with `pyro-vae train`, or give the folder of an existing run")
        raise RunError(f"{what}: {path} holds no run{' to continue' if what == '--resume' else ''} (it needs "
                       f"{CONFIG} and {CHECKPOINT}, as `pyro-vae train` writes them); {fix}.")
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{what}: {config} is not valid JSON ({e}); restore it or train the run again.") from None
    if "guides" in cfg:
        raise RunError(f"{what}: {path} is the output of `pyro-vae compare`, not a run: give the folder of a "
                       f"`pyro-vae train` run.")
    return cfg


def load_run(path, device: str = "cpu") -> Run:
    """The run in folder ``path``, rebuilt from ``config.json`` and its checkpoint, on ``device``.

    The checkpoint is read with ``torch.load(..., weights_only=True)``: no pickled code runs.

    :raises RunError: when ``path`` is not a run or the data it was trained on cannot be loaded.
    :raises CheckpointError: when the checkpoint cannot be read or has another format version.
    """
    path = Path(path)
    cfg = TrainSettings.from_dict(saved_config(path), str(path / CONFIG)).to_dict()
    state = read_run_checkpoint(path / CHECKPOINT)
    try:
        ds = load_data(cfg)
    except (OSError, ValueError) as e:
        raise RunError(f"load_run: the data {path.name} was trained on cannot be loaded ({e})") from None
    model, guide = build(cfg, ds)
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except RuntimeError as e:  # shapes or names that config.json and the checkpoint disagree on
        first = str(e).splitlines()[0]
        raise RunError(f"load_run: the checkpoint in {path} does not fit the model its {CONFIG} describes "
                       f"({first}); was config.json edited?") from None
    model.to(device)
    guide.to(device)
    history = pd.DataFrame(state["history"], columns=COLUMNS).astype({"epoch": int})
    return Run(path, model, guide, ds.to(device), cfg, history)


def reconstruct(run: Run, x: torch.Tensor, qstar_steps: Optional[int] = None) -> torch.Tensor:
    """E[x | z] at the mean of q(z | x) for ``x: (n, D)`` of any split: the encoder's q for an amortized
    guide; for a per-datapoint guide, which has no q for arbitrary points, q* fitted for them."""
    from . import gaps

    x = x.to(run.model.device)
    if run.guide.amortized:
        with torch.no_grad():
            q = run.guide.distribution(x)
    else:
        qstar = gaps.fit_local(run.model.model, x, run.guide.family, steps=qstar_steps)
        with torch.no_grad():
            q = qstar.distribution(x, torch.arange(len(x), device=x.device))
    return run.model.mean(q.mean)


def is_image(ds: data.Dataset) -> bool:
    """Whether the data set's rows are images (``image_shape`` set)."""
    return ds.image_shape is not None


@torch.no_grad()
def samples(run: Run, n: int, generator: Optional[torch.Generator] = None) -> pd.DataFrame:
    """``n`` draws z ~ p(z), x ~ p(x | z) from the run's model: columns ``z0..``, ``x0..`` (non-image data)."""
    z = torch.randn(n, run.model.z_dim, generator=generator).to(run.model.device)
    x = run.model.likelihood_dist(z).sample()
    frame = pd.DataFrame(z.cpu().numpy(), columns=[f"z{i}" for i in range(z.shape[1])])
    return frame.join(pd.DataFrame(x.cpu().numpy(), columns=[f"x{i}" for i in range(x.shape[1])]))
