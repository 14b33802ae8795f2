"""API conformance helpers: fetch real TensorRT Python binding wheels from PyPI and read the
API names compiled into them; read the TensorRT names calib's backend source uses.

Names in a wheel: TensorRT's bindings are pybind11, which registers every class, method,
property and enum member under a C string literal. We split ``tensorrt.so`` at NUL bytes and
keep identifier-like strings. The linker may tail-merge literals (``"INT8"`` can live inside
``"UINT8"``, ``"DataType"`` inside ``"nvinfer1::DataType"``), so a name also counts as present
when it is the tail of a longer identifier or qualified name; a docstring ending in a name does
not count (it holds spaces). Top-level Python names
from the wheel's ``__init__.py`` (``__version__``) are added via ``ast``.

Limits: a name is checked as a bare identifier, not per class (``IBuilderConfig.int8_calibrator``
is checked as ``IBuilderConfig`` and ``int8_calibrator`` separately), and tail-merging means a
removed name that is the tail of another kept identifier still reads as present.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_QUALIFIED = re.compile(rb"[A-Za-z_][A-Za-z0-9_:.]*")  # C++/Python qualified names: "nvinfer1::DataType"

NETWORK_MARKERS = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
                   "Name or service not known", "ConnectTimeout", "ReadTimeout", "Max retries exceeded",
                   "Could not fetch URL", "ProxyError", "Connection refused", "SSLError")


class RegistryUnreachable(RuntimeError):
    pass


def fetch_wheel(package: str, version: str, cache_dir: Path) -> Path:
    """The wheel of *package*==*version* (CPython 3.11, manylinux x86_64), from the cache or PyPI."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    for w in sorted(cache_dir.glob(f"{stem}-{version}-*.whl")):
        return w
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux2014_x86_64",
           "--disable-pip-version-check", "--no-cache-dir", "-d", str(cache_dir), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if any(m in out for m in NETWORK_MARKERS):
            raise RegistryUnreachable(f"pip could not reach the package registry for {package}=={version}: "
                                      + out.strip().splitlines()[-1])
        raise RuntimeError(f"pip download {package}=={version} failed:\n{out[-2000:]}")
    for w in sorted(cache_dir.glob(f"{stem}-{version}-*.whl")):
        return w
    raise RuntimeError(f"pip download {package}=={version} saved no wheel:\n{out[-2000:]}")


def wheel_names(wheel: Path) -> dict:
    """``{"exact": [...], "identifiers": [...], "python": [...]}`` from one bindings wheel."""
    exact: set[str] = set()
    qualified: set[str] = set()
    python: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        sos = [n for n in z.namelist() if re.search(r"(^|/)tensorrt[^/]*\.so$", n)]
        if not sos:
            raise RuntimeError(f"{wheel.name} holds no tensorrt*.so (stub wheel?): {z.namelist()[:10]}")
        for so in sos:
            data = z.read(so)
            for chunk in data.split(b"\0"):
                if 0 < len(chunk) <= 200 and _IDENT.fullmatch(chunk):
                    exact.add(chunk.decode("ascii"))
                elif 0 < len(chunk) <= 200 and _QUALIFIED.fullmatch(chunk):
                    qualified.add(chunk.decode("ascii"))
        for n in z.namelist():
            if n.endswith("/__init__.py") and n.count("/") == 1:
                tree = ast.parse(z.read(n).decode("utf-8", "replace"))
                for node in tree.body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                        python.add(node.name)
                    elif isinstance(node, ast.Assign):
                        for t in node.targets:
                            if isinstance(t, ast.Name):
                                python.add(t.id)
                            elif isinstance(t, ast.Attribute):
                                python.add(t.attr)
    return {"wheel": wheel.name, "exact": sorted(exact), "qualified": sorted(qualified), "python": sorted(python)}


class NameSet:
    def __init__(self, names: dict):
        self.wheel = names["wheel"]
        self.exact = set(names["exact"])
        self.python = set(names["python"])
        self.qualified = set(names.get("qualified", ()))
        self._containers = sorted(self.exact | self.qualified, key=len)

    def has(self, name: str) -> bool:
        """*name* is a whole identifier string, a Python name of ``__init__.py``, or the tail of an
        identifier / qualified name (linker tail merging), never of a docstring."""
        if name in self.exact or name in self.python:
            return True
        return any(len(s) > len(name) and s.endswith(name) for s in self._containers)

    def missing(self, manifest: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
        """feature -> declared names (or name parts) absent from this wheel."""
        out = {}
        for feature, names in manifest.items():
            bad = [n for n in names if not all(self.has(part) for part in n.split("."))]
            if bad:
                out[feature] = bad
        return out


def load_names(package: str, version: str, cache_dir: Path) -> NameSet:
    cache_dir = Path(cache_dir)
    index = cache_dir / f"{package}-{version}.names.json"
    if index.exists():
        return NameSet(json.loads(index.read_text()))
    names = wheel_names(fetch_wheel(package, version, cache_dir))
    index.write_text(json.dumps(names))
    return NameSet(names)


# --------------------------------------------------------------------------- source side
def used_names(sources: dict[str, str], handle_types: dict[str, str]) -> dict[str, set[str]]:
    """``{"IBuilderConfig.set_flag": {"builder.py:123", ...}, "BuilderFlag.INT8": ...}``: TensorRT
    names used in *sources* (file name -> text) through the module ``trt`` or a variable (or
    ``self.<name>``) named in *handle_types*."""
    used: dict[str, set[str]] = {}
    for fname, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if isinstance(base, ast.Name):
                var = base.id
            elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "self":
                var = base.attr
            else:
                var = None
            if var is None or var not in handle_types:
                continue
            cls = handle_types[var]
            if cls == "<module>":
                name = node.attr
            else:
                name = f"{cls}.{node.attr}"
            used.setdefault(name, set()).add(f"{fname}:{node.lineno}")
        # trt.X.Y chains
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    isinstance(node.value.value, ast.Name) and handle_types.get(node.value.value.id) == "<module>":
                used.setdefault(f"{node.value.attr}.{node.attr}", set()).add(f"{fname}:{node.lineno}")
    return used


def undeclared(used: dict[str, set[str]], declared: set[str]) -> dict[str, list[str]]:
    """Used names not declared in the manifest (``self.x`` attributes of ours are not names of
    TensorRT: the handle table lists only variables holding TensorRT objects)."""
    return {n: sorted(w) for n, w in sorted(used.items()) if n not in declared}


def backend_sources(root: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py"))}


def default_cache_dir(fallback: Path) -> Path:
    env = os.environ.get("CALIB_TRT_WHEEL_CACHE")
    return Path(env) if env else fallback
