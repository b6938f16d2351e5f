import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from pyro_vae import data


def test_digits_bundle(digits):
    assert digits.train.shape == (1438, 64) and digits.test.shape == (359, 64)
    assert digits.train.dtype == torch.float32 and digits.image_shape == (8, 8)
    assert set(digits.train.unique().tolist()) == {0.0, 1.0}
    assert len(digits.train_labels) == len(digits.train)


@pytest.mark.parametrize("binarize", data.BINARIZATIONS)
def test_binarizations(binarize):
    ds = data.load("digits", binarize=binarize)
    values = set(ds.train.unique().tolist())
    if binarize == "none":
        assert ds.train.min() >= 0 and ds.train.max() <= 1 and len(values) > 2
    else:
        assert values <= {0.0, 1.0}
    if binarize == "dynamic":
        first = next(ds.loader("train", len(ds.train)))[0]
        second = next(ds.loader("train", len(ds.train)))[0]
        assert not torch.equal(first, second) and set(first.unique().tolist()) <= {0.0, 1.0}


def test_dynamic_binarization_redraws_through_the_documented_loop():
    """The README's loop, ``ds.loader("train", ...)``, yields fresh Bernoulli(grey level) pixels every epoch.

    Over E epochs each pixel of each datapoint is seen E times; its frequency must match its grey
    level within 4 binomial standard errors (overall and per pixel), and a fixed draw (the bug this
    guards) would not: it repeats the same value E times.
    """
    ds = data.load("digits", binarize="dynamic")
    probs = ds.train_probs
    epochs = 200
    counts = torch.zeros_like(probs)
    changed = 0
    previous = None
    for _ in range(epochs):
        epoch = torch.zeros_like(probs)
        for x, idx in ds.loader("train", batch_size=128, shuffle=True):
            assert set(x.unique().tolist()) <= {0.0, 1.0}
            epoch[idx] = x
        counts += epoch
        changed += 0 if previous is None else int((epoch != previous).any())
        previous = epoch
    assert changed == epochs - 1
    freq = counts / epochs
    se = (probs * (1 - probs) / epochs).sqrt()
    inside = (freq - probs).abs() <= 4 * se + 1e-6
    assert inside.float().mean() > 0.999
    z = ((counts - epochs * probs).sum() / (epochs * probs * (1 - probs)).sum().sqrt()).item()
    assert abs(z) < 4
    fixed = previous.expand(epochs, *previous.shape).mean(0)  # what a single draw repeated would give
    assert ((fixed - probs).abs() <= 4 * se + 1e-6).float().mean() < 0.9


def test_static_is_reproducible():
    assert torch.equal(data.load("digits", binarize="static").train, data.load("digits", binarize="static").train)


def test_loader_yields_rows_and_indices(digits):
    seen = []
    for x, idx in data.loader(digits.train, batch_size=100, shuffle=True, seed=3):
        assert torch.equal(x, digits.train[idx])
        seen.append(idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(digits.train)))


def test_linear_gaussian_carries_truth():
    ds = data.load("linear-gaussian")
    assert ds.train.shape == (1000, 10) and ds.params["W"].shape == (10, 2)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="digits"):
        data.load("cifar")
    with pytest.raises(ValueError, match="dynamic"):
        data.load("digits", binarize="sometimes")


def _write_fake_mnist(folder, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test)}
    for key, fname in data.IDX_FILES.items():
        data.write_idx(folder / fname, arrays[key])
    return arrays


def test_idx_round_trip_and_mnist_loading(tmp_path):
    arrays = _write_fake_mnist(tmp_path)
    assert np.array_equal(data.read_idx(tmp_path / data.IDX_FILES["train_images"]), arrays["train_images"])
    ds = data.load("mnist", root=str(tmp_path), download=False)
    assert ds.train.shape == (12, 784) and ds.test.shape == (5, 784) and ds.image_shape == (28, 28)
    assert torch.allclose(ds.train[3], torch.tensor(arrays["train_images"][3].reshape(-1) / 255.0, dtype=torch.float32))
    assert torch.equal(ds.test_labels, torch.tensor(arrays["test_labels"]))


def test_bad_idx_file(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad.idx")


def test_offline_error_names_folder_and_files(tmp_path):
    folder = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError) as info:
        data.load("fashion-mnist", root=str(folder), download=False)
    message = str(info.value)
    assert str(folder) in message and all(f in message for f in data.IDX_FILES.values())


def test_failed_download_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="download from .* failed") as info:
        data.load("mnist", root=str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(info.value)
