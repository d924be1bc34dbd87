"""A man page's groff source as a sequence of typed blocks (paragraphs, headings, tags), in pure Python.

Why not ``groff -Tutf8``: the rendered text has lost the structure this parser exists for (which macro
started each paragraph), and the evaluation sets built from man pages (``labse_core.evaluation.docs_bitext``)
must build the same on a machine without groff. What it handles is what the man pages of a Debian
system use (``man(7)`` as written by hand, by po4a, by Pod::Man and by DocBook XSL):

- comments (``.\\"``, ``\\"``), macro definitions (``.de`` ... ``..``), ``.ig`` blocks, tables
  (``.TS`` ... ``.TE``, one ``TS`` block without text: their cells are not sentences);
- conditionals as nroff evaluates them (``.if n``, ``.ie n`` / ``.el``, ``\\{`` ... ``\\}`` bodies); a
  condition on a register or string is taken as false;
- escapes: fonts, sizes, motions and widths removed; special characters (``\\(:u``, ``\\[u00FC]``,
  ``\\(em``), strings (``\\*(L"``, ``\\*(Aq``, and the page's own top-level ``.ds``);
- the man macros that start a block: ``.SH``/``.SS`` (a heading), ``.PP``/``.LP``/``.P``/``.sp``/Pod's
  ``.Sp``/a blank line (a paragraph), ``.TP``/``.TQ`` (a tag line, then its paragraph), ``.IP tag``
  (the tag, then its paragraph), ``.HP``, ``.RS``/``.RE`` (indent changes; po4a and DocBook start a new
  paragraph there), ``.nf``/``.fi``, ``.EX``/``.EE`` and Pod's ``.Vb``/``.Ve`` (a no-fill block, kind
  ``nf``: code, never a sentence), ``.SY``/``.YS``/``.OP`` (synopsis), font macros ``.B``, ``.BR``, ...
  (text of the current block), ``.UR``/``.UE``, ``.MT``/``.ME`` (the link text).

A page that uses mdoc (``.Dd``/``.Sh``) or is a link (``.so``) is not parsed: ``ManPageError`` says so in
one line, and the caller counts it. Everything else unknown is ignored (a request that formats, not text).
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MAX_PAGE_BYTES = 4 << 20
"""Larger (uncompressed) sources are refused: no man page is that long; a runaway gzip is."""


class ManPageError(ValueError):
    """A page that cannot be parsed (binary, empty, mdoc, a ``.so`` link, not UTF-8): one line."""


@dataclass(frozen=True)
class Block:
    """One unit of the page, as po4a translates it: its kind and its text (one line, fonts removed)."""

    kind: str
    """``SH``, ``SS`` (headings), ``P`` (paragraph), ``TP`` (a ``.TP`` tag line), ``IP`` (an ``.IP`` tag),
    ``nf`` (no-fill / code), ``SY`` (synopsis), ``TS`` (a table, no text)."""
    text: str
    indent: int = 0
    """``.RS`` depth where the block starts."""


# ---------------------------------------------------------------------------------------------------
# Escapes

_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327",
            "o": "\u030a", "v": "\u030c", "u": "\u0306", "=": "\u0304", '"': "\u030b"}
"""groff's composed-glyph names: ``\\(:u`` is u with a diaeresis, ``\\('e`` e with an acute, ..."""

SPECIALS: dict[str, str] = {
    "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "Bq": "\u201e",
    "bq": "\u201a", "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a", "em": "\u2014",
    "en": "\u2013", "hy": "-", "mi": "-", "\\-": "-", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae",
    "tm": "\u2122", "de": "\u00b0", "mu": "\u00d7", "di": "\u00f7", "->": "\u2192", "<-": "\u2190",
    "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "ti": "~", "ha": "^", "rs": "\\", "sl": "/",
    "ga": "`", "aa": "\u00b4", "Eu": "\u20ac", "eu": "\u20ac", "pl": "+", "eq": "=", "or": "|", "ba": "|",
    "sh": "#", "Do": "$", "at": "@", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8",
    "ra": "\u27e9", "fm": "\u2032", "sd": "\u2033", "dg": "\u2020", "sc": "\u00a7", "ps": "\u00b6",
    "12": "\u00bd", "14": "\u00bc", "34": "\u00be", "S1": "\u00b9", "S2": "\u00b2", "S3": "\u00b3",
    "ct": "\u00a2", "Po": "\u00a3", "Ye": "\u00a5", "ss": "\u00df", "r!": "\u00a1", "r?": "\u00bf",
    "OE": "\u0152", "oe": "\u0153", "AE": "\u00c6", "ae": "\u00e6", "/o": "\u00f8", "/O": "\u00d8",
    "Sd": "\u00f0", "-D": "\u00d0", "TP": "\u00de", "Tp": "\u00fe", ".i": "\u0131", "ul": "_",
    "pc": "\u00b7", "**": "*", "ap": "~", "an": "-", "rn": "-", "br": "|", "lh": "\u261c", "rh": "\u261e",
    "oa": "\u02da", "ah": "\u02c7", "ao": "\u02da", "ho": "\u02db", "a\"": "\u02dd", "a-": "\u00af",
    "a.": "\u02d9", "a^": "^", "ab": "\u02d8", "ac": "\u00b8", "ad": "\u00a8", "a~": "~",
}
"""Named glyphs (``groff_char(7)``) that man pages use; an unknown one becomes nothing (and is counted)."""

STRINGS: dict[str, str] = {
    'L"': "\u201c", 'R"': "\u201d", "C`": "", "C'": "", "--": "\u2014", "PI": "\u03c0", "Aq": "'",
    "R": "\u00ae", "Tm": "\u2122", "lq": "\u201c", "rq": "\u201d", "Lq": "\u201c", "Rq": "\u201d",
    "C+": "C++", "'": "\u00b4", "`": "`", "^": "^", ":": "\u00a8", "~": "~", ",": "\u00b8", "8": "\u00df",
}
"""Predefined strings (``\\*(L"`` ... as Pod::Man and DocBook XSL define them for nroff)."""


def special_char(name: str) -> str | None:
    """The glyph groff prints for ``\\(name`` / ``\\[name]``, or None when unknown."""
    if name in SPECIALS:
        return SPECIALS[name]
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    m = re.fullmatch(r"u([0-9A-Fa-f]{4,6})((?:_[0-9A-Fa-f]{4,6})*)", name)
    if m:  # \[u00E4], \[u0061_0308]
        cps = [m.group(1)] + [c for c in m.group(2).split("_") if c]
        try:
            return unicodedata.normalize("NFC", "".join(chr(int(c, 16)) for c in cps))
        except (ValueError, OverflowError):
            return None
    m = re.fullmatch(r"char(\d{1,3})", name)
    if m and int(m.group(1)) < 256:
        return chr(int(m.group(1)))
    return None


_ESCAPE = re.compile(
    r"""\\(?:
        (?P<font>f(?:\[[^\]]*\]|\(..|.))           # \fB \f(CW \f[B]
      | (?P<size>s(?:[+-]?\d|\([+-]?\d\d|\[[^\]]*\]|[+-]\(\d\d|'[^']*'))  # \s-1 \s0 \s(12 \s[+2]
      | (?P<arg>[hvwlLDbokXZRSxN]'[^']*')          # \h'..' \w'..' \v'..' motions, widths, device controls
      | (?P<reg>n[+-]?(?:\[[^\]]*\]|\(..|.))        # \n(.g registers
      | (?P<mark>[kzm](?:\[[^\]]*\]|\(..|.))        # \kx \z \m[...] colours
      | (?P<str>\*(?:\[[^\]]*\]|\(..|.))            # \*(L" \*[name] \*R
      | (?P<chr>\((?P<two>..)|\[(?P<long>[^\]]*)\])               # \(em \[u00FC]
      | (?P<single>.)                              # one-character escapes
    )""",
    re.VERBOSE | re.DOTALL,
)

_SINGLE = {"-": "-", "e": "\\", "\\": "\\", "&": "", "|": "", "^": "", "%": "", ":": "", ")": "", "c": "",
           " ": " ", "~": " ", "0": " ", "t": " ", ".": ".", "'": "\u00b4", "`": "`", "/": "", ",": "",
           "!": "", "p": "", "a": "", "E": "", "d": "", "u": "", "r": "", "{": "", "}": ""}


def _strip_name(token: str) -> str:
    """``[name]`` -> name, ``(xy`` -> xy, ``x`` -> x."""
    if token.startswith("["):
        return token[1:-1]
    if token.startswith("("):
        return token[1:]
    return token


def unescape(text: str, strings: dict[str, str] | None = None, unknown: list[str] | None = None) -> str:
    """The characters groff would print for one line of text in nroff mode (fonts and motions dropped).
    ``strings``: the page's ``.ds`` definitions (over ``STRINGS``); ``unknown`` collects the escapes
    this function had no glyph for (they print as nothing)."""
    table = STRINGS if strings is None else {**STRINGS, **strings}

    def sub(m: re.Match) -> str:
        if m.group("str"):
            name = _strip_name(m.group("str")[1:])
            if name in table:
                return table[name]
            if unknown is not None:
                unknown.append("\\*" + m.group("str")[1:])
            return ""
        if m.group("chr"):
            name = m.group("two") if m.group("two") is not None else m.group("long")
            got = special_char(name)
            if got is None:
                if unknown is not None:
                    unknown.append(m.group(0))
                return ""
            return got
        if m.group("single") is not None:
            return _SINGLE.get(m.group("single"), "")
        return ""  # fonts, sizes, motions, registers, marks

    return _ESCAPE.sub(sub, text)


# ---------------------------------------------------------------------------------------------------
# Requests and macros

_BREAK = {"PP", "LP", "P", "sp", "Sp", "HP", "PD"}
_NOFILL_ON = {"nf", "EX", "Vb"}
_NOFILL_OFF = {"fi", "EE", "Ve"}
_FONT_ALT = {"BR", "RB", "BI", "IB", "IR", "RI"}
_FONT_ONE = {"B", "I", "SM", "SB", "R"}
_IGNORED = {"TH", "IX", "ad", "na", "nh", "hy", "ne", "in", "ti", "ft", "ps", "ll", "ta", "br", "ns", "rs",
            "ce", "nr", "rr", "tr", "ss", "cs", "bp", "pl", "lt", "pc", "po", "vs", "ls", "mk", "rt", "fam",
            "UN", "PT", "DT", "AT", "UC", "hw", "lf", "cp", "do", "so", "mso", "ev", "ch", "wh", "it", "em",
            "ig", "tm", "ab", "ec", "eo", "cc", "c2", "ds", "as", "als", "rn", "rm", "de", "am", "el", "ie",
            "if", "while", "break", "continue", "nop", "ME", "UE", "YS", "RE", "RS", "TS", "TE", "T&", "TQ"}

_SPLIT_ARGS = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def split_args(line: str) -> list[str]:
    """A request's arguments as groff splits them: by spaces, ``"..."`` quoting, ``""`` inside quotes."""
    out = []
    for m in _SPLIT_ARGS.finditer(line):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
    return out


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x2E80 <= o <= 0x9FFF) or (0xAC00 <= o <= 0xD7AF) or (0xF900 <= o <= 0xFAFF) or (0xFF00 <= o <= 0xFFEF) \
        or (0x3000 <= o <= 0x303F)


def join_lines(parts: list[str]) -> str:
    """Filled text lines as one line: joined by a space, except between two CJK characters (no space
    there in Chinese or Japanese text), and with runs of spaces collapsed."""
    out = ""
    for p in parts:
        p = p.strip()
        if not p:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(p[0])):
            out += " "
        out += p
    return re.sub(r"\s+", " ", out).strip()


def _condition(cond: str) -> tuple[bool, str]:
    """(value, rest of the line) of a ``.if``/``.ie`` condition as nroff evaluates it; a condition on a
    register, a string comparison or an expression is taken as false (those are formatting set-ups)."""
    cond = cond.lstrip()
    neg = cond.startswith("!")
    if neg:
        cond = cond[1:]
    m = re.match(r"([ntoevh])(?=\s|\\\{|$)", cond)
    if m:
        value = m.group(1) in ("n", "o")  # nroff, odd page
        rest = cond[m.end():]
    else:
        # skip one token: \n(.g, (expr), 'a'b', \*(..
        m2 = re.match(r"(\([^)]*\)|'[^']*'[^']*'|\S+)", cond)
        rest = cond[m2.end():] if m2 else ""
        value = False
    return (not value) if neg else value, rest.lstrip()


@dataclass
class ParseStats:
    unknown_escapes: int = 0
    lines: int = 0


class _Parser:
    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.kind = "P"
        self.parts: list[str] = []
        self.nofill = False
        self.indent = 0
        self.pending: str | None = None  # .TP / .SH / .SS without arguments: the next text line is the tag / heading
        self.strings: dict[str, str] = {}
        self.unknown: list[str] = []

    # text accumulation
    def flush(self, next_kind: str = "P") -> None:
        text = join_lines(self.parts) if self.kind != "nf" else "\n".join(p.rstrip() for p in self.parts).strip("\n")
        if text.strip():
            self.blocks.append(Block(self.kind, text, self.indent))
        self.parts = []
        self.kind = next_kind

    def text(self, s: str) -> None:
        s = unescape(s, self.strings, self.unknown)
        if self.pending is not None:
            kind, self.pending = self.pending, None
            self.flush(kind)
            self.parts.append(s)
            self.flush("P")
            return
        self.parts.append(s)

    def emit(self, kind: str, text: str) -> None:
        self.flush()
        if text.strip():
            self.blocks.append(Block(kind, join_lines([text]), self.indent))

    def request(self, name: str, rest: str) -> None:
        args = split_args(rest)
        if name in ("SH", "SS"):
            self.flush()
            if args:
                self.emit(name, unescape(" ".join(args), self.strings, self.unknown))
            else:
                self.pending = name  # the heading is the next input line
        elif name in _BREAK:
            self.flush()
        elif name in ("TP", "TQ"):
            self.flush()
            self.pending = "TP"
        elif name == "IP":
            self.flush()
            if args and args[0]:
                tag = unescape(args[0], self.strings, self.unknown)
                if any(c.isalnum() for c in tag):
                    self.emit("IP", tag)
        elif name in ("RS", "RE"):
            self.flush()
            self.indent = max(0, self.indent + (1 if name == "RS" else -1))
        elif name in _NOFILL_ON:
            self.flush("nf")
            self.nofill = True
        elif name in _NOFILL_OFF:
            if self.nofill:
                self.flush()
            self.nofill = False
        elif name in ("SY", "OP"):
            if name == "SY":
                self.flush("SY")
            self.parts.append(unescape((" ".join(args) if name == "SY" else "[" + " ".join(args) + "]"),
                                       self.strings, self.unknown))
        elif name == "YS":
            self.flush()
        elif name in _FONT_ALT:
            self.text("".join(args))
        elif name in _FONT_ONE:
            if args:  # without arguments the font applies to the next line: plain text here
                self.text(" ".join(args))
        elif name in ("UR", "MT"):
            pass  # the address; the link text follows as text lines
        elif name in ("UE", "ME"):
            if args:  # trailing punctuation
                if self.parts:
                    self.parts[-1] += unescape(args[0], self.strings, self.unknown)
        # everything else formats and prints nothing


def _logical_lines(src: str) -> list[str]:
    """Lines with ``\\``-newline continuations joined and comments removed (a line that was only a
    comment disappears; ``.\\"`` and ``'\\"`` are comment lines)."""
    out = []
    buf = ""
    for raw in src.split("\n"):
        line = raw.rstrip("\r")
        # a comment starts at an unescaped \" (or \#, which also eats the newline)
        m = re.search(r'(?<!\\)(?:\\\\)*\\["#]', line)
        if m:
            eat_newline = line[m.end() - 1] == "#"
            line = line[: m.end() - 2]
            if line.strip() in (".", "'"):
                if buf:
                    continue
                continue
            if eat_newline:
                buf += line
                continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            buf += line[:-1]
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


def decode_page(data: bytes, origin: str = "page") -> str:
    """A man page's bytes (gzip'd or plain) as text; ``ManPageError`` for an empty, binary, oversized or
    non-UTF-8 page."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=__import__("io").BytesIO(data)) as fh:
                data = fh.read(MAX_PAGE_BYTES + 1)
        except (OSError, EOFError) as e:
            raise ManPageError(f"{origin}: not a readable gzip file ({e})") from None
    if len(data) > MAX_PAGE_BYTES:
        raise ManPageError(f"{origin}: larger than {MAX_PAGE_BYTES >> 20} MiB, not a man page")
    if not data.strip():
        raise ManPageError(f"{origin}: empty")
    if b"\x00" in data:
        raise ManPageError(f"{origin}: binary (NUL bytes), not a man page")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManPageError(f"{origin}: not UTF-8 (byte {e.start})") from None


def read_page(path: str | Path) -> str:
    """``decode_page`` of a file."""
    p = Path(path)
    with open(p, "rb") as fh:
        data = fh.read(MAX_PAGE_BYTES + 1)
    return decode_page(data, str(p))


def parse_man(src: str, origin: str = "page") -> list[Block]:
    """The blocks of a man(7) page's source, in order (module docstring). ``ManPageError`` for a page
    that is a ``.so`` link, uses mdoc, or has no text."""
    p = _Parser()
    lines = _logical_lines(src)
    i = 0
    skip_until: str | None = None  # ".." ends .de/.ig; ".TE" ends a table
    cond_stack: list[bool] = []  # \{ ... \} bodies: taken or not
    last_ie = True
    saw_text = False
    while i < len(lines):
        line = lines[i]
        i += 1
        if skip_until is not None:
            if line.strip().startswith(skip_until):
                skip_until = None
            continue
        # inside a skipped \{ body: only track the braces
        if cond_stack and not all(cond_stack):
            opens, closes = line.count("\\{"), line.count("\\}")
            for _ in range(opens):
                cond_stack.append(False)
            for _ in range(closes):
                if cond_stack:
                    cond_stack.pop()
            continue
        if cond_stack and "\\}" in line:
            line = line.replace("\\}", "")
            cond_stack.pop()
            if not line.strip() or line.strip() in (".", "'"):
                continue
        if line[:1] in (".", "'"):  # a request, in fill and no-fill mode alike
            body = line[1:].lstrip()
            m = re.match(r"(\S+)\s*(.*)", body)
            if not m:
                continue  # a lone dot: nothing
            name, rest = m.group(1), m.group(2)
            if name.startswith("\\\""):
                continue
            if name in ("if", "ie", "el"):
                if name == "el":
                    value, rest = (not last_ie), rest
                else:
                    value, rest = _condition(rest)
                    if name == "ie":
                        last_ie = value
                rest = rest.lstrip()
                if rest.startswith("\\{"):
                    rest = rest[2:]
                    cond_stack.append(value)
                    if "\\}" in rest:
                        rest = rest.replace("\\}", "")
                        cond_stack.pop()
                    if value and rest.strip():
                        lines.insert(i, rest)
                    elif not value:
                        # the rest of the line belongs to the skipped body; closed above if it closed
                        pass
                    continue
                if value and rest.strip():
                    lines.insert(i, rest)
                continue
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name == "TS":
                p.flush()
                p.blocks.append(Block("TS", "", p.indent))
                skip_until = ".TE"
                continue
            if name == "so":
                raise ManPageError(f"{origin}: a link to {rest.strip() or '?'} (.so), not a page")
            if name in ("Dd", "Sh", "Nm", "Dt"):
                raise ManPageError(f"{origin}: an mdoc page (.{name}), which this parser does not read")
            if name == "ds" and not cond_stack:
                parts = rest.split(None, 1)
                if parts:
                    val = parts[1] if len(parts) > 1 else ""
                    p.strings[parts[0]] = unescape(val[1:] if val.startswith('"') else val, p.strings)
                continue
            p.request(name, rest)
            continue
        if not line.strip() and not p.nofill:
            p.flush()  # a blank line breaks the paragraph
            continue
        saw_text = True
        if p.nofill:
            p.parts.append(unescape(line, p.strings, p.unknown))
        else:
            p.text(line)
    p.flush()
    if not saw_text or not any(b.text for b in p.blocks):
        raise ManPageError(f"{origin}: no text")
    return p.blocks


def page_text(src: str) -> str:
    """The page's blocks as plain text, one per line (for eyeballing a parse)."""
    return "\n".join(f"[{b.kind}{'>' * b.indent}] {b.text}" for b in parse_man(src))
