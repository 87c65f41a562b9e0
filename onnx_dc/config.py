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
from onnx_dc.graph.ops import compressible as compressible_ops
from onnx_dc.sections import Field, Section
from onnx_dc.sweep_grid import split_codebook

CONFIG_VERSION = 1


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


class Codebook(str, enum.Enum):
    """How finely a layer's shared values are shared (docs/DCONNX.md)."""

    LAYER = "layer"  # one codebook for the whole layer (the paper)
    CHANNEL = "channel"  # the layer's codebook times a float16 scale per output channel
    GROUP = "group"  # one codebook per group of group_rows output channels


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
    codebook: Codebook = Codebook.LAYER
    group_rows: int = 8  # output channels per codebook with codebook: group (``codebook: group:G`` sets both)

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
        out["codebook"] = codebook_text(self)
        out["index_bits"] = "auto" if self.index_bits is None else self.index_bits
        return out


def parse_codebook(value: Any) -> tuple[Codebook, int | None]:
    """A ``codebook`` setting: ``layer``, ``channel``, ``group`` or ``group:G`` (G output channels per codebook).

    Returns the kind and G (None when not given). Raises ValueError("must be ...") otherwise.
    """
    kind, rows = split_codebook(value.value if isinstance(value, Codebook) else value)
    return Codebook(kind), rows


def codebook_text(s: Settings) -> str:
    """The ``codebook`` setting as written in configs: ``layer``, ``channel`` or ``group:G``."""
    return f"group:{s.group_rows}" if s.codebook == Codebook.GROUP else s.codebook.value


SETTING_KEYS = tuple(f.name for f in dataclasses.fields(Settings))


SETTINGS_SECTION = Section(
    Field("sparse_ratio", float, low=0.0, high=1.0, high_open=True),
    Field("prune_quality", float, low=0.0, low_open=True, optional=True, note="threshold = quality x std(W)"),
    Field("class_num", int, low=2, high=256),
    Field("quantize_term", bool),
    Field("centroid_init", CentroidInit),
    Field("index_bits", int, low=1, high=16, none_words=("auto",)),
    Field("form", Form),
    Field("seed", int, low=0),
    Field("skip", bool),
    Field("bias", BiasType),
    Field("codebook", parse_codebook, note="channel: a float16 scale per output channel times the layer's "
          "codebook; group:G: one codebook per G output channels"),
    Field("group_rows", int, low=1, note="output channels per codebook with codebook: group"),
)


def parse_settings(raw: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Validate a mapping of settings; append problems (prefixed by ``where``) instead of raising."""
    out = SETTINGS_SECTION.check(raw, where, problems)
    if "codebook" in out:  # (kind, G): ``group:G`` sets group_rows too
        out["codebook"], rows = out["codebook"]
        if rows is not None:
            out["group_rows"] = rows
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
        if op not in compressible_ops():
            problems.append(f"by_op_type: {op!r} is not a compressible op ({', '.join(compressible_ops())})")
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
