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
def test_each_notebook_says_what_it_needs_and_lets_a_student_experiment(path):
    """It opens with what it teaches, needs, costs and what to change; one switch, ``CHECK = True`` in the first code
    cell, turns off every check of a number the text quotes (so that a student's change of seed or budget does not
    break "Run all"); the exercises' answers are folded."""
    book = nbformat.read(path, as_version=4)
    first = book.cells[0].source
    assert "What you will learn" in first and "Before you start" in first
    assert re.search(r"(2|two)\s+CPU\s+cores", first), "the header says how long it runs, and on what"
    assert "CHECK = False" in first, "the header says how to turn the checks off"
    code = [c.source for c in book.cells if c.cell_type == "code"]
    assert code[0].startswith("CHECK = True  #")
    last = book.cells[-1].source
    assert "Exercises" in last and "Answers" in last and "<details>" in last and "</details>" in last


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
