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
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pandas as pd
import pyro
import torch

import guides

from .errors import InputError
from .settings import TrainSettings, shown
from . import checkpoint, data, distributed, folders, models, objectives, rows
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
    #: the epoch whose weights the modules hold, as :func:`load_run` read them (the checkpoint's, or with ``at``
    #: the kept weights'); None for the run :func:`train` returns (its last epoch)
    epoch: Optional[int] = None

    @property
    def name(self) -> str:
        """The run's folder name, which tables and figures use as its label."""
        return self.path.name

    @property
    def epochs(self) -> int:
        """Epochs trained."""
        return len(self.history)


# ---------------------------------------------------------------- building from settings

def load_data(cfg: dict, download: bool = True, folder=None) -> data.Dataset:
    """The data set a run's settings name (the same split and draws as at training time).

    :param download: whether missing IDX files may be downloaded (and their folder created); never for a
        command that only reads a run or continues one.
    :param folder: the run folder, against which a relative ``root`` in a saved config is resolved.
    """
    cfg = {**DEFAULTS, **cfg}
    binarize = "none" if cfg["data"] == "linear-gaussian" else cfg["binarize"]
    root = cfg["root"]
    if root is not None and folder is not None and not Path(root).expanduser().is_absolute():
        root = str(Path(folder) / root)
    return data.load(cfg["data"], binarize=binarize, seed=cfg.get("data_seed", cfg["seed"]), root=root,
                     download=download and not cfg["no_download"])


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
    given = {"x_dim": ds.x_dim, "z_dim": z_dim, "hidden": tuple(hidden), "num_data": len(ds.train), **kw}
    taken = guide_arguments(name)
    return guides.make(name, **{k: v for k, v in given.items() if taken is None or k in taken})


def guide_arguments(name: str) -> Optional[set]:
    """The keyword arguments the constructor of guide ``name`` names (None: it takes any, ``**kwargs``)."""
    import inspect

    parameters = inspect.signature(guides.get(name).__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.name != "self"}


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
    model = model_for(cfg, ds)
    with torch.device(guide_device) if guide_device else contextlib.nullcontext():
        return model, guide_for(cfg, ds, model)


def starts_constant(cfg: dict) -> bool:
    """Whether the run's guide starts every datapoint from one constant row, so that it can be built on the meta
    device and its rows filled (or mapped) afterwards."""
    return getattr(guides.get(cfg["guide"]), "constant_init", False)


def model_for(cfg: dict, ds: data.Dataset):
    """The model ``cfg`` (defaults filled in) describes, as it is built now (no seeding)."""
    return build_model(ds, cfg["z_dim"], cfg["hidden"], cfg["likelihood"], cfg["seed"], cfg["activation"])


def guide_for(cfg: dict, ds: data.Dataset, model):
    """The guide ``cfg`` (defaults filled in) describes, for ``model``, as it is built now (no seeding).

    ``activation`` is left out for a guide whose constructor does not take it (a user's guide) when it is at its
    default, and refused in one line when it was set (``--activation elu``)."""
    taken = guide_arguments(cfg["guide"])
    if taken is not None and "activation" not in taken and cfg["activation"] != DEFAULTS["activation"]:
        raise InputError(f"the {cfg['guide']} guide takes no activation (its constructor takes "
                         f"{', '.join(sorted(taken))}): drop --activation.")
    return build_guide(cfg["guide"], ds, cfg["z_dim"], cfg["hidden"], model=model, activation=cfg["activation"],
                       **guide_options(cfg["guide"], cfg))


# ---------------------------------------------------------------- train, load

#: the settings a resumed run takes from the command line; every other one is the run's own, and its
#: checkpoint's copy of them must agree with ``config.json``
RESUMABLE = ("epochs", "device", "no_jit", "validate_every_step", "no_progress", "distributed", "rows_on_disk",
             "threads")


def train(cfg: dict, resume: bool = False, overwrite: bool = False) -> Run:
    """Train (or, with ``resume``, continue) the run ``cfg["out"]``: what ``pyro-vae train`` does.

    The folder is locked for the whole training (:func:`pyro_vae.folders.writer`: a second writer is refused,
    naming the holder's PID). A fresh run refuses a folder that holds anything unless ``overwrite``, which
    first removes the old run's files (:func:`pyro_vae.folders.claim`). Every check comes before any file is
    written; then ``config.json``, ``checkpoint.pt`` every epoch and ``history.csv`` at the end, each atomically.

    With ``resume`` the saved settings are kept, except those in :data:`RESUMABLE` (``epochs``, the total to
    reach, ``device``, ``no_jit``, ...; ``rows_on_disk`` when not None: a run with rows on disk stays on disk),
    taken from ``cfg``; the checkpoint's copy of the others must agree with ``config.json``. With
    ``cfg["rows_on_disk"]`` a per-datapoint guide's rows and their Adam moments live in memory-mapped files in
    that folder (:mod:`pyro_vae.rows`), which must lie inside the run folder: as given here it is relative to
    the current folder, and ``config.json`` keeps it relative to the run folder. ``cfg["root"]`` (the IDX files)
    is kept as an absolute path; a resumed run reads the data there and downloads nothing. With
    ``cfg["distributed"]`` it runs in every process torchrun started (data-parallel training,
    :mod:`pyro_vae.distributed`): rank 0 alone locks the folder and writes the files, and every rank returns
    the same history.
    """
    out = Path(cfg["out"])
    given_rows = cfg.get("rows_on_disk")
    saved, source = {}, ""
    if resume:
        given = {k: cfg[k] for k in RESUMABLE if k in cfg and not (k == "rows_on_disk" and cfg[k] is None)}
        TrainSettings.from_dict({**given, "out": str(out)})  # a bad value given now is named as given
        saved, source = saved_config(out, "--resume"), str(out / CONFIG)  # the others: named in the file
        cfg = {**saved, **given}
    cfg = {k: v for k, v in cfg.items() if k not in ("resume", "command", "config", "overwrite")}
    cfg = TrainSettings.from_dict({**cfg, "out": str(out)}, source).to_dict()  # every value checked, defaults in
    if cfg["root"] is not None and not resume:
        cfg["root"] = str(Path(cfg["root"]).expanduser().resolve())
    rows_dir = None
    if cfg["rows_on_disk"]:  # given now: relative to the current folder; saved: relative to the run folder
        given_now = Path(given_rows).expanduser().absolute() if given_rows else None  # unresolved: a link is named
        rows_dir = folders.inside(out, given_now or cfg["rows_on_disk"], "rows_on_disk")
        if rows_dir == out.resolve():
            raise folders.FolderError(f"rows_on_disk {cfg['rows_on_disk']} is the run folder itself: give a folder "
                                      f"inside it, e.g. {out / 'rows'}.")
        cfg["rows_on_disk"] = os.path.relpath(rows_dir, out.resolve())
    ds = load_data(cfg, download=not resume, folder=out if resume else None)  # resumed: read, never fetched
    check_fits(cfg, ds)
    pyro.clear_param_store()
    device, main = cfg["device"], True
    if cfg["distributed"]:  # every process torchrun started builds the same modules; rank 0 writes the files
        pyro.settings.set(module_local_params=True)  # before the modules are built, as Pyro requires
        device, main = distributed.init(cfg["device"]), distributed.is_main()
    with contextlib.ExitStack() as hold:
        if main:
            hold.enter_context(folders.writer(out, "train"))
            if resume:
                state = check_resumable(out, saved_config(out, "--resume"), cfg)  # read again, holding the lock
            else:
                folders.claim(out, "train", overwrite, rows=old_rows(out))
        if cfg["distributed"]:
            torch.distributed.barrier()  # no rank maps its rows before rank 0 has claimed the folder
        # rows that start from one constant row are built as shapes only, when they go into files (written straight
        # into them, never built in RAM) or into a data-parallel process (which then fills only its shard's)
        on_meta = (rows_dir is not None or cfg["distributed"]) and starts_constant(cfg)
        model, guide = build(cfg, ds, guide_device="meta" if on_meta else None)
        loss = objectives.for_training(cfg["elbo"], model, guide, jit=not cfg["no_jit"], particles=cfg["particles"])
        optim = LazyAdam({"lr": cfg["lr"]}, sparse_args={"lr": cfg["local_lr"]})
        if cfg["distributed"]:  # each process keeps only its shard of the rows, before they are mapped to files
            distributed.prepare(guide, optim, len(ds.train), cfg["batch_size"], None, cfg["seed"])
        if main and resume:
            checkpoint.check_matches(state, model, guide)  # before config.json changes
            state = None  # memory-mapped from the file: fit reads it again
        own_rows = None if rows_dir is None else rows_dir / (f"rank{distributed.rank()}" if cfg["distributed"] else "")
        if own_rows is not None and not (resume and (own_rows / rows.MARKER).exists()):
            rows.memory_map(guide, optim, own_rows)  # (a resumed run's files are mapped by fit, from its checkpoint)
        elif own_rows is None:
            rows.in_memory(guide)
        if main:
            folders.write_text(out / CONFIG, json.dumps(cfg, indent=2))
        history = fit(model, guide, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], optim=optim, loss=loss,
                      checkpoint_dir=str(out), device=device,
                      validate_every_step=cfg["validate_every_step"], resume=resume, progress=not cfg["no_progress"],
                      seed=cfg["seed"], config=cfg, local_steps=cfg["local_steps"], distributed=cfg["distributed"],
                      threads=cfg["threads"])
        if main:
            folders.write_csv(history, out / HISTORY)
    return Run(out, model, guide, ds, cfg, history)


def old_rows(out: Path) -> Optional[Path]:
    """The rows folder inside ``out`` that the run there keeps its rows in (None: none, or no readable run)."""
    try:
        cfg = json.loads((out / CONFIG).read_text())
        return folders.inside(out, cfg["rows_on_disk"], "rows_on_disk") if cfg.get("rows_on_disk") else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def mismatch(saved: dict, in_checkpoint: dict) -> list:
    """The settings (but those a resume may change, and ``out``) on which ``config.json`` and the checkpoint's
    copy disagree: ``[(name, config.json's value, the checkpoint's value), ...]``."""
    skip = set(RESUMABLE) | {"out"}
    names = sorted((set(saved) | set(in_checkpoint)) - skip)
    missing = object()
    differ = [(k, saved.get(k, missing), in_checkpoint.get(k, missing)) for k in names]
    return [(k, a, b) for k, a, b in differ if a != b and not (missing in (a, b) and DEFAULTS.get(k) in (a, b))]


def check_config_matches(path: Path, saved: dict, in_checkpoint: dict, what: str) -> None:
    """A :class:`RunError` naming each field on which ``config.json`` (``saved``) and the checkpoint's copy
    disagree (both with the defaults filled in)."""
    differ = mismatch({**DEFAULTS, **saved}, {**DEFAULTS, **in_checkpoint})
    if differ:
        shown = "; ".join(f"{k} {a!r} in {CONFIG}, {b!r} in the checkpoint" for k, a, b in differ[:4])
        raise RunError(f"{what}: {path}/{CONFIG} and its checkpoint disagree ({shown}): {CONFIG} was changed or "
                       f"belongs to another run; put back the checkpoint's settings, or train the run again.")


def check_resumable(out: Path, saved: dict, cfg: dict) -> dict:
    """Everything ``--resume`` can check before it changes a file: the checkpoint is readable and agrees with
    ``config.json``, has not trained past ``cfg["epochs"]``, and was written by as many processes
    (:func:`pyro_vae.checkpoint.read_to_continue`). Returns the checkpoint (memory-mapped)."""
    world = distributed.world_size() if cfg["distributed"] else None
    with warnings.catch_warnings():  # fit reads it again, and warns then of a fall-back on the previous one
        warnings.simplefilter("ignore", checkpoint.CheckpointWarning)
        try:
            state = checkpoint.read_to_continue(out / CHECKPOINT, cfg["epochs"], world)
        except checkpoint.CheckpointError:  # damaged or unreadable: its own message
            raise
        except InputError as e:  # a run this command cannot continue
            raise RunError(f"--resume: {e}") from None
    check_config_matches(out, saved, state["config"], "--resume")
    check_paths(out, cfg, state)
    return state


def check_paths(path: Path, cfg: Optional[dict] = None, state: Optional[dict] = None, reads=()) -> None:
    """One rule for every path a run names, checked by every command that continues or reads it (``--resume``,
    :func:`load_run`: evaluate, sample; a study continuing or reading its run): the files of ``path`` that are read
    (:data:`READS`, and the caller's ``reads``), the rows folder the settings ``cfg`` name and the rows folders and
    shard files the checkpoint ``state`` names, each with everything under it, resolved (symlinks followed), must lie
    inside ``path`` (:func:`pyro_vae.folders.inside_all`). A :class:`pyro_vae.folders.FolderError` names the first
    that does not. Call it before any of them is read or written: without ``cfg`` and ``state`` before
    ``config.json`` is read (:func:`saved_config` does), then with them before what they name is."""
    for name in (*READS, *reads):
        folders.inside_all(path, name, "the run's")
    if cfg and cfg.get("rows_on_disk"):
        folders.inside_all(path, cfg["rows_on_disk"], "rows_on_disk")
    for what, folder in checkpoint.named_folders(state, path) if state is not None else ():
        folders.inside_all(path, folder, what, fix=checkpoint.NAMED_ELSEWHERE)  # (each shard file checked, then read)


def check_fits(cfg: dict, ds: data.Dataset, training: bool = True) -> None:
    """A :class:`RunError` before any allocation when the model and guide ``cfg`` describes cannot fit in memory,
    against this machine's RAM or the device's memory: their parameters, with ``training`` their gradients and two
    Adam moments too (16 bytes a parameter, else 4; per-datapoint rows kept on disk with ``rows_on_disk`` do not
    count), and a mini-batch's activations (:func:`batch_activation_bytes`)."""
    limit, where = memory_of(cfg["device"])
    cfg = {**DEFAULTS, **cfg}
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = model_for(cfg, ds)
    except (RuntimeError, OverflowError, MemoryError, TypeError) as e:  # torch: sizes past int64
        raise RunError(f"the model and guide of z_dim={cfg['z_dim']}, hidden={cfg['hidden']} cannot be built "
                       f"({str(e).splitlines()[0][:80]}): give smaller --z-dim / --hidden.") from None
    count = sum(p.numel() for p in model.parameters())
    try:
        with torch.device("meta"):  # (not build(), which seeds the RNG)
            guide = guide_for(cfg, ds, model)
    except (RuntimeError, NotImplementedError):  # a guide whose construction reads values (a flow)
        count, on_disk, amortized = 2 * count, set(), True  # counted as an encoder that mirrors the decoder
    else:
        on_disk = set(guide.row_parameter_names()) if cfg["rows_on_disk"] else set()
        count += sum(p.numel() for n, p in guide.named_parameters() if n not in on_disk)
        amortized = guide.amortized
    per_parameter = 16 if training else 4
    if per_parameter * count > limit:
        rows_hint = "" if on_disk or amortized or not training else \
            ", or keep the per-datapoint rows on disk (--rows-on-disk)"
        held = "with their gradients and Adam's moments" if training else "as weights"
        raise RunError(f"the model and guide hold {count:.3g} parameters, {per_parameter * count / 2**30:.3g} GiB "
                       f"{held}, and {where} has {limit / 2**30:.3g} GiB: give smaller --z-dim / --hidden{rows_hint}.")
    batch = batch_activation_bytes(cfg, ds)
    if per_parameter * count + batch > limit:
        raise RunError(f"a mini-batch of {cfg['batch_size']} points takes about {batch / 2**30:.3g} GiB of "
                       f"activations (z_dim={cfg['z_dim']}, hidden={shown(cfg['hidden'])}, {cfg['elbo']} loss) "
                       f"beside {per_parameter * count / 2**30:.3g} GiB of parameters, and {where} has "
                       f"{limit / 2**30:.3g} GiB: give a smaller --batch-size, --z-dim or --hidden.")


def batch_activation_bytes(cfg: dict, ds: data.Dataset) -> int:
    """About the bytes a training step's activations take (float32): per point and particle, each hidden layer's
    pre-activation and output in decoder and encoder, the likelihood's logits, probabilities and log-densities,
    and q's location, scale, noise and sample, saved for the backward pass and matched by their gradients."""
    floats = 4 * sum(cfg["hidden"]) + 3 * ds.x_dim + 6 * cfg["z_dim"]
    particles = cfg["particles"] if cfg["elbo"] == "iwae" else 1
    return 2 * 4 * floats * particles * min(cfg["batch_size"], len(ds.train))


def memory_of(device: str) -> Tuple[int, str]:
    """The bytes of memory on ``device`` (RAM for the CPU) and how to name it in a message."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_properties(d.index or 0).total_memory, str(d)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"


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
    check_paths(path)  # no file of the run (config.json, its checkpoint, ...) leads outside it
    try:
        cfg = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{what}: {config} is not valid JSON ({e}); restore it or train the run again.") from None
    if not isinstance(cfg, dict):
        raise RunError(f"{what}: {config} holds a JSON {type(cfg).__name__}, not a run's settings by name; restore "
                       f"it (the checkpoint keeps a copy: pyro_vae.checkpoint.load(...)['config']) or train the run "
                       f"again.")
    if "guides" in cfg:
        raise RunError(f"{what}: {path} is the output of `pyro-vae compare`, not a run: give the folder of a "
                       f"`pyro-vae train` run.")
    return cfg


#: the weights a study keeps in a run folder besides its checkpoints (see :mod:`pyro_vae.compare`)
SELECTED, KEPT = "selected.pt", "kept"
#: the files and folders of a run that commands read (:func:`check_paths`); every other file pyro-vae writes there
#: (:data:`pyro_vae.folders.OUTPUTS`) is only ever replaced by a rename, so a link planted there is replaced
READS = (CONFIG, CHECKPOINT, PREVIOUS_CHECKPOINT, checkpoint.SHARDS, KEPT, SELECTED)


def kept_path(folder, epoch: int) -> Path:
    """The weights a study kept of its run in ``folder`` at the measurement of ``epoch``."""
    return Path(folder) / KEPT / f"epoch-{epoch}.pt"


def kept_weights(at: Optional[str]):
    """``--at`` as :func:`load_run` takes it: None, ``"selected"``, or an epoch (a count, given as text)."""
    if at is None or at == "selected":
        return at
    if not (isinstance(at, str) and at.isdigit()):
        raise RunError(f"--at {at!r}: give 'selected' (the checkpoint a study chose on validation) or the epoch of "
                       f"weights it kept (the run's kept/epoch-E.pt).")
    return int(at)


def load_run(path, device: str = "cpu", at=None) -> Run:
    """The run in folder ``path``, rebuilt from ``config.json`` and its checkpoint, on ``device``.

    The checkpoint is read with ``torch.load(..., weights_only=True)``: no pickled code runs. A run that is still
    being trained is read at its last complete checkpoint; :attr:`Run.epoch` says which epoch's weights were read.

    :param at: for a run of a study (``pyro-vae compare``), which of its kept weights to load instead of the
        last epoch's: ``"selected"`` (the checkpoint chosen on validation, ``selected.pt``) or an epoch that a
        budget chose (``kept/epoch-E.pt``). ``history`` stays the whole run's.

    :raises RunError: when ``path`` is not a run or the data it was trained on cannot be loaded.
    :raises CheckpointError: when the checkpoint cannot be read or has another format version.
    """
    path = Path(path)
    cfg = TrainSettings.from_dict(saved_config(path), str(path / CONFIG)).to_dict()
    state = read_run_checkpoint(path / CHECKPOINT, reading=True)
    check_config_matches(path, cfg, state["config"], "load_run")
    check_paths(path, cfg, state)  # a crafted config or checkpoint, or a planted symlink, leads nowhere outside
    try:
        ds = load_data(cfg, download=False, folder=path)  # a reader creates and downloads nothing
    except (OSError, ValueError) as e:
        raise RunError(f"load_run: the data {path.name} was trained on cannot be loaded ({e})") from None
    check_fits(cfg, ds, training=False)  # sizes a crafted config.json and checkpoint agree on
    state = checkpoint.every_row(state, path)  # a data-parallel run's shards put together
    epoch = int(state["epoch"])  # the last complete checkpoint's: a run still training has trained on since
    row_files = checkpoint.rows_folder(state, path)
    model, guide = build(cfg, ds, guide_device="meta" if row_files is not None and starts_constant(cfg) else None)
    if row_files is not None:  # the copy of the row files the checkpoint names, mapped read-only
        rows.attach(guide, None, row_files, state["rows_on_disk"]["slot"], writable=False)
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"], strict=row_files is None)
    except RuntimeError as e:  # shapes or names that the settings and the checkpoint's weights disagree on
        first = str(e).splitlines()[0]
        raise RunError(f"load_run: the checkpoint in {path} does not fit the model its {CONFIG} describes "
                       f"({first}): the checkpoint is damaged; train the run again.") from None
    if at is not None:
        weights = path / SELECTED if at == "selected" else kept_path(path, at)
        if not weights.is_file():
            kept = sorted(p.stem for p in (path / KEPT).glob("epoch-*.pt"))
            raise RunError(f"load_run: {path} keeps no weights at {at!r} ({weights.name} is not there; it keeps "
                           f"{', '.join(kept) or 'none'}): give at='selected' or one of those epochs.")
        epoch = int(checkpoint.load_weights(weights, model, guide)["epoch"])
    model.to(device)
    guide.to(device)
    history = pd.DataFrame(state["history"], columns=COLUMNS).astype({"epoch": int})
    return Run(path, model, guide, ds.to(device), cfg, history, epoch)


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
