"""Sequential data-aware compression: statistics measured on the model whose upstream layers are compressed."""

from __future__ import annotations

import numpy as np
import pytest
from calib_audio import audio_cases
from calib_images import require, write_folder
from conftest import SHARED_DATA, finish_model, init, mlp_model, run
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc
from onnx_dc.api import prepare
from onnx_dc.data.calib import Samples, parse_calib_spec
from onnx_dc.graph.layerview import layer_views
from onnx_dc.graph.walk import weights_upstream
from onnx_dc.passes.data_aware import DataAwareResult, DataAwareSettings, compress_layer
from onnx_dc.runtime.collect import Collector

REAL = SHARED_DATA / "real"


def samples(n: int, shape: tuple[int, ...], seed: int = 0, name: str = "x", stackable: bool = True) -> Samples:
    x = np.random.default_rng(seed).normal(size=(n, 1, *shape)).astype(np.float32)
    return Samples({name: x}, stackable=stackable)


def branchy_model():
    """x -> conv a -> Relu -> conv b;  x -> conv c;  b + c -> conv d (a, c in the first wave, then b, then d)."""
    rng = np.random.default_rng(0)
    w = {k: rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32) for k in "abcd"}
    nodes = [oh.make_node("Conv", ["x", "wa"], ["ya"], name="a", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["ya"], ["ra"]),
             oh.make_node("Conv", ["ra", "wb"], ["yb"], name="b", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["x", "wc"], ["yc"], name="c", pads=[1, 1, 1, 1]),
             oh.make_node("Add", ["yb", "yc"], ["s"]),
             oh.make_node("Conv", ["s", "wd"], ["y"], name="d", pads=[1, 1, 1, 1])]
    g = oh.make_graph(nodes, "branchy", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                      [init(f"w{k}", v) for k, v in w.items()])
    return finish_model(g)


def test_waves_follow_the_graph():
    state = prepare(branchy_model(), sparse_ratio=0.5, class_num=8)
    waves = Collector(state, samples(4, (4, 6, 6))).waves()
    assert [sorted(w) for w in waves] == [["wa", "wc"], ["wb"], ["wd"]]


def test_waves_on_resnet20_put_every_upstream_layer_first():
    model = require(REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    state = prepare(model, sparse_ratio=0.5, class_num=32)
    collector = Collector(state, samples(2, (3, 32, 32)))
    waves = collector.waves()
    wave_of = {name: i for i, wave in enumerate(waves) for name in wave}
    assert sorted(wave_of) == sorted(state.layers) and len(waves) == 20  # 22 layers, 2 shortcut convs beside others
    names = list(state.layers)
    for name in names:
        acts = [v.activation for v in layer_views(state.model, state.layers[name].entry.site)[0]]
        above = set().union(*weights_upstream(state.model.graph, names, acts).values())
        assert all(wave_of[u] < wave_of[name] for u in above)


def test_paired_statistics_equal_plain_ones_when_nothing_upstream_changed():
    """Paired with an unchanged model, E[x x_o^T] is E[x x^T] and E[x_o] is E[x]."""
    state = prepare(mlp_model(), sparse_ratio=0.5, class_num=8)
    collector = Collector(state, samples(40, (64,)))
    plain = collector.collect()
    paired = collector.collect(current={n: layer.weights for n, layer in state.layers.items()})
    for name, st in plain.items():
        p = paired[name].stats
        assert p.cross is not None and st.stats.cross is None
        np.testing.assert_allclose(p.target_cross(), st.stats.hessian(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(p.reference_mean(), st.stats.mean(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(p.hessian(), st.stats.hessian(), rtol=1e-6, atol=1e-9)


def shared_weight_model():
    """x -> conv a (weight w) -> Relu -> conv b (the same w) -> conv d: w's second consumer reads its first one."""
    rng = np.random.default_rng(1)
    nodes = [oh.make_node("Conv", ["x", "w"], ["ya"], name="a", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["ya"], ["ra"]),
             oh.make_node("Conv", ["ra", "w"], ["yb"], name="b", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["yb", "wd"], ["y"], name="d", pads=[1, 1, 1, 1])]
    g = oh.make_graph(nodes, "shared", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                      [init(k, rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)) for k in ("w", "wd")])
    return finish_model(g)


def in_lockstep(model, data: Samples, carry_bytes: int) -> tuple[Collector, Collector]:
    """Sequential waves on one state measured twice: each wave's model run from the graph inputs, and carried
    (:class:`onnx_dc.runtime.collect._Carry`, at most ``carry_bytes``); the wave is compressed between waves,
    so both see the same upstream. Asserts every wave's statistics agree; returns (from inputs, carried)."""
    state = prepare(model, sparse_ratio=0.5, class_num=16)
    plain, carried = Collector(state, data, carry_bytes=0), Collector(state, data, carry_bytes=carry_bytes)
    result = DataAwareResult()
    for wave in plain.waves():
        current = {n: layer.weights for n, layer in state.layers.items()}
        want, got = plain.collect(wave, current, carry=True), carried.collect(wave, current, carry=True)
        for name in wave:
            for field in ("total", "squares", "gram", "total_ref", "cross"):
                a, b = getattr(want[name].stats, field), getattr(got[name].stats, field)
                if a is not None:  # float32 activations: parts cut at other places round differently
                    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max(), err_msg=f"{name} {field}")
            compress_layer(state, name, want[name], DataAwareSettings(), result)
    return plain, carried


def test_carried_waves_measure_what_waves_from_the_inputs_measure_on_resnet20():
    """ResNet-20 (shortcuts carry tensors past several waves): the same statistics, and each node runs about once
    per model instead of once per wave."""
    model = require(REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    plain, carried = in_lockstep(str(model), samples(24, (3, 32, 32), name="input", stackable=False), 1 << 30)
    nodes = len(plain.state.model.graph.node)
    assert carried.nodes_run <= 2 * nodes < plain.nodes_run / 4


def test_carried_waves_rerun_a_node_whose_weight_changed_after_it_ran(tmp_path):
    """A weight read by two nodes, the second downstream of the first (its wave ran the first with the
    uncompressed weight), and LSTMs upstream of their own R input (dtln stage 1): such nodes run again with the
    compressed weight, with what depends on them."""
    in_lockstep(shared_weight_model(), samples(16, (4, 6, 6)), 1 << 30)
    require(REAL / "gtcrn" / "test_wavs-mix.wav")
    ((_, model, npz),) = audio_cases(tmp_path, ("dtln-1",))
    arrays = dict(np.load(npz))
    data = Samples({k: v[:40] for k, v in arrays.items() if v.ndim > 1},
                   constants={k: v for k, v in arrays.items() if v.ndim <= 1})
    plain, carried = in_lockstep(str(require(model)), data, 1 << 30)
    assert carried.nodes_run < plain.nodes_run


def test_waves_whose_tensors_pass_the_byte_limit_run_from_the_inputs():
    """A wave whose kept tensors would pass the limit keeps none, and the next runs from the graph inputs: the same
    statistics always; with a limit below every wave, as many nodes as without carrying; with one that only
    ResNet-20's early, wide waves pass (16 x 32 x 32 activations), fewer than that, more than carrying all."""
    model = str(require(REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"))
    data = samples(8, (3, 32, 32), name="input", stackable=False)
    plain, none = in_lockstep(model, data, 1)
    _, some = in_lockstep(model, data, 2 * 600_000)
    _, every = in_lockstep(model, data, 1 << 30)
    assert none.nodes_run == plain.nodes_run > some.nodes_run > every.nodes_run


def compress_npz(model, tmp_path, sequential: bool, n: int = 200):
    x = np.random.default_rng(3).normal(size=(n, 64)).astype(np.float32)
    x[:, ::3] *= 4.0
    np.savez(tmp_path / "x.npz", x=x)
    calib = parse_calib_spec(f"npz:{tmp_path / 'x.npz'}", limit=n)
    return onnx_dc.compress(model, None, {"defaults": {"sparse_ratio": 0.7, "class_num": 4},
                                          "calib": {"sequential": sequential}}, calib=calib)


def test_sequential_bias_correction_zeroes_the_mean_error_of_the_whole_model(tmp_path):
    """b' = b + W E[x_o] - W_q E[x]: the last layer's mean output equals the original's, upstream errors included."""
    model = mlp_model(sizes=(64, 48, 32, 10))
    errors = {}
    for sequential in (True, False):
        result = compress_npz(model, tmp_path, sequential)
        assert result.calib.result.waves == (3 if sequential else None)
        x = result.calib.data.calib.arrays["x"].reshape(-1, 64)
        y, yq = run(model, {"x": x})[0], run(result.model, {"x": x})[0]
        errors[sequential] = np.abs((yq - y).mean(axis=0)).max() / np.abs(y).mean()
    assert errors[True] < 1e-5 < 1e-2 < errors[False]


def test_sequential_lowers_the_error_of_a_deep_mlp(tmp_path):
    model = mlp_model(sizes=(64, 48, 48, 48, 10))
    fid = {s: compress_npz(model, tmp_path, s).fidelity.outputs[0] for s in (True, False)}
    assert fid[True].rel_l2 < fid[False].rel_l2 and fid[True].cosine > fid[False].cosine


@pytest.mark.parametrize("name, rel, spec, n", [
    ("resnet20", "cifar10-resnet20/resnet20_cifar10_pre.onnx",
     dict(size="32,32", mean="0.485,0.456,0.406", std="0.229,0.224,0.225"), 80),
    ("fastestdet", "fastestdet/FastestDet.onnx", dict(size="352,352", channels="bgr"), 20),
])
def test_sequential_gains_on_real_models(tmp_path, name, rel, spec, n):
    """Deep real models: every output closer to the original's than with statistics of the original alone."""
    model = require(REAL / rel)
    h, w = (int(v) for v in spec["size"].split(","))
    calib = parse_calib_spec(f"images:{write_folder(tmp_path / name, n, (h + 16, w + 16), seed=5, suffix='.jpg')}",
                             **spec)
    fid = {s: onnx_dc.compress(model, None, {"defaults": {"sparse_ratio": 0.5, "class_num": 32},
                                             "calib": {"sequential": s}}, calib=calib).fidelity for s in (True, False)}
    for seq, plain in zip(fid[True].outputs, fid[False].outputs):
        assert seq.rel_l2 < plain.rel_l2 and seq.cosine > plain.cosine, (name, seq, plain)


def test_attribution_in_one_session_equals_building_each_variant():
    """The layers named responsible are measured in one session with overridable weights; each gain equals
    the one of a model built with that layer's weight, and its bias entries, back to their original values."""
    import onnx
    from onnx import numpy_helper

    from onnx_dc.calibrate import ATTRIBUTION_SAMPLES, fidelity_of, run_calibrated, start_calib
    from onnx_dc.passes.data_aware import original_weights
    from onnx_dc.runtime.fidelity import compare_outputs, mean_error

    model = mlp_model(sizes=(64, 48, 48, 10))
    state = prepare(model, sparse_ratio=0.9, class_num=2)
    run = run_calibrated(state, start_calib(state, "digits", None))
    fid = fidelity_of(model, state.dense_model(), state, run)
    assert fid.poor() and fid.culprits and run.result.bias_corrected
    few = run.data.heldout.take(slice(0, ATTRIBUTION_SAMPLES))
    total = mean_error(compare_outputs(model.SerializeToString(), state.dense_model().SerializeToString(), few))
    for name, gain in fid.culprits:
        variant = state.dense_model()
        bias, rows, values = run.result.original_biases[name]
        for t in variant.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(original_weights(state, name), name))
            elif t.name == bias:
                arr = numpy_helper.to_array(t).copy()
                arr.flat[rows] = values
                t.CopyFrom(numpy_helper.from_array(arr, bias))
        err = mean_error(compare_outputs(model.SerializeToString(), onnx.ModelProto.SerializeToString(variant), few))
        assert gain == pytest.approx((total - err) / total, abs=2e-4)


def test_an_unpruned_layer_is_re_solved_against_the_error_arriving_from_upstream():
    """sparse_ratio 0 keeps every weight, but with paired statistics (upstream already compressed) the
    least-squares re-solve still lowers E[(W x - W_o x_o)^2]; with the original's statistics alone it would
    return W, and is skipped (weights untouched)."""
    from onnx_dc.passes.reconstruct import reconstruct_layer

    state = prepare(mlp_model(sizes=(64, 48, 10)), sparse_ratio=0.0, class_num=8)
    collector = Collector(state, samples(300, (64,)))
    plain = collector.collect()["w1"]
    upstream = state.layers["w0"]
    current = {n: layer.weights.copy() for n, layer in state.layers.items()}
    current["w0"] = np.round(upstream.weights * 4) / 4  # a coarse upstream layer
    paired = collector.collect(current=current)["w1"]
    layer = state.layers["w1"]
    assert layer.mask is None
    original = layer.weights.copy()
    assert not reconstruct_layer(layer, original, plain)
    np.testing.assert_array_equal(layer.weights, original)

    def error(w: np.ndarray) -> float:  # E[(w^T x - w_o^T x_o)^2] summed over rows, from the paired moments
        p = paired.stats
        h, c = p.hessian()[0], p.cross_moment()[0]
        h_o = plain.stats.hessian()[0]
        return float(np.einsum("ij,jk,ik->", w, h, w) - 2 * np.einsum("ij,jk,ik->", w, c, original)
                     + np.einsum("ij,jk,ik->", original, h_o, original))

    assert reconstruct_layer(layer, original, paired)
    assert error(layer.weights) < 0.7 * error(original)


def test_an_unpruned_resnet20_gains_from_the_re_solve(tmp_path):
    """ResNet-20 at sparse_ratio 0 / class_num 16 (sequential statistics): held-out outputs closer to the
    original's with the re-solve than with ``reconstruct: false``, which is what 0 / 16 did before (both
    with ``gptq: false``, the re-solve alone); and closer still with the default ``gptq: unpruned``, whose
    codes come from the re-solved weights."""
    model = require(REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    calib = parse_calib_spec(f"images:{write_folder(tmp_path / 'r20', 80, (48, 48), seed=5, suffix='.jpg')}",
                             size="32,32", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    fid = {}
    for re_solve, gptq in ((True, False), (False, False), (True, "unpruned")):
        result = onnx_dc.compress(model, None, {"defaults": {"sparse_ratio": 0.0, "class_num": 16},
                                                "calib": {"reconstruct": re_solve, "gptq": gptq}}, calib=calib)
        assert bool(result.calib.result.reconstructed) == re_solve
        assert bool(result.calib.result.gptq) == bool(gptq)
        fid[re_solve, gptq] = result.fidelity.outputs[0]
    assert fid[True, "unpruned"].rel_l2 < 0.8 * fid[True, False].rel_l2
    fid = {re_solve: fid[re_solve, False] for re_solve in (True, False)}
    assert fid[True].rel_l2 < 0.8 * fid[False].rel_l2 and fid[True].cosine > fid[False].cosine
