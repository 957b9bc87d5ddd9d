"""The layers of the clustering package run one way.

``api.py`` (the public ops) picks ``reference.py``, ``fast_cpu.py`` or
``fast_cuda.py``; those three import only the shared leaf modules
(``common.py``, ``checks.py``, ``sparse_distance.py``), their compiled kernels
and ``pplr_fast.kernels``, never the dispatcher or each other; ``common.py``
imports only the leaf ``pplr_fast.utils.distinct_rows`` and ``checks.py`` only
``common.py`` and the memory probe; the leaf modules of ``pplr_fast.utils`` (memory,
timing, errors) are open to all of them; the kernels in
``kernels/`` take and return tensors and never import the package back.
Every import statement counts, including the ones inside functions.
"""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "pplr_fast" / "cluster"
KERNELS = REPO / "kernels"

LEAVES = {"pplr_fast.cluster.common", "pplr_fast.cluster.checks",
          "pplr_fast.cluster.sparse_distance"}
PATHS = {"pplr_fast.cluster.reference", "pplr_fast.cluster.fast_cpu",
         "pplr_fast.cluster.fast_cuda"}
CPU_KERNELS = {"pplr_fast._knn", "pplr_fast._jaccard", "pplr_fast._dbscan",
               "pplr_fast._cross_agreement"}

# the one memory guard, timer and error formatting: leaves that import nothing of pplr_fast
UTILS = {"pplr_fast.utils.memory", "pplr_fast.utils.timing", "pplr_fast.utils.errors"}

# module -> what of pplr_fast it may import (prefixes end with ".")
ALLOWED = {
    "pplr_fast.cluster.common": {"pplr_fast.utils.distinct_rows"},
    "pplr_fast.cluster.checks": {"pplr_fast.cluster.common", "pplr_fast.utils.memory"},
    "pplr_fast.cluster.sparse_distance": {"pplr_fast.cluster.common", "pplr_fast.cluster.checks"}
    | UTILS,
    "pplr_fast.cluster.reference": LEAVES | UTILS,
    "pplr_fast.cluster.fast_cpu": LEAVES | UTILS | CPU_KERNELS,
    "pplr_fast.cluster.fast_cuda": LEAVES | UTILS | {"pplr_fast.kernels.", "pplr_fast.gpu_fallback",
                                                     "pplr_fast.cluster.dbscan_propagation"},
    # the GPU DBSCAN's stand-in when CuPy cannot run: plain torch ops on any device
    "pplr_fast.cluster.dbscan_propagation": {"pplr_fast.cluster.checks"},
}


def module_name(path: Path) -> str:
    if path.parent == KERNELS:
        return f"pplr_fast.kernels.{path.stem}" if path.stem != "__init__" else "pplr_fast.kernels"
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):      # a name inside a module, not a submodule
        return False


def imported_modules(path: Path) -> set[str]:
    """Every pplr_fast module the file imports, anywhere in it, relative imports resolved."""
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            if not base.startswith("pplr_fast"):
                continue
            for alias in node.names:     # `from pkg import submodule` imports the submodule
                candidate = f"{base}.{alias.name}"
                found.add(candidate if is_module(candidate) else base)
    return {m for m in found if m == "pplr_fast" or m.startswith("pplr_fast.")}


def allowed(module: str, rules: set[str]) -> bool:
    return any(module == rule or (rule.endswith(".") and module.startswith(rule))
               for rule in rules)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_cluster_layers_import_one_way(module):
    path = CLUSTER / (module.rpartition(".")[2] + ".py")
    forbidden = sorted(m for m in imported_modules(path) if not allowed(m, ALLOWED[module]))
    assert not forbidden, f"{path.name} imports {forbidden}; it may import only {sorted(ALLOWED[module])}"


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_kernels_do_not_import_the_package_back(path):
    back = sorted(m for m in imported_modules(path)
                  if m.startswith(("pplr_fast.cluster", "pplr_fast.losses")))
    assert not back, f"kernels/{path.name} imports {back}: kernels take and return plain tensors"


FRESH_IMPORTS = """
import importlib, sys
failed = {}
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "pplr_fast" or n.startswith("pplr_fast.")]:
        del sys.modules[name]              # each module is the first of the package imported
    try:
        importlib.import_module(module)
    except Exception as err:
        failed[module] = f"{type(err).__name__}: {err}"
print(failed)
sys.exit(1 if failed else 0)
"""


def test_each_cluster_module_imports_first_in_a_fresh_interpreter():
    """No import cycle that only works in one order: every module imports on its own."""
    modules = sorted(module_name(p) for p in CLUSTER.glob("*.py"))
    done = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *modules], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_the_rules_see_lazy_and_relative_imports():
    """The checker resolves ``from .common import x`` and finds imports inside functions."""
    found = imported_modules(CLUSTER / "reference.py")
    assert "pplr_fast.cluster.common" in found and "pplr_fast.utils.memory" in found
    assert "pplr_fast._knn" in imported_modules(CLUSTER / "fast_cpu.py")   # inside a function
