"""What a training run returns (both trainers extend it), and its JSON summary for --result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
            "checkpoint": str(self.checkpoint),
            "final_dir": str(self.final_dir),
            "mlflow_run_id": self.mlflow_run_id,
        }
