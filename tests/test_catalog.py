import pytest

from stbench.data.catalog import PACKAGED, load_catalog
from stbench.errors import CatalogError

GOOD = """
[mine]
reader = "synthetic"
slides = ["a", "b", "c"]
query = ["b"]
genes = { set = "all" }
params = { grid_width = 4, grid_height = 3, n_genes = 8, n_signal = 4, patch_px = 8 }
"""


def write(tmp_path, text):
    p = tmp_path / "cat.toml"
    p.write_text(text)
    return p


def test_packaged_catalogue_is_valid():
    names = [e.name for e in load_catalog(PACKAGED)]
    assert "synthetic" in names


def test_good_entry_parses(tmp_path):
    (entry,) = load_catalog(write(tmp_path, GOOD))
    assert entry.name == "mine" and entry.slides == ("a", "b", "c") and entry.query == ("b",)
    assert entry.gene_set == "all" and entry.patch_px == 256 and entry.split == "single"


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('reader = "synthetic"\n', ""), "dataset 'mine' is missing key 'reader'"),
    (lambda t: t.replace('slides = ["a", "b", "c"]', "slides = 3"), "dataset 'mine' key 'slides' must be a list of strings, got 3"),
    (lambda t: t.replace('query = ["b"]', 'query = ["z"]'), "dataset 'mine' key 'query' names slide 'z' that is not in 'slides'"),
    (lambda t: t + 'readr = "x"\n', "dataset 'mine' has unknown key 'readr'; did you mean 'reader'?"),
    (lambda t: t.replace('set = "all"', 'set = "hvgs"'), "key 'genes.set' must be one of hvg, heg, all"),
    (lambda t: t.replace('set = "all"', 'set = "hvg"'), "key 'genes.n_per_slide' must be a positive integer"),
    (lambda t: t + "patch_px = -3\n", "key 'patch_px' must be a positive integer, got -3"),
    (lambda t: t + "[broken\n", "not valid TOML"),
])
def test_errors_name_file_entry_and_key(tmp_path, edit, message):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_user_catalogue_adds_a_dataset(cli, tmp_path):
    path = write(tmp_path, GOOD)
    result = cli("--catalog", str(path), "list", "datasets")
    assert result.exit_code == 0 and "mine" in result.output and "synthetic" in result.output
    result = cli("list", "datasets", env={"STBENCH_CATALOG": str(path)})
    assert "mine" in result.output


def test_bad_catalogue_is_one_line_exit_2(cli, tmp_path):
    path = write(tmp_path, GOOD.replace('reader = "synthetic"', 'reader = "synthetc"'))
    result = cli("--catalog", str(path), "list", "datasets")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"stbench: error: {path}: dataset 'mine' key 'reader': unknown reader 'synthetc'; did you mean 'synthetic'?"]


def test_duplicate_dataset_name_across_catalogues(cli, tmp_path):
    path = write(tmp_path, GOOD.replace("[mine]", "[synthetic]"))
    result = cli("--catalog", str(path), "list", "datasets")
    assert result.exit_code == 2
    assert "dataset 'synthetic' is registered by both" in result.stderr and str(path) in result.stderr


def test_missing_catalogue_file(cli, tmp_path):
    result = cli("--catalog", str(tmp_path / "nope.toml"), "list", "datasets")
    assert result.exit_code == 2 and "nope.toml does not exist" in result.stderr
