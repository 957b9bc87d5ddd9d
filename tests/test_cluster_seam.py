"""The layers of the clustering package run one way, and the seam of cluster/ops.py holds.

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
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from pplr_fast import backend
from pplr_fast.cluster import ops

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
    # the distributed stage's row blocks: the fast CPU path's kernels for rows [r0, r1)
    "pplr_fast.cluster.row_blocks": LEAVES | UTILS | CPU_KERNELS | {"pplr_fast.cluster.fast_cpu",
                                                                    "pplr_fast.backend",
                                                                    "pplr_fast.utils.distinct_rows"},
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


# ---------------------------------------------------------------- the written contract (cluster/ops.py)
def protocol_methods(protocol) -> dict[str, inspect.Signature]:
    """The methods a Protocol lists, each signature without ``self``."""
    methods = {}
    for name, member in vars(protocol).items():
        if callable(member) and not name.startswith("_"):
            signature = inspect.signature(member)
            methods[name] = signature.replace(parameters=list(signature.parameters.values())[1:])
    return methods


def signature_mismatch(expected: inspect.Signature, got: inspect.Signature) -> str | None:
    """Why ``got`` cannot stand where ``expected`` is called, or None: the same parameters
    in the same order and kinds, a default where the contract has one, the same annotations."""
    want, have = list(expected.parameters.values()), list(got.parameters.values())
    if [p.name for p in want] != [p.name for p in have]:
        return f"parameters {[p.name for p in have]}, the contract has {[p.name for p in want]}"
    for w, h in zip(want, have):
        if w.kind != h.kind:
            return f"{h.name} is {h.kind.description}, the contract has {w.kind.description}"
        if (w.default is inspect.Parameter.empty) != (h.default is inspect.Parameter.empty):
            return f"{h.name} {'lacks' if h.default is inspect.Parameter.empty else 'has'} a default"
        if w.annotation != h.annotation:
            return f"{h.name} is annotated {h.annotation!r}, the contract has {w.annotation!r}"
    if expected.return_annotation != got.return_annotation:
        return f"returns {got.return_annotation!r}, the contract has {expected.return_annotation!r}"
    return None


@pytest.mark.parametrize("module", sorted(ops.PATH_MODULES))
def test_each_path_module_provides_every_op_of_its_protocols(module):
    implementation = importlib.import_module(module)
    problems = []
    for protocol in ops.PATH_MODULES[module]:
        for name, expected in protocol_methods(protocol).items():
            function = getattr(implementation, name, None)
            if not callable(function):
                problems.append(f"{name} is missing ({protocol.__name__})")
                continue
            why = signature_mismatch(expected, inspect.signature(function))
            if why:
                problems.append(f"{name}: {why}")
    assert not problems, f"{module} breaks the contract of cluster/ops.py: {problems}"


def test_the_protocols_cover_every_op_and_the_backend_table_every_op():
    """Each clustering op of backend.CLUSTER_OPS has its path functions in ops.OP_FUNCTIONS
    (the stage runs them all), each listed by a protocol; every op has its row of
    compiled modules, the re-ranking's ``_rerank`` included."""
    listed = set()
    for protocols in ops.PATH_MODULES.values():
        for protocol in protocols:
            listed |= set(protocol_methods(protocol))
    assert set(ops.OP_FUNCTIONS) <= set(backend.OP_MODULES)
    assert set(ops.OP_FUNCTIONS) | {"cluster stage"} == set(backend.CLUSTER_OPS)
    assert {f for functions in ops.OP_FUNCTIONS.values() for f in functions} == listed
    assert set(backend.CLUSTER_OPS) | {"rerank", "classification_loss"} == set(backend.OP_MODULES)
    for op, row in backend.OP_MODULES.items():
        assert set(row) == {"cpu", "cuda"}, op
    assert "pplr_fast._rerank" in backend.OP_MODULES["rerank"]["cpu"]
    stage_needs = set(backend.OP_MODULES["cluster stage"]["cpu"])
    assert all(set(backend.OP_MODULES[op]["cpu"]) <= stage_needs for op in ops.OP_FUNCTIONS)


def test_a_missing_kernel_stops_only_the_ops_that_need_it(monkeypatch):
    """_missing_cpu_kernels(op) imports only the modules of op's row."""
    imported = []
    real = importlib.import_module

    def spy(name, *args):
        imported.append(name)
        if name == "pplr_fast._dbscan":
            raise ImportError("not built")
        return real(name, *args)
    monkeypatch.setattr(backend.importlib, "import_module", spy)
    assert backend._missing_cpu_kernels("knn") is None
    assert imported == ["pplr_fast._knn"]
    assert "pplr_fast._dbscan" in backend._missing_cpu_kernels("dbscan")
    assert "pplr_fast._dbscan" in backend._missing_cpu_kernels("cluster stage")
    imported.clear()
    assert backend._missing_cpu_kernels("classification_loss") is None and imported == []
    with pytest.raises(ValueError, match="unknown op"):
        backend._missing_cpu_kernels("no such op")


def test_the_gpu_check_reads_the_op_row(monkeypatch):
    """_missing_gpu_kernels(op) imports what op's row names (triton today for every op)."""
    imported = []
    monkeypatch.setattr(backend.importlib, "import_module", lambda name: imported.append(name))
    monkeypatch.setitem(backend.OP_MODULES, "knn", {"cpu": (), "cuda": ("a_gpu_piece",)})
    assert backend._missing_gpu_kernels("knn") is None and imported == ["a_gpu_piece"]
