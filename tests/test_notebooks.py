"""Every teaching notebook runs top to bottom: a cell that raises fails the suite."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
    book = nbformat.read(path, as_version=4)
    first, last = book.cells[0].source, book.cells[-1].source
    assert "What you will learn" in first and "Exercises" in last and "Answers" in last
    where = {"metadata": {"path": str(path.parent)}}
    client = NotebookClient(book, timeout=600, kernel_name="python3", resources=where)
    client.execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
