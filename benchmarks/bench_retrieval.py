"""Benchmark: chunked top-K cosine retrieval (``stbench.nn.retrieval.topk_cosine``) against the
dense approach (normalise, full query x reference similarity matrix, ``torch.topk``).

Each side runs in its own child process (fresh interpreter) on the same seeded float32 inputs.
Inside the child: import torch, warm up (a tiny matmul + topk, so one-off library start-up is not
counted), allocate the inputs, read the resident set size (VmRSS) right after, run the retrieval
once under ``time.perf_counter`` (and the user/system CPU time of the retrieval from
``getrusage``), then read the peak RSS (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``). "extra memory" = peak RSS - RSS after the inputs, i.e. what the retrieval itself
needed. Each repeat runs dense then chunked; the script reports every run and the median, and
compares the two sides' top-K indices (identical ordered rows, identical top-K sets).

Run by hand from the repository root (the dense side needs ~8.5 GB RAM at the default size):

    PYTHONPATH=. python benchmarks/bench_retrieval.py --queries 20000 --refs 100000 --dim 256 --k 50

``--dense-scale F`` runs the dense side on F x the queries (same references) when the full dense
matrix does not fit; the result then says so and extrapolates nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


# ------------------------------------------------------------------------------------------
# child
# ------------------------------------------------------------------------------------------
def _rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    import resource

    import torch

    # warm-up: thread pool, MKL and allocator start-up, the same for both sides
    a = torch.randn(64, 32)
    torch.topk(a @ a.T, 8, dim=1)
    del a
    from stbench.nn.retrieval import default_chunk_sizes, topk_cosine  # imported by both sides


    nq = args.queries if args.side == "chunked" else max(1, int(round(args.queries * args.dense_scale)))
    g = torch.Generator().manual_seed(args.seed)
    query = torch.randn(args.queries, args.dim, generator=g)[:nq].contiguous()
    reference = torch.randn(args.refs, args.dim, generator=g)
    base_kb = _rss_now_kb()
    base_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.side == "chunked":
        cq, cr = default_chunk_sizes(nq, args.refs, args.chunk_size, args.ref_chunk_size)
        scores, idx = topk_cosine(query, reference, args.k, chunk_size=args.chunk_size,
                                  ref_chunk_size=args.ref_chunk_size)
        detail = f"chunk_size={cq} ref_chunk_size={cr}"
    else:
        qn = torch.nn.functional.normalize(query, dim=1)
        rn = torch.nn.functional.normalize(reference, dim=1)
        sim = qn @ rn.T  # the dense (Nq x Nr) float32 matrix
        t_mm = time.perf_counter() - t0
        scores, idx = torch.topk(sim, args.k, dim=1)
        detail = (f"dense matrix {tuple(sim.shape)} float32 = {sim.numel() * 4 / 2**30:.2f} GiB; "
                  f"normalise+matmul {t_mm:.2f} s, topk {time.perf_counter() - t0 - t_mm:.2f} s")
        del sim
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    np.save(args.out + ".idx.npy", idx.numpy())
    np.save(args.out + ".scores.npy", scores.numpy())
    with open(args.out + ".json", "w") as f:
        json.dump({"side": args.side, "nq": nq, "seconds": elapsed, "user_seconds": user, "sys_seconds": system, "base_rss_kb": base_kb,
                   "base_peak_kb": base_peak_kb, "peak_kb": peak_kb,
                   "extra_mb": (peak_kb - base_kb) / 1024, "detail": detail,
                   "threads": torch.get_num_threads(), "torch": torch.__version__}, f)


# ------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------
def run_side(args: argparse.Namespace, side: str, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--out", out, "--queries", str(args.queries),
           "--refs", str(args.refs), "--dim", str(args.dim), "--k", str(args.k), "--seed", str(args.seed),
           "--dense-scale", str(args.dense_scale)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if args.ref_chunk_size:
        cmd += ["--ref-chunk-size", str(args.ref_chunk_size)]
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    subprocess.run(cmd, check=True, env=env)
    with open(out + ".json") as f:
        return json.load(f)


def compare(tmp: str) -> str:
    i_c = np.load(os.path.join(tmp, "chunked.idx.npy"))
    i_d = np.load(os.path.join(tmp, "dense.idx.npy"))
    s_c = np.load(os.path.join(tmp, "chunked.scores.npy"))
    s_d = np.load(os.path.join(tmp, "dense.scores.npy"))
    n = i_d.shape[0]  # the dense side may have run on the first rows only
    i_c, s_c = i_c[:n], s_c[:n]
    same_order = (i_c == i_d).all(axis=1)
    ordered = float(same_order.mean())
    sets = float((np.sort(i_c, axis=1) == np.sort(i_d, axis=1)).all(axis=1).mean())
    max_diff = float(np.abs(s_c - s_d).max())
    # rows listed in a different order: how far apart are the scores of the reordered entries?
    spread = 0.0
    for row in np.flatnonzero(~same_order):
        pos = np.flatnonzero(i_c[row] != i_d[row])
        spread = max(spread, float(np.ptp(s_c[row, pos])), float(np.ptp(s_d[row, pos])))
    return (f"agreement over {n} queries: identical top-{i_d.shape[1]} sets {sets:.6f}, "
            f"identical ordered rows {ordered:.6f} ({int((~same_order).sum())} rows differ in order; "
            f"max score spread among their reordered entries {spread:.3e}), "
            f"max |score diff| {max_diff:.3e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--refs", type=int, default=100000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--ref-chunk-size", type=int, default=None)
    p.add_argument("--dense-scale", type=float, default=1.0)
    p.add_argument("--only", choices=["chunked", "dense"], default=None, help="run one side only")
    p.add_argument("--child", choices=["chunked", "dense"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.side = args.child
        child(args)
        return

    import torch

    print(f"stbench retrieval benchmark: {args.queries} queries x {args.refs} references, dim {args.dim}, "
          f"k {args.k}, float32, CPU, seed {args.seed}, {args.repeats} repeat(s)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}")
    if args.dense_scale != 1.0:
        print(f"NOTE: the dense side runs on {args.dense_scale:g} x the queries "
              f"({int(round(args.queries * args.dense_scale))}), the chunked side on all of them")
    sides = [args.only] if args.only else ["dense", "chunked"]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for side in sides:
                res = run_side(args, side, os.path.join(tmp, side))
                runs[side].append(res)
                print(f"  run {r + 1} {side:7s}: {res['seconds']:7.3f} s (CPU user {res['user_seconds']:.2f} s + "
                      f"sys {res['sys_seconds']:.2f} s), extra peak memory "
                      f"{res['extra_mb']:9.1f} MB (RSS after inputs {res['base_rss_kb'] / 1024:.1f} MB, "
                      f"peak {res['peak_kb'] / 1024:.1f} MB; {res['detail']})", flush=True)
            if len(sides) == 2:
                print("   ", compare(tmp), flush=True)
    med = {s: (statistics.median(x["seconds"] for x in v), statistics.median(x["extra_mb"] for x in v))
           for s, v in runs.items()}
    print()
    print("| side    | median time (s) | median extra peak memory (MB) |")
    print("|---------|----------------:|------------------------------:|")
    for s, (t, m) in med.items():
        print(f"| {s:7s} | {t:15.3f} | {m:29.1f} |")
    if len(sides) == 2:
        (td, md), (tc, mc) = med["dense"], med["chunked"]
        mem_ok = mc <= 0.10 * md
        time_ok = tc <= 1.10 * td
        print(f"chunked / dense: time {tc / td:.3f}x, extra memory {mc / md:.4f}x "
              f"(targets: memory <= 0.10x {'met' if mem_ok else 'NOT met'}, "
              f"time <= 1.10x {'met' if time_ok else 'NOT met'})")


if __name__ == "__main__":
    main()
