"""Caffe import: the schema, every converted layer type against a numpy reference, the
error messages, the config written from Cmp* fields, and the real LeNet caffemodel."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from conftest import shared_path

from onnx_dc.config import parse_config
from onnx_dc.data import Preprocess, load_dataset
from onnx_dc.errors import ConversionError
from onnx_dc.importers import caffe_schema as schema
from onnx_dc.importers.caffe import caffe_pool_size, import_caffe, write_config_yaml

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CAFFE = DATA / "caffe"
RNG_SEED = 1234


# ----------------------------------------------------------------------------- helpers


def blob(array: np.ndarray, legacy: bool = False):
    """A BlobProto with ``shape`` (or legacy 4-D num/channels/height/width)."""
    b = schema.BlobProto()
    array = np.asarray(array, dtype=np.float32)
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        b.num, b.channels, b.height, b.width = dims
    else:
        b.shape.dim.extend(array.shape)
    b.data.extend(array.ravel().tolist())
    return b


def caffemodel(
    path: Path, weights: dict[str, list[np.ndarray]], v1: bool = False, legacy: bool = False
) -> Path:
    """Serialize a weights-only NetParameter, new-style or V1 (``layers``)."""
    net = schema.NetParameter(name="test")
    for name, arrays in weights.items():
        layer = net.layers.add(name=name, type=4) if v1 else net.layer.add(name=name)
        layer.blobs.extend(blob(a, legacy) for a in arrays)
    path.write_bytes(net.SerializeToString())
    return path


def convert(tmp_path: Path, prototxt: str, weights: dict | None = None, **kwargs):
    """Import a prototxt text with the given weights; check the model; return (model, config, session)."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(prototxt)
    model_path = caffemodel(
        tmp_path / "net.caffemodel",
        weights or {"unused": [np.zeros(1)]},
        **{k: kwargs.pop(k) for k in ("v1", "legacy") if k in kwargs},
    )
    model, config = import_caffe(proto, model_path, **kwargs)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, config, session


def run(session: ort.InferenceSession, **feeds: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})


def rand(*shape: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def input_layer(*dims: int, name: str = "data") -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {shape} }} }} }}\n'


def conv_ref(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Direct convolution (cross-correlation) in numpy, NCHW."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // group
    for g in range(group):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                hi, wj = i * dilation[0], j * dilation[1]
                patch = xs[
                    :,
                    :,
                    hi : hi + stride[0] * (oh - 1) + 1 : stride[0],
                    wj : wj + stride[1] * (ow - 1) + 1 : stride[1],
                ]
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def caffe_pool_ref(x, kernel, stride, pad, method, ceil=True):
    """Caffe's pooling forward pass, written out from its definition (CEIL rounding, AVE divisor)."""
    n, c, h, w = x.shape

    def size(s, k, st, p):
        out = (math.ceil if ceil else math.floor)((s + 2 * p - k) / st) + 1
        return out - 1 if p and (out - 1) * st >= s + p else out

    oh, ow = size(h, kernel[0], stride[0], pad[0]), size(w, kernel[1], stride[1], pad[1])
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            area = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else window.sum(axis=(2, 3)) / area
    return out


def node_names(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in model.graph.node]


# ----------------------------------------------------------------------------- schema


def test_schema_defaults_match_caffe_and_the_fork():
    conv = schema.message_class("ConvolutionParameter")()
    ip = schema.message_class("InnerProductParameter")()
    pool = schema.message_class("PoolingParameter")()
    assert (conv.class_num, conv.sparse_ratio, conv.quantize_term, conv.bias_term, conv.group) == (
        256,
        0.0,
        False,
        True,
        1,
    )
    assert (ip.class_num, ip.sparse_ratio, ip.quantize_term, ip.axis, ip.transpose) == (
        32,
        0.0,
        False,
        1,
        False,
    )
    assert (pool.pool, pool.stride, pool.round_mode) == (0, 1, 0)  # MAX, 1, CEIL
    assert not conv.HasField("sparse_ratio")
    fields = schema.message_class("ConvolutionParameter").DESCRIPTOR.fields_by_name
    assert (fields["sparse_ratio"].number, fields["class_num"].number, fields["quantize_term"].number) == (
        19,
        20,
        21,
    )
    fields = schema.message_class("InnerProductParameter").DESCRIPTOR.fields_by_name
    assert (fields["sparse_ratio"].number, fields["class_num"].number, fields["quantize_term"].number) == (
        7,
        8,
        9,
    )
    net_fields = schema.NetParameter.DESCRIPTOR.fields_by_name
    assert (net_fields["layer"].number, net_fields["layers"].number) == (100, 2)
    assert schema.v1_type_name(14) == "INNER_PRODUCT"


def test_schema_round_trips_and_packs_blob_data():
    b = blob(np.arange(3, dtype=np.float32))
    raw = b.SerializeToString()
    # field 5 (data), wire type 2 (packed), 12 bytes of float32
    assert raw.startswith(b"\x2a\x0c") and np.frombuffer(raw[2:14], "<f4").tolist() == [0.0, 1.0, 2.0]
    again = schema.BlobProto()
    again.ParseFromString(raw)
    assert list(again.shape.dim) == [3] and list(again.data) == [0.0, 1.0, 2.0]


def test_prototxt_parse_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(
        'name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n  convolution_param { num_output: -3 }\n}\n'
    )
    with pytest.raises(ConversionError) as info:
        import_caffe(path, caffemodel(tmp_path / "w.caffemodel", {"a": [np.zeros(1)]}))
    message = str(info.value)
    assert message.startswith(f"{path}:5:") and "\n" not in message


def test_unknown_field_is_named(tmp_path):
    with pytest.raises(ConversionError, match=r'x\.prototxt:2:3: .*no field named "prelu_param"'):
        schema.parse_prototxt(
            'layer { name: "p" type: "PReLU"\n  prelu_param { channel_shared: true } }', "x.prototxt"
        )


def test_quantization_term_spelling_is_rejected_with_the_fix():
    text = 'layer {\n  name: "c"\n  type: "CmpConvolution"\n  convolution_param {\n    quantization_term: true\n  }\n}'
    with pytest.raises(ConversionError) as info:
        schema.parse_prototxt(text, "n.prototxt")
    assert str(info.value).startswith("n.prototxt:5:5: 'quantization_term' is not a Caffe field")
    assert "write 'quantize_term'" in str(info.value)


def test_caffemodel_that_is_not_binary(tmp_path):
    path = tmp_path / "w.caffemodel"
    path.write_text('name: "LeNet"\n')
    with pytest.raises(ConversionError, match="caffemodel"):
        schema.read_caffemodel(path)


# ----------------------------------------------------------------------------- convolution and inner product


@pytest.mark.parametrize(
    "param, stride, pad, dilation, bias",
    [
        ("kernel_size: 3", (1, 1), (0, 0), (1, 1), True),
        ("kernel_size: 3 stride: 2 pad: 1", (2, 2), (1, 1), (1, 1), True),
        ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 1), (1, 0), (1, 1), True),
        ("kernel_size: 3 dilation: 2 pad: 2 bias_term: false", (1, 1), (2, 2), (2, 2), False),
    ],
)
def test_convolution(tmp_path, param, stride, pad, dilation, bias):
    kh, kw = (3, 2) if "kernel_h" in param else (3, 3)
    w, b = rand(4, 3, kh, kw), rand(4)
    net = input_layer(2, 3, 9, 8) + (
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        f"convolution_param {{ num_output: 4 {param} }} }}"
    )
    model, config, sess = convert(tmp_path, net, {"conv": [w, b] if bias else [w]})
    x = rand(2, 3, 9, 8)
    np.testing.assert_allclose(
        run(sess, data=x)[0], conv_ref(x, w, b if bias else None, stride, pad, dilation), rtol=1e-5, atol=1e-5
    )
    assert node_names(model) == [("conv", "Conv")]
    assert config == {"version": 1, "nodes": [{"match": "conv", "skip": True}]}  # plain layers stay dense
    assert [o.name for o in model.graph.output] == ["conv"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_grouped_convolution(tmp_path):
    w, b = rand(6, 2, 3, 3), rand(6)
    net = input_layer(1, 4, 7, 7) + (
        'layer { name: "gconv" type: "Convolution" bottom: "data" top: "out" '
        "convolution_param { num_output: 6 kernel_size: 3 group: 2 pad: 1 } }"
    )
    model, _, sess = convert(tmp_path, net, {"gconv": [w, b]})
    x = rand(1, 4, 7, 7)
    np.testing.assert_allclose(
        run(sess, data=x)[0], conv_ref(x, w, b, pad=(1, 1), group=2), rtol=1e-5, atol=1e-5
    )
    conv = model.graph.node[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}["group"] == 2


def test_inner_product_flattens_from_axis_1(tmp_path):
    w, b = rand(5, 3 * 4 * 4), rand(5)
    net = input_layer(2, 3, 4, 4) + (
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }'
    )
    model, _, sess = convert(tmp_path, net, {"fc": [w, b]})
    x = rand(2, 3, 4, 4)
    np.testing.assert_allclose(run(sess, data=x)[0], x.reshape(2, -1) @ w.T + b, rtol=1e-5, atol=1e-5)
    assert node_names(model) == [("fc/flatten", "Flatten"), ("fc", "Gemm")]
    gemm = model.graph.node[1]
    assert onnx.helper.get_attribute_value(gemm.attribute[0]) == 1  # transB: Caffe stores W as (out, in)


def test_inner_product_transpose_axis2_and_no_bias(tmp_path):
    w = rand(4 * 5, 6)  # transpose: true stores (in, out)
    net = input_layer(2, 3, 4, 5) + (
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 6 axis: 2 transpose: true bias_term: false } }"
    )
    _, _, sess = convert(tmp_path, net, {"fc": [w]})
    x = rand(2, 3, 4, 5)
    (y,) = run(sess, data=x)
    assert y.shape == (2, 3, 6)
    np.testing.assert_allclose(y, (x.reshape(6, 20) @ w).reshape(2, 3, 6), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "size, kernel, stride, pad",
    [
        ((6, 6), 2, 2, 0),  # exact fit
        ((7, 7), 2, 2, 0),  # ceil adds a partial window
        ((7, 6), 3, 2, 1),  # pad, ceil adds an end row only in height
        ((8, 8), 3, 2, 1),  # pad and ceil: partial windows at the end
        ((5, 5), 3, 3, 1),  # the clip: the last window would start in the padding
        ((13, 13), 3, 2, 0),  # AlexNet-style
    ],
)
def test_pooling_matches_caffe_rounding_and_divisor(tmp_path, method, size, kernel, stride, pad):
    net = input_layer(2, 3, *size) + (
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}"
    )
    _, _, sess = convert(tmp_path, net)
    x = rand(2, 3, *size)
    expected = caffe_pool_ref(x, (kernel,) * 2, (stride,) * 2, (pad,) * 2, method)
    (y,) = run(sess, data=x)
    assert y.shape == expected.shape
    assert y.shape[2:] == tuple(caffe_pool_size(s, kernel, stride, pad) for s in size)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_pooling_rectangular_floor_and_global(tmp_path):
    net = input_layer(1, 2, 7, 9) + (
        'layer { name: "p1" type: "Pooling" bottom: "data" top: "p1" pooling_param { pool: AVE kernel_h: 2 '
        "kernel_w: 3 stride_h: 2 stride_w: 2 pad_h: 1 round_mode: FLOOR } }\n"
        'layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: MAX global_pooling: true } }'
    )
    model, _, sess = convert(tmp_path, net)
    x = rand(1, 2, 7, 9)
    p1, g = run(sess, data=x)
    np.testing.assert_allclose(
        p1, caffe_pool_ref(x, (2, 3), (2, 2), (1, 0), "AVE", ceil=False), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(g, x.max(axis=(2, 3), keepdims=True), rtol=1e-6)
    assert ("g", "GlobalMaxPool") in node_names(model)


def test_stochastic_pooling_is_rejected(tmp_path):
    net = input_layer(1, 1, 4, 4) + (
        'layer { name: "sp" type: "Pooling" bottom: "data" top: "sp" pooling_param { pool: STOCHASTIC kernel_size: 2 } }'
    )
    with pytest.raises(ConversionError, match="layer 'sp' \\(Pooling\\): STOCHASTIC"):
        convert(tmp_path, net)


# ----------------------------------------------------------------------------- element-wise and shape layers


def test_activations_softmax_dropout_split(tmp_path):
    net = input_layer(2, 3, 2, 2) + (
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }\n'
        'layer { name: "leaky" type: "ReLU" bottom: "data" top: "l" relu_param { negative_slope: 0.1 } }\n'
        'layer { name: "sig" type: "Sigmoid" bottom: "data" top: "s" }\n'
        'layer { name: "tanh" type: "TanH" bottom: "data" top: "t" }\n'
        'layer { name: "drop" type: "Dropout" bottom: "t" top: "t" dropout_param { dropout_ratio: 0.5 } }\n'
        'layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" }\n'
        'layer { name: "sm" type: "Softmax" bottom: "a" top: "sm" }\n'
        'layer { name: "sm3" type: "Softmax" bottom: "b" top: "sm3" softmax_param { axis: -1 } }\n'
    )
    model, _, sess = convert(tmp_path, net)
    x = rand(2, 3, 2, 2)
    r, lk, s, t, sm, sm3 = run(sess, data=x)
    assert [o.name for o in model.graph.output] == ["r", "l", "s", "t", "sm", "sm3"]
    np.testing.assert_allclose(r, np.maximum(x, 0))
    np.testing.assert_allclose(lk, np.where(x > 0, x, np.float32(0.1) * x), rtol=1e-6)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x)), rtol=1e-5)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-5, atol=1e-6)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(sm, e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(sm3, e / e.sum(axis=-1, keepdims=True), rtol=1e-5)
    assert "Dropout" not in {n.op_type for n in model.graph.node}


def lrn_across_ref(x, n, alpha, beta, k):
    sq = np.pad(x**2, ((0, 0), ((n - 1) // 2, (n - 1) // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(n))
    return x / (k + alpha / n * window) ** beta


def lrn_within_ref(x, n, alpha, beta):
    half = (n - 1) // 2
    sq = np.pad(x**2, ((0, 0), (0, 0), (half, half), (half, half)))
    h, w = x.shape[2:]
    window = sum(sq[:, :, i : i + h, j : j + w] for i in range(n) for j in range(n))
    return x / (1 + alpha / n**2 * window) ** beta


def test_lrn_across_and_within_channels(tmp_path):
    net = input_layer(2, 7, 5, 5) + (
        'layer { name: "lrn" type: "LRN" bottom: "data" top: "a" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } }\n'
        'layer { name: "lrnw" type: "LRN" bottom: "data" top: "w" '
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }\n"
    )
    _, _, sess = convert(tmp_path, net)
    x = rand(2, 7, 5, 5) * 3
    a, w = run(sess, data=x)
    np.testing.assert_allclose(a, lrn_across_ref(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, lrn_within_ref(x, 3, 0.5, 0.75), rtol=1e-5, atol=1e-6)


def test_concat_and_eltwise(tmp_path):
    net = (
        input_layer(2, 3, 4, 4, name="x")
        + input_layer(2, 3, 4, 4, name="y")
        + input_layer(2, 3, 4, 4, name="z")
        + 'layer { name: "cat" type: "Concat" bottom: "x" bottom: "y" top: "cat" }\n'
        'layer { name: "cat3" type: "Concat" bottom: "x" bottom: "z" top: "cat3" concat_param { axis: 3 } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "y" top: "sum" }\n'
        'layer { name: "wsum" type: "Eltwise" bottom: "x" bottom: "y" bottom: "z" top: "wsum" '
        "eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: 0.5 } }\n"
        'layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "y" bottom: "z" top: "prod" eltwise_param { operation: PROD } }\n'
        'layer { name: "max" type: "Eltwise" bottom: "x" bottom: "y" top: "max" eltwise_param { operation: MAX } }\n'
    )
    model, _, sess = convert(tmp_path, net)
    x, y, z = rand(2, 3, 4, 4, seed=1), rand(2, 3, 4, 4, seed=2), rand(2, 3, 4, 4, seed=3)
    cat, cat3, s, ws, prod, mx = run(sess, x=x, y=y, z=z)
    np.testing.assert_allclose(cat, np.concatenate([x, y], axis=1))
    np.testing.assert_allclose(cat3, np.concatenate([x, z], axis=3))
    np.testing.assert_allclose(s, x + y, rtol=1e-6)
    np.testing.assert_allclose(ws, x - y + 0.5 * z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prod, x * y * z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mx, np.maximum(x, y))
    assert [i.name for i in model.graph.input] == ["x", "y", "z"]
    assert ("prod", "Mul") in node_names(model) and ("wsum", "Sum") in node_names(model)


def test_flatten_and_reshape(tmp_path):
    net = input_layer(2, 3, 4, 5) + (
        'layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }\n'
        'layer { name: "flat23" type: "Flatten" bottom: "data" top: "flat23" flatten_param { axis: 2 } }\n'
        'layer { name: "rs" type: "Reshape" bottom: "data" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 10 } } }\n'
        'layer { name: "rs2" type: "Reshape" bottom: "data" top: "rs2" '
        "reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 } }\n"
    )
    model, _, sess = convert(tmp_path, net)
    x = rand(2, 3, 4, 5)
    flat, flat23, rs, rs2 = run(sess, data=x)
    np.testing.assert_array_equal(flat, x.reshape(2, 60))
    np.testing.assert_array_equal(flat23, x.reshape(2, 3, 20))
    np.testing.assert_array_equal(rs, x.reshape(2, 6, 10))
    np.testing.assert_array_equal(rs2, x.reshape(2, 3, 2, 2, 5))
    dims = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [["N", 60], ["N", 3, 20], ["N", 6, 10], ["N", 3, 2, 2, 5]]


def test_batchnorm_folds_the_following_scale(tmp_path):
    mean, var, factor = rand(3) * 10, np.abs(rand(3, seed=5)) * 10 + 1, np.array([10.0], np.float32)
    gamma, beta = rand(3, seed=7), rand(3, seed=8)
    net = input_layer(2, 3, 4, 4) + (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.001 } }\n'
        'layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "bn" top: "bn" }\n'
    )
    model, _, sess = convert(tmp_path, net, {"bn": [mean, var, factor], "sc": [gamma, beta]})
    x = rand(2, 3, 4, 4)
    m, v = (mean / 10).reshape(1, 3, 1, 1), (var / 10).reshape(1, 3, 1, 1)
    expected = np.maximum(
        (x - m) / np.sqrt(v + 1e-3) * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1), 0
    )
    np.testing.assert_allclose(run(sess, data=x)[0], expected, rtol=1e-5, atol=1e-5)
    assert node_names(model) == [("bn", "BatchNormalization"), ("relu", "Relu")]
    assert [o.name for o in model.graph.output] == ["bn"]  # the in-place output keeps the blob name


def test_batchnorm_alone_with_zero_factor_and_standalone_scale(tmp_path):
    mean, var = rand(3), np.ones(3, np.float32)
    gamma, beta = rand(3, 4, seed=3), rand(3, 4, seed=4)
    net = input_layer(2, 3, 4, 5) + (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        'layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { axis: 1 num_axes: 2 bias_term: true } }\n'
        'layer { name: "sc2" type: "Scale" bottom: "data" bottom: "bn" top: "sc2" scale_param { axis: 0 } }\n'
    )
    model, _, sess = convert(tmp_path, net, {"bn": [mean, var, np.zeros(1)], "sc": [gamma, beta]})
    x = rand(2, 3, 4, 5)
    sc, sc2 = run(sess, data=x)
    bn = x / np.sqrt(np.float32(1e-5))  # factor 0: mean = var = 0
    np.testing.assert_allclose(sc, x * gamma[None, :, :, None] + beta[None, :, :, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sc2, x * bn, rtol=1e-5)
    assert ("bn", "BatchNormalization") in node_names(model) and ("sc2", "Mul") in node_names(model)


def test_scale_by_a_second_bottom_broadcasts_over_trailing_axes(tmp_path):
    net = (
        input_layer(2, 3, 4, 5)
        + input_layer(2, 3, name="s")
        + ('layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "sc" scale_param { axis: 0 } }')
    )
    model, _, sess = convert(tmp_path, net)
    x, s = rand(2, 3, 4, 5), rand(2, 3, seed=4)
    np.testing.assert_allclose(run(sess, data=x, s=s)[0], x * s[:, :, None, None], rtol=1e-6)
    assert [n for n, _ in node_names(model)] == ["sc/unsqueeze", "sc"]


def test_batchnorm_with_batch_statistics_is_rejected(tmp_path):
    net = input_layer(1, 3, 2, 2) + (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }'
    )
    with pytest.raises(ConversionError, match="use_global_stats"):
        convert(tmp_path, net, {"bn": [np.zeros(3), np.ones(3), np.ones(1)]})


# ----------------------------------------------------------------------------- net structure


LENET_LIKE = """
name: "tiny"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 64 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.0078125 } data_param { source: "test_lmdb" batch_size: 100 } }
layer { name: "conv1" type: "CmpConvolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 sparse_ratio: 0.33 quantize_term: true } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" exclude { phase: TEST } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "CmpInnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 3 sparse_ratio: 0.9 class_num: 16 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc2" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def lenet_like_weights():
    return {
        "conv1": [rand(2, 1, 3, 3), rand(2)],
        "fc1": [rand(3, 2 * 4 * 4), rand(3)],
        "fc2": [rand(2, 3), rand(2)],
    }


def lenet_like_ref(x, w):
    h = np.maximum(conv_ref(x, *w["conv1"]), 0).reshape(len(x), -1)
    return (h @ w["fc1"][0].T + w["fc1"][1]) @ w["fc2"][0].T + w["fc2"][1]


def test_phase_rules_data_layer_and_config(tmp_path):
    w = lenet_like_weights()
    model, config, sess = convert(tmp_path, LENET_LIKE, w, input_shape=(1, 6, 6))
    x = rand(3, 1, 6, 6)
    np.testing.assert_allclose(run(sess, data=x)[0], lenet_like_ref(x, w), rtol=1e-5, atol=1e-5)
    assert [i.name for i in model.graph.input] == ["data"]  # the label is not an input
    assert [o.name for o in model.graph.output] == ["fc2"]
    assert [n for n, _ in node_names(model)] == ["conv1", "relu1", "fc1/flatten", "fc1", "fc2"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert Preprocess.from_metadata(meta["onnx_dc.preprocess"]) == Preprocess(
        scale=0.0078125
    )  # the TEST layer's
    assert config == {
        "version": 1,
        "nodes": [
            {"match": "conv1", "sparse_ratio": 0.33, "class_num": 256, "quantize_term": True},
            {"match": "fc1", "sparse_ratio": 0.9, "class_num": 16, "quantize_term": False},
            {"match": "fc2", "skip": True},
        ],
    }
    resolved = parse_config(config)
    assert [r.match for r in resolved.nodes] == ["conv1", "fc1", "fc2"]


def test_data_layer_needs_input_shape(tmp_path):
    with pytest.raises(ConversionError, match="input blob .data.*--input-shape 1,28,28"):
        convert(tmp_path, LENET_LIKE, lenet_like_weights())


def test_input_shape_errors(tmp_path):
    with pytest.raises(ConversionError, match="positive integers"):
        convert(tmp_path, LENET_LIKE, lenet_like_weights(), input_shape=(1, 0, 6))
    with pytest.raises(ConversionError, match="'image'"):
        convert(
            tmp_path, LENET_LIKE, lenet_like_weights(), input_shape={"data": (1, 6, 6), "image": (3, 2, 2)}
        )


def test_train_only_data_layer_still_defines_the_input(tmp_path):
    text = LENET_LIKE.replace(
        "include { phase: TEST }\n        transform_param { scale: 0.0078125 }",
        "include { phase: TRAIN }\n        transform_param { scale: 0.0078125 }",
    )
    model, _, _ = convert(tmp_path, text, lenet_like_weights(), input_shape={"data": (1, 6, 6)})
    assert [i.name for i in model.graph.input] == ["data"]
    assert model.graph.node[0].name == "conv1"


def test_v1_layers_with_legacy_blobs(tmp_path):
    net = """
    name: "old"
    input: "data"
    input_dim: 1 input_dim: 1 input_dim: 6 input_dim: 6
    layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
             convolution_param { num_output: 2 kernel_size: 3 } }
    layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
    layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    layers { name: "fc1" type: INNER_PRODUCT bottom: "pool1" top: "fc1" inner_product_param { num_output: 3 } }
    layers { name: "drop" type: DROPOUT bottom: "fc1" top: "fc1" }
    layers { name: "prob" type: SOFTMAX bottom: "fc1" top: "prob" }
    layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc1" bottom: "label" top: "loss" include { phase: TRAIN } }
    """
    w = {"conv1": [rand(2, 1, 3, 3), rand(2)], "fc1": [rand(3, 2 * 2 * 2), rand(3)]}
    model, config, sess = convert(tmp_path, net, w, v1=True, legacy=True)
    x = rand(2, 1, 6, 6)
    h = caffe_pool_ref(np.maximum(conv_ref(x, *w["conv1"]), 0), (3, 3), (2, 2), (0, 0), "MAX").reshape(2, -1)
    logits = h @ w["fc1"][0].T + w["fc1"][1]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(run(sess, data=x)[0], e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert [o.name for o in model.graph.output] == ["prob"]
    assert config["nodes"] == [{"match": "conv1", "skip": True}, {"match": "fc1", "skip": True}]


def test_in_place_layers_and_output_renaming(tmp_path):
    net = input_layer(1, 2, 3, 3) + (
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "act" }\n'
        'layer { name: "sig" type: "Sigmoid" bottom: "act" top: "act" }\n'
        'layer { name: "tanh" type: "TanH" bottom: "act" top: "act" }\n'
    )
    model, _, sess = convert(tmp_path, net)
    x = rand(1, 2, 3, 3)
    np.testing.assert_allclose(run(sess, data=x)[0], np.tanh(1 / (1 + np.exp(-np.maximum(x, 0)))), rtol=1e-5)
    assert [o.name for o in model.graph.output] == ["act"]
    produced = [n.output[0] for n in model.graph.node]
    assert len(set(produced)) == 3 and produced[-1] == "act"


def test_memory_data_and_net_level_input_shape(tmp_path):
    net = (
        'layer { name: "md" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 4 channels: 2 height: 3 width: 3 } transform_param { scale: 0.5 } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }\n'
    )
    model, _, _ = convert(tmp_path, net)
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 2, 3, 3]
    model, _, _ = convert(tmp_path, net, input_shape=(2, 5, 5))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 2, 5, 5]
    net = 'input: "img"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\nlayer { name: "r" type: "ReLU" bottom: "img" top: "r" }'
    model, _, _ = convert(tmp_path, net)
    assert [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == [
        "N",
        3,
        4,
        4,
    ]


def test_transform_mean_goes_to_metadata_or_warns(tmp_path):
    data = (
        'layer {{ name: "d" type: "MemoryData" top: "data" top: "label" transform_param {{ scale: 0.5 {means} }} '
        "memory_data_param {{ batch_size: 1 channels: 3 height: 2 width: 2 }} }}\n"
        'layer {{ name: "r" type: "ReLU" bottom: "data" top: "r" }}'
    )
    model, _, _ = convert(tmp_path, data.format(means="mean_value: 100"))
    meta = Preprocess.from_metadata({p.key: p.value for p in model.metadata_props}["onnx_dc.preprocess"])
    assert meta == Preprocess(scale=0.5, mean=50.0)  # Caffe: (pixel - 100) * 0.5
    with pytest.warns(UserWarning, match="per-channel mean"):
        model, _, _ = convert(tmp_path, data.format(means="mean_value: 104 mean_value: 117 mean_value: 123"))
    meta = Preprocess.from_metadata({p.key: p.value for p in model.metadata_props}["onnx_dc.preprocess"])
    assert meta == Preprocess(scale=0.5)


def test_shared_param_names_share_one_initializer(tmp_path):
    w, b = rand(4, 4), rand(4)
    net = input_layer(2, 4) + (
        'layer { name: "fa" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" } param { name: "b" } '
        "inner_product_param { num_output: 4 } }\n"
        'layer { name: "fb" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" } '
        "inner_product_param { num_output: 4 } }\n"
    )
    model, _, sess = convert(tmp_path, net, {"fa": [w, b], "fb": [w, b]})
    assert [i.name for i in model.graph.initializer] == ["fa.weight", "fa.bias"]
    x = rand(2, 4)
    np.testing.assert_allclose(run(sess, data=x)[0], (x @ w.T + b) @ w.T + b, rtol=1e-5, atol=1e-5)


def test_same_input_same_bytes(tmp_path):
    first, _, _ = convert(tmp_path, LENET_LIKE, lenet_like_weights(), input_shape=(1, 6, 6))
    second, _, _ = convert(tmp_path, LENET_LIKE, lenet_like_weights(), input_shape=(1, 6, 6))
    assert first.SerializeToString() == second.SerializeToString()


# ----------------------------------------------------------------------------- errors


def test_blob_shape_mismatch_names_the_layer(tmp_path):
    net = input_layer(1, 3, 5, 5) + (
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 3 } }'
    )
    with pytest.raises(ConversionError) as info:
        convert(tmp_path, net, {"conv1": [rand(2, 1, 3, 3), rand(2)]})
    message = str(info.value)
    assert message.startswith("layer 'conv1' (Convolution): weight blob 0 has shape (2, 1, 3, 3)")
    assert "(2, 3, 3, 3)" in message and "prototxt this caffemodel was trained with" in message


def test_missing_weights_name_the_layer(tmp_path):
    net = (
        input_layer(1, 8)
        + 'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 2 } }'
    )
    with pytest.raises(
        ConversionError,
        match="layer 'ip1' \\(InnerProduct\\): needs 2 weight blob\\(s\\) but the "
        "caffemodel has no layer of that name",
    ):
        convert(tmp_path, net, {"fc1": [rand(2, 8), rand(2)]})
    with pytest.raises(ConversionError, match="needs 2 weight blob\\(s\\) but the caffemodel has 1 blob"):
        convert(tmp_path, net, {"ip1": [rand(2, 8)]})


@pytest.mark.parametrize(
    "layer_type, reason", [("Deconvolution", "transposed convolution"), ("Frobnicate", "not a layer type")]
)
def test_unsupported_layer_names_layer_and_type(tmp_path, layer_type, reason):
    net = input_layer(1, 2, 4, 4) + f'layer {{ name: "odd" type: "{layer_type}" bottom: "data" top: "odd" }}'
    with pytest.raises(
        ConversionError, match=f"layer 'odd' \\({layer_type}\\): unsupported layer type: {reason}"
    ):
        convert(tmp_path, net)


def test_reading_an_unknown_blob(tmp_path):
    net = input_layer(1, 2) + 'layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }'
    with pytest.raises(ConversionError, match="layer 'r' \\(ReLU\\): reads blob 'nothing'"):
        convert(tmp_path, net)


def test_write_config_yaml_is_atomic_and_round_trips(tmp_path):
    config = {
        "version": 1,
        "nodes": [{"match": "conv1", "sparse_ratio": 0.33, "class_num": 256, "quantize_term": True}],
    }
    path = tmp_path / "dc.yaml"
    path.write_text("old")
    write_config_yaml(config, path)
    assert yaml.safe_load(path.read_text()) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dc.yaml"]  # no temporary file left behind
    assert path.read_text().startswith("version: 1\nnodes:\n- match: conv1\n")


def test_importer_modules_do_not_import_onnxruntime():
    folder = Path(__file__).resolve().parents[1] / "onnx_dc" / "importers"
    for name in ("caffe.py", "caffe_schema.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "onnxruntime" for m in imported), name


# ----------------------------------------------------------------------------- the real LeNet

@pytest.fixture
def caffe_and_mnist():
    shared_path(CAFFE)
    shared_path(DATA / "mnist")


needs_data = pytest.mark.usefixtures("caffe_and_mnist")

STAGES = {  # layer -> sparse_ratio per stage (README's schedule); stage 5 also sets quantize_term
    1: {"conv1": 0.33, "conv2": 0.0, "fc1": 0.0, "fc2": 0.0},
    2: {"conv1": 0.33, "conv2": 0.8, "fc1": 0.0, "fc2": 0.0},
    3: {"conv1": 0.33, "conv2": 0.8, "fc1": 0.9, "fc2": 0.0},
    4: {"conv1": 0.33, "conv2": 0.8, "fc1": 0.9, "fc2": 0.8},
    5: {"conv1": 0.33, "conv2": 0.8, "fc1": 0.9, "fc2": 0.8},
}


@pytest.fixture(scope="module")
def mnist_test():
    dataset = load_dataset(f"mnist:{shared_path(DATA / 'mnist')}")
    return Preprocess(scale=1 / 256).apply(dataset.images, (1, 28, 28)), dataset.labels


def count_correct(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> int:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return sum(
        int((session.run(None, {name: x[i : i + 1000]})[0].argmax(axis=1) == labels[i : i + 1000]).sum())
        for i in range(0, len(x), 1000)
    )


@needs_data
@pytest.mark.parametrize(
    "prototxt",
    ["lenet_iter_10000.embedded_net.prototxt"]
    + [f"deepcompression_stages/lenet_train_test_compress_stage{i}.prototxt" for i in range(1, 6)],
)
def test_real_lenet_accuracy_in_onnxruntime(prototxt, mnist_test):
    model, _ = import_caffe(CAFFE / prototxt, CAFFE / "lenet_iter_10000.caffemodel", input_shape=(1, 28, 28))
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (10, 17)
    assert [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")] == [
        "conv1",
        "conv2",
        "fc1",
        "fc2",
    ]
    meta = {p.key: p.value for p in model.metadata_props}
    assert Preprocess.from_metadata(meta["onnx_dc.preprocess"]).scale == 0.00390625
    # 99.08% is the README's figure from an independent numpy forward pass.
    assert count_correct(model, *mnist_test) == 9908


@needs_data
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_prototxts_yield_their_schedule(stage):
    prototxt = CAFFE / "deepcompression_stages" / f"lenet_train_test_compress_stage{stage}.prototxt"
    _, config = import_caffe(prototxt, CAFFE / "lenet_iter_10000.caffemodel", input_shape=(1, 28, 28))
    expected = [
        {
            "match": name,
            "sparse_ratio": ratio,
            "class_num": 256 if name.startswith("conv") else 32,
            "quantize_term": stage == 5,
        }
        for name, ratio in STAGES[stage].items()
    ]
    assert config == {"version": 1, "nodes": expected}
    parse_config(config)


@needs_data
def test_bvlc_deploy_net_names_the_layers_the_caffemodel_lacks():
    with pytest.raises(ConversionError, match="layer 'ip1' \\(InnerProduct\\): needs 2 weight blob"):
        import_caffe(CAFFE / "bvlc" / "lenet.prototxt", CAFFE / "lenet_iter_10000.caffemodel")
