"""CPU training throughput (patches/s) of a contrastive model's profile on her2st_C (one fold).

    python benchmarks/bench_train.py --model heclip --profile quick --epochs 2

Counts every training patch (both views) per second of training, validation included, as the
runner does it; prints the loss history too.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data" / "her2st"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="heclip")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fold", default="C2")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stbench-bench-train-"))
    os.environ.setdefault("STBENCH_DATA", str(work / "data"))
    os.environ.setdefault("STBENCH_CACHE", str(work / "cache"))
    os.environ.setdefault("STBENCH_MIRROR", str(MIRROR))
    import torch

    from stbench.data.fetch import fetch_dataset
    from stbench.options import build_options
    from stbench.plugins import get_plugin_manager

    plugins = get_plugin_manager(env={})
    ds = plugins.datasets.get("her2st_C_HVG")
    fetch_dataset(ds.entry)
    prepared = ds.prepare(ds.folds(args.fold)[0], "strict")
    cls = plugins.models.get(args.model)
    opts, _ = build_options(cls, [f"profile={args.profile}", f"epochs={args.epochs}"])
    model = cls(opts, device="cpu", seed=0, dataset_info=prepared.info)
    t0 = time.perf_counter()
    model.fit(prepared.train, prepared.genes)
    fit_s = time.perf_counter() - t0
    n_train = sum(len(s) for s in prepared.train)
    resolved = model.opts
    seen = round(n_train * (1 - resolved.val_fraction)) * resolved.views * args.epochs
    t0 = time.perf_counter()
    model.predict(prepared.queries[0])
    predict_s = time.perf_counter() - t0
    print(f"{args.model} profile={args.profile}: encoder {resolved.encoder}, input {resolved.input_px or 256} px, "
          f"batch {resolved.batch_size}, views {resolved.views}, torch threads {torch.get_num_threads()}")
    print(f"fit: {args.epochs} epochs, {seen} training patches in {fit_s:.1f} s = {seen / fit_s:.1f} patches/s "
          f"(includes validation and embedding {n_train} reference patches)")
    print(f"predict: {len(prepared.queries[0])} query patches in {predict_s:.1f} s")
    print("history:", model.history.to_dict())


if __name__ == "__main__":
    main()
