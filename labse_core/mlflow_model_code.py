"""The pyfunc model of an exported model folder, logged as MLflow "models from code".

MLflow copies this file into the logged model and runs it on load: the model is rebuilt from this
source and the model folder (an artifact), so loading unpickles nothing (``log_model`` with a Python
object would cloudpickle it, and loading a pickle can run arbitrary code). It must stay importable on
its own with ``labse_core`` on the path (the logged model carries ``labse_core`` as ``code_paths``)
and must end with ``mlflow.models.set_model(...)``.

    predict(["Hello world", "Hallo Welt"])               -> float32 (2, D), unit rows
    predict(pd.DataFrame({"text": [...]}))               -> same
    predict(..., params={"batch_size": 256})             -> same, other batching

Precision (``labse_core.export.serving_precision``): ``LABSE_PRECISION`` (fp32, bf16, int8, auto) in the
serving process's environment, else the folder's ``inference_precision``, else fp32; ``precision`` on the
loaded model says which runs.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import numpy as np
import pandas as pd

ARTIFACT_KEY = "model_dir"
"""Key of the model folder in ``artifacts`` (and ``context.artifacts``)."""
DEFAULT_BATCH_SIZE = 64
TEXT_COLUMN = "text"


def sentences_of(model_input: Any) -> list[str]:
    """A list of sentences from what pyfunc hands over (after its schema check: a DataFrame)."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            col = model_input[TEXT_COLUMN]
        elif model_input.shape[1] == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(
                f"expected a {TEXT_COLUMN!r} column or a single column, got {list(model_input.columns)}"
            )
        return col.tolist()  # encode() rejects non-strings (a None / NaN cell) by row number
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


class LabseEmbedder(mlflow.pyfunc.PythonModel):
    """pyfunc: sentences in, unit-length float32 embeddings (N, D) out."""

    def load_context(self, context) -> None:
        from labse_core.embed import load_for_inference
        from labse_core.export import read_export_metadata, serving_precision

        model_dir = context.artifacts[ARTIFACT_KEY]
        # LABSE_PRECISION, else the folder's own setting (labse quantize --default), else fp32
        self.model = load_for_inference(model_dir, serving_precision(model_dir))
        self.precision = self.model.precision
        logging.getLogger(__name__).info("labse pyfunc: encoding in %s", self.precision)
        meta = read_export_metadata(model_dir) or {}
        self.max_length = meta.get("max_seq_length")  # None: encode() uses the tokenizer's limit

    # pd.DataFrame: what pyfunc hands over after checking the column signature (a list arrives as a
    # one-column frame); MLflow infers no second signature from this hint.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from labse_core.embed import encode

        params = params or {}
        max_length = params.get("max_length", self.max_length)
        return encode(
            sentences_of(model_input),
            self.model,
            batch_size=int(params.get("batch_size", DEFAULT_BATCH_SIZE)),
            max_length=int(max_length) if max_length is not None else None,
            progress=False,
        )


mlflow.models.set_model(LabseEmbedder())
