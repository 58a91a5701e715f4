"""`rslm serve`: an OpenAI-compatible server for the champion (or any model)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from flows.cli.common import champion_uri, config_option, registered_generator, registered_scorer, reward_model_uri, setup


@click.command()
@click.option("--model", "model_uri", help="Registry URI (default: the configured domain's @champion).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="Adapter directory (base from its summary).")
@click.option("--base", type=click.Path(exists=True, file_okay=False), help="Base model directory (alone: no adapter).")
@click.option("--merged", type=click.Path(exists=True, file_okay=False),
              help="A merged export (rslm export: DIR/merged), under the system prompt it was exported with.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless a token is set).")
@click.option("--port", default=8000, show_default=True)
@click.option("--token-env", default="RSLM_SERVE_TOKEN", show_default=True,
              help="Environment variable holding the bearer token clients must send (unset: no auth).")
@click.option("--system", "system_prompt", default=None, help="System prompt when a request has none.")
@click.option("--reward-model", "reward_uri",
              help="Process reward model for requests with best_of > 1 (default: the domain's -prm@champion, if any).")
@click.option("--max-waiting", default=16, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait behind the one generating; more are refused with 503 at once.")
@click.option("--wait-timeout", "wait_timeout_s", default=120.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a request may wait for the model before it is refused with 503.")
@config_option
def serve(model_uri, adapter, base, merged, host, port, token_env, system_prompt, reward_uri, max_waiting,
          wait_timeout_s, config_path) -> None:
    """An OpenAI-compatible server (/v1/models, /v1/chat/completions): the champion unless told otherwise."""
    setup()
    from tasks.adapters.model import chat_server as server
    from tasks.adapters.model.inference import load_adapter_generator, load_generator

    token = os.environ.get(token_env) or None
    server.check_exposure(host, token, token_env)
    if adapter:
        generator, model_id = load_adapter_generator(adapter, ""), Path(adapter).name
    elif merged:
        from tasks.adapters.model.gguf_export import load_merged

        generator, model_id = load_merged(merged), Path(merged).resolve().parent.name
    elif base:
        generator, model_id = load_generator(base, None, ""), Path(base).name
    else:
        model_id = model_uri or champion_uri(config_path)
        generator = registered_generator(model_id)
    if system_prompt is not None:
        generator.system_prompt = system_prompt
    scorer, scored_by = _reward_scorer(config_path, reward_uri)
    click.echo(f"serving {model_id} on http://{host}:{port}/v1" + (" (bearer token required)" if token else "")
               + (f"; best_of scored by {scored_by}" if scorer else "; no reward model: best_of is refused"))
    server.run(generator, model_id, host, port, token, scorer, max_waiting=max_waiting, wait_timeout_s=wait_timeout_s)


def _reward_scorer(config_path: str, given: str | None):
    """The reward model named, else the domain's champion one where it exists (None: best_of off)."""
    from tasks.domain.errors import RslmError

    try:
        uri = reward_model_uri(config_path, given)
    except RslmError:
        if given:
            raise
        return None, None
    return registered_scorer(uri), uri
