"""The registry gate's rule, branch by branch (the pipeline test runs it through MLflow)."""

import pytest

from labse_core.mlflow_model import GateScores, gate_decision


@pytest.mark.parametrize(
    "new, champion, promoted, reason",
    [
        (GateScores(0.1, 0.2), None, True, "no champion yet"),
        (GateScores(0.6, 0.1), GateScores(0.5, 0.9), True, "higher primary metric"),
        (GateScores(0.4, 0.9), GateScores(0.5, 0.1), False, "lower primary metric"),
        (GateScores(0.5, 0.8), GateScores(0.5, 0.7), True, "primary tie, higher held-out accuracy"),
        (GateScores(0.5, 0.6), GateScores(0.5, 0.7), False, "primary tie, lower held-out accuracy"),
        (GateScores(0.5, 0.7), GateScores(0.5, 0.7), True, "tie on both metrics: the newer version wins"),
        (GateScores(0.5), GateScores(0.5), True, "tie on both metrics: the newer version wins"),  # no secondary
        (GateScores(0.5 + 1e-12, 0.1), GateScores(0.5, 0.7), False, "primary tie, lower held-out accuracy"),
    ],
)
def test_gate_decision(new, champion, promoted, reason):
    assert gate_decision(new, champion) == (promoted, reason)
