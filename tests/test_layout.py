"""The house's rules, read from the code's own imports (every ``import``, at the top of a file or inside a function).

- no import circle among the modules of ``pyro_vae`` and ``guides``;
- ``guides`` and ``pyro_vae.models`` never import each other; the training loops import neither;
- only ``pyro_vae.plots`` imports matplotlib or seaborn (``cli`` picks the backend), only ``pyro_vae.cli`` argparse.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pyro_vae", "guides")


def _modules():
    """module name -> path, for every file of the two packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known) -> set:
    """The modules ``name`` (at ``path``) imports: internal ones resolved to module names, external ones by top name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)
            found.update(submodules)
            if len(submodules) < len(node.names):  # a name from the module (or package face) itself
                found.add(base)
    return {m for m in found if m and m != name}


def graph():
    known = _modules()
    return {name: {m for m in imports(path, name, known) if m in known} for name, path in known.items()}, known


def find_cycle(edges):
    """One cycle of the directed graph ``edges`` (a list of nodes), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    """A package's face (its __init__) counts as the package: a module that takes a name from its own package's
    __init__ while that __init__ imports the module is a circle (the guides' registry lives in guides.registry)."""
    edges, _ = graph()
    assert len(edges) > 20
    assert find_cycle(edges) is None


def test_models_guides_and_training_meet_only_through_the_contract():
    edges, known = graph()
    guides_side = [m for m in edges if m == "guides" or m.startswith("guides.")]
    assert guides_side and all("pyro_vae.models" not in edges[m] for m in guides_side)
    assert not any(n == "guides" or n.startswith("guides.") for n in edges["pyro_vae.models"])
    for loop in ("pyro_vae.train", "pyro_vae.distributed", "pyro_vae.loop", "pyro_vae.checkpoint"):
        assert not {"pyro_vae.models", "guides"} & edges[loop], loop
        assert "pyro_vae.train" not in edges[loop] or loop == "pyro_vae.train", loop  # no loop imports fit's


def test_only_plots_draws_and_only_cli_parses_arguments():
    _, known = graph()
    for name, path in known.items():
        external = imports(path, name, known)
        if name != "pyro_vae.plots":
            assert not {"seaborn", "matplotlib.pyplot"} & external, name
        if name != "pyro_vae.cli":
            assert "argparse" not in external, name
