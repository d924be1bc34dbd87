"""labse_core.vocab: language-balanced sampling, sentencepiece training, and HF-export parity.

The parity tests train a real unigram model on this machine's gettext catalogs (26 locales, 16+
scripts, plus the English msgids) and check that the exported folder, loaded with
``AutoTokenizer``, gives exactly sentencepiece's ids on held-out catalog strings, Tatoeba lines
(evaluation data: only ever encoded here, never trained on) and whitespace/special-string fuzz.
"""

from __future__ import annotations

import json
import os
import random
import unicodedata
import zlib
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

import pytest
import sentencepiece as spm

from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.vocab import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    VocabConfig,
    export_hf_tokenizer,
    language_sampling_probs,
    load_tokenizer,
    sample_quota,
    sample_sentences,
    train_sentencepiece,
)

LOCALE_ROOT = Path("/usr/share/locale")
TATOEBA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tatoeba" / "v1"
LOCALES = (
    "de fr es pl tr vi ru uk el he ar fa hi bn ta th ja zh_CN zh_TW ko ka hy am km my si".split()
)  # Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Bengali, Tamil, Thai, CJK, Hangul,
#    Georgian, Armenian, Ethiopic, Khmer, Myanmar, Sinhala
DOMAINS = (
    "glib20",
    "gtk20",
    "gtk20-properties",
    "gdk-pixbuf",
    "at-spi2-core",
    "Linux-PAM",
    "coreutils",
    "iso_3166",
)
VOCAB_SIZE = 6000
TRAIN_SENTENCES = 30_000

# Whitespace and edge cases sentencepiece has rules for; every one must come out identical.
EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t\n",
    " leading",
    "trailing ",
    "  both   sides  ",
    "multiple    inner     spaces",
    "tab\tand\nnewline\r\nend",
    "nbsp\u00a0ideographic\u3000em\u2003space",
    "zero\u200bwidth\u200cjoiner\u200dhere",
    "\u00a0\u0301 isolated combining mark after NBSP",
    "emoji 😀👍🏽🇩🇪 and ZWJ family 👨\u200d👩\u200d👧",
    "mixed Ελληνικά русский עברית العربية हिन्दी 日本語 한국어 ქართული",
    "digits 0123456789 1,234.56 +49 (0)30 12345-678 ½ ² ①",
    "punctuation !?¿¡…—–«»„“”‘’ (){}[]<>/\\|@#$%^&*_~`",
    "fullwidth ＡＢＣ１２３ and ligature ﬁ",
    "literal specials [CLS] [SEP] [MASK] [PAD] [UNK] <0x41> <0xFF>",
    "\u2581 literal metaspace \u2581\u2581 and trailing \u2581",
    "ㅋㅋㅋ ㅏ compatibility jamo",
]


def _script(ch: str) -> str:
    return unicodedata.name(ch, "UNKNOWN").split()[0]


def _catalog_strings(locale: str, domain: str) -> list[str]:
    path = LOCALE_ROOT / locale / "LC_MESSAGES" / f"{domain}.mo"
    return [r.tgt_text for r in catalog_pairs(read_mo(path))] if path.exists() else []


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict[str, list[str]]]:
    """{"train"|"heldout": {lang: strings}}: a string is held out by its hash, so the same text in
    two locales (or in the English msgids) is never on both sides."""
    by_lang: dict[str, set[str]] = {}
    for loc in LOCALES:
        by_lang[loc] = {s for d in DOMAINS for s in _catalog_strings(loc, d)}
    en = LOCALE_ROOT / "de" / "LC_MESSAGES"
    by_lang["en"] = {
        r.src_text
        for d in DOMAINS
        if (en / f"{d}.mo").exists()
        for r in catalog_pairs(read_mo(en / f"{d}.mo"))
    }
    by_lang = {k: v for k, v in by_lang.items() if v}
    if len(by_lang) < 20:
        pytest.skip(
            f"only {len(by_lang)} gettext locales under {LOCALE_ROOT}; need 20 for a multilingual vocab"
        )
    split: dict[str, dict[str, list[str]]] = {"train": {}, "heldout": {}}
    for lang, strings in by_lang.items():
        for part in split.values():
            part[lang] = []
        for s in sorted(strings):
            split["heldout" if zlib.crc32(s.encode()) % 10 == 0 else "train"][lang].append(s)
    return split


@pytest.fixture(scope="module")
def heldout(corpus) -> list[str]:
    tatoeba = []
    for f in sorted(TATOEBA.glob("tatoeba.*-eng.*")):
        if not f.name.endswith(".eng"):
            tatoeba += f.read_text(encoding="utf-8").splitlines()[:4]
    return [s for lang in sorted(corpus["heldout"]) for s in corpus["heldout"][lang]] + tatoeba + EDGE_CASES


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("vocab")
    sentences = sample_sentences(corpus["train"], TRAIN_SENTENCES, alpha=0.3, seed=0)
    model = train_sentencepiece(
        sentences, out, VocabConfig(vocab_size=VOCAB_SIZE, sample_size=TRAIN_SENTENCES)
    )
    return model, export_hf_tokenizer(model, out / "hf")


@pytest.fixture(scope="module")
def sp(trained) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(trained[0]))


@pytest.fixture(scope="module")
def tok(trained):
    return load_tokenizer(trained[1])


def _mismatches(sp, tok, texts: list[str]) -> list[str]:
    want = [[CLS_ID, *ids, SEP_ID] for ids in sp.encode(texts)]
    got = tok(texts)["input_ids"]
    return [
        f"{t!r}: spm {[sp.id_to_piece(i) for i in w]} != hf {tok.convert_ids_to_tokens(g)}"
        for t, w, g in zip(texts, want, got, strict=True)
        if w != g
    ]


# ---------------------------------------------------------------------------------------------------
# Language sampling


def test_probs_alpha_one_is_proportional_and_zero_is_uniform():
    counts = {"en": 600, "de": 300, "sw": 100, "xx": 0}
    assert language_sampling_probs(counts, 1.0) == pytest.approx({"en": 0.6, "de": 0.3, "sw": 0.1, "xx": 0.0})
    assert language_sampling_probs(counts, 0.0) == pytest.approx(
        {"en": 1 / 3, "de": 1 / 3, "sw": 1 / 3, "xx": 0.0}
    )


def test_probs_follow_the_power_law_and_sum_to_one():
    counts = {"en": 30_000_000, "de": 2_000_000, "yo": 3_000, "am": 1}
    p = language_sampling_probs(counts, 0.3)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p["en"] / p["yo"] == pytest.approx((30_000_000 / 3_000) ** 0.3)
    assert p["en"] > p["de"] > p["yo"] > p["am"] > 0
    # Smaller alpha moves mass to the low-resource languages.
    assert language_sampling_probs(counts, 0.1)["am"] > p["am"] > language_sampling_probs(counts, 0.7)["am"]


@pytest.mark.parametrize("counts", [{}, {"a": 0, "b": 0}])
def test_probs_of_no_data_is_an_error(counts):
    with pytest.raises(ValueError, match="no language"):
        language_sampling_probs(counts, 0.3)


def test_probs_and_quota_reject_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        language_sampling_probs({"a": 1}, -0.1)
    with pytest.raises(ValueError, match="negative"):
        sample_quota({"a": -1}, 10, 0.3)
    with pytest.raises(ValueError, match="total"):
        sample_quota({"a": 1}, -1, 0.3)


def test_quota_examples():
    counts = {"a": 600, "b": 300, "c": 100}
    assert sample_quota(counts, 100, 1.0) == {"a": 60, "b": 30, "c": 10}
    assert sample_quota(counts, 300, 0.0) == {"a": 100, "b": 100, "c": 100}
    # c has only 100: the other 300 are shared equally (alpha 0) by the languages that still have text.
    assert sample_quota(counts, 400, 0.0) == {"a": 150, "b": 150, "c": 100}
    assert sample_quota(counts, 10_000, 0.3) == counts
    assert sample_quota({"a": 5, "b": 0}, 3, 0.3) == {"a": 3, "b": 0}
    assert sample_quota({"a": 0}, 3, 0.3) == {"a": 0}
    assert sample_quota({}, 3, 0.3) == {}


def test_quota_sums_exactly_never_exceeds_and_is_monotone():
    rng = random.Random(0)
    for _ in range(500):
        counts = {
            f"l{i}": rng.choice([0, 1, 2, 7, rng.randint(0, 50), rng.randint(0, 10**6)])
            for i in range(rng.randint(1, 12))
        }
        total = rng.choice([0, 1, rng.randint(0, 100), rng.randint(0, 2 * sum(counts.values()) + 1)])
        alpha = rng.choice([0.0, 0.3, 0.5, 1.0, rng.random()])
        q = sample_quota(counts, total, alpha)
        assert set(q) == set(counts)
        assert sum(q.values()) == min(total, sum(counts.values())), (counts, total, alpha)
        assert all(0 <= q[k] <= counts[k] for k in counts), (counts, total, alpha, q)
        if alpha > 0:  # more data never means fewer sentences
            for a in counts:
                for b in counts:
                    if counts[a] > counts[b]:
                        assert q[a] >= q[b], (counts, total, alpha, q)


def test_quota_shares_the_budget_by_the_power_law():
    counts = {"en": 1_000_000, "de": 100_000, "sw": 1_000}
    q = sample_quota(counts, 10_000, 0.3)
    p = language_sampling_probs(counts, 0.3)
    for lang in counts:  # nobody is capped here, so quota = round(total * p) up to one sentence
        assert abs(q[lang] - 10_000 * p[lang]) < 1


def test_sample_sentences_respects_quota_and_seed():
    data = {
        "en": [f"en {i}" for i in range(500)],
        "de": [f"de {i}" for i in range(50)],
        "am": ["am 0", "am 1"],
    }
    out = sample_sentences(data, 100, alpha=0.3, seed=1)
    quota = sample_quota({k: len(v) for k, v in data.items()}, 100, 0.3)
    assert len(out) == 100 and len(set(out)) == 100
    for lang, n in quota.items():
        assert sum(s.startswith(lang + " ") for s in out) == n
    assert out == sample_sentences(data, 100, alpha=0.3, seed=1)
    assert out != sample_sentences(data, 100, alpha=0.3, seed=2)


# ---------------------------------------------------------------------------------------------------
# Training: configuration and errors (tiny data, fast)


def test_config_validation():
    assert VocabConfig().alpha == 0.3 and VocabConfig().byte_fallback
    with pytest.raises(ValueError, match="vocab_size"):
        VocabConfig(vocab_size=100)
    with pytest.raises(ValueError, match="character_coverage"):
        VocabConfig(character_coverage=0.0)
    with pytest.raises(ValueError, match="alpha"):
        VocabConfig(alpha=-1)


@pytest.mark.parametrize("sentences", [[], ["", "   ", "\n"]])
def test_empty_input_is_a_clear_error(sentences, tmp_path):
    with pytest.raises(ValueError, match="no non-empty sentence"):
        train_sentencepiece(sentences, tmp_path, VocabConfig())
    assert list(tmp_path.iterdir()) == []  # no half-written model, no temp folder left


def test_vocab_too_large_for_the_data_says_what_to_change(tmp_path):
    with pytest.raises(
        ValueError, match=r"vocab_size=8000 .*lower VocabConfig.vocab_size or train on more text"
    ):
        train_sentencepiece(["hello world", "привет мир", "γειά σου κόσμε"] * 20, tmp_path, VocabConfig())
    assert not (tmp_path / "spm.model").exists()


def test_vocab_too_small_for_the_characters_says_what_to_change(tmp_path):
    text = ["".join(chr(0x4E00 + i + j) for j in range(20)) for i in range(0, 400, 20)]  # 400 CJK chars
    with pytest.raises(
        ValueError, match=r"vocab_size=300 is too small.*raise VocabConfig.vocab_size or lower"
    ):
        train_sentencepiece(text, tmp_path, VocabConfig(vocab_size=300, character_coverage=1.0))


def test_training_is_reproducible_to_the_byte(tmp_path):
    text = [f"sentence {i} with words {i * 7 % 13} and more {i % 5}" for i in range(300)]
    cfg = VocabConfig(vocab_size=320)
    a = train_sentencepiece(text, tmp_path / "a", cfg).read_bytes()
    b = train_sentencepiece(text, tmp_path / "b", cfg).read_bytes()
    assert a == b


# ---------------------------------------------------------------------------------------------------
# The trained multilingual model and its HF export


def test_training_data_is_multilingual(corpus, heldout):
    train_scripts = {
        _script(c) for strings in corpus["train"].values() for s in strings for c in s if c.isalpha()
    }
    for script in (
        "LATIN",
        "CYRILLIC",
        "GREEK",
        "HEBREW",
        "ARABIC",
        "DEVANAGARI",
        "BENGALI",
        "TAMIL",
        "THAI",
        "CJK",
        "HANGUL",
        "GEORGIAN",
        "ARMENIAN",
        "ETHIOPIC",
        "KHMER",
        "MYANMAR",
        "SINHALA",
    ):
        assert script in train_scripts
    assert len(heldout) > 3000


def test_special_token_layout(sp, tok, trained):
    assert [sp.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, -1, -1)
    assert sp.piece_to_id("<0x00>") == 5 and sp.piece_to_id("<0xFF>") == 260
    assert sp.get_piece_size() == len(tok) == VOCAB_SIZE
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == SPECIAL_TOKENS
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        PAD_ID,
        UNK_ID,
        CLS_ID,
        SEP_ID,
        MASK_ID,
    )
    assert tok.model_max_length == 512
    hf_dir = trained[1]
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in hf_dir.iterdir()
    }
    assert json.loads((hf_dir / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"
    assert not [p for p in hf_dir.parent.iterdir() if p.name.startswith(".")]  # temp folders cleaned up


def test_hf_ids_equal_sentencepiece_ids_on_heldout_text(sp, tok, heldout):
    bad = _mismatches(sp, tok, heldout)
    assert not bad, f"{len(bad)} of {len(heldout)} differ, e.g.\n" + "\n".join(bad[:10])


def test_hf_ids_equal_sentencepiece_ids_on_whitespace_and_special_fuzz(sp, tok):
    """Random strings of the characters sentencepiece treats specially: every Unicode space its
    charsmap knows, zero-width characters, combining marks right after spaces, literal "[CLS]" and
    "<0x41>" (text, not specials), emoji, digits, several scripts. No compatibility characters
    before combining marks: see test_known_difference_in_short_clusters."""
    pool = list(
        " \t\n\r\u00a0\u1680\u2002\u2003\u2009\u200a\u200b\u200c\u200d\u200e\u2028\u2029\u202f\u205f\u3000\ufeff"
        "\u2581\u0085\u180e\u2060\x00\x7f\u0301\u0323\u064e\u0651.,-!?0123456789aZéжΩשعक日本가ก😀👍🏽"
    )
    pool += ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "<0x41>", "<0xF0>", "hello", "мир", "שלום", "東京"]
    rng = random.Random(0)
    # NFC, as real text is: decomposed letters go through another tokenizers code path (xfail below).
    texts = [
        unicodedata.normalize("NFC", "".join(rng.choice(pool) for _ in range(rng.randint(0, 12))))
        for _ in range(3000)
    ]
    bad = _mismatches(sp, tok, texts)
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g.\n" + "\n".join(bad[:10])


@pytest.mark.xfail(
    strict=True, reason="tokenizers' Precompiled normalizer drops the rest of a short grapheme"
)
@pytest.mark.parametrize("text", ["ﬁ\u0301", "ㅋ\u0323", "Ａ\u0301", "lu\u031bo\u031b\u0323c"])
def test_known_difference_in_short_clusters(sp, tok, text):
    """A grapheme cluster under 6 bytes whose first character(s) the charsmap rewrites (ligature,
    full-width, compatibility jamo, NFD "o + horn" before a dot below): HF's Precompiled normalizer
    replaces the whole cluster by that first rule and loses the rest; sentencepiece keeps it. Real
    text (NFC) passes above; NFKC-normalised input never has such clusters. Strict xfail: if a
    tokenizers release fixes this, the caveat in labse_core/vocab.py can go."""
    assert not _mismatches(sp, tok, [text])


def test_literal_special_strings_are_text(sp, tok):
    text = "Paris is the [MASK] of France [SEP] <0x41>"
    ids = tok(text)["input_ids"]
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID
    assert not set(ids[1:-1]) & set(SPECIAL_TOKENS.values())
    assert ids[1:-1] == sp.encode(text)


def test_decode_matches_sentencepiece_and_round_trips_normal_text(sp, tok, heldout):
    ids = sp.encode(heldout)
    hf = tok.batch_decode([[CLS_ID, *x, SEP_ID] for x in ids], skip_special_tokens=True)
    assert hf == sp.decode(ids)
    # "Normal" text: already in the form sentencepiece normalizes to (NFKC, single inner spaces).
    normal = [t for t in heldout if t and t == " ".join(t.split()) and unicodedata.normalize("NFKC", t) == t]
    assert len(normal) > 0.5 * len(heldout)
    back = tok.batch_decode(tok(normal)["input_ids"], skip_special_tokens=True)
    # nmt_nfkc also maps a few format characters (ZWNJ, LRM, BOM) to spaces; those cannot come back.
    lossless = [(t, b) for t, b in zip(normal, back, strict=True) if sp.decode(sp.encode(t)) == t]
    assert len(lossless) > 0.95 * len(normal)
    assert [b for _, b in lossless] == [t for t, _ in lossless]


@pytest.mark.parametrize("rare", ["🦜", "𠀋", "\U0001fae0", "ꙮ"])
def test_byte_fallback_keeps_rare_characters(sp, tok, rare):
    assert sp.piece_to_id(rare) == UNK_ID  # not a piece of its own
    text = f"a {rare} b"
    ids = tok(text)["input_ids"]
    assert UNK_ID not in ids
    assert ids[1:-1] == sp.encode(text)
    assert len([i for i in ids if 5 <= i <= 260]) == len(rare.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_pair_encoding_and_batching(sp, tok):
    a, b = "Das ist ein Haus.", "This is a house."
    enc = tok(a, b)
    ia, ib = sp.encode(a), sp.encode(b)
    assert enc["input_ids"] == [CLS_ID, *ia, SEP_ID, *ib, SEP_ID]
    assert enc["token_type_ids"] == [0] * (len(ia) + 2) + [1] * (len(ib) + 1)
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    batch = tok(["短い", "a much longer sentence than the other one"], padding=True)
    assert batch["input_ids"][0][-1] == PAD_ID and batch["attention_mask"][0][-1] == 0
    long = tok("word " * 2000, truncation=True)["input_ids"]
    assert len(long) == 512 and long[0] == CLS_ID and long[-1] == SEP_ID
