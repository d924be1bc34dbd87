"""``labse nmt-check``: does the mined bitext train a translation model? (the paper's last claim, that
mined data trains competitive NMT for en-de and en-zh, checked on this platform's own mining).

One language pair (xx -> en) on Debian's translated man pages (``labse fetch-docs manpages``):

1. gold pairs: the sentence pairs of translated pages whose structure aligns with the English page
   (``labse_core.evaluation.docs_bitext``); the pages are split by a hash of their name into a held-out
   part (the dev and test sets come from its gold pairs) and a training part;
2. mining: ``labse mine`` on the two folders of pages, within the pages of the same name (appended to
   ``mined`` like any run); the pairs of held-out pages are left out of every training set, and so is
   every pair sharing a side with a dev or test sentence;
3. three arms, each one small Marian Transformer trained from scratch (``labse_core.nmt``: its own shared
   sentencepiece vocabulary, the same architecture, seed, step and time budget) on the same number of pairs:
   ``mined`` (the pairs kept: threshold, filters, dedupe), ``gold`` (aligned pairs of the training pages)
   and ``unfiltered`` (the miner's candidates before any threshold or filter);
4. chrF and BLEU (sacrebleu) on the test set: ``eval_results`` rows (``eval_set = nmt-<arm>``), an MLflow
   parent run with one child per arm (training curves as step metrics), ``nmt.json`` and a plot under
   ``LABSE_HOME/runs/<run>/``, a Prefect artifact inside a flow.

Run (CPU; ``--minutes`` per arm)::

    labse fetch-docs manpages --langs de,zh
    labse nmt-check --src-lang de --model models:/labse@champion --minutes 12
    labse nmt-check --preset full            # de-en and zh-en
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
from pydantic import BaseModel, ConfigDict, Field

from flows.evaluate import _start_run
from flows.reporting import _pyplot, _save, publish_markdown
from labse_core import langcodes
from labse_core.evaluation import docs_bitext as docs
from labse_core.evaluation.results import publish_rows
from labse_core.mining.miner import MineConfig
from labse_core.nmt import NmtConfig
from labse_core.readers.documents import DocumentSet, pair_by_name, read_documents
from storage import catalog, tracking
from storage.io import write_json_atomic
from storage.layout import Layout

log = logging.getLogger(__name__)

Arm = Literal["mined", "gold", "unfiltered"]
ARMS: tuple[Arm, ...] = ("mined", "gold", "unfiltered")
ARM_COLOURS = {"mined": "#3b6ea5", "gold": "#6a9f58", "unfiltered": "#c0504d"}


class NmtCheckError(ValueError):
    """Bad input for the check (one line: what is missing and how to get it)."""


class NmtCheckConfig(BaseModel):
    """``labse nmt-check`` / the ``labse-nmt-check`` flow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    src_lang: str = Field("de", description="The translated side (man page folder: de, fr, zh_CN, ...; zh picks zh_CN).")
    model: str = Field("models:/labse@champion", description="The encoder that mines: folder or models:/NAME@ALIAS.")
    docs: Path | None = Field(None, description="Man pages fetched by `labse fetch-docs manpages` (default: the lake's).")
    arms: list[Arm] = Field(list(ARMS), description="Which training sets to compare (mined, gold, unfiltered).")
    nmt: NmtConfig = Field(default_factory=lambda: NmtConfig(max_steps=1200, max_minutes=14.0),
                           description="The translation model and its budget per arm: 1,200 steps (~10 min on 2 cores "
                           "at ~2 steps/s on man-page sentences); the time limit only guards against a loaded machine.")
    held_out_share: float = Field(0.15, gt=0, lt=1, description="Share of pages (by a hash of the name) whose gold "
                                  "pairs form the dev and test sets; never trained on.")
    test_pairs: int = Field(1000, ge=10, description="Test pairs at most (gold pairs of held-out pages).")
    dev_pairs: int = Field(200, ge=10, description="Dev pairs at most (the training curves' dev loss).")
    max_train_pairs: int | None = Field(None, ge=1, description="Pairs per arm at most (None: as many as the smaller "
                                        "of mined and gold).")
    max_pages: int | None = Field(300, ge=1, description="Pages (in both languages) mined and aligned at most, a "
                                  "hash-ordered sample: bounds the embedding time (None: every page).")
    mine: MineConfig = Field(default_factory=MineConfig, description="The miner's settings (threshold rule, k, mode).")
    batch_size: int = Field(64, ge=1, description="Sentences per encoder batch while mining.")
    seed: int = Field(0, description="Page split, samples and training seed.")
    parent_run_id: str | None = Field(None, description="MLflow parent run (a pipeline's).")
    prefect_artifacts: bool = Field(False, description="Publish Prefect artifacts (inside a flow run).")


def quick() -> list[NmtCheckConfig]:
    """de-en with the default budget (one arm <= 15 min on 2 cores)."""
    return [NmtCheckConfig(src_lang="de")]


def full() -> list[NmtCheckConfig]:
    """de-en and zh-en, the two pairs of the paper's NMT experiment."""
    return [NmtCheckConfig(src_lang="de"), NmtCheckConfig(src_lang="zh")]


PRESETS = {"quick": quick, "full": full}


@dataclass
class NmtCheckReport:
    run_id: str
    summary: dict[str, Any]
    summary_path: Path
    plot_path: Path
    rows: int


# ---------------------------------------------------------------------------------------------------
# Data


def page_dir(root: Path, lang: str) -> str:
    """The folder of ``lang``'s pages under the fetched root (``zh`` -> ``zh_CN`` when only that exists)."""
    if (root / lang).is_dir():
        return lang
    code = langcodes.normalize(lang)
    have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "en") if root.is_dir() else []
    for d in have:
        if docs.language_code(d) == code:
            return d
    raise NmtCheckError(f"{root}: no man pages for {lang!r} (fetched: {', '.join(have) or 'none'}); run "
                        f"`labse fetch-docs manpages --langs {lang}` first")


def held_out(page: str, share: float, seed: int) -> bool:
    """Whether a page's pairs are held out (dev/test): a hash of its name, the same on every machine."""
    h = hashlib.blake2b(f"{seed}\0{page}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < share


@dataclass
class CheckData:
    test: list[tuple[str, str]]
    dev: list[tuple[str, str]]
    train: dict[str, list[tuple[str, str]]]
    """Per arm, before sampling to one size."""
    counts: dict[str, Any]


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _decontaminated(pairs: list[tuple[str, str]], held: set[str]) -> list[tuple[str, str]]:
    """The pairs that share no side with a dev or test sentence (``held``: their ``_key``s), none empty."""
    return [(s, t) for s, t in pairs if _key(s) not in held and _key(t) not in held and s.strip() and t.strip()]


def build_data(cfg: NmtCheckConfig, gold: list[docs.SentencePair], mined_rows: list[Any], candidates: list[tuple[str, str, str]],
               ) -> CheckData:
    """Test, dev and the arms' training pairs (module docstring, steps 1-3). ``mined_rows``: ``MinedRow``s
    (with ``src_doc``); ``candidates``: (source page, source text, target text) of every candidate."""
    gold = docs.unique_pairs(gold, cfg.seed)
    test_pool = [p for p in gold if held_out(p.page, cfg.held_out_share, cfg.seed)]
    train_gold = [(p.xx, p.en) for p in gold if not held_out(p.page, cfg.held_out_share, cfg.seed)]
    if len(test_pool) < 20:
        raise NmtCheckError(f"only {len(test_pool)} gold pairs on held-out pages: too few for a test set "
                            "(fetch more pages or raise held_out_share)")
    dev_n = min(cfg.dev_pairs, len(test_pool) // 5)
    dev = [(p.xx, p.en) for p in test_pool[:dev_n]]
    test = [(p.xx, p.en) for p in test_pool[dev_n:dev_n + cfg.test_pairs]]
    held = {_key(s) for pair in test + dev for s in pair}

    def page_of(doc: str | None) -> str:
        return (doc or "").removesuffix(".gz")

    mined = [(r.src_text, r.tgt_text) for r in mined_rows
             if not held_out(page_of(r.src_doc), cfg.held_out_share, cfg.seed)]
    unfiltered = [(s, t) for page, s, t in candidates if not held_out(page_of(page), cfg.held_out_share, cfg.seed)]
    train = {"mined": _decontaminated(mined, held), "gold": _decontaminated(train_gold, held),
             "unfiltered": _decontaminated(unfiltered, held)}
    counts = {"gold_pairs": len(gold), "held_out_gold": len(test_pool), "test": len(test), "dev": len(dev),
              **{f"{arm}_available": len(p) for arm, p in train.items()}}
    return CheckData(test, dev, train, counts)


def sample_arms(data: CheckData, arms: list[Arm], cap: int | None, seed: int) -> dict[str, list[tuple[str, str]]]:
    """The same number of pairs for every arm: as many as the smaller of mined and gold among ``arms`` (and
    ``cap``), a seeded sample of each. Without the gold arm, every mined pair can train (mined against
    unfiltered where the gold pairs are fewer than the mined ones)."""
    sized_by = [a for a in ("mined", "gold") if a in arms] or list(arms)
    n = min(len(data.train[a]) for a in sized_by)
    if cap is not None:
        n = min(n, cap)
    if n == 0:
        empty = [a for a in sized_by if not data.train[a]]
        raise NmtCheckError(f"no {' and no '.join(empty)} training pairs outside the held-out pages: nothing to train on")
    out = {}
    for arm in arms:
        pool = data.train[arm]
        out[arm] = random.Random(f"{seed}-{arm}").sample(pool, min(n, len(pool)))
    return out


# ---------------------------------------------------------------------------------------------------
# The run


def sample_pages(src: DocumentSet, tgt: DocumentSet, max_pages: int | None, seed: int) -> set[str]:
    """The pages both folders hold (by document id), at most ``max_pages`` of them in a hash order of their
    names (the same sample on every machine)."""
    names = [src.doc_ids[a] for a, _ in pair_by_name(src, tgt)]
    if not names:
        raise NmtCheckError(f"{src.root} x {tgt.root}: no page in both folders")
    names.sort(key=lambda n: hashlib.blake2b(f"sample-{seed}\0{n}".encode(), digest_size=8).digest())
    return set(names[:max_pages] if max_pages else names)


def run_nmt_check(cfg: NmtCheckConfig, layout: Layout | None = None, progress: Any = None) -> NmtCheckReport:
    """The check for one language pair (module docstring). ``progress(arm, step, total, loss)``: a terminal bar."""
    from flows.evaluate import MineRunConfig, run_mine
    from labse_core import nmt

    layout = (layout or Layout.from_env()).ensure()
    root = Path(cfg.docs) if cfg.docs is not None else layout.docs("manpages")
    if not (root / "en").is_dir():
        raise NmtCheckError(f"{root}: no English man pages (en/); run `labse fetch-docs manpages --langs "
                            f"{cfg.src_lang}` first")
    lang_dir = page_dir(root, cfg.src_lang)
    src_lang = docs.language_code(lang_dir)
    tgt_lang = "en"
    pages = sample_pages(read_documents(root / lang_dir, src_lang), read_documents(root / "en", tgt_lang),
                         cfg.max_pages, cfg.seed)
    ex = docs.extract_pairs(root, lang_dir, en_root=root / "en")
    gold = [p for p in ex.pairs if p.page in pages]
    tracking.configure(layout)
    with _start_run("nmt-check", cfg.parent_run_id) as parent:
        run_id = parent.info.run_id
        mlflow.set_tags({"stage": "nmt-check", "pair": f"{src_lang}-{tgt_lang}", "model_uri": cfg.model})
        pair_file = layout.run_dir(run_id) / "document_pairs.tsv"
        pair_file.parent.mkdir(parents=True, exist_ok=True)
        pair_file.write_text("".join(f"{p}\t{p}\n" for p in sorted(pages)), encoding="utf-8")
        mine_report = run_mine(MineRunConfig(src=str(root / lang_dir), tgt=str(root / "en"), src_lang=src_lang,
                                             tgt_lang=tgt_lang, model=cfg.model,
                                             mine=cfg.mine.model_copy(update={"pair_docs": str(pair_file)}),
                                             batch_size=cfg.batch_size, parent_run_id=run_id))
        res = mine_report.result
        src_docs, tgt_docs = (inp.documents for inp in res.inputs)
        candidates = [(src_docs.doc_ids[src_docs.doc_of[i]], src_docs.sentences[i], tgt_docs.sentences[j])
                      for i, j in zip(res.candidates.src.tolist(), res.candidates.tgt.tolist(), strict=True)]
        data = build_data(cfg, gold, res.rows, candidates)
        train = sample_arms(data, cfg.arms, cfg.max_train_pairs, cfg.seed)
        mlflow.log_params({"src_lang": src_lang, "tgt_lang": tgt_lang, "docs": str(root), "model": cfg.model,
                           "mine_run_id": mine_report.run_id, "train_pairs": len(next(iter(train.values()))),
                           **{f"nmt.{k}": str(v) for k, v in cfg.nmt.model_dump().items()}})
        results: dict[str, Any] = {}
        for arm, pairs in train.items():
            with mlflow.start_run(run_name=f"nmt-{arm}", nested=True) as child:
                mlflow.set_tags({"stage": "nmt-check", "arm": arm, "pair": f"{src_lang}-{tgt_lang}"})
                bar = (lambda step, total, loss, _arm=arm: progress(_arm, step, total, loss)) if progress else None
                arm_t0 = time.monotonic()
                r = nmt.run_arm(pairs, data.dev, data.test, cfg.nmt, layout.run_dir(run_id) / f"nmt-{arm}", tgt_lang,
                                progress=bar)
                for point in r.curve:
                    mlflow.log_metrics({k: float(v) for k, v in point.items() if k != "step" and v is not None},
                                       step=int(point["step"]))
                mlflow.log_metrics({"chrf": r.chrf, "bleu": r.bleu, "train_pairs": float(r.n_train),
                                    "steps": float(r.steps), "train_seconds": r.train_seconds})
                results[arm] = {"chrf": r.chrf, "bleu": r.bleu, "steps": r.steps, "train_seconds": r.train_seconds,
                                "arm_seconds": time.monotonic() - arm_t0, "too_long": r.n_too_long,
                                "stopped_by": r.stopped_by, "train_pairs": r.n_train, "signatures": r.signatures,
                                "curve": r.curve, "samples": r.samples, "mlflow_run_id": child.info.run_id}
        model_uri = mine_report.model.uri if mine_report.model else cfg.model
        model_version = mine_report.model.version if mine_report.model else None
        for arm, r in results.items():
            arm_rows = [{"split": "test", "scope": "language", "language": src_lang, "direction": f"{src_lang}->{tgt_lang}",
                         "metric": metric, "value": r[metric], "n": len(data.test)} for metric in ("chrf", "bleu")]
            publish_rows(layout, f"nmt-{arm}", arm_rows, run_id=run_id, model_uri=model_uri, model_version=model_version,
                         producer={"stage": "nmt-check", "arm": arm, "train_pairs": r["train_pairs"]})
        ratio = results["mined"]["chrf"] / results["gold"]["chrf"] if {"mined", "gold"} <= results.keys() and results["gold"]["chrf"] else None
        margin = results["mined"]["chrf"] - results["unfiltered"]["chrf"] if {"mined", "unfiltered"} <= results.keys() else None
        metrics = {f"{arm}/chrf": r["chrf"] for arm, r in results.items()} | {f"{arm}/bleu": r["bleu"] for arm, r in results.items()}
        if ratio is not None:
            metrics["mined_over_gold_chrf"] = ratio
        if margin is not None:
            metrics["mined_minus_unfiltered_chrf"] = margin
        mlflow.log_metrics(metrics)
        summary = {
            "run_id": run_id, "pair": f"{src_lang}-{tgt_lang}", "src_lang": src_lang, "tgt_lang": tgt_lang,
            "model_uri": model_uri, "model_version": model_version,
            "docs": str(root), "mine_run_id": mine_report.run_id, "mine": {k: mine_report.summary.get(k) for k in (
                "candidates", "kept", "threshold", "threshold_source", "dropped", "documents")},
            "data": data.counts, "train_pairs": {arm: len(p) for arm, p in train.items()},
            "nmt": cfg.nmt.model_dump(mode="json"), "arms": results,
            "mined_over_gold_chrf": ratio, "mined_minus_unfiltered_chrf": margin,
            "extraction": dict(sorted(ex.counts.items())),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        out = layout.run_dir(run_id)
        summary_path = out / "nmt.json"
        write_json_atomic(summary_path, summary)
        plot = plot_nmt(results, out / "nmt.png", f"NMT on {' vs '.join(results)} pairs, {src_lang}->{tgt_lang} "
                        f"({summary['train_pairs'][next(iter(train))]:,} pairs each)")
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(plot))
    catalog.refresh(layout)
    if cfg.prefect_artifacts:
        lines = [f"### nmt-check {src_lang}->{tgt_lang}: chrF " + ", ".join(f"{a} **{r['chrf']:.1f}**" for a, r in results.items())]
        if ratio is not None:
            lines.append(f"- mined / gold chrF: {ratio:.1%} (goal >= 90%)")
        if margin is not None:
            lines.append(f"- mined - unfiltered chrF: {margin:+.1f} (goal >= +5)")
        publish_markdown("nmt-check", lines + [f"- MLflow run: `{run_id}`"], plot)
    return NmtCheckReport(run_id, summary, summary_path, plot, 2 * len(results))


def plot_nmt(results: dict[str, Any], path: Path, title: str) -> Path:
    """Left: dev loss by step of every arm. Right: chrF and BLEU per arm."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, r in results.items():
        pts = [p for p in r["curve"] if p.get("dev_loss") is not None]
        left.plot([p["step"] for p in pts], [p["dev_loss"] for p in pts], color=ARM_COLOURS[arm], label=arm)
    left.set_xlabel("step")
    left.set_ylabel("dev loss")
    left.legend(fontsize=8)
    arms = list(results)
    xs = range(len(arms))
    right.bar([x - 0.2 for x in xs], [results[a]["chrf"] for a in arms], 0.4, color=[ARM_COLOURS[a] for a in arms], label="chrF")
    right.bar([x + 0.2 for x in xs], [results[a]["bleu"] for a in arms], 0.4, color=[ARM_COLOURS[a] for a in arms],
              alpha=0.5, label="BLEU")
    for x, a in zip(xs, arms, strict=True):
        right.text(x - 0.2, results[a]["chrf"], f"{results[a]['chrf']:.1f}", ha="center", va="bottom", fontsize=8)
        right.text(x + 0.2, results[a]["bleu"], f"{results[a]['bleu']:.1f}", ha="center", va="bottom", fontsize=8)
    right.set_xticks(list(xs), arms)
    right.set_ylabel("test score (chrF solid, BLEU light)")
    fig.suptitle(title, fontsize=10)
    out = _save(fig, path)
    plt.close(fig)
    return out
