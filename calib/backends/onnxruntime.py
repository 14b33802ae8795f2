"""ONNX Runtime (CPU) backend: FP32 references, statistics capture, INT8 Q/DQ runs."""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np

from ..errors import BackendError, CustomOpError, InputMismatchError, ModelLoadError
from ..model import Model, TensorInfo, load_model
from .base import Engine, EngineInfo


def ort_message(exc: BaseException) -> str:
    """First line of an ONNX Runtime exception without its status prefix and C++ source location."""
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"^/\S+:\d+ [^)]*\)\s*", "", msg)  # "/onnxruntime_src/...cc:256 fn(args) "
    return msg.strip() or type(exc).__name__


def default_threads() -> int:
    """Threads for ONNX Runtime's intra-op pool: all cores, or $CALIB_THREADS."""
    env = os.environ.get("CALIB_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, optimize: str = "all", spinning: bool = True,
                    arena: bool = True):
    """Session options with explicit threads; ``spinning=False`` lets idle intra-op threads sleep
    instead of spinning (when other threads, e.g. histogram workers, share the cores);
    ``arena=False`` turns off ONNX Runtime's CPU memory arena (see :class:`OrtEngine`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimize]
    so.graph_optimization_level = level
    return so


def _with_outputs(model: Model, names: Sequence[str]) -> bytes:
    """Serialized copy of *model* whose graph outputs also include *names*."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    existing = {o.name for o in proto.graph.output}
    for n in names:
        if n not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=n))
            existing.add(n)
    return proto.SerializeToString()


class OrtEngine(Engine):
    """Run an ONNX model with ONNX Runtime on the CPU.

    ``capture`` names intermediate tensors to return alongside the outputs (for
    statistics and per-layer comparison).

    Optimisation level (``optimize``, default ``all``, with or without captures). ONNX Runtime
    keeps every captured tensor at any level (it fuses no node whose output is a graph output).
    At ``all`` it runs most convolutions in its blocked NCHWc layout; a captured tensor then
    costs a reorder back to NCHW, and a convolution whose output is captured no longer absorbs
    its activation. At ``basic`` nothing is reordered, but the depthwise convolutions run in
    NCHW, which is slower. The two levels' values differ in their last bits (a different summation order);
    ``all``'s are the ones the deployed FP32 model computes in ONNX Runtime, and they do not
    depend on the batch size or the thread count (checked bit for bit on EfficientNet-Lite0,
    SqueezeNet 1.1 and PP-OCRv4 det/rec; ``tests/test_collect.py``). ``extended`` gives
    ``basic``'s values. What capturing costs at each level is measured in
    ``benchmarks/README.md`` ("Where the time goes").

    Output ring (``reuse=k``, what :func:`calib.collect.collect_statistics` uses): once two runs
    in a row have the same input shapes and dtypes, outputs are written through an IOBinding
    into ``k`` preallocated sets of buffers used in turn, so a run's arrays are valid until
    ``k`` more runs are made (the caller must be done with them by then). No fresh memory per
    run, hence no page faults for hundreds of MB of outputs per run. A new input signature drops
    the ring; an output whose shape depends on the values (ONNX Runtime refuses the binding)
    turns reuse off for the engine.

    Arena (``arena``; default: on, except for a capturing session without ``reuse``). With
    the output ring the arena holds only ONNX Runtime's internal buffers, the same every run.
    Without it, captured outputs that outlive their run would pin the arena's chunks and it
    would grow by power-of-two extensions whenever the threads' timing kept more of them alive,
    so peak memory would grow with the sample count.
    """

    def __init__(self, model: "Model | str | os.PathLike", *, name: str | None = None,
                 threads: int | None = None, capture: Sequence[str] = (), optimize: str | None = None,
                 precision: str | None = None, spinning: bool = True, reuse: int = 0,
                 arena: bool | None = None):
        import onnxruntime as ort

        self.model = load_model(model)
        self.capture = [c for c in capture]
        if self.capture:
            unknown = sorted(set(self.capture) - set(self.model.activation_tensors())
                             - {t.name for t in self.model.inputs})
            if unknown:
                raise BackendError(f"cannot capture unknown tensors: {', '.join(unknown[:5])}")
            data = _with_outputs(self.model, self.capture)
        else:
            data = self.model.serialize()
        opt = optimize or "all"
        if arena is None:
            arena = not self.capture or reuse > 0
        try:
            so = session_options(threads, opt, spinning, arena=arena)
            self.session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            msg = ort_message(exc)
            if any(k in msg for k in ("not a registered function/op", "No opset import for domain",
                                      "Could not find an implementation", "No Op registered")):
                ops = sorted({f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in self.model.nodes
                              if n.domain not in ("", "ai.onnx", "com.microsoft")})
                hint = f" (custom ops: {', '.join(ops)})" if ops else ""
                raise CustomOpError(f"{self.model.name}: needs an operator ONNX Runtime does not implement{hint}: {msg}") from None
            raise ModelLoadError(f"{self.model.name}: ONNX Runtime cannot load the model: {msg}") from None
        self._inputs = self.model.inputs
        self._step = self.model.fixed_batch      # a fixed batch dimension: batches are split to it
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.reuse = max(0, int(reuse))
        self._ring: "tuple | None" = None      # (input signature, [{output: buffer}] * reuse)
        self._slot = 0
        self._last: "tuple | None" = None      # (signature, {output: (shape, dtype)}) of the last plain run
        self._io = None
        self.info = EngineInfo(name=name or self.model.name, backend="onnxruntime",
                               precision=precision or ("int8" if self.model.is_quantized else
                                                       "fp16" if self.model.is_fp16 else "fp32"))

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for t in self._inputs:
            if t.name not in feed:
                raise InputMismatchError(f"batch lacks model input '{t.name}' (has: {', '.join(feed)})")
            a = np.asarray(feed[t.name])
            if a.ndim != t.rank:
                raise InputMismatchError(
                    f"input '{t.name}': data shape {tuple(a.shape)} has rank {a.ndim}, model expects {t.shape}")
            for i, (have, want) in enumerate(zip(a.shape, t.shape)):
                if isinstance(want, int) and i > 0 and have != want:
                    raise InputMismatchError(
                        f"input '{t.name}': data shape {tuple(a.shape)} does not fit model shape {t.shape}")
            if a.dtype != t.dtype:
                if a.dtype.kind == "f" and np.dtype(t.dtype).kind == "f":
                    a = a.astype(t.dtype)
                else:
                    raise InputMismatchError(
                        f"input '{t.name}': data dtype {a.dtype} does not match model dtype {np.dtype(t.dtype).name}")
            out[t.name] = a
        return out


    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_feed(feed)
        step = self._step
        # split only a feed whose inputs all count the same samples on axis 0: an input batched
        # on another axis (a state [2, N, 128]) or a scalar leaves the batch to the model
        sizes = {a.shape[0] for a in feed.values() if a.ndim}
        n = sizes.pop() if len(sizes) == 1 else None
        if step is None or n is None or n == step:
            return self._run_once(feed)
        if n % step:
            raise InputMismatchError(f"batch of {n} cannot be split into the model's fixed batch of {step}")
        # plain runs: the concatenation below needs every part at once
        parts = [self._run_once({k: (v[i:i + step] if v.ndim else v) for k, v in feed.items()}, ring=False)
                 for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def _run_once(self, feed: dict[str, np.ndarray], ring: bool = True) -> dict[str, np.ndarray]:
        sig = None
        if self.reuse and ring:
            sig = tuple((k, v.shape, v.dtype.str) for k, v in feed.items())
            bufs = self._buffers(sig)
            if bufs is not None:
                try:
                    return self._run_bound(feed, bufs)
                except Exception:
                    # an output whose shape depends on the values (or a binding ONNX Runtime
                    # refuses): from now on every run allocates its outputs
                    self.reuse, self._ring, self._io = 0, None, None
        try:
            res = self.session.run(None, feed)
        except Exception as exc:
            msg = ort_message(exc)
            raise BackendError(f"{self.model.name}: ONNX Runtime failed: {msg}") from None
        out = dict(zip(self._outputs, res))
        if sig is not None:
            shapes = {k: (v.shape, v.dtype) for k, v in out.items()
                      if isinstance(v, np.ndarray) and v.size and v.dtype.kind in "fiub"}
            self._last = (sig, shapes) if len(shapes) == len(out) else None
        return out

    def _buffers(self, sig) -> "dict[str, np.ndarray] | None":
        """The next slot of the output ring for inputs of signature *sig*, or None for a plain
        run. A ring is made when two runs in a row have the same input shapes and dtypes (the
        second run fills its first slot); a new signature drops it."""
        if self._ring is None or self._ring[0] != sig:
            self._ring = None
            if self._last is None or self._last[0] != sig:
                return None
            shapes = self._last[1]
            self._ring = (sig, [{k: np.empty(s, d) for k, (s, d) in shapes.items()} for _ in range(self.reuse)])
            self._slot = 0
        bufs = self._ring[1][self._slot % self.reuse]
        self._slot += 1
        return bufs

    def _run_bound(self, feed: dict[str, np.ndarray], bufs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._io is None:
            self._io = self.session.io_binding()
        io = self._io
        held = [np.ascontiguousarray(v) for v in feed.values()]     # alive until the run is done
        for k, v in zip(feed, held):
            io.bind_cpu_input(k, v)
        for k, b in bufs.items():
            io.bind_output(k, "cpu", 0, b.dtype, b.shape, b.ctypes.data)
        self.session.run_with_iobinding(io)
        return dict(bufs)
