"""The shared training runtime (labse_core.training): the config loader both trainers use, the stop
rule, checkpoint folders, and the data-state merge of a multi-rank checkpoint."""

from __future__ import annotations

import json
import time

import pytest
import torch

from labse_core.finetune.config import PRESETS as FINETUNE_PRESETS
from labse_core.finetune.config import FinetuneConfig, tiny_cpu
from labse_core.pretrain.config import PRESETS as PRETRAIN_PRESETS
from labse_core.pretrain.config import PretrainConfig
from labse_core.training.checkpoint import (
    checkpoint_steps,
    latest_checkpoint,
    merge_rank_states,
    save_checkpoint,
)
from labse_core.training.config import ConfigError, load_config, parse_sets, settings_help
from labse_core.training.distributed import DistEnv
from labse_core.training.stopping import Stopper


def test_set_values_are_json_when_they_can_be_and_dotted_keys_nest():
    assert parse_sets(["lr=2e-4", "run_name=x", "resume=false", "loss.margin=0.2", "betas=[0.9, 0.98]"]) == {
        "lr": 2e-4,
        "run_name": "x",
        "resume": False,
        "loss": {"margin": 0.2},
        "betas": [0.9, 0.98],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["lr"])


def test_preset_then_file_then_sets(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lr": 5e-4, "max_steps": 7, "loss": {"scale": 10.0}}))
    cfg = load_config(FinetuneConfig, FINETUNE_PRESETS, "tiny_cpu", str(tmp_path / "c.json"), ["max_steps=9", "loss.margin=0.1"])
    assert cfg.run_name == "tiny-cpu" and cfg.max_len == 48  # the preset
    assert cfg.lr == 5e-4 and cfg.loss.scale == 10.0  # the file (a nested value kept beside --set's)
    assert cfg.max_steps == 9 and cfg.loss.margin == 0.1 and cfg.loss.bidirectional  # --set
    assert cfg == tiny_cpu(lr=5e-4, max_steps=9, loss={"scale": 10.0, "margin": 0.1})


def test_old_flat_loss_keys_still_set_the_nested_loss():
    cfg = load_config(FinetuneConfig, FINETUNE_PRESETS, "tiny_cpu", None, ["margin=0.2", "scale=15"])
    assert (cfg.loss.margin, cfg.loss.scale) == (0.2, 15)
    assert tiny_cpu(margin=0.0).loss.margin == 0.0
    assert FinetuneConfig(**tiny_cpu(bidirectional=False).model_dump()).loss.bidirectional is False


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["foo=1"], "foo: unknown setting"),
        (["loss.foo=1"], "loss.foo: unknown setting"),
        (["lr=fast"], "lr: Input should be a valid number"),
        (["tlm_ratio=2"], "tlm_ratio must be in [0, 1]"),
        (["device=gpu0"], "device: 'gpu0' is not a torch device"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(sets, message):
    cls, presets = (PretrainConfig, PRETRAIN_PRESETS) if "tlm" in sets[0] else (FinetuneConfig, FINETUNE_PRESETS)
    with pytest.raises(ConfigError) as e:
        load_config(cls, presets, "tiny_cpu", None, sets)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(PretrainConfig, PRETRAIN_PRESETS, "huge")
    with pytest.raises(ConfigError, match="nope.json"):
        load_config(PretrainConfig, PRETRAIN_PRESETS, None, str(tmp_path / "nope.json"))


def test_help_lists_every_valid_key_with_its_docstring():
    text = settings_help(FinetuneConfig, {"margin": "loss.margin"})
    keys = {line.split()[0] for line in text.splitlines()[1:-1]}
    flat = {k for k in FinetuneConfig.model_fields if k not in ("loss", "special_ids")}
    assert flat | {"loss.margin", "loss.scale", "loss.bidirectional", "special_ids.cls"} <= keys
    assert "loss" not in keys  # a nested config is listed by its leaves
    line = next(x for x in text.splitlines() if x.split()[0] == "loss.margin")
    assert "LaBSE: 0.3" in line
    assert "margin -> loss.margin" in text.splitlines()[-1]


def test_stopper_ends_at_max_steps_stop_at_step_or_the_time_budget():
    cpu, env = torch.device("cpu"), DistEnv()
    cfg = tiny_cpu(max_steps=10)
    s = Stopper(cfg, env, cpu)
    assert not s.should_stop(9) and s.should_stop(10) and s.stopped_by == "max_steps"
    s = Stopper(tiny_cpu(max_steps=10, stop_at_step=4), env, cpu)
    assert not s.should_stop(3) and s.should_stop(4) and s.stopped_by == "stop_at_step"
    s = Stopper(tiny_cpu(max_steps=10, time_budget_s=0.0), env, cpu, t_start=time.perf_counter() - 1)
    assert s.should_stop(0) and s.stopped_by == "time_budget"


def test_checkpoint_folders_keep_the_newest(tmp_path):
    cfg = tiny_cpu()
    for step in (1, 2, 9, 10):
        save_checkpoint(tmp_path, step, {"w": torch.ones(1) * step}, {}, {"x": step}, cfg, keep=2)
    assert [s for s, _ in checkpoint_steps(tmp_path)] == [9, 10]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-10"  # by step number, not by name ("step-9" sorts after "step-10")
    assert torch.load(latest / "trainer.pt", weights_only=True) == {"step": 10, "x": 10}
    assert FinetuneConfig(**json.loads((latest / "config.json").read_text())) == cfg


def test_a_run_that_started_over_keeps_its_own_checkpoints_not_the_earlier_runs(tmp_path):
    """resume off: a new run of the same run_name writes step-1 next to an earlier run's step-9/10.
    Pruning by step number alone would delete the new step-1 at once and a later resume would pick
    the earlier run's step-10; the earlier run's folders go at the new run's first checkpoint."""
    for step in (5, 9, 10):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, {"run": "earlier"}, tiny_cpu(), keep=3)
    for step, kept in ((2, [2]), (4, [2, 4]), (6, [2, 4, 6]), (8, [4, 6, 8])):
        save_checkpoint(tmp_path, step, {"w": torch.ones(1)}, {}, {"run": "new"}, tiny_cpu(), keep=3)
        assert [s for s, _ in checkpoint_steps(tmp_path)] == kept
    assert torch.load(latest_checkpoint(tmp_path) / "trainer.pt", weights_only=True)["run"] == "new"


def test_trainer_state_loads_without_unpickling_objects(tmp_path):
    import pickle
    import random

    import numpy as np

    from labse_core.training.checkpoint import Checkpoint, rng_state

    random.seed(1)
    np.random.seed(2)
    np.random.normal()  # a cached Gaussian in NumPy's state too
    state = {"rng": [rng_state()], "data": {"0": {"perm": np.arange(5, dtype=np.uint32), "pos": np.int64(7),
                                                  "w": np.linspace(0, 1, 3, dtype=np.float32), "ok": np.bool_(True)}}}
    save_checkpoint(tmp_path, 4, {"w": torch.ones(1)}, {}, state, tiny_cpu(), keep=1)
    meta = Checkpoint.latest(tmp_path, resume=True).meta  # torch.load(weights_only=True) inside
    got = meta["data"]["0"]
    assert got["perm"].dtype == np.uint32 and got["perm"].tolist() == [0, 1, 2, 3, 4]
    assert got["w"].dtype == np.float32 and np.array_equal(got["w"], state["data"]["0"]["w"])
    assert got["pos"] == 7 and got["ok"] is True
    saved = meta["rng"][0]["numpy"]
    assert saved[0] == "MT19937" and np.array_equal(saved[1], np.random.get_state()[1]) and saved[2:] == np.random.get_state()[2:]
    assert meta["rng"][0]["python"] == random.getstate()

    class Payload:  # what a tampered checkpoint would carry: loading must refuse it, not run it
        def __reduce__(self):
            return (print, ("ran",))

    with open(tmp_path / "step-4" / "trainer.pt", "wb") as f:
        pickle.dump({"step": 4, "x": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        Checkpoint.latest(tmp_path, resume=True)


def test_rank_data_states_merge_per_source_and_shard():
    # Pretraining: {source: {shard: position}} per rank; fine-tuning: {shard: batcher state} per rank.
    assert merge_rank_states([{"mlm": {"0": 1}, "tlm": {"0": 2}}, {"mlm": {"1": 3}, "tlm": {"1": 4}}]) == {
        "mlm": {"0": 1, "1": 3},
        "tlm": {"0": 2, "1": 4},
    }
    assert merge_rank_states([{"0": {"rng": 1}}, {"1": {"rng": 2}}]) == {"0": {"rng": 1}, "1": {"rng": 2}}
