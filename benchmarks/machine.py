"""The benchmarks' shared measuring: what a run ran on, peak memory, table formatting.

What a benchmark ran on (CPU, cores, memory, GPU, library versions, threads, load), the
host peak-RSS reader (Linux: VmHWM after a reset through /proc/self/clear_refs) and the
seconds format of the tables. Waiting for the GPU before a timer reads is
``pplr_fast.utils.timing.synchronize``.
"""
from __future__ import annotations

import importlib
import os
import platform

import torch

GIB = 1024 ** 3
MIB = 1024 ** 2


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / GIB, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def proc_status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    """Set this process's peak-RSS mark (VmHWM) to its current RSS; that RSS in KiB.

    None where the mark cannot be reset (no writable ``/proc/self/clear_refs``): a
    peak read later would be the process's lifetime peak, so none is reported.
    """
    before = proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")                   # peak RSS mark := current RSS
    except OSError:
        return None
    return before


def peak_rss_growth_kib(before: int | None) -> int | None:
    """The peak RSS since :func:`reset_peak_rss` above the RSS it returned (``before``), in KiB."""
    peak = proc_status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return peak - before


def seconds_text(value: float | None) -> str:
    """Seconds as the benchmark tables print them (3 significant digits; blank for None)."""
    if value is None:
        return ""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def load_average() -> str:
    """The 1-minute load average, or "n/a"."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def describe_machine(device: str) -> dict:
    """Everything a reader needs to judge a timing taken on this machine."""
    from pplr_fast.cluster.fast_cpu import cpu_has_native_bf16
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "ram_gib": _total_memory_gib(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "load_average": load_average(),
    }
    for module in ("triton", "numpy", "faiss", "sklearn"):
        info[module] = _version(module)
    return info


def machine_lines(info: dict) -> list[str]:
    """The machine description as markdown lines for a table header."""
    gpu = f"; GPU {info['gpu']} (CUDA {info['cuda']})" if info.get("gpu") else "; no GPU used"
    cores = info["cores"] if info.get("usable_cores") in (None, info["cores"]) else \
        f"{info['usable_cores']} of {info['cores']}"
    versions = ", ".join(f"{name} {info[name]}" for name in
                         ("torch", "triton", "numpy", "faiss", "sklearn") if info.get(name))
    omp = (f"OMP_NUM_THREADS={info['omp_num_threads'] or 'unset'}, "
           f"OMP_WAIT_POLICY={info['omp_wait_policy'] or 'unset'}")
    return [f"Machine: {info['cpu']} ({cores} cores, native bf16: "
            f"{'yes' if info['cpu_native_bf16'] else 'no'}), {info['ram_gib']} GiB RAM{gpu}.",
            f"Software: Python {info['python']}, {versions}; {info['torch_threads']} torch "
            f"threads, {omp}."]


def busy_warning(load_before: str, cores: int | None) -> str | None:
    """A warning line when other work held the CPU as the run began, else None.

    OpenMP threads busy-wait between parallel regions by default; when other
    processes hold the cores, that waiting can stretch small steps by 10-100x.
    """
    # only the load before the run counts: afterwards it includes the run itself
    if load_before == "n/a" or not cores or float(load_before) < 0.5 * cores:
        return None
    return (f"Warning: the CPU was busy (load average {float(load_before):.2f} on {cores} "
            "cores): timings are unreliable. Rerun on a quiet machine; where that is "
            "impossible, OMP_WAIT_POLICY=passive or fewer threads (--threads) limit the damage.")
