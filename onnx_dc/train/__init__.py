"""Fine-tuning through onnxruntime-training: training forms, the loop, and the schedule.

    prepare -> [prune step -> retrain (masked)]* -> share -> train codebooks (shared) -> finish

Where onnxruntime-training cannot be imported (Python >= 3.13), every entry point here
raises :class:`~onnx_dc.errors.TrainingUnavailable`; compression without data works.
"""

from onnx_dc.train.forms import TrainForm, build_training_graph
from onnx_dc.train.loop import Trainer, fit
from onnx_dc.train.ort_training import training_available, training_modules
from onnx_dc.train.restore import state_from_dc
from onnx_dc.train.schedule import (
    ScheduleResult,
    finetune_codebooks,
    prune_steps,
    run_schedule,
    training_data,
)
from onnx_dc.train.settings import (
    LrSchedule,
    OptimizerKind,
    StageRecord,
    StageSettings,
    TrainSettings,
    resolve_train_settings,
)

__all__ = [
    "LrSchedule", "OptimizerKind", "ScheduleResult", "StageRecord", "StageSettings", "TrainForm", "TrainSettings",
    "Trainer", "build_training_graph", "finetune_codebooks", "fit", "prune_steps", "resolve_train_settings",
    "run_schedule", "state_from_dc", "training_available", "training_data", "training_modules",
]
