"""One source of settings (pyro_vae.settings): the precedence defaults < --quick < --config file < flags given, the
flags derived from the fields, config files in JSON and YAML, and a config that cannot overwrite the run it came
from. The commands' work is replaced by a recorder: these tests check what each command would run with."""

import json

import pytest
import torch

from pyro_vae import cli, settings


@pytest.fixture
def chosen(monkeypatch):
    """What train and compare would run with, recorded instead of run."""
    seen = {}
    monkeypatch.setattr(cli, "_train", lambda cfg: seen.update(train=cfg))
    monkeypatch.setattr(cli, "cmd_compare", lambda s, **kw: seen.update(compare=s))
    return seen


def _main(*args):
    return cli.main([*args])


@pytest.mark.parametrize("cls", [settings.TrainSettings, settings.CompareSettings, settings.EvaluateSettings])
def test_every_setting_is_a_flag_with_its_default_written_once(cls):
    command = {settings.TrainSettings: "train", settings.CompareSettings: "compare",
               settings.EvaluateSettings: "evaluate"}[cls]
    sub = next(a for a in cli.parser()._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
    dests = {a.dest for a in sub._actions}
    assert {f.name for f in cls.options()} <= dests
    assert cls.defaults() == cls().to_dict()


def test_quick_fills_only_what_was_not_given(chosen, tmp_path):
    """The house issue's case: `compare --quick --epochs 100` trained 15 epochs."""
    assert _main("compare", "--quick", "--epochs", "100", "--out", str(tmp_path)) == 0
    s = chosen["compare"]
    assert s.epochs == 100
    assert s.n_eval == settings.QUICK["n_eval"] and s.qstar_steps == settings.QUICK["qstar_steps"]


def test_a_config_file_sets_what_flags_do_not_and_flags_win(chosen, tmp_path):
    config = {**settings.TrainSettings.defaults(), "guide": "mvn", "epochs": 7, "z_dim": 3, "out": "elsewhere"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert _main("train", "--config", str(path), "--epochs", "9", "--out", str(tmp_path / "run")) == 0
    cfg = chosen["train"]
    assert (cfg["guide"], cfg["z_dim"], cfg["epochs"], cfg["out"]) == ("mvn", 3, 9, str(tmp_path / "run"))


def test_quick_does_not_override_a_config_file(chosen, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("epochs: 40\nn_eval: 7\n")
    assert _main("compare", "--quick", "--config", str(path), "--out", str(tmp_path / "s")) == 0
    s = chosen["compare"]
    assert (s.epochs, s.n_eval, s.ll_samples) == (40, 7, settings.QUICK["ll_samples"])


def test_a_config_never_chooses_the_output_folder(chosen, tmp_path, capsys):
    """`train --config RUN/config.json` without --out would have written over RUN."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"guide": "mvn", "out": str(tmp_path / "the-old-run")}))
    assert _main("train", "--config", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out DIR" in err and "the-old-run" in err
    assert "train" not in chosen


def test_a_boolean_a_config_set_can_be_undone_on_the_command_line(chosen, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("distributed: true\nvalidate_every_step: true\n")
    assert _main("train", "--config", str(path), "--no-distributed", "--no-validate-every-step",
                 "--out", str(tmp_path / "r")) == 0
    assert chosen["train"]["distributed"] is False and chosen["train"]["validate_every_step"] is False
    path.write_text("jit: false\n")
    assert _main("compare", "--config", str(path), "--jit", "--out", str(tmp_path / "s")) == 0
    assert chosen["compare"].jit is True


def test_yaml_config_values(tmp_path):
    """PyYAML's safe_load alone reads `lr: 1e-3` as the string '1e-3' (YAML 1.1 wants 1.0e-3)."""
    path = tmp_path / "c.yml"
    path.write_text("lr: 1e-3\nlocal_lr: 2.5E-2\nhidden: [128, 64]\nguide: mvn\n")
    s = settings.resolve(settings.TrainSettings, {}, settings.load_config(path))
    assert (s.lr, s.local_lr, s.hidden, s.guide) == (0.001, 0.025, [128, 64], "mvn")


@pytest.mark.parametrize("text, words", [
    ('{"guide": "mvn", "epochz": 3}', "epochz"),
    ('["guide", "mvn"]', "holds a list"),
    ('{"lr": "fast"}', "lr"),
    ('{"guide": ', "not valid JSON"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, capsys, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert _main("train", "--config", str(path), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "bad.json" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_config_is_checked_like_the_command_line():
    """A device from a file gets the check the --device flag has, before any work."""
    with pytest.raises(settings.InputError, match="no.*CUDA|CUDA.*none"):
        settings.TrainSettings.from_dict({"device": "cuda:7"})


def test_every_bound_is_the_one_docs_cli_lists_and_every_count_that_multiplies_work_has_one():
    """docs/cli.md's Bounds table against the settings' own bounds: each field named there has that bound in every
    command's settings, and each bounded field is named there (a bound added or changed without the docs fails)."""
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    table = text.split("## Bounds", 1)[1].split("\n\n")[2]
    listed = {}
    for row in table.splitlines()[2:]:
        names, _, bound = [c.strip() for c in row.strip("|").split("|")]
        value = settings.cores if bound.startswith("the cores") else int(bound.replace(",", ""))
        listed.update({name: value for name in re.findall(r"`(\w+)`", names)})
    found = {}
    for cls in (settings.TrainSettings, settings.CompareSettings, settings.EvaluateSettings, settings.TuneSettings):
        for f in cls.options():
            bound = f.metadata["most"] if f.metadata["most"] is not None else f.metadata["items"]
            if bound is not None:
                assert found.setdefault(f.name, bound) == bound, f"{f.name} has two bounds"
    assert found == listed
    counts = {"epochs", "local_steps", "encoder_steps", "refine_steps", "hidden", "trials", "seeds", "ll_samples",
              "elbo_samples", "ais_steps", "ais_leapfrog", "qstar_steps", "threads", "workers"}
    assert counts <= set(found)
