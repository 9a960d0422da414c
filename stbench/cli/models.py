"""``stbench train``: fit a model on chosen slides and keep it as a bundle (``stbench predict`` applies
bundles to new slides)."""
from __future__ import annotations

import click

from .app import _app, _console, cli


@cli.command()
@click.option("--model", "-m", required=True, help="Model name (stbench list models).")
@click.option("--dataset", "-d", required=True, help="Dataset to train on (stbench list datasets).")
@click.option("--slides", default="", help="Comma-separated training slides [default: every slide of the dataset].")
@click.option("--protocol", default="strict", show_default=True, type=click.Choice(["strict", "paper"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Model option; profile=NAME picks a preset.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to create.")
@click.pass_context
def train(ctx: click.Context, model: str, dataset: str, slides: str, protocol: str, seed: int,
          options: tuple[str, ...], device: str, out: str) -> None:
    """Train MODEL on slides of DATASET (same preprocessing as `run`) and write a bundle to OUT."""
    from ..training import TrainRequest, train as train_one
    from .progress import RichProgress

    req = TrainRequest(model=model, dataset=dataset, slides=tuple(s.strip() for s in slides.split(",") if s.strip()),
                       protocol=protocol, seed=seed, options=options, device=device)
    console = _console()
    with RichProgress(console) as progress:
        _, manifest = train_one(_app(ctx).plugins, req, out, progress=progress)
    t = manifest["training"]
    console.print(f"bundle: {out} ({manifest['plugin']['name']} model '{model}', {len(manifest['genes'])} genes, "
                  f"trained on {', '.join(t['slides'])}: {t['n_spots']} spots)")
