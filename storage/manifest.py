"""One ``_manifest.json`` per dataset: what is in it, who wrote it, and counts that add up.

The manifest is written last, atomically, after every data file is in place: a dataset without a
manifest is incomplete and the catalog ignores it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from storage.faults import maybe_die
from storage.io import atomic_path
from storage.schemas import DatasetSpec

MANIFEST_NAME = "_manifest.json"  # leading "_": Parquet readers (pyarrow, Spark) skip it


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str = Field(description="Path relative to the dataset folder.")
    rows: int
    bytes: int
    partition: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    dataset: str
    schema_fields: list[str]
    partition_by: list[str]
    rows: int
    partitions: dict[str, int] = Field(description="Rows per partition path, e.g. {'lang=de': 1234}.")
    files: list[FileEntry]
    created_at: str
    producer: dict[str, Any] = Field(default_factory=dict, description="Stage, run ids, config.")
    stats: dict[str, Any] = Field(default_factory=dict, description="Stage counters (seen, skipped by reason).")

    def check(self) -> None:
        """The counts must add up: files -> partitions -> total."""
        if sum(f.rows for f in self.files) != self.rows or sum(self.partitions.values()) != self.rows:
            raise ValueError(f"manifest of {self.dataset!r} does not add up")


def _partition_of(rel: Path) -> dict[str, str]:
    parts = {}
    for piece in rel.parts[:-1]:
        if "=" in piece:
            key, value = piece.split("=", 1)
            parts[key] = value
    return parts


def build_manifest(
    spec: DatasetSpec, root: Path, *, producer: dict[str, Any] | None = None, stats: dict[str, Any] | None = None
) -> Manifest:
    """Scan the Parquet files under ``root`` (footers only) and describe them."""
    files = []
    partitions: dict[str, int] = {}
    for path in sorted(root.rglob("*.parquet")):
        rel = path.relative_to(root)
        if any(p.startswith((".", "_")) for p in rel.parts):
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        part = _partition_of(rel)
        files.append(FileEntry(path=rel.as_posix(), rows=rows, bytes=path.stat().st_size, partition=part))
        key = "/".join(f"{k}={v}" for k, v in part.items())
        partitions[key] = partitions.get(key, 0) + rows
    manifest = Manifest(
        dataset=spec.name,
        schema_fields=[f.name for f in spec.schema],
        partition_by=list(spec.partition_by),
        rows=sum(f.rows for f in files),
        partitions=dict(sorted(partitions.items())),
        files=files,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        producer=producer or {},
        stats=stats or {},
    )
    manifest.check()
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> Path:
    path = root / MANIFEST_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, default=str) + "\n")
        maybe_die("dataset.manifest")  # the manifest half-way: written under its temporary name only
    return path


def read_manifest(root: Path) -> Manifest | None:
    path = root / MANIFEST_NAME
    if not path.exists():
        return None
    return Manifest.model_validate(json.loads(path.read_text()))
