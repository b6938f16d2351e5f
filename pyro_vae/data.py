"""Data sets as (train, test) tensors, and loaders that yield ``(x, idx)``.

Usage::

    ds = load("digits", binarize="static")          # scikit-learn's bundled 8x8 digits
    ds.train.shape                                   # (1438, 64), float32 in {0, 1}
    for x, idx in ds.loader("train", batch_size=128, shuffle=True):
        ...                                          # idx: the dataset rows of x; redrawn each pass
                                                     # when binarize="dynamic"
    for x, idx in loader(ds.train, batch_size=128, shuffle=True):
        ...                                          # batches of any tensor (never redrawn)
    ds = from_tensors(train, test)                   # your own (n, x_dim) tensors

Data sets (``names()``): ``digits`` (the offline default), ``mnist`` and
``fashion-mnist`` (the standard IDX ``.gz`` files in ``root``, downloaded when
online), ``linear-gaussian`` (drawn from a :class:`~pyro_vae.models.LinearGaussian`
whose true parameters travel with the bundle).

Binarization: ``"none"`` (grey levels in [0, 1]); ``"static"`` (one Bernoulli
draw per pixel, fixed by ``seed``); ``"dynamic"`` (``ds.loader("train", ...)``
draws every pixel afresh from its grey level on every pass; ``ds.train`` holds one
fixed draw, used for evaluation, and ``ds.train_probs`` the grey levels);
``"threshold"`` (x > 0.5). Train with ``ds.loader``: a plain ``loader(ds.train)``
cannot know the data were meant to be redrawn.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

BINARIZATIONS = ("none", "static", "dynamic", "threshold")


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

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device``; the loaders then yield batches there."""
        move = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
        return Dataset(self.name, move(self.train), move(self.test), move(self.train_labels),
                       move(self.test_labels), self.image_shape, self.binarize, move(self.train_probs),
                       {k: move(v) for k, v in self.params.items()})

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}.")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int, shuffle: bool = False,
               generator: Optional[torch.Generator] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(x: (b, x_dim), idx: (b,))`` of a split, in a fresh random order if ``shuffle``.

        With ``binarize="dynamic"`` the train split is redrawn: each pixel of each batch is a
        new Bernoulli(grey level) draw, every epoch.
        """
        if split == "train" and self.binarize == "dynamic":
            return loader(self.train_probs, batch_size, shuffle, generator, bernoulli=True)
        return loader(self.split(split), batch_size, shuffle, generator)


def from_tensors(train: torch.Tensor, test: torch.Tensor, name: str = "tensors", **kw) -> Dataset:
    """A :class:`Dataset` from your own float tensors ``train: (n, x_dim)`` and ``test: (m, x_dim)``.

    ``kw`` sets any other field (``train_labels``, ``image_shape``, ...).
    """
    for what, t in (("train", train), ("test", test)):
        if not torch.is_tensor(t) or t.dim() != 2:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"from_tensors: {what} must be a 2-D tensor (n, x_dim), got {shape}.")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"from_tensors: train has {train.shape[1]} features per row and test {test.shape[1]}.")
    return Dataset(name=name, train=train.float(), test=test.float(), **kw)


def loader(x: torch.Tensor, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None,
           bernoulli: bool = False, seed: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], idx)`` over the rows of ``x: (n, x_dim)`` in batches of ``batch_size``.

    :param shuffle: a fresh random order each call (torch's global RNG, or
        ``generator``, or a generator seeded by ``seed``).
    :param bernoulli: yield ``torch.bernoulli(x[idx])`` (dynamic binarization).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if len(x) == 0:
        raise ValueError("cannot iterate over an empty data set (0 rows).")
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


def _register(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def names() -> list:
    """The data set names ``load`` accepts."""
    return sorted(_LOADERS)


def load(name: str = "digits", *, binarize: str = "none", seed: int = 0, root: Optional[str] = None,
         download: bool = True) -> Dataset:
    """Load data set ``name`` as a :class:`Dataset` with float32 tensors.

    :param binarize: one of ``"none" | "static" | "dynamic" | "threshold"`` (see module docstring).
    :param seed: seeds the train/test split (digits), the static draws and the synthetic data.
    :param root: folder of the IDX files (mnist, fashion-mnist); default ``~/.cache/pyro-vae/NAME``.
    :param download: fetch missing IDX files when online.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {names()}.")
    if binarize not in BINARIZATIONS:
        raise ValueError(f"unknown binarize {binarize!r}; choose one of {list(BINARIZATIONS)}.")
    parts = _LOADERS[name](seed=seed, root=root, download=download)
    if binarize != "none" and name == "linear-gaussian":
        raise ValueError("linear-gaussian data are real-valued: use binarize='none'.")
    g = torch.Generator().manual_seed(seed + 1)
    train, test = parts.pop("train"), parts.pop("test")
    train_probs = None
    if binarize == "threshold":
        train, test = (train > 0.5).float(), (test > 0.5).float()
    elif binarize in ("static", "dynamic"):
        train_probs = train if binarize == "dynamic" else None
        train, test = torch.bernoulli(train, generator=g), torch.bernoulli(test, generator=g)
    return Dataset(name=name, train=train, test=test, binarize=binarize, train_probs=train_probs, **parts)


@_register("digits")
def _digits(seed: int, **_) -> dict:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to [0, 1]; 80/20 split by ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    te, tr = order[:n_test], order[n_test:]
    return dict(train=x[tr], test=x[te], train_labels=y[tr], test_labels=y[te], image_shape=(8, 8))


@_register("linear-gaussian")
def _linear_gaussian(seed: int, **_) -> dict:
    """1000 train / 500 test points from a 10-D, 2-latent LinearGaussian with noise 0.5.

    W's columns correlate at 0.8, so the exact posterior is correlated and the
    best diagonal Gaussian falls about 0.6 nats short of log p(x).
    """
    from .models import LinearGaussian

    truth = LinearGaussian.random(x_dim=10, z_dim=2, noise_scale=0.5, seed=seed, correlation=0.8)
    g = torch.Generator().manual_seed(seed + 2)
    _, train = truth.sample(1000, generator=g)
    _, test = truth.sample(500, generator=g)
    params = {"W": truth.W.detach().clone(), "b": truth.b.detach().clone(),
              "noise_scale": truth.noise_scale.detach().clone()}
    return dict(train=train, test=test, params=params)


# ---------------------------------------------------------------- IDX files (MNIST family)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stated shape and type."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values.")
    return data.reshape(shape)


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file: the inverse of :func:`read_idx` for uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _fetch_idx(name: str, root: Optional[str], download: bool) -> Path:
    folder = Path(root) if root else Path.home() / ".cache" / "pyro-vae" / name
    missing = [f for f in IDX_FILES.values() if not (folder / f).exists()]
    if missing and download:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for fname in missing:
                with urllib.request.urlopen(MIRRORS[name] + fname, timeout=30) as r:
                    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(r, out)
                    os.replace(tmp, folder / fname)
        except OSError as e:  # URLError, timeouts, refused connections
            reason = f"download from {MIRRORS[name]} failed ({e})"
        else:
            return folder
    elif missing:
        reason = "download=False"
    else:
        return folder
    still = [f for f in IDX_FILES.values() if not (folder / f).exists()]
    raise FileNotFoundError(
        f"{name}: {reason}. Place the four IDX files in {folder} (or pass root=FOLDER): "
        + ", ".join(IDX_FILES.values()) + f". Missing now: {', '.join(still)}."
    )


def _mnist_like(name: str):
    def load_fn(seed: int, root: Optional[str], download: bool, **_) -> dict:
        folder = _fetch_idx(name, root, download)
        arrays = {k: read_idx(folder / f) for k, f in IDX_FILES.items()}
        for split in ("train", "test"):
            if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
                raise ValueError(f"{name}: {split} images and labels differ in length in {folder}.")
        h, w = arrays["train_images"].shape[1:]
        flat = {k: torch.tensor(arrays[f"{k}_images"].reshape(-1, h * w), dtype=torch.float32) / 255.0
                for k in ("train", "test")}
        labels = {k: torch.tensor(arrays[f"{k}_labels"].astype(np.int64)) for k in ("train", "test")}
        return dict(train=flat["train"], test=flat["test"], train_labels=labels["train"],
                    test_labels=labels["test"], image_shape=(h, w))
    load_fn.__doc__ = f"{name}: the standard IDX .gz files, grey levels scaled to [0, 1]."
    return load_fn


for _name in MIRRORS:
    _register(_name)(_mnist_like(_name))
