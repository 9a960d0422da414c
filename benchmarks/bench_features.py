"""The feature cache: a 5-fold her2st_C run of a frozen-encoder model with the cache shared by every fold
(features computed once per slide) against the same run with the features computed afresh in every fold
(an empty cache per fold), side by side, each variant in its own child process with the same threads.

Run from the repository root (needs the her2st data beside the checkout, ../shared/data/her2st):
    python benchmarks/bench_features.py --model ridge --dataset her2st_C_HVG --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data" / "her2st"

CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from stbench.plugins import get_plugin_manager
from stbench.runner import RunRequest, run
plugins = get_plugin_manager()
dataset = plugins.datasets.get(os.environ["BENCH_DATASET"])
folds = dataset.folds("default")
cache = os.environ["BENCH_CACHE"]
import shutil
for f in folds:  # patches and prepared matrices first, outside the timing, in the shared cache
    os.environ["STBENCH_CACHE"] = cache
    dataset.prepare(f, "strict")
shutil.rmtree(os.path.join(cache, "features"), ignore_errors=True)  # both variants start with no features
t0 = time.perf_counter()
fold_s = []
for i, f in enumerate(folds):
    if os.environ["BENCH_MODE"] == "per-fold":  # an empty feature cache for every fold
        shutil.rmtree(os.path.join(cache, "features"), ignore_errors=True)
    t = time.perf_counter()
    result, _ = run(plugins, RunRequest(os.environ["BENCH_MODEL"], dataset.name, folds=",".join(f.query),
                                        device="cpu"), None)
    fold_s.append(time.perf_counter() - t)
print(json.dumps({"wall_s": time.perf_counter() - t0, "fold_s": fold_s,
                  "pearson": result.summary["pearson"]["mean"]}))
"""


def child(mode: str, args: argparse.Namespace, data: Path, cache: Path) -> dict:
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_MODEL": args.model, "BENCH_DATASET": args.dataset,
           "BENCH_THREADS": str(args.threads), "BENCH_CACHE": str(cache), "STBENCH_DATA": str(data),
           "STBENCH_CACHE": str(cache), "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ridge")
    parser.add_argument("--dataset", default="her2st_C_HVG")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        subprocess.run([sys.executable, "-m", "stbench", "fetch", args.dataset, "--mirror", str(MIRROR)],
                       env={**os.environ, "STBENCH_DATA": str(data), "STBENCH_CACHE": str(cache)}, check=True,
                       capture_output=True)
        rows = {}
        for mode in ("per-fold", "shared"):
            t = time.perf_counter()
            rows[mode] = child(mode, args, data, cache)
            rows[mode]["process_s"] = time.perf_counter() - t
    ratio = rows["per-fold"]["wall_s"] / rows["shared"]["wall_s"]
    print(f"{'features':<34} {'5 folds, s':>11} {'per fold, s':>28} {'mean Pearson':>13}")
    for mode, label in (("per-fold", "computed in every fold"), ("shared", "cached once, reused by every fold")):
        r = rows[mode]
        print(f"{label:<34} {r['wall_s']:>11.1f} {' / '.join(f'{s:.1f}' for s in r['fold_s']):>28} {r['pearson']:>13.4f}")
    print(f"speed-up of the shared cache: {ratio:.2f}x ({args.model} on {args.dataset}, {args.threads} threads)")


if __name__ == "__main__":
    main()
