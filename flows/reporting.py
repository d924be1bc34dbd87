"""Results people would rather look at than read: plots (PNG), Prefect artifacts, MLflow logging."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from storage.manifest import Manifest


def plot_partition_rows(manifest: Manifest, path: Path, title: str, top: int = 60) -> Path:
    """Horizontal bar chart of rows per partition (largest ``top``), saved as PNG."""
    plt = _pyplot()
    items = sorted(manifest.partitions.items(), key=lambda kv: kv[1], reverse=True)[:top]
    labels = [k.split("=", 1)[-1] for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(items) + 1)))
    ax.barh(labels, values, color="#3b6ea5")
    ax.set_xlabel("rows")
    shown = f" (top {top} of {len(manifest.partitions)})" if len(manifest.partitions) > top else ""
    ax.set_title(f"{title}{shown}")
    ax.tick_params(axis="y", labelsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish_prefect_artifacts(stage: str, manifest: Manifest, plot: Path | None, mlflow_run_id: str | None) -> None:
    """Table of rows per partition and a markdown summary (with the plot inlined) in the Prefect UI."""
    rows = [{"partition": k, "rows": v} for k, v in sorted(manifest.partitions.items(), key=lambda kv: -kv[1])]
    publish_markdown(
        stage,
        [
            f"### {stage}: `{manifest.dataset}`",
            f"- rows: **{manifest.rows:,}** in {len(manifest.files)} files, {len(manifest.partitions)} partitions",
            f"- MLflow run: `{mlflow_run_id}`" if mlflow_run_id else "",
        ],
        plot,
        rows,
    )

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def plot_training(
    losses: Sequence[float],
    path: Path,
    title: str,
    start_step: int = 0,
    evals: Sequence[dict] = (),
    eval_key: str = "eval/acc",
    eval_label: str = "held-out retrieval accuracy",
) -> Path:
    """Loss per step (raw and a moving average) and, when there are evaluations, the metric by step."""
    plt = _pyplot()
    panels = 2 if evals else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = list(range(start_step + 1, start_step + len(losses) + 1))
    ax.plot(steps, losses, color="#9bb7d4", linewidth=0.8, label="loss")
    w = max(1, len(losses) // 20)
    if w > 1:
        smooth = [sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="#3b6ea5", linewidth=1.6, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if evals:
        ax = axes[0][1]
        ax.plot([e["step"] for e in evals], [e[eval_key] for e in evals], marker="o", color="#c0504d")
        ax.set_xlabel("step")
        ax.set_ylabel(eval_label)
        ax.set_ylim(0, 1.02)
        ax.set_title(eval_label)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_ablation(arms: dict[str, Sequence[dict]], path: Path, title: str, eval_key: str = "eval/acc") -> Path:
    """Ablation arms side by side: final held-out accuracy (bars) and accuracy by step (lines).
    ``arms``: arm name -> its evaluations (dicts with "step" and ``eval_key``), in step order."""
    plt = _pyplot()
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(arms)
    finals = [arms[n][-1][eval_key] if arms[n] else float("nan") for n in names]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars.barh(names[::-1], finals[::-1], color=[colors[i % len(colors)] for i in range(len(names))][::-1])
    for y, v in enumerate(finals[::-1]):
        bars.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    bars.set_xlim(0, 1.1)
    bars.set_xlabel("held-out retrieval accuracy (end of training)")
    bars.set_title(title)
    bars.tick_params(axis="y", labelsize=8)
    for i, n in enumerate(names):
        ev = arms[n]
        lines.plot([e["step"] for e in ev], [e[eval_key] for e in ev], marker="o", label=n, color=colors[i % len(colors)])
    lines.set_xlabel("step")
    lines.set_ylabel("held-out retrieval accuracy")
    lines.set_ylim(0, 1.02)
    lines.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def publish_markdown(key: str, lines: Sequence[str], plot: Path | None = None, table: Sequence[dict] | None = None) -> None:
    """A Prefect markdown artifact (plot inlined when small enough) and optionally a table artifact."""
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    md = [x for x in lines if x]
    if plot is not None and plot.exists() and plot.stat().st_size < 400_000:
        md.append(f"\n![{key}](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})")
    create_markdown_artifact(key=artifact_key(f"{key}-summary"), markdown="\n".join(md))
    if table:
        create_table_artifact(key=artifact_key(f"{key}-table"), table=list(table))


def mlflow_run_link(run_id: str) -> str:
    """A link to the run in the MLflow UI when tracking goes to a server, else its id and store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        exp = mlflow.get_run(run_id).info.experiment_id
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"
    return f"`{run_id}` ({uri})"
