"""`rslm`: one entry point over the flows and stages, a dispatcher over its command groups. Heavy
imports live inside the commands so `rslm --help` is instant. Errors print one line (`error: ...`)
and exit non-zero; RSLM_DEBUG=1 shows the traceback."""
from __future__ import annotations

import os
import sys

import click

from flows.cli import data, local_stack, models, pipeline, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """reasoning-slm: teach a small LLM to reason in a domain (framework -> dataset -> LoRA -> MLflow)."""


for command in (pipeline.pipeline, pipeline.generate, pipeline.validate, pipeline.format_, pipeline.preferences,
                pipeline.train,
                models.chat, models.score, models.export, serve.serve,
                models.evaluate, models.refine, models.promote, models.rollback, models.models,
                data.dataset, local_stack.stack):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into one line
        if os.environ.get("RSLM_DEBUG"):
            raise
        from tasks.domain.errors import RslmError, first_line

        code = error.exit_code if isinstance(error, RslmError) else 1
        message = first_line(error, limit=2000)
        prefix = "" if isinstance(error, RslmError) else f"{type(error).__name__}: "
        click.echo(f"error: {prefix}{message}", err=True)
        sys.exit(code)
