"""Output sets under SIGKILL, SIGTERM, Ctrl-C and concurrent runs; unwritable, full and wrong output
folders (issue 19, items 4 and 5).

Real ``calibrate`` runs on the shared MNIST CNN (64 digits, a second each) and the bundled SqueezeNet
(its 5 MB Q/DQ model for the full-disk cases), as a user runs them: ``calib.cli.main`` in this
process, or ``python -m calib`` in a subprocess where a process is killed. The rename step is
reached deterministically through the test hook ``calib.utils.TEST_HOOK_ENV``, which makes the
writer signal itself (or sleep, holding the folder's lock) right after its N-th rename.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import calib.utils
from calib.cache import check_provenance, read_sidecar
from calib.cli import main
from calib.errors import CacheMismatchError, OutputExistsError
from calib.utils import LOCK_NAME, STAGE_PREFIX, TEST_HOOK_ENV, sha256_file

REPO = Path(__file__).resolve().parents[1]
SQUEEZENET = REPO / "datasets" / "models" / "squeezenet1_1_fp32.onnx"
IMAGES = REPO / "datasets" / "imagenet-mini"
STEM = "mnist_cntk"
SET = [f"{STEM}.cache", f"{STEM}.cache.json", f"{STEM}.int8.onnx", f"{STEM}.summary.json"]


@pytest.fixture(scope="module")
def mnist(mnist_arrays, mnist_model_path, tmp_path_factory):
    """(model path, .npz of 64 digits)."""
    data = tmp_path_factory.mktemp("mnist") / "digits.npz"
    np.savez(data, Input3=mnist_arrays[0][:64])
    return mnist_model_path, data


def _argv(mnist, out, *extra):
    model, data = mnist
    return ["calibrate", "--model", str(model), "--data", str(data), "--limit", "40", "--no-eval", "--out", str(out),
            *extra]   # --limit: another --seed draws other samples, so other ranges


def _files(d: Path) -> dict[str, bytes]:
    """Every file under *d*, hidden ones and those in hidden folders included -> its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} \
        if d.exists() else {}


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def _one_error_line(err: str) -> str:
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal gives them. A suite started in the background
    of a non-interactive shell (``pytest &``) inherits SIGINT ignored, which calib rightly leaves
    ignored, and Ctrl-C could not be tested."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def _subprocess(argv, hook: str | None = None, preexec_fn=None, **kw):
    env = {k: v for k, v in os.environ.items() if k != TEST_HOOK_ENV}
    if hook:
        env[TEST_HOOK_ENV] = hook

    def child() -> None:
        _default_signals()
        if preexec_fn is not None:
            preexec_fn()
    return subprocess.Popen([sys.executable, "-m", "calib", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=child, **kw)


def _run(argv, hook: str | None = None, timeout: float = 300, **kw):
    p = _subprocess(argv, hook, **kw)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def consistent_seed(out: Path) -> int:
    """Assert that *out* holds exactly one calibrate set whose four files come from one run (the
    cache is the one its sidecar and the summary describe, the Q/DQ model the one the summary
    describes); the seed of that run."""
    assert sorted(_files(out)) == sorted(SET), sorted(_files(out))
    side = read_sidecar(out / f"{STEM}.cache")
    summary = json.loads((out / f"{STEM}.summary.json").read_text())
    cache_sha = sha256_file(out / f"{STEM}.cache")
    assert side["cache"]["sha256"] == cache_sha == summary["sha256"]["cache"]
    assert sha256_file(out / f"{STEM}.int8.onnx") == summary["sha256"]["qdq"]
    return side["seed"]


@pytest.fixture
def previous(mnist, tmp_path, capsys):
    """An output folder holding the set of a seed-0 run, and its bytes."""
    out = tmp_path / "out"
    assert main(_argv(mnist, out, "--seed", "0")) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert consistent_seed(out) == 0
    return out, _files(out)


def _live_stages(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(STAGE_PREFIX)]


# --- item 4: killed between renames, SIGTERM, concurrent writers ----------------------------
@pytest.mark.parametrize("after", [1, 3])
def test_sigkill_between_renames_then_the_next_run_restores_the_previous_set(mnist, previous, capsys, after):
    out, before = previous
    rc, _, err = _run(_argv(mnist, out, "--seed", "1", "--force"), hook=f"{after}:KILL")
    assert rc == -signal.SIGKILL, err
    # killed mid-commit: some targets are new, the journal of the commit is left
    now = _files(out)
    changed = [n for n in SET if now[n] != before[n]]
    assert changed == SET[:after], changed
    (stage,) = _live_stages(out)
    assert (stage / "journal.json").is_file()
    if after == 1:   # a new cache beside the old sidecar: refused by name, not used
        with pytest.raises(CacheMismatchError, match=rf"{STEM}\.cache does not match its sidecar"):
            check_provenance(out / f"{STEM}.cache.json", mnist[0])
    # the next run into the folder (no --force) restores the previous set first, then refuses
    rc = main(_argv(mnist, out, "--seed", "2"))
    err = capsys.readouterr().err
    lines = _lines(err)
    assert rc == 2 and len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("warning: ") and "interrupted" in lines[0] and f"{STEM}.cache" in lines[0]
    assert lines[1].startswith("error: ") and "already exists; pass --force" in lines[1]
    assert _files(out) == before      # the complete previous set, byte for byte, nothing else
    check_provenance(out / f"{STEM}.cache.json", mnist[0])


def test_sigkill_then_a_force_run_writes_a_complete_new_set(mnist, previous, capsys):
    out, _ = previous
    rc, _, _ = _run(_argv(mnist, out, "--seed", "1", "--force"), hook="2:KILL")
    assert rc == -signal.SIGKILL
    assert main(_argv(mnist, out, "--seed", "3", "--force")) == 0, capsys.readouterr().err
    assert consistent_seed(out) == 3


@pytest.mark.parametrize("hook,code,word", [("2:TERM", 143, "terminated"), ("0:TERM", 143, "terminated"),
                                             ("3:INT", 130, "interrupted")])
def test_sigterm_or_ctrl_c_while_writing_keeps_the_previous_set(mnist, previous, hook, code, word):
    """SIGTERM (or SIGINT) after the 2nd rename, or once everything is staged: the commit is rolled
    back, one error line, exit 143 (130), the previous set as it was, no temporary file."""
    out, before = previous
    rc, stdout, err = _run(_argv(mnist, out, "--seed", "1", "--force"), hook=hook)
    assert rc == code, err
    assert _one_error_line(err) == f"error: {word}; no output was written"
    assert _files(out) == before and stdout == ""


def test_sigterm_in_a_fresh_folder_leaves_nothing(mnist, tmp_path):
    out = tmp_path / "new" / "out"
    rc, _, err = _run(_argv(mnist, out), hook="1:TERM")
    assert rc == 143 and "terminated" in _one_error_line(err)
    assert not (tmp_path / "new").exists()      # the folders it made for the set are gone too


def test_two_force_writers_at_once_leave_one_complete_set(mnist, previous):
    """Writer A stops (holding the folder's lock) after its first rename; writer B, started then,
    passes its checks without touching A's staged files, computes, waits for the lock and writes
    after A. Both succeed; the folder holds B's complete set."""
    out, before = previous
    a = _subprocess(_argv(mnist, out, "--seed", "1", "--force"), hook="1:sleep=6")
    deadline = time.monotonic() + 120
    while not any((s / "journal.json").exists() for s in _live_stages(out)):   # A is in its commit
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()
        time.sleep(0.05)
    b = _subprocess(_argv(mnist, out, "--seed", "2", "--force"))
    (_, a_err), (_, b_err) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (a_err, b_err)
    assert "error" not in a_err + b_err
    assert consistent_seed(out) == 2
    assert _files(out)[f"{STEM}.cache"] != before[f"{STEM}.cache"]   # the seeds really give other sets


def test_a_second_writer_that_cannot_wait_is_refused_naming_the_first(mnist, previous, monkeypatch, capsys):
    """While another process holds the folder's lock, with a staged commit of its own, a run gives
    up after LOCK_WAIT_S with one line naming the holder's pid; neither the folder nor the other
    writer's staged files are touched (its journal is live, not a crash to recover)."""
    out, before = previous
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from calib.utils import _Lock
        lock = _Lock(Path({str(out)!r}))
        assert lock.acquire(0)
        stage = Path({str(out)!r}) / "{STAGE_PREFIX}live"
        (stage / "old").mkdir(parents=True)
        (stage / "journal.json").write_text('{{"format": "calib-output-journal", "version": 1, "targets": '
                                            '[{{"name": "{STEM}.cache", "existed": true, "ino": 0}}]}}')
        print("locked", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(calib.utils, "LOCK_WAIT_S", 0.5)
        rc = main(_argv(mnist, out, "--seed", "1", "--force"))
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and f"another calib run (pid {holder.pid}) is writing into this folder" in line
        assert str(out) in line
        assert (out / f"{STAGE_PREFIX}live" / "journal.json").exists()
        assert {k: v for k, v in _files(out).items() if not k.startswith((STAGE_PREFIX, LOCK_NAME))} == before
    finally:
        holder.communicate("", timeout=60)
    # the holder is gone: its leftovers are a crashed run's, cleaned up by the next writer
    assert main(_argv(mnist, out, "--seed", "1", "--force")) == 0
    assert consistent_seed(out) == 1


def test_leftovers_of_crashed_runs_are_removed_and_nothing_else(mnist, previous, capsys):
    out, _ = previous
    stale = out / f"{STAGE_PREFIX}4242-abcdefgh"          # killed while staging: no journal
    (stale / "new").mkdir(parents=True)
    (stale / "new" / f"{STEM}.int8.onnx").write_bytes(b"half a model")
    (out / f".{STEM}.int8.onnx.k3j_x9q2.tmp").write_bytes(b"left by an earlier calib version")
    (out / f".{STEM}.cache.a1b2c3d4.old").write_bytes(b"left by an earlier calib version")
    mine = {".notes.txt": b"a user's file", ".other.onnx.a1b2c3d4.tmp": b"not a name calib writes here"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert main(_argv(mnist, out, "--seed", "1", "--force")) == 0, capsys.readouterr().err
    left = _files(out)
    assert {k: left.pop(k) for k in mine} == mine
    assert sorted(left) == sorted(SET)


def test_planted_lock_link_and_journal_cannot_reach_outside_the_folder(mnist, previous, tmp_path, capsys):
    """Someone who can write into the output folder plants a lock that links to a file elsewhere, and
    a journal naming a file outside the folder: calib truncates nothing through the link (one
    line instead), and rolls nothing back outside the folder."""
    out, before = previous
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / LOCK_NAME).symlink_to(victim)
    assert main(_argv(mnist, out, "--seed", "1", "--force")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {out}: {LOCK_NAME}: ")
    assert victim.read_text() == "precious\n"
    (out / LOCK_NAME).unlink()
    stage = out / f"{STAGE_PREFIX}planted"
    (stage / "old").mkdir(parents=True)
    (stage / "old" / "victim.txt").write_text("overwritten")
    (stage / "journal.json").write_text(json.dumps({"format": "calib-output-journal", "version": 1, "targets": [
        {"name": "../victim.txt", "existed": True, "ino": 0}]}))
    assert main(_argv(mnist, out, "--seed", "1", "--force")) == 0, capsys.readouterr().err
    assert victim.read_text() == "precious\n" and (stage / "journal.json").exists()   # left for a person


def test_check_provenance_refuses_a_cache_of_another_run(mnist, previous, tmp_path, capsys):
    out, before = previous
    other = tmp_path / "other"
    assert main(_argv(mnist, other, "--seed", "1")) == 0, capsys.readouterr().err
    (out / f"{STEM}.cache").write_bytes((other / f"{STEM}.cache").read_bytes())   # copied over
    with pytest.raises(CacheMismatchError) as ei:
        check_provenance(out / f"{STEM}.cache", mnist[0])
    msg = str(ei.value)
    assert f"{out / STEM}.cache does not match its sidecar {out / STEM}.cache.json" in msg
    # the same check through TensorRT's cache server (calib build --cache), by name
    from calib.backends.tensorrt.cache_serving import CacheServer
    from calib.model import Model

    with pytest.raises(CacheMismatchError, match=rf"{STEM}\.cache does not match its sidecar"):
        CacheServer(out / f"{STEM}.cache", Model.load(mnist[0]), 100900).load_checked()
    (out / f"{STEM}.cache").write_bytes(before[f"{STEM}.cache"])
    check_provenance(out / f"{STEM}.cache", mnist[0])      # the pair of one run passes


# --- item 5: wrong, read-only and full output folders ------------------------------------------
def test_out_under_a_file_is_refused_before_any_work(mnist, tmp_path, capsys):
    """Runs as root too. The data path does not exist: the output check comes first."""
    f = tmp_path / "plain.txt"
    f.write_text("x")
    model, _ = mnist
    rc = main(["calibrate", "--model", str(model), "--data", str(tmp_path / "nowhere"), "--out", str(f / "sub")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line == f"error: cannot write {f / 'sub'}: {f} is not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def test_out_where_no_file_can_be_made_is_refused_before_any_work(mnist, tmp_path, capsys):
    """/proc takes no new files, also for root."""
    model, _ = mnist
    rc = main(["calibrate", "--model", str(model), "--data", str(tmp_path / "nowhere"), "--out", "/proc/calib-out"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("error: cannot write /proc/calib-out: cannot create it in /proc: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder (see the read-only mount test)")
def test_read_only_folder_by_permissions(mnist, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc = main(_argv(mnist, out))
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and line == f"error: cannot write {out}: Permission denied"
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


@pytest.fixture
def tmpfs(tmp_path):
    """Function: ``tmpfs(options)`` mounts a fresh tmpfs (``size=100k``, ``ro``, ...) and returns its
    path; unmounted afterwards. Skips unless this process may mount (root, Linux)."""
    mounted = []

    def mount(options: str) -> Path:
        d = tmp_path / f"mnt{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip() or r.returncode}")
        mounted.append(d)
        return d

    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=False)


def test_read_only_mount_is_refused_before_any_work(mnist, tmpfs, capsys):
    ro = tmpfs("ro,size=100k")
    model, _ = mnist
    for out in (ro, ro / "sub"):
        rc = main(["calibrate", "--model", str(model), "--data", "/nonexistent", "--out", str(out)])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and line.startswith(f"error: cannot write {out}: ") and "Read-only file system" in line


def _squeezenet(out, *extra):
    return ["calibrate", "--model", str(SQUEEZENET), "--data", str(IMAGES), "--preset", "caffe", "--limit", "8",
            "--no-eval", "--out", str(out), *extra]


@pytest.mark.skipif(not SQUEEZENET.is_file(), reason="bundled datasets/ missing")
def test_full_disk_is_one_line_and_leaves_nothing(tmpfs, capsys):
    """A real ENOSPC: a 100 KB tmpfs cannot take SqueezeNet's 5 MB Q/DQ model."""
    disk = tmpfs("size=100k")
    out = disk / "out"
    rc = main(_squeezenet(out))
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line == f"error: cannot write {out}/squeezenet1_1_fp32.int8.onnx: No space left on device"
    assert list(disk.iterdir()) == []


def _file_size_limit(limit: int):
    def apply():   # in the child: writes beyond *limit* bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(not SQUEEZENET.is_file(), reason="bundled datasets/ missing")
def test_file_size_limit_while_writing_keeps_the_previous_set(tmp_path):
    """Portable stand-in for a full disk (no root needed): RLIMIT_FSIZE makes the write of the Q/DQ
    model fail with EFBIG after the small files were staged. The previous set is untouched and no
    temporary file is left."""
    out = tmp_path / "out"
    rc, _, err = _run(_squeezenet(out, "--seed", "3"))
    assert rc == 0, err
    before = _files(out)
    rc, stdout, err = _run(_squeezenet(out, "--force"), preexec_fn=_file_size_limit(1 << 20))
    assert rc == 2 and stdout == ""
    assert _one_error_line(err) == f"error: cannot write {out}/squeezenet1_1_fp32.int8.onnx: File too large"
    assert _files(out) == before


@pytest.mark.skipif(not SQUEEZENET.is_file(), reason="bundled datasets/ missing")
def test_evaluate_out_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "report"
    rc, _, err = _run(["evaluate", "--model", str(SQUEEZENET), "--candidate", str(SQUEEZENET), "--data", str(IMAGES),
                       "--preset", "caffe", "--limit", "8", "--resamples", "100", "--no-plots", "--out", str(out)],
                      preexec_fn=_file_size_limit(4096))
    line = _one_error_line(err)
    assert rc == 2 and line.startswith(f"error: cannot write {out}/") and line.endswith(": File too large")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- item 8: the --force wording -------------------------------------------------------------
def test_existing_outputs_are_worded_for_the_api_and_for_the_cli(mnist, previous, capsys):
    import calib

    out, _ = previous
    with pytest.raises(OutputExistsError) as ei:
        calib.calibrate(mnist[0], mnist[1], out=out, evaluate=False, progress=False)
    assert str(ei.value) == f"{out / STEM}.cache already exists; pass force=True to replace it"
    assert main(_argv(mnist, out)) == 2
    assert _one_error_line(capsys.readouterr().err) == \
        f"error: {out / STEM}.cache already exists; pass --force to replace it"


# --- item 8: a summary per model; the Q/DQ report line once --------------------------------------
def test_two_models_calibrated_into_one_folder_keep_their_own_summaries(mnist, tmp_path, capsys):
    other = tmp_path / "digits.onnx"
    other.write_bytes(mnist[0].read_bytes())
    out = tmp_path / "out"
    assert main(_argv(mnist, out)) == 0
    assert main(_argv((other, mnist[1]), out, "--seed", "1")) == 0, capsys.readouterr().err
    assert "wrote " + str(out / "digits.summary.json") in capsys.readouterr().out
    assert sorted(_files(out)) == sorted([*SET, *(n.replace(STEM, "digits") for n in SET)])
    for stem, model in ((STEM, mnist[0]), ("digits", other)):
        summary = json.loads((out / f"{stem}.summary.json").read_text())
        assert summary["model"] == str(model) and summary["outputs"]["summary"] == str(out / f"{stem}.summary.json")
        assert summary["sha256"]["cache"] == sha256_file(out / f"{stem}.cache")


def _model_with_an_all_zero_input_to_a_conv(path: Path) -> None:
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [nh.from_array(np.zeros(1, np.float32), "zero"),
             nh.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w"),
             nh.from_array(np.zeros(2, np.float32), "b"), nh.from_array(np.ones((1, 2, 4, 4), np.float32), "one")]
    nodes = [oh.make_node("Mul", ["x", "zero"], ["zeros"]), oh.make_node("Conv", ["zeros", "w", "b"], ["c"]),
             oh.make_node("Add", ["c", "one"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), path)


def test_the_qdq_report_line_is_printed_once(tmp_path):
    """The Conv's input is all zeros, so it has no range and stays float: the Q/DQ report says so
    once, in the summary, not once per Q/DQ model built (probe, final, each auto candidate). In a
    subprocess: the line came through Python's logging, which pytest would capture."""
    model, data = tmp_path / "zero.onnx", tmp_path / "x.npy"
    _model_with_an_all_zero_input_to_a_conv(model)
    np.save(data, np.random.default_rng(1).normal(size=(40, 1, 6, 6)).astype(np.float32))
    for algorithm in ("auto", "entropy"):
        rc, out, err = _run(["calibrate", "--model", str(model), "--data", str(data), "--algorithm", algorithm,
                             "--out", str(tmp_path / algorithm)])
        assert rc == 0, err
        said = [ln for ln in (out + err).splitlines() if "left float" in ln]
        assert said == [("Q/DQ model: tensorrt: 0 int8 nodes, 0 quantized activations, 0 fp16, 0 fp32 by plan, "
                         "1 left float, no amax for 1 tensor(s): zeros")], out + err
