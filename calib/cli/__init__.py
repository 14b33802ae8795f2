"""Command-line interface: `calib <command>` and the `calibrate` shortcut.

Each subcommand lives in its own module under :mod:`calib.cli` and exposes
``register(subparsers)`` (adds its parser, sets ``func``). The flags several commands
share come from the argument groups of :mod:`calib.cli.args`, which every command composes,
so a flag means the same everywhere. Modules are imported lazily per command name so a
missing optional dependency (TensorRT) never breaks the other commands.

Any :class:`calib.errors.CalibError` becomes one line on stderr and its exit code; Ctrl-C,
SIGTERM and a closed stdout end a command cleanly too (:func:`main`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading

from ..errors import CalibError, OutputExistsError
from ..utils import printable

# command name -> module (relative to calib.cli) and one-line help
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect", "describe a model; with --data, run FP32 and report throughput/accuracy"),
    "calibrate": ("calibrate", "compute INT8 scales; write a TensorRT cache and a Q/DQ model"),
    "cache": ("cache", "show or diff calibration caches"),
    "evaluate": ("evaluate", "score candidates against the FP32 model (and labels)"),
    "search": ("search", "find the fastest mixed INT8/FP16/FP32 plan that meets an accuracy budget"),
    "build": ("tensorrt", "build a TensorRT engine (needs TensorRT and a GPU)"),
    "run": ("tensorrt", "run / time a TensorRT engine (needs TensorRT and a GPU)"),
    "sweep": ("sweep", "run a grid of calibrations; store every point; draw the accuracy/speed front"),
}


def _build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="calib", description="INT8 calibration and precision tuning for TensorRT.")
    p.add_argument("--version", action="version", version=f"calib {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for name, (mod, _help) in COMMANDS.items():
        if only is not None and name != only:
            continue
        if mod in registered:
            continue
        try:
            module = importlib.import_module(f".{mod}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("calib.cli."):
                continue  # command not implemented in this build
            raise
        module.register(sub)
        registered.add(mod)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach CLI users as one `warning: ...` line (no source path or code line)."""
    print(f"warning: {printable(str(message))}", file=file or sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as Ctrl-C does (temporary files
    removed, a commit in progress rolled back) and exits 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _quiet_stdout() -> None:
    """After a broken pipe (``calib ... | head``): send what is left of stdout to /dev/null, so
    that the interpreter's final flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):   # stdout is not a file (tests capture it)
        pass


def _message(exc: CalibError) -> str:
    """The error line's text: CLI words (``--force``) and no character a terminal would act on."""
    text = exc.advice("--force") if isinstance(exc, OutputExistsError) else str(exc)
    return printable(" ".join(text.splitlines()))


def _escape_undecodable_names() -> None:
    """Print file names that are not valid UTF-8 (kept by Python as lone surrogates) escaped, as
    stderr already does, instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "strict") == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`CalibError` is one ``error:`` line and its exit code; Ctrl-C
    (130) and SIGTERM (143) unwind the same way, leaving the previous outputs in place; a closed
    stdout (``| head``) ends the command quietly, as other Unix tools do (141, as SIGPIPE)."""
    import signal
    import warnings

    from .. import utils

    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = _build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _escape_undecodable_names()
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        on_term = signal.signal(signal.SIGTERM, _on_sigterm)
    committed = len(utils.COMMITTED)
    try:
        rc = args.func(args)
        sys.stdout.flush()
    except CalibError as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except KeyboardInterrupt as exc:
        wrote = utils.COMMITTED[committed:]
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"error: {what}; " + (f"the outputs in {printable(str(wrote[-1]))} were already written" if wrote
                                    else "no output was written"), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        warnings.showwarning = previous
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if on_term is None else on_term)
    return int(rc or 0)


def calibrate_main(argv: list[str] | None = None) -> int:
    """Entry point of the `calibrate` console script (same as `calib calibrate`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["calibrate", *argv])


def entry() -> None:  # console_scripts
    sys.exit(main())


def calibrate_entry() -> None:
    sys.exit(calibrate_main())
