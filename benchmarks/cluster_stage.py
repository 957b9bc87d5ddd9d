"""Time, peak memory and agreement of the clustering stage, reference vs fast.

For every size N and backend, one call of
``pplr_fast.cluster.stage.run_cluster_stage`` (kNN -> k-reciprocal Jaccard ->
DBSCAN, and cross-agreement; docs/method.md §2) is timed stage by stage:

* time: one warm-up run (excluded), then the median over ``--repeat`` runs of
  every stage and of the total, taken separately;
* peak memory, measured on the warm-up run: host peak RSS (VmHWM, its mark
  reset after the features are built) minus the RSS at that point, and on a
  GPU ``torch.cuda.max_memory_allocated()`` minus the memory allocated before
  the run. Each (N, backend) runs in a fresh subprocess so peaks don't mix;
* correctness: adjusted Rand index between the fast and the reference
  pseudo-labels (and whether they are identical), and max |Δ score| of the
  cross-agreement scores; the ratio fast / reference per stage.

Standard tools appear as extra rows when installed: "sklearn DBSCAN" =
``sklearn.cluster.DBSCAN(metric="precomputed")`` on the reference's dense
Jaccard matrix (the dbscan stage only), and "faiss kNN" = faiss
``IndexFlatIP`` exact search for the two kNN stages. The "× fast" column says
how many times longer a row takes than pplr_fast's fast path on the stages it
runs.

Features: the seeded identity-structured generator of ``benchmarks/features.py``
(stated in the output), or real images: ``--dataset NAME --data-dir DIR
--checkpoint PATH`` extracts the training set's features with the checkpoint's
model in every run (an extra "extract" column), as the paper's cost table
counts them.

A size the reference cannot hold is reported as "refused: needs X GiB" (its
own memory guard's estimate); a size where even the fast path would not fit
(features + its O(N·k) working set) is skipped with a note.

Output: a markdown table on stdout, and ``cluster_stage_<device>.{md,json,csv,png}``
in ``--out``.

Run on a quiet machine. On a busy CPU, OpenMP threads that busy-wait between
parallel regions lose their cores to other processes, and stages made of many
small parallel steps slow down 10-100x (measured on a loaded 2-core VM:
reference Jaccard 11 s at N = 2000 with the default wait policy, 0.4 s with
OMP_WAIT_POLICY=passive). The header records the load average and both
OpenMP variables, and warns when the load was high.

Usage: python benchmarks/cluster_stage.py [--n 2000 12936 ...] [--dim 2048]
       [--parts 3] [--backends reference fast] [--device cpu|cuda] [--repeat 3]
       [--eps 0.6] [--out DIR] [--seed 0] [--threads T] [--timeout S]
       [--memory-limit-gib G] [--no-subprocess]
       [--dataset NAME --data-dir DIR --checkpoint PATH]

``--ranks K ...`` (the stage shared by K ranks) is its own benchmark,
``benchmarks/cluster_ranks.py``; given here, the whole command line is passed on
to it.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from features import IdentityFeatureConfig, identity_features
from machine import (GIB, MIB, busy_warning, describe_machine, load_average,
                     machine_lines, peak_rss_growth_kib, reset_peak_rss, seconds_text)

from pplr_fast.backend import BACKENDS
from pplr_fast.cluster.stage import STAGES, run_cluster_stage
from pplr_fast.pseudo_label_quality import adjusted_rand_index
from pplr_fast.utils.memory import available_memory
from pplr_fast.utils.timing import synchronize

EXTRAS = ("sklearn", "faiss")
ROW_NAMES = {"reference": "reference", "fast": "fast", "sklearn": "sklearn DBSCAN",
             "faiss": "faiss kNN"}
DATASET_SIZES = {12936: "Market-1501", 32621: "MSMT17", 37746: "VeRi-776"}
CPU_SIZES = [2000, 12936, 32621, 37746, 100000, 200000]
GPU_SIZES = CPU_SIZES + [500000, 1000000]
# Sparse working set of the fast path per image, for the "would it fit"
# estimate: kNN lists, the encoding V' (CSR), the Jaccard pairs under eps,
# DBSCAN's neighbour lists. Measured on a CPU at N = 12936, D = 2048, eps 0.6:
# peak 865 MiB beyond the features, ~760 MiB of it the kNN's dense working set
# (below), so ~8 KiB per image; twice that leaves room for denser data. The
# estimate (960 MiB there) errs on the large side.
FAST_BYTES_PER_IMAGE = 16 * 1024


# --------------------------------------------------------------------- memory
def fast_path_bytes(n: int, dim: int, parts: int) -> dict:
    """Estimated memory of the fast path: the features and its working set."""
    features = 4 * n * dim * (1 + parts)
    # kNN, one space at a time, per feature value: a contiguous part copy (4 B)
    # and, on CPUs with native bf16 and on GPUs, its bf16/fp16 copy (2 B; the fp32
    # filter of other CPUs needs none, so this is an upper bound); score blocks
    # and the error bounds are computed in bounded blocks
    working = (4 + 2) * n * dim + FAST_BYTES_PER_IMAGE * n
    return {"features": features, "working": working, "total": features + working}


def available_bytes(device: str, limit_gib: float | None) -> int:
    available = available_memory(torch.device(device))
    return available if limit_gib is None else min(available, int(limit_gib * GIB))


def cap_available_memory(limit_gib: float) -> None:
    """Make the library's memory guard see at most ``limit_gib`` GiB free."""
    os.environ["PPLR_FAST_MEMORY_LIMIT_GIB"] = str(limit_gib)


class PeakMemory:
    """Host peak-RSS growth (and GPU allocator peak) over the code run inside it."""

    def __init__(self, device: str):
        self.device = device
        self.host_mib: float | None = None
        self.gpu_mib: float | None = None

    def __enter__(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gpu_before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.rss_before = reset_peak_rss()      # None: no resettable mark, nothing reported
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gpu_mib = (torch.cuda.max_memory_allocated() - self.gpu_before) / MIB
        growth = peak_rss_growth_kib(self.rss_before)
        if growth is not None:
            self.host_mib = growth / 1024
        return False


# --------------------------------------------------------------------- inputs
class Inputs:
    """The features of one measurement: generated once, or extracted in every run."""

    def __init__(self, args: argparse.Namespace, n: int):
        self.device = torch.device(args.device)
        self.extractor = None
        if args.dataset:
            self.extractor = _dataset_extractor(args, self.device)
            self.x_g, self.x_p = self.extractor()
        else:
            x_g, x_p, _ = identity_features(n, args.dim, args.parts, args.seed)
            self.x_g, self.x_p = x_g.to(self.device), x_p.to(self.device)

    def features(self) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """(x_g, x_p, seconds spent extracting them in this run, or None)."""
        if self.extractor is None:
            return self.x_g, self.x_p, None
        del self.x_g, self.x_p
        start = time.perf_counter()
        self.x_g, self.x_p = self.extractor()
        synchronize(self.device)
        return self.x_g, self.x_p, time.perf_counter() - start


def _dataset_extractor(args: argparse.Namespace, device: torch.device):
    from pplr_fast.data import create_dataset
    from pplr_fast.features import extract_features
    from pplr_fast.models import PPLRNet
    from pplr_fast.utils.checkpoint import load_checkpoint
    state = load_checkpoint(args.checkpoint)
    model = PPLRNet.from_checkpoint(state, device)
    config = state["config"]
    samples = sorted(create_dataset(args.dataset, args.data_dir, check_images=("train",)).train)
    return lambda: extract_features(model, samples, height=config["height"],
                                    width=config["width"], batch_size=args.extract_batch_size,
                                    workers=args.workers, device=device, progress=False)


def dataset_shape(args: argparse.Namespace) -> tuple[int, int, int, float]:
    """(N, D, N_p, preset eps) of the training set a checkpoint would cluster."""
    from pplr_fast.config import DATASET_PRESETS
    from pplr_fast.data import canonical_dataset_name, create_dataset
    from pplr_fast.models import PPLRNet
    from pplr_fast.utils.checkpoint import load_checkpoint
    config = load_checkpoint(args.checkpoint)["config"]
    n = len(create_dataset(args.dataset, args.data_dir, check_images=()).train)   # a count only
    dim = PPLRNet(config["arch"], num_parts=config["parts"]).feature_dim
    return n, dim, config["parts"], DATASET_PRESETS[canonical_dataset_name(args.dataset)].eps


# --------------------------------------------------------------------- one measurement
def timed_runs(run, repeat: int, device: str) -> tuple[dict, list[dict], PeakMemory, object]:
    """Warm-up (memory measured) + ``repeat`` timed runs of ``run() -> (timings, output)``.

    Returns (median per key, every timed run, the warm-up's memory, last output).
    """
    with PeakMemory(device) as memory:
        _, output = run()
    runs = []
    for _ in range(repeat):
        timings, output = run()
        runs.append(timings)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return median, runs, memory, output


def stage_runner(args: argparse.Namespace, inputs: Inputs, backend: str):
    """``run()`` for the reference or fast clustering stage."""
    def run():
        x_g, x_p, extract_s = inputs.features()
        result = run_cluster_stage(x_g, x_p, eps=args.eps, k1=args.k1, k2=args.k2,
                                   min_samples=args.min_samples, k=args.k, backend=backend)
        timings = dict(result.timings)
        if extract_s is not None:
            timings["extract"] = extract_s
        return timings, result
    return run


def sklearn_runner(args: argparse.Namespace, inputs: Inputs):
    """``run()`` timing sklearn's DBSCAN on the reference's dense Jaccard matrix."""
    from sklearn.cluster import DBSCAN

    from pplr_fast.cluster import jaccard_distance
    matrix = jaccard_distance(inputs.x_g, args.k1, args.k2, backend="reference").to_dense().cpu().numpy()
    dbscan = DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="precomputed")

    def run():
        start = time.perf_counter()
        labels = dbscan.fit_predict(matrix)
        seconds = time.perf_counter() - start
        return {"dbscan": seconds, "total": seconds}, labels
    return run


def faiss_runner(args: argparse.Namespace, inputs: Inputs):
    """``run()`` timing faiss IndexFlatIP exact search for the two kNN stages."""
    import faiss
    use_gpu = inputs.device.type == "cuda" and faiss.get_num_gpus() > 0
    resources = faiss.StandardGpuResources() if use_gpu else None

    def search(x: torch.Tensor, k: int) -> np.ndarray:
        x = x.float().contiguous().cpu().numpy()
        index = faiss.IndexFlatIP(x.shape[1])
        if use_gpu:
            index = faiss.index_cpu_to_gpu(resources, torch.cuda.current_device(), index)
        index.add(x)
        return index.search(x, k)[1]

    def run():
        x_g, x_p = inputs.x_g, inputs.x_p
        start = time.perf_counter()
        neighbours = [search(x_g, max(args.k1, args.k + 1))]
        middle = time.perf_counter()
        neighbours += [search(x_p[:, :, p], args.k + 1) for p in range(x_p.shape[2])]
        end = time.perf_counter()
        return {"knn_global": middle - start, "knn_parts": end - middle,
                "total": end - start}, neighbours
    return run, ("GPU" if use_gpu else "CPU")


def knn_rows_matching(found: list[np.ndarray], inputs: Inputs, args: argparse.Namespace
                      ) -> float:
    """Fraction of rows whose neighbour set equals pplr_fast's exact kNN (all spaces)."""
    from pplr_fast.cluster import nearest_neighbours
    x_g, x_p = inputs.x_g, inputs.x_p
    spaces = [x_g] + [x_p[:, :, p].contiguous() for p in range(x_p.shape[2])]
    matching = total = 0
    for x, theirs in zip(spaces, found):
        exact = nearest_neighbours(x, theirs.shape[1], backend="fast")[1].cpu().numpy()
        matching += int((np.sort(exact, axis=1) == np.sort(theirs, axis=1)).all(axis=1).sum())
        total += exact.shape[0]
    return matching / total


def measure(args: argparse.Namespace, n: int, backend: str, arrays_path: str) -> dict:
    """One (N, backend) measurement in this process; arrays go to ``arrays_path``."""
    row = {"n": n, "backend": backend, "name": ROW_NAMES[backend]}
    if args.memory_limit_gib is not None:
        cap_available_memory(args.memory_limit_gib)
    try:
        inputs = Inputs(args, n)
        if backend == "faiss":
            run, where = faiss_runner(args, inputs)
            row["name"] += f" ({where})"
        elif backend == "sklearn":
            run = sklearn_runner(args, inputs)
        else:
            run = stage_runner(args, inputs, backend)
        median, runs, memory, output = timed_runs(run, args.repeat, args.device)
    except MemoryError as error:
        needed = re.search(r"needs about ([0-9.]+) GiB", str(error))
        row["status"] = f"refused: needs {needed.group(1)} GiB" if needed else \
            f"refused: {str(error)[:200]}"
        row["needs_gib"] = float(needed.group(1)) if needed else None
        return row
    except Exception as error:          # a failing measurement is a result, not a crash
        first_line = (str(error).splitlines() or [""])[0][:300]
        row["status"] = f"failed: {type(error).__name__}: {first_line}"
        return row
    row.update(status="ok", seconds=median, runs=runs, peak_host_mib=memory.host_mib,
               peak_gpu_mib=memory.gpu_mib)
    if backend in BACKENDS:
        row["ran"] = output.backend
        if output.backend != backend:
            row["status"] = f"ok (fast kernels unavailable: ran {output.backend})"
        row["clusters"], row["outliers"] = output.num_clusters, output.num_outliers
        np.savez(arrays_path, labels=output.labels.cpu().numpy(),
                 scores=output.scores.cpu().numpy())
    elif backend == "sklearn":
        row["clusters"] = int(output.max()) + 1
        row["outliers"] = int((output < 0).sum())
        np.savez(arrays_path, labels=output)
    else:
        row["knn_rows_matching_exact"] = knn_rows_matching(output, inputs, args)
    return row


def measure_in_subprocess(args: argparse.Namespace, n: int, backend: str, arrays_path: str
                          ) -> dict:
    """:func:`measure` in a fresh interpreter, so that peak memory is its own."""
    config = {**vars(args), "worker": None}
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               json.dumps({"config": config, "n": n, "backend": backend, "arrays": arrays_path})]
    environment = dict(os.environ)
    if args.threads:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    row = {"n": n, "backend": backend, "name": ROW_NAMES[backend]}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                              env=environment)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timed out after {args.timeout:g} s"}
    if done.returncode != 0:
        if done.returncode < 0:
            reason = f"killed by signal {-done.returncode}" + (
                " (out of memory?)" if done.returncode == -9 else "")
        else:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {**row, "status": f"failed: {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- one size
def compare_with_reference(rows: list[dict], arrays: dict[str, str]) -> None:
    """Fill ratios and correctness columns of the rows of one size in place."""
    by_backend = {r["backend"]: r for r in rows if r["status"].startswith("ok")}
    fast, reference = by_backend.get("fast"), by_backend.get("reference")
    if fast:
        for row in by_backend.values():
            shared = [key for key in row["seconds"] if key in fast["seconds"]
                      and key not in ("total", "extract")]
            if row is not fast and shared:
                own = sum(row["seconds"][key] for key in shared)
                row["times_fast"] = own / max(sum(fast["seconds"][key] for key in shared), 1e-12)
                row["times_fast_stages"] = shared
    if fast and reference:
        fast["fast_over_reference"] = {key: fast["seconds"][key] / max(value, 1e-12)
                                       for key, value in reference["seconds"].items()
                                       if key in fast["seconds"]}
    labels_source = "reference" if reference else "fast" if fast else None
    if labels_source is None:
        return
    truth = np.load(arrays[labels_source])
    for backend in ("fast", "sklearn"):
        row = by_backend.get(backend)
        if row is None or backend == labels_source:
            continue
        mine = np.load(arrays[backend])
        row["compared_with"] = labels_source
        row["ari"] = adjusted_rand_index(mine["labels"], truth["labels"])
        row["labels_identical"] = bool(np.array_equal(mine["labels"], truth["labels"]))
        if "scores" in mine.files:
            row["max_abs_score_diff"] = float(np.abs(mine["scores"] - truth["scores"]).max())


def measure_size(args: argparse.Namespace, n: int, dim: int, parts: int, backends: list[str],
                 workdir: str) -> list[dict]:
    """Rows of every backend at size n (skipped rows when the fast path cannot fit)."""
    estimate = fast_path_bytes(n, dim, parts)
    host = available_bytes("cpu", args.memory_limit_gib)
    device = available_bytes(args.device, args.memory_limit_gib)
    short = None
    if estimate["features"] > 0.9 * host:
        short = f"the features alone need {estimate['features'] / GIB:.1f} GiB of host memory"
    elif estimate["total"] > 0.9 * device:
        short = (f"the fast path would need about {estimate['total'] / GIB:.1f} GiB (features "
                 f"{estimate['features'] / GIB:.1f} + working set "
                 f"{estimate['working'] / GIB:.1f}), {device / GIB:.1f} GiB available")
    if short:
        return [{"n": n, "backend": b, "name": ROW_NAMES[b], "status": f"skipped: {short}"}
                for b in backends]
    rows, arrays = [], {}
    for backend in backends:
        arrays[backend] = os.path.join(workdir, f"{n}_{backend}.npz")
        measure_one = measure_in_subprocess if args.subprocess else measure
        print(f"  N={n} {ROW_NAMES[backend]} ...", file=sys.stderr, flush=True)
        rows.append(measure_one(args, n, backend, arrays[backend]))
    compare_with_reference(rows, arrays)
    return rows


# --------------------------------------------------------------------- output
def columns(with_extract: bool, with_gpu: bool) -> list[str]:
    names = ["N", "backend", *(["extract"] if with_extract else []), *STAGES, "total",
             *(["extract + total"] if with_extract else []), "× fast", "peak host MiB",
             *(["peak GPU MiB"] if with_gpu else []), "clusters / outliers", "ARI",
             "max Δscore"]
    return names


def markdown_row(row: dict, with_extract: bool, with_gpu: bool) -> str:
    size = f"{row['n']}" + (f" ({DATASET_SIZES[row['n']]})" if row["n"] in DATASET_SIZES else "")
    if not row["status"].startswith("ok"):
        blanks = len(columns(with_extract, with_gpu)) - 3
        return f"| {size} | {row['name']} | {row['status']} |" + " |" * blanks
    seconds = row["seconds"]
    cells = [size, row["name"]]
    if with_extract:
        cells.append(seconds_text(seconds.get("extract")))
    cells += [seconds_text(seconds.get(stage)) for stage in (*STAGES, "total")]
    if with_extract:
        cells.append(seconds_text(seconds["extract"] + seconds["total"])
                     if "extract" in seconds else "")
    if "times_fast" in row:
        stages = row["times_fast_stages"]
        which = "" if set(stages) == set(STAGES) else f" ({', '.join(stages)})"
        cells.append(f"{row['times_fast']:.3g}{which}")
    else:
        cells.append("1" if row["backend"] == "fast" else "")
    cells.append("" if row.get("peak_host_mib") is None else f"{row['peak_host_mib']:.0f}")
    if with_gpu:
        cells.append("" if row.get("peak_gpu_mib") is None else f"{row['peak_gpu_mib']:.0f}")
    cells.append(f"{row['clusters']} / {row['outliers']}" if "clusters" in row else "")
    if "ari" in row:
        cells.append(f"{row['ari']:.6g}" + (" (identical)" if row["labels_identical"] else ""))
    elif "knn_rows_matching_exact" in row:
        cells.append(f"kNN rows = exact: {100 * row['knn_rows_matching_exact']:.2f}%")
    else:
        cells.append("")
    cells.append(f"{row['max_abs_score_diff']:.3g}" if "max_abs_score_diff" in row else "")
    return "| " + " | ".join(cells) + " |"


def markdown_report(result: dict) -> str:
    config, machine = result["config"], result["machine"]
    with_extract = bool(config["dataset"])
    with_gpu = config["device"] == "cuda"
    if with_extract:
        source = (f"Features: extracted in every run from {config['dataset']} (training set) "
                  f"with {config['checkpoint']}.")
    else:
        generator = result["generator"]
        settings = ", ".join(f"{k}={v}" for k, v in generator.items() if k != "name")
        source = f"Features: {generator['name']}(seed={config['seed']}; {settings})."
    names = ", ".join(f"{n} = {name}" for n, name in DATASET_SIZES.items())
    lines = [
        f"# Clustering stage (docs/method.md §2), {config['device']}",
        "",
        f"Seconds per stage, median of {config['repeat']} runs after one warm-up "
        f"(each column's median taken separately); D = {config['dim']}, N_p = {config['parts']}, "
        f"eps = {config['eps']}, k1 = {config['k1']}, k2 = {config['k2']}, "
        f"min_samples = {config['min_samples']}, k = {config['k']}.",
        *machine_lines(machine),
        f"Load average before / after: {result['load_before']} / {result['load_after']}.",
        *filter(None, [busy_warning(result["load_before"],
                                    machine["usable_cores"] or machine["cores"])]),
        source,
        "Peak host MiB: growth of the peak RSS during the warm-up run over the RSS once the "
        "features are built" + ("; peak GPU MiB: torch allocator peak over the memory "
                                "allocated before the run" if with_gpu else "")
        + (". Each (N, backend) ran in a fresh process." if config["subprocess"] else
           ". --no-subprocess: peaks of later rows can hide in memory earlier rows freed."),
        "× fast: this row's time / the fast path's on the same stages (in brackets when not "
        "all). ARI: adjusted Rand index of the pseudo-labels vs the reference's (the fast "
        "path's when the reference did not run); max Δscore: max |Δ| of the cross-agreement "
        f"scores. Dataset sizes: {names}.",
        "",
        "| " + " | ".join(columns(with_extract, with_gpu)) + " |",
        "|" + "|".join("---" if c == "backend" else "---:"
                       for c in columns(with_extract, with_gpu)) + "|",
    ]
    lines += [markdown_row(row, with_extract, with_gpu) for row in result["rows"]]
    ratios = [r for r in result["rows"] if "fast_over_reference" in r]
    if ratios:
        keys = [k for k in ("extract", *STAGES, "total") if k in ratios[0]["fast_over_reference"]]
        lines += ["", "Fast / reference time per stage (same run; below 1 = fast is faster):",
                  "", "| N | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        lines += [f"| {r['n']} | " + " | ".join(f"{r['fast_over_reference'][k]:.3g}"
                                                for k in keys) + " |" for r in ratios]
    if result["notes"]:
        lines += [""] + [f"Note: {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["n", "backend", "name", "status", "needs_gib", "extract_s",
              *[f"{stage}_s" for stage in STAGES], "total_s", "times_fast",
              "fast_over_reference_total", "peak_host_mib", "peak_gpu_mib", "clusters",
              "outliers", "ari", "labels_identical", "max_abs_score_diff",
              "knn_rows_matching_exact"]


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            flat = {key: row.get(key) for key in CSV_FIELDS}
            for key, value in row.get("seconds", {}).items():
                flat[f"{key}_s"] = value
            flat["fast_over_reference_total"] = row.get("fast_over_reference", {}).get("total")
            writer.writerow(flat)


def plot(path: str, result: dict) -> None:
    """Time vs N, log-log: one panel per stage plus total, one line per backend."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (["extract"] if result["config"]["dataset"] else []) + [*STAGES, "total"]
    columns_count = 4
    rows_count = math.ceil(len(panels) / columns_count)
    figure, axes = plt.subplots(rows_count, columns_count, figsize=(16, 4 * rows_count),
                                squeeze=False)
    styles = {"reference": ("tab:red", "o"), "fast": ("tab:blue", "s"),
              "sklearn": ("tab:green", "^"), "faiss": ("tab:purple", "D")}
    for axis, stage in zip(axes.flat, panels):
        # the extra rows' "total" covers only their own stages: not comparable
        for backend in (BACKENDS if stage == "total" else styles):
            colour, marker = styles[backend]
            done = [r for r in result["rows"] if r["backend"] == backend
                    and r["status"].startswith("ok") and r["seconds"].get(stage, 0) > 0]
            if done:
                points = sorted((r["n"], r["seconds"][stage]) for r in done)
                axis.plot(*zip(*points), marker=marker, color=colour, label=done[0]["name"])
        for n, name in DATASET_SIZES.items():
            if any(r["n"] == n for r in result["rows"]):
                axis.axvline(n, color="grey", linewidth=0.8, linestyle=":")
                axis.annotate(name, (n, 1), xycoords=("data", "axes fraction"), rotation=90,
                              fontsize=7, color="grey", ha="right", va="top")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(stage)
        axis.set_xlabel("N (images)")
        axis.set_ylabel("seconds")
        axis.grid(True, which="both", alpha=0.3)
    legend = {}
    for axis in list(axes.flat)[:len(panels)]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    refused = sorted({f"{r['name']} at N={r['n']}: {r['status']}" for r in result["rows"]
                      if not r["status"].startswith("ok")})
    spare = list(axes.flat)[len(panels):]
    for axis in spare:
        axis.axis("off")
    if spare:
        spare[0].legend(legend.values(), legend.keys(), loc="upper left")
        if refused:
            spare[0].text(0, 0.45, "Not measured:\n" + "\n".join(refused[:12]), fontsize=7,
                          va="top", transform=spare[0].transAxes, wrap=True)
    else:
        figure.legend(legend.values(), legend.keys(), loc="lower right")
    machine = result["machine"]
    where = machine["gpu"] or f"{machine['cpu']} ({machine['cores']} cores)"
    figure.suptitle(f"PPLR clustering stage, D={result['config']['dim']}, "
                    f"N_p={result['config']['parts']}, median of {result['config']['repeat']} "
                    f"- {where}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+",
                        help=f"sizes N (default: {' '.join(map(str, CPU_SIZES))}; on cuda also "
                             "500000 1000000; sizes that cannot fit are skipped)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension D")
    parser.add_argument("--parts", type=int, default=3, help="number of parts N_p")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--extras-max-n", type=int, default=40000,
                        help="largest N the extra rows run at (exact faiss on a CPU takes "
                             "~20 min at N=100000)")
    parser.add_argument("--extras", nargs="*", choices=EXTRAS, default=list(EXTRAS),
                        help="standard tools shown as extra rows when installed "
                             "(default: both; pass --extras alone for none)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--eps", type=float, help="DBSCAN eps (default 0.6, or the dataset's)")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument("--k", type=int, default=20, help="cross-agreement neighbours")
    parser.add_argument("--seed", type=int, default=0, help="feature generator seed")
    parser.add_argument("--threads", type=int,
                        help="torch threads and OMP_NUM_THREADS of the measurements "
                             "(default: the libraries' defaults)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds per (N, backend) measurement (subprocess mode); larger "
                             "N of a backend that timed out are skipped")
    parser.add_argument("--memory-limit-gib", type=float,
                        help="pretend only this much memory is free (for the reference's "
                             "memory guard and the fast path's fit check)")
    parser.add_argument("--no-subprocess", dest="subprocess", action="store_false",
                        help="measure in this process (debugging; peaks of rows mix)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    data = parser.add_argument_group("real images instead of generated features")
    data.add_argument("--dataset", help="dataset name, e.g. market1501")
    data.add_argument("--data-dir", help="folder holding the dataset folder")
    data.add_argument("--checkpoint", help="a pplr_fast checkpoint (best.pth / last.pth)")
    data.add_argument("--extract-batch-size", type=int, default=128)
    data.add_argument("--workers", type=int, default=4, help="data loader workers")
    parser.add_argument("--ranks", type=int, nargs="+",
                        help="the stage shared by K ranks: benchmarks/cluster_ranks.py, which "
                             "this command line is passed on to (see its --help)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if bool(args.dataset) != bool(args.checkpoint) or (args.dataset and not args.data_dir):
        parser.error("--dataset, --data-dir and --checkpoint go together")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def run_worker(payload: str) -> None:
    """Subprocess entry: measure one (N, backend) and print its row as JSON."""
    job = json.loads(payload)
    args = argparse.Namespace(**job["config"])
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args, job["n"], job["backend"], job["arrays"])))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--ranks" in argv:
        import cluster_ranks
        print("note: the --ranks benchmark is benchmarks/cluster_ranks.py; running it with "
              "this command line", file=sys.stderr, flush=True)
        return cluster_ranks.main(argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    notes = []
    if args.dataset:
        n, args.dim, args.parts, preset_eps = dataset_shape(args)
        if args.n:
            notes.append(f"--n ignored: the {args.dataset} training set has {n} images")
        sizes = [n]
        args.eps = preset_eps if args.eps is None else args.eps
    else:
        sizes = args.n or (GPU_SIZES if args.device == "cuda" else CPU_SIZES)
        args.eps = 0.6 if args.eps is None else args.eps
    backends = list(args.backends)
    for extra, module in (("sklearn", "sklearn"), ("faiss", "faiss")):
        if extra in args.extras:
            try:
                __import__(module)
                backends.append(extra)
            except ImportError:
                notes.append(f"{module} is not installed: no '{ROW_NAMES[extra]}' row")
    load_before = load_average()
    rows, timed_out = [], {}
    with tempfile.TemporaryDirectory(prefix="cluster_stage_") as workdir:
        for n in sizes:
            live = [b for b in backends if b not in timed_out
                    and not (b in EXTRAS and n > args.extras_max_n)]
            rows += [{"n": n, "backend": b, "name": ROW_NAMES[b],
                      "status": f"skipped: timed out at N={timed_out[b]}"}
                     for b in backends if b in timed_out]
            size_rows = measure_size(args, n, args.dim, args.parts, live, workdir)
            for row in size_rows:
                if row["status"].startswith("timed out"):
                    timed_out[row["backend"]] = n
            rows += size_rows
    rows.sort(key=lambda r: (r["n"], backends.index(r["backend"])))
    for row in rows:
        row.update(dim=args.dim, parts=args.parts, device=args.device)
    result = {
        "machine": describe_machine(args.device),
        "load_before": load_before,
        "load_after": load_average(),
        "generator": None if args.dataset else IdentityFeatureConfig().describe(),
        "config": {key: value for key, value in vars(args).items() if key != "worker"},
        "stages": list(STAGES),
        "rows": rows,
        "notes": notes,
    }
    report = markdown_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cluster_stage_{args.device}")
    with open(stem + ".md", "w") as handle:
        handle.write(report)
    with open(stem + ".json", "w") as handle:
        json.dump(result, handle, indent=2)
    write_csv(stem + ".csv", rows)
    try:
        plot(stem + ".png", result)
        print(f"wrote {stem}.md, .json, .csv and .png")
    except ImportError:
        print(f"wrote {stem}.md, .json and .csv (no plot: matplotlib is not installed)")
    return result


if __name__ == "__main__":
    main()
