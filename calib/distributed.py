"""Scale-out on Ray: the one module that imports ``ray`` (lazily; ``pip install 'calib[ray]'``).

Ray does the scheduling, the transport and the retries; this module only says what runs where.

* :func:`connect` (``--ray ADDRESS|auto``): ``auto`` joins the cluster that ``RAY_ADDRESS`` or
  the latest ``ray start`` on this machine names, else starts a local one (Ray's own rule for
  ``ray.init()`` without an address; ``ray.init(address="auto")`` would refuse to start one);
  ``host:port`` (or ``ray://host:port``) joins that cluster, after checking that something
  answers there (Ray itself waits for an unreachable address without end). The block is left
  disconnected, and a local instance started by :func:`connect` is stopped; a process already
  connected (``ray.init()`` before) keeps its connection.
* :func:`map_tasks`: one Ray task per item, with the values every task shares (a model's
  bytes, a data description) put into Ray's object store once; results come back to the driver
  as the tasks finish.
* :class:`RayStatistics`: :func:`calib.collect.collect_statistics` sharded over Ray tasks. The
  samples of a dataset (chosen by its seeded hash rule, as without Ray) are cut into shards of
  whole batches (:func:`shards`); each task reopens its shard from the data description
  (:meth:`calib.datasets.Dataset.spec`: a path every worker must see), observes it, and sends
  its observers back as plain NumPy arrays (:func:`calib.stats.dump_observers`, no pickle of
  arbitrary objects); the driver merges them. Observers merge exactly and do not depend on the
  order of the batches or on ONNX Runtime's thread count, and each shard reads the very batches
  a single pass reads (images of different sizes are padded per batch), so the merged
  statistics, hence the cache and the Q/DQ model, are bit-identical to a single process's.

Workers need calib (and its dependencies) installed, and the data at the same path as the
driver; the model travels through the object store.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import CalibError, first_line
from .model import Model

INSTALL_HINT = "pip install 'calib[ray]'"
CONNECT_TIMEOUT_S = 10.0     # how long a cluster address may take to accept a TCP connection


def import_ray():
    """The ``ray`` module, or a :class:`CalibError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CalibError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of a cluster address ``[ray://]host:port``, else a :class:`CalibError`."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CalibError(f"--ray: expected auto or a cluster address host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """A :class:`CalibError` unless the cluster address *address* accepts a TCP connection."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise CalibError(f"--ray: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); start one "
                         f"with `ray start --head`, or use --ray auto") from None


@contextlib.contextmanager
def connect(address: str):
    """Ray connected to the cluster at *address* (``"auto"``: see the module docstring) for the
    duration of the block, which gets the ``ray`` module. Raises :class:`CalibError` (one line)
    when Ray is missing or the cluster cannot be reached."""
    ray = import_ray()
    address = address.strip() if isinstance(address, str) else ""
    if address != "auto":
        _host_port(address)
    if ray.is_initialized():       # the caller connected already: use and keep that connection
        yield ray
        return
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address != "auto":
        _check_reachable(address)
    elif env and env not in ("auto", "local"):
        _check_reachable(env)
    try:
        ray.init(address=None if address == "auto" else address, include_dashboard=False)
    except Exception as exc:       # ConnectionError, ValueError, RuntimeError, ...: Ray's own reasons
        reason = first_line(exc)
        raise CalibError(f"--ray {address}: cannot connect to Ray: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _task_error(ray, exc: BaseException, unwrap: bool = False) -> BaseException:
    """A task's failure (what ``ray.get`` raised) as the driver reports it: the task's own
    :class:`CalibError` (one line) when it raised one, and with *unwrap* any exception it raised;
    a :class:`CalibError` when Ray lost the task (a worker or node died); else the exception as
    Ray gives it (a bug in the task, with its remote traceback)."""
    if not isinstance(exc, ray.exceptions.RayError):
        return exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CalibError) or (unwrap and isinstance(cause, Exception)):
        return cause
    if isinstance(exc, ray.exceptions.RayTaskError):
        return exc
    reason = first_line(exc)
    return CalibError(f"a Ray task was lost: {reason}")


def map_tasks(ray, fn: Callable, items: Sequence, *, shared: Sequence = (), num_cpus: float = 1,
              progress: bool | str = False) -> Iterator[tuple[int, Any]]:
    """``(index, fn(*shared, items[index]))`` for every item, each call a Ray task, yielded as
    the tasks finish (in any order). The *shared* values go into the object store once and
    every task gets them from there; *fn* must be importable by the workers (a module-level
    function of an installed package); a shared value that is an ``ObjectRef`` already is passed
    as it is. A task's failure is raised here (see :func:`_task_error`)
    and the tasks still running are cancelled. *progress*: a tqdm bar over the tasks."""
    remote = ray.remote(num_cpus=num_cpus)(fn)
    refs = [v if isinstance(v, ray.ObjectRef) else ray.put(v) for v in shared]
    pending = {remote.remote(*refs, item): i for i, item in enumerate(items)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc=progress if isinstance(progress, str) else "Ray tasks", unit="task",
                   leave=False)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise _task_error(ray, exc) from None
                if bar is not None:
                    bar.update(1)
                yield i, value
    finally:
        if bar is not None:
            bar.close()
        for ref in pending:
            ray.cancel(ref)


def shards(ds, n: int, batch_size: int) -> list:
    """*ds* cut into at most *n* disjoint slices (:meth:`calib.datasets.Dataset.slice`) of whole
    batches of *batch_size* (numbers of batches differing by at most one) that together hold its
    samples. Each yields exactly the batches a single pass over *ds* yields for its positions,
    padding of differently sized images included (a batch is padded to its largest image), so
    their statistics merge into those of one pass; each is a selection of *ds*, so its spec
    reopens it elsewhere."""
    batches = max(1, math.ceil(len(ds) / batch_size))
    n = max(1, min(int(n), batches))
    out, start = [], 0
    for k in range(n):
        stop = start + batches // n + (1 if k < batches % n else 0)
        out.append(ds.slice(start * batch_size, stop * batch_size))
        start = stop
    return out


def collect_shard(model_bytes: bytes, spec: dict, task: dict) -> dict:
    """Run in a Ray worker: one shard's statistics, as plain data: ``observers`` (the bytes of
    :func:`calib.stats.dump_observers`), ``read`` (samples read) and ``skipped`` (``[id,
    reason]`` of the images that could not be decoded). *spec* is the dataset's description
    (shared by all tasks); *task* holds the shard's own ``selection`` steps and ``ids_sha256``,
    ``batch_size``, ``threads`` and ``histogram``. The warning about tensors holding NaN or Inf
    is left to the driver, which sees all shards."""
    import warnings

    import onnx

    from .collect import collect_statistics
    from .datasets import open_spec
    from .stats import dump_observers

    model = Model.from_proto(onnx.load_from_string(model_bytes))
    ds = open_spec({**spec, "selection": task["selection"], "ids_sha256": task["ids_sha256"]}, model)
    threads = int(task["threads"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*held non-finite values", category=RuntimeWarning)
        obs = collect_statistics(model, ds.batches(batch_size=task["batch_size"]), threads=threads, progress=False,
                                 workers=min(4, threads) if threads > 1 else 0, histogram=task["histogram"])
    return {"observers": dump_observers(obs), "read": int((ds.last_pass or {}).get("read", 0)),
            "skipped": [[str(i), str(r)] for i, r in ds.skipped]}


class RayStatistics:
    """:func:`calib.collect.collect_statistics` over shards of a dataset, one Ray task per shard
    (see the module docstring): ``stats(model, ds, label, histogram)``, the ``collect`` hook of
    :func:`calib.pipeline.gather_statistics`. A model's bytes go into the object store once, the
    first time it is passed, for every dataset it is called with.

    *batch_size*: the batches (hence the shards) as a single pass reads them; *threads*: ONNX
    Runtime threads of each task, which reserves as many CPUs (default 1); *tasks*: shards per
    dataset (default: the cluster's CPUs divided by *threads*; at most one per batch)."""

    def __init__(self, ray, *, batch_size: int, threads: int | None = None, tasks: int | None = None):
        self.ray = ray
        self.batch_size = int(batch_size)
        self.threads = int(threads or 1)
        self.tasks = tasks
        self._models: dict[int, tuple[Model, Any]] = {}    # id(model) -> (model, ObjectRef of its bytes)
        self.tasks_run = 0          # tasks run so far

    def _model_ref(self, model: Model):
        held = self._models.get(id(model))
        if held is None or held[0] is not model:
            held = self._models[id(model)] = (model, self.ray.put(model.serialize()))
        return held[1]

    def __call__(self, model: Model, ds, label: bool | str = False, histogram: bool = True) -> dict:
        """``{tensor: TensorObserver}`` of *model* over *ds* (a dataset with a spec: opened from a
        path), equal to :func:`calib.collect.collect_statistics` over its batches (*histogram*
        as there); *label*: a progress bar over the tasks. Afterwards ``ds.skipped`` and
        ``ds.last_pass`` say what the tasks read and skipped, as after a pass over *ds*."""
        from .collect import warn_nonfinite
        from .stats import load_observers

        spec = ds.spec()
        n = self.tasks or max(1, int(self.ray.cluster_resources().get("CPU", 1)) // self.threads)
        jobs = []
        for part in shards(ds, n, self.batch_size):
            ps = part.spec()
            jobs.append({"selection": ps["selection"], "ids_sha256": ps["ids_sha256"], "batch_size": self.batch_size,
                         "threads": self.threads, "histogram": bool(histogram)})
        self.tasks_run += len(jobs)
        label = f"{label} ({len(jobs)} Ray tasks)" if isinstance(label, str) else label
        merged, read, skipped = None, 0, []
        for _, res in map_tasks(self.ray, collect_shard, jobs, shared=(self._model_ref(model), spec),
                                num_cpus=self.threads, progress=label):
            obs = load_observers(res["observers"])
            read += res["read"]
            skipped += [(i, r) for i, r in res["skipped"]]
            if merged is None:
                merged = obs
                continue
            if list(obs) != list(merged):
                raise RuntimeError("internal: shards observed different tensors")
            for k, o in obs.items():
                merged[k].merge(o)
        ds.skipped = sorted(skipped)
        ds.last_pass = {"read": read, "skipped": len(skipped), "complete": True}
        warn_nonfinite(merged, stacklevel=3)
        return merged


def local_copy(name: str, data: bytes) -> str:
    """The path of a file named *name* holding *data* on this machine: written once (atomically)
    into ``<temp>/calib-ray/<sha256 of data>/``, then reused by every process of the machine."""
    import hashlib
    import tempfile

    folder = os.path.join(tempfile.gettempdir(), "calib-ray", hashlib.sha256(data).hexdigest()[:32])
    path = os.path.join(folder, os.path.basename(name))
    if not os.path.isfile(path) or os.path.getsize(path) != len(data):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def call(files: dict, fn: Callable, *args, **kwargs):
    """The Ray task behind :meth:`RayExecutor.submit`: ``fn(*args, **kwargs)`` (any picklable
    callable: a function, a bound method, a partial), where an argument equal to a key of *files*
    (a path on the driver) is replaced by the path of a local copy of its bytes
    (:func:`local_copy`, same file name)."""
    local = {p: local_copy(p, data) for p, data in files.items()}

    def swap(v):
        return local.get(v, v) if isinstance(v, str) else v

    return fn(*(swap(a) for a in args), **{k: swap(v) for k, v in kwargs.items()})


class RayExecutor:
    """Where a sweep's tasks run on Ray: the executor seam of :mod:`calib.sweep.run` (``slots``,
    ``submit(fn, *args, **kwargs) -> concurrent.futures.Future``, ``close()``), as
    :class:`concurrent.futures.Executor` has them.

    Connected to the cluster at *address* (:func:`connect`) until :meth:`close`. Each call of
    :meth:`submit` is one Ray task reserving *num_cpus* CPUs; ``slots`` is the number of such
    tasks the cluster runs at once. An argument other than a plain scalar or string (a data
    description, settings, a model's bytes) goes into the object store the first time it is
    passed and every later task that gets the same object shares that copy. *files* maps paths on
    the driver to the bytes the tasks get instead of reading them there (a model: workers need not
    see its path), put into the object store once: in a task, an argument equal to such a path
    names a local copy with the same file name (:func:`call`). A task's failure comes back as the
    exception the function raised, as with a local executor; a task Ray lost as a
    :class:`CalibError`.
    """

    def __init__(self, address: str, *, num_cpus: float = 1, files: dict[str, bytes] | None = None):
        self._session = connect(address)
        self.ray = self._session.__enter__()
        self.num_cpus = num_cpus
        self.slots = max(1, int(self.ray.cluster_resources().get("CPU", 1) // num_cpus))
        self._call = self.ray.remote(num_cpus=num_cpus)(call)
        self._shared: dict[int, tuple[Any, Any]] = {}     # id(value) -> (value, its ObjectRef)
        self.puts = 0                                     # values put into the object store
        self._files = self._arg(dict(files or {}))

    def _arg(self, v):
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        held = self._shared.get(id(v))
        if held is None or held[0] is not v:
            held = self._shared[id(v)] = (v, self.ray.put(v))
            self.puts += 1
        return held[1]

    def submit(self, fn: Callable, *args, **kwargs):
        """A :class:`concurrent.futures.Future` of ``fn(*args, **kwargs)`` run as a Ray task."""
        import concurrent.futures as cf

        ref = self._call.remote(self._files, fn, *(self._arg(a) for a in args),
                                **{k: self._arg(v) for k, v in kwargs.items()})
        out: cf.Future = cf.Future()

        def done(f: cf.Future) -> None:
            exc = cf.CancelledError() if f.cancelled() else f.exception()
            if exc is None:
                out.set_result(f.result())
            else:
                out.set_exception(_task_error(self.ray, exc, unwrap=True))

        ref.future().add_done_callback(done)
        return out

    def close(self) -> None:
        """Disconnect (and stop a local instance :func:`connect` started); idempotent."""
        session, self._session = self._session, None
        self._shared.clear()
        if session is not None:
            session.__exit__(None, None, None)


def ray_executor(address: str, *, num_cpus: float = 1, files: dict[str, bytes] | None = None) -> RayExecutor:
    """The :class:`RayExecutor` for ``--ray ADDRESS|auto``."""
    return RayExecutor(address, num_cpus=num_cpus, files=files)
