"""Write the Triton API list that tests/test_triton_compat.py checks the kernels against.

Imports the ``triton`` found first on ``sys.path`` and prints, one per line:

  triton.<name>          public attributes of ``triton`` (and ``triton.<sub>.<name>``
                         for its submodules runtime, testing)
  tl.<name>              public attributes of ``triton.language``
  tl.<ns>.<name>         attributes of its submodules (math, extra, extra.cuda, ...)
  tensor.<name>          attributes of ``triton.language.tensor`` (methods used in kernels)
  jit.<keyword>          keyword arguments of ``triton.jit``
  config.<keyword>       keyword arguments of ``triton.Config``
  autotune.<keyword>     keyword arguments of ``triton.autotune``
  heuristics.<keyword>   keyword arguments of ``triton.heuristics``
  launch.<keyword>       launch options of a kernel (``kernel[grid](..., num_warps=...)``):
                         the NVIDIA backend's CUDAOptions fields, plus grid/warmup

Usage (for another Triton version, unpack its wheel and point PYTHONPATH at it):
  pip download --no-deps triton==3.6.0 -d /tmp/t36
  mkdir /tmp/t36x && cd /tmp/t36x && unzip -q /tmp/t36/triton-3.6.0-*.whl
  PYTHONPATH=/tmp/t36x python tests/data/make_triton_api.py > tests/data/triton36_api.txt
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import types


def public(obj) -> list[str]:
    return sorted(name for name in dir(obj) if not name.startswith("_"))


def keywords(fn) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return sorted(p.name for p in params
                  if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")


def submodules(module, alias: str, depth: int = 3):
    """(aliased dotted name, module) of the true submodules of ``module`` (``tl.math``,
    ``tl.extra.cuda``), not the modules a module merely imports (``tl.math.core``)."""
    for name in public(module):
        value = getattr(module, name, None)
        if isinstance(value, types.ModuleType) and value.__name__ == f"{module.__name__}.{name}":
            yield f"{alias}.{name}", value
            if depth > 1:
                yield from submodules(value, f"{alias}.{name}", depth - 1)


def api_lines(triton) -> list[str]:
    import triton.language as tl
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.runtime.jit import JITFunction

    lines = {f"triton.{name}" for name in public(triton)}
    import triton.runtime.interpreter
    import triton.runtime.jit
    for sub in ("runtime", "runtime.interpreter", "runtime.jit", "testing"):
        module = sys.modules[f"triton.{sub}"]
        lines |= {f"triton.{sub}.{name}" for name in public(module)}
    lines |= {f"tl.{name}" for name in public(tl)}
    for dotted, module in submodules(tl, "tl"):
        lines |= {f"{dotted}.{name}" for name in public(module)}
    lines |= {f"tensor.{name}" for name in public(tl.tensor)}
    lines |= {f"jit.{kw}" for kw in set(keywords(triton.jit)) | set(keywords(JITFunction.__init__))
              if kw != "fn"}
    lines |= {f"config.{kw}" for kw in keywords(triton.Config.__init__)}
    lines |= {f"autotune.{kw}" for kw in keywords(triton.autotune)}
    lines |= {f"heuristics.{kw}" for kw in keywords(triton.heuristics)}
    lines |= {f"launch.{field.name}" for field in dataclasses.fields(CUDAOptions)}
    lines |= {"launch.grid", "launch.warmup"}
    return sorted(lines)


def main() -> None:
    import triton
    print(f"# Triton {triton.__version__} API, as tests/test_triton_compat.py reads it.")
    print("# Made by tests/data/make_triton_api.py (see its docstring):")
    print(f"#   pip download --no-deps triton=={triton.__version__} -d /tmp/t36; unzip the wheel "
          "into /tmp/t36x;")
    print("#   PYTHONPATH=/tmp/t36x python tests/data/make_triton_api.py > "
          "tests/data/triton36_api.txt")
    print(f"# (read with Python {sys.version.split()[0]} on {sys.platform})")
    for line in api_lines(triton):
        print(line)


if __name__ == "__main__":
    main()
