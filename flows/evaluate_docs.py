"""``labse evaluate docs``: mining F1 and retrieval accuracy on bitext built from translated man pages,
recorded like the other evaluations (``flows.evaluate``): ``eval_results`` rows, a JSON summary under
``LABSE_HOME/runs/<run id>/docs.json``, an MLflow run, Prefect artifacts inside a flow.

Two eval sets, both from the same gold pairs (``labse_core.evaluation.docs_bitext``):

- ``bucc-manpages``: BUCC-style mining (max mode, ratio margin, k = 4) with P/R/F1 at the miner's default
  threshold rule (calibrated from the set's own margins, as ``labse mine`` does: metrics ``f1``,
  ``precision``, ``recall``, ``threshold``), at the gettext-tuned threshold (``bucc-gettext_f1``, ...: the
  one ``--gettext-threshold`` gives, else the one ``labse evaluate bucc`` recorded for this model), and at
  the set's best threshold (``oracle_f1``, ...): issue 24, item 5;
- ``retrieval-manpages``: Tatoeba-like retrieval accuracy (nearest neighbour by cosine, both directions),
  per language and over the evaluated languages (group ``evaluated``); with ``--baseline`` (the zero-shot
  import) the same sets are scored for it too and the run says whether the model keeps its accuracy
  (``docs_bitext.no_loss``: issue 24, item 6).

A plot (``docs.png``: F1 per language and rule, retrieval per language against the baseline) goes with the
summary. Run (CPU)::

    labse evaluate docs --model models:/labse@champion                    # every translated language
    labse evaluate docs --model DIR --langs de,fr,pt_BR --pairs-out pairs.tsv
    labse evaluate docs --model models:/labse@champion --baseline LABSE_HOME/models/multilingual-e5-small \\
        --gettext-threshold 1.30
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flows.evaluate import EvalReport, _log_table, _start_run, resolve
from flows.reporting import _pyplot, _save, publish_markdown
from labse_core.evaluation import docs_bitext as docs
from labse_core.evaluation.results import publish_rows, tuned_threshold
from labse_core.mining.miner import MineConfig
from storage import catalog
from storage.io import write_json_atomic
from storage.layout import Layout


class DocsEvalConfig(BaseModel):
    """``labse evaluate docs`` / a pipeline's evaluate stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="Exported model folder, or models:/NAME@ALIAS, models:/NAME/VERSION.")
    man_root: Path = Field(docs.DEFAULT_MAN_ROOT, description="Man pages root: manN/ in English, <lang>/manN/ translated.")
    langs: list[str] | None = Field(None, description="Translation directories (de, pt_BR, zh_CN) or codes (pt); None: all.")
    gold: int = Field(300, ge=1, description="Hidden translation pairs per language (fewer when the pages have fewer).")
    distractors_per_gold: float = Field(2.0, ge=0, description="Distractor sentences per gold pair and side "
                                        "(2: one third of each side is gold, as in the gettext BUCC-style sets).")
    retrieval_pairs: int = Field(1000, ge=2, description="Pairs per language in the retrieval set (Tatoeba: <= 1000).")
    min_words: int = Field(4, ge=1, description="Words an English gold sentence has at least.")
    mine: MineConfig = Field(default_factory=lambda: MineConfig(mode="max", index="flat"),
                             description="Miner settings; its threshold rule is the one reported as the default.")
    tasks: list[Literal["mining", "retrieval"]] = Field(default_factory=lambda: ["mining", "retrieval"],
                                                        description="Which of the two sets to evaluate.")
    pairs_out: Path | None = Field(None, description="Write every gold pair (lang, page, English, translation) as TSV.")
    gettext_threshold: float | None = Field(None, description="The threshold tuned on gettext pairs to compare with "
                                            "the default rule (None: the one `labse evaluate bucc` recorded for the model).")
    baseline: str | None = Field(None, description="A model (folder or models:/ URI; the zero-shot import) whose "
                                 "retrieval accuracy on the same sets the evaluated model must keep.")
    tolerance: float = Field(0.01, ge=0, description="Retrieval check: the most a language may lose against the baseline.")
    seed: int = Field(0, description="Order of the pairs (which become gold, which distractors).")
    batch_size: int = Field(64, ge=1, description="Sentences per encoder batch.")
    precision: str = Field("auto", description="fp32, bf16, int8 or auto (labse_core.model.precision).")
    parent_run_id: str | None = Field(None, description="MLflow parent run (the pipeline's).")
    prefect_artifacts: bool = Field(False, description="Publish Prefect artifacts (inside a flow run).")


def resolve_langs(man_root: Path, langs: list[str] | None) -> list[str]:
    """Translation directories for the languages asked for: a directory name as it is, a platform code
    (``pt``) as the one directory with that code (``pt_BR``); ``DocsError`` (one line) for a language with
    no man pages."""
    have = docs.man_languages(man_root)
    by_code: dict[str, list[str]] = {}
    for d in have:
        try:
            by_code.setdefault(docs.language_code(d), []).append(d)
        except ValueError:  # a directory with no known language code: not evaluated
            continue
    if langs is None:
        return [d for ds in by_code.values() for d in ds]
    out = []
    for lang in langs:
        if lang in have:
            out.append(lang)
        elif len(by_code.get(lang, [])) == 1:
            out.append(by_code[lang][0])
        else:
            raise docs.DocsError(f"no man pages for language {lang!r} under {man_root} (translations there: {', '.join(have)})")
    return list(dict.fromkeys(out))


def run_docs(cfg: DocsEvalConfig, layout: Layout | None = None) -> EvalReport:
    """Build the sets, evaluate ``cfg.model`` on them and record it (module docstring). ``DocsError`` when
    there is nothing to evaluate (no man root, a language without man pages, no language with enough
    pairs)."""
    from flows.evaluate import embedder
    from labse_core.evaluation.tatoeba import score_languages

    layout = (layout or Layout.from_env()).ensure()
    lang_dirs = resolve_langs(cfg.man_root, cfg.langs)
    source = resolve(cfg.model, layout)
    base_source = resolve(cfg.baseline, layout) if cfg.baseline is not None else None  # a bad one fails before any work
    model = embedder(source.folder, cfg.batch_size, cfg.precision)
    precision = model.precision
    embed = docs.MemoEmbed(model)

    codes = docs.language_codes(lang_dirs)
    extracted = {d: docs.extract_pairs(cfg.man_root, d, cfg.min_words) for d in lang_dirs}
    if cfg.pairs_out is not None:
        lines = ["lang\tpage\tenglish\ttranslation"] + [
            "\t".join((d, p.page, p.en, p.xx)) for d, ex in extracted.items() for p in docs.unique_pairs(ex.pairs, cfg.seed)]
        cfg.pairs_out.parent.mkdir(parents=True, exist_ok=True)
        cfg.pairs_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mining, skipped, retrieval = [], {}, []
    tuned_note = {}
    for d, ex in extracted.items():
        code = codes[d]
        if "mining" in cfg.tasks:
            try:
                split = docs.build_set(ex.pairs, cfg.gold, cfg.distractors_per_gold, cfg.seed)
            except ValueError as e:
                skipped[code] = str(e)
            else:
                thresholds = {}
                if cfg.gettext_threshold is not None:
                    thresholds["bucc-gettext"] = cfg.gettext_threshold
                    tuned_note[code] = "given (--gettext-threshold)"
                elif cfg.mine.margin == "ratio":
                    tuned = tuned_threshold(layout, model_uri=source.uri, model_name=source.name,
                                            model_version=source.version, langs=[code])
                    if tuned is not None:
                        thresholds["bucc-gettext"] = tuned[0]
                        tuned_note[code] = tuned[1]
                mining.append(docs.evaluate_language(code, split, embed, cfg.mine, thresholds))
        if "retrieval" in cfg.tasks and ex.pairs:
            retrieval.append(docs.retrieval_set(ex.pairs, code, cfg.retrieval_pairs, cfg.seed))
    scores = score_languages(embed, retrieval) if retrieval else []
    if not mining and not scores:
        raise docs.DocsError(f"no language gave a set: {skipped or 'no gold pairs'}")
    base_scores, check = [], None
    if base_source is not None and scores:
        base_scores = score_languages(docs.MemoEmbed(embedder(base_source.folder, cfg.batch_size, precision)), retrieval)
        check = docs.no_loss({s.code: s.acc for s in scores}, {s.code: s.acc for s in base_scores}, cfg.tolerance)
    with _start_run("evaluate-docs", cfg.parent_run_id) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"stage": "evaluate", "eval_set": f"{docs.EVAL_SET},{docs.RETRIEVAL_SET}",
                         "model_uri": source.uri, "model_version": str(source.version), "precision": precision})
        mlflow.log_params({"man_root": str(cfg.man_root), "langs": ",".join(lang_dirs), "gold": cfg.gold,
                           "distractors_per_gold": cfg.distractors_per_gold, "retrieval_pairs": cfg.retrieval_pairs,
                           "k": cfg.mine.k, "mode": cfg.mine.mode, "margin": cfg.mine.margin,
                           "threshold_rule": "given" if cfg.mine.threshold is not None else cfg.mine.calibration,
                           "precision": precision})
        metrics: dict[str, float] = {}
        rows = 0
        if mining:
            mrows = docs.result_rows(mining)
            publish_rows(layout, docs.EVAL_SET, mrows, run_id=run_id, model_uri=source.uri,
                         model_version=source.version, producer={"model_folder": str(source.folder)}, precision=precision)
            rows += len(mrows)
            for r in (x for x in mrows if x["scope"] == "group"):
                metrics["docs/" + r["metric"].replace("_", "/")] = r["value"]
            metrics |= {f"docs/f1/{r.lang}": r.at["default"].f1 for r in mining}
            _log_table([{k: r[k] for k in ("language", "metric", "value", "n")} for r in mrows], "docs_mining.json")
        if scores:
            rrows = docs.retrieval_rows(scores)
            publish_rows(layout, docs.RETRIEVAL_SET, rrows, run_id=run_id, model_uri=source.uri,
                         model_version=source.version, producer={"model_folder": str(source.folder)}, precision=precision)
            rows += len(rrows)
            group = docs.retrieval_group(scores)
            metrics |= {"docs/retrieval": group.acc, "docs/retrieval/xx-en": group.acc_xx_en,
                        "docs/retrieval/en-xx": group.acc_en_xx}
            metrics |= {f"docs/retrieval/{s.code}": s.acc for s in scores}
            if check is not None:
                metrics |= {"docs/retrieval/baseline": docs.retrieval_group(base_scores).acc,
                            "docs/retrieval/delta": check.mean_delta, "docs/retrieval/no_loss": float(check.ok)}
                mlflow.set_tags({"baseline_uri": base_source.uri})
            _log_table([{k: r[k] for k in ("language", "direction", "value", "n")} for r in rrows], "docs_retrieval.json")
        mlflow.log_metrics(metrics)
        summary = {
            "eval_sets": [docs.EVAL_SET, docs.RETRIEVAL_SET], "run_id": run_id, "model_uri": source.uri,
            "model_version": source.version, "model_folder": str(source.folder), "precision": precision,
            "man_root": str(cfg.man_root), "metrics": metrics, "skipped": skipped, "tuned_thresholds": tuned_note,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "extraction": {codes[d]: dict(sorted(ex.counts.items())) for d, ex in extracted.items()},
            "mining": {r.lang: {"sizes": r.sizes, "at": {k: vars(v) for k, v in r.at.items()},
                                "calibration": r.calibration.as_record()} for r in mining},
            "retrieval": {s.code: {"n": s.n, "xx->en": s.acc_xx_en, "en->xx": s.acc_en_xx, "both": s.acc} for s in scores},
            "retrieval_check": None if check is None else {
                "baseline_uri": base_source.uri, "baseline_folder": str(base_source.folder), "tolerance": cfg.tolerance,
                "ok": check.ok, "mean_delta": check.mean_delta, "losses": check.losses,
                "baseline": {s.code: {"n": s.n, "xx->en": s.acc_xx_en, "en->xx": s.acc_en_xx, "both": s.acc}
                             for s in base_scores}},
        }
        summary_path = layout.run_dir(run_id) / "docs.json"
        write_json_atomic(summary_path, summary)
        plot = plot_docs(mining, scores, base_scores, layout.run_dir(run_id) / "docs.png",
                         f"Man-page bitext: {source.uri}")
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(plot))
    catalog.refresh(layout)
    if cfg.prefect_artifacts:
        lines = [f"### Man-page bitext: `{source.uri}`"]
        if mining:
            lines.append(f"- mining F1 (calibrated threshold): **{metrics['docs/f1']:.4f}** over {len(mining)} languages"
                         + (f"; gettext-tuned {metrics['docs/bucc-gettext/f1']:.4f}" if "docs/bucc-gettext/f1" in metrics else "")
                         + (f"; oracle {metrics['docs/oracle/f1']:.4f}" if "docs/oracle/f1" in metrics else ""))
        if scores:
            lines.append(f"- retrieval accuracy: **{metrics['docs/retrieval']:.4f}** over {len(scores)} languages")
        if check is not None:
            lines.append(f"- against `{base_source.uri}`: {check.mean_delta:+.4f} on average, "
                         + ("no language loses more than " + f"{cfg.tolerance:g}" if check.ok else f"losses {check.losses}"))
        publish_markdown("evaluate-docs", lines + [f"- MLflow run: `{run_id}`"], plot)
    return EvalReport(run_id, source, metrics, summary, summary_path, plot, rows,
                      {"mining": mining, "retrieval": scores, "baseline": base_scores, "check": check})


RULE_COLOURS = {"default": "#3b6ea5", "bucc-gettext": "#c0504d", "oracle": "#bbbbbb"}


def plot_docs(mining, scores, base_scores, path: Path, title: str) -> Path:
    """Left: mining F1 per language at each threshold rule (calibrated default, gettext-tuned, oracle).
    Right: retrieval accuracy per language, and the baseline's as marks."""
    plt = _pyplot()
    panels = [p for p in ("mining", "retrieval") if (mining if p == "mining" else scores)]
    n = max(len(mining), len(scores), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), max(3.0, 0.3 * n + 1.4)), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "mining":
            rules = [r for r in RULE_COLOURS if any(r in m.at for m in mining)]
            height = 0.8 / len(rules)
            for i, rule in enumerate(rules):
                got = [(j, m.at[rule]) for j, m in enumerate(mining) if rule in m.at]
                ax.barh([j + i * height for j, _ in got], [p.f1 for _, p in got], height, color=RULE_COLOURS[rule],
                        label=f"{rule} (mean {np.mean([p.f1 for _, p in got]):.3f})")
            ax.set_yticks([j + 0.4 - height / 2 for j in range(len(mining))], [m.lang for m in mining])
            ax.set_xlabel("mining F1 (max mode, ratio margin)")
            ax.set_title("mining, by threshold rule", fontsize=9)
        else:
            ax.barh([s.code for s in scores], [s.acc for s in scores], color="#3b6ea5", label="model")
            if base_scores:
                ax.plot([s.acc for s in base_scores], [s.code for s in base_scores], "d", color="#c0504d",
                        label="baseline")
            ax.set_xlabel("retrieval accuracy (mean of both directions)")
            ax.set_title("retrieval", fontsize=9)
        ax.set_xlim(0, 1.0)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    out = _save(fig, path)
    plt.close(fig)
    return out
