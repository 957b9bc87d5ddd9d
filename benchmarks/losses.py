"""Forward+backward time and peak memory of the PPLR classification loss.

Variants, measured in one run so that their ratios compare like with like:
  eager    the plain PyTorch twin (``backend="reference"`` without input checks)
  compile  ``torch.compile(dynamic=True)`` of that twin (what ``backend="fast"``
           runs on a CPU)
  fused    the fused Triton op (CUDA only: on a CPU Triton runs only in its
           interpreter, which is a testing aid, not a speed path)

Time: median (and minimum) over ``--repeat`` steps after warm-up (the first
call, which includes compilation, is reported apart: for ``compile`` with the
inductor caches disabled, i.e. cold; symbolic shapes serve later C's without
a recompile except the first C above 4096; for ``fused`` Triton's on-disk
kernel cache is used). On a shared CPU, run
with ``--threads 1``: with other processes busy, torch's OpenMP threads wait
on each other and steps slow down erratically (the load average before and
after the run is recorded). Peak memory: the most memory one
step holds beyond its inputs (gradients of the logits included):
  cuda  torch.cuda.max_memory_allocated() minus the memory allocated before the step;
  cpu   each variant runs in a fresh subprocess; after the timed steps glibc is
        set to serve every allocation of 128 KiB or more with mmap (and to
        return freed memory), the peak-RSS mark is reset (/proc/self/clear_refs),
        one step runs, and the peak RSS (VmHWM) minus the RSS before it is reported.

Usage: python benchmarks/losses.py [--device cpu|cuda] [--c 500 3000 20000]
       [--b 64] [--parts 3] [--repeat N] [--threads N] [--part-loss aals|ce] [--out DIR]
"""
import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import (busy_warning, describe_machine, load_average, machine_lines,
                     peak_rss_growth_kib, reset_peak_rss)

from pplr_fast.losses.classification import classification_loss_twin
from pplr_fast.utils.timing import synchronize

VARIANTS = ("eager", "compile", "fused")
_M_MMAP_THRESHOLD = -3                    # glibc mallopt parameter


def make_inputs(batch: int, num_classes: int, num_parts: int,
                device: str) -> Tuple[torch.Tensor, ...]:
    """Leaf tensors in the model's layout: part logits are a permuted view of
    part-major storage (N_p, B, C)."""
    generator = torch.Generator().manual_seed(0)
    logits_g = (torch.randn(batch, num_classes, generator=generator) * 3).to(device)
    part_major = (torch.randn(num_parts, batch, num_classes, generator=generator) * 3).to(device)
    targets = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    scores = torch.rand(batch, num_parts, generator=generator).to(device)
    return logits_g.requires_grad_(), part_major.requires_grad_(), targets, scores


def loss_function(variant: str, use_aals: bool) -> Callable:
    """(logits_g, logits_p, targets, scores) -> (loss_global, loss_parts)."""
    if variant == "fused":
        from pplr_fast.losses import pplr_classification_loss_fused
        return lambda g, p, y, s: pplr_classification_loss_fused(g, p, y, s, use_aals=use_aals)
    if variant == "eager":
        twin = classification_loss_twin
    else:
        import torch._inductor.config as inductor_config
        inductor_config.force_disable_caches = True            # first call = a cold compile
        twin = torch.compile(classification_loss_twin, dynamic=True)   # as backend="fast"
    return lambda g, p, y, s: twin(g, p, y, s, 0.5, use_aals, 0.1)


def train_step(fn: Callable, inputs: Tuple[torch.Tensor, ...]) -> None:
    """One forward+backward of loss_global + loss_parts."""
    logits_g, part_major, targets, scores = inputs
    logits_g.grad = part_major.grad = None
    loss_global, loss_parts = fn(logits_g, part_major.permute(1, 2, 0), targets, scores)
    (loss_global + loss_parts).backward()


def time_steps(fn: Callable, inputs, repeat: int, device: str) -> Tuple[float, float, float]:
    """(first call in s, median and minimum of ``repeat`` later steps in ms)."""
    start = time.perf_counter()
    train_step(fn, inputs)
    synchronize(device)
    first_call = time.perf_counter() - start
    for _ in range(2):
        train_step(fn, inputs)
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        train_step(fn, inputs)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return first_call, statistics.median(times), min(times)


def peak_memory_mib(fn: Callable, inputs, device: str) -> float:
    """Peak memory of one step beyond what is allocated before it (see module doc)."""
    for tensor in inputs[:2]:
        tensor.grad = None
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(fn, inputs)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)
    before = reset_peak_rss()
    if before is None:
        raise OSError("no resettable peak-RSS mark (/proc/self/clear_refs) on this machine")
    train_step(fn, inputs)
    return peak_rss_growth_kib(before) / 1024


def measure(variant: str, args: argparse.Namespace) -> List[Dict[str, object]]:
    """Rows of one variant for every C, measured in this process."""
    use_aals = args.part_loss == "aals"
    rows = []
    for num_classes in args.c:
        row = {"variant": variant, "C": num_classes, "B": args.b, "N_p": args.parts}
        try:
            fn = loss_function(variant, use_aals)
            inputs = make_inputs(args.b, num_classes, args.parts, args.device)
            row["first_call_s"], row["median_ms"], row["min_ms"] = time_steps(
                fn, inputs, args.repeat, args.device)
            row["peak_mib"] = peak_memory_mib(fn, inputs, args.device)
            row["status"] = "ok"
        except Exception as error:             # a failing variant is a result, not a crash
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def measure_in_subprocess(variant: str, args: argparse.Namespace) -> List[Dict[str, object]]:
    """Run :func:`measure` in a fresh interpreter (clean memory accounting)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", variant,
               "--device", args.device, "--b", str(args.b), "--parts", str(args.parts),
               "--repeat", str(args.repeat), "--part-loss", args.part_loss,
               "--threads", str(args.threads),
               "--c", *map(str, args.c)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return [{"variant": variant, "C": c, "B": args.b, "N_p": args.parts,
                 "status": f"failed: {reason}"} for c in args.c]
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown_table(rows: List[Dict[str, object]], machine: Dict[str, object],
                   args: argparse.Namespace) -> str:
    """Rows grouped by C, with time and memory relative to the eager twin."""
    lines = [f"PPLR classification loss, forward+backward, B = {args.b}, N_p = {args.parts}, "
             f"part loss {args.part_loss}, median of {args.repeat} steps.",
             *machine_lines(machine),
             f"Load average before / after: {machine['load_before']} / {machine['load_after']}.",
             *filter(None, [busy_warning(machine["load_before"],
                                         machine["usable_cores"] or machine["cores"])]),
             "Peak MiB: memory one step holds beyond its inputs (logit gradients included); "
             + ("CUDA allocator peak." if args.device == "cuda" else
                "peak RSS growth, a fresh process per variant (see benchmarks/losses.py)."),
             "",
             "| C | variant | median ms | min ms | time vs eager | peak MiB | memory vs eager "
             "| first call s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for num_classes in args.c:
        by_variant = {r["variant"]: r for r in rows if r["C"] == num_classes}
        eager = by_variant.get("eager", {})
        for variant in VARIANTS:
            row = by_variant.get(variant)
            if row is None:
                continue
            if row["status"] != "ok":
                lines.append(f"| {num_classes} | {variant} | {row['status']} | | | | | |")
                continue
            time_ratio = memory_ratio = "-"
            if eager.get("status") == "ok":
                time_ratio = f"{row['median_ms'] / eager['median_ms']:.2f}x"
                if eager["peak_mib"] > 0:
                    memory_ratio = f"{row['peak_mib'] / eager['peak_mib']:.2f}x"
            lines.append(f"| {num_classes} | {variant} | {row['median_ms']:.3f} | "
                         f"{row['min_ms']:.3f} | {time_ratio} | "
                         f"{row['peak_mib']:.1f} | {memory_ratio} | {row['first_call_s']:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--c", type=int, nargs="+", default=[500, 3000, 20000],
                        help="numbers of classes")
    parser.add_argument("--b", type=int, default=64, help="batch size")
    parser.add_argument("--parts", type=int, default=3, help="number of parts N_p")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed steps per case (default 20 on cpu, 100 on cuda)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--part-loss", choices=("aals", "ce"), default="aals")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="folder for losses_<device>.md and .json")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="the variants to measure, in this order (default: all)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 20 if args.device == "cpu" else 100
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args)))
        return
    load_before = load_average()
    rows = []
    for variant in args.variants:
        if args.device == "cpu" and variant == "fused":
            measured = [{"variant": variant, "C": c, "B": args.b, "N_p": args.parts,
                         "status": "needs a GPU (the Triton interpreter is not a speed path)"}
                        for c in args.c]
        elif args.device == "cpu":
            measured = measure_in_subprocess(variant, args)
        else:
            measured = measure(variant, args)
        for row in measured:          # each result as it comes (the table follows at the end)
            done = f"{row['median_ms']:.3f} ms median" if "median_ms" in row else row["status"]
            print(f"  {variant} C={row['C']}: {done}", flush=True)
        rows += measured
    machine = describe_machine(args.device)
    machine["load_before"], machine["load_after"] = load_before, load_average()
    table = markdown_table(rows, machine, args)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"losses_{args.device}")
    with open(stem + ".md", "w") as markdown:
        markdown.write(table)
    with open(stem + ".json", "w") as result:
        json.dump({"machine": machine, "config": {k: v for k, v in vars(args).items()
                                                  if k not in ("worker", "out")},
                   "rows": rows}, result, indent=2)
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
