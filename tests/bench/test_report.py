"""bench.report: the committed docs hold exactly the tables the committed results JSON generates; a
changed number in the JSON shows as a difference; prose outside the markers is never touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.common import RESULTS

DOC = """# Benchmarks

Prose the script must keep, with a number it must not touch: 1.95x.

<!-- bench.report: pretrain_bench -->
stale table
<!-- /bench.report: pretrain_bench -->

Notes under the table.
"""


def test_committed_docs_equal_what_the_committed_results_generate():
    docs = report.default_docs()
    assert any("bench.report:" in d.read_text() for d in docs), "no generated block in docs/*.md"
    problems = report.check(docs, RESULTS)
    assert not problems, "\n\n".join(problems)


def test_every_committed_result_has_a_renderer_and_a_block():
    stems = report.result_stems(RESULTS)
    assert {"prepare_bench", "pretrain_bench", "finetune_bench", "encode_bench", "mine_bench"} <= set(stems)
    shown = {name for d in report.default_docs() for name in report.rewrite(d.read_text())[1]}
    assert set(stems) <= shown
    for stem in stems:
        assert report.render(stem).count("\n| ") >= 3, stem  # a table with a header and rows


@pytest.fixture
def results(tmp_path) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    for p in RESULTS.glob("*.json"):
        if not p.name.endswith(".quick.json"):
            shutil.copy(p, out / p.name)
    return out


def test_a_changed_number_in_the_json_makes_the_check_fail_and_the_rewrite_show_it(results, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(report.rewrite(DOC, results)[0])
    assert report.main(["--check", "--results", str(results), "--docs", str(doc)]) == 1  # other results lack blocks
    only = results / "only"
    only.mkdir()
    shutil.copy(results / "pretrain_bench.json", only)
    assert report.main(["--check", "--results", str(only), "--docs", str(doc)]) == 0

    data = json.loads((only / "pretrain_bench.json").read_text())
    data["metrics"]["real_tokens_per_s"]["ratio_of_median"] = 9.876
    data["metrics"]["peak_rss_mb"]["ours"] = 1234.4
    (only / "pretrain_bench.json").write_text(json.dumps(data))
    problems = report.check([doc], only)
    assert len(problems) == 1 and "9.88x" in problems[0] and "1,234" in problems[0]
    assert report.main(["--check", "--results", str(only), "--docs", str(doc)]) == 1
    assert report.main(["--results", str(only), "--docs", str(doc)]) == 0  # rewrite
    assert "| real tokens/s |" in doc.read_text() and "9.88x" in doc.read_text()
    assert report.check([doc], only) == []


def test_rewrite_replaces_only_the_blocks_and_is_idempotent(results):
    once, names = report.rewrite(DOC, results)
    assert names == ["pretrain_bench"]
    assert "stale table" not in once
    before, _, rest = DOC.partition("<!-- bench.report: pretrain_bench -->")
    assert once.startswith(before) and once.endswith(rest.partition("<!-- /bench.report: pretrain_bench -->")[2])
    ratio = json.loads((results / "pretrain_bench.json").read_text())["metrics"]["real_tokens_per_s"]["ratio_of_median"]
    assert f"{ratio:.2f}x" in once
    assert report.rewrite(once, results) == (once, names)


def test_bad_markers_and_missing_results_are_errors(results, tmp_path):
    with pytest.raises(report.ReportError, match="no_such_bench"):
        report.rewrite("<!-- bench.report: no_such_bench -->\n<!-- /bench.report: no_such_bench -->\n", results)
    with pytest.raises(report.ReportError, match="unpaired"):
        report.rewrite("<!-- bench.report: pretrain_bench -->\nno closing marker\n", results)
    (results / "odd_bench.json").write_text("{}")
    with pytest.raises(report.ReportError, match="no table is known"):
        report.render("odd_bench", results)
    (results / "pretrain_bench.json").write_text('{"metrics": {}}')
    with pytest.raises(report.ReportError, match="not the shape"):
        report.render("pretrain_bench", results)
    doc = tmp_path / "d.md"
    doc.write_text("<!-- bench.report: nothing_here -->\n<!-- /bench.report: nothing_here -->\n")
    assert report.main(["--check", "--results", str(results), "--docs", str(doc)]) == 2


def test_quick_results_are_not_committed_results(results):
    (results / "pretrain_bench.quick.json").write_text("{}")
    assert "pretrain_bench.quick" not in report.result_stems(results)
