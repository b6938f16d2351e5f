"""The README's Python examples run as written (with fewer epochs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    code = re.sub(r"range\(20\)", "range(2)", code)
    code = code.replace("epochs=300", "epochs=2").replace("epochs=400", "epochs=3")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["history"]["epoch"].tolist() == [1, 2]
    assert (tmp_path / "runs" / "mvn" / "checkpoint.pt").exists()
