"""Discovery of upstream file names in a directory listing (GEO suppl/ folders)."""
import gzip

import pytest

from stbench.data.catalog import parse_entry
from stbench.data.fetch.discover import listing_names, pick
from stbench.errors import DataError
from stbench.data.fetch import fetch_dataset

GEO_INDEX = """<html><body><h1>Index of /geo/samples/GSM7845nnn/GSM7845914/suppl</h1><pre>
<a href="/geo/samples/GSM7845nnn/GSM7845914/">Parent Directory</a>
<a href="GSM7845914_GEX_PSC011-4_A1_Merged.tiff.gz">GSM7845914_GEX_PSC011-4_A1_Merged.tiff.gz</a> 2023-10-20 1.2G
<a href="GSM7845914_PSC011_A1_VISIUM_matrix.mtx.gz">GSM7845914_PSC011_A1_VISIUM_matrix.mtx.gz</a>
<a href="filelist.txt?x=1">filelist.txt</a>
</pre></body></html>"""


def test_listing_names_reads_a_geo_index():
    assert listing_names(GEO_INDEX) == ["GSM7845914_GEX_PSC011-4_A1_Merged.tiff.gz",
                                        "GSM7845914_PSC011_A1_VISIUM_matrix.mtx.gz", "filelist.txt"]
    assert pick(listing_names(GEO_INDEX), "GSM7845914_*Merged.tif*", "X") == "GSM7845914_GEX_PSC011-4_A1_Merged.tiff.gz"
    with pytest.raises(DataError, match=r"no file matching 'GSM9_\*' in X; the deposit changed"):
        pick(listing_names(GEO_INDEX), "GSM9_*", "X")
    with pytest.raises(DataError, match="2 files match 'GSM7845914_\\*' in X"):
        pick(listing_names(GEO_INDEX)[:2], "GSM7845914_*", "X")


def _entry(base_url, pattern):
    raw = {"reader": "visium", "slides": ["A1"], "query": ["A1"], "genes": {"set": "all"}, "base_url": base_url,
           "sources": [{"path": "A1/image.tif", "url": "GSM7845nnn/GSM7845914/suppl/guessed_name.tif.gz",
                        "gunzip": True, "discover": pattern}]}
    return parse_entry("d", raw, "test.toml")


def test_fetch_discovers_the_real_name_and_gunzips_it(http_server, tmp_path):
    suppl = tmp_path / "up" / "GSM7845nnn" / "GSM7845914" / "suppl"
    suppl.mkdir(parents=True)
    payload = b"II*\x00" + bytes(range(256)) * 40
    (suppl / "GSM7845914_GEX_PSC011-4_A1_Merged.tiff.gz").write_bytes(gzip.compress(payload))
    (suppl / "GSM7845914_PSC011_A1_VISIUM_matrix.mtx.gz").write_bytes(b"x")
    url = http_server(tmp_path / "up")
    root = tmp_path / "data"
    [path] = fetch_dataset(_entry(url, "GSM7845914_*Merged.tif*"), root=root, mirror="")
    assert path == root / "d" / "A1" / "image.tif" and path.read_bytes() == payload
    with pytest.raises(DataError, match=r"no file matching 'GSM7845914_\*_HE\.png' in http://127\.0\.0\.1"):
        fetch_dataset(_entry(url, "GSM7845914_*_HE.png"), root=tmp_path / "other", mirror="")
    assert not (tmp_path / "other" / "d" / "A1" / "image.tif").exists()


def test_a_mirror_needs_no_listing(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "A1").mkdir(parents=True)
    (mirror / "A1" / "image.tif").write_bytes(b"II*\x00abc")
    [path] = fetch_dataset(_entry("https://unreachable.invalid/", "*Merged.tif*"), root=tmp_path / "data", mirror=str(mirror))
    assert path.read_bytes() == b"II*\x00abc"


def test_plain_http_upstream_is_refused_but_a_mirror_may_use_it(tmp_path):
    entry = parse_entry("h", {"reader": "visium", "slides": ["A1"], "query": ["A1"], "genes": {"set": "all"},
                              "base_url": "http://example.org/data/", "sources": [{"path": "A1/x.txt"}]}, "t.toml")
    with pytest.raises(DataError, match=r"dataset 'h' lists a plain-HTTP source \(http://example.org/data/A1/x.txt\)"):
        fetch_dataset(entry, root=tmp_path / "data", mirror="")
    assert not (tmp_path / "data" / "h" / "A1").exists()
