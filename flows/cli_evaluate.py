"""`labse evaluate ...` and `labse mine`: thin commands over ``flows.evaluate``.

    labse evaluate tatoeba --model DIR|models:/labse@champion [--data DIR] [--langs deu,fra] [--trained-langs de,fr]
    labse evaluate bucc    --model ... [--langs de,fr] [--gold N] [--distractors N] [--held-out-fraction F]
    labse evaluate docs    --model ... [--langs de,fr,pt_BR] [--man-root /usr/share/man] [--gold N] [--pairs-out F]
                           [--gettext-threshold T] [--baseline DIR|models:/...]
    labse mine --src FILE|DATASET --tgt FILE|DATASET --src-lang xx --tgt-lang yy --model ... [--k 4] [--mode max]
               [--threshold T | --calibration otsu|mixture|valley|none | --threshold-from bucc]
               [--index flat|ivf|ivfpq|auto] [--no-filter] [--keep-embeddings]

Each writes its results (``eval_results`` / ``mined``, appended), a JSON summary under LABSE_HOME/runs/<run>/
and an MLflow run; bad input is one line on stderr and exit code 2. A killed ``labse mine`` is resumed by running
the same command again (labse_core.mining.resume): the same MLflow run, only missing chunks embedded, pairs
appended once.

Registered in ``flows/cli.py`` by ``cli_evaluate.register(app)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_console import PRECISION_HELP, console, status
from flows.cli_errors import fail as _fail
from labse_core.logfmt import num

evaluate_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="Evaluate an encoder on the paper's benchmarks (results -> eval_results).")

ModelOpt = Annotated[str, typer.Option("--model", help="Exported model folder, or models:/NAME@ALIAS / models:/NAME/VERSION.")]


def _settings_error(e) -> str:
    """A pydantic ValidationError as one line naming the options: "bad settings: --mode: Input should be ..."."""
    return "bad settings: " + "; ".join(
        f"--{'-'.join(map(str, x['loc'][-1:])).replace('_', '-')}: {x['msg']}" for x in e.errors())


@contextlib.contextmanager
def _one_line_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Bad settings (pydantic) and the command's own ``errors`` as one line on stderr, exit 2."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as e:
        _fail(_settings_error(e))
    except errors as e:
        _fail(str(e).splitlines()[0])


def register(app: typer.Typer) -> None:
    """Add `evaluate` (a command group) and `mine` to the `labse` app."""
    app.add_typer(evaluate_app, name="evaluate")
    app.command("mine")(mine)


@evaluate_app.command("tatoeba")
def tatoeba(
    model: ModelOpt,
    data: Annotated[Path | None, typer.Option(help="Tatoeba v1 folder (default: ../shared/data/tatoeba/v1).")] = None,
    langs: Annotated[list[str] | None, typer.Option("--langs", help="Languages (comma-separated or repeated); default all.")] = None,
    trained_langs: Annotated[list[str] | None, typer.Option("--trained-langs", help="Languages the model was trained on "
                             "(default: its model card, else the lake's clean corpus).")] = None,
    batch_size: Annotated[int, typer.Option(help="Sentences per encoder batch.")] = 64,
    sample: Annotated[int | None, typer.Option(help="Only the fixed sample of this many pairs per language (the "
                                                    "registry gate's: 300; ~2 min for all 112 on 2 cores).")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Tatoeba retrieval accuracy in both directions per language and per group (XTREME-36, all 112, trained);
    a group not fully evaluated is shown with its count, e.g. all112 (14/112)."""
    from flows.evaluate import TatoebaEvalConfig, run_tatoeba
    from labse_core.evaluation.results import split_langs
    from labse_core.readers.records import ReaderError

    with _one_line_errors(ValueError, ReaderError, OSError):
        cfg = TatoebaEvalConfig(model=model, langs=split_langs(langs), trained_langs=split_langs(trained_langs),
                                batch_size=batch_size, sample=sample, precision=precision,
                                **({"data": data} if data is not None else {}))
        if not cfg.data.is_dir():
            raise ValueError(f"--data {cfg.data}: not a folder (the Tatoeba v1 files tatoeba.xxx-eng.*)")
        with status("embedding and scoring Tatoeba ..."):
            report = run_tatoeba(cfg)
    res = report.result
    t = Table(title=f"Tatoeba v1: {report.model.uri}" + (f" (version {report.model.version})" if report.model.version else ""),
              title_justify="left")
    for col in ("group", "languages", "xx->en", "en->xx", "mean"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in res.groups:
        t.add_row(g.label, str(len(g.languages)), f"{g.acc_xx_en:.4f}", f"{g.acc_en_xx:.4f}", f"{g.acc:.4f}")
    console.print(t)
    console.print(f"precision:    {report.summary['precision']}"
                  + (f"; fixed sample of {sample} pairs per language" if sample else ""))
    console.print(f"eval_results: {report.rows} rows appended (run {report.run_id})")
    console.print(f"summary:      {report.summary_path}")
    console.print(f"plot:         {report.plot_path}")
    console.print("try: labse sql \"SELECT language, direction, value FROM eval_results WHERE run_id = "
                  f"'{report.run_id}' AND scope = 'group'\"")


@evaluate_app.command("bucc")
def bucc(
    model: ModelOpt,
    langs: Annotated[list[str] | None, typer.Option("--langs", help="Languages of the clean corpus (default: all).")] = None,
    gold: Annotated[int, typer.Option(help="Hidden translation pairs per split (dev, test).")] = 100,
    distractors: Annotated[int, typer.Option(help="Distractor sentences per side and split.")] = 200,
    held_out_fraction: Annotated[float, typer.Option(help="Fine-tuning held-out fraction (only those pairs are used).")] = 0.05,
    k: Annotated[int, typer.Option(help="Neighbours for the margin.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Sentences per encoder batch.")] = 64,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """BUCC-style mining F1 (threshold tuned on dev, applied to test) and xSIM, on held-out corpus pairs."""
    from flows.evaluate import BuccEvalConfig, run_bucc
    from labse_core.evaluation.results import split_langs
    from labse_core.mining.miner import MineConfig

    with _one_line_errors(ValueError, OSError):
        cfg = BuccEvalConfig(model=model, langs=split_langs(langs), gold=gold, distractors=distractors,
                             held_out_fraction=held_out_fraction, mine=MineConfig(mode="max", index="flat", k=k),
                             batch_size=batch_size, precision=precision)
        with status("building the sets, embedding and mining ..."):
            report = run_bucc(cfg)
    t = Table(title=f"BUCC-style mining, held-out pairs: {report.model.uri}", title_justify="left")
    for col in ("language", "F1", "precision", "recall", "threshold (dev)", "xSIM xx->en", "xSIM en->xx"):
        t.add_column(col, justify="left" if col == "language" else "right")
    for r in report.result:
        t.add_row(r.lang, f"{r.test.f1:.4f}", f"{r.test.precision:.4f}", f"{r.test.recall:.4f}",
                  f"{r.dev.threshold:.4f}", f"{r.xsim_xx_en:.4f}", f"{r.xsim_en_xx:.4f}")
    console.print(t)
    console.print(f"mean F1 {report.metrics['bucc/f1']:.4f}, xSIM error {report.metrics['xsim/error']:.4f} "
                  f"(precision {report.summary['precision']})")
    for lang, why in report.summary["skipped"].items():
        console.print(f"[yellow]skipped {lang}:[/] {why}", highlight=False)
    console.print(f"eval_results: {report.rows} rows appended (run {report.run_id}); summary {report.summary_path}")


@evaluate_app.command("docs")
def docs(
    model: ModelOpt,
    man_root: Annotated[Path, typer.Option("--man-root", help="Man pages root: manN/ English, <lang>/manN/ translations.")]
    = Path("/usr/share/man"),
    langs: Annotated[list[str] | None, typer.Option("--langs", help="Translation directories or codes (de, pt_BR, pt); "
                                                    "default: every translated language there.")] = None,
    gold: Annotated[int, typer.Option(help="Hidden translation pairs per language.")] = 300,
    distractors_per_gold: Annotated[float, typer.Option(help="Distractor sentences per gold pair and side.")] = 2.0,
    retrieval_pairs: Annotated[int, typer.Option(help="Pairs per language in the retrieval set.")] = 1000,
    task: Annotated[list[str] | None, typer.Option("--task", help="mining and/or retrieval (default both).")] = None,
    pairs_out: Annotated[Path | None, typer.Option("--pairs-out", help="Write the gold pairs as TSV (to check them).")] = None,
    k: Annotated[int, typer.Option(help="Neighbours for the margin.")] = 4,
    gettext_threshold: Annotated[float | None, typer.Option(
        "--gettext-threshold", help="A threshold tuned on gettext pairs, to compare with the default rule "
        "(default: the one `labse evaluate bucc` recorded for this model, if any).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Model whose retrieval accuracy this one must keep "
                                                     "(the zero-shot import).")] = None,
    tolerance: Annotated[float, typer.Option(help="Retrieval check: the most a language may lose.")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Sentences per encoder batch.")] = 64,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Mining P/R/F1 (the default calibrated threshold, the gettext-tuned one, the oracle) and retrieval accuracy
    (against a baseline) on bitext built from translated man pages: real documents, not gettext."""
    from flows.evaluate_docs import DocsEvalConfig, run_docs
    from labse_core.evaluation.docs_bitext import DocsError
    from labse_core.evaluation.results import split_langs
    from labse_core.mining.miner import MineConfig

    with _one_line_errors(DocsError, ValueError, OSError):
        cfg = DocsEvalConfig(model=model, man_root=man_root, langs=split_langs(langs), gold=gold,
                             distractors_per_gold=distractors_per_gold, retrieval_pairs=retrieval_pairs,
                             tasks=split_langs(task) or ["mining", "retrieval"], pairs_out=pairs_out,
                             mine=MineConfig(mode="max", index="flat", k=k), gettext_threshold=gettext_threshold,
                             baseline=baseline, tolerance=tolerance, batch_size=batch_size, precision=precision)
        with status("reading man pages, embedding and mining ..."):
            report = run_docs(cfg)
    res = report.result
    if res["mining"]:
        t = Table(title=f"Mining man-page bitext: {report.model.uri} (default = calibrated from the set's margins)",
                  title_justify="left")
        for col in ("language", "gold", "rule", "threshold", "P", "R", "F1"):
            t.add_column(col, justify="left" if col in ("language", "rule") else "right")
        rules = [rule for rule in ("bucc-gettext", "default", "oracle") if any(rule in r.at for r in res["mining"])]
        for r in res["mining"]:
            for i, rule in enumerate(x for x in rules if x in r.at):
                p = r.at[rule]
                t.add_row(r.lang if i == 0 else "", str(r.sizes["gold"]) if i == 0 else "", rule, f"{p.threshold:.4f}",
                          f"{p.precision:.4f}", f"{p.recall:.4f}", f"{p.f1:.4f}")
        for rule in rules:
            got = [r.at[rule] for r in res["mining"] if rule in r.at]
            t.add_row("mean", "", rule, "", *(f"{sum(getattr(p, m) for p in got) / len(got):.4f}"
                                              for m in ("precision", "recall", "f1")))
        console.print(t)
    if res["retrieval"]:
        base = {sc.code: sc for sc in res["baseline"]}
        t = Table(title=f"Retrieval on man-page pairs: {report.model.uri}", title_justify="left")
        for col in ("language", "pairs", "xx->en", "en->xx", "mean", *(("baseline", "delta") if base else ())):
            t.add_column(col, justify="left" if col == "language" else "right")
        for sc in res["retrieval"]:
            extra = (f"{base[sc.code].acc:.4f}", f"{sc.acc - base[sc.code].acc:+.4f}") if sc.code in base else ()
            t.add_row(sc.code, str(sc.n), f"{sc.acc_xx_en:.4f}", f"{sc.acc_en_xx:.4f}", f"{sc.acc:.4f}", *extra)
        console.print(t)
    check = res["check"]
    if check is not None:
        verdict = "[green]keeps[/]" if check.ok else "[red]does not keep[/]"
        console.print(f"retrieval check: {verdict} the baseline's accuracy (mean {check.mean_delta:+.4f}; "
                      f"languages more than {tolerance:g} below: {check.losses or 'none'})", highlight=False)
    for lang, why in report.summary["skipped"].items():
        console.print(f"[yellow]skipped {lang}:[/] {why}", highlight=False)
    console.print(f"eval_results: {report.rows} rows appended (run {report.run_id}); summary {report.summary_path}; "
                  f"plot {report.plot_path}")


def mine(
    src: Annotated[str, typer.Option(help="Source sentences: text file (one per line), .parquet (text column), "
                                           "DATASET:COLUMN[:LANG] (e.g. corpus_clean:tgt_text:de), precomputed .npy, or a "
                                           "folder of documents (HTML, text, man pages; .gz too), cut into sentences.")],
    tgt: Annotated[str, typer.Option(help="Target sentences, as --src.")],
    src_lang: Annotated[str, typer.Option("--src-lang", help="Language of --src (e.g. de).")],
    tgt_lang: Annotated[str, typer.Option("--tgt-lang", help="Language of --tgt (e.g. en).")],
    model: Annotated[str | None, typer.Option(help="Model folder or models:/NAME@ALIAS (not needed for two .npy inputs).")] = None,
    k: Annotated[int, typer.Option(help="Neighbours for the margin (clamped to the other side's size).")] = 4,
    mode: Annotated[str, typer.Option(help="forward, backward, intersection or max (one-to-one).")] = "max",
    margin: Annotated[str, typer.Option(help="ratio, distance or absolute.")] = "ratio",
    threshold: Annotated[float | None, typer.Option(help="Keep score >= this (default: calibrated from this run's own "
                                                        "margins, see --calibration).")] = None,
    calibration: Annotated[str, typer.Option(help="Without --threshold: otsu (the best two-class split of the candidates' "
                                                  "margins), mixture, valley, or none (1.06 for ratio, 0 otherwise).")] = "otsu",
    threshold_from: Annotated[str, typer.Option("--threshold-from", help="Without --threshold: calibration, or bucc (the "
                                                "model's threshold tuned on gettext pairs by `labse evaluate bucc`).")] = "calibration",
    index: Annotated[str, typer.Option(help="flat, ivf, ivfpq or auto (flat up to --flat-max sentences).")] = "auto",
    flat_max: Annotated[int, typer.Option(help="auto: largest side searched exactly.")] = 50_000,
    nprobe: Annotated[int, typer.Option(help="IVF lists probed per query.")] = 32,
    src_text: Annotated[Path | None, typer.Option("--src-text", help=".npy --src: its sentences (default <stem>.txt).")] = None,
    tgt_text: Annotated[Path | None, typer.Option("--tgt-text", help=".npy --tgt: its sentences (default <stem>.txt).")] = None,
    column: Annotated[str | None, typer.Option(help="Parquet inputs: the sentence column (default text).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Sentences embedded at once (bounds memory).")] = 50_000,
    shard_dtype: Annotated[str, typer.Option(help="float32 or float16 for the spilled embeddings.")] = "float32",
    no_filter: Annotated[bool, typer.Option("--no-filter", help="Skip the data pipeline's filters and dedupe.")] = False,
    batch_size: Annotated[int, typer.Option(help="Sentences per encoder batch.")] = 64,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    keep_embeddings: Annotated[bool, typer.Option("--keep-embeddings", help="Keep the .npy shards under the run folder.")] = False,
    document_calibration: Annotated[str, typer.Option("--document-calibration", help="As --calibration, for two "
                                                      "folders mined within their document pairs (default none: 1.06 "
                                                      "for ratio; most candidates there are translations).")] = "none",
    pair_docs: Annotated[str, typer.Option("--pair-docs", help="Two document folders: name (mine within the documents "
                                           "of the same name or canonical URL), all (across all documents), or a TSV "
                                           "file of source<TAB>target document ids or URLs.")] = "name",
) -> None:
    """Mine bitext from two monolingual inputs with the margin criterion (pairs -> dataset `mined`)."""
    from flows.evaluate import MineRunConfig, run_mine
    from labse_core.langcodes import UnknownLanguage
    from labse_core.mining.knn import MiningInputError
    from labse_core.mining.miner import DOCUMENT_FALLBACK_WHY, MineConfig

    with _one_line_errors(MiningInputError, UnknownLanguage, ValueError, OSError):
        mcfg = MineConfig(k=k, mode=mode, margin=margin, threshold=threshold, calibration=calibration, index=index,
                          flat_max=flat_max, nprobe=nprobe, chunk_size=chunk_size, shard_dtype=shard_dtype,
                          filter=not no_filter, pair_docs=pair_docs, document_calibration=document_calibration)
        cfg = MineRunConfig(src=src, tgt=tgt, src_lang=src_lang, tgt_lang=tgt_lang, model=model, src_text=src_text,
                            tgt_text=tgt_text, column=column, mine=mcfg, threshold_from=threshold_from,
                            batch_size=batch_size, precision=precision, keep_embeddings=keep_embeddings)
        with status("embedding and mining ..."):
            report = run_mine(cfg)
    s = report.summary
    console.print(f"{s['src_sentences']:,} x {s['tgt_sentences']:,} sentences ({s['index']} index, precision "
                  f"{s['precision'] or 'of the precomputed embeddings'}): "
                  f"{s['candidates']:,} pairs scored >= {num(s['threshold'])}, {s['kept']:,} kept after the filters "
                  f"(dropped: {s['dropped'] or 'none'})")
    for side, d in s.get("documents", {}).items():
        if isinstance(d, dict):
            rejected = ", ".join(f"{n} {why}" for why, n in d["rejected"].items()) or "none"
            console.print(f"{side}: {d['documents']:,} documents read (rejected: {rejected})", highlight=False)
    if "document_pairs" in s.get("documents", {}):
        console.print(f"mined within {s['documents']['document_pairs']:,} document pairs", highlight=False)
    reused = sum(c.get("reused", 0) for c in s["embedding_chunks"].values())
    if reused:  # a rerun of a killed run (labse_core.mining.resume)
        console.print(f"resumed: {reused} embedding chunks reused from the interrupted run {report.run_id}, "
                      f"{sum(c.get('embedded', 0) for c in s['embedding_chunks'].values())} embedded", highlight=False)
    if s["threshold_method"] == "fallback" and s.get("threshold_detail", {}).get("why") == DOCUMENT_FALLBACK_WHY:
        console.print(f"threshold {s['threshold']:.4f}: {s['threshold_source']}", highlight=False)
    elif s["threshold_method"] == "fallback":
        console.print(f"[yellow]threshold {s['threshold']:.4f}:[/] {s['threshold_source']}; give --threshold if the "
                      "inputs hold few translations", highlight=False)
    elif s["threshold_method"] != "given":
        console.print(f"threshold {s['threshold']:.4f}: {s['threshold_source']}", highlight=False)
    console.print(f"mined: appended to partition src_lang={s['src_lang']}/tgt_lang={s['tgt_lang']} (run {report.run_id})")
    console.print(f"summary: {report.summary_path}")
    console.print("try: labse sql \"SELECT margin, src_text, tgt_text FROM mined WHERE run_id = "
                  f"'{report.run_id}' ORDER BY margin DESC LIMIT 10\"")
