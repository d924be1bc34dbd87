"""Training data plumbing: streaming Parquet shards split over ranks and workers (`shards`)."""

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
