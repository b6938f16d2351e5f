"""A user's own guide, registered by name, everywhere a built-in one goes: fit, runs.train, the command line through
--import; register() refuses a taken name or a class without the hook; a broken --import is one line."""

import textwrap

import pytest
import torch

import guides
from guides import registry
from pyro_vae import cli, data, fit, load_run, models, runs

#: the README's FixedScale, under a name of its own (the README's examples register "fixed_scale" in this process)
MODULE = textwrap.dedent('''
    import pyro.distributions as dist
    from guides import Guide, register
    from pyro_vae.nets import mlp, unique_name

    @register("fixed_scale_{tag}")
    class FixedScale(Guide):
        """q(z | x) = N(mean(x), 0.5^2 I): an encoder of the mean alone."""
        family = "normal"

        def __init__(self, x_dim, z_dim, hidden=(128,), num_data=None):
            super().__init__(z_dim, num_data, unique_name("fixed_scale_guide"))
            self.encoder = mlp(x_dim, hidden, z_dim)

        def distribution(self, x, idx=None):
            return dist.Normal(self.encoder(x), 0.5).to_event(1)
''')
SMALL = ["--z-dim", "2", "--hidden", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    tag = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[-40:]
    (tmp_path / f"my_guides_{tag}.py").write_text(MODULE.replace("{tag}", tag))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"my_guides_{tag}", f"fixed_scale_{tag}"
    registry._REGISTRY.pop(f"fixed_scale_{tag}", None)


def test_a_users_guide_through_the_command_line_train_evaluate_and_sample(user_module, tmp_path):
    module, name = user_module
    out = tmp_path / "run"
    assert cli.main(["train", "--import", module, "--guide", name, *SMALL, "--out", str(out)]) == 0
    assert load_run(out).guide.registry_name == name
    assert cli.main(["evaluate", str(out), "--import", module, "--n-eval", "5", "--ll-samples", "20",
                     "--elbo-samples", "5", "--no-progress", "--split", "test"]) == 0
    assert (out / "evaluation.csv").exists()


def test_a_users_guide_through_fit_and_runs_train(user_module, tmp_path):
    import importlib

    module, name = user_module
    importlib.import_module(module)
    ds = data.load("digits", binarize="static")
    vae = models.VAE(x_dim=ds.x_dim, z_dim=2, hidden=(8,), num_data=len(ds.train))
    guide = guides.make(name, x_dim=ds.x_dim, z_dim=2, hidden=(8,), num_data=len(ds.train))
    assert fit(vae, guide, ds, epochs=1, progress=False)["epoch"].tolist() == [1]
    run = runs.train({"guide": name, "z_dim": 2, "hidden": [8], "epochs": 1, "no_progress": True,
                      "out": str(tmp_path / "api")})  # runs passes it only what its constructor names
    assert run.epochs == 1
    with pytest.raises(ValueError, match=f"the {name} guide takes no activation .*drop --activation"):
        runs.train({"guide": name, "z_dim": 2, "hidden": [8], "epochs": 1, "activation": "elu",
                    "out": str(tmp_path / "elu")})
    assert not (tmp_path / "elu" / "checkpoint.pt").exists()


def test_register_refuses_a_taken_name_unless_replace_and_a_class_without_the_hook():
    class A(guides.Guide):
        def distribution(self, x, idx=None):
            return None

    class B(A):
        pass

    with pytest.raises(ValueError, match=r"register\('normal'\): the name is taken by guides.amortized"):
        guides.register("normal")(A)
    assert guides.get("normal").__name__ == "AmortizedNormal"
    try:
        guides.register("taken_once")(A)
        guides.register("taken_once")(A)  # the same class again (a module re-run): its name back
        with pytest.raises(ValueError, match="taken by"):
            guides.register("taken_once")(B)
        assert guides.register("taken_once", replace=True)(B) is B and guides.get("taken_once") is B
    finally:
        registry._REGISTRY.pop("taken_once", None)

    class NoHook(guides.Guide):
        pass

    with pytest.raises(ValueError, match="has no distribution"):
        guides.register("no_hook")(NoHook)
    assert "no_hook" not in guides.names()


@pytest.mark.parametrize("source, message", [
    (None, r"--import no_such_module_here: no module 'no_such_module_here' here or on the path"),
    ("raise RuntimeError('broken on purpose')", r"importing it raised RuntimeError: broken on purpose"),
])
def test_a_bad_import_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, source, message):
    monkeypatch.chdir(tmp_path)
    name = "no_such_module_here" if source is None else "broken_guides_module"
    if source is not None:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["train", "--import", name, *SMALL, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()


def test_a_packages_guides_by_entry_point_and_a_broken_one_named(tmp_path, monkeypatch, capsys):
    """An installed package (its dist-info on the path, as pip --target writes it) registers a guide through the
    pyro_vae.guides entry points; a broken entry point is named by `pyro-vae guides` and the others still work."""
    site = tmp_path / "site"
    info = site / "pv_entry_pkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pv-entry-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pyro_vae.guides]\nep_fixed = pv_entry_guides:FixedScale\n"
                                           "ep_broken = pv_no_such_module:Guide\n")
    (site / "pv_entry_guides.py").write_text(MODULE.replace('@register("fixed_scale_{tag}")\n', ""))
    monkeypatch.syspath_prepend(str(site))
    try:
        assert "ep_fixed" in guides.names() and "ep_broken" not in guides.names()
        ds = data.load("digits", binarize="static")
        guide = guides.make("ep_fixed", x_dim=ds.x_dim, z_dim=2, hidden=(8,), num_data=len(ds.train))
        assert guide.distribution(ds.train[:3]).event_shape == (2,)
        assert cli.main(["guides"]) == 0
        printed = capsys.readouterr().out
        assert "ep_fixed" in printed and "ep_broken: broken, not loaded (pv_no_such_module:Guide: " \
                                         "ModuleNotFoundError" in printed
        with pytest.raises(ValueError, match="the ep_broken guide's package failed to load it"):
            guides.get("ep_broken")
        out = tmp_path / "run"
        assert cli.main(["train", "--guide", "ep_fixed", *SMALL, "--out", str(out)]) == 0
    finally:
        registry._REGISTRY.pop("ep_fixed", None)
        registry._BROKEN.pop("ep_broken", None)
