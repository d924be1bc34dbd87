"""Build a dataset in a staging folder, then publish it in one step.

Writers (a Beam DoFn, a training job) put Parquet files under ``DatasetWriter.staging`` with
``storage.io.write_parquet``; ``stage`` scans them and writes the manifest, and publishing swaps the
staging folder into the dataset's place. Readers therefore see the old dataset or the new one, never
a mix, and a crashed run leaves only a ``_staging/`` folder behind (``abort`` or the next run removes it).

A writer is a context manager: a clean exit publishes what ``stage`` checked, an exception removes
the staging folder (the previous version stays)::

    with DatasetWriter(layout, CLEAN_PAIRS, run_id) as w:
        write_parquet(CLEAN_PAIRS, table, w.file_path({"lang": "de"}, 0))
        w.stage(producer=info, expected_rows=table.num_rows)
    # published here

A stage that publishes several datasets stages each and publishes them with ``publish_together``:
all of them or, after a crash, none.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from storage.layout import Layout
from storage.manifest import Manifest, build_manifest, read_manifest, write_manifest
from storage.publish import StagingDir, commit, new_staging, recover, swap_into_place  # noqa: F401 (re-exported)
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


def is_run_file(path: str | os.PathLike[str], run_id: str) -> bool:
    """Whether ``path`` names a file that run ``run_id`` appended (``part_file_name(i, run_id)``). Exact:
    run ``ab`` does not claim run ``ab-c``'s ``part-ab-c-00000.parquet``."""
    name, prefix = Path(path).name, f"part-{run_id}-"
    return name.startswith(prefix) and re.fullmatch(r"\d{5,}\.parquet", name[len(prefix):]) is not None


# Sinks that may run a bundle more than once (a retried bundle, a re-executed branch) write each
# batch to ``<staging>/_attempts/<content digest>.parquet`` and, in their last step, the list of the
# attempts that reached that step (``_attempts/_commit.json``). Only the driver turns that list into
# part files (``apply_commit``, called by ``DatasetWriter.stage``): attempts of bundles that ran
# again are left out and deleted, and nothing on a worker moves a file twice.
ATTEMPTS = "_attempts"
COMMIT_LIST = "_commit.json"


def attempt_name(table) -> str:
    """A file name derived from an Arrow table's content: a bundle that runs again writes the same
    rows to the same name (an idempotent, atomic overwrite) instead of a second file."""
    import hashlib

    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return hashlib.blake2b(sink.getvalue(), digest_size=16).hexdigest() + ".parquet"


def record_commit(infos: list[dict], staging: str) -> int:
    """Last step of a sink (on a worker): write the attempts to publish, ``{"attempt": path,
    "partition": "lang=de", "rows": n}`` each, atomically; running it again rewrites the list.
    Returns the rows listed."""
    from storage.io import write_json_atomic

    root = Path(staging)
    listed = [{"attempt": Path(i["attempt"]).name, "partition": i["partition"], "rows": int(i["rows"])} for i in infos]
    write_json_atomic(root / ATTEMPTS / COMMIT_LIST, sorted(listed, key=lambda i: (i["partition"], i["attempt"])))
    return sum(i["rows"] for i in listed)


def apply_commit(staging: Path) -> int:
    """On the driver: move the listed attempts into ``<partition>/part-NNNNN.parquet`` and delete the
    attempts folder. Two entries with the same content share a name; the second gets a copy.
    Returns the rows committed; a staging folder without attempts is left as it is."""
    import json

    attempts = Path(staging) / ATTEMPTS
    if not attempts.exists():
        return 0
    commit = attempts / COMMIT_LIST
    if not commit.exists():
        raise DatasetCountError(f"{staging}: the sink's attempts were never committed (its last step did not run)")
    infos = json.loads(commit.read_text())
    index: dict[str, int] = {}
    placed: dict[str, Path] = {}
    rows = 0
    for info in infos:
        i = index[info["partition"]] = index.get(info["partition"], -1) + 1
        dest = Path(staging) / info["partition"] / part_file_name(i)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if info["attempt"] in placed:
            shutil.copyfile(placed[info["attempt"]], dest)
        else:
            os.replace(attempts / info["attempt"], dest)
            placed[info["attempt"]] = dest
        rows += info["rows"]
    shutil.rmtree(attempts)
    return rows


class DatasetWriter:
    """Staging area for one run's version of a dataset.

    ``with DatasetWriter(...) as w:`` creates the staging folder; on a clean exit the version that
    ``w.stage`` checked is published (unless ``publish`` or ``publish_together`` already did); on an
    exception, or a clean exit with nothing staged, the staging folder is removed and nothing is
    published. ``begin`` / ``publish`` / ``abort`` are the same steps for callers that cannot use
    a ``with`` block.
    """

    def __init__(self, layout: Layout, spec: DatasetSpec, run_id: str | None = None):
        self.layout = layout
        self.spec = spec
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.final = layout.dataset_dir(spec.relpath)
        self.staging = layout.staging / f"{spec.name}-{self.run_id}"
        self._dir = StagingDir(self.staging)
        self.replaced_rows = 0
        self.manifest: Manifest | None = None  # set by stage(): the checked version, ready to publish
        self.published = False

    def begin(self) -> DatasetWriter:
        self._dir.create()
        self.manifest, self.published = None, False
        return self

    def __enter__(self) -> DatasetWriter:
        return self.begin()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.manifest is not None and not self.published:
            try:
                commit(self.layout, [self.move])
            except BaseException:
                self.abort()
                raise
            self.published = True
        if self.published:
            self.done()
        else:
            self.abort()  # an error, or nothing staged: the previous version stays

    def file_path(self, partition: dict[str, str], index: int, tag: str = "") -> Path:
        return self.staging / partition_path(self.spec, partition) / part_file_name(index, tag)

    def stage(
        self,
        *,
        producer: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        expected_rows: int | None = None,
        replace_empty: bool = False,
    ) -> Manifest:
        """Check the staged files and write their manifest into the staging folder; nothing is visible
        until ``commit``. Raises as ``publish`` does."""
        apply_commit(self.staging)  # a Beam sink's committed attempts become part files, here, once
        manifest = build_manifest(self.spec, self.staging, producer=producer, stats=stats)
        if expected_rows is not None and manifest.rows != expected_rows:
            raise DatasetCountError(
                f"dataset {self.spec.name!r}: files in {self.staging} hold {manifest.rows} rows, "
                f"the producer counted {expected_rows}; not published"
            )
        self.replaced_rows = check_replace(self.layout, self.spec, manifest.rows, replace_empty=replace_empty)
        write_manifest(self.staging, manifest)
        self.manifest = manifest
        return manifest

    @property
    def move(self) -> tuple[Path, Path]:
        """``(staging, final)`` for ``commit``."""
        return self.staging, self.final

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
        manifest = self.stage(producer=producer, stats=stats, expected_rows=expected_rows, replace_empty=replace_empty)
        commit(self.layout, [self.move])
        self.published = True
        self.done()
        return manifest

    def done(self) -> None:
        """After ``commit``: let go of the staging lock."""
        self._dir.release()

    def abort(self) -> None:
        self._dir.remove()


def publish_together(layout: Layout, writers: list[DatasetWriter],
                     folders: list[tuple[Path, Path]] | None = None) -> None:
    """Publish staged writers, and other finished staging folders (``(staging, final)``, e.g. the
    TFRecord copies), as one group: all of them or, after a crash, none (``storage.publish.commit``).
    Each writer's ``with`` block then only lets go of its staging lock."""
    unstaged = [w.spec.name for w in writers if w.manifest is None]
    if unstaged:
        raise RuntimeError(f"publish_together: {', '.join(unstaged)} not staged (call stage() first)")
    commit(layout, [w.move for w in writers] + list(folders or []))
    for w in writers:
        w.published = True


def current_manifest(layout: Layout, spec: DatasetSpec) -> Manifest | None:
    return read_manifest(layout.dataset_dir(spec.relpath))
