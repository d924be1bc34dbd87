"""All Parquet datasets of the platform, declared once and checked on every write.

A ``DatasetSpec`` names a dataset, says where it lives under the lake, its full logical schema
and which columns are hive partitions (stored in the path, ``lang=de/``, not in the files).
``check_table`` is called by every writer: a table that does not match its spec is never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


class SchemaError(ValueError):
    """A table does not match the schema declared for its dataset."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    """Catalog view name (a SQL identifier) and the key used by stages."""
    relpath: str
    """Folder under the lake root."""
    schema: pa.Schema
    """Full logical schema, partition columns included."""
    partition_by: tuple[str, ...] = ()
    """Hive partition columns, outermost first; they live in the path, not in the files."""
    description: str = ""
    sort_by: tuple[str, ...] = field(default=())
    """Row order inside each file, so reruns on the same input write identical files."""

    @property
    def file_schema(self) -> pa.Schema:
        """Schema of the Parquet files themselves (partition columns removed)."""
        keep = [f for f in self.schema if f.name not in self.partition_by]
        return pa.schema(keep, metadata={b"labse.dataset": self.name.encode()})

    def partition_field(self, name: str) -> pa.Field:
        return self.schema.field(name)


def check_table(spec: DatasetSpec, table: pa.Table, *, with_partitions: bool = False) -> pa.Table:
    """Return ``table`` with columns in schema order, or raise ``SchemaError`` saying what is wrong.

    ``with_partitions``: the table still carries the partition columns (they are checked too).
    Only exact types are accepted, except an all-null column of type ``null`` for a nullable field.
    """
    expected = spec.schema if with_partitions else spec.file_schema
    want = {f.name for f in expected}
    have = set(table.column_names)
    problems: list[str] = []
    if missing := sorted(want - have):
        problems.append(f"missing columns {missing}")
    if extra := sorted(have - want):
        problems.append(f"unexpected columns {extra}")
    columns = []
    if not problems:
        for f in expected:
            col = table.column(f.name)
            if col.type != f.type:
                if pa.types.is_null(col.type) and f.nullable:
                    col = pa.nulls(len(col), f.type)
                else:
                    problems.append(f"column {f.name!r} has type {col.type}, expected {f.type}")
                    continue
            if not f.nullable and col.null_count:
                problems.append(f"column {f.name!r} has {col.null_count} nulls but is not nullable")
            columns.append(col)
    if problems:
        raise SchemaError(f"dataset {spec.name!r}: " + "; ".join(problems))
    return pa.Table.from_arrays(columns, schema=expected)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

RAW_PAIRS = DatasetSpec(
    name="corpus_raw",
    relpath="corpus/raw",
    description=(
        "Translation pairs as read from their source files, before normalization and filtering. "
        "src is English for gettext catalogs; lang is the other side's language."
    ),
    schema=pa.schema(
        [
            pa.field("lang", pa.string(), nullable=False),  # partition: normalized code of tgt side
            pa.field("src_lang", pa.string(), nullable=False),
            pa.field("src_text", pa.string(), nullable=False),
            pa.field("tgt_text", pa.string(), nullable=False),
            pa.field("locale", pa.string(), nullable=False),  # as found in the source (pt_BR, sr@latin)
            pa.field("source", pa.string(), nullable=False),  # reader: gettext-mo, gettext-po, ...
            pa.field("domain", pa.string(), nullable=True),  # gettext text domain (gtk30, coreutils)
            pa.field("origin", pa.string(), nullable=False),  # file the pair came from
            pa.field("line", pa.int64(), nullable=True),  # .po: line of msgid; .mo: entry index
            pa.field("context", pa.string(), nullable=True),  # gettext msgctxt
            pa.field("plural_form", pa.int8(), nullable=True),  # msgstr[i] index for plural entries
        ]
    ),
    partition_by=("lang",),
    sort_by=("origin", "line", "plural_form"),
)

CLEAN_PAIRS = DatasetSpec(
    name="corpus_clean",
    relpath="corpus/clean",
    description=(
        "Normalized, filtered, deduplicated and decontaminated translation pairs (English src when one "
        "side is English). pair_key is the dedupe key: a digest of the language and the NFKC-casefolded pair."
    ),
    schema=pa.schema(
        [
            pa.field("lang", pa.string(), nullable=False),  # partition: tgt side's language
            pa.field("src_lang", pa.string(), nullable=False),
            pa.field("src_text", pa.string(), nullable=False),
            pa.field("tgt_text", pa.string(), nullable=False),
            pa.field("pair_key", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("origin", pa.string(), nullable=False),
            pa.field("line", pa.int64(), nullable=True),
            pa.field("locale", pa.string(), nullable=True),
            pa.field("context", pa.string(), nullable=True),
        ]
    ),
    partition_by=("lang",),
    sort_by=("pair_key",),
)

REJECTS = DatasetSpec(
    name="corpus_rejects",
    relpath="corpus/rejects",
    description=(
        "Every input pair that did not make it into corpus_clean, with the reason (see "
        "labse_core.prepare.REJECT_REASONS) and, for duplicates, the pair_key of the pair kept."
    ),
    schema=pa.schema(
        [
            pa.field("reason", pa.string(), nullable=False),  # partition
            pa.field("lang", pa.string(), nullable=True),  # null when the language is unknown
            pa.field("src_lang", pa.string(), nullable=True),
            pa.field("src_text", pa.string(), nullable=True),  # as read (before normalization)
            pa.field("tgt_text", pa.string(), nullable=True),
            pa.field("source", pa.string(), nullable=False),
            pa.field("origin", pa.string(), nullable=False),
            pa.field("line", pa.int64(), nullable=True),
            pa.field("detail", pa.string(), nullable=True),
        ]
    ),
    partition_by=("reason",),
    sort_by=("origin", "line"),
)

_IDS = pa.list_(pa.int32())

SHARD_PAIRS = DatasetSpec(
    name="shards_pairs",
    relpath="shards/pairs",
    description=(
        "Tokenized translation pairs for the dual encoder: languages shuffled together into "
        "balanced files (part-NNNNN.parquet), ids from the project's sentencepiece vocabulary, "
        "without [CLS]/[SEP] (added by the collator)."
    ),
    schema=pa.schema(
        [
            pa.field("src_lang", pa.string(), nullable=False),
            pa.field("tgt_lang", pa.string(), nullable=False),
            pa.field("src_text", pa.string(), nullable=False),
            pa.field("tgt_text", pa.string(), nullable=False),
            pa.field("src_ids", _IDS, nullable=False),
            pa.field("tgt_ids", _IDS, nullable=False),
        ]
    ),
)

SHARD_TLM = DatasetSpec(
    name="shards_tlm",
    relpath="shards/tlm",
    description=(
        "Translation language modelling examples: [CLS] src [SEP] tgt [SEP] with segment ids 0/1 and "
        "positions restarting at the target (labse_core.pretrain.masking.make_tlm_example); masking "
        "is applied at training time."
    ),
    schema=pa.schema(
        [
            pa.field("src_lang", pa.string(), nullable=False),
            pa.field("tgt_lang", pa.string(), nullable=False),
            pa.field("input_ids", _IDS, nullable=False),
            pa.field("token_type_ids", pa.list_(pa.int8()), nullable=False),
            pa.field("position_ids", pa.list_(pa.int16()), nullable=False),
        ]
    ),
)

SHARD_MLM = DatasetSpec(
    name="shards_mlm",
    relpath="shards/mlm",
    description="Monolingual sentences for masked language modelling: ids without [CLS]/[SEP].",
    schema=pa.schema(
        [
            pa.field("lang", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("input_ids", _IDS, nullable=False),
        ]
    ),
)

_UTC_TIME = pa.timestamp("us", tz="UTC")

EVAL_RESULTS = DatasetSpec(
    name="eval_results",
    relpath="eval/results",
    description=(
        "Evaluation metrics, one row per (run, eval set, split, scope, language, direction, metric); every "
        "evaluation run appends its rows (labse_core.evaluation.results). scope: 'language' (language = a "
        "code), 'group' (language = a group such as xtreme36, all112, trained) or 'set' (whole set)."
    ),
    schema=pa.schema(
        [
            pa.field("eval_set", pa.string(), nullable=False),  # partition: tatoeba-v1, bucc-gettext, ...
            pa.field("run_id", pa.string(), nullable=False),  # the evaluation run (its MLflow run id when tracked)
            pa.field("created_at", _UTC_TIME, nullable=False),
            pa.field("model_uri", pa.string(), nullable=False),  # models:/labse@champion, models:/labse/3 or a folder
            pa.field("model_version", pa.string(), nullable=True),  # registry version; null for a plain folder
            # encoder precision the scores were measured in (fp32, bf16, int8); null in rows written before it was recorded
            pa.field("precision", pa.string(), nullable=True),
            pa.field("split", pa.string(), nullable=False),  # test, dev, ...
            pa.field("scope", pa.string(), nullable=False),  # language | group | set
            pa.field("language", pa.string(), nullable=False),  # code, group name, or '*' for scope 'set'
            pa.field("direction", pa.string(), nullable=False),  # xx->en, en->xx, both, src->tgt ...
            pa.field("metric", pa.string(), nullable=False),  # accuracy, f1, precision, recall, xsim_error, ...
            pa.field("value", pa.float64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),  # sentences (language scope) or languages (group scope)
        ]
    ),
    partition_by=("eval_set",),
    sort_by=("run_id", "split", "scope", "language", "direction", "metric"),
)

MINED = DatasetSpec(
    name="mined",
    relpath="mined",
    description=(
        "Bitext mined from two monolingual inputs with the margin criterion (labse_core.mining): one row per "
        "pair kept after the threshold and the data pipeline's filters and dedupe; each mining run appends."
    ),
    schema=pa.schema(
        [
            pa.field("src_lang", pa.string(), nullable=False),  # partition
            pa.field("tgt_lang", pa.string(), nullable=False),  # partition
            pa.field("src_text", pa.string(), nullable=False),
            pa.field("tgt_text", pa.string(), nullable=False),
            pa.field("src_index", pa.int64(), nullable=False),  # row of the sentence in its input
            pa.field("tgt_index", pa.int64(), nullable=False),
            pa.field("cosine", pa.float32(), nullable=False),
            pa.field("margin", pa.float32(), nullable=False),  # margin score (ratio by default) the threshold applies to
            pa.field("mode", pa.string(), nullable=False),  # retrieval mode: forward, backward, intersection, max
            pa.field("pair_key", pa.string(), nullable=False),  # labse_core.prepare.pair_key: the dedupe key
            pa.field("src_origin", pa.string(), nullable=True),  # input file or dataset of the source side
            pa.field("tgt_origin", pa.string(), nullable=True),
            pa.field("model_uri", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=True),
            # encoder precision of the embeddings (fp32, bf16, int8); null for precomputed ones and older rows
            pa.field("precision", pa.string(), nullable=True),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("created_at", _UTC_TIME, nullable=False),
            # documents mined (labse_core.readers.documents): each side's document id (its path below the folder,
            # man1/ls.1) and the sentence's place in it; null for sentence inputs and rows written before them
            pa.field("src_doc", pa.string(), nullable=True),
            pa.field("src_pos", pa.int32(), nullable=True),
            pa.field("tgt_doc", pa.string(), nullable=True),
            pa.field("tgt_pos", pa.int32(), nullable=True),
        ]
    ),
    partition_by=("src_lang", "tgt_lang"),
    sort_by=("run_id", "src_index", "tgt_index"),
)

# --------------------------------------------------------------------------------------------
# Files outside the lake
# --------------------------------------------------------------------------------------------

EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ],
    metadata={b"labse.dataset": b"embeddings"},
)
"""The .parquet output of ``labse embed`` (labse_core.embed.embed_file): one row per input line, in
input order. A file the user names, not a lake dataset: no DatasetSpec, no manifest."""

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (RAW_PAIRS, CLEAN_PAIRS, REJECTS, SHARD_PAIRS, SHARD_TLM, SHARD_MLM, EVAL_RESULTS, MINED)
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
