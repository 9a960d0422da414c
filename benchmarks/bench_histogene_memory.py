"""HisToGene's memory per spot: one training step (forward, MSE, backward, Adam) and one prediction of a single
slide-long sequence of N spots, at the paper's size (112 px tokens, dim 1024, 8 layers, 16 heads x 64, MLP
2048) and at the quick profile (32 px tokens, dim 256, 4 layers), on CUDA (peak allocated memory; bf16
autocast as stbench's trainer uses it, and fp32) or on CPU (fp32; peak RSS is not per step, so CUDA only
reports memory). The slope between the two largest N is the memory per spot that sets ``max_spots``.

    python benchmarks/bench_histogene_memory.py [--spots 2000,8000,16000] [--predict 20000,100000]

Needs only torch: the network is taken from plugins/stbench_histogene/model.py (``build_network``), imported
when stbench is installed, else compiled from the file's source.
"""
from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

MODEL = Path(__file__).resolve().parents[1] / "plugins" / "stbench_histogene" / "model.py"
PAPER = dict(px=112, dim=1024, depth=8, heads=16, dim_head=64, mlp_dim=2048)
QUICK = dict(px=32, dim=256, depth=4, heads=4, dim_head=64, mlp_dim=512)


def build_network() -> Any:
    try:
        from stbench_histogene.model import build_network as build
        return build
    except ImportError:
        tree = ast.parse(MODEL.read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_network")
        namespace: dict[str, Any] = {"Any": Any}
        exec(compile(ast.Module(body=[fn], type_ignores=[]), str(MODEL), "exec"), namespace)
        return namespace["build_network"]


def network(size: dict, genes: int, device: str) -> Any:
    opts = SimpleNamespace(dim=size["dim"], depth=size["depth"], heads=size["heads"], dim_head=size["dim_head"],
                           mlp_dim=size["mlp_dim"], dropout=0.1, n_pos=64, input_norm="raw", embed_chunk=256)
    return build_network()(opts, size["px"] * size["px"] * 3, genes).to(device)


def run(size: dict, n: int, device: str, dtype: Any, train: bool, genes: int = 1000) -> tuple[float, float]:
    """(seconds, peak GB above the weights and optimiser state) of one step on a sequence of n spots."""
    torch.manual_seed(0)
    net = network(size, genes, device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    tokens = torch.randint(0, 256, (n, size["px"] ** 2 * 3), dtype=torch.uint8, device=device)
    pos = torch.randint(0, 64, (n, 2), device=device)
    target = torch.randn(n, genes, device=device)
    if train:  # a first small step creates Adam's state (and warms the kernels): the baseline, not activations
        net.train()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            torch.nn.functional.mse_loss(net(tokens[:16], pos[:16]).float(), target[:16]).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    t0 = time.perf_counter()
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    if train:
        net.train()
        with amp:
            loss = torch.nn.functional.mse_loss(net(tokens, pos).float(), target)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    else:
        net.eval()
        with torch.no_grad(), amp:
            net(tokens, pos)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 1e9 if device == "cuda" else float("nan")
    del net, opt, tokens, pos, target
    if device == "cuda":
        torch.cuda.empty_cache()
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spots", default="2000,8000,16000")
    ap.add_argument("--predict", default="20000,100000")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = args.device
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}")
    print("| size | step | autocast | spots | s | peak GB (activations) | MB per spot |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, size in (("paper", PAPER), ("quick", QUICK)):
        for dtype in (("bf16", "fp32") if dev == "cuda" else ("fp32",)):
            spots = [int(s) for s in args.spots.split(",")]
            rows = [(n, *run(size, n, dev, dtype, True)) for n in spots]
            for n, s, gb in rows:
                print(f"| {name} | train | {dtype} | {n} | {s:.2f} | {gb:.2f} | {gb / n * 1e3:.3f} |")
            (n0, _, g0), (n1, _, g1) = rows[-2], rows[-1]
            print(f"| {name} | train | {dtype} | slope {n0}-{n1} | | | {(g1 - g0) / (n1 - n0) * 1e3:.3f} |")
        for n in (int(s) for s in args.predict.split(",")):
            s, gb = run(size, n, dev, "bf16" if dev == "cuda" else "fp32", False)
            print(f"| {name} | predict | {'bf16' if dev == 'cuda' else 'fp32'} | {n} | {s:.2f} | {gb:.2f} | "
                  f"{gb / n * 1e3:.3f} |")


if __name__ == "__main__":
    main()
