"""storage.publish: a group of folders goes in all together or, after a crash, not at all; staging of dead
runs is cleaned up, staging of live ones is left alone. The crash cases are recreated on disk (what a
SIGKILL leaves at each point); tests/faults/test_data_stages.py kills real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from storage import io as sio
from storage import publish
from storage.layout import Layout


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(text)
    return path


def _text(path: Path) -> str | None:
    return (path / "data.txt").read_text() if (path / "data.txt").exists() else None


@pytest.fixture
def lake(tmp_path) -> Layout:
    return Layout.from_env(tmp_path / "home").ensure()


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "two-renames"])
def test_commit_replaces_every_folder(lake, monkeypatch, atomic):
    if not atomic:
        monkeypatch.setattr(sio, "exchange", lambda a, b: False)
    finals = [lake.lake / "a", lake.lake / "b", lake.lake / "new"]
    _folder(finals[0], "old a")
    _folder(finals[1], "old b")
    stagings = [publish.new_staging(lake, n) for n in ("a", "b", "new")]
    for d, n in zip(stagings, ("a", "b", "new"), strict=True):
        (d.path / "data.txt").write_text(f"new {n}")
    publish.commit(lake, [(d.path, f) for d, f in zip(stagings, finals, strict=True)])
    for d in stagings:
        d.release()
    assert [_text(f) for f in finals] == ["new a", "new b", "new new"]
    assert sorted(os.listdir(lake.staging)) == []


def _crash_mid_commit(lake: Layout, swapped: int, atomic: bool) -> list[Path]:
    """What a process killed after ``swapped`` of three swaps leaves: journal, swapped and unswapped folders.
    Runs in a child process, which then dies, so its staging locks die with it."""
    finals = [lake.lake / "a", lake.lake / "b", lake.lake / "c"]
    for f in finals[:2]:
        _folder(f, f"old {f.name}")  # c: published for the first time
    stagings = [publish.new_staging(lake, f.name) for f in finals]
    for d, f in zip(stagings, finals, strict=True):
        (d.path / "data.txt").write_text(f"new {f.name}")
    entries = [{"staging": str(d.path), "final": str(f), "ino": d.path.stat().st_ino}
               for d, f in zip(stagings, finals, strict=True)]
    (lake.staging / f"{publish.JOURNAL_PREFIX}x.json").write_text(json.dumps(entries))
    if not atomic:
        sio.exchange = lambda a, b: False
    for e in entries[:swapped]:
        publish._swap(Path(e["staging"]), Path(e["final"]))
    if not atomic and swapped < 3 and finals[swapped].exists():
        os.replace(finals[swapped], publish._aside(Path(entries[swapped]["staging"])))  # between the two renames
    os._exit(0)  # no cleanup, locks released by the kernel


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("swapped", [0, 1, 2, 3])
def test_recover_rolls_an_interrupted_commit_back(lake, swapped, atomic):
    p = multiprocessing.get_context("fork").Process(target=_crash_mid_commit, args=(lake, swapped, atomic))
    p.start()
    p.join(30)
    restored = publish.recover(lake)
    assert len(restored) == 3
    assert [_text(lake.lake / n) for n in "abc"] == ["old a", "old b", None]
    assert not (lake.lake / "c").exists()
    assert os.listdir(lake.staging) == []  # journal, staging folders, asides and their locks: all gone
    assert publish.recover(lake) == []  # idempotent


def test_recover_leaves_a_live_writer_alone(lake):
    live = publish.new_staging(lake, "live")
    (live.path / "data.txt").write_text("being written")
    dead = lake.staging / "dead-123"
    _folder(dead, "left by a killed run")
    journal = lake.staging / f"{publish.JOURNAL_PREFIX}live.json"
    journal.write_text(json.dumps([{"staging": str(live.path), "final": str(lake.lake / "x"), "ino": 1}]))
    publish.recover(lake)
    assert _text(live.path) == "being written" and journal.exists()  # its lock is held: alive
    assert not dead.exists()
    live.remove()


def test_an_error_mid_commit_puts_the_previous_versions_back(lake, monkeypatch):
    _folder(lake.lake / "a", "old a")
    _folder(lake.lake / "b", "old b")
    stagings = [publish.new_staging(lake, n) for n in "ab"]
    for d, n in zip(stagings, "ab", strict=True):
        (d.path / "data.txt").write_text(f"new {n}")
    real = publish._swap
    calls = []

    def swap(staging, final):
        calls.append(final)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(final))
        real(staging, final)

    monkeypatch.setattr(publish, "_swap", swap)
    with pytest.raises(OSError, match="No space left"):
        publish.commit(lake, [(d.path, lake.lake / n) for d, n in zip(stagings, "ab", strict=True)])
    assert [_text(lake.lake / n) for n in "ab"] == ["old a", "old b"]
    assert not list(lake.staging.glob(f"{publish.JOURNAL_PREFIX}*"))
