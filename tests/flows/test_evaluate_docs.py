"""`labse evaluate docs` end to end on the tiny exported model and man pages written here (real gettext
sentences as po4a-style paragraphs): the recorded numbers equal an independent computation on the same
sets; bad input is one line and exit code 2."""

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
    """An English page and its German translation, one ``.PP`` paragraph per catalog message of coreutils
    (a translator's section added, as po4a output has)."""
    from labse_core.gettext_catalog import catalog_pairs, read_mo

    pairs = []
    for p in catalog_pairs(read_mo(real_catalogs / "de" / "LC_MESSAGES" / "coreutils.mo")):
        en, de = p.src_text.strip(), p.tgt_text.strip()
        if "\n" in en + de or en.startswith((".", "'")) or de.startswith((".", "'")) or "\\" in en + de:
            continue
        if len(en.split()) >= 5 and en.endswith(".") and de.endswith("."):
            pairs.append((en, de))
    pairs = list(dict.fromkeys(pairs))[:160]
    root = tmp_path_factory.mktemp("man")
    en_src = ".TH CORE 1\n.SH NAME\ncore \\- messages\n.SH DESCRIPTION\n" + "".join(f".PP\n{e}\n" for e, _ in pairs)
    de_src = (".TH CORE 1\n.SH BEZEICHNUNG\ncore \\- Meldungen\n.SH BESCHREIBUNG\n" + "".join(f".PP\n{d}\n" for _, d in pairs)
              + ".SH \\(:UBERSETZUNG\nDie deutsche \\(:Ubersetzung wurde 2024 erstellt.\n")
    for path, src in ((root / "man1" / "core.1.gz", en_src), (root / "de" / "man1" / "core.1.gz", de_src)):
        path.parent.mkdir(parents=True)
        path.write_bytes(gzip.compress(src.encode()))
    return root


def test_evaluate_docs_records_what_an_independent_computation_gives(tiny_eval_model, man_root, tmp_path):
    from mlflow import MlflowClient

    from labse_core.embed import encode, resolve_model
    from labse_core.evaluation import bucc
    from labse_core.evaluation import docs_bitext as docs
    from labse_core.mining.calibrate import calibrate
    from labse_core.mining.miner import MineConfig, mine_embeddings

    res = CliRunner().invoke(app, ["evaluate", "docs", "--model", str(tiny_eval_model), "--man-root", str(man_root),
                                   "--gold", "25", "--precision", "fp32", "--pairs-out", str(tmp_path / "pairs.tsv")])
    assert res.exit_code == 0, res.output
    summary = json.loads(next(Layout.from_env().runs.glob("*/docs.json")).read_text())
    run_id = summary["run_id"]

    ex = docs.extract_pairs(man_root, "de")
    assert len(ex.pairs) > 100 and summary["extraction"]["de"]["pairs"] == len(ex.pairs)
    tsv = (tmp_path / "pairs.tsv").read_text().splitlines()
    assert tsv[0] == "lang\tpage\tenglish\ttranslation" and len(tsv) == 1 + len(docs.unique_pairs(ex.pairs))
    model = resolve_model(str(tiny_eval_model))

    def embed(texts):
        return encode(texts, model, progress=False)

    split = docs.build_set(ex.pairs, 25, 2.0)
    cand = mine_embeddings(embed(list(split.src)), embed(list(split.tgt)), MineConfig(mode="max", index="flat"),
                           threshold=-np.inf)
    t = calibrate(cand.score, "mixture").value
    want = bucc.prf(cand, split.gold, t)
    oracle = bucc.best_threshold(cand, split.gold)
    rows = catalog.query(Layout.from_env(), "SELECT eval_set, scope, language, direction, metric, value, n FROM eval_results "
                                            f"WHERE run_id = '{run_id}'").to_pylist()
    val = {(r["eval_set"], r["scope"], r["language"], r["direction"], r["metric"]): r["value"] for r in rows}
    assert val[("bucc-manpages", "language", "de", "both", "f1")] == pytest.approx(want.f1)
    assert val[("bucc-manpages", "language", "de", "both", "threshold")] == pytest.approx(t, rel=1e-6)
    assert val[("bucc-manpages", "language", "de", "both", "oracle_f1")] == pytest.approx(oracle.f1)
    assert oracle.f1 >= want.f1 and want.f1 > 0.1  # above chance: the comparison means something

    lang = docs.retrieval_set(ex.pairs, "de", 1000)
    x, e = embed(list(lang.sentences)), embed(list(lang.english))
    fwd = float(np.mean([np.argmax(x[i] @ e.T) == i for i in range(len(x))]))
    bwd = float(np.mean([np.argmax(e[i] @ x.T) == i for i in range(len(e))]))
    assert val[("retrieval-manpages", "language", "de", "xx->en", "accuracy")] == pytest.approx(fwd)
    assert val[("retrieval-manpages", "language", "de", "en->xx", "accuracy")] == pytest.approx(bwd)
    assert val[("retrieval-manpages", "group", "evaluated", "both", "accuracy")] == pytest.approx((fwd + bwd) / 2)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["docs/f1"] == pytest.approx(want.f1) and metrics["docs/retrieval"] == pytest.approx((fwd + bwd) / 2)
    assert summary["mining"]["de"]["calibration"]["threshold_method"] in ("mixture", "fallback")


@pytest.mark.parametrize("args, message", [
    (["--langs", "xx"], "no man pages for language 'xx'"),
    (["--man-root", "/nonexistent/man"], "no such folder"),
    (["--gold", "0"], "--gold"),
    (["--task", "translate"], "'mining' or 'retrieval'"),
])
def test_evaluate_docs_bad_input_is_one_line(tiny_eval_model, man_root, args, message):
    res = CliRunner().invoke(app, ["evaluate", "docs", "--model", str(tiny_eval_model), "--man-root", str(man_root), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
