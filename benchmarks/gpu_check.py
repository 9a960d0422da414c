"""The device check for the day a GPU is available: one command, one table (run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py              # on a CUDA machine, under 8 minutes on one GPU
    python benchmarks/gpu_check.py --smoke      # tiny sizes on the CPU: checks that the script runs

Rows:

* training throughput (images/s, optimiser steps included, inputs prepared on the device from uint8) of
  HECLIP's paper profile (ResNet-50, 224 px, batch 128, image-centric loss) and ST-Net's (DenseNet-121,
  224 px, batch 32, summed squared error, SGD), each under ``bf16-mixed`` and ``32``;
* one data-parallel step on 2 GPUs (NCCL, the trainer's sharded step) against the same step on one, when
  2 GPUs exist;
* top-50 cosine retrieval of 20k queries among 100k references (256 dims) on the device;
* bf16 against float32 on the same weights and batch: relative loss difference, and the overlap of the
  top-50 reference sets that the two precisions' embeddings retrieve.

Random weights and random pixels: throughput and agreement do not depend on what the pixels show, and
nothing is downloaded. Record the table in benchmarks/RESULTS.md with the GPU's name.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

N_GENES = 250


def _sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return dict(px=32, heclip_batch=8, stnet_batch=4, steps=2, warmup=1, queries=500, refs=2000, encoder_r="resnet18",
                    encoder_d="densenet121")
    return dict(px=224, heclip_batch=128, stnet_batch=32, steps=30, warmup=5, queries=20_000, refs=100_000,
                encoder_r="resnet50", encoder_d="densenet121")


def heclip_step(size: dict[str, Any], device: str) -> tuple[torch.nn.Module, Callable[[Any, Any], Any], Any]:
    from stbench_contrastive.losses import image_centric_loss
    from stbench_contrastive.model import build_network
    from stbench_heclip.model import HECLIP

    from stbench.nn.inputs import to_model_input

    opts = HECLIP.Options(encoder=size["encoder_r"], pretrained=False, spot_projection=True)
    torch.manual_seed(0)
    net = build_network(opts, N_GENES).to(device)
    if device.startswith("cuda"):
        net = net.to(memory_format=torch.channels_last)

    def loss_of(images: Any, expression: Any) -> Any:
        x = to_model_input(images, "strict", size["px"])
        x = x.contiguous(memory_format=torch.channels_last) if device.startswith("cuda") else x
        return image_centric_loss(net.embed_images(x).float(), net.embed_spots(expression).float(), 1.0)

    return net, loss_of, torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)


def stnet_step(size: dict[str, Any], device: str) -> tuple[torch.nn.Module, Callable[[Any, Any], Any], Any]:
    from stbench_stnet.model import STNetOptions, build_network

    from stbench.nn.inputs import to_model_input

    torch.manual_seed(0)
    net = build_network(STNetOptions(encoder=size["encoder_d"], pretrained=False), N_GENES).to(device)

    def loss_of(images: Any, expression: Any) -> Any:
        return ((net(to_model_input(images, "strict", size["px"])).float() - expression) ** 2).sum(1).mean()

    return net, loss_of, torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9)


def batch(n: int, px: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g).to(device)
    return images, torch.rand(n, N_GENES, generator=g).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(build: Callable[..., Any], batch_size: int, size: dict[str, Any], device: str, precision: str) -> float:
    from stbench.nn.trainer import autocast

    net, loss_of, optimizer = build(size, device)
    net.train()
    images, expression = batch(batch_size, size["px"], device)
    for i in range(size["warmup"] + size["steps"]):
        if i == size["warmup"]:
            _sync(device)
            start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_of(images, expression)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return size["steps"] * batch_size / (time.perf_counter() - start)


def agreement(size: dict[str, Any], device: str, low: str = "bf16-mixed") -> tuple[float, float]:
    """(|loss_bf16 - loss_32| / |loss_32|, mean top-50 overlap of retrieval with the two precisions'
    image embeddings) for HECLIP's network in eval mode, queries against a reference set of 4 batches."""
    from stbench.nn.inputs import to_model_input
    from stbench.nn.retrieval import topk_cosine
    from stbench.nn.trainer import autocast

    net, loss_of, _ = heclip_step(size, device)
    net.eval()
    n = size["heclip_batch"]
    ref_images, expression = batch(4 * n, size["px"], device, seed=1)
    query_images, _ = batch(n, size["px"], device, seed=2)
    out: dict[str, Any] = {}
    with torch.no_grad():
        for precision in (low, "32"):
            with autocast(device, precision):
                loss = float(loss_of(ref_images[:n], expression[:n]))
                ref = net.embed_images(to_model_input(ref_images, "strict", size["px"])).float()
                query = net.embed_images(to_model_input(query_images, "strict", size["px"])).float()
            _, idx = topk_cosine(query, ref, k=min(50, len(ref)), device=device)
            out.setdefault(precision, (loss, idx.cpu()))
    (l16, i16), (l32, i32) = out[low], out["32"]
    k = i32.shape[1]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i16, i32)) / (k * len(i32))
    return abs(l16 - l32) / abs(l32), overlap


def retrieval_seconds(size: dict[str, Any], device: str) -> float:
    from stbench.nn.retrieval import topk_cosine

    g = torch.Generator(device="cpu").manual_seed(0)
    query = torch.randn(size["queries"], 256, generator=g).to(device)
    ref = torch.randn(size["refs"], 256, generator=g).to(device)
    topk_cosine(query[:100], ref, k=50, device=device)
    _sync(device)
    start = time.perf_counter()
    topk_cosine(query, ref, k=50, device=device)
    _sync(device)
    return time.perf_counter() - start


def _ddp_worker(rank: int, world: int, port: int, out: str, size: dict[str, Any], device: str) -> None:
    """One sharded step of HECLIP's loss over ``world`` processes; rank 0 saves the loss and one gradient."""
    import torch.distributed as dist

    from stbench.data.loader import shard_bounds
    from stbench.nn.sharded import data_parallel, gather_batch, sharded_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    dev = f"cuda:{rank}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        net, _, _ = heclip_step(size, dev)
        from stbench.nn.inputs import to_model_input
        from stbench_contrastive.losses import image_centric_loss

        def loss_of(images: Any, expression: Any) -> Any:
            img = gather_batch(net.embed_images(to_model_input(images, "strict", size["px"])).float())
            return image_centric_loss(img, gather_batch(net.embed_spots(expression).float()), 1.0)

        step = data_parallel(net, loss_of, dev)
        images, expression = batch(size["heclip_batch"], size["px"], dev)
        start, stop = shard_bounds(len(images), rank, world)
        _sync(dev)
        t0 = time.perf_counter()
        with sharded_step(len(images), start, stop):
            loss = step(images[start:stop], expression[start:stop])
        (loss * len(images)).backward()  # the trainer's scaling of a gathered loss
        _sync(dev)
        seconds = time.perf_counter() - t0
        grad = net.image_head.projection.weight.grad / len(images)
        if rank == 0:
            torch.save({"loss": loss.item(), "grad": grad.cpu(), "seconds": seconds}, f"{out}/ddp.pt")
    finally:
        dist.destroy_process_group()


def ddp_check(size: dict[str, Any], device: str) -> tuple[float, float, float] | None:
    """(relative loss difference, relative gradient difference) of a 2-process step against one process,
    and the 2-process step's seconds; None without 2 GPUs (on the CPU with --smoke: 2 gloo processes)."""
    if device == "cuda" and torch.cuda.device_count() < 2:
        return None
    from stbench.nn.distributed import free_port

    with tempfile.TemporaryDirectory() as out:
        torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), out, size, device), nprocs=2)
        two = torch.load(f"{out}/ddp.pt")
    dev = "cuda:0" if device == "cuda" else "cpu"
    net, loss_of, _ = heclip_step(size, dev)
    images, expression = batch(size["heclip_batch"], size["px"], dev)
    loss = loss_of(images, expression)
    loss.backward()
    grad = net.image_head.projection.weight.grad
    dl = abs(two["loss"] - loss.item()) / abs(loss.item())
    dg = float((two["grad"] - grad.cpu()).norm() / grad.norm().cpu())
    return dl, dg, two["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks that the script runs)")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); --smoke runs it on the CPU")
    size = _sizes(args.smoke)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke sizes)"
    rows: list[tuple[str, str]] = []
    precisions = ("bf16-mixed", "32") if device == "cuda" else ("32",)
    for label, build, bs in (("HECLIP %s, batch %d" % (size["encoder_r"], size["heclip_batch"]), heclip_step,
                              size["heclip_batch"]),
                             ("ST-Net %s, batch %d" % (size["encoder_d"], size["stnet_batch"]), stnet_step,
                              size["stnet_batch"])):
        for precision in precisions:
            ips = throughput(build, bs, size, device, precision)
            rows.append((f"train {label}, {size['px']} px, {precision}", f"{ips:.1f} images/s"))
    ddp = ddp_check(size, device)
    rows.append(("2-process data-parallel step vs 1 process (loss, gradient rel. diff; seconds)",
                 "needs 2 GPUs" if ddp is None else f"{ddp[0]:.1e}, {ddp[1]:.1e}; {ddp[2]:.2f} s"))
    seconds = retrieval_seconds(size, device)
    rows.append((f"top-50 retrieval {size['queries']:,} x {size['refs']:,} x 256", f"{seconds:.2f} s"))
    low = "bf16-mixed" if device == "cuda" else "32"  # the CPU has no bf16 autocast here: the code path only
    dl, overlap = agreement(size, device, low)
    rows.append((f"{low} vs fp32: loss rel. diff, top-50 overlap", f"{dl:.1e}, {overlap:.3f}"))
    print(f"\n| check ({name}, torch {torch.__version__}) | result |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
