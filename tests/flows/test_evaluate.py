"""`labse evaluate tatoeba` end to end on an exported tiny model and the real Tatoeba files: the numbers
equal an independent computation with sentence-transformers on the same folder; results land in
eval_results (appended, never replacing earlier runs), a JSON summary, a PNG and an MLflow table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.evaluate import TatoebaEvalConfig, run_tatoeba
from labse_core.evaluation.tatoeba import load_tatoeba
from storage import catalog
from storage.layout import Layout
from tests.conftest import TATOEBA
from tests.labse_core.test_evaluation_bucc import plain_bucc

LANGS = ["deu", "fra", "nld", "spa"]


@pytest.fixture(scope="module")
def model_dir(tiny_eval_model) -> Path:
    return tiny_eval_model


def st_accuracy(model_dir: Path, langs: list[str]) -> dict[str, tuple[float, float]]:
    """sentence-transformers embeddings, float64 scores, one query at a time."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    out = {}
    for lang in load_tatoeba(TATOEBA, langs):
        x = st.encode(list(lang.sentences), batch_size=64, normalize_embeddings=True).astype(np.float64)
        e = st.encode(list(lang.english), batch_size=64, normalize_embeddings=True).astype(np.float64)
        fwd = np.mean([np.argmax(e @ x[i]) == i for i in range(len(x))])
        bwd = np.mean([np.argmax(x @ e[i]) == i for i in range(len(e))])
        out[lang.code] = (float(fwd), float(bwd))
    return out


def test_tatoeba_run_equals_sentence_transformers_and_appends_results(model_dir):
    import mlflow
    from mlflow import MlflowClient

    layout = Layout.from_env()
    # fp32: the comparison is of two libraries on the same arithmetic (other precisions: test_precision.py)
    first = run_tatoeba(TatoebaEvalConfig(model=str(model_dir), langs=LANGS, precision="fp32"), layout)
    want = st_accuracy(model_dir, LANGS)
    got = {s.code: (s.acc_xx_en, s.acc_en_xx) for s in first.result.languages}
    assert set(got) == set(want)
    for code in want:
        # Same folder, two libraries: embeddings agree to ~1e-6, so retrieval may flip only on near-ties.
        assert got[code] == pytest.approx(want[code], abs=2e-3), code
    assert max(np.mean(v) for v in want.values()) > 0.03  # far above chance (0.001): the comparison means something
    trained = first.result.group("trained")
    assert trained is not None and set(trained.languages) == {"deu", "fra", "spa"}  # from the model card
    assert first.summary["trained_langs_from"] == "model card" and first.summary["precision"] == "fp32"

    second = run_tatoeba(TatoebaEvalConfig(model=str(model_dir), langs=["deu"]), layout)
    rows = catalog.query(layout, "SELECT run_id, count(*) AS n FROM eval_results WHERE eval_set = 'tatoeba-v1' "
                                 f"AND run_id IN ('{first.run_id}', '{second.run_id}') GROUP BY 1").to_pylist()
    assert {r["run_id"]: r["n"] for r in rows} == {first.run_id: first.rows, second.run_id: second.rows}
    one = catalog.query(layout, "SELECT value, model_uri, model_version, precision, n FROM eval_results WHERE run_id = "
                                f"'{first.run_id}' AND scope = 'language' AND language = 'deu' AND direction = 'xx->en'").to_pylist()
    assert one == [{"value": got["deu"][0], "model_uri": str(model_dir.resolve()), "model_version": None,
                    "precision": "fp32", "n": 1000}]

    summary = json.loads(first.summary_path.read_text())
    assert summary["languages"]["deu"]["xx->en"] == got["deu"][0] and first.plot_path.stat().st_size > 5000
    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.data.metrics["tatoeba/evaluated"] == pytest.approx(np.mean([np.mean(v) for v in got.values()]))
    arts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"tatoeba_results.json", "tatoeba.json", "tatoeba.png"} <= arts
    table = mlflow.load_table("tatoeba_results.json", run_ids=[first.run_id])
    assert len(table) == first.rows


def test_cli_evaluates_a_registered_model_and_reports_bad_input(model_dir):
    import mlflow

    from labse_core.mlflow_model import log_encoder

    with mlflow.start_run(run_name="register-eval-test"):
        log_encoder(model_dir, registered_model_name="evaltest")
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "tatoeba", "--model", "models:/evaltest/latest", "--langs", "deu,fra"])
    assert res.exit_code == 0, res.output
    assert "xtreme36" in res.output and "eval_results" in res.output
    row = catalog.query(Layout.from_env(), "SELECT DISTINCT model_uri, model_version FROM eval_results "
                                           "WHERE model_uri = 'models:/evaltest/latest'").to_pylist()
    assert row == [{"model_uri": "models:/evaltest/latest", "model_version": "1"}]

    for args, message in [
        (["--model", "models:/nosuchmodel@champion"], "models:/nosuchmodel@champion"),
        (["--model", "/no/such/folder"], "not a folder"),
        (["--model", str(model_dir), "--langs", "xx"], "language 'xx'"),
        (["--model", str(model_dir), "--data", "/no/such/dir"], "--data /no/such/dir"),
    ]:
        res = runner.invoke(app, ["evaluate", "tatoeba", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output


def test_evaluate_output_in_a_pipe_keeps_each_line_whole(model_dir, tmp_path):
    """stdout not a terminal (a log, CI): no wrapping at 80 columns, so the "try:" query and a long path
    stay one line each that can be copied (rich wrapped both before)."""
    import subprocess
    import sys

    home = tmp_path / ("a-home-folder-with-a-long-name-" * 3) / "labse_home"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PREFECT_HOME")}
    env["LABSE_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "evaluate", "tatoeba", "--model", str(model_dir),
                        "--langs", "deu"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    tries = [line for line in lines if line.startswith("try: labse sql ")]
    assert len(tries) == 1 and tries[0].endswith("AND scope = 'group'\""), r.stdout
    summary = next(line for line in lines if line.startswith("summary:"))
    assert summary.split()[-1].startswith(str(home)) and summary.endswith("tatoeba.json"), r.stdout
    assert len(tries[0]) > 80 and len(summary) > 80  # long enough that an 80-column console would wrap them
    assert "\x1b[" not in r.stdout  # no colour codes either


def test_labse_mine_equals_brute_force_on_the_same_embeddings(model_dir, real_catalogs, tmp_path):
    from labse_core.embed import encode, resolve_model
    from labse_core.gettext_catalog import catalog_pairs, read_mo
    from labse_core.text.normalize import normalize_text
    from tests.labse_core.test_mining import brute_force

    pairs = [(p.src_text, p.tgt_text) for p in catalog_pairs(read_mo(real_catalogs / "de" / "LC_MESSAGES" / "gtk20.mo"))
             if not any(c in p.src_text + p.tgt_text for c in "\r\n")]  # one sentence per line
    model = resolve_model(str(model_dir))

    def distinct_vectors(texts):  # a bag of subwords maps some different strings to one vector: exact ties
        emb = encode(texts, model, progress=False).round(5)
        _, first = np.unique(emb, axis=0, return_index=True)
        return [texts[i] for i in sorted(first)]

    en = distinct_vectors(list(dict.fromkeys(e for e, _ in pairs[:300])))
    de = distinct_vectors(list(dict.fromkeys(d for _, d in pairs[100:400])))  # hidden translations among distractors
    (tmp_path / "de.txt").write_text("\n".join(de) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(en) + "\n")
    runner = CliRunner()
    res = runner.invoke(app, ["mine", "--src", str(tmp_path / "de.txt"), "--tgt", str(tmp_path / "en.txt"),
                              "--src-lang", "de", "--tgt-lang", "en", "--model", str(model_dir), "--threshold", "0",
                              "--no-filter", "--chunk-size", "100", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert "precision fp32" in res.output
    got = catalog.query(Layout.from_env(), "SELECT src_index, tgt_index, margin, src_text, precision FROM mined WHERE src_origin = "
                                           f"'{tmp_path / 'de.txt'}' AND src_lang = 'de' AND tgt_lang = 'en'").to_pylist()
    want = brute_force(encode(de, model, progress=False), encode(en, model, progress=False), k=4, mode="max")
    assert {(r["src_index"], r["tgt_index"]) for r in got} == set(want) and len(want) > 150
    assert {r["precision"] for r in got} == {"fp32"}
    for r in got:
        assert r["margin"] == pytest.approx(want[(r["src_index"], r["tgt_index"])], rel=1e-4)
        assert r["src_text"] == normalize_text(de[r["src_index"]])  # stored as the data pipeline normalizes

    (tmp_path / "empty.txt").write_text("")
    for args, message in [
        (["--src", str(tmp_path / "empty.txt"), "--model", str(model_dir)], "no sentences"),
        (["--src", str(tmp_path / "de.txt")], "--model is needed"),
        (["--src", "nope.txt", "--model", str(model_dir)], "no such file"),
        (["--src", str(tmp_path / "de.txt"), "--model", str(model_dir), "--mode", "both"], "--mode"),
    ]:
        res = runner.invoke(app, ["mine", "--tgt", str(tmp_path / "en.txt"), "--src-lang", "de", "--tgt-lang", "en", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output


def test_evaluate_bucc_on_held_out_corpus_pairs(model_dir, real_catalogs, tmp_path):
    import pyarrow as pa

    from labse_core.data.held_out import is_held_out
    from labse_core.embed import encode
    from labse_core.evaluation import bucc
    from labse_core.gettext_catalog import catalog_pairs, read_mo
    from storage import tracking
    from storage.datasets import DatasetWriter
    from storage.io import write_parquet
    from storage.schemas import CLEAN_PAIRS

    session_home = os.environ["LABSE_HOME"]
    layout = Layout.from_env(tmp_path / "home").ensure()
    rows = [(p.src_text, p.tgt_text) for p in catalog_pairs(read_mo(real_catalogs / "de" / "LC_MESSAGES" / "coreutils.mo"))]
    rows = list(dict.fromkeys(r for r in rows if "\n" not in r[0] + r[1]))
    n = len(rows)
    table = pa.table({"src_lang": ["en"] * n, "src_text": [s for s, _ in rows], "tgt_text": [t for _, t in rows],
                      "pair_key": [str(i) for i in range(n)], "source": ["gettext-mo"] * n, "origin": ["coreutils.mo"] * n,
                      "line": pa.array(range(n), pa.int64()), "locale": ["de"] * n, "context": pa.nulls(n, pa.string())})
    w = DatasetWriter(layout, CLEAN_PAIRS).begin()
    write_parquet(CLEAN_PAIRS, table, w.file_path({"lang": "de"}, 0))
    w.publish()
    try:
        res = CliRunner().invoke(app, ["--home", str(layout.home), "evaluate", "bucc", "--model", str(model_dir),
                                       "--gold", "30", "--distractors", "50", "--held-out-fraction", "0.3",
                                       "--precision", "fp32"])
        assert res.exit_code == 0, res.output
        assert "F1" in res.output and "xSIM" in res.output
        got = catalog.query(layout, "SELECT split, metric, value FROM eval_results WHERE eval_set = 'bucc-gettext' AND "
                                    "scope = 'language' AND language = 'de' AND direction = 'both'").to_pylist()
        value = {(r["split"], r["metric"]): r["value"] for r in got}
        # Independently: the same held-out pairs and sets, mined by brute force on the model's embeddings,
        # the threshold tuned on dev by trying every score, test scored at it (not evaluate_language again).
        held = [(t, s) for s, t in rows if is_held_out(s, t, 0.3)]
        sets = bucc.build_sets(held, 30, 50)
        want = plain_bucc(sets, lambda xs: encode(xs, str(model_dir), progress=False))
        # Dev and test prefer different thresholds on these sets (1.026 and 1.097 when written, test F1 0.31 at
        # dev's, 0.42 at its own): tuning on test would report other numbers.
        assert want["oracle_f1"] > want["f1"] + 0.05 and want["test_threshold"] > want["dev_threshold"] + 0.02, want
        assert value[("dev", "threshold")] == pytest.approx(want["dev_threshold"], rel=1e-5)
        assert value[("test", "threshold")] == pytest.approx(want["dev_threshold"], rel=1e-5)
        assert (value[("test", "precision")], value[("test", "recall")], value[("test", "f1")]) == \
            pytest.approx((want["precision"], want["recall"], want["f1"]), abs=1e-9)
        assert value[("test", "f1")] > 0.1  # the tiny bag-of-subwords model finds some of the hidden pairs
        # `labse mine --threshold-from bucc` then uses the threshold tuned for this model (de's dev value);
        # without it the threshold is calibrated from the run's own margins, and the run says which.
        src_file, tgt_file = tmp_path / "de.txt", tmp_path / "en.txt"
        src_file.write_text("".join(de + "\n" for de, _ in held[:30]))  # held: (de, en)
        tgt_file.write_text("".join(en + "\n" for _, en in held[:30]))
        mine_args = ["--home", str(layout.home), "mine", "--src", str(src_file), "--tgt", str(tgt_file),
                     "--src-lang", "de", "--tgt-lang", "en", "--model", str(model_dir), "--no-filter"]
        res = CliRunner().invoke(app, [*mine_args, "--threshold-from", "bucc"])
        assert res.exit_code == 0, res.output
        mined_summary = json.loads(next(layout.runs.rglob("mine.json")).read_text())
        assert mined_summary["threshold"] == pytest.approx(value[("dev", "threshold")])
        assert "tuned on bucc dev for de" in mined_summary["threshold_source"]
        assert mined_summary["threshold_method"] == "bucc-tuned"
        res = CliRunner().invoke(app, [*mine_args, "--chunk-size", "7"])  # another run (the work key differs)
        assert res.exit_code == 0, res.output
        runs = sorted(layout.runs.rglob("mine.json"), key=lambda p: p.stat().st_mtime)
        calibrated = json.loads(runs[-1].read_text())
        assert calibrated["threshold_method"] in ("otsu", "fallback")
        assert calibrated["threshold_detail"]["candidates"] >= calibrated["candidates"]  # scored >= pairs kept
        assert calibrated["threshold_method"] == "otsu" or calibrated["threshold_detail"]["why"]
        from mlflow import MlflowClient

        tags = MlflowClient().get_run(calibrated["run_id"]).data.tags
        assert tags["threshold_method"] == calibrated["threshold_method"] and tags["threshold_source"]
        res = CliRunner().invoke(app, ["--home", str(layout.home), "evaluate", "bucc", "--model", str(model_dir),
                                       "--langs", "fr"])
        assert res.exit_code == 2 and "no language 'fr'" in res.output
    finally:  # `--home` re-pointed this process: back to the session's home and MLflow store
        os.environ["LABSE_HOME"] = session_home
        tracking.configure(Layout.from_env())


def _system_pages(n: int) -> list[str]:
    """Page names (man1/x.1.gz) this machine has in German and in English, real files, the first n."""
    root = Path("/usr/share/man")
    names = sorted(p.name for p in (root / "de" / "man1").glob("*.1.gz")
                   if not p.is_symlink() and (root / "man1" / p.name).is_file() and not (root / "man1" / p.name).is_symlink())
    if len(names) < n:
        pytest.skip(f"this machine has {len(names)} man pages in German and English (< {n})")
    return [f"man1/{x}" for x in names[:n]]


def test_labse_mine_on_folders_of_real_man_pages_mines_within_pages_of_the_same_name(model_dir, tmp_path):
    import shutil

    pages = _system_pages(4)
    for rel in pages:
        for lang, src in (("de", Path("/usr/share/man/de") / rel), ("en", Path("/usr/share/man") / rel)):
            (tmp_path / lang / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tmp_path / lang / rel)
    (tmp_path / "en" / "man1" / "only-english.1").write_text(".TH X 1\n.SH NAME\nx \\- a page with no translation\n")
    (tmp_path / "de" / "notes.bin").write_bytes(b"\x00\x01\x02")
    runner = CliRunner()
    res = runner.invoke(app, ["mine", "--src", str(tmp_path / "de"), "--tgt", str(tmp_path / "en"), "--src-lang", "de",
                              "--tgt-lang", "en", "--model", str(model_dir), "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert "mined within 4 document pairs" in res.output and "1 binary" in res.output and "1 unpaired" in res.output
    # the fixed threshold within document pairs is the design, not a failed calibration: no warning
    assert "document_calibration none" in res.output and "give --threshold" not in res.output
    rows = catalog.query(Layout.from_env(), "SELECT src_doc, src_pos, tgt_doc, tgt_pos, margin FROM mined WHERE src_origin = "
                                            f"'{tmp_path / 'de'}'").to_pylist()
    assert rows and all(r["src_doc"] == r["tgt_doc"] for r in rows)
    assert {r["src_doc"] for r in rows} <= {p.removesuffix(".gz") for p in pages}
    assert min(r["margin"] for r in rows) >= 1.06  # the fixed threshold within document pairs
    assert len({(r["src_doc"], r["src_pos"]) for r in rows}) == len(rows)  # one-to-one within a page

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.txt").write_text("Ein Satz, der nirgends steht.")
    for src, message in [(tmp_path / "empty", "no documents in this folder"),
                         (tmp_path / "junk", "no usable document (1 files: 1 empty)"),
                         (tmp_path / "other", "no document pairs to mine within")]:
        res = runner.invoke(app, ["mine", "--src", str(src), "--tgt", str(tmp_path / "en"), "--src-lang", "de",
                                  "--tgt-lang", "en", "--model", str(model_dir)])
        assert res.exit_code == 2, (src, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.output
