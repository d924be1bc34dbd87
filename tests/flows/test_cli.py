"""`labse` as a user runs it: a separate process, exit codes, messages without tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from tests.labse_core.test_gettext_catalog import PO


def labse(home, *args, check=True):
    env = dict(os.environ, LABSE_HOME=str(home), COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"labse {args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def home_with_corpus(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli") / "home"
    po_dir = tmp_path_factory.mktemp("po")
    (po_dir / "de.po").write_text(PO)
    (po_dir / "fr.po").write_text(PO.replace("Language: de", "Language: fr"))
    labse(home, "ingest", "--no-system", "--path", str(po_dir), "--workers", "1")
    return home


def test_sql_formats(home_with_corpus):
    q = "SELECT lang, count(*) AS n FROM corpus_raw GROUP BY 1 ORDER BY 1"
    assert json.loads(labse(home_with_corpus, "sql", q, "--format", "json").stdout) == [
        {"lang": "de", "n": 7}, {"lang": "fr", "n": 7}]
    assert labse(home_with_corpus, "sql", q, "--format", "csv").stdout == "lang,n\nde,7\nfr,7\n"
    table = labse(home_with_corpus, "sql", q).stdout
    assert "lang" in table and "de" in table and "fr" in table


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELEC lang FROM corpus_raw", "SQL error: Parser Error"),
        ("SELECT * FROM corpus_clean", "corpus_clean does not exist"),
        ("DROP VIEW corpus_raw", "only read queries"),
    ],
)
def test_sql_errors_are_messages_not_tracebacks(home_with_corpus, sql, message):
    r = labse(home_with_corpus, "sql", sql, check=False)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_malformed_po_given_to_the_stage_names_file_and_line(tmp_path):
    bad = tmp_path / "de.po"
    bad.write_text('msgid "a"\nmsgstr "b"\n\nmsgid "c"\nmsgstr "unterminated\n')
    r = labse(tmp_path / "home", "ingest", "--no-system", "--path", str(bad), check=False)
    assert r.returncode == 2
    assert f"{bad}:5: malformed string literal" in r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr


def test_bad_pipeline_config_is_reported(tmp_path):
    r = labse(tmp_path / "home", "pipeline", "--preset", "huge", check=False)
    assert r.returncode == 2 and "unknown preset 'huge'" in r.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text('{"ingest": {"rows_per_file": -1}}')
    r = labse(tmp_path / "home", "pipeline", "--config", str(cfg), check=False)
    assert r.returncode == 2 and "rows_per_file" in r.stderr


def test_sql_before_any_run(tmp_path):
    r = labse(tmp_path / "empty", "sql", "SELECT 1", check=False)
    assert r.returncode == 2 and "no catalog" in r.stderr


@pytest.mark.parametrize("content, said", [
    ("{", "bad.json:1: not JSON"),
    ('{"levers": {}}', 'expected {"base"'),
    ('{"base": {"preset": "nope"}, "levers": {"a": {}}}', "base.preset 'nope' is not one of"),
    ('{"levers": {"a": {"no_such_field": 1}}}', "unknown FinetuneConfig fields: no_such_field"),
    ('{"levers": {"a": {"lr": -1}}}', "lr must be > 0"),
    ('{"levers": {"a": 3}}', "lever 'a' is not an object"),
])
def test_a_bad_lever_file_is_one_line_naming_it(tmp_path, content, said):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = labse(tmp_path / "empty", "ablation", "--levers", str(bad), check=False)
    out = (r.stderr + r.stdout).strip()
    assert r.returncode == 2 and "Traceback" not in out and len(out.splitlines()) == 1, out
    assert f"--levers {bad}" in out and said in out, out


def test_ablation_before_any_vocabulary_says_what_to_run(tmp_path):
    r = labse(tmp_path / "empty", "ablation", "--steps", "10", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert "spm.model does not exist: build the vocabulary first" in " ".join((r.stderr + r.stdout).split())
