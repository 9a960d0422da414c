"""Training-loader throughput: stbench's PatchDataset over the HDF5 patch cache against a per-item
Dataset in the style of the papers' code (whole slide image in memory, a pandas lookup per item,
PIL transforms per item, and the same item fields: image, expression row, barcode, coordinates).
Both augment with random h/v flips and quarter turns, 2 workers.

Run from the repository root (needs the her2st mirror beside the checkout):
    python benchmarks/bench_loader.py --epochs 3 --workers 2
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data" / "her2st"


class PaperStyleDataset:
    """What the HECLIP/BLEEP scripts do: the whole image in memory, then per item a pandas lookup
    of the barcode in the positions table, a numpy crop, and PIL/torchvision transforms."""

    def __init__(self, image_path: Path, positions, barcodes, expression) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        self.image = np.asarray(Image.open(image_path).convert("RGB"))
        self.positions = positions
        self.barcodes = list(barcodes)
        self.expression = np.asarray(expression)

    def __len__(self) -> int:
        return len(self.barcodes)

    def __getitem__(self, idx: int):
        import torch
        import torchvision.transforms.functional as TF
        from PIL import Image

        row = self.positions.loc[self.positions["barcode"] == self.barcodes[idx]]
        y, x = int(row["pixel_y"].iloc[0]), int(row["pixel_x"].iloc[0])
        img = Image.fromarray(self.image[y - 128:y + 128, x - 128:x + 128])
        if random.random() < 0.5:
            img = TF.hflip(img)
        if random.random() < 0.5:
            img = TF.vflip(img)
        img = TF.rotate(img, random.choice([180, 90, 0, -90]))
        return {"image": torch.tensor(np.array(img)).permute(2, 0, 1),
                "reduced_expression": torch.Tensor(self.expression[idx, :]),
                "barcode": self.barcodes[idx], "spatial_coords": [x, y]}


def throughput(loader, epochs: int, set_epoch=None) -> tuple[float, float]:
    """(first-epoch patches/s, steady-state patches/s over the later epochs)."""
    rates = []
    for epoch in range(epochs):
        if set_epoch:
            set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image"] if isinstance(batch, dict) else batch[0])
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], float(np.mean(rates[1:])) if len(rates) > 1 else rates[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--backend", choices=["threads", "processes", "both"], default="both",
                        help="stbench loader: worker threads building whole batches (default of make_loader), "
                             "or torch DataLoader worker processes over per-item PatchDataset")
    args = parser.parse_args()

    import pandas as pd
    import torch

    work = Path(tempfile.mkdtemp(prefix="stbench-bench-loader-"))
    os.environ.update(STBENCH_DATA=str(work / "data"), STBENCH_CACHE=str(work / "cache"), STBENCH_MIRROR=str(MIRROR))
    from stbench.data.loader import PatchDataset, make_loader
    from stbench.plugins import get_plugin_manager

    ds = get_plugin_manager(env={}).datasets.get("her2st_C_HVG")
    from stbench.data.fetch import fetch_dataset

    fetch_dataset(ds.entry)
    t0 = time.perf_counter()
    prepared = ds.prepare(ds.folds("single")[0], "strict")
    slides = list(prepared.train)
    print(f"prepared her2st_C_HVG (patch cache + expression) in {time.perf_counter() - t0:.1f} s")

    ours_rates = {}
    for backend in (["threads", "processes"] if args.backend == "both" else [args.backend]):
        ours = PatchDataset(slides, augment=True, seed=0)
        loader = make_loader(ours, args.batch, shuffle=True, seed=0, workers=args.workers, backend=backend)
        ours_rates[backend] = throughput(loader, args.epochs, ours.set_epoch)
        print(f"stbench loader ({backend}, HDF5 cache, uint8): first epoch {ours_rates[backend][0]:.0f} patches/s, "
              f"steady {ours_rates[backend][1]:.0f} patches/s")
        del loader

    paper_sets = []
    for s in slides:
        spots = pd.read_csv(ds.folder / "ST-spotfiles" / f"{s.slide_id}_selection.tsv", sep="\t")
        spots["barcode"] = [f"{round(x)}x{round(y)}" for x, y in zip(spots["x"], spots["y"])]
        image = next((ds.folder / "ST-imgs" / "C" / s.slide_id).glob("*.jpg"))
        paper_sets.append(PaperStyleDataset(image, spots, s.barcodes, s.expression))
    paper = torch.utils.data.ConcatDataset(paper_sets)
    paper_loader = torch.utils.data.DataLoader(paper, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                               persistent_workers=args.workers > 0)
    p_first, p_steady = throughput(paper_loader, args.epochs)
    print(f"paper-style per-item Dataset (pandas + PIL): first epoch {p_first:.0f} patches/s, steady {p_steady:.0f} patches/s")
    for backend, (first, steady) in ours_rates.items():
        print(f"speedup ({backend}) steady state: {steady / p_steady:.1f}x, first epoch: {first / p_first:.1f}x "
              f"({len(ours)} patches of 256 px, batch {args.batch}, {args.workers} workers, {args.epochs} epochs)")


if __name__ == "__main__":
    sys.exit(main())
