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

from storage.layout import Layout

TRAINING_DEPLOYMENTS = {"labse-pipeline", "labse-pretrain", "labse-finetune", "scheduled-retrain"}


def emit_data_landed(layout: Layout, files: list[str], source: str) -> bool:
    """Emit "new data landed" for this home to the Prefect server; False when no server is configured
    (the event only means something to a server's triggers)."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        return False
    from prefect.events import emit_event

    from flows.stage_flows import DATA_LANDED, data_resource

    return emit_event(DATA_LANDED, resource=data_resource(layout), payload={"files": files, "source": source}) is not None


def build_deployments(layout: Layout, cron: str | None = "0 3 * * *") -> list:
    """The RunnerDeployments ``labse serve`` serves."""
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
        name="scheduled-retrain", schedules=[Cron(cron, timezone="UTC")] if cron else None, triggers=[trigger],
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
    """Emits "new data landed" once per new file in the inbox (a file is new once its size stopped changing
    between two polls, so a copy in progress is not announced half written)."""

    def __init__(self, layout: Layout, inbox: Path, poll_s: float, announce: Callable[[str], None] = print):
        super().__init__(name="labse-inbox", daemon=True)
        self.layout, self.inbox, self.poll_s, self.announce = layout, inbox, poll_s, announce
        self.stop = threading.Event()
        # What is there at start was announced before (or is for the next scheduled run).
        self.seen: set[str] = set(self._files())
        self.sizes: dict[str, int] = {}

    def _files(self) -> dict[str, int]:
        if not self.inbox.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.inbox.iterdir() if p.is_file() and not p.name.startswith(".")}

    def poll(self) -> list[str]:
        """One check: the files that are new and complete (announced)."""
        now = self._files()
        ready = [n for n, size in now.items() if n not in self.seen and self.sizes.get(n) == size]
        self.sizes = now
        if ready:
            self.seen |= set(ready)
            emit_data_landed(self.layout, sorted(ready), "inbox")
            self.announce(f"new data landed in {self.inbox}: {', '.join(sorted(ready))}")
        return ready

    def run(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.poll()
            except OSError as e:  # the inbox removed or unreadable for a moment: try again next poll
                self.announce(f"inbox {self.inbox}: {e}")


def serve_all(layout: Layout, *, cron: str | None = "0 3 * * *", inbox: Path | None = None, poll_s: float = 10.0,
              announce: Callable[[str], None] = print) -> None:
    """Register every deployment and serve them until interrupted."""
    from prefect import serve

    from flows.stage_flows import inbox_dir

    if cron is not None:
        from prefect.schedules import Cron

        try:
            Cron(cron, timezone="UTC")
        except ValueError as e:
            raise ValueError(f"--cron {cron!r}: {e}") from None
    inbox = inbox or inbox_dir(layout)
    inbox.mkdir(parents=True, exist_ok=True)
    deps = build_deployments(layout, cron)
    ensure_training_limit()
    watcher = InboxWatcher(layout, inbox, poll_s, announce)
    watcher.start()
    announce(f"serving {len(deps)} deployments: {', '.join(d.name for d in deps)}")
    announce(f"scheduled-retrain: cron {cron!r} (UTC) and on new files in {inbox}")
    try:
        serve(*deps, pause_on_shutdown=False, print_starting_message=False)
    finally:
        watcher.stop.set()
