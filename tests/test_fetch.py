import hashlib

import pytest

from stbench.catalog import PACKAGED, load_catalog, parse_entry
from stbench.errors import DataError
from stbench.fetch import fetch_dataset, missing_sources, source_location

from conftest import SHARED_DATA

HER2ST = SHARED_DATA / "her2st"


def her2st_c():
    return next(e for e in load_catalog(PACKAGED) if e.name == "her2st_C_HVG")


def test_source_urls_and_mirror():
    e = her2st_c()
    src = e.sources[0]
    assert source_location(e, src) == "https://github.com/almaan/her2st/raw/master/data/" + src["path"]
    assert source_location(e, src, "/m/her2st") == "/m/her2st/" + src["path"]


def test_fetch_from_a_folder_mirror_verifies_every_file(stbench_dirs):
    data, _ = stbench_dirs
    e = her2st_c()
    assert len(missing_sources(e)) == 15
    paths = fetch_dataset(e, mirror=str(HER2ST))
    assert len(paths) == 15 and missing_sources(e) == []
    for src, p in zip(e.sources, paths):
        assert p == data / "her2st" / src["path"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == src["sha256"]


def test_fetch_over_http_from_a_local_server(stbench_dirs, http_server):
    url = http_server(HER2ST)
    e = her2st_c()
    fetch_dataset(e, mirror=url)
    assert missing_sources(e) == []


def entry(**over):
    raw = {"reader": "st-legacy", "slides": ["C2"], "query": ["C2"], "genes": {"set": "all"},
           "base_url": "https://example.invalid/", "root": "t",
           "sources": [{"path": "ST-spotfiles/C2_selection.tsv", "sha256": "0" * 64}]}
    raw.update(over)
    return parse_entry("t", raw, "test.toml")


def test_checksum_mismatch_names_the_file_and_keeps_nothing(stbench_dirs, http_server):
    data, _ = stbench_dirs
    with pytest.raises(DataError) as e:
        fetch_dataset(entry(), mirror=http_server(HER2ST))
    assert "checksum mismatch for ST-spotfiles/C2_selection.tsv" in str(e.value) and "nothing was kept" in str(e.value)
    folder = data / "t" / "ST-spotfiles"
    assert not any(folder.iterdir()) if folder.exists() else True


def test_unreachable_host_is_one_line_with_the_fix(stbench_dirs):
    e = entry(base_url="http://127.0.0.1:9/")
    with pytest.raises(DataError) as err:
        fetch_dataset(e, mirror="")
    msg = str(err.value)
    assert msg.startswith("cannot reach http://127.0.0.1:9/ST-spotfiles/C2_selection.tsv") and "--mirror" in msg
    assert "\n" not in msg


def test_not_downloaded_dataset_says_how_to_fetch(cli, stbench_dirs):
    result = cli("run", "--model", "mean", "--dataset", "her2st_C_HVG")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("stbench: error: dataset 'her2st_C_HVG' is not downloaded")
    assert result.stderr.strip().endswith("run `stbench fetch her2st_C_HVG`")


def test_cli_fetch_with_mirror(cli, stbench_dirs):
    data, _ = stbench_dirs
    result = cli("fetch", "her2st_C_HEG", "--mirror", str(HER2ST))
    assert result.exit_code == 0, result.output
    assert (data / "her2st" / "ST-cnts" / "C2.tsv.gz").is_file()
    assert "15 file(s)" in result.output
