"""The settings of each command, written once: the command line, ``runs.train`` and ``compare`` all read these.

Usage::

    s = TrainSettings(guide="mvn", epochs=50)          # the defaults, with two changed
    s = TrainSettings.from_dict(json.loads(text))      # a run's config.json (checked: a bad value is one line)
    s.to_dict()                                        # what config.json holds
    s = resolve(CompareSettings, given={"epochs": 100}, config=load_config("study.yaml"), preset=QUICK)

Each field carries its flag's help text and kind (``option(...)``): :mod:`pyro_vae.cli` builds one flag per
field from them (``z_dim`` becomes ``--z-dim``), and :meth:`Settings.check` holds every value, whether it
came from a flag, a config file or a script, to the same rules. Precedence is fixed in :func:`resolve`:
the defaults, then a preset (``--quick``), then a config file (``--config``), then the flags given on the
command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import torch

from .budgets import SCHEDULE
from .errors import InputError

#: kinds of value a setting may hold, with the check each gets (also what the command line converts flags to)
KINDS = ("int", "int>=0", "int>=1", "seed", "float>0", "str", "bool", "device")
#: seeds lie in [0, SEED_BOUND): what numpy's and torch's generators take alike
SEED_BOUND = 2 ** 32
#: the bounds on the counts that multiply work (docs/cli.md lists them): a value past one is a typo or a runaway
EPOCHS_BOUND = 10 ** 6
STEPS_BOUND = 1000  # T: guide steps per batch, refinement steps
LAYERS_BOUND = 64
SAMPLES_BOUND = 10 ** 7  # Monte Carlo draws per point
ITERATIONS_BOUND = 10 ** 6  # q* iterations, AIS steps
SEEDS_BOUND = 1000
TRIALS_BOUND = 10 ** 4
#: a config file's size and how many values it may expand to (YAML aliases can make a small file huge)
CONFIG_BYTES = 2 ** 20
CONFIG_VALUES = 10 ** 4


def cores() -> int:
    """The cores this process may run on: the bound of ``--threads`` and ``--workers``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict, _short.maxstring, _short.maxother, _short.maxlong = 2, 4, 4, 60, 60, 40


def shown(value) -> str:
    """``repr(value)`` cut short (at most about 100 characters, two levels deep): what a message may quote of a
    value a user gave, however large (a 10 000-digit number, a YAML file of nested aliases)."""
    return _short.repr(value)


def option(default, help: str, kind: str = "str", *, choices: Optional[Callable[[], Sequence]] = None,
           many: bool = False, optional: bool = False, flags: Sequence[str] = (), metavar: Optional[str] = None,
           negate: bool = False, repeats: bool = False, most=None, items: Optional[int] = None):
    """A settings field: its default and what the command line needs to offer it as a flag.

    :param kind: one of :data:`KINDS`; ``many`` makes it a list of them (``nargs="+"``), each value once unless
        ``repeats`` (hidden widths may repeat; a guide, T or budget named twice would train or read the same twice).
    :param choices: a function returning the allowed values (called late: registries fill at import).
    :param optional: None is allowed (and means "the default of whatever reads it").
    :param flags: the flag names (default ``--`` + the name with dashes); ``negate`` makes a boolean field
        whose flag turns it off (``jit`` and ``--no-jit``).
    :param most: the largest value allowed (an int, or a function returning one, such as :func:`cores`): the bound
        of a count that multiplies work; ``items``: the most values a ``many`` setting may hold.
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose one of {KINDS}.")
    meta = {"help": help, "kind": kind, "choices": choices, "many": many, "optional": optional,
            "flags": tuple(flags), "metavar": metavar, "negate": negate, "repeats": repeats, "most": most,
            "items": items}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _data_names():
    from . import data
    return data.names()


def _binarizations():
    from . import data
    return data.BINARIZATIONS


def _likelihoods():
    from . import models
    return sorted(models.LIKELIHOODS)


def _objectives():
    from . import objectives
    return objectives.names()


def _guide_names():
    import guides
    return guides.names()


def _starts():
    from .qstar import STARTS
    return STARTS


def _families():
    from .qstar import FAMILIES
    return sorted(FAMILIES)


SEED_HELP = ("seeds what is random in training: the initial weights of decoder and encoder, the order of the "
             "mini-batches, the dynamic binarization draws and every Monte Carlo sample (of training, q* and "
             "log p(x)); the same seed, data and flags give the same history.csv losses")
DATA_SEED_HELP = ("seeds the data: the digits train/test split, the static binarization draws and the "
                  "linear-gaussian data (kept apart from --seed so that runs with several seeds see the same data)")
AIS_HELP = ("also estimate log p(x) by AIS with this many annealing steps (16 chains per point, from the best q found), "
            "reported beside the importance-weighted estimate as log_px_ais (default: no AIS)")
AIS_LEAPFROG_HELP = ("leapfrog steps per HMC transition of AIS (default 10, what the digits study ran; its cost is "
                     "about steps x leapfrog decoder gradients per chain)")
QSTAR_STEPS_HELP = ("steps of each q* fit: natural-gradient iterations for the normal and mvn families (default 12), "
                    "Adam steps for the flow family (default 200)")
QSTAR_STARTS_HELP = ("fit each Gaussian q* from these starts (encoder, prior, random, long: 4x the iterations) and keep "
                     "each point's best; elbo_qstar_<family>_spread is their spread (default: the encoder's q alone)")
QSTAR_LR_HELP = ("step size of the q* fits: the largest natural-gradient step for the Gaussian families (default 1), "
                 "Adam's initial learning rate for the flow family (default 0.01, decaying linearly to 0)")


@dataclass
class Settings:
    """The base of every command's settings: checking, and conversion to and from a config file's dict."""

    #: what the settings are for, in messages ("train", "compare", "evaluate")
    command: ClassVar[str] = ""

    @classmethod
    def options(cls) -> list:
        """The fields, in order."""
        return list(dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict:
        """Every setting's default, as a dict."""
        return cls().to_dict()

    @classmethod
    def from_dict(cls, values: dict, source: str = "") -> "Settings":
        """The settings ``values`` name (the others at their defaults), checked; one line naming any bad key or value.

        :param source: where the values came from, for the message (a file name).
        """
        where = f" in {source}" if source else ""
        if not isinstance(values, dict):
            raise InputError(f"the settings{where} must be a mapping of names to values, got {type(values).__name__}: "
                             f"write them as {{\"epochs\": 100, ...}} (JSON) or epochs: 100 (YAML).")
        names = {f.name for f in cls.options()}
        unknown = sorted(set(values) - names)
        if unknown:
            named = ", ".join(map(shown, unknown[:4])) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
            verb = "is not a setting" if len(unknown) == 1 else "are not settings"
            raise InputError(f"{named}{where} {verb} of {cls.command or cls.__name__}: see `pyro-vae {cls.command} "
                             f"--help` for the names.")
        out = cls(**values)
        out.check(source)
        return out

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (lists for sequences): what config.json holds."""
        out = {}
        for f in self.options():
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes``, checked."""
        out = dataclasses.replace(self, **changes)
        out.check()
        return out

    def check(self, source: str = "") -> None:
        """Every value of its field's kind and among its choices; one line naming the setting and the fix."""
        where = f" in {source}" if source else ""
        for f in self.options():
            meta = f.metadata
            value = getattr(self, f.name)
            flag = (meta["flags"] or [f"--{f.name.replace('_', '-')}"])[0]
            if value is None and meta["optional"]:
                continue
            if meta["many"] and not isinstance(value, (list, tuple)):
                raise InputError(f"{f.name}{where} must be a list, got {shown(value)} ({flag} takes one or more "
                                 f"values).")
            values = value if meta["many"] else [value]
            if meta["many"] and meta["items"] is not None and len(values) > meta["items"]:
                raise InputError(f"{f.name}{where} holds {len(values)} values, more than the {meta['items']} it may "
                                 f"hold (docs/cli.md, Bounds): give fewer.")
            for v in values:
                problem = _problem(meta["kind"], v) or _past_bound(meta["most"], v)
                if not problem and f.name == "out" and not v.strip():
                    problem = "must name a folder (an empty name would be the current folder)"
                if problem:
                    flag_hint = "" if source else f" ({flag} on the command line)"
                    raise InputError(f"{f.name}{where} {problem}, got {shown(v)}{flag_hint}.")
                if meta["choices"] is not None and v not in meta["choices"]():
                    raise InputError(f"{f.name}{where} must be one of {list(meta['choices']())}, got {shown(v)}.")
            if meta["many"] and not meta["repeats"]:
                twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
                if twice is not None:
                    raise InputError(f"{f.name}{where} names {shown(twice)} twice ({flag} takes each value once): "
                                     f"drop the repeat.")


def _past_bound(most, value) -> Optional[str]:
    """What is wrong with ``value`` against the bound ``most`` (an int, or a function giving one), or None."""
    if most is None:
        return None
    bound = most() if callable(most) else most
    if value <= bound:
        return None
    if most is cores:
        return f"must be at most {bound}, the cores this process may use"
    return f"must be at most {bound:,} (a bound docs/cli.md lists, against runaways)"


def _problem(kind: str, value) -> Optional[str]:
    """What is wrong with ``value`` as a setting of ``kind``, or None."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "str":
        return None if isinstance(value, str) else "must be a string"
    if kind == "device":
        return device_problem(value)
    if kind.startswith("int") or kind == "seed":
        if not (isinstance(value, int) and not isinstance(value, bool)):
            return "must be an integer"
        if kind == "seed":
            return None if 0 <= value < SEED_BOUND else "must be an integer in [0, 2**32)"
        low = {"int": None, "int>=0": 0, "int>=1": 1}[kind]
        return None if low is None or value >= low else f"must be an integer >= {low}"
    if kind == "float>0":
        if not number:
            return "must be a number"
        return None if 0 < value < math.inf else "must be a finite positive number"
    return None


def device_problem(value) -> Optional[str]:
    """What is wrong with ``value`` as the device a command trains or evaluates on, or None: a torch device that
    this machine has, and that holds values (not ``meta``, which holds shapes only)."""
    if not isinstance(value, str):
        return "must be a torch device name such as cpu or cuda"
    try:
        device = torch.device(value)
    except RuntimeError:
        return "is not a torch device (try cpu or cuda)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "names a CUDA device and this machine has none (use cpu)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"names CUDA device {device.index} and this machine has {torch.cuda.device_count()} (use cuda:0)"
        return None
    if device.type == "mps":
        available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if available else "names Apple's MPS device and this machine has none (use cpu)"
    if device.type != "cpu":
        return f"is a {device.type} device, and pyro-vae trains on cpu, cuda or mps (use cpu)"
    return None


@dataclass
class DataModelSettings(Settings):
    """What a training needs besides its guide: the data, the model, the optimizer, the seeds and the device."""

    data: str = option("digits", "data set", choices=_data_names)
    root: Optional[str] = option(None, "folder of the IDX files for mnist / fashion-mnist", optional=True)
    no_download: bool = option(False, "never download mnist / fashion-mnist: only read the IDX files in --root",
                               "bool")
    binarize: str = option("static", "binarization of grey levels (ignored for linear-gaussian)",
                           choices=_binarizations)
    likelihood: Optional[str] = option(None, "VAE likelihood (default: bernoulli for binarized data, else "
                                       "continuous_bernoulli)", choices=_likelihoods, optional=True)
    z_dim: int = option(8, "latent dimension", "int>=1")
    activation: str = option("relu", "nonlinearity of decoder and encoder (elu: Cremer, Li & Duvenaud's)",
                             choices=lambda: ["relu", "elu"])
    hidden: list = option([256], "hidden widths of decoder and encoder", "int>=1", many=True, repeats=True,
                          items=LAYERS_BOUND)
    batch_size: int = option(128, "mini-batch size", "int>=1")
    lr: float = option(1e-3, "Adam learning rate of decoder and encoder", "float>0")
    local_lr: float = option(1e-2, "learning rate of per-datapoint guide parameters (meanfield, local_mvn)",
                             "float>0")
    elbo: str = option("trace", "the objective: trace (Trace_ELBO), meanfield (TraceMeanField_ELBO, closed-form KL) "
                       "or iwae (the importance-weighted bound with --particles samples, right under mini-batches)",
                       choices=_objectives, flags=("--loss", "--elbo"))
    particles: int = option(5, "K, the importance samples per datapoint of --loss iwae", "int>=1", most=SAMPLES_BOUND)
    num_flows: int = option(2, "affine autoregressive transforms of the flow and local_flow guides", "int>=1",
                            most=LAYERS_BOUND)
    refine_steps: int = option(5, "gradient steps by which the semi_amortized guide refines each q (0: the plain "
                               "encoder)", "int>=0", most=STEPS_BOUND)
    refine_lr: float = option(0.03, "learning rate of the semi_amortized guide's refinement steps (Kim et al. used 1; "
                              "notebook 04 measures why 0.03 on digits and 0.01 on the linear-Gaussian oracle)",
                              "float>0")
    validate_every_step: bool = option(False, "keep Pyro's validation on for every step, not only for the checked "
                                       "first batch", "bool")
    seed: int = option(0, SEED_HELP, "seed")
    data_seed: int = option(0, DATA_SEED_HELP, "seed")
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...", "device")


@dataclass
class TrainSettings(DataModelSettings):
    """``pyro-vae train`` and :func:`pyro_vae.runs.train`: one model and guide, saved as a run's config.json."""

    command: ClassVar[str] = "train"

    no_jit: bool = option(False, "do not compile the ELBO with Pyro's JIT (it is compiled only for the models and "
                          "guides tested under it; see docs/decisions.md for the trade-off)", "bool")
    no_progress: bool = option(False, "hide progress bars", "bool")
    guide: str = option("normal", "guide from the registry", choices=_guide_names)
    scale: str = option("softplus", "sigma parameterization of the normal guide",
                        choices=lambda: ["softplus", "logvar", "exp"])
    epochs: int = option(300, "passes over the training set (with --resume: the total to reach)", "int>=1",
                         most=EPOCHS_BOUND)
    local_steps: int = option(1, "iterative training: T steps of the guide's parameters per batch, the first T - 1 "
                              "with the model held fixed (1: plain SVI)", "int>=1", metavar="T", most=STEPS_BOUND)
    out: str = option("runs/train", "output folder")
    rows_on_disk: Optional[str] = option(None, "keep a per-datapoint guide's rows and their Adam moments in "
                                         "memory-mapped files in FOLDER (only each batch's rows are read and written "
                                         "per step): for N too large for RAM; --resume keeps the run's folder unless "
                                         "given another", optional=True, metavar="FOLDER")
    threads: Optional[int] = option(None, "intra-op threads of the training steps (default: 1 for a model whose batch "
                                    "x parameters is under 1e8, which two threads would stall when another process "
                                    "holds a core; else torch's)", "int>=1", optional=True, most=cores)
    distributed: bool = option(False, "data-parallel training in the processes torchrun starts (`torchrun "
                               "--standalone --nproc_per_node=P --no-python pyro-vae train ... --distributed`): gloo "
                               "on CPU, nccl with --device cuda (one GPU per process); --batch-size is the global "
                               "batch, a multiple of P; rank 0 writes the outputs", "bool")


@dataclass
class CompareSettings(DataModelSettings):
    """``pyro-vae compare`` and :func:`pyro_vae.compare.compare` (as ``compare.Settings``): everything a comparison
    run depends on; saved as its ``config.json``.

    ``jit`` compiles the ELBO where model and guide are marked JIT-safe (see :mod:`pyro_vae.objectives`).
    ``local_steps``: each per-datapoint guide trains one decoder per T (``fit(local_steps=T)``), labelled
    ``"meanfield"`` for T = 1 and ``"meanfield T=5"`` otherwise; ``encoder_steps`` does the same for each amortized
    guide (``"normal T=5"``: T - 1 steps of the encoder with the decoder fixed per batch, aggressive training).
    ``seeds``: every training is repeated with seeds ``seed, seed + 1, ..., seed + seeds - 1`` (initial
    weights, batch order, Monte Carlo draws of training and evaluation).
    ``ais_steps``: when given, the evaluation also estimates log p(x) by AIS with that many steps, from the best q
    found, and reports it beside the importance-weighted one (:func:`pyro_vae.gaps.decompose`).
    ``budget_epochs``, ``test_epochs``, ``budget_seconds``: the budgets, declared before the run
    (:mod:`pyro_vae.budgets`): each decoder in training is measured on the validation split (its first
    ``budget_points``; all by default) at epoch 0 and at each of ``budget_epochs`` up to ``epochs``; the
    selected checkpoint is the best measurement (``patience``: stop after that many without a new best), and
    test is read once, on the whole test split, at it and at the best measurement at or below each
    ``test_epochs`` and ``budget_seconds`` budget.
    ``encoder_widths``: after training, new ``normal`` encoders of these widths train on the decoder of the
    ``normal`` guide, held fixed (:func:`pyro_vae.measure.encoder_width_sweep`); empty: no sweep.
    ``workers``: trainings run in that many processes at once, each with an equal share of the cores
    (CPU only). Each training is seeded by its own seed alone, so the tables do not depend on it.
    """

    command: ClassVar[str] = "compare"

    def check(self, source: str = "") -> None:
        """As for every command, and the last seed ``seed + seeds - 1`` below 2**32."""
        super().check(source)
        if self.seed + self.seeds > SEED_BOUND:
            raise InputError(f"seed {self.seed} with seeds {self.seeds} goes past 2**32 - 1, the largest seed: lower "
                             f"--seed or --seeds.")

    guides: list = option(["normal", "mvn", "meanfield"], "guides to train decoders with", choices=_guide_names,
                          many=True)
    epochs: int = option(300, "passes over the training set, per guide", "int>=1", most=EPOCHS_BOUND)
    seeds: int = option(1, "repeat every training with seeds SEED, SEED+1, ..., SEED+N-1; tables and figures show "
                        "the mean and the spread across seeds", "int>=1", metavar="N", most=SEEDS_BOUND)
    local_steps: list = option([1, 5], "one decoder per T for each per-datapoint guide (meanfield, ...), trained "
                               "iteratively: T steps of the batch's rows per visit, T - 1 with the decoder fixed",
                               "int>=1", many=True, metavar="T", most=STEPS_BOUND)
    encoder_steps: list = option([1], "one decoder per T for each amortized guide (normal, mvn, ...), trained "
                                 "aggressively: T steps of the encoder per batch, T - 1 with the decoder fixed (He et "
                                 "al. 2019)", "int>=1", many=True, metavar="T", most=STEPS_BOUND)
    families: list = option(["normal", "mvn"], "families of q* (flow gives L[q*_flow]; each guide's own family must "
                            "be among them)", choices=_families, many=True)
    qstar_lr: Optional[float] = option(None, QSTAR_LR_HELP, "float>0", optional=True)
    qstar_steps: Optional[int] = option(None, QSTAR_STEPS_HELP, "int>=1", optional=True, most=ITERATIONS_BOUND)
    qstar_starts: Optional[list] = option(None, QSTAR_STARTS_HELP, choices=_starts, many=True, optional=True)
    n_eval: int = option(200, "training points evaluated at each run's selected checkpoint (test: all of it)",
                         "int>=1")
    test_points: Optional[int] = option(None, "read only the first N test points at each chosen checkpoint "
                                        "(default: the whole test split; fewer only for smoke tests such as "
                                        "--quick)", "int>=1", optional=True, metavar="N")
    ll_samples: int = option(5000, "importance samples for log p(x)", "int>=1", most=SAMPLES_BOUND)
    ais_steps: Optional[int] = option(None, AIS_HELP, "int>=1", optional=True, most=ITERATIONS_BOUND)
    ais_leapfrog: int = option(10, AIS_LEAPFROG_HELP, "int>=1", most=ITERATIONS_BOUND)
    elbo_samples: int = option(500, "samples for each ELBO estimate", "int>=1", most=SAMPLES_BOUND)
    budget_epochs: list = option(list(SCHEDULE), "the epochs at which each decoder in training is measured on the "
                                 "validation split (budget.csv, budget.png), declared before the run: those up to "
                                 "--epochs, --epochs itself and the untrained decoder (epoch 0)", "int>=1", many=True,
                                 metavar="E", most=EPOCHS_BOUND)
    test_epochs: Optional[list] = option(None, "pre-registered equal-epochs budgets, among --budget-epochs: test is "
                                         "read at each run's best validation checkpoint at or below each "
                                         "(default: --epochs)", "int>=1", many=True, optional=True, metavar="E")
    budget_seconds: list = option([], "pre-registered equal-seconds budgets (seconds of training, measurements "
                                  "excluded): test is read at each run's best validation checkpoint at or below each",
                                  "float>0", many=True, metavar="S")
    patience: Optional[int] = option(None, "stop a training after this many validation measurements without a new "
                                     "best (default: train every run to --epochs)", "int>=1", optional=True,
                                     metavar="P")
    budget_points: Optional[int] = option(None, "the first N validation points measure the budget curves (default: "
                                          "all of them)", "int>=1", optional=True, metavar="N")
    budget_ll_samples: int = option(1000, "importance samples for log p(x) at each budget-curve point", "int>=1",
                                    most=SAMPLES_BOUND)
    encoder_widths: list = option([], "the encoder-width sweep: on the decoder trained with the normal guide, held "
                                  "fixed, train new normal encoders W units wide for --epochs each and measure their "
                                  "amortization gap (encoder_widths.csv, encoder_widths.png)", "int>=1", many=True,
                                  metavar="W", items=LAYERS_BOUND)
    workers: int = option(1, "trainings run in this many processes at once, each with an equal share of the cores "
                          "(CPU only); the numbers do not depend on it", "int>=1", most=cores)
    jit: bool = option(True, "do not compile the ELBO with Pyro's JIT (it is compiled only for the models and "
                       "guides tested under it; see docs/decisions.md for the trade-off)", "bool",
                       flags=("--no-jit",), negate=True)
    progress: bool = option(True, "hide progress bars", "bool", flags=("--no-progress",), negate=True)
    out: str = option("runs/compare", "output folder")


@dataclass
class EvaluateSettings(Settings):
    """``pyro-vae evaluate``: the gap decomposition of trained runs."""

    command: ClassVar[str] = "evaluate"

    split: list = option(["train", "test"], "splits to evaluate (the first --n-eval points of each)",
                         choices=lambda: ["train", "validation", "test"], many=True)
    at: Optional[str] = option(None, "for runs of a study: evaluate the weights it kept at 'selected' (the checkpoint "
                               "chosen on validation) or at an epoch a budget chose (default: the last epoch)",
                               optional=True, metavar="selected|EPOCH")
    n_eval: int = option(200, "points evaluated per split", "int>=1")
    ll_samples: int = option(5000, "importance samples for log p(x)", "int>=1", most=SAMPLES_BOUND)
    ais_steps: Optional[int] = option(None, AIS_HELP, "int>=1", optional=True, most=ITERATIONS_BOUND)
    ais_leapfrog: int = option(10, AIS_LEAPFROG_HELP, "int>=1", most=ITERATIONS_BOUND)
    elbo_samples: int = option(500, "samples for each ELBO estimate", "int>=1", most=SAMPLES_BOUND)
    families: Optional[list] = option(None, "families of q*; each run's own guide family must be among them "
                                      "(default: normal and mvn, and flow when a run's guide is a flow)",
                                      choices=_families, many=True, optional=True)
    qstar_steps: Optional[int] = option(None, QSTAR_STEPS_HELP, "int>=1", optional=True, most=ITERATIONS_BOUND)
    qstar_lr: Optional[float] = option(None, QSTAR_LR_HELP, "float>0", optional=True)
    qstar_starts: Optional[list] = option(None, QSTAR_STARTS_HELP, choices=_starts, many=True, optional=True)
    seed: int = option(0, "seeds the Monte Carlo samples of the evaluation", "seed")
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...", "device")
    out: str = option("runs/evaluation", "folder of the combined table and figure when several runs are given")
    no_progress: bool = option(False, "hide progress bars", "bool")


@dataclass
class TuneSettings(DataModelSettings):
    """``pyro-vae tune`` and :func:`pyro_vae.tune.tune`: one arm's learning rates (and T) tuned on the validation
    split with Optuna, each trial trained for ``epochs`` epochs; saved as the tuning folder's ``config.json``."""

    command: ClassVar[str] = "tune"

    def check(self, source: str = "") -> None:
        """As for every command, and the last re-scoring seed ``seed + rescore_seeds`` below 2**32."""
        super().check(source)
        if self.rescore_top and self.seed + self.rescore_seeds >= SEED_BOUND:
            raise InputError(f"seed {self.seed} with rescore_seeds {self.rescore_seeds} goes past 2**32 - 1, the "
                             f"largest seed: lower --seed or --rescore-seeds.")

    guide: str = option("normal", "the arm: the guide whose decoder is trained in each trial", choices=_guide_names)
    tune_steps: bool = option(False, "also tune T, the guide's steps per batch (an encoder's: T - 1 with the decoder "
                              "fixed, aggressive training; a per-datapoint guide's rows: variational EM)", "bool")
    trials: int = option(20, "trials the study should hold, complete or pruned (with --resume: the total to reach)",
                         "int>=1", most=TRIALS_BOUND)
    epochs: int = option(100, "the budget of every trial: passes over the training set", "int>=1", most=EPOCHS_BOUND)
    budget_points: Optional[int] = option(None, "the first N validation points, on which each trial's decoder is "
                                          "scored by log p(x) (default: the whole validation split)", "int>=1",
                                          optional=True, metavar="N")
    seconds_cap: Optional[float] = option(None, "a cap on each trial's seconds of training (measurements "
                                             "excluded), for arms compared at equal seconds: a trial stops before "
                                             "the epoch that would pass it, and is measured there; its score is the "
                                             "best measurement inside the cap (default: none, --epochs alone)",
                                             "float>0", optional=True, metavar="S")
    rescore_top: int = option(3, "after the search, train the K best complete trials again on --rescore-seeds more "
                              "training seeds (SEED+1, ...) and choose the one with the best mean score, since one "
                              "seed's score is about as noisy as the differences between good trials (0: Optuna's "
                              "best trial)", "int>=0", metavar="K", most=TRIALS_BOUND)
    rescore_seeds: int = option(2, "the more training seeds on which the --rescore-top trials are scored", "int>=1",
                                metavar="N", most=SEEDS_BOUND)
    budget_epochs: list = option(list(SCHEDULE), "the epochs at which each trial's decoder is measured on validation "
                                 "(those up to --epochs, and --epochs itself); the trial's score is the best of them "
                                 "(the checkpoint validation selects), and each is reported to the pruner", "int>=1",
                                 many=True, metavar="E", most=EPOCHS_BOUND)
    pruner: str = option("median", "stop a trial whose validation log p(x) at a measured epoch is below the median of "
                         "the earlier trials' at that epoch (Optuna's MedianPruner, after the random trials and the "
                         "first tenth of the epochs), or none", choices=lambda: ["median", "none"])
    budget_ll_samples: int = option(1000, "importance samples for each validation log p(x)", "int>=1",
                                    most=SAMPLES_BOUND)
    elbo_samples: int = option(100, "samples for each ELBO estimate of the scoring", "int>=1", most=SAMPLES_BOUND)
    qstar_steps: Optional[int] = option(None, QSTAR_STEPS_HELP, "int>=1", optional=True, most=ITERATIONS_BOUND)
    qstar_lr: Optional[float] = option(None, QSTAR_LR_HELP, "float>0", optional=True)
    sampler_seed: Optional[int] = option(None, "seeds Optuna's TPE sampler, apart from --seed (which seeds each "
                                         "trial's training): default from --study-name, or from GUIDE[-T]-DATA-"
                                         "EPOCHSep, so that each study draws its own trials", "seed", optional=True)
    startup_trials: Optional[int] = option(None, "trials TPE draws at random before it models the results "
                                           "(default: a third of --trials, at least 1; as many as --trials is random "
                                           "search)", "int>=1", optional=True)
    storage: Optional[str] = option(None, "an Optuna storage URL that processes or machines share (default: "
                                    "sqlite in --out, optuna.db)", optional=True, metavar="URL")
    study: Optional[str] = option(None, "the study's name in its storage (default: GUIDE[-T]-DATA-EPOCHSep and a hash "
                                  "of the settings that change what a trial measures); a study of that name made "
                                  "with other settings is refused", optional=True, flags=("--study-name", "--study"),
                                  metavar="NAME")
    jit: bool = option(True, "do not compile the ELBO with Pyro's JIT", "bool", flags=("--no-jit",), negate=True)
    progress: bool = option(True, "hide progress bars", "bool", flags=("--no-progress",), negate=True)
    out: str = option("runs/tune", "output folder: config.json, optuna.db, trials.csv, best.json, trials.png")


#: ``pyro-vae compare --quick``: a small budget for smoke tests; it fills only what was not given otherwise
QUICK = {"epochs": 15, "n_eval": 20, "ll_samples": 300, "elbo_samples": 50, "qstar_steps": 20,
         "budget_epochs": [1, 5, 10, 15], "test_epochs": [5, 15], "budget_points": 20, "budget_ll_samples": 100,
         "test_points": 50}


def load_config(path) -> dict:
    """The settings in the file ``path``: JSON (a run's config.json) or YAML (``.yaml``, ``.yml``)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(CONFIG_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--config {path} cannot be read ({getattr(e, 'strerror', None) or e}): give the path of a "
                         f"JSON or YAML file of settings.") from None
    if len(text) > CONFIG_BYTES:
        raise InputError(f"--config {path} is larger than {CONFIG_BYTES // 2**10} KiB, and a file of settings is a "
                         f"few lines: give the settings file itself.")
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    if yaml_file:
        import yaml  # PyYAML, a dependency

        try:
            values = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            raise InputError(f"--config {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file.") from None
        except RecursionError:
            raise InputError(f"--config {path} nests its values too deeply to be settings: write one setting per "
                             f"key.") from None
        values = {} if values is None else values
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--config {path} is not valid JSON ({e}); fix the file, or name a YAML file .yaml."
                             ) from None
        except RecursionError:
            raise InputError(f"--config {path} nests its values too deeply to be settings: write one setting per "
                             f"key.") from None
    if not isinstance(values, dict):
        raise InputError(f"--config {path} holds a {type(values).__name__}, not settings by name: write one "
                         f"setting per key (guide: mvn, epochs: 40, ...).")
    if _values_in(values, CONFIG_VALUES) > CONFIG_VALUES:
        raise InputError(f"--config {path} expands to more than {CONFIG_VALUES:,} values (YAML aliases repeat what "
                         f"they name): write the settings out, one per key.")
    return values


def _values_in(value, limit: int) -> int:
    """How many values ``value`` holds, counting each repeat of a shared one (as YAML aliases expand); the count
    stops soon after ``limit``, so that a file of nested aliases is measured in ``limit`` steps."""
    count, todo = 0, [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return count


def _yaml_loader():
    """PyYAML's safe loader, reading ``1e-3`` as a number as JSON and Python do (YAML 1.1 wants ``1.0e-3``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
                   r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."))
    return Loader


def refuse_changes_on_resume(command: str, out, saved: dict, given: dict, resumable, held: str = "study",
                             made: str = "declared") -> None:
    """An :class:`InputError` when ``--resume`` is given settings (``given``: the flags and config file the user
    set) that would change the saved ones (``saved``: the folder's ``config.json``), other than those in
    ``resumable``: a resumed run or study continues with its own settings, and a flag it ignored would mislead.

    :param held: what the folder holds ("run", "study"); ``made``: how it got its settings ("trained", "declared").
    """
    changed = [k for k, v in given.items() if k not in resumable and k != "out" and saved.get(k) != v]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {shown(given[k])} ({made}: {shown(saved.get(k))})"
                          for k in changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise InputError(f"{command} --resume: the {held} in {out} was {made} with other settings, and {flags} would "
                         f"change it: drop them (it continues with its own), or start another {held} in another "
                         f"--out.")


def resolve(cls, given: Optional[dict] = None, config: Optional[dict] = None, preset: Optional[dict] = None,
            config_source: str = "") -> Settings:
    """``cls``'s settings from, in increasing precedence: its defaults, ``preset`` (``--quick``), ``config`` (a
    config file's settings) and ``given`` (the flags given on the command line). Checked."""
    values = dict(preset or {})
    if config is not None:
        cls.from_dict(config, config_source)  # a bad key or value in the file is named with the file
        values.update(config)
    values.update(given or {})
    return cls.from_dict(values)
