"""The conformance helpers plugin authors call (stbench.testing) pass on the built-in readers and
datasets, and fail, naming the broken rule, on ones that break the contract."""
from __future__ import annotations

import dataclasses

import pytest

from conftest import FIXTURE_CATALOG, FIXTURES, HER2ST_MINI
from stbench.data.readers.anndata_reader import AnnDataReader
from stbench.data.readers.st_legacy import STLegacyReader
from stbench.data.readers.visium import VisiumReader
from stbench.testing import check_dataset, check_reader


def test_check_reader_passes_the_built_in_readers_on_real_files(tmp_path):
    from anndata_slides import write_slides

    her2st = check_reader(STLegacyReader(), HER2ST_MINI, "C2")
    assert her2st.n_obs == 30 and her2st.uns["stbench"]["reader"] == "st-legacy"
    with pytest.warns(UserWarning, match="downsampled"):
        visium = check_reader(VisiumReader(), FIXTURES, "visium_sr2")
    assert visium.n_obs == 38
    write_slides(tmp_path, slides=("s1",))
    assert check_reader(AnnDataReader(), tmp_path, "s1").n_obs == 25


def test_check_reader_names_a_reader_that_breaks_the_contract(tmp_path):
    class Shifted(STLegacyReader):
        name = "shifted"

        def read_slide(self, folder, slide, *, patient=None, params=None):
            adata = super().read_slide(folder, slide, patient=patient, params=params)
            adata.obsm["spatial"] = adata.obsm["spatial"] + 1e6  # off the image
            adata.uns["stbench"]["reader"] = self.name
            return adata

    with pytest.raises(AssertionError, match="reader 'shifted': most spot centres lie outside"):
        check_reader(Shifted(), HER2ST_MINI, "C2", params={"check_bounds": False})


def test_check_dataset_passes_catalogue_and_synthetic_datasets(her2st_mini_env):
    from stbench.plugins import get_plugin_manager

    plugins = get_plugin_manager(catalogs=[str(FIXTURE_CATALOG)], env={})
    check_dataset(plugins.datasets.get("her2st_mini_HVG"), protocol="strict")
    check_dataset(plugins.datasets.get("her2st_mini_HEG"), protocol="paper")
    check_dataset(plugins.datasets.get("synthetic"), folds="all", max_folds=2)


def test_check_dataset_catches_a_dataset_that_leaks_the_query_expression():
    from stbench.plugins import get_plugin_manager

    synthetic = get_plugin_manager(env={}).datasets.get("synthetic")

    class Leaky(type(synthetic)):
        def prepare(self, fold, protocol="strict", progress=None):
            prepared = super().prepare(fold, protocol, progress)
            return dataclasses.replace(prepared, queries=[self.slide(s)[0] for s in fold.query])

    leaky = Leaky("leaky", synthetic.slides, synthetic.query_slides, "all", **synthetic.params)
    with pytest.raises(AssertionError, match="dataset 'leaky' hands query slide 'syn1' with its expression"):
        check_dataset(leaky, folds="all")
