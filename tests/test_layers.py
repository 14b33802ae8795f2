"""The one-way flow of the developers' guide, checked on the source: a module never imports a
module of a higher layer (lazy imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "calib"

# (module prefix, layer): base -> readers -> statistics -> algorithms -> artifacts -> backends
# -> harness -> pipelines (collect runs a backend; calibrate runs everything) -> CLI
LAYERS = [("calib.errors", 0), ("calib.utils", 0), ("calib.model", 0), ("calib.datasets", 1),
          ("calib.stats", 2), ("calib.algorithms", 3),
          ("calib.cache", 4), ("calib.qdq", 4), ("calib.smooth", 4), ("calib.plan", 4),
          ("calib.backends", 5), ("calib.harness", 6), ("calib.collect", 7), ("calib.calibrate", 7),
          ("calib.cli", 8), ("calib.__main__", 8)]


def layer_of(module: str) -> int | None:
    hits = [(len(p), r) for p, r in LAYERS if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(n, node.lineno) for n in names]
    return out


def upward_imports(root: Path = PKG) -> list[str]:
    bad = []
    for f in sorted(root.rglob("*.py")):
        me = module_name(f)
        mine = layer_of(me)
        if mine is None:
            continue
        for target, line in imported_modules(f):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{me}:{line} imports {target} (layer {theirs} > {mine})")
    return bad


def test_every_module_has_a_layer():
    unknown = [module_name(f) for f in PKG.rglob("*.py") if layer_of(module_name(f)) is None
               and module_name(f) != "calib"]
    assert not unknown, f"modules without a layer in LAYERS: {unknown}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_lazy_upward_imports(tmp_path):
    """The check itself can fail: a function-level import of the pipeline from a backend is found."""
    pkg = tmp_path / "calib"
    (pkg / "backends").mkdir(parents=True)
    (pkg / "backends" / "x.py").write_text("def f():\n    from ..calibrate import calibrate\n")
    global PKG
    saved, PKG = PKG, pkg
    try:
        assert upward_imports(pkg) == ["calib.backends.x:2 imports calib.calibrate (layer 7 > 5)"]
    finally:
        PKG = saved
