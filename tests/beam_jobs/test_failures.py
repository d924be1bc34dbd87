"""How a stage's failure outside the data is reported: a worker stopped by Ctrl-C is the user
interrupting the command (exit 130, "interrupted"), a worker killed otherwise is a lost worker."""

from __future__ import annotations

import errno
import threading

import pytest

from beam_jobs.failures import WorkerLost, stage_failures
from storage.layout import Layout


def _fail_in_stage(tmp_path, text: str) -> None:
    # off the main thread, as a Prefect task runs a stage (no signal handler there)
    out: dict = {}

    def stage() -> None:
        try:
            with stage_failures("ingest", Layout(tmp_path)):
                raise RuntimeError(text)
        except BaseException as e:  # noqa: BLE001 - what the stage raised is the result
            out["e"] = e

    t = threading.Thread(target=stage)
    t.start()
    t.join(30)
    raise out["e"]


@pytest.mark.parametrize("code", ["130", "-2"])
def test_a_worker_stopped_by_ctrl_c_is_an_interruption(tmp_path, code):
    with pytest.raises(KeyboardInterrupt):
        _fail_in_stage(tmp_path, f"SDK worker exited: Worker subprocess exited with return code {code}")


@pytest.mark.parametrize("code", ["137", "-9", "1300"])
def test_a_worker_killed_otherwise_is_lost(tmp_path, code):
    with pytest.raises(WorkerLost, match="ingest: a Beam worker process died"):
        _fail_in_stage(tmp_path, f"SDK worker exited: Worker subprocess exited with return code {code}")


def test_a_full_disk_in_a_worker_names_the_file(tmp_path):
    with pytest.raises(OSError) as e:
        _fail_in_stage(tmp_path, "Traceback ...\nOSError: [Errno 28] No space left on device: '/lake/x.parquet'")
    assert e.value.errno == errno.ENOSPC and "/lake/x.parquet" in str(e.value)
