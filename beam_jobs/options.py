"""Beam pipeline options, with the runner always named explicitly.

Since Beam 2.68 an unnamed runner means Prism, a Go binary downloaded at run time; offline that
fails or hangs. We default to the Python direct runner in multi-process mode.
"""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, ConfigDict, Field


class BeamConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: str = Field("DirectRunner", description="Beam runner: DirectRunner, FlinkRunner, SparkRunner, DataflowRunner.")
    num_workers: int = Field(
        default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)),
        ge=1,
        description="Direct runner worker processes (--direct_num_workers).",
    )
    running_mode: str = Field(
        "multi_processing",
        description="Direct runner mode: multi_processing, multi_threading or in_memory (one process, for tests).",
    )
    worker_log_level: str = Field(
        "WARNING", description="Log level of the Beam worker processes (--default_sdk_harness_log_level)."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Any other standard Beam pipeline options, passed through, e.g. ['--flink_master=host:8081'].",
    )

    def pipeline_options(self) -> PipelineOptions:
        args = [f"--runner={self.runner}", f"--default_sdk_harness_log_level={self.worker_log_level}"]
        if self.runner == "DirectRunner":
            args += [f"--direct_num_workers={self.num_workers}", f"--direct_running_mode={self.running_mode}"]
        return PipelineOptions(args + list(self.extra_args))
