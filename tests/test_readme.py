"""The README and the docs pages as written: their Python blocks run (with fewer epochs and samples), for every guide
the README invites; every pyro-vae command they show parses; their links lead to files; the README stays a landing
page; and the numbers it quotes from the main job agree with the committed tables."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def _blocks(path: Path, language: str = "python") -> list:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _examples() -> str:
    blocks = _blocks(README)
    assert len(blocks) >= 3
    return "\n".join(blocks)


def _small(code: str) -> str:
    """The examples with fewer epochs, samples and steps, so that the suite runs them in seconds."""
    code = re.sub(r"range\(20\)", "range(2)", code)
    code = code.replace("epochs=300", "epochs=2").replace("epochs=400", "epochs=3")
    code = code.replace('"epochs": 20', '"epochs": 2').replace("num_samples=5000", "num_samples=50")
    return code.replace("gaps.decompose(vae.model, guide, x, idx)",
                        "gaps.decompose(vae.model, guide, x, idx, ll_samples=50, elbo_samples=20, steps=5)")


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
    code = _small(_examples().replace('guides.make("mvn"', f'guides.make("{name}"', 1))
    assert "range(2)" in code and "num_samples=50)" in code and "steps=5" in code  # the README still reads so
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["history"]["epoch"].tolist() == [1, 2]
    assert (tmp_path / "runs" / "mvn" / "checkpoint.pt").exists() and (tmp_path / "runs" / "mvn20").is_dir()
    assert namespace["run"].epochs == 2


def test_a_guide_registered_as_the_readme_shows_trains_and_is_measured_like_any_other(tmp_path, monkeypatch):
    """The README's own guide: fit trains it, gaps.decompose measures it against q* of its family."""
    import guides
    from pyro_vae import fit, gaps

    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_small(_examples()), str(README), "exec"), namespace)
    assert "fixed_scale" in guides.names()
    vae, guide, ds = namespace["vae"], namespace["guide"], namespace["ds"]
    history = fit(vae, guide, ds, epochs=2, progress=False)
    assert history["train_loss"].notna().all()
    table = gaps.decompose(vae.model, guide, ds.test[:10], ll_samples=20, elbo_samples=10)
    assert table["amortization_gap"].notna().all()


def _check_decisions(ns):
    import torch

    assert type(ns["flow"]).__name__ == "AmortizedFlow" and type(ns["semi"]).__name__ == "SemiAmortized"
    q = ns["qstar"].distribution(ns["x"], torch.arange(len(ns["x"])))
    assert q.batch_shape == (20,) and q.event_shape == (8,)


def _check_cli(ns):
    assert (ns["chosen"].guide, ns["chosen"].epochs, ns["quick"].epochs) == ("mvn", 40, 100)


#: what each page's python blocks must have made (a page with blocks and no entry here fails)
PAGE_CHECKS = {"decisions.md": _check_decisions, "cli.md": _check_cli}


@pytest.mark.parametrize("page", [p for p in PAGES if p != README and _blocks(p)], ids=lambda p: p.name)
def test_docs_python_blocks_run(tmp_path, monkeypatch, page):
    assert page.name in PAGE_CHECKS, f"{page.name} has python blocks: say in PAGE_CHECKS what they must make"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_small("\n".join(_blocks(page))), str(page), "exec"), namespace)
    PAGE_CHECKS[page.name](namespace)


def _commands():
    """Every ``pyro-vae ...`` line of the pages' bash blocks and indented cheat sheets, as argument lists."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lines = [l for b in _blocks(page, "bash") for l in b.replace("\\\n", " ").splitlines()]  # continued lines
        lines += [l.strip() for l in text.splitlines() if l.startswith("    pyro-vae ")]
        for line in lines:
            line = line.split("#")[0].strip()
            for part in line.split(";"):
                words = shlex.split(part.split("&&")[-1])
                if "pyro-vae" in words:
                    out.append((page.name, words[words.index("pyro-vae") + 1:]))
    return out


def test_every_documented_command_parses():
    """Flags that exist and values that pass their checks (no command is run)."""
    from pyro_vae import cli

    commands = _commands()
    assert len(commands) >= 10
    for page, args in commands:
        try:
            cli.parser().parse_args(args)
        except SystemExit as e:  # --help prints and exits 0
            if e.code == 0 and "--help" in args:
                continue
            pytest.fail(f"{page}: pyro-vae {' '.join(args)} does not parse (exit {e.code})")


def test_links_lead_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_a_landing_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    long = [l for l in lines if len(l) > 120 and not l.startswith(("|", "python3 ", "    "))]
    assert not long, long[:3]


def test_the_readmes_headline_numbers_are_the_main_jobs():
    """One number, one place: the gaps the README's first paragraph quotes are those of docs/main-job/results.csv,
    which the main job wrote."""
    table = pd.read_csv(ROOT / "docs" / "main-job" / "results.csv").set_index(["guide", "split"])
    text = " ".join(README.read_text(encoding="utf-8").split())
    quoted = re.search(r"measures it at ([\d.]+) nats per test digit for a diagonal encoder, against an approximation "
                       r"gap of ([\d.]+) nats", text)
    assert quoted, "the README's first paragraph no longer quotes the headline gaps"
    for text_value, column in zip(quoted.groups(), ("amortization_gap", "approximation_gap")):
        assert abs(float(text_value) - table.loc[("normal", "test"), column]) <= 0.005, column


def test_the_readmes_answer_is_the_studys():
    """The README's first screen answers the question per budget: its table is pyro_vae.report's answer table of the
    joined studies, digits and mnist-5k (under AIS the same verdicts, each number within 0.02, as it says), and what
    the encoder buys comes from the committed tables."""
    from pyro_vae import report

    text = README.read_text(encoding="utf-8")
    joins = {"digits, 8×8": ROOT / "docs" / "q3", "mnist-5k, 28×28": ROOT / "docs" / "mnist-5k" / "study"}
    differences = {name: pd.read_csv(folder / "differences.csv") for name, folder in joins.items()}
    table = report.answer_table(differences)
    assert table in text, "the README's answer table is not the joined studies': re-render it with report.answer_table"
    assert "(IWAE; AIS within 0.02)" in " ".join(text.split())
    ais = report.answer_table(differences, estimator="ais")
    number = r"[+−-]?\d+\.\d+"
    assert re.sub(number, "x", ais) == re.sub(number, "x", table)  # the same verdicts, cell by cell
    for shown, by_ais in zip(re.findall(number, table), re.findall(number, ais)):
        assert abs(float(shown.replace("−", "-")) - float(by_ais.replace("−", "-"))) <= 0.02 + 1e-9
    bench = pd.read_csv(ROOT / "benchmarks" / "evaluate.csv").set_index(["part", "name"])
    speed = lambda part, name: bench.loc[(part, name), "points_per_second"]
    read = lambda name, table: pd.read_csv(joins[name] / f"{table}.csv")
    selection = {name: read(name, "selection").groupby("guide")["selected_seconds"].mean() for name in joins}
    gaps = {name: read(name, "results").query("split == 'test'").groupby("guide")[
        ["amortization_gap", "approximation_gap"]].mean() for name in joins}
    digits, mnist = joins
    flat = " ".join(text.split())
    numbers = re.search(r"q for new points at ([\d ]+) a second against (\d+) for q\\\* fits \(one thread, digits; "
                        r"([\d ]+) against (\d+) on mnist-5k.*?\((\d+) kB of encoder against ([\d.]+) MB of rows at "
                        r"N = 60 000, with Adam's moments\); the selected checkpoint in the same time on digits "
                        r"\(([\d.]+) s against ([\d.]+) s\), later on mnist-5k \((\d+) s against (\d+) s\)\. Its price "
                        r"is the amortization gap: ([\d.]+) nats per test digit at the study's decoders, against an "
                        r"approximation gap of "
                        r"([\d.]+) \(([\d.]+) against ([\d.]+) on mnist-5k\)\.", flat)
    assert numbers, "the README no longer says what the encoder buys in the words this test reads"
    values = [speed("throughput-digits", "encoder, 1 thread(s)"), speed("throughput-digits", "q* normal fit, 1 thread(s)"),
              speed("throughput-mnist", "encoder, 1 thread(s)"), speed("throughput-mnist", "q* normal fit, 1 thread(s)"),
              3 * bench.loc[("throughput-digits", "meanfield rows in memory"), "encoder_bytes"] / 1e3,  # + moments
              bench.loc[("throughput-digits", "meanfield rows in memory"), "bytes_at_60000"] / 1e6,
              selection[digits]["normal"], selection[digits]["meanfield"],
              selection[mnist]["normal"], selection[mnist]["meanfield"],
              gaps[digits].loc["normal", "amortization_gap"], gaps[digits].loc["normal", "approximation_gap"],
              gaps[mnist].loc["normal", "amortization_gap"], gaps[mnist].loc["normal", "approximation_gap"]]
    for shown, value in zip(numbers.groups(), values):
        shown = float(shown.replace(" ", ""))
        digits_shown = len(str(shown).split(".")[1]) if shown != int(shown) else 0
        step = 10 ** -digits_shown if digits_shown else 10 ** max(0, len(str(int(shown))) - 3)  # 731 000: three figures
        assert abs(value - shown) <= 0.5 * step + 1e-9, (shown, value)
    mnist_arms = read(mnist, "results")["guide"].nunique()  # the mnist-5k study's arms that are in, as the README says
    assert mnist_arms == 4 or f"{mnist_arms} of 4 arms in" in flat


def _render_results():
    """docs/digits-study/render_results.py, the script that renders the answer's tables into docs/results.md."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", ROOT / "docs" / "digits-study" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: each answer of docs/results.md: its study, the folder under docs/ of its join, its declared arms and seeds each
DECLARED_ANSWERS = {
    "digits-study": ("q3", ("normal", "normal-T", "mvn", "meanfield", "meanfield-T", "semi_amortized"), 10),
    "mnist-5k-study": ("mnist-5k/study", ("normal", "mvn", "meanfield", "meanfield-T"), 5),
}


@pytest.mark.parametrize("name", DECLARED_ANSWERS)
def test_the_results_page_shows_each_studys_answer(name):
    """docs/results.md's part for each data set holds pyro_vae.report's rendering of its join (docs/q3/, or
    docs/mnist-5k/study/) and of its q*-starts files, to the last digit, under both estimators; the join is that of
    exactly the committed arms' studies, with every declared seed; a part that holds fewer arms than declared says
    so, and the q* starts table holds every seed of the arms it shows."""
    import json

    from pyro_vae import join, report

    render = _render_results()
    folder, declared, seeds = DECLARED_ANSWERS[name]
    answer = next(a for a in render.ANSWERS if a.study.name == name)
    assert answer.q3 == ROOT / "docs" / folder
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    arms = json.loads((answer.q3 / "config.json").read_text())["arms"]
    assert {"normal", "meanfield"} <= set(arms) <= set(declared)
    rejoined = join.join({arm: answer.study / f"compare-{arm}" for arm in arms})
    differences = pd.read_csv(answer.q3 / "differences.csv")
    pd.testing.assert_frame_equal(rejoined.differences.reset_index(drop=True), differences, check_dtype=False,
                                  atol=1e-9)
    assert differences.loc[differences["split"] == "test", "seeds"].eq(seeds).all()
    tables = render.tables(answer)
    assert render.render(page, tables, answer) == page, f"docs/results.md's tables differ from docs/{folder}: run " \
                                                        f"render_results.py"
    assert tables["IWAE differences"] != tables["AIS differences"]  # each estimator paired with itself
    section = " ".join(page[slice(*render.part(page, answer))].split())
    ais_changes = report.sign_change_table(differences, estimator="ais")
    if "sign changes" in tables:
        same = ais_changes == tables["sign changes"]
        assert same == ("(IWAE; AIS names the same budgets)" in section), "the part misstates AIS's sign changes"
    else:
        assert ais_changes == "none" and "No mean difference turns sign between neighbouring budgets" in section
    if len(arms) < len(declared):
        words = ["one", "two", "three", "four", "five", "six"]
        assert f"**Status: {words[len(arms) - 1]} of the {words[len(declared) - 1]} arms are in.**" in section
    starts = render.joined(render.qstar_starts(answer.study), pd.read_csv(answer.q3 / "results.csv"))
    assert ("q* starts" in tables) == (len(starts) > 0)
    assert starts.groupby("guide")["run"].nunique().eq(seeds).all(), "an arm's q* starts are missing seeds"
    assert starts["split"].eq("test").all()
    if name == "digits-study":  # every arm's q* starts are in
        assert set(starts["guide"]) == set(arms) and starts.filter(like="_spread").columns.size >= 2


def test_the_results_page_quotes_the_mnist_5k_bdmc_bracket():
    """docs/results.md's BDMC bracket on mnist-5k is the committed benchmarks/bdmc.py table's, at the digits shown."""
    bracket = pd.read_csv(ROOT / "docs" / "mnist-5k-study" / "bdmc" / "bdmc.csv").iloc[0]
    page = " ".join((ROOT / "docs" / "results.md").read_text(encoding="utf-8").split())
    quoted = re.search(r"upper bounds of log p\(x\) ([\d.]+) ± ([\d.]+) nats apart, with IWAE ([\d.]+) above the "
                       r"lower", page)
    assert quoted, "docs/results.md no longer quotes the mnist-5k BDMC bracket in the words this test reads"
    for shown, value in zip(quoted.groups(), bracket[["width", "width_se", "iwae_minus_lower"]]):
        assert abs(float(shown) - value) <= 0.5 * 10 ** -len(shown.split(".")[1]) + 1e-12, (shown, value)


def test_no_committed_result_folder_is_ignored_by_git():
    """Result files under docs/ are committed: a .gitignore pattern that matches them (``runs/`` once matched
    docs/digits-study/compare-ARM/runs/, and five seeds' files were lost with their machine) fails here."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probes = ["docs/digits-study/compare-semi_amortized/runs/semi_amortized-seed100/cost.csv",
              "docs/digits-study/compare-normal/runs/normal-seed100/results.csv", "docs/q3/runs/x/config.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout == "", f"git ignores result files under docs/: {ignored.stdout}"
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", "runs/study/config.json"], cwd=ROOT).returncode == 0


def test_the_untuned_studys_page_shows_its_committed_tables():
    """docs/q3-untuned.md's tables are pyro_vae.report's rendering of the CSVs in docs/q3-untuned/ and its long/, to the
    last digit: a re-run study that moves a number fails here until the page is regenerated."""
    from pyro_vae import data, report

    page = (ROOT / "docs" / "q3-untuned.md").read_text(encoding="utf-8")
    q3, long = ROOT / "docs" / "q3-untuned", ROOT / "docs" / "q3-untuned" / "long"
    results = pd.read_csv(q3 / "results.csv")
    num_data = len(data.load("digits").train)
    tables = {
        "gap table": report.gap_table(results),
        "cost table": report.cost_table(pd.read_csv(q3 / "cost.csv"), num_data),
    }
    for name, study in (("", q3), ("long ", long)):
        tests = pd.read_csv(study / "test_at_budgets.csv")
        tables[f"{name}difference table"] = report.difference_table(pd.read_csv(study / "differences.csv"))
        tables[f"{name}selection table"] = report.selection_table(pd.read_csv(study / "selection.csv"), tests)
    for name, table in tables.items():
        assert table in page, f"docs/q3-untuned.md does not show the {name} of the untuned study"
    assert page.startswith("# The untuned") and "It is not the answer" in page


def test_the_tuned_arms_page_shows_its_committed_tables():
    """docs/tuned.md's tables are pyro_vae.report's rendering of docs/tuned/ (the four tuned arms, ten seeds)."""
    import json

    from pyro_vae import report

    page = (ROOT / "docs" / "tuned.md").read_text(encoding="utf-8")
    tuned = ROOT / "docs" / "tuned"
    results = pd.read_csv(tuned / "results.csv")
    assert results.groupby("guide")["seed"].nunique().eq(10).all()
    tables = {"tuning table": report.tuning_table(json.loads((tuned / "best.json").read_text())),
              "paired table": report.paired_table(results), "gap table": report.gap_table(results)}
    for name, table in tables.items():
        assert table in page, f"docs/tuned.md does not show the {name} of docs/tuned/"


#: each study's declared tuning: its arms' trials, the seconds cap, and how many best trials were re-scored
DECLARED_TUNINGS = {
    "digits-study": ({"normal": 20, "normal-T": 20, "mvn": 20, "meanfield": 20, "meanfield-T": 30,
                      "semi_amortized": 20}, 10, 3),
    "mnist-5k-study": ({"normal": 10, "mvn": 10, "meanfield": 12, "meanfield-T": 15}, 120, 2),
}


@pytest.mark.parametrize("name", DECLARED_TUNINGS)
def test_a_study_page_shows_its_tuning(name):
    """docs/STUDY.md's tuning table is pyro_vae.report's rendering of every declared arm's committed best.json, each
    tuned with the declared trials, seconds cap and re-scoring."""
    import json

    from pyro_vae import report

    trials, cap, rescored = DECLARED_TUNINGS[name]
    study = ROOT / "docs" / name
    bests = {arm: json.loads((study / f"tune-{arm}" / "best.json").read_text()) for arm in trials}
    for arm, best in bests.items():
        assert (best["trials"], best["seconds_cap"], len(best["rescored"])) == (trials[arm], cap, rescored), arm
    page = (ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8")
    assert report.tuning_table(bests) in page, f"docs/{name}.md does not show the tuning of docs/{name}/"


def test_the_scaling_page_shows_the_committed_measurements():
    """docs/scaling.md's before/after tables are benchmarks/scale.py's rendering of its committed CSVs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    page = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    shards = pd.read_csv(ROOT / "benchmarks" / "scale_shards.csv")
    assert set(shards.n) == {10**6, 10**7} and set(shards.processes) == {1, 2} and shards["round"].nunique() == 2
    assert scale.shards_table(shards) in page, "docs/scaling.md does not show benchmarks/scale_shards.csv"
    checkpoints = pd.read_csv(ROOT / "benchmarks" / "scale_checkpoint.csv")
    assert set(checkpoints.n) == {10**7, 10**8}
    assert scale.checkpoint_table(checkpoints) in page, "docs/scaling.md does not show benchmarks/scale_checkpoint.csv"


STUDY_SCRIPTS = sorted((ROOT / "docs").glob("*-study/run.sh")) + sorted((ROOT / "docs").glob("*-study/compare.sh"))


def _bash_arrays(script: Path) -> dict:
    """The script's ``NAME=(...)`` arrays (DATA, COMMON and each case's flags), as bash reads them: name -> lists."""
    text = script.read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(r"^\s*(?:(\S+)\)\s+)?(DATA|COMMON|flags)=\((.*?)\)\s*;*;?\s*$", text, re.M | re.S):
        arm, name, body = match.groups()
        words = subprocess.run(["bash", "-c", f'a=({body}); printf "%s\\0" "${{a[@]}}"'], capture_output=True,
                               text=True, check=True).stdout.split("\0")[:-1]
        found.setdefault(name, []).append((arm, words))
    return found


@pytest.mark.parametrize("script", STUDY_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_study_scripts_commands_are_valid_settings(script, tmp_path):
    """Each arm's command of a study's run.sh (tune) and compare.sh, as the script builds it from its arrays, parses
    and passes every settings check: a misspelt flag or a budget outside the schedule would otherwise surface only
    hours into a study (compare.sh's tuned flags stand in as --lr 0.001)."""
    from pyro_vae import cli, compare, settings

    arrays = _bash_arrays(script)
    assert arrays.get("COMMON") and arrays.get("flags"), f"{script} defines no COMMON or no arm flags"
    command, cls = ("tune", settings.TuneSettings) if script.name == "run.sh" else ("compare", settings.CompareSettings)
    common = arrays["COMMON"][0][1] + (arrays["DATA"][0][1] if "DATA" in arrays else [])
    tuned = [] if command == "tune" else ["--lr", "0.001"]
    for arm, flags in arrays["flags"]:
        args = cli.parser().parse_args([command, *flags, *common, *tuned, "--out", str(tmp_path / arm)])
        given = {f.name: getattr(args, f.name) for f in cls.options() if hasattr(args, f.name)}
        chosen = settings.resolve(cls, given)
        if command == "compare":
            compare.check(chosen)  # the budgets, as compare refuses them before any training
        assert chosen.epochs >= 100, (arm, chosen.epochs)


def test_a_stopped_tuning_is_kept_for_committing_and_continued_from_the_copy(tmp_path):
    """docs/mnist-5k-study/run.sh --keep copies a stopped arm's study (config.json, optuna.db) into docs/ and refuses
    while a tuning holds the database; on a machine whose runs/ lacks the arm, run.sh starts from that copy with
    --resume (a stub pyro-vae records the call: nothing is tuned)."""
    repo = tmp_path / "repo"
    (repo / "docs" / "mnist-5k-study").mkdir(parents=True)
    script = repo / "docs" / "mnist-5k-study" / "run.sh"
    script.write_text((ROOT / "docs" / "mnist-5k-study" / "run.sh").read_text())
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "pyro-vae").write_text('#!/bin/sh\necho "$@" >> "$CALLS"\nout=$(echo "$@" | sed "s/.*--out \\([^ ]*\\).*/\\1/")\n'
                                   'for f in trials.csv best.json; do echo x > "$out/$f"; done\n')
    (stub / "pyro-vae").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    run = lambda *args: subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                                       text=True)
    tuning = repo / "runs" / "mnist-5k-study" / "tune-normal"
    tuning.mkdir(parents=True)
    (tuning / "config.json").write_text('{"trials": 10}')
    (tuning / "optuna.db").write_bytes(b"study")
    (tuning / "optuna.db-journal").write_bytes(b"")
    refused = run("--keep", "normal")
    assert refused.returncode == 2 and "still running" in refused.stderr
    (tuning / "optuna.db-journal").unlink()
    assert run("--keep", "normal").returncode == 0
    kept = repo / "docs" / "mnist-5k-study" / "tune-normal"
    assert (kept / "optuna.db").read_bytes() == b"study" and (kept / "config.json").exists()
    assert not (tmp_path / "calls").exists()  # --keep tunes nothing
    shutil.rmtree(repo / "runs")  # another machine
    done = run("normal")
    assert done.returncode == 0, done.stderr
    assert (tuning / "optuna.db").read_bytes() == b"study"
    assert (tmp_path / "calls").read_text().split()[:4] == ["tune", "--resume", "--trials", "10"]
    assert (kept / "best.json").exists()  # the finished arm's files, the study with them
