"""What a training run returns (both trainers extend it), its JSON summary, and the whole result as
JSON for --result (``to_json``) read back with its types (``read_result``): how a run launched in
other processes (flows.torchrun) hands its result to the caller, with no pickle."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

R = TypeVar("R", bound="TrainResult")


@dataclass
class TrainResult:
    start_step: int
    """Step the run started (or resumed) from."""
    step: int
    """Step reached."""
    stopped_by: str
    """"max_steps", "stop_at_step" or "time_budget" (labse_core.training.stopping)."""
    losses: list[float] = field(default_factory=list)
    """Global-batch loss of every step of this invocation."""
    step_times: list[float] = field(default_factory=list)
    """Wall seconds of every step, data loading included."""
    checkpoint: Path | None = None
    """Newest step-N/ folder."""
    final_dir: Path | None = None
    """The final model folder (rank 0; None on other ranks, or when the run writes none)."""
    mlflow_run_id: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers of the run (the CLI prints it without the losses)."""
        return {
            "start_step": self.start_step,
            "step": self.step,
            "stopped_by": self.stopped_by,
            "losses": self.losses,
            "checkpoint": _str(self.checkpoint),
            "final_dir": _str(self.final_dir),
            "mlflow_run_id": self.mlflow_run_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The summary and every field (paths as strings, None as null): what --result writes and
        `from_json` reads back into the same result."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.loads(json.dumps(self.summary() | fields, default=_str))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The result `to_json` wrote, every field checked against its type (pydantic); the summary's
        derived numbers (properties) are recomputed, not read."""
        from pydantic import TypeAdapter

        names = {f.name for f in dataclasses.fields(cls)}
        return TypeAdapter(cls).validate_python({k: v for k, v in data.items() if k in names})


def read_result(path: str | Path, cls: type[R]) -> R:
    """``cls.from_json`` of the JSON file at ``path``; a missing, truncated or mistyped file is a
    ValueError naming it."""
    from pydantic import ValidationError

    try:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:  # json.JSONDecodeError and ValidationError are ValueErrors
        detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()) \
            if isinstance(e, ValidationError) else str(e).splitlines()[0]
        raise ValueError(f"{path}: not a {cls.__name__} result: {detail}") from None


def _str(value: Any) -> Any:
    """Paths as strings (json.dumps' default for them); None stays None."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
