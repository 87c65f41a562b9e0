"""Which ops label-free fine-tuning trains through: onnxruntime-training's gradient, an onnx_dc equivalent, or none.

Three lists of op types, each probed the same way (onnx_dc.train.gradients.node_gradient): the
node alone, its data input (the first float input the ONNX schema calls differentiable) scaled by a
trained scalar, its other inputs fixed, its float outputs summed into the loss; onnxruntime-training
1.19 builds that gradient graph and opens its CPU module, or says why not. Then the same with the
training graph's equivalents (onnx_dc.train.equivalents) applied first.

- every default-domain ONNX op of opsets 11-21, on an instance from onnx's own node test cases
  (run in onnxruntime first: no CPU kernel, no probe);
- the op types (with the attributes that decide the probe: LSTM activations, Resize mode, ...) of
  every model in ../shared/data/real, minilm included, on each model's own node and shapes (the model
  normalized as compression and fine-tuning see it: opset 13 at least);
- marked among the first: the ops torch.onnx exports most.

Status of each: ``gradient`` (onnxruntime-training's own), ``equivalent`` (only with onnx_dc's
rewrite), ``none`` (neither; the reason is kept), ``stops`` (no differentiable float input or no
float output: the gradient stops there, as for Shape or Cast to int), ``unknown`` (a model's node
whose input shapes shape inference does not give), ``no kernel`` (onnxruntime 1.19 cannot run the
instance on CPU).

    python scripts/audit_ops.py [--json tests/data/op_audit.json] [--markdown docs/OPS.md]
        [--real ../shared/data/real] [--ops Relu,LSTM,...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc.graph.io import MAX_IR_VERSION, MAX_OPSET  # noqa: E402
from onnx_dc.graph.normalize import normalize  # noqa: E402
from onnx_dc.train.equivalents import differentiable_equivalents  # noqa: E402
from onnx_dc.train.gradients import node_gradient, types_of  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real"
OPSETS = (11, MAX_OPSET)
# the ops torch.onnx (TorchScript exporter, opsets 11-18) writes most for today's CNNs and transformers
TORCH_EXPORTS = ("Gelu", "Erf", "HardSigmoid", "HardSwish", "Mish", "Softplus", "Resize", "Einsum",
                 "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Where", "Expand", "CumSum",
                 "Conv", "ConvTranspose", "MatMul", "Gemm", "Softmax", "LogSoftmax", "Relu", "Sigmoid", "Tanh",
                 "LeakyRelu", "Elu", "Selu", "PRelu", "Clip", "BatchNormalization", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Pad", "Concat", "Split", "Slice", "Gather", "Reshape", "Transpose",
                 "Unsqueeze", "Squeeze", "Flatten", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div", "Mul", "Add",
                 "Sub", "Neg", "Exp", "Log", "Abs", "Max", "Min", "Range", "Shape", "Cast", "Equal",
                 "ConstantOfShape", "LSTM", "GRU", "Dropout", "Tile", "TopK", "ScatterND", "DepthToSpace",
                 "SpaceToDepth", "Upsample", "ArgMax", "Not", "And", "Less", "Greater", "IsNaN")
# attributes that decide whether an op trains (what a model's op kinds are told apart by)
DECIDING = {"LSTM": ("activations", "direction", "layout", "clip", "input_forget"),
            "GRU": ("activations", "direction", "layout", "clip", "linear_before_reset"),
            "RNN": ("activations", "direction", "layout", "clip"),
            "Resize": ("mode", "coordinate_transformation_mode", "nearest_mode", "antialias"),
            "Upsample": ("mode",), "DepthToSpace": ("mode",), "BatchNormalization": ("training_mode",),
            "Einsum": ("equation",)}
CONTROL_FLOW = {"If": {"status": "equivalent", "reason": "the branch every sample takes, inlined (onnx_dc.train.branches)"},
                "Loop": {"status": "none", "reason": "control flow: Loop is not unrolled"},
                "Scan": {"status": "none", "reason": "control flow: Scan is not unrolled"}}
_UNREACHABLE = "as it's unreachable from the output"
STATUSES = ("gradient", "equivalent", "none", "stops", "unknown", "no kernel")


def _schema(op: str, domain: str = "", version: int = MAX_OPSET):
    try:
        return onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return None


def differentiable_inputs(node: onnx.NodeProto, version: int = MAX_OPSET) -> list[bool]:
    """Per input of ``node``: differentiable by its schema (unknown: yes, the probe decides)."""
    schema = _schema(node.op_type, node.domain, version)
    if schema is None or not schema.inputs:
        return [True] * len(node.input)
    out = []
    for i in range(len(node.input)):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)]
        out.append(formal.differentiation_category != onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable)
    return out


def status_of(model: onnx.ModelProto, node: onnx.NodeProto, on_path: set[str], constants: dict,
              types: dict | None = None) -> dict:
    """The node's status and, where it does not train, why."""
    types = types if types is not None else types_of(model)
    status, failure = node_gradient(model, node, on_path, types, constants)
    if status == "fails" and _UNREACHABLE in failure:
        status = "stops"  # onnxruntime-training passes no gradient to that input, by design
    if status != "fails":
        return {"status": status}
    status, after = node_gradient(model, node, on_path, types, constants, rewrite=differentiable_equivalents)
    if status in ("gradient", "stops"):
        return {"status": "equivalent", "native": failure}
    return {"status": "none", "reason": after or failure}


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for name in DECIDING.get(node.op_type, ()):
        for a in node.attribute:
            if a.name == name:
                value = oh.get_attribute_value(a)
                value = [v.decode() if isinstance(v, bytes) else v for v in value] if isinstance(value, list) else value
                out[name] = value.decode() if isinstance(value, bytes) else value
    return out


# ------------------------------------------------------------------------------------------ ONNX ops


def onnx_ops(only: set[str] | None = None) -> list[str]:
    """Default-domain ops with a schema in opsets 11-21 (not deprecated)."""
    names = set()
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "" and schema.since_version <= OPSETS[1] and not schema.deprecated:
            names.add(schema.name)
    return sorted(n for n in names if only is None or n in only)


def _test_cases(only: set[str] | None) -> dict[str, list]:
    from onnx.backend.test.case.node import collect_testcases

    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = collect_testcases(None)
    by_op = collections.defaultdict(list)
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        ops = {n.op_type for n in case.model.graph.node}
        if len(case.model.graph.node) == 1 and (only is None or ops & only):
            by_op[case.model.graph.node[0].op_type].append(case)
    return by_op


def _at_opset(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The test model at an opset onnxruntime 1.19 runs (<= 21), or None."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = MAX_IR_VERSION
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = min(o.version, OPSETS[1])
    return out


def _runs(model: onnx.ModelProto, feeds: dict) -> bool:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception:  # noqa: BLE001 -- any refusal means: no CPU kernel for this instance
        return False
    return True


def _synthetic(model: onnx.ModelProto) -> dict | None:
    """Random float / zero integer feeds of the model's declared static input types, or None."""
    feeds = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if not t.HasField("shape") or any(d <= 0 for d in dims):
            return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        rng = np.random.default_rng(0)
        feeds[vi.name] = (rng.normal(size=dims) if dtype.kind == "f" else np.zeros(dims)).astype(dtype)
    return feeds


def _as_float32(model: onnx.ModelProto, feeds: dict) -> bool:
    """Turn, in place, the model's float64 inputs and outputs into float32; False when it has none."""
    changed = False
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
            changed = True
    for name, value in list(feeds.items()):
        if value.dtype == np.float64:
            feeds[name] = value.astype(np.float32)
    return changed


def _data_input(node: onnx.NodeProto, is_float) -> set[str]:
    """The input the probe trains through: the first differentiable float one (the data path)."""
    diff = differentiable_inputs(node)
    for i, name in enumerate(node.input):
        if name and diff[i] and is_float(name):
            return {name}
    return set()


def _split_inputs(node: onnx.NodeProto, feeds: dict) -> tuple[set[str], dict]:
    """The node's data input (trained in the probe), and the rest as fixed values."""
    on_path = _data_input(node, lambda name: feeds[name].dtype == np.float32)
    constants = {name: numpy_helper.from_array(feeds[name], name) for name in node.input
                 if name and name not in on_path}  # fixed values: what equivalents need known (scales, axes, shapes)
    return on_path, constants


def audit_onnx_ops(only: set[str] | None = None) -> list[dict]:
    rows = []
    cases = _test_cases(only)
    for op in onnx_ops(only):
        row = {"op": op, "torch_export": op in TORCH_EXPORTS}
        instances = cases.get(op, [])
        if not instances:
            rows.append({**row, "status": "no instance"})
            continue
        if op in CONTROL_FLOW:
            rows.append({**row, **CONTROL_FLOW[op]})
            continue
        chosen = None
        candidates = [(case, False) for case in instances] + [(case, True) for case in instances]
        for case, as_float in candidates:  # the first that runs, preferring one with a float32 differentiable input
            if as_float and chosen is not None and chosen[3][0]:
                break
            model = _at_opset(case.model)
            inputs, _ = case.data_sets[0]
            if not all(vi.type.HasField("tensor_type") for vi in model.graph.input):
                continue  # sequence and optional inputs: ops of no float path
            feeds = {vi.name: np.asarray(v) for vi, v in zip(model.graph.input, inputs)}
            if as_float:  # float64 test data (Einsum's): the same case in float32
                if not _as_float32(model, feeds):
                    continue
            if not _runs(model, feeds):
                feeds = _synthetic(model)  # test data stored in another form (Cast's strings)
                if feeds is None or not _runs(model, feeds):
                    continue
            split = _split_inputs(model.graph.node[0], feeds)
            if chosen is None or (split[0] and not chosen[3][0]):
                chosen = (case, model, feeds, split)
            if split[0]:
                break
        if chosen is None:
            rows.append({**row, "status": "no kernel", "case": instances[0].name})
            continue
        case, model, feeds, (on_path, constants) = chosen
        node = model.graph.node[0]
        rows.append({**row, "case": case.name, **status_of(model, node, on_path, constants)})
    return rows


# ------------------------------------------------------------------------------------------ real models


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _graphs(sub)


def audit_models(folder: Path) -> list[dict]:
    """Each (op, deciding attributes) of the models under ``folder``, probed on its first node."""
    kinds: dict[tuple, dict] = {}
    for path in sorted(folder.rglob("*.onnx")):
        model = normalize(onnx.load(path), str(path), copy=False)  # as fine-tuning sees it (opset >= 13)
        name = str(path.relative_to(folder))
        types = None
        for graph in _graphs(model.graph):
            produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
            inits = {t.name: t for t in graph.initializer}
            constants = dict(inits)
            for n in graph.node:
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                    constants[n.output[0]] = n.attribute[0].t
            for node in graph.node:
                key = (node.domain or "", node.op_type, json.dumps(_attrs(node), sort_keys=True))
                entry = kinds.setdefault(key, {"op": node.op_type, "domain": node.domain or "", "attrs": _attrs(node),
                                               "models": collections.Counter()})
                entry["models"][name] += 1
                if "status" in entry or graph is not model.graph:
                    continue
                if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                    entry.update(status="equivalent" if node.op_type == "If" else "none",
                                 reason="control flow: If trains the branch every sample takes (onnx_dc.train.branches)"
                                 if node.op_type == "If" else "control flow (Loop / Scan) is not unrolled")
                    continue
                if types is None:
                    types = types_of(model)
                elem = {k: v.tensor_type.elem_type for k, v in types.items() if v.HasField("tensor_type")}
                entry.update(status_of(model, node, _data_input(node, lambda i: i in produced and i not in constants
                                                                and elem.get(i) == TensorProto.FLOAT),
                                       constants, types))
    rows = []
    for entry in kinds.values():
        entry["models"] = dict(sorted(entry["models"].items()))
        entry.setdefault("status", "stops")  # only inside subgraphs: not probed alone (see If)
        rows.append(entry)
    return sorted(rows, key=lambda r: (r["op"], json.dumps(r["attrs"], sort_keys=True)))


# ------------------------------------------------------------------------------------------ output


def counts(rows: list[dict]) -> dict:
    c = collections.Counter(r["status"] for r in rows)
    return {s: c.get(s, 0) for s in (*STATUSES, "no instance") if c.get(s, 0) or s in STATUSES}


def markdown(result: dict) -> str:
    ops, models = result["onnx_ops"], result["models"]
    lines = ["# Which ops fine-tuning trains through", "",
             "Written by `python scripts/audit_ops.py` (onnxruntime-training "
             f"{result['onnxruntime']}, onnx {result['onnx']}); `tests/data/op_audit.json` holds the same.",
             "Each op is probed alone: its data input (first differentiable float input) trained, its float outputs summed into a loss.",
             "**gradient**: onnxruntime-training's own; **equivalent**: only through onnx_dc's rewrite "
             "(`onnx_dc/train/equivalents.py`, named in the op table); **none**: neither; **stops**: no "
             "differentiable float input or no float output (the gradient stops there, it never blocks); "
             "**unknown**: input shapes not inferred; **no kernel**: onnxruntime 1.19 cannot run the op's test instance on CPU.", "",
             "## Counts", "", "| list | " + " | ".join(STATUSES) + " |", "|---|" + "---|" * len(STATUSES)]
    for title, rows in (("ONNX ops, opsets 11-21", ops), ("of them, exported by torch.onnx most",
                                                           [r for r in ops if r["torch_export"]]),
                        ("op kinds in ../shared/data/real", models)):
        c = counts(rows)
        lines.append(f"| {title} ({len(rows)}) | " + " | ".join(str(c.get(s, 0)) for s in STATUSES) + " |")
    lines += ["", "## The models' ops (../shared/data/real)", "", "| op | attributes | status | models | why not |",
              "|---|---|---|---|---|"]
    for r in models:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(r["attrs"].items()))
        used = ", ".join(f"{m} ({n})" for m, n in r["models"].items())
        lines.append(f"| {r['op']} | {attrs} | {r['status']} | {used} | {r.get('reason', '')} |")
    lines += ["", "## ONNX ops without a gradient of their own", "", "| op | torch.onnx | status | why not |",
              "|---|---|---|---|"]
    for r in ops:
        if r["status"] in ("equivalent", "none", "no kernel", "no instance"):
            why = r.get("reason") or r.get("native", "")
            lines.append(f"| {r['op']} | {'yes' if r['torch_export'] else ''} | {r['status']} | {why.replace('|', '/')} |")
    gradient = ", ".join(r["op"] for r in ops if r["status"] == "gradient")
    stops = ", ".join(r["op"] for r in ops if r["status"] == "stops")
    lines += ["", f"**With a gradient of their own:** {gradient}.", "", f"**Stopping the gradient:** {stops}.", ""]
    return "\n".join(lines)


def audit(real: Path | None, only: set[str] | None = None) -> tuple[dict, float]:
    """The audit's results (the same bytes for the same onnxruntime and models) and the seconds it took."""
    import onnxruntime

    start = time.perf_counter()
    result = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "opsets": list(OPSETS),
              "onnx_ops": audit_onnx_ops(only),
              "models": audit_models(real) if real is not None and real.is_dir() else []}
    result["counts"] = {"onnx_ops": counts(result["onnx_ops"]),
                        "torch_exports": counts([r for r in result["onnx_ops"] if r["torch_export"]]),
                        "models": counts(result["models"])}
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "tests" / "data" / "op_audit.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "OPS.md")
    parser.add_argument("--real", type=Path, default=REAL, help="folder of models to list the ops of")
    parser.add_argument("--ops", default="", help="comma-separated op types (default: all)")
    args = parser.parse_args(argv)
    only = set(args.ops.split(",")) if args.ops else None
    result, seconds = audit(args.real, only)
    text = json.dumps(result, indent=1, sort_keys=True, default=str) + "\n"
    if only is None:
        for path, content in ((args.json, text), (args.markdown, markdown(result))):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(content)
            os.replace(partial, path)
    print(f"{'list':<34}" + "".join(f"{s:>12}" for s in STATUSES))
    for key, c in result["counts"].items():
        print(f"{key:<34}" + "".join(f"{c.get(s, 0):>12}" for s in STATUSES))
    print(f"{seconds:.1f} s" + ("" if only is None else " (subset: nothing written)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
