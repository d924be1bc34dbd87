"""`labse fetch-docs manpages` offline: fixture .deb packages built here with dpkg-deb, served by a fake
apt-get (``LABSE_APT_GET``), a fake system man root; what lands in the lake, the manifest, re-runs that
keep earlier languages, and every failure as one line + exit 2 with the previous version intact."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from labse_core import manpages as mp
from storage.layout import Layout

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build fixture packages")


def _page(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(f'.TH X 1\n.SH NAME\n{text}\n'.encode(), mtime=0))


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _deb(out: Path, name: str, version: str, pages: dict[str, str], links: dict[str, str] | None = None) -> Path:
    """A real .deb (dpkg-deb --build) holding ``usr/share/man/<rel>`` pages (gzip) and links."""
    tree = out / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        f"Description: fixture man pages\n")
    for rel, text in pages.items():
        _page(tree / "usr/share/man" / rel, text)
    for rel, target in (links or {}).items():
        _link(tree / "usr/share/man" / rel, target)
    deb = out / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("debs")
    _deb(d, "manpages-de", "1.0-1", {"de/man1/foo.1.gz": "foo auf Deutsch", "de/man1/bar.1.gz": "bar auf Deutsch",
                                     "de/man5/qux.5.gz": "qux ohne Original"}, {"de/man1/baz.1.gz": "foo.1.gz"})
    _deb(d, "manpages-de-dev", "1.0-1", {"de/man3/printf.3.gz": "printf auf Deutsch"})
    _deb(d, "manpages-zh", "2.0-1", {"zh_CN/man1/foo.1.gz": "foo 简体", "zh_TW/man1/foo.1.gz": "foo 繁體",
                                     "zh_TW/man1/bar.1.gz": "bar 繁體"})
    _deb(d, "manpages-fr", "3.0-1", {"fr/man1/foo.1.gz": "foo en français"})
    _deb(d, "manpages", "9.9-1", {"man1/foo.1.gz": "foo from the package", "man3/printf.3.gz": "printf (3)"})
    return d


@pytest.fixture(scope="module")
def system_root(tmp_path_factory) -> Path:
    """A system man root: English pages in manN/, and a translation folder that must not be read as English."""
    root = tmp_path_factory.mktemp("sysman")
    _page(root / "man1/foo.1.gz", "foo from the system")
    _page(root / "man1/bar.1.gz", "bar from the system")
    _link(root / "man1/baz.1.gz", "foo.1.gz")
    _page(root / "de/man1/other.1.gz", "a system translation")
    return root


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n# a fake apt-get: called as `apt-get -q download NAME`\neval name=\\${$#}\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def fake_apt(tmp_path_factory, debs) -> Path:
    """Copies the fixture package into the current folder, or says what apt says of an unknown name."""
    return _script(tmp_path_factory.mktemp("apt") / "apt-get", f"""
for f in "{debs}/$name"_*.deb; do
  if [ -f "$f" ]; then /bin/cp "$f" . && echo "Get:1 fake $name" && exit 0; fi
done
echo "E: Unable to locate package $name" >&2
exit 100
""")


@pytest.fixture(scope="module")
def offline_apt(tmp_path_factory) -> Path:
    return _script(tmp_path_factory.mktemp("apt-offline") / "apt-get", """
echo "Err:1 http://deb.debian.org/debian bookworm/main amd64 $name all 1.0"
echo "  Temporary failure resolving 'deb.debian.org'"
echo "E: Failed to fetch http://deb.debian.org/debian/pool/main/m/$name/${name}_1.0_all.deb  Temporary failure resolving 'deb.debian.org'" >&2
echo "E: Some files failed to download" >&2
exit 100
""")


@pytest.fixture(scope="module")
def no_lists_apt(tmp_path_factory) -> Path:
    """apt-get before any `apt-get update`: it knows no package at all."""
    return _script(tmp_path_factory.mktemp("apt-nolists") / "apt-get",
                   'echo "E: Unable to locate package $name" >&2\nexit 100\n')


def fetch_docs(home: Path, apt: Path, system_root: Path, *args: str):
    env = {"LABSE_HOME": str(home), mp.APT_GET_ENV: str(apt), "COLUMNS": "200"}
    return CliRunner().invoke(app, ["fetch-docs", "manpages", "--system-man-root", str(system_root), *args], env=env)


def _tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: content (gunzipped) or ``-> target``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            data = p.read_bytes()
            out[rel] = gzip.decompress(data).decode() if p.suffix == ".gz" else data.decode()
    return out


def _no_staging_left(home: Path) -> None:
    left = [p.name for p in Layout.from_env(home).staging.iterdir() if "docs-manpages" in p.name]
    assert left == [], left


def test_pages_land_in_the_lake_with_english_pages_of_the_same_names(tmp_path, fake_apt, system_root):
    home = tmp_path / "home"
    r = fetch_docs(home, fake_apt, system_root, "--langs", "de")
    assert r.exit_code == 0, r.output
    root = Layout.from_env(home).docs("manpages")
    assert root == home / "lake" / "docs" / "manpages"
    tree = _tree(root)
    # translations as the packages ship them (main + -dev), the alias kept as its relative link
    assert "foo auf Deutsch" in tree["de/man1/foo.1.gz"] and "printf auf Deutsch" in tree["de/man3/printf.3.gz"]
    assert tree["de/man1/baz.1.gz"] == "-> foo.1.gz" and "de/man5/qux.5.gz" in tree
    assert (root / "de/man1/foo.1.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip kept
    # English: the package's page first, else the system's; only names a translation has
    assert "foo from the package" in tree["en/man1/foo.1.gz"]
    assert "bar from the system" in tree["en/man1/bar.1.gz"]
    assert "printf (3)" in tree["en/man3/printf.3.gz"]
    assert "foo from the system" in tree["en/man1/baz.1.gz"]  # its target came from another source: a copy
    assert not [k for k in tree if k.startswith("en/") and ("qux" in k or "other" in k)]
    assert not [k for k in tree if k.startswith("en/de")]  # the system's translations are not English

    m = json.loads((root / "_manifest.json").read_text())
    de = m["languages"]["de"]
    assert de["packages"] == {"manpages-de": "1.0-1", "manpages-de-dev": "1.0-1"}
    assert (de["pages"], de["links"], de["english_matched"], de["request"]) == (4, 1, 3, "de")
    assert m["english"]["packages"] == {"manpages": "9.9-1"}  # no manpages-dev in this source: optional
    assert m["english"]["pages"] == 4 and m["english"]["from"] == {"manpages": 2, "system": 2}
    assert m["english"]["system_root"] == str(system_root) and m["updated_at"] == de["fetched_at"]
    assert "de  manpages-de 1.0-1, manpages-de-dev 1.0-1: 4 pages (+1 links), 3 with an English page" in r.stdout
    assert f"wrote {root}" in r.stdout
    _no_staging_left(home)


def test_without_system_pages_only_the_packages_english(tmp_path, fake_apt, system_root):
    home = tmp_path / "home"
    r = fetch_docs(home, fake_apt, system_root, "--langs", "de", "--no-english-from-system")
    assert r.exit_code == 0, r.output
    root = Layout.from_env(home).docs("manpages")
    assert sorted(p.relative_to(root / "en").as_posix() for p in (root / "en").rglob("*.gz")) == [
        "man1/foo.1.gz", "man3/printf.3.gz"]
    m = json.loads((root / "_manifest.json").read_text())
    assert m["languages"]["de"]["english_matched"] == 2 and m["english"]["system_root"] is None


def test_rerun_adds_languages_keeps_earlier_ones_and_replace_drops_them(tmp_path, fake_apt, system_root):
    home = tmp_path / "home"
    assert fetch_docs(home, fake_apt, system_root, "--langs", "de").exit_code == 0
    root = Layout.from_env(home).docs("manpages")
    de_before = _tree(root / "de")
    first = json.loads((root / "_manifest.json").read_text())

    r = fetch_docs(home, fake_apt, system_root, "--langs", "zh")  # zh: every zh_* folder of manpages-zh
    assert r.exit_code == 0, r.output
    m = json.loads((root / "_manifest.json").read_text())
    assert sorted(m["languages"]) == ["de", "zh_CN", "zh_TW"]
    assert _tree(root / "de") == de_before and m["languages"]["de"]["fetched_at"] == first["languages"]["de"]["fetched_at"]
    assert m["languages"]["zh_TW"] | {"fetched_at": ""} == {"packages": {"manpages-zh": "2.0-1"}, "pages": 2, "links": 0,
                                                            "english_matched": 2, "fetched_at": "", "request": "zh"}
    assert "en/man3/printf.3.gz" in _tree(root)  # still needed by de
    assert "(kept from " in r.stdout

    r = fetch_docs(home, fake_apt, system_root, "--langs", "zh_CN")  # one folder refreshed, zh_TW kept
    assert r.exit_code == 0, r.output
    m = json.loads((root / "_manifest.json").read_text())
    assert sorted(m["languages"]) == ["de", "zh_CN", "zh_TW"] and m["languages"]["zh_CN"]["request"] == "zh_CN"

    r = fetch_docs(home, fake_apt, system_root, "--langs", "fr", "--replace")
    assert r.exit_code == 0, r.output
    m = json.loads((root / "_manifest.json").read_text())
    assert sorted(m["languages"]) == ["fr"] and "dropped (--replace): de, zh_CN, zh_TW" in r.stdout
    assert sorted(p.name for p in root.iterdir()) == ["_manifest.json", "en", "fr"]
    assert sorted(_tree(root / "en")) == ["man1/foo.1.gz"]  # English only for names a translation has
    _no_staging_left(home)


@pytest.mark.parametrize("apt, langs, message", [
    ("offline", "de", "no package source reachable (apt-get download manpages-de: E: Failed to fetch "
                      "http://deb.debian.org/debian/pool/main/m/manpages-de/manpages-de_1.0_all.deb  "
                      "Temporary failure resolving 'deb.debian.org')"),
    ("no_lists", "de", "no package source reachable (apt-get download manpages: E: Unable to locate package manpages"),
    ("fake", "sw", "unknown language 'sw': no package manpages-sw"),
    ("fake", "de,qq", "unknown language code 'qq'"),
    ("fake", "de,en", "--langs en: the English pages come with every translation"),
    ("fake", "de_DE.UTF-8", "unsupported language code 'de_DE.UTF-8'"),
    ("fake", "zh_HK", "manpages-zh 2.0-1 has no pages for 'zh_HK' (its man page folders: zh_CN, zh_TW)"),
])
def test_a_failure_is_one_line_and_leaves_the_previous_version(tmp_path, fake_apt, offline_apt, no_lists_apt,
                                                               system_root, apt, langs, message):
    home = tmp_path / "home"
    assert fetch_docs(home, fake_apt, system_root, "--langs", "de").exit_code == 0
    root = Layout.from_env(home).docs("manpages")
    before = _tree(root)
    r = fetch_docs(home, {"fake": fake_apt, "offline": offline_apt, "no_lists": no_lists_apt}[apt], system_root,
                   "--langs", langs)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.output
    assert _tree(root) == before
    _no_staging_left(home)


def test_a_failure_while_building_publishes_nothing(layout, fake_apt, system_root, monkeypatch):
    """Past the downloads, in the staging folder: the previous version stays, no staging folder is left."""
    monkeypatch.setenv(mp.APT_GET_ENV, str(fake_apt))
    mp.fetch_manpages(layout, "de", system_root=system_root)
    root = layout.docs("manpages")
    before = _tree(root)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mp, "write_english", broken)
    with pytest.raises(OSError, match="No space left"):
        mp.fetch_manpages(layout, "fr", system_root=system_root)
    assert _tree(root) == before
    assert [p for p in layout.staging.iterdir() if "docs-manpages" in p.name] == []


def test_missing_tools_are_one_line_in_a_real_process(tmp_path, fake_apt):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != mp.APT_GET_ENV}
    env |= {"LABSE_HOME": str(tmp_path / "home"), "PATH": str(empty)}
    cmd = [sys.executable, "-m", "flows.cli", "fetch-docs", "manpages", "--langs", "de"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: apt-get not found on PATH") and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env=env | {mp.APT_GET_ENV: str(fake_apt)}, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: dpkg-deb not found on PATH") and r.stderr.count("\n") == 1, r.stderr


def test_language_codes_map_to_packages_and_folders():
    de, zh, zh_cn, pt_br = mp.parse_langs("de, zh,zh-cn,pt_br,de")
    assert (de.packages(), zh.packages(), zh_cn.packages(), pt_br.packages()) == (
        ["manpages-de"], ["manpages-zh"], ["manpages-zh-cn", "manpages-zh"], ["manpages-pt-br", "manpages-pt"])
    assert zh.matches("zh_CN") and zh.matches("zh_TW") and not zh_cn.matches("zh_TW") and zh_cn.code == "zh_CN"
    assert de.matches("de") and not de.matches("da") and pt_br.code == "pt_BR" and not pt_br.matches("pt")
    assert mp.page_name("man1", "ls.1.gz") == "man1/ls.1" == mp.page_name("man1", "ls.1")
