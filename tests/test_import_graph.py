"""The unitune package's import graph has no cycle, counting every import statement, and its
packages stand in layers: each imports only the packages below it (:data:`LAYERS`).

A circle of imports only works while the one that closes it stays inside a function (or happens to
run late enough), so it breaks as soon as someone moves an import to the top of a file; it also
says that the modules in it are one piece cut into several files. The graph is read from the source
with ``ast``: module-level imports, imports inside functions and methods and ``try`` blocks alike,
relative imports resolved, an import of ``a.b.c`` counted as one of
the packages ``a`` and ``a.b`` too (Python runs their ``__init__.py`` first), and module names
taken from the package layout pyproject.toml declares (``supernet/`` is ``unitune.supernet``, and
so on), so nothing is imported to build it.

Imports under ``if TYPE_CHECKING:`` are not edges: they never run, and they are how a lower layer
names a higher layer's types in its annotations (the method registry's ``Method`` contract names
``SearchSpace``, whose module builds on the registry; the backbone dims it names live beside it,
``supernet/methods/dims.py``). Moving one of them out of its block is what would close a cycle, and
then this test sees it.
"""

from __future__ import annotations

import ast
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# The packages, lowest first. A module belongs to the deepest package holding it; a package may
# import its own modules and the packages below it, never one above (the README's Layout section
# draws the same list).
LAYERS = [
    "unitune",  # the ground: errors, io, checks, schema, voice, progress, stagelog, curves, weights
    "unitune.data",  # datasets, splits, transforms, loaders
    "unitune.supernet.methods",  # the PEFT methods (the registry), their layers and the backbone dims
    "unitune.supernet",  # the PEFT library: space, subnet, model, counts, budget, encoding, repair, merge, API
    "unitune.engine",  # the run config, backbone building, training loops, supernet training, a subnet's model
    "unitune.search",  # the Optuna side: studies, samplers, fitnesses, re-rank, exports of trials
    "unitune.retrain",  # retrain, export, evaluate
    "unitune.commands.compare",  # `unitune compare`: its plan, its cells and stages, its report
    "unitune.commands",  # the entry points: the command line, the run pipeline
]

# Entry scripts are run, never imported (``python -m unitune`` runs unitune/__main__.py, which
# calls the command line): they stand above every layer although their folder is the ground's.
ENTRY_SCRIPTS = {"unitune.__main__"}


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the distribution, by dotted name, from pyproject.toml's setuptools layout."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = setup.get("package-dir", {})
    modules: dict[str, Path] = {}
    for package in setup["packages"]:
        if package in package_dir:
            folder = root / package_dir[package]
        else:  # setuptools' rule: a package without an entry lies under its parent's folder
            parent, _, leaf = package.rpartition(".")
            folder = (root / package_dir[parent] if parent in package_dir else root / parent.replace(".", "/")) / leaf
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``module -> modules it imports`` (inside the distribution only), from every import statement."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):  # type-only imports never run: their blocks are emptied first
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                node.body = []
        for node in ast.walk(tree):  # walk: function bodies too
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                # `from pkg import name` imports the submodule pkg.name when there is one, else pkg
                edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first: edges to those packages
        # too, except to the importer's own packages (always mid-import while it runs).
        edges |= {target.rsplit(".", k)[0] for target in edges for k in range(1, target.count(".") + 1)}
        own = {name.rsplit(".", k)[0] for k in range(0, name.count(".") + 1)}
        graph[name] = {target for target in edges if target in modules and target not in own}
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` as an ``if``'s whole condition."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles (``[a, b, ..., a]``) that together name every module on some cycle: Tarjan's strongly
    connected components, then a shortest cycle through each member not yet named."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        uncovered = set(component) if len(component) > 1 else set()
        while uncovered:  # a shortest cycle through each module of the component not yet named
            start = min(uncovered)
            previous: dict[str, str] = {}
            frontier = [start]
            while start not in previous:  # breadth first, inside the component
                following = []
                for node in frontier:
                    for succ in sorted(graph[node] & component):
                        if succ not in previous:
                            previous[succ] = node
                            following.append(succ)
                frontier = following
            path = [start, previous[start]]
            while path[-1] != start:
                path.append(previous[path[-1]])
            cycles.append(path[::-1])
            uncovered -= set(path)
    return sorted(cycles)


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The deepest package holding ``module`` (a package is its own)."""
    return module if modules[module].stem == "__init__" else module.rpartition(".")[0]


def package_graph(modules: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    """``package -> {package it imports: ["importer -> imported", ...]}``: the module graph (every
    import statement, function level included) collapsed to packages, entry scripts left out."""
    graph = import_graph(modules)
    packages: dict[str, dict[str, list[str]]] = {}
    for module, targets in graph.items():
        if module in ENTRY_SCRIPTS:
            continue
        source = package_of(module, modules)
        edges = packages.setdefault(source, {})
        for target in sorted(targets):
            dest = package_of(target, modules)
            if dest != source:
                edges.setdefault(dest, []).append(f"{module} -> {target}")
    return packages


def layer_violations(packages: dict[str, dict[str, list[str]]], layers: list[str]) -> list[str]:
    """Each import of a package from one at or above its own layer, with the imports that make it."""
    rank = {package: i for i, package in enumerate(layers)}
    return [f"{source} imports {dest} ({', '.join(why)})" for source, edges in sorted(packages.items())
            for dest, why in sorted(edges.items()) if rank[dest] >= rank[source]]


def test_unitune_has_no_import_cycle():
    modules = package_modules(ROOT)
    cycles = find_cycles(import_graph(modules))
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_every_kind_of_import():
    modules = package_modules(ROOT)
    # the layout from pyproject.toml: top-level folders under namespaced names, unitune.data by default
    assert modules["unitune.search.study"] == ROOT / "search" / "study.py"
    assert modules["unitune.supernet"] == ROOT / "supernet" / "__init__.py"
    assert modules["unitune.data.loader"] == ROOT / "unitune" / "data" / "loader.py"
    graph = import_graph(modules)
    assert "unitune.search.study" in graph["unitune.search"]  # relative, module level, in an __init__
    assert "unitune.engine.subnet_model" in graph["unitune.search.rerank"]  # absolute, inside a function
    assert "unitune.engine" in graph["unitune.search.rerank"]  # ... which runs engine/__init__.py first
    assert "unitune.search" not in graph["unitune.search.rerank"]  # its own package: always mid-import
    assert "unitune.supernet" in graph["unitune.search.export"]  # `from pkg import name` of a class
    assert "unitune.progress" in graph["unitune.engine.train"]  # inside a function (also under TYPE_CHECKING)
    # only under TYPE_CHECKING: a type name, not an import that runs
    assert "unitune.supernet.params" not in graph["unitune.supernet.methods.base"]
    assert "unitune.supernet.methods.base" in graph["unitune.supernet.methods.lora"]  # the registry is scanned
    assert all(not target.startswith(("optuna", "torch", "timm")) for targets in graph.values() for target in targets)


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["pkg", "pkg.sub"]\n[tool.setuptools.package-dir]\n"pkg" = "src"\n'
        '"pkg.sub" = "other"\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "a.py").write_text("from .sub import b\n")
    (tmp_path / "other" / "__init__.py").write_text("")
    (tmp_path / "other" / "b.py").write_text("def f():\n    from ..sub.c import g\n")
    (tmp_path / "other" / "c.py").write_text("import os\n\ndef g():\n    import pkg.a\n")
    (tmp_path / "other" / "d.py").write_text("from pkg.sub import c\n")  # into the cycle, not on it
    graph = import_graph(package_modules(tmp_path))
    assert graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]

    # The same loop closed by a type-only import is no cycle; moved out of its block, it is.
    typed = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import pkg.a\n"
    (tmp_path / "other" / "c.py").write_text(typed)
    assert find_cycles(import_graph(package_modules(tmp_path))) == []
    (tmp_path / "other" / "c.py").write_text(typed.replace("if TYPE_CHECKING:\n    ", ""))
    assert find_cycles(import_graph(package_modules(tmp_path))) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]


def test_every_package_folder_is_declared():
    """A folder with an ``__init__.py`` that pyproject.toml does not list is left out of a wheel (and
    of ``pip install .``), while an editable install and this checkout still import it: the method
    registry (``supernet/methods/``) was missing so, and ``import unitune.supernet`` failed."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir, declared = setup.get("package-dir", {}), set(setup["packages"])
    found = set()
    for package, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    missing = sorted(found - declared)
    assert not missing, f"pyproject.toml's [tool.setuptools] packages lacks {missing}"
    assert "unitune.supernet.methods" in found  # the walk sees the subpackages at all


def test_every_package_has_a_layer():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(LAYERS) == sorted(declared)
    assert ENTRY_SCRIPTS <= set(package_modules(ROOT))  # the exclusion names a module that exists


def test_packages_import_only_the_layers_below():
    """No two packages import each other (function-level imports counted), and every import goes down."""
    packages = package_graph(package_modules(ROOT))
    both_ways = sorted(f"{a} <-> {b}" for a in packages for b in packages[a] if a < b and a in packages.get(b, {}))
    assert not both_ways, "packages importing each other:\n" + "\n".join(both_ways)
    violations = layer_violations(packages, LAYERS)
    assert not violations, "imports of a layer not below the importer's:\n" + "\n".join(violations)
    assert "unitune.engine" in packages["unitune.search"]  # the walk sees the layers at all
    assert "unitune.supernet.methods" in packages["unitune.supernet"]


def test_an_upward_import_inside_a_function_is_a_layer_violation(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["pkg", "pkg.low", "pkg.high"]\n')
    for folder in ("pkg", "pkg/low", "pkg/high"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "pkg" / "base.py").write_text("import os\n")
    (tmp_path / "pkg" / "high" / "run.py").write_text("from pkg.low.core import f\nfrom ..base import os\n")
    (tmp_path / "pkg" / "low" / "core.py").write_text("from pkg import base\n\ndef f():\n    from pkg.high import run\n")
    packages = package_graph(package_modules(tmp_path))
    assert packages["pkg.high"] == {"pkg": ["pkg.high.run -> pkg.base"], "pkg.low": ["pkg.high.run -> pkg.low", "pkg.high.run -> pkg.low.core"]}
    assert layer_violations(packages, ["pkg", "pkg.low", "pkg.high"]) == [
        "pkg.low imports pkg.high (pkg.low.core -> pkg.high, pkg.low.core -> pkg.high.run)"]
    assert layer_violations(packages, ["pkg", "pkg.high", "pkg.low"]) == [  # the other order: the other import
        "pkg.high imports pkg.low (pkg.high.run -> pkg.low, pkg.high.run -> pkg.low.core)"]


def private_imports_across_packages(modules: dict[str, Path]) -> list[str]:
    """``from module import _name`` where ``module`` lies in another package than the importer (a
    dunder such as ``__version__`` is public). A name one package keeps private is free to change
    under its users; one another package imports is public and is named so."""
    found = []
    for name, path in modules.items():
        package = package_of(name, modules)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            if source in modules and package_of(source, modules) != package:
                found += [f"{name} imports {source}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.endswith("__")]
    return found


def test_no_private_name_crosses_a_package():
    crossing = private_imports_across_packages(package_modules(ROOT))
    assert not crossing, "private names imported from another package:\n" + "\n".join(crossing)


def test_a_private_import_from_another_package_is_found(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackages = ["pkg", "pkg.sub"]\n')
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("__version__ = '1'\n")
    (tmp_path / "pkg" / "a.py").write_text("def _own():\n    pass\n")
    (tmp_path / "pkg" / "b.py").write_text("from .a import _own\n")  # the same package: its own business
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("from pkg import __version__\n\ndef f():\n    from ..a import _own\n")
    assert private_imports_across_packages(package_modules(tmp_path)) == ["pkg.sub.c imports pkg.a._own"]
