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
    labse sql "SELECT ..."             query the catalog (read-only); --format table|csv|json
    labse datasets                     list published datasets
    labse catalog-refresh              rebuild the DuckDB views
    labse ui mlflow|prefect            start the MLflow or Prefect UI on this home

Global option ``--home`` (or ``LABSE_HOME``) picks the platform home (default ``./labse_home``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
console = Console()
err = Console(stderr=True)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.callback()
def _global(
    home: Annotated[Path | None, typer.Option(help="Platform home (default: $LABSE_HOME or ./labse_home).")] = None,
) -> None:
    from flows.env import bootstrap

    bootstrap(home)


# Beam options shared by every Beam stage command.
RunnerOpt = Annotated[str, typer.Option(help="Beam runner (DirectRunner, FlinkRunner, SparkRunner, DataflowRunner).")]
WorkersOpt = Annotated[int | None, typer.Option(help="Direct runner worker processes (default: CPU count).")]
BeamArgOpt = Annotated[list[str] | None, typer.Option("--beam-arg", help="Extra Beam pipeline option (repeatable).")]


def _beam(runner: str = "DirectRunner", workers: int | None = None, beam_arg: list[str] | None = None):
    from beam_jobs.options import BeamConfig

    return BeamConfig(runner=runner, extra_args=beam_arg or [], **({"num_workers": workers} if workers else {}))


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


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
    console.print(f"MLflow run:  {summary.mlflow_run_id}  (labse ui mlflow)")
    console.print(f"Prefect run: {summary.prefect_flow_run_id}  (labse ui prefect)")
    views = ", ".join(summary.views)
    console.print(f"catalog:     views {views}; try  labse sql \"SELECT lang, count(*) AS pairs FROM corpus_raw GROUP BY 1 ORDER BY 2 DESC\"")


def _run_pipeline(config) -> None:
    from flows.pipeline import labse_pipeline

    with console.status(f"running labse-pipeline (preset {config.preset}) ...", spinner="dots"):
        summary = labse_pipeline(config)
    _print_summary(summary)


@app.command()
def demo() -> None:
    """Run labse-pipeline end to end on the embedded defaults (this machine's gettext catalogs)."""
    from flows.pipeline import demo as demo_preset

    _run_pipeline(demo_preset())


@app.command()
def pipeline(
    preset: Annotated[str, typer.Option(help="Named preset (demo, smoke).")] = "demo",
    config: Annotated[Path | None, typer.Option(help="JSON file with PipelineConfig fields (overrides the preset).")] = None,
) -> None:
    """Run labse-pipeline with a named preset or a JSON config."""
    from pydantic import ValidationError

    from flows.pipeline import PipelineConfig
    from flows.pipeline import preset as get_preset

    try:
        cfg = get_preset(preset)
        if config is not None:
            cfg = PipelineConfig.model_validate({**cfg.model_dump(), **json.loads(config.read_text())})
    except (ValueError, ValidationError, OSError) as e:
        _fail(f"bad pipeline configuration: {e}")
    _run_pipeline(cfg)


@app.command()
def ingest(
    path: Annotated[list[Path] | None, typer.Option("--path", help=".po/.mo file or folder (repeatable).")] = None,
    system: Annotated[bool, typer.Option(help="Also read /usr/share/locale.")] = True,
    lang: Annotated[list[str] | None, typer.Option("--lang", help="Keep only this language (repeatable).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Count malformed catalogs instead of stopping.")] = False,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
) -> None:
    """Read gettext catalogs into the corpus_raw dataset (Beam)."""
    from pydantic import ValidationError

    from beam_jobs.gettext_ingest import GettextIngestConfig, IngestError, run
    from labse_core.gettext_catalog import CatalogError
    from labse_core.langcodes import UnknownLanguage
    from storage import catalog
    from storage.layout import Layout

    try:
        cfg = GettextIngestConfig(
            locale_roots=[Path("/usr/share/locale")] if system else [],
            paths=path or [], languages=lang or None, skip_bad_catalogs=skip_bad, beam=_beam(runner, workers, beam_arg),
        )
        layout = Layout.from_env()
        with console.status("reading gettext catalogs ...", spinner="dots"):
            result = run(cfg, layout)
    except (IngestError, CatalogError, FileNotFoundError, UnknownLanguage, ValidationError) as e:
        _fail(str(e))
    catalog.refresh(layout)
    m = result.manifest
    console.print(f"corpus_raw: {m.rows:,} pairs, {len(m.partitions)} languages, {result.catalogs} catalogs, "
                  f"{result.seconds:.1f}s -> {layout.dataset_dir('corpus/raw')}")
    for e in result.errors:
        console.print(f"[yellow]skipped malformed catalog:[/] {e}", highlight=False)


@app.command()
def prepare(
    input: Annotated[list[Path] | None, typer.Option("--input", "-i", help="Corpus file or Moses prefix (repeatable).")] = None,
    langs: Annotated[str | None, typer.Option(help="src,tgt languages for TSV/TMX/Moses inputs, e.g. en,de.")] = None,
    raw: Annotated[bool, typer.Option(help="Also read corpus_raw (the gettext ingest output).")] = True,
    eval_set: Annotated[list[Path] | None, typer.Option("--eval-set", help="Evaluation set to decontaminate against (repeatable; default: Tatoeba beside the checkout).")] = None,
    append: Annotated[bool, typer.Option(help="Dedupe against and keep the clean corpus already in the lake.")] = False,
    max_per_source: Annotated[int | None, typer.Option(help="Cap translations per source sentence.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Count unreadable inputs instead of stopping.")] = False,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
) -> None:
    """Normalize, filter, dedupe and decontaminate pairs into corpus_clean + corpus_rejects (Beam)."""
    from pydantic import ValidationError

    from beam_jobs.prepare import PrepareConfig, PrepareError, run
    from labse_core.prepare import InputSpec
    from labse_core.prepare import PrepareError as InputError
    from storage import catalog
    from storage.layout import Layout

    try:
        pair = tuple(x.strip() for x in langs.split(",")) if langs else None
        if pair is not None and len(pair) != 2:
            raise ValueError(f"--langs takes two codes separated by a comma, got {langs!r}")
        kwargs = {} if eval_set is None else {"eval_sets": eval_set}
        cfg = PrepareConfig(
            inputs=[InputSpec(path=p, langs=pair) for p in input or []], from_raw_corpus=raw,
            mode="append" if append else "overwrite", max_translations_per_source=max_per_source,
            skip_bad_inputs=skip_bad, beam=_beam(runner, workers, beam_arg), **kwargs,
        )
        layout = Layout.from_env()
        with console.status("preparing the corpus ...", spinner="dots"):
            result = run(cfg, layout)
    except (PrepareError, InputError, ValueError, ValidationError, OSError) as e:
        _fail(str(e))
    catalog.refresh(layout)
    s = result.stats
    console.print(f"{s['input_pairs']:,} input pairs -> {s['clean_new']:,} clean + {s['rejected']:,} rejected "
                  f"in {result.seconds:.0f}s")
    t = Table("reason", "pairs", title="rejects by reason", title_justify="left")
    for reason, n in sorted(result.rejects.stats.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1]):
        t.add_row(reason, f"{n:,}")
    console.print(t)
    for e in result.errors:
        console.print(f"[yellow]skipped unreadable input:[/] {e}", highlight=False)
    console.print('try: labse sql "SELECT reason, lang, count(*) FROM corpus_rejects GROUP BY ALL ORDER BY 3 DESC"')


@app.command()
def vocab(
    vocab_size: Annotated[int, typer.Option(help="sentencepiece pieces (LaBSE: 501,153).")] = 8000,
    alpha: Annotated[float, typer.Option(help="Language sampling exponent: p_l ~ n_l^alpha.")] = 0.3,
    sample_size: Annotated[int, typer.Option(help="Sentences sampled for training.")] = 1_000_000,
    mono: Annotated[list[Path] | None, typer.Option("--mono", help="Monolingual text file (repeatable).")] = None,
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
) -> None:
    """Train the sentencepiece vocabulary on a language-balanced sample of the clean corpus (Beam)."""
    from beam_jobs.vocab import VocabError, VocabStageConfig, run
    from labse_core.vocab import VocabConfig
    from storage.layout import Layout

    try:
        cfg = VocabStageConfig(vocab=VocabConfig(vocab_size=vocab_size, alpha=alpha, sample_size=sample_size),
                               mono_inputs=mono or [], beam=_beam(runner, workers, beam_arg))
        with console.status("sampling and training the vocabulary ...", spinner="dots"):
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
    runner: RunnerOpt = "DirectRunner",
    workers: WorkersOpt = None,
    beam_arg: BeamArgOpt = None,
) -> None:
    """Tokenize the clean corpus into pair, TLM and MLM shards (+ TFRecord) (Beam)."""
    from beam_jobs.shard import ShardConfig, ShardError, run
    from storage import catalog
    from storage.layout import Layout

    try:
        cfg = ShardConfig(max_len=max_len, rows_per_shard=rows_per_shard, mono_inputs=mono or [], tfrecord=tfrecord,
                          beam=_beam(runner, workers, beam_arg))
        layout = Layout.from_env()
        with console.status("tokenizing and sharding ...", spinner="dots"):
            result = run(cfg, layout)
    except (ShardError, ValueError, OSError) as e:
        _fail(str(e))
    catalog.refresh(layout)
    for name, rows in result.rows.items():
        console.print(f"{name}: {rows:,} rows in {result.files[name]} files")
    console.print(f"tfrecord: {len(result.tfrecord_files)} files; {result.seconds:.0f}s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pretrain(ctx: typer.Context) -> None:
    """MLM + TLM pretraining on the shards (arguments of `python -m labse_core.pretrain.train`,
    e.g. --preset tiny_cpu --set max_steps=300; multi-GPU: torchrun ... -m labse_core.pretrain.train)."""
    from labse_core.pretrain.train import main as pretrain_main

    pretrain_main(ctx.args)  # prints its own JSON summary


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def finetune(ctx: typer.Context) -> None:
    """Dual-encoder fine-tuning with the bidirectional additive margin softmax (arguments of
    `python -m labse_core.finetune.train`, e.g. --preset tiny_cpu --set init_from=DIR; torchrun for GPUs)."""
    from labse_core.finetune.train import main as finetune_main

    finetune_main(ctx.args)  # prints its own JSON summary


@app.command()
def ablation(
    pretrained: Annotated[Path | None, typer.Option(help="Encoder for the warm-started arms (default: the pipeline's).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per arm.")] = 300,
    train_fraction: Annotated[float, typer.Option(help="Fraction of the training pairs every arm sees.")] = 0.2,
    margin: Annotated[list[float] | None, typer.Option(help="Margins compared (repeatable; default 0 and 0.3).")] = None,
) -> None:
    """Run the labse-ablation flow on the lake's pair shards (after `labse demo`)."""
    from pydantic import ValidationError

    from flows.ablation import AblationConfig, labse_ablation
    from labse_core.finetune.train import tiny_cpu
    from labse_core.vocab import vocab_size_of
    from storage.layout import Layout

    if pretrained is not None and not pretrained.is_dir():
        _fail(f"--pretrained {pretrained} is not a folder")
    try:
        cfg = AblationConfig(base=tiny_cpu(run_name="ablation", max_steps=steps, eval_every=max(1, steps // 6)),
                             pretrained=str(pretrained) if pretrained else None, train_fraction=train_fraction,
                             **({"margins": margin} if margin else {}))
    except (ValueError, ValidationError) as e:
        _fail(f"bad ablation settings: {e}")
    try:  # before the flow starts: a missing lake is the user's first mistake, not a flow failure
        vocab_size_of(Layout.from_env().vocab)
    except FileNotFoundError as e:
        _fail(str(e))
    with console.status("running labse-ablation ...", spinner="dots"):
        summary = labse_ablation(cfg)
    t = Table(title=f"labse-ablation finished in {summary.seconds:.0f}s", title_justify="left")
    for col in ("arm", "held-out accuracy", "steps", "training pairs"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for a in summary.arms:
        t.add_row(a.arm, f"{a.final_accuracy:.4f}", str(a.steps), f"{a.train_pairs:,}")
    console.print(t)
    console.print(f"plot:        {summary.plot}")
    console.print(f"MLflow run:  {summary.mlflow_run_id}  (labse ui mlflow)")


@app.command()
def embed(
    model: Annotated[Path, typer.Option(help="Exported model folder.")],
    output: Annotated[Path, typer.Option(help="out.npy (float32 N x D) or out.parquet (text, embedding).")],
    input: Annotated[str, typer.Option(help="Text file, one sentence per line; '-' reads stdin.")] = "-",
    batch_size: Annotated[int, typer.Option(help="Sentences per batch (length-sorted).")] = 64,
    max_length: Annotated[int | None, typer.Option(help="Tokens per sentence (default: the model's limit).")] = None,
) -> None:
    """Embed sentences with an exported model (stdin or a file -> .npy / .parquet)."""
    from labse_core.embed import embed_file

    if not (model / "labse_export.json").exists():
        _fail(f"{model} is not an exported model folder (no labse_export.json)")
    if input != "-" and not Path(input).is_file():
        _fail(f"input file {input} does not exist")
    try:
        out = embed_file(input, output, str(model), batch_size=batch_size, max_length=max_length)
    except (ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"wrote {out}")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL (read-only). Views: one per dataset, plus table 'datasets'.")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
) -> None:
    """Query the DuckDB catalog (read-only)."""
    from storage.catalog import QueryError
    from storage.catalog import query as run_query
    from storage.layout import Layout

    try:
        result = run_query(Layout.from_env(), query)
    except QueryError as e:
        _fail(str(e))
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
        t = Table(*result.column_names, show_lines=False)
        for r in rows[:max_rows]:
            t.add_row(*["" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()])
        console.print(t)
        if len(rows) > max_rows:
            console.print(f"({len(rows)} rows, {max_rows} shown; --max-rows or --format csv for all)")


@app.command()
def datasets() -> None:
    """List published datasets."""
    from storage import catalog
    from storage.layout import Layout

    catalog.refresh(Layout.from_env())
    sql("SELECT name, rows, files, partitions, created_at, path FROM datasets ORDER BY name", OutputFormat.table, 100)


@app.command("catalog-refresh")
def catalog_refresh() -> None:
    """Rebuild the DuckDB catalog's views from the datasets' manifests."""
    from storage import catalog
    from storage.layout import Layout

    views = catalog.refresh(Layout.from_env())
    console.print(f"views: {', '.join(views) or 'none (no published dataset yet)'}")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
