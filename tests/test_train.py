import math

import pandas as pd
import pytest
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import guides
from pyro_vae import compare, data, fit
from pyro_vae.optim import LazyAdam
from pyro_vae.train import CHECKPOINT, CHECKPOINT_VERSION, PREVIOUS_CHECKPOINT, CheckpointError, CheckpointWarning, load_checkpoint


def _build(ds, name, hidden=(64,)):
    model = compare.build_model(ds, 4, hidden)
    guide = compare.build_guide(name, ds, 4, hidden, model=model)
    return model, guide, LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO], ids=["Trace_ELBO", "TraceMeanField_ELBO"])
@pytest.mark.parametrize("name", guides.names())
def test_every_guide_trains_with_every_elbo(digits, name, elbo):
    model, guide, optim = _build(digits, name)
    history = fit(model, guide, digits, epochs=5, optim=optim, loss=elbo(), progress=False)
    assert history.columns.tolist()[:3] == ["epoch", "train_loss", "test_loss"] and history.shape == (5, 4)
    assert history["train_loss"].map(math.isfinite).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] - 1.0
    if guide.amortized:
        assert history["test_loss"].iloc[-1] < history["test_loss"].iloc[0]
    else:
        assert history["test_loss"].isna().all()  # no parameters for test points


@pytest.mark.parametrize("likelihood", ["continuous_bernoulli", "gaussian"])
def test_grey_level_likelihoods_train(likelihood):
    grey = data.load("digits", binarize="none")
    model = compare.build_model(grey, 4, (64,), likelihood=likelihood)
    guide = compare.build_guide("normal", grey, 4, (64,))
    history = fit(model, guide, grey, epochs=5, optim=LazyAdam({"lr": 1e-3}), progress=False)
    assert history[["train_loss", "test_loss"]].map(math.isfinite).all().all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] - 1.0


@pytest.mark.parametrize("name,local_steps", [("mvn", 1), ("meanfield", 1), ("meanfield", 3)])
def test_resume_reproduces_the_uninterrupted_run(digits, tmp_path, name, local_steps):
    pyro.set_rng_seed(7)  # the same initial weights for both runs
    model, guide, optim = _build(digits, name)
    straight = fit(model, guide, digits, epochs=4, optim=optim, progress=False, seed=7, local_steps=local_steps)

    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    model, guide, optim = _build(digits, name)
    fit(model, guide, digits, epochs=2, optim=optim, progress=False, seed=7, checkpoint_dir=str(tmp_path),
        local_steps=local_steps)
    pyro.clear_param_store()
    torch.manual_seed(12345)  # a resumed process starts from another RNG state
    model, guide, optim = _build(digits, name)
    resumed = fit(model, guide, digits, epochs=4, optim=optim, progress=False, checkpoint_dir=str(tmp_path),
                  resume=True, local_steps=local_steps)
    cols = ["epoch", "train_loss", "test_loss"]
    pd.testing.assert_frame_equal(straight[cols], resumed[cols])


def test_checkpoint_round_trip_is_weights_only(digits, tmp_path):
    model, guide, optim = _build(digits, "normal")
    fit(model, guide, digits, epochs=1, optim=optim, progress=False, checkpoint_dir=str(tmp_path), config={"a": 1})
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["epoch"] == 1 and state["config"] == {"a": 1}
    fresh, fresh_guide, _ = _build(digits, "normal")
    fresh.load_state_dict(state["model"])
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("*.tmp"))  # the temp file was renamed over the checkpoint


def test_resume_without_checkpoint_is_refused(digits, tmp_path):
    model, guide, optim = _build(digits, "normal")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(model, guide, digits, epochs=1, optim=optim, checkpoint_dir=str(tmp_path), resume=True)


def _train(ds, name, epochs, likelihood=None, **kw):
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    model = compare.build_model(ds, 4, (64,), likelihood=likelihood)
    guide = compare.build_guide(name, ds, 4, (64,))
    history = fit(model, guide, ds, epochs=epochs, optim=LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2}),
                  progress=False, seed=7, **kw)
    return model, history


def test_a_corrupted_checkpoint_does_not_cost_the_run(digits, tmp_path):
    """Truncate the latest checkpoint: resume warns, continues from the previous one, and ends as if nothing happened."""
    _, straight = _train(digits, "normal", 4)
    _train(digits, "normal", 3, checkpoint_dir=str(tmp_path))
    assert load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT)["epoch"] == 2
    latest = tmp_path / CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.warns(CheckpointWarning, match="damaged or not a checkpoint.*; resuming from checkpoint.prev.pt.*epoch 2"):
        _, resumed = _train(digits, "normal", 4, checkpoint_dir=str(tmp_path), resume=True)
    cols = ["epoch", "train_loss", "test_loss"]
    pd.testing.assert_frame_equal(straight[cols], resumed[cols])
    assert load_checkpoint(latest)["epoch"] == 4  # the bad file was replaced by a good one


def test_two_corrupted_checkpoints_are_one_clear_error(digits, tmp_path):
    _train(digits, "normal", 2, checkpoint_dir=str(tmp_path))
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="neither checkpoint can be read: .*checkpoint.pt is damaged.*"
                                              "checkpoint.prev.pt is damaged.*train the run again"):
        _train(digits, "normal", 3, checkpoint_dir=str(tmp_path), resume=True)


def test_a_checkpoint_of_another_format_version_is_refused(digits, tmp_path):
    _train(digits, "normal", 1, checkpoint_dir=str(tmp_path))
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["version"] == CHECKPOINT_VERSION == 3
    torch.save({**state, "version": 2}, tmp_path / CHECKPOINT)  # format 2 (every row inside) is read
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1
    torch.save({**state, "version": 99}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="format 99.*reads formats 2, 3"):
        load_checkpoint(tmp_path / CHECKPOINT)
    torch.save({**state, "version": 1}, tmp_path / CHECKPOINT)  # trained before the validation split: say so
    with pytest.raises(CheckpointError, match="format 1 .*validation set.*train the run again"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_fit_wants_a_dataset_and_says_how_to_build_one(digits):
    model, guide, optim = _build(digits, "normal")
    with pytest.raises(TypeError, match=r"data.from_tensors\(train, test\)"):
        fit(model, guide, digits.train, epochs=1, optim=optim, progress=False)
    ds = data.from_tensors(digits.train, digits.test)
    assert len(fit(model, guide, ds, epochs=1, optim=optim, progress=False)) == 1


@pytest.mark.parametrize("epochs", [0, -1, 2.5])
def test_bad_epochs_are_refused_before_any_step(digits, epochs):
    model, guide, optim = _build(digits, "normal")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(model, guide, digits, epochs=epochs, optim=optim, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resume_restores_constrained_parameters(tmp_path):
    """The Gaussian likelihood's scale is a constrained PyroParam: it and its Adam moments survive a resume."""
    grey = data.load("digits", binarize="none")
    straight_model, straight = _train(grey, "normal", 3, likelihood="gaussian")
    _train(grey, "normal", 2, likelihood="gaussian", checkpoint_dir=str(tmp_path))
    model, resumed = _train(grey, "normal", 3, likelihood="gaussian", checkpoint_dir=str(tmp_path), resume=True)
    assert not torch.allclose(model.scale, torch.ones_like(model.scale))  # the scale did move in training
    assert torch.equal(model.scale, straight_model.scale)
    pd.testing.assert_frame_equal(straight[["train_loss", "test_loss"]], resumed[["train_loss", "test_loss"]])


def test_a_nan_weight_is_refused_before_any_step(digits):
    """The first batch goes through Pyro's validation before training: a diverged weight is named there."""
    model, guide, optim = _build(digits, "normal")
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="logits"):
        fit(model, guide, digits, epochs=3, optim=optim, progress=False)


class _DivergesAfter(LazyAdam):
    """LazyAdam that turns a decoder weight into NaN after ``n`` steps: a run that diverges mid-training."""

    def __init__(self, weight, n):
        super().__init__({"lr": 1e-3})
        self.weight, self.n = weight, n

    def __call__(self, params, *args, **kwargs):
        super().__call__(params, *args, **kwargs)
        self.n -= 1
        if self.n == 0:
            with torch.no_grad():
                self.weight[0, 0] = float("nan")


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
@pytest.mark.parametrize("jit", [False, True])
def test_nan_during_training_stops_the_run_at_once(digits, jit):
    """Validation is off after the first batch; fit's own check stops the step that returns NaN."""
    model, guide, _ = _build(digits, "normal")
    optim = _DivergesAfter(model.decoder[0].weight, n=15)  # epoch 2, step 4 (12 steps per epoch)
    with pytest.raises(FloatingPointError, match="svi.step returned nan at epoch 2"):
        fit(model, guide, digits, epochs=3, optim=optim, progress=False, jit=jit)
