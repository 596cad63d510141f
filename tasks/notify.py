"""Optional notifications: a JSON post to a webhook when a retrain fails or promotes a model.

The webhook is configured by the environment of the process that runs the flow (a worker):
`MALARIA_WEBHOOK_URL`. Its value is a secret (Slack and Teams URLs carry their token), so it
is never logged, and a failed post never fails the flow.
"""

import json
import urllib.request
from typing import Any

from prefect import get_run_logger
from prefect.logging import get_logger

from cnn.settings import ENV_PREFIX, settings

WEBHOOK_ENV = f"{ENV_PREFIX}WEBHOOK_URL"
TIMEOUT_SECONDS = 10


def webhook_url() -> str | None:
    """The configured webhook URL, or None when notifications are off."""
    secret = settings().webhook_url
    return secret.get_secret_value() if secret else None


def post_notification(event: str, text: str, details: dict[str, Any]) -> bool:
    """Post `{"event", "text", **details}` to the webhook, if one is set; whether it went.

    `text` makes the payload readable as is by Slack- and Teams-style incoming webhooks.
    """
    url = webhook_url()
    if url is None:
        return False
    body = json.dumps({"event": event, "text": text, **details}, default=str).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
    except Exception as error:  # never let a notification fail the run, never log the URL
        _logger().warning(
            "The %s notification to %s was not delivered: %s",
            event,
            WEBHOOK_ENV,
            type(error).__name__,
        )
        return False
    _logger().info("Posted the %s notification to %s", event, WEBHOOK_ENV)
    return True


def notify_failure(flow, flow_run, state) -> None:
    """Prefect flow hook (`on_failure`, `on_crashed`): say which run failed, and why."""
    post_notification(
        "failed",
        f"Flow run {flow_run.name} ({flow.name}) ended {state.name}: {state.message}",
        {"flow": flow.name, "flow_run": flow_run.name, "flow_run_id": str(flow_run.id)},
    )


def _logger():
    try:
        return get_run_logger()
    except Exception:  # in a state hook, outside a run context
        return get_logger("malaria.notify")
