"""TensorRT versions -> features, and the TensorRT API names each feature uses.

This is the ONE place that knows which TensorRT release has what. It never imports
``tensorrt``: the CLI, the tests and the API conformance check read it on any machine.

Facts (checked against the real ``tensorrt-cu12-bindings`` / ``tensorrt-bindings`` wheels of
8.6.1, 10.0.1, 10.16.1.11, 11.0.0.114 and 11.4.0.106 by ``tests/test_tensorrt_conformance.py``,
and against NVIDIA's 10.x -> 11.x migration guide):

* 8.6: implicit quantization (``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator``,
  ``BuilderFlag.INT8``/``FP16``, per-layer ``precision``/``set_output_type``) and networks
  created with ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``. No ``STRONGLY_TYPED``, and
  ``ParserError`` has ``node()`` (an index) but no ``node_name()``/``node_operator()``.
* 10.x: implicit quantization still there (calibrators deprecated since 10.1);
  ``EXPLICIT_BATCH`` deprecated and ignored (always explicit batch), so it is not passed;
  ``STRONGLY_TYPED`` exists from 10.0 (first public Python wheels with it); parser errors
  name the node and its operator.
* 11.x: explicit quantization only. Calibrators, ``CalibrationAlgoType``,
  ``IBuilderConfig.int8_calibrator``/``set_calibration_profile``, ``BuilderFlag.INT8``/
  ``FP16``/``OBEY_PRECISION_CONSTRAINTS``/``PREFER_PRECISION_CONSTRAINTS`` and per-layer
  precision are removed; ``EXPLICIT_BATCH`` is gone; every network is strongly typed
  (``STRONGLY_TYPED`` accepted and ignored).
* 9.x had no public wheels and is not supported.

Every ``trt.X`` access in this package, and every method/attribute used on a TensorRT object
held in one of the variables named in :data:`HANDLE_TYPES`, must be listed in
:data:`API_MANIFEST` under the feature whose code path uses it. ``tests/test_tensorrt_conformance.py``
enforces both directions: the source uses nothing undeclared, and each declared name exists in
the real wheels of every version that claims the feature.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ...errors import TensorRTUnavailableError

INSTALL_HINT = "pip install 'calib[tensorrt]'"


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int = 0
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        """Parse ``tensorrt.__version__`` ("10.16.1.11", "8.6.1.post1", "11.0.0.114")."""
        m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?", str(text))
        if not m:
            raise TensorRTUnavailableError(f"cannot parse TensorRT version {text!r}")
        return cls(*(int(g) if g is not None else 0 for g in m.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f".{self.build}" if self.build else "")

    @property
    def cache_version(self) -> int:
        """The number TensorRT writes in a calibration cache header (``TRT-<n>-<algo>``):
        NV_TENSORRT_VERSION, major*1000+minor*100+patch before 10, major*10000+minor*100+patch since."""
        if self.major < 10:
            return self.major * 1000 + self.minor * 100 + self.patch
        return self.major * 10000 + self.minor * 100 + self.patch


V = TrtVersion

#: Supported releases: [low, high) ranges.
SUPPORTED = ((V(8, 6), V(9, 0)), (V(10, 0), V(12, 0)))

#: feature -> (first version with it, first version without it or None)
FEATURES: dict[str, tuple[TrtVersion, TrtVersion | None]] = {
    # calibrators, INT8/FP16 builder flags, per-layer precision + OBEY/PREFER constraints
    "implicit_quantization": (V(8, 6), V(11, 0)),
    # create_network(1 << EXPLICIT_BATCH) is required on 8.x; deprecated+ignored in 10, gone in 11
    "explicit_batch_flag": (V(8, 6), V(10, 0)),
    # NetworkDefinitionCreationFlag.STRONGLY_TYPED (explicit Q/DQ path)
    "strongly_typed": (V(10, 0), None),
    # IParserError.node_name() / node_operator()
    "parser_error_node_name": (V(10, 0), None),
    # DataType.INT64 / BF16 as engine I/O types (BF16 has no NumPy dtype: named in the error refusing it)
    "int64_bf16_io": (V(10, 0), None),
    # everything else this package uses (execute_async_v3, set_tensor_address, ...)
    "core": (V(8, 6), None),
}

#: Names of variables (and ``self.<name>`` attributes) that hold TensorRT objects in this
#: package's source, with their TensorRT class. The conformance test reads attribute accesses
#: on these to make sure every one is declared below.
HANDLE_TYPES: dict[str, str] = {
    "trt": "<module>",
    "logger": "Logger",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "perr": "ParserError",
    "profile": "IOptimizationProfile",
    "layer": "ILayer",
    "tensor": "ITensor",
    "tcache": "ITimingCache",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "_engine": "ICudaEngine",
    "context": "IExecutionContext",
    }

#: feature -> TensorRT API names its code path uses ("Class.member", "Enum.MEMBER" or "name").
API_MANIFEST: dict[str, tuple[str, ...]] = {
    "core": (
        "__version__", "Logger", "Logger.WARNING", "Logger.VERBOSE",
        "Builder", "Builder.create_network", "Builder.create_builder_config",
        "Builder.create_optimization_profile", "Builder.build_serialized_network",
        "INetworkDefinition.num_layers", "INetworkDefinition.get_layer",
        "INetworkDefinition.num_inputs", "INetworkDefinition.get_input",
        "ITensor.name", "ITensor.dtype",
        "ILayer.name", "ILayer.type", "ILayer.num_outputs", "ILayer.get_output",
        "LayerType", "LayerType.CONSTANT", "LayerType.SHAPE", "LayerType.IDENTITY", "LayerType.CAST",
        "OnnxParser", "OnnxParser.parse_from_file", "OnnxParser.num_errors", "OnnxParser.get_error",
        "ParserError.code", "ParserError.desc", "ParserError.node",
        "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType", "MemoryPoolType.WORKSPACE",
        "IBuilderConfig.add_optimization_profile", "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache", "IBuilderConfig.get_timing_cache",
        "ITimingCache.serialize",
        "IOptimizationProfile.set_shape",
        "Runtime", "Runtime.deserialize_cuda_engine",
        "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
        "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape",
        "ICudaEngine.get_tensor_profile_shape", "ICudaEngine.num_optimization_profiles",
        "ICudaEngine.create_execution_context",
        "TensorIOMode", "TensorIOMode.INPUT", "TensorIOMode.OUTPUT",
        "IExecutionContext.set_input_shape", "IExecutionContext.get_tensor_shape",
        "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
        "IExecutionContext.set_optimization_profile_async",
        # per-layer times (profiling.py): TensorRT calls report_layer_time by this name
        "IExecutionContext.profiler", "IProfiler", "IProfiler.report_layer_time",
        "DataType", "DataType.FLOAT", "DataType.HALF", "DataType.INT8", "DataType.INT32",
        "DataType.BOOL", "DataType.UINT8",
    ),
    "implicit_quantization": (
        "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
        # methods our calibrator overrides: TensorRT calls them by these names, so a rename
        # would silently bypass our code
        "IInt8Calibrator", "IInt8Calibrator.get_batch", "IInt8Calibrator.get_batch_size",
        "IInt8Calibrator.read_calibration_cache", "IInt8Calibrator.write_calibration_cache",
        "IBuilderConfig.set_flag", "IBuilderConfig.int8_calibrator",
        "IBuilderConfig.set_calibration_profile",
        "BuilderFlag", "BuilderFlag.INT8", "BuilderFlag.FP16",
        "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
        "ILayer.precision", "ILayer.set_output_type",
    ),
    "explicit_batch_flag": (
        "NetworkDefinitionCreationFlag", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    ),
    "strongly_typed": (
        "NetworkDefinitionCreationFlag", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    ),
    "parser_error_node_name": (
        "ParserError.node_name", "ParserError.node_operator",
    ),
    "int64_bf16_io": (
        "DataType.INT64", "DataType.BF16",
    ),
}


def supported(version: TrtVersion) -> bool:
    return any(lo <= version < hi for lo, hi in SUPPORTED)


def has(feature: str, version: TrtVersion) -> bool:
    """Whether *version* has *feature* (a key of :data:`FEATURES`)."""
    lo, hi = FEATURES[feature]
    return version >= lo and (hi is None or version < hi)


def features_for(version: TrtVersion) -> frozenset[str]:
    return frozenset(f for f in FEATURES if has(f, version))


def names_for(version: TrtVersion) -> dict[str, tuple[str, ...]]:
    """feature -> API names, for the features *version* has (what the conformance test checks)."""
    return {f: API_MANIFEST[f] for f in sorted(features_for(version))}


def all_declared_names() -> set[str]:
    return {n for names in API_MANIFEST.values() for n in names}


def check_supported(version: TrtVersion) -> None:
    if not supported(version):
        ranges = ", ".join(f"{lo.major}.{lo.minor}" + (f"-{hi.major - 1}.x" if hi.major - lo.major > 1 else "")
                           for lo, hi in SUPPORTED)
        raise TensorRTUnavailableError(
            f"TensorRT {version} is not supported by calib (supported: {ranges}); {INSTALL_HINT}")


@dataclass(frozen=True)
class Capabilities:
    """What the installed TensorRT can do, derived only from its version."""

    version: TrtVersion

    @property
    def implicit(self) -> bool:
        """Calibrators + INT8/FP16 flags + per-layer precision (8.6-10.x)."""
        return has("implicit_quantization", self.version)

    @property
    def explicit(self) -> bool:
        """Q/DQ networks built strongly typed (>= 10.0)."""
        return has("strongly_typed", self.version)

    @property
    def needs_explicit_batch_flag(self) -> bool:
        return has("explicit_batch_flag", self.version)

    @property
    def parser_error_names(self) -> bool:
        return has("parser_error_node_name", self.version)

    def default_mode(self) -> str:
        """"implicit" where calibrators exist (8.6-10.x), else "explicit"."""
        return "implicit" if self.implicit else "explicit"

    def check_mode(self, mode: str) -> None:
        if mode == "implicit" and not self.implicit:
            raise TensorRTUnavailableError(
                f"TensorRT {self.version} has no implicit quantization (calibrators and INT8/FP16 builder "
                f"flags were removed in 11.0); use --explicit (Q/DQ model, strongly typed network)")
        if mode == "explicit" and not self.explicit:
            raise TensorRTUnavailableError(
                f"TensorRT {self.version} cannot build strongly typed Q/DQ networks (needs >= 10.0); "
                f"use --implicit (calibration cache)")


def support_table() -> list[dict]:
    """Rows for the README's support table (one per release line)."""
    rows = []
    for label, v in (("8.6", V(8, 6, 1)), ("10.0-10.x", V(10, 16)), ("11.x", V(11, 4))):
        c = Capabilities(v)
        rows.append({"tensorrt": label, "implicit (cache/calibrator)": c.implicit,
                     "explicit (Q/DQ, strongly typed)": c.explicit,
                     "EXPLICIT_BATCH flag passed": c.needs_explicit_batch_flag,
                     "parser errors name node": c.parser_error_names})
    return rows


def iter_manifest_names(names: Iterable[str]) -> Iterable[str]:
    """Split "Class.member" into its parts: each must exist in the bindings."""
    for n in names:
        yield from n.split(".")
