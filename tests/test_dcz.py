"""The packed ``.dcz`` file: byte-exact round trips, determinism, reports, corrupt and crafted input."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from onnx_dc.errors import ConfigError, FormatError, ModelError
from onnx_dc.formats import dcz
from onnx_dc.formats.models import model_bytes
from onnx_dc.graph import decoders, layout
from onnx_dc.numerics.bitpack import pack_bits

OPSET = 18


# ----------------------------------------------------------------------------- test models
def _sparse_entries(
    rng: np.random.Generator, numel: int, keep: float, index_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (with fillers for long zero runs, as in the paper) and a flag per entry: 1 = real weight."""
    positions = np.sort(rng.choice(numel, max(1, int(numel * keep)), replace=False))
    step = 1 << index_bits
    gaps, real, prev = [], [], -1
    for p in positions:
        while p - prev - 1 > step - 1:  # bridge with a filler
            gaps.append(step - 1)
            real.append(0)
            prev += step
        gaps.append(p - prev - 1)
        real.append(1)
        prev = p
    return np.array(gaps), np.array(real)


def _layer(
    rng: np.random.Generator,
    name: str,
    form: str,
    shape: list[int],
    class_num: int = 16,
    index_bits: int = 5,
    keep: float = 0.1,
) -> tuple[list, onnx.NodeProto, np.ndarray]:
    """Initializers, decoder node and the dense weight it rebuilds, for one compressed weight."""
    numel = int(np.prod(shape))
    code_bits = int(class_num).bit_length()
    codebook = np.concatenate([[0.0], np.sort(rng.normal(size=class_num))]).astype(np.float32)
    attrs = {"numel": numel, "shape": shape, "class_num": class_num, "quantize_term": int(form != "values")}
    if form == "dense":
        codes = np.minimum(rng.geometric(0.25, numel), class_num)
        inits = [
            nh.from_array(codebook, f"{name}/dc/codebook"),
            nh.from_array(pack_bits(codes, code_bits), f"{name}/dc/codes"),
        ]
        node = oh.make_node(
            layout.op_type(layout.DENSE, code_bits, 0),
            [i.name for i in inits],
            [name],
            f"{name}/dc/decode",
            domain=layout.DOMAIN,
            code_bits=code_bits,
            index_bits=0,
            count=numel,
            **attrs,
        )
        return inits, node, codebook[codes].reshape(shape)
    gaps, real = _sparse_entries(rng, numel, keep, index_bits)
    positions = np.cumsum(gaps + 1) - 1
    dense = np.zeros(numel, np.float32)
    common = {"index_bits": index_bits, "count": gaps.size, **attrs}
    gaps_init = nh.from_array(pack_bits(gaps, index_bits), f"{name}/dc/gaps")
    if form == "sparse":
        codes = np.where(real == 1, rng.integers(1, class_num + 1, gaps.size), 0)
        dense[positions] = codebook[codes]
        inits = [
            nh.from_array(codebook, f"{name}/dc/codebook"),
            nh.from_array(pack_bits(codes, code_bits), f"{name}/dc/codes"),
            gaps_init,
        ]
        node = oh.make_node(
            layout.op_type(layout.SPARSE, code_bits, index_bits),
            [i.name for i in inits],
            [name],
            f"{name}/dc/decode",
            domain=layout.DOMAIN,
            code_bits=code_bits,
            **common,
        )
    else:
        values = np.where(real == 1, rng.normal(size=gaps.size), 0.0).astype(np.float32)
        dense[positions] = values
        inits = [nh.from_array(values, f"{name}/dc/values"), gaps_init]
        node = oh.make_node(
            layout.op_type(layout.SPARSE_VALUES, 0, index_bits),
            [i.name for i in inits],
            [name],
            f"{name}/dc/decode",
            domain=layout.DOMAIN,
            code_bits=0,
            **common,
        )
    return inits, node, dense.reshape(shape)


def build_model(
    forms: tuple[str, ...] = ("sparse", "dense", "values"),
    seed: int = 0,
    widths: tuple[int, ...] = (96, 64, 32, 10),
    **layer_kw,
) -> tuple[bytes, list[np.ndarray]]:
    """A ``*.dc.onnx`` MLP with one Gemm per form; returns its bytes and the dense weights."""
    rng = np.random.default_rng(seed)
    inits, nodes, weights, prev = [], [], [], "x"
    for i, form in enumerate(forms):
        shape = [widths[i + 1], widths[i]]
        layer_inits, node, dense = _layer(rng, f"fc{i}.weight", form, shape, **layer_kw)
        bias = nh.from_array(rng.normal(size=shape[0]).astype(np.float32), f"fc{i}.bias")
        inits += [*layer_inits, bias]
        out = f"h{i}" if i + 1 < len(forms) else "y"
        nodes += [node, oh.make_node("Gemm", [prev, node.output[0], bias.name], [out], f"fc{i}", transB=1)]
        weights.append(dense)
        prev = out
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", widths[len(forms)]])],
        inits,
    )
    model = oh.make_model(
        graph,
        opset_imports=[oh.make_opsetid("", OPSET), oh.make_opsetid(layout.DOMAIN, 1)],
        functions=decoders.make_functions(OPSET, {n.op_type for n in nodes if n.domain == layout.DOMAIN}),
    )
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(), weights


def _run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def model() -> bytes:
    return build_model()[0]


@pytest.fixture(scope="module")
def packed(model: bytes) -> bytes:
    return dcz.pack_bytes(model)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("codec", ["auto", "huffman", "range"])
def test_round_trip_is_byte_identical_and_runs(codec: str) -> None:
    data, weights = build_model(seed=1)
    packed = dcz.pack_bytes(data, codec)
    assert len(packed) < len(data)
    restored = dcz.unpack_bytes(packed)
    assert restored == data
    x = np.random.default_rng(2).normal(size=(5, 96)).astype(np.float32)
    reference = x
    for i, w in enumerate(weights):
        bias = nh.to_array(
            next(t for t in onnx.load_from_string(data).graph.initializer if t.name == f"fc{i}.bias")
        )
        reference = reference @ w.T + bias
    out = _run(restored, x)
    np.testing.assert_array_equal(out, _run(data, x))
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)


def test_streams_are_entropy_coded(packed: bytes) -> None:
    rows = dcz.stream_report(packed)
    assert [r["op"] for r in rows] == ["DecodeSparse", "DecodeDense", "DecodeSparseValues"]
    assert all(r["coded_bytes"] <= r["packed_bytes"] for r in rows)
    assert (
        rows[0]["coded_bytes"] < rows[0]["packed_bytes"]
        and rows[1]["coded_bytes"] < 0.8 * rows[1]["packed_bytes"]
    )


def test_pack_is_deterministic(model: bytes) -> None:
    for codec in ("auto", "huffman", "range"):
        assert dcz.pack_bytes(model, codec) == dcz.pack_bytes(bytes(bytearray(model)), codec)


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.sampled_from(["dense", "sparse", "values"]), min_size=1, max_size=3),
    st.integers(0, 2**16),
    st.sampled_from([1, 2, 7, 255]),
    st.integers(2, 8),
    st.sampled_from([0.02, 0.3, 1.0]),
)
def test_round_trip_property(
    forms: list[str], seed: int, class_num: int, index_bits: int, keep: float
) -> None:
    data, _ = build_model(tuple(forms), seed=seed, class_num=class_num, index_bits=index_bits, keep=keep)
    for codec in ("auto", "huffman", "range"):
        assert dcz.unpack_bytes(dcz.pack_bytes(data, codec)) == data


def test_stream_with_nonzero_padding_is_stored_verbatim() -> None:
    model = onnx.load_from_string(
        build_model(("dense",), widths=(7, 10))[0]
    )  # 70 codes of 5 bits: 2 padding bits
    codes = next(t for t in model.graph.initializer if t.name.endswith("/dc/codes"))
    codes.raw_data = codes.raw_data[:-1] + bytes([codes.raw_data[-1] | 0xC0])
    data = model.SerializeToString()
    packed = dcz.pack_bytes(data)
    assert dcz.unpack_bytes(packed) == data
    assert dcz.stream_report(packed)[0]["codes_codec"] == "stored"
    x = np.ones((1, 7), np.float32)
    np.testing.assert_array_equal(
        _run(dcz.unpack_bytes(packed), x), _run(build_model(("dense",), widths=(7, 10))[0], x)
    )


def test_model_without_decoders_round_trips() -> None:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    data = oh.make_model(graph).SerializeToString()
    packed = dcz.pack_bytes(data)
    assert dcz.unpack_bytes(packed) == data and dcz.stream_report(packed) == []
    assert dcz.unpack_bytes(dcz.pack_bytes(b"")) == b""


def test_incompressible_input_stays_small() -> None:
    data = np.random.default_rng(0).bytes(5000)
    with pytest.raises(ModelError):  # random bytes are not a protobuf message
        dcz.pack_bytes(data + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")


# ----------------------------------------------------------------------------- report
def test_stream_report_columns(packed: bytes, model: bytes) -> None:
    rows = dcz.stream_report(packed)
    sparse, dense, values = rows
    assert sparse["name"] == "fc0.weight" and sparse["code_bits"] == 5 and sparse["index_bits"] == 5
    assert dense["gaps_codec"] is None and dense["index_bits"] == 0 and dense["count"] == 64 * 32
    assert values["codes_codec"] is None and values["code_bits"] == 0
    for row in rows:
        for role in ("codes", "gaps"):
            if row[f"{role}_codec"] is not None:
                assert row[f"{role}_codec"] in ("huffman", "range", "stored", "mask", "real-codes")
                under_model = row["codes_entropy_bytes" if role == "codes" else "positions_entropy_bytes"]
                assert 0 <= under_model <= row[f"{role}_coded_bytes"] + 1e-9
        assert row["packed_bytes"] == row["codes_packed_bytes"] + row["gaps_packed_bytes"]
    tensors = {t.name: t for t in onnx.load_from_string(model).graph.initializer}
    assert sparse["gaps_packed_bytes"] == len(tensors["fc0.weight/dc/gaps"].raw_data)


# ----------------------------------------------------------------------------- corrupt input
def _reseal(buf: bytearray) -> bytes:
    """Recompute the header checksum after editing header or table fields (a crafted file)."""
    table_bytes = struct.unpack_from("<I", buf, 56)[0]
    crc = zlib.crc32(bytes(buf[64 : 64 + table_bytes]), zlib.crc32(bytes(buf[:60])))
    struct.pack_into("<I", buf, 60, crc)
    return bytes(buf)


def test_every_mutation_is_detected(packed: bytes) -> None:
    rng = np.random.default_rng(7)
    for _ in range(600):
        bad = bytearray(packed)
        op = rng.integers(4)
        if op == 0:
            bad[rng.integers(len(bad))] ^= 1 << rng.integers(8)
        elif op == 1:
            del bad[rng.integers(len(bad)) :]
        elif op == 2:
            at = rng.integers(len(bad) - 8)
            huge = [2**64 - 1, 2**32, 2**31, int(rng.integers(2**63))][rng.integers(4)]
            bad[at : at + 8] = struct.pack("<Q", huge)
        else:
            bad += bytes(rng.integers(1, 9))
        with pytest.raises(FormatError):
            dcz.unpack_bytes(bytes(bad))


def test_crafted_fields_raise_format_error(packed: bytes, model: bytes) -> None:
    """Header and table fields overwritten with a valid header checksum: the other checks hold."""
    rng = np.random.default_rng(8)
    table_end = 64 + struct.unpack_from("<I", packed, 56)[0]
    identical = 0
    for _ in range(600):
        bad = bytearray(packed)
        at = int(rng.integers(8, table_end - 4))
        if at in range(56, 64):
            continue  # the table length and the checksum itself
        value = int(rng.choice([0, 1, 255, 2**16 - 1, 2**31, 2**32 - 1]))
        bad[at : at + 4] = struct.pack("<I", value)
        try:
            out = dcz.unpack_bytes(_reseal(bad))
        except FormatError:
            continue
        assert out == model  # only names (report labels) may change without changing the output
        identical += 1
    assert identical < 100


def test_unknown_version_and_bad_magic(packed: bytes) -> None:
    bad = bytearray(packed)
    struct.pack_into("<H", bad, 8, 3)
    with pytest.raises(FormatError, match=r"unsupported \.dcz version 3"):
        dcz.unpack_bytes(_reseal(bad))
    with pytest.raises(FormatError, match="magic"):
        dcz.unpack_bytes(b"PK" + packed[2:])
    with pytest.raises(FormatError, match="shorter than"):
        dcz.unpack_bytes(packed[:20])


def test_huge_declared_sizes_are_refused_before_allocating(packed: bytes) -> None:
    bad = bytearray(packed)
    struct.pack_into("<Q", bad, 16, 2**40)
    with pytest.raises(FormatError, match="exceeds the limit"):
        dcz.unpack_bytes(_reseal(bad))
    bad = bytearray(packed)
    struct.pack_into("<I", bad, 12, 2**31)  # section count
    with pytest.raises(FormatError):
        dcz.unpack_bytes(_reseal(bad))
    bad = bytearray(packed)  # count field of the first stream entry (after the 44-byte remainder entry)
    struct.pack_into("<Q", bad, 64 + 44 + 24, 2**32 - 1)
    with pytest.raises(FormatError, match="do not make"):
        dcz.unpack_bytes(_reseal(bad))


def test_sha256_of_output_is_checked(packed: bytes) -> None:
    bad = bytearray(packed)
    bad[24:56] = hashlib.sha256(b"other").digest()
    with pytest.raises(FormatError, match="SHA-256"):
        dcz.unpack_bytes(_reseal(bad))


def test_unknown_codec_is_a_config_error(model: bytes) -> None:
    with pytest.raises(ConfigError, match="unknown codec"):
        dcz.pack_bytes(model, "lz4")


# ----------------------------------------------------------------------------- files
def test_files_pack_unpack_load(tmp_path, model: bytes, packed: bytes) -> None:
    src = tmp_path / "m.dc.onnx"
    src.write_bytes(model)
    dst, back = tmp_path / "m.dcz", tmp_path / "back.dc.onnx"
    dcz.pack(src, dst)
    dcz.unpack(dst, back)
    assert src.read_bytes() == model and back.read_bytes() == model and dst.read_bytes() == packed
    assert (
        dcz.is_dcz(dst) and dcz.is_dcz(packed) and not dcz.is_dcz(src) and not dcz.is_dcz(tmp_path / "none")
    )
    assert model_bytes(dst) == model and model_bytes(src) == model  # the one loader opens either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.dc.onnx", "m.dc.onnx", "m.dcz"]
    mask = os.umask(0)
    os.umask(mask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~mask


def test_file_errors_name_the_file(tmp_path, packed: bytes) -> None:
    broken = tmp_path / "broken.dcz"
    broken.write_bytes(packed[:-10])
    with pytest.raises(FormatError, match=r"broken\.dcz"):
        dcz.unpack(broken, tmp_path / "out.dc.onnx")
    with pytest.raises(FormatError, match=r"broken\.dcz"):
        model_bytes(broken)
    assert not (tmp_path / "out.dc.onnx").exists()
    with pytest.raises(ModelError, match=r"missing\.dc\.onnx"):
        dcz.pack(tmp_path / "missing.dc.onnx", tmp_path / "x.dcz")
    with pytest.raises(ModelError, match="refusing to overwrite"):
        dcz.unpack(broken, broken)
    assert broken.read_bytes() == packed[:-10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dcz"]


def test_explicit_codec_is_used_unless_storing_is_smaller() -> None:
    data, _ = build_model(("sparse", "dense", "values"), widths=(300, 200, 100, 10), class_num=32)
    for codec in ("huffman", "range"):
        rows = dcz.stream_report(dcz.pack_bytes(data, codec))
        used = {row[f"{role}_codec"] for row in rows for role in ("codes", "gaps")} - {None}
        assert used <= {codec, "stored"} and codec in used
        assert all(row["coded_bytes"] <= row["packed_bytes"] for row in rows)
