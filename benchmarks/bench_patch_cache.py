"""Patch cache benchmark: windowed band reads (stbench.data.patches.build_patches) vs whole image.

Generates a tiled (512 x 512, JPEG) RGB TIFF of --size x --size pixels tile by tile (the generator
never holds more than one tile), draws --spots random spot centres, then, each in its own
subprocess so that the peak resident set size (RSS) is per approach:

  baseline   imports + opening the image only (the fixed cost of the interpreter and libraries)
  windowed   stbench.data.patches.build_patches: spots sorted by row, one band window at a time
  whole      tifffile.imread of the whole image, numpy crops (white padding), the same HDF5 layout

Peak RSS is taken from the child's own ``getrusage(RUSAGE_SELF).ru_maxrss`` and, when available,
``/usr/bin/time -v``. Both outputs are compared patch by patch. The temporary folder is deleted at
the end. Run by hand from the repository root:

    PYTHONPATH=. python benchmarks/bench_patch_cache.py --size 20000 --spots 5000 --patch 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512


# ----------------------------------------------------------------------------------- workers


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def worker_generate(path: str, size: int, seed: int) -> dict:
    import tifffile

    def tiles():
        for ty in range(0, size, TILE):
            yy = (np.arange(ty, ty + TILE, dtype=np.float32) / size)[:, None]
            for tx in range(0, size, TILE):
                xx = (np.arange(tx, tx + TILE, dtype=np.float32) / size)[None, :]
                rng = np.random.default_rng([seed, ty, tx])
                # tissue-like: white background, pink stroma and purple nuclei-ish texture
                tissue = (np.sin(xx * 23.0 + np.cos(yy * 17.0) * 3.0) * np.cos(yy * 19.0 - xx * 5.0)) > -0.2
                purple = rng.random((TILE, TILE)) < 0.15
                tile = np.empty((TILE, TILE, 3), np.float32)
                tile[...] = (242.0, 240.0, 244.0)
                tile[tissue] = (226.0, 150.0, 190.0)
                tile[tissue & purple] = (120.0, 70.0, 160.0)
                tile += rng.normal(0.0, 8.0, (TILE, TILE, 1))
                yield np.clip(tile, 0, 255).astype(np.uint8)

    t0 = time.perf_counter()
    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression="jpeg", compressionargs={"level": 90}, photometric="rgb", bigtiff=True)
    return {"seconds": time.perf_counter() - t0, "maxrss": _maxrss_bytes(), "file_bytes": os.path.getsize(path)}


def worker_baseline(tiff: str) -> dict:
    import h5py  # noqa: F401
    import tifffile  # noqa: F401

    from stbench.data.images import open_image
    from stbench.data.patches import build_patches  # noqa: F401

    t0 = time.perf_counter()
    with open_image(tiff) as src:
        src.read(0, 8, 0, 8)
    return {"seconds": time.perf_counter() - t0, "maxrss": _maxrss_bytes()}


def worker_windowed(tiff: str, spots: str, out: str, patch: int) -> dict:
    from stbench.data.patches import PatchSpec, build_patches

    s = np.load(spots)
    t0 = time.perf_counter()
    build_patches(tiff, s["coords"], s["barcodes"], s["grid"], out, PatchSpec(patch))
    return {"seconds": time.perf_counter() - t0, "maxrss": _maxrss_bytes()}


def worker_whole(tiff: str, spots: str, out: str, patch: int) -> dict:
    import h5py
    import tifffile

    s = np.load(spots)
    coords, barcodes, grid = s["coords"], s["barcodes"], s["grid"]
    t0 = time.perf_counter()
    img = tifffile.imread(tiff)  # the whole image in memory
    t_read = time.perf_counter() - t0
    h, w = img.shape[:2]
    centre = np.floor(coords + 0.5).astype(np.int64)
    inside = (centre[:, 0] >= 0) & (centre[:, 0] < w) & (centre[:, 1] >= 0) & (centre[:, 1] < h)
    kept = np.flatnonzero(inside)
    with h5py.File(out, "w") as f:
        str_dt = h5py.string_dtype("utf-8")
        f.create_dataset("barcodes", data=barcodes[kept].astype(object), dtype=str_dt)
        f.create_dataset("coords", data=coords[kept])
        f.create_dataset("grid", data=grid[kept].astype(np.int64))
        images = f.create_dataset("images", shape=(len(kept), patch, patch, 3), dtype=np.uint8,
                                  chunks=(1, patch, patch, 3), compression="gzip", compression_opts=1,
                                  fletcher32=True)
        for j, k in enumerate(kept):
            x0, y0 = centre[k, 0] - patch // 2, centre[k, 1] - patch // 2
            crop = np.full((patch, patch, 3), 255, np.uint8)
            ya, yb, xa, xb = max(y0, 0), min(y0 + patch, h), max(x0, 0), min(x0 + patch, w)
            crop[ya - y0:yb - y0, xa - x0:xb - x0] = img[ya:yb, xa:xb]
            images[j] = crop
        f.attrs["complete"] = True
    return {"seconds": time.perf_counter() - t0, "read_seconds": t_read, "maxrss": _maxrss_bytes()}


# ------------------------------------------------------------------------------------ driver


def run_child(args: list[str]) -> dict:
    """Run this script as a child (under /usr/bin/time -v if present); its last line is JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer:
        cmd = [timer, "-v", *cmd]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"child {args[:2]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_with_startup"] = wall
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    out["time_v_maxrss"] = int(m.group(1)) * 1024 if m else None
    return out


def _pythonpath() -> str:
    repo = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)


def compare(a: str, b: str) -> tuple[bool, int]:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ia, ib = fa["images"], fb["images"]
        if ia.shape != ib.shape:
            return False, -1
        same = list(fa["barcodes"].asstr()[()]) == list(fb["barcodes"].asstr()[()])
        for i in range(0, ia.shape[0], 256):
            same &= bool(np.array_equal(ia[i:i + 256], ib[i:i + 256]))
        return same, ia.shape[0]


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="image side in pixels (square)")
    ap.add_argument("--spots", type=int, default=5000)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default="/tmp", help="folder for the temporary TIFF and outputs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    import h5py
    import tifffile
    import zarr

    work = Path(tempfile.mkdtemp(prefix="stbench_bench_patch_", dir=args.tmp))
    try:
        free = shutil.disk_usage(work).free
        raw = args.size * args.size * 3
        print("stbench patch cache benchmark: windowed bands vs whole image")
        print(f"python {platform.python_version()}, numpy {np.__version__}, tifffile {tifffile.__version__}, "
              f"zarr {zarr.__version__}, h5py {h5py.__version__}, {os.cpu_count()} CPU(s)")
        print(f"image {args.size} x {args.size} RGB uint8 = {mb(raw)} uncompressed; tiles {TILE}, JPEG q90; "
              f"{args.spots} spots, {args.patch} px patches; free disk in {args.tmp}: {free / 1e9:.1f} GB")
        if free < 4e9:
            sys.exit("need at least 4 GB free in --tmp")
        tiff = str(work / "slide.tif")
        gen = run_child(["generate", tiff, str(args.size), str(args.seed)])
        print(f"generated {tiff}: {mb(gen['file_bytes'])} on disk in {gen['seconds']:.1f} s, "
              f"generator peak RSS {mb(gen['maxrss'])}")

        rng = np.random.default_rng(args.seed)
        coords = rng.uniform(0, args.size, (args.spots, 2))
        np.savez(work / "spots.npz", coords=coords, barcodes=np.array([f"spot{i:05d}" for i in range(args.spots)]),
                 grid=np.column_stack([np.arange(args.spots), np.zeros(args.spots, int)]))
        spots = str(work / "spots.npz")

        base = run_child(["baseline", tiff])
        ours = run_child(["windowed", tiff, spots, str(work / "windowed.h5"), str(args.patch)])
        whole = run_child(["whole", tiff, spots, str(work / "whole.h5"), str(args.patch)])
        same, n = compare(str(work / "windowed.h5"), str(work / "whole.h5"))
        with h5py.File(work / "windowed.h5", "r") as f:
            n_padded = int(f.attrs["n_padded"])
        sizes = {k: os.path.getsize(work / f"{k}.h5") for k in ("windowed", "whole")}

        print()
        print("| approach | time (s) | peak RSS (getrusage) | peak RSS (/usr/bin/time -v) | output |")
        print("|---|---:|---:|---:|---:|")
        print(f"| baseline: imports + open | {base['seconds']:.2f} | {mb(base['maxrss'])} | {mb(base['time_v_maxrss'])} | - |")
        print(f"| windowed bands (build_patches) | {ours['seconds']:.2f} | {mb(ours['maxrss'])} | "
              f"{mb(ours['time_v_maxrss'])} | {mb(sizes['windowed'])} |")
        print(f"| whole image (imread + numpy crops) | {whole['seconds']:.2f} (read {whole['read_seconds']:.2f}) | "
              f"{mb(whole['maxrss'])} | {mb(whole['time_v_maxrss'])} | {mb(sizes['whole'])} |")
        print()
        print(f"patches: {n} written by each, {n_padded} padded at the border; identical outputs: {'yes' if same else 'NO'}")
        rss = max(v for v in (ours["maxrss"], ours["time_v_maxrss"]) if v is not None)
        target = 0.25 * raw
        print(f"windowed peak RSS {mb(rss)} = {100 * rss / raw:.1f}% of the uncompressed image "
              f"(target <= 25% = {mb(target)}: {'met' if rss <= target else 'MISSED'}); "
              f"whole-image peak RSS / windowed = {whole['maxrss'] / ours['maxrss']:.1f}x; "
              f"time windowed / whole = {ours['seconds'] / whole['seconds']:.2f}")
        if not same or rss > target:
            sys.exit(1)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("generate", "baseline", "windowed", "whole"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "generate":
            result = worker_generate(rest[0], int(rest[1]), int(rest[2]))
        elif mode == "baseline":
            result = worker_baseline(rest[0])
        elif mode == "windowed":
            result = worker_windowed(rest[0], rest[1], rest[2], int(rest[3]))
        else:
            result = worker_whole(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(result))
    else:
        main()
