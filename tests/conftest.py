import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Validation on, a clean param store and a fixed seed for every test."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def digits():
    from pyro_vae import data

    return data.load("digits", binarize="static")


def se_tolerance(*ses, k=4.0):
    """k combined standard errors: the tolerance every Monte Carlo comparison uses."""
    return k * float(torch.stack([torch.as_tensor(s, dtype=torch.float64) for s in ses]).pow(2).sum().sqrt())
