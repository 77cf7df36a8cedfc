"""Nothing unitune loads can run code (issue 7): tensors through safetensors or
``torch.load(weights_only=True)``, YAML through a safe loader, NumPy without pickles, no pickle at all.

A source scan of every module (the package, the three stage packages and the benchmarks): each call
is looked up by its dotted name in the syntax tree, so a new unsafe loader anywhere fails here.
(Loads inside timm: local weights go through timm's ``load_state_dict``, which uses safetensors or
``torch.load(weights_only=True)``, and ``.npz`` files through ``np.load`` without pickles.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("unitune", "supernet", "search", "retrain", "benchmarks")

# Modules whose only purpose is (un)pickling: importing them at all is refused.
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
# Calls that unpickle or execute whatever the file holds, whatever their arguments.
ALWAYS_UNSAFE = {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all",
                 "pandas.read_pickle", "pd.read_pickle", "torch.jit.load", "torch.package.PackageImporter"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Each unsafe load or pickle import in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: from {node.module} import ...")
            for alias in node.names:
                if alias.name in ("unsafe_load", "full_load", "UnsafeLoader", "FullLoader", "Loader") and node.module == "yaml":
                    found.append(f"{where}: from yaml import {alias.name}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ALWAYS_UNSAFE:
                found.append(f"{where}: {name}()")
            elif name == "torch.load" and not is_true(keyword(node, "weights_only")):
                found.append(f"{where}: torch.load() without weights_only=True")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                    # unitune.io.SafeLoader subclasses yaml.SafeLoader; any other loader is refused
                    found.append(f"{where}: {name}() with loader {dotted(loader) if loader is not None else None!r}")
            elif name in ("np.load", "numpy.load") and is_true(keyword(node, "allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            elif last == "loads" and name.split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: {name}()")
    return found


def source_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py"))


def test_no_unsafe_loader_in_the_source():
    files = source_files()
    assert len(files) > 40  # the scan really covers the code base
    found = [hit for p in files for hit in unsafe_loads(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


def test_the_loaders_in_use_are_the_safe_ones():
    """The scan is not vacuous: the code does load YAML and torch state, the safe way."""
    calls = {dotted(n.func): n for p in source_files() for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call)}
    assert "torch.load" in calls and is_true(keyword(calls["torch.load"], "weights_only"))
    assert dotted(keyword(calls["yaml.load"], "Loader")) == "SafeLoader"
    from unitune.io import SafeLoader
    import yaml

    assert issubclass(SafeLoader, yaml.SafeLoader)


@pytest.mark.parametrize("snippet, what", [
    ("import pickle\n", "import pickle"),
    ("from dill import loads\n", "from dill"),
    ("import torch\ntorch.load(p)\n", "without weights_only=True"),
    ("import torch\ntorch.load(p, weights_only=False)\n", "without weights_only=True"),
    ("import yaml\nyaml.load(text)\n", "yaml.load() with loader None"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)\n", "yaml.Loader"),
    ("import yaml\nyaml.unsafe_load(text)\n", "yaml.unsafe_load()"),
    ("import numpy as np\nnp.load(p, allow_pickle=True)\n", "allow_pickle=True"),
    ("import pandas as pd\npd.read_pickle(p)\n", "pd.read_pickle()"),
])
def test_the_scan_catches_each_unsafe_loader(snippet, what):
    hits = unsafe_loads(snippet)
    assert len(hits) == 1 and what in hits[0], hits


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n",
    "import yaml\nyaml.load(text, Loader=SafeLoader)\n",
    "import yaml\nyaml.safe_load(text)\n",
    "import numpy as np\nnp.load(p)\n",
    "from safetensors.torch import load_file\nload_file(p)\n",
])
def test_the_scan_accepts_safe_loaders(snippet):
    assert unsafe_loads(snippet) == []
