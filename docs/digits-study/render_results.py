"""Re-render the tables of docs/results.md's answer from docs/q3 and the q*-starts files, in place.

    python docs/digits-study/render_results.py      # after `pyro-vae join ... --out docs/q3 --overwrite`

The answer's part of the page (above "## The linear-Gaussian oracle") holds, in this order, the tables of
:data:`TABLES`; each is replaced by pyro_vae.report's rendering of the committed files, and the prose around them is
left as it is (re-read it: the numbers it quotes are not rewritten). tests/test_readme.py checks that the page
holds exactly these renderings.
"""

import re
import sys
from pathlib import Path

import pandas as pd

from pyro_vae import data, report

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "results.md"
END = "## The linear-Gaussian oracle"
#: the answer's tables, in the page's order
TABLES = ("IWAE differences", "AIS differences", "sign changes", "selection", "gaps", "q* starts", "cost")


def qstar_starts(study: Path = ROOT / "docs" / "digits-study") -> pd.DataFrame:
    """Every run's q*-starts evaluation (``qstar-ARM/RUN.csv``), its ``guide`` the arm."""
    files = sorted(study.glob("qstar-*/*.csv"))
    return pd.concat([pd.read_csv(f).assign(guide=f.parent.name.removeprefix("qstar-")) for f in files])


def joined(starts: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The q*-starts rows of the arms that ``results`` (the join's) holds: an arm still running is read run by run
    (``qstar.sh``), and enters the table when it enters the join."""
    return starts[starts["guide"].isin(results["guide"])]


def tables(q3: Path = ROOT / "docs" / "q3") -> dict:
    """Each table of :data:`TABLES`, rendered from ``q3``."""
    read = lambda name: pd.read_csv(q3 / f"{name}.csv")
    d = read("differences")
    return {
        "IWAE differences": report.difference_table(d),
        "AIS differences": report.difference_table(d, estimator="ais"),
        "sign changes": report.sign_change_table(d),
        "selection": report.selection_table(read("selection"), read("test_at_budgets")),
        "gaps": report.gap_table(read("results")),
        "q* starts": report.qstar_starts_table(joined(qstar_starts(), read("results")), read("results")),
        "cost": report.cost_table(read("cost"), len(data.load("digits").train)),
    }


def render(page: str, fresh: dict = None) -> str:
    """``page`` with its answer's tables replaced by ``fresh`` renderings (default: :func:`tables`)."""
    answer, rest = page[:page.index(END)], page[page.index(END):]
    found = list(re.finditer(r"(?m)^\|.*\|\n(?:^\|.*\|\n)*", answer))
    if len(found) != len(TABLES):
        raise SystemExit(f"render_results: {PAGE} has {len(found)} tables above {END!r}, not {len(TABLES)} "
                         f"({', '.join(TABLES)}): put them back in that order.")
    fresh = fresh or tables()
    out, last = [], 0
    for match, name in zip(found, TABLES):
        out += [answer[last:match.start()], fresh[name] + "\n"]
        last = match.end()
    return "".join(out) + answer[last:] + rest


if __name__ == "__main__":
    new = render(PAGE.read_text(encoding="utf-8"))
    changed = new != PAGE.read_text(encoding="utf-8")
    PAGE.write_text(new, encoding="utf-8")
    print(f"{PAGE}: {'tables re-rendered' if changed else 'already up to date'}")
    sys.exit(0)
