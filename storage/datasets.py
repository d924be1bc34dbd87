"""Build a dataset in a staging folder, then publish it in one step.

Writers (a Beam DoFn, a training job) put Parquet files under ``DatasetWriter.staging`` with
``storage.io.write_parquet``; ``publish`` scans them, writes the manifest and swaps the staging
folder into the dataset's place. Readers therefore see the old dataset or the new one, never a mix,
and a crashed run leaves only a ``_staging/`` folder behind (``abort`` or the next run removes it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from storage.layout import Layout
from storage.manifest import Manifest, build_manifest, read_manifest, write_manifest
from storage.schemas import DatasetSpec


class DatasetCountError(RuntimeError):
    """The files written do not hold the rows the producer counted."""


class EmptyReplaceError(RuntimeError):
    """Publishing would replace a dataset that has rows with one that has none."""


def check_replace(layout: Layout, spec: DatasetSpec, new_rows: int, *, replace_empty: bool = False) -> int:
    """Rows of the published version that a new version with ``new_rows`` rows would replace.

    An empty version never silently replaces a non-empty one (a run whose inputs all failed, or a
    filter set too tight, would otherwise wipe the corpus): that needs ``replace_empty``. A stage
    publishing several datasets calls this for each before publishing any of them.
    """
    old = current_manifest(layout, spec)
    old_rows = old.rows if old is not None else 0
    if new_rows == 0 and old_rows > 0 and not replace_empty:
        raise EmptyReplaceError(
            f"dataset {spec.name!r}: this run produced 0 rows and would replace the {old_rows:,} rows published "
            f"in {layout.dataset_dir(spec.relpath)}; nothing published (--replace-empty publishes the empty version)"
        )
    return old_rows


def partition_path(spec: DatasetSpec, values: dict[str, str]) -> str:
    """``lang=de`` style relative folder for a partition; values must not contain a path separator."""
    parts = []
    for col in spec.partition_by:
        value = str(values[col])
        if not value or "/" in value or value.startswith((".", "_")):
            raise ValueError(f"dataset {spec.name!r}: invalid value {value!r} for partition column {col!r}")
        parts.append(f"{col}={value}")
    return "/".join(parts)


def part_file_name(index: int, tag: str = "") -> str:
    return f"part-{tag + '-' if tag else ''}{index:05d}.parquet"


def swap_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` (a folder, maybe absent) with ``staging`` by two renames on one filesystem:
    readers see the old folder or the new one, never a mix."""
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = staging.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, trash)
    os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)


class DatasetWriter:
    """Staging area for one run's version of a dataset."""

    def __init__(self, layout: Layout, spec: DatasetSpec, run_id: str | None = None):
        self.layout = layout
        self.spec = spec
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.final = layout.dataset_dir(spec.relpath)
        self.staging = layout.staging / f"{spec.name}-{self.run_id}"
        self.replaced_rows = 0

    def begin(self) -> DatasetWriter:
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        return self

    def file_path(self, partition: dict[str, str], index: int, tag: str = "") -> Path:
        return self.staging / partition_path(self.spec, partition) / part_file_name(index, tag)

    def publish(
        self,
        *,
        producer: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        expected_rows: int | None = None,
        replace_empty: bool = False,
    ) -> Manifest:
        """Write the manifest into the staging folder and swap it into place (replacing any old version).

        ``expected_rows``: what the producer counted; if the files hold a different number the
        dataset is not published (``DatasetCountError``) and the old version stays. An empty version
        replaces a non-empty one only with ``replace_empty`` (``EmptyReplaceError``). Afterwards
        ``replaced_rows`` holds the row count of the version that was replaced (0 if none).
        """
        manifest = build_manifest(self.spec, self.staging, producer=producer, stats=stats)
        if expected_rows is not None and manifest.rows != expected_rows:
            raise DatasetCountError(
                f"dataset {self.spec.name!r}: files in {self.staging} hold {manifest.rows} rows, "
                f"the producer counted {expected_rows}; not published"
            )
        self.replaced_rows = check_replace(self.layout, self.spec, manifest.rows, replace_empty=replace_empty)
        write_manifest(self.staging, manifest)
        swap_into_place(self.staging, self.final)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def current_manifest(layout: Layout, spec: DatasetSpec) -> Manifest | None:
    return read_manifest(layout.dataset_dir(spec.relpath))
