"""What produced an output: the code version, the git commit and the input datasets' manifests.

One place for these facts, used by the stage caches (``flows.stages``: a stage is skipped when its
config, its inputs' manifests and the code are unchanged) and by the model registry (every version of
``labse`` is tagged with ``lineage_tags``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from storage.layout import REPO_ROOT, Layout
from storage.manifest import MANIFEST_NAME
from storage.schemas import DATASETS

CODE_PACKAGES = ("labse_core", "beam_jobs", "storage", "flows")
"""The packages whose source is the code version: a stage calls helpers across all of them, so hashing
only the task's own source (Prefect's TASK_SOURCE) would miss a change in what it calls."""


@functools.cache
def code_version() -> str:
    """sha256 (16 hex digits) of every ``.py`` file of ``CODE_PACKAGES``, paths included. Computed once
    per process: one run sees one code version even while files are edited under it."""
    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        for path in sorted((REPO_ROOT / pkg).rglob("*.py")):
            h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def git_commit() -> str:
    """``HEAD`` of the checkout, ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def file_hash(path: Path) -> str | None:
    """sha256 (16 hex digits) of a file's bytes; None when it does not exist."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def manifest_hash(layout: Layout, dataset: str) -> str | None:
    """Hash of a published dataset's ``_manifest.json`` (None: not published). A manifest is rewritten on
    every publish (counts, files, producer), so its hash names one version of the dataset."""
    return file_hash(layout.dataset_dir(DATASETS[dataset].relpath) / MANIFEST_NAME)


def vocab_hash(layout: Layout) -> str | None:
    """Hash of the sentencepiece model in the lake (what the tokenizer and the shards derive from)."""
    return file_hash(layout.vocab / "spm.model")


def folder_hash(folder: str | Path | None) -> str | None:
    """Hash of a model folder's files (names, sizes and contents); None for no folder."""
    if folder is None or not Path(folder).is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + (file_hash(path) or "").encode())
    return h.hexdigest()[:16]


def manifest_hashes(layout: Layout) -> dict[str, str]:
    """Every published dataset's manifest hash, plus the vocabulary's."""
    out = {name: h for name in DATASETS if (h := manifest_hash(layout, name))}
    if (v := vocab_hash(layout)) is not None:
        out["vocab"] = v
    return out


def lineage_tags(layout: Layout, *, preset: str | None = None, flow_run_id: str | None = None,
                 pipeline_run_id: str | None = None) -> dict[str, str]:
    """Tags for a registered model version: what produced it."""
    tags = {"git_commit": git_commit(), "code_version": code_version()}
    tags |= {f"data.{k}": v for k, v in manifest_hashes(layout).items()}
    for key, value in (("preset", preset), ("prefect_flow_run_id", flow_run_id), ("pipeline_run_id", pipeline_run_id)):
        if value:
            tags[key] = value
    return tags


def stable_hash(obj: Any) -> str:
    """sha256 (16 hex digits) of a JSON-able object, key order ignored."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _module_file(name: str) -> Path | None:
    """The source file of a module of this repository (a package: its ``__init__.py``)."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Modules of this repository that ``path`` imports anywhere (also inside functions: lazy imports)."""
    import ast

    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m.split(".")[0] in CODE_PACKAGES}


@functools.cache
def module_closure(roots: tuple[str, ...]) -> tuple[Path, ...]:
    """Every source file of this repository that the ``roots`` modules import, directly or not (packages'
    ``__init__.py`` included: importing a module runs them)."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue  # a name imported from a module (a function, a class), not a module
        seen[name] = path
        todo += _imports(path, name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    return tuple(sorted(set(seen.values())))


@functools.cache
def code_version_of(roots: tuple[str, ...], files: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) of the import closure of ``roots`` plus ``files`` (repository-relative paths,
    hashed alone): the code a stage runs, helpers included. Computed once per process."""
    h = hashlib.sha256()
    paths = sorted(set(module_closure(roots)) | {REPO_ROOT / f for f in files})
    for path in paths:
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
