"""storage.tracking.flat_params: the one way nested settings become MLflow parameters (the trainers'
runs and the pipeline's stage runs)."""

from __future__ import annotations

from storage.tracking import PARAM_CHARS, flat_params


def test_nested_settings_become_dotted_string_params():
    cfg = {"lr": 1e-4, "loss": {"margin": 0.3, "bidirectional": True}, "stacking_steps": (1, 2),
           "langs": ["de", "fr"], "init_from": None, "empty": {}}
    assert flat_params(cfg) == {"lr": "0.0001", "loss.margin": "0.3", "loss.bidirectional": "True",
                                "stacking_steps": "[1, 2]", "langs": '["de", "fr"]', "init_from": "None"}
    assert flat_params({"min_chars": 1}, "prepare.filters.") == {"prepare.filters.min_chars": "1"}


def test_long_values_are_cut():
    (value,) = flat_params({"paths": [f"/data/file-{i}.po" for i in range(200)]}).values()
    assert len(value) == PARAM_CHARS and value.startswith('["/data/file-0.po"')
