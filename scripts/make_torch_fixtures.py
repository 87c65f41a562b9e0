"""Export small PyTorch models to ONNX with both of torch's exporters, as test fixtures.

torch is a tool for making these files, not a dependency of onnx_dc. Run it from a
separate environment::

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.13.0 onnx onnxscript numpy
    .venv-torch/bin/python scripts/make_torch_fixtures.py          # writes tests/fixtures/torch/

Each model is exported by the TorchScript exporter (``dynamo=False``, opset 17) and
by the dynamo exporter (``dynamo=True``, opset 18, its lowest), with its default
``optimize=True``; ``bn_cnn`` and ``shared`` also with ``optimize=False``, whose graphs
differ in the ways the compressor must handle (file ``<model>.<exporter>.onnx``, the
exporter being ``torchscript``, ``dynamo`` or ``dynamo_noopt``). Every saved file has
IR version 10 and its opset set explicitly, a dynamic batch dimension ``N``, input
``x`` and output ``y``. Node-level doc strings and metadata (the dynamo exporter's
stack traces, which hold local file paths) are removed; nothing else is changed.
Next to them, ``<model>.npz`` holds a sample input ``x`` and torch's output ``y``.
Seeds are fixed and the files are written byte for byte the same on every run.

Models:
- ``mlp``: 784-64-10 with ReLU.
- ``lenet``: LeNet-5 layout at reduced widths (conv 6 5x5, max-pool 2, conv 16 5x5,
  max-pool 2, fc 120, fc 10) to keep the fixtures small.
- ``bn_cnn``: conv 8 3x3, BatchNorm, ReLU, max-pool, conv 16 3x3, BatchNorm, ReLU,
  global average pool, fc 10; BatchNorm statistics set to non-trivial values.
- ``shared``: one ``nn.Linear(16, 16)`` applied twice, and an encoder weight reused
  transposed by the decoder (``F.linear(h, enc.weight.t())``): tied weights.

What each exporter produced for the weights (torch 2.13.0, onnxscript 0.7.2; the
script prints it for every file):
- No ``MatMul`` anywhere: every ``nn.Linear`` (2-D input) is a ``Gemm`` with
  ``transB=1`` on the (out, in) weight initializer, in all three exports. Convolutions
  are ``Conv`` with weight and bias initializers.
- TorchScript: BatchNorm (eval mode) is folded into the preceding ``Conv``: new
  initializers named ``onnx::Conv_<n>``, no BatchNormalization node. The shared
  ``mid`` Linear is one initializer read by two Gemm nodes. The tied weight stays one
  initializer ``enc.weight``, read by the encoder's Gemm (``transB=1``) and by the
  decoder's Gemm with ``transB=0``.
- dynamo (optimize=True): BatchNorm is also folded into the ``Conv`` (the folded
  values keep the names ``conv1.weight`` / ``conv2.weight``). The shared ``mid`` Linear
  is one initializer read by two Gemms. The tie is lost: the optimizer folds the
  ``Transpose`` into a second initializer ``t`` (32 x 16) holding ``enc.weight``
  transposed, read by a Gemm with ``transB=1``. Shape constants (ReduceMean axes,
  Reshape shape) are int64 initializers too.
- dynamo_noopt (optimize=False): BatchNorm is a ``BatchNormalization`` node after the
  ``Conv`` (initializers ``bn1.weight``, ``bn1.bias``, ``bn1.running_mean``,
  ``bn1.running_var``). The tied weight is one initializer ``enc.weight`` read by the
  encoder's Gemm and, through a ``Transpose`` node, by the decoder's Gemm.
  Shape constants are ``Constant`` nodes.
- No exporter put a weight in a ``Constant`` node: all float weights are initializers.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torch"
IR_VERSION = 10
EXPORTERS = {  # name -> export options
    "torchscript": {"dynamo": False, "opset_version": 17},
    "dynamo": {"dynamo": True, "opset_version": 18, "optimize": True},
    "dynamo_noopt": {"dynamo": True, "opset_version": 18, "optimize": False},
}
MODELS = {  # name -> exporters used
    "mlp": ("torchscript", "dynamo"),
    "lenet": ("torchscript", "dynamo"),
    "bn_cnn": ("torchscript", "dynamo", "dynamo_noopt"),
    "shared": ("torchscript", "dynamo", "dynamo_noopt"),
}
SIZE_LIMIT = 1_000_000  # all fixtures together, bytes


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BnCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(32, 16)
        self.mid = nn.Linear(16, 16)
        self.dec_bias = nn.Parameter(torch.zeros(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.enc(x))
        h = F.relu(self.mid(h))
        h = F.relu(self.mid(h))  # the same weight a second time
        return F.linear(h, self.enc.weight.t(), self.dec_bias)  # tied, transposed


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm layers statistics and affine parameters other than the identity."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, seeded weights) and a sample input of batch 4."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model, shape = {
        "mlp": (MLP, (4, 784)),
        "lenet": (LeNet, (4, 1, 28, 28)),
        "bn_cnn": (BnCNN, (4, 1, 12, 12)),
        "shared": (Shared, (4, 32)),
    }[name]
    module = model()
    with torch.no_grad():
        _randomize_batchnorm(module, generator)
        if name == "shared":
            module.dec_bias.copy_(torch.randn(32, generator=generator) * 0.1)
    x = torch.rand(shape, generator=generator)
    return module.eval(), x


def export(model: nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    """Export with one of torch's exporters (a key of EXPORTERS); batch dimension dynamic."""
    options = {"input_names": ["x"], "output_names": ["y"], **EXPORTERS[exporter]}
    if not options["dynamo"]:
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **options)
        return onnx.load_from_string(buffer.getvalue())
    program = torch.onnx.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("N")},), **options)
    return program.model_proto


def normalize(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """IR version and opset set explicitly; node doc strings and metadata (local paths) removed."""
    model.ir_version = IR_VERSION
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    model.graph.doc_string = ""
    model.doc_string = ""
    onnx.checker.check_model(model, full_check=True)
    return model


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """An .npz with a fixed timestamp, so that the bytes do not depend on when it was written."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, buffer.getvalue())


def weight_ops(model: onnx.ModelProto) -> list[str]:
    """How each initializer is consumed: ``op(input index)`` per node that reads it."""
    inits = {i.name for i in model.graph.initializer}
    uses: dict[str, list[str]] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                attrs = ",".join(
                    f"{a.name}={onnx.helper.get_attribute_value(a)}"
                    for a in node.attribute
                    if a.name in ("transA", "transB", "perm")
                )
                uses.setdefault(name, []).append(f"{node.op_type}[{k}]{'(' + attrs + ')' if attrs else ''}")
    constants = [n.output[0] for n in model.graph.node if n.op_type == "Constant"]
    lines = [f"{name}: {', '.join(ops)}" for name, ops in uses.items()]
    return lines + ([f"Constant nodes: {', '.join(constants)}"] if constants else [])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, exporters in MODELS.items():
        model, x = build(name)
        with torch.no_grad():
            y = model(x)
        save_npz(OUT / f"{name}.npz", x=x.numpy(), y=y.numpy())
        for exporter in exporters:
            onnx_model = normalize(export(model, x, exporter), EXPORTERS[exporter]["opset_version"])
            path = OUT / f"{name}.{exporter}.onnx"
            onnx.save_model(onnx_model, path)
            ops = sorted({n.op_type for n in onnx_model.graph.node})
            print(f"{path.name}: {path.stat().st_size} B, ops {ops}")
            for line in weight_ops(onnx_model):
                print(f"    {line}")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"total {total} B")
    if total > SIZE_LIMIT:
        print(f"fixtures exceed {SIZE_LIMIT} B", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
