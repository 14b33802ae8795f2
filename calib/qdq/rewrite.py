"""Q/DQ rewriting: turn a :class:`~calib.qdq.placement.Placement` into nodes and initializers.

An :class:`Emitter` holds the graph being rewritten, the placement, the report and the names
taken, and writes the graph's nodes again in order, each preceded by what it needs:

* :meth:`Emitter.quantize_activation` / :meth:`Emitter.dequantize_activation`: one
  QuantizeLinear per quantized tensor (after its producer, or at the graph input) and one
  DequantizeLinear per consuming edge, with scalar scale and zero point initializers;
* :meth:`Emitter.quantize_weight`: int8 initializer + DequantizeLinear (per channel along the
  weight's output-channel axis, or per tensor), one per weight and scale;
* :meth:`Emitter.quantize_bias` (``onnxruntime``): int32 bias, scale input scale x weight scale;
* :meth:`Emitter.correct_bias` and :meth:`Emitter.add_bias_probe`: bias correction
  (:mod:`calib.qdq.bias`);
* :meth:`Emitter.wrap_fp16`, run after the rewrite: Cast nodes around the plan's fp16 nodes
  (float16 compute, or float32 between float16 round trips where the runtime has no float16 kernel).

Inserted nodes and tensors are named after the tensor they quantize (``<tensor>_QuantizeLinear``,
``<tensor>_quantized``, ``<tensor>_dequantized``, ``<weight>_scale``, ...), made unique with
:func:`calib.graph.unique_name`; the output is deterministic.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..graph import Graph, attr, reduce_node, toposort, unique_name
from ..plan import node_key
from .bias import bias_correctable, corrected_bias, out_channels
from .placement import FLOAT, FLOAT16, UINT8, Placement, QParams


def quantize_weights(w: np.ndarray, axis: int | None, per_channel: bool, wamax=None, min_scale=None):
    """``(int8 weights, float32 scales)``: symmetric, scale ``amax / 127`` per channel along
    *axis* (or per tensor without *per_channel* or an axis), values rounded and clipped to
    [-127, 127]. amax is ``max|w|`` unless *wamax* (scalar or per channel) is given; a channel
    whose weights are all zero gets scale 1. *min_scale* raises the scale of channels whose int32
    bias would otherwise overflow (tiny weights, big bias)."""
    w = w.astype(np.float32)
    if per_channel and axis is not None:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red) if wamax is None else np.broadcast_to(
            np.asarray(wamax, np.float32), (w.shape[axis],))
        amax = amax.astype(np.float32)
        scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        if min_scale is not None:
            scale = np.maximum(scale, np.asarray(min_scale, np.float32)).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return q, scale
    amax = np.float32(np.abs(w).max() if wamax is None else np.max(wamax))
    scale = np.float32(amax / np.float32(127.0)) if amax > 0 else np.float32(1.0)
    if min_scale is not None:
        scale = np.float32(max(scale, np.max(min_scale)))
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, np.asarray(scale, np.float32)


class Emitter:
    """Rewrites graph *G* in place for placement *P* (see the module docs), filling *report*
    (a :class:`~calib.qdq.quantize.QuantReport`: ``bias_corrected``, ``bias_probes``).

    *weight_amax* maps weight initializers to an amax instead of max |w|; *bias_probe* adds the
    bias-correction probes; *bias_shift* maps node keys to the output shift to subtract from
    their bias. Call :meth:`rewrite` once, then :meth:`wrap_fp16` for the plan's fp16 nodes.
    """

    def __init__(self, G: Graph, P: Placement, report, *, target: str, per_channel: bool = True,
                 weight_amax: Mapping[str, object] | None = None, bias_probe: bool = False,
                 bias_shift: Mapping[str, object] | None = None):
        self.G, self.P, self.report = G, P, report
        self.target = target
        self.per_channel = per_channel
        self.weight_amax = weight_amax or {}
        self.bias_probe = bias_probe
        self.bias_shift = bias_shift
        self.taken = G.all_names()
        self.keys = {id(n): node_key(n) for n in G.g.node}   # before activation folds rename outputs
        self.inits: list = []            # new initializers
        self.nodes: list = []            # the rewritten graph's nodes, in emission order
        self.edges = dict(P.edges)       # (node id, input idx) -> tensor read through Q/DQ
        self.int8_ids = {id(n) for n in P.int8_nodes}
        self.removed: set[int] = set()   # activations folded into their producer's output quantization
        self.q_name: dict[str, str] = {}         # tensor -> quantized tensor name
        self.qp_names: dict[str, tuple] = {}     # tensor -> (scale, zero point) initializer names
        self.dq_count: dict[str, int] = {}
        self.weights: dict[tuple, str] = {}      # (weight, axis, min scale) -> dequantized name
        self.weight_scales: dict[str, np.ndarray] = {}   # dequantized weight -> its scales
        # bias correction: the float weight and bias of every correctable node, before any rewiring
        self.correctable = {id(n): (n.input[1], n.input[2] if len(n.input) > 2 else "")
                            for n in P.int8_nodes if bias_correctable(G, n, P)}
        self.corrected: dict[str, np.ndarray] = {}   # new bias initializer -> value
        self.probe_outputs: dict[str, str] = {}      # graph output -> node key

    # -- helpers --------------------------------------------------------------
    def _name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def _init(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, name: str) -> np.ndarray | None:
        """A constant's value, corrected biases included."""
        return self.corrected[name] if name in self.corrected else self.G.const(name)

    def _node(self, *args, **kwargs):
        from onnx import helper

        node = helper.make_node(*args, **kwargs)
        self.nodes.append(node)
        return node

    # -- activations ----------------------------------------------------------
    def quantize_activation(self, t: str) -> None:
        """Emit ``t``'s QuantizeLinear (once) with its scale and zero point initializers."""
        if t in self.q_name:
            return
        q: QParams = self.P.tparams[t]
        s = self._init(np.asarray(q.scale, np.float32), self._name(f"{t}_scale"))
        zdt = np.uint8 if q.dtype == UINT8 else np.int8
        z = self._init(np.asarray(q.zero_point, zdt), self._name(f"{t}_zero_point"))
        self.qp_names[t] = (s, z)
        out = self._name(f"{t}_quantized")
        self._node("QuantizeLinear", [t, s, z], [out], name=self._name(f"{t}_QuantizeLinear"))
        self.q_name[t] = out

    def dequantize_activation(self, t: str) -> str:
        """Emit a DequantizeLinear of quantized ``t`` for one consuming edge; returns its output."""
        s, z = self.qp_names[t]
        k = self.dq_count.get(t, 0)
        self.dq_count[t] = k + 1
        sfx = "" if k == 0 else f"_{k}"
        out = self._name(f"{t}_dequantized{sfx}")
        self._node("DequantizeLinear", [self.q_name[t], s, z], [out], name=self._name(f"{t}_DequantizeLinear{sfx}"))
        return out

    # -- weights and biases -----------------------------------------------------
    def quantize_weight(self, n, k: int, axis: int | None) -> str:
        """Emit (once per weight, axis and minimum scale) the int8 initializer and
        DequantizeLinear of node *n*'s constant input *k*; returns the dequantized name."""
        wname = n.input[k]
        min_scale = None
        # Both targets: runtimes fold the float bias into the int32 accumulator (ONNX Runtime's
        # QDQ fusion does it for the tensorrt placement too), so near-zero weight channels
        # (EfficientNet-Lite0's stem has max|w| ~ 1e-9) must not get scales that overflow it.
        if k == 1 and n.op_type in ("Conv", "Gemm") and len(n.input) > 2 \
                and n.input[2] and (id(n), 0) in self.edges and self.const(n.input[2]) is not None:
            # int32 bias = b / (s_in * s_w) must fit: |b| / (s_in * s_w) <= 2**31 - 1
            s_in = self.P.tparams[self.edges[(id(n), 0)]].scale
            b = np.abs(self.const(n.input[2]).astype(np.float64)).ravel()
            min_scale = (b / (s_in * (2.0 ** 31 - 1))).astype(np.float32) * np.float32(1.0001)
        key = (wname, axis if self.per_channel else None, None if min_scale is None else min_scale.tobytes())
        if key in self.weights:
            return self.weights[key]
        q, scale = quantize_weights(self.G.const(wname), axis, self.per_channel,
                                    self.weight_amax.get(wname), min_scale)
        qn = self._init(q, self._name(f"{wname}_quantized"))
        sn = self._init(scale, self._name(f"{wname}_scale"))
        zn = self._init(np.zeros(scale.shape, np.int8), self._name(f"{wname}_zero_point"))
        out = self._name(f"{wname}_dequantized")
        attrs = {"axis": int(axis)} if scale.ndim == 1 else {}
        self._node("DequantizeLinear", [qn, sn, zn], [out], name=self._name(f"{wname}_DequantizeLinear"), **attrs)
        self.weights[key] = out
        self.weight_scales[out] = scale
        return out

    def quantize_bias(self, n, in_scale: float, w_scale: np.ndarray) -> str | None:
        """Emit node *n*'s constant bias as int32 (scale ``in_scale * w_scale``, zero point 0)
        and its DequantizeLinear; returns the dequantized name (None: no constant bias)."""
        bname = n.input[2]
        b = self.const(bname)
        if b is None:
            return None
        s = (np.float32(in_scale) * w_scale.astype(np.float32)).astype(np.float32)
        s = np.broadcast_to(s, b.shape).astype(np.float32) if s.ndim == 1 and s.shape != b.shape else s
        s = np.where(s > 0, s, np.float32(1e-12)).astype(np.float32)
        q = np.clip(np.rint(b.astype(np.float64) / s), -2**31, 2**31 - 1).astype(np.int32)
        base = f"{bname}_{n.name}" if len(self.G.consumers.get(bname, [])) > 1 and n.name else bname
        qn = self._init(q, self._name(f"{base}_quantized"))
        sn = self._init(s.astype(np.float32), self._name(f"{base}_scale"))
        zn = self._init(np.zeros(s.shape, np.int32), self._name(f"{base}_zero_point"))
        out = self._name(f"{base}_dequantized")
        attrs = {"axis": 0} if s.ndim == 1 else {}
        self._node("DequantizeLinear", [qn, sn, zn], [out], name=self._name(f"{base}_DequantizeLinear"), **attrs)
        return out

    def correct_bias(self, n, shift) -> bool:
        """Subtract *shift* (one value per output channel) from *n*'s bias, in a new initializer
        ``<bias>_corrected``; False (nothing done) when *shift* does not fit."""
        _, b = self.correctable[id(n)]
        beta = float(attr(n, "beta", 1.0)) if n.op_type == "Gemm" else 1.0
        new = corrected_bias(self.const(b) if b else None, shift, out_channels(self.G, n), beta)
        if new is None:
            return False
        name = self._init(new, self._name(f"{b or self.keys[id(n)]}_corrected"))
        self.corrected[name] = new
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = name
        return True

    def add_bias_probe(self, n) -> None:
        """The op again with float weights and bias on the same (dequantized) input, and each
        sample's per-channel mean of (INT8 output - that reference) as a graph output."""
        from onnx import helper

        w, b = self.correctable[id(n)]
        x = n.input[0]    # the dequantized input: the error measured is the weights' alone
        key = self.keys[id(n)]
        ref = self._name(f"{key}_bias_probe_reference")
        rn = self._node(n.op_type, [x, w] + ([b] if b else []), [ref], name=self._name(f"{key}_bias_probe_reference"))
        rn.attribute.extend(n.attribute)
        diff = self._name(f"{key}_bias_probe_error")
        self._node("Sub", [n.output[0], ref], [diff], name=self._name(f"{key}_bias_probe_Sub"))
        out = diff
        if n.op_type != "Gemm":   # [N, C, spatial...] -> [N, C]
            axes = list(range(2, self.G.const(w).ndim))
            out = self._name(f"{key}_bias_probe")
            self.nodes.append(reduce_node("ReduceMean", diff, axes, out, self.G.opset, self.inits,
                                          name=self._name(f"{key}_bias_probe_ReduceMean"),
                                          axes_name=self._name(f"{key}_bias_probe_axes")))
        self.probe_outputs[out] = key
        # [sample, channel]; the channel count is left undeclared
        self.G.g.output.append(helper.make_tensor_value_info(out, FLOAT, [None, None]))

    # -- the pass -------------------------------------------------------------
    def _fold_activations(self) -> list[str]:
        """Relu / Clip folds: the producer writes the activation's output name directly."""
        folded = []
        for n in self.P.int8_nodes:
            r = self.P.relu_fold.get(id(n))
            if r is not None:
                n.output[0] = r.output[0]
                self.removed.add(id(r))
                folded.append(r.name or r.output[0])
        return folded

    def _consumer_edges(self) -> None:
        """ONNX Runtime: every consumer edge of a producer-quantized tensor reads DQ (fusion needs
        the producer's only consumer to be the Q), except plan-excluded nodes. (Relu-folded
        tensors: fp32/fp16 consumers were excluded from folding already.)"""
        exclude = {id(n) for n in self.P.fp16} | {id(n) for n in self.P.fp32}
        for t in self.P.q_after:
            for c in self.G.consumers.get(t, []):
                if id(c) in self.removed or id(c) in exclude:
                    continue
                for k, i in enumerate(c.input):
                    if i == t:
                        self.edges[(id(c), k)] = t

    def _bias_int32(self, n) -> None:
        """ONNX Runtime: an INT8 Conv / Gemm (beta 1) with quantized input and weight gets an
        int32 bias."""
        P, edges = self.P, self.edges
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] \
                and self.const(n.input[2]) is not None and (id(n), 0) in edges and (id(n), 1) in P.weight_axis:
            if n.op_type == "Gemm" and float(attr(n, "beta", 1.0)) != 1.0:
                return
            bdq = self.quantize_bias(n, P.tparams[edges[(id(n), 0)]].scale, self.weight_scales[n.input[1]])
            if bdq is not None:
                n.input[2] = bdq

    def rewrite(self) -> list[str]:
        """Rewrite the graph; returns the names of the activation nodes folded away."""
        G, P, edges = self.G, self.P, self.edges
        folded = self._fold_activations()
        if self.target == "onnxruntime":
            self._consumer_edges()
        edge_tensors = set(edges.values())   # complete here and not changed below
        for t in G.graph_inputs:
            if t in P.tparams and t in edge_tensors:
                self.quantize_activation(t)
        for n in list(G.g.node):
            if id(n) in self.removed:
                continue
            key = self.keys[id(n)]
            if id(n) in self.correctable and self.bias_shift and key in self.bias_shift:
                if self.correct_bias(n, self.bias_shift[key]):
                    self.report.bias_corrected.append(key)
            for k, t in enumerate(list(n.input)):
                if (id(n), k) in edges:
                    self.quantize_activation(t)  # no-op if the producer already emitted it
                    n.input[k] = self.dequantize_activation(t)
                elif (id(n), k) in P.weight_axis and id(n) in self.int8_ids:
                    n.input[k] = self.quantize_weight(n, k, P.weight_axis[(id(n), k)])
            if self.target == "onnxruntime" and id(n) in self.int8_ids:
                self._bias_int32(n)
            self.nodes.append(n)
            if self.bias_probe and id(n) in self.correctable:
                self.add_bias_probe(n)
            for o in n.output:
                if o in P.q_after and o in P.tparams and o in edge_tensors:
                    self.quantize_activation(o)
        # a Q emitted before its consumer must follow its producer: reorder
        nodes = toposort(self.nodes, set(G.graph_inputs) | set(G.inits) | {i.name for i in self.inits})
        del G.g.node[:]
        G.g.node.extend(nodes)
        G.g.initializer.extend(self.inits)
        G.refresh()
        self.report.bias_probes = self.probe_outputs
        return folded

    def wrap_fp16(self, nodes: list, types: dict[str, int], fp16_ops=None) -> list[str]:
        """Cast the float32 inputs of *nodes* (``(op_type, outputs)`` keys: the rewrite copied the
        node messages) to float16 and their float outputs back to float32; returns the keys
        (:func:`calib.plan.node_key`) of the nodes wrapped. Inputs are those whose type
        constraint the outputs share (weights included; not a Resize's scales).

        *fp16_ops*: the op types that compute in float16 (None: every op, as TensorRT builds
        them). A node of another op type keeps computing in float32 on float16-rounded values:
        each such input is cast to float16 and back, and so is its output (the op writes
        ``<output>_unrounded``), so a runtime without a float16 kernel for it computes what the
        plan means instead of dropping the rounding. Names are picked among those of the
        rewritten graph."""
        import onnx
        from onnx import helper

        G = self.G
        taken = G.all_names()
        wrapped = []
        new_nodes = []
        keys = set(nodes)

        def cast(src: str, dst: str, to: int, base: str):
            return helper.make_node("Cast", [src], [dst], name=unique_name(base, taken), to=to)

        for n in list(G.g.node):
            if (n.op_type, tuple(n.output)) not in keys:
                new_nodes.append(n)
                continue
            try:
                schema = onnx.defs.get_schema(n.op_type, G.opset, n.domain)
            except Exception:
                new_nodes.append(n)
                continue
            native = fp16_ops is None or n.op_type in fp16_ops
            out_tc = {schema.outputs[min(k, len(schema.outputs) - 1)].type_str for k in range(len(n.output))}
            key = node_key(n)   # before its outputs are renamed below
            pre, post = [], []
            for k, t in enumerate(n.input):
                if not t or types.get(t) != FLOAT:
                    continue
                f = schema.inputs[min(k, len(schema.inputs) - 1)]
                if f.type_str not in out_tc or f.type_str.startswith("tensor("):
                    continue
                o = unique_name(f"{t}_to_fp16_{n.name}" if n.name else f"{t}_to_fp16", taken)
                pre.append(cast(t, o, FLOAT16, f"{o}_Cast"))
                if not native:
                    r = unique_name(f"{t}_fp16_rounded_{n.name}" if n.name else f"{t}_fp16_rounded", taken)
                    pre.append(cast(o, r, FLOAT, f"{r}_Cast"))
                    o = r
                n.input[k] = o
            if not pre:
                new_nodes.append(n)
                continue
            for k, t in enumerate(n.output):
                if not t or types.get(t) != FLOAT:
                    continue
                if native:
                    o = unique_name(f"{t}_fp16", taken)
                    n.output[k] = o
                    post.append(cast(o, t, FLOAT, f"{t}_to_fp32_Cast"))
                else:
                    o = unique_name(f"{t}_unrounded", taken)
                    h = unique_name(f"{t}_fp16", taken)
                    n.output[k] = o
                    post += [cast(o, h, FLOAT16, f"{t}_to_fp16_Cast"), cast(h, t, FLOAT, f"{t}_to_fp32_Cast")]
            new_nodes.extend(pre + [n] + post)
            wrapped.append(key)
        del G.g.node[:]
        G.g.node.extend(new_nodes)
        G.refresh()
        return wrapped
