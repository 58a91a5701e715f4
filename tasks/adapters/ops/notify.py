"""Tell someone a run failed: a JSON POST to a webhook (Slack-compatible `text` field). A failing
notification is logged and swallowed: it must never mask the failure it reports."""
from __future__ import annotations

import json
import logging
import os
import urllib.request
from urllib.parse import urlsplit

from tasks.domain.config import NotificationsConfig

log = logging.getLogger(__name__)


def webhook_url(config: NotificationsConfig) -> str | None:
    """RSLM_WEBHOOK_URL, else the Prefect Secret block, else the config's URL."""
    if os.environ.get("RSLM_WEBHOOK_URL"):
        return os.environ["RSLM_WEBHOOK_URL"]
    if config.webhook_secret_block:
        from prefect.blocks.system import Secret

        return str(Secret.load(config.webhook_secret_block).get())
    return config.webhook_url


def host_of(url: str) -> str:
    """What may be logged about a webhook: scheme and host, never the path or query (tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def post_json(url: str, payload: dict, timeout_s: float) -> bool:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - user-configured URL
            ok = 200 <= response.status < 300
    except OSError as error:
        log.warning("webhook %s failed: %s", host_of(url), type(error).__name__)
        return False
    log.info("webhook %s notified", host_of(url))
    return ok
