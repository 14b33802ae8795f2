"""How model inputs take samples, and the checks every array source shares.

:class:`FeedLayout` says, per model input, which axis of a batch holds the samples (axis 0 unless
the user says otherwise; none for a scalar or a per-run constant) and holds the constants' values.
The checks refuse data that cannot feed an input (shape, dtype, size) with one line naming the
file, the key and the input, and find NaN/Inf in what the model is fed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError, InputMismatchError, NonFiniteInputError

# The most values one array sample may hold (1 GiB as float32): a file that claims larger samples
# is refused before anything is read.
MAX_SAMPLE_VALUES = 1 << 28

BATCH_AXIS_HINT = ("axis 0 holds the samples unless --batch-axis INPUT=AXIS says otherwise, and an input that "
                   "takes one value for every sample takes --constant INPUT=VALUE")


def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def parse_pairs(value, flag: str, *, commas: bool = True) -> dict[str, Any]:
    """``{name: value}`` from a mapping, ``"a=1,b=2"`` or a list of such strings (a repeated flag);
    with ``commas=False`` each string is one ``name=value`` (the value may hold commas)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    items = [value] if isinstance(value, str) else list(value)
    out: dict[str, Any] = {}
    for text in items:
        for item in (str(text).split(",") if commas else [str(text)]):
            item = item.strip()
            if not item:
                continue
            k, sep, v = item.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise DataError(f"{flag}: expected INPUT=VALUE, got {item!r}")
            out[k.strip()] = v.strip()
    return out


def _number(text: str, what: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    raise DataError(f"{what}: expected a number or comma-separated numbers, got {text!r}")


def _fits(shape: tuple, want: tuple) -> bool:
    return len(shape) == len(want) and all(not isinstance(w, int) or h == w for h, w in zip(shape, want))


class FeedLayout:
    """How the model inputs take samples: per input, the axis that holds the samples of a batch
    (``None``: the input takes one value for every sample, a per-run constant), and the values of
    the constants given up front.

    Axis 0 is assumed unless *batch_axes* (``{input: axis or None}``, ``"state=1,h=none"``) says
    otherwise; a scalar input (rank 0) has no batch axis. *constants* (``{input: value}``, or
    ``"sr=16000"`` strings, one per input) fix such an input's value; a data source may supply it
    instead (an HDF5 dataset or .npz array of the input's full shape, a loader item's entry), the
    same in every file and item.
    """

    def __init__(self, inputs, batch_axes=None, constants=None):
        self.inputs = list(inputs)
        self.axes: dict[str, int | None] = {t.name: (0 if t.rank else None) for t in self.inputs}
        given = parse_pairs(batch_axes, "--batch-axis")
        for name, ax in given.items():
            t = self._input(name, "--batch-axis")
            if ax is None or str(ax).strip().lower() == "none":
                self.axes[name] = None
                continue
            try:
                ax = int(ax)
            except (TypeError, ValueError):
                raise DataError(f"--batch-axis {name}={ax}: expected an axis number or 'none'") from None
            if not -t.rank <= ax < t.rank:
                raise DataError(f"--batch-axis {name}={ax}: model input '{name}' {fmt_shape(t.shape)} has no axis {ax}")
            self.axes[name] = ax % t.rank
        self.constants: dict[str, np.ndarray] = {}
        for name, value in parse_pairs(constants, "--constant", commas=False).items():
            t = self._input(name, "--constant")
            if self.axes[name] is not None and name in given:
                raise DataError(f"--constant {name} and --batch-axis {name}={given[name]}: an input with a constant "
                                f"value has no batch axis")
            self.axes[name] = None
            self.constants[name] = self._constant(t, value)

    def _input(self, name: str, flag: str):
        for t in self.inputs:
            if t.name == name:
                return t
        raise InputMismatchError(f"{flag} names '{name}', which is not a model input "
                                 f"(inputs: {', '.join(t.name for t in self.inputs)})")

    @staticmethod
    def _constant(t, value) -> np.ndarray:
        what = f"--constant {t.name}"
        if isinstance(value, str):
            vals = [_number(p.strip(), what) for p in value.split(",")]
            value = vals[0] if len(vals) == 1 else vals
        try:
            a = np.asarray(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise DataError(f"{what}: {exc}") from None
        if a.dtype.kind not in "biuf":
            raise DataError(f"{what}: expected numbers, got {a.dtype.name}")
        check_dtype(t, a.dtype, what)
        want = np.dtype(t.dtype)
        if want.kind in "iub" and a.dtype.kind == "f":
            raise DataError(f"{what}: model input '{t.name}' takes {want.name}, got {value!r}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NonFiniteInputError(f"{what}: holds NaN or Inf")
        if not _fits(a.shape, tuple(t.shape)):
            if all(isinstance(d, int) for d in t.shape) and a.size == int(np.prod(t.shape, dtype=np.int64)):
                a = a.reshape(t.shape)
            else:
                raise InputMismatchError(f"{what}: a value of shape {fmt_shape(a.shape)} cannot feed model input "
                                         f"'{t.name}' {fmt_shape(t.shape)}")
        return np.array(a, dtype=want, order="C")   # (ascontiguousarray makes 0-d 1-d)

    def axis(self, name: str) -> int | None:
        return self.axes[name]

    @property
    def batched(self) -> list:
        """The inputs that take samples, those batched on axis 0 first (their first axis counts them)."""
        return sorted((t for t in self.inputs if self.axes[t.name] is not None), key=lambda t: self.axes[t.name] != 0)

    @property
    def unbatched(self) -> list:
        return [t for t in self.inputs if self.axes[t.name] is None]

    def check(self, t, shape: tuple, dtype, where: str) -> str:
        """How an array of *shape*/*dtype* feeds input *t*: ``"batch"`` (samples along the input's
        batch axis), ``"sample"`` (one sample: that axis left out) or ``"constant"`` (an input
        without samples: its whole value). Raises InputMismatchError otherwise."""
        ax = self.axes[t.name]
        shape = tuple(int(d) for d in shape)
        if ax is None:
            if not _fits(shape, tuple(t.shape)):
                raise InputMismatchError(f"{where}: array of shape {fmt_shape(shape)} cannot feed model input "
                                         f"'{t.name}' {fmt_shape(t.shape)}, which takes one value for every sample")
            _check_size(shape, where)
            check_dtype(t, dtype, where)
            return "constant"
        if len(shape) == t.rank:
            check_sample_layout(t, shape[:ax] + shape[ax + 1:], dtype, where, ax)
            return "batch"
        if len(shape) == t.rank - 1:
            check_sample_layout(t, shape, dtype, where, ax)
            return "sample"
        raise InputMismatchError(f"{where}: array of shape {fmt_shape(shape)} cannot feed model input '{t.name}' "
                                 f"{fmt_shape(t.shape)}; expected {_pattern(t, ax)} ({BATCH_AXIS_HINT})")

    def to_dict(self) -> dict:
        """What differs from the default layout (empty for most models), for provenance."""
        out = {}
        axes = {t.name: self.axes[t.name] for t in self.inputs if self.axes[t.name] != (0 if t.rank else None)}
        if axes:
            out["batch_axes"] = axes
        if self.constants:
            out["constants"] = {k: v.tolist() for k, v in self.constants.items()}
        return out


def _pattern(t, axis) -> str:
    """The shape an array of samples for *t* has: ``(2, samples, 128)``."""
    return "(" + ", ".join("samples" if k == axis else str(d) for k, d in enumerate(t.shape)) + ")"


def _check_size(sample_shape: tuple, where: str) -> None:
    n = 1
    for d in sample_shape:
        n *= int(d)
    if n > MAX_SAMPLE_VALUES:
        raise InputMismatchError(f"{where}: samples of shape {fmt_shape(sample_shape)} hold {n} values, more than "
                                 f"the {MAX_SAMPLE_VALUES} a sample may have")


def check_sample_layout(t, sample_shape: tuple, dtype, where: str, axis: int = 0) -> None:
    """Raise InputMismatchError if samples of *sample_shape*/*dtype* cannot feed input *t*, whose
    samples lie along *axis*."""
    want = tuple(d for k, d in enumerate(t.shape) if k != axis)
    per = f"per sample {fmt_shape(want)}, samples along axis {axis}"
    if len(sample_shape) != len(want):
        raise InputMismatchError(f"{where}: samples of shape {fmt_shape(sample_shape)} cannot feed model input "
                                 f"'{t.name}' {fmt_shape(t.shape)} ({per}; {BATCH_AXIS_HINT})")
    for have, need in zip(sample_shape, want):
        if isinstance(need, int) and have != need:
            raise InputMismatchError(f"{where}: samples of shape {fmt_shape(sample_shape)} do not fit model input "
                                     f"'{t.name}' {fmt_shape(t.shape)} ({per})")
    _check_size(sample_shape, where)
    check_dtype(t, dtype, where)


def check_dtype(t, dtype, where: str) -> None:
    src, dst = np.dtype(dtype), np.dtype(t.dtype)
    if src == dst:
        return
    ok = src.kind in "biuf" and dst.kind in "biuf" and (
        np.can_cast(src, dst, "same_kind") or (src.kind in "biu" and dst.kind == "f"))
    if not ok:
        raise InputMismatchError(f"{where}: data dtype {src.name} cannot feed model input '{t.name}' of dtype "
                                 f"{dst.name}")


def check_finite(name: str, arr: np.ndarray, ids: Sequence[str] | None, axis: int | None = 0,
                 cast_from=None) -> None:
    """NonFiniteInputError naming the first sample of *arr* (samples along *axis*; None: a
    constant) that holds NaN or Inf. Run on the array as the model gets it, after any cast
    (*cast_from*: the dtype it was cast from, named when the cast made an Inf)."""
    if arr.dtype.kind != "f":
        return
    if axis is None or ids is None:
        if not np.isfinite(arr).all():
            raise NonFiniteInputError(f"input '{name}' (one value for every sample) contains "
                                      f"{'NaN' if np.isnan(arr).any() else 'Inf'}")
        return
    arr = np.moveaxis(arr, axis, 0) if axis else arr
    ok = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) if arr.ndim > 1 else np.isfinite(arr)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        kind = "NaN" if np.isnan(arr[bad]).any() else "Inf"
        more = f" (and {int((~ok).sum()) - 1} more in this batch)" if (~ok).sum() > 1 else ""
        cast = (f" after the cast from {np.dtype(cast_from).name} to {arr.dtype.name} (the data may hold values "
                f"beyond {arr.dtype.name}'s range)" if kind == "Inf" and cast_from is not None else "")
        raise NonFiniteInputError(f"sample {ids[bad]}: input '{name}' contains {kind}{more}{cast}")
