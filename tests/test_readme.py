"""The README's Python examples run as written (with fewer epochs and samples), for every guide they invite."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    return "\n".join(blocks)


def test_the_documented_loop_redraws_dynamic_binarization():
    """The README's loop goes through ``ds.loader("train", ...)``, which redraws every epoch (tests/test_data.py);
    ``data.loader(ds.train, ...)`` would train on one fixed draw without a word."""
    loop = re.search(r"for x, idx in (.*):\n\s+loss = svi.step", _examples()).group(1)
    assert loop.startswith('ds.loader("train"')


def test_the_examples_name_every_guide_they_invite():
    code = _examples()
    invited = re.search(r'guides\.make\("mvn".*# or (.*)', code).group(1)
    assert re.findall(r'"(\w+)"', invited) == ["normal", "meanfield", "local_mvn"]


@pytest.mark.parametrize("name", ["mvn", "normal", "meanfield", "local_mvn"])
def test_readme_python_examples_run(tmp_path, monkeypatch, name):
    code = _examples().replace('guides.make("mvn"', f'guides.make("{name}"')
    code = re.sub(r"range\(20\)", "range(2)", code)
    code = code.replace("epochs=300", "epochs=2").replace("epochs=400", "epochs=3")
    code = code.replace("num_samples=5000", "num_samples=50")
    code = code.replace("gaps.decompose(vae.model, guide, x, idx)",
                        "gaps.decompose(vae.model, guide, x, idx, ll_samples=50, elbo_samples=20, steps=30)")
    assert "range(2)" in code and "num_samples=50)" in code and "steps=30" in code  # the README still reads so
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["history"]["epoch"].tolist() == [1, 2]
    assert (tmp_path / "runs" / "mvn" / "checkpoint.pt").exists()
