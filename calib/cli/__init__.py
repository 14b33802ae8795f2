"""Command-line interface: `calib <command>` and the `calibrate` shortcut.

Each subcommand lives in its own module under :mod:`calib.cli` and exposes
``register(subparsers)`` (adds its parser, sets ``func``). The flags several commands
share come from the argument groups of :mod:`calib.cli.args`, which every command composes,
so a flag means the same everywhere. Modules are imported lazily per command name so a
missing optional dependency (TensorRT) never breaks the other commands.

Any :class:`calib.errors.CalibError` becomes one line on stderr and its exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CalibError

# command name -> module (relative to calib.cli) and one-line help
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect", "describe a model; with --data, run FP32 and report throughput/accuracy"),
    "calibrate": ("calibrate", "compute INT8 scales; write a TensorRT cache and a Q/DQ model"),
    "cache": ("cache", "show or diff calibration caches"),
    "evaluate": ("evaluate", "score candidates against the FP32 model (and labels)"),
    "search": ("search", "find the fastest mixed INT8/FP16/FP32 plan that meets an accuracy budget"),
    "build": ("tensorrt", "build a TensorRT engine (needs TensorRT and a GPU)"),
    "run": ("tensorrt", "run / time a TensorRT engine (needs TensorRT and a GPU)"),
}


def _build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="calib", description="INT8 calibration and precision tuning for TensorRT.")
    p.add_argument("--version", action="version", version=f"calib {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for name, (mod, help_) in COMMANDS.items():
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
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = _build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        rc = args.func(args)
    except CalibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
    return int(rc or 0)


def calibrate_main(argv: list[str] | None = None) -> int:
    """Entry point of the `calibrate` console script (same as `calib calibrate`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["calibrate", *argv])


def entry() -> None:  # console_scripts
    sys.exit(main())


def calibrate_entry() -> None:
    sys.exit(calibrate_main())
