"""The ``stbench`` command group: lazily loaded plugins, plugin commands, one-line errors, warnings on
stderr. Only the CLI prints; the library reports through callbacks and logging."""
from __future__ import annotations

import logging
from typing import Any

import click

from ..errors import StbenchError

DEFAULT_RESULTS = "results"


class App:
    """Lazily loaded plugins for one command invocation. Every command that loads plugins says, one line
    each on stderr, which plugins failed to load and why (``stbench plugins`` lists them itself)."""

    def __init__(self, plugins_dirs: tuple[str, ...], catalogs: tuple[str, ...]) -> None:
        self.plugins_dirs, self.catalogs = plugins_dirs, catalogs
        self._plugins = None
        self.report_failures = True

    @property
    def plugins(self):
        if self._plugins is None:
            from ..plugins import get_plugin_manager

            self._plugins = get_plugin_manager(self.plugins_dirs, self.catalogs)
            if self.report_failures:
                for f in self._plugins.failures:
                    click.echo(f"stbench: warning: plugin '{f.name}' failed to load: {f.error} [{f.source}]", err=True)
        return self._plugins


class _StderrHandler(logging.Handler):
    """The library's warnings as ``stbench: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"stbench: {record.levelname.lower()}: {record.getMessage()}", err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("stbench")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.WARNING)
        logger.addHandler(handler)


def _app(ctx: click.Context) -> App:
    root = ctx.find_root()
    if "stbench.app" not in root.meta:
        from ..plugins import env_plugins_dirs

        dirs = tuple(root.params.get("plugins_dir") or ()) + env_plugins_dirs()
        root.meta["stbench.app"] = App(dirs, tuple(root.params.get("catalog") or ()))
    return root.meta["stbench.app"]


class StbenchGroup(click.Group):
    """Adds the commands that plugins register (``register_commands``) on first use."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        root = ctx.find_root()
        if "stbench.commands" not in root.meta:
            extra = click.Group("plugins")
            try:
                _app(ctx).plugins.pm.hook.register_commands(cli=extra)
            except StbenchError as e:
                click.echo(f"stbench: warning: plugin commands unavailable: {e}", err=True)
            root.meta["stbench.commands"] = {n: c for n, c in extra.commands.items() if n not in self.commands}
        return root.meta["stbench.commands"]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands(ctx)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._plugin_commands(ctx).get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StbenchError as e:
            click.echo(f"stbench: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=StbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins-dir", multiple=True, type=click.Path(file_okay=False), help="Load every *.py in DIR as a plugin.")
@click.option("--catalog", multiple=True, type=click.Path(dir_okay=False), help="Extra datasets.toml-style catalogue.")
@click.version_option(package_name="stbench")
def cli(plugins_dir: tuple[str, ...], catalog: tuple[str, ...]) -> None:
    """Benchmark models that predict spatial gene expression from H&E histology."""
    _log_to_stderr()


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)




def main() -> None:
    cli(prog_name="stbench")
