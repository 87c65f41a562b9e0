"""Convert a fitted scikit-learn MLPClassifier to ONNX (Gemm + activation per layer).

    h_0 = x,   h_{i+1} = act(h_i W_i + b_i),   logits = h_L W_L + b_L

The output is the logits (the classifier's softmax does not change the argmax), named
``logits``; the input ``x`` is float32 ``[N, n_features]``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.errors import ConversionError

_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": None}


def mlp_to_onnx(clf, opset: int = 17) -> onnx.ModelProto:
    """ONNX model of a fitted ``sklearn.neural_network.MLPClassifier``.

    Raises:
        ConversionError: when the classifier is not fitted or uses an unknown activation.
    """
    if not hasattr(clf, "coefs_"):
        raise ConversionError("the MLPClassifier is not fitted; call fit() first")
    if clf.activation not in _ACTIVATIONS:
        raise ConversionError(f"MLP activation {clf.activation!r} has no ONNX counterpart here")
    n_in = clf.coefs_[0].shape[0]
    nodes, inits = [], []
    current = "x"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        # Gemm with transB: the weight is stored [out, in] as Caffe / PyTorch lay it out.
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32), f"fc{i + 1}.weight"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"fc{i + 1}.bias"))
        out = "logits" if i == last else f"fc{i + 1}"
        nodes.append(oh.make_node("Gemm", [current, f"fc{i + 1}.weight", f"fc{i + 1}.bias"], [out],
                                  name=f"fc{i + 1}", transB=1))
        current = out
        act = _ACTIVATIONS[clf.activation]
        if i != last and act:
            nodes.append(oh.make_node(act, [current], [f"{current}_act"], name=f"{act.lower()}{i + 1}"))
            current = f"{current}_act"
    graph = oh.make_graph(
        nodes, "sklearn_mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", n_in])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", clf.coefs_[-1].shape[1]])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], producer_name="onnx_dc.sklearn_mlp")
    model.ir_version = 10
    return model
