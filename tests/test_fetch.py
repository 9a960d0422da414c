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


def test_unreachable_host_is_one_line_with_the_fix(stbench_dirs, monkeypatch):
    from stbench import fetch

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


def test_cli_fetch_with_mirror(cli, stbench_dirs):
    data, _ = stbench_dirs
    result = cli("fetch", "her2st_C_HEG", "--mirror", str(HER2ST))
    assert result.exit_code == 0, result.output
    assert (data / "her2st" / "ST-cnts" / "C2.tsv.gz").is_file()
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
    from stbench import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    server, url = flaky_server(HER2ST)
    try:
        e = her2st_c()
        src = next(s for s in e.sources if s["path"].endswith("C2.tsv.gz"))
        seen_offsets = []
        path = fetch.fetch_source(e, src, mirror=url, progress=lambda label, done, total: seen_offsets.append(done))
    finally:
        server.shutdown()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == src["sha256"]
    assert not path.with_name(path.name + ".part").exists()
    half = src["size"] // 2
    assert server.ranges == [None, f"bytes={half}-"]
    assert half in seen_offsets and max(seen_offsets) == src["size"]


def test_an_html_error_page_is_refused(stbench_dirs):
    server, url = flaky_server(HER2ST, html=True)
    try:
        with pytest.raises(DataError, match=r"sent an HTML page instead of ST-spotfiles/C2_selection.tsv"):
            fetch_dataset(entry(), mirror=url)
    finally:
        server.shutdown()
