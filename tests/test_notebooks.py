"""Every teaching notebook runs top to bottom, and every figure it draws is in the file.

A cell that raises fails the suite; so does a cell that draws a figure but holds no image, in
the committed file (what GitHub shows) or after execution.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: what a cell that draws a figure calls
DRAWS = re.compile(r"plt\.show\(\)|plt\.subplots|sns\.\w+plot\(|plots\.(gap_bars|learning_curves|latent_scatter|"
                   r"image_grid|\w+_curves|\w+_figure)\(")


def figure_cells_without_images(book):
    """Indices of code cells that draw a figure but have no image/png output."""
    missing = []
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code" and DRAWS.search(cell.source):
            if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
                missing.append(i)
    return missing


def test_there_are_four_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_shows_every_figure(path):
    book = nbformat.read(path, as_version=4)
    assert any(DRAWS.search(c.source) for c in book.cells if c.cell_type == "code")
    assert figure_cells_without_images(book) == []
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_the_figure_check_can_fail():
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig = plots.gap_bars(t)\nplt.show()")])
    assert figure_cells_without_images(book) == [0]


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
    assert figure_cells_without_images(book) == []
