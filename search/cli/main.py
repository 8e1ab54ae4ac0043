"""The `lookalike` command: a thin shell over the library.

Each command parses options, calls one library function, and turns the
library's own exceptions into a one-line message and exit code 2. This module
builds the Typer app and registers the commands, which live one group a module
beside it (index, query, serve, model_uses, report, dedupe); none of them imports this one.
"""

from __future__ import annotations

import typer

from . import dedupe, index, model_uses, query, report, serve
from .common import setup_logging

app = typer.Typer(
    name="lookalike",
    help="Self-hosted semantic image search: learn your images with an autoencoder, find look-alikes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: with rich markup on, "[default: 8000]" was read as a markup tag and vanished.
    rich_markup_mode=None,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail.")) -> None:
    setup_logging(verbose)


# In the order `lookalike --help` lists them: the main job first, the model's other uses, then reports
# and resolving what they found.
for command in (
    index.train,
    index.index,
    index.up,
    query.query,
    serve.serve,
    model_uses.models,
    model_uses.denoise,
    model_uses.reconstruct,
    model_uses.generate,
    model_uses.compress,
    model_uses.evaluate,
    report.report,
    dedupe.dedupe,
    dedupe.restore,
):
    app.command()(command)
