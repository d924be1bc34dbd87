"""``labse serve``: register the deployments with the Prefect server and run their flow runs here.

Deployments: ``labse-pipeline`` (end to end), one per stage (``flows.stage_flows.STAGE_FLOWS``), and
``scheduled-retrain`` with a cron schedule and a trigger on the "new data landed" event
(``flows.stage_flows.DATA_LANDED``). The event is emitted by ``labse prepare --append`` and by this
process when a file appears in the inbox folder (``LABSE_HOME/inbox``). Runs created in the Prefect UI or
through its API (``run_deployment``) execute in this process.

The schedules stay active when this process stops (``pause_on_shutdown=False``): a restart of ``labse
serve`` does not silently switch scheduled retraining off. Training deployments take one run at a time
(``concurrency_limit=1``) and a Prefect tag limit of 1 on ``labse-training`` keeps two training tasks of
different deployments apart (the home's training lock does the same without a server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.layout import Layout

TRAINING_DEPLOYMENTS = {"labse-pipeline", "labse-pretrain", "labse-finetune", "scheduled-retrain", "labse-nmt-check"}


class EmitError(Exception):
    """The Prefect server did not accept an event; the message is one line for the user."""


EMIT_TIMEOUT_S = 10.0


def data_landed_event(layout: Layout, files: list[str], source: str, event_id: str | None = None) -> dict[str, Any]:
    """The "new data landed" event for this home, as the JSON the server's events API takes."""
    from prefect.events import Event

    from flows.stage_flows import DATA_LANDED, data_resource

    kwargs = {"id": event_id} if event_id else {}
    return Event(event=DATA_LANDED, resource=data_resource(layout), payload={"files": files, "source": source},
                 **kwargs).model_dump(mode="json")


def post_event(event: dict[str, Any], timeout_s: float = EMIT_TIMEOUT_S) -> None:
    """Send one event to the Prefect server and wait for its answer (``POST /api/events``: 204 once the server
    has taken it for its triggers and its event store). Prefect's own ``emit_event`` hands the event to a
    background websocket and returns before anything is known, so a lost event went unnoticed; here a
    refused or unanswered event raises ``EmitError``. Sending the same event id again is safe: the server's
    triggers act on an event id once."""
    import httpx
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if not api.url:
        raise EmitError("no Prefect server configured (PREFECT_API_URL)")
    headers = {}
    if api.key:
        headers["Authorization"] = f"Bearer {api.key.get_secret_value()}"
    elif api.auth_string:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(api.auth_string.get_secret_value().encode()).decode()
    url = str(api.url).rstrip("/") + "/events"
    try:
        r = httpx.post(url, json=[event], headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise EmitError(f"{url}: {type(e).__name__}: {str(e) or 'no answer'}") from None
    if r.status_code != 204:
        raise EmitError(f"{url}: HTTP {r.status_code} {r.text[:200]}")


def emit_data_landed(layout: Layout, files: list[str], source: str, event_id: str | None = None) -> str | None:
    """Emit "new data landed" for this home and wait until the Prefect server has taken it; returns the event
    id, None when no server is configured (the event only means something to a server's triggers).
    Raises ``EmitError`` when the server refuses the event or does not answer."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        return None
    event = data_landed_event(layout, files, source, event_id)
    post_event(event)
    return str(event["id"])


def build_deployments(layout: Layout, cron: str | None = "0 3 * * *", timezone: str = "UTC", retrain: Any = None) -> list:
    """The RunnerDeployments ``labse serve`` serves (``retrain``: scheduled-retrain's ``RetrainConfig``, None for
    its defaults)."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.pipeline import labse_pipeline
    from flows.stage_flows import DATA_LANDED, STAGE_FLOWS, data_resource, retrain_flow

    deps = [labse_pipeline.to_deployment(name="labse-pipeline", concurrency_limit=1, tags=["labse"],
                                         description="The whole pipeline, stages cached (labse demo / labse pipeline).")]
    for name, fl in STAGE_FLOWS.items():
        deps.append(fl.to_deployment(name=name, tags=["labse", "stage"],
                                     concurrency_limit=1 if name in TRAINING_DEPLOYMENTS else None,
                                     description=(fl.description or "").split("\n")[0]))
    trigger = DeploymentEventTrigger(name="new data landed", expect={DATA_LANDED},
                                     match={"prefect.resource.id": data_resource(layout)["prefect.resource.id"]})
    deps.append(retrain_flow.to_deployment(
        name="scheduled-retrain", schedules=[Cron(cron, timezone=timezone)] if cron else None, triggers=[trigger],
        parameters={"config": retrain.model_dump(mode="json")} if retrain is not None else None,
        concurrency_limit=1, tags=["labse", "retrain"],
        description="Prepare new data, fine-tune from the champion, evaluate, promote only if better."))
    return deps


def ensure_training_limit(limit: int = 1) -> None:
    """A Prefect tag concurrency limit on ``labse-training`` (idempotent)."""
    from prefect.client.orchestration import get_client

    from flows.stage_cache import TRAINING_TAG

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=TRAINING_TAG, concurrency_limit=limit)


class InboxWatcher(threading.Thread):
    """Emits "new data landed" once per batch of new files in the inbox (a file is new once its size stopped
    changing between two polls, so a copy in progress is not announced half written).

    An emit the server does not take (down, restarting, refusing) is said in one line and retried on every
    later poll with the same event id until the server takes it: the files are not forgotten, and a retry
    that reaches a server which had already taken the event does not start a second run."""

    def __init__(self, layout: Layout, inbox: Path, poll_s: float, announce: Callable[[str], None] = print):
        super().__init__(name="labse-inbox", daemon=True)
        self.layout, self.inbox, self.poll_s, self.announce = layout, inbox, poll_s, announce
        self.stop = threading.Event()
        # What is there at start was announced before (or is for the next scheduled run).
        self.seen: set[str] = set(self._files())
        self.sizes: dict[str, int] = {}
        self.pending: list[tuple[str, list[str], int]] = []
        """Batches the server has not taken yet: (event id, file names, failed attempts)."""

    def _files(self) -> dict[str, int]:
        if not self.inbox.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.inbox.iterdir() if p.is_file() and not p.name.startswith(".")}

    def poll(self) -> list[str]:
        """One check: the files that are new and complete (announced, or queued for the retry of their emit)."""
        import uuid

        now = self._files()
        ready = sorted(n for n, size in now.items() if n not in self.seen and self.sizes.get(n) == size)
        self.sizes = now
        if ready:
            self.seen |= set(ready)
            self.pending.append((str(uuid.uuid4()), ready, 0))
        self._emit_pending()
        return ready

    def _emit_pending(self) -> None:
        left = []
        for event_id, files, failed in self.pending:
            try:
                emit_data_landed(self.layout, files, "inbox", event_id)
            except EmitError as e:
                if failed == 0:  # said once; retried quietly on every later poll
                    self.announce(f"emit failed: new data landed in {self.inbox} ({', '.join(files)}) not taken by "
                                  f"the Prefect server: {e}; retrying every {self.poll_s:g}s")
                left.append((event_id, files, failed + 1))
                continue
            again = f" (after {failed} failed attempt{'s' * (failed > 1)})" if failed else ""
            self.announce(f"new data landed in {self.inbox}: {', '.join(files)}: event {event_id} taken by the "
                          f"Prefect server{again}")
        self.pending = left

    def run(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.poll()
            except OSError as e:  # the inbox removed or unreadable for a moment: try again next poll
                self.announce(f"inbox {self.inbox}: {e}")


def check_schedule(cron: str | None, timezone: str = "UTC") -> None:
    """A malformed cron or an unknown time zone: a one-line ``ValueError`` (before anything is registered)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone {timezone!r}: not a known time zone (e.g. UTC, Europe/Berlin)") from None
    if cron is not None:
        from prefect.schedules import Cron

        try:
            Cron(cron, timezone=timezone)
        except ValueError as e:
            raise ValueError(f"--cron {cron!r}: {e} (five fields: minute hour day month weekday)") from None


def serve_all(layout: Layout, *, cron: str | None = "0 3 * * *", timezone: str = "UTC", inbox: Path | None = None,
              poll_s: float = 10.0, retrain: Any = None, announce: Callable[[str], None] = print) -> None:
    """Register every deployment and serve them until interrupted. ``retrain``: the ``RetrainConfig``
    scheduled-retrain runs with (None: its defaults)."""
    from prefect import serve

    from flows.stage_flows import inbox_dir

    check_schedule(cron, timezone)
    inbox = inbox or inbox_dir(layout)
    if inbox.exists() and not inbox.is_dir():
        raise ValueError(f"--inbox {inbox}: is a file, not a folder")
    inbox.mkdir(parents=True, exist_ok=True)
    deps = build_deployments(layout, cron, timezone, retrain)
    ensure_training_limit()
    watcher = InboxWatcher(layout, inbox, poll_s, announce)
    watcher.start()
    announce(f"serving {len(deps)} deployments: {', '.join(d.name for d in deps)}")
    announce(f"scheduled-retrain: cron {cron!r} ({timezone}) and on new files in {inbox}")
    try:
        serve(*deps, pause_on_shutdown=False, print_starting_message=False)
    finally:
        watcher.stop.set()
