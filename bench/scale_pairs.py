"""OPUS-sized parallel text from this machine's gettext catalogs, for ``bench.prepare_scale``.

    python -m bench.scale_pairs --pairs 1000000 --out /tmp/pairs-1M.tsv        # en<TAB>de, one pair a line

The German catalogs under /usr/share/locale hold ~100 k human translations of UI strings; a corpus
of tens of millions of pairs is made from them as a web-crawled corpus looks to ``prepare``:

- distinct pairs: pair ``k`` joins two translated strings ``(i, j)`` of the pool, English with
  English and German with German, ``(i, j)`` a bijection of ``k`` (no two ``k`` share a pair);
- ``--exact``: that share of lines repeats an earlier line exactly (the dedupe rejects them);
- ``--near``: that share repeats an earlier pair with other case and spacing, which the normalized
  pair key makes equal (the dedupe rejects them too);
- what the filters reject (too long, length ratio, copies ...) is as in the catalogs.

Deterministic for a given ``--seed``: the same file on every machine with the same catalogs.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from pathlib import Path

LOCALE = Path("/usr/share/locale")


def pool(lang: str = "de", root: Path = LOCALE) -> list[tuple[str, str]]:
    """The distinct single-line (English, translation) pairs of every ``lang`` catalog under ``root``."""
    from labse_core.gettext_catalog import CatalogError, catalog_pairs, read_catalog

    seen: set[tuple[str, str]] = set()
    for path in sorted((root / lang / "LC_MESSAGES").glob("*.mo")):
        try:
            catalog = read_catalog(path)
        except CatalogError:
            continue
        for p in catalog_pairs(catalog):
            src, tgt = " ".join(p.src_text.split()), " ".join(p.tgt_text.split())
            if src and tgt:
                seen.add((src, tgt))
    if not seen:
        raise SystemExit(f"no {lang} catalogs under {root / lang / 'LC_MESSAGES'}")
    return sorted(seen)


def _near(text: str, rng: random.Random) -> str:
    """Another spelling of ``text`` with the same normalized key: case changed, a space doubled."""
    text = text.upper() if rng.random() < 0.5 else text.lower()
    return text.replace(" ", "  ", 1) if " " in text else f" {text} "


def lines(n: int, base: list[tuple[str, str]], exact: float = 0.05, near: float = 0.05,
          seed: int = 0) -> Iterator[str]:
    """``n`` TSV lines (``src<TAB>tgt``): distinct joined pairs, ``exact``/``near`` shares of repeats."""
    rng = random.Random(seed)
    p = len(base)
    if n > p * p:
        raise SystemExit(f"--pairs {n}: more than the {p * p} distinct joins of {p} pool pairs")
    recent: list[tuple[str, str]] = []  # repeats are drawn from the last 100k distinct pairs
    k = 0
    for _ in range(n):
        r = rng.random()
        if recent and r < exact:
            src, tgt = recent[rng.randrange(len(recent))]
        elif recent and r < exact + near:
            src, tgt = recent[rng.randrange(len(recent))]
            src, tgt = _near(src, rng), _near(tgt, rng)
        else:
            i, q = k % p, k // p
            j = (q + i) % p  # (i, q) -> (i, j) is a bijection for q < p
            k += 1
            (s1, t1), (s2, t2) = base[i], base[j]
            src, tgt = f"{s1} {s2}", f"{t1} {t2}"
            if len(recent) < 100_000:
                recent.append((src, tgt))
            else:
                recent[k % 100_000] = (src, tgt)
        yield f"{src}\t{tgt}\n"


def write(path: Path, n: int, exact: float = 0.05, near: float = 0.05, seed: int = 0) -> Path:
    """Write the corpus of ``n`` pairs to ``path`` (atomically); reused when it is already there."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    base = pool()
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines(n, base, exact, near, seed))
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--exact", type=float, default=0.05, help="share of exact repeats")
    ap.add_argument("--near", type=float, default=0.05, help="share of repeats with other case and spacing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write(args.out, args.pairs, args.exact, args.near, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
