"""The one interface every backend implements, so the harness and sweeps use any of them."""
from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..model import TensorInfo


@dataclass
class EngineInfo:
    name: str                      # human label, e.g. "fp32", "int8-qdq", "trt-int8"
    backend: str                   # "onnxruntime" | "tensorrt"
    precision: str = "fp32"        # "fp32" | "fp16" | "int8" | "mixed"
    extra: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """Something that runs a batch: ``run(feed) -> {output_name: array}``.

    Engines accept any batch size their model allows; engines whose model has a
    fixed batch dimension split larger batches and concatenate the results.
    """

    info: EngineInfo

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]: ...

    @abc.abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output (and captured tensor) by name."""

    def run_batches(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for feed in feeds:
            yield self.run(feed)

    def close(self) -> None:  # noqa: B027  (pragma: no cover) an optional hook: engines without resources keep it
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
