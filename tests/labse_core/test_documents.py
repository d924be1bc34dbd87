"""Folders of documents as sentences (labse_core.readers.documents) and mining within document pairs
(labse_core.mining.documents, miner.mine_inputs on two folders): every sentence keeps its document and
place; bad documents are counted rejects with a reason; candidates never cross document pairs, and their
scores equal a plain computation of the ratio margin with the neighbours taken over the whole side."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from labse_core.mining import documents as dm
from labse_core.mining.knn import MiningInputError
from labse_core.mining.miner import MineConfig, mine_inputs, open_input
from labse_core.readers.documents import DocumentError, pair_by_name, pair_from_file, read_documents

MAN_DE = """.TH LS 1
.SH BEZEICHNUNG
ls \\- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Listet Informationen über die Dateien auf. Die Einträge werden alphabetisch sortiert, z.\\~B. nach Namen.
.PP
Das ist die zweite Zeile.
.nf
ls -l /tmp
.fi
"""

HTML = """<html><head><title>T</title><link rel="canonical" href="https://example.org/de/a"><script>var x = 1;</script>
<style>p { color: red }</style></head><body><p>Erster Satz.  Zweiter
Satz hier.</p><ul><li>Ein Punkt</li><li>Noch ein Punkt</li></ul></body></html>"""


def _write(root: Path, rel: str, data: bytes | str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return p


def test_a_folder_of_mixed_documents_gives_sentences_with_their_document_and_place(tmp_path):
    root = tmp_path / "de"
    _write(root, "man1/ls.1.gz", gzip.compress(MAN_DE.encode()))
    _write(root, "web/a.html", HTML)
    _write(root, "notes.txt", "Erste Zeile\nweiter im Absatz.\n\nZweiter Absatz. Mit zwei Sätzen.\n")
    _write(root, "latin1.txt", "Größe der Datei ändern und prüfen, ob die Übergröße stimmt.".encode("latin-1"))
    _write(root, "empty.txt", b"  \n\n")
    _write(root, "binary.txt", b"abc\x00def")
    _write(root, "mixed.txt", "schön".encode() + b" und sch\xf6n")
    _write(root, "bad.html.gz", b"\x1f\x8bnot gzip at all")
    _write(root, ".hidden.txt", "Nicht gelesen.")
    (root / "man1" / "dir.1.gz").symlink_to("ls.1.gz")  # an alias of ls.1
    docs = read_documents(root, "de")

    assert docs.doc_ids == ["latin1.txt", "man1/ls.1", "notes.txt", "web/a.html"]
    by_doc = {d: [docs.sentences[i] for i in docs.rows_of(j)] for j, d in enumerate(docs.doc_ids)}
    assert by_doc["man1/ls.1"] == [
        "BEZEICHNUNG", "ls - Verzeichnisinhalte auflisten", "BESCHREIBUNG",
        "Listet Informationen über die Dateien auf.", "Die Einträge werden alphabetisch sortiert, z. B. nach Namen.",
        "Das ist die zweite Zeile."]  # the no-fill block (code) is not text
    assert by_doc["web/a.html"] == ["Erster Satz.", "Zweiter Satz hier.", "Ein Punkt", "Noch ein Punkt"]
    assert by_doc["notes.txt"] == ["Erste Zeile weiter im Absatz.", "Zweiter Absatz.", "Mit zwei Sätzen."]
    assert by_doc["latin1.txt"] == ["Größe der Datei ändern und prüfen, ob die Übergröße stimmt."]
    assert docs.urls[docs.doc_ids.index("web/a.html")] == "https://example.org/de/a"
    for j in range(len(docs.doc_ids)):
        assert docs.position[docs.rows_of(j)].tolist() == list(range(len(docs.rows_of(j))))
    assert dict(docs.rejects) == {"empty": 1, "binary": 1, "mixed-encodings": 1, "unreadable-gzip": 1, "alias-link": 1}
    assert "mixed.txt" in docs.examples["mixed-encodings"]


def test_a_folder_without_usable_documents_is_one_line(tmp_path):
    with pytest.raises(DocumentError, match="not a folder"):
        read_documents(tmp_path / "nope", "de")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocumentError, match="no documents in this folder"):
        read_documents(tmp_path / "empty", "de")
    _write(tmp_path / "bad", "a.txt", b"\x00\x01")
    _write(tmp_path / "bad", "b.txt", b"")
    with pytest.raises(DocumentError, match=r"no usable document \(2 files: 1 binary, 1 empty\)"):
        read_documents(tmp_path / "bad", "de")


def test_documents_pair_by_name_by_url_and_from_a_file(tmp_path):
    for lang, body in (("de", "Hallo Welt."), ("en", "Hello world.")):
        _write(tmp_path / lang, "man1/a.1", f".TH A 1\n.SH X\n{body}\n")
        _write(tmp_path / lang, f"only-{lang}.txt", body)
        _write(tmp_path / lang, f"page-{lang}.html",
               f'<html><head><link rel="canonical" href="https://e.org/p"></head><body><p>{body}</p></body></html>')
    _write(tmp_path / "de", "guide.de.html", "<p>Hallo Welt.</p>")
    _write(tmp_path / "en", "guide.en.html", "<p>Hello world.</p>")
    _write(tmp_path / "de", "notes_de.txt", "Hallo Welt.")
    _write(tmp_path / "en", "notes_en.txt", "Hello world.")
    _write(tmp_path / "en", "notes_fr.txt", "Bonjour le monde.")
    de, en = read_documents(tmp_path / "de", "de"), read_documents(tmp_path / "en", "en")
    named = {(de.doc_ids[a], en.doc_ids[b]) for a, b in pair_by_name(de, en)}
    assert named == {("man1/a.1", "man1/a.1"), ("page-de.html", "page-en.html"), ("guide.de.html", "guide.en.html"),
                     ("notes_de.txt", "notes_en.txt"), ("only-de.txt", "only-en.txt")}
    tsv = _write(tmp_path, "pairs.tsv", "# pairs\nonly-de.txt\tonly-en.txt\nhttps://e.org/p\tman1/a.1\n")
    listed = {(de.doc_ids[a], en.doc_ids[b]) for a, b in pair_from_file(de, en, tsv)}
    assert listed == {("only-de.txt", "only-en.txt"), ("page-de.html", "man1/a.1")}
    bad = _write(tmp_path, "bad.tsv", "only-de.txt\tonly-en.txt\nmissing.txt\tonly-en.txt\n")
    with pytest.raises(DocumentError, match=r"bad.tsv:2: no source document 'missing.txt'"):
        pair_from_file(de, en, bad)


def _plain_candidates(x, y, pairs_rows, mean_x, mean_y):
    """Reference: per document pair, every source's and every target's best partner by ratio margin over
    the whole paired document (k >= document size), then greedy one-to-one by score."""
    out = {}
    for ra, rb in pairs_rows:
        cos = x[ra] @ y[rb].T
        score = cos / ((mean_x[ra][:, None] + mean_y[rb][None, :]) / 2)
        cands = [(score[i, j], i, j) for i in range(len(ra)) for j in [int(np.argmax(score[i]))]]
        cands += [(score[i, j], i, j) for j in range(len(rb)) for i in [int(np.argmax(score[:, j]))]]
        used_s, used_t = set(), set()
        for sc, i, j in sorted(cands, key=lambda c: -c[0]):
            if i not in used_s and j not in used_t:
                used_s.add(i)
                used_t.add(j)
                out[(int(ra[i]), int(rb[j]))] = float(sc)
    return out


def test_mining_within_document_pairs_equals_a_plain_computation():
    rng = np.random.default_rng(0)
    x = dm.unit_rows(rng.normal(size=(30, 16)))
    y = dm.unit_rows(x[rng.permutation(30)] + 0.3 * rng.normal(size=(30, 16)))
    pairs_rows = [(np.arange(0, 10), np.arange(0, 12)), (np.arange(10, 30), np.arange(12, 30))]
    mean_x, mean_y = dm.global_means(x, y, 4, MineConfig().index_config())
    full_x = np.sort(x @ y.T, axis=1)[:, -4:].mean(axis=1)
    assert np.allclose(mean_x, full_x, atol=1e-5)  # the denominators come from the whole side
    got = dm.mine_document_pairs(x, y, [a for a, _ in pairs_rows], [b for _, b in pairs_rows], mean_x, mean_y, k=30)
    want = _plain_candidates(x, y, pairs_rows, mean_x, mean_y)
    assert dict(zip(zip(got.src.tolist(), got.tgt.tolist(), strict=True), got.score.tolist(), strict=True)) == pytest.approx(want)
    assert all((s < 10) == (t < 12) for s, t in zip(got.src.tolist(), got.tgt.tolist(), strict=True))
    assert np.all(np.diff(got.score) <= 0)


def _bag_embed(vocab: dict[str, int]):
    """A toy encoder that knows a bilingual word list: words of both languages map to shared dimensions."""
    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(set(vocab.values())) + 1), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().strip(".").split():
                out[i, vocab.get(w, len(out[0]) - 1)] += 1
        return out
    return embed


WORDS = {"der": 0, "the": 0, "hund": 1, "dog": 1, "schläft": 2, "sleeps": 2, "die": 3, "katze": 4, "cat": 4,
         "frisst": 5, "eats": 5, "ein": 6, "a": 6, "vogel": 7, "bird": 7, "singt": 8, "sings": 8, "laut": 9, "loudly": 9,
         "fisch": 10, "fish": 10, "schwimmt": 11, "swims": 11, "schnell": 12, "fast": 12, "heute": 13, "today": 13}


def test_two_folders_are_mined_within_pages_of_the_same_name(tmp_path):
    de = ["Der Hund schläft heute.", "Die Katze frisst schnell.", "Ein Vogel singt laut."]
    en = ["The dog sleeps today.", "The cat eats fast.", "A bird sings loudly."]
    _write(tmp_path / "de", "p1.txt", " ".join(de[:2]))
    _write(tmp_path / "en", "p1.txt", " ".join(en[:2]))
    _write(tmp_path / "de", "p2.txt", de[2] + " Der Fisch schwimmt schnell.")
    _write(tmp_path / "en", "p2.txt", en[2])
    _write(tmp_path / "en", "p3.txt", "The fish swims fast.")  # its translation is on another page
    cfg = MineConfig(threshold=0.0, filter=False)
    src, tgt = open_input(str(tmp_path / "de"), lang="de"), open_input(str(tmp_path / "en"), lang="en")
    res = mine_inputs(src, tgt, "de", "en", _bag_embed(WORDS), tmp_path / "work", cfg)
    got = {(r.src_doc, r.src_pos, r.tgt_doc, r.tgt_pos) for r in res.rows}
    assert got == {("p1.txt", 0, "p1.txt", 0), ("p1.txt", 1, "p1.txt", 1), ("p2.txt", 0, "p2.txt", 0)}
    assert res.documents["document_pairs"] == 2 and res.documents["tgt"]["rejected"] == {"unpaired": 1}
    across = mine_inputs(open_input(str(tmp_path / "de"), lang="de"), open_input(str(tmp_path / "en"), lang="en"),
                         "de", "en", _bag_embed(WORDS), tmp_path / "work2", cfg.model_copy(update={"pair_docs": "all"}))
    assert ("p2.txt", 1, "p3.txt", 0) in {(r.src_doc, r.src_pos, r.tgt_doc, r.tgt_pos) for r in across.rows}


def test_folders_without_a_common_document_or_any_pair_above_the_threshold_are_one_line(tmp_path):
    _write(tmp_path / "de", "a.txt", "Der Hund schläft heute.")
    _write(tmp_path / "en", "b.txt", "The dog sleeps today.")
    with pytest.raises(MiningInputError, match="no document pairs to mine within"):
        mine_inputs(open_input(str(tmp_path / "de"), lang="de"), open_input(str(tmp_path / "en"), lang="en"),
                    "de", "en", _bag_embed(WORDS), tmp_path / "w", MineConfig())
    shutil.move(tmp_path / "en" / "b.txt", tmp_path / "en" / "a.txt")
    with pytest.raises(MiningInputError, match="no de-en pair scored above the threshold 9.0000"):
        mine_inputs(open_input(str(tmp_path / "de"), lang="de"), open_input(str(tmp_path / "en"), lang="en"),
                    "de", "en", _bag_embed(WORDS), tmp_path / "w2", MineConfig(threshold=9.0))
