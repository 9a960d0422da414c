"""The patch cache is not built when its file cannot fit: the free space of the cache folder
(``shutil.disk_usage``, monkeypatched here in the build module) is checked against n x patch_px^2 x 3 bytes
plus the margins before anything is written; the error is one line (exit 2 through the CLI) that says how
much is needed, how much is free, and the fix."""
import types

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURE_CATALOG, FIXTURES, fetch_fixture
from stbench.data.patches import PatchSpec, build as build_module, build_patches, ensure_patches
from stbench.errors import DataError


def fake_disk(monkeypatch, free):
    asked = []

    def disk_usage(path):
        asked.append(path)
        return types.SimpleNamespace(total=10 * free + 1, used=9 * free + 1, free=free)

    monkeypatch.setattr(build_module.shutil, "disk_usage", disk_usage)
    return asked


@pytest.fixture
def slide(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)).save(tmp_path / "he.png")
    xy = rng.uniform(60, 340, (300, 2))
    return tmp_path / "he.png", xy, np.array([f"s{i}" for i in range(300)]), np.zeros((300, 2), int)


def needed(n, p):
    return int(n * (p * p * 3 + build_module.SPACE_PER_SPOT) * (1 + build_module.SPACE_MARGIN)) + \
        build_module.SPACE_MARGIN_BYTES


@pytest.mark.parametrize("build", [build_patches, ensure_patches])
def test_a_patch_file_that_cannot_fit_is_not_built(tmp_path, monkeypatch, slide, build):
    image, xy, bcs, grid = slide
    out = tmp_path / "cache" / "patches" / "ds" / "S1" / "112px-native.h5"
    need = needed(300, 112)
    assert need > 300 * 112 * 112 * 3  # the patches' bytes plus the margins
    asked = fake_disk(monkeypatch, need - 1)
    with pytest.raises(DataError) as e:
        build(image, xy, bcs, grid, out, PatchSpec(patch_px=112))
    message = str(e.value)
    assert "\n" not in message and str(out) in message
    assert f"300 patches of 112 x 112 px need {need / 1e6:.1f} MB" in message
    assert f"has {(need - 1) / 1e6:.1f} MB free" in message
    assert "set STBENCH_CACHE to a folder on a larger disk, or use a smaller patch_px" in message
    assert asked == [out.parent]
    assert not out.exists() and not list(out.parent.glob("*.tmp"))  # nothing written
    # with exactly the space needed it builds, and the file is smaller than the estimate
    fake_disk(monkeypatch, need)
    built = build(image, xy, bcs, grid, out, PatchSpec(patch_px=112))
    assert built.stat().st_size < need


def test_large_sizes_are_shown_in_gb(tmp_path, monkeypatch, slide):
    image, xy, bcs, grid = slide
    fake_disk(monkeypatch, 5 * 10**8)
    monkeypatch.setattr(build_module, "SPACE_PER_SPOT", 2 * 10**6)  # as if each of the 300 spots took 2 MB
    with pytest.raises(DataError, match=r"need 0\.65 GB and .* has 0\.50 GB free"):
        build_patches(image, xy, bcs, grid, tmp_path / "p.h5", PatchSpec(patch_px=32))


def test_prepare_exits_2_with_one_line_when_the_cache_disk_is_full(tmp_path, monkeypatch, cli):
    root = fetch_fixture(tmp_path, "visium_hd_mini", FIXTURES / "visium_hd")
    fake_disk(monkeypatch, 10**6)
    env = {"STBENCH_DATA": str(root / "data"), "STBENCH_CACHE": str(root / "cache")}
    result = cli("--catalog", str(FIXTURE_CATALOG), "prepare", "visium_hd_mini", env=env)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("stbench: error: not enough disk space for the patch cache file ")
    assert "131 patches of 24 x 24 px need" in lines[0] and "1.0 MB free" in lines[0]
    assert not list((root / "cache").rglob("*.h5"))
