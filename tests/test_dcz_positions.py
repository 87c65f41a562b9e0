""".dcz version 2 position models: lossless round trips, model choice, version 1, corrupt sections."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_dc
from onnx_dc.errors import FormatError
from onnx_dc.formats import dcz, dczmask
from onnx_dc.numerics import maskcode
from onnx_dc.numerics.sparse import encode_positions

MODELS = Path(__file__).resolve().parent.parent / "models"
DC_FILES = sorted(MODELS.glob("*.dc.onnx"))


def _sections(packed: bytes) -> list:
    return dcz._read_sections(memoryview(packed))[1]


def _reseal(buf: bytearray) -> bytes:
    """Recompute the header checksum after editing header or table fields."""
    table_bytes = struct.unpack_from("<I", buf, 56)[0]
    struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[64 : 64 + table_bytes]), zlib.crc32(bytes(buf[:60]))))
    return bytes(buf)


def _entry_offsets(packed: bytes) -> list[int]:
    """Where each section table entry starts in the file."""
    pos, out = 64, []
    for _ in _sections(packed):
        out.append(pos)
        name_len, weight_len = struct.unpack_from("<HH", packed, pos + 40)
        pos += dcz._ENTRY.size + name_len + weight_len
    return out


# ----------------------------------------------------------------------------- round trips on real models
@pytest.fixture(scope="module", params=[p.name for p in DC_FILES])
def shipped(request) -> bytes:
    return (MODELS / request.param).read_bytes()


def test_shipped_models_round_trip_smaller_and_deterministic(shipped: bytes) -> None:
    packed = dcz.pack_bytes(shipped)
    assert dcz.unpack_bytes(packed) == shipped
    assert packed == dcz.pack_bytes(shipped)
    assert struct.unpack_from("<H", packed, 8)[0] == 2
    order0 = dcz.pack_bytes(shipped, positions=False)
    assert dcz.unpack_bytes(order0) == shipped
    # Every LeNet file here has a sparse layer where a position model pays.
    assert {e.codec for e in _sections(packed)} >= {dcz.MASK, dcz.REAL_CODES}
    assert len(packed) < len(order0)


def test_report_gives_models_and_entropies_per_layer(shipped: bytes) -> None:
    rows = dcz.stream_report(dcz.pack_bytes(shipped))
    masked = [r for r in rows if r["gaps_codec"] == "mask"]
    assert masked
    for r in masked:
        assert r["codes_codec"] == "real-codes" and r["codes_model"] == "order-0 of kept entries"
        assert 0 < r["kept"] < r["count"] or r["kept"] == r["count"]
        # Coded sizes lie above the entropy under the model chosen (side information, coder overhead).
        assert 0 < r["positions_entropy_bytes"] <= r["gaps_coded_bytes"]
        assert 0 < r["codes_entropy_bytes"] <= r["codes_coded_bytes"]
        assert r["positions_model"] in ("order-0 gaps, fillers tagged", *maskcode.MODEL_NAMES.values())


def _compressed_lenet(name: str, **settings) -> bytes:
    result = onnx_dc.compress(str(MODELS / f"{name}.onnx"), **settings)
    return result.model.SerializeToString()


@pytest.mark.parametrize("name, settings", [
    ("lenet_300_100", {"sparse_ratio": 0.92, "class_num": 32}),
    ("lenet5", {"sparse_ratio": 0.9, "class_num": 16}),
])
def test_freshly_compressed_lenets_round_trip(name: str, settings: dict) -> None:
    data = _compressed_lenet(name, **settings)
    packed = dcz.pack_bytes(data)
    assert dcz.unpack_bytes(packed) == data
    assert len(packed) <= len(dcz.pack_bytes(data, positions=False))


def test_magnitude_pruned_lenet_300_100_has_empty_input_columns() -> None:
    """MNIST's blank border pixels: their input columns of ip1 are pruned whole by magnitude alone."""
    data = _compressed_lenet("lenet_300_100", sparse_ratio=0.92, class_num=32)
    model = onnx.load_from_string(data)
    ip1 = next(n for n in model.graph.node if n.output[0].startswith("ip1"))
    packed = dcz.pack_bytes(data)
    masks = {e.weight: e for e in _sections(packed) if e.codec == dcz.MASK}
    entry = masks[ip1.output[0]]
    payload = memoryview(packed)[entry.at : entry.at + entry.stored_length]
    decoded = dczmask.decode_mask_section(payload, entry.count, entry.width)
    positions = np.cumsum(decoded.gaps.astype(np.int64) + 1) - 1
    cols = np.bincount(positions[decoded.real] % 784, minlength=784)
    assert (cols == 0).sum() > 50


# ----------------------------------------------------------------------------- model choice
def _sparse_node(mask: np.ndarray, width: int, rng: np.random.Generator) -> tuple[dczmask.NodeStreams, int]:
    kept = np.flatnonzero(mask.ravel())
    entries = encode_positions(kept, width)
    codes = np.where(entries.real, rng.integers(1, 17, entries.real.size), 0).astype(np.uint16)
    node = dczmask.NodeStreams(mask.shape, width, entries.gaps.astype(np.uint16), codes, 5)
    order0 = min(len(m.encode(entries.gaps)) for m in (dczmask.huffman, dczmask.rangecoder))
    order0 += min(len(m.encode(codes)) for m in (dczmask.huffman, dczmask.rangecoder))
    return node, order0


def _round_trip(node: dczmask.NodeStreams, coding: dczmask.MaskCoding) -> None:
    decoded = dczmask.decode_mask_section(memoryview(coding.gaps_payload), node.gaps.size, node.width)
    assert np.array_equal(decoded.gaps, node.gaps)
    codes = dczmask.decode_real_codes(memoryview(coding.codes_payload), decoded.real, node.code_bits)
    assert np.array_equal(codes, node.codes)


@pytest.mark.parametrize("axis, models", [(1, (maskcode.COLS, maskcode.BOTH)), (0, (maskcode.ROWS, maskcode.BOTH))])
def test_empty_lines_pick_a_model_of_that_axis(axis: int, models: tuple[int, ...]) -> None:
    """Whole pruned columns (axis 1) pick a column model, whole pruned rows a row model."""
    rng = np.random.default_rng(axis)
    shape = (200, 400)
    density = np.where(rng.random(shape[axis]) < 0.4, 0.0, rng.uniform(0.05, 0.5, shape[axis]))
    mask = rng.random(shape) < np.expand_dims(density, 1 - axis)
    node, order0 = _sparse_node(mask, 5, rng)
    coding = dczmask.code_node(node, order0)
    assert coding is not None and coding.model in models
    _round_trip(node, coding)


def test_random_mask_is_no_worse_than_order0() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((300, 400)) < 0.08
    node, order0 = _sparse_node(mask, 5, rng)
    coding = dczmask.code_node(node, order0)
    if coding is not None:
        assert len(coding.gaps_payload) + len(coding.codes_payload) < order0
        _round_trip(node, coding)


def test_a_kept_weight_with_code_0_keeps_order0_coding() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((50, 60)) < 0.1
    node, _ = _sparse_node(mask, 3, rng)
    codes = node.codes.copy()
    # A kept weight with code 0 at a gap no filler can have: its mask would lose it.
    codes[np.flatnonzero((codes != 0) & (node.gaps < 7))[0]] = 0
    odd = dczmask.NodeStreams(node.shape, node.width, node.gaps, codes, node.code_bits)
    assert dczmask.kept_positions(odd) is None
    assert dczmask.code_node(odd, 1 << 30) is None


@pytest.mark.parametrize("model", [maskcode.COLS, maskcode.ROWS, maskcode.BOTH])
def test_mask_models_round_trip_with_full_and_empty_lines(model: int) -> None:
    rng = np.random.default_rng(model)
    mask = rng.random((40, 70)) < rng.uniform(0, 0.6, 70)[None, :]
    mask[3], mask[:, 5], mask[7], mask[:, 9] = True, True, False, False
    g = maskcode.grid(np.flatnonzero(mask), mask.shape)
    stream = maskcode.encode_mask(g, model)
    back, got = maskcode.decode_mask(stream, mask.size, mask.sum())
    assert got == model and np.array_equal(back.kept, g.kept)
    assert len(stream) == pytest.approx(maskcode.model_cost(g, model), abs=8)
    assert maskcode.encode_mask(g, model) == stream


# ----------------------------------------------------------------------------- versions and corrupt input
def test_version_1_files_still_unpack(shipped: bytes) -> None:
    buf = bytearray(dcz.pack_bytes(shipped, positions=False))
    struct.pack_into("<H", buf, 8, 1)
    assert dcz.unpack_bytes(_reseal(buf)) == shipped


def test_version_1_files_cannot_use_position_codecs(shipped: bytes) -> None:
    buf = bytearray(dcz.pack_bytes(shipped))
    struct.pack_into("<H", buf, 8, 1)
    with pytest.raises(FormatError, match="unknown codec 5|unknown codec 6"):
        dcz.unpack_bytes(_reseal(buf))


@pytest.fixture(scope="module")
def packed_lenet() -> bytes:
    return dcz.pack_bytes((MODELS / "lenet_300_100-32x.dc.onnx").read_bytes())


def _corrupt_payload(packed: bytes, codec: int, edit) -> bytes:
    """Edit the payload of the first section with ``codec`` and fix its CRC, so the decoder itself must notice."""
    entries = _sections(packed)
    index = next(i for i, e in enumerate(entries) if e.codec == codec)
    e = entries[index]
    payload = edit(bytes(packed[e.at : e.at + e.stored_length]))
    buf = bytearray(packed[: e.at]) + payload + packed[e.at + e.stored_length :]
    at = _entry_offsets(packed)[index]
    struct.pack_into("<I", buf, at + 4, zlib.crc32(payload))
    struct.pack_into("<Q", buf, at + 32, len(payload))
    return _reseal(buf)


def _flip(offset: int):
    return lambda p: p[:offset] + bytes([p[offset] ^ 0x40]) + p[offset + 1 :]


@pytest.mark.parametrize("codec, edit, message", [
    (dcz.MASK, _flip(0), "unknown mask model|order-0 mask"),
    (dcz.MASK, lambda p: p[:-4], "section .*(decode|kept|entries|match|mask)"),
    (dcz.MASK, lambda p: p[:10], "section .*shorter|section .*truncated"),
    (dcz.REAL_CODES, _flip(0), "section .*codec"),
    (dcz.REAL_CODES, lambda p: p[:-3], "section .*"),
])
def test_corrupt_position_sections_give_one_line_errors(packed_lenet: bytes, codec, edit, message) -> None:
    bad = _corrupt_payload(packed_lenet, codec, edit)
    with pytest.raises(FormatError, match=message) as err:
        dcz.unpack_bytes(bad)
    assert "\n" not in str(err.value)


def test_crafted_huge_mask_grid_is_refused_before_allocating(packed_lenet: bytes) -> None:
    def huge(p: bytes) -> bytes:
        return p[:1] + struct.pack("<QQ", 1 << 30, 1 << 30) + p[17:]

    bad = _corrupt_payload(packed_lenet, dcz.MASK, huge)
    with pytest.raises(FormatError, match="outside 1..[0-9]+ positions"):
        dcz.unpack_bytes(bad)


def _recodec(packed: bytes, old: int, new: int) -> bytes:
    """The file with the codec field of the first section of codec ``old`` set to ``new``."""
    buf = bytearray(packed)
    index = next(i for i, e in enumerate(_sections(packed)) if e.codec == old)
    struct.pack_into("<B", buf, _entry_offsets(packed)[index] + 1, new)
    return _reseal(buf)


@pytest.mark.parametrize("old, new, message", [
    (dcz.MASK, dcz.HUFFMAN, "real codes without a matching mask section"),
    (dcz.REAL_CODES, dcz.MASK, "cannot code a codes stream"),
])
def test_position_codecs_are_checked_against_roles_and_links(packed_lenet: bytes, old, new, message) -> None:
    with pytest.raises(FormatError, match=message):
        dcz.unpack_bytes(_recodec(packed_lenet, old, new))


def test_report_of_a_dcz_names_models_and_entropies(tmp_path: Path) -> None:
    packed = tmp_path / "lenet.dcz"
    onnx_dc.pack(MODELS / "lenet_300_100-32x.dc.onnx", packed)
    rep = onnx_dc.report(packed)
    ip1 = next(r for r in rep.layers if r.weight == "ip1.weight")
    assert ip1.positions_model in maskcode.MODEL_NAMES.values()
    assert 0 < ip1.positions_entropy_bytes <= ip1.coded_index_bytes
    assert 0 < ip1.codes_entropy_bytes <= ip1.coded_codes_bytes
    table = rep.to_table()
    assert "position model" in table and ip1.positions_model in table
