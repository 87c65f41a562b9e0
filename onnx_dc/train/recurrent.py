"""LSTM, GRU and RNN unrolled over a static number of time steps, in ops that have CPU gradients.

onnxruntime-training 1.19's own recurrent gradients train only the forward direction, only the
default activations (its LSTMGrad refuses even ``activations`` spelled out as the defaults), and
its LSTMGrad fails type inference when only some outputs are read. Where the sequence length is
known, the op is written out as the ONNX spec defines it, step by step (``'``: transpose,
``(.)``: elementwise; W, R, B and P are direction d's slices; activations f, g, h as the node gives them):

    LSTM (gates i, o, f, c):  it = f(Xt Wi' + Ht-1 Ri' + Pi (.) Ct-1 + Wbi + Rbi)
                              ft = f(Xt Wf' + Ht-1 Rf' + Pf (.) Ct-1 + Wbf + Rbf)   (input_forget: ft = 1 - it)
                              ct = g(Xt Wc' + Ht-1 Rc' + Wbc + Rbc)
                              Ct = ft (.) Ct-1 + it (.) ct
                              ot = f(Xt Wo' + Ht-1 Ro' + Po (.) Ct + Wbo + Rbo)
                              Ht = ot (.) h(Ct)
    GRU (gates z, r, h):      zt = f(Xt Wz' + Ht-1 Rz' + Wbz + Rbz),  rt likewise
                              ht = g(Xt Wh' + (rt (.) Ht-1) Rh' + Rbh + Wbh)          (linear_before_reset 0)
                              ht = g(Xt Wh' + rt (.) (Ht-1 Rh' + Rbh) + Wbh)          (linear_before_reset 1)
                              Ht = (1 - zt) (.) ht + zt (.) Ht-1
    RNN:                      Ht = f(Xt Wi' + Ht-1 Ri' + Wbi + Rbi)

``clip`` bounds every activation's input: clip(x, c) = x - Relu(x - c) + Relu(-x - c). The reverse
direction walks the steps from last to first; Y keeps the time order. A missing initial state is
zero, so the first step's recurrent terms are left out. Activations: Sigmoid, Tanh, Relu,
HardSigmoid, LeakyRelu, Affine and ScaledTanh (their alpha / beta consumed in order, as the spec
says and onnxruntime's LSTM and GRU read them; its RNN reads them by the activation's position); other activations, ``sequence_lens``, or more than :data:`MAX_STEPS` steps leave the node as it is.
"""

from __future__ import annotations

import onnx

from onnx_dc.graph.walk import attributes
from onnx_dc.train.builder import NodeBuilder

MAX_STEPS = 256  # longer sequences stay one node: ~15 nodes per step and direction

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
# activation -> (takes alpha, takes beta, default alpha, default beta)
_ACTIVATIONS = {"sigmoid": (False, False, 0, 0), "tanh": (False, False, 0, 0), "relu": (False, False, 0, 0),
                "hardsigmoid": (True, True, 0.2, 0.5), "leakyrelu": (True, False, 0.01, 0),
                "affine": (True, True, 1.0, 0.0), "scaledtanh": (True, True, 1.0, 1.0)}


class _Builder(NodeBuilder):
    """A node builder that also writes the recurrent ops' activations."""

    def activation(self, kind: str, x: str, alpha: float, beta: float, clip: float | None) -> str:
        if clip is not None:
            c = self.real(clip)
            over = self.op("Relu", [self.op("Sub", [x, c])])
            under = self.op("Relu", [self.op("Sub", [self.op("Neg", [x]), c])])
            x = self.op("Add", [self.op("Sub", [x, over]), under])
        if kind in ("sigmoid", "tanh", "relu"):
            return self.op(kind.capitalize(), [x])
        if kind == "leakyrelu":
            neg = self.op("Relu", [self.op("Neg", [x])])
            return self.op("Sub", [self.op("Relu", [x]), self.op("Mul", [neg, self.real(alpha)])])
        if kind == "scaledtanh":
            return self.op("Mul", [self.op("Tanh", [self.op("Mul", [x, self.real(beta)])]), self.real(alpha)])
        y = self.op("Add", [self.op("Mul", [x, self.real(alpha)]), self.real(beta)])  # affine, hardsigmoid
        if kind == "affine":
            return y
        return self.op("Sub", [self.op("Relu", [y]), self.op("Relu", [self.op("Sub", [y, self.real(1.0)])])])


def trains_as_it_is(node: onnx.NodeProto) -> bool:
    """Whether onnxruntime-training's own gradient trains ``node`` (forward direction; a bidirectional one split):
    a GRU with the default activations, no clip, time first, and an initial state (its GRUGrad fails type
    inference without one). Its LSTMGrad fails even on LSTMs as PyTorch and Keras export them."""
    names = {a.name for a in node.attribute}
    return (node.op_type == "GRU" and not names & {"activations", "clip", "layout"}
            and len(node.input) > 5 and bool(node.input[5]))


def _activations(node: onnx.NodeProto, directions: int) -> list[list[tuple[str, float, float]]] | None:
    """Per direction, the activations ``(kind, alpha, beta)``; None when one is not supported."""
    attrs = attributes(node)
    default = _DEFAULT_ACTIVATIONS[node.op_type]
    names = [n.decode() if isinstance(n, bytes) else n for n in attrs.get("activations", list(default) * directions)]
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    if len(names) != len(default) * directions:
        return None
    positional = node.op_type == "RNN"  # onnxruntime's RNN reads alpha / beta by position, LSTM / GRU in order
    out = []
    for i, name in enumerate(names):
        kind = name.lower()
        if kind not in _ACTIVATIONS:
            return None
        takes_alpha, takes_beta, alpha, beta = _ACTIVATIONS[kind]
        if positional:
            alpha = alphas[i] if i < len(alphas) else alpha
            beta = betas[i] if i < len(betas) else beta
        else:
            alpha = alphas.pop(0) if takes_alpha and alphas else alpha
            beta = betas.pop(0) if takes_beta and betas else beta
        out.append((kind, float(alpha), float(beta)))
    n = len(default)
    return [out[d * n : (d + 1) * n] for d in range(directions)]


def unrolled(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> list[onnx.NodeProto] | None:
    """The LSTM / GRU / RNN ``node`` step by step; None where it cannot be (see the module's notes)."""
    attrs = attributes(node)
    op = node.op_type
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x_shape = shapes.get(inputs[0])
    layout = int(attrs.get("layout", 0))
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    directions = 2 if direction == "bidirectional" else 1
    acts = _activations(node, directions)
    if (op not in _GATES or x_shape is None or len(x_shape) != 3 or acts is None or inputs[4]
            or not 0 < x_shape[1 if layout else 0] <= MAX_STEPS or x_shape[2] <= 0):
        return None
    steps, hidden, gates = x_shape[1 if layout else 0], int(attrs["hidden_size"]), _GATES[op]
    clip = float(attrs["clip"]) if "clip" in attrs else None
    b = _Builder(f"{node.name}/unrolled/")
    x = b.op("Transpose", [inputs[0]], perm=[1, 0, 2]) if layout else inputs[0]  # [T, B, I]
    wanted = [o if o else None for o in node.output] + [None] * (3 - len(node.output))
    ys, finals_h, finals_c = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        at = b.ints([d], scalar=True)

        def of(i: int) -> str | None:  # layout 1 puts initial_h / initial_c's direction axis second
            return b.op("Gather", [inputs[i], at], axis=1 if layout and i in (5, 6) else 0) if inputs[i] else None

        w, r, bias, h0, c0, peep = of(1), of(2), of(3), of(5), of(6), of(7)
        xw = b.op("MatMul", [x, b.op("Transpose", [w], perm=[1, 0])])  # [T, B, G H]
        rt = b.op("Transpose", [r], perm=[1, 0])  # [H, G H]
        wb = rb = None
        if bias is not None:
            wb, rb = b.part(bias, 0, gates * hidden, 0), b.part(bias, gates * hidden, 2 * gates * hidden, 0)
        if op == "GRU":
            xw = b.add(xw, wb)  # the reset gate's candidate keeps Rbh apart
            rb_z, rb_r, rb_h = ((b.part(rb, k * hidden, (k + 1) * hidden, 0) for k in range(3)) if rb
                                else (None, None, None))
        else:
            xw = b.add(xw, wb, rb)
        pi, po, pf = ((b.part(peep, k * hidden, (k + 1) * hidden, 0) for k in range(3)) if peep is not None
                      else (None, None, None))
        h, c = h0, c0
        outs: list[str | None] = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            xt = b.op("Gather", [xw, b.ints([t], scalar=True)], axis=0)  # [B, G H]
            hr = b.op("MatMul", [h, rt]) if h is not None else None
            f, g = acts[d][0], acts[d][1] if len(acts[d]) > 1 else None

            def gate(k: int, extra: str | None = None, act=f, pre_x=xt, pre_h=hr) -> str:
                total = b.add(b.part(pre_x, k * hidden, (k + 1) * hidden),
                              b.part(pre_h, k * hidden, (k + 1) * hidden) if pre_h is not None else None, extra)
                return b.activation(act[0], total, act[1], act[2], clip)

            if op == "RNN":
                h = gate(0)
            elif op == "LSTM":
                peep_c = (lambda p: b.op("Mul", [p, c]) if p is not None and c is not None else None)
                it = gate(0, peep_c(pi))
                ct = gate(3, act=g)
                kept = b.op("Mul", [it, ct])
                if c is None:  # no forget gate without a cell state (an unread gate upsets onnxruntime's Split fusion)
                    c = kept
                else:
                    ft = b.op("Sub", [b.real(1.0), it]) if attrs.get("input_forget", 0) else gate(2, peep_c(pf))
                    c = b.op("Add", [b.op("Mul", [ft, c]), kept])
                ot = gate(1, b.op("Mul", [po, c]) if po is not None else None)
                hh = acts[d][2]
                h = b.op("Mul", [ot, b.activation(hh[0], c, hh[1], hh[2], None)])
            else:
                zt, rt_gate = gate(0, rb_z), gate(1, rb_r)
                xh = b.part(xt, 2 * hidden, 3 * hidden)
                if h is None:
                    cand = b.add(xh, b.op("Mul", [rt_gate, rb_h]) if attrs.get("linear_before_reset", 0) and rb_h else None,
                                 None if attrs.get("linear_before_reset", 0) else rb_h)
                elif attrs.get("linear_before_reset", 0):
                    rh = b.add(b.op("MatMul", [h, b.part(rt, 2 * hidden, 3 * hidden)]), rb_h)
                    cand = b.add(xh, b.op("Mul", [rt_gate, rh]))
                else:
                    rh = b.op("MatMul", [b.op("Mul", [rt_gate, h]), b.part(rt, 2 * hidden, 3 * hidden)])
                    cand = b.add(xh, rh, rb_h)
                ht = b.activation(g[0], cand, g[1], g[2], clip)
                keep = b.op("Sub", [b.real(1.0), zt])
                h = b.op("Mul", [keep, ht]) if h is None else b.op("Add", [b.op("Mul", [keep, ht]), b.op("Mul", [zt, h])])
            outs[t] = h
        finals_h.append(h)
        finals_c.append(c)
        if wanted[0]:
            ys.append(b.op("Concat", [b.op("Reshape", [o, b.ints([1, 1, -1, hidden])]) for o in outs], axis=0))
    if wanted[0]:  # Y [T, D, B, H] (layout 1: [B, T, D, H])
        y = b.op("Concat", ys, axis=1) if directions > 1 else ys[0]
        if layout:
            y = b.op("Transpose", [y], perm=[2, 0, 1, 3])
        b.op("Identity", [y], wanted[0])
    for slot, finals in ((1, finals_h), (2, finals_c)):
        if slot < len(wanted) and wanted[slot]:  # Y_h, Y_c [D, B, H] (layout 1: [B, D, H])
            parts = [b.op("Reshape", [f, b.ints([1, -1, hidden])]) for f in finals]
            out = b.op("Concat", parts, axis=0) if directions > 1 else parts[0]
            if layout:
                out = b.op("Transpose", [out], perm=[1, 0, 2])
            b.op("Identity", [out], wanted[slot])
    return b.nodes
