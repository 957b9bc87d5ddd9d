"""pplr_fast: a fast, exact PPLR (CVPR 2022) trainer.

Layout (see README):
  pplr_fast/   the Python package (trainer, reference path, dispatch)
  kernels/     Triton GPU kernels, installed as ``pplr_fast.kernels``
  csrc/        C++/CUDA sources: ``csrc/<op>.cpp`` is the pybind11 entry of one
               op, ``csrc/cpu/<op>_cpu.cpp`` its OpenMP body (built here, one
               extension ``pplr_fast._<op>`` per op), ``csrc/cuda/<op>_cuda.cu``
               its CUDA body (compiled at run time by CuPy/NVRTC, shipped as data).
"""
import os
import re
import sys
from glob import glob

from setuptools import setup

# PPLR_FAST_SKIP_CPU_KERNELS=1: install without the C++ kernels (a GPU machine without
# Python headers or pybind11); CPU tensors then run the reference path.
SKIP_CPU_KERNELS = os.environ.get("PPLR_FAST_SKIP_CPU_KERNELS", "0") == "1"
if not SKIP_CPU_KERNELS:
    try:
        from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
    except ImportError:  # pragma: no cover - pyproject.toml lists pybind11
        sys.exit("pplr_fast: building the C++ kernels needs pybind11, which is not installed "
                 "here: pip install pybind11 first (with --no-build-isolation pip uses what is "
                 "installed), or install without --no-build-isolation, or set "
                 "PPLR_FAST_SKIP_CPU_KERNELS=1.")
    # Compile the sources of each extension on every core (NPY_NUM_BUILD_JOBS=N caps it):
    # the install is most of a first run's set-up time on a small machine.
    ParallelCompile("NPY_NUM_BUILD_JOBS", default=0).install()

HERE = os.path.dirname(os.path.abspath(__file__))


def package_version():
    """``__version__`` as written in pplr_fast/__init__.py, the one place the version is set.

    The file is read as text, not imported: torch may be absent while the package builds.
    """
    with open(os.path.join(HERE, "pplr_fast", "__init__.py"), encoding="utf-8") as f:
        found = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if found is None:
        sys.exit('pplr_fast: no line __version__ = "..." in pplr_fast/__init__.py')
    return found.group(1)


def cpu_extensions():
    """One extension per op: csrc/<op>.cpp + csrc/cpu/<op>_cpu.cpp."""
    flags = ["-O3", "-fopenmp", "-std=c++17", "-fno-math-errno"]
    # Kernels are built on the machine that runs them (pip install -e .), so
    # tune for it; PPLR_FAST_PORTABLE=1 builds a generic x86-64/arm binary.
    if os.environ.get("PPLR_FAST_PORTABLE", "0") != "1":
        flags.append("-march=native")
    exts = []
    for entry in sorted(glob(os.path.join("csrc", "*.cpp"))):
        op = os.path.splitext(os.path.basename(entry))[0]
        body = os.path.join("csrc", "cpu", f"{op}_cpu.cpp")
        sources = [entry] + ([body] if os.path.exists(body) else [])
        exts.append(Pybind11Extension(
            f"pplr_fast._{op}", sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args=flags, extra_link_args=["-fopenmp"],
        ))
    return exts


setup(
    name="pplr_fast",
    version=package_version(),
    description="Fast, exact Part-based Pseudo Label Refinement (PPLR) for "
                "unsupervised person re-identification",
    python_requires=">=3.9",
    packages=["pplr_fast", "pplr_fast.cluster", "pplr_fast.data",
              "pplr_fast.models", "pplr_fast.losses", "pplr_fast.utils",
              "pplr_fast.training", "pplr_fast.kernels", "pplr_fast.csrc_cuda"],
    package_dir={"pplr_fast.kernels": "kernels",
                 "pplr_fast.csrc_cuda": os.path.join("csrc", "cuda")},
    package_data={"pplr_fast.csrc_cuda": ["*.cu", "*.cuh"]},
    ext_modules=[] if SKIP_CPU_KERNELS else cpu_extensions(),
    cmdclass={} if SKIP_CPU_KERNELS else {"build_ext": build_ext},
    # torch is pinned by the README's install command (torch==2.13.0, the CPU
    # build on a CPU machine); here any recent torch is accepted so that a GPU
    # user's CUDA torch is kept.
    install_requires=["torch>=2.3", "numpy", "pillow", "tqdm", "matplotlib"],
    extras_require={
        # scikit-learn is the DBSCAN oracle of the tests, never used at run time.
        "test": ["pytest>=7", "scikit-learn", "triton>=3.0", "ruff>=0.6"],
        # GPU kernels: Triton (bundled with CUDA torch on Linux), CuPy compiles
        # csrc/cuda/*.cu at run time. Pick the CuPy built for the CUDA major
        # version of your torch (python -c "import torch; print(torch.version.cuda)");
        # "gpu" is the CUDA 12 one, kept for old install commands. Without a
        # working CuPy the GPU DBSCAN runs as torch label propagation instead.
        "gpu-cuda12": ["triton>=3.0", "cupy-cuda12x"],
        "gpu-cuda13": ["triton>=3.0", "cupy-cuda13x"],
        "gpu": ["triton>=3.0", "cupy-cuda12x"],
        "faiss": ["faiss-cpu"],
    },
    entry_points={"console_scripts": [
        # the cli() wrappers return None (exit status 0); main() returns results to Python callers
        "pplr-train=pplr_fast.train:cli",
        "pplr-evaluate=pplr_fast.evaluate:cli",
        "pplr-visualize=pplr_fast.visualize:cli",
    ]},
)
