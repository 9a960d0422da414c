"""``stbench predict``: apply a trained bundle to a slide that has no expression, write an AnnData."""
from __future__ import annotations

from pathlib import Path

import click

from .app import _app, _console, cli


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--image", required=True, type=click.Path(dir_okay=False),
              help="The slide's full-resolution H&E image (TIFF, JPEG or PNG).")
@click.option("--positions", default=None, type=click.Path(dir_okay=False),
              help="Spot positions: a Space Ranger tissue_positions(_list).csv (in-tissue spots), or a CSV/TSV "
                   "with a header naming pixel_x,pixel_y (her2st *_selection.tsv) or x,y pixel centres.")
@click.option("--grid-um", default=None, type=float,
              help="Instead of --positions: a square grid of spots this many um apart over the tissue, found "
                   "with Otsu's threshold on the HSV saturation of a thumbnail (a slide with no glass in view: "
                   "every stained pixel), then closing and hole filling.")
@click.option("--pixel-size", default=None, type=float, metavar="UM",
              help="Micrometres per image pixel [default: estimated from a Space Ranger or legacy ST spot grid, "
                   "else the bundle's].")
@click.option("--library-id", default=None, help="Key of the slide under uns['spatial'] [default: the image file's stem].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="AnnData file to write (.h5ad).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.pass_context
def predict(ctx: click.Context, bundle: str, image: str, positions: str | None, grid_um: float | None,
            pixel_size: float | None, library_id: str | None, out: str, device: str) -> None:
    """Predict expression on IMAGE with the bundle in BUNDLE (stbench train --out); write an AnnData.

    The AnnData holds the predictions in X (spots x the bundle's genes), the spot centres in
    obsm['spatial'] and the tissue image in uns['spatial'], so scanpy.pl.spatial and
    squidpy.pl.spatial_scatter draw it as it is.
    """
    from ..bundle import load_bundle
    from ..errors import StbenchError
    from ..predict import predict_slide
    from ..report.export import write_h5ad
    from ..runner import resolve_device
    from .progress import RichProgress

    if (positions is None) == (grid_um is None):
        raise StbenchError("give exactly one of --positions FILE and --grid-um UM")
    target = Path(out)
    if target.is_dir():
        raise StbenchError(f"--out {target} is a folder; name the .h5ad file to write")
    _check_writable(target.parent)
    loaded = load_bundle(bundle, _app(ctx).plugins, device=resolve_device(device))
    console = _console()
    with RichProgress(console) as progress:
        adata = predict_slide(loaded, image, positions=positions, grid_um=grid_um, pixel_size_um=pixel_size,
                              library_id=library_id, progress=progress)
    write_h5ad(adata, target)
    info = adata.uns["stbench"]
    size = info.get("pixel_size_um")
    console.print(f"predictions: {target} ({adata.n_obs} spots x {adata.n_vars} genes; model '{info['model']}' "
                  f"trained on {', '.join(info.get('training_slides', []))}; pixel size "
                  f"{'unknown' if size is None else f'{size:.4g} um/px'} ({info['pixel_size_source']})"
                  f"{', patches resampled' if info.get('resampled') else ''})")


def _check_writable(folder: Path) -> None:
    """Before any work: the output folder exists (or can be made) and takes files."""
    import os

    from ..errors import StbenchError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StbenchError(f"cannot create {folder} ({e.strerror}); choose a writable --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StbenchError(f"{folder} is not writable; choose a writable --out")
