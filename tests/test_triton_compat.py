"""The Triton features the kernels use exist in Triton 3.6, the GPU machine's version.

The kernels are tested under a newer Triton's interpreter here; the GPU
machine has Triton 3.6 and no network. This test reads the kernel sources
(no import of the kernels' Triton) and checks every Triton name they use
against ``tests/data/triton36_api.txt``, a list read from Triton 3.6's own
wheel by ``tests/data/make_triton_api.py``:

- attribute chains of the module aliases (``tl.load``, ``tl.math.div_rn``,
  ``triton.cdiv``, ``triton.language.core.X``) and ``from triton... import``;
- method calls on values inside ``@triton.jit`` bodies (``x.to(...)``): the
  methods of ``tl.tensor``;
- keywords of ``@triton.jit(...)``, ``triton.Config``, ``triton.autotune``,
  ``triton.heuristics``; ``do_not_specialize`` names must be parameters;
- launch keywords ``kernel[grid](..., num_warps=4, **LAUNCH)``: each is a
  parameter of the kernel or one of 3.6's launch options.
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API_FILE = Path(__file__).resolve().parent / "data" / "triton36_api.txt"
KEYWORD_FAMILIES = {"jit": "jit", "Config": "config", "autotune": "autotune",
                    "heuristics": "heuristics"}


def load_api(path: Path = API_FILE) -> set[str]:
    lines = path.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def triton_sources() -> list[Path]:
    """Every Python file of the package and kernels/ that imports triton."""
    files = sorted((REPO / "kernels").glob("*.py")) + sorted((REPO / "pplr_fast").rglob("*.py"))
    return [f for f in files if "triton" in f.read_text()]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["pplr_fast", "kernels"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@dataclass
class Use:
    """One Triton feature used by a source file (``what`` is an API-list line)."""

    what: str
    where: str


@dataclass
class Scan:
    """The Triton features one file uses."""

    path: Path
    uses: list[Use] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)   # local name -> "triton" / "tl" / "tl.x"
    kernels: dict[str, list[str]] = field(default_factory=dict)   # jit function -> parameters
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, node: ast.AST) -> None:
        self.uses.append(Use(what, f"{self.path.relative_to(REPO)}:{node.lineno}"))


def canonical(dotted: str) -> str:
    """``triton.language.X`` -> ``tl.X``."""
    if dotted == "triton.language":
        return "tl"
    if dotted.startswith("triton.language."):
        return "tl." + dotted[len("triton.language."):]
    return dotted


def attribute_chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None when the chain does not start at a name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + names[::-1]
    return None


def is_jit_decorator(node: ast.AST, scan: Scan) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    chain = attribute_chain(target)
    return chain is not None and chain[0] in scan.aliases and \
        canonical(".".join([scan.aliases[chain[0]]] + chain[1:])) == "triton.jit"


def scan_file(path: Path) -> Scan:
    tree = ast.parse(path.read_text(), filename=str(path))
    scan = Scan(path)
    # pass 1: module aliases, from-imports, jit functions
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "triton" or alias.name.startswith("triton."):
                    if alias.asname:
                        scan.aliases[alias.asname] = canonical(alias.name)
                    else:
                        scan.aliases["triton"] = "triton"
        elif isinstance(node, ast.ImportFrom) and node.module and \
                (node.module == "triton" or node.module.startswith("triton.")):
            base = canonical(node.module)
            for alias in node.names:
                scan.add(f"{base}.{alias.name}", node)
                scan.aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(is_jit_decorator(d, scan)
                                                     for d in node.decorator_list):
            scan.kernels[node.name] = [a.arg for a in node.args.args + node.args.kwonlyargs]
    # pass 2: attribute chains, keywords, launches
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = attribute_chain(node)
            if chain and chain[0] in scan.aliases:
                scan.add(canonical(".".join([scan.aliases[chain[0]]] + chain[1:])), node)
        elif isinstance(node, ast.Call):
            check_keywords(node, scan)
            check_launch(node, scan)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in scan.kernels:
            check_methods(node, scan)
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    check_do_not_specialize(decorator, scan.kernels[node.name], scan)
    return scan


def check_keywords(call: ast.Call, scan: Scan) -> None:
    chain = attribute_chain(call.func)
    if not chain or chain[0] not in scan.aliases:
        return
    name = canonical(".".join([scan.aliases[chain[0]]] + chain[1:]))
    family = KEYWORD_FAMILIES.get(name[len("triton."):]) if name.startswith("triton.") else None
    if family:
        for keyword in call.keywords:
            if keyword.arg is not None:
                scan.add(f"{family}.{keyword.arg}", keyword.value)


def check_do_not_specialize(decorator: ast.Call, params: list[str], scan: Scan) -> None:
    for keyword in decorator.keywords:
        if keyword.arg in ("do_not_specialize", "do_not_specialize_on_alignment"):
            for element in getattr(keyword.value, "elts", []):
                if isinstance(element, ast.Constant) and element.value not in params:
                    scan.problems.append(f"{scan.path.name}:{element.lineno}: {keyword.arg} names "
                                         f"{element.value!r}, not a parameter ({params})")


def check_methods(fn: ast.FunctionDef, scan: Scan) -> None:
    """``value.method(...)`` inside a jit body: a method of tl.tensor."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = attribute_chain(node.func)
            if chain is not None and chain[0] in scan.aliases:
                continue                          # a module function, checked as a chain
            scan.add(f"tensor.{node.func.attr}", node)


def launch_options(node: ast.expr, scan: Scan) -> list[str]:
    """The keys of ``**NAME`` in a launch, read from the module that runs it."""
    if not isinstance(node, ast.Name):
        scan.problems.append(f"{scan.path.name}:{node.lineno}: cannot read the launch options "
                             f"of {ast.unparse(node)}")
        return []
    module = importlib.import_module(module_name(scan.path))
    return list(getattr(module, node.id).keys())


def check_launch(call: ast.Call, scan: Scan) -> None:
    """``kernel[grid](..., kw=...)``: kw is a kernel parameter or a launch option."""
    if not (isinstance(call.func, ast.Subscript) and isinstance(call.func.value, ast.Name)
            and call.func.value.id in scan.kernels):
        return
    params = scan.kernels[call.func.value.id]
    for keyword in call.keywords:
        names = [keyword.arg] if keyword.arg is not None else launch_options(keyword.value, scan)
        for name in names:
            if name not in params:
                scan.add(f"launch.{name}", keyword.value)


def check_uses(uses: list[Use], api: set[str]) -> list[str]:
    """The uses that the API list lacks. A chain is checked while it names a
    namespace of the list (``tl.math`` -> ``tl.math.div_rn`` is checked,
    ``tl.float32.primitive_bitwidth`` stops at ``tl.float32``)."""
    namespaces = {line.rsplit(".", i)[0] for line in api for i in range(1, line.count(".") + 1)}
    missing = []
    for use in uses:
        parts = use.what.split(".")
        for end in range(2, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix not in api and prefix not in namespaces:
                missing.append(f"{use.where}: {prefix}")
                break
            if prefix not in namespaces:
                break
    return missing


@pytest.fixture(scope="module")
def scans():
    return [scan_file(path) for path in triton_sources()]


def test_api_list_is_triton_36():
    header = API_FILE.read_text().splitlines()[0]
    api = load_api()
    assert "Triton 3.6" in header
    # what every kernel uses must be in any list worth the name
    assert {"tl.load", "tl.store", "tl.program_id", "triton.jit", "launch.num_warps",
            "tensor.to", "jit.do_not_specialize"} <= api


def test_kernels_are_found(scans):
    kernels = {name for scan in scans for name in scan.kernels}
    assert len([s for s in scans if s.kernels]) >= 4, [s.path.name for s in scans]
    assert len(kernels) >= 10, kernels
    assert any(use.what.startswith("launch.") for scan in scans for use in scan.uses)


def test_kernels_use_only_triton_36_features(scans):
    api = load_api()
    missing = [m for scan in scans for m in check_uses(scan.uses, api)]
    problems = [p for scan in scans for p in scan.problems]
    assert not missing, ("Triton features the GPU machine's Triton 3.6 lacks (see "
                         "tests/data/triton36_api.txt):\n" + "\n".join(missing))
    assert not problems, "\n".join(problems)


def test_checker_catches_names_36_lacks(tmp_path):
    """A kernel using features 3.6 lacks is reported (the checker is not vacuous)."""
    source = tmp_path / "bad_kernel.py"
    source.write_text(
        "import triton\nimport triton.language as tl\n"
        "@triton.jit(do_not_specialize=['n'], not_a_jit_option=True)\n"
        "def k(x_ptr, n, BLOCK: tl.constexpr):\n"
        "    v = tl.load(x_ptr + tl.arange(0, BLOCK))\n"
        "    tl.store(x_ptr, tl.not_in_triton_36(v).not_a_tensor_method())\n"
        "    y = tl.math.not_a_math_function(v)\n"
        "def run(x):\n"
        "    k[(1,)](x, 3, BLOCK=4, num_warps=4, not_an_option=1)\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        scan = scan_file(source)
    finally:
        REPO = saved
    missing = {m.split(": ")[1] for m in check_uses(scan.uses, load_api())}
    assert missing == {"jit.not_a_jit_option", "tl.not_in_triton_36", "tensor.not_a_tensor_method",
                       "tl.math.not_a_math_function", "launch.not_an_option"}
