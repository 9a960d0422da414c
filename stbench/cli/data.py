"""``stbench fetch`` and ``stbench prepare``: the data path of catalogue datasets."""
from __future__ import annotations

from typing import Any

import click

from ..errors import StbenchError
from .app import _app, _console, cli


def _catalog_dataset(ctx: click.Context, name: str) -> Any:
    from ..data.catalog_dataset import CatalogDataset

    dataset = _app(ctx).plugins.datasets.get(name)
    if not isinstance(dataset, CatalogDataset):
        raise StbenchError(f"dataset '{name}' is not read from files (it comes from plugin "
                           f"'{_app(ctx).plugins.datasets.origin(name)}'); nothing to fetch or prepare")
    return dataset


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--mirror", default=None, help="Folder or URL laid out like the dataset folder, replacing upstream [env: STBENCH_MIRROR].")
@click.pass_context
def fetch(ctx: click.Context, names: tuple[str, ...], mirror: str | None) -> None:
    """Download the source files of datasets into the data root (STBENCH_DATA), verified."""
    from ..data.fetch import dataset_folder, fetch_dataset
    from .progress import RichProgress

    console = _console()
    for name in names:
        dataset = _catalog_dataset(ctx, name)
        notes: list[str] = []
        with RichProgress(console) as progress:
            paths = fetch_dataset(dataset.entry, mirror=mirror, progress=progress, notify=notes.append)
        for note in notes:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{name}: {len(paths)} file(s) in {dataset_folder(dataset.entry)}")


@cli.command()
@click.argument("name")
@click.option("--folds", default="default", show_default=True)
@click.option("--protocol", default="strict", show_default=True, type=click.Choice(["strict", "paper"]))
@click.pass_context
def prepare(ctx: click.Context, name: str, folds: str, protocol: str) -> None:
    """Cut every slide's patches into the shared HDF5 cache and prepare each fold's expression."""
    from rich.table import Table

    from ..data.patches import open_patches
    from .progress import RichProgress

    dataset = _catalog_dataset(ctx, name)
    dataset.check_present()
    console = _console()
    table = Table(title=f"{name}: patch cache")
    for col in ("slide", "spots", "kept", "padded", "dropped", "blank", "file"):
        table.add_column(col, justify="left" if col in ("slide", "file") else "right")
    blank = {}
    with RichProgress(console) as progress:
        for slide in dataset.slides:
            path = dataset.patches(slide, progress)
            a = open_patches(path)["attrs"]
            blank[slide] = (int(a.get("n_blank") or 0), int(a["n_kept"]))
            table.add_row(slide, str(a["n_spots_in"]), str(a["n_kept"]), str(a["n_padded"]), str(a["n_dropped"]),
                          str(blank[slide][0]), str(path))
        fold_list = dataset.folds(folds)
        for i, fold in enumerate(fold_list):
            progress("prepare folds", i, len(fold_list), fold=fold.name)
            prepared = dataset.prepare(fold, protocol)
        progress("prepare folds", len(fold_list), len(fold_list))
    console.print(table)
    for slide, (n_blank, n) in blank.items():
        if n_blank:
            click.echo(f"stbench: warning: slide '{slide}': {n_blank} of {n} patches are blank (one colour, no "
                       f"tissue); check its image file before training on it", err=True)
    console.print(f"{len(fold_list)} fold(s) prepared ({protocol}); last: {len(prepared.genes)} genes")
