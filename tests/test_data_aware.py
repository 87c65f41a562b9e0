"""Data-aware compression: statistics through onnxruntime, and the invariants of each pass."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import conv_model, finish_model, init, mlp_model, run
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.api import prepare
from onnx_dc.data.calib import Samples
from onnx_dc.numerics.kmeans import kmeans_1d
from onnx_dc.passes.bias_correct import correct_bias
from onnx_dc.passes.data_aware import original_weights, parse_data_aware
from onnx_dc.passes.prune import prune
from onnx_dc.passes.prune_activation import prune_layer_by_activation
from onnx_dc.passes.reconstruct import reconstruct_layer
from onnx_dc.passes.refit import output_error, refit_layer
from onnx_dc.passes.share import share
from onnx_dc.runtime.collect import collect_stats, im2col
from onnx_dc.errors import ConfigError


def feeds(n: int, shape: tuple[int, ...], seed: int = 0, name: str = "x") -> Samples:
    x = np.random.default_rng(seed).normal(size=(n, 1, *shape)).astype(np.float32)
    x[..., ::3] *= 4.0  # uneven input scales, so data-aware choices differ from magnitude ones
    return Samples({name: x}, stackable=True)


def prune_by_activation(state, stats, scope: str = "row") -> None:
    """Data-aware pruning of every layer with statistics, one layer at a time as the data-aware passes run it;
    each is pruned by its activation scores (no single magnitude threshold), not by magnitude."""
    for name, st in stats.items():
        layer = state.layers[name]
        assert prune_layer_by_activation(layer, st, scope)
        assert layer.threshold == -1.0


def grouped_conv_model():
    """Grouped, strided, dilated, padded Conv with a bias: y = Conv(x, w, b)."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.3, (6, 2, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 6).astype(np.float32)
    node = oh.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=2, strides=[2, 1], dilations=[1, 2],
                        pads=[1, 2, 0, 1])
    g = oh.make_graph([node], "gconv", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 10])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "H", "W"])],
                      [init("w", w), init("b", b)])
    return finish_model(g)


def test_im2col_reproduces_conv():
    model = grouped_conv_model()
    state = prepare(model)
    samples = feeds(3, (4, 9, 10))
    stats = collect_stats(state, samples).stats["w"]
    x = samples.arrays["x"][:, 0]
    y = run(model, {"x": x})[0]
    # the mean output per channel is W2 E[x] + b over the patches
    w2 = original_weights(state, "w").ravel()[stats.view.index]
    mean = stats.stats.mean()[stats.view.group_of_rows()]
    b = numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(np.einsum("ij,ij->i", w2, mean) + b, y.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    geo = stats.view.conv
    patches = im2col(x, geo.kernel, geo.strides, geo.dilations, geo.pads)
    assert patches.shape[:3] == (3, y.shape[2] * y.shape[3], 4)
    # a patch times the weights is the output at that position
    w = original_weights(state, "w")
    p0 = patches[1, 7, 2:4].ravel()  # sample 1, position 7, group 1
    assert float(p0 @ w[3].ravel() + b[3]) == pytest.approx(float(y[1, 3].ravel()[7]), rel=1e-4, abs=1e-5)


def test_prune_by_activation_reaches_ratio_per_row():
    state = prepare(mlp_model(sizes=(64, 48, 10)), sparse_ratio=0.7)
    stats = collect_stats(state, feeds(50, (64,))).stats
    assert set(stats) == {"w0", "w1"}
    prune_by_activation(state, stats)
    for name, layer in state.layers.items():
        w2_mask = layer.mask.ravel()[stats[name].view.index]
        pruned_per_row = (~w2_mask).sum(axis=1)
        assert np.all(pruned_per_row == int(np.floor(0.7 * w2_mask.shape[1])))
        assert np.all(layer.weights[~layer.mask] == 0)
    # the scores differ from magnitude: inputs scaled x4 keep more of their weights
    w2 = state.layers["w0"].mask.ravel()[stats["w0"].view.index]
    assert w2[:, ::3].mean() > w2.mean()


def test_prune_by_activation_over_the_layer_reaches_the_ratio_and_prunes_the_lowest_scores():
    """prune_scope layer: floor(r * out * in) of the layer's |w| x ||x|| scores go, rows keep different counts,
    and every pruned score is at most every kept one; a grouped Conv is scored over all its groups."""
    for model, shape, names in ((mlp_model(sizes=(64, 48, 10)), (64,), ("w0", "w1")),
                                (grouped_conv_model(), (4, 9, 10), ("w",))):
        state = prepare(model, sparse_ratio=0.7)
        stats = collect_stats(state, feeds(50, shape)).stats
        assert set(stats) == set(names)
        prune_by_activation(state, stats, scope="layer")
        for name in names:
            layer, view = state.layers[name], stats[name].view
            w2 = original_weights(state, name).ravel()[view.index]
            norms = np.sqrt(stats[name].column_moment())
            scores = np.abs(w2) * norms
            keep = layer.mask.ravel()[view.index]
            assert (~keep).sum() == int(np.floor(0.7 * keep.size))
            assert scores[~keep].max() <= scores[keep].min()
            if name != "w":
                assert len(set(keep.sum(axis=1))) > 1  # unlike scope row, rows keep different numbers
            assert np.all(layer.weights[~layer.mask] == 0)
    assert parse_data_aware({"prune_scope": "layer"}).prune_scope == "layer"
    with pytest.raises(ConfigError, match="prune_scope: 'column' must be one of row, layer"):
        parse_data_aware({"prune_scope": "column"})


def test_reconstruct_with_fewer_samples_than_inputs_keeps_what_the_samples_do_not_show():
    """56 samples of a 64-wide input span a 56-dimensional subspace. The least-squares re-solve of
    each row's kept weights is damped toward the original weights: a row nothing was pruned from
    keeps its weights exactly, the error on the samples never rises over plain pruning, and on
    fresh samples (directions the calibration never saw) the result beats plain pruning."""
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(64, 64))
    scales = np.linspace(2.0, 0.2, 64)

    def draw(n: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).normal(size=(n, 64)) * scales
        return (z @ basis.T / 8).astype(np.float32)[:, None]

    state = prepare(mlp_model(sizes=(64, 10)), sparse_ratio=0.5)
    calib = Samples({"x": draw(56, 1)}, stackable=True)
    stats = collect_stats(state, calib).stats["w0"]
    prune_by_activation(state, {"w0": stats})
    layer = state.layers["w0"]
    layer.mask[0] = True  # row 0 loses nothing
    layer.weights[0] = original_weights(state, "w0")[0]
    pruned = layer.weights.copy()
    assert reconstruct_layer(layer, original_weights(state, "w0"), stats)
    np.testing.assert_allclose(layer.weights[0], original_weights(state, "w0")[0], rtol=1e-6, atol=1e-7)
    assert np.all(layer.weights[~layer.mask] == 0)

    def error(w: np.ndarray, x: np.ndarray) -> float:
        return float(np.sum(((x[:, 0] @ (w - original_weights(state, "w0")).T)) ** 2))

    x_cal, x_new = calib.arrays["x"], draw(2000, 2)
    assert error(layer.weights, x_cal) <= error(pruned, x_cal)
    assert error(layer.weights, x_new) < 0.9 * error(pruned, x_new)


def test_prune_by_activation_prunes_exact_zeros_too():
    """A weight matrix that is mostly exact zeros (a fixed filterbank): every zero is pruned, as magnitude pruning
    does, so the mask and the codebook hold only the real weights."""
    model = mlp_model(sizes=(64, 48, 10))
    w0 = next(t for t in model.graph.initializer if t.name == "w0")
    arr = numpy_helper.to_array(w0).copy()
    arr[:, 8:] = 0.0  # 8 non-zero inputs per row of 64
    w0.CopyFrom(numpy_helper.from_array(arr, "w0"))
    state = prepare(model, sparse_ratio=0.5)
    stats = collect_stats(state, feeds(50, (64,))).stats
    prune_by_activation(state, stats)
    mask = state.layers["w0"].mask
    assert not mask[:, 8:].any()  # all 56 zeros of each row pruned, though the ratio asks for 32
    assert np.all(mask[:, :8].sum(axis=1) == 8)  # and no real weight: the zeros took the ratio's place


def test_weighted_kmeans_equals_sklearn_from_same_start():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.3, 700), rng.normal(0.8, 0.5, 1300)])
    w = rng.exponential(size=x.size)
    ours = kmeans_1d(x, 12, "linear", weights=w)
    start = np.linspace(x.min(), x.max(), 12).reshape(-1, 1)
    ref = KMeans(12, init=start, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x.reshape(-1, 1), sample_weight=w)
    np.testing.assert_allclose(ours.centroids, np.sort(ref.cluster_centers_.ravel()), rtol=1e-9, atol=1e-12)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-9)
    # weights of one are plain k-means
    plain = kmeans_1d(x, 12, "linear")
    np.testing.assert_allclose(kmeans_1d(x, 12, "linear", weights=np.ones_like(x)).centroids, plain.centroids)


@pytest.mark.parametrize("make", [mlp_model, conv_model, grouped_conv_model])
def test_refit_never_raises_output_error(make):
    for sparse, k in ((0.0, 4), (0.5, 8), (0.8, 3)):
        state = prepare(make(), sparse_ratio=sparse, class_num=k)
        shape = tuple(d.dim_value for d in state.model.graph.input[0].type.tensor_type.shape.dim[1:])
        stats = collect_stats(state, feeds(40, shape)).stats
        prune(state)
        share(state)
        for name, st in stats.items():
            layer = state.layers[name]
            original = original_weights(state, name)
            index, groups = st.view.index, st.view.group_of_rows()
            h = st.stats.hessian()
            before = output_error(original.ravel()[index], layer.weights.ravel()[index], h, groups)
            codes = layer.codes.copy()
            refit_layer(layer, original, st)
            after = output_error(original.ravel()[index], layer.weights.ravel()[index], h, groups)
            assert after <= before * (1 + 1e-9)
            np.testing.assert_array_equal(layer.codes, codes)  # codes fixed
            if layer.reserves_zero:  # pruned layers keep code 0 = 0.0; unpruned ones have no reserved code
                assert layer.codebook[0] == 0.0 and np.all(layer.weights[codes == 0] == 0)
            else:
                assert layer.codebook.size == k


def test_refit_lowers_error_measured_in_onnxruntime():
    state = prepare(mlp_model(sizes=(64, 10)), class_num=4)
    samples = feeds(60, (64,))
    stats = collect_stats(state, samples).stats
    share(state)
    x = samples.arrays["x"][:, 0]
    y = run(state.model, {"x": x})[0]
    plain = np.linalg.norm(run(state.dense_model(), {"x": x})[0] - y)
    assert refit_layer(state.layers["w0"], original_weights(state, "w0"), stats["w0"])
    assert np.linalg.norm(run(state.dense_model(), {"x": x})[0] - y) < plain


def test_bias_correction_zeroes_mean_output_error_of_a_conv():
    model = grouped_conv_model()
    state = prepare(model, sparse_ratio=0.6, class_num=4)
    samples = feeds(30, (4, 9, 10))
    stats = collect_stats(state, samples).stats
    prune(state)
    share(state)
    x = samples.arrays["x"][:, 0]
    y = run(model, {"x": x})[0]
    assert correct_bias(state, "w", original_weights(state, "w"), stats["w"]) is not None
    yq = run(state.dense_model(), {"x": x})[0]
    np.testing.assert_allclose((yq - y).mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    assert np.abs(yq - y).mean() > 1e-3  # the error itself is not zero, only its mean


def test_bias_correction_on_a_gemm_layer():
    state = prepare(mlp_model(sizes=(64, 10)), sparse_ratio=0.6, class_num=4)
    samples = feeds(30, (64,))
    stats = collect_stats(state, samples).stats
    prune(state)
    share(state)
    x = samples.arrays["x"][:, 0]
    y = run(state.model, {"x": x})[0]
    assert correct_bias(state, "w0", original_weights(state, "w0"), stats["w0"]) is not None
    np.testing.assert_allclose((run(state.dense_model(), {"x": x})[0] - y).mean(axis=0), 0.0, atol=1e-5)


def test_calib_section_is_validated():
    assert parse_data_aware({"prune_by": "magnitude", "refit": False}).refit is False
    with pytest.raises(ConfigError) as exc:
        parse_data_aware({"prune_by": "size", "refit": 1, "typo": True, "carry_mb": -1})
    assert all(k in str(exc.value) for k in ("prune_by", "refit", "typo", "carry_mb"))
    assert parse_data_aware({"carry_mb": 0}).carry_mb == 0 and parse_data_aware(None).carry_mb == 2048
    assert parse_data_aware(None).gptq == "unpruned" and parse_data_aware({"gptq": True}).gptq is True
    with pytest.raises(ConfigError, match="gptq.*true, false or unpruned"):
        parse_data_aware({"gptq": "pruned"})


def test_gptq_keeps_mask_and_codebook():
    from onnx_dc.passes.gptq import gptq_layer

    state = prepare(grouped_conv_model(), sparse_ratio=0.5, class_num=4)
    stats = collect_stats(state, feeds(30, (4, 9, 10))).stats
    prune(state)
    share(state)
    layer = state.layers["w"]
    mask, codebook = layer.mask.copy(), layer.codebook.copy()
    assert gptq_layer(layer, original_weights(state, "w"), stats["w"])
    np.testing.assert_array_equal(layer.codes == 0, ~mask)  # pruned exactly where the mask says
    np.testing.assert_array_equal(layer.codebook, codebook)
    np.testing.assert_array_equal(layer.weights, codebook[layer.codes])


def test_lenet_300_100_at_sparse_09_keeps_93_percent_without_training():
    """Issue 8's goal: data-aware LeNet-300-100 at sparse 0.9 / class_num 32 (default sample count) scores >= 93%."""
    import onnx_dc
    from conftest import MNIST_DIR, ROOT, shared_path

    data = f"mnist:{shared_path(MNIST_DIR)}"
    model = ROOT / "models" / "lenet_300_100.onnx"
    aware = onnx_dc.compress(model, None, sparse_ratio=0.9, class_num=32, calib=data)
    free = onnx_dc.compress(model, None, sparse_ratio=0.9, class_num=32)
    accuracy = onnx_dc.evaluate(aware.model, data).accuracy
    assert accuracy >= 0.93
    assert accuracy > onnx_dc.evaluate(free.model, data).accuracy + 0.1  # data-free: 0.767
    # prune_scope layer: the rows of a fully connected layer keep the inputs they need (0.9497 -> 0.9728 here)
    layer = onnx_dc.compress(model, None, config={"version": 1, "calib": {"prune_scope": "layer"}}, sparse_ratio=0.9,
                             class_num=32, calib=data)
    assert onnx_dc.evaluate(layer.model, data).accuracy > accuracy + 0.01
    assert layer.fidelity.outputs[0].cosine > aware.fidelity.outputs[0].cosine


def test_refit_sums_over_a_row_subsample_count_for_every_row(monkeypatch):
    """A group with more than MAX_ROWS rows enters the normal equations through a subsample scaled to all its
    rows, so views of different sizes (a fused weight's parts) keep their weight when summed."""
    from onnx_dc.passes import refit

    rng = np.random.default_rng(0)
    w_row, q_row = rng.normal(size=(1, 6)), rng.integers(0, 4, (1, 6))
    x = rng.normal(size=(50, 6))
    h = (x.T @ x / 50)[None]
    w2, q2 = np.repeat(w_row, 40, axis=0), np.repeat(q_row, 40, axis=0)  # 40 equal rows: any subsample is exact
    groups = np.zeros(40, np.int64)
    full_m, full_r = refit.normal_equations(w2, q2, h, groups, 4)
    monkeypatch.setattr(refit, "MAX_ROWS", 8)
    m, r = refit.normal_equations(w2, q2, h, groups, 4)
    np.testing.assert_allclose(m, full_m, rtol=1e-10)
    np.testing.assert_allclose(r, full_r, rtol=1e-10)



def test_joint_pass_prunes_each_row_to_the_ratio_by_saliency_and_lowers_the_output_error():
    """calib: joint chooses the mask by OBS saliency with compensation (block by block), then re-solves,
    shares and assigns codes GPTQ's way from the re-solved weights: every row of every column block keeps
    its planned share, pruned weights get code 0, and on correlated inputs the output error
    (W - W_q) H (W - W_q)^T is below the default passes' (activation pruning, re-solve, nearest codes)."""
    from conftest import mlp_model

    from onnx_dc.passes.data_aware import DataAwareResult, DataAwareSettings, compress_layer
    from onnx_dc.passes.joint import BLOCK

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64)) * 0.3 + np.eye(64)  # correlated inputs: compensation has something to do
    x = (rng.normal(size=(400, 64)) @ mix).astype(np.float32)
    samples = Samples({"x": x[:, None]}, stackable=True)
    errors = {}
    for joint in (False, True):
        state = prepare(mlp_model(), sparse_ratio=0.5, class_num=32)
        name = next(iter(state.layers))  # the first Gemm: 64 inputs
        st = collect_stats(state, samples).stats[name]
        original = original_weights(state, name)
        result = DataAwareResult()
        compress_layer(state, name, st, DataAwareSettings(joint=joint, refit=False, bias_correction=False), result)
        layer = state.layers[name]
        np.testing.assert_array_equal(layer.codes == 0, ~layer.mask)
        np.testing.assert_array_equal(layer.weights, layer.codebook[layer.codes])
        keep2 = layer.mask.ravel()[st.view.index]
        if joint:
            assert result.joint == [name] and result.gptq == [name] and result.pruned_by_activation == []
            per_block = keep2.reshape(keep2.shape[0], -1, BLOCK).sum(axis=2)
            assert (per_block == BLOCK // 2).all()  # floor(0.5 * 16) pruned in every row of every block
        index = st.view.index
        errors[joint] = output_error(original.ravel()[index], layer.weights.ravel()[index], st.stats.hessian(),
                                     st.view.group_of_rows())
    assert errors[True] < 0.9 * errors[False], errors


def test_joint_pass_never_ends_above_todays_passes_on_a_real_network(tmp_path):
    """calib: joint on the first 10 layers of the CIFAR-10 ResNet-20 (../shared/data/real) at 0.5 / 32, on photo
    crops: each layer's output error (on the samples its statistics come from) is at most what today's
    passes leave, layer by layer; where the joint pass lost, the layer keeps today's result and says so."""
    from calib_images import require, write_folder
    from conftest import SHARED_DATA

    from onnx_dc.data.calib import load_calib, parse_calib_spec
    from onnx_dc.passes.data_aware import DataAwareResult, DataAwareSettings, compress_layer, layer_error

    model = require(SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    folder = write_folder(tmp_path / "imgs", 24, (32, 32))
    spec = parse_calib_spec(f"images:{folder}", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    base = prepare(model, sparse_ratio=0.5, class_num=32)
    stats = collect_stats(base, load_calib(spec, base.model).calib).stats  # one set of statistics for both
    errors, results = {}, {}
    for joint in (False, True):
        state = prepare(model, sparse_ratio=0.5, class_num=32)
        state.keep_originals()
        result = DataAwareResult()
        settings = DataAwareSettings(joint=joint, bias_correction=False, sequential=False)
        names = list(state.layers)[:10]
        for name in names:
            compress_layer(state, name, stats[name], settings, result)
        errors[joint] = {n: layer_error(state.layers[n].weights, original_weights(state, n), stats[n]) for n in names}
        results[joint] = result
    for name in errors[True]:
        assert errors[True][name] <= errors[False][name] * (1 + 1e-9), name
    assert results[True].joint and set(results[True].joint).isdisjoint(results[True].joint_lost)
    assert len(results[True].joint) + len(results[True].joint_lost) == len(errors[True])
    assert sum(errors[True].values()) < sum(errors[False].values())


def test_gptq_unpruned_codes_unpruned_layers_from_the_resolved_weights_and_never_raises_their_error(tmp_path):
    """calib: gptq: unpruned on the first 10 layers of the CIFAR-10 ResNet-20 (../shared/data/real), half of
    them pruned (0.5 / 16), half not (0 / 16), on photo crops. The layers that prune nothing get GPTQ's codes
    (from the re-solved weights) where those leave a smaller output error than the nearest codes, and keep
    the nearest ones where not (``gptq_lost``), so no layer ends above the plain passes (refit off, so the
    codes alone differ); pruned layers come out exactly as without it; over the unpruned layers the summed
    output error falls well below the plain passes'."""
    from calib_images import require, write_folder
    from conftest import SHARED_DATA

    from onnx_dc.data.calib import load_calib, parse_calib_spec
    from onnx_dc.passes.data_aware import DataAwareResult, DataAwareSettings, compress_layer, layer_error

    model = require(SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    folder = write_folder(tmp_path / "imgs", 24, (32, 32))
    spec = parse_calib_spec(f"images:{folder}", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    names = list(prepare(model).layers)[:10]  # weight names without fnmatch's special characters
    config = {"version": 1, "nodes": [{"match": n, "sparse_ratio": 0.5 * (i % 2), "class_num": 16}
                                      for i, n in enumerate(names)] + [{"match": "*", "skip": True}]}
    errors, weights, results = {}, {}, {}
    for mode in (False, "unpruned"):
        state = prepare(model, config=config)
        stats = collect_stats(state, load_calib(spec, state.model).calib).stats
        state.keep_originals()
        result = DataAwareResult()
        settings = DataAwareSettings(gptq=mode, refit=False, bias_correction=False, sequential=False)
        for name in names:
            compress_layer(state, name, stats[name], settings, result)
        errors[mode] = {n: layer_error(state.layers[n].weights, original_weights(state, n), stats[n]) for n in names}
        weights[mode] = {n: state.layers[n].weights.copy() for n in names}
        results[mode] = result
    pruned, unpruned = names[1::2], names[0::2]
    assert set(results["unpruned"].gptq) | set(results["unpruned"].gptq_lost) == set(unpruned)
    assert results["unpruned"].gptq and not results[False].gptq
    for name in pruned:
        np.testing.assert_array_equal(weights["unpruned"][name], weights[False][name])
    for name in unpruned:
        assert errors["unpruned"][name] <= errors[False][name] * (1 + 1e-9), name
    assert sum(errors["unpruned"][n] for n in unpruned) < 0.8 * sum(errors[False][n] for n in unpruned)
