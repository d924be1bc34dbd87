"""Beam pipeline options, with the runner always named explicitly.

Since Beam 2.68 an unnamed runner means Prism, a Go binary downloaded at run time; offline that
fails or hangs. We default to the Python direct runner in multi-process mode, whose worker
processes start through ``beam_jobs.worker`` (Beam's harness, without its start-up noise).
"""

from __future__ import annotations

import os
import sys

from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DASK_RUNNERS = ("dask", "DaskRunner")


def is_dask(runner: str) -> bool:
    """``dask``/``DaskRunner``: our fixed Dask runner (``beam_jobs/runners/dask``), not Beam's own."""
    return runner in DASK_RUNNERS


class BeamConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: str = Field(
        "DirectRunner",
        description="Beam runner: DirectRunner, dask (beam_jobs/runners/dask), FlinkRunner, SparkRunner, DataflowRunner.",
    )
    num_workers: int = Field(
        default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)),
        ge=1,
        description="Direct runner worker processes (--direct_num_workers); with runner dask and no "
        "dask_address, the worker processes of the LocalCluster started for the run.",
    )
    dask_address: str | None = Field(
        None,
        description="runner dask: address of a running dask.distributed scheduler (tcp://host:8786); "
        "None starts a LocalCluster of num_workers processes for the run.",
    )
    dask_memory_limit: str = Field(
        "2GiB",
        description="runner dask, LocalCluster only: memory of one worker process. Dask spills the results it "
        "holds to disk past 60% of it, pauses the worker at 80% and restarts it at 95%.",
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

    @field_validator("runner")
    @classmethod
    def _dask_needs_its_beam(cls, runner: str) -> str:
        # Before any work: the Dask runner patches Beam internals of one Beam version (a ValueError,
        # so the `labse` commands report it as one line, exit 2).
        if is_dask(runner):
            from beam_jobs.runners.dask.version import check_beam_version

            check_beam_version()
        return runner

    @model_validator(mode="after")
    def _address_needs_dask(self) -> BeamConfig:
        if self.dask_address and not is_dask(self.runner):
            raise ValueError(f"dask_address is set but the runner is {self.runner!r}: it needs runner 'dask'")
        return self

    def pipeline_options(self) -> PipelineOptions:
        args = [f"--runner={self.runner}", f"--default_sdk_harness_log_level={self.worker_log_level}"]
        if self.runner == "DirectRunner":
            args += [f"--direct_num_workers={self.num_workers}", f"--direct_running_mode={self.running_mode}"]
        if is_dask(self.runner):
            # The runner object is built by pipeline(); the options carry the cluster's address.
            args = [f"--default_sdk_harness_log_level={self.worker_log_level}"]
            if self.dask_address:
                args.append(f"--dask_client_address={self.dask_address}")
        return PipelineOptions(args + list(self.extra_args))

    def pipeline(self):
        """A ``beam.Pipeline`` on this runner. Stages use ``with cfg.beam.pipeline() as p:``.

        The direct runner in multi-process mode is Beam's ``FnApiRunner`` with the same options,
        the one thing changed being the command that starts a worker: ``python -m beam_jobs.worker``
        instead of ``python -m apache_beam.runners.worker.sdk_worker_main``. Beam hard-codes that
        command when the mode is ``multi_processing``, so the runner is given its environment and
        the mode ``in_memory`` (which keeps the given environment; ``direct_num_workers`` still sets
        how many worker processes it starts).
        """
        import apache_beam as beam

        if is_dask(self.runner):
            from beam_jobs.runners.dask.runner import DaskRunner

            return beam.Pipeline(runner=DaskRunner(local_workers=self.num_workers, memory_limit=self.dask_memory_limit),
                                 options=self.pipeline_options())
        if not (self.runner == "DirectRunner" and self.running_mode == "multi_processing"):
            return beam.Pipeline(options=self.pipeline_options())
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle
        from apache_beam.transforms.environments import SubprocessSDKEnvironment

        options = self.model_copy(update={"running_mode": "in_memory"}).pipeline_options()
        # What DirectRunner gives the FnApiRunner: the options, for the workers (log level ...).
        provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
            pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options())))
        # exec: the runner starts the command with a shell; the worker replaces it (one process per worker,
        # and no shell to print "Killed" when a worker is killed: the stage reports that itself).
        worker = SubprocessSDKEnvironment.from_command_string(f"exec {sys.executable} -m beam_jobs.worker")
        return beam.Pipeline(runner=fn_runner.FnApiRunner(default_environment=worker, provision_info=provision),
                             options=options)
