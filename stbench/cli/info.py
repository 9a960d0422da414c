"""``stbench list`` and ``stbench plugins``: what is installed."""
from __future__ import annotations

import json

import click

from .app import _app, cli


@cli.command("list")
@click.argument("kind", type=click.Choice(["models", "datasets", "metrics", "readers"]))
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, kind: str, pattern: str, as_json: bool) -> None:
    """List registered models, datasets, metrics or readers (glob PATTERN)."""
    plugins = _app(ctx).plugins
    registry = getattr(plugins, kind)
    rows = []
    for name in registry.names(pattern):
        item = registry.get(name)
        if kind == "models":
            desc = item.card.summary + (" [baseline]" if item.card.baseline else "")
        elif kind == "metrics":
            desc = ("higher" if item.higher_is_better else "lower") + " is better; " + ("per gene" if item.per_gene else "per slide")
        else:
            desc = getattr(item, "description", "")
        rows.append({"name": name, "plugin": registry.origin(name), "description": desc})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:<22} {r['plugin']:<24} {r['description']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """Show loaded plugins with their version and hooks, and plugins that failed to load."""
    app = _app(ctx)
    app.report_failures = False
    p = app.plugins
    rows = [{"name": i.name, "version": i.version, "source": i.source, "hooks": p.hooks_of(i.name)} for i in p.loaded]
    failed = [{"name": i.name, "version": i.version, "source": i.source, "error": i.error} for i in p.failures]
    if as_json:
        click.echo(json.dumps({"loaded": rows, "failed": failed}, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:<24} {r['version'] or '-':<10} {', '.join(r['hooks']) or '-':<40} {r['source']}")
    for r in failed:
        click.echo(f"{r['name']:<24} FAILED     {r['error']}  [{r['source']}]")
