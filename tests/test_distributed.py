"""Calibration sharded over Ray (``calibrate --ray``, :mod:`calib.distributed`) on a local Ray
cluster of 2 worker CPUs, started in this process for the module and stopped after it.

The claim: the statistics, the cache and the Q/DQ model are bit-identical to a single process's.
The caches and Q/DQ models are compared with the sha256 that ``test_artifacts_pinned.py`` pins
for the single-process run of the same command; the observers with a single-process pass.
Ray comes with the ``test`` extra (``calib[ray]``), so these tests run in every test run.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from calib.cli import main
from calib.collect import captured_tensors, collect_statistics
from calib.datasets import Preprocess, open_dataset, open_spec, split_of
from calib.distributed import RayStatistics, collect_shard, map_tasks, ray_executor, shards
from calib.errors import CalibError, DataError
from calib.model import Model
from calib.pipeline import calibrate
from calib.utils import sha256_file
from test_artifacts_pinned import DATA, PINS

REPO = Path(__file__).resolve().parents[1]


def _children(pid: int) -> set[int]:
    """Processes whose parent is *pid* (Linux /proc; empty elsewhere)."""
    out = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(d.name))
    return out


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray cluster with 2 CPUs; afterwards, none of the processes it
    started is left."""
    before = _children(os.getpid())
    ray.init(num_cpus=2, include_dashboard=False)
    started = _children(os.getpid()) - before
    assert started, "ray.init started no process of its own"
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 60
        while started and time.monotonic() < deadline:
            started = {p for p in started if Path(f"/proc/{p}").exists()}
            time.sleep(0.2)
        assert not started, f"Ray processes left running after ray.shutdown(): {sorted(started)}"


def _digests(folder: Path, model: str, pins) -> dict:
    return {s: hashlib.sha256((folder / f"{model}{s}").read_bytes()).hexdigest() for s in pins}


def _pinned_command(case: str, shared_dir: Path, out: Path) -> tuple[list[str], str, dict]:
    model, extra, pins = PINS[case]
    folder, flags = DATA[model]
    args = ["calibrate", "--model", str(shared_dir / "models" / f"{model}.onnx"),
            "--data", str(shared_dir / "data" / folder), *flags, *extra, "--no-eval", "--out", str(out)]
    return args, model, pins


# entropy with ReLU6 clip splits (EfficientNet-Lite0); max, range-only observers; dynamic-width
# text lines padded per batch (PP-OCRv4 rec)
@pytest.mark.parametrize("case", ["effnet-trt", "effnet-max", "rec-trt"])
def test_calibrate_on_ray_writes_the_pinned_single_process_artifacts(case, cluster, shared_dir, tmp_path, capsys):
    args, model, pins = _pinned_command(case, shared_dir, tmp_path)
    assert main([*args, "--ray", "auto", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ray"] == {"address": "auto", "tasks": 2}
    assert _digests(tmp_path, model, pins) == pins, f"{case}: artifacts on Ray differ from the single-process run"


def test_calibrate_joins_a_cluster_by_address_from_another_process(cluster, shared_dir, tmp_path):
    """The CLI in a fresh process: ``--ray host:port`` joins the running cluster (and leaves it
    running), the statistics run in its 2 workers, the artifacts are the pinned ones."""
    args, model, pins = _pinned_command("squeezenet-trt", shared_dir, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "calib", *args, "--ray", cluster, "--json"], cwd=REPO,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["ray"] == {"address": cluster, "tasks": 2}
    assert _digests(tmp_path, model, pins) == pins
    assert ray.cluster_resources().get("CPU") == 2       # the cluster is still up


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_1_fp32"])
def test_sharded_observers_equal_a_single_pass(name, cluster, shared_model, imagenet_dir):
    """Every observer, captured or derived (aliases, Concat merges, both sides of a Relu/ReLU6
    clip split), crosses the object store and merges into exactly the single-pass one."""
    m = Model.load(shared_model(name))
    preset = "efficientnet-lite" if name.startswith("efficient") else "caffe"
    ds = open_dataset(imagenet_dir, m, preset, limit=20)
    plain = collect_statistics(m, ds.batches(batch_size=4), progress=False)
    stats = RayStatistics(ray, batch_size=4, tasks=3)
    sharded = stats(m, ds)
    assert stats.tasks_run == 3
    assert list(sharded) == list(plain)
    not_captured = set(plain) - set(captured_tensors(m)) - {t.name for t in m.inputs}
    assert len(not_captured) >= 20          # derived observers are part of the claim
    assert [k for k in plain if not sharded[k].same_as(plain[k])] == []
    assert ds.last_pass == {"read": 20, "skipped": 0, "complete": True}


def test_shards_are_whole_batches_covering_the_dataset(efficientnet, imagenet_dir):
    ds = open_dataset(imagenet_dir, efficientnet, "efficientnet-lite", limit=45)
    parts = shards(ds, 4, batch_size=8)                  # 6 batches: 2, 2, 1, 1
    assert [len(p) for p in parts] == [16, 16, 8, 5]
    assert [i for p in parts for i in p.ids] == ds.ids
    assert [b.ids for p in parts for b in p.batches(8)] == [b.ids for b in ds.batches(8)]
    assert len(shards(ds, 50, batch_size=8)) == 6        # never more shards than batches


def test_a_task_error_reaches_the_driver_as_its_one_line_error(cluster, efficientnet, imagenet_dir):
    """A worker that sees other files at the data path than the driver refuses to run."""
    ds = open_dataset(imagenet_dir, efficientnet, "efficientnet-lite", limit=8)
    task = {"selection": ds.spec()["selection"], "ids_sha256": "0" * 64, "batch_size": 4, "threads": 1,
            "histogram": True}
    with pytest.raises(DataError, match="hold other samples here"):
        list(map_tasks(ray, collect_shard, [task], shared=(efficientnet.serialize(), ds.spec())))


def test_data_held_in_memory_is_refused_before_any_work(cluster, mnist_model_path, tmp_path):
    x = np.zeros((8, 1, 28, 28), np.float32)
    with pytest.raises(DataError, match="held in memory"):
        calibrate(mnist_model_path, x, out=tmp_path, samples=4, evaluate=False, ray="auto")
    assert list(tmp_path.iterdir()) == []


def test_without_ray_installed_the_cli_says_how_to_install_it(monkeypatch, mnist_model_path, shared_dir,
                                                               tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 1, 28, 28), np.float32))
    rc = main(["calibrate", "--model", str(mnist_model_path), "--data", str(npy), "--out", str(tmp_path / "o"),
               "--ray", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err == ["error: --ray needs Ray, which is not installed: pip install 'calib[ray]'"]


@pytest.mark.parametrize("address", ["nonsense", "host:port", ""])
def test_a_malformed_address_is_a_one_line_error(address, mnist_model_path, tmp_path, capsys):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 1, 28, 28), np.float32))
    rc = main(["calibrate", "--model", str(mnist_model_path), "--data", str(npy), "--out", str(tmp_path / "o"),
               "--ray", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: --ray") and "host:port" in err[0]


def test_an_address_where_no_cluster_answers_fails_fast(mnist_model_path, tmp_path):
    """Ray would wait for it without end; calib says so in one line (a fresh process: this one
    may be connected already)."""
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 1, 28, 28), np.float32))
    with socket.socket() as s:          # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "calib", "calibrate", "--model", str(mnist_model_path),
                           "--data", str(npy), "--out", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}"],
                          cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: --ray: no Ray cluster answers at 127.0.0.1:{port}")
    assert not (tmp_path / "o").exists()


def test_connect_refuses_a_missing_address():
    from calib.distributed import connect

    with pytest.raises(CalibError, match="expected auto or a cluster address"):
        with connect(None):
            pass


def test_the_sweep_executor_runs_tasks_on_the_cluster(cluster, efficientnet, imagenet_dir, tmp_path):
    """The executor seam of calib.sweep.run: futures of Ray tasks, the model's bytes and shared
    arguments put into the object store once, a task's exception as the function raised it."""
    spec = open_dataset(imagenet_dir, efficientnet, "efficientnet-lite", limit=4).spec()
    model = str(tmp_path / "not-here" / "m.onnx")           # a path the workers cannot read
    ex = ray_executor("auto", files={model: efficientnet.serialize()})
    try:
        assert ex.slots == 2 and ex.puts == 1
        name, digest = ex.submit(os.path.basename, model), ex.submit(sha256_file, model)
        assert name.result(timeout=300) == "m.onnx" and digest.result(timeout=300) == efficientnet.sha256
        ids = [f"{k}.JPEG" for k in range(6)]
        futures = [ex.submit(split_of, i, eval_fraction=0.5) for i in ids]
        assert [f.result(timeout=300) for f in futures] == [split_of(i) for i in ids]
        pre = spec["preprocess"]
        got = [ex.submit(Preprocess.from_dict, pre) for _ in range(2)] + [ex.submit(Preprocess.from_dict, d=pre)]
        assert [f.result(timeout=300) for f in got] == [Preprocess.from_dict(dict(pre))] * 3
        assert ex.puts == 2                               # the same description, put once
        bad = ex.submit(open_spec, {"source": "x"}, efficientnet.inputs)
        with pytest.raises(DataError, match="not a calib-data-spec-1 data description"):
            bad.result(timeout=300)
    finally:
        ex.close()
    assert ray.is_initialized()                          # the executor left the test's connection alone


def test_a_sweep_on_the_cluster_stores_what_jobs_1_stores(cluster, tmp_path):
    """``sweep(..., ray=...)``: the statistics pass and the points run as Ray tasks (results come
    back to the driver, which alone writes the store); the store holds the same points with the
    same results, artifacts' digests included, as a sweep in this process (timings aside)."""
    from calib.sweep import load, sweep
    from test_calibrate_cli import CLASSES, IMAGES, MODEL
    from test_sweep import _results

    grid = {"algorithm": ["max", "entropy"], "samples": [8], "seed": [0, 1], "batch_size": [4],
            "calibration": {"bias_correction": False}}
    kw = dict(preprocess="caffe", classes=CLASSES, timing_runs=0, eval_samples=10, progress=False,
              echo=lambda line: None)
    on_ray = sweep(MODEL, IMAGES, grid, out=tmp_path / "ray", ray=cluster, **kw)
    here = sweep(MODEL, IMAGES, grid, out=tmp_path / "one", jobs=1, **kw)
    assert on_ray.counts() == here.counts() == {"computed": 4, "cached": 0, "failed": 0}
    ray_rows, one_rows = load(tmp_path / "ray"), load(tmp_path / "one")
    assert _results(ray_rows) == _results(one_rows)
    assert os.getpid() not in {r["row"]["pid"] for r in ray_rows}       # the points ran in Ray's workers
    assert {r["row"]["pid"] for r in one_rows} == {os.getpid()}
    assert len(list((tmp_path / "ray" / "stats").glob("*.npz"))) == 2   # one statistics pass per seed
    assert ray.is_initialized()                                        # the test's connection left alone
