"""Per-node compression settings: typed, validated, resolved once into an explicit plan.

Resolution order for a compressible node (docs/CONFIG.md):
``Settings()`` defaults < config ``defaults`` < CLI flags < ``by_op_type[op]`` < first
matching ``nodes`` pattern. Every problem (unknown key, bad value, pattern that matches
nothing, a shared weight asked to be compressed two ways) is collected and reported in
one :class:`ConfigError`, before any tensor is touched.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from onnx_dc.errors import ConfigError

CONFIG_VERSION = 1
COMPRESSIBLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Gather")


class CentroidInit(str, enum.Enum):
    """How k-means centroids start (the paper found linear best for accuracy)."""

    LINEAR = "linear"  # evenly spaced between min and max of the kept weights
    DENSITY = "density"  # at evenly spaced quantiles of the kept weights
    RANDOM = "random"  # class_num weights drawn at random (Forgy)
    KMEANS_PP = "kmeans++"  # scikit-learn's k-means++ seeding


class Form(str, enum.Enum):
    """Storage form of a compressed weight (docs/DCONNX.md)."""

    AUTO = "auto"
    SPARSE = "sparse"
    DENSE = "dense"


class BiasType(str, enum.Enum):
    """How a compressed layer's bias is stored (docs/DCONNX.md); float16 adds a Cast back to float32."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


@dataclass(frozen=True)
class Settings:
    """Compression settings of one weight; Caffe's CmpConvolution / CmpInnerProduct fields and more."""

    sparse_ratio: float = 0.0
    prune_quality: float | None = None
    class_num: int = 32
    quantize_term: bool = True
    centroid_init: CentroidInit = CentroidInit.LINEAR
    index_bits: int | None = None  # None: pick the width that gives the fewest bytes
    form: Form = Form.AUTO
    seed: int = 0
    skip: bool = False
    bias: BiasType = BiasType.FLOAT32

    @property
    def prunes(self) -> bool:
        """Whether this setting removes any weight."""
        return self.prune_quality is not None or self.sparse_ratio > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON / YAML output."""
        out = dataclasses.asdict(self)
        out["centroid_init"] = self.centroid_init.value
        out["form"] = self.form.value
        out["bias"] = self.bias.value
        out["index_bits"] = "auto" if self.index_bits is None else self.index_bits
        return out


SETTING_KEYS = tuple(f.name for f in dataclasses.fields(Settings))


def _check_value(key: str, value: Any) -> tuple[Any, str | None]:
    """Convert one raw setting value; returns (value, problem or None)."""
    def bad(why: str) -> tuple[Any, str]:
        return None, f"{key}: {value!r} {why}"

    if key == "sparse_ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            return bad("must be a number in [0, 1)")
        return float(value), None
    if key == "prune_quality":
        if value is None:
            return None, None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return bad("must be a positive number (threshold = quality x std(W)) or null")
        return float(value), None
    if key == "class_num":
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 256:
            return bad("must be an integer in 2..256")
        return value, None
    if key in ("quantize_term", "skip"):
        if not isinstance(value, bool):
            return bad("must be true or false")
        return value, None
    if key == "centroid_init":
        try:
            return CentroidInit(value), None
        except ValueError:
            return bad(f"must be one of {', '.join(c.value for c in CentroidInit)}")
    if key == "form":
        try:
            return Form(value), None
        except ValueError:
            return bad(f"must be one of {', '.join(f.value for f in Form)}")
    if key == "bias":
        try:
            return BiasType(value), None
        except ValueError:
            return bad(f"must be one of {', '.join(b.value for b in BiasType)}")
    if key == "index_bits":
        if value in (None, "auto"):
            return None, None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
            return bad("must be auto or an integer in 1..16")
        return value, None
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return bad("must be a non-negative integer")
        return value, None
    return None, f"unknown setting {key!r} (known: {', '.join(SETTING_KEYS)})"


def parse_settings(raw: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Validate a mapping of settings; append problems (prefixed by ``where``) instead of raising."""
    out: dict[str, Any] = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
        return out
    for key, value in raw.items():
        converted, problem = _check_value(str(key), value)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            out[str(key)] = converted
    if "sparse_ratio" in out and out.get("prune_quality") is not None:
        problems.append(f"{where}: give sparse_ratio or prune_quality, not both")
    return out


@dataclass(frozen=True)
class NodeRule:
    """One ``nodes`` entry: an fnmatch pattern over node names and weight names."""

    match: str
    settings: Mapping[str, Any]

    def matches(self, node_name: str, weight_name: str) -> bool:
        """True when the pattern matches the node's or its weight's name."""
        return fnmatch.fnmatchcase(node_name, self.match) or fnmatch.fnmatchcase(weight_name, self.match)


@dataclass(frozen=True)
class Config:
    """A parsed config file (or CLI flags): layered partial settings, not yet applied to a model."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    by_op_type: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    nodes: tuple[NodeRule, ...] = ()
    train: Mapping[str, Any] | None = None
    source: str = "<config>"
    calib: Mapping[str, Any] | None = None  # data-aware pass switches (onnx_dc/passes/data_aware.py)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy whose global defaults are updated by ``overrides`` (validated, e.g. CLI flags)."""
        problems: list[str] = []
        parsed = parse_settings(overrides, "command line", problems)
        if problems:
            raise ConfigError("; ".join(problems))
        merged = {**self.defaults, **parsed}
        if "sparse_ratio" in parsed:
            merged.pop("prune_quality", None)
        if parsed.get("prune_quality") is not None:
            merged.pop("sparse_ratio", None)
        return dataclasses.replace(self, defaults=merged)

    def settings_for(self, node_name: str, op_type: str, weight_name: str) -> tuple[Settings, str]:
        """Resolve the settings of one node; also returns which rule decided (for the report)."""
        layers: list[Mapping[str, Any]] = [self.defaults]
        origin = "defaults"
        if op_type in self.by_op_type:
            layers.append(self.by_op_type[op_type])
            origin = f"by_op_type.{op_type}"
        for rule in self.nodes:
            if rule.matches(node_name, weight_name):
                layers.append(rule.settings)
                origin = f"nodes[{rule.match}]"
                break
        merged: dict[str, Any] = {}
        for layer in layers:
            if "sparse_ratio" in layer:
                merged.pop("prune_quality", None)
            if layer.get("prune_quality") is not None:
                merged.pop("sparse_ratio", None)
            merged.update(layer)
        return Settings(**merged), origin


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validate a config mapping (as loaded from YAML) into a :class:`Config`.

    Raises:
        ConfigError: listing every problem found.
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping with defaults / by_op_type / nodes")
    known = {"version", "defaults", "by_op_type", "nodes", "train", "calib"}
    for key in raw:
        if key not in known:
            problems.append(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    version = raw.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        problems.append(f"version {version!r} is not supported (this onnx_dc reads version {CONFIG_VERSION})")
    defaults = parse_settings(raw.get("defaults") or {}, "defaults", problems)
    by_op: dict[str, dict[str, Any]] = {}
    for op, settings in (raw.get("by_op_type") or {}).items():
        if op not in COMPRESSIBLE_OPS:
            problems.append(f"by_op_type: {op!r} is not a compressible op ({', '.join(COMPRESSIBLE_OPS)})")
            continue
        by_op[op] = parse_settings(settings or {}, f"by_op_type.{op}", problems)
    rules: list[NodeRule] = []
    raw_nodes = raw.get("nodes") or []
    if not isinstance(raw_nodes, list):
        problems.append("nodes: expected a list of {match: PATTERN, ...settings}")
        raw_nodes = []
    for i, entry in enumerate(raw_nodes):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("match"), str) or not entry["match"]:
            problems.append(f"nodes[{i}]: each entry needs 'match: PATTERN' and settings")
            continue
        rest = {k: v for k, v in entry.items() if k != "match"}
        rules.append(NodeRule(entry["match"], parse_settings(rest, f"nodes[{i}] ({entry['match']})", problems)))
    train = raw.get("train")
    if train is not None and not isinstance(train, Mapping):
        problems.append("train: expected a mapping")
    calib = raw.get("calib")
    if calib is not None and not isinstance(calib, Mapping):
        problems.append("calib: expected a mapping")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return Config(defaults, by_op, tuple(rules), train, source, calib)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (binary data, e.g. a model); give the .yaml config "
                          "(docs/CONFIG.md)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(raw, str(path))


def as_config(config: Config | Mapping[str, Any] | str | Path | None) -> Config:
    """Accept a Config, a mapping, a YAML path or None (all defaults)."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    return parse_config(config)
