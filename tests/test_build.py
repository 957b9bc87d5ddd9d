"""The compiled CPU kernels exist and were built with OpenMP."""
import pplr_fast._version as version


def test_cpu_extension_built_with_openmp():
    info = dict(kv.split("=") for kv in version.build_info().split())
    assert int(info["openmp_max_threads"]) >= 1
    assert info["simd"] in {"avx512", "avx2", "baseline"}


def test_setup_reads_the_version_from_the_package_file(tmp_path):
    """setup.py takes ``__version__`` from pplr_fast/__init__.py (as text: no torch at build time)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pplr_fast

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PPLR_FAST_SKIP_CPU_KERNELS="1")
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == pplr_fast.__version__
    # A copy with another version in the package file reports that one: nothing else sets it.
    copy = tmp_path / "src"
    (copy / "pplr_fast").mkdir(parents=True)
    shutil.copy(root / "setup.py", copy / "setup.py")
    text = (root / "pplr_fast" / "__init__.py").read_text()
    (copy / "pplr_fast" / "__init__.py").write_text(
        text.replace(f'__version__ = "{pplr_fast.__version__}"', '__version__ = "9.8.7"'))
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=copy, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "9.8.7"
