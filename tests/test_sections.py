"""One validator for every settings section: config settings, ``calib:``, ``train:`` and the calibration options.

For each section: an unknown key, a wrong type and an out-of-range value are errors naming the
section and the key; an enum in upper case is accepted and stored as the canonical member; and
several problems come back at once, in one error.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from onnx_dc.config import SETTING_KEYS, SETTINGS_SECTION, CentroidInit, Form, parse_config
from onnx_dc.data.calib import CALIB_OPTIONS, OPTION_FLAGS, CalibSpec, Channels, parse_calib_spec
from onnx_dc.errors import ConfigError, DataError
from onnx_dc.passes.data_aware import DATA_AWARE_SECTION, DataAwareSettings, PruneBy, parse_data_aware
from onnx_dc.sections import Field, Section
from onnx_dc.train.settings import (STAGE_SECTION, TRAIN_SECTION, LrSchedule, OptimizerKind, StageSettings,
                                    TrainSettings, resolve_train_settings)


def config_defaults(raw):
    return parse_config({"defaults": raw}, "dc.yaml").settings_for("fc", "Gemm", "w")[0]


def train(raw):
    return resolve_train_settings(raw, source="dc.yaml: train")


def data_aware(raw):
    return parse_data_aware(raw, "dc.yaml: calib")


def calib(raw):
    return parse_calib_spec("images:/x", **raw)


# section -> (parse, error type, prefix of every message, {case: (raw, expected message fragment)})
SECTIONS = {
    "config": (config_defaults, ConfigError, "defaults: ", {
        "unknown": ({"colour": "red"}, "dc.yaml: defaults: unknown setting 'colour' (known: sparse_ratio,"),
        "type": ({"class_num": "8"}, "defaults: class_num: '8' must be an integer in 2..256"),
        "range": ({"sparse_ratio": 1.0}, "defaults: sparse_ratio: 1.0 must be a number in [0, 1)"),
        "several": ({"class_num": 1, "skip": "yes", "form": "packed", "colour": 1}, None),
    }),
    "train": (train, ConfigError, "dc.yaml: train: ", {
        "unknown": ({"bogus": 1}, "dc.yaml: train: unknown setting 'bogus' (known: batch_size,"),
        "type": ({"lr": "fast"}, "dc.yaml: train: lr: 'fast' must be a positive number"),
        "range": ({"momentum": 1.0}, "dc.yaml: train: momentum: 1.0 must be a number in [0, 1)"),
        "several": ({"epochs": -1, "optimizer": "rmsprop", "retrain": {"speed": 2}, "shift": 9}, None),
    }),
    "calib section": (data_aware, ConfigError, "dc.yaml: calib: ", {
        "unknown": ({"typo": True}, "dc.yaml: calib: unknown setting 'typo' (known: prune_by,"),
        "type": ({"refit": 1}, "dc.yaml: calib: refit: 1 must be true or false"),
        "range": ({"batch_size": 0}, "dc.yaml: calib: batch_size: 0 must be a positive integer"),
        "several": ({"prune_by": "size", "refit": 1, "typo": True, "carry_mb": -1}, None),
    }),
    "calib options": (calib, DataError, "--calib images:/x: ", {
        # Options are keyword arguments, so an unknown one is Python's TypeError; the section itself
        # rejects it like the others (see test_calib_options_reject_an_unknown_flag).
        "type": ({"seed": "3"}, "--calib images:/x: --seed: '3' must be a non-negative integer"),
        "range": ({"limit": 0}, "--calib images:/x: --calib-limit: 0 must be a positive integer"),
        "several": ({"channels": "rgba", "limit": 0, "size": "240", "std": "0"}, None),
    }),
}
CASES = [(section, case) for section, (_, _, _, cases) in SECTIONS.items() for case in cases if case != "several"]


@pytest.mark.parametrize("section,case", CASES)
def test_a_bad_value_names_the_section_and_the_key(section, case):
    parse, error, _, cases = SECTIONS[section]
    raw, fragment = cases[case]
    with pytest.raises(error) as err:
        parse(raw)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("section", SECTIONS)
def test_every_problem_in_one_error(section):
    parse, error, prefix, cases = SECTIONS[section]
    raw = cases["several"][0]
    with pytest.raises(error) as err:
        parse(raw)
    text = str(err.value)
    if section == "config":  # the file is named once, before the problems of all its sections
        assert text.startswith("dc.yaml: ")
        text = text.removeprefix("dc.yaml: ")
    problems = text.split("; ")
    assert len(problems) == len(raw) and all(p.startswith(prefix) for p in problems), problems
    for key in raw:
        assert any(key in p for p in problems), (key, problems)


def test_config_enums_in_upper_case_are_stored_canonical():
    s = config_defaults({"centroid_init": "KMEANS++", "form": "Sparse", "index_bits": "AUTO"})
    assert s.centroid_init is CentroidInit.KMEANS_PP and s.form is Form.SPARSE and s.index_bits is None
    assert s.to_dict()["centroid_init"] == "kmeans++"


def test_train_enums_in_upper_case_are_stored_canonical():
    s = train({"optimizer": "ADAMW", "lr_schedule": "Constant", "start": "BOTH", "codebook": {"optimizer": "SGD"}})
    assert s.retrain.optimizer is OptimizerKind.ADAMW and s.codebook.optimizer is OptimizerKind.SGD
    assert s.retrain.lr_schedule is LrSchedule.CONSTANT and s.start == "both"


def test_calib_section_enums_in_upper_case_are_stored_canonical():
    s = data_aware({"prune_by": "MAGNITUDE", "prune_scope": "Layer"})
    assert s.prune_by is PruneBy.MAGNITUDE and s.prune_scope == "layer"
    assert s.to_dict()["prune_by"] == "magnitude"


def test_calib_options_enums_in_upper_case_are_stored_canonical():
    spec = calib({"channels": "BGR", "layout": "NHWC"})
    assert spec.channels is Channels.BGR and spec.layout == "nhwc"


def test_calib_options_reject_an_unknown_flag():
    with pytest.raises(DataError, match="spec: unknown setting '--colour' \\(known: --size,"):
        CALIB_OPTIONS.parse({"--colour": "red"}, "spec", DataError)


def test_declarations_match_the_settings_dataclasses():
    assert SETTINGS_SECTION.names == SETTING_KEYS
    assert DATA_AWARE_SECTION.names == tuple(f.name for f in dataclasses.fields(DataAwareSettings))
    assert STAGE_SECTION.names == tuple(f.name for f in dataclasses.fields(StageSettings))
    assert {f.name for f in dataclasses.fields(TrainSettings)} <= set(TRAIN_SECTION.names)
    assert set(OPTION_FLAGS.values()) == set(CALIB_OPTIONS.names)
    assert set(OPTION_FLAGS) <= {f.name for f in dataclasses.fields(CalibSpec)}


def test_field_kinds_and_messages():
    section = Section(
        Field("ratio", float, low=0.0, high=1.0, high_open=True),
        Field("quality", float, low=0.0, low_open=True, optional=True),
        Field("bits", int, low=1, high=16, none_words=("auto",)),
        Field("count", int, low=3),
        Field("flag", bool),
        Field("mode", ("row", "layer")),
        Field("pair", lambda v: tuple(v) if isinstance(v, list) and len(v) == 2 else _raise("must be a pair")),
        Field("inner", Section(Field("lr", float, low=0.0, low_open=True, note="per step"))),
    )
    good = {"ratio": 0, "quality": None, "bits": "Auto", "count": 3, "flag": False, "mode": "ROW", "pair": [1, 2],
            "inner": {"lr": 1}}
    assert section.parse(good, "s") == {"ratio": 0.0, "quality": None, "bits": None, "count": 3, "flag": False,
                                        "mode": "row", "pair": (1, 2), "inner": {"lr": 1.0}}
    assert isinstance(section.parse(good, "s")["ratio"], float)
    bad = {"ratio": float("nan"), "quality": 0, "bits": True, "count": 2.0, "flag": "true", "mode": 1, "pair": [1],
           "inner": {"lr": -1, "x": 0}}
    problems: list[str] = []
    assert section.check(bad, "s", problems) == {"inner": {}}
    assert problems == [
        "s: ratio: nan must be a number in [0, 1)",
        "s: quality: 0 must be a positive number or null",
        "s: bits: True must be an integer in 1..16 or auto",
        "s: count: 2.0 must be an integer >= 3",
        "s: flag: 'true' must be true or false",
        "s: mode: 1 must be one of row, layer",
        "s: pair: [1] must be a pair",
        "s: inner.lr: -1 must be a positive number (per step)",
        "s: unknown setting 'inner.x' (known: lr)",
    ]
    problems = []
    section.check({"inner": 3}, "s", problems)
    assert problems == ["s: inner: expected a mapping of settings, got int"]
    problems = []
    assert section.check(None, "s", problems) == {} and problems == []
    section.check([1], "s", problems)
    assert problems == ["s: expected a mapping of settings, got list"]


def test_the_caller_mapping_is_not_changed():
    raw = {"optimizer": "ADAMW", "retrain": {"lr": 1}}
    train(raw)
    assert raw == {"optimizer": "ADAMW", "retrain": {"lr": 1}}


def test_sections_imports_only_the_standard_library_and_errors():
    path = Path(__file__).resolve().parents[1] / "onnx_dc" / "sections.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    ours = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert ours == {"onnx_dc.errors"}


def _raise(why: str):
    raise ValueError(why)
