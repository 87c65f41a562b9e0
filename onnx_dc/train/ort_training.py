"""Access to onnxruntime-training's on-device training API, without torch.

``import onnxruntime.training`` runs that package's ``__init__``, which imports its
torch-based ``optim`` / ``amp`` modules and fails where torch is not installed. The
parts fine-tuning uses (``artifacts``, ``onnxblock``, ``api``) need only onnx, numpy
and onnxruntime's core, so :func:`training_modules` registers the package from its
import spec without executing its ``__init__`` and imports those submodules directly.
Where onnxruntime-training is not installed (it has no wheel past Python 3.12), every
training entry point raises :class:`~onnx_dc.errors.TrainingUnavailable`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import lru_cache

from onnx_dc.errors import TrainingUnavailable

_PACKAGE = "onnxruntime.training"


@lru_cache(maxsize=1)
def training_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Return ``(onnxruntime.training.artifacts, onnxruntime.training.api)``.

    Raises:
        TrainingUnavailable: when onnxruntime-training cannot be imported.
    """
    try:
        import onnxruntime

        if _PACKAGE not in sys.modules:
            spec = importlib.util.find_spec(_PACKAGE)
            if spec is None or spec.submodule_search_locations is None:
                raise ImportError(f"no module named {_PACKAGE!r}")
            # An empty package object with the real search path: its submodules import
            # normally, but the torch-only imports of its __init__ never run.
            package = importlib.util.module_from_spec(spec)
            sys.modules[_PACKAGE] = package
            onnxruntime.training = package
        artifacts = importlib.import_module(f"{_PACKAGE}.artifacts")
        api = importlib.import_module(f"{_PACKAGE}.api")
    except ImportError as exc:
        raise TrainingUnavailable(
            "fine-tuning needs onnxruntime-training-cpu 1.19 (Python 3.10-3.12), which cannot be imported here "
            f"({exc}); compression without --data works"
        ) from None
    return artifacts, api


def training_available() -> bool:
    """Whether :func:`training_modules` can import the training API."""
    try:
        training_modules()
    except TrainingUnavailable:
        return False
    return True
