"""Exception classes.

Every error a user can cause derives from :class:`CalibError`. The CLI prints
``error: <message>`` on one line and exits with :attr:`CalibError.exit_code`;
the Python API raises the specific subclass so callers can catch what they expect.
Messages are one line, name the offending thing (path, tensor, sample) and say
what would fix it where that is known.
"""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of *exc*'s message (a library's reason, quoted in a one-line error), or its
    type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CalibError(Exception):
    """Base class of every error caused by input, configuration or environment."""

    exit_code = 2


# --- options ----------------------------------------------------------------
class ConfigError(CalibError):
    """An option has a bad value: the message is ``f"{option} {problem}"`` (the CLI names the flag)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


class BudgetError(CalibError):
    """An accuracy budget (``agreement>=0.995``, ...) cannot be parsed or does not fit the task."""


# --- data -------------------------------------------------------------------
class DataError(CalibError):
    """The data given to a reader cannot be used."""


class DataNotFoundError(DataError):
    """A data path does not exist."""


class EmptyDatasetError(DataError):
    """A data source holds no usable samples."""


class CorruptSampleError(DataError):
    """A sample (image, array) cannot be decoded; raised in strict mode."""


class InputMismatchError(DataError):
    """A sample's shape or dtype cannot fit the model input."""


class NonFiniteInputError(DataError):
    """A sample contains NaN or Inf."""


class MissingDatasetKeyError(DataError):
    """An HDF5 / NPZ file lacks the named dataset or array."""


class LabelError(DataError):
    """Labels or the class list cannot be read or do not match the data."""


class PreprocessError(CalibError):
    """A preprocessing specification is invalid."""


# --- models -----------------------------------------------------------------
class ModelError(CalibError):
    """The model cannot be used."""


class ModelLoadError(ModelError):
    """The model file is missing, truncated or not ONNX."""


class CustomOpError(ModelError):
    """The model needs an operator no available runtime implements."""


class AlreadyQuantizedError(ModelError):
    """The model already contains quantization and must not be quantized again."""


class QuantizationError(ModelError):
    """The model cannot be rewritten with Q/DQ as asked."""


# --- statistics -------------------------------------------------------------
class AlgorithmError(CalibError):
    """A calibration algorithm or its parameters are invalid, or statistics cannot give a range."""


# --- artifacts --------------------------------------------------------------
class OutputError(CalibError):
    """An output cannot be written: its folder is not a writable folder, or writing failed (a full
    disk, a read-only file system, no permission). The message names the path and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


class OutputLockedError(OutputError):
    """Another process is writing into the output folder (it holds the folder's lock)."""

    def __init__(self, folder, pid: int | None):
        who = f"another calib run (pid {pid})" if pid else "another calib run"
        super().__init__(folder, f"{who} is writing into this folder; wait for it to finish or write elsewhere")
        self.pid = pid


class OutputExistsError(CalibError):
    """An output file exists and replacing it was not asked for.

    The message names the keyword of the function that refused (``force=True``, or
    ``overwrite=True`` for the lower-level writers); :meth:`advice` words it for another audience
    (the CLI says ``--force``). *path* and *detail* (``"already exists"``) are kept as attributes.
    """

    def __init__(self, path, option: str = "overwrite", detail: str = "already exists"):
        self.path, self.option, self.detail = path, option, detail
        super().__init__(self.advice(f"{option}=True"))

    def advice(self, how: str) -> str:
        """The message, telling the reader to pass *how* (``"--force"``, ``"force=True"``)."""
        return f"{self.path} {self.detail}; pass {how} to replace it"


class CacheError(CalibError):
    """A calibration cache cannot be parsed or written."""


class CacheMismatchError(CacheError):
    """A calibration cache was made for another model or tensor set."""


class PlanError(CalibError):
    """A precision plan is invalid."""


# --- harness ----------------------------------------------------------------
class HarnessError(CalibError):
    """The evaluation cannot be run as asked (engines, task, data)."""


# --- backends ---------------------------------------------------------------
class BackendError(CalibError):
    """A backend failed to run a model."""


class TensorRTUnavailableError(BackendError):
    """TensorRT (or a CUDA GPU / cuda-python) is needed but not available."""

    exit_code = 3


class EngineMismatchError(BackendError):
    """A serialized engine was built by another TensorRT version or for another GPU."""
