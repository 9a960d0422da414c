"""The Python API, notebook style: benchmark a model, train it on every slide, predict a slide that was
never sequenced, score the prediction and draw it. Runs offline on the repository's her2st fixture (five
real sections cut to 30 spots each); swap in "her2st_C_HVG" (after `stbench fetch her2st_C_HVG`) or
your own AnnData slides for real numbers.

    python examples/python_api.py [--out examples-output]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples-output", help="folder for results, the bundle and the figure")
    out = Path(parser.parse_args().out)

    # %% 0. the data: the fixture catalogue, fetched from its local mirror (no network)
    os.environ.setdefault("STBENCH_CATALOG", str(FIXTURES / "fixtures.toml"))
    os.environ.setdefault("STBENCH_DATA", str(out / "data"))
    os.environ.setdefault("STBENCH_CACHE", str(out / "cache"))
    import stbench
    from stbench.data.fetch import fetch_dataset
    from stbench.plugins import get_plugin_manager

    plugins = get_plugin_manager()
    dataset = plugins.datasets.get("her2st_mini_HVG")
    fetch_dataset(dataset.entry, mirror=str(FIXTURES / "her2st_mini"))

    # %% 1. benchmark: every fold of the dataset, as `stbench run` does (a frozen-encoder kNN: fast on a CPU)
    options = {"input_px": 64, "k": 10}
    result = stbench.run("knn", "her2st_mini_HVG", out=out / "results", **options)
    print(f"knn: mean per-gene Pearson {result.summary['pearson']['mean']:.3f} over {len(result.folds)} folds")

    # %% 2. train on four sections and keep the model
    model = stbench.train("knn", "her2st_mini_HVG", subset=["C2", "C3", "C4", "C5"], **options)
    bundle = out / "bundles" / "knn-C2-C5"
    if not bundle.exists():
        model.save(bundle)
    model = stbench.load(bundle)

    # %% 3. predict the fifth section from its image and spot positions alone
    section = Path(os.environ["STBENCH_DATA"]) / "her2st_mini"
    image = next((section / "ST-imgs" / "C" / "C6").glob("*.jpg"))
    pred = model.predict(str(image), positions=str(section / "ST-spotfiles" / "C6_selection.tsv"))
    print(f"predicted {pred.n_obs} spots x {pred.n_vars} genes")

    # %% 4. score it against the measured expression, as runs score it
    prepared = dataset.prepare(dataset.folds("C6")[0], "strict")
    import anndata
    import numpy as np

    truth = anndata.AnnData(prepared.truth["C6"])
    truth.obs_names, truth.var_names = list(prepared.queries[0].barcodes), list(prepared.genes)
    truth.obsm["spatial"] = np.asarray(prepared.queries[0].coords)
    per_gene, per_slide = stbench.evaluate(truth, pred)
    print(per_gene.sort_values("pearson", ascending=False).head(5).to_string(index=False))
    print(f"C6: mean per-gene Pearson {per_slide['pearson_mean'].iloc[0]:.3f}")

    # %% 5. draw the best-predicted gene on the tissue with scanpy
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    best = per_gene.sort_values("pearson", ascending=False)["gene"].iloc[0]
    axes = sc.pl.spatial(pred, color=best, show=False)
    axes[0].figure.savefig(out / "C6_prediction.png", dpi=100)
    print(f"wrote {out / 'C6_prediction.png'} ({best})")


if __name__ == "__main__":
    main()
