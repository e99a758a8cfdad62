"""`llmos model ...`: tools for the models a worker serves.

Light to import: `llmos.tiny_model` imports torch and transformers only when
it makes a model; `llmos.demo_model` copies files and imports neither.
"""

from __future__ import annotations

from pathlib import Path

import click

from llmos import demo_model, tiny_classifier, tiny_model
from llmos.progress import StepProgress

# --task -> (default directory, make unless there, make replacing what is there, its steps)
EMBEDDED_MODELS = {
    "generate": (
        demo_model.default_model_dir,
        demo_model.ensure_demo_model,
        demo_model.remake_demo_model,
        demo_model.MAKE_STEPS,
    ),
    "tiny": (
        tiny_model.default_model_dir,
        tiny_model.ensure_tiny_model,
        tiny_model.remake_tiny_model,
        tiny_model.MAKE_STEPS,
    ),
    "classify": (
        tiny_classifier.default_model_dir,
        tiny_classifier.ensure_tiny_classifier,
        tiny_classifier.remake_tiny_classifier,
        tiny_model.MAKE_STEPS,
    ),
}


@click.group()
def model() -> None:
    """Make and manage the models workers serve."""


@model.command()
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"directory to write; default $LLMOS_HOME/models/{demo_model.MODEL_NAME} "
    f"(--task tiny: {tiny_model.MODEL_NAME}, --task classify: {tiny_classifier.MODEL_NAME})",
)
@click.option("--force", is_flag=True, help="replace the model if the directory already holds one")
@click.option(
    "--task",
    type=click.Choice(list(EMBEDDED_MODELS)),
    default="generate",
    show_default=True,
    help=f"generate: {demo_model.MODEL_NAME}, a small trained chat model (the default a worker "
    f"serves); tiny: {tiny_model.MODEL_NAME}, a causal LM with random weights (what the tests "
    f"use); classify: {tiny_classifier.MODEL_NAME}, a negative/positive sequence classifier "
    f"(random weights)",
)
def init(output: Path | None, force: bool, task: str) -> None:
    """Copy or make an embedded model (seconds on a CPU) and print its path."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    default_dir, ensure, remake, make_steps = EMBEDDED_MODELS[task]
    path = output if output is not None else default_dir()
    # the steps go to stderr (a bar on a terminal): stdout is the path alone, for scripts
    steps = StepProgress(f"making {path.name}", len(make_steps), echo=echo_stderr)
    try:
        with steps:
            if force:
                remake(path, on_step=steps)
            else:
                ensure(path, on_step=steps)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))


def echo_stderr(line: str) -> None:
    click.echo(line, err=True)
