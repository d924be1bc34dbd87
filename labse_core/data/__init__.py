"""Training data plumbing both trainers (and the shard job) share: streaming Parquet shards split over
ranks and workers (`shards`), special ids and sentence batches (`batches`), BERT masking and TLM
packing (`masking`), and the held-out split of the pairs (`held_out`)."""

from labse_core.data.shards import (
    Position,
    ShardLoader,
    ShardStream,
    StreamConfig,
    Unit,
    pad_sequences,
    padding_ratio,
    plan_units,
    shard_files,
    write_shards,
)

__all__ = [
    "Position",
    "ShardLoader",
    "ShardStream",
    "StreamConfig",
    "Unit",
    "pad_sequences",
    "padding_ratio",
    "plan_units",
    "shard_files",
    "write_shards",
]
