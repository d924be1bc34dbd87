"""Nothing a user types destroys or leaks data (issue 10), checked the way a user meets it: the
``labse`` script in a separate process, output to a pipe (not a terminal).

Each bad command must exit 2 with one line on stderr (no traceback) that names the file (and line)
or the setting, and leave every file of the home as it was (hashed before and after). The data is
real: a few of this machine's gettext catalogs and German/English pairs taken from them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labse_core.gettext_catalog import catalog_pairs, read_mo
from tests.conftest import LOCALE_ROOT
from tests.storage.test_catalog_sandbox import tree_hash

LABSE = Path(sys.executable).parent / "labse"
GREP = {lang: LOCALE_ROOT / f"{lang}/LC_MESSAGES/grep.mo" for lang in ("de", "fr")}
EN_GB = LOCALE_ROOT / "en_GB/LC_MESSAGES/glib20.mo"
W1 = ("--workers", "1")


def labse(home: Path, *args: str, check: bool = True, umask: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LABSE_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("COLUMNS", None)  # the default width of a pipe: what a log or CI gets
    cmd = [str(LABSE)] if LABSE.exists() else [sys.executable, "-m", "flows.cli"]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600,
                       preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    if check and r.returncode != 0:
        raise AssertionError(f"labse {args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def refused(home: Path, *args: str, expect: str | tuple[str, ...], whole_home: bool = False) -> str:
    """Run a bad command: exit 2, one plain line on stderr containing ``expect``, the lake unchanged
    (``whole_home``: every file of the home, the catalog included)."""
    watched = home if whole_home else home / "lake"
    before = tree_hash(watched)
    r = labse(home, *args, check=False)
    assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert any(e in lines[0] for e in ((expect,) if isinstance(expect, str) else expect)), lines[0]
    assert tree_hash(watched) == before, f"labse {args} changed {watched}"
    return lines[0]


def sql(home: Path, query: str):
    return json.loads(labse(home, "sql", query, "--format", "json").stdout)


def de_en_pairs(n: int = 300) -> list[tuple[str, str]]:
    out = []
    for name in ("coreutils", "grep", "glib20", "gtk30"):
        path = LOCALE_ROOT / f"de/LC_MESSAGES/{name}.mo"
        if path.exists():
            out += [(p.src_text, p.tgt_text) for p in catalog_pairs(read_mo(path))
                    if len(p.src_text) > 25 and not set("\t\n") & set(p.src_text + p.tgt_text)]
    if len(out) < n:
        pytest.skip("not enough German gettext pairs on this machine")
    return out[:n]


@pytest.fixture(scope="module")
def data(tmp_path_factory, real_catalogs) -> Path:
    if not all(p.exists() for p in GREP.values()):
        pytest.skip("no de/fr grep catalogs on this machine")
    d = tmp_path_factory.mktemp("data")
    pairs = de_en_pairs()
    (d / "pairs.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs))
    (d / "scored.tsv").write_text("en\tde\tscore\n" + "".join(f"{en}\t{de}\t0.9\n" for en, de in pairs[:50]))
    (d / "copies.tsv").write_text("".join(f"{en}\t{en}\n" for en, _ in pairs[:20]))  # every pair: copy
    (d / "eval.txt").write_text(pairs[0][1] + "\n")
    (d / "bad.po").write_text('msgid "a"\nmsgstr "unterminated\n')
    return d


@pytest.fixture(scope="module")
def home(tmp_path_factory, data) -> Path:
    """A home with corpus_raw (de + fr grep catalogs) and corpus_clean / corpus_rejects from it."""
    h = tmp_path_factory.mktemp("cli-safety") / "home"
    labse(h, "ingest", "--no-system", "--path", str(GREP["de"]), "--path", str(GREP["fr"]), *W1)
    labse(h, "prepare", "--eval-set", str(data / "eval.txt"), *W1)
    return h


def copy_home(home: Path, dest: Path) -> Path:
    shutil.copytree(home, dest)
    labse(dest, "catalog-refresh")  # the views name the lake's absolute paths
    return dest


def rows(home: Path, dataset: str) -> int:
    return sql(home, f"SELECT count(*) AS n FROM {dataset}")[0]["n"]


# ------------------------------------------------------------------------------------------------
# labse sql: read-only and sandboxed


@pytest.mark.parametrize(
    "query, expect",
    [
        ("EXPLAIN ANALYZE COPY (SELECT * EXCLUDE (lang) FROM corpus_clean LIMIT 3) "
         "TO '{lake}/corpus/clean/lang=de/part-00000.parquet' (FORMAT parquet)", "only read queries"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/any.csv'", "only read queries"),
        ("EXPLAIN ANALYZE SET threads = 1", "only read queries"),
        ("WITH t AS (COPY corpus_raw TO '{lake}/corpus/raw/lang=de/part-00000.parquet') SELECT 1", "only read queries"),
        ("SELECT * FROM read_text('/etc/shadow')", "refused"),
        ("SELECT * FROM read_csv('/etc/passwd')", "refused"),
        ("SELECT * FROM glob('/etc/*')", "refused"),
        ("SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')", "refused"),
    ],
)
def test_sql_attacks_are_refused_and_change_nothing(home, tmp_path, query, expect):
    """The issue's attacks through the command line (every other kind: tests/storage/test_catalog_sandbox.py)."""
    line = refused(home, "sql", query.format(lake=home / "lake", tmp=tmp_path), expect=expect, whole_home=True)
    assert "root:" not in line
    assert list(tmp_path.iterdir()) == []


def test_published_counts_still_match_the_files(home):
    listed = {r["name"]: r["rows"] for r in sql(home, "SELECT name, rows FROM datasets")}
    counted = sql(home, "SELECT (SELECT count(*) FROM corpus_raw) AS corpus_raw, "
                        "(SELECT count(*) FROM corpus_clean) AS corpus_clean, "
                        "(SELECT count(*) FROM corpus_rejects) AS corpus_rejects")[0]
    assert listed == counted and counted["corpus_clean"] > 0


def test_sql_output_for_scripts(home):
    r = labse(home, "sql", "SELECT 2024 AS y, lang FROM corpus_raw GROUP BY ALL ORDER BY lang")
    assert "2024" in r.stdout and "2,024" not in r.stdout
    assert labse(home, "sql", "SELECT 2024 AS y", "--format", "csv").stdout == "y\n2024\n"
    assert json.loads(labse(home, "sql", "SELECT 2024 AS y", "--format", "json").stdout) == [{"y": 2024}]


# ------------------------------------------------------------------------------------------------
# publishing never loses data


def test_all_inputs_unreadable_publishes_nothing(home, data):
    refused(home, "prepare", "--no-raw", "-i", str(data / "bad.po"), "--skip-bad", *W1,
            expect=f"every input was unreadable, nothing published: {data / 'bad.po'}:2:")


def test_empty_clean_never_replaces_a_corpus_unless_told(home, data, tmp_path):
    n_clean = rows(home, "corpus_clean")
    assert n_clean > 0
    line = refused(home, "prepare", "--no-raw", "-i", str(data / "copies.tsv"), "--langs", "en,de", *W1,
                   expect="would replace the")
    assert f"{n_clean:,} rows" in line and "--replace-empty" in line
    h = copy_home(home, tmp_path / "h")
    r = labse(h, "prepare", "--no-raw", "-i", str(data / "copies.tsv"), "--langs", "en,de", "--replace-empty", *W1)
    assert f"corpus_clean: previous version's {n_clean} rows replaced" in r.stdout
    # the empty dataset has a view with the dataset's columns: the suggested queries work
    assert rows(h, "corpus_clean") == 0
    assert sql(h, "SELECT count(*) AS n, min(tgt_text) AS t FROM corpus_clean WHERE lang = 'de'") == [{"n": 0, "t": None}]
    assert sql(h, "SELECT reason, count(*) AS n FROM corpus_rejects GROUP BY 1") == [{"reason": "copy", "n": 20}]


def test_ingest_replaces_corpus_raw_only_when_told(home, tmp_path):
    n_raw = rows(home, "corpus_raw")
    po = tmp_path / "it.po"
    po.write_text('msgid ""\nmsgstr "Language: it\\n"\n\nmsgid "Open file"\nmsgstr "Apri file"\n')
    line = refused(home, "ingest", "--no-system", "--path", str(po), *W1, expect="corpus_raw already holds")
    assert "--replace" in line and "--append" in line
    h = copy_home(home, tmp_path / "h")
    r = labse(h, "ingest", "--no-system", "--path", str(po), "--append", *W1)
    assert f"kept the previous version's {n_raw} pairs and added 1" in r.stdout
    assert rows(h, "corpus_raw") == n_raw + 1
    refused(h, "ingest", "--no-system", "--path", str(po), "--append", *W1, expect=f"catalog {po} is already in corpus_raw")
    r = labse(h, "ingest", "--no-system", "--path", str(po), "--replace", *W1)
    assert f"replaced the previous version ({n_raw + 1} pairs)" in r.stdout
    assert sql(h, "SELECT lang, count(*) AS n FROM corpus_raw GROUP BY 1") == [{"lang": "it", "n": 1}]


# ------------------------------------------------------------------------------------------------
# language labels


def test_same_language_on_both_sides_is_refused(home, data):
    refused(home, "prepare", "--no-raw", "-i", str(data / "pairs.tsv"), "--langs", "en,en", *W1,
            expect="--langs: langs en,en: both sides have the same language")


def test_english_variant_catalogs_are_skipped(home, data, tmp_path):
    if not EN_GB.exists():
        pytest.skip("no en_GB catalog on this machine")
    refused(home, "prepare", "--no-raw", "-i", str(EN_GB), *W1, expect=f"{EN_GB}: an English-variant catalog (en_GB)")
    h = copy_home(home, tmp_path / "h")
    r = labse(h, "prepare", "--no-raw", "-i", str(EN_GB), "-i", str(GREP["de"]), *W1)
    assert f"skipped: {EN_GB}: an English-variant catalog" in r.stdout
    assert sql(h, "SELECT DISTINCT lang FROM corpus_clean") == [{"lang": "de"}]
    assert sql(h, "SELECT count(*) AS n FROM corpus_rejects WHERE origin LIKE '%en_GB%'") == [{"n": 0}]


def test_swapped_sides_are_refused_with_evidence_or_fixed_with_swap(home, data, tmp_path):
    line = refused(home, "prepare", "--no-raw", "-i", str(data / "pairs.tsv"), "--langs", "de,en", *W1,
                   expect="the two sides look swapped")
    assert f"{data / 'pairs.tsv'}:" in line and "reads as de" in line and "--swap" in line
    h = copy_home(home, tmp_path / "h")
    labse(h, "prepare", "--no-raw", "-i", str(data / "pairs.tsv"), "--langs", "de,en", "--swap", *W1)
    en, de = de_en_pairs()[5]
    assert sql(h, f"SELECT src_lang, lang, tgt_text FROM corpus_clean WHERE src_text = '{en.replace(chr(39), chr(39) * 2)}'") == [
        {"src_lang": "en", "lang": "de", "tgt_text": de}]
    # nothing was rejected for its language: the labels now match the text
    assert sql(h, "SELECT count(*) AS n FROM corpus_rejects WHERE reason = 'lang_id'") == [{"n": 0}]


@pytest.mark.parametrize("rule", ["nplurals=1; plural=n>5 ? 3 : 0;", "nplurals=2; plural=(n != 1;"])
def test_invalid_plural_forms_reject_the_plural_pairs(home, tmp_path, rule):
    po = tmp_path / "de.po"
    po.write_text(
        f'msgid ""\nmsgstr ""\n"Language: de\\n"\n"Plural-Forms: {rule}\\n"\n\n'
        'msgid "Delete the selected file"\nmsgstr "Die ausgewählte Datei löschen"\n\n'
        'msgid "%d file was copied"\nmsgid_plural "%d files were copied"\n'
        'msgstr[0] "%d Datei wurde kopiert"\nmsgstr[1] "%d Dateien wurden kopiert"\n'
    )
    h = copy_home(home, tmp_path / "h")
    labse(h, "prepare", "--no-raw", "-i", str(po), "--replace-empty", *W1)
    assert sql(h, "SELECT src_text FROM corpus_clean") == [{"src_text": "Delete the selected file"}]
    bad = sql(h, "SELECT src_text, detail FROM corpus_rejects WHERE reason = 'invalid_plural_forms' ORDER BY 1")
    assert [r["src_text"] for r in bad] == ["%d file was copied", "%d files were copied"]
    assert "Plural-Forms" in bad[0]["detail"]
    from labse_core.prepare import REJECT_REASONS

    assert "Plural-Forms" in REJECT_REASONS["invalid_plural_forms"]


# ------------------------------------------------------------------------------------------------
# errors a user can act on: one line naming the file (and line) or the setting


def test_bad_evaluation_sets(home, data, tmp_path):
    bad = tmp_path / "eval.txt"
    bad.write_bytes(b"Hallo Welt\nkaputt \xff\n")
    refused(home, "prepare", "--no-raw", "-i", str(data / "pairs.tsv"), "--langs", "en,de", "--eval-set", str(bad), *W1,
            expect=f"evaluation set {bad}:2: not UTF-8 text")
    # a TMX evaluation set is read as TMX: its sentences decontaminate the training pairs
    en, de = de_en_pairs()[7]
    tmx = tmp_path / "eval.tmx"
    tmx.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><header srclang="en"/><body>\n'
                   f'<tu><tuv xml:lang="en"><seg>{en}</seg></tuv><tuv xml:lang="de"><seg>{de}</seg></tuv></tu>\n'
                   '</body></tmx>\n')
    h = copy_home(home, tmp_path / "h")
    r = labse(h, "prepare", "--no-raw", "-i", str(data / "pairs.tsv"), "--langs", "en,de", "--eval-set", str(tmx), *W1)
    assert f"decontaminating against {tmx} instead of the default" in r.stdout
    assert sql(h, "SELECT reason, count(*) AS n FROM corpus_rejects WHERE reason = 'eval_overlap' GROUP BY 1") == [
        {"reason": "eval_overlap", "n": 1}]


def test_tsv_with_a_header_and_a_score_column(home, data, tmp_path):
    refused(home, "prepare", "--no-raw", "-i", str(data / "scored.tsv"), *W1, expect="scored.tsv")
    h = copy_home(home, tmp_path / "h")
    labse(h, "prepare", "--no-raw", "-i", str(data / "scored.tsv"), "--tsv-header", "--tsv-columns", "src,tgt,score", *W1)
    assert rows(h, "corpus_clean") + rows(h, "corpus_rejects") == 50
    assert sql(h, "SELECT DISTINCT src_lang, lang FROM corpus_clean") == [{"src_lang": "en", "lang": "de"}]
    refused(home, "prepare", "--no-raw", "-i", str(data / "scored.tsv"), "--tsv-columns", "src,score", *W1,
            expect="--tsv-columns")


def test_embed_input_that_is_not_utf8_names_file_and_line(home, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "labse_export.json").write_text("{}")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"first line\nsecond \xff line\n")
    refused(home, "embed", "--model", str(model), "--input", str(bad), "--output", str(tmp_path / "o.npy"),
            expect=f"{bad}:2: invalid UTF-8 at byte 7")


def test_a_deleted_lake_file_is_named(home, tmp_path):
    h = copy_home(home, tmp_path / "h")
    victim = next((h / "lake/corpus/raw/lang=fr").glob("*.parquet"))
    victim.unlink()
    line = refused(h, "sql", "SELECT count(*) FROM corpus_raw", expect="labse catalog-refresh")
    assert "catalog refresh`" not in line
    refused(h, "catalog-refresh", expect=f"dataset corpus_raw is damaged: {victim} listed in its manifest is missing")
    r = labse(h, "datasets", "--format", "csv", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"error: dataset corpus_raw is damaged: {victim} listed in its manifest is missing; "
                                     "rerun the stage that writes it"]
    assert r.stdout.splitlines()[0] == "name,rows,files,partitions,created_at,path"  # the healthy ones are listed


def test_bad_settings_and_homes(home, tmp_path):
    refused(home, "--home", "/etc/passwd", "datasets", expect="--home /etc/passwd: /etc/passwd is not a folder")
    refused(home, "ingest", "--no-system", "--workers", "0", expect="'--workers'")
    refused(home, "ingest", "--no-system", *W1, expect="no gettext catalogs found in nowhere (no --path given, and --no-system)")
    empty = tmp_path / "po"
    empty.mkdir()
    refused(home, "ingest", "--no-system", "--path", str(empty), *W1, expect=f"no gettext catalogs found in {empty}")
    cfg = tmp_path / "list.json"
    cfg.write_text("[1, 2]")
    refused(home, "pipeline", "--config", str(cfg), expect=f"--config {cfg}: expected a JSON object")
    cfg.write_text('{\n  "ingest": {"rows_per_file": 5,}\n}')
    refused(home, "pipeline", "--config", str(cfg), expect=f"{cfg}:2: not valid JSON")
    refused(home, "pipeline", "--preset", "huge", expect="--preset: unknown preset 'huge'")


@pytest.mark.parametrize(
    "args, expect",
    [
        (("pretrain", "--preset", "tiny_cpu"), "labse pretrain: no Parquet files in"),
        (("pretrain", "--preset", "tiny_cpu", "--set", "lr=-1"), ("lr", "learning rate")),
        (("finetune", "--preset", "tiny_cpu", "--set", "device=foo"), "device"),
        (("pretrain", "--set", "no_such_key=1"), "no_such_key"),
    ],
)
def test_trainer_errors_are_one_line(tmp_path, args, expect):
    refused(tmp_path / "empty", *args, expect=expect)


# ------------------------------------------------------------------------------------------------
# help and output when not a terminal


def test_help_lists_the_real_options():
    from flows.presets import PRESETS

    tmp = Path("/nonexistent-labse-home")
    for command, must in (("pretrain", ("--set KEY=VALUE", "max_steps", "tlm_ratio", "lr ")),
                          ("finetune", ("--set KEY=VALUE", "margin", "init_from"))):
        r = labse(tmp, command, "--help")
        assert r.returncode == 0 and all(m in r.stdout for m in must), (command, r.stdout)
    r = labse(tmp, "pipeline", "--help")
    assert all(name in r.stdout for name in PRESETS), r.stdout
    r = labse(tmp, "prepare", "--help")
    assert all(o in r.stdout for o in ("--tsv-columns", "--tsv-header", "--swap", "--replace-empty")), r.stdout
    r = labse(tmp, "ingest", "--help")
    assert all(o in r.stdout for o in ("--replace", "--append", "--workers")), r.stdout
    r = labse(tmp, "datasets", "--help")
    assert "--format" in r.stdout


def test_plain_output_in_a_log(home, tmp_path):
    """Not a terminal: no wrapping mid-path, full dataset names and paths, no Beam start-up noise,
    files that honour the umask, no progress bars."""
    h = tmp_path / "a-home-with-a-rather-long-name-so-that-paths-pass-eighty-columns" / "home"
    r = labse(h, "ingest", "--no-system", "--path", str(GREP["de"]), *W1, umask=0o022)
    assert r.stderr == ""  # no warnings from Beam's workers, no progress bars
    dataset = h / "lake/corpus/raw"
    assert f"-> {dataset}\n" in r.stdout and len(r.stdout.splitlines()) == 1
    for p in [*dataset.rglob("*.parquet"), dataset / "_manifest.json"]:
        assert p.stat().st_mode & 0o777 == 0o644, p
    table = labse(h, "datasets").stdout
    assert str(dataset) in table and "corpus_raw" in table and "…" not in table
    listed = json.loads(labse(h, "datasets", "--format", "json").stdout)
    assert [(d["name"], d["path"]) for d in listed] == [("corpus_raw", str(dataset))]
    assert isinstance(listed[0]["rows"], int)


def test_ctrl_c_exits_quietly_with_130(tmp_path, real_catalogs):
    h = tmp_path / "home"
    env = dict(os.environ, LABSE_HOME=str(h), OMP_NUM_THREADS="1")
    cmd = [str(LABSE)] if LABSE.exists() else [sys.executable, "-m", "flows.cli"]
    p = subprocess.Popen([*cmd, "ingest", "--no-system", "--path", str(LOCALE_ROOT / "de/LC_MESSAGES"),
                          "--path", str(LOCALE_ROOT / "fr/LC_MESSAGES"), "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((h / "lake/_staging").glob("corpus_raw-*")):
        time.sleep(0.2)  # the stage has started writing
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole process group
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err == "interrupted\n", err
    assert not (h / "lake/corpus/raw/_manifest.json").exists()  # nothing half-published
    assert [x.name for x in (h / "lake/_staging").iterdir()] == []



def test_trainers_get_no_progress_bar_in_a_log():
    """``labse pretrain|finetune`` with stderr not a terminal (as under pytest): the trainer's own
    ``progress`` setting is turned off unless the user set it (tqdm's TQDM_DISABLE does not reach a
    bar created with an explicit ``disable=``)."""
    from flows import cli

    seen = []
    cli._run_trainer("pretrain", seen.append, ["--preset", "tiny_cpu"])
    cli._run_trainer("pretrain", seen.append, ["--set", "progress=true"])
    assert seen == [["--preset", "tiny_cpu", "--set", "progress=false"], ["--set", "progress=true"]]
