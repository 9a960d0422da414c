"""The HDF5 patch cache and the windowed image reader (small synthetic images; real her2st JPEGs)."""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

import stbench.data.patches.build as pc_build
from stbench.errors import DataError
from stbench.data.images import open_image
from stbench.data.patches import (H5Images, PatchSpec, build_patches, cache_root, clear_cache, ensure_patches,
                                 list_cache, open_patches, patch_file, validate_patches, verify_cache)

from conftest import HER2ST_MINI, SHARED_DATA

C2_JPEG = SHARED_DATA / "her2st" / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg"  # 92 Mpx, full data only
C2_MINI_JPEG = HER2ST_MINI / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg"  # committed fixture crop

H, W = 150, 220  # small, non-square, not a multiple of the tile size
P = 32


def gradient(h: int = H, w: int = W) -> np.ndarray:
    """RGB where every pixel's position is recoverable: R = x % 256, G = y % 256, B = block id."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx // 256) * 40 + (yy // 256) * 80 + 7], axis=-1).astype(np.uint8)


def expected_crop(img: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """White-padded numpy crop of side ``side`` with top-left ``round(centre) - side // 2``."""
    pad = side + 2
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
    x0 = int(np.floor(cx + 0.5)) - side // 2 + pad
    y0 = int(np.floor(cy + 0.5)) - side // 2 + pad
    return padded[y0:y0 + side, x0:x0 + side]


# spots: interior, fractional centre, top-left corner, bottom-right corner (both padded)
COORDS = np.array([[100.0, 70.0], [60.4, 40.6], [3.0, 5.0], [W - 2.0, H - 1.0], [150.0, 120.0]])
BARCODES = np.array([f"spot{i}" for i in range(len(COORDS))])
GRID = np.arange(2 * len(COORDS)).reshape(-1, 2)


def build(tmp_path: Path, image: Path, coords=COORDS, barcodes=BARCODES, grid=GRID, spec=PatchSpec(P), **kw) -> Path:
    out = patch_file(tmp_path / "cache", "test/slide", spec)
    return ensure_patches(image, coords, barcodes, grid, out, spec, **kw)


def check_patches(path: Path, img: np.ndarray, coords=COORDS, side: int = P) -> dict:
    d = open_patches(path)
    assert d["images"].shape == (len(coords), side, side, 3)
    for i, (cx, cy) in enumerate(coords):
        np.testing.assert_array_equal(d["images"][i], expected_crop(img, cx, cy, side), err_msg=f"patch {i}")
    return d


# ------------------------------------------------------------------------------ formats


TIFF_WRITERS = {
    "tiled-zlib": lambda p, a: tifffile.imwrite(p, a, tile=(64, 64), compression="zlib"),
    "stripped-zlib": lambda p, a: tifffile.imwrite(p, a, rowsperstrip=16, compression="zlib"),
    "uncompressed-contiguous": lambda p, a: tifffile.imwrite(p, a),
    "bigtiff-tiled": lambda p, a: tifffile.imwrite(p, a, tile=(64, 64), bigtiff=True),
    "big-endian": lambda p, a: tifffile.imwrite(p, a, byteorder=">"),
}


@pytest.mark.parametrize("kind", sorted(TIFF_WRITERS))
def test_tiff_patches_equal_numpy_crops(tmp_path, kind):
    img = gradient()
    path = tmp_path / "img.tif"
    TIFF_WRITERS[kind](path, img)
    d = check_patches(build(tmp_path, path), img)
    assert list(d["barcodes"]) == list(BARCODES)
    np.testing.assert_array_equal(d["coords"], COORDS)
    np.testing.assert_array_equal(d["grid"], GRID)
    assert d["attrs"]["n_padded"] == 2 and d["attrs"]["n_dropped"] == 0
    assert (d["attrs"]["image_height"], d["attrs"]["image_width"]) == (H, W)


def test_pyramid_reads_level_0_of_largest_series(tmp_path):
    img = gradient()
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:  # level 0 + a half-size sub-level
        tw.write(img, tile=(64, 64), subifds=1, compression="zlib")
        tw.write(np.ascontiguousarray(img[::2, ::2]), tile=(64, 64), subfiletype=1)
    multi = tmp_path / "thumb_first.tif"
    with tifffile.TiffWriter(multi) as tw:  # a thumbnail series before the full image
        tw.write(np.ascontiguousarray(img[::4, ::4]), photometric="rgb")
        tw.write(img, tile=(64, 64), photometric="rgb")
    check_patches(build(tmp_path / "a", path), img)
    check_patches(build(tmp_path / "b", multi), img)


def test_png_patches_equal_numpy_crops(tmp_path):
    img = gradient()
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    check_patches(build(tmp_path, path), img)


@pytest.mark.parametrize("layout", ["rgba", "uint16", "gray", "channel-first", "channel-first-tiled", "rgba-png"])
def test_layouts_and_dtypes(tmp_path, layout):
    img = gradient()
    gray = np.repeat(img[:, :, :1], 3, axis=2)
    expected = img
    path = tmp_path / "img.tif"
    if layout == "rgba":
        rgba = np.concatenate([img, np.full((H, W, 1), 9, np.uint8)], axis=2)
        tifffile.imwrite(path, rgba, photometric="rgb", tile=(64, 64))
    elif layout == "uint16":
        tifffile.imwrite(path, img.astype(np.uint16) * 257, photometric="rgb")  # 255 * 257 = 65535
    elif layout == "gray":
        tifffile.imwrite(path, img[:, :, 0], tile=(64, 64))
        expected = gray
    elif layout == "channel-first":
        tifffile.imwrite(path, np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="rgb", planarconfig="separate")
    elif layout == "channel-first-tiled":
        tifffile.imwrite(path, np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="minisblack",
                         tile=(64, 64), compression="zlib")
    elif layout == "rgba-png":
        path = tmp_path / "img.png"
        Image.fromarray(np.concatenate([img, np.full((H, W, 1), 9, np.uint8)], axis=2), "RGBA").save(path)
    check_patches(build(tmp_path, path), expected)


def test_uint16_scaled_by_dtype_max(tmp_path):
    path = tmp_path / "u16.tif"
    a = np.zeros((8, 8, 3), np.uint16)
    a[0, 0] = (65535, 32768, 257)
    a[0, 1] = (65280, 4095, 0)  # 65280 * 255 / 65535 = 254 (a plain >> 8 would give 255)
    tifffile.imwrite(path, a, photometric="rgb")
    with open_image(path) as src:
        px = src.read(0, 1, 0, 2)[0]
        assert tuple(px[0]) == (255, 128, 1) and tuple(px[1]) == (254, 16, 0)


def test_reader_pads_white_outside(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    with open_image(path) as src:
        assert src.shape == (H, W)
        win = src.read(-3, 5, W - 2, W + 4)
        assert win.shape == (8, 6, 3) and win.dtype == np.uint8
        np.testing.assert_array_equal(win[3:, :2], img[0:5, W - 2:W])
        assert (win[:3] == 255).all() and (win[:, 2:] == 255).all()
        assert (src.read(H + 10, H + 20, 0, 4) == 255).all()


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_truncated_image_raises_dataerror(tmp_path, suffix):
    img = gradient()
    good = tmp_path / f"good{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(good, img, tile=(64, 64), compression="zlib")
    else:
        Image.fromarray(img).save(good)
    bad = tmp_path / f"bad{suffix}"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*bad.*re-download"):
        build(tmp_path, bad)
    assert not any((tmp_path / "cache").rglob("*.h5"))


# ------------------------------------------------------------------------ spots and geometry


def test_border_padding_and_outside_spots(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    coords = np.array([[0.0, 0.0], [W + 5.0, 10.0], [50.0, -1.0], [50.0, 50.0], [float("nan"), 3.0]])
    barcodes = np.array(["corner", "right", "above", "inside", "nan"])
    out = build(tmp_path, path, coords=coords, barcodes=barcodes, grid=np.zeros((5, 2), int))
    d = open_patches(out)
    assert list(d["barcodes"]) == ["corner", "inside"]
    assert d["attrs"]["n_spots_in"] == 5 and d["attrs"]["n_kept"] == 2
    assert d["attrs"]["n_dropped"] == 3 and sorted(d["dropped_barcodes"]) == ["above", "nan", "right"]
    assert d["attrs"]["n_padded"] == 1
    corner = d["images"][0]
    assert (corner[: P // 2] == 255).all() and (corner[:, : P // 2] == 255).all()
    np.testing.assert_array_equal(corner[P // 2:, P // 2:], img[: P // 2, : P // 2])


def test_all_spots_outside_is_dataerror(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(gradient()).save(path)
    with pytest.raises(DataError, match="none of the 2 spots lies inside image"):
        build(tmp_path, path, coords=np.array([[-50.0, 5.0], [5.0, H + 50.0]]), barcodes=np.array(["a", "b"]),
              grid=np.zeros((2, 2), int))
    assert not (tmp_path / "cache" / "patches" / "test" / "slide" / f"{P}px-native.h5").exists()


def test_resampling_to_target_pixel_size(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    spec = PatchSpec(P, target_um_per_px=1.0)  # source 0.5 um/px: crop 64 px, shrink to 32
    d = open_patches(build(tmp_path, path, spec=spec, source_um_per_px=0.5))
    assert d["images"].shape == (len(COORDS), P, P, 3)
    assert d["attrs"]["crop_px"] == 64 and d["attrs"]["target_um_per_px"] == 1.0
    crop = expected_crop(img, *COORDS[0], 64)
    want = np.asarray(Image.fromarray(crop).resize((P, P), Image.BILINEAR))
    np.testing.assert_array_equal(d["images"][0], want)
    # the red channel is x: a 2x shrink makes it step by about 2 per output pixel
    assert 1.8 < np.diff(d["images"][0][P // 2, :, 0].astype(float)).mean() < 2.2
    with pytest.raises(DataError, match="pixel size is unknown"):
        build(tmp_path / "x", path, spec=spec)


def test_image_scale_crops_at_scaled_coordinates(tmp_path):
    full = gradient(2 * H, 2 * W)
    half = np.ascontiguousarray(full[::2, ::2])
    path = tmp_path / "hires.png"
    Image.fromarray(half).save(path)
    coords_full = COORDS * 2  # full-resolution coordinates
    d = open_patches(build(tmp_path, path, coords=coords_full, image_scale=0.5))
    assert d["attrs"]["crop_px"] == P // 2 and d["attrs"]["image_scale"] == 0.5
    np.testing.assert_array_equal(d["coords"], coords_full)
    for i, (cx, cy) in enumerate(COORDS):
        crop = expected_crop(half, cx, cy, P // 2)
        want = np.asarray(Image.fromarray(crop).resize((P, P), Image.BILINEAR))
        np.testing.assert_array_equal(d["images"][i], want)


def test_many_bands_give_the_same_patches(tmp_path, monkeypatch):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib")
    rng = np.random.default_rng(0)
    coords = np.column_stack([rng.uniform(-2, W + 1, 60), rng.uniform(-2, H + 1, 60)])
    bcs = np.array([f"b{i}" for i in range(60)])
    reads = []
    real_open = pc_build.open_image

    def counting_open(p):
        src = real_open(p)
        real_read = src.read
        src.read = lambda *a: reads.append(a) or real_read(*a)
        return src

    monkeypatch.setattr(pc_build, "open_image", counting_open)
    monkeypatch.setattr(pc_build, "BAND_BYTES", 3 * W * 40)  # less than one 64-row tile row per band
    bands = []
    d = open_patches(build(tmp_path, path, coords=coords, barcodes=bcs, grid=np.zeros((60, 2), int),
                           progress=lambda task, done, total=None, **kw: bands.append(done)))
    assert len(bands) > 3 and bands[-1] == d["attrs"]["n_kept"]
    # every row is read once, in pieces that end on tile rows (each tile decoded once)
    rows = sorted((y0, y1) for y0, y1, _, _ in reads)
    assert all(b[0] >= a[1] for a, b in zip(rows, rows[1:]))
    assert all(y1 % 64 == 0 for _, y1 in rows) and sum(y1 - y0 for y0, y1 in rows) <= H + 2 * P + 64
    keep = (np.floor(coords + 0.5) >= 0).all(1) & (np.floor(coords[:, 0] + 0.5) < W) & (np.floor(coords[:, 1] + 0.5) < H)
    assert list(d["barcodes"]) == list(bcs[keep])
    check_patches(Path(d["images"].path), img, coords=coords[keep])


# ------------------------------------------------------------------- atomicity, lock, validation


def test_interrupted_build_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, gradient(), tile=(64, 64))
    monkeypatch.setattr(pc_build, "BAND_BYTES", 1)  # one band per crop row
    written = []

    def fail_after_two(task, completed, total=None, **info):
        written.append(completed)
        if completed >= 2:
            raise RuntimeError("simulated crash")

    out = patch_file(tmp_path / "cache", "test/slide", PatchSpec(P))
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_patches(path, COORDS, BARCODES, GRID, out, PatchSpec(P), progress=fail_after_two)
    assert max(written) >= 2
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")] == []
    # a build killed outright (no exception handling) leaves its temporary file: the next
    # ensure_patches, holding the lock, removes it and builds the file
    killed = out.parent / f".{out.name}.k1ll3d00.tmp"
    killed.write_bytes(b"partial")
    ensure_patches(path, COORDS, BARCODES, GRID, out, PatchSpec(P))
    assert validate_patches(out) is None and not killed.exists()


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, gradient(), tile=(64, 64))
    calls = []
    real_build = pc_build._build

    def slow_build(*a, **kw):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        return real_build(*a, **kw)

    monkeypatch.setattr(pc_build, "_build", slow_build)
    results, errors = [], []

    def worker():
        try:
            results.append(build(tmp_path, path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1
    assert validate_patches(results[0]) is None


def _rebuilds(tmp_path, path, caplog, monkeypatch, **kw) -> tuple[int, str]:
    calls = []
    real_build = pc_build._build
    monkeypatch.setattr(pc_build, "_build", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stbench"):
        build(tmp_path, path, **kw)
    monkeypatch.setattr(pc_build, "_build", real_build)
    return len(calls), " ".join(r.getMessage() for r in caplog.records if r.name == "stbench")


def test_valid_file_is_reused_and_damaged_files_rebuilt(tmp_path, caplog, monkeypatch):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    out = build(tmp_path, path)
    assert _rebuilds(tmp_path, path, caplog, monkeypatch) == (0, "")

    # truncated / corrupt file
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    assert validate_patches(out).startswith("unreadable")
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch)
    assert n == 1 and f"rebuilding {out}: unreadable" in msg
    check_patches(out, img)

    # garbage bytes
    out.write_bytes(b"not an hdf5 file at all" * 10)
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch)
    assert n == 1 and "unreadable" in msg

    # incomplete: the complete flag is missing
    with h5py.File(out, "a") as f:
        del f.attrs["complete"]
    assert validate_patches(out) == "incomplete"
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch)
    assert n == 1 and f"rebuilding {out}: incomplete" in msg

    # a dataset of the wrong length
    with h5py.File(out, "a") as f:
        del f["grid"]
        f["grid"] = np.zeros((2, 2), np.int64)
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch)
    assert n == 1 and "grid shape" in msg

    # a changed spot table
    changed = BARCODES.copy()
    changed[1] = "renamed"
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch, barcodes=changed)
    assert n == 1 and "attrs barcodes_sha256" in msg
    assert list(open_patches(out)["barcodes"]) == list(changed)
    n, _ = _rebuilds(tmp_path, path, caplog, monkeypatch, barcodes=changed, coords=COORDS + [[0.0, 1.0]])
    assert n == 1

    # a changed reader version, and a changed source image
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch, barcodes=changed, coords=COORDS + [[0.0, 1.0]],
                       reader_version="2")
    assert n == 1 and "attrs reader_version" in msg
    assert validate_patches(out, {"patch_px": 256}) == f"attrs patch_px {P} != 256"
    tifffile.imwrite(path, img[:, ::-1].copy(), tile=(64, 64), compression="zlib")
    n, msg = _rebuilds(tmp_path, path, caplog, monkeypatch, barcodes=changed, coords=COORDS + [[0.0, 1.0]],
                       reader_version="2")
    assert n == 1 and "attrs source_" in msg


def test_corrupted_chunk_fails_checksum(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, gradient(), tile=(64, 64))
    out = build(tmp_path, path)
    with h5py.File(out, "r") as f:
        offset = f["images"].id.get_chunk_info(len(COORDS) - 1).byte_offset
    raw = bytearray(out.read_bytes())
    raw[offset + 20] ^= 0xFF  # flip bits inside the last patch's compressed chunk
    out.write_bytes(bytes(raw))
    assert validate_patches(out).startswith("unreadable")


# ------------------------------------------------------------------------------ H5Images


def test_h5images_indexing(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    images = open_patches(build(tmp_path, path))["images"]
    every = np.stack([expected_crop(img, cx, cy, P) for cx, cy in COORDS])
    assert isinstance(images, H5Images)
    assert images.shape == every.shape and images.dtype == np.uint8 and len(images) == len(COORDS)
    assert images.ndim == 4
    np.testing.assert_array_equal(images[2], every[2])
    np.testing.assert_array_equal(images[-1], every[-1])
    np.testing.assert_array_equal(images[1:4], every[1:4])
    np.testing.assert_array_equal(images[::-2], every[::-2])
    order = np.array([3, 0, 4, 0, 1])  # unsorted, with a repeat
    np.testing.assert_array_equal(images[order], every[order])
    np.testing.assert_array_equal(images[[4, -5]], every[[4, 0]])
    np.testing.assert_array_equal(images[np.array([True, False, True, False, True])], every[[0, 2, 4]])
    np.testing.assert_array_equal(images[[2, 1], :4, :4, 0], every[[2, 1], :4, :4, 0])
    np.testing.assert_array_equal(np.asarray(images), every)
    assert images[np.array([], dtype=int)].shape == (0, P, P, 3)
    with pytest.raises(IndexError):
        images[len(COORDS)]
    with pytest.raises(IndexError):
        images[[0, 99]]
    images._pid = -1  # as after a fork: the handle must be reopened, not reused
    np.testing.assert_array_equal(images[order], every[order])
    assert images._pid == os.getpid()
    images.close()
    np.testing.assert_array_equal(images[0], every[0])


def test_h5images_pickles_and_reads_in_another_process(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    images = open_patches(build(tmp_path, path))["images"]
    images[0]  # open the file in this process first
    blob = pickle.dumps(images)
    assert len(blob) < 2000  # the path, not the pixels
    code = ("import pickle, sys, numpy as np; im = pickle.loads(sys.stdin.buffer.read()); "
            "a = im[np.array([4, 1, 3])]; sys.stdout.write(f'{a.shape} {int(a.astype(np.int64).sum())}')")
    res = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()
    want = images[np.array([4, 1, 3])]
    assert res.stdout.decode() == f"{want.shape} {int(want.astype(np.int64).sum())}"
    np.testing.assert_array_equal(pickle.loads(blob)[[1, 0]], images[[1, 0]])


def test_slidepatches_accepts_h5images(tmp_path):
    from stbench.slide import SlidePatches

    path = tmp_path / "img.tif"
    tifffile.imwrite(path, gradient(), tile=(64, 64))
    d = open_patches(build(tmp_path, path))
    slide = SlidePatches("s", d["barcodes"], d["coords"], d["grid"], d["images"], genes=("g",))
    sub = slide.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.images, d["images"][[3, 1]])


# ---------------------------------------------------------------------------- cache helpers


def test_cache_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("STBENCH_CACHE")
    assert cache_root().name == "stbench" or "stbench" in str(cache_root())
    assert PatchSpec().key() == "256px-native"
    assert PatchSpec(224, 0.5).key() == "224px-0.500um"
    assert patch_file(tmp_path, "her2st_C/C2", PatchSpec(224, 0.5)) == tmp_path / "patches/her2st_C/C2/224px-0.500um.h5"
    for bad in ("../x", "a//b", "", "a b", "/abs"):
        with pytest.raises(DataError):
            patch_file(tmp_path, bad, PatchSpec())
    with pytest.raises(DataError):
        PatchSpec(0)


def test_list_verify_clear(tmp_path):
    img = gradient()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    root = tmp_path / "cache"
    a = ensure_patches(path, COORDS, BARCODES, GRID, patch_file(root, "ds/s1", PatchSpec(P)), PatchSpec(P))
    b = ensure_patches(path, COORDS, BARCODES, GRID, patch_file(root, "other/s2", PatchSpec(16)), PatchSpec(16))
    stale_tmp = a.parent / f".{a.name}.abcd1234.tmp"
    stale_tmp.write_bytes(b"half")
    rows = {r["slide_key"]: r for r in list_cache(root)}
    assert set(rows) == {"ds/s1", "other/s2"}
    assert rows["ds/s1"]["spec_key"] == f"{P}px-native" and rows["ds/s1"]["n_kept"] == len(COORDS)
    assert rows["ds/s1"]["valid"] and rows["ds/s1"]["complete"] and rows["ds/s1"]["size_bytes"] > 0
    assert dict(verify_cache(root)) == {a: None, b: None}
    with h5py.File(b, "a") as f:
        del f.attrs["complete"]
    time.sleep(0.01)
    tifffile.imwrite(path, img[:, :, ::-1].copy(), tile=(64, 64), compression="zlib")  # source changed
    reasons = dict(verify_cache(root))
    assert reasons[b] == "incomplete" and "source" in reasons[a] and "changed" in reasons[a]
    assert not {r["slide_key"]: r for r in list_cache(root)}["other/s2"]["valid"]
    assert clear_cache(root, "ds/*") == 2  # the .h5 and its stale .tmp
    assert not a.exists() and not stale_tmp.exists() and not Path(str(a) + ".lock").exists() and b.exists()
    assert clear_cache(root) == 1
    assert list_cache(root) == [] and not any(root.rglob("*.lock"))


# ----------------------------------------------------------------------------- real image


@pytest.mark.parametrize("jpeg, centres, tissue", [
    # committed fixture: 1736 x 1491 px crop of C2 (all tissue); interior, fractional, near each corner
    pytest.param(C2_MINI_JPEG, [(140, 142), (868.4, 745.6), (1600, 200), (300.6, 1350.4), (1600, 1355)], True,
                 id="mini"),
    # the full scan: these centres include background near the corners
    pytest.param(C2_JPEG, [(1000, 1500), (4637, 4955), (8000, 2000), (2500.4, 7800.6), (9000, 9500)], False,
                 id="full", marks=pytest.mark.full_data),
])
def test_real_her2st_jpeg_matches_pil_crops(tmp_path, monkeypatch, jpeg, centres, tissue):
    limit = Image.MAX_IMAGE_PIXELS
    out = tmp_path / "c2.h5"
    build_patches(jpeg, np.array(centres, float), np.array([f"s{i}" for i in range(5)]),
                  np.zeros((5, 2), int), out, PatchSpec(256))
    d = open_patches(out)
    assert d["images"].shape == (5, 256, 256, 3) and d["attrs"]["n_padded"] == 0
    assert Image.MAX_IMAGE_PIXELS == limit  # the reader lifts PIL's limit only while it decodes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # 92 Mpx: above PIL's warning threshold
    with Image.open(jpeg) as im:
        assert (d["attrs"]["image_width"], d["attrs"]["image_height"]) == im.size
        rgb = im.convert("RGB")
        for i, (x, y) in enumerate(centres):
            x, y = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            want = np.asarray(rgb.crop((x - 128, y - 128, x + 128, y + 128)))
            assert d["images"][i].shape == (256, 256, 3)
            np.testing.assert_array_equal(d["images"][i], want)
            assert want.std() > 20 or not tissue  # real tissue, not background or padding
