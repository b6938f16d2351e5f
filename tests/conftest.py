import os
import socket

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on two cores: one intra-op thread each, for their
    os.environ["OMP_NUM_THREADS"] = "1"    # children too (notebook kernels, command-line runs), which would
    torch.set_num_threads(1)               # otherwise stall each other (pyro_vae/threads.py)


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Validation on, a clean param store and a fixed seed for every test."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never touch the network: any connection but loopback fails at once, as on an offline machine."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("localhost", "127.0.0.1", "::1") and self.family != socket.AF_UNIX:
            raise OSError(f"tests are offline: refused a connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def oracle():
    """The linear-Gaussian oracle with its true, frozen decoder, and 100 test points."""
    from pyro_vae import data, models

    ds = data.load("linear-gaussian")
    lg = models.LinearGaussian(ds.params["W"], ds.params["b"], float(ds.params["noise_scale"]))
    lg.requires_grad_(False)
    return lg, ds.test[:100]


@pytest.fixture(scope="session")
def digits():
    from pyro_vae import data

    return data.load("digits", binarize="static")


def se_tolerance(*ses, k=4.0):
    """k combined standard errors: the tolerance every Monte Carlo comparison uses."""
    return k * float(torch.stack([torch.as_tensor(s, dtype=torch.float64) for s in ses]).pow(2).sum().sqrt())


#: the devices every device-aware test runs on: the CPU, and CUDA where there is one
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
