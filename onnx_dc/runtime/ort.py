"""What onnxruntime raises: the error types of its status codes.

Kept apart from the sessions so that fine-tuning and the sessions catch the same errors
without one importing the other.
"""

from __future__ import annotations


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """The exception types of onnxruntime's status codes: how it refuses a model it cannot load or run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return (ort_state.Fail, ort_state.InvalidArgument, ort_state.NoSuchFile, ort_state.NoModel,
            ort_state.EngineError, ort_state.RuntimeException, ort_state.InvalidProtobuf, ort_state.ModelLoaded,
            ort_state.NotImplemented, ort_state.InvalidGraph, ort_state.EPFail)
