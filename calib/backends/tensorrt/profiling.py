"""Per-layer times from TensorRT's profiler (``IProfiler``).

TensorRT calls ``report_layer_time(layer_name, ms)`` of the profiler set on an execution context
(``context.profiler``) once per layer of the engine for each execution, ``execute_async_v3``
included (TensorRT 8.6 C++ API, ``IProfiler``: "called once per layer for each invocation of
executeV2()/enqueueV2()/enqueueV3()"). Layer names are those of the network (ONNX node names
joined with `` + `` where TensorRT fused them; the decimal layer index only for engines built
with profiling verbosity NONE). A profiler slows execution a little: these times are for
attributing latency to layers, not for end-to-end timing (:meth:`TrtEngine.benchmark`).
"""
from __future__ import annotations

from collections.abc import Callable


def layer_timer(trt):
    """A new ``trt.IProfiler`` that keeps every reported time: ``.times`` maps layer name -> the
    milliseconds reported for it, in order."""
    base = trt.IProfiler

    class LayerTimer(base):
        def __init__(self):
            base.__init__(self)  # pybind11 trampolines need the base constructor called
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name, ms):
            self.times.setdefault(str(layer_name), []).append(float(ms))

    return LayerTimer()


def collect_layer_times(trt, context, run: Callable[[], None], iterations: int = 20,
                        warmup: int = 5) -> dict[str, list[float]]:
    """Layer name -> milliseconds, one per run: *run* (one synchronous execution of *context*)
    is called *warmup* times, then the profiler is set on *context* and it is called
    *iterations* times. The profiler stays on the context."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    for _ in range(max(0, warmup)):
        run()
    timer = layer_timer(trt)
    context.profiler = timer
    for _ in range(iterations):
        run()
    return timer.times
