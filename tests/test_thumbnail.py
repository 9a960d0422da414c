import numpy as np
import pytest
import tifffile
from PIL import Image

from stbench.report.thumbnail import decode_jpeg, encode_jpeg, patch_mosaic, tissue_thumbnail


@pytest.fixture
def image():
    y, x = np.mgrid[0:1200, 0:900]
    return np.stack([(x // 4) % 256, (y // 5) % 256, ((x + y) // 8) % 256], -1).astype(np.uint8)


def test_tiled_tiff_thumbnail_is_a_strided_read_with_its_scale(tmp_path, image):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
    thumb, scale = tissue_thumbnail(path, image_scale=0.5, max_side=300)
    step = 4
    assert thumb.shape == (1200 // step, 900 // step, 3)
    assert np.array_equal(thumb, image[::step, ::step])
    assert scale == pytest.approx(0.5 * thumb.shape[1] / 900)


def test_jpeg_thumbnail_keeps_the_picture(tmp_path, image):
    path = tmp_path / "slide.jpg"
    Image.fromarray(image).save(path, quality=95)
    thumb, scale = tissue_thumbnail(path, max_side=300)
    assert max(thumb.shape[:2]) <= 300 and thumb.shape[2] == 3
    expected = np.asarray(Image.fromarray(image).resize(thumb.shape[1::-1], Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(thumb.astype(float) - expected).mean() < 12
    assert scale == pytest.approx(thumb.shape[1] / 900)


def test_mosaic_places_patches_at_their_spots():
    coords = np.array([[100.0, 100.0], [300.0, 100.0], [100.0, 300.0]])
    images = np.zeros((3, 16, 16, 3), np.uint8)
    images[1] = 200
    canvas, scale = patch_mosaic(coords, images, max_side=200)
    x, y = (coords[1] * scale).round().astype(int)
    assert canvas[y, x].tolist() == [200, 200, 200]
    x0, y0 = (coords[0] * scale).round().astype(int)
    assert canvas[y0, x0].tolist() == [0, 0, 0]
    assert canvas[0, 0].tolist() == [255, 255, 255]


def test_jpeg_round_trip_is_close(image):
    back = decode_jpeg(encode_jpeg(image[:200, :200]))
    assert back.shape == (200, 200, 3) and np.abs(back.astype(int) - image[:200, :200]).mean() < 6
