"""`labse nmt-check` end to end on man pages written here from real gettext messages (German and English
pages of the same names, as `labse fetch-docs manpages` lays them out), with the tiny exported encoder
mining and a tiny Marian model per arm: the arms train on the same number of pairs, none of them shares a
side with a held-out sentence, the recorded scores (eval_results, MLflow, nmt.json) are the ones sacrebleu
gives for the saved translations' model, and bad input is one line with exit code 2."""

from __future__ import annotations

import dataclasses
import gzip
import json

import mlflow
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.nmt_check import NmtCheckConfig, build_data, held_out, run_nmt_check, sample_arms
from labse_core.evaluation.docs_bitext import SentencePair
from labse_core.nmt import NmtConfig
from storage import catalog
from storage.layout import Layout

TINY_NMT = NmtConfig(vocab_size=200, d_model=32, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=64, max_len=48,
                     batch_size=16, max_steps=12, eval_every=6, warmup_steps=4, max_minutes=2.0, threads=1)


@pytest.fixture(scope="module")
def docs_root(tmp_path_factory, real_catalogs):
    """24 pages per language, 6 sentence-like catalog messages each as ``.PP`` paragraphs."""
    from tests.eval_helpers import sentence_messages

    pairs = sentence_messages("de", max_words=20)[:144]
    if len(pairs) < 144:
        pytest.skip(f"this machine's German catalogs give {len(pairs)} sentence messages (< 144)")
    root = tmp_path_factory.mktemp("manpages")
    for page in range(24):
        chunk = pairs[page * 6:(page + 1) * 6]
        for lang, side, head in (("en", 0, "DESCRIPTION"), ("de", 1, "BESCHREIBUNG")):
            src = f".TH P{page} 1\n.SH {head}\n" + "".join(f".PP\n{p[side]}\n" for p in chunk)
            path = root / lang / "man1" / f"p{page}.1.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(src.encode()))
    return root


def test_build_data_keeps_held_out_pages_and_sentences_out_of_every_arm():
    gold = [SentencePair(f"de {i}.", f"en {i}.", f"man1/p{i % 40}.1") for i in range(400)]
    rows = [type("Row", (), {"src_text": f"de {i}.", "tgt_text": f"en {i}.", "src_doc": f"man1/p{i % 40}.1"})()
            for i in range(0, 400, 2)]
    cands = [(f"man1/p{i % 40}.1", f"de {i}.", f"en {i + 1}.") for i in range(400)]
    cfg = NmtCheckConfig(held_out_share=0.3, test_pairs=50, dev_pairs=20)
    data = build_data(cfg, gold, rows, cands)
    held_pages = {p.page for p in gold if held_out(p.page, 0.3, 0)}
    assert held_pages and len(held_pages) < 40
    test_side = {s for pair in data.test + data.dev for s in pair}
    for arm, pairs in data.train.items():
        assert pairs, arm
        assert not test_side & {s for pair in pairs for s in pair}, arm
    assert len(data.test) == 50 and len(data.dev) == 20
    arms = sample_arms(data, ["mined", "gold", "unfiltered"], None, 0)
    n = min(len(data.train["mined"]), len(data.train["gold"]))
    assert {len(p) for p in arms.values()} == {n}
    # Few gold pairs size every arm; without the gold arm, every mined pair trains.
    few_gold = dataclasses.replace(data, train=data.train | {"gold": data.train["gold"][:10]})
    assert {len(p) for p in sample_arms(few_gold, ["mined", "gold", "unfiltered"], None, 0).values()} == {10}
    assert 10 < len(data.train["mined"]) < len(data.train["unfiltered"])
    two = sample_arms(few_gold, ["mined", "unfiltered"], None, 0)
    assert {len(p) for p in two.values()} == {len(data.train["mined"])}
    assert sorted(two["mined"]) == sorted(data.train["mined"])
    assert {len(p) for p in sample_arms(few_gold, ["mined", "unfiltered"], 7, 0).values()} == {7}


def test_nmt_check_trains_three_arms_on_equal_data_and_records_what_it_measured(docs_root, tiny_eval_model, tmp_path):
    layout = Layout.from_env()
    cfg = NmtCheckConfig(src_lang="de", model=str(tiny_eval_model), docs=docs_root, nmt=TINY_NMT, held_out_share=0.3,
                         test_pairs=20, dev_pairs=10, max_pages=None)
    report = run_nmt_check(cfg, layout)
    s = report.summary
    assert set(s["arms"]) == {"mined", "gold", "unfiltered"}
    assert len(set(s["train_pairs"].values())) == 1 and s["train_pairs"]["gold"] > 0
    assert s["data"]["test"] == 20
    for arm, r in s["arms"].items():
        assert r["steps"] == TINY_NMT.max_steps and r["stopped_by"] == "steps"
        assert [p["step"] for p in r["curve"] if p.get("dev_loss") is not None] == [6, 12]
        got = catalog.query(layout, f"SELECT metric, value, n, direction FROM eval_results WHERE run_id = "
                                    f"'{report.run_id}' AND eval_set = 'nmt-{arm}' ORDER BY metric").to_pylist()
        assert [(g["metric"], g["value"], g["n"], g["direction"]) for g in got] == [
            ("bleu", pytest.approx(r["bleu"]), 20, "de->en"), ("chrf", pytest.approx(r["chrf"]), 20, "de->en")]
        history = mlflow.MlflowClient().get_metric_history(r["mlflow_run_id"], "dev_loss")
        assert [h.step for h in history] == [6, 12]
    assert json.loads(report.summary_path.read_text())["mined_over_gold_chrf"] == pytest.approx(
        s["arms"]["mined"]["chrf"] / s["arms"]["gold"]["chrf"])
    assert report.plot_path.stat().st_size > 10_000
    mined = catalog.query(layout, f"SELECT count(*) AS n, count(src_doc) AS docs FROM mined WHERE run_id = "
                                  f"'{s['mine_run_id']}'").to_pylist()[0]
    assert mined["n"] == s["mine"]["kept"] == mined["docs"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--docs", "{tmp}/nothing"], "no English man pages (en/); run `labse fetch-docs manpages"),
    (["--docs", "{root}", "--src-lang", "fr"], "no man pages for 'fr' (fetched: de); run `labse fetch-docs manpages --langs fr`"),
    (["--preset", "huge"], "--preset huge: unknown; presets: quick, full"),
])
def test_nmt_check_bad_input_is_one_line(docs_root, tiny_eval_model, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, root=docs_root) for a in args]
    res = CliRunner().invoke(app, ["nmt-check", "--model", str(tiny_eval_model), *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_the_nmt_check_flow_publishes_its_summary_as_a_prefect_artifact(prefect_harness, docs_root, tiny_eval_model):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.stage_flows import STAGE_FLOWS, nmt_check_flow

    assert STAGE_FLOWS["labse-nmt-check"] is nmt_check_flow  # what `labse serve` deploys
    cfg = NmtCheckConfig(src_lang="de", model=str(tiny_eval_model), docs=docs_root, nmt=TINY_NMT, held_out_share=0.3,
                         test_pairs=20, dev_pairs=10, max_pages=None, arms=["mined", "gold"])
    out = nmt_check_flow(config=cfg)
    assert set(out["chrf"]) == {"mined", "gold"} and out["pair"] == "de-en"
    assert out["mined_over_gold_chrf"] == pytest.approx(out["chrf"]["mined"] / out["chrf"]["gold"])

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nmt-check-summary"])))

    import asyncio

    found = asyncio.run(artifacts())
    assert any(f"mined **{out['chrf']['mined']:.1f}**" in (a.data or "") and "data:image/png;base64," in (a.data or "")
               for a in found)
