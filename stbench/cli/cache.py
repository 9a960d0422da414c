"""``stbench cache ls|verify|clear``: every folder of the cache (STBENCH_CACHE)."""
from __future__ import annotations

import json
import sys

import click

from .app import cli


@cli.group()
def cache() -> None:
    """Inspect, verify or clear the cache (STBENCH_CACHE): patches, prepared matrices, features, weights."""


_KIND_HELP = "Comma list of patches, prepared, features, weights, images [default: all]."


def _kind_list(kind: str | None) -> list[str] | None:
    return [k.strip() for k in kind.split(",") if k.strip()] if kind else None


@cache.command("ls")
@click.option("--kind", default=None, help=_KIND_HELP)
@click.option("--json", "as_json", is_flag=True)
def cache_ls(kind: str | None, as_json: bool) -> None:
    """List cached files (structure checked; `verify` reads every chunk)."""
    from ..data.cache import entries
    from ..data.locations import cache_root

    rows = entries(cache_root(), _kind_list(kind))
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for r in rows:
        state = "valid" if r["valid"] else f"INVALID ({r['reason']})"
        if r["kind"].endswith("-temp"):
            state = "temporary, " + r["reason"]
        click.echo(f"{r['kind']:<14} {r['key']:<44} {r['size_bytes'] / 1e6:9.1f} MB  {state}")
    click.echo(f"{len(rows)} file(s) in {cache_root()}")


@cache.command("verify")
@click.option("--kind", default=None, help=_KIND_HELP)
def cache_verify(kind: str | None) -> None:
    """Read every cached file in full (every chunk's checksum); exit 1 if any is damaged or stale."""
    from ..data.cache import verify
    from ..data.locations import cache_root

    bad = 0
    for kind_name, path, reason in verify(cache_root(), _kind_list(kind)):
        click.echo(f"{'ok' if reason is None else 'INVALID'}  {kind_name:<9} {path}" + (f"  ({reason})" if reason else ""))
        bad += reason is not None
    if bad:
        click.echo(f"{bad} damaged or stale file(s): `stbench cache clear --pattern KEY` removes one; the next "
                   f"prepare or run rebuilds it", err=True)
    sys.exit(1 if bad else 0)


@cache.command("clear")
@click.option("--pattern", default="*", show_default=True, help="Glob over keys, e.g. 'her2st/*' or 'patches/her2st/C3'.")
@click.option("--kind", default=None, help=_KIND_HELP)
def cache_clear(pattern: str, kind: str | None) -> None:
    """Delete cached files (with their locks, stamps and the temporaries of dead writers)."""
    from ..data.cache import clear
    from ..data.locations import cache_root

    click.echo(f"removed {clear(cache_root(), pattern, _kind_list(kind))} file(s) from {cache_root()}")
