"""Results people would rather look at than read: plots (PNG), Prefect artifacts, MLflow logging."""

from __future__ import annotations

import re
from pathlib import Path

from storage.manifest import Manifest


def plot_partition_rows(manifest: Manifest, path: Path, title: str, top: int = 60) -> Path:
    """Horizontal bar chart of rows per partition (largest ``top``), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(manifest.partitions.items(), key=lambda kv: kv[1], reverse=True)[:top]
    labels = [k.split("=", 1)[-1] for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(items) + 1)))
    ax.barh(labels, values, color="#3b6ea5")
    ax.set_xlabel("rows")
    shown = f" (top {top} of {len(manifest.partitions)})" if len(manifest.partitions) > top else ""
    ax.set_title(f"{title}{shown}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish_prefect_artifacts(stage: str, manifest: Manifest, plot: Path | None, mlflow_run_id: str | None) -> None:
    """Table of rows per partition and a markdown summary (with the plot inlined) in the Prefect UI."""
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [{"partition": k, "rows": v} for k, v in sorted(manifest.partitions.items(), key=lambda kv: -kv[1])]
    create_table_artifact(key=artifact_key(f"{stage}-rows"), table=rows, description=f"{manifest.dataset}: rows per partition")
    md = [
        f"### {stage}: `{manifest.dataset}`",
        f"- rows: **{manifest.rows:,}** in {len(manifest.files)} files, {len(manifest.partitions)} partitions",
        f"- MLflow run: `{mlflow_run_id}`" if mlflow_run_id else "",
    ]
    if plot is not None and plot.exists() and plot.stat().st_size < 400_000:
        md.append(f"\n![rows per partition](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})")
    create_markdown_artifact(key=artifact_key(f"{stage}-summary"), markdown="\n".join(x for x in md if x))
