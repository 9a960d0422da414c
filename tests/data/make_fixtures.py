#!/usr/bin/env python
"""Cut the committed test fixtures (a few MB of REAL data) from the full data folder.

    python tests/data/make_fixtures.py [--shared /work/shared/data]

The full data folder defaults to ``$STBENCH_TEST_DATA``, else ``<repo>/../shared/data``; it holds
``her2st/`` (the ``data/`` folder of github.com/almaan/her2st, patient C, sections C2-C6). The script is
deterministic: run again on the same inputs it writes the same bytes (and, whatever the encoder
versions, a catalogue whose sha256 values match the files it wrote). It writes, under ``tests/data/``:

``her2st_mini/`` -- the her2st layout exactly as upstream, sections C2-C6, each cut to the densest
    window of ``WINDOW_X x WINDOW_Y`` array positions (the most selected spots; ties: smallest y, then x):
    ``ST-imgs/C/<S>/<upstream name>.jpg`` is the full-resolution crop around those spots (real pixels at
    native resolution, a margin of at least ``MARGIN_PX`` so that a 256 px patch around every spot lies
    inside; the origin on the 16 px JPEG block grid, re-encoded with the upstream file's own quantisation
    tables and chroma subsampling, so the crop keeps the upstream quality: pixels change by about
    0.1/255 on average); ``ST-spotfiles/<S>_selection.tsv`` keeps every column
    (x y new_x new_y pixel_x pixel_y selected) of those spots, pixel_x/pixel_y shifted by the crop origin
    (exact decimal arithmetic on the upstream text); ``ST-cnts/<S>.tsv.gz`` keeps the real count rows of
    those spots (upstream row and column order, first header cell empty, rows ``{x}x{y}``) and the genes
    counted in at least one kept spot of any section. ``MANIFEST.tsv``: path, bytes, sha256.

``visium_sr1/`` (Space Ranger 1.x layout) and ``visium_sr2/`` (Space Ranger 2.x layout) -- Visium
    slides with real pixels and real counts, built from a her2st section (``VISIUM`` below says which):
    a window of the full-resolution H&E is the (absent) full-resolution image; a Visium hexagonal grid at
    100 um centre to centre (the section's own um/px, from its 200 um ST pitch; slightly rotated) covers
    it; a spot is ``in_tissue`` when its 55 um disk is at least 20% tissue (pixels darker than the
    background) and a selected her2st spot lies within 200 um; it takes the real count row of the
    nearest one (rows repeat: about four Visium spots per ST spot); off-tissue spots are in the
    positions file only, as in Space Ranger's filtered matrix. The window is the one whose in-tissue
    fraction is closest to ``VISIUM_IN_TISSUE`` (a tissue edge). ``spatial/tissue_hires_image.png`` and
    ``tissue_lowres_image.png`` are the window downsampled (LANCZOS) so that its long side is
    ``hires_long``/``lowres_long`` px, with ``tissue_hires_scalef``/``tissue_lowres_scalef`` =
    long side / window long side, as Space Ranger defines them; ``spot_diameter_fullres`` is 65 um and
    ``fiducial_diameter_fullres`` 105 um in the section's pixels (Space Ranger's convention). Barcodes are
    Visium-style (16 nt + ``-1``, seeded); gene names are the her2st symbols, gene ids placeholders
    (``HER2ST`` + the column index in the upstream count file: her2st publishes symbols only); the
    genes are the ``VISIUM_GENES`` most counted in the slide, in upstream order.
    1.x: ``filtered_feature_bc_matrix.h5`` (10x HDF5 schema, CSC features x barcodes) and a headerless
    ``spatial/tissue_positions_list.csv``;
    2.x: ``filtered_feature_bc_matrix/{barcodes.tsv.gz, features.tsv.gz, matrix.mtx.gz}`` and
    ``spatial/tissue_positions.csv`` with a header.

``fixtures.toml`` -- a catalogue (schema of stbench/datasets.toml) declaring ``her2st_mini_HVG``,
    ``her2st_mini_HEG`` (mirror: ``tests/data/her2st_mini``) and ``visium_mini`` (mirror: ``tests/data``),
    with the size and sha256 of every file, so ``stbench --catalog tests/data/fixtures.toml fetch
    her2st_mini_HVG --mirror tests/data/her2st_mini`` verifies them. Its ``visium_hd_mini`` section (the
    Visium HD fixture in ``visium_hd/``) is written by make_hd_fixture.py and kept as it is here.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SLIDES = ("C2", "C3", "C4", "C5", "C6")
WINDOW_X, WINDOW_Y = 6, 5        # array positions (x columns, y rows) per her2st_mini section
MARGIN_PX = 136                  # >= 128: a 256 px patch around every spot lies inside the crop
MCU_PX = 16                      # crop origins on the 4:2:0 JPEG block grid: re-encoding with the
                                 # upstream quantisation tables then changes pixels by ~0.1/255 only
ST_PITCH_UM = 200.0
VISIUM_PITCH_UM = 100.0
VISIUM_IN_TISSUE = 0.75
TISSUE_GRAY, TISSUE_FRACTION = 210, 0.2
VISIUM_ROTATION = 0.005          # radians: capture areas are never perfectly aligned with the scan
#: name -> (source section, window width, height (full-resolution px), hires long side, lowres long
#: side, first array_row, first array_col, barcode seed, Space Ranger version)
VISIUM = {
    "visium_sr1": ("C5", 1300, 1150, 272, 82, 20, 30, 1, "spaceranger-1.0.0"),
    "visium_sr2": ("C6", 1250, 1200, 250, 75, 41, 64, 2, "spaceranger-2.0.0"),
}
SPOT_DIAMETER_UM = 65.0          # Space Ranger's spot_diameter_fullres is 65 um (55 um spot + margin)
FIDUCIAL_DIAMETER_UM = 105.0
VISIUM_GENES = 3000              # the most counted genes of the slide (a panel subset, like the 100 genes
                                 # of the shared Space Ranger sample); keeps the mtx file small
PLACEHOLDER_BASE = "https://example.invalid/stbench-test-fixtures/"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def open_full(path: Path):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # 92 Mpx her2st scans
    return Image.open(path)


# ----------------------------------------------------------------------------------- her2st input


class Section:
    """One upstream her2st section: spot-file text, count table text, image path."""

    def __init__(self, root: Path, slide: str):
        self.slide = slide
        self.spot_text = (root / "ST-spotfiles" / f"{slide}_selection.tsv").read_text()
        lines = self.spot_text.splitlines()
        self.spot_header = lines[0].split("\t")
        self.spot_rows = [line.split("\t") for line in lines[1:] if line.strip()]
        col = {c: i for i, c in enumerate(self.spot_header)}
        self.col = col
        cnt = gzip.decompress((root / "ST-cnts" / f"{slide}.tsv.gz").read_bytes()).decode()
        clines = [line for line in cnt.splitlines() if line.strip()]
        self.genes = clines[0].split("\t")[1:]
        self.count_rows = {}
        for line in clines[1:]:
            spot, _, rest = line.partition("\t")
            self.count_rows[spot.strip()] = rest.split("\t")
        (self.image,) = sorted((root / "ST-imgs" / "C" / slide).glob("*.jpg"))
        # selected spot-file rows that have counts, in spot-file order
        self.spots = []
        for r in self.spot_rows:
            x, y = int(round(float(r[col["x"]]))), int(round(float(r[col["y"]])))
            if int(float(r[col["selected"]])) == 1 and f"{x}x{y}" in self.count_rows:
                self.spots.append((x, y, float(r[col["pixel_x"]]), float(r[col["pixel_y"]]), r))
        self.step_px = self._st_step()

    def _st_step(self) -> float:
        """Median pixel distance of neighbours one x apart on the same y (= 200 um)."""
        pos = {(x, y): (px, py) for x, y, px, py, _ in self.spots}
        d = [math.hypot(pos[(x + 1, y)][0] - px, pos[(x + 1, y)][1] - py) for (x, y), (px, py) in pos.items()
             if (x + 1, y) in pos]
        return float(np.median(d))

    def counts_vector(self, spot: str) -> np.ndarray:
        return np.array([int(v) for v in self.count_rows[spot]], dtype=np.int64)


def densest_window(sec: Section) -> list[tuple]:
    xs = [s[0] for s in sec.spots]
    ys = [s[1] for s in sec.spots]
    best = None
    for y0 in range(min(ys), max(ys) + 1):
        for x0 in range(min(xs), max(xs) + 1):
            inside = [s for s in sec.spots if x0 <= s[0] < x0 + WINDOW_X and y0 <= s[1] < y0 + WINDOW_Y]
            if best is None or len(inside) > len(best):
                best = inside
    return best


def shifted(text: str, origin: int) -> str:
    """Upstream decimal text minus an integer, keeping the upstream number of decimals."""
    return str(Decimal(text.strip()) - origin)


def make_her2st_mini(shared: Path, out: Path) -> dict:
    from PIL import JpegImagePlugin

    src = shared / "her2st"
    sections = {s: Section(src, s) for s in SLIDES}
    windows = {s: densest_window(sec) for s, sec in sections.items()}
    kept_ids = {s: [f"{x}x{y}" for x, y, *_ in w] for s, w in windows.items()}
    counted: set[str] = set()
    for s, sec in sections.items():
        for spot in kept_ids[s]:
            counted |= {g for g, v in zip(sec.genes, sec.count_rows[spot]) if int(v) != 0}
    if out.exists():
        shutil.rmtree(out)
    info = {}
    for s, sec in sections.items():
        win = windows[s]
        px = np.array([w[2] for w in win])
        py = np.array([w[3] for w in win])
        im = open_full(sec.image)
        W, H = im.size
        ox = int(math.floor((px.min() - MARGIN_PX) / MCU_PX)) * MCU_PX
        oy = int(math.floor((py.min() - MARGIN_PX) / MCU_PX)) * MCU_PX
        x1, y1 = int(math.ceil(px.max() + MARGIN_PX)), int(math.ceil(py.max() + MARGIN_PX))
        if ox < 0 or oy < 0 or x1 > W or y1 > H:
            raise SystemExit(f"{s}: the window {ox},{oy}-{x1},{y1} leaves the {W} x {H} image")
        crop = im.convert("RGB").crop((ox, oy, x1, y1))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", qtables=im.quantization, subsampling=JpegImagePlugin.get_sampling(im),
                  optimize=True)
        write_bytes(out / "ST-imgs" / "C" / s / sec.image.name, buf.getvalue())
        # spot file: kept rows in upstream order, every column, pixel_x/pixel_y shifted
        keep = {id(w[4]) for w in win}
        cx, cy = sec.col["pixel_x"], sec.col["pixel_y"]
        rows = []
        for r in sec.spot_rows:
            if id(r) in keep:
                r = list(r)
                r[cx], r[cy] = shifted(r[cx], ox), shifted(r[cy], oy)
                rows.append("\t".join(r))
        write_bytes(out / "ST-spotfiles" / f"{s}_selection.tsv",
                    ("\t".join(sec.spot_header) + "\n" + "\n".join(rows) + "\n").encode())
        # counts: kept rows in upstream order, genes counted somewhere in the fixture
        gi = [i for i, g in enumerate(sec.genes) if g in counted]
        wanted = set(kept_ids[s])
        lines = ["\t" + "\t".join(sec.genes[i] for i in gi)]
        for spot, vals in sec.count_rows.items():
            if spot in wanted:
                lines.append(spot + "\t" + "\t".join(vals[i] for i in gi))
        write_bytes(out / "ST-cnts" / f"{s}.tsv.gz", gz(("\n".join(lines) + "\n").encode()))
        info[s] = {"spots": len(win), "genes": len(gi), "origin": (ox, oy), "size": crop.size,
                   "um_per_px": ST_PITCH_UM / sec.step_px}
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = ["path\tbytes\tsha256"] + [f"{p.relative_to(out).as_posix()}\t{p.stat().st_size}\t{sha256(p)}"
                                         for p in files]
    write_bytes(out / "MANIFEST.tsv", ("\n".join(manifest) + "\n").encode())
    return info


# ----------------------------------------------------------------------------------------- Visium


def visium_grid(w: int, h: int, pitch: float, row0: int, col0: int) -> list[tuple[int, int, float, float]]:
    """(array_row, array_col, x, y) of a hexagonal Visium grid over a w x h window, centres at least
    MARGIN_PX - 6 px from every edge (so full-resolution 256 px patches would fit too)."""
    dx, dy = pitch / 2, pitch * math.sqrt(3) / 2
    m = MARGIN_PX - 6
    cx, cy = w / 2, h / 2
    cos, sin = math.cos(VISIUM_ROTATION), math.sin(VISIUM_ROTATION)
    spots = []
    for r in range(int((h - 2 * m) / dy) + 3):
        for c in range(int((w - 2 * m) / dx) + 3):
            if (row0 + r + col0 + c) % 2:  # Visium addressing: array_row + array_col is even
                continue
            u, v = m + c * dx - cx, m + r * dy - cy
            x, y = cx + u * cos - v * sin, cy + u * sin + v * cos
            if m <= x <= w - m and m <= y <= h - m:
                spots.append((row0 + r, col0 + c, x, y))
    return spots


def tissue_cells(sec: Section, grid, ox: int, oy: int, rgb: np.ndarray, radius: float) -> list[str | None]:
    """For each grid spot, the her2st spot whose counts it takes, or None when off tissue.

    In tissue (as Space Ranger's image-based detection would say): at least ``TISSUE_FRACTION`` of the
    pixels of the spot's 55 um disk are darker than ``TISSUE_GRAY`` (background is ~225-230), and a
    selected her2st spot lies within one ST pitch (200 um); the nearest one gives the counts.
    """
    xy = np.array([[s[2], s[3]] for s in sec.spots])
    ids = [f"{s[0]}x{s[1]}" for s in sec.spots]
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy ** 2 + xx ** 2 <= radius ** 2
    out = []
    for _, _, x, y in grid:
        cx, cy = ox + int(round(x)), oy + int(round(y))
        pixels = rgb[cy - r:cy + r + 1, cx - r:cx + r + 1].astype(np.float32).mean(axis=2)[disk]
        d = np.hypot(xy[:, 0] - (ox + x), xy[:, 1] - (oy + y))
        i = int(np.argmin(d))
        tissue = (pixels < TISSUE_GRAY).mean() >= TISSUE_FRACTION
        out.append(ids[i] if tissue and d[i] <= sec.step_px else None)
    return out


def barcodes(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: list[str] = []
    while len(seen) < n:
        b = "".join(rng.choice("ACGT") for _ in range(16)) + "-1"
        if b not in seen:
            seen.append(b)
    return seen


def write_10x_h5(path: Path, matrix: np.ndarray, bcs: list[str], ids: list[str], names: list[str],
                 version: str, library: str, chemistry: str = "Spatial 3' v1") -> None:
    """Space Ranger's filtered_feature_bc_matrix.h5 (10x HDF5 schema v2: CSC features x barcodes)."""
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(matrix.T.astype(np.int32))  # features x barcodes, one column per barcode
    m.sort_indices()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()

    def strings(values, width=None):
        arr = np.array([v.encode() for v in values])
        return arr.astype(f"S{width or max(1, arr.dtype.itemsize)}")

    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        f.attrs["chemistry_description"] = np.array([chemistry.encode()])
        f.attrs["filetype"] = np.array([b"matrix"])
        f.attrs["library_ids"] = np.array([library.encode()])
        f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        f.attrs["software_version"] = version
        f.attrs["version"] = np.array([2], dtype=np.int64)
        g = f.create_group("matrix")
        kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "track_times": False}
        g.create_dataset("barcodes", data=strings(bcs), **kw)
        g.create_dataset("data", data=m.data.astype(np.int32), **kw)
        g.create_dataset("indices", data=m.indices.astype(np.int64), **kw)
        g.create_dataset("indptr", data=m.indptr.astype(np.int64), **kw)
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32), **kw)
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]), **kw)
        ft.create_dataset("feature_type", data=strings(["Gene Expression"] * len(ids)), **kw)
        ft.create_dataset("genome", data=strings(["GRCh38"] * len(ids)), **kw)
        ft.create_dataset("id", data=strings(ids), **kw)
        ft.create_dataset("name", data=strings(names), **kw)


def write_mtx_folder(folder: Path, matrix: np.ndarray, bcs: list[str], ids: list[str], names: list[str],
                     version: str) -> None:
    """Space Ranger 2.x filtered_feature_bc_matrix/: gzipped MatrixMarket (features x barcodes, 1-based,
    column by column), barcodes.tsv.gz and features.tsv.gz (id, name, feature type)."""
    lines = ["%%MatrixMarket matrix coordinate integer general",
             "%metadata_json: " + json.dumps({"software_version": version, "format_version": 2})]
    nz = [(g + 1, b + 1, int(matrix[b, g])) for b in range(matrix.shape[0]) for g in np.flatnonzero(matrix[b])]
    lines.append(f"{matrix.shape[1]} {matrix.shape[0]} {len(nz)}")
    lines += [f"{g} {b} {v}" for g, b, v in nz]
    write_bytes(folder / "matrix.mtx.gz", gz(("\n".join(lines) + "\n").encode()))
    write_bytes(folder / "barcodes.tsv.gz", gz(("\n".join(bcs) + "\n").encode()))
    write_bytes(folder / "features.tsv.gz",
                gz("".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(ids, names)).encode()))


def make_visium(shared: Path, out_root: Path, name: str) -> dict:
    from PIL import Image

    slide, vw, vh, hires_long, lowres_long, row0, col0, seed, version = VISIUM[name]
    sec = Section(shared / "her2st", slide)
    um_per_px = ST_PITCH_UM / sec.step_px
    pitch = VISIUM_PITCH_UM / um_per_px
    grid = visium_grid(vw, vh, pitch, row0, col0)
    radius = 55.0 / 2 / um_per_px
    rgb = open_full(sec.image).convert("RGB")
    W, H = rgb.size
    pixels = np.asarray(rgb)
    best = None
    for x, y, sx, sy, _ in sorted(sec.spots, key=lambda s: (s[1], s[0])):
        ox, oy = int(round(sx - vw / 2)), int(round(sy - vh / 2))
        if ox < 0 or oy < 0 or ox + vw > W or oy + vh > H:
            continue
        cells = tissue_cells(sec, grid, ox, oy, pixels, radius)
        frac = sum(c is not None for c in cells) / len(cells)
        if best is None or abs(frac - VISIUM_IN_TISSUE) < best[0] - 1e-12:
            best = (abs(frac - VISIUM_IN_TISSUE), ox, oy, cells)
    _, ox, oy, cells = best
    window = rgb.crop((ox, oy, ox + vw, oy + vh))

    bcs = barcodes(len(grid), seed)
    in_tissue = [c is not None for c in cells]
    tissue_bcs = sorted(b for b, t in zip(bcs, in_tissue) if t)  # Space Ranger sorts matrix barcodes
    cell_of = dict(zip(bcs, cells))
    full = np.stack([sec.counts_vector(cell_of[b]) for b in tissue_bcs])
    totals = full.sum(axis=0)
    gi = np.sort(np.lexsort((np.arange(len(totals)), -totals))[:VISIUM_GENES])
    gi = gi[totals[gi] > 0]
    matrix = full[:, gi]
    ids = [f"HER2ST{i + 1:05d}" for i in gi]
    names = [sec.genes[i] for i in gi]

    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    spatial = out / "spatial"
    spatial.mkdir(parents=True)
    # positions: ordered by array_col, then array_row (as Space Ranger lists them); integer pixels
    order = sorted(range(len(grid)), key=lambda i: (grid[i][1], grid[i][0]))
    rows = [f"{bcs[i]},{int(in_tissue[i])},{grid[i][0]},{grid[i][1]},{int(round(grid[i][3]))},"
            f"{int(round(grid[i][2]))}" for i in order]
    long_side = max(vw, vh)
    hires_s, lowres_s = hires_long / long_side, lowres_long / long_side
    if version.startswith("spaceranger-1"):
        write_bytes(spatial / "tissue_positions_list.csv", ("\n".join(rows) + "\n").encode())
        write_10x_h5(out / "filtered_feature_bc_matrix.h5", matrix, tissue_bcs, ids, names, version, name)
    else:
        header = "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"
        write_bytes(spatial / "tissue_positions.csv", (header + "\n" + "\n".join(rows) + "\n").encode())
        write_mtx_folder(out / "filtered_feature_bc_matrix", matrix, tissue_bcs, ids, names, version)
    factors = {"spot_diameter_fullres": SPOT_DIAMETER_UM / um_per_px, "tissue_hires_scalef": hires_s,
               "fiducial_diameter_fullres": FIDUCIAL_DIAMETER_UM / um_per_px, "tissue_lowres_scalef": lowres_s}
    write_bytes(spatial / "scalefactors_json.json", (json.dumps(factors, indent=4) + "\n").encode())
    for fname, s in (("tissue_hires_image.png", hires_s), ("tissue_lowres_image.png", lowres_s)):
        size = (int(round(vw * s)), int(round(vh * s)))
        buf = io.BytesIO()
        window.resize(size, Image.LANCZOS).save(buf, "PNG", optimize=True)
        write_bytes(spatial / fname, buf.getvalue())
    return {"section": slide, "origin": (ox, oy), "window": (vw, vh), "spots": len(grid),
            "in_tissue": len(tissue_bcs), "genes": len(ids), "um_per_px": um_per_px, "pitch_px": pitch,
            "hires_scalef": hires_s, "cells": len({c for c in cells if c})}


# -------------------------------------------------------------------------------------- catalogue


def sources_toml(root: Path, folders: list[Path]) -> str:
    files = sorted(p for f in folders for p in f.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")
    lines = [f'  {{ path = "{p.relative_to(root).as_posix()}", size = {p.stat().st_size}, '
             f'sha256 = "{sha256(p)}" }},' for p in files]
    return "sources = [\n" + "\n".join(lines) + "\n]\n"


def hd_section_of(text: str) -> str:
    """The ``[visium_hd_mini]`` section of a catalogue's text (from its blank line before to the next table),
    or ''."""
    start = text.find("\n[visium_hd_mini]\n")
    if start < 0:
        return ""
    end = text.find("\n[", start + 1)
    return text[start:end if end >= 0 else len(text)]


def kept_hd_section(out: Path) -> str:
    """The ``[visium_hd_mini]`` section of the current catalogue (``out``'s, else tests/data's): it is written by
    make_hd_fixture.py, and kept as it is when this script rewrites the other sections."""
    for path in (out / "fixtures.toml", HERE / "fixtures.toml"):
        if path.is_file():
            return hd_section_of(path.read_text())
    return ""


def write_catalogue(out: Path, her2st_info: dict, visium_info: dict) -> None:
    mini = out / "her2st_mini"
    spots = ", ".join(f"{s} = {her2st_info[s]['spots']}" for s in SLIDES)
    patients = ", ".join(f'{s} = "C"' for s in SLIDES)
    head = (
        "# Test fixtures: small cuts of real data, written by tests/data/make_fixtures.py (do not edit by hand;\n"
        "# rerun the script). Same schema as stbench/datasets.toml. Tests fetch with the mirror, never from\n"
        "# base_url (a placeholder): stbench --catalog tests/data/fixtures.toml fetch her2st_mini_HVG\n"
        "#   --mirror tests/data/her2st_mini;  ... fetch visium_mini --mirror tests/data\n")
    her2st_common = (
        'reader = "st-legacy"\n'
        'slides = ["C2", "C3", "C4", "C5", "C6"]\n'
        'query = ["C4"]\n'
        'split = "all"\n'
        f"patients = {{ {patients} }}\n"
        "harmony = true\n"
        "patch_px = 256\n"
        'root = "her2st_mini"\n'
        f'base_url = "{PLACEHOLDER_BASE}her2st_mini/"\n'
        'citation = "Andersson et al., Spatial deconvolution of HER2-positive breast cancer delineates '
        'tumor-associated cell type interactions, Nat Commun 12, 6012 (2021)"\n'
        'license = "see github.com/almaan/her2st (no licence statement found)"\n'
        f"expected_spots = {{ {spots} }}\n"
        + sources_toml(mini, [mini]))
    text = head
    for suffix, genes, what in (("HVG", '{ set = "hvg", n_per_slide = 100 }', "union of per-section top-100 HVGs"),
                                ("HEG", '{ set = "heg", n_per_slide = 300 }', "union of per-section top-300 expressed genes")):
        text += (f"\n[her2st_mini_{suffix}]\n"
                 f'description = "her2st patient C, sections C2-C6, each cut to its densest {WINDOW_X} x {WINDOW_Y} '
                 f'spots (test fixture); {what}; leave-one-section-out"\n'
                 f"genes = {genes}\n" + her2st_common)
    vis = sorted(visium_info)
    text += (
        "\n[visium_mini]\n"
        'description = "Visium Space Ranger 1.x (visium_sr1) and 2.x (visium_sr2) layouts with real her2st pixels '
        'and counts (test fixture); patches from the hires PNG"\n'
        'reader = "visium"\n'
        f"slides = {json.dumps(vis)}\n"
        f'query = ["{vis[-1]}"]\n'
        'split = "all"\n'
        'genes = { set = "hvg", n_per_slide = 100 }\n'
        "patients = { " + ", ".join(f'{v} = "C"' for v in vis) + " }\n"
        "harmony = false\n"
        "patch_px = 224\n"
        'root = "visium_mini"\n'
        f'base_url = "{PLACEHOLDER_BASE}"\n'
        "expected_spots = { " + ", ".join(f"{v} = {visium_info[v]['in_tissue']}" for v in vis) + " }\n"
        + sources_toml(out, [out / v for v in vis]))
    text += kept_hd_section(out)
    write_bytes(out / "fixtures.toml", text.encode())


def main(argv: list[str] | None = None) -> int:
    default = os.environ.get("STBENCH_TEST_DATA") or str(REPO.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=default, help=f"full data folder (default: {default})")
    ap.add_argument("--out", default=str(HERE), help="where to write (default: tests/data)")
    args = ap.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    if not (shared / "her2st" / "ST-cnts").is_dir():
        print(f"make_fixtures: {shared} holds no her2st/ folder; pass --shared", file=sys.stderr)
        return 2
    info = make_her2st_mini(shared, out / "her2st_mini")
    vinfo = {name: make_visium(shared, out, name) for name in VISIUM}
    write_catalogue(out, info, vinfo)
    for s, i in info.items():
        print(f"her2st_mini {s}: {i['spots']} spots x {i['genes']} genes, crop {i['size'][0]} x {i['size'][1]} px "
              f"at {i['origin']}, {i['um_per_px']:.4f} um/px")
    for name, i in vinfo.items():
        print(f"{name}: from {i['section']} window {i['window']} at {i['origin']}: {i['spots']} spots, "
              f"{i['in_tissue']} in tissue ({i['cells']} ST cells), {i['genes']} genes, pitch {i['pitch_px']:.2f} px, "
              f"hires scale {i['hires_scalef']:.6f}")
    total = sum(p.stat().st_size for d in ["her2st_mini", *VISIUM] for p in (out / d).rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
