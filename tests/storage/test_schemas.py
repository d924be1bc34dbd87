import pyarrow as pa
import pytest

from storage.schemas import DATASETS, RAW_PAIRS, SchemaError, check_table, get_dataset


def _raw_table(n=2, **overrides):
    cols = {
        "src_lang": ["en"] * n,
        "src_text": ["File", "Open"][:n],
        "tgt_text": ["Datei", "Öffnen"][:n],
        "locale": ["de"] * n,
        "source": ["gettext-po"] * n,
        "domain": [None] * n,
        "origin": ["x.po"] * n,
        "line": [1, 5][:n],
        "context": [None] * n,
        "plural_form": pa.array([None] * n, pa.int8()),
    }
    cols.update(overrides)
    return pa.table(cols)


def test_valid_table_is_reordered_to_schema():
    t = _raw_table()
    shuffled = t.select(list(reversed(t.column_names)))
    out = check_table(RAW_PAIRS, shuffled)
    assert out.schema.names == RAW_PAIRS.file_schema.names
    assert "lang" not in out.schema.names  # partition column lives in the path


def test_null_typed_column_accepted_for_nullable_field():
    out = check_table(RAW_PAIRS, _raw_table(domain=pa.nulls(2)))
    assert out.schema.field("domain").type == pa.string()


@pytest.mark.parametrize(
    "table, message",
    [
        (_raw_table().drop(["src_text"]), "missing columns ['src_text']"),
        (_raw_table().append_column("extra", pa.array([1, 2])), "unexpected columns ['extra']"),
        (_raw_table(line=pa.array(["1", "2"])), "column 'line' has type string, expected int64"),
        (_raw_table(src_text=pa.array(["a", None])), "column 'src_text' has 1 nulls but is not nullable"),
    ],
)
def test_mismatches_are_named(table, message):
    with pytest.raises(SchemaError, match="corpus_raw") as e:
        check_table(RAW_PAIRS, table)
    assert message in str(e.value)


def test_partition_columns_checked_when_present():
    t = _raw_table().append_column("lang", pa.array(["de", "de"]))
    assert check_table(RAW_PAIRS, t, with_partitions=True).num_rows == 2
    with pytest.raises(SchemaError):
        check_table(RAW_PAIRS, t)  # files must not carry the partition column


def test_registry():
    assert get_dataset("corpus_raw") is RAW_PAIRS
    assert all(spec.name.isidentifier() for spec in DATASETS.values())
    with pytest.raises(KeyError, match="known"):
        get_dataset("nope")
