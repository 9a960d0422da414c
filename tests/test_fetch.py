import gzip
import hashlib
import json

import numpy as np
import pytest

from stbench.data.catalog import PACKAGED, load_catalog, parse_entry
from stbench.errors import DataError, StbenchError
from stbench.data.fetch import fetch_dataset, missing_sources, source_location

from conftest import FIXTURE_CATALOG, HER2ST_MINI, SHARED_DATA

HER2ST = SHARED_DATA / "her2st"  # the full sections (full_data tests only)


def her2st_c():
    return next(e for e in load_catalog(PACKAGED) if e.name == "her2st_C_HVG")


def her2st_mini():
    return next(e for e in load_catalog(FIXTURE_CATALOG) if e.name == "her2st_mini_HVG")


# (catalogue entry, mirror folder): the committed fixture always, the packaged entry on the full data
MIRRORS = [pytest.param(her2st_mini, HER2ST_MINI, id="mini"),
           pytest.param(her2st_c, HER2ST, id="full", marks=pytest.mark.full_data)]


def test_source_urls_and_mirror():
    e = her2st_c()
    src = e.sources[0]
    assert source_location(e, src) == "https://github.com/almaan/her2st/raw/master/data/" + src["path"]
    assert source_location(e, src, "/m/her2st") == "/m/her2st/" + src["path"]


@pytest.mark.parametrize("make_entry, mirror", MIRRORS)
def test_fetch_from_a_folder_mirror_verifies_every_file(stbench_dirs, make_entry, mirror):
    data, _ = stbench_dirs
    e = make_entry()
    assert len(missing_sources(e)) == 15
    paths = fetch_dataset(e, mirror=str(mirror))
    assert len(paths) == 15 and missing_sources(e) == []
    for src, p in zip(e.sources, paths):
        assert p == data / e.root / src["path"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == src["sha256"]
        assert p.read_bytes() == (mirror / src["path"]).read_bytes()


@pytest.mark.parametrize("make_entry, mirror", MIRRORS)
def test_fetch_over_http_from_a_local_server(stbench_dirs, http_server, make_entry, mirror):
    data, _ = stbench_dirs
    url = http_server(mirror)
    e = make_entry()
    fetch_dataset(e, mirror=url)
    assert missing_sources(e) == []
    for src in e.sources:
        assert hashlib.sha256((data / e.root / src["path"]).read_bytes()).hexdigest() == src["sha256"]


def test_fixture_manifest_matches_the_fixture_catalogue():
    """tests/data/her2st_mini/MANIFEST.tsv and fixtures.toml describe the same 15 committed files."""
    rows = [line.split("\t") for line in (HER2ST_MINI / "MANIFEST.tsv").read_text().splitlines()]
    assert rows[0] == ["path", "bytes", "sha256"]
    manifest = {path: (int(size), sha) for path, size, sha in rows[1:]}
    for name in ("her2st_mini_HVG", "her2st_mini_HEG"):
        e = next(x for x in load_catalog(FIXTURE_CATALOG) if x.name == name)
        assert {s["path"]: (s["size"], s["sha256"]) for s in e.sources} == manifest
    for path, (size, sha) in manifest.items():
        data = (HER2ST_MINI / path).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, path


def entry(**over):
    raw = {"reader": "st-legacy", "slides": ["C2"], "query": ["C2"], "genes": {"set": "all"},
           "base_url": "https://example.invalid/", "root": "t",
           "sources": [{"path": "ST-spotfiles/C2_selection.tsv", "sha256": "0" * 64}]}
    raw.update(over)
    return parse_entry("t", raw, "test.toml")


def test_checksum_mismatch_names_the_file_and_keeps_nothing(stbench_dirs, http_server):
    data, _ = stbench_dirs
    with pytest.raises(DataError) as e:
        fetch_dataset(entry(), mirror=http_server(HER2ST_MINI))
    assert "checksum mismatch for ST-spotfiles/C2_selection.tsv" in str(e.value) and "nothing was kept" in str(e.value)
    folder = data / "t" / "ST-spotfiles"
    assert not any(folder.iterdir()) if folder.exists() else True


def test_unreachable_host_is_one_line_with_the_fix(stbench_dirs, monkeypatch):
    from stbench.data import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    e = entry(base_url="http://127.0.0.1:9/")
    with pytest.raises(DataError) as err:
        fetch_dataset(e, mirror="")
    msg = str(err.value)
    assert msg.startswith("cannot download http://127.0.0.1:9/ST-spotfiles/C2_selection.tsv") and "--mirror" in msg
    assert "after 4 tries" in msg
    assert "\n" not in msg


def test_not_downloaded_dataset_says_how_to_fetch(cli, stbench_dirs):
    result = cli("run", "--model", "mean", "--dataset", "her2st_C_HVG")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("stbench: error: dataset 'her2st_C_HVG' is not downloaded")
    assert result.stderr.strip().endswith("run `stbench fetch her2st_C_HVG`")


@pytest.mark.parametrize("args, mirror, root", [
    pytest.param(("--catalog", str(FIXTURE_CATALOG), "fetch", "her2st_mini_HEG"), HER2ST_MINI, "her2st_mini", id="mini"),
    pytest.param(("fetch", "her2st_C_HEG"), HER2ST, "her2st", id="full", marks=pytest.mark.full_data),
])
def test_cli_fetch_with_mirror(cli, stbench_dirs, args, mirror, root):
    data, _ = stbench_dirs
    result = cli(*args, "--mirror", str(mirror))
    assert result.exit_code == 0, result.output
    assert (data / root / "ST-cnts" / "C2.tsv.gz").read_bytes() == (mirror / "ST-cnts" / "C2.tsv.gz").read_bytes()
    assert "15 file(s)" in result.output


def flaky_server(folder, html=False):
    """A server that cuts the connection half-way through the first download of each file and
    honours Range requests afterwards (or answers every request with an HTML error page)."""
    import http.server
    import threading

    seen = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            data = (folder / self.path.lstrip("/")).read_bytes()
            if html:
                body = b"<html><body>Rate limit exceeded</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            rng = self.headers.get("Range")
            self.server.ranges.append(rng)
            if rng:
                start = int(rng.split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path not in seen:
                seen.add(self.path)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.close()
                return
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.ranges = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_a_cut_download_resumes_with_range_and_verifies(stbench_dirs, monkeypatch):
    from stbench.data import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    server, url = flaky_server(HER2ST_MINI)
    try:
        e = her2st_mini()
        src = next(s for s in e.sources if s["path"].endswith("C2.tsv.gz"))
        seen_offsets = []
        path = fetch.fetch_source(e, src, mirror=url, progress=lambda label, done, total, **info: seen_offsets.append(done))
    finally:
        server.shutdown()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == src["sha256"]
    assert not path.with_name(path.name + ".part").exists()
    half = src["size"] // 2
    assert server.ranges == [None, f"bytes={half}-"]
    assert half in seen_offsets and max(seen_offsets) == src["size"]


def test_an_html_error_page_is_refused(stbench_dirs):
    server, url = flaky_server(HER2ST_MINI, html=True)
    try:
        with pytest.raises(DataError, match=r"sent an HTML page instead of ST-spotfiles/C2_selection.tsv"):
            fetch_dataset(entry(), mirror=url)
    finally:
        server.shutdown()


# ---- gunzip on the fly, lock file, disk errors, no network

def gz_entry(sources, **over):
    raw = {"reader": "visium", "slides": ["A1"], "query": ["A1"], "genes": {"set": "all"},
           "base_url": "https://example.invalid/", "root": "g", "sources": sources}
    raw.update(over)
    return parse_entry("g", raw, "test.toml")


def tiff_like(n: int = 3_000_000) -> bytes:
    """Bytes that compress well but not trivially, starting like a little-endian TIFF."""
    rng = np.random.default_rng(0)
    return b"II*\x00" + bytes(rng.integers(0, 4, n, dtype=np.uint8))


@pytest.fixture
def gz_upstream(tmp_path):
    """``suppl/img.tiff.gz`` (two concatenated gzip members) and a truncated copy."""
    raw = tiff_like()
    folder = tmp_path / "upstream" / "suppl"
    folder.mkdir(parents=True)
    packed = gzip.compress(raw[:1_000_000]) + gzip.compress(raw[1_000_000:])
    (folder / "img.tiff.gz").write_bytes(packed)
    (folder / "cut.tiff.gz").write_bytes(packed[: len(packed) - 5000])
    return tmp_path / "upstream", raw


def test_gzip_source_is_decompressed_while_streaming_and_its_checksum_is_the_result(
        stbench_dirs, http_server, gz_upstream, monkeypatch):
    from stbench.data.fetch import sink as download_sink

    data, _ = stbench_dirs
    folder, raw = gz_upstream
    writes = []
    real_write = download_sink.DiskSink._write
    monkeypatch.setattr(download_sink, "OUT_CHUNK", 1 << 16)
    monkeypatch.setattr(download_sink.DiskSink, "_write", lambda self, b: (writes.append(len(b)), real_write(self, b)))
    e = gz_entry([{"path": "A1/img.tiff", "url": "suppl/img.tiff.gz", "gunzip": True,
                   "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}], base_url=http_server(folder))
    (path,) = fetch_dataset(e)
    assert path == data / "g" / "A1" / "img.tiff" and path.read_bytes() == raw
    assert max(writes) <= 1 << 16 and sum(writes) == len(raw)  # bounded blocks, never the whole file
    assert not (data / "g" / "stbench-lock.json").exists()  # the catalogue gave the checksum
    assert missing_sources(e) == []


def test_gzip_checksum_of_the_compressed_download_is_refused(stbench_dirs, http_server, gz_upstream):
    folder, raw = gz_upstream
    packed = (folder / "suppl" / "img.tiff.gz").read_bytes()
    e = gz_entry([{"path": "A1/img.tiff", "url": "suppl/img.tiff.gz", "gunzip": True,
                   "sha256": hashlib.sha256(packed).hexdigest()}], base_url=http_server(folder))
    with pytest.raises(DataError, match=r"^checksum mismatch for A1/img.tiff .*expected .* by the catalogue"):
        fetch_dataset(e)


def test_a_truncated_gzip_is_one_line_naming_the_file_and_keeps_nothing(stbench_dirs, http_server, gz_upstream):
    data, _ = stbench_dirs
    folder, _ = gz_upstream
    url = http_server(folder)
    e = gz_entry([{"path": "A1/cut.tiff", "url": "suppl/cut.tiff.gz", "gunzip": True}], base_url=url)
    with pytest.raises(DataError) as err:
        fetch_dataset(e)
    msg = str(err.value)
    assert msg.startswith(f"A1/cut.tiff from {url}suppl/cut.tiff.gz: the gzip stream ends early")
    assert "nothing was kept" in msg and "\n" not in msg
    assert list((data / "g").rglob("*")) == [data / "g" / "A1"]


def test_a_cut_gzip_download_restarts_from_the_beginning(stbench_dirs, gz_upstream, monkeypatch):
    from stbench.data import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    folder, raw = gz_upstream
    server, url = flaky_server(folder)
    try:
        e = gz_entry([{"path": "A1/img.tiff", "url": "suppl/img.tiff.gz", "gunzip": True}], base_url=url)
        (path,) = fetch_dataset(e)
    finally:
        server.shutdown()
    assert server.ranges == [None, None] and path.read_bytes() == raw


def test_unknown_checksums_are_recorded_in_a_lock_file_and_verified_later(stbench_dirs, http_server, tmp_path):
    data, _ = stbench_dirs
    upstream = tmp_path / "up"
    (upstream / "A1").mkdir(parents=True)
    (upstream / "A1" / "counts.tsv").write_text("a\tb\n1\t2\n")
    e = gz_entry([{"path": "A1/counts.tsv"}], base_url=http_server(upstream))
    notes = []
    fetch_dataset(e, notify=notes.append)
    lock_path = data / "g" / "stbench-lock.json"
    record = json.loads(lock_path.read_text())["files"]["A1/counts.tsv"]
    assert record["sha256"] == hashlib.sha256(b"a\tb\n1\t2\n").hexdigest() and record["size"] == 8
    assert record["url"] == e.base_url + "A1/counts.tsv"
    assert notes == [f"g: the catalogue gives no checksum for 1 file(s); recorded their sha256 and size in "
                     f"{lock_path}; later fetches verify against it"]
    assert not list(lock_path.parent.glob(".stbench-lock.json.*"))

    fetch_dataset(e, notify=notes.append)  # present and matching: nothing new to record
    assert len(notes) == 1
    stored = data / "g" / "A1" / "counts.tsv"
    stored.write_text("a\tb\n1\t3\n")  # damaged locally: re-downloaded, checked against the record
    fetch_dataset(e)
    assert stored.read_text() == "a\tb\n1\t2\n"

    (upstream / "A1" / "counts.tsv").write_text("a\tb\n9\t9\n")  # changed upstream
    stored.unlink()
    with pytest.raises(DataError) as err:
        fetch_dataset(e)
    msg = str(err.value)
    assert msg.startswith("checksum mismatch for A1/counts.tsv") and str(lock_path) in msg
    assert "delete the entry to accept a new file" in msg and "\n" not in msg
    assert not stored.exists() and not stored.with_name("counts.tsv.part").exists()


def test_a_damaged_lock_file_says_how_to_recover(stbench_dirs, http_server, tmp_path):
    data, _ = stbench_dirs
    (data / "g").mkdir(parents=True)
    (data / "g" / "stbench-lock.json").write_text("{not json")
    e = gz_entry([{"path": "A1/counts.tsv"}], base_url=http_server(tmp_path))
    with pytest.raises(DataError, match=r"^cannot read .*stbench-lock.json .*delete it to record the checksums afresh"):
        fetch_dataset(e)


def test_disk_full_is_one_line_naming_the_folder_and_leaves_nothing(stbench_dirs, http_server, gz_upstream,
                                                                     monkeypatch):
    import errno

    from stbench.data.fetch import sink as download_sink

    data, _ = stbench_dirs
    folder, _ = gz_upstream
    written = []

    def full(self, block):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(block))
        self._fh.write(block)

    monkeypatch.setattr(download_sink.DiskSink, "_write", full)
    e = gz_entry([{"path": "A1/img.tiff", "url": "suppl/img.tiff.gz", "gunzip": True}], base_url=http_server(folder))
    with pytest.raises(StbenchError) as err:
        fetch_dataset(e)
    msg = str(err.value)
    assert msg.startswith(f"no space left for {data / 'g' / 'A1'}") and "set STBENCH_DATA" in msg and "\n" not in msg
    assert written and list((data / "g" / "A1").iterdir()) == []


def test_an_unwritable_data_root_is_one_line_with_the_fix(stbench_dirs, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STBENCH_DATA", str(blocker))
    with pytest.raises(StbenchError, match=rf"^cannot write to {blocker / 't' / 'ST-spotfiles'} .*set STBENCH_DATA"):
        fetch_dataset(entry(), mirror=str(HER2ST_MINI))


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_via_the_cli_names_the_url_and_suggests_a_mirror(cli, stbench_dirs, monkeypatch, tmp_path):
    from stbench.data import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    port = closed_port()
    catalogue = tmp_path / "c.toml"
    catalogue.write_text(f'[offline]\nreader = "visium"\nslides = ["A1"]\nquery = ["A1"]\ngenes = {{ set = "all" }}\n'
                         f'base_url = "http://127.0.0.1:{port}/"\nsources = [{{ path = "A1/x.tsv" }}]\n')
    result = cli("--catalog", str(catalogue), "fetch", "offline")
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith(f"stbench: error: cannot download http://127.0.0.1:{port}/A1/x.tsv (")
    assert err.endswith("or use --mirror FOLDER|URL") and "\n" not in err


@pytest.mark.parametrize("source,expected", [
    ({"path": "a.tsv", "sha256": "ABC"}, "key 'sha256' must be 64 lowercase hex digits"),
    ({"path": "a.tsv", "gunzip": "yes"}, "key 'gunzip' must be true or false"),
    ({"path": "a.tsv", "size": -1}, "key 'size' must be a byte count"),
    ({"path": "../a.tsv"}, "key 'path' must be a relative path inside the dataset folder"),
    ({"path": "a.tsv", "gzip": True}, "unknown key(s) gzip; did you mean 'gunzip'?"),
])
def test_catalogue_source_keys_are_checked(source, expected):
    from stbench.errors import CatalogError

    with pytest.raises(CatalogError) as err:
        entry(sources=[source])
    assert expected in str(err.value)


def test_a_relative_url_needs_a_base_url_and_paths_are_unique():
    from stbench.errors import CatalogError

    with pytest.raises(CatalogError, match="needs an absolute 'url' or the entry a 'base_url'"):
        parse_entry("t", {"reader": "visium", "slides": ["A"], "query": ["A"], "genes": {"set": "all"},
                          "sources": [{"path": "a", "url": "suppl/a.gz"}]}, "x.toml")
    with pytest.raises(CatalogError, match="lists source 'a' more than once"):
        entry(sources=[{"path": "a"}, {"path": "a"}])
    e = entry(sources=[{"path": "A1/a.tif", "url": "suppl/a.tif.gz"}, {"path": "b", "url": "https://h.org/b"}])
    assert [source_location(e, s) for s in e.sources] == ["https://example.invalid/suppl/a.tif.gz", "https://h.org/b"]
    assert source_location(e, e.sources[0], "/m") == "/m/A1/a.tif"
