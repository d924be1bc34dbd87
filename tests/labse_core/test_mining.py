"""The miner against a brute-force margin computation (full similarity matrix, LASER-style), the edge cases
LASER's script crashes on, and a toy encoder whose right answer is known on real gettext sentences."""

from __future__ import annotations

import numpy as np
import pytest

from labse_core.mining.knn import IndexConfig, MiningInputError, knn
from labse_core.mining.margin import MODES, select_pairs
from labse_core.mining.miner import MineConfig, MiningInput, mine_embeddings, mine_inputs, open_input
from labse_core.text.filters import check_pairs
from labse_core.text.normalize import key_text, normalize_text

# ---------------------------------------------------------------------------------------------------
# The reference: LASER's mine_bitexts.py logic on a full float64 similarity matrix, plain Python loops


def brute_force(x, y, k=4, mode="max", kind="ratio", threshold=-np.inf):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    S = x @ y.T  # (n, m)
    n, m = S.shape
    kx, ky = min(k, m), min(k, n)
    nn_x = [sorted(range(m), key=lambda j, i=i: -S[i, j])[:kx] for i in range(n)]
    nn_y = [sorted(range(n), key=lambda i, j=j: -S[i, j])[:ky] for j in range(m)]
    mean_x = [sum(S[i, j] for j in nn_x[i]) / kx for i in range(n)]
    mean_y = [sum(S[i, j] for i in nn_y[j]) / ky for j in range(m)]

    def score(i, j):
        a, b = S[i, j], (mean_x[i] + mean_y[j]) / 2
        return {"ratio": a / b, "distance": a - b, "absolute": a}[kind]

    fwd = [max(nn_x[i], key=lambda j, i=i: score(i, j)) for i in range(n)]
    bwd = [max(nn_y[j], key=lambda i, j=j: score(i, j)) for j in range(m)]
    if mode == "forward":
        cand = [(i, fwd[i]) for i in range(n)]
    elif mode == "backward":
        cand = [(bwd[j], j) for j in range(m)]
    elif mode == "intersection":
        cand = [(i, fwd[i]) for i in range(n) if bwd[fwd[i]] == i]
    else:
        both = [(score(i, fwd[i]), i, fwd[i]) for i in range(n)] + [(score(bwd[j], j), bwd[j], j) for j in range(m)]
        both.sort(key=lambda t: -t[0])
        used_s, used_t, cand = set(), set(), []
        for _, i, j in both:
            if i not in used_s and j not in used_t:
                used_s.add(i)
                used_t.add(j)
                cand.append((i, j))
    return {(i, j): score(i, j) for i, j in cand if score(i, j) >= threshold}


def planted(n_pairs, n_src_extra, n_tgt_extra, d=32, noise=0.3, seed=0):
    """Unit vectors; source row i < n_pairs translates target row perm[i]; the rest are distractors."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_pairs, d))
    x = np.concatenate([base + noise * rng.normal(size=base.shape), rng.normal(size=(n_src_extra, d))])
    perm = rng.permutation(n_pairs + n_tgt_extra)
    y = np.empty((n_pairs + n_tgt_extra, d))
    y[perm[:n_pairs]] = base + noise * rng.normal(size=base.shape)
    y[perm[n_pairs:]] = rng.normal(size=(n_tgt_extra, d))
    gold = {(i, int(perm[i])) for i in range(n_pairs)}
    return x.astype(np.float32), y.astype(np.float32), gold


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["ratio", "distance", "absolute"])
def test_flat_mining_equals_brute_force(mode, kind):
    x, y, _ = planted(150, 60, 90, noise=0.8)  # noisy: many wrong candidates, so the modes differ
    got = mine_embeddings(x, y, MineConfig(mode=mode, margin=kind, index="flat"), threshold=-np.inf)
    want = brute_force(x, y, mode=mode, kind=kind)
    assert got.as_set() == set(want)
    for i, j, s in zip(got.src.tolist(), got.tgt.tolist(), got.score.tolist(), strict=True):
        assert s == pytest.approx(want[(i, j)], rel=1e-5, abs=1e-6)
    assert np.all(np.diff(got.score) <= 0)  # best first


def test_threshold_and_planted_pairs_found():
    x, y, gold = planted(200, 300, 300, d=64, noise=0.3)
    # Random distractors in 64 dimensions reach ratio margins ~1.3 (a real encoder's do not); planted ~1.8.
    pairs = mine_embeddings(x, y, MineConfig(index="flat"), threshold=1.5)
    want = brute_force(x, y, threshold=1.5)
    assert pairs.as_set() == set(want)
    found = pairs.as_set()
    assert len(found & gold) / len(gold) > 0.97 and len(found - gold) < 5


def test_ivf_recovers_the_exact_pairs():
    x, y, gold = planted(2000, 2000, 2000, d=64, noise=0.4, seed=1)
    # Threshold above the random distractors' margins (see above): the pairs a user would keep.
    exact = mine_embeddings(x, y, MineConfig(index="flat"), threshold=1.5).as_set()
    ivf = mine_embeddings(x, y, MineConfig(index="ivf", nlist=64, nprobe=8), threshold=1.5).as_set()
    assert len(exact & ivf) / len(exact) >= 0.98 and len(gold & exact) / len(gold) > 0.97
    pq = mine_embeddings(x, y, MineConfig(index="ivfpq", nlist=32, nprobe=8), threshold=1.5).as_set()
    assert len(exact & pq) / len(exact) > 0.7  # lossy codes: fewer, but most pairs


def test_auto_picks_the_index_by_size():
    x, y, _ = planted(50, 0, 0)
    assert knn(x, y, 4, IndexConfig(kind="auto", flat_max=100)).kind == "flat"
    assert knn(x, y, 4, IndexConfig(kind="auto", flat_max=10)).kind == "ivf"


def test_k_larger_than_a_side_and_single_rows():
    x, y, _ = planted(3, 0, 0, d=8)
    for k in (4, 16):
        got = mine_embeddings(x, y[:2], MineConfig(k=k, mode="forward", index="flat"), threshold=-np.inf)
        want = brute_force(x, y[:2], k=k, mode="forward")
        assert got.as_set() == set(want) and len(got) == 3
        assert set(got.tgt.tolist()) <= {0, 1}  # never a padded -1 read as "the last row"
    one = mine_embeddings(x[:1], y[:1], MineConfig(k=4, index="flat"), threshold=-np.inf)
    assert one.as_set() == {(0, 0)} and one.score[0] == pytest.approx(1.0)  # cos / cos
    ivf = knn(x[:1], y[:1], 4, IndexConfig(kind="ivf"))  # nlist clamped to the one row
    assert ivf.ids.tolist() == [[0]]


def test_empty_sides_are_a_clear_error():
    x, y, _ = planted(3, 0, 0, d=8)
    with pytest.raises(MiningInputError, match="source side is empty"):
        mine_embeddings(x[:0], y)
    with pytest.raises(MiningInputError, match="target side is empty"):
        mine_embeddings(x, y[:0])
    with pytest.raises(MiningInputError, match="shapes do not match"):
        mine_embeddings(x, y[:, :4])


def test_duplicates_and_identical_embeddings():
    x, y, _ = planted(40, 10, 10, d=16)
    xd = np.concatenate([x, x[:10]])  # ten sentences twice on the source side
    got = mine_embeddings(xd, y, MineConfig(mode="forward", index="flat"), threshold=-np.inf)
    want = brute_force(xd, y, mode="forward")
    # Duplicate rows tie exactly; which twin is "nearer" is arbitrary, the scores are not.
    assert sorted(got.score.tolist()) == pytest.approx(sorted(want.values()), rel=1e-5)
    mx = mine_embeddings(xd, y, MineConfig(mode="max", index="flat"), threshold=-np.inf)
    assert len(set(mx.src.tolist())) == len(mx) == len(set(mx.tgt.tolist()))  # one-to-one

    same = np.ones((5, 8), np.float32)
    got = {}
    for mode in MODES:
        p = mine_embeddings(same, same[:3], MineConfig(mode=mode, index="flat"), threshold=-np.inf)
        assert np.allclose(p.score, 1.0) and np.allclose(p.cosine, 1.0)
        got[mode] = p.as_set()
    # Every score ties, so which neighbour is "best" is the index's choice; the modes' relations are not.
    fwd, bwd = got["forward"], got["backward"]
    assert sorted(s for s, _ in fwd) == list(range(5)) and sorted(t for _, t in bwd) == list(range(3))
    assert got["intersection"] == fwd & bwd  # the pairs both directions agree on
    mx = got["max"]  # one-to-one over both lists (LASER): every pair left out shares a sentence with one kept
    assert len({s for s, _ in mx}) == len(mx) == len({t for _, t in mx}) and mx <= fwd | bwd
    assert all(s in {a for a, _ in mx} or t in {b for _, b in mx} for s, t in (fwd | bwd) - mx)
    zero = np.zeros((2, 8), np.float32)  # all-zero rows: cosine 0, no NaN anywhere
    p = mine_embeddings(zero, same[:2], MineConfig(mode="forward", margin="distance", index="flat"), threshold=-np.inf)
    assert np.isfinite(p.score).all()


def test_callers_arrays_are_not_touched():
    x, y, _ = planted(50, 20, 20)
    x, y = x * 3.0, y * 0.5  # not unit length: normalizing in place would change them
    x0, y0 = x.copy(), y.copy()
    x.setflags(write=False)  # and read-only (a memory map) must work
    for kind in ("flat", "ivf"):
        mine_embeddings(x, y, MineConfig(index=kind, nlist=4))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_select_pairs_rejects_unknown_mode():
    x, y, _ = planted(5, 0, 0)
    nb = knn(x, y, 2, IndexConfig(kind="flat"))
    with pytest.raises(ValueError, match="unknown mode"):
        select_pairs(nb, nb, mode="both")


# ---------------------------------------------------------------------------------------------------
# A toy encoder that knows the answer (as stopes tests its mining pipeline), on real sentences


@pytest.fixture(scope="module")
def gettext_pairs(real_catalogs):
    from labse_core.gettext_catalog import catalog_pairs, read_mo

    rows, seen_de = {}, set()
    for p in catalog_pairs(read_mo(real_catalogs / "de" / "LC_MESSAGES" / "coreutils.mo")):
        if 25 < len(p.src_text) < 120 and "\n" not in p.src_text + p.tgt_text and p.src_text not in rows \
                and p.tgt_text not in seen_de:  # one-to-one, so the toy encoder's answer is unambiguous
            rows[p.src_text] = p.tgt_text
            seen_de.add(p.tgt_text)
    return list(rows.items())


def toy_encoder(gold_pairs, d=64, seed=0):
    """Sentence of gold pair p (either side) -> e_p + noise; any other sentence -> a random direction."""
    rng = np.random.default_rng(seed)
    ids = {}
    for p, (en, de) in enumerate(gold_pairs):
        ids[en] = ids[de] = p
    centers = rng.normal(size=(len(gold_pairs), d))

    def embed(texts):
        out = np.empty((len(texts), d), np.float32)
        for r, t in enumerate(texts):
            h = np.random.default_rng(abs(hash(t)) % 2**32)
            out[r] = (centers[ids[t]] if t in ids else h.normal(size=d)) + 0.2 * h.normal(size=d)
        return out

    return embed


def test_toy_encoder_mining_finds_the_hidden_translations(gettext_pairs, tmp_path):
    gold, distract = gettext_pairs[:120], gettext_pairs[120:420]
    de_lines = [de for _, de in gold] + [de for _, de in distract[:150]] + [gold[0][1]]  # a duplicate line
    en_lines = [en for en, _ in distract[150:]] + [en for en, _ in gold][::-1]
    (tmp_path / "de.txt").write_text("\n".join(de_lines) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(en_lines) + "\n")
    src, tgt = open_input(str(tmp_path / "de.txt")), open_input(str(tmp_path / "en.txt"))
    assert isinstance(src, MiningInput) and src.kind == "text"
    # Toy random distractors reach ratio margins ~1.3 (see test_threshold_...); gold pairs ~2.
    res = mine_inputs(src, tgt, "de", "en", toy_encoder(gold), tmp_path / "work", MineConfig(chunk_size=64, threshold=1.5))
    assert (res.src_total, res.src_distinct) == (len(de_lines), len(de_lines) - 1)
    found = {(r.src_text, r.tgt_text) for r in res.rows}
    # What the data pipeline's filters would reject among the gold pairs, computed independently:
    norm = [(normalize_text(de), normalize_text(en)) for en, de in gold]
    reasons = check_pairs([d for d, _ in norm], [e for _, e in norm], ["de"] * len(gold), ["en"] * len(gold))
    expected = {pair for pair, r in zip(norm, reasons, strict=True) if r is None}
    # ... and its dedupe: pairs equal up to case and punctuation ("-w"/"-W" options here) are one pair.
    keys = {(key_text(d), key_text(e)) for d, e in expected}
    assert found <= expected and {(key_text(d), key_text(e)) for d, e in found} == keys
    assert len(found) == len(keys) > 100 and res.dropped["duplicate"] == len(expected) - len(keys)
    assert sum(res.dropped.values()) == len(res.pairs) - len(res.rows)
    for r in res.rows:  # indices point at the input rows
        assert normalize_text(de_lines[r.src_index]) == r.src_text and normalize_text(en_lines[r.tgt_index]) == r.tgt_text


def test_mined_rules_drop_copies_and_duplicate_pairs(tmp_path):
    # An untranslated line (copy) and one sentence that occurs twice on each side (folded by `unique`).
    de = ["Die Datei wurde nicht gefunden.", "Version 2.0", "Der Drucker ist nicht bereit."]
    en = ["The printer is not ready.", "Version 2.0", "The file was not found."]
    gold = [(en[2], de[0]), (en[1], de[1]), (en[0], de[2])]
    (tmp_path / "de.txt").write_text("\n".join(de + de[:1]) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(en + en[2:]) + "\n")
    res = mine_inputs(open_input(str(tmp_path / "de.txt")), open_input(str(tmp_path / "en.txt")), "de", "en",
                      toy_encoder(gold), tmp_path / "w", MineConfig(threshold=-1e9))
    assert {(r.src_text, r.tgt_text) for r in res.rows} == {(de[0], en[2]), (de[2], en[0])}
    assert res.dropped == {"copy": 1}


def test_npy_inputs_need_their_sentences(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 4), np.float32))
    with pytest.raises(MiningInputError, match="need their sentences"):
        open_input(str(tmp_path / "a.npy"))
    with pytest.raises(MiningInputError, match="no such file"):
        open_input(str(tmp_path / "missing.txt"))
    (tmp_path / "a.txt").write_text("eins\nzwei\ndrei\n")
    inp = open_input(str(tmp_path / "a.npy"))
    with pytest.raises(MiningInputError, match="2 embeddings but 3 sentences"):
        mine_inputs(inp, inp, "de", "de", None, tmp_path / "w")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(MiningInputError, match=r"bad.txt:2: not UTF-8"):
        list(open_input(str(tmp_path / "bad.txt")).texts())


def test_shards_read_back_like_one_array(tmp_path):
    from labse_core.mining.shards import ShardedArray, embed_to_shards

    rng = np.random.default_rng(0)
    table = {f"s{i}": rng.normal(size=6).astype(np.float32) for i in range(23)}
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return np.stack([table[t] for t in texts])

    full = np.stack(list(table.values()))
    for dtype, tol in (("float32", 0), ("float16", 2e-3)):
        sh = embed_to_shards(iter(table), embed, tmp_path / dtype, chunk_size=5, dtype=dtype)
        assert sh.shape == (23, 6) and len(sh.files) == 5
        np.testing.assert_allclose(sh[3:17], full[3:17], atol=tol)
        np.testing.assert_allclose(sh[[0, 4, 5, 22]], full[[0, 4, 5, 22]], atol=tol)
        np.testing.assert_allclose(ShardedArray.open(tmp_path / dtype).to_array(), full, atol=tol)
    assert max(calls) == 5  # memory: one chunk at a time


def test_dataset_and_parquet_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labse_core.embed import write_embeddings

    root = tmp_path / "clean"
    for lang, texts in (("de", ["eins", "zwei"]), ("fr", ["un"])):
        (root / f"lang={lang}").mkdir(parents=True)
        pq.write_table(pa.table({"src_text": [t + "-en" for t in texts], "tgt_text": texts}),
                       root / f"lang={lang}" / "part-00000.parquet")
    inp = open_input("corpus_clean:tgt_text:de", dataset_dirs={"corpus_clean": root})
    assert list(inp.texts()) == ["eins", "zwei"]
    assert list(open_input("corpus_clean:src_text", dataset_dirs={"corpus_clean": root}).texts()) == [
        "eins-en", "zwei-en", "un-en"]
    with pytest.raises(MiningInputError, match="no column 'nope'"):
        list(open_input("corpus_clean:nope:de", dataset_dirs={"corpus_clean": root}).texts())
    with pytest.raises(MiningInputError, match="DATASET:COLUMN"):
        open_input("corpus_clean", dataset_dirs={"corpus_clean": root})
    # `labse embed` Parquet output: precomputed embeddings with their texts
    emb = np.eye(3, 4, dtype=np.float32)
    write_embeddings(tmp_path / "e.parquet", ["a", "b", "c"], emb)
    inp = open_input(str(tmp_path / "e.parquet"))
    assert inp.kind == "parquet" and list(inp.texts()) == ["a", "b", "c"]
    np.testing.assert_array_equal(inp.embeddings.to_array(), emb)
    res = mine_inputs(inp, open_input(str(tmp_path / "e.parquet")), "de", "de", None, tmp_path / "w",
                      MineConfig(threshold=-1e9, filter=False))
    assert {(r.src_index, r.tgt_index) for r in res.rows} == {(0, 0), (1, 1), (2, 2)}
