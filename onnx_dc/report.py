"""Where the bytes went: per-layer rows read back from a ``*.dc.onnx`` model.

Everything is derived from the compressed file itself (decoder attributes and
initializer sizes), so ``onnx-dc report`` needs nothing else; a baseline model, when
given, adds its file size. Columns follow the paper's Tables 2-5.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dc.errors import FormatError
from onnx_dc.graph import layout
from onnx_dc.graph.layout import META_NOTES, META_SKIPPED, META_SOURCE_BYTES, META_SOURCE_WEIGHT_BYTES
from onnx_dc.graph.walk import all_nodes
from onnx_dc.graph.weights import layer_name
from onnx_dc.graph.ops import PASS_THROUGH
from onnx_dc.numerics.bitpack import unpack_bits
from onnx_dc.sweep_grid import codebook_marker


@dataclass(frozen=True)
class LayerRow:
    """One compressed weight."""

    weight: str
    nodes: str
    op_type: str
    shape: tuple[int, ...]
    weights: int
    kept: int
    form: str
    class_num: int
    code_bits: int
    index_bits: int
    entries: int
    codes_bytes: int
    index_bytes: int
    codebook_bytes: int  # the codebook, and the channel scales when there are some
    coded_codes_bytes: int | None = None  # after entropy coding (.dcz), P+Q+H
    coded_index_bytes: int | None = None
    codecs: str | None = None
    positions_model: str | None = None  # .dcz: the position model chosen, and the entropy under the models
    codes_entropy_bytes: float | None = None
    positions_entropy_bytes: float | None = None
    codebook: str = "layer"  # layer, channel (the layer's codebook times a scale per channel), or group:G (one
    # codebook per G output channels; codebook_bytes counts every group's)
    scale_bytes: int = 0  # of codebook_bytes, the channel scales'

    @property
    def coded(self) -> bool:
        """Whether entropy-coded sizes are known (the row comes from a .dcz)."""
        return self.coded_codes_bytes is not None

    @property
    def coded_total_bytes(self) -> int | None:
        """Bytes of this layer in the packed file: coded streams plus the codebook (P+Q+H)."""
        if not self.coded:
            return None
        return self.coded_codes_bytes + (self.coded_index_bytes or 0) + self.codebook_bytes

    def bits_per_entry(self, nbytes: int | None) -> float | None:
        """Average bits per stored entry of a stream of ``nbytes``."""
        return None if nbytes is None or not self.entries else 8.0 * nbytes / self.entries

    @property
    def kept_pct(self) -> float:
        """Percent of weights kept."""
        return 100.0 * self.kept / self.weights if self.weights else 0.0

    @property
    def total_bytes(self) -> int:
        """Bytes of this layer's compressed tensors."""
        return self.codes_bytes + self.index_bytes + self.codebook_bytes

    @property
    def dense_bytes(self) -> int:
        """Bytes as float32."""
        return 4 * self.weights

    @property
    def ratio(self) -> float:
        """Dense float32 bytes / compressed bytes."""
        return self.dense_bytes / self.total_bytes if self.total_bytes else float("inf")

    def to_dict(self) -> dict:
        """Plain values, derived columns included."""
        d = asdict(self)
        d.update(kept_pct=round(self.kept_pct, 3), total_bytes=self.total_bytes, dense_bytes=self.dense_bytes,
                 ratio=round(self.ratio, 3))
        if self.coded:
            d.update(coded_total_bytes=self.coded_total_bytes,
                     coded_ratio=round(self.dense_bytes / self.coded_total_bytes, 3),
                     weight_bits_pq=self.code_bits or 32, index_bits_pq=self.index_bits,
                     weight_bits_pqh=round(self.bits_per_entry(self.coded_codes_bytes), 3),
                     index_bits_pqh=round(self.bits_per_entry(self.coded_index_bytes), 3) if self.index_bits else 0)
        return d


@dataclass(frozen=True)
class Report:
    """Per-layer rows, skipped parameters and totals of a compressed model."""

    layers: tuple[LayerRow, ...]
    skipped: tuple[tuple[str, str, str, str], ...]
    file_bytes: int | None
    dense_weight_bytes: int | None  # all float parameters of the source model, as float32
    source_file_bytes: int | None
    notes: tuple[str, ...] = ()

    def totals(self) -> dict:
        """Sums over compressed layers, and whole-file ratios."""
        weights = sum(r.weights for r in self.layers)
        kept = sum(r.kept for r in self.layers)
        compressed = sum(r.total_bytes for r in self.layers)
        out = {
            "layers": len(self.layers),
            "weights": weights,
            "kept": kept,
            "kept_pct": round(100.0 * kept / weights, 3) if weights else 0.0,
            "compressed_bytes": compressed,
            "dense_bytes": 4 * weights,
            "layers_ratio": round(4 * weights / compressed, 3) if compressed else None,
            "file_bytes": self.file_bytes,
            "dense_weight_bytes": self.dense_weight_bytes,
            "source_file_bytes": self.source_file_bytes,
        }
        if self.layers and all(r.coded for r in self.layers):
            coded = sum(r.coded_total_bytes for r in self.layers)
            out["coded_bytes"] = coded
            out["layers_ratio_coded"] = round(4 * weights / coded, 3) if coded else None
        if self.file_bytes:
            if self.dense_weight_bytes:
                out["ratio_vs_dense_weights"] = round(self.dense_weight_bytes / self.file_bytes, 3)
            if self.source_file_bytes:
                out["ratio_vs_source_file"] = round(self.source_file_bytes / self.file_bytes, 3)
        return out

    def to_json(self) -> str:
        """Machine-readable report."""
        return json.dumps({
            "layers": [r.to_dict() for r in self.layers],
            "skipped": [dict(zip(("node", "op_type", "tensor", "reason"), s)) for s in self.skipped],
            "notes": list(self.notes),
            "totals": self.totals(),
        }, indent=2)

    def to_table(self, verbose: bool = False) -> str:
        """Human-readable table; skipped tensors grouped by reason, or one line each when ``verbose``."""
        coded = bool(self.layers) and all(r.coded for r in self.layers)
        head = ("layer", "op", "shape", "weights", "kept%", "K", "code b", "idx b", "form",
                "codes B", "index B", "codebook B", "ratio")
        if coded:
            head += ("w bits P+Q+H", "idx bits P+Q+H", "ratio P+Q+H", "position model", "H codes B", "H idx B")
        rows = [head]
        for r in self.layers:
            row = (r.nodes, r.op_type, "x".join(map(str, r.shape)), str(r.weights), f"{r.kept_pct:.1f}",
                   _k(r), str(r.code_bits or "-"), str(r.index_bits or "-"), r.form,
                   str(r.codes_bytes), str(r.index_bytes), str(r.codebook_bytes), f"{r.ratio:.1f}x")
            if coded:
                idx = r.bits_per_entry(r.coded_index_bytes) if r.index_bits else None
                row += (f"{r.bits_per_entry(r.coded_codes_bytes):.2f}", f"{idx:.2f}" if idx is not None else "-",
                        f"{r.dense_bytes / r.coded_total_bytes:.1f}x", r.positions_model or "-",
                        _fmt_bytes(r.codes_entropy_bytes), _fmt_bytes(r.positions_entropy_bytes))
            rows.append(row)
        t = self.totals()
        total = ("total", "", "", str(t["weights"]), f"{t['kept_pct']:.1f}", "", "", "", "",
                 str(sum(r.codes_bytes for r in self.layers)), str(sum(r.index_bytes for r in self.layers)),
                 str(sum(r.codebook_bytes for r in self.layers)),
                 f"{t['layers_ratio']:.1f}x" if t["layers_ratio"] else "-")
        if coded:
            total += ("", "", f"{t['layers_ratio_coded']:.1f}x" if t.get("layers_ratio_coded") else "-", "", "", "")
        rows.append(total)
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        left = (0, 1, 2, 8, 16)  # text columns
        lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        if self.file_bytes:
            if self.dense_weight_bytes:
                lines.append(f"file: {self.file_bytes} B; dense float32 weights: {self.dense_weight_bytes} B "
                             f"({self.dense_weight_bytes / self.file_bytes:.1f}x)")
            if self.source_file_bytes:
                lines.append(f"source file: {self.source_file_bytes} B ({self.source_file_bytes / self.file_bytes:.1f}x)")
        lines.extend(self.notes)
        lines += skipped_lines(self.skipped, verbose)
        return "\n".join(lines)


def _k(row: LayerRow) -> str:
    """The K column: class_num, marked ``/ch`` with channel scales, ``/gG`` with a codebook per G channels."""
    return f"{row.class_num}{codebook_marker(row.codebook)}" if row.class_num else "-"


# The config rule that skipped a tensor, e.g. " (nodes[conv1])": one group for all such tensors.
_ORIGIN = re.compile(r" \((?:nodes\[.*\]|by_op_type\.[^)]*|defaults)\)$")


def skipped_lines(skipped: Sequence[tuple[str, str, str, str]], verbose: bool = False, names: int = 3) -> list[str]:
    """"not compressed" lines: one per reason with a count and the first ``names`` tensors, or one per tensor.

    A reason that only one tensor has keeps the one-tensor line.
    """
    if verbose:
        return [f"not compressed: {node} ({op}) {tensor}: {reason}" for node, op, tensor, reason in skipped]
    groups: dict[str, list[tuple[str, str, str, str]]] = {}
    for item in skipped:
        groups.setdefault(_ORIGIN.sub("", item[3]), []).append(item)
    lines = []
    for reason, items in groups.items():
        if len(items) == 1:
            node, op, tensor, full = items[0]
            lines.append(f"not compressed: {node} ({op}) {tensor}: {full}")
            continue
        shown = ", ".join(t for _, _, t, _ in items[:names]) + (", ..." if len(items) > names else "")
        lines.append(f"not compressed: {len(items)} tensors, {reason}: {shown}")
    if any(len(items) > 1 and len(items) > names for items in groups.values()):
        lines.append("(--verbose lists every tensor)")
    return lines


def layer_rows(model: onnx.ModelProto) -> tuple[LayerRow, ...]:
    """One row per decoder node of a compressed model, in graph order."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = _weight_consumers(graph)
    rows = []
    for node in layout.decoder_nodes(graph):
        dec = layout.read_decoder(node)
        size = {role: _nbytes(inits[name]) for role, name in dec.inputs.items()}
        if dec.kind == layout.SPARSE_VALUES:
            kept = int(np.count_nonzero(numpy_helper.to_array(inits[dec.inputs["values"]])))
            codes_b, book_b = size["values"], 0
        else:
            codes = unpack_bits(numpy_helper.to_array(inits[dec.inputs[layout.CODES]]), dec.code_bits, dec.count)
            kept = int(np.count_nonzero(codes)) if dec.reserves_zero else dec.count
            codes_b, book_b = size[layout.CODES], size["codebook"] + size.get(layout.SCALE, 0)
        used = consumers.get(dec.weight, [])
        rows.append(LayerRow(
            weight=dec.weight,
            nodes=layer_name([n for n, _ in used], dec.weight, with_weight=False),  # JSON: "weight"
            op_type=",".join(sorted({op for _, op in used})) or "-",
            shape=dec.shape,
            weights=dec.numel,
            kept=kept,
            form=layout.FORM_NAMES[dec.kind],
            class_num=dec.settings.class_num if dec.settings.quantize_term else 0,
            code_bits=dec.code_bits,
            index_bits=dec.index_bits,
            entries=dec.count,
            codes_bytes=codes_b,
            index_bytes=size.get(layout.GAPS, 0),
            codebook_bytes=book_b,
            codebook="channel" if dec.scaled else f"group:{dec.groups[0]}" if dec.groups else "layer",
            scale_bytes=size.get(layout.SCALE, 0),
        ))
    return tuple(rows)


def make_report(
    model: onnx.ModelProto,
    file_bytes: int | None = None,
    baseline_bytes: int | None = None,
    streams: list[dict] | None = None,
    name: str = "model",
) -> Report:
    """Build the report of a compressed model.

    Args:
        model: the ``*.dc.onnx`` model.
        file_bytes: size of the file reported on (``.dc.onnx`` or ``.dcz``).
        baseline_bytes: size of the original model; overrides the size recorded at compression.
        streams: ``onnx_dc.formats.dcz.stream_report`` rows of a ``.dcz``, for the P+Q+H columns.
        name: the model's name in error messages.

    Raises:
        FormatError: when a metadata record onnx_dc wrote cannot be read back.
    """
    meta = layout.metadata(model)
    try:
        skipped = tuple(tuple(s) for s in layout.skipped_entries(meta, model.graph))
    except json.JSONDecodeError as exc:
        raise _corrupt(name, META_SKIPPED, meta, f"not JSON: {exc.msg}") from None
    source = baseline_bytes if baseline_bytes is not None else _count(meta, META_SOURCE_BYTES, name)
    rows = layer_rows(model)
    if streams is not None:
        by_name = {s["name"]: s for s in streams}
        rows = tuple(_with_coded(r, by_name.get(r.weight)) for r in rows)
    try:
        notes = tuple(json.loads(meta.get(META_NOTES, "[]")))
    except json.JSONDecodeError as exc:
        raise _corrupt(name, META_NOTES, meta, f"not JSON: {exc.msg}") from None
    return Report(rows, skipped, file_bytes, _count(meta, META_SOURCE_WEIGHT_BYTES, name), source, notes)


def _with_coded(row: LayerRow, stream: dict | None) -> LayerRow:
    """A row with its entropy-coded stream sizes (streams the packer left as they were keep their size)."""
    if row.form == "sparse-f32":
        codes = row.codes_bytes  # float values are not entropy-coded
        index = stream["gaps_coded_bytes"] if stream else row.index_bytes
        codecs = f"values=raw gaps={stream['gaps_codec'] if stream else 'stored'}"
    else:
        codes = stream["codes_coded_bytes"] if stream else row.codes_bytes
        index = (stream["gaps_coded_bytes"] if stream else row.index_bytes) if row.index_bits else 0
        codecs = f"codes={stream['codes_codec'] if stream else 'stored'}"
        if row.index_bits:
            codecs += f" gaps={stream['gaps_codec'] if stream else 'stored'}"
    models = {} if stream is None else {k: stream[k] for k in ("codes_entropy_bytes", "positions_entropy_bytes")}
    if stream and row.index_bits:
        models["positions_model"] = stream["positions_model"]
    if row.form == "sparse-f32":
        models.pop("codes_entropy_bytes", None)
    return dataclasses.replace(row, coded_codes_bytes=codes, coded_index_bytes=index, codecs=codecs, **models)


def _fmt_bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _count(meta: dict[str, str], key: str, name: str) -> int | None:
    """The whole number a metadata record holds; None when the file has no such record."""
    text = meta.get(key)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise _corrupt(name, key, meta, "not a whole number") from None


def _corrupt(name: str, key: str, meta: dict[str, str], why: str) -> FormatError:
    value = meta[key] if len(meta[key]) <= 40 else meta[key][:40] + "..."
    return FormatError(f"{name}: metadata {key} holds {value!r}, {why}; the file was altered after "
                       "compression: compress the original model again")


def _nbytes(tensor: onnx.TensorProto) -> int:
    return int(numpy_helper.to_array(tensor).nbytes)


def _weight_consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[str, str]]]:
    """Weight name -> (node, op_type) of the nodes that read it, looking through pass-through ops."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in all_nodes(graph):  # subgraphs read weights from the outer scope
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out: dict[str, list[tuple[str, str]]] = {}
    for node in layout.decoder_nodes(graph):
        frontier, seen, visited = [node.output[0]], [], set()
        while frontier:
            name = frontier.pop(0)
            for reader in readers.get(name, []):
                if reader.op_type in PASS_THROUGH + ("Slice", "Concat"):  # Slice / Concat: gate reordering
                    if reader.output[0] not in visited:
                        visited.add(reader.output[0])
                        frontier.append(reader.output[0])
                elif (reader.name, reader.op_type) not in seen:
                    seen.append((reader.name, reader.op_type))
        out[node.output[0]] = seen
    return out
