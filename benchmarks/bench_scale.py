"""Scale benchmark: real-format slides of a given size, each stage in its own child process, one table of
(spots, stage, wall s, peak RSS MB) and the fitted exponent b of wall time ~ spots^b per stage.

For every size N it writes, into a temporary folder, a Space Ranger 2.x slide of N spots (10x HDF5 count
matrix with ``--genes`` genes at ``--density`` non-zeros, ``spatial/tissue_positions.csv``, scale
factors, a tiled pyramidal JPEG TIFF of ``--image-px`` squared pixels) and a reference slide of N/10
spots, and a catalogue entry (strict protocol: the reference slide trains, the big slide is the query;
HVG genes, ``--patch-px`` patches). Then, each in a fresh process:

- stages: read (both slides), patches (cutting), preprocess (normalise, select genes, Harmony),
  train (ridge: frozen-encoder features, PCA, ridge), predict, retrieval (knn), metrics (score the
  query), write (results JSON and predictions file);
- the commands users run: ``stbench prepare``, ``stbench run --model random-k`` and ``--model ridge``,
  each on a cold process with its peak RSS.

    python benchmarks/bench_scale.py --spots 10000,30000,100000
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

import numpy as np

STAGES = ("read", "patches", "preprocess", "train", "predict", "retrieval", "metrics", "write")
COMMANDS = ("prepare", "run random-k", "run ridge")
PIXEL_UM = 0.5


def write_slide(folder: Path, n: int, genes: int, density: float, image_px: int, seed: int) -> None:
    """A Space Ranger 2.x slide: hexagonal spots over the image, sparse counts written block by block."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    pitch = image_px / np.sqrt(n * 1.1)
    cols = int(image_px / pitch)
    index = np.arange(n)
    row, col = index // cols, index % cols
    x = (col + 0.5 * (row % 2) + 0.5) * pitch
    y = (row + 0.5) * pitch * 0.9
    barcodes = np.array([f"B{i:07d}-1" for i in index])
    pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": row, "array_col": 2 * col + (row % 2),
                  "pxl_row_in_fullres": y.round(2), "pxl_col_in_fullres": x.round(2)}).to_csv(
        folder / "spatial" / "tissue_positions.csv", index=False)
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"tissue_hires_scalef": 2000 / image_px, "tissue_lowres_scalef": 600 / image_px,
         "spot_diameter_fullres": 0.55 * pitch, "fiducial_diameter_fullres": pitch}))
    blocks = []
    for start in range(0, n, 20000):
        m = min(20000, n - start)
        block = sp.random(m, genes, density=density, format="csr", random_state=rng, dtype=np.float32)
        block.data = rng.poisson(2.0, block.nnz).astype(np.float32) + 1
        blocks.append(block)
    counts = sp.vstack(blocks).tocsr()  # 10x stores genes x barcodes as CSC: the same arrays as barcodes x genes CSR
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = barcodes.astype("S")
        m["data"], m["indices"], m["indptr"] = counts.data.astype(np.int32), counts.indices, counts.indptr
        m["shape"] = np.array([genes, n], dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:011d}" for i in range(genes)], dtype="S")
        feats["name"] = np.array([f"G{i:05d}" for i in range(genes)], dtype="S")
        feats["feature_type"] = np.array([b"Gene Expression"] * genes)
        feats["genome"] = np.array([b"GRCh38"] * genes)
        feats["_all_tag_keys"] = np.array([b"genome"])
    write_tiff(folder / "image.tif", image_px, seed)


def write_tiff(path: Path, side: int, seed: int, tile: int = 512) -> None:
    """A tiled pyramidal JPEG TIFF of smooth coloured noise, written tile by tile (bounded memory)."""
    import tifffile

    rng = np.random.default_rng(seed)
    base = rng.integers(60, 230, (16, 16, 3)).astype(np.uint8)

    def tiles(level_side: int):
        for y in range(0, level_side, tile):
            for x in range(0, level_side, tile):
                t = np.repeat(np.repeat(base, tile // 16, 0), tile // 16, 1)
                yield (t + rng.integers(0, 20, t.shape, dtype=np.uint8))[:min(tile, level_side - y), :min(tile, level_side - x)]

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        levels = [side, side // 4, side // 16]
        for i, s in enumerate(levels):
            tw.write(tiles(s), shape=(s, s, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                     subifds=len(levels) - 1 if i == 0 else None, subfiletype=1 if i else 0)


CATALOGUE = """[scale]
reader = "visium"
slides = ["big", "ref"]
query = ["big"]
split = "single"
genes = {{ set = "hvg", n_per_slide = {hvg} }}
harmony = "pca"
patch_px = {patch_px}
pixel_size_um = {pixel_um}
root = "scale"
params = {{ image = "image.tif" }}
"""

STAGE_CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from stbench.plugins import get_plugin_manager
stage = sys.argv[1]
plugins = get_plugin_manager()
ds = plugins.datasets.get("scale")
fold = ds.folds("single")[0]
opts = {"input_px": int(os.environ["BENCH_INPUT_PX"])}

def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t

if stage == "read":
    _, wall = timed(lambda: [ds.read(s) for s in ds.slides])
elif stage == "patches":
    [ds.read(s) for s in ds.slides]
    _, wall = timed(lambda: [ds.patches(s) for s in ds.slides])
elif stage == "preprocess":
    [ds.read(s) for s in ds.slides]
    _, wall = timed(lambda: ds.prepare(fold, "strict"))
else:
    prepared = ds.prepare(fold, "strict")
    query = prepared.queries[0]
    if stage in ("train", "predict"):
        cls = plugins.models.get("ridge"); model = cls(cls.Options(**opts), device="cpu")
        _, wall = timed(lambda: model.fit(prepared.train, prepared.genes))
        if stage == "predict":
            _, wall = timed(lambda: model.predict(query))
    elif stage == "retrieval":
        cls = plugins.models.get("knn"); model = cls(cls.Options(**opts), device="cpu")
        model.fit(prepared.train, prepared.genes)
        model.features(query)
        _, wall = timed(lambda: model.predict(query))
    else:
        cls = plugins.models.get("random-k"); model = cls(cls.Options(), device="cpu")
        model.fit(prepared.train, prepared.genes)
        pred = model.predict(query)
        metrics = list(plugins.metrics.values())
        from stbench.eval.scoring import score_slide
        truth = prepared.truth[query.slide_id]
        if stage == "metrics":
            _, wall = timed(lambda: score_slide(metrics, truth, pred, prepared.genes, query.coords))
        else:
            import tempfile
            from stbench.report.predictions import PredictionsWriter, collect_slide_predictions
            out = tempfile.mkdtemp(dir=os.environ["BENCH_TMP"])
            def write():
                with PredictionsWriter(os.path.join(out, "p.predictions.h5"), {}) as w:
                    w.add(collect_slide_predictions(ds, model, fold.name, query, prepared, truth, pred, 0))
            _, wall = timed(write)
print(json.dumps({"wall_s": wall, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

COMMAND_CHILD = r"""
import json, resource, runpy, sys
sys.argv = ["stbench"] + sys.argv[1:]
try:
    runpy.run_module("stbench", run_name="__main__")
except SystemExit as e:
    if e.code not in (0, None):
        raise
finally:
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    stream = out.stdout if code is STAGE_CHILD else out.stderr
    record = json.loads([line for line in stream.splitlines() if line.startswith("{")][-1])
    record.setdefault("wall_s", time.perf_counter() - t)
    return record


def measure(n: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    root = tmp / f"n{n}"
    data, cache = root / "data", root / "cache"
    write_slide(data / "scale" / "big", n, args.genes, args.density, args.image_px, seed=1)
    ref_side = max(1000, int(args.image_px / np.sqrt(10)))
    write_slide(data / "scale" / "ref", max(500, n // 10), args.genes, args.density, ref_side, seed=2)
    catalogue = root / "scale.toml"
    catalogue.write_text(CATALOGUE.format(hvg=args.hvg, patch_px=args.patch_px, pixel_um=PIXEL_UM))
    env = {**os.environ, "STBENCH_DATA": str(data), "STBENCH_CACHE": str(cache), "STBENCH_CATALOG": str(catalogue),
           "BENCH_CATALOG": str(catalogue), "BENCH_INPUT_PX": str(args.input_px), "BENCH_THREADS": str(args.threads),
           "BENCH_TMP": str(root), "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for stage in args.stages:
        rows.append({"spots": n, "stage": stage, **run_child(STAGE_CHILD, [stage], env)})
        print(f"{n:>8} {stage:<14} {rows[-1]['wall_s']:>9.1f} {rows[-1]['peak_mb']:>9.0f}", flush=True)
    cold = {**env, "STBENCH_CACHE": str(root / "cold-cache")}
    commands = {"prepare": ["prepare", "scale", "--folds", "single"],
                "run random-k": ["run", "--model", "random-k", "--dataset", "scale", "--out", str(root / "res")],
                "run ridge": ["run", "--model", "ridge", "--dataset", "scale", "-o", f"input_px={args.input_px}",
                              "--out", str(root / "res")]}
    for name in args.commands:
        rows.append({"spots": n, "stage": f"stbench {name}", **run_child(COMMAND_CHILD, commands[name], cold)})
        print(f"{n:>8} {'stbench ' + name:<14} {rows[-1]['wall_s']:>9.1f} {rows[-1]['peak_mb']:>9.0f}", flush=True)
    return rows


def exponents(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of log(wall) on log(spots) per stage (needs two sizes or more)."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [(r["spots"], r["wall_s"]) for r in rows if r["stage"] == stage and r["wall_s"] > 0]
        if len({p[0] for p in pts}) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[stage] = float(np.polyfit(x, y, 1)[0])
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spots", default="10000,30000,100000")
    parser.add_argument("--genes", type=int, default=18000)
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--image-px", type=int, default=20000)
    parser.add_argument("--patch-px", type=int, default=32)
    parser.add_argument("--input-px", type=int, default=32, help="frozen-encoder input size of ridge/knn")
    parser.add_argument("--hvg", type=int, default=1000, help="HVG genes per slide")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    args.commands = [c for c in args.commands.split(",") if c]
    rows: list[dict] = []
    print(f"{'spots':>8} {'stage':<14} {'wall s':>9} {'peak MB':>9}")
    with tempfile.TemporaryDirectory(prefix="stbench-scale-") as tmp:
        for n in (int(s) for s in args.spots.split(",")):
            rows += measure(n, args, Path(tmp))
    fitted = exponents(rows)
    if fitted:
        print("fitted exponent b (wall ~ spots^b): " + ", ".join(f"{k} {v:.2f}" for k, v in fitted.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "exponents": fitted}, indent=1))
    return rows


if __name__ == "__main__":
    main()
