"""`llmos model ...`: tools for the models a worker serves.

Light to import: `llmos.tiny_model` imports torch and transformers only when
it makes a model.
"""

from __future__ import annotations

from pathlib import Path

import click

from llmos import tiny_model


@click.group()
def model() -> None:
    """Make and manage the models workers serve."""


@model.command()
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"directory to write; default $LLMOS_HOME/models/{tiny_model.MODEL_NAME}")
@click.option("--force", is_flag=True, help="replace the model if the directory already holds one")
def init(output: Path | None, force: bool) -> None:
    """Make the embedded llmos-tiny model (seconds on a CPU) and print its path."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    path = output if output is not None else tiny_model.default_model_dir()
    try:
        if force:
            tiny_model.remake_tiny_model(path)
        else:
            tiny_model.ensure_tiny_model(path)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
