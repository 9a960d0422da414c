#!/usr/bin/env python
"""Write the committed Visium HD fixture (real her2st pixels and counts in Space Ranger 3's binned layout).

    python tests/data/make_hd_fixture.py [--shared /work/shared/data] [--out tests/data]

The full data folder defaults to ``$STBENCH_TEST_DATA``, else ``<repo>/../shared/data`` (its ``her2st/``
folder, as for make_fixtures.py). Deterministic: the same inputs give the same files. It writes
``<out>/visium_hd/`` and the ``[visium_hd_mini]`` section of ``<out>/fixtures.toml`` (replaced in place;
make_fixtures.py keeps it when it rewrites the other sections).

Two slides, one per her2st section (``HD`` below): ``hd_C2`` as a raw ``spaceranger count`` run
(``hd_C2/outs/binned_outputs/...``) and ``hd_C3`` as its ``outs/`` contents copied
(``hd_C3/binned_outputs/...``), each with

- ``<slide>_tissue_image.tif``: the full-resolution microscope image (params ``image``): a window of the
  section's full-resolution H&E (real pixels at the section's own ~0.69 um/px, stored as a tiled TIFF with
  JPEG tiles at quality ``TIFF_QUALITY``, as microscope images come), ``MARGIN_PX`` around the bin grid;
- ``binned_outputs/square_016um/`` and ``square_008um/``: a square bin grid of ``GRID_16`` 16 um bins
  (twice as many rows and columns of 8 um bins, each 16 um bin the union of 2 x 2 of them), rotated by
  ``ROTATION`` against the image as a capture area is; array rows/columns start at ``ROW0``/``COL0`` (16 um;
  doubled at 8 um), barcodes as Space Ranger 3 names them (``s_016um_00200_00150-1``). An 8 um bin is
  ``in_tissue`` when at least ``TISSUE_FRACTION`` of its pixels are darker than ``TISSUE_GRAY`` and a selected
  her2st spot lies within one ST pitch (200 um); a 16 um bin when any of its four 8 um bins is.
  Counts: each in-tissue 8 um bin takes the real count row of the nearest her2st spot, thinned by binomial
  sampling with p = bin area / spot area = 64 um^2 / (pi 50^2 um^2) = 0.0081 (a her2st spot's median
  ~8,500 UMIs become ~70 per 8 um bin over all genes, ~30 over the fixture's 1,000); a 16 um bin's counts are the sum of its in-tissue 8 um bins, as Space
  Ranger sums 2 um bins. Genes: the ``HD_GENES`` most counted over the her2st spots used by both slides,
  among those both sections count, in C2's upstream order; ids ``HER2ST`` + the column in C2's count file.
  Each bin folder holds ``filtered_feature_bc_matrix.h5`` (10x HDF5 schema, in-tissue bins, sorted
  barcodes) and ``spatial/`` with ``tissue_positions.parquet`` (every bin; columns barcode: string,
  in_tissue, array_row, array_col: int32, pxl_row_in_fullres, pxl_col_in_fullres: double, row-major
  order), ``scalefactors_json.json`` (``bin_size_um``, ``microns_per_pixel``, ``spot_diameter_fullres`` =
  one bin in pixels, hires/lowres scale factors) and ``tissue_hires_image.png``/``tissue_lowres_image.png``
  (the window downsampled, LANCZOS, to a long side of ``HIRES_LONG``/``LOWRES_LONG`` px).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_fixtures as mf

#: slide -> (her2st section, raw spaceranger run (outs/) or its contents, RNG seed)
HD = {"hd_C2": ("C2", True, 11), "hd_C3": ("C3", False, 12)}
GRID_16 = (12, 14)            # rows x columns of 16 um bins (224 x 192 um)
ROW0, COL0 = 200, 150         # array position of the first 16 um bin
ROTATION = 0.004              # radians
MARGIN_PX = 32                # image border around the grid (>= half a 24 px patch)
TARGET_IN_TISSUE = 0.75       # the window whose 8 um in-tissue fraction is closest: a tissue edge
HD_GENES = 1000
SPOT_AREA_UM2 = math.pi * 50.0 ** 2
TIFF_QUALITY, TIFF_TILE = 90, 128
HIRES_LONG, LOWRES_LONG = 200, 60
VERSION = "spaceranger-3.0.0"
CATALOGUE = "visium_hd_mini"


def bin_centres(bin_um: int, origin: tuple[float, float], um_per_px: float) -> np.ndarray:
    """(rows, cols, 2) full-resolution (x, y) bin centres of the rotated grid whose corner is ``origin``."""
    k = 16 // bin_um
    rows, cols = GRID_16[0] * k, GRID_16[1] * k
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    u, v = (c + 0.5) * bin_um / um_per_px, (r + 0.5) * bin_um / um_per_px
    cos, sin = math.cos(ROTATION), math.sin(ROTATION)
    return np.stack([origin[0] + u * cos - v * sin, origin[1] + u * sin + v * cos], -1)


def dark_integral(gray: np.ndarray) -> np.ndarray:
    """Integral image (zero-padded) of the pixels darker than make_fixtures' TISSUE_GRAY."""
    dark = (gray < mf.TISSUE_GRAY).astype(np.int32)
    out = np.zeros((dark.shape[0] + 1, dark.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(dark, 0), 1, out=out[1:, 1:])
    return out


def tissue_8um(sec: mf.Section, integral: np.ndarray, centres: np.ndarray, um_per_px: float) -> np.ndarray:
    """(rows, cols) index (into ``sec.spots``) of the her2st spot whose counts each 8 um bin takes; -1 for a
    bin off tissue: fewer than TISSUE_FRACTION dark pixels in its square, or no selected spot within 200 um."""
    from scipy.spatial import cKDTree

    half = 4.0 / um_per_px
    xy = centres.reshape(-1, 2)
    x0, x1 = np.round(xy[:, 0] - half).astype(int), np.round(xy[:, 0] + half).astype(int)
    y0, y1 = np.round(xy[:, 1] - half).astype(int), np.round(xy[:, 1] + half).astype(int)
    dark = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    tissue = dark / ((x1 - x0) * (y1 - y0)) >= mf.TISSUE_FRACTION
    dist, nearest = cKDTree(np.array([[s[2], s[3]] for s in sec.spots])).query(xy)
    return np.where(tissue & (dist <= sec.step_px), nearest, -1).reshape(centres.shape[:2])


def choose_window(sec: mf.Section, integral: np.ndarray, um_per_px: float, size: tuple[int, int]):
    """(grid corner (x, y) in the section's pixels, 8 um spot indices): the window centred on a selected spot
    whose in-tissue fraction of 8 um bins is closest to TARGET_IN_TISSUE (ties: the first in (y, x) order)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    best = None
    for x, y, sx, sy, _ in sorted(sec.spots, key=lambda s: (s[1], s[0])):
        corner = (sx - size[0] / 2 + MARGIN_PX, sy - size[1] / 2 + MARGIN_PX)
        if sx - size[0] / 2 < 0 or sy - size[1] / 2 < 0 or sx + size[0] / 2 + 1 > w or sy + size[1] / 2 + 1 > h:
            continue
        cells = tissue_8um(sec, integral, bin_centres(8, corner, um_per_px), um_per_px)
        gap = abs((cells >= 0).mean() - TARGET_IN_TISSUE)
        if best is None or gap < best[0] - 1e-12:
            best = (gap, corner, cells)
    return best[1], best[2]


def choose_genes(sections: dict, used: dict) -> tuple[list[str], list[str]]:
    """(symbols, ids) of the HD_GENES most counted genes over the spots both slides use, among the genes
    both sections count, in C2's upstream order; ids are HER2ST + the column in C2's count file."""
    first = sections["hd_C2"]
    common = set(first.genes).intersection(*(set(s.genes) for s in sections.values()))
    totals: dict[str, int] = dict.fromkeys(common, 0)
    for slide, sec in sections.items():
        col = {g: i for i, g in enumerate(sec.genes)}
        summed = sum(sec.counts_vector(f"{sec.spots[i][0]}x{sec.spots[i][1]}") for i in sorted(used[slide]))
        for g in common:
            totals[g] += int(summed[col[g]])
    order = {g: i for i, g in enumerate(first.genes)}
    top = sorted(common, key=lambda g: (-totals[g], order[g]))[:HD_GENES]
    top.sort(key=order.get)
    return top, [f"HER2ST{order[g] + 1:05d}" for g in top]


def bin_counts(sec: mf.Section, cells: np.ndarray, genes: list[str], seed: int) -> dict[int, np.ndarray]:
    """bin size -> (rows, cols, genes) counts: 8 um bins thinned from their spot's row, 16 um bins summed."""
    col = {g: i for i, g in enumerate(sec.genes)}
    cols = np.array([col[g] for g in genes])
    rng = np.random.default_rng(seed)
    p = 64.0 / SPOT_AREA_UM2
    c8 = np.zeros((*cells.shape, len(genes)), dtype=np.int64)
    for idx in np.ndindex(*cells.shape):
        if cells[idx] >= 0:
            x, y = sec.spots[cells[idx]][:2]
            c8[idx] = rng.binomial(sec.counts_vector(f"{x}x{y}")[cols], p)
    r, c = cells.shape
    c16 = c8.reshape(r // 2, 2, c // 2, 2, -1).sum(axis=(1, 3))
    return {8: c8, 16: c16}


def write_bin_folder(folder: Path, bin_um: int, centres: np.ndarray, in_tissue: np.ndarray, counts: np.ndarray,
                     genes: list[str], ids: list[str], um_per_px: float, window, slide: str) -> int:
    """One ``square_0XXum`` folder; returns its number of in-tissue bins."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    k = 16 // bin_um
    rows, cols = in_tissue.shape
    r, c = np.meshgrid(np.arange(rows) + ROW0 * k, np.arange(cols) + COL0 * k, indexing="ij")
    bcs = np.array([f"s_{bin_um:03d}um_{a:05d}_{b:05d}-1" for a, b in zip(r.ravel(), c.ravel())])
    xy = centres.reshape(-1, 2)
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    table = pa.table({
        "barcode": pa.array(bcs.tolist(), pa.string()),
        "in_tissue": pa.array(in_tissue.ravel().astype(np.int32)),
        "array_row": pa.array(r.ravel().astype(np.int32)), "array_col": pa.array(c.ravel().astype(np.int32)),
        "pxl_row_in_fullres": pa.array(xy[:, 1]), "pxl_col_in_fullres": pa.array(xy[:, 0]),
    })
    pq.write_table(table, spatial / "tissue_positions.parquet")
    keep = np.flatnonzero(in_tissue.ravel())  # row-major = sorted barcodes, as Space Ranger lists them
    mf.write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts.reshape(-1, len(genes))[keep],
                    bcs[keep].tolist(), ids, genes, VERSION, slide, chemistry="Visium HD v1")
    long_side = max(window.size)
    hires_s, lowres_s = HIRES_LONG / long_side, LOWRES_LONG / long_side
    factors = {"spot_diameter_fullres": bin_um / um_per_px, "bin_size_um": float(bin_um),
               "microns_per_pixel": um_per_px, "tissue_lowres_scalef": lowres_s, "tissue_hires_scalef": hires_s}
    mf.write_bytes(spatial / "scalefactors_json.json", (json.dumps(factors, indent=4) + "\n").encode())
    for name, s in (("tissue_hires_image.png", hires_s), ("tissue_lowres_image.png", lowres_s)):
        buf = io.BytesIO()
        window.resize((round(window.size[0] * s), round(window.size[1] * s)), Image.LANCZOS).save(
            buf, "PNG", optimize=True)
        mf.write_bytes(spatial / name, buf.getvalue())
    return len(keep)


def make_hd(shared: Path, out: Path) -> dict:
    """Write ``out`` (the visium_hd folder); returns per-slide facts for the catalogue and the log."""
    import tifffile

    sections = {slide: mf.Section(shared / "her2st", sec) for slide, (sec, _, _) in HD.items()}
    plans = {}
    for slide, sec in sections.items():
        um_per_px = mf.ST_PITCH_UM / sec.step_px
        image = mf.open_full(sec.image).convert("RGB")
        size = tuple(int(math.ceil(n * 16 / um_per_px + 2 * MARGIN_PX + 4)) for n in GRID_16[::-1])
        corner, cells = choose_window(sec, dark_integral(np.asarray(image.convert("L"))), um_per_px, size)
        origin = (int(math.floor(corner[0] - MARGIN_PX)), int(math.floor(corner[1] - MARGIN_PX)))
        window = image.crop((*origin, origin[0] + size[0], origin[1] + size[1]))
        plans[slide] = (um_per_px, (corner[0] - origin[0], corner[1] - origin[1]), cells, window, origin)
    genes, ids = choose_genes(sections, {s: set(p[2][p[2] >= 0].tolist()) for s, p in plans.items()})
    if out.exists():
        shutil.rmtree(out)
    info = {}
    for slide, (um_per_px, corner, cells, window, origin) in plans.items():
        section, raw_run, seed = HD[slide]
        base = out / slide / ("outs" if raw_run else "")
        counts = bin_counts(sections[slide], cells, genes, seed)
        r, c = cells.shape
        tissue = {8: cells >= 0, 16: (cells >= 0).reshape(r // 2, 2, c // 2, 2).any(axis=(1, 3))}
        info[slide] = {"section": section, "origin": origin, "size": window.size, "um_per_px": um_per_px}
        for bin_um in (16, 8):
            n = write_bin_folder(base / "binned_outputs" / f"square_{bin_um:03d}um", bin_um,
                                 bin_centres(bin_um, corner, um_per_px), tissue[bin_um], counts[bin_um], genes, ids,
                                 um_per_px, window, slide)
            info[slide][bin_um] = (tissue[bin_um].size, n, int(counts[bin_um][tissue[bin_um]].sum(-1).mean()))
        tifffile.imwrite(out / slide / f"{slide}_tissue_image.tif", np.asarray(window), photometric="rgb",
                         tile=(TIFF_TILE, TIFF_TILE), compression="jpeg", compressionargs={"level": TIFF_QUALITY},
                         metadata=None)
    return info


def catalogue_section(out: Path, info: dict) -> str:
    """The ``[visium_hd_mini]`` table (sizes and sha256 of the files under ``out/visium_hd``)."""
    slides = sorted(HD)
    root = out / "visium_hd"
    return (
        f"\n[{CATALOGUE}]\n"
        "# written by tests/data/make_hd_fixture.py (do not edit by hand); mirror: tests/data/visium_hd\n"
        'description = "Visium HD (Space Ranger 3 binned_outputs; 16 um bins, 8 um beside them) with real her2st '
        'pixels and binomially thinned real counts (test fixture); 24 px patches = 16.6 um at 0.69 um/px"\n'
        'reader = "visium-hd"\n'
        f"slides = {json.dumps(slides)}\n"
        f'query = ["{slides[-1]}"]\n'
        'split = "all"\n'
        'genes = { set = "hvg", n_per_slide = 100 }\n'
        "patients = { " + ", ".join(f'{s} = "C"' for s in slides) + " }\n"
        "harmony = false\n"
        "patch_px = 24\n"
        f'root = "{CATALOGUE}"\n'
        f'base_url = "{mf.PLACEHOLDER_BASE}visium_hd/"\n'
        'params = { bin_um = 16, image = "{slide}/{slide}_tissue_image.tif" }\n'
        "expected_spots = { " + ", ".join(f"{s} = {info[s][16][1]}" for s in slides) + " }\n"
        + mf.sources_toml(root, [root]))


def write_section(catalogue: Path, section: str) -> None:
    """Replace (or append) the ``[visium_hd_mini]`` section of ``catalogue``."""
    text = catalogue.read_text() if catalogue.is_file() else ""
    old = mf.hd_section_of(text)
    text = text.replace(old, "") if old else text
    mf.write_bytes(catalogue, (text.rstrip("\n") + "\n" + section).encode())


def main(argv: list[str] | None = None) -> int:
    default = os.environ.get("STBENCH_TEST_DATA") or str(mf.REPO.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=default, help=f"full data folder (default: {default})")
    ap.add_argument("--out", default=str(HERE), help="where to write visium_hd/ and fixtures.toml (default: tests/data)")
    args = ap.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    if not (shared / "her2st" / "ST-cnts").is_dir():
        print(f"make_hd_fixture: {shared} holds no her2st/ folder; pass --shared", file=sys.stderr)
        return 2
    info = make_hd(shared, out / "visium_hd")
    write_section(out / "fixtures.toml", catalogue_section(out, info))
    for slide, i in info.items():
        print(f"{slide}: {i['section']} window {i['size'][0]} x {i['size'][1]} px at {i['origin']}, "
              f"{i['um_per_px']:.4f} um/px; " + "; ".join(
                  f"{b} um: {i[b][0]} bins, {i[b][1]} in tissue, {i[b][2]} UMIs per bin" for b in (16, 8)))
    total = sum(p.stat().st_size for p in (out / "visium_hd").rglob("*") if p.is_file())
    print(f"visium_hd: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
