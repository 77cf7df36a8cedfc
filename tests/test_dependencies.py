"""The declared dependencies match the imports: every third-party distribution the code imports is
declared in pyproject.toml, and every declared runtime dependency is imported somewhere.

Imports are read from the source with ``ast`` (module level and inside functions alike, as
tests/test_import_graph.py reads them) and mapped to distributions with
``importlib.metadata.packages_distributions()`` (``yaml`` is PyYAML, ``PIL`` is pillow). The
distribution's own modules are checked against the runtime dependencies and the optional extras
(``tensorboard``); the tests' and benchmarks' against those plus the ``dev`` extra. An import
inside a ``try`` that catches ``ImportError`` is optional (``tomli`` on Python 3.10, the cmaes
check): it need not be declared, but it counts as a use of a declared dependency.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from test_import_graph import ROOT, package_modules, tomllib

# Declared runtime dependencies no module imports by name, each with the reason it is declared.
# (None today: pandas, once listed here, is imported by search/table.py's trial table.)
# The form: NOT_IMPORTED = {"optuna-dashboard": "its helpers are run as a program, never imported"}.
NOT_IMPORTED: dict[str, str] = {}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``PyYAML`` and ``pyyaml``, ``a_b`` and ``a-b``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(runtime dependencies, {extra: its dependencies}) from pyproject.toml, names normalised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {extra: {requirement_name(r) for r in reqs} for extra, reqs in project.get("optional-dependencies", {}).items()}
    return {requirement_name(r) for r in project["dependencies"]}, extras


def _optional_handlers(tree: ast.AST) -> set[int]:
    """``id`` of every import node inside a ``try`` whose handlers catch an ImportError, its
    fallbacks in those handlers included (``except ModuleNotFoundError: import tomli``)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is not None and any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                           for n in ast.walk(h.type)) for h in node.handlers):
            optional |= {id(n) for stmt in [*node.body, *node.handlers] for n in ast.walk(stmt)
                         if isinstance(n, (ast.Import, ast.ImportFrom))}
    return optional


def third_party_imports(paths: list[Path], local: set[str], optional: bool = False) -> dict[str, set[str]]:
    """``top-level module -> files importing it`` for every absolute import that is neither the
    standard library nor one of ``local`` (the project's own top-level names); the optional ones
    (see the module's docstring) only with ``optional``."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        skip = set() if optional else _optional_handlers(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT)
                                                     else path.name)
    return found


def distributions_of(imports: dict[str, set[str]]) -> tuple[dict[str, set[str]], list[str]]:
    """(``distribution -> files importing it``, the modules no installed distribution provides)."""
    providers = packages_distributions()
    dists: dict[str, set[str]] = {}
    unknown = []
    for module, files in sorted(imports.items()):
        if module not in providers:
            unknown.append(f"{module} ({', '.join(sorted(files))})")
            continue
        for dist in providers[module]:
            dists.setdefault(normalize(dist), set()).update(files)
    return dists, unknown


def _local_names() -> set[str]:
    """The top-level names the project's own files are imported by: the distribution (``unitune``)
    and the helper modules beside the tests and the benchmarks (``tiny``, ``common``, ...)."""
    return {"unitune"} | {p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).glob("*.py")}


def test_every_imported_distribution_is_declared():
    runtime, extras = declared()
    optional = set().union(*(deps for extra, deps in extras.items() if extra != "dev"))
    source = third_party_imports(sorted(package_modules(ROOT).values()), _local_names())
    dists, unknown = distributions_of(source)
    assert not unknown, f"modules no installed distribution provides: {unknown}"
    missing = {d: sorted(files) for d, files in dists.items() if d not in runtime | optional}
    assert not missing, f"imported by the package but not in pyproject's dependencies: {missing}"

    helpers = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    dists, unknown = distributions_of(third_party_imports(helpers, _local_names()))
    assert not unknown, f"modules no installed distribution provides: {unknown}"
    missing = {d: sorted(files) for d, files in dists.items() if d not in runtime | optional | extras.get("dev", set())}
    assert not missing, f"imported by the tests or benchmarks but in neither the dependencies nor the dev extra: {missing}"


def test_every_declared_dependency_is_imported():
    runtime, _ = declared()
    source = third_party_imports(sorted(package_modules(ROOT).values()), _local_names(), optional=True)
    dists, _ = distributions_of(source)
    unused = sorted(runtime - set(dists) - set(NOT_IMPORTED))
    assert not unused, f"declared in pyproject's dependencies but imported nowhere in the package: {unused}"
    assert not set(NOT_IMPORTED) - runtime, "NOT_IMPORTED names a dependency pyproject does not declare"
    stale = sorted(set(NOT_IMPORTED) & set(dists))
    assert not stale, f"imported now, so no longer an exception: take {stale} off NOT_IMPORTED"


def test_the_mapping_reads_pyyaml_as_yaml_and_skips_optional_imports(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import os\nimport yaml.constructor\n\ndef f():\n    from PIL import Image\n"
                    "try:\n    import tomli_never_installed\nexcept ModuleNotFoundError:\n    import tomli_fallback\n"
                    "from . import sibling\nimport unitune.errors\n")
    imports = third_party_imports([path], {"unitune"})
    assert imports == {"yaml": {"probe.py"}, "PIL": {"probe.py"}}
    dists, unknown = distributions_of(imports)
    assert set(dists) == {"pyyaml", "pillow"} and unknown == []
    assert set(third_party_imports([path], {"unitune"}, optional=True)) == {"yaml", "PIL", "tomli_never_installed",
                                                                                  "tomli_fallback"}
    assert distributions_of({"tomli_never_installed": {"probe.py"}}) == ({}, ["tomli_never_installed (probe.py)"])
    assert requirement_name("psycopg[binary]>=3.1") == "psycopg" and requirement_name("PyYAML >=6") == "pyyaml"
