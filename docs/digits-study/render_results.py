"""Re-render the tables of docs/results.md's answers from their joined studies and q*-starts files, in place.

    python docs/digits-study/render_results.py      # after `pyro-vae join ... --out docs/q3 --overwrite`

Each answer the page holds (:data:`ANSWERS`: one per data set) is the part of the page between two of its headings,
and holds, in this order, the tables of :data:`TABLES` that there are (the sign changes only where a difference
turns sign, the q* starts only once ``qstar.sh`` has read a joined arm); each is replaced by pyro_vae.report's
rendering of the answer's committed files, and the prose around them is left as it is (re-read it: the numbers it
quotes are not rewritten). tests/test_readme.py checks that the page holds exactly these renderings.
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pyro_vae import data, report

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "results.md"
#: an answer's tables, in the page's order
TABLES = ("IWAE differences", "AIS differences", "sign changes", "selection", "gaps", "q* starts", "cost")


@dataclass(frozen=True)
class Answer:
    """One data set's answer: its join (``q3``), its study's folder (``study``, holding ``qstar-ARM/``), the data
    set its cost table counts rows of, and the page's part that holds its tables: from the line ``start`` to the
    line ``end`` (headings)."""
    q3: Path
    study: Path
    data: str
    start: str
    end: str


ANSWERS = (Answer(ROOT / "docs" / "q3", ROOT / "docs" / "digits-study", "digits",
                  start="## On 8×8 digits", end="## On 28×28 digits"),
           Answer(ROOT / "docs" / "mnist-5k" / "study", ROOT / "docs" / "mnist-5k-study", "mnist-5k",
                  start="## On 28×28 digits", end="## Beside the papers"))


def qstar_starts(study: Path = ANSWERS[0].study) -> pd.DataFrame:
    """Every run's q*-starts evaluation (``qstar-ARM/RUN.csv``), its ``guide`` the arm; no rows before ``qstar.sh``
    has read a run."""
    files = sorted(study.glob("qstar-*/*.csv"))
    frames = [pd.read_csv(f).assign(guide=f.parent.name.removeprefix("qstar-")) for f in files]
    return pd.concat(frames) if frames else pd.DataFrame(columns=["guide", "run", "split"])


def joined(starts: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The q*-starts rows of the arms that ``results`` (the join's) holds: an arm still running is read run by run
    (``qstar.sh``), and enters the table when it enters the join."""
    return starts[starts["guide"].isin(results["guide"])]


def tables(answer: Answer = ANSWERS[0]) -> dict:
    """Each table of :data:`TABLES` that there is, rendered from ``answer``'s files, in that order."""
    read = lambda name: pd.read_csv(answer.q3 / f"{name}.csv")
    d, results = read("differences"), read("results")
    starts = joined(qstar_starts(answer.study), results)
    fresh = {
        "IWAE differences": report.difference_table(d),
        "AIS differences": report.difference_table(d, estimator="ais"),
        "sign changes": None if report.sign_change_table(d) == "none" else report.sign_change_table(d),
        "selection": report.selection_table(read("selection"), read("test_at_budgets")),
        "gaps": report.gap_table(results),
        "q* starts": report.qstar_starts_table(starts, results) if len(starts) else None,
        "cost": report.cost_table(read("cost"), len(data.load(answer.data).train)),
    }
    return {name: table for name, table in fresh.items() if table is not None}


def part(page: str, answer: Answer) -> tuple:
    """Where ``answer``'s part of ``page`` begins and ends (character offsets)."""
    begin = re.search(rf"(?m)^{re.escape(answer.start)}", page)
    end = begin and re.search(rf"(?m)^{re.escape(answer.end)}", page[begin.end():])
    if not end:
        raise SystemExit(f"render_results: {PAGE} has no part from {answer.start!r} to {answer.end!r}: put its "
                         f"headings back.")
    return begin.start(), begin.end() + end.start()


def render(page: str, fresh: dict = None, answer: Answer = ANSWERS[0]) -> str:
    """``page`` with ``answer``'s tables replaced by ``fresh`` renderings (default: :func:`tables` of it)."""
    begin, end = part(page, answer)
    section = page[begin:end]
    found = list(re.finditer(r"(?m)^\|.*\|\n(?:^\|.*\|\n)*", section))
    fresh = fresh or tables(answer)
    if len(found) != len(fresh):
        raise SystemExit(f"render_results: {PAGE} has {len(found)} tables from {answer.start!r} to {answer.end!r}, "
                         f"not {len(fresh)} ({', '.join(fresh)}): put them back in that order.")
    out, last = [], 0
    for match, name in zip(found, fresh):
        out += [section[last:match.start()], fresh[name] + "\n"]
        last = match.end()
    return page[:begin] + "".join(out) + section[last:] + page[end:]


if __name__ == "__main__":
    old = PAGE.read_text(encoding="utf-8")
    new = old
    for answer in ANSWERS:
        new = render(new, answer=answer)
    PAGE.write_text(new, encoding="utf-8")
    print(f"{PAGE}: {'tables re-rendered' if new != old else 'already up to date'}")
    sys.exit(0)
