"""Alerts from the Prefect server: automations that notify a webhook when a flow run fails,
crashes or stops sending heartbeats (its process or host is gone), when a work pool has no
live worker, and when a model is promoted. The server sends them, so a SIGKILLed run is
reported too, unlike a hook inside the dying process."""

from dataclasses import dataclass
from datetime import timedelta

from prefect.automations import (
    Automation,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    SendNotification,
)
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from app.stack_settings import HEARTBEAT_SECONDS
from tasks.registry import PROMOTED_EVENT

BLOCK_NAME = "malaria-alerts"
WEBHOOK_SECRET = "webhook_url"
"""The block's secret field that holds the URL: Prefect's API and events show it obfuscated
(a webhook URL often carries its token)."""
AUTOMATION_PREFIX = "malaria: "
SILENCE_SECONDS = 3 * HEARTBEAT_SECONDS
"""A running flow run silent this long is marked Crashed: its process or host is gone."""

_FLOW_RUNS = {"prefect.resource.id": "prefect.flow-run.*"}
_ENDED = ("Completed", "Failed", "Cancelled", "Crashed")


@dataclass(frozen=True)
class Alert:
    """One automation: when it fires, what it says, and whether it marks the run Crashed."""

    trigger: EventTrigger
    subject: str
    body: str
    marks_crashed: bool = False


ALERTS: dict[str, Alert] = {
    "flow run failed or crashed": Alert(
        EventTrigger(
            match=_FLOW_RUNS,
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        "failed",
        "Flow run {{ event.resource.name }} ended {{ event.event.split('.')[-1] }}: "
        "{{ event.payload.validated_state.message }}",
    ),
    "flow run stopped sending heartbeats": Alert(
        EventTrigger(
            match=_FLOW_RUNS,
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _ENDED)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        "lost",
        f"Flow run {{{{ event.resource.name }}}} sent no heartbeat for {SILENCE_SECONDS} s: "
        "marked Crashed (its worker or host is gone)",
        marks_crashed=True,
    ),
    "work pool not ready": Alert(
        EventTrigger(
            match={"prefect.resource.id": "prefect.work-pool.*"},
            expect={"prefect.work-pool.not-ready"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        "pool-not-ready",
        "Work pool {{ event.resource.name }} has no live worker: its runs wait",
    ),
    "model promoted": Alert(
        EventTrigger(expect={PROMOTED_EVENT}, posture=Posture.Reactive, threshold=1),
        "promoted",
        "{{ event.resource.name }} version {{ event.payload.version }} is champion: "
        "{{ event.payload.reason }}",
    ),
}


def install_alerts(webhook_url: str | None) -> list[str]:
    """Create (or replace) the automations on the server that `PREFECT_API_URL` names, with
    a webhook notification block for `webhook_url`; without one, only the lost-run detection
    (it marks silent runs Crashed). Returns the automations' names."""
    block_id = None
    if webhook_url:
        block = CustomWebhookNotificationBlock(
            name="malaria",
            url=f"{{{{{WEBHOOK_SECRET}}}}}",  # filled in from `secrets` when it posts
            secrets={WEBHOOK_SECRET: webhook_url},
            json_data={"event": "{{subject}}", "text": "{{body}}", "source": "prefect-server"},
            allow_private_urls=True,  # a receiver on the lab's own network is the usual case
        )
        block_id = block.save(BLOCK_NAME, overwrite=True)
    _delete_alerts()
    created = []
    for title, alert in ALERTS.items():
        actions = []
        if alert.marks_crashed:
            message = f"No heartbeat for {SILENCE_SECONDS} s: the process or host is gone"
            actions.append(ChangeFlowRunState(state=StateType.CRASHED, message=message))
        if block_id:
            actions.append(
                SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)
            )
        if actions:
            name = AUTOMATION_PREFIX + title
            Automation(name=name, trigger=alert.trigger, actions=actions).create()
            created.append(name)
    return created


def _delete_alerts() -> None:
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(AUTOMATION_PREFIX):
                client.delete_automation(automation.id)
