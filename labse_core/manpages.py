"""Debian's translated man pages, and the English pages of the same names, into the lake's raw documents.

    labse fetch-docs manpages --langs de,zh [--no-english-from-system] [--replace]

**Why.** Document mining (``labse mine`` with a folder on each side, ``labse_core.readers.documents``)
needs real comparable documents: the same text written twice, in two languages, by other people than
the ones whose UI strings the models train on. Debian's ``manpages-<lang>`` packages (manpages-l10n,
po4a: translated paragraph by paragraph) are that, and a fresh machine with an apt source gets them
without root: ``apt-get download`` writes the ``.deb`` into the current folder, ``dpkg-deb -x`` unpacks it.

**What is written** (``Layout.docs("manpages")``), each page file as its package ships it (gzip kept,
aliases kept as the package's relative symbolic links)::

    lake/docs/manpages/
      de/man1/ls.1.gz          manpages-de + manpages-de-dev: every page under usr/share/man/de/
      zh_CN/, zh_TW/           manpages-zh (``--langs zh`` takes every zh_* folder; ``zh_CN`` only that one)
      en/man1/ls.1.gz          the English page of every name some translation has, from the packages
                               ``manpages``/``manpages-dev`` first, else the system's man root
                               (``/usr/share/man/manN``, ``--no-english-from-system`` leaves it out)
      _manifest.json           per language: packages and versions, pages, links, pages with an English
                               page, when fetched; the English pages' sources

An English page is taken only for a page name a translation has: the point is pairs of one page, and
the same page name in two language folders is how mining pairs documents (``man1/ls.1``).

**Publication.** The new version is built in a staging folder (``storage.publish``) and swapped in
whole (journalled: a crash rolls back to the previous version), under the lake lock. Languages fetched
earlier and not named now are carried over (hard links into the new version) unless ``replace``;
a language named again is replaced by what its packages hold now. A run that fails (no package
source, an unknown language, a package without pages for the language) publishes nothing and leaves
no staging folder behind: the previous version stays as it was.

**Errors** are ``ManpagesError`` with one line: a missing tool, an unknown or unsupported language
code, ``unknown language 'xx': no package manpages-xx``, ``no package source reachable (apt-get download
P: <apt's last error line>)``, a package without pages for the language.

``LABSE_APT_GET`` names the ``apt-get`` to run (tests put a fake there that serves fixture packages).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labse_core import langcodes
from storage.io import write_json_atomic
from storage.layout import Layout
from storage.locks import lake_lock
from storage.publish import StagingDir, commit, new_staging

SOURCE = "manpages"
ENGLISH_DIR = "en"
MANIFEST_NAME = "_manifest.json"  # the lake's manifest name; "_" keeps it apart from the language folders
DEFAULT_SYSTEM_ROOT = Path("/usr/share/man")
ENGLISH_PACKAGES: tuple[str, ...] = ("manpages", "manpages-dev")
"""The Linux man-pages project's English pages (sections 2, 3, 4, 5, 7 and some of 1 and 8): the originals
of manpages-l10n's ``-dev`` translations. ``manpages`` is also the probe of the package source: where even
it cannot be located, apt has no package lists (no source), whatever the language asked for."""
APT_GET_ENV = "LABSE_APT_GET"
DOWNLOAD_TIMEOUT_S = 600
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".Z")
MAN_PREFIX = Path("usr/share/man")

_CODE = re.compile(r"^([A-Za-z]{2,3})(?:[_-]([A-Za-z]{2}|\d{3}))?$")


class ManpagesError(ValueError):
    """Why nothing was fetched or published, in one line."""


class SourceUnreachable(ManpagesError):
    """apt-get could not fetch a package (no network, no package lists, a failing mirror)."""


# ---------------------------------------------------------------------------------------------------
# Languages asked for -> packages and folders


@dataclass(frozen=True)
class LangRequest:
    """One ``--langs`` entry: ``de``, ``zh`` (every zh_* folder), ``zh_CN`` or ``pt_BR`` (that folder)."""

    code: str
    """As man folders spell it: language lower case, region upper case (``pt_BR``)."""
    language: str
    region: str | None

    def packages(self) -> list[str]:
        """Debian's package names to try, in order: ``manpages-pt-br``, then ``manpages-pt`` (``manpages-zh``
        holds both zh_CN and zh_TW)."""
        base = f"manpages-{self.language}"
        return [f"{base}-{self.region.lower()}", base] if self.region else [base]

    def matches(self, folder: str) -> bool:
        """Whether a package's man folder (``de``, ``zh_CN``, ``pt_BR``, ``de.UTF-8``) is this language's."""
        if folder == self.code:
            return True
        return self.region is None and re.split(r"[_.@]", folder)[0] == self.language


def parse_langs(text: str | Iterable[str]) -> list[LangRequest]:
    """``de,fr,zh_CN`` -> requests, in order, without repeats. ``ManpagesError`` for a code that is no ISO 639
    language, has a form a man folder never has, or is English (which comes with every language)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[LangRequest] = []
    for raw in (s.strip() for s in items):
        if not raw:
            continue
        m = _CODE.match(raw)
        if m is None:
            raise ManpagesError(f"unsupported language code {raw!r}: --langs takes ISO 639 codes, with a region "
                                "where Debian has one folder per region (de, fr, zh, zh_CN, pt_BR)")
        language, region = m.group(1).lower(), m.group(2).upper() if m.group(2) else None
        try:
            langcodes.normalize(language)
        except langcodes.UnknownLanguage:
            raise ManpagesError(f"unknown language code {raw!r} (not an ISO 639 language; e.g. de, fr, zh, pt_BR)") from None
        if language == "en":
            raise ManpagesError("--langs en: the English pages come with every translation; name the translations "
                                "(e.g. --langs de,fr)")
        req = LangRequest(f"{language}_{region}" if region else language, language, region)
        if req not in out:
            out.append(req)
    if not out:
        raise ManpagesError("--langs names no language (e.g. --langs de,fr)")
    return out


# ---------------------------------------------------------------------------------------------------
# apt-get and dpkg-deb


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    deb: Path
    root: Path
    """Where it was unpacked; its pages are under ``root/usr/share/man``."""

    @property
    def man(self) -> Path:
        return self.root / MAN_PREFIX

    def language_folders(self) -> list[str]:
        """The translation folders it holds (``de``, ``zh_CN``): folders of usr/share/man with ``man*/`` pages."""
        if not self.man.is_dir():
            return []
        return sorted(p.name for p in self.man.iterdir()
                      if p.is_dir() and not p.name.startswith("man") and index_pages(p))


_GENERIC_ERRORS = ("E: Some files failed to download", "E: Unable to fetch some archives")


def _last_error(output: str) -> str:
    """The line of a tool's output that says what went wrong: its last ``E:`` line that is not a summary
    (apt ends a failed download with "E: Some files failed to download", the "Failed to fetch ...
    Temporary failure resolving ..." line before it says why), else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    specific = [ln for ln in errors if not ln.startswith(_GENERIC_ERRORS)]
    return (specific or errors or lines or ["no output"])[-1]


class Apt:
    """``apt-get download`` and ``dpkg-deb`` as this recipe runs them: in English (``LC_ALL=C``: apt's
    messages are what tells an unknown package from an unreachable source), one package per call (one
    unknown name fails a whole ``apt-get download a b``)."""

    def __init__(self, apt_get: str | None = None, dpkg_deb: str | None = None):
        self.apt_get = apt_get or _tool("apt-get", os.environ.get(APT_GET_ENV), APT_GET_ENV)
        self.dpkg_deb = dpkg_deb or _tool("dpkg-deb")
        self._env = {**os.environ, "LC_ALL": "C", "LANGUAGE": ""}

    def download(self, name: str, folder: Path) -> Path | None:
        """The ``.deb`` of package ``name`` downloaded into ``folder``; None when apt knows no such package.
        ``SourceUnreachable`` when apt-get fails otherwise."""
        cmd = [self.apt_get, "-q", "download", name]
        try:
            r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=self._env,
                               timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SourceUnreachable(f"no package source reachable (apt-get download {name}: no answer in "
                                    f"{DOWNLOAD_TIMEOUT_S} s)") from None
        except OSError as e:
            raise ManpagesError(f"cannot run {self.apt_get}: {e.strerror or e}") from None
        output = f"{r.stdout}\n{r.stderr}"
        if r.returncode != 0:
            if "Unable to locate package" in output or "has no installation candidate" in output:
                return None
            raise SourceUnreachable(f"no package source reachable (apt-get download {name}: {_last_error(output)})")
        debs = sorted(folder.glob(f"{name}_*.deb"))
        if not debs:
            raise ManpagesError(f"apt-get download {name} succeeded but wrote no {name}_*.deb into {folder}")
        return debs[-1]

    def _dpkg(self, *args: str) -> str:
        try:
            r = subprocess.run([self.dpkg_deb, *args], capture_output=True, text=True, env=self._env)
        except OSError as e:
            raise ManpagesError(f"cannot run {self.dpkg_deb}: {e.strerror or e}") from None
        if r.returncode != 0:
            raise ManpagesError(f"dpkg-deb {' '.join(args)}: {_last_error(r.stderr + r.stdout)}")
        return r.stdout

    def unpack(self, deb: Path, root: Path) -> Package:
        """Unpack ``deb`` into ``root``; its name and version from its control file."""
        fields = dict(ln.split(": ", 1) for ln in self._dpkg("-f", str(deb), "Package", "Version").splitlines()
                      if ": " in ln)
        root.mkdir(parents=True, exist_ok=True)
        self._dpkg("-x", str(deb), str(root))
        return Package(fields.get("Package", deb.name.split("_")[0]), fields.get("Version", "?"), deb, root)


def _tool(name: str, given: str | None = None, env: str | None = None) -> str:
    if given:
        found = shutil.which(given)
        if found is None:
            raise ManpagesError(f"{env}={given}: not an executable (the {name} to run)")
        return found
    found = shutil.which(name)
    if found is None:
        hint = f"; or set {env} to one" if env else ""
        raise ManpagesError(f"{name} not found on PATH: fetch-docs manpages downloads and unpacks Debian packages "
                            f"with apt-get and dpkg-deb (a Debian/Ubuntu machine with an apt source{hint})")
    return found


class Downloads:
    """Each package downloaded and unpacked once per run, under one folder (``folder/<name>/``)."""

    def __init__(self, apt: Apt, folder: Path):
        self.apt, self.folder = apt, folder
        self._got: dict[str, Package | None] = {}

    def get(self, name: str) -> Package | None:
        if name not in self._got:
            deb = self.apt.download(name, self.folder)
            self._got[name] = None if deb is None else self.apt.unpack(deb, self.folder / name)
        return self._got[name]

    def english(self) -> list[Package]:
        """The English packages; ``SourceUnreachable`` when even ``manpages`` is unknown (no package lists)."""
        if self.get(ENGLISH_PACKAGES[0]) is None:
            name = ENGLISH_PACKAGES[0]
            raise SourceUnreachable(f"no package source reachable (apt-get download {name}: E: Unable to locate "
                                    f"package {name}; apt knows no packages at all: run apt-get update)")
        return [p for p in (self.get(n) for n in ENGLISH_PACKAGES) if p is not None]


@dataclass
class Fetched:
    """The folders one language request got, and from which packages."""

    request: LangRequest
    folders: dict[str, list[Package]]


def fetch_language(req: LangRequest, downloads: Downloads) -> Fetched:
    """Download ``req``'s package (and its ``-dev`` companion where Debian has one) and find its folders."""
    main = None
    for name in req.packages():
        main = downloads.get(name)
        if main is not None:
            break
    if main is None:
        downloads.english()  # no package lists at all reads as "unknown package" for every name
        tried = " or ".join(req.packages())
        raise ManpagesError(f"unknown language {req.code!r}: no package {tried} (Debian's translated man pages "
                            "are packages manpages-<lang>: de, fr, es, it, ja, pl, pt-br, ru, zh, ...)")
    packages = [main] + [p for p in [downloads.get(f"{main.name}-dev")] if p is not None]
    folders: dict[str, list[Package]] = {}
    for pkg in packages:
        for f in pkg.language_folders():
            if req.matches(f):
                folders.setdefault(f, []).append(pkg)
    if not folders:
        held = ", ".join(sorted({f for p in packages for f in p.language_folders()})) or "none"
        raise ManpagesError(f"{main.name} {main.version} has no pages for {req.code!r} (its man page folders: {held})")
    return Fetched(req, folders)


# ---------------------------------------------------------------------------------------------------
# Pages


def page_name(section: str, filename: str) -> str:
    """A page's name across languages and compressions: ``man1/ls.1`` for ``man1/ls.1.gz``."""
    for suffix in COMPRESSION_SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return f"{section}/{filename}"


def index_pages(root: Path) -> dict[str, Path]:
    """Page name -> file (or symbolic link) for every page in ``root``'s ``man*/`` sections."""
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for section in sorted(root.glob("man*")):
        if not section.is_dir():
            continue
        for p in sorted(section.iterdir()):
            if p.is_symlink() or p.is_file():
                out.setdefault(page_name(section.name, p.name), p)
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (the lake's own files and unpacked packages: never changed in place), else a copy."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_tree(src: Path, dst: Path, *, link: bool = True) -> None:
    """Put ``src``'s files into ``dst`` (created), symbolic links kept as links; a name in both: ``src``'s."""
    for here, dirs, files in os.walk(src):
        rel = Path(here).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in [*files, *(d for d in dirs if (Path(here) / d).is_symlink())]:
            s, d = Path(here) / name, dst / rel / name
            if s.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    d.unlink()
                d.symlink_to(os.readlink(s))
            elif link:
                _link_or_copy(s, d)
            else:
                shutil.copy2(s, d)


@dataclass(frozen=True)
class EnglishSource:
    label: str
    """``manpages`` (a package), ``system`` or ``previous``: recorded per page in the manifest's counts."""
    root: Path
    own: bool
    """Files this run may hard-link (unpacked packages, the lake's previous version); never the system's."""


def write_english(names: Iterable[str], sources: Sequence[EnglishSource], dst: Path) -> dict[str, str]:
    """Copy the English page of each name in ``names`` from the first source that has it into ``dst``
    (``dst/manN/<file as the source names it>``). A symbolic link whose target is also copied from the same
    source stays a link; any other link is copied as the file it points to (a dangling one is absent).
    Returns name -> source label."""
    indexes = [index_pages(s.root) for s in sources]
    chosen: dict[str, tuple[int, Path]] = {}
    for name in sorted(set(names)):
        for i, idx in enumerate(indexes):
            p = idx.get(name)
            if p is not None and p.exists():  # exists() follows a link: a dangling one is no page
                chosen[name] = (i, p)
                break
    for _name, (i, p) in chosen.items():
        out = dst / p.parent.name / p.name
        out.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() and not os.path.isabs(target := os.readlink(p)):
            resolved = Path(os.path.normpath(p.parent / target))
            with contextlib.suppress(ValueError):
                rel = resolved.relative_to(sources[i].root)
                if len(rel.parts) == 2 and chosen.get(page_name(*rel.parts)) == (i, resolved):
                    out.symlink_to(target)
                    continue
        if sources[i].own:
            _link_or_copy(Path(os.path.realpath(p)), out)
        else:
            shutil.copy2(p, out)  # follows a link
    return {name: sources[i].label for name, (i, _) in chosen.items()}


@dataclass
class LanguagePages:
    """One language folder of the published version."""

    folder: str
    """``de``, ``zh_CN``: the folder's name, as the package names it."""
    packages: dict[str, str]
    """Package -> version its pages came from."""
    pages: int
    """Page files (not links): the documents mining reads."""
    links: int
    """Aliases (a symbolic link to another page of the folder, as the package ships them)."""
    english_matched: int
    """Pages (files) with an English page of the same name in ``en/``."""
    fetched_at: str
    request: str
    """The ``--langs`` code that fetched it (``zh`` for zh_CN and zh_TW)."""
    refreshed: bool = False
    """Fetched by this run (else carried over from the previous version)."""

    def record(self) -> dict:
        return {"packages": self.packages, "pages": self.pages, "links": self.links,
                "english_matched": self.english_matched, "fetched_at": self.fetched_at, "request": self.request}


def count_pages(folder: Path, english: set[str]) -> tuple[int, int, int]:
    """(page files, links, page files whose name is in ``english``) of one language folder."""
    pages = links = matched = 0
    for name, p in index_pages(folder).items():
        if p.is_symlink():
            links += 1
        else:
            pages += 1
            matched += name in english
    return pages, links, matched


# ---------------------------------------------------------------------------------------------------
# The recipe


@dataclass
class FetchResult:
    path: Path
    manifest: Path
    languages: list[LanguagePages]
    english: dict
    """The manifest's ``english`` record: packages, pages, ``from`` (pages per source), system root."""
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_manifest(folder: Path) -> dict:
    """The published version's manifest, or ``{}`` (none yet, or unreadable: then nothing is known of it)."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}


def fetch_manpages(layout: Layout, langs: str | Sequence[str], *, english_from_system: bool = True,
                   system_root: str | os.PathLike[str] = DEFAULT_SYSTEM_ROOT, replace: bool = False,
                   apt: Apt | None = None) -> FetchResult:
    """Fetch the translated man pages of ``langs`` and their English pages into ``layout.docs("manpages")``
    and publish the new version whole (see the module docstring). ``ManpagesError`` (one line) when
    nothing can be published; the previous version then stays."""
    t0 = time.perf_counter()
    requests = parse_langs(langs)
    apt = apt or Apt()
    final = layout.docs(SOURCE)
    layout.ensure()
    held_download = new_staging(layout, "docs-manpages-download")
    held: StagingDir | None = None
    try:
        downloads = Downloads(apt, held_download.path)
        fetched = [fetch_language(r, downloads) for r in requests]
        english_packages = downloads.english()
        fetched_at = _now()
        with lake_lock(layout, "labse fetch-docs manpages"):
            held = new_staging(layout, "docs-manpages")
            result = _build(held.path, final, fetched, english_packages, fetched_at, replace,
                            Path(system_root) if english_from_system else None)
            commit(layout, [(held.path, final)])
            held.release()
    except BaseException:
        if held is not None:
            held.remove()
        raise
    finally:
        held_download.remove()
    result.path, result.manifest = final, final / MANIFEST_NAME
    result.seconds = time.perf_counter() - t0
    return result


def _build(staging: Path, previous: Path, fetched: Sequence[Fetched], english_packages: Sequence[Package],
           fetched_at: str, replace: bool, system_root: Path | None) -> FetchResult:
    """The new version in ``staging``: the fetched folders, the previous version's other folders (unless
    ``replace``), the English pages of their names, the manifest."""
    old = read_manifest(previous)
    new: dict[str, tuple[str, dict[str, str]]] = {}  # folder -> (request, packages)
    for f in fetched:
        for folder, pkgs in f.folders.items():
            for pkg in pkgs:
                merge_tree(pkg.man / folder, staging / folder)
            packages = {**new.get(folder, ("", {}))[1], **{p.name: p.version for p in pkgs}}
            new[folder] = (f.request.code, packages)
    kept, dropped = [], []
    if previous.is_dir():
        for p in sorted(previous.iterdir()):
            if not p.is_dir() or p.name == ENGLISH_DIR or p.name.startswith((".", "_")) or p.name in new:
                continue
            if replace:
                dropped.append(p.name)
            else:
                merge_tree(p, staging / p.name)
                kept.append(p.name)
    folders = sorted([*new, *kept])
    names = {n for f in folders for n in index_pages(staging / f)}
    sources = [EnglishSource(p.name, p.man, True) for p in english_packages]
    if system_root is not None:
        sources.append(EnglishSource("system", system_root, False))
    sources.append(EnglishSource("previous", previous / ENGLISH_DIR, True))
    chosen = write_english(names, sources, staging / ENGLISH_DIR)
    english = set(chosen)
    languages = []
    for folder in folders:
        pages, links, matched = count_pages(staging / folder, english)
        if folder in new:
            request, packages = new[folder]
            languages.append(LanguagePages(folder, packages, pages, links, matched, fetched_at, request, True))
        else:
            rec = old.get("languages", {}).get(folder, {})
            languages.append(LanguagePages(folder, rec.get("packages", {}), pages, links, matched,
                                           rec.get("fetched_at", "unknown"), rec.get("request", folder)))
    by_source: dict[str, int] = {}
    for label in chosen.values():
        by_source[label] = by_source.get(label, 0) + 1
    english_rec = {"folder": ENGLISH_DIR, "packages": {p.name: p.version for p in english_packages},
                   "system_root": str(system_root) if system_root is not None else None,
                   "pages": len(chosen), "from": dict(sorted(by_source.items())), "fetched_at": fetched_at}
    write_json_atomic(staging / MANIFEST_NAME, {
        "source": "Debian translated man pages (apt-get download manpages-<lang>) and English pages of the same names",
        "updated_at": fetched_at,
        "languages": {lp.folder: lp.record() for lp in languages},
        "english": english_rec,
    })
    return FetchResult(Path(), Path(), languages, english_rec, dropped)
