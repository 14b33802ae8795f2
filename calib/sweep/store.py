"""The results store of a sweep: one SQLite file, ``<out>/sweep.db``, one row per point.

Plain :mod:`sqlite3` in WAL mode (write-ahead log): the driver alone writes, one transaction per
point, committed as soon as the point is done, so that a crash, Ctrl-C or SIGKILL loses at most the
points in flight, and readers (``calib sweep show`` during a run) never block it. Tables:

``points``
    ``key`` (primary key: sha256 of the point's configuration, the model's sha256, the data's
    digest and the result-changing settings: :meth:`calib.sweep.points.PointConfig.key`),
    ``run_id`` and ``finished`` (which run stored it, when), ``status`` (``ok`` | ``failed``),
    ``error`` (one line), ``seconds``, the flat columns of :data:`COLUMNS` (the axes, the metrics
    with their intervals, latencies, sizes) for queries and exports, and ``row``: the whole result
    row as JSON (every metric of the harness, CPU and predicted timings, TensorRT's, the
    calibration's summary).
``runs``
    one row per ``calib sweep`` run: ``run_id``, ``started``, ``finished``, the counts of points
    computed, reused from the store (cached) and failed, and the settings as JSON.
``meta``
    ``name -> value``: ``schema`` (:data:`SCHEMA`), ``model`` and ``model_sha256``, ``data`` (its
    spec as JSON) and ``data_digest``: a store holds the points of one model on one data set.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import sqlite3
import uuid
from pathlib import Path

from ..errors import CalibError

SCHEMA = "calib-sweep-store-1"
DB_NAME = "sweep.db"


def _get(row: dict, *path):
    for p in path:
        if not isinstance(row, dict):
            return None
        row = row.get(p)
    return row


# (column, SQL type, where in the result row its value is): the flat view of a point, in the
# table, the CSV export and `calib sweep show --json`
COLUMNS = (
    ("algorithm", "TEXT", ("config", "algorithm")),
    ("samples", "INTEGER", ("config", "samples")),
    ("seed", "INTEGER", ("config", "seed")),
    ("plan", "TEXT", ("config", "plan")),
    ("batch_size", "INTEGER", ("config", "batch_size")),
    ("target", "TEXT", ("config", "target")),
    ("fidelity_metric", "TEXT", ("fidelity", "name")),
    ("fidelity", "REAL", ("fidelity", "candidate", "estimate")),
    ("fidelity_low", "REAL", ("fidelity", "candidate", "low")),
    ("fidelity_high", "REAL", ("fidelity", "candidate", "high")),
    ("accuracy_metric", "TEXT", ("accuracy", "name")),
    ("accuracy", "REAL", ("accuracy", "candidate", "estimate")),
    ("accuracy_low", "REAL", ("accuracy", "candidate", "low")),
    ("accuracy_high", "REAL", ("accuracy", "candidate", "high")),
    ("fp32_accuracy", "REAL", ("accuracy", "reference", "estimate")),
    ("cpu_ms", "REAL", ("cpu", "latency_ms")),
    ("cpu_p90_ms", "REAL", ("cpu", "p90_ms")),
    ("fp32_cpu_ms", "REAL", ("cpu", "fp32_latency_ms")),
    ("cpu_speedup", "REAL", ("cpu", "speedup")),
    ("throughput", "REAL", ("cpu", "throughput")),
    ("fp32_throughput", "REAL", ("cpu", "fp32_throughput")),
    ("predicted_ms", "REAL", ("predicted", "latency_ms")),
    ("fp32_predicted_ms", "REAL", ("predicted", "fp32_latency_ms")),
    ("latency_model", "TEXT", ("predicted", "model")),
    ("weight_bytes", "INTEGER", ("size", "weight_bytes")),
    ("onnx_bytes", "INTEGER", ("size", "onnx_bytes")),
)
COLUMN_NAMES = ("key", "status", *(c for c, _, _ in COLUMNS), "error", "seconds", "run_id", "finished")


def now() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class Store:
    """A sweep's SQLite store at *path* (created with its tables if missing; ``create=False``
    refuses a missing one with :class:`CalibError`)."""

    def __init__(self, path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CalibError(f"no sweep results in {self.path.parent}: {self.path.name} is missing")
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")   # in WAL mode: durable across a crash of the process
            self._schema()
        except sqlite3.DatabaseError as exc:
            raise CalibError(f"{self.path}: not a sweep store ({exc})") from None
        except sqlite3.Error as exc:
            raise CalibError(f"cannot open the sweep store {self.path}: {exc}") from None

    def _schema(self) -> None:
        cols = ",\n".join(f"  {c} {t}" for c, t, _ in COLUMNS)
        with self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, started TEXT NOT NULL, "
                              "finished TEXT, computed INTEGER, cached INTEGER, failed INTEGER, settings TEXT)")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS points (\n  key TEXT PRIMARY KEY,\n"
                              f"  run_id TEXT NOT NULL,\n  finished TEXT NOT NULL,\n"
                              f"  status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),\n"
                              f"  error TEXT,\n  seconds REAL,\n{cols},\n  row TEXT NOT NULL\n)")
            have = self.meta("schema")
            if have is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA,))
            elif have != SCHEMA:
                raise CalibError(f"{self.path} is a sweep store of another version ({have}; this calib reads {SCHEMA})")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta and runs ----------------------------------------------------------------
    def meta(self, name: str) -> str | None:
        r = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return r[0] if r else None

    def set_meta(self, **values: str) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(values.items()))

    def start_run(self, settings: dict) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.conn:
            self.conn.execute("INSERT INTO runs (run_id, started, settings) VALUES (?, ?, ?)",
                              (run_id, now(), json.dumps(settings, sort_keys=True, default=str)))
        return run_id

    def finish_run(self, run_id: str, computed: int, cached: int, failed: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished = ?, computed = ?, cached = ?, failed = ? WHERE run_id = ?",
                              (now(), computed, cached, failed, run_id))

    def runs(self) -> list[dict]:
        cur = self.conn.execute("SELECT run_id, started, finished, computed, cached, failed FROM runs ORDER BY started")
        return [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]

    # -- points --------------------------------------------------------------------------
    def put(self, key: str, row: dict, run_id: str) -> None:
        """Store (or replace) the result *row* of the point *key*, committed before returning."""
        values = [key, run_id, now(), row["status"], row.get("error"), _get(row, "timing_s", "total")]
        values += [_get(row, *path) for _, _, path in COLUMNS]
        values.append(json.dumps(row, sort_keys=True, allow_nan=True))
        names = ["key", "run_id", "finished", "status", "error", "seconds", *(c for c, _, _ in COLUMNS), "row"]
        with self.conn:
            self.conn.execute(f"INSERT OR REPLACE INTO points ({', '.join(names)}) "
                              f"VALUES ({', '.join('?' * len(names))})", values)

    def status(self) -> dict[str, str]:
        """``{key: status}`` of every stored point."""
        return dict(self.conn.execute("SELECT key, status FROM points").fetchall())

    def rows(self) -> list[dict]:
        """Every stored point: its flat columns (:data:`COLUMN_NAMES`) and ``row``, the result row,
        in the order they were stored."""
        cur = self.conn.execute(f"SELECT {', '.join(COLUMN_NAMES)}, row FROM points ORDER BY finished, key")
        out = []
        for r in cur.fetchall():
            d = dict(zip((*COLUMN_NAMES, "row"), r))
            d["row"] = json.loads(d["row"])
            out.append(d)
        return out

    def get(self, key: str) -> dict | None:
        r = self.conn.execute("SELECT row FROM points WHERE key = ?", (key,)).fetchone()
        return json.loads(r[0]) if r else None


def csv_text(rows: list[dict]) -> str:
    """The flat columns of *rows* (:meth:`Store.rows`) as CSV text with a header line."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMN_NAMES)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r[c] for c in COLUMN_NAMES])
    return buf.getvalue()


__all__ = ["Store", "SCHEMA", "DB_NAME", "COLUMNS", "COLUMN_NAMES", "csv_text", "now"]
